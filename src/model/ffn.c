/* The FFN half of a decoder layer: dense SwiGLU, or MoE (router, grouping
 * of the (token, slot) pairs by expert, shared and routed experts, expert
 * parallel through moe_ep.c), forward and backward. Routed experts run on
 * the rows gathered per expert: three GEMMs each, never a loop over tokens. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

static fy_router_opts router_opts(const fy_config *c) {
    fy_router_opts o = {c->n_routed_experts, c->num_experts_per_tok, c->n_group,
                        c->topk_group, c->norm_topk_prob, c->routed_scaling_factor};
    return o;
}

static int use_balance(const fy_config *c) { return c->seq_aux && c->aux_loss_alpha > 0; }

/* Groups the (token, slot) pairs by expert on the host: the GEMM sizes
 * depend on the counts, so they must be known here anyway. */
static int route(fy_model *m, int li, int count_loads, fy_err *err) {
    const fy_config *c = &m->cfg;
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, E = c->n_routed_experts, K = c->num_experts_per_tok;
    OPS->download(m->be, a->h_idx, a->idx, (size_t)N * K);
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "layer %d router", li);
    memset(a->counts, 0, E * sizeof(int));
    for (int i = 0; i < N * K; i++) {
        int e = a->h_idx[i];
        if (e < 0 || e >= E) return fy_fail(err, "layer %d: router chose expert %d of %d", li, e, E);
        a->counts[e]++;
    }
    a->offs[0] = 0;
    for (int e = 0; e < E; e++) a->offs[e + 1] = a->offs[e] + a->counts[e];
    int *fillpos = calloc(E, sizeof(int));
    if (!fillpos) return fy_fail(err, "out of memory");
    for (int i = 0; i < N * K; i++) { /* stable: token order within an expert */
        int e = a->h_idx[i], pos = a->offs[e] + fillpos[e]++;
        a->h_perm[pos] = i / K;
        a->h_flat[pos] = i;
    }
    free(fillpos);
    OPS->upload(m->be, a->perm, a->h_perm, (size_t)N * K);
    OPS->upload(m->be, a->flat, a->h_flat, (size_t)N * K);
    if (count_loads)
        for (int e = 0; e < E; e++) m->loads[(size_t)li * E + e] += a->counts[e];
    return 0;
}

/* The routed experts this rank runs (all of them, or its own range with
 * expert parallelism) each own a block of the sorted rows in xs..eh:
 * expert lo + el starts at the returned row and has *n rows. */
static size_t expert_block(fy_model *m, int li, int el, int *n) {
    if (m->ep.size > 1) return (size_t)fy__ep_expert_rows(m, li, el, n);
    *n = m->layer_acts[li].counts[el];
    return (size_t)m->layer_acts[li].offs[el];
}

/* LoRA dropout's row keys of the rows the experts run: each row's token
 * (h_perm, after the step's row0), or with expert parallel the keys the
 * rows' ranks sent (a->ep_keys: row0 included, so row0 is 0 meanwhile). */
static const int32_t *row_keys(const fy_model *m, const fy_layer_acts *a) {
    return m->ep.size > 1 && a->ep_keys ? a->ep_keys : (const int32_t *)a->h_perm;
}
static int64_t lora_keys_begin(fy_model *m) {
    if (!m->lora) return 0;
    int64_t row0 = m->lora->row0;
    if (m->ep.size > 1) m->lora->row0 = 0;
    return row0;
}
static void lora_keys_end(fy_model *m, int64_t row0) {
    if (!m->lora) return;
    m->lora->keys = NULL;
    m->lora->row0 = row0;
}

/* Each expert's SwiGLU on its rows of a->xs, outputs into y. */
static void experts_forward(fy_model *m, int li, fy_ref y) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int d = c->hidden_size, f = c->moe_intermediate_size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    const int64_t row0 = lora_keys_begin(m);
    for (int el = 0; el < hi - lo; el++) {
        int n;
        size_t r = expert_block(m, li, el, &n), we = (size_t)(lo + el - BT(m)->exp_lo) * W->exp_stride;
        if (!n) continue;
        if (m->lora) m->lora->keys = row_keys(m, a) + r; /* dropout's key: each row's token */
        fy__swiglu_forward(m, n, d, f, fy_add(a->xs, r * d), W->exp_gate + we, W->exp_up + we,
                           W->exp_down + we, fy_add(a->eg, r * f), fy_add(a->eu, r * f),
                           fy_add(a->eh, r * f), fy_add(y, r * d), 0);
    }
    lora_keys_end(m, row0);
}

/* Its backward: output gradients dy to input gradients dx (same rows),
 * accumulating the experts' weight gradients. */
static void experts_backward(fy_model *m, int li, fy_ref dy, fy_ref dx) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &m->ws->s;
    int d = c->hidden_size, f = c->moe_intermediate_size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    const int64_t row0 = lora_keys_begin(m);
    for (int el = 0; el < hi - lo; el++) {
        int n;
        size_t r = expert_block(m, li, el, &n), we = (size_t)(lo + el - BT(m)->exp_lo) * W->exp_stride;
        if (m->lora) m->lora->keys = row_keys(m, a) + r;
        fy__swiglu_backward(m, n, d, f, fy_add(a->xs, r * d), W->exp_gate + we, W->exp_up + we,
                            W->exp_down + we, fy_add(a->eg, r * f), fy_add(a->eu, r * f),
                            fy_add(a->eh, r * f), fy_add(dy, r * d), fy_add(dx, r * d), 0,
                            fy_add(s->deg, r * f), fy_add(s->deu, r * f), fy_add(s->deh, r * f));
    }
    lora_keys_end(m, row0);
}

