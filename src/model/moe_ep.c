/* Expert parallelism for the MoE layers (docs/DESIGN.md §6): moving expert rows
 * between the ranks that route tokens and the ranks that own the experts,
 * each of which holds only its own experts' weights (params.h: a shard).
 *
 * After routing, a rank's rows are sorted by expert (ffn.c, route()), and
 * since every owner holds a contiguous range of experts, the rows bound for
 * one owner are one contiguous block: the send side of the all-to-all needs
 * no packing. The owner receives source-major blocks (source rank, then
 * expert) and reorders them expert-major (expert, then source rank) so each
 * expert is still three GEMMs over contiguous rows. The way back undoes
 * both steps. Rows are staged through host memory, which is what MPI
 * needs anyway on a device backend. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

void fy_model_expert_range(const fy_model *m, int p, int *lo, int *hi) {
    int64_t E = m->cfg.n_routed_experts, R = fy__ep_cap(m);
    *lo = (int)(E * p / R);
    *hi = (int)(E * (p + 1) / R);
}

/* m's table becomes that of expert shard rank/size, with new (zero) blocks. */
static int reshard(fy_model *m, int rank, int size, fy_err *err) {
    fy_param_table tab;
    if (fy_params_build_shard(&m->cfg, rank, size, &tab, err)) return fy_wrap(err, "expert parallel");
    fy_buf p = {0}, g = {0}, b = {0};
    if (fy_be_alloc(m->be, &p, tab.n_params, err) || fy_be_alloc(m->be, &g, tab.n_params, err) ||
        fy_be_alloc(m->be, &b, tab.n_buffers ? tab.n_buffers : 1, err)) {
        if (p.handle) fy_be_free(m->be, &p);
        if (g.handle) fy_be_free(m->be, &g);
        fy_params_free(&tab);
        return fy_wrap(err, "expert parallel: allocating the %zu parameters of rank %d", tab.n_params, rank);
    }
    fy_be_free(m->be, &m->params);
    fy_be_free(m->be, &m->grads);
    fy_be_free(m->be, &m->buffers);
    fy_params_free(&m->tab);
    m->tab = tab;
    m->params = p, m->grads = g, m->buffers = b;
    return 0;
}

int fy_model_set_expert_parallel(fy_model *m, const fy_expert_parallel *ep, fy_err *err) {
    int size = ep ? ep->size : 1;
    if (size > 1) {
        if (!ep->alltoallv) return fy_fail(err, "expert parallel: no all-to-all given");
        if (ep->rank < 0 || ep->rank >= size)
            return fy_fail(err, "expert parallel: rank %d of %d", ep->rank, size);
        if (m->cfg.n_routed_experts < size)
            return fy_fail(err, "expert parallel over %d ranks needs at least %d routed experts (the model has %d)",
                           size, size, m->cfg.n_routed_experts);
    }
    if (m->dq.n) return fy_fail(err, "expert parallel: the model holds decode weights (decoding needs every expert)");
    if (m->lora) return fy_fail(err, "expert parallel with LoRA adapters is not supported yet");
    const int rank = size > 1 ? ep->rank : 0;
    const int64_t E = m->cfg.n_routed_experts;
    /* A table that is not this rank's already (the whole one for size 1) is
     * replaced, with its weights. */
    if ((m->tab.exp_lo != (int)(E * rank / size) || m->tab.exp_hi != (int)(E * (rank + 1) / size)) &&
        reshard(m, rank, size, err))
        return -1;
    if (size > 1) m->ep = *ep;
    else memset(&m->ep, 0, sizeof m->ep), m->ep.size = 1;
    /* The workspace is sized by the rank count: plan it again. */
    m->B = m->T = 0;
    return 0;
}

/* A layer's row counts from its expert table, in floats of width w. */
static size_t rows_bytes(int rows, int w) { return (size_t)rows * w * sizeof(float); }

int fy__ep_counts(fy_model *m, int li, fy_err *err) {
    fy_layer_acts *a = &m->layer_acts[li];
    model_ws *ws = m->ws;
    int R = m->ep.size, lo, hi;
    size_t *sc = ws->ep_cnt, *sd = sc + R, *rc = sd + R, *rd = rc + R;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    int own = hi - lo;
    for (int p = 0; p < R; p++) {
        int plo, phi;
        fy_model_expert_range(m, p, &plo, &phi);
        sc[p] = (size_t)(phi - plo) * sizeof(int);
        sd[p] = (size_t)plo * sizeof(int);
        rc[p] = (size_t)own * sizeof(int);
        rd[p] = (size_t)p * own * sizeof(int);
    }
    if (m->ep.alltoallv(m->ep.ctx, a->counts, sc, sd, a->ep_rc, rc, rd, err))
        return fy_wrap(err, "layer %d: exchanging expert row counts", li);
    long total = 0;
    for (int i = 0; i < R * own; i++) {
        if (a->ep_rc[i] < 0) return fy_fail(err, "layer %d: a rank sent %d rows for an expert", li, a->ep_rc[i]);
        total += a->ep_rc[i];
    }
    /* The workspace holds ranks x N x K rows: more means a rank's counts lie. */
    if (total > (long)R * m->B * m->T * m->cfg.num_experts_per_tok)
        return fy_fail(err, "layer %d: the experts of rank %d got %ld rows, more than the ranks routed", li,
                       m->ep.rank, total);
    a->ep_rows = (int)total;
    return 0;
}

int fy__ep_expert_rows(const fy_model *m, int li, int el, int *n) {
    const fy_layer_acts *a = &m->layer_acts[li];
    int R = m->ep.size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    int own = hi - lo, off = 0;
    for (int e = 0; e < el; e++)
        for (int s = 0; s < R; s++) off += a->ep_rc[s * own + e];
    *n = 0;
    for (int s = 0; s < R; s++) *n += a->ep_rc[s * own + el];
    return off;
}

