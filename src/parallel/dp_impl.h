/* Inside data parallelism (src/parallel only; users include dp.h): what the
 * parts of dp.h's implementation call across their files (dp.c the step,
 * dp_buckets.c, dp_diloco.c, dp_ckpt.c). */
#ifndef FY_DP_IMPL_H
#define FY_DP_IMPL_H

#include "parallel/dp.h"

/* x[n] (=) the sum over ranks, sent as int8 blocks both ways with error
 * feedback (dp.c): compressed gradients and DiLoCo's compressed deltas. */
int fy_dp_allreduce_q8(fy_dp *dp, float *x, fy_err *err);
/* The reduced gradient onto the device: all of [0, n) from dp->host
 * (whole), or this rank's shard from dp->zero.shard. */
int fy_dp_upload_grads(fy_dp *dp, fy_model *m, int whole, fy_err *err);
/* Gradient buckets (dp_buckets.c): sends the buckets still filling and
 * waits for the reduction the backward fed; the result onto the device. */
int fy_dp_buckets_finish(fy_dp *dp, fy_model *m, fy_err *err);
/* DiLoCo (dp_diloco.c): its settings and host state (d NULL or off, or one
 * rank: plain data parallel); fy_dp_diloco_free releases the state. */
int fy_dp_diloco_init(fy_dp *dp, const fy_model *m, const fy_dp_diloco *d, fy_err *err);
void fy_dp_diloco_free(fy_dp *dp);
/* The table of m's trainable block (the model's, or with LoRA adapters
 * on, the adapters') on expert-parallel rank `rank` of `size` (size 1: the
 * whole model's, as checkpoints hold it). */
int fy_dp_rank_table(const fy_model *m, int rank, int size, fy_param_table *t, fy_err *err);
/* The checkpoint buffers (dp_ckpt.c). */
void fy_dp_ckpt_free(fy_dp *dp);

#endif
