/* The key/value section of a deepseek2 GGUF (docs/INTEROP.md): the
 * hyperparameters with the exact value types llama.cpp checks (u32, f32,
 * bool), and the tokenizer as llama.cpp's "gpt2" byte-level BPE. */
#include <stdio.h>
#include <string.h>

#include "interop/gguf_impl.h"

#define ARCH "deepseek2"

typedef struct kw {
    fy_strbuf *b;
    uint64_t n;
    fy_err *err;
    int failed;
} kw;

static void put(kw *w, const void *p, size_t n) {
    if (!w->failed && fy_strbuf_add(w->b, p, n, w->err)) w->failed = 1;
}
static void put_u32(kw *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}
static void put_u64(kw *w, uint64_t v) {
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}
static void put_str(kw *w, const char *s) {
    size_t n = strlen(s);
    put_u64(w, n);
    put(w, s, n);
}
/* The key's name: "general.x", "tokenizer.x" and "adapter.x" as given,
 * others under ARCH. */
static void key(kw *w, const char *k, uint32_t type) {
    char full[128];
    if (!strncmp(k, "general.", 8) || !strncmp(k, "tokenizer.", 10) || !strncmp(k, "adapter.", 8)) snprintf(full, sizeof full, "%s", k);
    else snprintf(full, sizeof full, "%s.%s", ARCH, k);
    put_str(w, full);
    put_u32(w, type);
    w->n++;
}
static void kv_u32(kw *w, const char *k, uint32_t v) { key(w, k, FY_GV_U32), put_u32(w, v); }
static void kv_f32(kw *w, const char *k, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    key(w, k, FY_GV_F32), put_u32(w, u);
}
static void kv_bool(kw *w, const char *k, int v) {
    uint8_t b = v ? 1 : 0;
    key(w, k, FY_GV_BOOL), put(w, &b, 1);
}
static void kv_str(kw *w, const char *k, const char *v) { key(w, k, FY_GV_STR), put_str(w, v); }

static uint32_t file_type(fy_gguf_type t) {
    switch (t) {
    case FY_GGUF_F32: return 0;   /* LLAMA_FTYPE_ALL_F32 */
    case FY_GGUF_F16: return 1;   /* MOSTLY_F16 */
    case FY_GGUF_Q4_0: return 2;  /* MOSTLY_Q4_0 */
    case FY_GGUF_Q8_0: return 7;  /* MOSTLY_Q8_0 */
    case FY_GGUF_BF16: return 32; /* MOSTLY_BF16 */
    }
    return 0;
}

/* YaRN as llama.cpp's deepseek2 reads it: the converter writes
 * 0.1 * mscale_all_dim as yarn_log_multiplier and llama.cpp divides by 0.1;
 * no YaRN: 0 (older builds require the key). */
static void rope_scaling(kw *w, const fy_rope_scaling *r) {
    if (!r->yarn) {
        kv_f32(w, "rope.scaling.yarn_log_multiplier", 0.0f);
        return;
    }
    kv_str(w, "rope.scaling.type", "yarn");
    kv_f32(w, "rope.scaling.factor", (float)r->factor);
    kv_u32(w, "rope.scaling.original_context_length", (uint32_t)r->original_max_position_embeddings);
    kv_f32(w, "rope.scaling.yarn_beta_fast", (float)r->beta_fast);
    kv_f32(w, "rope.scaling.yarn_beta_slow", (float)r->beta_slow);
    kv_f32(w, "rope.scaling.yarn_log_multiplier", (float)(0.1 * r->mscale_all_dim));
}

