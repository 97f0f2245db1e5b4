/* Generation with the latent KV cache (model/decode.h): the cache, prefill
 * through the whole-sequence forward, and one-token decode steps whose
 * attention runs in the latent space. The Q8_0 weights are in quant.c. */
#include "model/decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

int fy_kv_cache_create(fy_kv_cache *c, fy_model *m, int cap, fy_err *err) {
    const fy_config *cf = &m->cfg;
    memset(c, 0, sizeof *c);
    if (cap <= 0 || cap > cf->max_position_embeddings)
        return fy_fail(err, "KV cache of %d positions: must be in [1, max_position_embeddings=%d]", cap,
                       cf->max_position_embeddings);
    int L = cf->num_hidden_layers, rkv = cf->kv_lora_rank, dr = cf->qk_rope_head_dim;
    size_t per = (size_t)cap * (rkv + dr);
    c->n_layers = L;
    c->cap = cap;
    c->ckv = calloc(L, sizeof *c->ckv);
    c->kpe = calloc(L, sizeof *c->kpe);
    if (!c->ckv || !c->kpe) {
        fy_kv_cache_free(c, m);
        return fy_fail(err, "out of memory");
    }
    if (fy_be_alloc(m->be, &c->buf, per * L, err)) {
        fy_kv_cache_free(c, m);
        return fy_wrap(err, "KV cache of %d positions", cap);
    }
    for (int l = 0; l < L; l++) {
        c->ckv[l] = fy_at(&c->buf, per * l);
        c->kpe[l] = fy_at(&c->buf, per * l + (size_t)cap * rkv);
    }
    return 0;
}

void fy_kv_cache_free(fy_kv_cache *c, fy_model *m) {
    if (c->buf.handle) fy_be_free(m->be, &c->buf);
    free(c->ckv);
    free(c->kpe);
    memset(c, 0, sizeof *c);
}

/* logits of workspace row `row` after the final norm and the head. */
static int head_logits(fy_model *m, fy_ref x, int row, float *logits, fy_err *err) {
    const fy_config *c = &m->cfg;
    model_ws *ws = m->ws;
    int d = c->hidden_size, V = c->vocab_size;
    OPS->rmsnorm_fwd(m->be, 1, d, fy_add(x, (size_t)row * d), d, fy_at(&m->params, m->tab.final_norm),
                     c->rms_norm_eps, ws->head_in, d, ws->rstd_head);
    fy__linear(m, 1, d, V, ws->head_in, d, m->tab.head, m->logits, V, 0);
    OPS->download(m->be, logits, m->logits, V);
    return fy_be_sync(m->be, err);
}

int fy_model_prefill(fy_model *m, fy_kv_cache *c, const int32_t *tokens, int n, float *logits,
                     fy_err *err) {
    const fy_config *cf = &m->cfg;
    if (n <= 0) return fy_fail(err, "empty prompt");
    if (n > c->cap) return fy_fail(err, "prompt of %d tokens exceeds the KV cache (%d)", n, c->cap);
    fy_loss loss;
    if (fy_model_forward(m, tokens, NULL, 1, n, 0, &loss, err)) return -1;
    int rkv = cf->kv_lora_rank, dr = cf->qk_rope_head_dim, V = cf->vocab_size;
    for (int l = 0; l < c->n_layers; l++) {
        fy_ref ckv, kpe;
        int ldc, ldk;
        if (fy_model_latent_kv(m, l, &ckv, &ldc, &kpe, &ldk, err)) return -1;
        OPS->copy3d(m->be, 1, n, rkv, c->ckv[l], 0, rkv, ckv, 0, ldc, 0);
        OPS->copy3d(m->be, 1, n, dr, c->kpe[l], 0, dr, kpe, 0, ldk, 0);
    }
    c->len = n;
    OPS->download(m->be, logits, fy_add(m->logits, (size_t)(n - 1) * V), V);
    return fy_be_sync(m->be, err);
}

