/* LoRA adapters (model/lora.h): the target names, the adapter block's
 * table (PEFT's names), its allocation and PEFT's init. The adapters'
 * forward and backward arithmetic is in lora_ops.c. */
#include "model/lora.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/strbuf.h"
#include "model/model_impl.h"

typedef struct target {
    const char *name;   /* PEFT's target_modules entry */
    unsigned bit;
} target;

static const target targets[] = {
    {"q_a_proj", FY_LORA_Q_A},       {"q_b_proj", FY_LORA_Q_B}, {"q_proj", FY_LORA_Q},
    {"kv_a_proj_with_mqa", FY_LORA_KV_A}, {"kv_b_proj", FY_LORA_KV_B}, {"o_proj", FY_LORA_O},
    {"gate_proj", FY_LORA_GATE},     {"up_proj", FY_LORA_UP},   {"down_proj", FY_LORA_DOWN},
    {"experts", FY_LORA_EXPERTS},
};
#define N_TARGETS ((int)(sizeof targets / sizeof targets[0]))

int fy_lora_parse_targets(const char *list, unsigned *out, fy_err *err) {
    *out = 0;
    const char *p = list ? list : "";
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 3 && !strncmp(p, "all", 3)) {
            *out |= FY_LORA_ALL;
        } else if (n > 0) {
            int found = 0;
            for (int i = 0; i < N_TARGETS && !found; i++)
                if (strlen(targets[i].name) == n && !strncmp(p, targets[i].name, n)) *out |= targets[i].bit, found = 1;
            if (!found) {
                char known[256];
                fy_lora_targets_string(FY_LORA_ALL, known, sizeof known);
                return fy_fail(err, "unknown LoRA target '%.*s' (known: %s, or all)", (int)n, p, known);
            }
        }
        p += n;
        if (*p == ',') p++;
    }
    if (!*out) return fy_fail(err, "no LoRA targets given in '%s'", list ? list : "");
    return 0;
}

void fy_lora_targets_string(unsigned bits, char *buf, size_t cap) {
    size_t used = 0;
    if (cap) buf[0] = 0;
    for (int i = 0; i < N_TARGETS; i++)
        if (bits & targets[i].bit) {
            int k = snprintf(buf + used, cap > used ? cap - used : 0, "%s%s", used ? "," : "", targets[i].name);
            if (k > 0) used += (size_t)k;
        }
}

void fy_lora_name(const char *weight, char which, char *buf, size_t cap) {
    size_t n = strlen(weight), k = strlen(".weight");
    if (n >= k && !strcmp(weight + n - k, ".weight")) n -= k;
    snprintf(buf, cap, "base_model.model.%.*s.lora_%c.weight", (int)n, weight, which);
}

