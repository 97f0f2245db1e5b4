/* Dumps one oracle case: a random configuration (by variant name), random
 * weights, a batch, and everything ferry computes on it (losses, logits,
 * every gradient, router choices, the bias update), for
 * tools/oracle/check_case.py to recompute independently in PyTorch.
 *   oracle_case --variant NAME --out DIR [--backend SPEC]  (writes DIR/config.json, DIR/case.safetensors)
 *   oracle_case --list                        (variant names) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "backend/backend.h"
#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "model/lora.h"
#include "model/model.h"

typedef struct variant {
    const char *name;
    void (*apply)(fy_config *c, int *B, int *T);
    int lora; /* LoRA adapters on every target (lora_case below); 2: with dropout */
} variant;

/* The base shape: nothing a multiple of 8, every feature on. */
static void v_base(fy_config *c, int *B, int *T) {
    (void)c; (void)B; (void)T;
}
static void v_noqlora(fy_config *c, int *B, int *T) { c->q_lora_rank = 0; }
static void v_group(fy_config *c, int *B, int *T) {
    c->n_routed_experts = 12; c->n_group = 4; c->topk_group = 2; c->num_experts_per_tok = 3;
}
static void v_nonorm(fy_config *c, int *B, int *T) { c->norm_topk_prob = 0; c->routed_scaling_factor = 2.5f; }
static void v_mtp0(fy_config *c, int *B, int *T) { c->num_nextn_predict_layers = 0; }
static void v_mtp2(fy_config *c, int *B, int *T) { c->num_nextn_predict_layers = 2; }
static void v_dense(fy_config *c, int *B, int *T) {
    c->n_routed_experts = 0; c->first_k_dense_replace = c->num_hidden_layers;
}
static void v_moeonly(fy_config *c, int *B, int *T) { c->first_k_dense_replace = 0; }
static void v_seq1(fy_config *c, int *B, int *T) { *B = 3; *T = 1; }
static void v_noshared(fy_config *c, int *B, int *T) { c->n_shared_experts = 0; }
static void v_nobalance(fy_config *c, int *B, int *T) { c->seq_aux = 0; }
static void v_odd(fy_config *c, int *B, int *T) {
    c->hidden_size = 33; c->num_attention_heads = 5; c->qk_nope_head_dim = 7;
    c->qk_rope_head_dim = 4; c->v_head_dim = 11; c->vocab_size = 101; *T = 13;
    c->n_shared_experts = 2; c->moe_intermediate_size = 9;
}

/* YaRN, positions 0..8 past the original context of 8; theta 100 and
 * d_r 12 put the ramp inside the pairs (pair 1 half interpolated);
 * mscale != mscale_all_dim: cos/sin times 0.964, softmax scale times 1.3^2. */
static void v_yarn(fy_config *c, int *B, int *T) {
    c->qk_rope_head_dim = 12; c->rope_theta = 100.0;
    fy_rope_scaling y = {.yarn = 1, .factor = 16, .original_max_position_embeddings = 8, .beta_fast = 4,
                         .beta_slow = 0.5, .mscale = 0.707, .mscale_all_dim = 1.0, .truncate = 1};
    c->rope_scaling = y;
}
/* YaRN not truncated (fractional ramp bounds), attention_factor given,
 * no mscale_all_dim: the softmax scale stays qk_head_dim^-0.5. */
static void v_yarnaf(fy_config *c, int *B, int *T) {
    c->qk_rope_head_dim = 10; c->rope_theta = 50.0; *T = 11;
    fy_rope_scaling y = {.yarn = 1, .factor = 4, .original_max_position_embeddings = 20, .beta_fast = 8,
                         .beta_slow = 1, .attention_factor = 1.3, .truncate = 0};
    c->rope_scaling = y;
}

static const variant variants[] = {
    {"base", v_base, 0}, {"noqlora", v_noqlora, 0}, {"group", v_group, 0}, {"nonorm", v_nonorm, 0},
    {"mtp0", v_mtp0, 0}, {"mtp2", v_mtp2, 0}, {"dense", v_dense, 0}, {"moeonly", v_moeonly, 0},
    {"seq1", v_seq1, 0}, {"noshared", v_noshared, 0}, {"nobalance", v_nobalance, 0}, {"odd", v_odd, 0},
    {"yarn", v_yarn, 0}, {"yarnaf", v_yarnaf, 0},
    {"lora", v_base, 1}, {"lora_noqlora", v_noqlora, 1}, {"lora_dropout", v_base, 2},
};
#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

