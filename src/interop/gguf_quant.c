/* ggml's tensor encodings (gguf_quant.h): F32, F16, BF16, Q8_0, Q4_0. */
#include "interop/gguf_quant.h"

#include <math.h>
#include <string.h>

#include "backend/backend.h"
#include "ckpt/safetensors.h"

uint16_t fy_gguf_f32_to_f16(float f) {
    uint32_t w;
    memcpy(&w, &f, 4);
    uint16_t sign = (uint16_t)((w >> 16) & 0x8000u);
    uint32_t a = w & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;          /* NaN: quiet, as ggml */
    if (a >= 0x477ff000u) return sign | 0x7c00u;         /* rounds to >= 65536: inf */
    if (a < 0x38800000u) {                               /* below 2^-14: subnormal half */
        if (a < 0x33000000u) return sign;                /* below 2^-25: rounds to 0 (2^-25 ties to even 0) */
        uint32_t m = (a & 0x7fffffu) | 0x800000u;        /* 24-bit significand */
        /* value = m * 2^(E - 150) with E the biased exponent; in units of
         * the smallest half subnormal (2^-24) that is m >> (126 - E), 14..24 */
        int shift = 126 - (int)(a >> 23);
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return sign | (uint16_t)h;
    }
    /* normal: rebias the exponent (127 -> 15), keep 10 mantissa bits, round
     * the 13 dropped ones to nearest even (a carry may reach the exponent) */
    uint32_t h = ((a >> 13) - (112u << 10)), rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return sign | (uint16_t)h;
}

size_t fy_gguf_row_bytes(fy_gguf_type t, size_t n) {
    switch (t) {
    case FY_GGUF_F32: return n * 4;
    case FY_GGUF_F16:
    case FY_GGUF_BF16: return n * 2;
    case FY_GGUF_Q8_0: return n / FY_GGUF_QK * (2 + FY_GGUF_QK);
    case FY_GGUF_Q4_0: return n / FY_GGUF_QK * (2 + FY_GGUF_QK / 2);
    }
    return 0;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }

static void q8_0_block(const float *x, uint8_t *y) {
    float amax = 0.0f;
    for (int j = 0; j < FY_GGUF_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(y, fy_gguf_f32_to_f16(d));
    for (int j = 0; j < FY_GGUF_QK; j++) {
        const float v = x[j] * id;
        y[2 + j] = (uint8_t)(int8_t)roundf(v);
    }
}

/* ggml's quantize_row_q4_0_ref is backend.c's fy_q4_quantize (the encoder
 * of ferry's own Q4_0 weights), whose scale is already the half's value:
 * the GGUF file and `ferry generate --weights q4_0` hold the same bits. */
static void q4_0_block(const float *x, uint8_t *y) {
    float d;
    fy_q4_quantize(x, 1, FY_GGUF_QK, FY_GGUF_QK, y + 2, &d);
    put16(y, fy_gguf_f32_to_f16(d));
}

void fy_gguf_encode_row(fy_gguf_type t, const float *x, size_t n, uint8_t *dst) {
    switch (t) {
    case FY_GGUF_F32: memcpy(dst, x, n * 4); break;
    case FY_GGUF_F16:
        for (size_t i = 0; i < n; i++) put16(dst + 2 * i, fy_gguf_f32_to_f16(x[i]));
        break;
    case FY_GGUF_BF16:
        for (size_t i = 0; i < n; i++) put16(dst + 2 * i, fy_f32_to_bf16(x[i]));
        break;
    case FY_GGUF_Q8_0:
        for (size_t b = 0; b < n / FY_GGUF_QK; b++) q8_0_block(x + b * FY_GGUF_QK, dst + b * (2 + FY_GGUF_QK));
        break;
    case FY_GGUF_Q4_0:
        for (size_t b = 0; b < n / FY_GGUF_QK; b++)
            q4_0_block(x + b * FY_GGUF_QK, dst + b * (2 + FY_GGUF_QK / 2));
        break;
    }
}
