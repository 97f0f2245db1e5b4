/* The counter-based RNG (core/rng.h): SplitMix64 over (seed, stream,
 * counter), so any value is computed directly, in any order, on any rank. */
#include "core/rng.h"

#include <math.h>

uint64_t fy_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter) {
    return fy_rng_mix(fy_rng_key(seed, stream) ^ counter);
}

float fy_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
    return (float)(fy_rng_u64(seed, stream, counter) >> 40) * (1.0f / 16777216.0f);
}

float fy_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter) {
    /* u1 in (0,1] so log() is finite. */
    double u1 = ((double)(fy_rng_u64(seed, stream, 2 * counter) >> 11) + 1.0) / 9007199254740992.0;
    double u2 = (double)(fy_rng_u64(seed, stream, 2 * counter + 1) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
