/* The whole-sequence forward (docs/DESIGN.md §2): embedding, decoder layers, the
 * main head and the MTP modules, with the loss heads' backward fused in
 * when gradients are wanted. N = B*T tokens flow through the residual
 * stream as [N, d] rows; each layer saves what its backward needs. */
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

static int layer_forward(fy_model *m, int li, fy_ref x_in, int need_grad, double *balance, fy_err *err) {
    m->layer_acts[li].x_in = x_in;
    fy__attn_forward(m, li);
    return fy__ffn_forward(m, li, need_grad, balance, err);
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
    fy__linear(m, N, d, V, head_in, d, BT(m)->head, logits, V, 0);
    if (!labels.buf) return 0;
    double sum = OPS->xent_fwdbwd(m->be, N, V, logits, labels, FY_IGNORE_INDEX, grad_scale,
                                  m->ws->losses, dlogits);
    if (grad_scale > 0) {
        fy__linear_dx(m, N, d, V, dlogits, V, BT(m)->head, dhead_in, d, 0);
        fy__linear_dw(m, N, d, V, dlogits, V, head_in, d, BT(m)->head);
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

/* MTP module k (1-based) on the main model's last hidden state h: its
 * layer and head, adding its loss to loss->mtp and loss->total. tk and lb
 * are host scratch of B*T tokens for its shifted inputs and labels. */
static int mtp_forward(fy_model *m, int k, const int32_t *inputs, const int32_t *labels, fy_ref h, int32_t *tk,
                       int32_t *lb, int need_grad, double *balance, fy_loss *loss, fy_err *err) {
    const fy_config *c = &m->cfg;
    model_ws *ws = m->ws;
    int B = m->B, T = m->T, N = B * T, d = c->hidden_size, D = c->num_nextn_predict_layers;
    /* Module k at position t sees token t+k and predicts t+k+1 (the
     * label at t+k); past the end it sees token 0 and has no target.
     * Causal attention keeps those tail positions from leaking. */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int in = t + k < T;
            tk[b * T + t] = in ? inputs[b * T + t + k] : 0;
            lb[b * T + t] = in ? labels[b * T + t + k] : FY_IGNORE_INDEX;
        }
    int nk = count_valid(lb, N), li = c->num_hidden_layers + k - 1;
    const fy_layer_offs *W = &BT(m)->layer[li];
    OPS->upload(m->be, ws->mtp_tok[k - 1], tk, N);
    OPS->upload(m->be, ws->mtp_lab[k - 1], lb, N);
    OPS->gather_rows(m->be, N, d, PW(m, BT(m)->embed), d, ws->mtp_tok[k - 1], FY_NULL_REF, ws->mtp_emb[k - 1], d);
    /* h' = W_eh [RMSNorm_e(emb) ; RMSNorm_h(h)]: both norms write
     * straight into the halves of the concatenation. */
    OPS->rmsnorm_fwd(m->be, N, d, ws->mtp_emb[k - 1], d, PW(m, W->enorm), c->rms_norm_eps, ws->mtp_cat[k - 1],
                     2 * d, ws->mtp_rstd_e[k - 1]);
    OPS->rmsnorm_fwd(m->be, N, d, h, d, PW(m, W->hnorm), c->rms_norm_eps, fy_add(ws->mtp_cat[k - 1], d), 2 * d,
                     ws->mtp_rstd_h[k - 1]);
    fy__linear(m, N, 2 * d, d, ws->mtp_cat[k - 1], 2 * d, W->eh_proj, ws->mtp_x0[k - 1], d, 0);
    if (layer_forward(m, li, ws->mtp_x0[k - 1], need_grad, balance, err)) return -1;
    ws->mtp_scale[k - 1] = need_grad && nk ? c->mtp_loss_weight / D / nk : 0.0f;
    /* dlogits doubles as this head's logits: the main head is done with it. */
    double sk = head_forward(m, m->layer_acts[li].x_out, W->head_norm, ws->mtp_head_in[k - 1],
                             ws->mtp_rstd_head[k - 1], ws->dlogits, ws->mtp_lab[k - 1], ws->mtp_scale[k - 1],
                             ws->dlogits, ws->mtp_dhead_in[k - 1]);
    loss->mtp[k - 1] = nk ? sk / nk : 0.0;
    loss->total += (double)c->mtp_loss_weight / D * loss->mtp[k - 1];
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
    model_ws *ws = m->ws;
    m->has_grad_heads = need_grad;

    OPS->upload(m->be, ws->tok_in, inputs, N);
    OPS->gather_rows(m->be, N, d, PW(m, BT(m)->embed), d, ws->tok_in, FY_NULL_REF, ws->x_emb, d);
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
    double sum = head_forward(m, h, BT(m)->final_norm, ws->head_in, ws->rstd_head, m->logits, lab,
                              ws->main_scale, ws->dlogits, ws->dhead_in);
    loss->n_main = n_main;
    loss->main = n_main ? sum / n_main : 0.0;
    loss->total = loss->main;

    if (labels && D > 0) {
        int32_t *tk = malloc((size_t)N * sizeof *tk), *lb = malloc((size_t)N * sizeof *lb);
        int rc = !tk || !lb ? fy_fail(err, "out of memory") : 0;
        for (int k = 1; k <= D && !rc; k++)
            rc = mtp_forward(m, k, inputs, labels, h, tk, lb, need_grad, &balance, loss, err);
        free(tk);
        free(lb);
        if (rc) return -1;
    }
    loss->balance = balance;
    loss->total += balance;
    if (fy_be_sync(m->be, err)) return fy_wrap(err, "forward");
    return 0;
}