/* The target bit a base tensor answers to (0: none); only main layers. */
static unsigned target_of(const fy_config *c, const fy_tensor_info *t) {
    int li;
    if (t->ndim != 2 || sscanf(t->name, "model.layers.%d.", &li) != 1 || li >= c->num_hidden_layers) return 0;
    if (fy_params_is_expert_name(t->name)) return FY_LORA_EXPERTS;
    static const struct { const char *suffix; unsigned bit; } s[] = {
        {".self_attn.q_a_proj.weight", FY_LORA_Q_A}, {".self_attn.q_b_proj.weight", FY_LORA_Q_B},
        {".self_attn.q_proj.weight", FY_LORA_Q}, {".self_attn.kv_a_proj_with_mqa.weight", FY_LORA_KV_A},
        {".self_attn.kv_b_proj.weight", FY_LORA_KV_B}, {".self_attn.o_proj.weight", FY_LORA_O},
        {"gate_proj.weight", FY_LORA_GATE}, {"up_proj.weight", FY_LORA_UP}, {"down_proj.weight", FY_LORA_DOWN},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        if (fy_str_ends_with(t->name, s[i].suffix)) return s[i].bit;
    return 0;
}

static int by_w(const void *a, const void *b) {
    size_t x = ((const fy_lora_adapter *)a)->w, y = ((const fy_lora_adapter *)b)->w;
    return x < y ? -1 : x > y;
}

/* Appends an adapter matrix to the table (id: its index in the whole
 * model's adapter table); returns its offset. */
static size_t add_matrix(fy_param_table *tab, const fy_tensor_info *base, char which, int rows, int cols, int id) {
    fy_tensor_info *ti = &tab->t[tab->n++];
    memset(ti, 0, sizeof *ti);
    fy_lora_name(base->name, which, ti->name, sizeof ti->name);
    ti->ndim = 2;
    ti->shape[0] = rows;
    ti->shape[1] = cols;
    ti->n = (size_t)rows * cols;
    ti->decay = 1;
    ti->expert = base->expert;
    ti->id = id;
    ti->off = tab->n_params;
    tab->n_params += fy_params_round16(ti->n);
    return ti->off;
}

/* The adapter table of base table `base` (targets lc), and with ad its
 * adapters (*ad malloc'd, [*n_ad], sorted by w). A whole base gives A then
 * B of each adapted tensor in the base table's order. An expert shard's
 * base (expert parallel) gives a shard of the adapters laid out as the
 * base is: every other adapter in that order ([0, n_dense), the same on
 * every rank), then its routed experts' adapters (the expert region, this
 * rank's alone); each tensor's id is its index in the whole table, and
 * n_all counts the whole table's tensors, so checkpoints and their gather
 * (parallel/dp_ckpt.c) place a shard's adapters by id. */
static int build_table(const fy_config *c, const fy_param_table *base, const fy_lora_config *lc,
                       fy_param_table *tab, fy_lora_adapter **ad, int *n_ad, int *max_in, fy_err *err) {
    const int shard = fy_params_is_shard(base), r = lc->rank;
    fy_param_table whole = {0};
    if (shard && fy_params_build(c, &whole, err)) return fy_wrap(err, "the LoRA table");
    const fy_param_table *W = shard ? &whole : base;
    int *pre = malloc(((size_t)W->n + 1) * sizeof *pre), n_whole = 0, n = 0;
    if (!pre) {
        fy_params_free(&whole);
        return fy_fail(err, "out of memory building the LoRA table");
    }
    for (int i = 0; i < W->n; i++) pre[i] = n_whole, n_whole += (target_of(c, &W->t[i]) & lc->targets) != 0;
    for (int i = 0; i < base->n; i++) n += (target_of(c, &base->t[i]) & lc->targets) != 0;
    fy_params_free(&whole);
    memset(tab, 0, sizeof *tab);
    if (!n_whole) {
        char want[256];
        free(pre);
        fy_lora_targets_string(lc->targets, want, sizeof want);
        return fy_fail(err, "LoRA targets %s match no linear of this model", want);
    }
    tab->t = calloc(2 * (size_t)n + 1, sizeof *tab->t);
    fy_lora_adapter *list = ad ? calloc((size_t)n + 1, sizeof *list) : NULL;
    if (!tab->t || (ad && !list)) {
        free(pre);
        free(list);
        fy_params_free(tab);
        return fy_fail(err, "out of memory building the LoRA table");
    }
    int k = 0;
    for (int pass = 0; pass < 1 + shard; pass++) {
        for (int i = 0; i < base->n; i++) {
            const fy_tensor_info *t = &base->t[i];
            if (!(target_of(c, t) & lc->targets) || (shard && t->expert != pass)) continue;
            fy_lora_adapter a = {.w = t->off, .out = t->shape[0], .in = t->shape[1], .id = t->id, .expert = -1};
            if (sscanf(t->name, "model.layers.%d.mlp.experts.%d.", &a.layer, &a.expert) < 1) a.layer = -1;
            a.a = add_matrix(tab, t, 'A', r, a.in, 2 * pre[t->id]);
            a.b = add_matrix(tab, t, 'B', a.out, r, 2 * pre[t->id] + 1);
            if (list) list[k] = a;
            k++;
            if (max_in && a.in > *max_in) *max_in = a.in;
        }
        if (pass == 0) tab->n_dense = tab->n_params;
    }
    free(pre);
    tab->n_all = 2 * n_whole;
    tab->exp_lo = base->exp_lo, tab->exp_hi = base->exp_hi;
    if (ad) {
        qsort(list, n, sizeof *list, by_w);
        *ad = list;
        *n_ad = n;
    }
    return 0;
}

int fy_lora_table(const fy_config *c, const fy_lora_config *lc, int rank, int size, fy_param_table *out,
                  fy_err *err) {
    fy_param_table base;
    memset(out, 0, sizeof *out);
    if (fy_params_build_shard(c, rank, size, &base, err)) return fy_wrap(err, "the LoRA table");
    int rc = build_table(c, &base, lc, out, NULL, NULL, NULL, err);
    fy_params_free(&base);
    return rc;
}

/* Frees L's own parts (not the base it may hold). */
static void lora_release(fy_backend *be, fy_lora *L) {
    if (be && L->dump.handle) fy_be_free(be, &L->dump);
    free(L->ad);
    free(L);
}

void fy__lora_free(fy_model *m) {
    fy_lora *L = m->lora;
    if (!L) return;
    fy__lora_qbase_free(m);
    if (m->be && L->base_params.handle) fy_be_free(m->be, &L->base_params);
    fy_params_free(&L->base_tab);
    lora_release(m->be, L);
    m->lora = NULL;
}

static int check_config(const fy_model *m, const fy_lora_config *cfg, fy_err *err) {
    if (m->lora) return fy_fail(err, "LoRA adapters are already on");
    if (cfg->rank < 1) return fy_fail(err, "LoRA rank %d: must be at least 1", cfg->rank);
    if (!(cfg->alpha > 0) || !isfinite(cfg->alpha)) return fy_fail(err, "LoRA alpha %g: must be positive", cfg->alpha);
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
        return fy_fail(err, "LoRA dropout %g: must be in [0, 1)", cfg->dropout);
    return 0;
}

int fy_model_set_lora(fy_model *m, const fy_lora_config *cfg, fy_err *err) {
    if (check_config(m, cfg, err)) return -1;
    fy_lora *L = calloc(1, sizeof *L);
    if (!L) return fy_fail(err, "out of memory");
    L->cfg = *cfg;
    L->scale = cfg->alpha / (float)cfg->rank;
    const fy_config *c = &m->cfg;
    size_t dump = (size_t)c->hidden_size;
    if ((size_t)c->q_lora_rank > dump) dump = c->q_lora_rank;
    if ((size_t)c->kv_lora_rank > dump) dump = c->kv_lora_rank;
    fy_param_table tab = {0};
    fy_buf p = {0}, g = {0};
    if (build_table(&m->cfg, &m->tab, cfg, &tab, &L->ad, &L->n_ad, &L->max_in, err) || fy_be_alloc(m->be, &p, tab.n_params, err) ||
        fy_be_alloc(m->be, &g, tab.n_params, err) || fy_be_alloc(m->be, &L->dump, dump, err)) {
        if (p.handle) fy_be_free(m->be, &p);
        if (g.handle) fy_be_free(m->be, &g);
        fy_params_free(&tab);
        lora_release(m->be, L);
        return fy_wrap(err, "adding LoRA adapters");
    }
    /* The swap: the adapter block becomes what the model trains; the base
     * keeps its weights and loses its gradients (none from now on). The
     * workspace is re-planned (it gains the adapters' scratch). */
    L->base_tab = m->tab;
    L->base_params = m->params;
    fy_be_free(m->be, &m->grads);
    m->tab = tab;
    m->params = p;
    m->grads = g;
    m->lora = L;
    m->B = m->T = 0;
    return fy_be_sync(m->be, err);
}

/* W (at dst) += s B A of adapter a, whose A and B are in p: PEFT's
 * merge_and_unload, and the merged kv_b_proj copies of unmerged adapters. */
static void fold(fy_model *m, const fy_lora *L, fy_buf *p, const fy_lora_adapter *a, fy_ref dst) {
    OPS->gemm(m->be, 0, 0, a->out, a->in, L->cfg.rank, L->scale, fy_at(p, a->b), L->cfg.rank, fy_at(p, a->a), a->in,
              1.0f, dst, a->in);
}

/* The swap back: the base is the model again, with zero gradients g
 * (allocated by the caller, so that nothing fails after a change). The
 * adapter block (table, weights, list) goes to keep, else is freed. */
static int swap_back(fy_model *m, fy_buf g, fy_lora_unmerged *keep, fy_err *err) {
    fy_lora *L = m->lora;
    if (keep) {
        keep->tab = m->tab;
        keep->params = m->params;
        keep->ad = L->ad;
        L->ad = NULL;
    } else {
        fy_be_free(m->be, &m->params);
        fy_params_free(&m->tab);
    }
    fy_be_free(m->be, &m->grads);
    m->tab = L->base_tab;
    m->params = L->base_params;
    m->grads = g;
    lora_release(m->be, L);
    m->lora = NULL;
    m->B = m->T = 0; /* the workspace loses the adapters' scratch */
    return fy_be_sync(m->be, err);
}

int fy_model_lora_merge(fy_model *m, fy_err *err) {
    fy_lora *L = m->lora;
    if (!L) return fy_fail(err, "no LoRA adapters to merge");
    if (L->qb) return fy_fail(err, "the LoRA base is held quantized: merge onto the base loaded in f32");
    fy_buf g = {0};
    if (fy_be_alloc(m->be, &g, L->base_tab.n_params, err)) return fy_wrap(err, "merging LoRA adapters");
    for (int i = 0; i < L->n_ad; i++) fold(m, L, &m->params, &L->ad[i], PW(m, L->ad[i].w));
    if (fy_be_sync(m->be, err)) {
        fy_be_free(m->be, &g);
        return fy_wrap(err, "merging LoRA adapters");
    }
    return swap_back(m, g, NULL, err);
}

void fy_lora_unmerged_free(fy_backend *be, fy_lora_unmerged *u) {
    if (!u) return;
    if (be && u->params.handle) fy_be_free(be, &u->params);
    if (be && u->kvb.handle) fy_be_free(be, &u->kvb);
    fy_params_free(&u->tab);
    free(u->ad);
    free(u->kvb_off);
    free(u);
}

/* u's merged kv_b_proj copies (lora.h), while the adapters are still on m:
 * the base's weights copied, then folded as fy_model_lora_merge folds them. */
static int merged_kvb(fy_model *m, fy_lora_unmerged *u, fy_err *err) {
    const fy_lora *L = m->lora;
    int nl = m->cfg.num_hidden_layers;
    size_t need = 0;
    if (!(u->kvb_off = malloc((size_t)nl * sizeof *u->kvb_off))) return fy_fail(err, "out of memory");
    for (int l = 0; l < nl; l++) u->kvb_off[l] = SIZE_MAX;
    for (int i = 0; i < L->n_ad; i++) {
        const fy_lora_adapter *a = &L->ad[i];
        if (a->expert >= 0 || a->layer < 0 || a->layer >= nl || BT(m)->layer[a->layer].kv_b != a->w) continue;
        u->kvb_off[a->layer] = need;
        need += fy_params_round16((size_t)a->in * a->out);
    }
    if (!need) return 0;
    if (fy_be_alloc(m->be, &u->kvb, need, err)) return fy_wrap(err, "merged kv_b_proj copies");
    for (int i = 0; i < L->n_ad; i++) {
        const fy_lora_adapter *a = &L->ad[i];
        if (a->expert >= 0 || a->layer < 0 || a->layer >= nl || BT(m)->layer[a->layer].kv_b != a->w) continue;
        fy_ref dst = fy_at(&u->kvb, u->kvb_off[a->layer]);
        OPS->copy(m->be, dst, PW(m, a->w), (size_t)a->in * a->out);
        fold(m, L, &m->params, a, dst);
    }
    return fy_be_sync(m->be, err);
}

int fy_model_lora_detach(fy_model *m, fy_lora_unmerged **out, fy_err *err) {
    fy_lora *L = m->lora;
    *out = NULL;
    if (!L) return fy_fail(err, "no LoRA adapters to take off");
    if (L->qb) return fy_fail(err, "the LoRA base is held quantized: take the adapters off the base loaded in f32");
    fy_lora_unmerged *u = calloc(1, sizeof *u);
    fy_buf g = {0};
    if (!u) return fy_fail(err, "out of memory");
    u->cfg = L->cfg;
    u->scale = L->scale;
    u->n_ad = L->n_ad;
    u->max_in = L->max_in;
    u->base_n_params = L->base_tab.n_params;
    for (int i = 0; i < L->n_ad; i++)
        if (L->ad[i].out > u->max_out) u->max_out = L->ad[i].out;
    if (merged_kvb(m, u, err) || fy_be_alloc(m->be, &g, L->base_tab.n_params, err)) {
        fy_lora_unmerged_free(m->be, u);
        return fy_wrap(err, "taking LoRA adapters off");
    }
    if (swap_back(m, g, u, err)) { /* the model is the base again; u holds what it took */
        fy_lora_unmerged_free(m->be, u);
        return -1;
    }
    *out = u;
    return 0;
}

void fy_model_lora_dropout_key(fy_model *m, uint64_t seed, int step, int64_t row0) {
    if (!m->lora) return;
    m->lora->seed = seed;
    m->lora->step = step;
    m->lora->row0 = row0;
}

int fy_model_lora_init(fy_model *m, uint64_t seed, fy_err *err) {
    fy_lora *L = m->lora;
    if (!L) return fy_fail(err, "no LoRA adapters to initialise");
    size_t maxn = 0;
    for (int i = 0; i < L->n_ad; i++)
        if ((size_t)L->cfg.rank * L->ad[i].in > maxn) maxn = (size_t)L->cfg.rank * L->ad[i].in;
    float *host = malloc(maxn * sizeof *host);
    if (!host) return fy_fail(err, "out of memory initialising LoRA adapters");
    /* kaiming_uniform_(a=sqrt(5)) on A [r, in]: gain sqrt(2/(1+5)), bound
     * gain * sqrt(3/in) = 1/sqrt(in). The stream is the base tensor's id
     * (offset past the base init's streams), so an adapter's values do not
     * depend on which other targets are on. */
    for (int i = 0; i < L->n_ad; i++) {
        const fy_lora_adapter *a = &L->ad[i];
        size_t n = (size_t)L->cfg.rank * a->in;
        float bound = 1.0f / sqrtf((float)a->in);
        for (size_t j = 0; j < n; j++)
            host[j] = bound * (2.0f * fy_rng_uniform(seed, ((uint64_t)1 << 32) + (uint64_t)a->id, j) - 1.0f);
        OPS->upload(m->be, fy_at(&m->params, a->a), host, n);
        OPS->fill(m->be, fy_at(&m->params, a->b), 0.0f, (size_t)a->out * L->cfg.rank);
    }
    free(host);
    return fy_be_sync(m->be, err);
}
