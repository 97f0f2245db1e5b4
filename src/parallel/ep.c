/* Expert parallelism (ep.h): the model's expert all-to-all carried by the
 * communicator, so model/ never sees fy_comm. */
#include "parallel/ep.h"

static int alltoallv(void *ctx, const void *send, const size_t *scounts, const size_t *sdispl, void *recv,
                     const size_t *rcounts, const size_t *rdispl, fy_err *err) {
    return fy_comm_alltoallv((fy_comm *)ctx, send, scounts, sdispl, recv, rcounts, rdispl, err);
}

int fy_ep_attach(fy_comm *c, fy_model *m, fy_err *err) {
    fy_expert_parallel ep = {fy_comm_rank(c), fy_comm_size(c), alltoallv, c};
    if (fy_model_set_expert_parallel(m, &ep, err)) return fy_wrap(err, "expert parallel");
    return 0;
}
