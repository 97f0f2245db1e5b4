/* GGUF export for llama.cpp's deepseek2 architecture (interop/gguf.h,
 * docs/INTEROP.md): the tensor plan (GGUF names, ggml dims, types, where
 * each tensor's values come from in the host model), then the file: header,
 * keys (gguf_keys.c), tensor infos, data aligned to 32 bytes, all through a
 * temporary name that is read back (gguf_verify.c) before the rename. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/log.h"
#include "interop/gguf_impl.h"
#include "interop/gguf_quant.h"

int fy_gguf_type_parse(const char *name, fy_gguf_type *out, fy_err *err) {
    static const struct { const char *n; fy_gguf_type t; } k[] = {
        {"f32", FY_GGUF_F32}, {"f16", FY_GGUF_F16}, {"bf16", FY_GGUF_BF16}, {"q8_0", FY_GGUF_Q8_0}, {"q4_0", FY_GGUF_Q4_0}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (!strcmp(name, k[i].n)) return *out = k[i].t, 0;
    return fy_fail(err, "--type %s: expected f32, f16, bf16, q8_0 or q4_0", name);
}

uint64_t fy_gguf_fnv(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- the plan ---------------------------------------------------------- */

typedef struct planner {
    fy_gguf_plan *p;
    fy_gguf_type mat;    /* the type asked for matrices */
    fy_err *err;
    int failed;
} planner;

/* Adds a tensor; mat: a matrix (takes the asked type) rather than F32. */
static fy_gguf_tensor *add(planner *P, int mat, fy_gguf_src src, size_t off, uint64_t ne0, uint64_t ne1,
                           uint64_t ne2, const char *fmt, int layer) {
    fy_gguf_plan *p = P->p;
    if (P->failed) return NULL;
    fy_gguf_tensor *t = fy_gguf_plan_add(p, P->err);
    if (!t) return P->failed = 1, NULL;
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->ne[0] = ne0, t->ne[1] = ne1 ? ne1 : 1, t->ne[2] = ne2 ? ne2 : 1;
    t->n_dims = ne2 ? 3 : ne1 ? 2 : 1;
    t->src = src, t->off = off;
    t->type = mat ? P->mat : FY_GGUF_F32;
    /* As llama.cpp's converter: rows that are not whole blocks fall back to F16. */
    if ((t->type == FY_GGUF_Q8_0 || t->type == FY_GGUF_Q4_0) && ne0 % FY_GGUF_QK) {
        t->type = FY_GGUF_F16;
        p->n_fallback++;
    }
    return t;
}

#define MAT(off, a, b, name) add(P, 1, FY_GS_COPY, off, a, b, 0, name, i)
#define VEC(off, a, name) add(P, 0, FY_GS_COPY, off, a, 0, 0, name, i)

static void plan_attn(planner *P, const fy_config *c, const fy_layer_offs *L, int i) {
    uint64_t d = (uint64_t)c->hidden_size, H = (uint64_t)c->num_attention_heads, r = (uint64_t)c->kv_lora_rank;
    uint64_t dqk = (uint64_t)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    VEC(L->attn_norm, d, "blk.%d.attn_norm.weight");
    if (c->q_lora_rank > 0) {
        MAT(L->q_a, d, (uint64_t)c->q_lora_rank, "blk.%d.attn_q_a.weight");
        VEC(L->q_a_norm, (uint64_t)c->q_lora_rank, "blk.%d.attn_q_a_norm.weight");
        MAT(L->q_b, (uint64_t)c->q_lora_rank, H * dqk, "blk.%d.attn_q_b.weight");
    } else {
        MAT(L->q, d, H * dqk, "blk.%d.attn_q.weight");
    }
    MAT(L->kv_a, d, r + (uint64_t)c->qk_rope_head_dim, "blk.%d.attn_kv_a_mqa.weight");
    VEC(L->kv_a_norm, r, "blk.%d.attn_kv_a_norm.weight");
    /* Each pointer is used before the next add, which may move the table. */
    fy_gguf_tensor *kb = add(P, 1, FY_GS_KB, L->kv_b, (uint64_t)c->qk_nope_head_dim, r, H, "blk.%d.attn_k_b.weight", i);
    if (kb) kb->dn = c->qk_nope_head_dim, kb->dv = c->v_head_dim;
    fy_gguf_tensor *vb = add(P, 1, FY_GS_VB, L->kv_b, r, (uint64_t)c->v_head_dim, H, "blk.%d.attn_v_b.weight", i);
    if (vb) vb->dn = c->qk_nope_head_dim, vb->dv = c->v_head_dim;
    MAT(L->o, H * (uint64_t)c->v_head_dim, d, "blk.%d.attn_output.weight");
    VEC(L->ffn_norm, d, "blk.%d.ffn_norm.weight");
}

