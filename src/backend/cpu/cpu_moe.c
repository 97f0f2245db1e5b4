/* Mixture-of-experts ops of the CPU backend: router, balance loss, row
 * gather/scatter, row dots. */
#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

/* ---------------------------------------------------------------- router */

void fy_cpu_router_fwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref logits,
                       fy_ref bias, fy_ref s, fy_ref idx, fy_ref w) {
    const char *op = "router_fwd";
    if (!N) return;
    int E = o->n_experts, K = o->top_k, G = o->n_group < 1 ? 1 : o->n_group;
    int gs = E / G, keep = G > 1 && o->topk_group < G ? o->topk_group : G;
    const float *lp = fy_cpu_f(be, logits, (size_t)N * E, op, "logits");
    const float *bp = bias.buf ? fy_cpu_f(be, bias, E, op, "bias") : NULL;
    float *sp = fy_cpu_f(be, s, (size_t)N * E, op, "s");
    int32_t *ip = fy_cpu_i(be, idx, (size_t)N * K, op, "idx");
    float *wp = fy_cpu_f(be, w, (size_t)N * K, op, "w");
    if (!lp || (bias.buf && !bp) || !sp || !ip || !wp) return;
    int oom = 0;
    float scaling = o->scaling;
#pragma omp parallel if ((size_t)N * E > 4096)
    {
        /* per thread: masked scores sb[E], group scores gsc[G], kept[G] */
        float *sb = malloc(((size_t)E + G) * sizeof *sb);
        char *gk = malloc((size_t)G + E), *taken = gk ? gk + G : NULL;
        if (!sb || !gk) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(static)
        for (int t = 0; t < N; t++) {
            if (!sb || !gk) continue;
            float *gsc = sb + E;
            const float *lr = lp + (size_t)t * E;
            float *sr = sp + (size_t)t * E;
            for (int e = 0; e < E; e++) {
                float sv = fy_cpu_sigmoid(lr[e]);
                sr[e] = sv;
                sb[e] = bp ? sv + bp[e] : sv;
            }
            if (keep < G) {
                /* group score: sum of the group's two largest s+b */
                for (int g = 0; g < G; g++) {
                    const float *x = sb + (size_t)g * gs;
                    float a = -INFINITY, b2 = -INFINITY;
                    for (int e = 0; e < gs; e++) {
                        if (x[e] > a) {
                            b2 = a;
                            a = x[e];
                        } else if (x[e] > b2) {
                            b2 = x[e];
                        }
                    }
                    gsc[g] = gs >= 2 ? a + b2 : a;
                    gk[g] = 0;
                }
                for (int r = 0; r < keep; r++) { /* best groups, ties to the lower index */
                    int best = -1;
                    for (int g = 0; g < G; g++)
                        if (!gk[g] && (best < 0 || gsc[g] > gsc[best])) best = g;
                    if (best >= 0) gk[best] = 1;
                }
                for (int g = 0; g < G; g++)
                    if (!gk[g])
                        for (int e = 0; e < gs; e++) sb[(size_t)g * gs + e] = -INFINITY;
            }
            int32_t *ir = ip + (size_t)t * K;
            float *wr = wp + (size_t)t * K;
            float sum = 0.0f;
            memset(taken, 0, (size_t)E);
            for (int k = 0; k < K; k++) { /* top-K, descending, ties to the lower index */
                int best = -1;
                for (int e = 0; e < E; e++)
                    if (!taken[e] && (best < 0 || sb[e] > sb[best])) best = e;
                if (best < 0) best = 0; /* unreachable: K <= E */
                taken[best] = 1;
                ir[k] = best;
                wr[k] = sr[best];
                sum += sr[best];
            }
            if (o->norm_topk_prob) {
                float den = sum + 1e-20f;
                for (int k = 0; k < K; k++) wr[k] = wr[k] / den * scaling;
            } else {
                for (int k = 0; k < K; k++) wr[k] *= scaling;
            }
        }
        free(sb);
        free(gk);
    }
    if (oom) fy_be_set_error(be, "cpu router_fwd: out of memory");
}

