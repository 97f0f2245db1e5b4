/* Counter-based RNG (SplitMix64 over (seed, stream, counter)): any value can
 * be recomputed from its coordinates, so a resumed run draws exactly what an
 * uninterrupted run would have, with no generator state to checkpoint. */
#ifndef FY_RNG_H
#define FY_RNG_H

#include <stdint.h>

/* A 64-bit hash of (seed, stream, counter); statistically independent across
 * any change of the three. */
uint64_t fy_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter);

/* SplitMix64's finaliser, and fy_rng_u64 split in two for many counters of
 * one (seed, stream): fy_rng_u64(seed, stream, c) ==
 * fy_rng_mix(fy_rng_key(seed, stream) ^ c) (a third of the hashing). */
static inline uint64_t fy_rng_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline uint64_t fy_rng_key(uint64_t seed, uint64_t stream) { return fy_rng_mix(fy_rng_mix(seed) ^ stream); }

/* Uniform in [0, 1) with 24 bits (exactly representable as float). */
float fy_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter);

/* Standard normal via Box-Muller on counters 2c and 2c+1. */
float fy_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter);

#endif
