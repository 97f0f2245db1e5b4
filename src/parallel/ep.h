/* Expert parallelism over the communicator (DESIGN §6): hands the model the
 * all-to-all it needs to send expert rows to their owners (model.h,
 * fy_model_set_expert_parallel). The gradients then still go through the
 * data-parallel reduction (dp.h): each expert's gradient is nonzero only on
 * its owner, so the sum gives every rank all of them. */
#ifndef FY_EP_H
#define FY_EP_H

#include "core/err.h"
#include "parallel/comm.h"
#include "model/model.h"

/* Splits m's routed experts over the ranks of c (1 rank: turns it off). */
int fy_ep_attach(fy_comm *c, fy_model *m, fy_err *err);

#endif