static int moe_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, d = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int f = c->moe_intermediate_size, fs = f * c->n_shared_experts;
    fy_router_opts ro = router_opts(c);

    fy__linear(m, N, d, E, a->ln2, d, W->router, a->rlog, E, 0);
    OPS->router_fwd(m->be, N, &ro, a->rlog, fy_at(&m->buffers, W->bias), a->s, a->idx, a->w);
    if (balance && use_balance(c))
        *balance += OPS->balance_fwd(m->be, m->B, m->T, E, K, c->aux_loss_alpha, a->s, a->idx);
    if (route(m, li, need_grad, err)) return -1;

    OPS->gather_rows(m->be, N * K, 1, a->w, 1, a->flat, FY_NULL_REF, a->wsort, 1);
    if (m->ep.size > 1) {
        /* Expert parallel: this rank's sorted rows go to the experts'
         * owners, this rank runs its own experts on the rows of all ranks
         * (expert-major in xs), the outputs come back into ey. */
        fy_ref tmp = m->ws->ep_tmp;
        if (fy__ep_counts(m, li, err)) return -1;
        if (a->ep_keys && fy__ep_keys(m, li, err)) return -1;
        OPS->gather_rows(m->be, N * K, d, a->ln2, d, a->perm, FY_NULL_REF, tmp, d);
        if (fy__ep_dispatch(m, li, d, tmp, a->xs, err)) return -1;
        experts_forward(m, li, tmp);
        if (fy__ep_combine(m, li, d, tmp, a->ey, err)) return -1;
    } else {
        OPS->gather_rows(m->be, N * K, d, a->ln2, d, a->perm, FY_NULL_REF, a->xs, d);
        experts_forward(m, li, a->ey);
    }
    OPS->copy(m->be, a->x_out, a->x_mid, (size_t)N * d);
    if (fs > 0)
        fy__swiglu_forward(m, N, d, fs, a->ln2, W->sh_gate, W->sh_up, W->sh_down, a->g, a->u, a->h,
                           a->x_out, 1.0f);
    OPS->scatter_add_rows(m->be, N * K, d, a->ey, d, a->perm, a->wsort, a->x_out, d);
    return 0;
}

int fy__ffn_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, d = c->hidden_size;
    OPS->rmsnorm_fwd(m->be, N, d, a->x_mid, d, PW(m, W->ffn_norm), c->rms_norm_eps, a->ln2, d, a->rstd2);
    if (W->moe) return moe_forward(m, li, need_grad, balance, err);
    OPS->copy(m->be, a->x_out, a->x_mid, (size_t)N * d);
    fy__swiglu_forward(m, N, d, c->intermediate_size, a->ln2, W->gate, W->up, W->down, a->g, a->u, a->h,
                       a->x_out, 1.0f);
    return 0;
}

static int moe_backward(fy_model *m, int li, fy_ref dres, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &m->ws->s;
    int N = m->B * m->T, d = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int f = c->moe_intermediate_size, fs = f * c->n_shared_experts;
    fy_router_opts ro = router_opts(c);

    if (fs > 0)
        fy__swiglu_backward(m, N, d, fs, a->ln2, W->sh_gate, W->sh_up, W->sh_down, a->g, a->u, a->h,
                            dres, s->dln, 0, s->dg, s->du, s->dh);
    else
        OPS->fill(m->be, s->dln, 0.0f, (size_t)N * d);

    /* Combine was out[perm[j]] += wsort[j] * ey[j]: its two gradients. */
    OPS->gather_rows(m->be, N * K, d, dres, d, a->perm, a->wsort, s->dey, d);
    OPS->rows_dot(m->be, N * K, d, dres, d, a->perm, a->ey, d, s->dws, 0);
    OPS->fill(m->be, s->dw, 0.0f, (size_t)N * K);
    OPS->scatter_add_rows(m->be, N * K, 1, s->dws, 1, a->flat, FY_NULL_REF, s->dw, 1);

    fy_ref dxs = s->dxs;
    if (m->ep.size > 1) {
        /* Output gradients to the owners, input gradients back. */
        dxs = m->ws->ep_tmp;
        if (fy__ep_dispatch(m, li, d, s->dey, dxs, err)) return -1;
        experts_backward(m, li, dxs, s->dxs);
        if (fy__ep_combine(m, li, d, s->dxs, dxs, err)) return -1;
    } else {
        experts_backward(m, li, s->dey, s->dxs);
    }
    OPS->scatter_add_rows(m->be, N * K, d, dxs, d, a->perm, FY_NULL_REF, s->dln, d);

    OPS->router_bwd(m->be, N, &ro, a->s, a->idx, s->dw, s->drlog, 0);
    if (use_balance(c))
        OPS->balance_bwd(m->be, m->B, m->T, E, K, c->aux_loss_alpha, 1.0f, a->s, a->idx, s->drlog);
    fy__linear_dx(m, N, d, E, s->drlog, E, W->router, s->dln, d, 1.0f);
    fy__linear_dw(m, N, d, E, s->drlog, E, a->ln2, d, W->router);
    return 0;
}

int fy__ffn_backward(fy_model *m, int li, fy_ref dres, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &m->ws->s;
    int N = m->B * m->T, d = c->hidden_size;
    if (W->moe) {
        if (moe_backward(m, li, dres, err)) return fy_wrap(err, "backward of layer %d", li);
    } else {
        fy__swiglu_backward(m, N, d, c->intermediate_size, a->ln2, W->gate, W->up, W->down, a->g, a->u,
                            a->h, dres, s->dln, 0, s->dg, s->du, s->dh);
    }
    OPS->rmsnorm_bwd(m->be, N, d, a->x_mid, d, PW(m, W->ffn_norm), a->rstd2, s->dln, d, dres, d, 1,
                     GN(m, W->ffn_norm));
    return 0;
}

