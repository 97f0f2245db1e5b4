/* Checkpoints (docs/DESIGN.md §3): everything a restart needs, written so that a
 * crash at any instant leaves the previous checkpoint usable.
 *
 *   RUN_DIR/checkpoints/step-00001000/
 *       model.safetensors      every tensor of the table under its HF name, F32
 *       optimizer.safetensors  "<name>.exp_avg", "<name>.exp_avg_sq"; meta "step"
 *       trainer_state.json     the trainer's text, verbatim
 *       dist_state.safetensors (multi-rank runs with per-rank state only:
 *                              parallel/dp.h) F32 tensors, meta "ferry_dist"
 *       config.json, tokenizer.json, tokenizer_config.json, lora_base.json
 *                              copies of the run's (those it has), so that
 *                              the directory alone loads as a model
 *       MANIFEST.json          {"step": N, "files": {name: {bytes, xxh64}}}, last
 *   RUN_DIR/checkpoints/LATEST "step-00001000\n"
 *
 * A checkpoint directory is complete when MANIFEST.json exists and every file
 * it lists has that size and xxh64. Anything named "step-*.tmp.*" is the
 * debris of an interrupted save (or prune) and is removed by the next save.
 * One process saves into a run directory at a time. */
#ifndef FY_CHECKPOINT_H
#define FY_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "model/decode.h"
#include "model/model.h"
#include "optim/optim.h"

#define FY_CKPT_DIRNAME "checkpoints"
#define FY_CKPT_LATEST "LATEST"
#define FY_CKPT_MANIFEST "MANIFEST.json"
#define FY_CKPT_MODEL "model.safetensors"
#define FY_CKPT_OPTIM "optimizer.safetensors"
#define FY_CKPT_TRAINER "trainer_state.json"
#define FY_CKPT_DIST "dist_state.safetensors"
#define FY_CKPT_MAX_FILES 16

/* Saves step `step` of m (and opt's moments when opt is non-NULL) with the
 * trainer's JSON text (NULL writes "{}") under run_dir/checkpoints, makes
 * LATEST name it, then keeps only `keep_last` checkpoints (<= 0 keeps all):
 * the one LATEST names plus the newest others by step that have a manifest
 * (the rest, incomplete ones included, are removed). Saving a step that
 * already exists replaces it. Writes the new checkpoint's directory into
 * out_dir (may be NULL; too small a buffer is refused before saving). */
int fy_ckpt_save(const char *run_dir, int step, fy_model *m, const fy_adamw *opt,
                 const char *trainer_state_json, int keep_last, char *out_dir, size_t out_cap,
                 fy_err *err);

/* MANIFEST.json present and parseable, every listed file with its size and
 * xxh64 (model.safetensors must be listed). Errors name the directory and
 * the file. */
int fy_ckpt_verify(const char *ckpt_dir, fy_err *err);
/* What a model to run needs of it: every listed file but the training
 * state (optimizer.safetensors, dist_state.safetensors); model.safetensors
 * or a weights image (below) must be listed. */
int fy_ckpt_verify_weights(const char *ckpt_dir, fy_err *err);

/* Saving in two halves, for asynchronous checkpoints (ckpt/async.h): a
 * snapshot copies everything to host memory (the only part the training loop
 * must wait for), and fy_ckpt_save_snapshot writes it with the same crash-safe
 * protocol as fy_ckpt_save, touching neither model nor backend. */
typedef struct fy_ckpt_snapshot {
    const fy_param_table *tab;      /* borrowed: the model must outlive the write */
    float *params, *buffers, *m, *v;
    int has_opt, opt_t, step;
    char *trainer_state;
    /* dist_state.safetensors (fy_ckpt_snapshot_set_extra): n_extra tensors */
    int n_extra;
    char **extra_name;
    float **extra_x;
    int64_t (*extra_shape)[2];
    char *extra_meta;
    /* A weights image's save (fy_ckpt_image_save): this file written as
     * image_name in place of model.safetensors (params unused). */
    struct fy_st_writer *image;
    const char *image_name;
} fy_ckpt_snapshot;

