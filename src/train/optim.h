/* AdamW over a model's flat parameter block, global-norm gradient clipping,
 * and the warmup + cosine learning-rate schedule. */
#ifndef FY_OPTIM_H
#define FY_OPTIM_H

#include "backend/backend.h"
#include "core/err.h"
#include "model/model.h"

typedef struct fy_adamw_opts {
    float lr, min_lr;      /* peak and floor of the schedule */
    int warmup_steps, total_steps;
    float beta1, beta2, eps;
    float weight_decay;    /* only on tensors the parameter table marks decay */
    float grad_clip;       /* global L2 norm; <= 0 disables */
} fy_adamw_opts;

typedef struct fy_adamw {
    fy_adamw_opts o;
    fy_buf m, v;           /* moments, same layout as the params block */
    int t;                 /* steps taken (1-based after the first) */
} fy_adamw;

/* lr at 1-based step s: linear warmup to lr over warmup_steps, then cosine
 * down to min_lr at total_steps (held at min_lr after). */
float fy_lr_at(const fy_adamw_opts *o, int step);

int fy_adamw_create(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, fy_err *err);
void fy_adamw_free(fy_adamw *opt, fy_backend *be);

/* One update from m->grads: computes the global grad norm (returned in
 * *grad_norm, before clipping), clips, applies AdamW with lr(t). */
int fy_adamw_step(fy_adamw *opt, fy_model *m, float *grad_norm, float *lr_used, fy_err *err);

#endif
