/* Mixture-of-experts kernels: router, balance loss, row gather/scatter. */

/* One item per token, the cpu backend's algorithm step for step (sigmoid
 * and s + b bitwise equal to it, so the choices are the same). Top-K picks
 * in the strict order (score descending, index ascending): the k-th pick is
 * the best expert strictly after the (k-1)-th in that order, which is the
 * cpu's "best not yet taken, ties to the lower index" without a taken
 * array. Groups (G <= 64, checked by the host) are kept in a bit mask. */
kernel void fy_router_fwd(int N, int E, int K, int G, int keep, int norm, float scaling,
                          global const float *lg, ulong lgo, global const float *bias, ulong bo,
                          int has_bias, global float *s, ulong so, global int *idx, ulong io,
                          global float *w, ulong wo) {
    int t = get_global_id(0);
    if (t >= N) return;
    global const float *lr = lg + lgo + (ulong)t * E;
    global float *sr = s + so + (ulong)t * E;
    bias += bo;
    for (int e = 0; e < E; e++) sr[e] = fy_sigmoid(lr[e]);
    int gs = E / G;
    ulong kept = ~(ulong)0;
    if (keep < G) {
        float gsc[64];
        for (int g = 0; g < G; g++) {
            float a = -INFINITY, b2 = -INFINITY;
            for (int e = g * gs; e < (g + 1) * gs; e++) {
                float x = has_bias ? sr[e] + bias[e] : sr[e];
                if (x > a) {
                    b2 = a;
                    a = x;
                } else if (x > b2) {
                    b2 = x;
                }
            }
            gsc[g] = gs >= 2 ? a + b2 : a;
        }
        kept = 0;
        for (int r = 0; r < keep; r++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!((kept >> g) & 1) && (best < 0 || gsc[g] > gsc[best])) best = g;
            if (best >= 0) kept |= (ulong)1 << best;
        }
    }
    global int *ir = idx + io + (ulong)t * K;
    global float *wr = w + wo + (ulong)t * K;
    float pv = 0.0f, sum = 0.0f;
    int pe = -1;
    for (int k = 0; k < K; k++) {
        int best = -1;
        float bv = 0.0f;
        for (int e = 0; e < E; e++) {
            float v = ((kept >> (e / gs)) & 1) ? (has_bias ? sr[e] + bias[e] : sr[e]) : -INFINITY;
            if (pe >= 0 && !(v < pv || (v == pv && e > pe))) continue; /* not after the last pick */
            if (best < 0 || v > bv) {
                best = e;
                bv = v;
            }
        }
        if (best < 0) best = 0; /* unreachable: K <= E */
        ir[k] = best;
        wr[k] = sr[best];
        sum += sr[best];
        pv = bv;
        pe = best;
    }
    if (norm) {
        float den = sum + 1e-20f;
        for (int k = 0; k < K; k++) wr[k] = wr[k] / den * scaling;
    } else {
        for (int k = 0; k < K; k++) wr[k] *= scaling;
    }
}

