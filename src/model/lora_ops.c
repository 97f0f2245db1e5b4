/* The adapters' arithmetic inside the passes (model/lora.h): for an adapted
 * linear y = W x + s B (A x) with s = alpha / r,
 *
 *   forward   u = x A^T [N, r];      y += s u B^T
 *   dx        g = s dy B [N, r];     dx += g A
 *   weights   dB += s dy^T u;        dA += g^T x   (u and g recomputed)
 *
 * u and g are recomputed in the backward rather than saved: they cost
 * N*r*(in + out) multiply-adds, small next to W's, and saving them would
 * take a slot per adapted linear per layer. Dropout (p > 0) replaces x by
 * drop(x) = x * mask / (1 - p) throughout, and dx's adapter share by
 * drop(g A); the mask is recomputed from its key (the dropout op), never
 * stored. Besides that op, only gemm. */
#include "core/rng.h"
#include "model/lora.h"
#include "model/model_impl.h"

const fy_lora_adapter *fy__lora_find(const fy_model *m, size_t w) {
    const fy_lora *L = m->lora;
    int lo = 0, hi = L ? L->n_ad : 0;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (L->ad[mid].w < w) lo = mid + 1;
        else hi = mid;
    }
    return L && lo < L->n_ad && L->ad[lo].w == w ? &L->ad[lo] : NULL;
}

static fy_ref LA(fy_model *m, const fy_lora_adapter *a) { return fy_at(&m->params, a->a); }
static fy_ref LB(fy_model *m, const fy_lora_adapter *a) { return fy_at(&m->params, a->b); }

/* Dropout runs in training passes only (a forward with need_grad and its
 * backward), as PEFT's in train mode: evaluation sees the whole input. */
static int dropping(const fy_model *m) { return m->lora->cfg.dropout > 0 && m->has_grad_heads; }

/* dst (=|+=) drop(src), [N, in]: the mask of (seed, step, adapter, token, column). */
static void drop(fy_model *m, const fy_lora_adapter *a, int N, fy_ref src, int lds, fy_ref dst, int ldd, int acc) {
    const fy_lora *L = m->lora;
    uint64_t seed = fy_rng_u64(L->seed, 0x6c6f7261 /* "lora" */, (uint64_t)L->step);
    OPS->dropout(m->be, N, a->in, L->cfg.dropout, seed, (uint64_t)a->id, L->row0, L->keys, src, lds, dst, ldd, acc);
}

/* The adapter's input: drop(x) in the scratch, or x itself without dropout. */
static fy_ref input(fy_model *m, const fy_lora_adapter *a, int N, fy_ref x, int ldx, int *ld) {
    *ld = ldx;
    if (!dropping(m)) return x;
    drop(m, a, N, x, ldx, m->ws->lora_x, a->in, 0);
    *ld = a->in;
    return m->ws->lora_x;
}

/* u = x A^T */
static void down(fy_model *m, const fy_lora_adapter *a, int N, fy_ref x, int ldx, fy_ref u) {
    int r = m->lora->cfg.rank;
    OPS->gemm(m->be, 0, 1, N, r, a->in, 1.0f, x, ldx, LA(m, a), a->in, 0.0f, u, r);
}

/* g = s dy B */
static void grad_mid(fy_model *m, const fy_lora_adapter *a, int N, fy_ref dy, int lddy, fy_ref g) {
    int r = m->lora->cfg.rank;
    OPS->gemm(m->be, 0, 0, N, r, a->out, m->lora->scale, dy, lddy, LB(m, a), r, 0.0f, g, r);
}

void fy__lora_forward(fy_model *m, const fy_lora_adapter *a, int N, fy_ref x, int ldx, fy_ref y, int ldy) {
    if (N == 0) return;
    fy_ref u = m->ws->lora_u;
    int ld, r = m->lora->cfg.rank;
    fy_ref xd = input(m, a, N, x, ldx, &ld);
    down(m, a, N, xd, ld, u);
    OPS->gemm(m->be, 0, 1, N, a->out, r, m->lora->scale, u, r, LB(m, a), r, 1.0f, y, ldy);
}

void fy__lora_dx(fy_model *m, const fy_lora_adapter *a, int N, fy_ref dy, int lddy, fy_ref dx, int lddx) {
    if (N == 0) return;
    fy_ref g = m->ws->lora_g;
    int r = m->lora->cfg.rank;
    grad_mid(m, a, N, dy, lddy, g);
    if (!dropping(m)) {
        OPS->gemm(m->be, 0, 0, N, a->in, r, 1.0f, g, r, LA(m, a), a->in, 1.0f, dx, lddx);
        return;
    }
    /* the mask's backward is the same mask: dx += drop(g A) */
    OPS->gemm(m->be, 0, 0, N, a->in, r, 1.0f, g, r, LA(m, a), a->in, 0.0f, m->ws->lora_x, a->in);
    drop(m, a, N, m->ws->lora_x, a->in, dx, lddx, 1);
}

void fy__lora_dw(fy_model *m, const fy_lora_adapter *a, int N, fy_ref dy, int lddy, fy_ref x, int ldx) {
    if (N == 0) return;
    fy_lora *L = m->lora;
    int r = L->cfg.rank, ld;
    fy_ref u = m->ws->lora_u, g = m->ws->lora_g;
    fy_ref xd = input(m, a, N, x, ldx, &ld);
    down(m, a, N, xd, ld, u);
    OPS->gemm(m->be, 1, 0, a->out, r, N, L->scale, dy, lddy, u, r, 1.0f, fy_at(&m->grads, a->b), r);
    grad_mid(m, a, N, dy, lddy, g);
    OPS->gemm(m->be, 1, 0, r, a->in, N, 1.0f, g, r, xd, ld, 1.0f, fy_at(&m->grads, a->a), a->in);
}
