/* DiLoCo (dp.h): H local steps per rank, then one outer Nesterov step on
 * the ranks' averaged parameter deltas from the shared anchor. Only the
 * deltas travel (f32, or int8 with error feedback). */
#include "parallel/dp_impl.h"

#include <stdlib.h>

int fy_dp_diloco_init(fy_dp *dp, const fy_model *m, const fy_dp_diloco *d, fy_err *err) {
    if (!d || d->local_steps <= 0 || dp->size == 1) return 0;
    dp->diloco.local_steps = d->local_steps;
    dp->diloco.outer_lr = d->outer_lr;
    dp->diloco.outer_momentum = d->outer_momentum;
    dp->diloco.n_buffers = m->tab.n_buffers;
    size_t nn = m->tab.n_params + dp->diloco.n_buffers + 1;
    dp->diloco.anchor = calloc(nn, sizeof *dp->diloco.anchor);
    dp->diloco.outer_mom = calloc(nn, sizeof *dp->diloco.outer_mom);
    dp->diloco.delta = calloc(nn, sizeof *dp->diloco.delta);
    if (!dp->diloco.anchor || !dp->diloco.outer_mom || !dp->diloco.delta)
        return fy_fail(err, "out of memory for the DiLoCo state");
    return 0;
}

void fy_dp_diloco_free(fy_dp *dp) {
    free(dp->diloco.anchor);
    free(dp->diloco.outer_mom);
    free(dp->diloco.delta);
}

static int download_state(fy_dp *dp, fy_model *m, float *dst, fy_err *err) {
    fy_backend *be = m->be;
    be->ops->download(be, dst, fy_at(&m->params, 0), dp->n);
    if (dp->diloco.n_buffers) be->ops->download(be, dst + dp->n, fy_at(&m->buffers, 0), dp->diloco.n_buffers);
    return fy_be_sync(be, err);
}

int fy_dp_set_anchor(fy_dp *dp, fy_model *m, fy_err *err) {
    if (!dp->diloco.local_steps) return 0;
    return download_state(dp, m, dp->diloco.anchor, err);
}

int fy_dp_outer_step(fy_dp *dp, fy_model *m, fy_err *err) {
    if (!dp->diloco.local_steps) return 0;
    const size_t nn = dp->n + dp->diloco.n_buffers;
    if (download_state(dp, m, dp->diloco.delta, err)) return -1;
    for (size_t i = 0; i < nn; i++) dp->diloco.delta[i] = dp->diloco.anchor[i] - dp->diloco.delta[i];
    if (dp->compress) {
        /* the parameter deltas in int8; the router biases (a few floats) f32 */
        if (fy_dp_allreduce_q8(dp, dp->diloco.delta, err)) return -1;
        if (dp->diloco.n_buffers && fy_comm_allreduce_f32(dp->comm, dp->diloco.delta + dp->n, dp->diloco.n_buffers, err)) return -1;
    } else if (fy_comm_allreduce_f32(dp->comm, dp->diloco.delta, nn, err)) {
        return -1;
    }
    const float inv = 1.0f / (float)dp->size, mu = dp->diloco.outer_momentum, lr = dp->diloco.outer_lr;
    for (size_t i = 0; i < dp->n; i++) {
        float d = dp->diloco.delta[i] * inv;
        dp->diloco.outer_mom[i] = mu * dp->diloco.outer_mom[i] + d;
        dp->diloco.anchor[i] -= lr * (d + mu * dp->diloco.outer_mom[i]);
    }
    /* The router biases are not trained by gradients: their average. */
    for (size_t i = dp->n; i < nn; i++) dp->diloco.anchor[i] -= dp->diloco.delta[i] * inv;
    fy_backend *be = m->be;
    be->ops->upload(be, fy_at(&m->params, 0), dp->diloco.anchor, dp->n);
    if (dp->diloco.n_buffers) be->ops->upload(be, fy_at(&m->buffers, 0), dp->diloco.anchor + dp->n, dp->diloco.n_buffers);
    return fy_be_sync(be, err);
}

