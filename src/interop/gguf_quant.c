/* ggml's tensor encodings (gguf_quant.h): F32, F16, BF16, Q8_0, Q4_0. */
#include "interop/gguf_quant.h"

#include <math.h>
#include <string.h>

#include "core/half.h"

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
    put16(y, fy_f32_to_f16(d));
    for (int j = 0; j < FY_GGUF_QK; j++) {
        const float v = x[j] * id;
        y[2 + j] = (uint8_t)(int8_t)roundf(v);
    }
}

static void q4_0_block(const float *x, uint8_t *y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < FY_GGUF_QK; j++)
        if (amax < fabsf(x[j])) amax = fabsf(x[j]), max = x[j];
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put16(y, fy_f32_to_f16(d));
    for (int j = 0; j < FY_GGUF_QK / 2; j++) {
        const float x0 = x[j] * id, x1 = x[FY_GGUF_QK / 2 + j] * id;
        const float s0 = x0 + 8.5f, s1 = x1 + 8.5f;
        int8_t t0 = (int8_t)s0, t1 = (int8_t)s1;
        uint8_t q0 = (uint8_t)(t0 < 15 ? t0 : 15), q1 = (uint8_t)(t1 < 15 ? t1 : 15);
        y[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

void fy_gguf_encode_row(fy_gguf_type t, const float *x, size_t n, uint8_t *dst) {
    switch (t) {
    case FY_GGUF_F32: memcpy(dst, x, n * 4); break;
    case FY_GGUF_F16:
        for (size_t i = 0; i < n; i++) put16(dst + 2 * i, fy_f32_to_f16(x[i]));
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
