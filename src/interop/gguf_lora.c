/* llama.cpp's LoRA adapter GGUF from a ferry LoRA checkpoint (`ferry
 * convert --to gguf-lora`, docs/FINETUNE.md). llama.cpp pairs
 * "<base tensor>.lora_a" [ne: in, r] with "<base tensor>.lora_b" [ne: r, out]
 * (PEFT's lora_A [r, in] and lora_B [out, r] as they are) and adds
 * alpha / r * B A x wherever its graph multiplies through build_lora_mm;
 * stacked experts take 3-D pairs [in, r, E] and [r, out, E]
 * (build_lora_mm_id). deepseek2's graph does that for attn_output, the dense
 * and shared FFNs and the routed experts only: q_a/q_b/q/kv_a/kv_b adapters
 * would load and be ignored, so a run with any of them is refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "interop/gguf_impl.h"

/* One base weight's adapter pair (stacked over n_exp experts when > 0). */
typedef struct lora_pair {
    char hf[80];     /* "model.layers.1.self_attn.o_proj", or with n_exp "model.layers.1.mlp.experts" */
    char proj[16];   /* with n_exp: "gate_proj" (expert e's is hf.e.proj) */
    char gguf[64];   /* "blk.1.ffn_gate_exps.weight" */
    int n_exp;
} lora_pair;

typedef struct lora_plan {
    const fy_st_file *st;
    fy_gguf_plan *p;
    float *vals;      /* every tensor's values, in plan order */
    size_t n_vals, cap_vals;
    size_t used;      /* checkpoint tensors consumed */
    int rank;
} lora_plan;

static int st_name(char *buf, size_t cap, const lora_pair *q, int e, char which) {
    int n = q->n_exp ? snprintf(buf, cap, "base_model.model.%s.%d.%s.lora_%c.weight", q->hf, e, q->proj, which)
                     : snprintf(buf, cap, "base_model.model.%s.lora_%c.weight", q->hf, which);
    return n < 0 || (size_t)n >= cap;
}

static int grow(lora_plan *L, size_t more, fy_err *err) {
    if (L->n_vals + more <= L->cap_vals) return 0;
    size_t cap = L->cap_vals ? L->cap_vals : 4096;
    while (cap < L->n_vals + more) cap *= 2;
    float *v = realloc(L->vals, cap * sizeof *v);
    if (!v) return fy_fail(err, "out of memory reading the adapters");
    L->vals = v, L->cap_vals = cap;
    return 0;
}

static int add_tensor(lora_plan *L, const char *name, uint64_t ne0, uint64_t ne1, uint64_t ne2, size_t off,
                      fy_err *err) {
    fy_gguf_tensor *t = fy_gguf_plan_add(L->p, err);
    if (!t) return -1;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2 ? ne2 : 1;
    t->n_dims = ne2 ? 3 : 2;
    t->type = FY_GGUF_F32, t->src = FY_GS_COPY, t->off = off;
    return 0;
}

/* lora_a then lora_b of pair q, when the checkpoint has it (0: absent). */
static int add_pair(lora_plan *L, const lora_pair *q, int *found, fy_err *err) {
    char n[192];
    int E = q->n_exp ? q->n_exp : 1;
    *found = 0;
    for (int k = 0; k < 2; k++) {
        const char which = k ? 'B' : 'A';
        const fy_st_entry *e0 = NULL;
        size_t off = L->n_vals;
        for (int e = 0; e < E; e++) {
            if (st_name(n, sizeof n, q, e, which)) return fy_fail(err, "adapter name too long");
            const fy_st_entry *en = fy_st_find(L->st, n);
            if (!en) {
                if (k == 0 && e == 0) return 0;
                return fy_fail(err, "%s: missing (its pair is there)", n);
            }
            if (en->ndim != 2 || (e0 && (en->shape[0] != e0->shape[0] || en->shape[1] != e0->shape[1])))
                return fy_fail(err, "%s: shape is not [%s] like the others", n, k ? "out, r" : "r, in");
            if (!e0) e0 = en;
            int64_t r = k ? en->shape[1] : en->shape[0];
            if (r != L->rank) return fy_fail(err, "%s: rank %lld, the run says %d", n, (long long)r, L->rank);
            if (grow(L, en->numel, err) || fy_st_read_f32(L->st, n, L->vals + L->n_vals, en->numel, err)) return -1;
            L->n_vals += en->numel;
            L->used++;
        }
        char g[96];
        snprintf(g, sizeof g, "%s.lora_%c", q->gguf, k ? 'b' : 'a');
        /* ggml's ne is PyTorch's shape reversed: [r, in] -> (in, r), [out, r] -> (r, out). */
        if (add_tensor(L, g, (uint64_t)e0->shape[1], (uint64_t)e0->shape[0], q->n_exp ? (uint64_t)E : 0, off, err))
            return -1;
    }
    *found = 1;
    return 0;
}