/* Copies rows between the source-major and the expert-major order of the
 * rows this rank's experts got (to_expert: source-major -> expert-major). */
static void reorder(const fy_model *m, const fy_layer_acts *a, int w, const float *from, float *to,
                    int to_expert) {
    int R = m->ep.size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    int own = hi - lo;
    size_t src_off = 0; /* source-major position of block (s, e) */
    for (int s = 0; s < R; s++)
        for (int e = 0; e < own; e++) {
            int n = a->ep_rc[s * own + e];
            size_t exp_off = 0; /* expert-major position of the same block */
            for (int e2 = 0; e2 < e; e2++)
                for (int s2 = 0; s2 < R; s2++) exp_off += a->ep_rc[s2 * own + e2];
            for (int s2 = 0; s2 < s; s2++) exp_off += a->ep_rc[s2 * own + e];
            size_t bytes = rows_bytes(n, w);
            if (to_expert) memcpy(to + exp_off * w, from + src_off * w, bytes);
            else memcpy(to + src_off * w, from + exp_off * w, bytes);
            src_off += n;
        }
}

/* The byte counts of the all-to-all of rows: what this rank sends to p (its
 * rows of p's experts) and what it gets from p (p's rows of its experts). */
static void row_counts(const fy_model *m, const fy_layer_acts *a, int w, size_t *sc, size_t *sd, size_t *rc,
                       size_t *rd) {
    int R = m->ep.size, lo, hi;
    fy_model_expert_range(m, m->ep.rank, &lo, &hi);
    int own = hi - lo;
    size_t roff = 0;
    for (int p = 0; p < R; p++) {
        int plo, phi, got = 0;
        fy_model_expert_range(m, p, &plo, &phi);
        sc[p] = rows_bytes(a->offs[phi] - a->offs[plo], w);
        sd[p] = rows_bytes(a->offs[plo], w);
        for (int e = 0; e < own; e++) got += a->ep_rc[p * own + e];
        rc[p] = rows_bytes(got, w);
        rd[p] = roff;
        roff += rc[p];
    }
}

int fy__ep_dispatch(fy_model *m, int li, int w, fy_ref src, fy_ref dst, fy_err *err) {
    fy_layer_acts *a = &m->layer_acts[li];
    model_ws *ws = m->ws;
    fy_backend *be = m->be;
    int R = m->ep.size, nk = m->B * m->T * m->cfg.num_experts_per_tok;
    size_t *sc = ws->ep_cnt, *sd = sc + R, *rc = sd + R, *rd = rc + R;
    be->ops->download(be, ws->ep_send, src, (size_t)nk * w);
    if (fy_be_sync(be, err)) return fy_wrap(err, "layer %d: expert rows to the host", li);
    row_counts(m, a, w, sc, sd, rc, rd);
    if (m->ep.alltoallv(m->ep.ctx, ws->ep_send, sc, sd, ws->ep_recv, rc, rd, err))
        return fy_wrap(err, "layer %d: sending rows to the expert owners", li);
    reorder(m, a, w, ws->ep_recv, ws->ep_send, 1);
    be->ops->upload(be, dst, ws->ep_send, (size_t)a->ep_rows * w);
    return 0;
}

int fy__ep_keys(fy_model *m, int li, fy_err *err) {
    fy_layer_acts *a = &m->layer_acts[li];
    model_ws *ws = m->ws;
    int R = m->ep.size, nk = m->B * m->T * m->cfg.num_experts_per_tok;
    size_t *sc = ws->ep_cnt, *sd = sc + R, *rc = sd + R, *rd = rc + R;
    int32_t *send = (int32_t *)ws->ep_send;
    for (int i = 0; i < nk; i++) {
        int64_t k = m->lora->row0 + a->h_perm[i];
        if (k < 0 || k > INT32_MAX) return fy_fail(err, "layer %d: dropout key %lld out of range", li, (long long)k);
        send[i] = (int32_t)k;
    }
    /* Keys are 4-byte items, as floats are: the rows' counts and order of width 1. */
    row_counts(m, a, 1, sc, sd, rc, rd);
    if (m->ep.alltoallv(m->ep.ctx, ws->ep_send, sc, sd, ws->ep_recv, rc, rd, err))
        return fy_wrap(err, "layer %d: sending dropout keys to the expert owners", li);
    reorder(m, a, 1, ws->ep_recv, (float *)a->ep_keys, 1);
    return 0;
}

int fy__ep_combine(fy_model *m, int li, int w, fy_ref src, fy_ref dst, fy_err *err) {
    fy_layer_acts *a = &m->layer_acts[li];
    model_ws *ws = m->ws;
    fy_backend *be = m->be;
    int R = m->ep.size, nk = m->B * m->T * m->cfg.num_experts_per_tok;
    size_t *sc = ws->ep_cnt, *sd = sc + R, *rc = sd + R, *rd = rc + R;
    be->ops->download(be, ws->ep_recv, src, (size_t)a->ep_rows * w);
    if (fy_be_sync(be, err)) return fy_wrap(err, "layer %d: expert outputs to the host", li);
    reorder(m, a, w, ws->ep_recv, ws->ep_send, 0);
    row_counts(m, a, w, sc, sd, rc, rd);
    /* The reverse all-to-all: send what was received, receive what was sent. */
    if (m->ep.alltoallv(m->ep.ctx, ws->ep_send, rc, rd, ws->ep_recv, sc, sd, err))
        return fy_wrap(err, "layer %d: returning expert rows to their ranks", li);
    be->ops->upload(be, dst, ws->ep_recv, (size_t)nk * w);
    return 0;
}
