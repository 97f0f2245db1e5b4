/* The activation workspace: one device buffer for every layer's saved
 * activations, the backward scratch and the heads, planned for the current
 * B x T, plus the host routing tables. Holds no arithmetic. */
#include <stdlib.h>

#include "model/model_impl.h"

/* Planning: one pass sizes the workspace, a second hands out offsets. */
typedef struct planner {
    fy_buf *buf;
    size_t used;
} planner;

static fy_ref take(planner *p, size_t n) {
    fy_ref r = fy_at(p->buf, p->used);
    p->used += fy_params_round16(n);
    return r;
}

static void plan_layer(fy_model *m, planner *p, fy_layer_acts *a, int li, int N) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    int d = c->hidden_size, H = c->num_attention_heads, dqk = fy_cfg_qk_head_dim(c);
    int dn = c->qk_nope_head_dim, dv = c->v_head_dim, rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    a->x_mid = take(p, (size_t)N * d);
    a->x_out = take(p, (size_t)N * d);
    a->ln1 = take(p, (size_t)N * d);
    a->rstd1 = take(p, N);
    if (c->q_lora_rank > 0) {
        a->qa = take(p, (size_t)N * c->q_lora_rank);
        a->qa_n = take(p, (size_t)N * c->q_lora_rank);
        a->rstd_qa = take(p, N);
    }
    a->q = take(p, (size_t)N * H * dqk);
    a->kva = take(p, (size_t)N * (rkv + dr));
    a->ckv_n = take(p, (size_t)N * rkv);
    a->rstd_kv = take(p, N);
    a->kv = take(p, (size_t)N * H * (dn + dv));
    a->k = take(p, (size_t)N * H * dqk);
    a->v = take(p, (size_t)N * H * dv);
    a->P = take(p, (size_t)m->B * H * m->T * m->T);
    a->att = take(p, (size_t)N * H * dv);
    a->ln2 = take(p, (size_t)N * d);
    a->rstd2 = take(p, N);
    if (!W->moe) {
        int F = c->intermediate_size;
        a->g = take(p, (size_t)N * F);
        a->u = take(p, (size_t)N * F);
        a->h = take(p, (size_t)N * F);
    } else {
        int E = c->n_routed_experts, K = c->num_experts_per_tok, f = c->moe_intermediate_size;
        int fs = f * c->n_shared_experts;
        size_t NK = (size_t)N * K, cNK = NK * fy__ep_cap(m); /* owner rows (expert parallel) */
        if (fs > 0) {
            a->g = take(p, (size_t)N * fs);
            a->u = take(p, (size_t)N * fs);
            a->h = take(p, (size_t)N * fs);
        }
        a->rlog = take(p, (size_t)N * E);
        a->s = take(p, (size_t)N * E);
        a->idx = take(p, NK);
        a->w = take(p, NK);
        a->perm = take(p, NK);
        a->flat = take(p, NK);
        a->wsort = take(p, NK);
        a->xs = take(p, cNK * d);
        a->eg = take(p, cNK * f);
        a->eu = take(p, cNK * f);
        a->eh = take(p, cNK * f);
        a->ey = take(p, NK * d);
    }
}

/* Training keeps every layer's activations for the backward. A model
 * loaded for inference (m->dq.infer) runs only batch steps, where a layer
 * reads nothing of another but its input: the layers share one set of
 * slots (the largest layer's), and their outputs alternate between two
 * slots, so a layer's input (the one before's output) is never its own
 * output. A prefill's workspace is then about one layer's, not L. */
static void plan_layers(fy_model *m, planner *p, int N) {
    size_t base = p->used, top = base;
    for (int li = 0; li < BT(m)->n_layers; li++) {
        if (m->dq.infer) p->used = base;
        plan_layer(m, p, &m->layer_acts[li], li, N);
        top = p->used > top ? p->used : top;
    }
    p->used = top;
    if (!m->dq.infer) return;
    fy_ref out[2] = {take(p, (size_t)N * m->cfg.hidden_size), take(p, (size_t)N * m->cfg.hidden_size)};
    for (int li = 0; li < BT(m)->n_layers; li++) m->layer_acts[li].x_out = out[li % 2];
}

