/* 16-bit floats: IEEE binary16 ("f16", torch.float16) and bfloat16
 * ("bf16"), converted to and from float bit-exactly. Shared by the
 * checkpoint reader/writer, the interop exports (GGUF included: the
 * narrowing gives ggml's bits) and the backends' 16-bit inference weights,
 * so that all of them round the same way. */
#ifndef FY_CORE_HALF_H
#define FY_CORE_HALF_H

#include <stddef.h>
#include <stdint.h>

/* Exact; a NaN keeps its sign and payload (bits shifted up) and comes out
 * quiet: the bits of x86's vcvtph2ps / the bf16 shift. */
float fy_bf16_to_f32(uint16_t h);
float fy_f16_to_f32(uint16_t h);   /* subnormals included */
/* Round to nearest even; overflow to infinity. NaN: bf16 keeps sign and
 * top payload bits and sets the quiet bit, f16 gives sign | 0x7e00: both
 * ggml's bits (ggml-impl.h), and f16's also torch's. */
uint16_t fy_f32_to_bf16(float f);
uint16_t fy_f32_to_f16(float f);
/* fy_f32_to_bf16 of f[0..n) into out, in a loop that vectorizes. */
void fy_f32_to_bf16_n(const float *f, size_t n, uint16_t *out);
/* fy_f32_to_f16 of f[0..n) into out, with the F16C instruction (vcvtps2ph,
 * round to nearest even: the same bits, its NaNs replaced by ours) where
 * the CPU has it: loading a model as f16 converts every weight. */
void fy_f32_to_f16_n(const float *f, size_t n, uint16_t *out);

#endif
