/* IEEE half and bfloat16 <-> float, bit-exact (core/half.h). */
#include "core/half.h"

#include <string.h>

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float fy_bf16_to_f32(uint16_t h) { return from_bits((uint32_t)h << 16); }

/* Round to nearest even by adding 0x7fff + the lowest kept bit; a NaN keeps
 * its top bits, made quiet. Written as a select, not a branch, so that
 * fy_f32_to_bf16_n's loop vectorizes. */
static inline uint16_t bf16_of_bits(uint32_t u) {
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

uint16_t fy_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return bf16_of_bits(u);
}

/* Sixteen at a time on restrict pointers: GCC's -O2 vectorizer (its "very
 * cheap" cost model) takes a loop of known length that needs no runtime
 * alias check; the rest one by one. */
void fy_f32_to_bf16_n(const float *restrict f, size_t n, uint16_t *restrict out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            uint32_t u;
            memcpy(&u, &f[i + j], 4);
            out[i + j] = bf16_of_bits(u);
        }
    for (; i < n; i++) out[i] = fy_f32_to_bf16(f[i]);
}

float fy_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 31) /* inf, or NaN made quiet with its payload */
        return from_bits(sign | 0x7f800000u | man << 13 | (man ? 0x400000u : 0));
    if (exp == 0) { /* zero, subnormal: man * 2^-24, exact in float */
        float m = (float)man * 0x1p-24f;
        uint32_t u;
        memcpy(&u, &m, 4);
        return from_bits(sign | u);
    }
    return from_bits(sign | (exp + 112u) << 23 | man << 13); /* rebias 15 -> 127 */
}

/* Round to nearest even; overflow to infinity, underflow through the
 * subnormals to zero, NaN to ggml's (and torch's) quiet NaN. */
uint16_t fy_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* >= 65520: inf */
    if (a < 0x38800000u) {                                            /* below 2^-14: subnormal */
        if (a < 0x33000000u) return sign;                             /* up to 2^-25 (a tie to 0): zero */
        /* the value is man * 2^(E - 150), E the biased exponent; in units of
         * the smallest subnormal (2^-24) that is man >> (126 - E) */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23);                             /* 14..24 */
        uint32_t h = man >> shift, rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((a >> 13) - (112u << 10)), rest = a & 0x1fffu;       /* rebias 127 -> 15 */
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;         /* may carry into inf: right */
    return (uint16_t)(sign | h);
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/* AVX and F16C from CPUID leaf 1 (clang 14's __builtin_cpu_supports knows
 * no "f16c"), read once; a benign race: every thread computes the same. */
static int has_f16c(void) {
    static int cached = -1;
    if (cached < 0) {
        unsigned a, b, c, d;
        cached = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_AVX);
    }
    return cached;
}

/* Eight at a time; returns how many it did. vcvtps2ph rounds to nearest
 * even with overflow to infinity and exact subnormals, as fy_f32_to_f16
 * does; only NaNs differ (it keeps payload bits), so lanes holding one are
 * redone by fy_f32_to_f16. */
__attribute__((target("avx,f16c"))) static size_t f16_n_f16c(const float *f, size_t n, uint16_t *out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(f + i);
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        int nan = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        for (int l = 0; nan; l++, nan >>= 1)
            if (nan & 1) out[i + l] = fy_f32_to_f16(f[i + l]);
    }
    return i;
}
#endif

void fy_f32_to_f16_n(const float *f, size_t n, uint16_t *out) {
    size_t i = 0;
#if defined(__GNUC__) && defined(__x86_64__)
    if (has_f16c()) i = f16_n_f16c(f, n, out);
#endif
    for (; i < n; i++) out[i] = fy_f32_to_f16(f[i]);
}
