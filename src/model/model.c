/* DeepSeek-V3 forward and backward on a backend (DESIGN §2).
 *
 * Layout: N = B*T tokens flow through the residual stream as [N, d] rows.
 * Each decoder layer saves what its backward needs in fy_layer_acts; the
 * backward walks the layers in reverse with one residual-gradient buffer
 * (dres) that every sub-block adds into, exactly like the forward adds into
 * the residual. Routed experts run on tokens gathered per expert, so each
 * expert is three GEMMs over its own rows, never a loop over tokens. */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/decode.h"
#include "model/model_impl.h"

/* ---- small helpers that make the passes read as math ---- */

#define OPS (m->be->ops)
static fy_ref PW(fy_model *m, size_t off) { return fy_at(&m->params, off); }
static fy_ref GW(fy_model *m, size_t off) { return fy_at(&m->grads, off); }

/* The Q8_0 copy of params matrix w, or -1 (none, or not decoding). */
static int dq_find(const fy_model *m, size_t w) {
    const struct fy_decode_quant *dq = &m->dq;
    if (!dq->on) return -1;
    int lo = 0, hi = dq->n; /* binary search: w_off is sorted */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (dq->w_off[mid] < w) lo = mid + 1;
        else hi = mid;
    }
    return lo < dq->n && dq->w_off[lo] == w ? lo : -1;
}
static fy_ref dq_q(fy_model *m, int i) { return fy_at(&m->dq.buf, m->dq.q_off[i]); }
static fy_ref dq_s(fy_model *m, int i) { return fy_at(&m->dq.buf, m->dq.s_off[i]); }

/* y[N, out] (=|+=) x[N, in] @ W^T, W stored [out, in]. */
#define linear fy__linear
void fy__linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx,
                size_t w, fy_ref y, int ldy, float beta) {
    int qi;
    if (N == 1 && (beta == 0.0f || beta == 1.0f) && (qi = dq_find(m, w)) >= 0) {
        OPS->linear_q8(m->be, N, in, out, x, ldx, dq_q(m, qi), dq_s(m, qi), y, ldy, beta == 1.0f);
        return;
    }
    OPS->gemm(m->be, 0, 1, N, out, in, 1.0f, x, ldx, PW(m, w), in, beta, y, ldy);
}
/* dx[N, in] (=|+=) dy[N, out] @ W. */
static void linear_dx(fy_model *m, int N, int in, int out, fy_ref dy, int lddy,
                      size_t w, fy_ref dx, int lddx, float beta) {
    OPS->gemm(m->be, 0, 0, N, in, out, 1.0f, dy, lddy, PW(m, w), in, beta, dx, lddx);
}
/* dW[out, in] += dy^T @ x. */
static void linear_dw(fy_model *m, int N, int in, int out, fy_ref dy, int lddy,
                      fy_ref x, int ldx, size_t w) {
    if (N == 0) return;
    OPS->gemm(m->be, 1, 0, out, in, N, 1.0f, dy, lddy, x, ldx, 1.0f, GW(m, w), in);
}

static fy_router_opts router_opts(const fy_config *c) {
    fy_router_opts o = {c->n_routed_experts, c->num_experts_per_tok, c->n_group,
                        c->topk_group, c->norm_topk_prob, c->routed_scaling_factor};
    return o;
}

static int use_balance(const fy_config *c) { return c->seq_aux && c->aux_loss_alpha > 0; }

/* ---- workspace planning: one pass sizes, a second hands out offsets ---- */

typedef struct planner {
    fy_buf *buf;
    size_t used;
} planner;

static fy_ref take(planner *p, size_t n) {
    fy_ref r = fy_at(p->buf, p->used);
    p->used += (n + 15) & ~(size_t)15;
    return r;
}

static model_ws *WS(fy_model *m) { return m->ws; }

static void plan_layer(fy_model *m, planner *p, fy_layer_acts *a, int li, int N) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
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

static void plan_all(fy_model *m, planner *p, int N) {
    const fy_config *c = &m->cfg;
    int d = c->hidden_size, V = c->vocab_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim, rq = c->q_lora_rank;
    int E = c->n_routed_experts, K = c->num_experts_per_tok, f = c->moe_intermediate_size;
    int Fmax = c->intermediate_size;
    if (f * c->n_shared_experts > Fmax) Fmax = f * c->n_shared_experts;
    size_t NK = (size_t)N * (K > 0 ? K : 1);
    model_ws *ws = WS(m);
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
    for (int li = 0; li < m->tab.n_layers; li++) plan_layer(m, p, &m->layer_acts[li], li, N);

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
}

