/* The layer pieces every pass is built from: linear layers (forward and
 * both gradients), SwiGLU, and the whole-sequence MLA attention with its
 * backward (docs/DESIGN.md §2). Calls only the backend and quant.c, never a pass. */
#include <math.h>

#include "model/decode.h"
#include "model/model_impl.h"

/* A batch step (batch.c: all inference) takes the batch-invariant kernels,
 * with the quantized copy (quant.c) where there is one; training takes gemm. */
void fy__linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx, size_t w, fy_ref y, int ldy,
                float beta) {
    fy_ref q, s;
    if (m->dq.rows) { /* a batch step: per-row invariant kernels only (beta is 0 or 1 there) */
        if (fy__dq_lookup(m, w, &q, &s))
            fy__dq_linear(m, N, in, out, x, ldx, q, s, y, ldy, beta == 1.0f);
        else
            OPS->linear_rows(m->be, N, in, out, x, ldx, PW(m, w), in, y, ldy, beta == 1.0f);
        if (m->ws->lora_rows) fy__lora_rows_linear(m, N, x, ldx, w, y, ldy); /* rows' own unmerged adapters */
        return;
    }
    OPS->gemm(m->be, 0, 1, N, out, in, 1.0f, x, ldx, fy__lora_base_w(m, w), in, beta, y, ldy);
    const fy_lora_adapter *a = m->lora ? fy__lora_find(m, w) : NULL;
    if (a) fy__lora_forward(m, a, N, x, ldx, y, ldy);
}

void fy__linear_dx(fy_model *m, int N, int in, int out, fy_ref dy, int lddy, size_t w, fy_ref dx, int lddx,
                   float beta) {
    OPS->gemm(m->be, 0, 0, N, in, out, 1.0f, dy, lddy, fy__lora_base_w(m, w), in, beta, dx, lddx);
    const fy_lora_adapter *a = m->lora ? fy__lora_find(m, w) : NULL;
    if (a) fy__lora_dx(m, a, N, dy, lddy, dx, lddx);
}

void fy__linear_dw(fy_model *m, int N, int in, int out, fy_ref dy, int lddy, fy_ref x, int ldx, size_t w) {
    if (N == 0) return;
    if (m->lora) { /* the base is frozen: skipping its dW is where LoRA saves time */
        const fy_lora_adapter *a = fy__lora_find(m, w);
        if (a) fy__lora_dw(m, a, N, dy, lddy, x, ldx);
        return;
    }
    OPS->gemm(m->be, 1, 0, out, in, N, 1.0f, dy, lddy, x, ldx, 1.0f, GW(m, w), in);
}

void fy__swiglu_forward(fy_model *m, int N, int d, int F, fy_ref x, size_t wg, size_t wu, size_t wd, fy_ref g,
                        fy_ref u, fy_ref h, fy_ref y, float beta) {
    fy_ref qg, sg, qu, su, qd, sd;
    if (N == 1 && m->dq.kind == FY_QUANT_Q8_0 && OPS->swiglu_q8 && (beta == 0.0f || beta == 1.0f) && fy__dq_lookup(m, wg, &qg, &sg) &&
        fy__dq_lookup(m, wu, &qu, &su) && fy__dq_lookup(m, wd, &qd, &sd) &&
        !(m->ws->lora_rows && (fy__lora_rows_touch(m, N, wg) || fy__lora_rows_touch(m, N, wu) ||
                               fy__lora_rows_touch(m, N, wd)))) {
        /* one row (a batch step's expert with one token): one fused call,
         * the same bits as the four below (backend.h); not when the row's
         * unmerged adapter is on one of them (its share follows each linear) */
        OPS->swiglu_q8(m->be, d, F, x, qg, sg, qu, su, qd, sd, g, u, h, y, beta == 1.0f);
        return;
    }
    fy__linear(m, N, d, F, x, d, wg, g, F, 0);
    fy__linear(m, N, d, F, x, d, wu, u, F, 0);
    OPS->swiglu_fwd(m->be, N, F, g, F, u, F, h, F);
    fy__linear(m, N, F, d, h, F, wd, y, d, beta);
}

