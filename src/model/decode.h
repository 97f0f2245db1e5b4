/* Inference with a latent KV cache (DESIGN §2): per layer and position the
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
    fy_buf buf;         /* all layers' c_kv and k_pe, plus decode scratch */
    fy_ref *ckv, *kpe;  /* per layer: [cap, r_kv], [cap, d_r] */
    fy_ref q_lat, q_pe, o_lat;
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

#endif