/* w_k = c s_k / S (S = sum of chosen s + 1e-20, when normalised) or c s_k:
 *   ds_j = c/S (dw_j - sum_k dw_k s_k / S)  (normalised),  c dw_j  (not)
 *   dlogit_j = ds_j s_j (1 - s_j). */
void fy_cpu_router_bwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref s, fy_ref idx,
                       fy_ref dw, fy_ref dlogits, int accumulate) {
    const char *op = "router_bwd";
    if (!N) return;
    int E = o->n_experts, K = o->top_k;
    const float *sp = fy_cpu_f(be, s, (size_t)N * E, op, "s");
    const int32_t *ip = fy_cpu_i(be, idx, (size_t)N * K, op, "idx");
    const float *dwp = fy_cpu_f(be, dw, (size_t)N * K, op, "dw");
    float *dl = fy_cpu_f(be, dlogits, (size_t)N * E, op, "dlogits");
    if (!sp || !ip || !dwp || !dl) return;
    int bad = 0;
#pragma omp parallel for schedule(static) if ((size_t)N * E > 4096)
    for (int t = 0; t < N; t++) {
        const float *sr = sp + (size_t)t * E;
        const int32_t *ir = ip + (size_t)t * K;
        const float *dr = dwp + (size_t)t * K;
        float *out = dl + (size_t)t * E;
        if (!accumulate)
            for (int e = 0; e < E; e++) out[e] = 0.0f;
        int ok = 1;
        for (int k = 0; k < K; k++) ok &= ir[k] >= 0 && ir[k] < E;
        if (!ok) {
#pragma omp atomic write
            bad = 1;
            continue;
        }
        float c = o->scaling;
        if (o->norm_topk_prob) {
            float S = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) S += sr[ir[k]];
            S += 1e-20f;
            for (int k = 0; k < K; k++) dot += dr[k] * sr[ir[k]];
            float q = dot / S;
            for (int k = 0; k < K; k++) {
                float sv = sr[ir[k]];
                float ds = c / S * (dr[k] - q);
                out[ir[k]] += ds * sv * (1.0f - sv);
            }
        } else {
            for (int k = 0; k < K; k++) {
                float sv = sr[ir[k]];
                out[ir[k]] += c * dr[k] * sv * (1.0f - sv);
            }
        }
    }
    if (bad) fy_be_set_error(be, "cpu router_bwd: expert index out of range [0, %d)", E);
}

/* ---------------------------------------------------------------- balance loss */

/* counts[b*E + i] = number of tokens of sequence b choosing expert i;
 * returns -1 on a bad index. */
static int balance_counts(int B, int T, int E, int K, const int32_t *ip, int32_t *counts) {
    int bad = 0;
#pragma omp parallel for schedule(static) if ((size_t)B * T * K > FY_CPU_PAR_MIN)
    for (int b = 0; b < B; b++) {
        int32_t *c = counts + (size_t)b * E;
        for (int i = 0; i < E; i++) c[i] = 0;
        for (size_t e = (size_t)b * T * K; e < (size_t)(b + 1) * T * K; e++) {
            int32_t x = ip[e];
            if (x < 0 || x >= E) {
#pragma omp atomic write
                bad = 1;
                continue;
            }
            c[x]++;
        }
    }
    return bad ? -1 : 0;
}

