/* Row-wise ops of the CPU backend: RMSNorm, RoPE, SwiGLU. */
#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

#define BADDIM(op, cond)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            fy_be_set_error(be, "cpu %s: bad sizes (%s)", op, #cond);        \
            return;                                                          \
        }                                                                    \
    } while (0)

/* ---------------------------------------------------------------- RMSNorm */

void fy_cpu_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps,
                        fy_ref y, int ldy, fy_ref rstd) {
    BADDIM("rmsnorm_fwd", N < 0 || D < 0 || ldx < D || ldy < D);
    if (!N || !D) return;
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, D), "rmsnorm_fwd", "x");
    const float *wp = fy_cpu_f(be, w, D, "rmsnorm_fwd", "w");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, D), "rmsnorm_fwd", "y");
    float *rp = fy_cpu_f(be, rstd, N, "rmsnorm_fwd", "rstd");
    if (!xp || !wp || !yp || !rp) return;
#pragma omp parallel for schedule(static) if ((size_t)N * D > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *xr = xp + (size_t)n * ldx;
        float *yr = yp + (size_t)n * ldy;
        double ss = 0.0;
        for (int j = 0; j < D; j++) ss += (double)xr[j] * xr[j];
        float r = (float)(1.0 / sqrt(ss / D + (double)eps));
        rp[n] = r;
        for (int j = 0; j < D; j++) yr[j] = (xr[j] * r) * wp[j];
    }
}

/* y = x w r, r = (mean x^2 + eps)^-1/2:
 *   dx_j = r w_j dy_j - x_j r^3 / D * sum_k dy_k w_k x_k
 *   dw_j += sum_n dy_nj x_nj r_n
 * dw is summed per fixed chunk of rows (in parallel), then the chunk
 * partials are added in chunk order: independent of the thread count. */
void fy_cpu_rmsnorm_bwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, fy_ref rstd,
                        fy_ref dy, int lddy, fy_ref dx, int lddx, int accumulate_dx, fy_ref dw) {
    BADDIM("rmsnorm_bwd", N < 0 || D < 0 || ldx < D || lddy < D || (dx.buf && lddx < D));
    if (!N || !D) return;
    const char *op = "rmsnorm_bwd";
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, D), op, "x");
    const float *wp = fy_cpu_f(be, w, D, op, "w");
    const float *rp = fy_cpu_f(be, rstd, N, op, "rstd");
    const float *dyp = fy_cpu_f(be, dy, fy_cpu_span(N, lddy, D), op, "dy");
    float *dxp = dx.buf ? fy_cpu_f(be, dx, fy_cpu_span(N, lddx, D), op, "dx") : NULL;
    float *dwp = dw.buf ? fy_cpu_f(be, dw, D, op, "dw") : NULL;
    if (!xp || !wp || !rp || !dyp || (dx.buf && !dxp) || (dw.buf && !dwp)) return;

    int nchunk = (N + FY_CPU_ROW_CHUNK - 1) / FY_CPU_ROW_CHUNK;
    float *part = NULL;
    if (dwp) {
        part = malloc((size_t)nchunk * D * sizeof *part);
        if (!part) {
            fy_be_set_error(be, "cpu rmsnorm_bwd: out of memory");
            return;
        }
    }
    float invD = 1.0f / (float)D;
#pragma omp parallel for schedule(static) if ((size_t)N * D > FY_CPU_PAR_MIN)
    for (int c = 0; c < nchunk; c++) {
        int n0 = c * FY_CPU_ROW_CHUNK, n1 = n0 + FY_CPU_ROW_CHUNK < N ? n0 + FY_CPU_ROW_CHUNK : N;
        float *pc = part ? part + (size_t)c * D : NULL;
        if (pc)
            for (int j = 0; j < D; j++) pc[j] = 0.0f;
        for (int n = n0; n < n1; n++) {
            const float *xr = xp + (size_t)n * ldx;
            const float *dyr = dyp + (size_t)n * lddy;
            float r = rp[n];
            if (pc)
                for (int j = 0; j < D; j++) pc[j] += dyr[j] * xr[j] * r;
            if (!dxp) continue;
            double dot = 0.0;
            for (int j = 0; j < D; j++) dot += (double)(dyr[j] * wp[j]) * xr[j];
            float coef = (float)dot * r * r * r * invD;
            float *dxr = dxp + (size_t)n * lddx;
            if (accumulate_dx)
                for (int j = 0; j < D; j++) dxr[j] += r * wp[j] * dyr[j] - xr[j] * coef;
            else
                for (int j = 0; j < D; j++) dxr[j] = r * wp[j] * dyr[j] - xr[j] * coef;
        }
    }
    if (dwp) {
#pragma omp parallel for schedule(static) if ((size_t)nchunk * D > FY_CPU_PAR_MIN)
        for (int j = 0; j < D; j++) {
            double s = 0.0;
            for (int c = 0; c < nchunk; c++) s += part[(size_t)c * D + j];
            dwp[j] += (float)s;
        }
        free(part);
    }
}

/* ---------------------------------------------------------------- RoPE */

/* cos/sin of pos * theta^(-2j/d_r), computed in double, for T positions
 * starting at pos0: tab[(t * half + j) * 2 + {0: cos, 1: sin}]. Cached. */