static void free_host_routing(fy_model *m) {
    if (!m->layer_acts) return;
    for (int li = 0; li < m->tab.n_layers; li++) {
        fy_layer_acts *a = &m->layer_acts[li];
        free(a->counts); free(a->offs); free(a->h_idx); free(a->h_perm); free(a->h_flat); free(a->ep_rc);
        a->counts = a->offs = a->h_idx = a->h_perm = a->h_flat = a->ep_rc = NULL;
    }
    if (m->ws) {
        free(m->ws->ep_send); free(m->ws->ep_recv); free(m->ws->ep_cnt);
        m->ws->ep_send = m->ws->ep_recv = NULL;
        m->ws->ep_cnt = NULL;
    }
}

/* Makes the activation workspace fit B x T (reallocating only to grow). */
int fy__reserve(fy_model *m, int B, int T, fy_err *err) {
    int N = B * T;
    if (m->acts.handle && B == m->B && T == m->T) return 0;
    free_host_routing(m);
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
        p.used = 0;
        plan_all(m, &p, N); /* same offsets, now with the buffer in place */
    }
    int E = m->cfg.n_routed_experts, K = m->cfg.num_experts_per_tok;
    for (int li = 0; li < m->tab.n_layers; li++) {
        fy_layer_acts *a = &m->layer_acts[li];
        if (!m->tab.layer[li].moe) continue;
        a->counts = calloc(E, sizeof(int));
        a->offs = calloc(E + 1, sizeof(int));
        a->h_idx = calloc((size_t)N * K, sizeof(int));
        a->h_perm = calloc((size_t)N * K, sizeof(int));
        a->h_flat = calloc((size_t)N * K, sizeof(int));
        if (!a->counts || !a->offs || !a->h_idx || !a->h_perm || !a->h_flat)
            return fy_fail(err, "out of memory for routing tables");
        if (m->ep.size > 1 && !(a->ep_rc = calloc((size_t)m->ep.size * E, sizeof(int))))
            return fy_fail(err, "out of memory for routing tables");
    }
    if (m->ep.size > 1 && E > 0) {
        model_ws *ws = WS(m);
        size_t rows = (size_t)m->ep.size * N * K * m->cfg.hidden_size;
        ws->ep_send = malloc(rows * sizeof(float));
        ws->ep_recv = malloc(rows * sizeof(float));
        ws->ep_cnt = malloc(4 * (size_t)m->ep.size * sizeof(size_t));
        if (!ws->ep_send || !ws->ep_recv || !ws->ep_cnt)
            return fy_fail(err, "out of memory for expert-parallel staging (%zu MB)", 2 * rows * 4 >> 20);
    }
    return 0;
}

/* ---- creation and init ---- */