static void plan_all(fy_model *m, planner *p, int N) {
    const fy_config *c = &m->cfg;
    int d = c->hidden_size, V = c->vocab_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim, rq = c->q_lora_rank;
    int E = c->n_routed_experts, K = c->num_experts_per_tok, f = c->moe_intermediate_size;
    int Fmax = c->intermediate_size;
    if (f * c->n_shared_experts > Fmax) Fmax = f * c->n_shared_experts;
    size_t NK = (size_t)N * (K > 0 ? K : 1);
    model_ws *ws = m->ws;
    scratch *s = &ws->s;

    ws->tok_in = take(p, N);
    ws->tok_lab = take(p, N);
    ws->x_emb = take(p, (size_t)N * d);
    ws->dres = take(p, (size_t)N * d);
    ws->dtmp = take(p, (size_t)N * d);
    m->logits = take(p, (size_t)N * V);
    ws->dlogits = take(p, (size_t)N * V);
    ws->losses = take(p, N);
    ws->head_in = take(p, (size_t)N * d);
    ws->dhead_in = take(p, (size_t)N * d);
    ws->rstd_head = take(p, N);
    ws->dcat = take(p, (size_t)N * 2 * d);
    for (int k = 0; k < c->num_nextn_predict_layers; k++) {
        ws->mtp_tok[k] = take(p, N);
        ws->mtp_lab[k] = take(p, N);
        ws->mtp_emb[k] = take(p, (size_t)N * d);
        ws->mtp_cat[k] = take(p, (size_t)N * 2 * d);
        ws->mtp_rstd_e[k] = take(p, N);
        ws->mtp_rstd_h[k] = take(p, N);
        ws->mtp_x0[k] = take(p, (size_t)N * d);
        ws->mtp_head_in[k] = take(p, (size_t)N * d);
        ws->mtp_dhead_in[k] = take(p, (size_t)N * d);
        ws->mtp_rstd_head[k] = take(p, N);
    }
    plan_layers(m, p, N);

    s->dln = take(p, (size_t)N * d);
    s->dq = take(p, (size_t)N * H * dqk);
    s->dk = take(p, (size_t)N * H * dqk);
    s->dv = take(p, (size_t)N * H * dv);
    s->dkv = take(p, (size_t)N * H * (dn + dv));
    s->dkva = take(p, (size_t)N * (rkv + dr));
    s->datt = take(p, (size_t)N * H * dv);
    s->dckv = take(p, (size_t)N * rkv);
    if (rq > 0) {
        s->dqa = take(p, (size_t)N * rq);
        s->dqa_n = take(p, (size_t)N * rq);
    }
    s->dg = take(p, (size_t)N * Fmax);
    s->du = take(p, (size_t)N * Fmax);
    s->dh = take(p, (size_t)N * Fmax);
    if (E > 0) {
        s->drlog = take(p, (size_t)N * E);
        s->dw = take(p, NK);
        s->dws = take(p, NK);
        size_t cNK = NK * fy__ep_cap(m);
        s->dey = take(p, NK * d);
        s->dxs = take(p, cNK * d);
        s->deg = take(p, cNK * f);
        s->deu = take(p, cNK * f);
        s->deh = take(p, cNK * f);
        if (fy__ep_cap(m) > 1) ws->ep_tmp = take(p, cNK * d);
    }
    if (m->lora) { /* the most rows one linear gets: all tokens, or one expert's on its owner */
        size_t rows = E > 0 && NK * fy__ep_cap(m) > (size_t)N ? NK * fy__ep_cap(m) : (size_t)N;
        ws->lora_u = take(p, rows * m->lora->cfg.rank);
        ws->lora_g = take(p, rows * m->lora->cfg.rank);
        if (m->lora->cfg.dropout > 0) ws->lora_x = take(p, rows * m->lora->max_in);
    }
}

