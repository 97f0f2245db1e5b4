/* GGUF export for llama.cpp (architecture "deepseek2", docs/INTEROP.md):
 * keys, tensor names and layouts as llama.cpp reads them, tensors in
 * F32/F16/BF16 or quantized exactly as ggml does (Q8_0, Q4_0). */
#ifndef FY_INTEROP_GGUF_H
#define FY_INTEROP_GGUF_H

#include "interop/host.h"

/* The values are ggml's type ids. */
typedef enum fy_gguf_type {
    FY_GGUF_F32 = 0, FY_GGUF_F16 = 1, FY_GGUF_Q4_0 = 2, FY_GGUF_Q8_0 = 8, FY_GGUF_BF16 = 30
} fy_gguf_type;

/* "f32", "f16", "bf16", "q8_0", "q4_0". */
int fy_gguf_type_parse(const char *name, fy_gguf_type *out, fy_err *err);

/* Writes out_path (which must not exist) through a temporary name renamed
 * at the end, then reads it back and checks it. Matrices take `type`; the
 * router, norms and biases stay F32. */
int fy_gguf_export(const fy_host_model *h, const char *out_path, fy_gguf_type type, fy_err *err);

/* llama.cpp's LoRA adapter GGUF (general.type "adapter") of the rank-`rank`
 * adapters in the safetensors file `adapters` (PEFT's names: a ferry LoRA
 * checkpoint's model.safetensors) for a base with config c. Only o_proj,
 * the dense/shared MLPs and the routed experts: any other adapter is
 * refused (llama.cpp's deepseek2 graph would ignore it). */
int fy_gguf_export_lora(const fy_config *c, const char *adapters, int rank, float alpha, const char *out_path,
                        fy_err *err);

#endif
