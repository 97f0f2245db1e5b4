#include "parallel/dp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "core/log.h"

static int is_pow2(int k) { return k > 0 && (k & (k - 1)) == 0; }

int fy_dp_init(fy_dp *dp, fy_comm *c, fy_model *m, int batch, int micro, int compress, int zero,
               const fy_dp_diloco *diloco, fy_err *err) {
    memset(dp, 0, sizeof *dp);
    dp->comm = c;
    dp->rank = fy_comm_rank(c);
    dp->size = fy_comm_size(c);
    dp->compress = compress && dp->size > 1;
    dp->replicated = !zero && dp->size > 1;
    dp->ep = fy_params_is_shard(&m->tab);
    if (dp->ep && ((diloco && diloco->local_steps > 0) || dp->size == 1))
        return fy_fail(err, "internal: an expert shard with DiLoCo or on one rank");
    if (dp->ep && fy_params_build(&m->cfg, &dp->full_tab, err)) return fy_wrap(err, "expert parallel");
    if (diloco && diloco->local_steps > 0 && dp->size > 1) {
        dp->local_steps = diloco->local_steps;
        dp->outer_lr = diloco->outer_lr;
        dp->outer_momentum = diloco->outer_momentum;
        dp->n_buffers = m->tab.n_buffers;
        size_t nn = m->tab.n_params + dp->n_buffers + 1;
        dp->anchor = calloc(nn, sizeof *dp->anchor);
        dp->outer_mom = calloc(nn, sizeof *dp->outer_mom);
        dp->delta = calloc(nn, sizeof *dp->delta);
        if (!dp->anchor || !dp->outer_mom || !dp->delta) return fy_fail(err, "out of memory for the DiLoCo state");
    }
    const int N = dp->size;
    if (batch % N)
        return fy_fail(err, "batch %d does not split over %d ranks (use a multiple of %d)", batch, N, N);
    if (micro <= 0) micro = batch / N;
    if ((batch / N) % micro)
        return fy_fail(err, "micro-batch %d does not divide the %d sequences per rank (batch %d over %d ranks)",
                       micro, batch / N, batch, N);
    dp->micro = micro;
    dp->local_micro = batch / N / micro;
    if (N > 1 && !is_pow2(dp->local_micro))
        fy_warn("%d micro-batches per rank is not a power of two: correct, but not bit-identical to other "
                "rank counts", dp->local_micro);
    dp->n_local = m->tab.n_params;
    dp->n = dp->ep ? m->tab.n_dense : dp->n_local;
    dp->n_chunks = fy_norm_chunks(dp->n);
    dp->counts = calloc(2 * (size_t)N, sizeof *dp->counts);
    dp->chunk_part = calloc(dp->n_chunks + 1, sizeof *dp->chunk_part);
    if (!dp->counts || !dp->chunk_part) return fy_fail(err, "out of memory");
    dp->displ = dp->counts + N;
    /* Shards of whole norm chunks, so the norm's parts are the same numbers
     * whichever rank computes them. */
    for (int r = 0; r < N; r++) {
        size_t c0 = dp->n_chunks * r / N, c1 = dp->n_chunks * (r + 1) / N;
        size_t a = c0 * FY_NORM_CHUNK, b = c1 * FY_NORM_CHUNK;
        if (a > dp->n) a = dp->n;
        if (b > dp->n) b = dp->n;
        dp->displ[r] = a;
        dp->counts[r] = b - a;
        if (r == dp->rank) dp->lo = a, dp->hi = b, dp->chunk_lo = c0, dp->chunk_hi = c1;
    }
    if (N > 1) {
        dp->host = malloc(dp->n * sizeof *dp->host + 1);
        dp->shard = malloc((dp->hi - dp->lo) * sizeof *dp->shard + 1);
        if (!dp->host || !dp->shard) return fy_fail(err, "out of memory for the gradient staging (%zu floats)", dp->n);
        if (dp->compress) {
            dp->resid_send = calloc(dp->n + 1, sizeof *dp->resid_send);
            dp->resid_gather = calloc(dp->hi - dp->lo + 1, sizeof *dp->resid_gather);
            if (!dp->resid_send || !dp->resid_gather) return fy_fail(err, "out of memory for error feedback");
        }
    }
    if (dp->local_micro > 1) {
        int depth = 1;
        while ((1 << (depth - 1)) < dp->local_micro) depth++;
        dp->stack = calloc((size_t)depth, sizeof *dp->stack);
        dp->stack_leaves = calloc((size_t)depth, sizeof *dp->stack_leaves);
        if (!dp->stack || !dp->stack_leaves) return fy_fail(err, "out of memory");
        dp->stack_cap = depth;
        for (int i = 0; i < depth; i++)
            if (fy_be_alloc(m->be, &dp->stack[i], dp->n_local, err)) return fy_wrap(err, "gradient accumulation");
    }
    return 0;
}

