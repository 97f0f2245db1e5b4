/* Loading for inference (model/decode.h fy_model_plan_inference, ckpt
 * fy_ckpt_load_weights): in every weight format the logits of a prefill and
 * of decode steps are bit for bit those of the classic load (the whole
 * checkpoint into the f32 params, then fy_model_set_decode_quant); the
 * params of a quantized matrix and of the MTP module are never written
 * (still zero), the rest equal the classic load's; no gradients; another
 * format afterwards is refused; a NaN in a quantized matrix is refused,
 * naming it. In a quantized format the token embedding is held only in it
 * (its f32 params never written, fy_model_tensor_bytes its quantized
 * bytes), and the rows a batch step reads are bit for bit those of the
 * GGUF export's token_embd, dequantized as llama.cpp does. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/checkpoint.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "interop/gguf_quant.h"
#include "model/decode.h"
#include "model/lora.h"
#include "testutil.h"

#define V 61
#define P 7
#define STEPS 3

/* Small, with every matrix's input a multiple of the 32-wide blocks (so each
 * format quantizes all of them), MoE, q_lora and one MTP module. */
static fy_config config(void) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", V, &c, &err)) exit(1);
    c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 2;
    c.q_lora_rank = 32; c.kv_lora_rank = 32; c.qk_nope_head_dim = 16; c.qk_rope_head_dim = 8;
    c.v_head_dim = 16; c.intermediate_size = 64; c.moe_intermediate_size = 32;
    c.n_routed_experts = 4; c.num_experts_per_tok = 2; c.n_shared_experts = 1; c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1; c.initializer_range = 0.2f;
    return c;
}

/* Prefill of P tokens then STEPS greedy decode steps: (1 + STEPS) x V logits. */
static int run(fy_model *m, float *out, fy_err *err) {
    fy_kv_cache kc;
    int32_t tok[P];
    for (int i = 0; i < P; i++) tok[i] = (int32_t)((i * 17 + 3) % V);
    if (fy_kv_cache_create(&kc, m, P + STEPS, err)) return -1;
    int rc = fy_model_prefill(m, &kc, tok, P, out, err);
    for (int s = 0; s < STEPS && !rc; s++) {
        int best = 0;
        for (int i = 1; i < V; i++) best = out[(size_t)s * V + i] > out[(size_t)s * V + best] ? i : best;
        rc = fy_model_decode(m, &kc, best, out + (size_t)(s + 1) * V, err);
    }
    fy_kv_cache_free(&kc, m);
    return rc;
}

static int all_zero(fy_model *m, size_t off, size_t n) {
    float *h = malloc(n * sizeof *h);
    m->be->ops->download(m->be, h, fy_at(&m->params, off), n);
    int z = 1;
    for (size_t i = 0; i < n && z; i++) z = h[i] == 0.0f;
    free(h);
    return z;
}

static int same_params(fy_model *a, fy_model *b, size_t off, size_t n) {
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    a->be->ops->download(a->be, x, fy_at(&a->params, off), n);
    b->be->ops->download(b->be, y, fy_at(&b->params, off), n);
    int same = !memcmp(x, y, n * sizeof *x);
    free(x), free(y);
    return same;
}

