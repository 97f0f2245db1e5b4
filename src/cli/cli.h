/* The ferry command: one entry point per subcommand (argv after the
 * subcommand's name), each returning the process exit code. */
#ifndef FY_CLI_H
#define FY_CLI_H

#include <sys/types.h>

#include <cjson/cJSON.h>

#include "backend/backend.h"
#include "core/err.h"
#include "io/tokenizer.h"
#include "model/decode.h"
#include "model/model.h"

int fy_cmd_train(int argc, char **argv);
int fy_cmd_generate(int argc, char **argv);
int fy_cmd_serve(int argc, char **argv);
int fy_cmd_tokenizer(int argc, char **argv);
int fy_cmd_data(int argc, char **argv);
int fy_cmd_inspect(int argc, char **argv);
int fy_cmd_verify(int argc, char **argv);
int fy_cmd_devices(int argc, char **argv);
int fy_cmd_convert(int argc, char **argv);
/* ferry data chat-kjv (data_kjv.c; argv after "chat-kjv"). */
int fy_cli_data_chat_kjv(int argc, char **argv);

/* The environment (src/cli/env.c lists the variables; nothing else in ferry
 * reads it). fy_cli_env_log sets the log level from FERRY_LOG (once, at
 * start-up); fy_cli_backend_opts fills *opts for fy_backend_create_opts and
 * returns opts. */
void fy_cli_env_log(void);
/* Called first in main: when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is
 * set, sets GOMP_SPINCOUNT for the command in argv[1] (generate/serve: long
 * on a quiet machine, short beside busy neighbours; others: none) and
 * re-executes ferry once so that libgomp sees
 * it; returns otherwise. */
void fy_cli_env_openmp(int argc, char **argv);
fy_backend_opts *fy_cli_backend_opts(fy_backend_opts *opts);
/* 1 when an MPI launcher started this process (its environment says so). */
int fy_cli_mpi_launched(void);
/* The last-level cache of CPU 0 in bytes (sysfs), 0 when unknown. */
size_t fy_cli_llc_bytes(void);

/* Prints "ferry CMD: message" to stderr and returns exit code 1. */
int fy_cli_fail(const char *cmd, const fy_err *err);
/* A subcommand with sub-subcommands given none it knows: prints the usage
 * line, to stdout with exit code 0 after --help/-h, else to stderr with 2. */
int fy_cli_usage(int argc, char **argv, const char *usage);
/* The same as fy_cli_fail with a message formatted here (printf-style). */
int fy_cli_failf(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A trained model ready to use: DIR is a run directory (config.json,
 * tokenizer.json, checkpoints/LATEST), one checkpoint directory inside it,
 * or a Hugging Face directory (imported on the fly: src/interop/hf.h).
 * Creates the backend from `backend_spec`. */
typedef struct fy_loaded {
    fy_backend *be;
    fy_model model;
    fy_tokenizer *tok;
    char ckpt_dir[4096];
} fy_loaded;
int fy_cli_load_model(const char *dir, const char *backend_spec, fy_loaded *out, fy_err *err);
/* What generate and serve run: the model in weights `weights` (a
 * fy_quant_parse name; NULL: the checkpoint's own, f32 or a weights
 * image's format), its weights checked finite. A ferry run or checkpoint
 * (not a LoRA run, whose adapters are merged into the f32 weights first) is
 * loaded as inference needs it (fy_model_plan_inference): a quantized
 * format never holds the f32 copy of its matrices, the training state is
 * not read; a weights image (ckpt/checkpoint.h) runs only in its own
 * format, mapped and read in place (no_mmap: copied into the process's
 * memory). Unmerged --lora adapters go on after (fy_cli_load_lora). */
int fy_cli_load_inference(const char *dir, const char *backend_spec, const char *weights, int no_mmap,
                          fy_loaded *out, fy_err *err);
void fy_cli_unload(fy_loaded *l);
/* Fails, naming the first such tensor, when the model's weights (or
 * buffers) hold a NaN or Inf: checksums only prove the bytes are those
 * written, and such a model would print garbage and succeed. Run by
 * generate and serve after loading (docs/RELIABILITY.md, "Hostile input"). */
int fy_cli_check_weights(fy_model *m, fy_err *err);
/* `--lora DIR`: a ferry LoRA run (or checkpoint) or a PEFT adapter directory
 * loaded for l's model as unmerged adapters (*out, fy_lora_unmerged_free;
 * shapes must match, the base it was trained on need not): a batch item
 * with them gets base + adapters, l's model stays the base.
 * cli/lora_apply.c. */
struct fy_lora_unmerged;
int fy_cli_load_lora(fy_loaded *l, const char *dir, struct fy_lora_unmerged **out, fy_err *err);
/* A ferry LoRA run's adapters put on m (fy_model_set_lora with the run's
 * settings from config.json, then the checkpoint: DIR itself or the run's
 * newest), not yet merged. */
int fy_cli_lora_run_adapters(fy_model *m, const char *dir, fy_err *err);
/* The run directory of DIR (a run directory, or a checkpoint directory inside
 * RUN/checkpoints/): the one holding config.json and tokenizer.json. */
int fy_cli_run_dir(const char *dir, char *run, size_t cap, fy_err *err);
/* The model's tokenizer_config.json (DIR's, else its run directory's) in p,
 * or NULL when it has none: where its chat template is (io/chat.h). */
const char *fy_cli_tokenizer_config(const char *dir, char *p, size_t cap);
/* The string member "ferry"."key" of a parsed config.json (config may be
 * NULL); NULL when absent or not a string. */
const char *fy_cli_ferry_string(const cJSON *config, const char *key);
/* config.json text's ferry.lora_rank: > 0 for a LoRA run, else 0. */
int fy_cli_lora_rank(const char *config_text);

/* A model in host memory from a ferry run or checkpoint directory or a
 * Hugging Face directory (cmd_convert.c). */
struct fy_host_model;
int fy_cli_host_load(const char *dir, struct fy_host_model *h, fy_err *err);

/* --add-special-tokens TOK[,TOK...] (add_tokens.c): tok grown by the
 * tokens it lacks (*out; NULL when it has them all). One it already has as
 * an added token is skipped with a note; one that is an ordinary token of
 * its vocabulary is refused (marking it special would change how existing
 * text encodes). */
int fy_cli_add_special_tokens(const char *list, const fy_tokenizer *tok, fy_tokenizer **out, fy_err *err);
/* The same for a whole model in host memory: its tokenizer, embedding and
 * lm_head grow (fy_host_grow_vocab: new rows the mean of the old). */
struct fy_host_model;
int fy_cli_host_add_special_tokens(const char *list, struct fy_host_model *h, fy_err *err);

/* Child processes, never through a shell (proc.c): argv[0] is looked up in
 * PATH and argv goes to the program as it is. out_fd / err_fd >= 0 become
 * the child's stdout / stderr (else it shares this process's). */
int fy_cli_spawn(char *const argv[], int out_fd, int err_fd, pid_t *pid, fy_err *err);
/* Waits for a child: its exit status, 128 + the signal that killed it, or
 * 127 when it cannot be waited for. */
int fy_cli_wait(pid_t pid);

#endif