static void hparams(kw *w, const fy_config *c, const fy_gguf_plan *p, fy_gguf_type type) {
    int L = c->num_hidden_layers, D = p->mtp ? c->num_nextn_predict_layers : 0;
    int moe = c->n_routed_experts > 0;
    kv_str(w, "general.architecture", ARCH);
    kv_str(w, "general.name", "ferry");
    kv_u32(w, "general.file_type", file_type(type));
    kv_u32(w, "general.quantization_version", 2);
    kv_u32(w, "general.alignment", FY_GGUF_ALIGN);
    kv_u32(w, "vocab_size", (uint32_t)c->vocab_size);
    kv_u32(w, "context_length", (uint32_t)c->max_position_embeddings);
    kv_u32(w, "embedding_length", (uint32_t)c->hidden_size);
    kv_u32(w, "block_count", (uint32_t)(L + D));
    kv_u32(w, "feed_forward_length", (uint32_t)c->intermediate_size);
    kv_u32(w, "leading_dense_block_count", (uint32_t)(moe ? c->first_k_dense_replace : L + D));
    kv_u32(w, "attention.head_count", (uint32_t)c->num_attention_heads);
    kv_u32(w, "attention.head_count_kv", 1);
    kv_u32(w, "attention.key_length", (uint32_t)(c->kv_lora_rank + c->qk_rope_head_dim));
    kv_u32(w, "attention.value_length", (uint32_t)c->kv_lora_rank);
    kv_u32(w, "attention.key_length_mla", (uint32_t)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    kv_u32(w, "attention.value_length_mla", (uint32_t)c->v_head_dim);
    kv_u32(w, "attention.q_lora_rank", (uint32_t)c->q_lora_rank);
    kv_u32(w, "attention.kv_lora_rank", (uint32_t)c->kv_lora_rank);
    kv_f32(w, "attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    kv_u32(w, "rope.dimension_count", (uint32_t)c->qk_rope_head_dim);
    kv_f32(w, "rope.freq_base", (float)c->rope_theta);
    rope_scaling(w, &c->rope_scaling);
    kv_u32(w, "expert_feed_forward_length", (uint32_t)(moe ? c->moe_intermediate_size : c->intermediate_size));
    kv_u32(w, "expert_shared_count", (uint32_t)(moe ? c->n_shared_experts : 0));
    if (moe) {
        kv_u32(w, "expert_count", (uint32_t)c->n_routed_experts);
        kv_u32(w, "expert_used_count", (uint32_t)c->num_experts_per_tok);
        kv_f32(w, "expert_weights_scale", c->routed_scaling_factor);
        kv_bool(w, "expert_weights_norm", c->norm_topk_prob);
        kv_u32(w, "expert_gating_func", 2); /* sigmoid; absent means softmax */
        if (c->n_group > 1) {
            kv_u32(w, "expert_group_count", (uint32_t)c->n_group);
            kv_u32(w, "expert_group_used_count", (uint32_t)c->topk_group);
        }
    }
    if (D > 0) kv_u32(w, "nextn_predict_layers", (uint32_t)D);
}

static void tokenizer(kw *w, const fy_tokenizer *tok, const fy_config *c) {
    int32_t V = fy_tokenizer_vocab_size(tok), M = fy_tokenizer_n_merges(tok);
    kv_str(w, "tokenizer.ggml.model", "gpt2");
    /* llama.cpp's name for the same pre-tokenizer: "gpt-2" for ferry's own
     * (checked non-NULL in fy_gguf_write_keys). */
    kv_str(w, "tokenizer.ggml.pre", fy_tokenizer_pre_name(tok));
    key(w, "tokenizer.ggml.tokens", FY_GV_ARR);
    put_u32(w, FY_GV_STR), put_u64(w, (uint64_t)V);
    for (int32_t i = 0; i < V; i++) put_str(w, fy_tokenizer_token_str(tok, i));
    key(w, "tokenizer.ggml.token_type", FY_GV_ARR);
    put_u32(w, FY_GV_I32), put_u64(w, (uint64_t)V);
    for (int32_t i = 0; i < V; i++) put_u32(w, (uint32_t)fy_tokenizer_token_type(tok, i));
    key(w, "tokenizer.ggml.merges", FY_GV_ARR);
    put_u32(w, FY_GV_STR), put_u64(w, (uint64_t)M);
    for (int32_t r = 0; r < M && !w->failed; r++) {
        int32_t a, b, res;
        fy_tokenizer_merge(tok, r, &a, &b, &res);
        const char *sa = fy_tokenizer_token_str(tok, a), *sb = fy_tokenizer_token_str(tok, b);
        size_t la = strlen(sa), lb = strlen(sb);
        put_u64(w, la + 1 + lb), put(w, sa, la), put(w, " ", 1), put(w, sb, lb);
    }
    int32_t bos = fy_tokenizer_bos(tok), eos = fy_tokenizer_eos(tok), pad = fy_tokenizer_pad(tok);
    if (bos < 0) bos = c->bos_token_id;
    if (eos < 0) eos = c->eos_token_id;
    if (bos >= 0) kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (eos >= 0) kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    if (pad >= 0) kv_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)pad);
    /* ferry's prompts start as their text does: no <|bos|> (serve/generate.c). */
    kv_bool(w, "tokenizer.ggml.add_bos_token", 0);
    kv_bool(w, "tokenizer.ggml.add_eos_token", 0);
}

