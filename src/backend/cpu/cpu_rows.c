/* Row-wise ops of the CPU backend: RMSNorm, RoPE, SwiGLU, dropout. */
#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

/* ---------------------------------------------------------------- RMSNorm */

/* One row; returns rstd. y may alias x. */
FY_CPU_HOT static float rmsnorm_row(const float *x, const float *w, float eps, float *y, int D) {
    double ss = fy_cpu_dot_d(x, x, D);
    float r = (float)(1.0 / sqrt(ss / D + (double)eps));
#pragma omp simd
    for (int j = 0; j < D; j++) y[j] = (x[j] * r) * w[j];
    return r;
}

void fy_cpu_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps,
                        fy_ref y, int ldy, fy_ref rstd) {
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, D), "rmsnorm_fwd", "x");
    const float *wp = fy_cpu_f(be, w, D, "rmsnorm_fwd", "w");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, D), "rmsnorm_fwd", "y");
    float *rp = fy_cpu_f(be, rstd, N, "rmsnorm_fwd", "rstd");
    if (!xp || !wp || !yp || !rp) return;
#pragma omp parallel for schedule(static) if ((size_t)N * D > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++)
        rp[n] = rmsnorm_row(xp + (size_t)n * ldx, wp, eps, yp + (size_t)n * ldy, D);
}

/* sum_j a_j b_j c_j in double, 8 lanes */
static inline double dot3_d(const float *a, const float *b, const float *c, int n) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) s[l] += (double)(a[i + l] * b[i + l]) * c[i + l];
    double t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; i < n; i++) t += (double)(a[i] * b[i]) * c[i];
    return t;
}

/* Rows of one chunk: dx (if any) and the chunk's dw partial pc (if any). */
FY_CPU_HOT static void rmsnorm_bwd_rows(int rows, int D, const float *xp, int ldx, const float *wp,
                                        const float *rp, const float *dyp, int lddy, float *dxp,
                                        int lddx, int accumulate_dx, float *pc) {
    float invD = 1.0f / (float)D;
    if (pc) memset(pc, 0, (size_t)D * sizeof *pc);
    for (int n = 0; n < rows; n++) {
        const float *xr = xp + (size_t)n * ldx;
        const float *dyr = dyp + (size_t)n * lddy;
        float r = rp[n];
        if (pc) {
#pragma omp simd
            for (int j = 0; j < D; j++) pc[j] += dyr[j] * xr[j] * r;
        }
        if (!dxp) continue;
        float coef = (float)dot3_d(dyr, wp, xr, D) * r * r * r * invD;
        float *dxr = dxp + (size_t)n * lddx;
        if (accumulate_dx) {
#pragma omp simd
            for (int j = 0; j < D; j++) dxr[j] += r * wp[j] * dyr[j] - xr[j] * coef;
        } else {
#pragma omp simd
            for (int j = 0; j < D; j++) dxr[j] = r * wp[j] * dyr[j] - xr[j] * coef;
        }
    }
}

/* y = x w r, r = (mean x^2 + eps)^-1/2:
 *   dx_j = r w_j dy_j - x_j r^3 / D * sum_k dy_k w_k x_k
 *   dw_j += sum_n dy_nj x_nj r_n
 * dw is summed per fixed chunk of rows (in parallel), then the chunk
 * partials are added in chunk order: independent of the thread count. */
void fy_cpu_rmsnorm_bwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, fy_ref rstd,
                        fy_ref dy, int lddy, fy_ref dx, int lddx, int accumulate_dx, fy_ref dw) {
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
#pragma omp parallel for schedule(static) if ((size_t)N * D > FY_CPU_PAR_MIN)
    for (int c = 0; c < nchunk; c++) {
        int n0 = c * FY_CPU_ROW_CHUNK, n1 = n0 + FY_CPU_ROW_CHUNK < N ? n0 + FY_CPU_ROW_CHUNK : N;
        rmsnorm_bwd_rows(n1 - n0, D, xp + (size_t)n0 * ldx, ldx, wp, rp + n0,
                         dyp + (size_t)n0 * lddy, lddy, dxp ? dxp + (size_t)n0 * lddx : NULL, lddx,
                         accumulate_dx, part ? part + (size_t)c * D : NULL);
    }
    if (dwp) {
        /* column blocks in parallel; each column adds the chunk partials in order */
        int nb = (D + 63) / 64;
#pragma omp parallel for schedule(static) if ((size_t)nchunk * D > FY_CPU_PAR_MIN)
        for (int b = 0; b < nb; b++) {
            int j0 = b * 64, j1 = j0 + 64 < D ? j0 + 64 : D;
            double acc[64] = {0};
            for (int c = 0; c < nchunk; c++) {
                const float *pc = part + (size_t)c * D;
                for (int j = j0; j < j1; j++) acc[j - j0] += pc[j];
            }
            for (int j = j0; j < j1; j++) dwp[j] += (float)acc[j - j0];
        }
        free(part);
    }
}

/* ---------------------------------------------------------------- RoPE */

