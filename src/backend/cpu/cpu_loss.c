/* Loss and optimizer ops of the CPU backend: softmax cross-entropy, AdamW. */
#include <math.h>
#include <stdlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "backend/cpu/cpu.h"

/* Per row: m = max x; e_j = exp(x_j - m); Z = sum e_j (double);
 * loss = log Z + m - x_target; dlogits = (e / Z - onehot) * grad_scale.
 * dlogits may alias logits: x_target and m are read before any write, and
 * every later pass reads element j only before writing element j. */
/* One row; returns its loss. d may alias x. */
FY_CPU_HOT static double xent_row(const float *x, float *d, int V, int tg, float grad_scale) {
    float xt = x[tg];
    float mx = fy_cpu_max(x, V);
#pragma omp simd
    for (int j = 0; j < V; j++) d[j] = fy_cpu_exp(x[j] - mx);
    double z = fy_cpu_sum_d(d, V);
    float c = (float)(grad_scale / z);
#pragma omp simd
    for (int j = 0; j < V; j++) d[j] *= c;
    d[tg] -= grad_scale;
    return log(z) + (double)mx - (double)xt;
}

double fy_cpu_xent_fwdbwd(fy_backend *be, int N, int V, fy_ref logits, fy_ref targets,
                          int ignore_index, float grad_scale, fy_ref losses, fy_ref dlogits) {
    const char *op = "xent_fwdbwd";
    size_t NV = (size_t)N * V;
    const float *xp = fy_cpu_f(be, logits, NV, op, "logits");
    const int32_t *tp = fy_cpu_i(be, targets, N, op, "targets");
    float *lp = fy_cpu_f(be, losses, N, op, "losses");
    float *dp = fy_cpu_f(be, dlogits, NV, op, "dlogits");
    if (!xp || !tp || !lp || !dp) return 0.0;
    double *per = malloc((size_t)N * sizeof *per);
    if (!per) {
        fy_be_set_error(be, "cpu %s: out of memory", op);
        return 0.0;
    }
    int bad = -1;
#pragma omp parallel for schedule(static) if (NV > FY_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = xp + (size_t)n * V;
        float *d = dp + (size_t)n * V;
        int32_t tg = tp[n];
        per[n] = 0.0;
        lp[n] = 0.0f;
        if (tg == ignore_index) {
            memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        if (tg < 0 || tg >= V) {
#pragma omp atomic write
            bad = n;
            continue;
        }
        double loss = xent_row(x, d, V, tg, grad_scale);
        lp[n] = (float)loss;
        per[n] = loss;
    }
    double tot = 0.0;
    for (int n = 0; n < N; n++) tot += per[n];
    free(per);
    if (bad >= 0)
        fy_be_set_error(be, "cpu %s: targets[%d] = %d outside [0, %d) and not ignore_index %d", op,
                        bad, tp[bad], V, ignore_index);
    return tot;
}

/* One block of AdamW. The SSE path performs the same float operations in
 * the same order as the scalar loop (bitwise the same result); it exists
 * because sqrtf under -fmath-errno keeps GCC from vectorizing the loop. */
static void adamw_block(size_t n, float *restrict pp, const float *restrict gp,
                        float *restrict mp, float *restrict vp, float lr, float b1, float b2,
                        float eps, float wd, float bc1, float bc2, float grad_scale) {
    float ib1 = 1.0f - b1, ib2 = 1.0f - b2;
    size_t i = 0;
#ifdef __SSE2__
    const __m128 vgs = _mm_set1_ps(grad_scale), vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2),
                 vib1 = _mm_set1_ps(ib1), vib2 = _mm_set1_ps(ib2), vbc1 = _mm_set1_ps(bc1),
                 vbc2 = _mm_set1_ps(bc2), veps = _mm_set1_ps(eps), vlr = _mm_set1_ps(lr),
                 vwd = _mm_set1_ps(wd);
    for (; i + 4 <= n; i += 4) {
        __m128 g = _mm_mul_ps(_mm_loadu_ps(gp + i), vgs);
        __m128 m = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(mp + i)), _mm_mul_ps(vib1, g));
        __m128 v = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(vp + i)),
                              _mm_mul_ps(_mm_mul_ps(vib2, g), g));
        _mm_storeu_ps(mp + i, m);
        _mm_storeu_ps(vp + i, v);
        __m128 p = _mm_loadu_ps(pp + i);
        __m128 den = _mm_add_ps(_mm_sqrt_ps(_mm_div_ps(v, vbc2)), veps);
        __m128 upd = _mm_add_ps(_mm_div_ps(_mm_div_ps(m, vbc1), den), _mm_mul_ps(vwd, p));
        _mm_storeu_ps(pp + i, _mm_sub_ps(p, _mm_mul_ps(vlr, upd)));
    }
#endif
    for (; i < n; i++) {
        float gi = gp[i] * grad_scale;
        float mi = b1 * mp[i] + ib1 * gi;
        float vi = b2 * vp[i] + ib2 * gi * gi;
        mp[i] = mi;
        vp[i] = vi;
        float pi = pp[i];
        pp[i] = pi - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * pi);
    }
}

void fy_cpu_adamw(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v, float lr,
                  float b1, float b2, float eps, float wd, int t, float grad_scale) {
    const char *op = "adamw";
    float *pp = fy_cpu_f(be, p, n, op, "p");
    const float *gp = fy_cpu_f(be, g, n, op, "g");
    float *mp = fy_cpu_f(be, m, n, op, "m");
    float *vp = fy_cpu_f(be, v, n, op, "v");
    if (!pp || !gp || !mp || !vp) return;
    float bc1 = (float)(1.0 - pow((double)b1, t));
    float bc2 = (float)(1.0 - pow((double)b2, t));
    const size_t BLK = 16384;
    ptrdiff_t nb = (ptrdiff_t)((n + BLK - 1) / BLK);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (ptrdiff_t b = 0; b < nb; b++) {
        size_t i0 = (size_t)b * BLK, len = n - i0 < BLK ? n - i0 : BLK;
        adamw_block(len, pp + i0, gp + i0, mp + i0, vp + i0, lr, b1, b2, eps, wd, bc1, bc2,
                    grad_scale);
    }
}