void fy__swiglu_backward(fy_model *m, int N, int d, int F, fy_ref x, size_t wg, size_t wu, size_t wd,
                         fy_ref g, fy_ref u, fy_ref h, fy_ref dy, fy_ref dx, float beta_dx, fy_ref dg,
                         fy_ref du, fy_ref dh) {
    if (N == 0) return;
    fy__linear_dx(m, N, F, d, dy, d, wd, dh, F, 0);
    fy__linear_dw(m, N, F, d, dy, d, h, F, wd);
    OPS->swiglu_bwd(m->be, N, F, g, F, u, F, dh, F, dg, du);
    fy__linear_dx(m, N, d, F, dg, F, wg, dx, d, beta_dx);
    fy__linear_dx(m, N, d, F, du, F, wu, dx, d, 1.0f);
    fy__linear_dw(m, N, d, F, dg, F, x, d, wg);
    fy__linear_dw(m, N, d, F, du, F, x, d, wu);
}

/* ---- multi-head latent attention over B x T ---- */

fy_rope_params fy_model_rope_params(const fy_config *c) {
    fy_rope_params p = fy_rope_plain((float)c->rope_theta);
    const fy_rope_scaling *y = &c->rope_scaling;
    if (!y->yarn) return p;
    p.yarn = 1;
    p.factor = y->factor;
    p.orig_max_pos = y->original_max_position_embeddings;
    p.beta_fast = y->beta_fast;
    p.beta_slow = y->beta_slow;
    p.truncate = y->truncate;
    p.mul = fy_cfg_rope_attention_factor(c);
    return p;
}

void fy__attn_forward(fy_model *m, int li) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    int N = m->B * m->T, d = c->hidden_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim, rq = c->q_lora_rank;
    float eps = c->rms_norm_eps;
    fy_rope_params rp = fy_model_rope_params(c);

    OPS->rmsnorm_fwd(m->be, N, d, a->x_in, d, PW(m, W->attn_norm), eps, a->ln1, d, a->rstd1);
    if (rq > 0) {
        fy__linear(m, N, d, rq, a->ln1, d, W->q_a, a->qa, rq, 0);
        OPS->rmsnorm_fwd(m->be, N, rq, a->qa, rq, PW(m, W->q_a_norm), eps, a->qa_n, rq, a->rstd_qa);
        fy__linear(m, N, rq, H * dqk, a->qa_n, rq, W->q_b, a->q, H * dqk, 0);
    } else {
        fy__linear(m, N, d, H * dqk, a->ln1, d, W->q, a->q, H * dqk, 0);
    }
    fy__linear(m, N, d, rkv + dr, a->ln1, d, W->kv_a, a->kva, rkv + dr, 0);
    OPS->rmsnorm_fwd(m->be, N, rkv, a->kva, rkv + dr, PW(m, W->kv_a_norm), eps, a->ckv_n, rkv, a->rstd_kv);
    fy__linear(m, N, rkv, H * (dn + dv), a->ckv_n, rkv, W->kv_b, a->kv, H * (dn + dv), 0);

    /* RoPE touches only the rope part: q_pe of every head, the shared k_pe. */
    OPS->rope(m->be, N, m->T, 0, H, dr, fy_add(a->q, dn), H * dqk, dqk, &rp, 0);
    OPS->rope(m->be, N, m->T, 0, 1, dr, fy_add(a->kva, rkv), rkv + dr, 0, &rp, 0);

    /* k_h = [k_nope_h ; k_pe] (k_pe broadcast to all heads), v_h from kv. */
    OPS->copy3d(m->be, N, H, dn, a->k, (size_t)H * dqk, dqk, a->kv, (size_t)H * (dn + dv), dn + dv, 0);
    OPS->copy3d(m->be, N, H, dr, fy_add(a->k, dn), (size_t)H * dqk, dqk, fy_add(a->kva, rkv), rkv + dr, 0, 0);
    OPS->copy3d(m->be, N, H, dv, a->v, (size_t)H * dv, dv, fy_add(a->kv, dn), (size_t)H * (dn + dv), dn + dv, 0);

    float scale = fy_cfg_softmax_scale(c);
    OPS->attn_fwd(m->be, m->B, m->T, H, dqk, dv, scale, a->q, a->k, a->v, a->att, a->P);

    OPS->copy(m->be, a->x_mid, a->x_in, (size_t)N * d);
    fy__linear(m, N, H * dv, d, a->att, H * dv, W->o, a->x_mid, d, 1.0f);
}

