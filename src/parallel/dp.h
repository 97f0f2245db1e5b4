/* Data parallelism (docs/DESIGN.md §6): every rank holds the whole model, computes
 * the gradient of its rows of the global batch, and the ranks combine the
 * gradients so that every rank takes the same optimizer step.
 *
 * Determinism. A step's gradient is the sum of micro-batch gradients (micro
 * sequences each, global micro-batch i = rows [i*micro, (i+1)*micro) of the
 * step's global batch), combined as the fixed binary tree of fy_tree_sum:
 * on one rank by a device-side accumulation stack, across ranks by the
 * reduce-scatter. When every rank holds 2^j micro-batches (1 included), N
 * ranks produce the bits of one rank running the same micro-batches, so
 * "N ranks, global batch B" equals "1 rank, batch B, micro-batch B/N" bit
 * for bit, and a run can move between rank counts at a checkpoint.
 *
 * ZeRO-1. The optimizer moments are sharded: rank r owns params [lo, hi)
 * (whole FY_NORM_CHUNK chunks), gets the reduced gradient of only that
 * shard, updates it, and the ranks all-gather the updated parameters. The
 * gradient norm (for clipping) is summed from per-chunk parts in chunk
 * order, the same numbers as on one rank. Checkpoints gather the moments
 * into the one-file format of docs/DESIGN.md §3, so any rank count can resume them.
 *
 * Expert parallel (parallel/ep.h): the model holds an expert shard, whose
 * block is the dense params [0, n) (the same on every rank, reduced and
 * ZeRO-sharded as above) followed by this rank's routed experts [n, n_local)
 * (their gradients are complete on the owner, so they are not reduced; the
 * owner keeps their moments and updates them). The gradient norm adds every
 * rank's expert part in rank order. Checkpoints gather the whole model onto
 * rank 0 in the whole model's layout, so they resume on any rank count,
 * with or without expert parallelism. With LoRA adapters on, the block is
 * the adapters' (model/lora.h, fy_lora_table): the same split, the routed
 * experts' adapters of this rank after n; each tensor goes to its place in
 * the whole adapter table by its id.
 *
 * Compressed mode (slow links): the gradient travels as int8 blocks with
 * per-block scales (comm.h), both in the reduce-scatter and in the
 * all-gather of the reduced gradient, with error feedback on both sides;
 * every rank then runs the whole AdamW (moments not sharded).
 *
 * DiLoCo mode (slow links; Douillard et al. 2023): every rank takes H local
 * AdamW steps on its own rows without communicating gradients, then the
 * ranks average their parameter deltas from the last synchronised weights
 * (the "anchor") and take one outer step, Nesterov SGD on the averaged
 * delta: mom = mu*mom + delta; anchor -= outer_lr * (delta + mu*mom); every
 * rank restarts from the new anchor. The router biases are averaged too.
 * Bytes per token fall by about H; with compress as well, the deltas travel
 * as int8 blocks with error feedback (as compressed gradients do), about 4H. */
#ifndef FY_DP_H
#define FY_DP_H

#include <stdint.h>

#include "core/err.h"
#include "ckpt/checkpoint.h"
#include "parallel/comm.h"
#include "model/model.h"
#include "optim/optim.h"