/* Sends bucket k (0: dense params, 1: routed experts), if it holds any. */
static int post_bucket(fy_dp *dp, int k, fy_err *err) {
    size_t lo = dp->pend_lo[k], hi = dp->pend_hi[k];
    dp->pend_lo[k] = dp->pend_hi[k] = 0;
    if (hi <= lo) return 0;
    dp->buckets_sent++;
    return dp->replicated ? fy_comm_ar_post(dp->rs, dp->host, lo, hi, err) : fy_comm_rs_post(dp->rs, dp->host, lo, hi, err);
}

static int dp_grad_ready(void *ctx, size_t lo, size_t hi, int first, fy_err *err) {
    fy_dp *dp = ctx;
    fy_model *m = dp->bucket_model;
    /* The first range of a backward starts a reduction; an unfinished one
     * of a discarded step is dropped. */
    if (first || !fy_comm_rs_active(dp->rs)) {
        if (fy_comm_rs_begin(dp->rs, err)) return -1;
        memset(dp->pend_lo, 0, sizeof dp->pend_lo);
        memset(dp->pend_hi, 0, sizeof dp->pend_hi);
    }
    if (hi > dp->n) hi = dp->n; /* an expert shard's own experts are not reduced */
    if (lo >= hi) return 0;
    m->be->ops->download(m->be, dp->host + lo, fy_at(&m->grads, lo), hi - lo);
    if (fy_be_sync(m->be, err)) return -1;
    /* The ranges come from the end of each region down: a range that ends
     * where its region's bucket starts joins it. */
    const int k = lo >= m->tab.n_dense;
    if (dp->pend_hi[k] > dp->pend_lo[k] && dp->pend_lo[k] != hi && post_bucket(dp, k, err)) return -1;
    if (dp->pend_hi[k] <= dp->pend_lo[k]) dp->pend_hi[k] = hi;
    dp->pend_lo[k] = lo;
    return dp->pend_hi[k] - dp->pend_lo[k] >= dp->bucket_floats ? post_bucket(dp, k, err) : 0;
}

int fy_dp_set_bucketing(fy_dp *dp, fy_model *m, int on, float bucket_mb, fy_err *err) {
    if (dp->rs) {
        fy_comm_rs_free(dp->rs);
        dp->rs = NULL;
        fy_model_set_grad_ready(m, NULL, NULL);
    }
    if (!on || dp->size == 1 || dp->compress || dp->local_steps || dp->local_micro != 1) return 0;
    /* At most one bucket per range the backward reports (two per layer). */
    const int max_buckets = 2 * m->tab.n_layers + 4;
    if (dp->replicated ? fy_comm_ar_create(dp->comm, dp->n, max_buckets, on == 2, &dp->rs, err)
                       : fy_comm_rs_create(dp->comm, dp->counts, dp->displ, on == 2, &dp->rs, err))
        return fy_wrap(err, "gradient buckets");
    dp->bucket_model = m;
    dp->bucket_floats = bucket_mb > 0 ? (size_t)((double)bucket_mb * 1e6 / sizeof(float)) : 0;
    fy_model_set_grad_ready(m, dp_grad_ready, dp);
    return 0;
}

void fy_dp_free(fy_dp *dp, fy_model *m) {
    if (dp->rs) fy_dp_set_bucketing(dp, m, 0, 0, NULL);
    for (int i = 0; i < dp->stack_cap; i++)
        if (dp->stack[i].handle) fy_be_free(m->be, &dp->stack[i]);
    free(dp->stack);
    free(dp->stack_leaves);
    free(dp->counts);
    free(dp->chunk_part);
    free(dp->host);
    free(dp->shard);
    free(dp->resid_send);
    free(dp->resid_gather);
    free(dp->anchor);
    free(dp->outer_mom);
    free(dp->delta);
    free(dp->x_m);
    free(dp->x_v);
    free(dp->x_rs);
    free(dp->x_rg);
    free(dp->ck_p);
    free(dp->ck_b);
    free(dp->ck_m);
    free(dp->ck_v);
    fy_params_free(&dp->full_tab);
    memset(dp, 0, sizeof *dp);
}

int fy_dp_create_optimizer(fy_dp *dp, fy_model *m, const fy_adamw_opts *o, fy_adamw *opt, fy_err *err) {
    if (!fy_dp_sharded(dp)) return fy_adamw_create(opt, m, o, err);
    return fy_adamw_create_ranges(opt, m, o, dp->lo, dp->hi, dp->n, dp->n_local, err);
}

