/* The whole-sequence backward: walks the MTP modules and the layers in
 * reverse with one residual-gradient buffer (dres) that every sub-block adds
 * into, exactly like the forward adds into the residual, and hands the
 * gradients to the bucketing callback as they become final. */
#include "model/model_impl.h"

/* dres holds d(loss)/d(x_out) of layer li on entry, d(loss)/d(x_in) on return. */
static int layer_backward(fy_model *m, int li, fy_ref dres, fy_err *err) {
    if (fy__ffn_backward(m, li, dres, err)) return -1;
    fy__attn_backward(m, li, dres);
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
    /* A frozen base (LoRA) has no gradients to hand on: the caller reduces
     * the adapter block after the backward. */
    if (!m->grad_ready || hi <= lo || m->lora) return 0;
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "backward");
    int f = *first;
    *first = 0;
    return m->grad_ready(m->grad_ready_ctx, lo, hi, f, err);
}

/* A layer's two ranges: its dense params and its routed experts. */
static int layer_ready(fy_model *m, int li, int *first, fy_err *err) {
    const fy_layer_offs *W = &BT(m)->layer[li];
    return grad_ready(m, W->span_lo, W->span_hi, first, err) || grad_ready(m, W->xspan_lo, W->xspan_hi, first, err);
}

int fy_model_backward(fy_model *m, fy_err *err) {
    const fy_config *c = &m->cfg;
    if (!m->has_grad_heads) return fy_fail(err, "backward needs a forward with need_grad first");
    model_ws *ws = m->ws;
    scratch *s = &ws->s;
    int N = m->B * m->T, d = c->hidden_size, L = c->num_hidden_layers, D = c->num_nextn_predict_layers;
    fy_ref h = L > 0 ? m->layer_acts[L - 1].x_out : ws->x_emb;
    int first = 1;

    OPS->rmsnorm_bwd(m->be, N, d, h, d, PW(m, BT(m)->final_norm), ws->rstd_head, ws->dhead_in, d,
                     ws->dres, d, 0, GN(m, BT(m)->final_norm));
    for (int k = D; k >= 1; k--) {
        int li = L + k - 1;
        const fy_layer_offs *W = &BT(m)->layer[li];
        OPS->rmsnorm_bwd(m->be, N, d, m->layer_acts[li].x_out, d, PW(m, W->head_norm),
                         ws->mtp_rstd_head[k - 1], ws->mtp_dhead_in[k - 1], d, ws->dtmp, d, 0,
                         GN(m, W->head_norm));
        if (layer_backward(m, li, ws->dtmp, err)) return -1;
        fy__linear_dx(m, N, 2 * d, d, ws->dtmp, d, W->eh_proj, ws->dcat, 2 * d, 0);
        fy__linear_dw(m, N, 2 * d, d, ws->dtmp, d, ws->mtp_cat[k - 1], 2 * d, W->eh_proj);
        OPS->rmsnorm_bwd(m->be, N, d, ws->mtp_emb[k - 1], d, PW(m, W->enorm), ws->mtp_rstd_e[k - 1],
                         ws->dcat, 2 * d, s->dln, d, 0, GN(m, W->enorm));
        if (!m->lora) /* a frozen base: no embedding gradient */
            OPS->scatter_add_rows(m->be, N, d, s->dln, d, ws->mtp_tok[k - 1], FY_NULL_REF,
                                  GW(m, BT(m)->embed), d);
        OPS->rmsnorm_bwd(m->be, N, d, h, d, PW(m, W->hnorm), ws->mtp_rstd_h[k - 1],
                         fy_add(ws->dcat, d), 2 * d, ws->dres, d, 1, GN(m, W->hnorm));
    }
    /* Heads, final norm and MTP modules (after the last layer: L >= 1) are
     * done: the dense params after the last layer, the MTP modules' experts
     * (the end of the expert region). */
    if (grad_ready(m, BT(m)->layer[L - 1].span_hi, BT(m)->n_dense, &first, err) ||
        grad_ready(m, BT(m)->layer[L - 1].xspan_hi, BT(m)->n_params, &first, err))
        return -1;
    for (int li = L - 1; li >= 0; li--)
        if (layer_backward(m, li, ws->dres, err) || layer_ready(m, li, &first, err)) return -1;
    if (!m->lora)
        OPS->scatter_add_rows(m->be, N, d, ws->dres, d, ws->tok_in, FY_NULL_REF, GW(m, BT(m)->embed), d);
    if (grad_ready(m, 0, BT(m)->layer[0].span_lo, &first, err)) return -1;
    m->has_grad_heads = 0;
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "backward");
    return 0;
}

