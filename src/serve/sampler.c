/* The next token from logits (serve/sampler.h): greedy, or temperature,
 * top-k and top-p from a counter-based random stream, so a seed and a
 * position always give the same token. */
#include "serve/sampler.h"

#include <math.h>
#include <stdlib.h>

#include "core/rng.h"

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *logits = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = logits[i], y = logits[j];
    if (x != y) return x < y ? 1 : -1;
    return (i > j) - (i < j);
}

/* Below max - CUT*T a token's probability is under e^-CUT times the top
 * one's; such tokens are sorted only when the ones above do not settle the
 * top-k / top-p choice (a flat distribution). */
#define CUT 16.0

size_t fy_sample_scratch_size(int V) { return (size_t)(V > 0 ? V : 1) * (sizeof(double) + sizeof(int32_t)); }

/* The first index of the largest logit, as `if (l[i] > l[best]) best = i`
 * from best = 0 finds it (NaNs never win; a NaN at 0 stays), in 16
 * independent lanes the compiler vectorizes, then the lanes combined by
 * value, ties to the lowest index. Once per token of every stream: the
 * one-at-a-time loop was ~8 % of a 16-stream serve step (vocab 8192). */
enum { AM_LANES = 16 };
int32_t fy_argmax(const float *l, int V) {
    if (V <= 1 || l[0] != l[0]) return 0;
    float m[AM_LANES];
    int32_t id[AM_LANES];
    for (int j = 0; j < AM_LANES; j++) m[j] = l[0], id[j] = 0;
    int i = 0;
    for (; i + AM_LANES <= V; i += AM_LANES)
        for (int j = 0; j < AM_LANES; j++) {
            const int gt = l[i + j] > m[j];
            m[j] = gt ? l[i + j] : m[j];
            id[j] = gt ? i + j : id[j];
        }
    int32_t best = 0;
    for (int j = 0; j < AM_LANES; j++)
        if (m[j] > l[best] || (m[j] == l[best] && id[j] < best)) best = id[j];
    for (; i < V; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

int32_t fy_sample(const fy_sampler *s, const float *logits, int V, uint64_t position, void *scratch) {
    int32_t best = fy_argmax(logits, V);
    if (s->temperature <= 0 || V <= 1) return best;
    const double inv_t = 1.0 / s->temperature, mx = logits[best];
    const double u = fy_rng_uniform(s->seed, 0x73616d70, position);
    const int k = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    const int use_p = s->top_p > 0 && s->top_p < 1;
    double *pr = scratch; /* unnormalized probabilities, by id */
    int32_t *idx = (int32_t *)(pr + V);
    double total_all = 0;
    for (int i = 0; i < V; i++) total_all += pr[i] = exp(((double)logits[i] - mx) * inv_t);
    if (k == V && !use_p) { /* plain temperature: no order needed, walk the ids */
        double target = u * total_all, acc = 0;
        for (int i = 0; i < V; i++)
            if ((acc += pr[i]) > target) return i;
        return best;
    }
    /* Candidates in descending logit order (ties: lower id first). Those
     * above the cut are a prefix of the full order, so when they contain the
     * kept set the result is the one a full sort gives. */
    double cut = mx - CUT * s->temperature;
    int n = 0;
    for (int i = 0; i < V; i++)
        if (logits[i] >= cut) idx[n++] = i;
    for (;;) {
        qsort_r(idx, n, sizeof *idx, by_logit_desc, (void *)logits);
        int m = n < k ? n : k; /* candidates inside the top-k set */
        int complete = n == V || m == k;
        int keep = 0;
        if (complete || k == V) { /* else the top-k set is not all here */
            double total = 0;     /* mass of the top-k set */
            if (k == V)
                total = total_all;
            else
                for (int i = 0; i < k; i++) total += pr[idx[i]];
            keep = complete ? m : 0;
            if (use_p) {
                double acc = 0, need = s->top_p * total;
                for (int i = 0; i < m; i++)
                    if ((acc += pr[idx[i]]) >= need) {
                        keep = i + 1;
                        break;
                    }
            }
        }
        if (keep) {
            double kept = 0;
            for (int i = 0; i < keep; i++) kept += pr[idx[i]];
            double target = u * kept, acc = 0;
            for (int i = 0; i < keep; i++)
                if ((acc += pr[idx[i]]) > target) return idx[i];
            return idx[keep - 1];
        }
        for (int i = 0; i < V; i++) idx[i] = i; /* flat: sort everything */
        n = V;
    }
}
