/* The ferry command: one entry point per subcommand (argv after the
 * subcommand's name), each returning the process exit code. */
#ifndef FY_CLI_H
#define FY_CLI_H

#include "backend/backend.h"
#include "core/err.h"
#include "io/tokenizer.h"
#include "model/model.h"

int fy_cmd_train(int argc, char **argv);
int fy_cmd_generate(int argc, char **argv);
int fy_cmd_tokenizer(int argc, char **argv);
int fy_cmd_data(int argc, char **argv);
int fy_cmd_inspect(int argc, char **argv);
int fy_cmd_verify(int argc, char **argv);
int fy_cmd_devices(int argc, char **argv);

/* Reads the environment (src/cli/env.c lists the variables; nothing else in
 * ferry reads it): sets the log level from FERRY_LOG and, when opts is not
 * NULL, fills *opts for fy_backend_create_opts. Returns opts. */
fy_backend_opts *fy_cli_env(fy_backend_opts *opts);

/* Prints "ferry CMD: message" to stderr and returns exit code 1. */
int fy_cli_fail(const char *cmd, const fy_err *err);

/* A trained model ready to use: DIR is a run directory (config.json,
 * tokenizer.json, checkpoints/LATEST) or one checkpoint directory inside it.
 * Creates the backend from `backend_spec`. */
typedef struct fy_loaded {
    fy_backend *be;
    fy_model model;
    fy_tokenizer *tok;
    char ckpt_dir[4096];
} fy_loaded;
int fy_cli_load_model(const char *dir, const char *backend_spec, fy_loaded *out, fy_err *err);
void fy_cli_unload(fy_loaded *l);
/* The run directory of DIR (a run directory, or a checkpoint directory inside
 * RUN/checkpoints/): the one holding config.json and tokenizer.json. */
int fy_cli_run_dir(const char *dir, char *run, size_t cap, fy_err *err);

#endif
