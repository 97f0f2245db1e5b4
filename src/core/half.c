/* IEEE half and bfloat16 <-> float, bit-exact (core/half.h). */
#include "core/half.h"

#include <string.h>

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float fy_bf16_to_f32(uint16_t h) { return from_bits((uint32_t)h << 16); }

uint16_t fy_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
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