/* State outside the one-file format that a multi-rank run needs to continue
 * bit for bit on the same rank count (DiLoCo's per-rank inner moments and
 * outer momentum, error-feedback residuals: parallel/dp.c). Written as
 * dist_state.safetensors, in the manifest like every file; meta is stored
 * as the metadata "ferry_dist" and says what the tensors are. */
typedef struct fy_ckpt_extra_tensor {
    const char *name;
    const float *x;
    int64_t rows, cols;
} fy_ckpt_extra_tensor;
typedef struct fy_ckpt_extra {
    const char *meta;
    int n;
    const fy_ckpt_extra_tensor *t;
} fy_ckpt_extra;
/* Copies extra into s (call after a take; NULL clears it). */
int fy_ckpt_snapshot_set_extra(fy_ckpt_snapshot *s, const fy_ckpt_extra *extra, fy_err *err);
/* s must be zeroed before its first use; taking again into the same snapshot
 * (same model) reuses its host buffers. */
int fy_ckpt_snapshot_take(fy_ckpt_snapshot *s, int step, fy_model *m, const fy_adamw *opt,
                          const char *trainer_state_json, fy_err *err);
/* A whole model's state as host arrays in tab's layout: what the saving
 * rank gathers from ZeRO-1 shards and expert-parallel ranks (parallel/dp.h). */
typedef struct fy_ckpt_host {
    const fy_param_table *tab;     /* borrowed, like a snapshot's */
    const float *params, *buffers; /* [tab->n_params], [tab->n_buffers] */
    const float *m, *v;            /* the AdamW moments [tab->n_params] each */
    int opt_t;
} fy_ckpt_host;
/* The same from host arrays (copied). */
int fy_ckpt_snapshot_take_host(fy_ckpt_snapshot *s, int step, const fy_ckpt_host *h, const char *trainer_state_json,
                               fy_err *err);
void fy_ckpt_snapshot_free(fy_ckpt_snapshot *s);
int fy_ckpt_save_snapshot(const char *run_dir, const fy_ckpt_snapshot *s, int keep_last, char *out_dir,
                          size_t out_cap, fy_err *err);

/* ---- Weights images: inference checkpoints in the format they run in ----
 *
 * A weights image holds a model as `--weights FMT` runs it (model/decode.h):
 * the copy of every matrix in FMT exactly as the backend's kernels read it
 * (f32: the whole params block, every tensor at its offset),
 * so a load maps the file and uses it in place, with no read of f32
 * weights, no encoding and no copy (the cpu backend; others copy it once).
 *   step-XXXXXXXX/model.FMT.safetensors
 *       "ferry.weights_image" U8 [bytes]   the copy, first, 64-byte aligned
 *       every other tensor a batch step reads, F32 under its HF name (the
 *       norms, the router and its bias, W_kvb; the MTP modules are left out)
 *       metadata "ferry_weights" FMT, "ferry_layout" (16 hex digits:
 *       fy_model_image_layout; another layout is refused), "ferry_step"
 * with MANIFEST.json, config.json and the tokenizer as in any checkpoint.
 * Such a checkpoint is for inference only: fy_ckpt_resolve and fy_ckpt_load
 * refuse it with an error saying so; fy_ckpt_resolve_weights accepts it.
 * Written by `ferry convert --to ferry --weights FMT`. */
/* 1 and *q when name is "model.FMT.safetensors" (FMT a canonical
 * fy_quant_name: model.f32.safetensors is an f32 image, model.safetensors
 * a checkpoint's weights). */
int fy_ckpt_image_of(const char *name, fy_quant *q);
/* 1 and *q when the (verified) checkpoint ckpt_dir holds a weights image
 * and no f32 model.safetensors, 0 when it holds f32 weights, -1 on error. */
int fy_ckpt_image_format(const char *ckpt_dir, fy_quant *q, fy_err *err);
/* Writes m (loaded for inference, fy_model_plan_inference) as the weights image checkpoint of `step` under run_dir,
 * replacing a checkpoint of that step and keeping no other. */
