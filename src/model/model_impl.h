/* Private to src/model: the activation workspace and the internal API the
 * model's files share (fy__ names). Nothing outside src/model includes it.
 *
 * Layering: each file calls only files on lower rows, never up or sideways
 * (except that decode.c's one-sequence cache is a batch.c pool):
 *
 *   entry points  model.c     create/free, weight init, bias update, queries
 *                 forward.c   whole-sequence forward + loss heads, MTP
 *                 backward.c  whole-sequence backward, gradient buckets
 *                 decode.c    one sequence's cache: prefill, decode (batch.c)
 *                 batch.c     paged KV pool, batch steps over many sequences
 *   layer pieces  ffn.c       FFN half of a layer: dense, MoE router,
 *                             routing, experts (calls layer.c, moe_ep.c)
 *                 layer.c     linear (+dx, dw), SwiGLU, MLA attention
 *   bottom        workspace.c activation buffers and host routing tables
 *                 lora.c      LoRA adapters: targets, table, init
 *                 lora_ops.c  the adapters' forward and backward
 *                 lora_qbase.c the LoRA base held quantized
 *                 quant.c     Q8_0 copy of the decode weights
 *                 moe_ep.c    expert-parallel row exchange between ranks
 *                 params.c, config.c (public: model/params.h, config.h)
 */
#ifndef FY_MODEL_IMPL_H
#define FY_MODEL_IMPL_H

#include "model/lora.h"
#include "model/model.h"

/* The passes read as math: OPS is the backend's kernel table, PW/GW a
 * parameter's weights and gradient at table offset off (each .c has an m). */
#define OPS (m->be->ops)
/* BT: the base model's table. With LoRA adapters on, m->tab, m->params and
 * m->grads are the adapter block (what a run trains) and the base lives in
 * m->lora (model/lora.h); the passes read it through BT and PW. */
/* GW: a base weight's gradient; never with LoRA adapters on (frozen base). */
static inline fy_ref GW(fy_model *m, size_t off) { return fy_at(&m->grads, off); }
static inline const fy_param_table *BT(const fy_model *m) { return m->lora ? &m->lora->base_tab : &m->tab; }
static inline fy_ref PW(fy_model *m, size_t off) { return fy_at(m->lora ? &m->lora->base_params : &m->params, off); }
/* A norm weight's gradient: GW, or with LoRA adapters on (a frozen base)
 * a scratch the rmsnorm backward may write and nobody reads. */
static inline fy_ref GN(fy_model *m, size_t off) { return m->lora ? fy_at(&m->lora->dump, 0) : GW(m, off); }

struct fy_layer_acts {
    fy_ref x_in, x_mid, x_out;            /* [N, d] residual stream */
    /* attention */
    fy_ref ln1, rstd1, qa, qa_n, rstd_qa; /* q_lora path */
    fy_ref q;                             /* [N, H*dqk], RoPE applied in place */
    fy_ref kva;                           /* [N, r_kv+d_r], k_pe roped in place */
    fy_ref ckv_n, rstd_kv;                /* [N, r_kv] */
    fy_ref kv;                            /* [N, H*(d_n+d_v)] */
    fy_ref k, v, P, att;
    /* FFN */
    fy_ref ln2, rstd2;
    fy_ref g, u, h;                       /* dense, or the shared experts */
    fy_ref rlog, s, idx, w;               /* router: [N,E], [N,E], int [N,K], [N,K] */
    fy_ref perm, flat, wsort;             /* per sorted slot: token, n*K+k, weight */
    fy_ref xs, eg, eu, eh, ey;            /* [N*K, d|f] expert rows, sorted by expert */
    int *counts, *offs;                   /* host [E], [E+1] */
    int *h_idx, *h_perm, *h_flat;         /* host [N*K] */
    /* expert parallel: rows this rank's experts got, [source rank][own
     * expert] (host), and their total; xs..eh then hold those rows,
     * expert-major (expert, then source rank), ey stays this rank's. */
    int *ep_rc, ep_rows;
    /* LoRA dropout with expert parallel: each of those rows' dropout key
     * (its token's index in the whole step), host [ranks * N*K] */
    int32_t *ep_keys;
};

/* Backward scratch, shared by all layers (one layer at a time). */
typedef struct scratch {
    fy_ref dln, dq, dk, dv, dkv, dkva, datt, dckv, dqa, dqa_n;
    fy_ref dg, du, dh, drlog, dw, dws, dey, dxs, deg, deu, deh;
} scratch;

