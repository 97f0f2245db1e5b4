/* Inference with a latent KV cache (docs/DESIGN.md §2): per layer and position the
 * cache holds only c_kv (after kv_a_layernorm, r_kv floats) and the roped
 * k_pe (d_r floats), instead of 2*H*head_dim. Decode absorbs W_kvb into the
 * query (q_lat = W_kb^T q_nope) and the output (o = W_vb o_lat), so attention
 * runs in the latent space. MTP modules are not used. */
#ifndef FY_DECODE_H
#define FY_DECODE_H

#include <stdint.h>

#include "model/model.h"

typedef struct fy_kv_cache {
    int n_layers;       /* main layers */
    int cap, len;       /* positions allocated / filled */
    fy_buf buf;         /* all layers' c_kv and k_pe */
    fy_ref *ckv, *kpe;  /* per layer: [cap, r_kv], [cap, d_r] */
} fy_kv_cache;

/* cap: the most positions this cache will hold (<= max_position_embeddings). */
int fy_kv_cache_create(fy_kv_cache *c, fy_model *m, int cap, fy_err *err);
void fy_kv_cache_free(fy_kv_cache *c, fy_model *m);

/* Runs the prompt tokens[0..n) through the full forward, fills the cache
 * (len = n) and writes the last position's logits to logits[V] (host). */
int fy_model_prefill(fy_model *m, fy_kv_cache *c, const int32_t *tokens, int n, float *logits,
                     fy_err *err);

/* Appends one token at position c->len and writes its logits[V] (host). */
int fy_model_decode(fy_model *m, fy_kv_cache *c, int32_t token, float *logits, fy_err *err);

/* Weights decode multiplies by: FY_QUANT_F32 (the params themselves) or
 * FY_QUANT_Q8_0, a Q8_0 copy (backend.h: int8 with one scale per 32) of every
 * matrix a one-token linear of the main layers and the head reads: 3.6x fewer
 * bytes per token. The router and W_kvb (absorbed per head) stay f32, as
 * llama.cpp keeps ffn_gate_inp. Prefill keeps the f32 forward. */
typedef enum { FY_QUANT_F32 = 0, FY_QUANT_Q8_0 = 1 } fy_quant;

/* "f32" or "q8_0" (also "q8"); anything else is an error naming both. */
int fy_quant_parse(const char *s, fy_quant *out, fy_err *err);
const char *fy_quant_name(fy_quant q);

/* Makes (or drops, for FY_QUANT_F32) the quantized copy from the current
 * params; call it after loading them: the copy does not follow later
 * changes (training). Costs the copy's memory, ~0.28 x the params. */
int fy_model_set_decode_quant(fy_model *m, fy_quant q, fy_err *err);
void fy_model_free_decode_quant(fy_model *m);

#endif