int fy_model_create(fy_model *m, const fy_config *cfg, fy_backend *be, fy_err *err) {
    memset(m, 0, sizeof *m);
    if (fy_config_validate(cfg, err)) return -1;
    m->cfg = *cfg;
    m->be = be;
    if (fy_params_build(cfg, &m->tab, err)) return -1;
    /* n_layers slots of acts plus one holding the model-level workspace. */
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
        if (m->acts.handle) fy_be_free(m->be, &m->acts);
    }
    fy_model_free_decode_quant(m);
    free_host_routing(m);
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
    for (int i = 0; i < m->tab.n; i++)
        if (m->tab.t[i].n > maxn) maxn = m->tab.t[i].n;
    float *host = malloc(maxn * sizeof(float));
    if (!host) return fy_fail(err, "out of memory initialising weights");
    float out_std = c->initializer_range / sqrtf(2.0f * c->num_hidden_layers);
    for (int i = 0; i < m->tab.n; i++) {
        const fy_tensor_info *t = &m->tab.t[i];
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

void fy_model_zero_grad(fy_model *m) {
    OPS->fill(m->be, fy_at(&m->grads, 0), 0.0f, m->grads.n);
}

/* ---- one decoder layer ---- */

static void attn_forward(fy_model *m, int li) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, d = c->hidden_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim, rq = c->q_lora_rank;
    float eps = c->rms_norm_eps, theta = (float)c->rope_theta;

    OPS->rmsnorm_fwd(m->be, N, d, a->x_in, d, PW(m, W->attn_norm), eps, a->ln1, d, a->rstd1);
    if (rq > 0) {
        linear(m, N, d, rq, a->ln1, d, W->q_a, a->qa, rq, 0);
        OPS->rmsnorm_fwd(m->be, N, rq, a->qa, rq, PW(m, W->q_a_norm), eps, a->qa_n, rq, a->rstd_qa);
        linear(m, N, rq, H * dqk, a->qa_n, rq, W->q_b, a->q, H * dqk, 0);
    } else {
        linear(m, N, d, H * dqk, a->ln1, d, W->q, a->q, H * dqk, 0);
    }
    linear(m, N, d, rkv + dr, a->ln1, d, W->kv_a, a->kva, rkv + dr, 0);
    OPS->rmsnorm_fwd(m->be, N, rkv, a->kva, rkv + dr, PW(m, W->kv_a_norm), eps, a->ckv_n, rkv, a->rstd_kv);
    linear(m, N, rkv, H * (dn + dv), a->ckv_n, rkv, W->kv_b, a->kv, H * (dn + dv), 0);

    /* RoPE touches only the rope part: q_pe of every head, the shared k_pe. */
    OPS->rope(m->be, N, m->T, 0, H, dr, fy_add(a->q, dn), H * dqk, dqk, theta, 0);
    OPS->rope(m->be, N, m->T, 0, 1, dr, fy_add(a->kva, rkv), rkv + dr, 0, theta, 0);

    /* k_h = [k_nope_h ; k_pe] (k_pe broadcast to all heads), v_h from kv. */
    OPS->copy3d(m->be, N, H, dn, a->k, (size_t)H * dqk, dqk, a->kv, (size_t)H * (dn + dv), dn + dv, 0);
    OPS->copy3d(m->be, N, H, dr, fy_add(a->k, dn), (size_t)H * dqk, dqk, fy_add(a->kva, rkv), rkv + dr, 0, 0);
    OPS->copy3d(m->be, N, H, dv, a->v, (size_t)H * dv, dv, fy_add(a->kv, dn), (size_t)H * (dn + dv), dn + dv, 0);

    float scale = 1.0f / sqrtf((float)dqk);
    OPS->attn_fwd(m->be, m->B, m->T, H, dqk, dv, scale, a->q, a->k, a->v, a->att, a->P);

    OPS->copy(m->be, a->x_mid, a->x_in, (size_t)N * d);
    linear(m, N, H * dv, d, a->att, H * dv, W->o, a->x_mid, d, 1.0f);
}

static void swiglu_forward(fy_model *m, int N, int d, int F, fy_ref x, size_t wg, size_t wu,
                           size_t wd, fy_ref g, fy_ref u, fy_ref h, fy_ref y, float beta) {
    int ig, iu, id;
    if (N == 1 && OPS->swiglu_q8 && (beta == 0.0f || beta == 1.0f) && (ig = dq_find(m, wg)) >= 0 &&
        (iu = dq_find(m, wu)) >= 0 && (id = dq_find(m, wd)) >= 0) { /* decode: one fused call */
        OPS->swiglu_q8(m->be, d, F, x, dq_q(m, ig), dq_s(m, ig), dq_q(m, iu), dq_s(m, iu), dq_q(m, id),
                       dq_s(m, id), g, u, h, y, beta == 1.0f);
        return;
    }
    linear(m, N, d, F, x, d, wg, g, F, 0);
    linear(m, N, d, F, x, d, wu, u, F, 0);
    OPS->swiglu_fwd(m->be, N, F, g, F, u, F, h, F);
    linear(m, N, F, d, h, F, wd, y, d, beta);
}

/* dy -> dx (=|+= by beta_dx), accumulating the three weight grads. */
static void swiglu_backward(fy_model *m, int N, int d, int F, fy_ref x, size_t wg, size_t wu,
                            size_t wd, fy_ref g, fy_ref u, fy_ref h, fy_ref dy, fy_ref dx,
                            float beta_dx, fy_ref dg, fy_ref du, fy_ref dh) {
    if (N == 0) return;
    linear_dx(m, N, F, d, dy, d, wd, dh, F, 0);
    linear_dw(m, N, F, d, dy, d, h, F, wd);
    OPS->swiglu_bwd(m->be, N, F, g, F, u, F, dh, F, dg, du);
    linear_dx(m, N, d, F, dg, F, wg, dx, d, beta_dx);
    linear_dx(m, N, d, F, du, F, wu, dx, d, 1.0f);
    linear_dw(m, N, d, F, dg, F, x, d, wg);
    linear_dw(m, N, d, F, du, F, x, d, wu);
}

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

