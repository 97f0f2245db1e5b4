/* "chaos:INNER": a backend that wraps another (docs/DESIGN.md §5) and stands in for
 * an unstable chip. It runs every op on INNER unchanged, and for GEMMs:
 * - ABFT: on a seeded fraction of GEMMs, compares the column sums of the
 *   product with the product of the sums (e^T C = alpha (e^T op(A)) op(B) +
 *   beta e^T C_old) within a tolerance derived from the sizes and the
 *   magnitudes; a mismatch is recorded as a fault for the trainer to take
 *   (fy_be_fault_take, backend.h);
 * - corruption: when armed for a step, corrupts one element of the output
 *   of GEMM number G of that step (what FERRY_INJECT=gemm:step=S,index=G
 *   asks for).
 * With fraction 0 and nothing armed it adds one counter per GEMM.
 *
 * FERRY_PERTURB=OP:EPS (OP rmsnorm, swiglu or attn), read when the backend is
 * created: every forward output of OP is multiplied by (1 + EPS), a kernel
 * that is consistently slightly wrong. It exists to prove that `ferry verify`
 * (serve/verify.h) fails loudly; a malformed value fails the creation. */
#ifndef FY_CHAOS_H
#define FY_CHAOS_H

#include "backend/backend.h"

/* For backend.c's fy_backend_create; everything else goes through
 * backend.h: the ABFT checks and GEMM corruption are its fault ops
 * (fy_be_fault_*). */
int fy_backend_chaos_create(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err);

#endif