/* Attention of one new token through the latent cache, absorbed path. */
static void attn_decode(fy_model *m, fy_kv_cache *c, int li, int pos) {
    const fy_config *cf = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int d = cf->hidden_size, H = cf->num_attention_heads, dqk = fy_cfg_qk_head_dim(cf);
    int dn = cf->qk_nope_head_dim, dv = cf->v_head_dim, rkv = cf->kv_lora_rank;
    int dr = cf->qk_rope_head_dim, rq = cf->q_lora_rank;
    float eps = cf->rms_norm_eps;
    fy_rope_params rp = fy_model_rope_params(cf);
    fy_ref P = fy_at(&m->params, 0);

    OPS->rmsnorm_fwd(m->be, 1, d, a->x_in, d, fy_add(P, W->attn_norm), eps, a->ln1, d, a->rstd1);
    if (rq > 0) {
        fy__linear(m, 1, d, rq, a->ln1, d, W->q_a, a->qa, rq, 0);
        OPS->rmsnorm_fwd(m->be, 1, rq, a->qa, rq, fy_add(P, W->q_a_norm), eps, a->qa_n, rq, a->rstd_qa);
        fy__linear(m, 1, rq, H * dqk, a->qa_n, rq, W->q_b, a->q, H * dqk, 0);
    } else {
        fy__linear(m, 1, d, H * dqk, a->ln1, d, W->q, a->q, H * dqk, 0);
    }
    fy__linear(m, 1, d, rkv + dr, a->ln1, d, W->kv_a, a->kva, rkv + dr, 0);
    OPS->rmsnorm_fwd(m->be, 1, rkv, a->kva, rkv + dr, fy_add(P, W->kv_a_norm), eps, a->ckv_n, rkv, a->rstd_kv);
    OPS->rope(m->be, 1, 1, pos, H, dr, fy_add(a->q, dn), H * dqk, dqk, &rp, 0);
    OPS->rope(m->be, 1, 1, pos, 1, dr, fy_add(a->kva, rkv), rkv + dr, 0, &rp, 0);
    OPS->copy(m->be, fy_add(c->ckv[li], (size_t)pos * rkv), a->ckv_n, rkv);
    OPS->copy(m->be, fy_add(c->kpe[li], (size_t)pos * dr), fy_add(a->kva, rkv), dr);

    /* kv_b_proj absorbed into both sides, one call for all heads */
    OPS->mla_decode(m->be, H, pos + 1, rkv, dn, dr, dv, fy_cfg_softmax_scale(cf), a->q, dqk,
                    fy_add(P, W->kv_b), c->ckv[li], rkv, c->kpe[li], dr, a->att);
    OPS->copy(m->be, a->x_mid, a->x_in, d);
    fy__linear(m, 1, H * dv, d, a->att, H * dv, W->o, a->x_mid, d, 1.0f);
}

int fy_model_decode(fy_model *m, fy_kv_cache *c, int32_t token, float *logits, fy_err *err) {
    const fy_config *cf = &m->cfg;
    int d = cf->hidden_size;
    if (fy_params_is_shard(&m->tab))
        return fy_fail(err, "decoding needs every routed expert; this model holds an expert-parallel shard");
    if (c->len >= c->cap) return fy_fail(err, "KV cache full (%d positions)", c->cap);
    if (token < 0 || token >= cf->vocab_size)
        return fy_fail(err, "token %d is outside the vocabulary [0, %d)", token, cf->vocab_size);
    /* The workspace at 1 x 1 holds one token's activations; the prompt's
     * were only needed until its latent KV was copied into the cache. */
    if (fy__reserve(m, 1, 1, err)) return -1;
    model_ws *ws = m->ws;
    OPS->upload(m->be, ws->tok_in, &token, 1);
    OPS->gather_rows(m->be, 1, d, fy_at(&m->params, m->tab.embed), d, ws->tok_in, FY_NULL_REF, ws->x_emb, d);
    fy_ref x = ws->x_emb;
    m->dq.on = m->dq.n > 0; /* one-token linears read the quantized copy */
    for (int li = 0; li < c->n_layers; li++) {
        m->layer_acts[li].x_in = x;
        attn_decode(m, c, li, c->len);
        if (fy__ffn_forward(m, li, 0, NULL, err)) {
            m->dq.on = 0;
            return fy_wrap(err, "decode layer %d", li);
        }
        x = m->layer_acts[li].x_out;
    }
    c->len++;
    int rc = head_logits(m, x, 0, logits, err);
    m->dq.on = 0;
    return rc;
}