static const float *rope_table(fy_backend *be, int T, int pos0, int d_r, float theta) {
    fy_cpu_impl *im = be->impl;
    if (im->rope_valid && im->rope_T == T && im->rope_pos0 == pos0 && im->rope_dr == d_r &&
        im->rope_theta == theta)
        return im->rope_tab;
    int half = d_r / 2;
    size_t need = (size_t)T * half * 2;
    if (need > im->rope_cap) {
        float *t = realloc(im->rope_tab, need * sizeof *t);
        if (!t) {
            fy_be_set_error(be, "cpu rope: out of memory");
            return NULL;
        }
        im->rope_tab = t;
        im->rope_cap = need;
    }
    float *tab = im->rope_tab;
    double *freq = malloc((size_t)(half ? half : 1) * sizeof *freq);
    if (!freq) {
        fy_be_set_error(be, "cpu rope: out of memory");
        return NULL;
    }
    for (int j = 0; j < half; j++) freq[j] = pow((double)theta, -2.0 * j / (double)d_r);
#pragma omp parallel for schedule(static) if ((size_t)T * half > 4096)
    for (int t = 0; t < T; t++) {
        double pos = (double)pos0 + t;
        for (int j = 0; j < half; j++) {
            double a = pos * freq[j];
            tab[((size_t)t * half + j) * 2] = (float)cos(a);
            tab[((size_t)t * half + j) * 2 + 1] = (float)sin(a);
        }
    }
    free(freq);
    im->rope_valid = 1;
    im->rope_T = T;
    im->rope_pos0 = pos0;
    im->rope_dr = d_r;
    im->rope_theta = theta;
    return tab;
}

void fy_cpu_rope(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r, fy_ref x, int ld,
                 int head_stride, float theta, int inverse) {
    BADDIM("rope", N < 0 || T <= 0 || n_heads < 0 || d_r < 0 || (d_r & 1) || pos0 < 0 ||
                       head_stride < 0);
    if (!N || !n_heads || !d_r) return;
    size_t width = (size_t)(n_heads - 1) * head_stride + d_r;
    float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ld, width), "rope", "x");
    if (!xp) return;
    int tn = T < N ? T : N; /* positions actually used */
    const float *tab = rope_table(be, tn, pos0, d_r, theta);
    if (!tab) return;
    int half = d_r / 2;
    float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if ((size_t)N * n_heads * d_r > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *cs = tab + (size_t)(n % T) * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float *v = xp + (size_t)n * ld + (size_t)h * head_stride;
            for (int j = 0; j < half; j++) {
                float c = cs[2 * j], s = sgn * cs[2 * j + 1];
                float a = v[2 * j], b = v[2 * j + 1];
                v[2 * j] = a * c - b * s;
                v[2 * j + 1] = a * s + b * c;
            }
        }
    }
}

/* ---------------------------------------------------------------- SwiGLU */

void fy_cpu_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref h, int ldh) {
    BADDIM("swiglu_fwd", N < 0 || F < 0 || ldg < F || ldu < F || ldh < F);
    if (!N || !F) return;
    const float *gp = fy_cpu_f(be, g, fy_cpu_span(N, ldg, F), "swiglu_fwd", "g");
    const float *up = fy_cpu_f(be, u, fy_cpu_span(N, ldu, F), "swiglu_fwd", "u");
    float *hp = fy_cpu_f(be, h, fy_cpu_span(N, ldh, F), "swiglu_fwd", "h");
    if (!gp || !up || !hp) return;
#pragma omp parallel for schedule(static) if ((size_t)N * F > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *gr = gp + (size_t)n * ldg, *ur = up + (size_t)n * ldu;
        float *hr = hp + (size_t)n * ldh;
#pragma omp simd
        for (int j = 0; j < F; j++) {
            float gv = gr[j];
            hr[j] = gv * fy_cpu_sigmoid(gv) * ur[j];
        }
    }
}

/* h = g sig(g) u:  dg = dh u sig (1 + g (1 - sig)),  du = dh g sig. */
void fy_cpu_swiglu_bwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref dh, int lddh, fy_ref dg, fy_ref du) {
    BADDIM("swiglu_bwd", N < 0 || F < 0 || ldg < F || ldu < F || lddh < F);
    if (!N || !F) return;
    const char *op = "swiglu_bwd";
    const float *gp = fy_cpu_f(be, g, fy_cpu_span(N, ldg, F), op, "g");
    const float *up = fy_cpu_f(be, u, fy_cpu_span(N, ldu, F), op, "u");
    const float *dhp = fy_cpu_f(be, dh, fy_cpu_span(N, lddh, F), op, "dh");
    float *dgp = fy_cpu_f(be, dg, fy_cpu_span(N, ldg, F), op, "dg");
    float *dup = fy_cpu_f(be, du, fy_cpu_span(N, ldu, F), op, "du");
    if (!gp || !up || !dhp || !dgp || !dup) return;
#pragma omp parallel for schedule(static) if ((size_t)N * F > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *gr = gp + (size_t)n * ldg, *ur = up + (size_t)n * ldu;
        const float *dhr = dhp + (size_t)n * lddh;
        float *dgr = dgp + (size_t)n * ldg, *dur = dup + (size_t)n * ldu;
#pragma omp simd
        for (int j = 0; j < F; j++) {
            float gv = gr[j], uv = ur[j], d = dhr[j];
            float sg = fy_cpu_sigmoid(gv);
            float a = d * uv * sg * (1.0f + gv * (1.0f - sg));
            float b = d * gv * sg;
            dgr[j] = a; /* dg, du may alias g, u: both computed first */
            dur[j] = b;
        }
    }
}