/* The backend named by --backend (default cpu). A backend this machine
 * cannot provide (not built, no OpenCL platform or device) exits 77, so
 * ctest reports the test skipped rather than failed. */
static int create_backend(const char *spec, fy_backend **be, fy_err *err) {
    if (fy_backend_create(spec, be, err) == 0) return 0;
    if (strstr(err->msg, "not built into this ferry") || strstr(err->msg, "no OpenCL platform") ||
        strstr(err->msg, "have no devices")) {
        printf("SKIP: backend %s unavailable: %s\n", spec, err->msg);
        exit(77);
    }
    return -1;
}

/* Adapters on every target (experts included), rank 3, alpha 5, PEFT's
 * init for A and a random B (PEFT's zero B would leave the logits and A's
 * gradient untouched and so untested); dropout 0.2 with variant lora 2,
 * keyed by seed 77, step 5, first token 123. Adds the adapters and their
 * gradients to w after the backward (dump_lora) and writes DIR/lora.json
 * (with each adapted weight's dropout stream, its tensor id). */
/* Whether base weight offset w has an adapter (the table is small). */
static int has_adapter(const fy_lora *L, size_t w) {
    for (int i = 0; i < L->n_ad; i++)
        if (L->ad[i].w == w) return 1;
    return 0;
}

static int lora_case(fy_model *m, uint64_t seed, int dropout, fy_err *err) {
    fy_lora_config lc = {.rank = 3, .alpha = 5.0f, .targets = FY_LORA_ALL, .dropout = dropout ? 0.2f : 0.0f};
    if (fy_model_set_lora(m, &lc, err) || fy_model_lora_init(m, seed, err)) return -1;
    fy_model_lora_dropout_key(m, 77, 5, 123);
    float *p = malloc(m->tab.n_params * sizeof *p);
    m->be->ops->download(m->be, p, fy_at(&m->params, 0), m->tab.n_params);
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        if (strstr(t->name, ".lora_B."))
            for (size_t j = 0; j < t->n; j++) p[t->off + j] = 0.3f * fy_rng_normal(seed, 9000 + i, j);
    }
    m->be->ops->upload(m->be, fy_at(&m->params, 0), p, m->tab.n_params);
    free(p);
    return fy_be_sync(m->be, err);
}

static int dump_lora(fy_model *m, fy_st_writer *w, float **keep, const char *out, fy_err *err) {
    fy_lora *L = m->lora;
    float *p = malloc(m->tab.n_params * sizeof *p), *g = malloc(m->tab.n_params * sizeof *g);
    char (*gn)[160] = calloc(m->tab.n, sizeof *gn);
    keep[0] = p, keep[1] = g, keep[2] = (float *)gn;
    m->be->ops->download(m->be, p, fy_at(&m->params, 0), m->tab.n_params);
    m->be->ops->download(m->be, g, fy_at(&m->grads, 0), m->tab.n_params);
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
        int64_t shape[2] = {t->shape[0], t->shape[1]};
        snprintf(gn[i], sizeof gn[i], "grad.%s", t->name);
        fy_st_writer_add(w, t->name, FY_ST_F32, 2, shape, p + t->off, NULL);
        fy_st_writer_add(w, gn[i], FY_ST_F32, 2, shape, g + t->off, NULL);
    }
    char targets[256], path[4096];
    fy_lora_targets_string(L->cfg.targets, targets, sizeof targets);
    cJSON *j = cJSON_CreateObject(), *streams = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "rank", L->cfg.rank);
    cJSON_AddNumberToObject(j, "alpha", L->cfg.alpha);
    cJSON_AddStringToObject(j, "targets", targets);
    cJSON_AddNumberToObject(j, "dropout", L->cfg.dropout);
    cJSON_AddNumberToObject(j, "seed", (double)L->seed);
    cJSON_AddNumberToObject(j, "step", L->step);
    cJSON_AddNumberToObject(j, "row0", (double)L->row0);
    const fy_param_table *bt = &L->base_tab;
    for (int i = 0; i < bt->n; i++)
        if (has_adapter(L, bt->t[i].off)) cJSON_AddNumberToObject(streams, bt->t[i].name, bt->t[i].id);
    cJSON_AddItemToObject(j, "streams", streams);
    char *js = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/lora.json", out);
    int rc = !js || fy_mkdir_p(out, err) || fy_write_file_atomic(path, js, strlen(js), err) ? -1 : 0;
    free(js);
    return rc;
}