static void plan_ffn(planner *P, const fy_config *c, const fy_layer_offs *L, int i) {
    uint64_t d = (uint64_t)c->hidden_size, E = (uint64_t)c->n_routed_experts, f = (uint64_t)c->moe_intermediate_size;
    if (!L->moe) {
        uint64_t F = (uint64_t)c->intermediate_size;
        MAT(L->gate, d, F, "blk.%d.ffn_gate.weight");
        MAT(L->up, d, F, "blk.%d.ffn_up.weight");
        MAT(L->down, F, d, "blk.%d.ffn_down.weight");
        return;
    }
    add(P, 0, FY_GS_COPY, L->router, d, E, 0, "blk.%d.ffn_gate_inp.weight", i); /* router: F32 */
    fy_gguf_tensor *b = VEC(L->bias, E, "blk.%d.exp_probs_b.bias");
    if (b) b->from_buffers = 1;
    const struct { size_t off; uint64_t a, b; const char *n; } x[] = {
        {L->exp_gate, d, f, "blk.%d.ffn_gate_exps.weight"},
        {L->exp_up, d, f, "blk.%d.ffn_up_exps.weight"},
        {L->exp_down, f, d, "blk.%d.ffn_down_exps.weight"}};
    for (int k = 0; k < 3; k++) {
        fy_gguf_tensor *t = add(P, 1, FY_GS_STACK, x[k].off, x[k].a, x[k].b, E, x[k].n, i);
        if (t) t->stride = L->exp_stride;
    }
    if (c->n_shared_experts > 0) {
        uint64_t fs = f * (uint64_t)c->n_shared_experts;
        MAT(L->sh_gate, d, fs, "blk.%d.ffn_gate_shexp.weight");
        MAT(L->sh_up, d, fs, "blk.%d.ffn_up_shexp.weight");
        MAT(L->sh_down, fs, d, "blk.%d.ffn_down_shexp.weight");
    }
}

static int plan_build(const fy_host_model *h, fy_gguf_type type, fy_gguf_plan *p, fy_err *err) {
    const fy_config *c = &h->cfg;
    const fy_param_table *tab = &h->tab;
    planner pl = {p, type, err, 0}, *P = &pl;
    memset(p, 0, sizeof *p);
    p->mtp = c->num_nextn_predict_layers > 0;
    uint64_t d = (uint64_t)c->hidden_size, V = (uint64_t)c->vocab_size;
    int n_layers = c->num_hidden_layers + (p->mtp ? c->num_nextn_predict_layers : 0);
    int i = 0;
    MAT(tab->embed, d, V, "token_embd.weight");
    for (i = 0; i < n_layers; i++) {
        const fy_layer_offs *L = &tab->layer[i];
        plan_attn(P, c, L, i);
        plan_ffn(P, c, L, i);
        if (i >= c->num_hidden_layers) {
            MAT(L->eh_proj, 2 * d, d, "blk.%d.nextn.eh_proj.weight");
            VEC(L->enorm, d, "blk.%d.nextn.enorm.weight");
            VEC(L->hnorm, d, "blk.%d.nextn.hnorm.weight");
            VEC(L->head_norm, d, "blk.%d.nextn.shared_head_norm.weight");
        }
    }
    VEC(tab->final_norm, d, "output_norm.weight");
    MAT(tab->head, d, V, "output.weight");
    if (pl.failed) return -1;
    fy_gguf_plan_offsets(p);
    return 0;
}

fy_gguf_tensor *fy_gguf_plan_add(fy_gguf_plan *p, fy_err *err) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        fy_gguf_tensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return fy_fail(err, "out of memory planning the GGUF tensors"), NULL;
        p->t = t, p->cap = cap;
    }
    fy_gguf_tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    return t;
}

