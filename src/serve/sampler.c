#include "serve/sampler.h"

#include <math.h>
#include <stdlib.h>

#include "core/rng.h"

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *logits = ctx;
    float x = logits[*(const int32_t *)a], y = logits[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

int32_t fy_sample(const fy_sampler *s, const float *logits, int V, uint64_t position, int32_t *idx) {
    if (s->temperature <= 0) {
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    /* Candidates in descending logit order (ties: lower id first). */
    for (int i = 0; i < V; i++) idx[i] = i;
    qsort_r(idx, V, sizeof *idx, by_logit_desc, (void *)logits);
    int n = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    double mx = logits[idx[0]], total = 0;
    double *p = malloc((size_t)n * sizeof *p);
    if (!p) return idx[0];
    for (int i = 0; i < n; i++) total += p[i] = exp((logits[idx[i]] - mx) / s->temperature);
    if (s->top_p > 0 && s->top_p < 1) {
        double acc = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += p[i] / total;
            if (acc >= s->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        total = 0;
        for (int i = 0; i < n; i++) total += p[i];
    }
    double u = fy_rng_uniform(s->seed, 0x73616d70, position) * total, acc = 0;
    int32_t pick = idx[n - 1];
    for (int i = 0; i < n; i++) {
        acc += p[i];
        if (u < acc) {
            pick = idx[i];
            break;
        }
    }
    free(p);
    return pick;
}