/* cos/sin of pos * theta^(-2j/d_r), computed in double, for T positions
 * starting at pos0: tab[(t * half + j) * 2 + {0: cos, 1: sin}]. Cached. */
static const float *rope_table(fy_backend *be, int T, int pos0, int d_r, const fy_rope_params *rp) {
    fy_cpu_impl *im = be->impl;
    if (im->rope_valid && im->rope_T == T && im->rope_pos0 == pos0 && im->rope_dr == d_r &&
        fy_rope_params_equal(&im->rope_p, rp))
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
    double *freq = malloc((size_t)(half ? half : 1) * sizeof *freq);
    if (!freq) {
        fy_be_set_error(be, "cpu rope: out of memory");
        return NULL;
    }
    fy_rope_table(rp, T, pos0, d_r, im->rope_tab, freq);
    free(freq);
    im->rope_valid = 1;
    im->rope_T = T;
    im->rope_pos0 = pos0;
    im->rope_dr = d_r;
    im->rope_p = *rp;
    return im->rope_tab;
}

void fy_cpu_rope(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r, fy_ref x, int ld,
                 int head_stride, const fy_rope_params *rp, int inverse) {
    size_t width = (size_t)(n_heads - 1) * head_stride + d_r;
    float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ld, width), "rope", "x");
    if (!xp) return;
    int tn = T < N ? T : N; /* positions actually used */
    const float *tab = rope_table(be, tn, pos0, d_r, rp);
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

FY_CPU_HOT void fy_cpu_swiglu_row(const float *g, const float *u, float *h, int F) {
#pragma omp simd
    for (int j = 0; j < F; j++) {
        float gv = g[j];
        h[j] = gv * fy_cpu_sigmoid(gv) * u[j];
    }
}

void fy_cpu_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref h, int ldh) {
    const float *gp = fy_cpu_f(be, g, fy_cpu_span(N, ldg, F), "swiglu_fwd", "g");
    const float *up = fy_cpu_f(be, u, fy_cpu_span(N, ldu, F), "swiglu_fwd", "u");
    float *hp = fy_cpu_f(be, h, fy_cpu_span(N, ldh, F), "swiglu_fwd", "h");
    if (!gp || !up || !hp) return;
#pragma omp parallel for schedule(static) if ((size_t)N * F > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++)
        fy_cpu_swiglu_row(gp + (size_t)n * ldg, up + (size_t)n * ldu, hp + (size_t)n * ldh, F);
}

FY_CPU_HOT static void swiglu_bwd_row(const float *g, const float *u, const float *dh, float *dg,
                                      float *du, int F) {
#pragma omp simd
    for (int j = 0; j < F; j++) {
        float gv = g[j], uv = u[j], d = dh[j];
        float sg = fy_cpu_sigmoid(gv);
        float a = d * uv * sg * (1.0f + gv * (1.0f - sg));
        float b = d * gv * sg;
        dg[j] = a; /* dg, du may alias g, u: both computed first */
        du[j] = b;
    }
}

/* h = g sig(g) u:  dg = dh u sig (1 + g (1 - sig)),  du = dh g sig. */
void fy_cpu_swiglu_bwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref dh, int lddh, fy_ref dg, fy_ref du) {
    const char *op = "swiglu_bwd";
    const float *gp = fy_cpu_f(be, g, fy_cpu_span(N, ldg, F), op, "g");
    const float *up = fy_cpu_f(be, u, fy_cpu_span(N, ldu, F), op, "u");
    const float *dhp = fy_cpu_f(be, dh, fy_cpu_span(N, lddh, F), op, "dh");
    float *dgp = fy_cpu_f(be, dg, fy_cpu_span(N, ldg, F), op, "dg");
    float *dup = fy_cpu_f(be, du, fy_cpu_span(N, ldu, F), op, "du");
    if (!gp || !up || !dhp || !dgp || !dup) return;
#pragma omp parallel for schedule(static) if ((size_t)N * F > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++)
        swiglu_bwd_row(gp + (size_t)n * ldg, up + (size_t)n * ldu, dhp + (size_t)n * lddh,
                       dgp + (size_t)n * ldg, dup + (size_t)n * ldu, F);
}

/* ---------------------------------------------------------------- dropout */

void fy_cpu_dropout(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                    const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate) {
    const float *sp = fy_cpu_f(be, src, fy_cpu_span(n, lds, D), "dropout", "src");
    float *dp = fy_cpu_f(be, dst, fy_cpu_span(n, ldd, D), "dropout", "dst");
    if (!sp || !dp) return;
    const float scale = 1.0f / (1.0f - p);
    const uint64_t rkey = fy_rng_key(seed, stream);
#pragma omp parallel for schedule(static) if ((size_t)n * D > FY_CPU_PAR_MIN)
    for (int i = 0; i < n; i++)
        fy_dropout_row(rkey, (uint64_t)(key0 + (keys ? keys[i] : i)), D, p, scale, sp + (size_t)i * lds,
                       dp + (size_t)i * ldd, accumulate);
}
