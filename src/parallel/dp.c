/* Data parallelism's core (dp.h): setting up the ranks' shards, the local
 * tree of micro-batches and the step (the gradient reduction, the norm,
 * AdamW, the params all-gather). Buckets, DiLoCo and checkpoints have files
 * of their own (dp_buckets.c, dp_diloco.c, dp_ckpt.c). */
#include "parallel/dp_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "model/lora.h"

static int is_pow2(int k) { return k > 0 && (k & (k - 1)) == 0; }

/* Shards of whole norm chunks, so the norm's parts are the same numbers
 * whichever rank computes them. */
static void plan_shards(fy_dp *dp) {
    const int N = dp->size;
    for (int r = 0; r < N; r++) {
        size_t c0 = dp->zero.n_chunks * r / N, c1 = dp->zero.n_chunks * (r + 1) / N;
        size_t a = c0 * FY_NORM_CHUNK, b = c1 * FY_NORM_CHUNK;
        if (a > dp->n) a = dp->n;
        if (b > dp->n) b = dp->n;
        dp->zero.displ[r] = a;
        dp->zero.counts[r] = b - a;
        if (r == dp->rank) dp->zero.lo = a, dp->zero.hi = b, dp->zero.chunk_lo = c0, dp->zero.chunk_hi = c1;
    }
}

int fy_dp_init(fy_dp *dp, fy_comm *c, fy_model *m, int batch, int micro, int compress, int zero,
               const fy_dp_diloco *diloco, fy_err *err) {
    memset(dp, 0, sizeof *dp);
    dp->comm = c;
    dp->rank = fy_comm_rank(c);
    dp->size = fy_comm_size(c);
    dp->compress = compress && dp->size > 1;
    dp->replicated = !zero && dp->size > 1;
    dp->ep.on = fy_params_is_shard(&m->tab);
    if (dp->ep.on && ((diloco && diloco->local_steps > 0) || dp->size == 1))
        return fy_fail(err, "internal: an expert shard with DiLoCo or on one rank");
    if (dp->ep.on && fy_dp_rank_table(m, 0, 1, &dp->ep.full_tab, err)) return fy_wrap(err, "expert parallel");
    if (fy_dp_diloco_init(dp, m, diloco, err)) return -1;
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
    dp->n = dp->ep.on ? m->tab.n_dense : dp->n_local;
    dp->zero.n_chunks = fy_norm_chunks(dp->n);
    dp->zero.counts = calloc(2 * (size_t)N, sizeof *dp->zero.counts);
    dp->zero.chunk_part = calloc(dp->zero.n_chunks + 1, sizeof *dp->zero.chunk_part);
    if (!dp->zero.counts || !dp->zero.chunk_part) return fy_fail(err, "out of memory");
    dp->zero.displ = dp->zero.counts + N;
    plan_shards(dp);
    if (N > 1) {
        dp->host = malloc(dp->n * sizeof *dp->host + 1);
        dp->zero.shard = malloc((dp->zero.hi - dp->zero.lo) * sizeof *dp->zero.shard + 1);
        if (!dp->host || !dp->zero.shard) return fy_fail(err, "out of memory for the gradient staging (%zu floats)", dp->n);
        if (dp->compress) {
            dp->q8.resid_send = calloc(dp->n + 1, sizeof *dp->q8.resid_send);
            dp->q8.resid_gather = calloc(dp->zero.hi - dp->zero.lo + 1, sizeof *dp->q8.resid_gather);
            if (!dp->q8.resid_send || !dp->q8.resid_gather) return fy_fail(err, "out of memory for error feedback");
        }
    }
    if (dp->local_micro > 1) {
        int depth = 1;
        while ((1 << (depth - 1)) < dp->local_micro) depth++;
        dp->acc.stack = calloc((size_t)depth, sizeof *dp->acc.stack);
        dp->acc.leaves = calloc((size_t)depth, sizeof *dp->acc.leaves);
        if (!dp->acc.stack || !dp->acc.leaves) return fy_fail(err, "out of memory");
        dp->acc.cap = depth;
        for (int i = 0; i < depth; i++)
            if (fy_be_alloc(m->be, &dp->acc.stack[i], dp->n_local, err)) return fy_wrap(err, "gradient accumulation");
    }
    return 0;
}

