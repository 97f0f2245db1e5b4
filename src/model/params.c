/* Builds the parameter table (model/params.h): every tensor's name, shape
 * and offset in the flat params/buffers blocks, the whole model's or one
 * expert-parallel rank's shard. Layout only: no weights, no backend. */
#include "model/params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct builder {
    fy_param_table *t;
    int cap;
    fy_err *err;
    int failed;
    int next_id;     /* tensors registered, held or not */
    size_t x_cursor; /* elements of routed experts so far (placed after the rest) */
} builder;

enum { DENSE, BUFFER, EXPERT, SKIPPED };

/* Appends a tensor to its region (SKIPPED: an expert of another rank, only
 * counted); returns its offset in its block (EXPERT: in the expert region,
 * moved behind the rest when the table is complete). */
static size_t add(builder *b, int where, int decay, int rows, int cols, const char *fmt, ...) {
    fy_param_table *t = b->t;
    int id = b->next_id++;
    if (where == SKIPPED) return FY_NO_TENSOR;
    if (t->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 64;
        fy_tensor_info *p = realloc(t->t, cap * sizeof *p);
        if (!p) { b->failed = 1; return 0; }
        t->t = p;
        b->cap = cap;
    }
    fy_tensor_info *ti = &t->t[t->n++];
    memset(ti, 0, sizeof *ti);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ti->name, sizeof ti->name, fmt, ap);
    va_end(ap);
    ti->ndim = cols > 0 ? 2 : 1;
    ti->shape[0] = rows;
    ti->shape[1] = cols > 0 ? cols : 0;
    ti->n = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    ti->decay = decay;
    ti->is_buffer = where == BUFFER;
    ti->expert = where == EXPERT;
    ti->id = id;
    size_t *cursor = where == BUFFER ? &t->n_buffers : where == EXPERT ? &b->x_cursor : &t->n_params;
    ti->off = *cursor;
    *cursor += fy_params_round16(ti->n);
    return ti->off;
}

/* Both expect a `builder *B` in scope. */
#define MAT(...) add(B, DENSE, 1, __VA_ARGS__)
#define VEC(n, ...) add(B, DENSE, 0, n, 0, __VA_ARGS__)