void fy__attn_backward(fy_model *m, int li, fy_ref dres) {
    const fy_config *c = &m->cfg;
    const fy_layer_offs *W = &BT(m)->layer[li];
    fy_layer_acts *a = &m->layer_acts[li];
    scratch *s = &m->ws->s;
    int N = m->B * m->T, d = c->hidden_size, H = c->num_attention_heads;
    int dqk = fy_cfg_qk_head_dim(c), dn = c->qk_nope_head_dim, dv = c->v_head_dim;
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim, rq = c->q_lora_rank;
    fy_rope_params rp = fy_model_rope_params(c);

    fy__linear_dx(m, N, H * dv, d, dres, d, W->o, s->datt, H * dv, 0);
    fy__linear_dw(m, N, H * dv, d, dres, d, a->att, H * dv, W->o);
    float scale = fy_cfg_softmax_scale(c);
    OPS->attn_bwd(m->be, m->B, m->T, H, dqk, dv, scale, a->q, a->k, a->v, a->P, s->datt,
                  s->dq, s->dk, s->dv);

    /* Undo the assembly of k and v: nope parts and v back into dkv, k_pe's
     * gradient summed over heads (it was broadcast), then un-rotated. */
    OPS->copy3d(m->be, N, H, dn, s->dkv, (size_t)H * (dn + dv), dn + dv, s->dk, (size_t)H * dqk, dqk, 0);
    OPS->copy3d(m->be, N, H, dv, fy_add(s->dkv, dn), (size_t)H * (dn + dv), dn + dv, s->dv, (size_t)H * dv, dv, 0);
    OPS->fill(m->be, s->dkva, 0.0f, (size_t)N * (rkv + dr));
    OPS->copy3d(m->be, N, H, dr, fy_add(s->dkva, rkv), rkv + dr, 0, fy_add(s->dk, dn), (size_t)H * dqk, dqk, 1);
    OPS->rope(m->be, N, m->T, 0, 1, dr, fy_add(s->dkva, rkv), rkv + dr, 0, &rp, 1);
    OPS->rope(m->be, N, m->T, 0, H, dr, fy_add(s->dq, dn), H * dqk, dqk, &rp, 1);

    fy__linear_dx(m, N, rkv, H * (dn + dv), s->dkv, H * (dn + dv), W->kv_b, s->dckv, rkv, 0);
    fy__linear_dw(m, N, rkv, H * (dn + dv), s->dkv, H * (dn + dv), a->ckv_n, rkv, W->kv_b);
    OPS->rmsnorm_bwd(m->be, N, rkv, a->kva, rkv + dr, PW(m, W->kv_a_norm), a->rstd_kv, s->dckv, rkv,
                     s->dkva, rkv + dr, 0, GN(m, W->kv_a_norm));
    fy__linear_dx(m, N, d, rkv + dr, s->dkva, rkv + dr, W->kv_a, s->dln, d, 0);
    fy__linear_dw(m, N, d, rkv + dr, s->dkva, rkv + dr, a->ln1, d, W->kv_a);

    if (rq > 0) {
        fy__linear_dx(m, N, rq, H * dqk, s->dq, H * dqk, W->q_b, s->dqa_n, rq, 0);
        fy__linear_dw(m, N, rq, H * dqk, s->dq, H * dqk, a->qa_n, rq, W->q_b);
        OPS->rmsnorm_bwd(m->be, N, rq, a->qa, rq, PW(m, W->q_a_norm), a->rstd_qa, s->dqa_n, rq,
                         s->dqa, rq, 0, GN(m, W->q_a_norm));
        fy__linear_dx(m, N, d, rq, s->dqa, rq, W->q_a, s->dln, d, 1.0f);
        fy__linear_dw(m, N, d, rq, s->dqa, rq, a->ln1, d, W->q_a);
    } else {
        fy__linear_dx(m, N, d, H * dqk, s->dq, H * dqk, W->q, s->dln, d, 1.0f);
        fy__linear_dw(m, N, d, H * dqk, s->dq, H * dqk, a->ln1, d, W->q);
    }
    OPS->rmsnorm_bwd(m->be, N, d, a->x_in, d, PW(m, W->attn_norm), a->rstd1, s->dln, d, dres, d, 1,
                     GN(m, W->attn_norm));
}

