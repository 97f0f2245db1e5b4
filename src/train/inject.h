/* Fault injection for tests (docs/DESIGN.md §5), driven by a spec string (the
 * trainer's fy_train_opts.inject; the CLI passes the environment variable
 * FERRY_INJECT): faults separated by ';', each "kind:key=value,key=value".
 *   nan_grad:step=S[,tensor=NAME][,index=I][,repeat=R]   NaN in a gradient after backward
 *   flip_weight:step=S[,tensor=NAME][,index=I][,bit=B]    bit flip in a weight after step S
 *   flip_moment:step=S[,tensor=NAME][,index=I][,bit=B][,moment=m|v]  ... in an AdamW moment
 *   flip_act:step=S[,layer=L][,act=ln1|ln2|q|att][,index=I][,bit=B][,repeat=R]
 *                                                         bit flip in an activation the backward
 *                                                         reads, between forward and backward
 *   spike:step=S[,repeat=R]                               poisoned batch (random labels)
 *   gemm:step=S[,index=G][,repeat=R]                      corrupts GEMM number G of step S
 *                                                         (needs --backend chaos:cpu)
 * tensor defaults to the first trained tensor, index to 0, bit to 30 (the
 * top exponent bit), moment to v, repeat to 1 (a transient fault; a larger
 * repeat fires again when the step is replayed after a rollback).
 * A NULL or empty spec injects nothing and costs nothing. Errors name
 * FERRY_INJECT, the way users set the spec. */
#ifndef FY_INJECT_H
#define FY_INJECT_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "model/model.h"
#include "optim/optim.h"

typedef enum { FY_INJ_NAN_GRAD, FY_INJ_FLIP_WEIGHT, FY_INJ_FLIP_MOMENT, FY_INJ_SPIKE, FY_INJ_GEMM,
               FY_INJ_FLIP_ACT } fy_inj_kind;

typedef struct fy_inj_fault {
    fy_inj_kind kind;
    int step, bit, repeat, fired;
    char moment;          /* 'm' or 'v' */
    char tensor[96];      /* "" = default; flip_act: the activation's name */
    size_t index;
    int layer;            /* flip_act */
} fy_inj_fault;

#define FY_INJ_MAX 32
typedef struct fy_inject {
    int n;
    fy_inj_fault f[FY_INJ_MAX];
} fy_inject;

int fy_inject_parse(const char *spec, fy_inject *inj, fy_err *err);
/* Checks tensor names and indices against the model; fills in defaults. */
int fy_inject_resolve(fy_inject *inj, const fy_model *m, fy_err *err);
/* fy_inject_parse, then fy_inject_resolve, and a warning naming the spec
 * when it injects anything (n = 0 for a NULL or empty spec). */
int fy_inject_setup(fy_inject *inj, const char *spec, const fy_model *m, fy_err *err);

/* Hooks; each returns 1 when it injected (and describes it in what). */
int fy_inject_batch(fy_inject *inj, int step, int32_t *labels, size_t n, int vocab, char *what,
                    size_t cap);
int fy_inject_grad(fy_inject *inj, int step, fy_model *m, char *what, size_t cap);
int fy_inject_state(fy_inject *inj, int step, fy_model *m, fy_adamw *opt, char *what, size_t cap);
/* After the forward: flips a bit of a saved activation; -1 (and err) when
 * the index is outside it. */
int fy_inject_act(fy_inject *inj, int step, fy_model *m, char *what, size_t cap, fy_err *err);
/* Whether a GEMM fault is due at this step (marks it fired); *gemm_index
 * gets which GEMM of the step to corrupt. */
int fy_inject_gemm_due(fy_inject *inj, int step, int *gemm_index);

#endif