/* ---- the local tree of micro-batches ------------------------------------- */

int fy_dp_accumulate(fy_dp *dp, fy_model *m, int j, fy_err *err) {
    if (dp->local_micro == 1) return 0;
    fy_backend *be = m->be;
    if (j == 0) dp->stack_top = 0;
    /* Push the leaf, then merge equal-sized neighbours: a binary counter
     * whose carries are exactly the aligned power-of-two subtrees. */
    int top = dp->stack_top;
    be->ops->copy(be, fy_at(&dp->stack[top], 0), fy_at(&m->grads, 0), dp->n_local);
    dp->stack_leaves[top] = 1;
    top++;
    while (top >= 2 && dp->stack_leaves[top - 1] == dp->stack_leaves[top - 2]) {
        be->ops->axpy(be, dp->n_local, 1.0f, fy_at(&dp->stack[top - 1], 0), fy_at(&dp->stack[top - 2], 0));
        dp->stack_leaves[top - 2] *= 2;
        top--;
    }
    dp->stack_top = top;
    return fy_be_sync(be, err);
}

/* m->grads = the tree sum of the local micro-batches: the stack folded from
 * the right (the tree splits at the largest power of two). */
static int local_sum(fy_dp *dp, fy_model *m, fy_err *err) {
    if (dp->local_micro == 1) return 0;
    fy_backend *be = m->be;
    int top = dp->stack_top;
    for (int i = top - 1; i > 0; i--)
        be->ops->axpy(be, dp->n_local, 1.0f, fy_at(&dp->stack[i], 0), fy_at(&dp->stack[i - 1], 0));
    be->ops->copy(be, fy_at(&m->grads, 0), fy_at(&dp->stack[0], 0), dp->n_local);
    return fy_be_sync(be, err);
}

/* ---- the step -------------------------------------------------------------- */

/* x[n] (=) the sum over ranks, sent as int8 blocks both ways (reduce-scatter,
 * then all-gather of the sums) with error feedback on both sides: what
 * quantization dropped last call is sent now. Every rank ends with the same
 * bits. Compressed gradients and DiLoCo's compressed deltas. */
static int allreduce_q8(fy_dp *dp, float *x, fy_err *err) {
    size_t len = dp->hi - dp->lo;
    for (size_t i = 0; i < dp->n; i++) x[i] += dp->resid_send[i];
    if (fy_comm_reduce_scatter_q8(dp->comm, x, dp->shard, dp->counts, dp->displ, dp->resid_send, err)) return -1;
    for (size_t i = 0; i < len; i++) dp->shard[i] += dp->resid_gather[i];
    return fy_comm_allgather_f32(dp->comm, dp->shard, x, dp->counts, dp->displ, 1, dp->resid_gather, err);
}

static int reduce_grads(fy_dp *dp, fy_model *m, fy_err *err) {
    if (local_sum(dp, m, err)) return -1;
    if (dp->size == 1 || dp->local_steps) return 0;
    fy_backend *be = m->be;
    size_t len = dp->hi - dp->lo;
    if (dp->rs && fy_comm_rs_active(dp->rs)) { /* the backward sent the buckets (but the last) */
        if (post_bucket(dp, 0, err) || post_bucket(dp, 1, err)) return -1;
        if (dp->replicated) {
            if (fy_comm_ar_finish(dp->rs, err)) return -1;
            be->ops->upload(be, fy_at(&m->grads, 0), dp->host, dp->n);
            return fy_be_sync(be, err);
        }
        if (fy_comm_rs_finish(dp->rs, dp->shard, err)) return -1;
        if (len) be->ops->upload(be, fy_at(&m->grads, dp->lo), dp->shard, len);
        return fy_be_sync(be, err);
    }
    be->ops->download(be, dp->host, fy_at(&m->grads, 0), dp->n);
    if (fy_be_sync(be, err)) return -1;
    if (dp->replicated) {
        if (fy_comm_allreduce_f32(dp->comm, dp->host, dp->n, err)) return -1;
        be->ops->upload(be, fy_at(&m->grads, 0), dp->host, dp->n);
        return fy_be_sync(be, err);
    }
    if (!dp->compress) {
        if (fy_comm_reduce_scatter_f32(dp->comm, dp->host, dp->shard, dp->counts, dp->displ, err)) return -1;
        if (len) be->ops->upload(be, fy_at(&m->grads, dp->lo), dp->shard, len);
        return fy_be_sync(be, err);
    }
    if (allreduce_q8(dp, dp->host, err)) return -1;
    be->ops->upload(be, fy_at(&m->grads, 0), dp->host, dp->n);
    return fy_be_sync(be, err);
}

