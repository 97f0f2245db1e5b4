/* A LoRA run's frozen base held in a smaller format (QLoRA-style;
 * docs/FINETUNE.md "A quantized base"): the decoder layers' linears (main
 * layers and MTP modules, the router excepted) are kept as Q8_0, Q4_0, f16
 * or bf16 and their f32 copies are released; the embedding, the output
 * head, the norms and the routers stay f32. A pass that multiplies by such
 * a matrix first widens it back to f32 (the backend's dequant_rows, one
 * whole matrix into one scratch) and then runs the very gemm the f32 path
 * runs, so a run on a held base is, bit for bit, the f32 run on the base's
 * rounded values (W -> dequant(quant(W))). Only the adapters train. */
#ifndef FY_LORA_QBASE_H
#define FY_LORA_QBASE_H

#include <stddef.h>

#include "model/decode.h"
#include "model/lora.h"
#include "model/model.h"

/* After fy_model_set_lora (and with the base loaded): holds the base's
 * decoder linears in format q and releases their f32 weights; FY_QUANT_F32
 * changes nothing. A matrix whose rows do not split into the format's
 * blocks stays f32. Fails (leaving the model as it was) without adapters,
 * a second time, or when the backend has no dequant_rows. */
int fy_model_lora_quantize_base(fy_model *m, fy_quant q, fy_err *err);
/* The format the base is held in: FY_QUANT_F32 when it is plain f32. */
fy_quant fy_model_lora_base_format(const fy_model *m);
/* 1 when the base matrix at params offset w is held in that format. */
int fy_model_lora_base_held(const fy_model *m, size_t w);

#endif