/* Each expert's SwiGLU on its rows of a->xs, outputs into y. */
static void experts_forward(fy_model *m, int li, fy_ref y) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int d = c->hidden_size, f = c->moe_intermediate_size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    for (int el = 0; el < hi - lo; el++) {
        int n;
        size_t r = expert_block(m, li, el, &n), we = (size_t)(lo + el - m->tab.exp_lo) * W->exp_stride;
        if (!n) continue;
        swiglu_forward(m, n, d, f, fy_add(a->xs, r * d), W->exp_gate + we, W->exp_up + we,
                       W->exp_down + we, fy_add(a->eg, r * f), fy_add(a->eu, r * f),
                       fy_add(a->eh, r * f), fy_add(y, r * d), 0);
    }
}

/* Its backward: output gradients dy to input gradients dx (same rows),
 * accumulating the experts' weight gradients. */
static void experts_backward(fy_model *m, int li, fy_ref dy, fy_ref dx) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &WS(m)->s;
    int d = c->hidden_size, f = c->moe_intermediate_size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    for (int el = 0; el < hi - lo; el++) {
        int n;
        size_t r = expert_block(m, li, el, &n), we = (size_t)(lo + el - m->tab.exp_lo) * W->exp_stride;
        swiglu_backward(m, n, d, f, fy_add(a->xs, r * d), W->exp_gate + we, W->exp_up + we,
                        W->exp_down + we, fy_add(a->eg, r * f), fy_add(a->eu, r * f),
                        fy_add(a->eh, r * f), fy_add(dy, r * d), fy_add(dx, r * d), 0,
                        fy_add(s->deg, r * f), fy_add(s->deu, r * f), fy_add(s->deh, r * f));
    }
}

static int moe_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, d = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int f = c->moe_intermediate_size, fs = f * c->n_shared_experts;
    fy_router_opts ro = router_opts(c);

    linear(m, N, d, E, a->ln2, d, W->router, a->rlog, E, 0);
    OPS->router_fwd(m->be, N, &ro, a->rlog, fy_at(&m->buffers, W->bias), a->s, a->idx, a->w);
    if (balance && use_balance(c))
        *balance += OPS->balance_fwd(m->be, m->B, m->T, E, K, c->aux_loss_alpha, a->s, a->idx);
    if (route(m, li, need_grad, err)) return -1;

    OPS->gather_rows(m->be, N * K, 1, a->w, 1, a->flat, FY_NULL_REF, a->wsort, 1);
    if (m->ep.size > 1) {
        /* Expert parallel: this rank's sorted rows go to the experts'
         * owners, this rank runs its own experts on the rows of all ranks
         * (expert-major in xs), the outputs come back into ey. */
        fy_ref tmp = WS(m)->ep_tmp;
        if (fy__ep_counts(m, li, err)) return -1;
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
        swiglu_forward(m, N, d, fs, a->ln2, W->sh_gate, W->sh_up, W->sh_down, a->g, a->u, a->h,
                       a->x_out, 1.0f);
    OPS->scatter_add_rows(m->be, N * K, d, a->ey, d, a->perm, a->wsort, a->x_out, d);
    return 0;
}

int fy__ffn_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, d = c->hidden_size;
    OPS->rmsnorm_fwd(m->be, N, d, a->x_mid, d, PW(m, W->ffn_norm), c->rms_norm_eps, a->ln2, d, a->rstd2);
    if (W->moe) return moe_forward(m, li, need_grad, balance, err);
    OPS->copy(m->be, a->x_out, a->x_mid, (size_t)N * d);
    swiglu_forward(m, N, d, c->intermediate_size, a->ln2, W->gate, W->up, W->down, a->g, a->u, a->h,
                   a->x_out, 1.0f);
    return 0;
}

static int layer_forward(fy_model *m, int li, fy_ref x_in, int need_grad, double *balance, fy_err *err) {
    m->layer_acts[li].x_in = x_in;
    attn_forward(m, li);
    return fy__ffn_forward(m, li, need_grad, balance, err);
}

