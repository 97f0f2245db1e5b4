/* `ferry train --supervise`: run training as a child process and restart it
 * from its newest complete checkpoint when it dies (signal, crash exit code)
 * or hangs (no heartbeat: metrics.jsonl, appended every step, stops changing),
 * with a restart budget and exponential backoff. Each restart is recorded in
 * RUN_DIR/restarts.jsonl. */
#ifndef FY_SUPERVISE_H
#define FY_SUPERVISE_H

#include "core/err.h"

typedef struct fy_supervise_opts {
    const char *run_dir;
    int max_restarts;           /* give up after this many */
    double backoff_s;           /* first wait before a restart; doubles each time */
    double backoff_max_s;
    double heartbeat_timeout_s; /* no new metrics line for this long = hung */
    /* When the trainer exits with unavailable_code (non-zero): called to
     * change resume_argv to ask for fewer ranks; returns 0 when it did
     * (message in *note), -1 when it cannot (err set). NULL: a plain restart. */
    int unavailable_code;
    int (*fewer_ranks)(void *ctx, char *note, size_t cap, fy_err *err);
    void *ctx;
} fy_supervise_opts;

/* first_argv: the child's argv for the first launch; resume_argv: for every
 * relaunch (the same flags plus --resume). Both start with the program path.
 * Returns the exit code ferry should exit with: 0 when training finished,
 * 130 when stopped by SIGINT/SIGTERM, the child's code when it failed cleanly
 * (exit status 1: bad input or a diagnosed stop, not worth retrying), or 1 with
 * err set when the restart budget ran out. */
int fy_supervise(char *const *first_argv, char *const *resume_argv, const fy_supervise_opts *o,
                 fy_err *err);

#endif
