/* 16-bit floats: IEEE binary16 ("f16", torch.float16) and bfloat16
 * ("bf16"), converted to and from float bit-exactly. Shared by the
 * checkpoint reader/writer, the interop exports and the backends' 16-bit
 * inference weights, so that all of them round the same way. */
#ifndef FY_CORE_HALF_H
#define FY_CORE_HALF_H

#include <stdint.h>

float fy_bf16_to_f32(uint16_t h);   /* exact */
uint16_t fy_f32_to_bf16(float f);   /* round to nearest even; NaN stays NaN (quiet) */
float fy_f16_to_f32(uint16_t h);    /* exact (subnormals included) */
uint16_t fy_f32_to_f16(float f);    /* round to nearest even; overflow to inf; NaN stays NaN */

#endif