static float le_half(const uint8_t *p) { return fy_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Row x of n floats through GGUF's encoding of format q (what `ferry
 * convert --to gguf --type q` writes for token_embd) and back to floats as
 * ggml's dequantize_row_* does. */
static void gguf_roundtrip(fy_quant q, const float *x, int n, float *y) {
    fy_gguf_type t = q == FY_QUANT_Q8_0 ? FY_GGUF_Q8_0 : q == FY_QUANT_Q4_0 ? FY_GGUF_Q4_0
                   : q == FY_QUANT_F16 ? FY_GGUF_F16 : FY_GGUF_BF16;
    uint8_t *b = malloc(fy_gguf_row_bytes(t, (size_t)n));
    fy_gguf_encode_row(t, x, (size_t)n, b);
    for (int i = 0; i < n; i++) {
        const uint8_t *blk = b + (size_t)(i / 32) * fy_gguf_row_bytes(t, 32);
        int j = i % 32;
        if (t == FY_GGUF_Q8_0) y[i] = (float)(int8_t)blk[2 + j] * le_half(blk);
        else if (t == FY_GGUF_Q4_0) y[i] = (float)((j < 16 ? blk[2 + j] & 15 : blk[2 + j - 16] >> 4) - 8) * le_half(blk);
        else if (t == FY_GGUF_F16) y[i] = le_half(b + 2 * (size_t)i);
        else y[i] = fy_bf16_to_f32((uint16_t)(b[2 * (size_t)i] | b[2 * (size_t)i + 1] << 8));
    }
    free(b);
}

/* b's embedding (a quantized inference load): not in the params, held in
 * the format's bytes, its rows (ids in any order, repeated) GGUF's; a's
 * (the classic load) the same rows. */
static void embedding_quantized(fy_model *a, fy_model *b, const fy_config *c, fy_quant q) {
    const char *name = fy_quant_name(q);
    int d = c->hidden_size;
    const fy_tensor_info *e = fy_params_find(&b->tab, "model.embed_tokens.weight");
    CHECK(e && e->off == b->tab.embed, "%s: no embedding in the table", name);
    if (!e) return;
    CHECK(!fy_model_holds_f32(b, e), "%s: the inference load holds the embedding in f32", name);
    CHECK(all_zero(b, e->off, e->n), "%s: the embedding's f32 params were written", name);
    size_t bits = q == FY_QUANT_Q8_0 ? 8 : q == FY_QUANT_Q4_0 ? 4 : 16;
    size_t want = e->n * bits / 8 + (bits <= 8 ? e->n / 32 * sizeof(float) : 0);
    CHECK(fy_model_tensor_bytes(b, e) == want, "%s: embedding holds %zu bytes, not %zu", name,
          fy_model_tensor_bytes(b, e), want);
    int32_t ids[V + 3];
    for (int i = 0; i < V; i++) ids[i] = (int32_t)((i * 23 + 5) % V);
    ids[V] = 0, ids[V + 1] = V - 1, ids[V + 2] = 0;
    float *f32 = malloc(e->n * sizeof *f32), *ref = malloc((size_t)(V + 3) * d * sizeof *ref);
    float *ra = malloc((size_t)(V + 3) * d * sizeof *ra), *rb = malloc((size_t)(V + 3) * d * sizeof *rb);
    fy_err err;
    a->be->ops->download(a->be, f32, fy_at(&a->params, a->tab.embed), e->n);
    for (int i = 0; i < V + 3; i++) gguf_roundtrip(q, f32 + (size_t)ids[i] * d, d, ref + (size_t)i * d);
    CHECK(!fy_model_embed_rows(b, ids, V + 3, rb, &err), "%s: embed rows: %s", name, err.msg);
    CHECK(!fy_model_embed_rows(a, ids, V + 3, ra, &err), "%s: embed rows (classic): %s", name, err.msg);
    CHECK(!memcmp(rb, ref, (size_t)(V + 3) * d * sizeof *rb), "%s: embedding rows are not GGUF's", name);
    CHECK(!memcmp(ra, ref, (size_t)(V + 3) * d * sizeof *ra), "%s: classic load's embedding rows are not GGUF's",
          name);
    int32_t bad = V;
    CHECK(fy_model_embed_rows(b, &bad, 1, rb, &err) == -1 && strstr(err.msg, "vocabulary"), "%s: row %d", name, V);
    free(f32), free(ref), free(ra), free(rb);
}

/* LoRA adapters put on an inference load (generate/serve --lora): their
 * tensors, loaded through fy_model_load_rows, go to the adapters' block
 * (the first sits at offset 0, as the embedding does: it was once taken
 * for the embedding and encoded into the copy, a crash), and a batch step
 * runs with them unmerged, its logits finite and not the bare base's. */
static void lora_on_inference_load(fy_model *b, const fy_config *c, fy_quant q, const float *bare) {
    const char *name = fy_quant_name(q);
    fy_err err;
    fy_lora_config lc = {4, 8.0f, FY_LORA_ALL, 0.0f};
    CHECK(!fy_model_set_lora(b, &lc, &err), "%s: lora: %s", name, err.msg);
    const fy_tensor_info *t0 = &b->tab.t[0];
    size_t n = t0->n;
    float *w = malloc(n * sizeof *w), *back = malloc(n * sizeof *back);
    for (size_t i = 0; i < n; i++) w[i] = 0.01f * (float)((i * 7) % 13) - 0.06f;
    int rows = t0->ndim == 2 ? t0->shape[0] : 1;
    CHECK(t0->off == 0 && !fy_model_load_rows(b, t0, 0, rows, w, &err), "%s: lora load: %s", name, err.msg);
    for (int i = 1; i < b->tab.n; i++) { /* the other adapters: small nonzero values */
        const fy_tensor_info *t = &b->tab.t[i];
        float *v = malloc(t->n * sizeof *v);
        for (size_t j = 0; j < t->n; j++) v[j] = 0.02f * (float)((j * 5 + (size_t)i) % 11) - 0.1f;
        CHECK(!fy_model_load_rows(b, t, 0, t->ndim == 2 ? t->shape[0] : 1, v, &err), "%s: lora load: %s", name, err.msg);
        free(v);
    }
    b->be->ops->download(b->be, back, fy_at(&b->params, t0->off), n);
    CHECK(!memcmp(w, back, n * sizeof *w), "%s: adapter %s not in the adapters' block", name, t0->name);
    fy_lora_unmerged *u = NULL;
    CHECK(!fy_model_lora_detach(b, &u, &err), "%s: detach: %s", name, err.msg);
    fy_kv_pool pool;
    fy_kv_seq seq = {0};
    int32_t tok[P];
    for (int i = 0; i < P; i++) tok[i] = (int32_t)((i * 17 + 3) % V);
    float *l = malloc(V * sizeof *l);
    fy_batch_item it = {&seq, tok, P, 1, u};
    int ok = u && !fy_kv_pool_create(&pool, b, P, P, &err) && !fy_kv_seq_reserve(&pool, &seq, P, &err) &&
             !fy_model_batch_step(b, &pool, &it, 1, l, &err);
    CHECK(ok, "%s: a batch step with the adapters: %s", name, err.msg);
    int finite = 1;
    for (int i = 0; i < V; i++) finite &= isfinite(l[i]) != 0;
    CHECK(ok && finite && memcmp(l, bare, V * sizeof *l), "%s: adapters' logits not finite or the bare base's", name);
    if (ok) {
        fy_kv_seq_release(&pool, &seq);
        fy_kv_pool_free(&pool, b);
    }
    fy_lora_unmerged_free(b->be, u);
    free(w), free(back), free(l);
    (void)c;
}

static void one_format(fy_backend *be, const fy_config *c, const char *ckdir, fy_quant q) {
    const char *name = fy_quant_name(q);
    fy_err err;
    fy_model a, b;
    float *la = malloc((size_t)(1 + STEPS) * V * sizeof *la), *lb = malloc((size_t)(1 + STEPS) * V * sizeof *lb);
    int ok = !fy_model_create(&a, c, be, &err) && !fy_ckpt_load(ckdir, &a, NULL, NULL, &err) &&
             !fy_model_set_decode_quant(&a, q, &err) && !run(&a, la, &err);
    CHECK(ok, "%s: classic load: %s", name, err.msg);
    ok = ok && !fy_model_create(&b, c, be, &err) && !fy_model_plan_inference(&b, q, &err) &&
         !fy_ckpt_load_weights(ckdir, &b, &err) && !run(&b, lb, &err);
    CHECK(ok, "%s: inference load: %s", name, err.msg);
    if (!ok) exit(fy_test_finish("infer_load"));
    CHECK(!memcmp(la, lb, (size_t)(1 + STEPS) * V * sizeof *la), "%s: logits differ", name);
    CHECK(b.grads.handle == NULL, "%s: the inference load holds gradients", name);
    const fy_param_table *t = &b.tab;
    if (q == FY_QUANT_F32) CHECK(same_params(&a, &b, t->embed, (size_t)V * c->hidden_size), "%s: embedding differs", name);
    else embedding_quantized(&a, &b, c, q);
    CHECK(same_params(&a, &b, t->layer[0].kv_b, (size_t)c->num_attention_heads * 32 * c->kv_lora_rank),
          "%s: W_kvb differs", name);
    size_t head_n = (size_t)V * c->hidden_size;
    if (q == FY_QUANT_F32) CHECK(same_params(&a, &b, t->head, head_n), "%s: lm_head differs", name);
    else CHECK(all_zero(&b, t->head, head_n), "%s: the quantized lm_head's f32 params were written", name);
    const fy_layer_offs *mtp = &t->layer[c->num_hidden_layers];
    CHECK(all_zero(&b, mtp->span_lo, mtp->span_hi - mtp->span_lo), "%s: the MTP module was loaded", name);
    fy_quant other = q == FY_QUANT_Q8_0 ? FY_QUANT_F16 : FY_QUANT_Q8_0;
    CHECK(fy_model_set_decode_quant(&b, q, &err) == 0, "%s: the same format again: %s", name, err.msg);
    CHECK(fy_model_set_decode_quant(&b, other, &err) == -1 && strstr(err.msg, "fresh load"),
          "%s: another format after an inference load: %s", name, err.msg);
    lora_on_inference_load(&b, c, q, lb);
    fy_model_free(&a);
    fy_model_free(&b);
    free(la), free(lb);
}

/* A NaN in the lm_head (a matrix every format but f32 quantizes). */
static void nan_refused(fy_backend *be, const fy_config *c, const char *run) {
    fy_err err;
    fy_model m;
    char ck[FY_PATH_MAX];
    if (fy_model_create(&m, c, be, &err) || fy_model_init_weights(&m, 5, &err)) exit(1);
    float nan = NAN;
    be->ops->upload(be, fy_at(&m.params, m.tab.head + 3), &nan, 1);
    if (fy_ckpt_save(run, 1, &m, NULL, "{}", 0, ck, sizeof ck, &err)) exit(1);
    fy_model_free(&m);
    for (int q = FY_QUANT_F32; q <= FY_QUANT_Q4_0; q++) {
        int rc = fy_model_create(&m, c, be, &err) || fy_model_plan_inference(&m, (fy_quant)q, &err) ||
                 fy_ckpt_load_weights(ck, &m, &err);
        CHECK(rc && strstr(err.msg, "non-finite") && strstr(err.msg, "lm_head.weight"), "%s: NaN: %s",
              fy_quant_name((fy_quant)q), rc ? err.msg : "loaded");
        fy_model_free(&m);
    }
}

int main(void) {
    fy_err err;
    fy_backend *be;
    fy_model m;
    fy_config c = config();
    char run[FY_PATH_MAX], run2[FY_PATH_MAX], ck[FY_PATH_MAX];
    snprintf(run, sizeof run, "%s/run", fy_test_tmpdir("infer_load"));
    snprintf(run2, sizeof run2, "%s/nan", fy_test_tmpdir("infer_load"));
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 3, &err) ||
        fy_ckpt_save(run, 1, &m, NULL, "{}", 0, NULL, 0, &err) ||
        fy_ckpt_resolve_weights(run, ck, sizeof ck, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return 1;
    }
    fy_model_free(&m);
    for (int q = FY_QUANT_F32; q <= FY_QUANT_BF16; q++) one_format(be, &c, ck, (fy_quant)q);
    nan_refused(be, &c, run2);
    fy_backend_destroy(be);
    return fy_test_finish("infer_load");
}