typedef struct fy_dp {
    fy_comm *comm;
    int rank, size;
    int micro;            /* sequences per micro-batch */
    int local_micro;      /* micro-batches per rank per step */
    int compress;         /* 1: int8 gradients (DiLoCo: int8 deltas) with error feedback */
    int replicated;       /* 1: every rank keeps the whole AdamW, the gradients are all-reduced (DDP; --zero 0) */
    size_t n;             /* floats reduced over the ranks: the params block, or its dense part (expert parallel) */
    size_t n_local;       /* floats in this rank's params block (n, or n + its experts) */
    float *host;          /* [n] staging (several ranks): the local gradient sum, the gathered params */
    uint64_t bytes_at_step; /* fy_comm_bytes_sent when the step began */
    uint64_t ckpt_bytes;  /* bytes sent gathering checkpoint state (not training traffic) */
    struct {              /* the local tree of micro-batches (local_micro > 1) */
        fy_buf *stack;
        int *leaves, top, cap;
    } acc;
    struct {              /* the params shards over the ranks (ZeRO-1; also the reduce-scatters' pieces) */
        size_t *counts, *displ; /* [size] each */
        size_t lo, hi;    /* this rank's shard */
        size_t n_chunks, chunk_lo, chunk_hi; /* norm chunks: all, and this rank's */
        double *chunk_part; /* [n_chunks] */
        float *shard;     /* [hi - lo] */
    } zero;
    struct {              /* gradient bucketing (fy_dp_set_bucketing) */
        fy_comm_rs *rs;   /* the reduction the backward feeds (NULL: off) */
        fy_model *model;
        size_t floats;    /* post a bucket once it holds this many (0: every range as it comes) */
        size_t pend_lo[2], pend_hi[2]; /* the bucket being filled: of the dense part, of the experts */
        uint64_t sent;    /* buckets posted so far */
    } bk;
    struct {              /* int8 error feedback (compress) */
        float *resid_send;   /* [n] */
        float *resid_gather; /* [hi - lo] */
    } q8;
    struct {              /* DiLoCo */
        int local_steps;  /* H (0: plain data parallel) */
        float outer_lr, outer_momentum;
        size_t n_buffers;
        float *anchor, *outer_mom, *delta; /* [n + n_buffers] each, host */
    } diloco;
    struct {              /* expert parallel */
        int on;           /* the model holds an expert shard (fy_params_is_shard) */
        fy_param_table full_tab; /* the whole model's table (checkpoints) */
    } ep;
    struct {              /* rank 0: the gathered state of a checkpoint, in the whole model's layout */
        float *p, *b, *m, *v;
        float *stage;     /* [2n]: the dense part staged when its layout differs (LoRA adapters) */
    } ck;
    struct {              /* the per-rank state of a checkpoint (fy_dp_extra_state), gathered */
        float *m, *v, *resid_send, *resid_gather; /* [size * n] x3, [n] */
        fy_ckpt_extra_tensor t[5];
        char meta[160];
    } extra;
} fy_dp;

/* DiLoCo settings for fy_dp_init (local_steps 0: off). */
typedef struct fy_dp_diloco {
    int local_steps;
    float outer_lr, outer_momentum;
} fy_dp_diloco;
/* zero for fy_dp_init: 1 shards the AdamW moments (ZeRO-1: reduce-scatter
 * the gradients, all-gather the updated params); 0 keeps them whole on every
 * rank (DDP: all-reduce the gradients; the same bytes and the same bits, more
 * memory, and gradient buckets that use both directions of a link). */

/* batch: sequences per step over all ranks; micro: sequences per
 * micro-batch (0: batch / ranks). batch must split into whole micro-batches
 * per rank. Expert parallelism (fy_ep_attach) comes first, when wanted. */
int fy_dp_init(fy_dp *dp, fy_comm *c, fy_model *m, int batch, int micro, int compress, int zero,
               const fy_dp_diloco *diloco, fy_err *err);
void fy_dp_free(fy_dp *dp, fy_model *m);

/* Gradient bucketing (plain data parallel, ZeRO-1 or DDP, with one
 * micro-batch per rank): the backward hands over each layer's gradients as they are final
 * (fy_model_set_grad_ready); consecutive layers fill a bucket, which travels
 * once it holds bucket_mb MB (0: each layer goes at once) while the backward
 * goes on; fy_dp_step sends what is left and waits. Few large buckets pay
 * less latency per message, small ones overlap more. ZeRO-1 reduce-scatters
 * each bucket to the shard owners (contiguous shards: a bucket near the end
 * of the block goes to the last rank only, one way over a link); DDP
 * all-reduces it in pieces every rank shares (fy_comm_ar_*). The bits are those of the unbucketed
 * reduction. Ignored (returns 0, stays off) in the other modes: compressed
 * (error feedback needs the whole vector), DiLoCo (no gradient exchange),
 * several micro-batches per rank (the gradient is final only after the
 * last one's local tree sum). */
int fy_dp_set_bucketing(fy_dp *dp, fy_model *m, int on, float bucket_mb, fy_err *err);
static inline int fy_dp_bucketing(const fy_dp *dp) { return dp->bk.rs != NULL; }