/* dres holds d(loss)/d(x_out) on entry and d(loss)/d(x_in) on return. */
static void attn_backward(fy_model *m, int li, fy_ref dres) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &WS(m)->s;
    int N = m->B * m->T, d = c->hidden_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim, rq = c->q_lora_rank;
    float theta = (float)c->rope_theta;

    linear_dx(m, N, H * dv, d, dres, d, W->o, s->datt, H * dv, 0);
    linear_dw(m, N, H * dv, d, dres, d, a->att, H * dv, W->o);
    float scale = 1.0f / sqrtf((float)dqk);
    OPS->attn_bwd(m->be, m->B, m->T, H, dqk, dv, scale, a->q, a->k, a->v, a->P, s->datt,
                  s->dq, s->dk, s->dv);

    /* Undo the assembly of k and v: nope parts and v back into dkv, k_pe's
     * gradient summed over heads (it was broadcast), then un-rotated. */
    OPS->copy3d(m->be, N, H, dn, s->dkv, (size_t)H * (dn + dv), dn + dv, s->dk, (size_t)H * dqk, dqk, 0);
    OPS->copy3d(m->be, N, H, dv, fy_add(s->dkv, dn), (size_t)H * (dn + dv), dn + dv, s->dv, (size_t)H * dv, dv, 0);
    OPS->fill(m->be, s->dkva, 0.0f, (size_t)N * (rkv + dr));
    OPS->copy3d(m->be, N, H, dr, fy_add(s->dkva, rkv), rkv + dr, 0, fy_add(s->dk, dn), (size_t)H * dqk, dqk, 1);
    OPS->rope(m->be, N, m->T, 0, 1, dr, fy_add(s->dkva, rkv), rkv + dr, 0, theta, 1);
    OPS->rope(m->be, N, m->T, 0, H, dr, fy_add(s->dq, dn), H * dqk, dqk, theta, 1);

    linear_dx(m, N, rkv, H * (dn + dv), s->dkv, H * (dn + dv), W->kv_b, s->dckv, rkv, 0);
    linear_dw(m, N, rkv, H * (dn + dv), s->dkv, H * (dn + dv), a->ckv_n, rkv, W->kv_b);
    OPS->rmsnorm_bwd(m->be, N, rkv, a->kva, rkv + dr, PW(m, W->kv_a_norm), a->rstd_kv, s->dckv, rkv,
                     s->dkva, rkv + dr, 0, GW(m, W->kv_a_norm));
    linear_dx(m, N, d, rkv + dr, s->dkva, rkv + dr, W->kv_a, s->dln, d, 0);
    linear_dw(m, N, d, rkv + dr, s->dkva, rkv + dr, a->ln1, d, W->kv_a);

    if (rq > 0) {
        linear_dx(m, N, rq, H * dqk, s->dq, H * dqk, W->q_b, s->dqa_n, rq, 0);
        linear_dw(m, N, rq, H * dqk, s->dq, H * dqk, a->qa_n, rq, W->q_b);
        OPS->rmsnorm_bwd(m->be, N, rq, a->qa, rq, PW(m, W->q_a_norm), a->rstd_qa, s->dqa_n, rq,
                         s->dqa, rq, 0, GW(m, W->q_a_norm));
        linear_dx(m, N, d, rq, s->dqa, rq, W->q_a, s->dln, d, 1.0f);
        linear_dw(m, N, d, rq, s->dqa, rq, a->ln1, d, W->q_a);
    } else {
        linear_dx(m, N, d, H * dqk, s->dq, H * dqk, W->q, s->dln, d, 1.0f);
        linear_dw(m, N, d, H * dqk, s->dq, H * dqk, a->ln1, d, W->q);
    }
    OPS->rmsnorm_bwd(m->be, N, d, a->x_in, d, PW(m, W->attn_norm), a->rstd1, s->dln, d, dres, d, 1,
                     GW(m, W->attn_norm));
}

static int moe_backward(fy_model *m, int li, fy_ref dres, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &WS(m)->s;
    int N = m->B * m->T, d = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    int f = c->moe_intermediate_size, fs = f * c->n_shared_experts;
    fy_router_opts ro = router_opts(c);

    if (fs > 0)
        swiglu_backward(m, N, d, fs, a->ln2, W->sh_gate, W->sh_up, W->sh_down, a->g, a->u, a->h,
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
        dxs = WS(m)->ep_tmp;
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
    linear_dx(m, N, d, E, s->drlog, E, W->router, s->dln, d, 1.0f);
    linear_dw(m, N, d, E, s->drlog, E, a->ln2, d, W->router);
    return 0;
}

static int layer_backward(fy_model *m, int li, fy_ref dres, fy_err *err) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &m->tab.layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &WS(m)->s;
    int N = m->B * m->T, d = c->hidden_size;
    if (W->moe) {
        if (moe_backward(m, li, dres, err)) return fy_wrap(err, "backward of layer %d", li);
    } else {
        swiglu_backward(m, N, d, c->intermediate_size, a->ln2, W->gate, W->up, W->down, a->g, a->u,
                        a->h, dres, s->dln, 0, s->dg, s->du, s->dh);
    }
    OPS->rmsnorm_bwd(m->be, N, d, a->x_mid, d, PW(m, W->ffn_norm), a->rstd2, s->dln, d, dres, d, 1,
                     GW(m, W->ffn_norm));
    attn_backward(m, li, dres);
    return 0;
}

