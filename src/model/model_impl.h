/* Private to src/model: the activation workspace and the pieces of the
 * forward that the latent-KV decode path (decode.c) reuses. */
#ifndef FY_MODEL_IMPL_H
#define FY_MODEL_IMPL_H

#include "model/model.h"

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
} model_ws;

int fy__reserve(fy_model *m, int B, int T, fy_err *err);
/* y[N, out] (=|+= by beta) x[N, in] @ W^T for the parameter at offset w. */
void fy__linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx, size_t w, fy_ref y, int ldy,
                float beta);
/* FFN half of layer li on the current workspace: x_mid -> ln2 -> dense or
 * MoE -> x_out. balance may be NULL (no balance loss computed). */
int fy__ffn_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err);

/* Expert parallel (moe_ep.c). Rows per expert slot the workspace holds:
 * all ranks' rows may land on one owner. */
static inline int fy__ep_cap(const fy_model *m) { return m->ep.size > 1 ? m->ep.size : 1; }
/* After routing layer li: tells the owners how many rows of each expert
 * they get from this rank; fills a->ep_rc and a->ep_rows. */
int fy__ep_counts(fy_model *m, int li, fy_err *err);
/* This rank's expert-sorted rows (N*K of width w, src) to the owners'
 * expert-major rows (a->ep_rows, dst). */
int fy__ep_dispatch(fy_model *m, int li, int w, fy_ref src, fy_ref dst, fy_err *err);
/* The way back: the owner's rows (src) to each source rank's sorted rows. */
int fy__ep_combine(fy_model *m, int li, int w, fy_ref src, fy_ref dst, fy_err *err);
/* Offset (rows) of own expert el in the expert-major rows, and its rows. */
int fy__ep_expert_rows(const fy_model *m, int li, int el, int *n);

#endif
