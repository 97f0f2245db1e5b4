/* The pieces of `ferry train` outside its main flow (cmd_train.c): where the
 * training data comes from (train_data.c) and how the process is launched:
 * supervised, or as N ranks under mpirun (train_launch.c). CLI-internal. */
#ifndef FY_TRAIN_CLI_H
#define FY_TRAIN_CLI_H

#include <stddef.h>

#include "core/err.h"
#include "io/tokenizer.h"
#include "parallel/comm.h"
#include "train/trainer.h"

/* The run's data directory (tokenizer.json + shards) from --data: a prepared
 * shard dir is used as it is; a text file or a directory of *.txt is
 * prepared into RUN_DIR/data; no --data prepares the default corpus (the KJV
 * Bible) once under data/. tok (--init-from: the model's) tokenizes the text
 * instead of a new tokenizer of vocab tokens (the default corpus is then
 * prepared into RUN_DIR/data), and a prepared shard dir made with another
 * tokenizer is refused. A directory's *.txt are all taken, however many.
 * data_dir gets an absolute path (the run records it). */
int fy_cli_train_data(const char *data, const char *run_dir, int vocab, const fy_tokenizer *tok, char *data_dir,
                      size_t cap, fy_err *err);

/* Reads the training options of a config.json file over *o. */
int fy_cli_train_opts_load(const char *path, fy_train_opts *o, fy_err *err);

/* --supervise: runs `ferry train` with the same flags (less the supervisor's)
 * as a child and restarts it with --resume when it dies or hangs. batch: the
 * --batch flag (0: from the run's config.json, to choose fewer ranks). */
typedef struct fy_cli_supervise_args {
    const char *run_dir;
    int resume, max_restarts, batch;
    double heartbeat, backoff;
} fy_cli_supervise_args;
int fy_cli_train_supervised(int argc, char **argv, const fy_cli_supervise_args *a);

/* --ranks N outside mpirun: runs mpirun -np N of this program with the same
 * flags and returns the job's exit code (FY_EXIT_RANK_LOST,
 * FY_EXIT_RANKS_UNAVAILABLE: see comm.h). */
int fy_cli_launch_ranks(int argc, char **argv, int ranks);

/* Under mpirun: leaves this rank's exit code for fy_cli_launch_ranks
 * (code < 0: the mark that the rank started). */
void fy_cli_rank_status(const fy_comm *c, int code);

#endif
