/* Expert parallelism over the communicator (docs/DESIGN.md §6): hands the model the
 * all-to-all it needs to send expert rows to their owners (model.h,
 * fy_model_set_expert_parallel). Each rank holds only its own experts; their
 * gradients are complete on the owner and are not reduced (dp.h). */
#ifndef FY_EP_H
#define FY_EP_H

#include "core/err.h"
#include "parallel/comm.h"
#include "model/model.h"

/* Splits m's routed experts over the ranks of c (1 rank: turns it off). */
int fy_ep_attach(fy_comm *c, fy_model *m, fy_err *err);

#endif
