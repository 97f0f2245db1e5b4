/* A model's lifecycle and queries: create, free, weight init, zeroing the
 * gradients, the router-bias update, and read access to the last forward's
 * router choices and activations. The passes are in forward.c, backward.c
 * and decode.c (model_impl.h shows who calls whom). */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/decode.h"
#include "model/model_impl.h"

int fy_model_create(fy_model *m, const fy_config *cfg, fy_backend *be, fy_err *err) {
    memset(m, 0, sizeof *m);
    if (fy_config_validate(cfg, err)) return -1;
    m->cfg = *cfg;
    m->be = be;
    if (fy_params_build(cfg, &m->tab, err)) return -1;
    /* One slot of saved activations per layer, and the model-level workspace. */
    m->layer_acts = calloc(m->tab.n_layers, sizeof(fy_layer_acts));
    m->ws = calloc(1, sizeof(model_ws));
    m->loads = calloc((size_t)m->tab.n_layers * (cfg->n_routed_experts + 1), sizeof(int64_t));
    if (!m->layer_acts || !m->ws || !m->loads) {
        fy_model_free(m);
        return fy_fail(err, "out of memory");
    }
    if (fy_be_alloc(be, &m->params, m->tab.n_params, err) ||
        fy_be_alloc(be, &m->grads, m->tab.n_params, err) ||
        fy_be_alloc(be, &m->buffers, m->tab.n_buffers ? m->tab.n_buffers : 1, err)) {
        fy_model_free(m);
        return fy_wrap(err, "allocating %zu parameters", m->tab.n_params);
    }
    return 0;
}

void fy_model_free(fy_model *m) {
    if (m->be) {
        if (m->params.handle) fy_be_free(m->be, &m->params);
        if (m->grads.handle) fy_be_free(m->be, &m->grads);
        if (m->buffers.handle) fy_be_free(m->be, &m->buffers);
    }
    fy_model_free_decode_quant(m);
    fy__free_workspace(m); /* before the adapters: its routing tables are the base's layers' (BT) */
    fy__lora_free(m);
    free(m->layer_acts);
    free(m->ws);
    free(m->loads);
    fy_params_free(&m->tab);
    memset(m, 0, sizeof *m);
}

/* Output projections write into the residual stream; scaling their init by
 * 1/sqrt(2L) keeps the stream's variance flat with depth (GPT-2's rule). */
static int is_output_proj(const char *name) {
    size_t n = strlen(name);
    const char *suffixes[] = {"o_proj.weight", "down_proj.weight"};
    for (int i = 0; i < 2; i++) {
        size_t k = strlen(suffixes[i]);
        if (n >= k && !strcmp(name + n - k, suffixes[i])) return 1;
    }
    return 0;
}

int fy_model_init_weights(fy_model *m, uint64_t seed, fy_err *err) {
    const fy_config *c = &m->cfg;
    size_t maxn = 0;
    for (int i = 0; i < BT(m)->n; i++)
        if (BT(m)->t[i].n > maxn) maxn = BT(m)->t[i].n;
    float *host = malloc(maxn * sizeof(float));
    if (!host) return fy_fail(err, "out of memory initialising weights");
    float out_std = c->initializer_range / sqrtf(2.0f * c->num_hidden_layers);
    for (int i = 0; i < BT(m)->n; i++) {
        const fy_tensor_info *t = &BT(m)->t[i];
        if (t->is_buffer) {
            for (size_t j = 0; j < t->n; j++) host[j] = 0.0f;
            OPS->upload(m->be, fy_at(&m->buffers, t->off), host, t->n);
            continue;
        }
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->n; j++) host[j] = 1.0f;
        } else {
            float std = is_output_proj(t->name) ? out_std : c->initializer_range;
            /* t->id, not i: an expert shard's tensors get the values they have in the whole model. */
            for (size_t j = 0; j < t->n; j++) host[j] = std * fy_rng_normal(seed, (uint64_t)t->id, j);
        }
        OPS->upload(m->be, PW(m, t->off), host, t->n);
    }
    free(host);
    return fy_be_sync(m->be, err);
}

