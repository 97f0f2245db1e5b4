/* Gradient buckets (dp.h, fy_dp_set_bucketing): the backward hands over
 * each layer's gradient as it is final, consecutive ranges fill a bucket,
 * and a full bucket goes to the streamed reduction (comm.h) at once. */
#include "parallel/dp_impl.h"

#include <string.h>

/* Sends bucket k (0: dense params, 1: routed experts), if it holds any. */
static int post_bucket(fy_dp *dp, int k, fy_err *err) {
    size_t lo = dp->bk.pend_lo[k], hi = dp->bk.pend_hi[k];
    dp->bk.pend_lo[k] = dp->bk.pend_hi[k] = 0;
    if (hi <= lo) return 0;
    dp->bk.sent++;
    return dp->replicated ? fy_comm_ar_post(dp->bk.rs, dp->host, lo, hi, err) : fy_comm_rs_post(dp->bk.rs, dp->host, lo, hi, err);
}

static int dp_grad_ready(void *ctx, size_t lo, size_t hi, int first, fy_err *err) {
    fy_dp *dp = ctx;
    fy_model *m = dp->bk.model;
    /* The first range of a backward starts a reduction; an unfinished one
     * of a discarded step is dropped. */
    if (first || !fy_comm_rs_active(dp->bk.rs)) {
        if (fy_comm_rs_begin(dp->bk.rs, err)) return -1;
        memset(dp->bk.pend_lo, 0, sizeof dp->bk.pend_lo);
        memset(dp->bk.pend_hi, 0, sizeof dp->bk.pend_hi);
    }
    if (hi > dp->n) hi = dp->n; /* an expert shard's own experts are not reduced */
    if (lo >= hi) return 0;
    m->be->ops->download(m->be, dp->host + lo, fy_at(&m->grads, lo), hi - lo);
    if (fy_be_sync(m->be, err)) return -1;
    /* The ranges come from the end of each region down: a range that ends
     * where its region's bucket starts joins it. */
    const int k = lo >= m->tab.n_dense;
    if (dp->bk.pend_hi[k] > dp->bk.pend_lo[k] && dp->bk.pend_lo[k] != hi && post_bucket(dp, k, err)) return -1;
    if (dp->bk.pend_hi[k] <= dp->bk.pend_lo[k]) dp->bk.pend_hi[k] = hi;
    dp->bk.pend_lo[k] = lo;
    return dp->bk.pend_hi[k] - dp->bk.pend_lo[k] >= dp->bk.floats ? post_bucket(dp, k, err) : 0;
}

int fy_dp_set_bucketing(fy_dp *dp, fy_model *m, int on, float bucket_mb, fy_err *err) {
    if (dp->bk.rs) {
        fy_comm_rs_free(dp->bk.rs);
        dp->bk.rs = NULL;
        fy_model_set_grad_ready(m, NULL, NULL);
    }
    if (!on || dp->size == 1 || dp->compress || dp->diloco.local_steps || dp->local_micro != 1) return 0;
    /* At most one bucket per range the backward reports (two per layer). */
    const int max_buckets = 2 * m->tab.n_layers + 4;
    if (dp->replicated ? fy_comm_ar_create(dp->comm, dp->n, max_buckets, on == 2, &dp->bk.rs, err)
                       : fy_comm_rs_create(dp->comm, dp->zero.counts, dp->zero.displ, on == 2, &dp->bk.rs, err))
        return fy_wrap(err, "gradient buckets");
    dp->bk.model = m;
    dp->bk.floats = bucket_mb > 0 ? (size_t)((double)bucket_mb * 1e6 / sizeof(float)) : 0;
    fy_model_set_grad_ready(m, dp_grad_ready, dp);
    return 0;
}

int fy_dp_buckets_finish(fy_dp *dp, fy_model *m, fy_err *err) {
    if (post_bucket(dp, 0, err) || post_bucket(dp, 1, err)) return -1;
    if (dp->replicated ? fy_comm_ar_finish(dp->bk.rs, err) : fy_comm_rs_finish(dp->bk.rs, dp->zero.shard, err))
        return -1;
    return fy_dp_upload_grads(dp, m, dp->replicated, err);
}