/* Model-level workspace: the refs of everything outside the layers. */
typedef struct fy_model_ws {
    scratch s;
    fy_ref tok_in, tok_lab;               /* int [N] */
    fy_ref x_emb, dres, dtmp, dlogits, losses, head_in, dhead_in, rstd_head, dcat;
    fy_ref mtp_head_in[FY_MAX_MTP], mtp_dhead_in[FY_MAX_MTP], mtp_rstd_head[FY_MAX_MTP];
    fy_ref mtp_emb[FY_MAX_MTP], mtp_cat[FY_MAX_MTP], mtp_rstd_e[FY_MAX_MTP];
    fy_ref mtp_rstd_h[FY_MAX_MTP], mtp_x0[FY_MAX_MTP], mtp_tok[FY_MAX_MTP], mtp_lab[FY_MAX_MTP];
    float main_scale, mtp_scale[FY_MAX_MTP];
    /* expert parallel: a device buffer for rows in transit, host staging */
    fy_ref ep_tmp;
    float *ep_send, *ep_recv;
    size_t *ep_cnt;                       /* [4 * ranks]: sc, sd, rc, rd */
    /* batch steps (batch.c) without the backend's mla_paged: one
     * sequence's latent KV gathered contiguous, grown on demand */
    fy_buf kv_gather;
    /* LoRA (lora_ops.c): u = x A^T and g = s dy B of one adapted linear
     * at a time, [rows, r] for the most rows a linear gets */
    fy_ref lora_u, lora_g;
    fy_ref lora_x;                        /* [rows, max in]: dropout's masked x, or g A */
    /* unmerged adapters of a batch step's rows (batch.c sets it for the
     * step, lora_ops.c reads it); NULL: none (and always in training) */
    struct fy_lora_rows *lora_rows;
} model_ws;

/* A batch step's rows with unmerged adapters (model/lora.h): each row's
 * adapter, the distinct ones, and per adapter k its rows of a linear as
 * device indices: idx[k] its rows among the step's (n_all[k], uploaded
 * once a step), idx[n_set + k] among the routed expert (layer, expert) it
 * last ran (exp_n[k]); sv[k] its scale, one per row; and the scratch of one
 * adapted linear. */
typedef struct fy_lora_rows {
    int n;                                /* the step's rows */
    const fy_lora_unmerged **row;         /* [n]: each row's adapter, NULL: the bare base */
    const fy_lora_unmerged **set;         /* the distinct adapters of the step */
    int n_set;
    int *n_all, *exp_layer, *exp_expert, *exp_n; /* [n_set] */
    int32_t *hidx;                        /* host [n] */
    fy_ref idx, sv;                       /* int [2 n_set][n], [n_set][n] */
    fy_ref xg, u, d;                      /* [n, max in], [n, max r], [n, max out] */
    int bad;                              /* a linear's rows were not the step's: the step fails */
} fy_lora_rows;

/* ---- workspace.c: the activation workspace ---- */

/* Makes the workspace fit B x T (reallocating only to grow). */
int fy__reserve(fy_model *m, int B, int T, fy_err *err);
/* Frees the workspace: the device buffer and the host tables. */
void fy__free_workspace(fy_model *m);

/* ---- quant.c: the Q8_0 copy of the decode weights ---- */

/* During a batch step (m->dq.on), the Q8_0 copy of params matrix w: 1 with its
 * quants *q and scales *s; 0 when there is none. */
int fy__dq_lookup(fy_model *m, size_t w, fy_ref *q, fy_ref *s);
/* y (=|+=) x @ W^T from W's copy (q, s as fy__dq_lookup gave them), with
 * the kernel of the copy's format. */
void fy__dq_linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx, fy_ref q, fy_ref s, fy_ref y, int ldy,
                   int accumulate);
/* dst[n, d] = the embedding's rows idx (int [n], on the device): during a
 * batch step with the embedding in the copy (m->dq.on, m->dq.emb)
 * dequantized from it (dequant_rows), else gathered from the params. */
void fy__dq_embed(fy_model *m, int n, fy_ref idx, fy_ref dst);

/* ---- lora.c, lora_ops.c: LoRA adapters ---- */

/* Frees m->lora (and sets it NULL). */
void fy__lora_free(fy_model *m);
/* lora_qbase.c: frees m->lora's held base (model/lora_qbase.h), if any. */
void fy__lora_qbase_free(fy_model *m);
/* Base weight w as f32 for a training pass: PW(m, w), or when the base
 * holds w in another format, w widened into the held base's scratch (valid
 * until the next call). */