/* What llama.cpp's deepseek2 computes as transformers does: its YaRN takes
 * mscale equal to mscale_all_dim (it reads only the latter; without it, it
 * scales the softmax by mscale(factor)^2 where transformers does not),
 * derives the attention factor, and always truncates the ramp bounds. */
static int check_rope(const fy_rope_scaling *r, fy_err *err) {
    if (!r->yarn) return 0;
    if (!(r->mscale_all_dim > 0) || r->mscale != r->mscale_all_dim)
        return fy_fail(err, "rope_scaling: llama.cpp's deepseek2 YaRN needs mscale == mscale_all_dim (here %g and %g)",
                       r->mscale, r->mscale_all_dim);
    if (r->attention_factor != 0)
        return fy_fail(err, "rope_scaling.attention_factor %g: llama.cpp derives it from factor and mscale",
                       r->attention_factor);
    if (!r->truncate) return fy_fail(err, "rope_scaling.truncate false: llama.cpp always truncates YaRN's ramp");
    return 0;
}

int fy_gguf_write_keys(const fy_host_model *h, const fy_gguf_plan *p, fy_gguf_type type, fy_strbuf *b,
                       uint64_t *n_kv, fy_err *err) {
    kw w = {b, 0, err, 0};
    if (check_rope(&h->cfg.rope_scaling, err)) return -1;
    if (!fy_tokenizer_pre_name(h->tok))
        return fy_fail(err, "tokenizer: llama.cpp has no pre-tokenizer that splits text as this one does "
                            "(its tokenizer.json normalizer/pre_tokenizer)");
    if (fy_tokenizer_n_merges(h->tok) < 1)
        return fy_fail(err, "tokenizer: llama.cpp's gpt2 tokenizer needs at least one merge");
    hparams(&w, &h->cfg, p, type);
    tokenizer(&w, h->tok, &h->cfg);
    if (w.failed) return -1;
    *n_kv = w.n;
    return 0;
}

/* llama.cpp's LoRA adapter (src/llama-adapter.cpp): general.type "adapter",
 * the base's architecture, adapter.type "lora" and adapter.lora.alpha (its
 * scale is alpha / r, r read off each lora_b, as PEFT's). */
int fy_gguf_write_adapter_keys(const void *alpha, const fy_gguf_plan *p, fy_strbuf *b, uint64_t *n_kv, fy_err *err) {
    kw w = {b, 0, err, 0};
    (void)p;
    kv_str(&w, "general.architecture", ARCH);
    kv_str(&w, "general.type", "adapter");
    kv_str(&w, "general.name", "ferry LoRA adapter");
    kv_str(&w, "adapter.type", "lora");
    kv_f32(&w, "adapter.lora.alpha", *(const float *)alpha);
    if (w.failed) return -1;
    *n_kv = w.n;
    return 0;
}
