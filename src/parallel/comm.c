/* The communicator's shared half (comm.h): joining and leaving, the
 * one-rank cases, the packing and tree sums of the reductions, and the
 * streamed reductions' bookkeeping. Bytes travel only through the transport
 * (comm_impl.h): comm_mpi.c, or comm_single.c in a build without MPI. */
#include "parallel/comm_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int fy_comm_lost_peer(const fy_comm *c) { return c && c->lost; }

int fy_comm_init(int join, double timeout_s, fy_comm **out, fy_err *err) {
    fy_comm *c = calloc(1, sizeof *c);
    if (!c) return fy_fail(err, "out of memory");
    c->size = 1;
    fy_comm_set_timeout(c, timeout_s);
    if (join && fy_comm_net_join(c, err)) {
        free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void fy_comm_finalize(fy_comm *c) {
    if (!c) return;
    if (c->net) c->net->leave(c);
    free(c);
}

void fy_comm_abort(fy_comm *c, int code) {
    if (c && c->net) c->net->kill(c, code);
    exit(code);
}

int fy_comm_rank(const fy_comm *c) { return c->rank; }
int fy_comm_size(const fy_comm *c) { return c->size; }
uint64_t fy_comm_bytes_sent(const fy_comm *c) { return c->bytes_sent; }
void fy_comm_set_timeout(fy_comm *c, double timeout_s) {
    c->timeout_s = timeout_s > 0 ? timeout_s : FY_COMM_TIMEOUT_DEFAULT_S;
}

/* ---- the fixed summation order ------------------------------------------- */

size_t fy_tree_split(size_t n) {
    size_t p = 1;
    while (p * 2 < n) p *= 2;
    return p;
}

/* out = tree sum of parts[lo..hi). */
static void tree_sum(const float *const *parts, int lo, int hi, size_t n, float *out, float *tmp) {
    if (hi - lo == 1) {
        if (out != parts[lo]) memcpy(out, parts[lo], n * sizeof *out);
        return;
    }
    int mid = lo + (int)fy_tree_split((size_t)(hi - lo));
    tree_sum(parts, lo, mid, n, out, tmp);
    if (hi - mid == 1) {
        const float *r = parts[mid];
        for (size_t i = 0; i < n; i++) out[i] += r[i];
        return;
    }
    /* The right subtree needs its own scratch: tmp holds it, tmp + n is
     * scratch for its right subtrees in turn (depth <= log2 parts). */
    tree_sum(parts, mid, hi, n, tmp, tmp + n);
    for (size_t i = 0; i < n; i++) out[i] += tmp[i];
}

void fy_tree_sum(const float *const *parts, int n_parts, size_t n, float *out) {
    if (n_parts <= 0) {
        memset(out, 0, n * sizeof *out);
        return;
    }
    if (n_parts <= 2) {
        tree_sum(parts, 0, n_parts, n, out, NULL);
        return;
    }
    int depth = 0;
    while ((1 << depth) < n_parts) depth++;
    /* Work in blocks so the scratch stays small. */
    enum { BLK = 4096 };
    float *tmp = malloc((size_t)depth * BLK * sizeof *tmp);
    const float **sub = malloc((size_t)n_parts * sizeof *sub);
    if (!tmp || !sub) abort(); /* a few KiB: nothing sensible to do without them */
    for (size_t b = 0; b < n; b += BLK) {
        size_t len = n - b < BLK ? n - b : BLK;
        for (int p = 0; p < n_parts; p++) sub[p] = parts[p] + b;
        tree_sum(sub, 0, n_parts, len, out + b, tmp);
    }
    free(tmp);
    free(sub);
}

/* ---- int8 block quantization --------------------------------------------- */

static size_t n_blocks(size_t n) { return (n + FY_COMM_Q8_BLOCK - 1) / FY_COMM_Q8_BLOCK; }

size_t fy_quant8_bytes(size_t n) { return n_blocks(n) * sizeof(float) + n; }

/* The scales are stored with memcpy: a message packs several ranks'
 * blocks one after another, so q need not be 4-byte aligned. */
void fy_quant8(const float *x, size_t n, void *q, float *resid) {
    char *scale = q;
    int8_t *code = (int8_t *)(scale + n_blocks(n) * sizeof(float));
    for (size_t b = 0; b * FY_COMM_Q8_BLOCK < n; b++) {
        size_t lo = b * FY_COMM_Q8_BLOCK, hi = lo + FY_COMM_Q8_BLOCK < n ? lo + FY_COMM_Q8_BLOCK : n;
        float amax = 0;
        for (size_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
        float s = amax / 127.0f;
        memcpy(scale + b * sizeof s, &s, sizeof s);
        float inv = s > 0 ? 1.0f / s : 0.0f;
        for (size_t i = lo; i < hi; i++) {
            float r = nearbyintf(x[i] * inv);
            if (r > 127) r = 127;
            if (r < -127) r = -127;
            code[i] = (int8_t)r;
            if (resid) resid[i] = x[i] - (float)code[i] * s;
        }
    }
}

void fy_dequant8(const void *q, size_t n, float *out) {
    const char *scale = q;
    const int8_t *code = (const int8_t *)(scale + n_blocks(n) * sizeof(float));
    for (size_t b = 0; b * FY_COMM_Q8_BLOCK < n; b++) {
        size_t lo = b * FY_COMM_Q8_BLOCK, hi = lo + FY_COMM_Q8_BLOCK < n ? lo + FY_COMM_Q8_BLOCK : n;
        float s;
        memcpy(&s, scale + b * sizeof s, sizeof s);
        for (size_t i = lo; i < hi; i++) out[i] = (float)code[i] * s;
    }
}

/* ---- collectives: the one-rank communicator copies, a joined job sends --- */

int fy_comm_barrier(fy_comm *c, fy_err *err) { return c->net ? c->net->barrier(c, err) : 0; }

int fy_comm_bcast(fy_comm *c, void *buf, size_t bytes, int root, fy_err *err) {
    return c->net ? c->net->bcast(c, buf, bytes, root, err) : 0;
}

int fy_comm_allgather(fy_comm *c, const void *send, size_t bytes, void *recv, fy_err *err) {
    if (c->net) return c->net->allgather(c, send, bytes, recv, err);
    memmove(recv, send, bytes);
    return 0;
}

int fy_comm_allgatherv(fy_comm *c, const void *send, void *recv, const size_t *counts, const size_t *displ,
                       fy_err *err) {
    if (c->net) return c->net->allgatherv(c, send, recv, counts, displ, FY_NET_BYTE, "all-gather", err);
    memmove((char *)recv + displ[0], send, counts[0]);
    return 0;
}

int fy_comm_alltoallv(fy_comm *c, const void *send, const size_t *scounts, const size_t *sdispl, void *recv,
                      const size_t *rcounts, const size_t *rdispl, fy_err *err) {
    if (c->net)
        return c->net->alltoallv(c, send, scounts, sdispl, recv, rcounts, rdispl, FY_NET_BYTE, "all-to-all", err);
    memmove((char *)recv + rdispl[0], (const char *)send + sdispl[0], scounts[0]);
    return 0;
}

int fy_comm_allreduce_i64(fy_comm *c, int64_t *x, size_t n, fy_err *err) {
    return c->net ? c->net->allreduce_int(c, x, n, FY_NET_SUM_I64, err) : 0;
}

int fy_comm_allreduce_max_i32(fy_comm *c, int32_t *x, size_t n, fy_err *err) {
    return c->net ? c->net->allreduce_int(c, x, n, FY_NET_MAX_I32, err) : 0;
}

int fy_comm_sum_pieces(fy_comm *c, const float *recv, size_t len, float *out, fy_err *err) {
    const float **parts = malloc((size_t)c->size * sizeof *parts);
    if (!parts) return fy_fail(err, "out of memory");
    for (int p = 0; p < c->size; p++) parts[p] = recv + (size_t)p * len;
    fy_tree_sum(parts, c->size, len, out);
    free(parts);
    return 0;
}

/* Every size > 1 communicator has joined a job: it has a transport. */
static int no_transport(const fy_comm *c, fy_err *err) {
    return fy_fail(err, "internal: a %d-rank communicator without a transport", c->size);
}

int fy_comm_reduce_scatter_f32(fy_comm *c, const float *x, float *out, const size_t *counts,
                               const size_t *displ, fy_err *err) {
    if (c->size == 1) {
        memmove(out, x + displ[0], counts[0] * sizeof *x);
        return 0;
    }
    if (!c->net) return no_transport(c, err);
    int n = c->size;
    size_t len = counts[c->rank];
    size_t *v = malloc(4 * (size_t)n * sizeof *v);
    float *recv = malloc((size_t)n * len * sizeof *recv + 1);
    if (!v || !recv) {
        free(v); free(recv);
        return fy_fail(err, "out of memory");
    }
    for (int p = 0; p < n; p++) {
        v[p] = counts[p], v[n + p] = displ[p];               /* send: shard p of x to rank p */
        v[2 * n + p] = len, v[3 * n + p] = (size_t)p * len;  /* recv: piece p of my shard */
    }
    int rc = c->net->alltoallv(c, x, v, v + n, recv, v + 2 * n, v + 3 * n, FY_NET_FLOAT, "reduce-scatter", err);
    if (!rc) rc = fy_comm_sum_pieces(c, recv, len, out, err);
    free(v);
    free(recv);
    return rc;
}

int fy_comm_reduce_scatter_q8(fy_comm *c, const float *x, float *out, const size_t *counts,
                              const size_t *displ, float *resid, fy_err *err) {
    if (c->size == 1) {
        memmove(out, x + displ[0], counts[0] * sizeof *x);
        if (resid) memset(resid + displ[0], 0, counts[0] * sizeof *resid);
        return 0;
    }
    if (!c->net) return no_transport(c, err);
    int n = c->size, me = c->rank;
    size_t len = counts[me], qlen = fy_quant8_bytes(len);
    size_t *v = calloc(4 * (size_t)n, sizeof *v);
    size_t sbytes = 0;
    for (int p = 0; p < n; p++) sbytes += fy_quant8_bytes(counts[p]);
    char *send = calloc(1, sbytes + 1), *recv = malloc((size_t)n * qlen + 1);
    float *pieces = malloc((size_t)n * len * sizeof *pieces + 1);
    int rc = -1;
    if (!v || !send || !recv || !pieces) {
        fy_fail(err, "out of memory");
        goto out;
    }
    size_t off = 0;
    for (int p = 0; p < n; p++) {
        size_t qb = fy_quant8_bytes(counts[p]);
        if (p != me) fy_quant8(x + displ[p], counts[p], send + off, resid ? resid + displ[p] : NULL);
        else if (resid) memset(resid + displ[p], 0, counts[p] * sizeof *resid);
        v[p] = p == me ? 0 : qb, v[n + p] = off;
        v[2 * n + p] = p == me ? 0 : qlen, v[3 * n + p] = (size_t)p * qlen;
        off += qb;
    }
    if (c->net->alltoallv(c, send, v, v + n, recv, v + 2 * n, v + 3 * n, FY_NET_BYTE, "reduce-scatter (int8)", err))
        goto out;
    for (int p = 0; p < n; p++) {
        if (p == me) memcpy(pieces + (size_t)p * len, x + displ[me], len * sizeof *pieces);
        else fy_dequant8(recv + (size_t)p * qlen, len, pieces + (size_t)p * len);
    }
    rc = fy_comm_sum_pieces(c, pieces, len, out, err);
out:
    free(v); free(send); free(recv); free(pieces);
    return rc;
}

/* The int8 all-gather: every rank's shard quantized into q (v: the ranks'
 * byte counts, then their offsets), then dequantized on every rank. */
static int allgather_q8(fy_comm *c, const float *shard, float *full, const size_t *counts, const size_t *displ,
                        float *resid, fy_err *err) {
    const int n = c->size, me = c->rank;
    size_t *v = malloc(2 * (size_t)n * sizeof *v);
    size_t total = 0;
    for (int p = 0; p < n; p++) total += fy_quant8_bytes(counts[p]);
    char *q = malloc(total + 1);
    if (!v || !q) {
        free(v); free(q);
        return fy_fail(err, "out of memory");
    }
    size_t off = 0;
    for (int p = 0; p < n; p++) v[p] = fy_quant8_bytes(counts[p]), v[n + p] = off, off += v[p];
    int rc = 0;
    if (n == 1) {
        fy_quant8(shard, counts[me], q, resid);
    } else {
        char *own = malloc(v[me] + 1);
        if (!own) rc = fy_fail(err, "out of memory");
        else {
            fy_quant8(shard, counts[me], own, resid);
            rc = c->net->allgatherv(c, own, q, v, v + n, FY_NET_BYTE, "all-gather (int8)", err);
        }
        free(own);
    }
    for (int p = 0; p < n && !rc; p++) fy_dequant8(q + v[n + p], counts[p], full + displ[p]);
    free(v);
    free(q);
    return rc;
}

int fy_comm_allgather_f32(fy_comm *c, const float *shard, float *full, const size_t *counts,
                          const size_t *displ, int q8, float *resid, fy_err *err) {
    if (c->size == 1 && !q8) {
        memmove(full + displ[0], shard, counts[0] * sizeof *full);
        return 0;
    }
    if (c->size > 1 && !c->net) return no_transport(c, err);
    if (!q8) return c->net->allgatherv(c, shard, full, counts, displ, FY_NET_FLOAT, "all-gather", err);
    return allgather_q8(c, shard, full, counts, displ, resid, err);
}

int fy_comm_allreduce_f32(fy_comm *c, float *x, size_t n, fy_err *err) {
    if (c->size == 1) return 0;
    int N = c->size;
    size_t *counts = malloc(2 * (size_t)N * sizeof *counts);
    if (!counts) return fy_fail(err, "out of memory");
    size_t *displ = counts + N, per = (n + N - 1) / N;
    for (int p = 0; p < N; p++) {
        displ[p] = (size_t)p * per < n ? (size_t)p * per : n;
        counts[p] = displ[p] + per < n ? per : n - displ[p];
    }
    float *mine = malloc(counts[c->rank] * sizeof *mine + 1);
    int rc = !mine ? fy_fail(err, "out of memory")
                   : fy_comm_reduce_scatter_f32(c, x, mine, counts, displ, err) ||
                         fy_comm_allgather_f32(c, mine, x, counts, displ, 0, NULL, err);
    free(mine);
    free(counts);
    return rc ? -1 : 0;
}

/* ---- the streamed reductions: what does not depend on the transport ------ */

/* The state both streamed reductions share, with recv of recv_floats
 * (NULL: out of memory). */
static fy_comm_rs *rs_new(fy_comm *c, size_t recv_floats) {
    fy_comm_rs *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->c = c;
    if (!(s->recv = malloc(recv_floats * sizeof *s->recv + 1))) {
        free(s);
        return NULL;
    }
    return s;
}

/* Hands s to the transport (several ranks only: one rank sends nothing). */
static int rs_open(fy_comm_rs *s, int progress, fy_comm_rs **out, fy_err *err) {
    fy_comm *c = s->c;
    if (c->size > 1 && (!c->net ? no_transport(c, err) : c->net->rs_open(s, progress, err))) {
        fy_comm_rs_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

int fy_comm_rs_create(fy_comm *c, const size_t *counts, const size_t *displ, int progress, fy_comm_rs **out,
                      fy_err *err) {
    fy_comm_rs *s = rs_new(c, (size_t)c->size * counts[c->rank]);
    if (!s || !(s->counts = malloc(2 * (size_t)c->size * sizeof *s->counts))) {
        fy_comm_rs_free(s);
        return fy_fail(err, "out of memory");
    }
    s->displ = s->counts + c->size;
    for (int p = 0; p < c->size; p++) {
        s->counts[p] = counts[p], s->displ[p] = displ[p];
        if (displ[p] + counts[p] > s->n_total) s->n_total = displ[p] + counts[p];
    }
    s->len = counts[c->rank];
    return rs_open(s, progress, out, err);
}

int fy_comm_ar_create(fy_comm *c, size_t n, int max_buckets, int progress, fy_comm_rs **out, fy_err *err) {
    const int N = c->size, cap = max_buckets > 0 ? max_buckets : 1;
    /* A bucket's pieces take N * ceil(len / N) floats: at most len + N. */
    const size_t recv_cap = n + (size_t)N * cap;
    fy_comm_rs *s = rs_new(c, recv_cap);
    if (!s) return fy_fail(err, "out of memory for the bucketed all-reduce (%zu floats)", n);
    s->ar = 1, s->n_total = n, s->recv_cap = recv_cap, s->max_buckets = cap;
    return rs_open(s, progress, out, err);
}

int fy_comm_rs_progress_thread(const fy_comm_rs *s) {
    return s && s->net_state && s->c->net->rs_progress_thread(s);
}

void fy_comm_rs_free(fy_comm_rs *s) {
    if (!s) return;
    if (s->net_state) s->c->net->rs_close(s);
    free(s->counts);
    free(s->recv);
    free(s);
}

int fy_comm_rs_active(const fy_comm_rs *s) { return s && s->active; }

/* Completes the pieces in flight, if any. */
static int rs_wait(fy_comm_rs *s, fy_err *err) { return s->net_state ? s->c->net->rs_wait(s, err) : 0; }

int fy_comm_rs_begin(fy_comm_rs *s, fy_err *err) {
    if (rs_wait(s, err)) return -1;
    s->posted = 0;
    s->active = 1;
    return 0;
}

int fy_comm_rs_post(fy_comm_rs *s, const float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    if (!s->active || lo > hi || hi > s->n_total)
        return fy_fail(err, "internal: bucketed reduce-scatter: range [%zu, %zu) of %zu posted outside a reduction",
                       lo, hi, s->n_total);
    s->posted += hi - lo;
    if (c->size == 1) {
        size_t a = lo > s->displ[0] ? lo : s->displ[0], b = hi < s->displ[0] + s->len ? hi : s->displ[0] + s->len;
        if (b > a) memcpy(s->recv + (a - s->displ[0]), x + a, (b - a) * sizeof *x);
        return 0;
    }
    return c->net->rs_post(s, (float *)x, lo, hi, err); /* the reduce-scatter only reads x */
}

/* Ends a reduction of either kind (what names it): waits for every piece
 * and checks that the posted ranges covered [0, n_total). */
static int rs_end(fy_comm_rs *s, const char *what, fy_err *err) {
    if (!s->active) return fy_fail(err, "internal: %s finished twice", what);
    s->active = 0;
    if (rs_wait(s, err)) return -1;
    if (s->posted != s->n_total)
        return fy_fail(err, "internal: %s got %zu of %zu elements", what, s->posted, s->n_total);
    return 0;
}

int fy_comm_rs_finish(fy_comm_rs *s, float *out, fy_err *err) {
    if (rs_end(s, "bucketed reduce-scatter", err)) return -1;
    return fy_comm_sum_pieces(s->c, s->recv, s->len, out, err);
}

int fy_comm_ar_post(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    if (!s->ar || !s->active || lo > hi || hi > s->n_total)
        return fy_fail(err, "internal: bucketed all-reduce: range [%zu, %zu) of %zu posted outside a reduction", lo,
                       hi, s->n_total);
    s->posted += hi - lo;
    if (c->size == 1 || hi == lo) return 0; /* one rank: x is its own sum */
    return c->net->rs_post(s, x, lo, hi, err);
}

int fy_comm_ar_finish(fy_comm_rs *s, fy_err *err) {
    if (!s->ar) return fy_fail(err, "internal: fy_comm_ar_finish on a bucketed reduce-scatter");
    return rs_end(s, "bucketed all-reduce", err);
}