/* The host tables fy__reserve makes for one shape. */
static void free_tables(fy_model *m) {
    if (!m->layer_acts) return;
    for (int li = 0; li < BT(m)->n_layers; li++) {
        fy_layer_acts *a = &m->layer_acts[li];
        free(a->counts); free(a->offs); free(a->h_idx); free(a->h_perm); free(a->h_flat); free(a->ep_rc); free(a->ep_keys);
        a->counts = a->offs = a->h_idx = a->h_perm = a->h_flat = a->ep_rc = NULL;
        a->ep_keys = NULL;
    }
    if (m->ws) {
        free(m->ws->ep_send); free(m->ws->ep_recv); free(m->ws->ep_cnt);
        m->ws->ep_send = m->ws->ep_recv = NULL;
        m->ws->ep_cnt = NULL;
    }
}

void fy__free_workspace(fy_model *m) {
    if (m->be && m->acts.handle) fy_be_free(m->be, &m->acts);
    if (m->be && m->ws && m->ws->kv_gather.handle) fy_be_free(m->be, &m->ws->kv_gather);
    free_tables(m);
}

int fy__reserve(fy_model *m, int B, int T, fy_err *err) {
    int N = B * T;
    if (m->acts.handle && B == m->B && T == m->T) return 0;
    free_tables(m);
    m->B = B;
    m->T = T;
    planner p = {&m->acts, 0};
    plan_all(m, &p, N);
    /* A smaller shape reuses the buffer (generation alternates prefill and
     * one-token decode: reallocating each time cost page faults). */
    if (!m->acts.handle || p.used > m->acts.n) {
        if (m->acts.handle) fy_be_free(m->be, &m->acts);
        if (fy_be_alloc(m->be, &m->acts, p.used, err))
            return fy_wrap(err, "allocating activations for batch %d x %d (%zu MB)", B, T, p.used * 4 >> 20);
        /* a batch step writes a few slices (no backward scratch, shared layers) */
        if (m->dq.infer && OPS->sparse) OPS->sparse(m->be, &m->acts);
        p.used = 0;
        plan_all(m, &p, N); /* same offsets, now with the buffer in place */
    }
    int E = m->cfg.n_routed_experts, K = m->cfg.num_experts_per_tok;
    for (int li = 0; li < BT(m)->n_layers; li++) {
        fy_layer_acts *a = &m->layer_acts[li];
        if (!BT(m)->layer[li].moe) continue;
        a->counts = calloc(E, sizeof(int));
        a->offs = calloc(E + 1, sizeof(int));
        a->h_idx = calloc((size_t)N * K, sizeof(int));
        a->h_perm = calloc((size_t)N * K, sizeof(int));
        a->h_flat = calloc((size_t)N * K, sizeof(int));
        if (!a->counts || !a->offs || !a->h_idx || !a->h_perm || !a->h_flat)
            return fy_fail(err, "out of memory for routing tables");
        if (m->ep.size > 1 && !(a->ep_rc = calloc((size_t)m->ep.size * E, sizeof(int))))
            return fy_fail(err, "out of memory for routing tables");
        if (m->ep.size > 1 && m->lora && m->lora->cfg.dropout > 0 &&
            !(a->ep_keys = calloc((size_t)m->ep.size * N * K, sizeof *a->ep_keys)))
            return fy_fail(err, "out of memory for routing tables");
    }
    if (m->ep.size > 1 && E > 0) {
        model_ws *ws = m->ws;
        size_t rows = (size_t)m->ep.size * N * K * m->cfg.hidden_size;
        ws->ep_send = malloc(rows * sizeof(float));
        ws->ep_recv = malloc(rows * sizeof(float));
        ws->ep_cnt = malloc(4 * (size_t)m->ep.size * sizeof(size_t));
        if (!ws->ep_send || !ws->ep_recv || !ws->ep_cnt)
            return fy_fail(err, "out of memory for expert-parallel staging (%zu MB)", 2 * rows * 4 >> 20);
    }
    return 0;
}

