/* Choosing the next token from logits: greedy, or temperature + top-k +
 * top-p sampling drawn from the counter-based RNG at (seed, position), so a
 * generation is reproducible for a seed on any backend. */
#ifndef FY_SAMPLER_H
#define FY_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct fy_sampler {
    float temperature; /* 0 = greedy (argmax, ties to the lowest id) */
    int top_k;         /* 0 = all tokens */
    float top_p;       /* 1 = all tokens; keeps the smallest prefix with mass >= top_p */
    uint64_t seed;
} fy_sampler;

/* The lowest index of the largest of l[0..V) (0 for V <= 1; NaNs never
 * win, a NaN at 0 is returned): greedy decoding's token. */
int32_t fy_argmax(const float *l, int V);
/* Bytes of scratch fy_sample needs for a vocabulary of V. */
size_t fy_sample_scratch_size(int V);
/* The token to emit after `logits` [V] at sequence position `position`.
 * Top-k is applied first, then top-p over the probabilities renormalized to
 * the top-k set (at least one token is always kept). The draw is
 * fy_rng_uniform(seed, stream, position): the same seed and logits give the
 * same token. scratch: fy_sample_scratch_size(V) bytes, caller-provided, so
 * sampling allocates nothing. */
int32_t fy_sample(const fy_sampler *s, const float *logits, int V, uint64_t position, void *scratch);

#endif