void fy_gguf_plan_offsets(fy_gguf_plan *p) {
    uint64_t at = 0;
    for (int k = 0; k < p->n; k++) {
        fy_gguf_tensor *t = &p->t[k];
        t->data_off = at;
        t->bytes = fy_gguf_row_bytes(t->type, t->ne[0]) * t->ne[1] * t->ne[2];
        at += (t->bytes + FY_GGUF_ALIGN - 1) / FY_GGUF_ALIGN * FY_GGUF_ALIGN;
    }
    p->data_bytes = at;
}

/* ---- values and the file ----------------------------------------------- */

/* Slab i2 of the tensor (ne[0] * ne[1] values, ne[0] fastest) into dst:
 * 3-D tensors (stacked experts, k_b / v_b per head) go one slab at a time. */
static void gather(const fy_gguf_values *v, const fy_gguf_tensor *t, uint64_t i2, float *dst) {
    const float *s = (t->from_buffers ? v->buffers : v->params) + t->off;
    uint64_t n0 = t->ne[0], n1 = t->ne[1];
    if (t->src == FY_GS_COPY) {
        memcpy(dst, s + i2 * n0 * n1, n0 * n1 * sizeof *dst);
    } else if (t->src == FY_GS_STACK) {
        memcpy(dst, s + i2 * t->stride, n0 * n1 * sizeof *dst);
    } else {
        /* kv_b_proj [H * (dn + dv), r]; head i2's rows start at i2 * (dn + dv). */
        size_t r = t->src == FY_GS_KB ? n1 : n0, rows = (size_t)(t->dn + t->dv);
        const float *hd = s + i2 * rows * r;
        for (uint64_t a = 0; a < n1; a++)
            for (uint64_t b = 0; b < n0; b++)
                dst[a * n0 + b] = t->src == FY_GS_KB ? hd[b * r + a]             /* k_b[i=a][j=b] = kv_b[j][i] */
                                                     : hd[(t->dn + a) * r + b];  /* v_b[j=a][i=b] = kv_b[dn+j][i] */
    }
}

static int write_data(const fy_gguf_values *v, fy_gguf_plan *p, fy_atomic_file *a, fy_err *err) {
    uint64_t most = 0, most_bytes = 0;
    for (int k = 0; k < p->n; k++) {
        const fy_gguf_tensor *t = &p->t[k];
        uint64_t n = t->ne[0] * t->ne[1], nb = fy_gguf_row_bytes(t->type, t->ne[0]) * t->ne[1];
        if (n > most) most = n;
        if (nb > most_bytes) most_bytes = nb;
    }
    float *x = malloc((size_t)most * sizeof *x);
    uint8_t *y = malloc((size_t)most_bytes + FY_GGUF_ALIGN);
    static const uint8_t zero[FY_GGUF_ALIGN];
    int rc = -1;
    if (!x || !y) { fy_fail(err, "out of memory encoding GGUF tensors"); goto done; }
    for (int k = 0; k < p->n; k++) {
        fy_gguf_tensor *t = &p->t[k];
        size_t rb = fy_gguf_row_bytes(t->type, t->ne[0]), slab = rb * (size_t)t->ne[1];
        t->sum = FY_GGUF_FNV_INIT;
        for (uint64_t i2 = 0; i2 < t->ne[2]; i2++) {
            gather(v, t, i2, x);
            for (size_t r = 0; r < t->ne[1]; r++) fy_gguf_encode_row(t->type, x + r * t->ne[0], t->ne[0], y + r * rb);
            t->sum = fy_gguf_fnv(t->sum, y, slab);
            if (fy_atomic_write(a, y, slab, err)) goto done;
        }
        size_t pad = (size_t)((FY_GGUF_ALIGN - t->bytes % FY_GGUF_ALIGN) % FY_GGUF_ALIGN);
        if (pad && fy_atomic_write(a, zero, pad, err)) goto done;
    }
    rc = 0;
done:
    free(x);
    free(y);
    return rc;
}

static int add_le(fy_strbuf *b, uint64_t v, int bytes, fy_err *err) {
    uint8_t x[8];
    for (int i = 0; i < bytes; i++) x[i] = (uint8_t)(v >> (8 * i));
    return fy_strbuf_add(b, x, (size_t)bytes, err);
}

