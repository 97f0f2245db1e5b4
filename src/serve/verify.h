/* Cross-backend agreement (`ferry verify`): run one model, loaded from one
 * checkpoint, through the same batch on two backends and measure how far
 * apart they are: logits, losses, every parameter gradient, router choices,
 * and a greedy continuation.
 *
 * One backend at a time: fy_verify_capture() runs everything on a model and
 * keeps host copies, so the reference's model can be freed before the next
 * backend's is loaded (two models of `small` need not fit at once).
 *
 * The error measure of a tensor x against the reference r is
 *   rel = max_i |x_i - r_i| / max_i |r_i|
 * (the worst difference relative to the tensor's own scale). Elementwise
 * relative errors are useless here: logits and gradients cross zero, and a
 * value of 1e-9 that differs by 1e-9 says nothing about the backend. */
#ifndef FY_VERIFY_H
#define FY_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "model/model.h"

/* What every backend runs: a batch for forward + backward, and a prompt to
 * continue greedily. All host memory, owned by the caller. */
typedef struct fy_verify_input {
    int B, T;
    const int32_t *inputs, *labels;  /* [B*T]; labels may hold FY_IGNORE_INDEX */
    const int32_t *prompt;           /* [n_prompt] */
    int n_prompt, n_new;             /* n_new greedy tokens after the prompt */
} fy_verify_input;

/* Everything one backend produced, on the host. */
typedef struct fy_verify_capture {
    fy_loss loss;
    float *logits;      /* [B*T, V] main head */
    size_t n_logits;
    float *grads;       /* the params block's layout (fy_param_table offsets) */
    size_t n_grads;
    int32_t *route;     /* router idx [B*T, K] of every main MoE layer, in layer order */
    size_t n_route;
    int32_t *greedy;    /* [n_new] token ids */
    int n_greedy;
} fy_verify_capture;

/* Zeroes m's gradients, runs forward (with grads) + backward on in's batch,
 * downloads logits, gradients and router choices, then decodes in->n_new
 * tokens greedily from in's prompt through the latent KV cache (the path
 * `ferry generate --temperature 0` takes). Never touches m's weights. */
int fy_verify_capture_run(fy_model *m, const fy_verify_input *in, fy_verify_capture *out, fy_err *err);
void fy_verify_capture_free(fy_verify_capture *c);

typedef struct fy_verify_tol {
    double logits;      /* rel of the logits; also the relative difference of each loss */
    double grad;        /* rel of each parameter gradient tensor */
} fy_verify_tol;

typedef struct fy_verify_diff {
    double max_abs;     /* max |x - r| */
    double scale;       /* max |r| */
    double rel;         /* max_abs / scale (0 when both are all zero; NaN anywhere gives NaN) */
} fy_verify_diff;

typedef struct fy_verify_grad {
    int tensor;         /* index into the parameter table */
    fy_verify_diff d;
} fy_verify_grad;

#define FY_VERIFY_MAX_LOSSES (3 + FY_MAX_MTP)

typedef struct fy_verify_report {
    fy_verify_diff logits;
    int n_losses;                           /* total, main, balance, mtp1.. */
    const char *loss_name[FY_VERIFY_MAX_LOSSES];
    double loss_ref[FY_VERIFY_MAX_LOSSES], loss_got[FY_VERIFY_MAX_LOSSES], loss_rel[FY_VERIFY_MAX_LOSSES];
    fy_verify_grad *grads;                  /* every trainable tensor, worst rel first */
    int n_grads, n_grads_over;
    size_t route_total, route_diff;         /* router choices compared / different */
    int greedy_n, greedy_first_diff;        /* -1: identical */
    int pass;
    char reason[600];                       /* one line; "" when pass */
} fy_verify_report;

/* Compares x against the reference ref (both captured from models with the
 * parameter table tab on the same input). Fills r; r->pass says whether every
 * check is within tol, and r->reason names the worst offenders otherwise. */
int fy_verify_compare(const fy_param_table *tab, const fy_verify_capture *ref, const fy_verify_capture *x,
                      const fy_verify_tol *tol, fy_verify_report *r, fy_err *err);
void fy_verify_report_free(fy_verify_report *r);

#endif
