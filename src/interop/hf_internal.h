/* What the Hugging Face exporter (hf_export.c) and importer (hf_import.c)
 * share: the output directory's temporary name, the small JSON files
 * (hf_meta.c), and the names of DeepSeek's MTP copies. Private to
 * src/interop. */
#ifndef FY_INTEROP_HF_INTERNAL_H
#define FY_INTEROP_HF_INTERNAL_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "ckpt/safetensors.h"
#include "interop/host.h"

#define FY_HF_INDEX "model.safetensors.index.json"
#define FY_HF_SINGLE "model.safetensors"


/* DeepSeek's copies, in MTP layer `layer`, of the embedding and the head. */
void fy_hf_mtp_copy_names(int layer, char *embed, char *head, size_t cap);

/* "float32", "bfloat16", "float16" for F32, BF16, F16. */
const char *fy_hf_torch_dtype(fy_st_dtype t);
/* Reads dir/name as JSON: NULL with *missing = 1 when absent (not an error),
 * NULL with err set when unreadable or malformed. */
cJSON *fy_hf_read_json(const char *dir, const char *name, int *missing, fy_err *err);
/* Writes the JSON atomically as dir/name (indented, newline at the end). */
int fy_hf_write_json(const char *dir, const char *name, const cJSON *j, fy_err *err);

/* config.json, generation_config.json, tokenizer.json,
 * tokenizer_config.json and special_tokens_map.json of h into dir. */
int fy_hf_write_meta(const fy_host_model *h, const char *dir, fy_st_dtype dt, fy_err *err);
/* The tokenizer of an HF directory and its bos/eos ids (tokenizer_config.json,
 * else generation_config.json, else config.json's), set in c. */
int fy_hf_read_tokenizer(const char *dir, fy_config *c, fy_tokenizer **tok, fy_err *err);

#endif