static int grad_norm(fy_dp *dp, fy_model *m, double *norm, fy_err *err) {
    if (!fy_dp_sharded(dp)) {
        fy_grad_sumsq_chunks(m, 0, dp->n, dp->chunk_part);
    } else {
        fy_grad_sumsq_chunks(m, dp->lo, dp->hi, dp->chunk_part + dp->chunk_lo);
        size_t *cnt = malloc(2 * (size_t)dp->size * sizeof *cnt);
        if (!cnt) return fy_fail(err, "out of memory");
        for (int r = 0; r < dp->size; r++) {
            size_t c0 = dp->n_chunks * r / dp->size, c1 = dp->n_chunks * (r + 1) / dp->size;
            cnt[r] = (c1 - c0) * sizeof(double);
            cnt[dp->size + r] = c0 * sizeof(double);
        }
        int rc = fy_comm_allgatherv(dp->comm, dp->chunk_part + dp->chunk_lo, dp->chunk_part, cnt, cnt + dp->size,
                                    err);
        free(cnt);
        if (rc) return -1;
    }
    *norm = fy_norm_from_chunks(dp->chunk_part, dp->n_chunks);
    if (dp->ep) { /* the experts' part: every rank's own, in rank order */
        double *part = calloc(dp->size + fy_norm_chunks(dp->n_local - dp->n) + 1, sizeof *part);
        if (!part) return fy_fail(err, "out of memory");
        double *mine = part + dp->size, sq = 0;
        size_t nc = fy_norm_chunks(dp->n_local - dp->n);
        fy_grad_sumsq_chunks(m, dp->n, dp->n_local, mine);
        for (size_t c = 0; c < nc; c++) sq += mine[c];
        int rc = fy_comm_allgather(dp->comm, &sq, sizeof sq, part, err);
        double all = *norm * *norm;
        for (int r = 0; r < dp->size; r++) all += part[r];
        free(part);
        if (rc) return -1;
        *norm = sqrt(all);
    }
    return fy_be_sync(m->be, err);
}

static int gather_params(fy_dp *dp, fy_model *m, fy_err *err) {
    if (!fy_dp_sharded(dp)) return 0;
    fy_backend *be = m->be;
    size_t len = dp->hi - dp->lo;
    if (len) be->ops->download(be, dp->shard, fy_at(&m->params, dp->lo), len);
    if (fy_be_sync(be, err) ||
        fy_comm_allgather_f32(dp->comm, dp->shard, dp->host, dp->counts, dp->displ, 0, NULL, err))
        return -1;
    /* Upload the others' shards; this rank's part is already there. */
    if (dp->lo) be->ops->upload(be, fy_at(&m->params, 0), dp->host, dp->lo);
    if (dp->hi < dp->n) be->ops->upload(be, fy_at(&m->params, dp->hi), dp->host + dp->hi, dp->n - dp->hi);
    return fy_be_sync(be, err);
}

int fy_dp_step(fy_dp *dp, fy_model *m, fy_adamw *opt, float *grad_norm_out, float *lr_used, fy_err *err) {
    double norm = 0;
    const int n_micro = dp->local_micro * dp->size;
    if (reduce_grads(dp, m, err) || grad_norm(dp, m, &norm, err)) return -1;
    if (dp->local_steps) {
        /* Local steps: each rank its own norm, but a non-finite one on any
         * rank fails the step on all. */
        int bad = fy_dp_vote(dp, !isfinite(norm), err);
        if (bad < 0) return -1;
        if (bad) norm = NAN;
    }
    norm /= dp->local_steps ? dp->local_micro : n_micro; /* of the mean gradient */
    if (grad_norm_out) *grad_norm_out = (float)norm;
    const int summed = dp->local_steps ? dp->local_micro : n_micro;
    if (fy_adamw_update(opt, m, norm, summed == 1 ? 1.0f : 1.0f / (float)summed, lr_used, err)) return -1;
    if (gather_params(dp, m, err)) return -1;
    if (dp->size > 1 && !dp->local_steps) {
        size_t nl = (size_t)m->tab.n_layers * (m->cfg.n_routed_experts + 1);
        if (nl && fy_comm_allreduce_i64(dp->comm, m->loads, nl, err)) return -1;
    }
    return 0;
}