fy_ref fy__lora_base_w(fy_model *m, size_t w);
/* The adapter of the base weight at params offset w, or NULL. */
const fy_lora_adapter *fy__lora_find(const fy_model *m, size_t w);
/* y[N, out] += s B (A x) */
void fy__lora_forward(fy_model *m, const fy_lora_adapter *a, int N, fy_ref x, int ldx, fy_ref y, int ldy);
/* dx[N, in] += s (dy B) A */
void fy__lora_dx(fy_model *m, const fy_lora_adapter *a, int N, fy_ref dy, int lddy, fy_ref dx, int lddx);
/* The adapter's gradients dA, dB += ... from dy and the linear's input x. */
void fy__lora_dw(fy_model *m, const fy_lora_adapter *a, int N, fy_ref dy, int lddy, fy_ref x, int ldx);
/* In a batch step with unmerged adapters (m->ws->lora_rows): adds to the
 * linear's y[N, out] each row's own adapter share s (x A^T) B^T, per row
 * invariantly (gathered rows, linear_rows, scattered back). */
void fy__lora_rows_linear(fy_model *m, int N, fy_ref x, int ldx, size_t w, fy_ref y, int ldy);
/* 1 when one of the N rows of base weight w's linear has an adapter on w. */
int fy__lora_rows_touch(fy_model *m, int N, size_t w);

/* ---- layer.c: linear layers, SwiGLU, whole-sequence attention ---- */

/* y[N, out] (=|+= by beta) x[N, in] @ W^T for the parameter at offset w
 * (W stored [out, in]); in a batch step (m->dq.rows) the row-invariant
 * kernels, reading the Q8_0 copy where there is one. */
void fy__linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx, size_t w, fy_ref y, int ldy,
                float beta);
/* dx[N, in] (=|+= by beta) dy[N, out] @ W. */
void fy__linear_dx(fy_model *m, int N, int in, int out, fy_ref dy, int lddy, size_t w, fy_ref dx, int lddx,
                   float beta);
/* dW[out, in] += dy^T @ x; with LoRA adapters on, the base is frozen:
 * no dW, only the adapter's gradients (when w has one). fy__linear and
 * fy__linear_dx add the adapter's share of y and dx. */
void fy__linear_dw(fy_model *m, int N, int in, int out, fy_ref dy, int lddy, fy_ref x, int ldx, size_t w);
/* y (=|+= by beta) down(silu(gate x) * up x), keeping g, u, h for backward. */
void fy__swiglu_forward(fy_model *m, int N, int d, int F, fy_ref x, size_t wg, size_t wu, size_t wd, fy_ref g,
                        fy_ref u, fy_ref h, fy_ref y, float beta);
/* dy -> dx (=|+= by beta_dx), accumulating the three weight grads. */
void fy__swiglu_backward(fy_model *m, int N, int d, int F, fy_ref x, size_t wg, size_t wu, size_t wd,
                         fy_ref g, fy_ref u, fy_ref h, fy_ref dy, fy_ref dx, float beta_dx, fy_ref dg,
                         fy_ref du, fy_ref dh);
/* Attention half of layer li over all B x T positions: x_in -> x_mid. */
void fy__attn_forward(fy_model *m, int li);
/* dres holds d(loss)/d(x_mid) on entry and d(loss)/d(x_in) on return. */
void fy__attn_backward(fy_model *m, int li, fy_ref dres);

/* ---- ffn.c: the FFN half of a layer, dense or MoE ---- */

/* x_mid -> ln2 -> dense or MoE -> x_out on the current workspace. balance
 * may be NULL (no balance loss computed); need_grad also counts the expert
 * loads for the bias update. */
int fy__ffn_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err);
/* dres holds d(loss)/d(x_out) on entry and d(loss)/d(x_mid) on return. */
int fy__ffn_backward(fy_model *m, int li, fy_ref dres, fy_err *err);

/* ---- moe_ep.c: expert parallel ---- */

/* Rows per expert slot the workspace holds: all ranks' rows may land on
 * one owner. */
static inline int fy__ep_cap(const fy_model *m) { return m->ep.size > 1 ? m->ep.size : 1; }
/* After routing layer li: tells the owners how many rows of each expert
 * they get from this rank; fills a->ep_rc and a->ep_rows. */
int fy__ep_counts(fy_model *m, int li, fy_err *err);
/* This rank's expert-sorted rows (N*K of width w, src) to the owners'
 * expert-major rows (a->ep_rows, dst). */
int fy__ep_dispatch(fy_model *m, int li, int w, fy_ref src, fy_ref dst, fy_err *err);
/* The way back: the owner's rows (src) to each source rank's sorted rows. */
int fy__ep_combine(fy_model *m, int li, int w, fy_ref src, fy_ref dst, fy_err *err);
/* LoRA dropout: the dropout keys of the rows this rank's experts get
 * (a->ep_keys, expert-major as the rows): each source rank sends its
 * rows' row0 + token index (fy_model_lora_dropout_key). */
int fy__ep_keys(fy_model *m, int li, fy_err *err);
/* Offset (rows) of own expert el in the expert-major rows, and its rows. */
int fy__ep_expert_rows(const fy_model *m, int li, int el, int *n);

#endif