/* ---- loss heads ---- */

/* RMSNorm + lm_head + cross-entropy on x [N, d]; with grad_scale > 0 also
 * the head's backward: dhead_in = dlogits @ W_head, dW_head += ... . The
 * logits land in `logits`; dlogits may alias it. Returns the loss sum. */
static double head_forward(fy_model *m, fy_ref x, size_t norm_w, fy_ref head_in, fy_ref rstd,
                           fy_ref logits, fy_ref labels, float grad_scale, fy_ref dlogits,
                           fy_ref dhead_in) {
    const fy_config *c = &m->cfg;
    int N = m->B * m->T, d = c->hidden_size, V = c->vocab_size;
    OPS->rmsnorm_fwd(m->be, N, d, x, d, PW(m, norm_w), c->rms_norm_eps, head_in, d, rstd);
    linear(m, N, d, V, head_in, d, m->tab.head, logits, V, 0);
    if (!labels.buf) return 0;
    double sum = OPS->xent_fwdbwd(m->be, N, V, logits, labels, FY_IGNORE_INDEX, grad_scale,
                                  WS(m)->losses, dlogits);
    if (grad_scale > 0) {
        linear_dx(m, N, d, V, dlogits, V, m->tab.head, dhead_in, d, 0);
        linear_dw(m, N, d, V, dlogits, V, head_in, d, m->tab.head);
    }
    return sum;
}

static int count_valid(const int32_t *labels, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) v += labels[i] != FY_IGNORE_INDEX;
    return v;
}

static int check_tokens(const fy_model *m, const int32_t *ids, int n, int allow_ignore,
                        const char *what, fy_err *err) {
    for (int i = 0; i < n; i++) {
        int t = ids[i];
        if (allow_ignore && t == FY_IGNORE_INDEX) continue;
        if (t < 0 || t >= m->cfg.vocab_size)
            return fy_fail(err, "%s[%d] = %d is outside the vocabulary [0, %d)", what, i, t,
                           m->cfg.vocab_size);
    }
    return 0;
}