static void layer_tensors(builder *B, const fy_config *c, int i, int mtp) {
    fy_layer_offs *L = &B->t->layer[i];
    int d = c->hidden_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dr = c->qk_rope_head_dim;
    const char *p = "model.layers";
    for (size_t *o = &L->attn_norm; o <= &L->head_norm; o++) *o = FY_NO_TENSOR;
    L->span_lo = B->t->n_params;
    L->xspan_lo = L->xspan_hi = B->x_cursor;

    if (mtp) {
        L->enorm = VEC(d, "%s.%d.enorm.weight", p, i);
        L->hnorm = VEC(d, "%s.%d.hnorm.weight", p, i);
        L->eh_proj = MAT(d, 2 * d, "%s.%d.eh_proj.weight", p, i);
    }
    L->attn_norm = VEC(d, "%s.%d.input_layernorm.weight", p, i);
    if (c->q_lora_rank > 0) {
        L->q_a = MAT(c->q_lora_rank, d, "%s.%d.self_attn.q_a_proj.weight", p, i);
        L->q_a_norm = VEC(c->q_lora_rank, "%s.%d.self_attn.q_a_layernorm.weight", p, i);
        L->q_b = MAT(H * dqk, c->q_lora_rank, "%s.%d.self_attn.q_b_proj.weight", p, i);
    } else {
        L->q = MAT(H * dqk, d, "%s.%d.self_attn.q_proj.weight", p, i);
    }
    L->kv_a = MAT(c->kv_lora_rank + dr, d, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", p, i);
    L->kv_a_norm = VEC(c->kv_lora_rank, "%s.%d.self_attn.kv_a_layernorm.weight", p, i);
    L->kv_b = MAT(H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                  "%s.%d.self_attn.kv_b_proj.weight", p, i);
    L->o = MAT(d, H * c->v_head_dim, "%s.%d.self_attn.o_proj.weight", p, i);
    L->ffn_norm = VEC(d, "%s.%d.post_attention_layernorm.weight", p, i);

    L->moe = fy_cfg_is_moe_layer(c, i);
    if (!L->moe) {
        int F = c->intermediate_size;
        L->gate = MAT(F, d, "%s.%d.mlp.gate_proj.weight", p, i);
        L->up = MAT(F, d, "%s.%d.mlp.up_proj.weight", p, i);
        L->down = MAT(d, F, "%s.%d.mlp.down_proj.weight", p, i);
    } else {
        int E = c->n_routed_experts, f = c->moe_intermediate_size;
        L->router = MAT(E, d, "%s.%d.mlp.gate.weight", p, i);
        L->bias = add(B, BUFFER, 0, E, 0, "%s.%d.mlp.gate.e_score_correction_bias", p, i);
        /* Registered kind-major so each kind's experts are contiguous;
         * the names still say experts.E.kind as HF does. */
        L->exp_stride = fy_params_round16((size_t)f * d);
        const int lo = B->t->exp_lo, hi = B->t->exp_hi;
        L->xspan_lo = B->x_cursor;
        for (int e = 0; e < E; e++) {
            size_t o = add(B, e >= lo && e < hi ? EXPERT : SKIPPED, 1, f, d, "%s.%d.mlp.experts.%d.gate_proj.weight",
                           p, i, e);
            if (e == lo) L->exp_gate = o;
        }
        for (int e = 0; e < E; e++) {
            size_t o = add(B, e >= lo && e < hi ? EXPERT : SKIPPED, 1, f, d, "%s.%d.mlp.experts.%d.up_proj.weight",
                           p, i, e);
            if (e == lo) L->exp_up = o;
        }
        for (int e = 0; e < E; e++) {
            size_t o = add(B, e >= lo && e < hi ? EXPERT : SKIPPED, 1, d, f, "%s.%d.mlp.experts.%d.down_proj.weight",
                           p, i, e);
            if (e == lo) L->exp_down = o;
        }
        L->xspan_hi = B->x_cursor;
        if (c->n_shared_experts > 0) {
            int fs = f * c->n_shared_experts;
            L->sh_gate = MAT(fs, d, "%s.%d.mlp.shared_experts.gate_proj.weight", p, i);
            L->sh_up = MAT(fs, d, "%s.%d.mlp.shared_experts.up_proj.weight", p, i);
            L->sh_down = MAT(d, fs, "%s.%d.mlp.shared_experts.down_proj.weight", p, i);
        }
    }
    if (mtp) L->head_norm = VEC(d, "%s.%d.shared_head.norm.weight", p, i);
    L->span_hi = B->t->n_params;
}

/* Moves the routed experts (offsets into the expert region so far) behind
 * the rest of the block. */
static void place_experts(builder *B) {
    fy_param_table *t = B->t;
    const size_t base = t->n_params;
    for (int i = 0; i < t->n; i++)
        if (t->t[i].expert) t->t[i].off += base;
    for (int i = 0; i < t->n_layers; i++) {
        fy_layer_offs *L = &t->layer[i];
        L->xspan_lo += base;
        L->xspan_hi += base;
        if (L->moe) L->exp_gate += base, L->exp_up += base, L->exp_down += base;
    }
    t->n_dense = base;
    t->n_params = base + B->x_cursor;
}

int fy_params_build(const fy_config *c, fy_param_table *out, fy_err *err) {
    return fy_params_build_shard(c, 0, 1, out, err);
}

int fy_params_build_shard(const fy_config *c, int rank, int size, fy_param_table *out, fy_err *err) {
    memset(out, 0, sizeof *out);
    builder b = {out, 0, err, 0, 0, 0}, *B = &b;
    const int64_t E = c->n_routed_experts;
    /* The int arithmetic below (H * head_dim, 2 * d, ...) is safe only for
     * sizes validation accepts: every caller gets that check here. */
    if (fy_config_validate(c, err)) return -1;
    if (size < 1 || rank < 0 || rank >= size) return fy_fail(err, "expert shard %d of %d", rank, size);
    if (size > 1 && E < size)
        return fy_fail(err, "%d routed experts do not shard over %d ranks (each needs one)", (int)E, size);
    out->exp_lo = (int)(E * rank / size);
    out->exp_hi = (int)(E * (rank + 1) / size);
    int L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    out->n_layers = L + D;
    out->layer = calloc(L + D, sizeof *out->layer);
    if (!out->layer) return fy_fail(err, "out of memory building the parameter table");
    /* Embeddings are a lookup table: no weight decay (as in GPT-2/llm.c). */
    out->embed = add(B, DENSE, 0, c->vocab_size, c->hidden_size, "model.embed_tokens.weight");
    for (int i = 0; i < L + D; i++) layer_tensors(B, c, i, i >= L);
    out->final_norm = VEC(c->hidden_size, "model.norm.weight");
    out->head = MAT(c->vocab_size, c->hidden_size, "lm_head.weight");
    out->n_all = b.next_id;
    place_experts(B);
    if (b.failed) {
        fy_params_free(out);
        return fy_fail(err, "out of memory building the parameter table");
    }
    return 0;
}

void fy_params_free(fy_param_table *t) {
    free(t->t);
    free(t->layer);
    memset(t, 0, sizeof *t);
}

const fy_tensor_info *fy_params_find(const fy_param_table *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->t[i].name, name)) return &t->t[i];
    return NULL;
}

size_t fy_params_count(const fy_param_table *t) {
    size_t n = 0;
    for (int i = 0; i < t->n; i++)
        if (!t->t[i].is_buffer) n += t->t[i].n;
    return n;
}