/* With LoRA adapters on, m->grads is the adapter block's (model/lora.h). */
void fy_model_zero_grad(fy_model *m) {
    OPS->fill(m->be, fy_at(&m->grads, 0), 0.0f, m->grads.n);
}

int fy_model_update_bias(fy_model *m, fy_err *err) {
    const fy_config *c = &m->cfg;
    int E = c->n_routed_experts;
    /* A frozen base keeps its router bias too: an adapter must be trained
     * against the base it will be loaded onto. */
    if (m->lora) memset(m->loads, 0, (size_t)BT(m)->n_layers * E * sizeof *m->loads);
    if (E == 0 || m->lora) return 0;
    float *b = malloc(E * sizeof *b);
    if (!b) return fy_fail(err, "out of memory");
    for (int li = 0; li < BT(m)->n_layers; li++) {
        const fy_layer_offs *W = &BT(m)->layer[li];
        if (!W->moe) continue;
        int64_t *load = &m->loads[(size_t)li * E], total = 0;
        for (int e = 0; e < E; e++) total += load[e];
        if (total == 0) continue;
        OPS->download(m->be, b, fy_at(&m->buffers, W->bias), E);
        /* sign(mean - load_i), compared exactly as E*load_i vs total. */
        for (int e = 0; e < E; e++) {
            int64_t diff = total - (int64_t)E * load[e];
            b[e] += c->bias_update_speed * (float)((diff > 0) - (diff < 0));
        }
        OPS->upload(m->be, fy_at(&m->buffers, W->bias), b, E);
        memset(load, 0, E * sizeof *load);
    }
    free(b);
    return fy_be_sync(m->be, err);
}

/* ---- what the last forward left in the workspace ---- */

int fy_model_router_choice(fy_model *m, int layer, int32_t *idx, float *w, fy_err *err) {
    if (layer < 0 || layer >= BT(m)->n_layers || !BT(m)->layer[layer].moe)
        return fy_fail(err, "layer %d is not an MoE layer", layer);
    if (!m->acts.handle) return fy_fail(err, "no forward has run yet");
    size_t n = (size_t)m->B * m->T * m->cfg.num_experts_per_tok;
    OPS->download(m->be, idx, m->layer_acts[layer].idx, n);
    OPS->download(m->be, w, m->layer_acts[layer].w, n);
    return fy_be_sync(m->be, err);
}

int fy_model_latent_kv(fy_model *m, int layer, fy_ref *ckv, int *ld_ckv, fy_ref *kpe, int *ld_kpe,
                       fy_err *err) {
    if (layer < 0 || layer >= BT(m)->n_layers) return fy_fail(err, "no layer %d", layer);
    if (!m->acts.handle) return fy_fail(err, "no forward has run yet");
    int rkv = m->cfg.kv_lora_rank, dr = m->cfg.qk_rope_head_dim;
    *ckv = m->layer_acts[layer].ckv_n;
    *ld_ckv = rkv;
    *kpe = fy_add(m->layer_acts[layer].kva, rkv);
    *ld_kpe = rkv + dr;
    return 0;
}

int fy_model_activation(fy_model *m, int layer, const char *name, fy_ref *out, size_t *n, fy_err *err) {
    if (layer < 0 || layer >= BT(m)->n_layers)
        return fy_fail(err, "no layer %d (the model has %d, MTP included)", layer, BT(m)->n_layers);
    if (!m->acts.handle) return fy_fail(err, "no forward has run yet");
    const fy_config *c = &m->cfg;
    const fy_layer_acts *a = &m->layer_acts[layer];
    size_t N = (size_t)m->B * m->T;
    int d = c->hidden_size, H = c->num_attention_heads;
    if (!strcmp(name, "ln1")) *out = a->ln1, *n = N * d;
    else if (!strcmp(name, "ln2")) *out = a->ln2, *n = N * d;
    else if (!strcmp(name, "q")) *out = a->q, *n = N * H * fy_cfg_qk_head_dim(c);
    else if (!strcmp(name, "att")) *out = a->att, *n = N * H * c->v_head_dim;
    else return fy_fail(err, "unknown activation '%s' (ln1, ln2, q, att)", name);
    return 0;
}
