/* A whole model in host memory: the form every converter (hf.c, gguf.c)
 * reads from and writes to, whatever the files were. It is the model's
 * config, its parameter table (model/params.h: HF names, one flat block),
 * the flat parameters and buffers in that table's layout, and the tokenizer.
 *
 * fy_host_load_run reads a ferry run or checkpoint directory;
 * fy_host_save_run writes one (a checkpoint at step 0 with a fresh optimizer,
 * so `ferry generate|verify|train --model` take it like any run);
 * fy_host_to_model copies the weights into a model on any backend. */
#ifndef FY_INTEROP_HOST_H
#define FY_INTEROP_HOST_H

#include "core/err.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"

typedef struct fy_host_model {
    fy_config cfg;
    fy_param_table tab;   /* the whole model's table (no expert shard) */
    float *params;        /* [tab.n_params], padding zero */
    float *buffers;       /* [tab.n_buffers]: e_score_correction_bias */
    fy_tokenizer *tok;
} fy_host_model;

/* Allocates an all-zero model of config c (tokenizer not set). */
int fy_host_alloc(fy_host_model *h, const fy_config *c, fy_err *err);
/* A run directory (the checkpoint LATEST names, verified) or one checkpoint
 * directory inside it: config.json, tokenizer.json and model.safetensors. */
int fy_host_load_run(const char *run_or_ckpt, fy_host_model *out, fy_err *err);
/* The run directory of a run or checkpoint directory (the one holding
 * config.json): DIR itself or DIR/../.. */
int fy_host_run_dir(const char *dir, char *run, size_t cap, fy_err *err);
/* run/tokenizer.json, checked against cfg's vocab_size, with cfg's bos/eos
 * ids (an imported model's) set as its specials. */
int fy_host_run_tokenizer(const char *run, const fy_config *cfg, fy_tokenizer **out, fy_err *err);
/* The tokenizer of a model without its weights: a ferry run or checkpoint
 * directory (as fy_host_run_tokenizer) or a Hugging Face directory (its
 * tokenizer.json with the bos/eos its configs name). */
int fy_host_model_tokenizer(const char *dir, fy_tokenizer **out, fy_err *err);
/* Writes run_dir/config.json, tokenizer.json and checkpoints/step-00000000
 * (optimizer moments zero). run_dir must not hold a config.json yet. */
int fy_host_save_run(const fy_host_model *h, const char *run_dir, fy_err *err);
/* The same into a new directory `out` (which must not exist), written under
 * a temporary name beside it, read back and compared bit for bit, and
 * renamed at the end: nothing is left under `out` when it fails. */
int fy_host_save_new_run(const fy_host_model *h, const char *out, fy_err *err);
/* Copies params and buffers into m, which was created with h->cfg. */
int fy_host_to_model(const fy_host_model *h, fy_model *m, fy_err *err);
/* Grows h's vocabulary to tok's (a tokenizer with more tokens than h's
 * vocab_size, e.g. from fy_tokenizer_add_special): the embedding and
 * lm_head gain rows, each new one the mean of that tensor's old rows; the
 * old rows and every other tensor are kept bit for bit; cfg.vocab_size
 * follows. On success h owns tok (its old tokenizer is freed); on failure
 * h is unchanged and the caller keeps tok. */
int fy_host_grow_vocab(fy_host_model *h, fy_tokenizer *tok, fy_err *err);
void fy_host_free(fy_host_model *h);

#endif