void fy_dp_free(fy_dp *dp, fy_model *m) {
    if (dp->bk.rs) fy_dp_set_bucketing(dp, m, 0, 0, NULL);
    for (int i = 0; i < dp->acc.cap; i++)
        if (dp->acc.stack[i].handle) fy_be_free(m->be, &dp->acc.stack[i]);
    free(dp->acc.stack);
    free(dp->acc.leaves);
    free(dp->zero.counts);
    free(dp->zero.chunk_part);
    free(dp->host);
    free(dp->zero.shard);
    free(dp->q8.resid_send);
    free(dp->q8.resid_gather);
    fy_dp_diloco_free(dp);
    fy_dp_ckpt_free(dp);
    fy_params_free(&dp->ep.full_tab);
    memset(dp, 0, sizeof *dp);
}

int fy_dp_rank_table(const fy_model *m, int rank, int size, fy_param_table *t, fy_err *err) {
    if (m->lora) return fy_lora_table(&m->cfg, &m->lora->cfg, rank, size, t, err);
    return fy_params_build_shard(&m->cfg, rank, size, t, err);
}

int fy_dp_create_optimizer(fy_dp *dp, fy_model *m, const fy_adamw_opts *o, fy_adamw *opt, fy_err *err) {
    if (!fy_dp_sharded(dp)) return fy_adamw_create(opt, m, o, err);
    return fy_adamw_create_ranges(opt, m, o, dp->zero.lo, dp->zero.hi, dp->n, dp->n_local, err);
}

/* ---- the local tree of micro-batches ------------------------------------- */

int fy_dp_accumulate(fy_dp *dp, fy_model *m, int j, fy_err *err) {
    if (dp->local_micro == 1) return 0;
    fy_backend *be = m->be;
    if (j == 0) dp->acc.top = 0;
    /* Push the leaf, then merge equal-sized neighbours: a binary counter
     * whose carries are exactly the aligned power-of-two subtrees. */
    int top = dp->acc.top;
    be->ops->copy(be, fy_at(&dp->acc.stack[top], 0), fy_at(&m->grads, 0), dp->n_local);
    dp->acc.leaves[top] = 1;
    top++;
    while (top >= 2 && dp->acc.leaves[top - 1] == dp->acc.leaves[top - 2]) {
        be->ops->axpy(be, dp->n_local, 1.0f, fy_at(&dp->acc.stack[top - 1], 0), fy_at(&dp->acc.stack[top - 2], 0));
        dp->acc.leaves[top - 2] *= 2;
        top--;
    }
    dp->acc.top = top;
    return fy_be_sync(be, err);
}

/* m->grads = the tree sum of the local micro-batches: the stack folded from
 * the right (the tree splits at the largest power of two). */
static int local_sum(fy_dp *dp, fy_model *m, fy_err *err) {
    if (dp->local_micro == 1) return 0;
    fy_backend *be = m->be;
    int top = dp->acc.top;
    for (int i = top - 1; i > 0; i--)
        be->ops->axpy(be, dp->n_local, 1.0f, fy_at(&dp->acc.stack[i], 0), fy_at(&dp->acc.stack[i - 1], 0));
    be->ops->copy(be, fy_at(&m->grads, 0), fy_at(&dp->acc.stack[0], 0), dp->n_local);
    return fy_be_sync(be, err);
}

/* ---- the step -------------------------------------------------------------- */

/* x[n] (=) the sum over ranks, sent as int8 blocks both ways (reduce-scatter,
 * then all-gather of the sums) with error feedback on both sides: what
 * quantization dropped last call is sent now. Every rank ends with the same
 * bits. Compressed gradients and DiLoCo's compressed deltas. */
int fy_dp_allreduce_q8(fy_dp *dp, float *x, fy_err *err) {
    size_t len = dp->zero.hi - dp->zero.lo;
    for (size_t i = 0; i < dp->n; i++) x[i] += dp->q8.resid_send[i];
    if (fy_comm_reduce_scatter_q8(dp->comm, x, dp->zero.shard, dp->zero.counts, dp->zero.displ, dp->q8.resid_send,
                                  err))
        return -1;
    for (size_t i = 0; i < len; i++) dp->zero.shard[i] += dp->q8.resid_gather[i];
    return fy_comm_allgather_f32(dp->comm, dp->zero.shard, x, dp->zero.counts, dp->zero.displ, 1,
                                 dp->q8.resid_gather, err);
}

int fy_dp_upload_grads(fy_dp *dp, fy_model *m, int whole, fy_err *err) {
    fy_backend *be = m->be;
    const size_t len = dp->zero.hi - dp->zero.lo;
    if (whole) be->ops->upload(be, fy_at(&m->grads, 0), dp->host, dp->n);
    else if (len) be->ops->upload(be, fy_at(&m->grads, dp->zero.lo), dp->zero.shard, len);
    return fy_be_sync(be, err);
}

/* The cross-rank reduction: every rank gets the summed gradient (DDP,
 * compressed), or its shard of it (ZeRO-1). */