int fy_dp_mean_loss(fy_dp *dp, const fy_loss *local, fy_loss *out, fy_err *err) {
    const int k = dp->local_micro, n = k * dp->size;
    fy_loss *all = malloc((size_t)n * sizeof *all);
    if (!all) return fy_fail(err, "out of memory");
    if (fy_comm_allgather(dp->comm, local, (size_t)k * sizeof *local, all, err)) {
        free(all);
        return -1;
    }
    if (n == 1) {
        *out = all[0];
        free(all);
        return 0;
    }
    memset(out, 0, sizeof *out);
    for (int i = 0; i < n; i++) {
        out->total += all[i].total;
        out->main += all[i].main;
        for (int d = 0; d < FY_MAX_MTP; d++) out->mtp[d] += all[i].mtp[d];
        out->balance += all[i].balance;
        out->n_main += all[i].n_main;
    }
    out->total /= n;
    out->main /= n;
    for (int d = 0; d < FY_MAX_MTP; d++) out->mtp[d] /= n;
    out->balance /= n;
    free(all);
    return 0;
}

int fy_dp_vote(fy_dp *dp, int local, fy_err *err) {
    int32_t v = local;
    if (dp->size > 1 && fy_comm_allreduce_max_i32(dp->comm, &v, 1, err)) return -1;
    return v;
}

/* Rank 0 gets every rank's n[r] floats of x, one after the other in rank
 * order, in all (NULL elsewhere): a gather, as an all-to-all where only
 * rank 0 receives. */
static int gather_root(fy_dp *dp, const float *x, const size_t *n, float *all, fy_err *err) {
    const int R = dp->size;
    size_t *c = calloc(4 * (size_t)R, sizeof *c), off = 0;
    if (!c) return fy_fail(err, "out of memory");
    size_t *sc = c, *sd = c + R, *rc = c + 2 * R, *rd = c + 3 * R;
    sc[0] = n[dp->rank] * sizeof *x;
    for (int r = 0; r < R && dp->rank == 0; r++) rc[r] = n[r] * sizeof *x, rd[r] = off, off += rc[r];
    float dummy;
    int st = fy_comm_alltoallv(dp->comm, x, sc, sd, all ? (void *)all : (void *)&dummy, rc, rd, err);
    free(c);
    return st;
}

/* *h (rank 0 only) = malloc'd [n], once. */
static int ck_alloc(const fy_dp *dp, float **h, size_t n, fy_err *err) {
    if (dp->rank != 0 || *h) return 0;
    if (!(*h = malloc((n ? n : 1) * sizeof **h)))
        return fy_fail(err, "out of memory gathering a checkpoint (%zu floats)", n);
    return 0;
}

/* The moments of the dense params [0, n) onto rank 0's hm, hv. */
static int gather_dense_moments(fy_dp *dp, fy_model *m, const fy_adamw *opt, float *hm, float *hv, fy_err *err) {
    fy_backend *be = m->be;
    fy_buf mb = opt->m, vb = opt->v;
    if (!fy_dp_sharded(dp)) { /* every rank has them all */
        if (dp->rank == 0) be->ops->download(be, hm, fy_at(&mb, 0), dp->n), be->ops->download(be, hv, fy_at(&vb, 0), dp->n);
        return fy_be_sync(be, err);
    }
    size_t len = dp->hi - dp->lo;
    if (len) be->ops->download(be, dp->shard, fy_at(&mb, 0), len);
    if (fy_be_sync(be, err) || gather_root(dp, dp->shard, dp->counts, hm, err)) return -1;
    if (len) be->ops->download(be, dp->shard, fy_at(&vb, 0), len);
    if (fy_be_sync(be, err) || gather_root(dp, dp->shard, dp->counts, hv, err)) return -1;
    return 0;
}

/* The experts of every rank into rank 0's whole-model arrays: each rank's
 * region [n, n_local) of the params and both moments travels to rank 0,
 * which copies each (layer, kind) block of an owner's experts to where the
 * whole table has them. The ranks' layouts come from their shard tables,
 * built one at a time (a whole set of them is large for a large model). */
