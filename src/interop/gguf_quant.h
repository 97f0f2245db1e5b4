/* ggml's tensor encodings, bit for bit as ggml's reference code writes them
 * (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q4_0_ref, ggml-impl.h
 * fp32 -> fp16, which core/half.h's fy_f32_to_f16 gives): what gguf.c
 * stores in a GGUF file. */
#ifndef FY_INTEROP_GGUF_QUANT_H
#define FY_INTEROP_GGUF_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "interop/gguf.h"

#define FY_GGUF_QK 32 /* elements per Q8_0 / Q4_0 block */

/* Bytes that n elements (one row; n a multiple of 32 for Q8_0/Q4_0) take. */
size_t fy_gguf_row_bytes(fy_gguf_type t, size_t n);

/* Encodes one row of n floats into dst (fy_gguf_row_bytes(t, n) bytes).
 * Q8_0 block: f16 d = amax/127, then int8 roundf(x/d) (half away from zero).
 * Q4_0 block: f16 d = max/-8 where max is the element of largest magnitude
 * (the first such), then nibbles min(15, (int8)(x/d + 8.5)), element j in the
 * low nibble of byte j and element j+16 in its high nibble. Both use the f32
 * d's inverse, not the rounded f16's, as ggml does. */
void fy_gguf_encode_row(fy_gguf_type t, const float *x, size_t n, uint8_t *dst);

#endif