float fy_cpu_balance_fwd(fy_backend *be, int B, int T, int E, int K, float alpha, fy_ref s,
                         fy_ref idx) {
    const char *op = "balance_fwd";
    size_t N = (size_t)B * T;
    const float *sp = fy_cpu_f(be, s, N * E, op, "s");
    const int32_t *ip = fy_cpu_i(be, idx, N * K, op, "idx");
    if (!sp || !ip) return 0.0f;
    int32_t *counts = malloc((size_t)B * E * sizeof *counts);
    double *per = malloc(N * sizeof *per);
    if (!counts || !per) {
        free(counts);
        free(per);
        fy_be_set_error(be, "cpu %s: out of memory", op);
        return 0.0f;
    }
    if (balance_counts(B, T, E, K, ip, counts)) {
        free(counts);
        free(per);
        fy_be_set_error(be, "cpu %s: expert index out of range [0, %d)", op, E);
        return 0.0f;
    }
    /* per token: sum_i f_i s_ti / S_t, then summed in order */
    double fscale = (double)E / ((double)K * T);
#pragma omp parallel for schedule(static) if (N * E > FY_CPU_PAR_MIN)
    for (size_t t = 0; t < N; t++) {
        const float *sr = sp + t * E;
        const int32_t *c = counts + (t / T) * E;
        double S = 0.0, a = 0.0;
        for (int i = 0; i < E; i++) {
            S += sr[i];
            a += (double)c[i] * sr[i];
        }
        per[t] = a / S;
    }
    double tot = 0.0;
    for (size_t t = 0; t < N; t++) tot += per[t];
    free(counts);
    free(per);
    /* loss = alpha/B sum_b sum_i f_i (1/T) sum_t s_ti/S_t */
    return (float)((double)alpha / B * fscale / T * tot);
}

/* d loss / d s_tj = alpha/(B T) (f_j / S_t - sum_i f_i s_ti / S_t^2);
 * dlogit_tj += dloss * that * s_tj (1 - s_tj). */
void fy_cpu_balance_bwd(fy_backend *be, int B, int T, int E, int K, float alpha, float dloss,
                        fy_ref s, fy_ref idx, fy_ref dlogits) {
    const char *op = "balance_bwd";
    size_t N = (size_t)B * T;
    const float *sp = fy_cpu_f(be, s, N * E, op, "s");
    const int32_t *ip = fy_cpu_i(be, idx, N * K, op, "idx");
    float *dl = fy_cpu_f(be, dlogits, N * E, op, "dlogits");
    if (!sp || !ip || !dl) return;
    int32_t *counts = malloc((size_t)B * E * sizeof *counts);
    if (!counts) {
        fy_be_set_error(be, "cpu %s: out of memory", op);
        return;
    }
    if (balance_counts(B, T, E, K, ip, counts)) {
        free(counts);
        fy_be_set_error(be, "cpu %s: expert index out of range [0, %d)", op, E);
        return;
    }
    double fscale = (double)E / ((double)K * T);
    double coef = (double)dloss * alpha / ((double)B * T) * fscale; /* times count_j */
#pragma omp parallel for schedule(static) if (N * E > FY_CPU_PAR_MIN)
    for (size_t t = 0; t < N; t++) {
        const float *sr = sp + t * E;
        const int32_t *c = counts + (t / T) * E;
        float *out = dl + t * E;
        double S = 0.0, a = 0.0;
        for (int i = 0; i < E; i++) {
            S += sr[i];
            a += (double)c[i] * sr[i];
        }
        double invS = 1.0 / S, q = a * invS * invS;
        for (int j = 0; j < E; j++) {
            double g = coef * ((double)c[j] * invS - q);
            out[j] += (float)g * sr[j] * (1.0f - sr[j]);
        }
    }
    free(counts);
}

/* ---------------------------------------------------------------- gather / scatter */

/* The number of whole rows of width D, stride ld, that fit in r's buffer. */
static size_t rows_in(fy_ref r, int D, int ld) {
    if (!r.buf || r.off > r.buf->n) return 0;
    size_t avail = r.buf->n - r.off;
    if (avail < (size_t)D) return 0;
    return (avail - D) / (size_t)ld + 1;
}