static int gather_experts(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_err *err) {
    fy_backend *be = m->be;
    const int R = dp->size, L = dp->full_tab.n_layers;
    const size_t mine = dp->n_local - dp->n;
    size_t *n = calloc(R, sizeof *n), total = 0;
    /* rank r: its experts [elo, ehi); in MoE layer li, where its three kinds start in its block */
    size_t *at = calloc((size_t)R * L * 3 + 1, sizeof *at);
    int *elo = calloc(2 * (size_t)R, sizeof *elo), *ehi = elo ? elo + R : NULL;
    float *x = malloc((mine ? mine : 1) * sizeof *x), *all = NULL;
    int rc = !n || !at || !elo || !x ? fy_fail(err, "out of memory gathering the experts") : 0;
    for (int r = 0; r < R && rc == 0; r++) {
        fy_param_table t;
        if ((rc = fy_params_build_shard(&m->cfg, r, R, &t, err))) break;
        n[r] = t.n_params - t.n_dense, total += n[r];
        elo[r] = t.exp_lo, ehi[r] = t.exp_hi;
        for (int li = 0; li < L; li++) {
            const fy_layer_offs *W = &t.layer[li];
            size_t *o = at + ((size_t)r * L + li) * 3;
            if (W->moe) o[0] = W->exp_gate - t.n_dense, o[1] = W->exp_up - t.n_dense, o[2] = W->exp_down - t.n_dense;
        }
        fy_params_free(&t);
    }
    if (rc == 0 && dp->rank == 0 && !(all = malloc((total ? total : 1) * sizeof *all)))
        rc = fy_fail(err, "out of memory gathering the experts (%zu floats)", total);
    /* The moments of the experts follow the dense ones in a ZeRO-1 shard. */
    const size_t mo = fy_dp_sharded(dp) ? opt->m.n - opt->xn : dp->n;
    fy_buf mb = opt->m, vb = opt->v;
    const fy_buf *src[3] = {&m->params, &mb, &vb};
    const size_t so[3] = {dp->n, mo, mo};
    float *dst[3] = {dp->ck_p, dp->ck_m, dp->ck_v};
    for (int k = 0; k < 3 && rc == 0; k++) {
        if (mine) be->ops->download(be, x, fy_at((fy_buf *)src[k], so[k]), mine);
        rc = fy_be_sync(be, err) || gather_root(dp, x, n, all, err) ? -1 : 0;
        if (rc || dp->rank != 0) continue;
        const float *from = all;
        for (int r = 0; r < R; r++) {
            for (int li = 0; li < L; li++) {
                const fy_layer_offs *F = &dp->full_tab.layer[li];
                if (!F->moe) continue;
                const size_t own = (size_t)(ehi[r] - elo[r]) * F->exp_stride, fo[3] = {F->exp_gate, F->exp_up, F->exp_down};
                const size_t *o = at + ((size_t)r * L + li) * 3;
                for (int kind = 0; kind < 3; kind++)
                    memcpy(dst[k] + fo[kind] + (size_t)elo[r] * F->exp_stride, from + o[kind], own * sizeof *from);
            }
            from += n[r];
        }
    }
    free(n);
    free(at);
    free(elo);
    free(x);
    free(all);
    return rc;
}

int fy_dp_checkpoint_state(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_ckpt_host *h, fy_err *err) {
    memset(h, 0, sizeof *h);
    if (!fy_dp_sharded(dp) && !dp->ep) return 0;
    const fy_param_table *tab = dp->ep ? &dp->full_tab : &m->tab;
    const size_t nf = tab->n_params;
    if (ck_alloc(dp, &dp->ck_p, nf, err) || ck_alloc(dp, &dp->ck_b, tab->n_buffers, err) ||
        ck_alloc(dp, &dp->ck_m, nf, err) || ck_alloc(dp, &dp->ck_v, nf, err))
        return -1;
    /* The dense params and the buffers are the same on every rank. */
    fy_backend *be = m->be;
    if (dp->rank == 0) {
        be->ops->download(be, dp->ck_p, fy_at(&m->params, 0), dp->n);
        if (tab->n_buffers) be->ops->download(be, dp->ck_b, fy_at(&m->buffers, 0), tab->n_buffers);
    }
    if (fy_be_sync(be, err) || gather_dense_moments(dp, m, opt, dp->ck_m, dp->ck_v, err)) return -1;
    if (dp->ep && gather_experts(dp, m, opt, err)) return -1;
    if (dp->rank == 0) {
        /* The padding between tensors is zero in the whole layout. */
        *h = (fy_ckpt_host){tab, dp->ck_p, dp->ck_b, dp->ck_m, dp->ck_v, opt->t};
    } else {
        h->tab = tab;
    }
    return 0;
}

/* What the per-rank state was saved for: a resume with anything else
 * cannot use it. */
static void extra_meta(const fy_dp *dp, char *out, size_t cap) {
    snprintf(out, cap, "ranks=%d diloco_every=%d compress=%d n_params=%zu n_buffers=%zu", dp->size, dp->local_steps,
             dp->compress, dp->n, dp->n_buffers);
}
static int has_extra(const fy_dp *dp) { return dp->size > 1 && (dp->local_steps || dp->compress); }

static int gather_rows(fy_dp *dp, const float *x, float **all, fy_err *err) {
    if (!*all && !(*all = malloc((size_t)dp->size * dp->n * sizeof **all + 1)))
        return fy_fail(err, "out of memory gathering the per-rank state (%d x %zu floats)", dp->size, dp->n);
    return fy_comm_allgather(dp->comm, x, dp->n * sizeof *x, *all, err);
}

