/* The training loop: batches from the loader, forward/backward, AdamW, bias
 * balancing, progress, validation, metrics.jsonl, loss.svg, checkpoints and
 * exact resume. Everything a step computes is a function of (seed, step) and
 * the checkpointed state, so a resumed run is bit-identical on one backend. */
#ifndef FY_TRAINER_H
#define FY_TRAINER_H

#include <signal.h>
#include <stdint.h>

#include "core/err.h"
#include "model/model.h"
#include "train/guard.h"
#include "optim/optim.h"

typedef struct fy_train_opts {
    fy_adamw_opts adam;   /* adam.total_steps is the run's length */
    int batch_size, seq_len;
    uint64_t seed;        /* weights init and data order */
    int eval_every;       /* steps between validation passes (0: none) */
    int eval_batches;     /* batches per validation pass */
    int ckpt_every;       /* steps between checkpoints (0: only at the end) */
    int keep_last;        /* checkpoints kept on disk */
    int log_every;        /* steps between progress lines */
    double time_limit_s;  /* stop (with a checkpoint) after this long; 0 = none */
    int stop_after;       /* stop (with a checkpoint) after this step, as Ctrl-C would; 0 = none */
    fy_guard_opts guard;  /* NaN/spike/checksum guards and rollback (train/guard.h); config keys
                           * ferry.guard_* and ferry.abft_fraction */
    /* Scale-out (parallel/dp.h). batch_size is the global batch over all ranks. */
    int micro_batch;      /* sequences per micro-batch (0: batch_size / ranks); ferry.micro_batch */
    int compress;         /* 1: int8 gradients with error feedback; ferry.compress_grads */
    int diloco_every;     /* DiLoCo: H local steps per outer step (0: off); ferry.diloco_every */
    float outer_lr, outer_momentum; /* DiLoCo outer Nesterov SGD; ferry.outer_lr, ferry.outer_momentum */
    int expert_parallel;  /* 1: routed experts split over the ranks (parallel/ep.h); ferry.expert_parallel */
    int grad_buckets;     /* 1: gradients travel during the backward (default 0; 2: progress thread); ferry.grad_buckets */
    int zero;             /* 1: ZeRO-1 sharded AdamW moments (default); 0: DDP, whole AdamW on every rank; ferry.zero */
    float bucket_mb;      /* ... in buckets of at least this many MB (0: each layer as it is done); ferry.bucket_mb */
    struct fy_comm *comm; /* the job's ranks; NULL: this process alone */
    const char *inject;   /* fault-injection spec (train/inject.h; the CLI passes FERRY_INJECT); NULL or "": none.
                           * Not a config key: never saved with the run */
    /* LoRA (model/lora.h, docs/FINETUNE.md): lora_rank > 0 trains adapters
     * of lora_rank on the frozen base (the seeded init, or init_weights);
     * checkpoints then hold the adapters and their moments only.
     * lora_targets: FY_LORA_* bits; lora_base_seeded: 1 when the base is
     * the seeded init (so a resume can rebuild it), 0 after --init-from.
     * ferry.lora_* */
    int lora_rank, lora_targets, lora_base_seeded;
    float lora_alpha, lora_dropout;
    /* The format the frozen base's decoder linears are held in during a
     * LoRA run (a fy_quant; 0, f32: as loaded; model/lora_qbase.h).
     * ferry.lora_base_weights, its name */
    int lora_base_weights;
    /* Where a LoRA run's base came from, for RUN_DIR/lora_base.json
     * (train/lora_base.h; NULL: the seeded init). Not a config key. */
    const char *lora_base;
    /* A new run's first weights (ferry train --init-from): when set, called
     * instead of fy_model_init_weights (never on resume). Not a config key. */
    int (*init_weights)(fy_model *m, void *ctx, fy_err *err);
    void *init_ctx;
    /* Optional: called once the weights are in place (after init_weights,
     * or after a resume), so the caller can free what init_ctx holds; a run
     * would otherwise carry a host copy of its initial model to the end. */
    void (*init_release)(void *ctx);
} fy_train_opts;

void fy_train_opts_default(fy_train_opts *o);
/* Reads the trainer members of a config.json's "ferry" object (absent keys
 * keep their current value); errors name the key. */
int fy_train_opts_from_json(const char *config_json, const char *where, fy_train_opts *o, fy_err *err);
/* The members as a JSON object text for fy_config_to_json. Caller frees. */
char *fy_train_opts_to_json(const fy_train_opts *o);

typedef struct fy_train_result {
    int step;             /* last step completed */
    double last_loss, last_val_loss;
    int val_step;         /* the step last_val_loss was measured at (0: none yet) */
    int interrupted;      /* stopped by the stop flag or the time limit */
} fy_train_result;

/* Trains the model in RUN_DIR on the shards in data_dir (train-*.bin,
 * val-*.bin). With resume, restores the newest complete checkpoint of
 * run_dir first; otherwise initialises weights from o->seed. The stop flag
 * (set by a signal handler) ends the loop after the current step with a
 * checkpoint. The data is checked before step 1 (a window of seq_len + 1
 * tokens in the training split, and in the validation split when the run
 * evaluates); a failure after steps completed since the last checkpoint
 * saves them first (one rank), and err says whether that worked.
 * metrics.jsonl is written in whole lines: a full disk is an error naming
 * it, never a cut line. */
int fy_train_run(fy_model *m, const fy_train_opts *o, const char *run_dir, const char *data_dir,
                 int resume, volatile sig_atomic_t *stop, fy_train_result *res, fy_err *err);

/* The backend to train on: spec (fy_backend_create), wrapped in the ABFT
 * GEMM checker (the chaos backend, which with no injected fault changes no
 * number) when g->abft_fraction > 0 and spec is not already a chaos one;
 * bo: the backend options (NULL: defaults). */
int fy_train_backend_create(const char *spec, const fy_guard_opts *g, const fy_backend_opts *bo, fy_backend **out,
                            fy_err *err);

/* Mean main-head loss over the first n validation batches. */
typedef struct fy_loader fy_loader;
int fy_eval_loss(fy_model *m, fy_loader *val, int B, int T, int n, double *loss, fy_err *err);

#endif
