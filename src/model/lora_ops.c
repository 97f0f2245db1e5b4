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
 * stored. Besides that op, only gemm.
 *
 * Unmerged adapters in a batch step (serving, the end of this file) take
 * the batch-invariant kernels instead: gather, linear_rows, scatter_add. */
#include "core/rng.h"
#include "model/lora.h"
#include "model/model_impl.h"

/* The adapter of base weight w in ad[0..n) (sorted by w), or NULL. */
static const fy_lora_adapter *find(const fy_lora_adapter *ad, int n, size_t w) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (ad[mid].w < w) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && ad[lo].w == w ? &ad[lo] : NULL;
}

const fy_lora_adapter *fy__lora_find(const fy_model *m, size_t w) {
    return m->lora ? find(m->lora->ad, m->lora->n_ad, w) : NULL;
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

/* ---- unmerged adapters in a batch step (model/lora.h) ---- */

/* Which step row each of a batch-step linear's N rows is: NULL when they
 * are the step's rows in order (attention, dense MLPs, shared experts), or
 * a routed expert's rows, the tokens ffn.c grouped for it (its block of
 * h_perm; a batch step has every expert: no expert parallelism). A count
 * that does not fit marks the step bad rather than guess. */
static const int *step_rows(fy_model *m, fy_lora_rows *R, const fy_lora_adapter *a, int N) {
    if (a->expert < 0) {
        if (N != R->n) R->bad = 1;
        return NULL;
    }
    const fy_layer_acts *la = &m->layer_acts[a->layer];
    if (!la->counts || a->expert >= m->cfg.n_routed_experts || la->counts[a->expert] != N) {
        R->bad = 1;
        return NULL;
    }
    return la->h_perm + la->offs[a->expert];
}

int fy__lora_rows_touch(fy_model *m, int N, size_t w) {
    fy_lora_rows *R = m->ws->lora_rows;
    for (int k = 0; R && k < R->n_set; k++) {
        const fy_lora_adapter *a = find(R->set[k]->ad, R->set[k]->n_ad, w);
        const int *rows = a ? step_rows(m, R, a, N) : NULL;
        for (int i = 0; a && !R->bad && i < N; i++)
            if (R->row[rows ? rows[i] : i] == R->set[k]) return 1;
    }
    return 0;
}

/* Adapter k's rows among a linear's N rows (step_rows' rows: NULL or a
 * routed expert's), as device indices in *idx: the step's list, uploaded
 * once a step, or the expert's, uploaded when the expert changes (its
 * gate, up and down share it). Returns their count. */
static int adapter_rows(fy_model *m, fy_lora_rows *R, int k, const fy_lora_adapter *a, const int *rows, int N,
                        fy_ref *idx) {
    size_t n_rows = (size_t)R->n;
    if (!rows) {
        *idx = fy_add(R->idx, (size_t)k * n_rows);
        return R->n_all[k];
    }
    *idx = fy_add(R->idx, ((size_t)R->n_set + k) * n_rows);
    if (R->exp_layer[k] == a->layer && R->exp_expert[k] == a->expert) return R->exp_n[k];
    int n = 0;
    for (int i = 0; i < N; i++)
        if (R->row[rows[i]] == R->set[k]) R->hidx[n++] = i;
    OPS->upload(m->be, *idx, R->hidx, (size_t)n);
    R->exp_layer[k] = a->layer, R->exp_expert[k] = a->expert, R->exp_n[k] = n;
    return n;
}

/* Each adapter's rows are gathered and scattered back, so every row sees
 * the same ops whichever rows share its adapter or its batch: y_row +=
 * s * d_row with d = (x A^T) B^T from linear_rows (row-invariant). When the
 * adapter has all N rows, linear_rows reads x in place: the gather would
 * copy the same values. */
void fy__lora_rows_linear(fy_model *m, int N, fy_ref x, int ldx, size_t w, fy_ref y, int ldy) {
    fy_lora_rows *R = m->ws->lora_rows;
    for (int k = 0; k < R->n_set && !R->bad; k++) {
        const fy_lora_unmerged *u = R->set[k];
        const fy_lora_adapter *a = find(u->ad, u->n_ad, w);
        if (!a) continue;
        const int *rows = step_rows(m, R, a, N);
        fy_ref idx, xa = x;
        int n = R->bad ? 0 : adapter_rows(m, R, k, a, rows, N, &idx), r = u->cfg.rank, lda = ldx;
        if (!n) continue;
        if (n < N) {
            OPS->gather_rows(m->be, n, a->in, x, ldx, idx, FY_NULL_REF, R->xg, a->in);
            xa = R->xg, lda = a->in;
        }
        fy_buf *p = (fy_buf *)&u->params; /* read only */
        OPS->linear_rows(m->be, n, a->in, r, xa, lda, fy_at(p, a->a), a->in, R->u, r, 0);
        OPS->linear_rows(m->be, n, r, a->out, R->u, r, fy_at(p, a->b), r, R->d, a->out, 0);
        OPS->scatter_add_rows(m->be, n, a->out, R->d, a->out, idx, fy_add(R->sv, (size_t)k * R->n), y, ldy);
    }
}