int fy_dp_extra_state(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_ckpt_extra *extra, fy_err *err) {
    memset(extra, 0, sizeof *extra);
    if (!has_extra(dp)) return 0;
    int n = 0;
    const int64_t N = dp->size, np = (int64_t)dp->n;
    if (dp->local_steps) {
        /* inner moments (not sharded in DiLoCo: every rank has them all) */
        fy_backend *be = m->be;
        fy_buf mb = opt->m, vb = opt->v;
        be->ops->download(be, dp->delta, fy_at(&mb, 0), dp->n);
        if (fy_be_sync(be, err) || gather_rows(dp, dp->delta, &dp->x_m, err)) return -1;
        be->ops->download(be, dp->delta, fy_at(&vb, 0), dp->n);
        if (fy_be_sync(be, err) || gather_rows(dp, dp->delta, &dp->x_v, err)) return -1;
        dp->x_t[n++] = (fy_ckpt_extra_tensor){"inner.exp_avg", dp->x_m, N, np};
        dp->x_t[n++] = (fy_ckpt_extra_tensor){"inner.exp_avg_sq", dp->x_v, N, np};
        dp->x_t[n++] = (fy_ckpt_extra_tensor){"outer_momentum", dp->outer_mom, 1, np + (int64_t)dp->n_buffers};
    }
    if (dp->compress) {
        if (gather_rows(dp, dp->resid_send, &dp->x_rs, err)) return -1;
        size_t *cnt = malloc(2 * (size_t)dp->size * sizeof *cnt);
        if (!cnt) return fy_fail(err, "out of memory");
        for (int r = 0; r < dp->size; r++) cnt[r] = dp->counts[r] * 4, cnt[dp->size + r] = dp->displ[r] * 4;
        int rc = (!dp->x_rg && !(dp->x_rg = malloc(dp->n * sizeof *dp->x_rg + 1)))
                     ? fy_fail(err, "out of memory")
                     : fy_comm_allgatherv(dp->comm, dp->resid_gather, dp->x_rg, cnt, cnt + dp->size, err);
        free(cnt);
        if (rc) return -1;
        dp->x_t[n++] = (fy_ckpt_extra_tensor){"resid_send", dp->x_rs, N, np};
        dp->x_t[n++] = (fy_ckpt_extra_tensor){"resid_gather", dp->x_rg, 1, np};
    }
    extra_meta(dp, dp->x_meta, sizeof dp->x_meta);
    extra->meta = dp->x_meta;
    extra->n = n;
    extra->t = dp->x_t;
    return 0;
}

/* Row `row` of the [rows, cols] tensor name (its size is checked). */
static int read_row(const fy_st_file *f, const char *name, size_t rows, int row, float *dst, size_t cols,
                    fy_err *err) {
    return fy_st_read_f32_range(f, name, rows * cols, (size_t)row * cols, cols, dst, err);
}

static int load_extra(fy_dp *dp, const char *ckpt_dir, fy_model *m, fy_adamw *opt, fy_err *err) {
    if (!has_extra(dp)) return 0;
    const char *what = dp->local_steps ? "DiLoCo" : "int8 gradients";
    char path[FY_PATH_MAX], want[160];
    if (fy_path_join(path, sizeof path, ckpt_dir, FY_CKPT_DIST, err)) return -1;
    extra_meta(dp, want, sizeof want);
    fy_st_file *f = NULL;
    fy_err e2;
    const char *got = NULL;
    if (!fy_file_exists(path) || fy_st_open(path, &f, &e2) || !(got = fy_st_meta(f, "ferry_dist")) ||
        strcmp(got, want)) {
        if (dp->rank == 0)
            fy_warn("%s: resuming without this run's per-rank state (%s; this run: %s): the continuation is "
                    "correct but not bit-identical to an uninterrupted run", what,
                    !f ? "none saved" : got ? got : "unlabelled", want);
        fy_st_close(f);
        return 0;
    }
    size_t nn = dp->n + dp->n_buffers;
    int rc = 0;
    if (dp->local_steps) {
        fy_backend *be = m->be;
        rc = read_row(f, "outer_momentum", 1, 0, dp->outer_mom, nn, err);
        if (rc == 0) rc = read_row(f, "inner.exp_avg", dp->size, dp->rank, dp->delta, dp->n, err);
        if (rc == 0) be->ops->upload(be, fy_at(&opt->m, 0), dp->delta, dp->n), rc = fy_be_sync(be, err);
        if (rc == 0) rc = read_row(f, "inner.exp_avg_sq", dp->size, dp->rank, dp->delta, dp->n, err);
        if (rc == 0) be->ops->upload(be, fy_at(&opt->v, 0), dp->delta, dp->n), rc = fy_be_sync(be, err);
    }
    if (rc == 0 && dp->compress) {
        rc = read_row(f, "resid_send", dp->size, dp->rank, dp->resid_send, dp->n, err);
        /* every rank's shard in place: this rank's is [lo, hi) */
        if (rc == 0)
            rc = fy_st_read_f32_range(f, "resid_gather", dp->n, dp->lo, dp->hi - dp->lo, dp->resid_gather, err);
    }
    fy_st_close(f);
    return rc ? fy_wrap(err, "%s", path) : 0;
}

