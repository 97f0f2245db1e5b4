/* One sequence's generation (model/decode.h: fy_kv_cache, prefill, decode)
 * as a thin wrapper over a one-sequence pool and fy_model_batch_step
 * (batch.c): one code path for every token, so a sequence generated here
 * has the bits it has in any batch of the server. The Q8_0 weights are in
 * quant.c. */
#include "model/decode.h"

#include <string.h>

int fy_kv_cache_create(fy_kv_cache *c, fy_model *m, int cap, fy_err *err) {
    const fy_config *cf = &m->cfg;
    memset(c, 0, sizeof *c);
    if (cap <= 0 || cap > cf->max_position_embeddings)
        return fy_fail(err, "KV cache of %d positions: must be in [1, max_position_embeddings=%d]", cap,
                       cf->max_position_embeddings);
    if (fy_kv_pool_create(&c->pool, m, cap, cap, err)) return fy_wrap(err, "KV cache of %d positions", cap);
    if (fy_kv_seq_reserve(&c->pool, &c->seq, cap, err)) {
        fy_kv_cache_free(c, m);
        return fy_wrap(err, "KV cache of %d positions", cap);
    }
    c->cap = cap;
    return 0;
}

void fy_kv_cache_free(fy_kv_cache *c, fy_model *m) {
    if (c->pool.free_ids) {
        fy_kv_seq_release(&c->pool, &c->seq);
        fy_kv_pool_free(&c->pool, m);
    }
    memset(c, 0, sizeof *c);
}

/* tokens[0..n) at positions c->len.., the logits after the last. */
static int cache_step(fy_model *m, fy_kv_cache *c, const int32_t *tokens, int n, float *logits, fy_err *err) {
    if (c->len < 0 || c->len > c->cap) return fy_fail(err, "KV cache length %d outside [0, %d]", c->len, c->cap);
    if (c->len + n > c->cap) return fy_fail(err, "KV cache full (%d positions)", c->cap);
    c->seq.len = c->len;
    fy_batch_item it = {&c->seq, tokens, n, 1, NULL};
    if (fy_model_batch_step(m, &c->pool, &it, 1, logits, err)) return -1;
    c->len = c->seq.len;
    return 0;
}

int fy_model_prefill(fy_model *m, fy_kv_cache *c, const int32_t *tokens, int n, float *logits,
                     fy_err *err) {
    if (n <= 0) return fy_fail(err, "empty prompt");
    if (n > c->cap) return fy_fail(err, "prompt of %d tokens exceeds the KV cache (%d)", n, c->cap);
    c->len = 0;
    return cache_step(m, c, tokens, n, logits, err);
}

int fy_model_decode(fy_model *m, fy_kv_cache *c, int32_t token, float *logits, fy_err *err) {
    return cache_step(m, c, &token, 1, logits, err);
}
