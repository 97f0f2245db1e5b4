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
    fy_buf m, v;           /* moments of params [lo, lo + m.n - xn) then of [xlo, xlo + xn), laid out as
                            * the params block */
    size_t lo;             /* 0, or where this rank's ZeRO-1 shard starts (parallel/dp.h) */
    size_t xlo, xn;        /* a second range (an expert-parallel rank's own experts), xn 0: none */
    int t;                 /* steps taken (1-based after the first) */
} fy_adamw;

/* lr at 1-based step s: linear warmup to lr over warmup_steps, then cosine
 * down to min_lr at total_steps (held at min_lr after). */
float fy_lr_at(const fy_adamw_opts *o, int step);

int fy_adamw_create(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, fy_err *err);
/* Moments for params [lo, hi) only (a ZeRO-1 shard). */
int fy_adamw_create_shard(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, size_t lo, size_t hi,
                          fy_err *err);
/* Moments for params [lo, hi) and [xlo, xhi) (hi <= xlo): a ZeRO-1 shard of
 * the dense params and the routed experts an expert-parallel rank holds. */
int fy_adamw_create_ranges(fy_adamw *opt, const fy_model *m, const fy_adamw_opts *o, size_t lo, size_t hi,
                           size_t xlo, size_t xhi, fy_err *err);
void fy_adamw_free(fy_adamw *opt, fy_backend *be);

/* The gradient norm is summed over fixed chunks of the params block, so that
 * ranks holding different shards of it (chunk-aligned) reach the bits one
 * rank gets: part[c] = sum of squares of m->grads over chunk c, for the
 * chunks c of [lo, hi) (lo a multiple of FY_NORM_CHUNK); the norm is the
 * square root of the sum of all chunks' parts in chunk order. */
#define FY_NORM_CHUNK ((size_t)1 << 16)
size_t fy_norm_chunks(size_t n);
void fy_grad_sumsq_chunks(fy_model *m, size_t lo, size_t hi, double *part);
double fy_norm_from_chunks(const double *part, size_t n_chunks);

/* One update of the params of opt's ranges from m->grads scaled by
 * grad_scale (1/n for a sum of n micro-batch gradients), with the norm of the
 * scaled gradient `norm` (before clipping) deciding the clip. */
int fy_adamw_update(fy_adamw *opt, fy_model *m, double norm, float grad_scale, float *lr_used, fy_err *err);

/* One update from m->grads on one rank: computes the grad norm (returned in
 * *grad_norm, before clipping), clips, applies AdamW with lr(t). */
int fy_adamw_step(fy_adamw *opt, fy_model *m, float *grad_norm, float *lr_used, fy_err *err);

#endif