int fy_model_forward(fy_model *m, const int32_t *inputs, const int32_t *labels, int B, int T,
                     int need_grad, fy_loss *loss, fy_err *err) {
    const fy_config *c = &m->cfg;
    int N = B * T, d = c->hidden_size, L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    memset(loss, 0, sizeof *loss);
    if (B <= 0 || T <= 0) return fy_fail(err, "batch %d x %d: both must be positive", B, T);
    if (T > c->max_position_embeddings)
        return fy_fail(err, "sequence length %d exceeds max_position_embeddings %d", T,
                       c->max_position_embeddings);
    if (need_grad && !labels) return fy_fail(err, "a forward for training needs labels");
    if (check_tokens(m, inputs, N, 0, "input", err)) return -1;
    if (labels && check_tokens(m, labels, N, 1, "label", err)) return -1;
    if (fy__reserve(m, B, T, err)) return -1;
    model_ws *ws = WS(m);
    m->has_grad_heads = need_grad;

    OPS->upload(m->be, ws->tok_in, inputs, N);
    OPS->gather_rows(m->be, N, d, PW(m, m->tab.embed), d, ws->tok_in, FY_NULL_REF, ws->x_emb, d);
    double balance = 0;
    fy_ref x = ws->x_emb;
    for (int li = 0; li < L; li++) {
        if (layer_forward(m, li, x, need_grad, &balance, err)) return -1;
        x = m->layer_acts[li].x_out;
    }
    fy_ref h = x; /* main model's last hidden state, before the final norm */

    fy_ref lab = FY_NULL_REF;
    int n_main = 0;
    if (labels) {
        OPS->upload(m->be, ws->tok_lab, labels, N);
        lab = ws->tok_lab;
        n_main = count_valid(labels, N);
    }
    ws->main_scale = need_grad && n_main ? 1.0f / n_main : 0.0f;
    double sum = head_forward(m, h, m->tab.final_norm, ws->head_in, ws->rstd_head, m->logits, lab,
                              ws->main_scale, ws->dlogits, ws->dhead_in);
    loss->n_main = n_main;
    loss->main = n_main ? sum / n_main : 0.0;
    loss->total = loss->main;

    if (labels && D > 0) {
        int32_t *tk = malloc((size_t)N * sizeof *tk), *lb = malloc((size_t)N * sizeof *lb);
        if (!tk || !lb) {
            free(tk); free(lb);
            return fy_fail(err, "out of memory");
        }
        for (int k = 1; k <= D; k++) {
            /* Module k at position t sees token t+k and predicts t+k+1 (the
             * label at t+k); past the end it sees token 0 and has no target.
             * Causal attention keeps those tail positions from leaking. */
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                    int in = t + k < T;
                    tk[b * T + t] = in ? inputs[b * T + t + k] : 0;
                    lb[b * T + t] = in ? labels[b * T + t + k] : FY_IGNORE_INDEX;
                }
            int nk = count_valid(lb, N), li = L + k - 1;
            const fy_layer_offs *W = &m->tab.layer[li];
            OPS->upload(m->be, ws->mtp_tok[k - 1], tk, N);
            OPS->upload(m->be, ws->mtp_lab[k - 1], lb, N);
            OPS->gather_rows(m->be, N, d, PW(m, m->tab.embed), d, ws->mtp_tok[k - 1], FY_NULL_REF,
                             ws->mtp_emb[k - 1], d);
            /* h' = W_eh [RMSNorm_e(emb) ; RMSNorm_h(h)]: both norms write
             * straight into the halves of the concatenation. */
            OPS->rmsnorm_fwd(m->be, N, d, ws->mtp_emb[k - 1], d, PW(m, W->enorm), c->rms_norm_eps,
                             ws->mtp_cat[k - 1], 2 * d, ws->mtp_rstd_e[k - 1]);
            OPS->rmsnorm_fwd(m->be, N, d, h, d, PW(m, W->hnorm), c->rms_norm_eps,
                             fy_add(ws->mtp_cat[k - 1], d), 2 * d, ws->mtp_rstd_h[k - 1]);
            linear(m, N, 2 * d, d, ws->mtp_cat[k - 1], 2 * d, W->eh_proj, ws->mtp_x0[k - 1], d, 0);
            if (layer_forward(m, li, ws->mtp_x0[k - 1], need_grad, &balance, err)) {
                free(tk); free(lb);
                return -1;
            }
            ws->mtp_scale[k - 1] = need_grad && nk ? c->mtp_loss_weight / D / nk : 0.0f;
            /* dlogits doubles as this head's logits: the main head is done with it. */
            double sk = head_forward(m, m->layer_acts[li].x_out, W->head_norm, ws->mtp_head_in[k - 1],
                                     ws->mtp_rstd_head[k - 1], ws->dlogits, ws->mtp_lab[k - 1],
                                     ws->mtp_scale[k - 1], ws->dlogits, ws->mtp_dhead_in[k - 1]);
            loss->mtp[k - 1] = nk ? sk / nk : 0.0;
            loss->total += (double)c->mtp_loss_weight / D * loss->mtp[k - 1];
        }
        free(tk);
        free(lb);
    }
    loss->balance = balance;
    loss->total += balance;
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "forward");
    return 0;
}

void fy_model_set_grad_ready(fy_model *m, int (*fn)(void *ctx, size_t lo, size_t hi, int first, fy_err *err),
                             void *ctx) {
    m->grad_ready = fn;
    m->grad_ready_ctx = ctx;
}

/* Hands [lo, hi) to the bucketing callback once the device has written it;
 * *first is 1 until the first range of this backward went. */
static int grad_ready(fy_model *m, size_t lo, size_t hi, int *first, fy_err *err) {
    if (!m->grad_ready || hi <= lo) return 0;
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "backward");
    int f = *first;
    *first = 0;
    return m->grad_ready(m->grad_ready_ctx, lo, hi, f, err);
}
/* A layer's two ranges: its dense params and its routed experts. */
static int layer_ready(fy_model *m, int li, int *first, fy_err *err) {
    const fy_layer_offs *W = &m->tab.layer[li];
    return grad_ready(m, W->span_lo, W->span_hi, first, err) || grad_ready(m, W->xspan_lo, W->xspan_hi, first, err);
}