/* The optimizer each rank keeps: this rank's shard (ZeRO-1; with expert
 * parallelism and its experts), or all of its block (one rank, compressed
 * mode). */
int fy_dp_create_optimizer(fy_dp *dp, fy_model *m, const fy_adamw_opts *o, fy_adamw *opt, fy_err *err);

/* 1 when the AdamW moments are sharded over the ranks (ZeRO-1). */
static inline int fy_dp_sharded(const fy_dp *dp) {
    return dp->size > 1 && !dp->compress && !dp->diloco.local_steps && !dp->replicated;
}

/* DiLoCo: takes the current weights as the anchor (at the start and after
 * loading a checkpoint, when all ranks hold the same weights). */
int fy_dp_set_anchor(fy_dp *dp, fy_model *m, fy_err *err);
/* DiLoCo: the outer step (all ranks together, every local_steps steps). */
int fy_dp_outer_step(fy_dp *dp, fy_model *m, fy_err *err);

/* Global micro-batch index of this rank's local micro-batch j. */
static inline int fy_dp_micro_index(const fy_dp *dp, int j) { return dp->rank * dp->local_micro + j; }

/* After the backward of local micro-batch j (zero_grad before each one):
 * folds m->grads into the accumulation stack. */
int fy_dp_accumulate(fy_dp *dp, fy_model *m, int j, fy_err *err);

/* The optimizer step from the accumulated micro-batch gradients: local tree
 * sum, the cross-rank reduction, the gradient norm (*grad_norm, of the mean
 * gradient, before clipping; it is non-finite, with -1 returned and err set,
 * when the gradient is), AdamW, the parameter all-gather and the global
 * expert loads. All ranks call it together. */
int fy_dp_step(fy_dp *dp, fy_model *m, fy_adamw *opt, float *grad_norm, float *lr_used, fy_err *err);

/* The batch loss from the local micro-batch losses: means over all global
 * micro-batches, summed in their order. */
int fy_dp_mean_loss(fy_dp *dp, const fy_loss *local, fy_loss *out, fy_err *err);

/* max over ranks of a local flag (a fault, a stop request); identical on all. */
int fy_dp_vote(fy_dp *dp, int local, fy_err *err);

/* The whole state for a checkpoint when no rank holds it alone (ZeRO-1
 * moment shards, expert shards): gathered onto rank 0 as host arrays in the
 * whole model's layout (collective; h points into dp, valid until the next
 * call; on other ranks h->tab is set and the arrays are NULL). h->tab is
 * NULL when rank 0 can save the model and optimizer as they are. */
int fy_dp_checkpoint_state(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_ckpt_host *h, fy_err *err);
/* The state beyond the one-file checkpoint that this mode keeps per rank,
 * gathered from every rank (collective): with DiLoCo the inner AdamW moments
 * of every rank ("inner.exp_avg", "inner.exp_avg_sq" [size, n]) and the
 * outer momentum ("outer_momentum" [1, n + n_buffers]); with int8
 * compression the error-feedback residuals ("resid_send" [size, n],
 * "resid_gather" [1, n]: every rank's shard in place). *extra points into
 * dp (valid until the next call); extra->meta is NULL when the mode has no
 * such state (plain DP and ZeRO-1: the moments are in the checkpoint). */
int fy_dp_extra_state(fy_dp *dp, fy_model *m, const fy_adamw *opt, fy_ckpt_extra *extra, fy_err *err);
/* Loads a checkpoint into m and this rank's part of opt; with the per-rank
 * state of dist_state.safetensors when it was saved by the same rank count
 * and mode (then the continuation is bit for bit), else with a warning that
 * it is not (DiLoCo: outer momentum zero, every rank starts from rank 0's
 * inner moments; int8: residuals zero). */
int fy_dp_load(fy_dp *dp, const char *ckpt_dir, fy_model *m, fy_adamw *opt, char **trainer_state, fy_err *err);

/* Bytes this rank sent since the last fy_dp_mark (the trainer marks at the
 * start of each step). */
void fy_dp_mark(fy_dp *dp);
uint64_t fy_dp_step_bytes(const fy_dp *dp);

#endif
