/* Hugging Face DeepseekV3 directories (docs/INTEROP.md): export of a ferry
 * model that transformers, vLLM and SGLang load, and import of one written
 * by transformers or released by DeepSeek (bf16/f16/f32, FP8 block-scaled).
 *
 * A directory holds config.json, generation_config.json, the weights as
 * model.safetensors or model-0000K-of-0000N.safetensors +
 * model.safetensors.index.json, tokenizer.json, tokenizer_config.json and
 * special_tokens_map.json. */
#ifndef FY_INTEROP_HF_H
#define FY_INTEROP_HF_H

#include <stdint.h>

#include "ckpt/safetensors.h"
#include "interop/host.h"

typedef struct fy_hf_export_opts {
    fy_st_dtype dtype;         /* FY_ST_F32 (exact), FY_ST_BF16 (nearest even), FY_ST_F16 */
    uint64_t max_shard_bytes;  /* 0 = 5 GB, as transformers' default */
} fy_hf_export_opts;

/* Writes the directory out_dir (which must not exist yet) through a temporary
 * name renamed at the end, then reads it back and checks every tensor. */
int fy_hf_export(const fy_host_model *h, const char *out_dir, const fy_hf_export_opts *o, fy_err *err);

/* 1 when dir looks like a Hugging Face model directory (config.json and
 * model.safetensors or model.safetensors.index.json, no ferry checkpoints/). */
int fy_hf_is_dir(const char *dir);

/* Reads a Hugging Face directory into host memory (weights as f32). */
int fy_hf_import(const char *dir, fy_host_model *out, fy_err *err);

#endif
