/* Loss and optimizer ops of the CPU backend: softmax cross-entropy, AdamW. */
#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

/* Per row: m = max x; e_j = exp(x_j - m); Z = sum e_j (double);
 * loss = log Z + m - x_target; dlogits = (e / Z - onehot) * grad_scale.
 * dlogits may alias logits: x_target and m are read before any write, and
 * every later pass reads element j only before writing element j. */
double fy_cpu_xent_fwdbwd(fy_backend *be, int N, int V, fy_ref logits, fy_ref targets,
                          int ignore_index, float grad_scale, fy_ref losses, fy_ref dlogits) {
    const char *op = "xent_fwdbwd";
    if (N < 0 || V <= 0) {
        fy_be_set_error(be, "cpu %s: bad sizes N=%d V=%d", op, N, V);
        return 0.0;
    }
    if (!N) return 0.0;
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
        if (tg == ignore_index) {
            lp[n] = 0.0f;
            for (int j = 0; j < V; j++) d[j] = 0.0f;
            continue;
        }
        if (tg < 0 || tg >= V) {
#pragma omp atomic write
            bad = n;
            lp[n] = 0.0f;
            continue;
        }
        float xt = x[tg];
        float mx = x[0];
        for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        float z = 0.0f;
        /* simd reduction: a fixed, compile-time order within one thread */
#pragma omp simd reduction(+ : z)
        for (int j = 0; j < V; j++) {
            float e = fy_cpu_exp(x[j] - mx);
            d[j] = e;
            z += e;
        }
        double loss = log((double)z) + (double)mx - (double)xt;
        lp[n] = (float)loss;
        per[n] = loss;
        float c = grad_scale / z;
#pragma omp simd
        for (int j = 0; j < V; j++) d[j] *= c;
        d[tg] -= grad_scale;
    }
    double tot = 0.0;
    for (int n = 0; n < N; n++) tot += per[n];
    free(per);
    if (bad >= 0)
        fy_be_set_error(be, "cpu %s: targets[%d] = %d outside [0, %d) and not ignore_index %d", op,
                        bad, tp[bad], V, ignore_index);
    return tot;
}

void fy_cpu_adamw(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v, float lr,
                  float b1, float b2, float eps, float wd, int t, float grad_scale) {
    const char *op = "adamw";
    if (t < 1) {
        fy_be_set_error(be, "cpu %s: step t=%d must be >= 1", op, t);
        return;
    }
    if (!n) return;
    float *pp = fy_cpu_f(be, p, n, op, "p");
    const float *gp = fy_cpu_f(be, g, n, op, "g");
    float *mp = fy_cpu_f(be, m, n, op, "m");
    float *vp = fy_cpu_f(be, v, n, op, "v");
    if (!pp || !gp || !mp || !vp) return;
    float bc1 = (float)(1.0 - pow((double)b1, t));
    float bc2 = (float)(1.0 - pow((double)b2, t));
    float ib1 = 1.0f - b1, ib2 = 1.0f - b2;
    ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for simd schedule(static) if (n > FY_CPU_PAR_MIN)
    for (ptrdiff_t i = 0; i < nn; i++) {
        float gi = gp[i] * grad_scale;
        float mi = b1 * mp[i] + ib1 * gi;
        float vi = b2 * vp[i] + ib2 * gi * gi;
        mp[i] = mi;
        vp[i] = vi;
        float pi = pp[i];
        pp[i] = pi - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * pi);
    }
}