/* Magic, version, counts, keys, tensor infos, padding to the alignment. */
static int build_header(const fy_gguf_values *v, const fy_gguf_plan *p, fy_strbuf *b, uint64_t *n_kv,
                        fy_err *err) {
    if (fy_strbuf_add(b, "GGUF", 4, err) || add_le(b, FY_GGUF_VERSION, 4, err) ||
        add_le(b, (uint64_t)p->n, 8, err) || add_le(b, 0, 8, err))
        return -1;
    if (v->keys(v->keys_ctx, p, b, n_kv, err)) return -1;
    for (int i = 0; i < 8; i++) b->p[16 + i] = (char)(*n_kv >> (8 * i));
    for (int k = 0; k < p->n; k++) {
        const fy_gguf_tensor *t = &p->t[k];
        size_t nl = strlen(t->name);
        if (add_le(b, nl, 8, err) || fy_strbuf_add(b, t->name, nl, err) || add_le(b, (uint64_t)t->n_dims, 4, err))
            return -1;
        for (int d = 0; d < t->n_dims; d++)
            if (add_le(b, t->ne[d], 8, err)) return -1;
        if (add_le(b, (uint64_t)t->type, 4, err) || add_le(b, t->data_off, 8, err)) return -1;
    }
    static const char zero[FY_GGUF_ALIGN];
    return fy_strbuf_add(b, zero, (FY_GGUF_ALIGN - b->n % FY_GGUF_ALIGN) % FY_GGUF_ALIGN, err);
}

int fy_gguf_write(const char *out_path, fy_gguf_plan *p, const fy_gguf_values *v, fy_err *err) {
    fy_strbuf hdr = {0};
    fy_atomic_file a;
    uint64_t n_kv = 0;
    int rc = -1, opened = 0;
    if (build_header(v, p, &hdr, &n_kv, err)) goto done;
    if (fy_atomic_open(&a, out_path, err)) goto done;
    opened = 1;
    if (fy_atomic_write(&a, hdr.p, hdr.n, err) || write_data(v, p, &a, err) ||
        fy_gguf_verify(a.tmp, out_path, p, n_kv, err))
        goto done;
    opened = 0;
    rc = fy_atomic_commit(&a, err);
done:
    if (opened) fy_atomic_abort(&a);
    fy_strbuf_free(&hdr);
    return rc;
}

static int check_model(const fy_host_model *h, const char *out_path, fy_err *err) {
    if (!h->tok) return fy_fail(err, "%s: the model has no tokenizer to write", out_path);
    if (fy_params_is_shard(&h->tab)) return fy_fail(err, "%s: the model holds only some experts", out_path);
    if (fy_tokenizer_vocab_size(h->tok) != h->cfg.vocab_size)
        return fy_fail(err, "%s: tokenizer has %d tokens, config vocab_size %d", out_path,
                       (int)fy_tokenizer_vocab_size(h->tok), h->cfg.vocab_size);
    return 0;
}

/* The model's keys (gguf_keys.c) for fy_gguf_write. */
typedef struct model_keys {
    const fy_host_model *h;
    fy_gguf_type type;
} model_keys;
static int write_model_keys(const void *ctx, const fy_gguf_plan *p, fy_strbuf *b, uint64_t *n_kv, fy_err *err) {
    const model_keys *k = ctx;
    return fy_gguf_write_keys(k->h, p, k->type, b, n_kv, err);
}

int fy_gguf_export(const fy_host_model *h, const char *out_path, fy_gguf_type type, fy_err *err) {
    if (fy_file_exists(out_path)) return fy_fail(err, "%s exists: not overwriting it", out_path);
    if (check_model(h, out_path, err)) return -1;
    fy_gguf_plan p;
    model_keys mk = {h, type};
    fy_gguf_values v = {h->params, h->buffers, write_model_keys, &mk};
    int rc = plan_build(h, type, &p, err) || fy_gguf_write(out_path, &p, &v, err) ? -1 : 0;
    if (!rc && p.n_fallback)
        fy_warn("%s: %d matrices whose rows are not whole blocks of 32 are stored as F16 (as llama.cpp's converter "
                "does)", out_path, p.n_fallback);
    if (rc && err && strncmp(err->msg, out_path, strlen(out_path))) fy_wrap(err, "%s", out_path);
    free(p.t);
    return rc;
}
