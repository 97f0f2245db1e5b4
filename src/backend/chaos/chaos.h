/* "chaos:INNER": a backend that wraps another (DESIGN §5) and stands in for
 * an unstable chip. It runs every op on INNER unchanged, and for GEMMs:
 * - ABFT: on a seeded fraction of GEMMs, compares the column sums of the
 *   product with the product of the sums (e^T C = alpha (e^T op(A)) op(B) +
 *   beta e^T C_old) within a tolerance derived from the sizes and the
 *   magnitudes; a mismatch is recorded as a fault for the trainer to take;
 * - corruption: when armed for a step, corrupts one element of the output
 *   of GEMM number G of that step (what FERRY_INJECT=gemm:step=S,index=G
 *   asks for).
 * With fraction 0 and nothing armed it adds one counter per GEMM.
 *
 * fy_backend_opts.perturb = "OP:EPS" (OP rmsnorm, swiglu or attn; the CLI
 * takes it from FERRY_PERTURB): every forward output of OP is multiplied by
 * (1 + EPS), a kernel that is consistently slightly wrong. It exists to
 * prove that `ferry verify` (serve/verify.h) fails loudly; a malformed value
 * fails the creation. */
#ifndef FY_CHAOS_H
#define FY_CHAOS_H

#include "backend/backend.h"

int fy_backend_chaos_create(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err);

typedef struct fy_chaos_fault {
    int step, gemm_index, trans_a, trans_b, M, N, K, column;
    char phase[16];
    fy_ref A, B, C;
    double got, want, tol;
} fy_chaos_fault;

/* NULL when be is not a chaos backend. */
struct fy_chaos;
struct fy_chaos *fy_chaos_of(fy_backend *be);
/* Starts a step: resets the GEMM counter and the recorded fault, sets the
 * fraction of GEMMs checked, and arms corruption of GEMM corrupt_index
 * (-1: none). */
void fy_chaos_begin_step(struct fy_chaos *c, int step, double fraction, int corrupt_index);
void fy_chaos_set_phase(struct fy_chaos *c, const char *phase);
/* 1 and the first fault since begin_step, if any; clears it. */
int fy_chaos_take_fault(struct fy_chaos *c, fy_chaos_fault *f);
/* GEMMs checked and faults found since creation. */
void fy_chaos_counts(struct fy_chaos *c, long *checked, long *faults);

#endif