static int base_config(fy_config *c, fy_err *err) {
    if (fy_config_builtin("tiny", 53, c, err)) return -1;
    c->hidden_size = 40;
    c->num_hidden_layers = 3;
    c->num_attention_heads = 3;
    c->q_lora_rank = 20;
    c->kv_lora_rank = 18;
    c->qk_nope_head_dim = 10;
    c->qk_rope_head_dim = 6;
    c->v_head_dim = 9;
    c->n_routed_experts = 6;
    c->num_experts_per_tok = 2;
    c->n_shared_experts = 1;
    c->moe_intermediate_size = 14;
    c->intermediate_size = 30;
    c->first_k_dense_replace = 1;
    c->num_nextn_predict_layers = 1;
    c->aux_loss_alpha = 0.01f;
    c->seq_aux = 1;
    c->bias_update_speed = 0.001f;
    c->mtp_loss_weight = 0.3f;
    c->initializer_range = 0.1f;
    return 0;
}

int main(int argc, char **argv) {
    const char *vname = NULL, *out = NULL, *spec = "cpu";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) {
            for (int v = 0; v < N_VARIANTS; v++) printf("%s\n", variants[v].name);
            return 0;
        }
        if (i + 1 < argc && !strcmp(argv[i], "--variant")) vname = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--out")) out = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--backend")) spec = argv[++i];
        else { fprintf(stderr, "oracle_case: unknown argument %s\n", argv[i]); return 2; }
    }
    if (!vname || !out) { fprintf(stderr, "usage: oracle_case --variant NAME --out DIR [--backend SPEC]\n"); return 2; }
    const variant *var = NULL;
    for (int v = 0; v < N_VARIANTS; v++)
        if (!strcmp(variants[v].name, vname)) var = &variants[v];
    if (!var) { fprintf(stderr, "oracle_case: unknown variant %s\n", vname); return 2; }

    fy_err err;
    fy_config c;
    int B = 2, T = 9;
    if (base_config(&c, &err)) goto fail;
    var->apply(&c, &B, &T);
    uint64_t seed = 1000 + (uint64_t)(var - variants);

    fy_backend *be;
    fy_model m;
    if (create_backend(spec, &be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, seed, &err))
        goto fail;
    /* Norm weights away from 1 and a random router bias, so bugs that
     * ignore them cannot hide. */
    float *params = malloc(m.tab.n_params * sizeof(float));
    float *bufs = malloc((m.tab.n_buffers + 1) * sizeof(float));
    be->ops->download(be, params, fy_at(&m.params, 0), m.tab.n_params);
    for (int i = 0; i < m.tab.n; i++) {
        const fy_tensor_info *t = &m.tab.t[i];
        for (size_t j = 0; j < t->n; j++) {
            if (t->is_buffer) bufs[t->off + j] = 0.05f * fy_rng_normal(seed, 7000 + i, j);
            else if (t->ndim == 1) params[t->off + j] = 1.0f + 0.2f * fy_rng_normal(seed, 8000 + i, j);
        }
    }
    be->ops->upload(be, fy_at(&m.params, 0), params, m.tab.n_params);
    if (m.tab.n_buffers) be->ops->upload(be, fy_at(&m.buffers, 0), bufs, m.tab.n_buffers);

    if (var->lora && lora_case(&m, seed, var->lora == 2, &err)) goto fail;

    int N = B * T, V = c.vocab_size, K = c.num_experts_per_tok;
    int32_t *in = malloc(N * sizeof *in), *lab = malloc(N * sizeof *lab);
    for (int i = 0; i < N; i++) {
        in[i] = (int)(fy_rng_u64(seed, 1, i) % V);
        lab[i] = fy_rng_uniform(seed, 3, i) < 0.15f ? FY_IGNORE_INDEX : (int)(fy_rng_u64(seed, 2, i) % V);
    }
    fy_loss loss;
    float lossf[4 + FY_MAX_MTP];
    fy_model_zero_grad(&m);
    if (fy_model_forward(&m, in, lab, B, T, 1, &loss, &err) || fy_model_backward(&m, &err)) goto fail;

    lossf[0] = (float)loss.total; lossf[1] = (float)loss.main; lossf[2] = (float)loss.balance;
    for (int k = 0; k < FY_MAX_MTP; k++) lossf[4 + k] = (float)loss.mtp[k];
    float *logits = malloc((size_t)N * V * sizeof(float));
    /* With adapters on, the base (base_tab) has no gradients: only its
     * weights are written (params holds them from before the swap). */
    const fy_param_table *bt = m.lora ? &m.lora->base_tab : &m.tab;
    float *grads = malloc(m.tab.n_params * sizeof(float));
    be->ops->download(be, logits, fy_model_logits(&m), (size_t)N * V);
    be->ops->download(be, grads, fy_at(&m.grads, 0), m.tab.n_params);

    fy_st_writer *w = fy_st_writer_new();
    for (int i = 0; i < bt->n; i++) {
        const fy_tensor_info *t = &bt->t[i];
        int64_t shape[2] = {t->shape[0], t->shape[1]};
        fy_st_writer_add(w, t->name, FY_ST_F32, t->ndim, shape, t->is_buffer ? bufs + t->off : params + t->off, NULL);
        if (!t->is_buffer && !m.lora) {
            char gname[160];
            snprintf(gname, sizeof gname, "grad.%s", t->name);
            fy_st_writer_add(w, gname, FY_ST_F32, t->ndim, shape, grads + t->off, NULL);
        }
    }
    int64_t sh_bt[2] = {B, T}, sh_logits[3] = {B, T, V}, one[1] = {1}, sh_d[1] = {c.num_nextn_predict_layers};
    fy_st_writer_add(w, "input_ids", FY_ST_I32, 2, sh_bt, in, NULL);
    fy_st_writer_add(w, "labels", FY_ST_I32, 2, sh_bt, lab, NULL);
    fy_st_writer_add(w, "out.loss", FY_ST_F32, 1, one, &lossf[0], NULL);
    fy_st_writer_add(w, "out.loss_main", FY_ST_F32, 1, one, &lossf[1], NULL);
    fy_st_writer_add(w, "out.loss_balance", FY_ST_F32, 1, one, &lossf[2], NULL);
    if (c.num_nextn_predict_layers) fy_st_writer_add(w, "out.loss_mtp", FY_ST_F32, 1, sh_d, &lossf[4], NULL);
    fy_st_writer_add(w, "out.logits", FY_ST_F32, 3, sh_logits, logits, NULL);
    float *lora_keep[3] = {0};
    if (m.lora && dump_lora(&m, w, lora_keep, out, &err)) goto fail;

    /* Router choices, then the bias after one aux-free update. */
    int nl = bt->n_layers, E = c.n_routed_experts;
    int32_t **ridx = calloc(nl, sizeof *ridx);
    float **rw = calloc(nl, sizeof *rw), **bafter = calloc(nl, sizeof *bafter);
    char (*names)[3][64] = calloc(nl, sizeof *names);
    for (int li = 0; li < nl; li++) {
        if (!bt->layer[li].moe) continue;
        ridx[li] = malloc((size_t)N * K * sizeof(int32_t));
        rw[li] = malloc((size_t)N * K * sizeof(float));
        if (fy_model_router_choice(&m, li, ridx[li], rw[li], &err)) goto fail;
        int64_t sh[2] = {N, K};
        snprintf(names[li][0], 64, "out.router_idx.%d", li);
        snprintf(names[li][1], 64, "out.router_w.%d", li);
        fy_st_writer_add(w, names[li][0], FY_ST_I32, 2, sh, ridx[li], NULL);
        fy_st_writer_add(w, names[li][1], FY_ST_F32, 2, sh, rw[li], NULL);
    }
    if (fy_model_update_bias(&m, &err)) goto fail;
    for (int li = 0; li < nl; li++) {
        if (!bt->layer[li].moe) continue;
        bafter[li] = malloc(E * sizeof(float));
        be->ops->download(be, bafter[li], fy_at(&m.buffers, bt->layer[li].bias), E);
        int64_t sh[1] = {E};
        snprintf(names[li][2], 64, "out.bias_after.%d", li);
        fy_st_writer_add(w, names[li][2], FY_ST_F32, 1, sh, bafter[li], NULL);
    }

    char path[4096];
    if (fy_mkdir_p(out, &err)) goto fail;
    snprintf(path, sizeof path, "%s/case.safetensors", out);
    if (fy_st_write(w, path, &err)) goto fail;
    char *js = fy_config_to_json(&c, NULL);
    snprintf(path, sizeof path, "%s/config.json", out);
    if (!js || fy_write_file_atomic(path, js, strlen(js), &err)) goto fail;
    printf("oracle_case %s: B=%d T=%d loss %.6f (main %.6f, balance %.6f) -> %s\n", vname, B, T,
           loss.total, loss.main, loss.balance, out);
    return 0;
fail:
    fprintf(stderr, "oracle_case %s: %s\n", vname, err.msg);
    return 1;
}
