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
} model_ws;

int fy__reserve(fy_model *m, int B, int T, fy_err *err);
/* y[N, out] (=|+= by beta) x[N, in] @ W^T for the parameter at offset w. */
void fy__linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx, size_t w, fy_ref y, int ldy,
                float beta);
/* FFN half of layer li on the current workspace: x_mid -> ln2 -> dense or
 * MoE -> x_out. balance may be NULL (no balance loss computed). */
int fy__ffn_forward(fy_model *m, int li, int need_grad, double *balance, fy_err *err);

#endif
