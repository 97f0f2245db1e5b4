/* ggml's tensor encodings (gguf_quant.h): F32, F16, BF16, Q8_0, Q4_0. */
#include "interop/gguf_quant.h"

#include <math.h>
#include <string.h>

#include "backend/backend.h"
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

/* ggml's quantize_row_q8_0_ref is backend.c's fy_q8_quantize_gguf, which
 * also encodes `ferry generate --weights q8_0`'s token embedding: the GGUF
 * file and ferry hold the same bits. */
static void q8_0_block(const float *x, uint8_t *y) {
    float d;
    fy_q8_quantize_gguf(x, 1, FY_GGUF_QK, FY_GGUF_QK, (int8_t *)(y + 2), &d);
    put16(y, fy_f32_to_f16(d));
}

/* ggml's quantize_row_q4_0_ref is backend.c's fy_q4_quantize (the encoder
 * of ferry's own Q4_0 weights), whose scale is already the half's value:
 * the GGUF file and `ferry generate --weights q4_0` hold the same bits. */
static void q4_0_block(const float *x, uint8_t *y) {
    float d;
    fy_q4_quantize(x, 1, FY_GGUF_QK, FY_GGUF_QK, y + 2, &d);
    put16(y, fy_f32_to_f16(d));
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