int fy_model_backward(fy_model *m, fy_err *err) {
    const fy_config *c = &m->cfg;
    if (!m->has_grad_heads) return fy_fail(err, "backward needs a forward with need_grad first");
    model_ws *ws = WS(m);
    scratch *s = &ws->s;
    int N = m->B * m->T, d = c->hidden_size, L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    fy_ref h = L > 0 ? m->layer_acts[L - 1].x_out : ws->x_emb;
    int first = 1;

    OPS->rmsnorm_bwd(m->be, N, d, h, d, PW(m, m->tab.final_norm), ws->rstd_head, ws->dhead_in, d,
                     ws->dres, d, 0, GW(m, m->tab.final_norm));
    for (int k = D; k >= 1; k--) {
        int li = L + k - 1;
        const fy_layer_offs *W = &m->tab.layer[li];
        OPS->rmsnorm_bwd(m->be, N, d, m->layer_acts[li].x_out, d, PW(m, W->head_norm),
                         ws->mtp_rstd_head[k - 1], ws->mtp_dhead_in[k - 1], d, ws->dtmp, d, 0,
                         GW(m, W->head_norm));
        if (layer_backward(m, li, ws->dtmp, err)) return -1;
        linear_dx(m, N, 2 * d, d, ws->dtmp, d, W->eh_proj, ws->dcat, 2 * d, 0);
        linear_dw(m, N, 2 * d, d, ws->dtmp, d, ws->mtp_cat[k - 1], 2 * d, W->eh_proj);
        OPS->rmsnorm_bwd(m->be, N, d, ws->mtp_emb[k - 1], d, PW(m, W->enorm), ws->mtp_rstd_e[k - 1],
                         ws->dcat, 2 * d, s->dln, d, 0, GW(m, W->enorm));
        OPS->scatter_add_rows(m->be, N, d, s->dln, d, ws->mtp_tok[k - 1], FY_NULL_REF,
                              GW(m, m->tab.embed), d);
        OPS->rmsnorm_bwd(m->be, N, d, h, d, PW(m, W->hnorm), ws->mtp_rstd_h[k - 1],
                         fy_add(ws->dcat, d), 2 * d, ws->dres, d, 1, GW(m, W->hnorm));
    }
    /* Heads, final norm and MTP modules (after the last layer: L >= 1) are
     * done: the dense params after the last layer, the MTP modules' experts
     * (the end of the expert region). */
    if (grad_ready(m, m->tab.layer[L - 1].span_hi, m->tab.n_dense, &first, err) ||
        grad_ready(m, m->tab.layer[L - 1].xspan_hi, m->tab.n_params, &first, err))
        return -1;
    for (int li = L - 1; li >= 0; li--)
        if (layer_backward(m, li, ws->dres, err) || layer_ready(m, li, &first, err)) return -1;
    OPS->scatter_add_rows(m->be, N, d, ws->dres, d, ws->tok_in, FY_NULL_REF, GW(m, m->tab.embed), d);
    if (grad_ready(m, 0, m->tab.layer[0].span_lo, &first, err)) return -1;
    m->has_grad_heads = 0;
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "backward");
    return 0;
}

int fy_model_update_bias(fy_model *m, fy_err *err) {
    const fy_config *c = &m->cfg;
    int E = c->n_routed_experts;
    if (E == 0) return 0;
    float *b = malloc(E * sizeof *b);
    if (!b) return fy_fail(err, "out of memory");
    for (int li = 0; li < m->tab.n_layers; li++) {
        const fy_layer_offs *W = &m->tab.layer[li];
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

int fy_model_router_choice(fy_model *m, int layer, int32_t *idx, float *w, fy_err *err) {
    if (layer < 0 || layer >= m->tab.n_layers || !m->tab.layer[layer].moe)
        return fy_fail(err, "layer %d is not an MoE layer", layer);
    if (!m->acts.handle) return fy_fail(err, "no forward has run yet");
    size_t n = (size_t)m->B * m->T * m->cfg.num_experts_per_tok;
    OPS->download(m->be, idx, m->layer_acts[layer].idx, n);
    OPS->download(m->be, w, m->layer_acts[layer].w, n);
    return fy_be_sync(m->be, err);
}

int fy_model_latent_kv(fy_model *m, int layer, fy_ref *ckv, int *ld_ckv, fy_ref *kpe, int *ld_kpe,
                       fy_err *err) {
    if (layer < 0 || layer >= m->tab.n_layers) return fy_fail(err, "no layer %d", layer);
    if (!m->acts.handle) return fy_fail(err, "no forward has run yet");
    int rkv = m->cfg.kv_lora_rank, dr = m->cfg.qk_rope_head_dim;
    *ckv = m->layer_acts[layer].ckv_n;
    *ld_ckv = rkv;
    *kpe = fy_add(m->layer_acts[layer].kva, rkv);
    *ld_kpe = rkv + dr;
    return 0;
}

int fy_model_activation(fy_model *m, int layer, const char *name, fy_ref *out, size_t *n, fy_err *err) {
    if (layer < 0 || layer >= m->tab.n_layers)
        return fy_fail(err, "no layer %d (the model has %d, MTP included)", layer, m->tab.n_layers);
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