int fy_ckpt_image_save(const char *run_dir, int step, fy_model *m, fy_err *err);
/* Loads the weights image of ckpt_dir (verified) into m, planned for
 * inference in the image's format (fy_ckpt_image_format): the f32 tensors
 * through fy_model_load_rows, then the copy: with in_place, adopted from
 * the file's mapping, which stays open (and mapped) as long as m holds it,
 * and, when what a batch step reads of it is at most warm_max bytes, read
 * once on the threads so the first forward finds it in the caches (as a
 * copy made at load would leave it); without in_place, copied into m's
 * own memory (`--no-mmap`: its huge pages, and no file held open). */
typedef struct fy_ckpt_image_opts {
    int in_place;
    size_t warm_max; /* 0: never read at load */
} fy_ckpt_image_opts;
int fy_ckpt_image_load(const char *ckpt_dir, fy_model *m, const fy_ckpt_image_opts *o, fy_err *err);

/* path is a run directory (it has checkpoints/): the checkpoint LATEST names,
 * or, when LATEST is missing, invalid or names one that fails verification,
 * the newest step-* that verifies (with an fy_warn saying what was wrong).
 * Otherwise path is a checkpoint directory, verified as it is. out_dir gets
 * the verified checkpoint's directory. */
int fy_ckpt_resolve(const char *path, char *out_dir, size_t cap, fy_err *err);
/* The same for a model to run, not to train on: what it verifies leaves out
 * the training state (optimizer.safetensors, dist_state.safetensors). */
int fy_ckpt_resolve_weights(const char *path, char *out_dir, size_t cap, fy_err *err);

/* A JSON number that is a whole number in [0, 2^53] (exact in a double)
 * into out; -1 (out untouched) for anything else: the range check every
 * count read from a file needs before its conversion to an integer. */
struct cJSON;
int fy_json_count(const struct cJSON *v, uint64_t *out);

/* Verifies ckpt_dir, then loads it into m (every tensor of m's table, exact
 * shapes, no extra tensors; F32, BF16 or F16) and, when opt is non-NULL, the
 * moments and opt->t. Nothing on the device changes unless all of it checks
 * out (checksums, names, shapes, dtypes, the step): the tensors are then
 * copied straight from the files' read-only mappings, with no host copy,
 * and each tensor's pages of the mapping are dropped once copied (the
 * process never holds a file and its copy at once).
 * *trainer_state_json (when non-NULL) gets the malloc'd text. */
int fy_ckpt_load(const char *ckpt_dir, fy_model *m, fy_adamw *opt, char **trainer_state_json,
                 fy_err *err);
/* The model's tensors only, from a checkpoint fy_ckpt_resolve_weights
 * returned (verified there, not again), each handed to the model
 * (fy_model_load_tensor: after fy_model_plan_inference the model keeps only
 * what inference reads), each file's pages dropped from memory once copied. */
int fy_ckpt_load_weights(const char *ckpt_dir, fy_model *m, fy_err *err);

/* ---- pieces shared with inspect ------------------------------------------ */

typedef struct fy_ckpt_file {
    char name[64];
    uint64_t bytes;
    uint64_t xxh64;
} fy_ckpt_file;

typedef struct fy_ckpt_manifest {
    int step;
    int n_files;
    fy_ckpt_file files[FY_CKPT_MAX_FILES];
} fy_ckpt_manifest;

/* Parses ckpt_dir/MANIFEST.json (no checksums); a missing one is reported as
 * "MANIFEST.json missing (incomplete checkpoint)". */
int fy_ckpt_read_manifest(const char *ckpt_dir, fy_ckpt_manifest *out, fy_err *err);

/* Checks one manifest entry's size and xxh64 against the file on disk. */
int fy_ckpt_verify_file(const char *ckpt_dir, const fy_ckpt_file *f, fy_err *err);

/* Steps of run_dir/checkpoints/step-XXXXXXXX directories (temporaries
 * excluded, complete or not), newest first, malloc'd into *steps (NULL when
 * none). A missing checkpoints/ is an empty list. */
int fy_ckpt_list(const char *run_dir, int **steps, int *n, fy_err *err);

/* Reads run_dir/checkpoints/LATEST into name (trailing newline removed);
 * fails when it is missing or is not a plain "step-XXXXXXXX" name. */
int fy_ckpt_read_latest(const char *run_dir, char *name, size_t cap, fy_err *err);

/* "step-00001000" for 1000. */
void fy_ckpt_dirname(int step, char out[32]);

#endif