static int plan_layer(lora_plan *L, const fy_config *c, int i, int *n_found, fy_err *err) {
    static const char *proj[3] = {"gate", "up", "down"};
    lora_pair q[8];
    int n = 0;
    memset(q, 0, sizeof q);
    snprintf(q[n].hf, sizeof q[n].hf, "model.layers.%d.self_attn.o_proj", i);
    snprintf(q[n++].gguf, sizeof q[0].gguf, "blk.%d.attn_output.weight", i);
    for (int k = 0; k < 3; k++) {
        if (!fy_cfg_is_moe_layer(c, i)) {
            snprintf(q[n].hf, sizeof q[n].hf, "model.layers.%d.mlp.%s_proj", i, proj[k]);
            snprintf(q[n++].gguf, sizeof q[0].gguf, "blk.%d.ffn_%s.weight", i, proj[k]);
            continue;
        }
        snprintf(q[n].hf, sizeof q[n].hf, "model.layers.%d.mlp.shared_experts.%s_proj", i, proj[k]);
        snprintf(q[n++].gguf, sizeof q[0].gguf, "blk.%d.ffn_%s_shexp.weight", i, proj[k]);
        snprintf(q[n].hf, sizeof q[n].hf, "model.layers.%d.mlp.experts", i);
        snprintf(q[n].proj, sizeof q[n].proj, "%s_proj", proj[k]);
        snprintf(q[n].gguf, sizeof q[0].gguf, "blk.%d.ffn_%s_exps.weight", i, proj[k]);
        q[n++].n_exp = c->n_routed_experts;
    }
    for (int k = 0; k < n; k++) {
        int found;
        if (add_pair(L, &q[k], &found, err)) return -1;
        *n_found += found;
    }
    return 0;
}

/* An attention adapter other than o_proj's: what llama.cpp would ignore. */
static const char *ignored_target(const fy_st_file *st) {
    for (size_t i = 0; i < fy_st_count(st); i++) {
        const char *n = fy_st_entry_at(st, i)->name;
        if (strstr(n, ".self_attn.") && !strstr(n, ".o_proj.")) return n;
    }
    return NULL;
}

int fy_gguf_export_lora(const fy_config *c, const char *adapters, int rank, float alpha, const char *out_path,
                        fy_err *err) {
    if (fy_file_exists(out_path)) return fy_fail(err, "%s exists: not overwriting it", out_path);
    fy_st_file *st = NULL;
    fy_gguf_plan p;
    memset(&p, 0, sizeof p);
    lora_plan L = {0};
    L.p = &p, L.rank = rank;
    int rc = -1, n_found = 0;
    if (fy_st_open(adapters, &st, err)) return -1;
    L.st = st;
    for (int i = 0; i < c->num_hidden_layers; i++)
        if (plan_layer(&L, c, i, &n_found, err)) goto done;
    const char *ign = ignored_target(st);
    if (ign) {
        fy_fail(err, "%s: llama.cpp's deepseek2 graph applies LoRA to o_proj, the MLPs and the experts only, so "
                     "%s would load and be ignored: adapt those targets only, or merge (--to gguf)", adapters, ign);
        goto done;
    }
    if (L.used != fy_st_count(st)) {
        fy_fail(err, "%s: %zu of its %zu tensors are no adapter of a main layer's o_proj, MLP or experts", adapters,
                fy_st_count(st) - L.used, fy_st_count(st));
        goto done;
    }
    if (!n_found) {
        fy_fail(err, "%s: no adapters", adapters);
        goto done;
    }
    fy_gguf_plan_offsets(&p);
    fy_gguf_values v = {L.vals, NULL, fy_gguf_write_adapter_keys, &alpha};
    rc = fy_gguf_write(out_path, &p, &v, err);
done:
    if (rc && err && strncmp(err->msg, out_path, strlen(out_path))) fy_wrap(err, "%s", out_path);
    fy_st_close(st);
    free(L.vals);
    free(p.t);
    return rc;
}
