/* Guards of the training loop (docs/DESIGN.md §5): a step whose loss or gradient
 * norm is NaN/Inf, whose loss spikes far above the recent window, or whose
 * state was silently corrupted (a weight/moment checksum that changed between
 * steps, an ABFT GEMM check that failed) is discarded; the trainer restores
 * the last in-memory snapshot and replays from it. Replay is deterministic,
 * so a transient fault leaves the run bit-identical to a clean one.
 *
 * Everything here only reads the model: with no fault, guards change no
 * number the training computes. */
#ifndef FY_GUARD_H
#define FY_GUARD_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "model/model.h"
#include "optim/optim.h"

typedef struct fy_guard_opts {
    int nonfinite;          /* flag NaN/Inf loss or gradient norm (default 1) */
    int spike_window;       /* accepted losses kept for spike detection; 0 = off (default 32) */
    int spike_min;          /* losses needed before spikes are judged (default 8) */
    double spike_z;         /* flag when (loss - mean) / std exceeds this ... (default 6) */
    double spike_ratio;     /* ... and loss / mean exceeds this (default 1.3) */
    int snapshot_every;     /* steps between in-memory snapshots (default 10) */
    int max_failures;       /* consecutive failures before giving up (default 5) */
    int weight_checksum;    /* hash weights + moments + buffers between steps (default 1) */
    double abft_fraction;   /* fraction of GEMMs ABFT-checked (default 0.02; the trainer's
                             * backend is wrapped in the chaos checker when > 0) */
    int recompute_every;    /* execute steps 1, N+1, 2N+1, ... twice from the same state and
                             * compare the results bitwise; 0 = off (default 0; needs a
                             * deterministic backend) */
} fy_guard_opts;

void fy_guard_opts_default(fy_guard_opts *o);

/* ---- loss window / spike detection ---- */

typedef struct fy_loss_window {
    double *v;
    int cap, n, head;
} fy_loss_window;

int fy_loss_window_init(fy_loss_window *w, int cap);
void fy_loss_window_free(fy_loss_window *w);
void fy_loss_window_push(fy_loss_window *w, double loss);
/* 1 when loss is a spike under o (writes a reason like "loss 9.1 is 7.3
 * sigma / 2.9x above the mean 3.1 of the last 32 steps" into why). */
int fy_loss_is_spike(const fy_loss_window *w, const fy_guard_opts *o, double loss, char *why,
                     size_t cap);

/* ---- snapshots: host copies of everything a step changes ---- */

typedef struct fy_snapshot {
    int valid, step, opt_t;
    float *params, *m, *v, *buffers;
    int64_t *loads;
    size_t n_params, n_moments, n_buffers, n_loads; /* n_moments < n_params: a ZeRO-1 shard */
} fy_snapshot;

int fy_snapshot_take(fy_snapshot *s, fy_model *m, const fy_adamw *opt, int step, fy_err *err);
int fy_snapshot_restore(const fy_snapshot *s, fy_model *m, fy_adamw *opt, fy_err *err);
void fy_snapshot_free(fy_snapshot *s);

/* ---- state checksums (per tensor, so a mismatch names the tensor) ---- */

typedef struct fy_state_sums {
    int valid, n;            /* n tensors in the model's table */
    uint64_t *p, *m, *v;     /* per tensor: params, AdamW m, AdamW v (buffers: p only) */
    float *host;             /* staging, n_params floats */
} fy_state_sums;

int fy_state_sums_compute(fy_state_sums *s, fy_model *m, const fy_adamw *opt, fy_err *err);
/* Recomputes and compares; 0 if equal, 1 if not (where names the first
 * tensor that differs: "adam.v[model.layers.1.mlp.gate.weight]"), -1 on
 * error. */
int fy_state_sums_verify(fy_state_sums *s, fy_model *m, const fy_adamw *opt, char *where,
                         size_t cap, fy_err *err);
void fy_state_sums_free(fy_state_sums *s);

/* The name of the first tensor whose gradient is not finite ("" if none). */
int fy_find_nonfinite_grad(fy_model *m, char *where, size_t cap, fy_err *err);

/* The tensor containing element `off` of the params (or grads) block, or
 * NULL. */
const fy_tensor_info *fy_tensor_at(const fy_model *m, size_t off);

#endif