/* dlogits (=|+=) from dw through the chosen s; one item per token. */
kernel void fy_router_bwd(int N, int E, int K, int norm, float scaling, global const float *s,
                          ulong so, global const int *idx, ulong io, global const float *dw,
                          ulong dwo, global float *dl, ulong dlo, int accumulate,
                          global int *errf) {
    int t = get_global_id(0);
    if (t >= N) return;
    global const float *sr = s + so + (ulong)t * E;
    global const int *ir = idx + io + (ulong)t * K;
    global const float *dr = dw + dwo + (ulong)t * K;
    global float *out = dl + dlo + (ulong)t * E;
    if (!accumulate)
        for (int e = 0; e < E; e++) out[e] = 0.0f;
    for (int k = 0; k < K; k++)
        if (ir[k] < 0 || ir[k] >= E) {
            fy_flag(errf, FY_OCL_E_ROUTER_IDX, t, ir[k], E);
            return;
        }
    float c = scaling;
    if (norm) {
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

/* counts[b * E + e] = tokens of sequence b choosing e; global (E, B). */
kernel void fy_balance_counts(int B, int T, int E, int K, global const int *idx, ulong io,
                              global int *counts, global int *errf) {
    int e = get_global_id(0), b = get_global_id(1);
    if (e >= E || b >= B) return;
    int c = 0;
    for (ulong q = (ulong)b * T * K; q < (ulong)(b + 1) * T * K; q++) {
        int x = idx[io + q];
        if (x < 0 || x >= E) {
            if (e == 0) fy_flag(errf, FY_OCL_E_BALANCE_IDX, (int)(q / K), x, E);
            continue;
        }
        c += x == e;
    }
    counts[(ulong)b * E + e] = c;
}

/* per[t] = sum_i count_i s_ti / sum_i s_ti, in acc_t, one item per token. */
kernel void fy_balance_tok(int N, int T, int E, global const float *s, ulong so,
                           global const int *counts, global acc_t *per) {
    int t = get_global_id(0);
    if (t >= N) return;
    global const float *sr = s + so + (ulong)t * E;
    global const int *c = counts + (ulong)(t / T) * E;
    acc_t S = 0, a = 0;
    for (int i = 0; i < E; i++) {
        S += sr[i];
        a += (acc_t)c[i] * sr[i];
    }
    per[t] = a / S;
}

/* dlogit_tj += coef (c_j / S_t - a_t / S_t^2) s_tj (1 - s_tj). */
kernel void fy_balance_bwd(int N, int T, int E, acc_t coef, global const float *s, ulong so,
                           global const int *counts, global float *dl, ulong dlo) {
    int t = get_global_id(0);
    if (t >= N) return;
    global const float *sr = s + so + (ulong)t * E;
    global const int *c = counts + (ulong)(t / T) * E;
    global float *out = dl + dlo + (ulong)t * E;
    acc_t S = 0, a = 0;
    for (int i = 0; i < E; i++) {
        S += sr[i];
        a += (acc_t)c[i] * sr[i];
    }
    acc_t invS = (acc_t)1 / S, q = a * invS * invS;
    for (int j = 0; j < E; j++) {
        acc_t g = coef * ((acc_t)c[j] * invS - q);
        out[j] += (float)g * sr[j] * (1.0f - sr[j]);
    }
}

/* dst[i, :] = src[idx[i], :] * (w ? w[i] : 1); global (D, n). */
kernel void fy_gather_rows(int n, int D, int nsrc, global const float *src, ulong so, int lds,
                           global const int *idx, ulong io, global const float *w, ulong wo,
                           int has_w, global float *dst, ulong dof, int ldd, global int *errf) {
    int j = get_global_id(0), i = get_global_id(1);
    if (j >= D || i >= n) return;
    int r = idx[io + i];
    if (r < 0 || r >= nsrc) {
        if (j == 0) fy_flag(errf, FY_OCL_E_GATHER_IDX, i, r, nsrc);
        return;
    }
    float v = src[so + (ulong)r * lds + j];
    dst[dof + (ulong)i * ldd + j] = has_w ? v * w[wo + i] : v;
}

/* dst[idx[i], :] += src[i, :] * (w ? w[i] : 1), deterministic without
 * atomics: item (j, g) owns column j of the destination rows r with
 * r % G == g and walks i in order, so every destination element receives
 * its rows in order of i (the cpu backend's order). global (D, G). */
kernel void fy_scatter_add_rows(int n, int D, int ndst, int G, global const float *src, ulong so,
                                int lds, global const int *idx, ulong io, global const float *w,
                                ulong wo, int has_w, global float *dst, ulong dof, int ldd,
                                global int *errf) {
    int j = get_global_id(0), g = get_global_id(1);
    if (j >= D || g >= G) return;
    for (int i = 0; i < n; i++) {
        int r = idx[io + i];
        if (r < 0 || r >= ndst) {
            if (j == 0 && g == 0) fy_flag(errf, FY_OCL_E_SCATTER_IDX, i, r, ndst);
            continue;
        }
        if (r % G != g) continue;
        float v = src[so + (ulong)i * lds + j];
        global float *d = dst + dof + (ulong)r * ldd + j;
        if (has_w) *d += v * w[wo + i];
        else *d += v;
    }
}