void fy_cpu_gather_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx, fy_ref w,
                        fy_ref dst, int ldd) {
    const char *op = "gather_rows";
    const float *sp = fy_cpu_f(be, src, D, op, "src");
    const int32_t *ip = fy_cpu_i(be, idx, n, op, "idx");
    const float *wp = w.buf ? fy_cpu_f(be, w, n, op, "w") : NULL;
    float *dp = fy_cpu_f(be, dst, fy_cpu_span(n, ldd, D), op, "dst");
    if (!sp || !ip || (w.buf && !wp) || !dp) return;
    size_t nsrc = rows_in(src, D, lds);
    int bad = -1;
#pragma omp parallel for schedule(static) if ((size_t)n * D > FY_CPU_PAR_MIN)
    for (int i = 0; i < n; i++) {
        int32_t r = ip[i];
        float *d = dp + (size_t)i * ldd;
        if (r < 0 || (size_t)r >= nsrc) {
#pragma omp atomic write
            bad = i;
            continue;
        }
        const float *s = sp + (size_t)r * lds;
        if (wp) {
            float a = wp[i];
#pragma omp simd
            for (int j = 0; j < D; j++) d[j] = s[j] * a;
        } else {
            memcpy(d, s, (size_t)D * sizeof *d);
        }
    }
    if (bad >= 0)
        fy_be_set_error(be, "cpu %s: idx[%d] = %d outside the %zu rows of src", op, bad, ip[bad],
                        nsrc);
}

/* Threads own column blocks and add rows in order of i: repeated indices
 * are summed in the same order whatever the thread count. */
void fy_cpu_scatter_add_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx,
                             fy_ref w, fy_ref dst, int ldd) {
    const char *op = "scatter_add_rows";
    const float *sp = fy_cpu_f(be, src, fy_cpu_span(n, lds, D), op, "src");
    const int32_t *ip = fy_cpu_i(be, idx, n, op, "idx");
    const float *wp = w.buf ? fy_cpu_f(be, w, n, op, "w") : NULL;
    float *dp = fy_cpu_f(be, dst, D, op, "dst");
    if (!sp || !ip || (w.buf && !wp) || !dp) return;
    size_t ndst = rows_in(dst, D, ldd);
    for (int i = 0; i < n; i++) {
        if (ip[i] < 0 || (size_t)ip[i] >= ndst) {
            fy_be_set_error(be, "cpu %s: idx[%d] = %d outside the %zu rows of dst", op, i, ip[i],
                            ndst);
            return;
        }
    }
    const int CB = 64;
    int nb = (D + CB - 1) / CB;
#pragma omp parallel for schedule(static) if (nb > 1 && (size_t)n * D > FY_CPU_PAR_MIN)
    for (int cb = 0; cb < nb; cb++) {
        int j0 = cb * CB, j1 = j0 + CB < D ? j0 + CB : D;
        for (int i = 0; i < n; i++) {
            const float *s = sp + (size_t)i * lds;
            float *d = dp + (size_t)ip[i] * ldd;
            if (wp) {
                float a = wp[i];
#pragma omp simd
                for (int j = j0; j < j1; j++) d[j] += s[j] * a;
            } else {
#pragma omp simd
                for (int j = j0; j < j1; j++) d[j] += s[j];
            }
        }
    }
}

void fy_cpu_rows_dot(fy_backend *be, int n, int D, fy_ref a, int lda, fy_ref ia, fy_ref b, int ldb,
                     fy_ref out, int accumulate) {
    const char *op = "rows_dot";
    const float *ap = fy_cpu_f(be, a, D, op, "a");
    const int32_t *ip = fy_cpu_i(be, ia, n, op, "ia");
    const float *bp = fy_cpu_f(be, b, fy_cpu_span(n, ldb, D), op, "b");
    float *o = fy_cpu_f(be, out, n, op, "out");
    if (!ap || !ip || !bp || !o) return;
    size_t na = rows_in(a, D, lda);
    int bad = -1;
#pragma omp parallel for schedule(static) if ((size_t)n * D > FY_CPU_PAR_MIN)
    for (int i = 0; i < n; i++) {
        int32_t r = ip[i];
        if (r < 0 || (size_t)r >= na) {
#pragma omp atomic write
            bad = i;
            continue;
        }
        const float *x = ap + (size_t)r * lda, *y = bp + (size_t)i * ldb;
        double acc = fy_cpu_dot_d(x, y, D);
        if (accumulate)
            o[i] += (float)acc;
        else
            o[i] = (float)acc;
    }
    if (bad >= 0)
        fy_be_set_error(be, "cpu %s: ia[%d] = %d outside the %zu rows of a", op, bad, ip[bad], na);
}