static int reduce_grads(fy_dp *dp, fy_model *m, fy_err *err) {
    if (local_sum(dp, m, err)) return -1;
    if (dp->size == 1 || dp->diloco.local_steps) return 0;
    /* the backward sent the buckets (but the last) */
    if (dp->bk.rs && fy_comm_rs_active(dp->bk.rs)) return fy_dp_buckets_finish(dp, m, err);
    fy_backend *be = m->be;
    be->ops->download(be, dp->host, fy_at(&m->grads, 0), dp->n);
    if (fy_be_sync(be, err)) return -1;
    int rc = dp->replicated ? fy_comm_allreduce_f32(dp->comm, dp->host, dp->n, err)
             : dp->compress ? fy_dp_allreduce_q8(dp, dp->host, err)
                            : fy_comm_reduce_scatter_f32(dp->comm, dp->host, dp->zero.shard, dp->zero.counts,
                                                         dp->zero.displ, err);
    return rc ? -1 : fy_dp_upload_grads(dp, m, dp->replicated || dp->compress, err);
}

static int grad_norm(fy_dp *dp, fy_model *m, double *norm, fy_err *err) {
    if (!fy_dp_sharded(dp)) {
        fy_grad_sumsq_chunks(m, 0, dp->n, dp->zero.chunk_part);
    } else {
        fy_grad_sumsq_chunks(m, dp->zero.lo, dp->zero.hi, dp->zero.chunk_part + dp->zero.chunk_lo);
        size_t *cnt = malloc(2 * (size_t)dp->size * sizeof *cnt);
        if (!cnt) return fy_fail(err, "out of memory");
        for (int r = 0; r < dp->size; r++) {
            size_t c0 = dp->zero.n_chunks * r / dp->size, c1 = dp->zero.n_chunks * (r + 1) / dp->size;
            cnt[r] = (c1 - c0) * sizeof(double);
            cnt[dp->size + r] = c0 * sizeof(double);
        }
        int rc = fy_comm_allgatherv(dp->comm, dp->zero.chunk_part + dp->zero.chunk_lo, dp->zero.chunk_part, cnt, cnt + dp->size,
                                    err);
        free(cnt);
        if (rc) return -1;
    }
    *norm = fy_norm_from_chunks(dp->zero.chunk_part, dp->zero.n_chunks);
    if (dp->ep.on) { /* the experts' part: every rank's own, in rank order */
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
    size_t len = dp->zero.hi - dp->zero.lo;
    if (len) be->ops->download(be, dp->zero.shard, fy_at(&m->params, dp->zero.lo), len);
    if (fy_be_sync(be, err) ||
        fy_comm_allgather_f32(dp->comm, dp->zero.shard, dp->host, dp->zero.counts, dp->zero.displ, 0, NULL, err))
        return -1;
    /* Upload the others' shards; this rank's part is already there. */
    if (dp->zero.lo) be->ops->upload(be, fy_at(&m->params, 0), dp->host, dp->zero.lo);
    if (dp->zero.hi < dp->n) be->ops->upload(be, fy_at(&m->params, dp->zero.hi), dp->host + dp->zero.hi, dp->n - dp->zero.hi);
    return fy_be_sync(be, err);
}

int fy_dp_step(fy_dp *dp, fy_model *m, fy_adamw *opt, float *grad_norm_out, float *lr_used, fy_err *err) {
    double norm = 0;
    const int n_micro = dp->local_micro * dp->size;
    if (reduce_grads(dp, m, err) || grad_norm(dp, m, &norm, err)) return -1;
    if (dp->diloco.local_steps) {
        /* Local steps: each rank its own norm, but a non-finite one on any
         * rank fails the step on all. */
        int bad = fy_dp_vote(dp, !isfinite(norm), err);
        if (bad < 0) return -1;
        if (bad) norm = NAN;
    }
    norm /= dp->diloco.local_steps ? dp->local_micro : n_micro; /* of the mean gradient */
    if (grad_norm_out) *grad_norm_out = (float)norm;
    const int summed = dp->diloco.local_steps ? dp->local_micro : n_micro;
    if (fy_adamw_update(opt, m, norm, summed == 1 ? 1.0f : 1.0f / (float)summed, lr_used, err)) return -1;
    if (gather_params(dp, m, err)) return -1;
    if (dp->size > 1 && !dp->diloco.local_steps) {
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

void fy_dp_mark(fy_dp *dp) { dp->bytes_at_step = fy_comm_bytes_sent(dp->comm); }
uint64_t fy_dp_step_bytes(const fy_dp *dp) { return fy_comm_bytes_sent(dp->comm) - dp->bytes_at_step; }