int fy_dp_load(fy_dp *dp, const char *ckpt_dir, fy_model *m, fy_adamw *opt, char **trainer_state, fy_err *err) {
    if (!fy_dp_sharded(dp))
        return fy_ckpt_load(ckpt_dir, m, opt, trainer_state, err) || load_extra(dp, ckpt_dir, m, opt, err) ? -1 : 0;
    /* A shard: load the moments of this rank's block, keep its part (and
     * its experts'). */
    fy_adamw full = {0};
    if (fy_adamw_create(&full, m, &opt->o, err)) return -1;
    int rc = fy_ckpt_load(ckpt_dir, m, &full, trainer_state, err);
    if (!rc) {
        fy_backend *be = m->be;
        size_t len = dp->hi - dp->lo;
        if (len) {
            be->ops->copy(be, fy_at(&opt->m, 0), fy_at(&full.m, dp->lo), len);
            be->ops->copy(be, fy_at(&opt->v, 0), fy_at(&full.v, dp->lo), len);
        }
        if (opt->xn) {
            be->ops->copy(be, fy_at(&opt->m, len), fy_at(&full.m, opt->xlo), opt->xn);
            be->ops->copy(be, fy_at(&opt->v, len), fy_at(&full.v, opt->xlo), opt->xn);
        }
        opt->t = full.t;
        rc = fy_be_sync(be, err);
    }
    fy_adamw_free(&full, m->be);
    return rc;
}

void fy_dp_mark(fy_dp *dp) { dp->bytes_at_step = fy_comm_bytes_sent(dp->comm); }
uint64_t fy_dp_step_bytes(const fy_dp *dp) { return fy_comm_bytes_sent(dp->comm) - dp->bytes_at_step; }

/* ---- DiLoCo ---------------------------------------------------------------- */

static int download_state(fy_dp *dp, fy_model *m, float *dst, fy_err *err) {
    fy_backend *be = m->be;
    be->ops->download(be, dst, fy_at(&m->params, 0), dp->n);
    if (dp->n_buffers) be->ops->download(be, dst + dp->n, fy_at(&m->buffers, 0), dp->n_buffers);
    return fy_be_sync(be, err);
}

int fy_dp_set_anchor(fy_dp *dp, fy_model *m, fy_err *err) {
    if (!dp->local_steps) return 0;
    return download_state(dp, m, dp->anchor, err);
}

int fy_dp_outer_step(fy_dp *dp, fy_model *m, fy_err *err) {
    if (!dp->local_steps) return 0;
    const size_t nn = dp->n + dp->n_buffers;
    if (download_state(dp, m, dp->delta, err)) return -1;
    for (size_t i = 0; i < nn; i++) dp->delta[i] = dp->anchor[i] - dp->delta[i];
    if (dp->compress) {
        /* the parameter deltas in int8; the router biases (a few floats) f32 */
        if (allreduce_q8(dp, dp->delta, err)) return -1;
        if (dp->n_buffers && fy_comm_allreduce_f32(dp->comm, dp->delta + dp->n, dp->n_buffers, err)) return -1;
    } else if (fy_comm_allreduce_f32(dp->comm, dp->delta, nn, err)) {
        return -1;
    }
    const float inv = 1.0f / (float)dp->size, mu = dp->outer_momentum, lr = dp->outer_lr;
    for (size_t i = 0; i < dp->n; i++) {
        float d = dp->delta[i] * inv;
        dp->outer_mom[i] = mu * dp->outer_mom[i] + d;
        dp->anchor[i] -= lr * (d + mu * dp->outer_mom[i]);
    }
    /* The router biases are not trained by gradients: their average. */
    for (size_t i = dp->n; i < nn; i++) dp->anchor[i] -= dp->delta[i] * inv;
    fy_backend *be = m->be;
    be->ops->upload(be, fy_at(&m->params, 0), dp->anchor, dp->n);
    if (dp->n_buffers) be->ops->upload(be, fy_at(&m->buffers, 0), dp->anchor + dp->n, dp->n_buffers);
    return fy_be_sync(be, err);
}
