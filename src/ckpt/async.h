/* Asynchronous checkpoints: the training loop waits only for the snapshot
 * (device -> host copy); a background thread writes it to disk with the
 * crash-safe protocol of checkpoint.h. One write is in flight at a time: a new
 * save first waits for the previous one. */
#ifndef FY_CKPT_ASYNC_H
#define FY_CKPT_ASYNC_H

#include <pthread.h>

#include "ckpt/checkpoint.h"

typedef struct fy_ckpt_async {
    pthread_t thread;
    int running;
    fy_ckpt_snapshot snap;
    char run_dir[4096];
    int keep_last;
    int rc;           /* result of the last write */
    fy_err err;
    double write_s;   /* how long the last write took on its thread */
} fy_ckpt_async;

void fy_ckpt_async_init(fy_ckpt_async *a);
/* Waits for the previous write (returning its error, if any), snapshots
 * (with extra, may be NULL: fy_ckpt_snapshot_set_extra) and starts writing.
 * *stall_s (may be NULL): how long the caller was held. */
int fy_ckpt_async_save(fy_ckpt_async *a, const char *run_dir, int step, fy_model *m, const fy_adamw *opt,
                       const char *trainer_state_json, const fy_ckpt_extra *extra, int keep_last,
                       double *stall_s, fy_err *err);
/* Waits for the write in flight; returns its result. */
int fy_ckpt_async_wait(fy_ckpt_async *a, fy_err *err);
/* The same from a whole state gathered on the saving rank (ZeRO-1 shards,
 * expert-parallel ranks: parallel/dp.h); h->tab must outlive the write. */
int fy_ckpt_async_save_host(fy_ckpt_async *a, const char *run_dir, int step, const fy_ckpt_host *h,
                            const char *trainer_state_json, const fy_ckpt_extra *extra, int keep_last,
                            double *stall_s, fy_err *err);
/* Starts allocating and touching the host buffers of a snapshot of tab
 * (parameters, buffers and the two AdamW moments) on a background thread,
 * so that a process's first save copies into memory already faulted in
 * instead of stalling on fresh pages (~1-2 s per GB in this VM) while the
 * training steps before it run. (Normal priority, not SCHED_IDLE: on a
 * busy machine an idle-class thread can starve, and an unprivileged
 * process may not raise it again when the save needs it.) The first save
 * (or wait/free) waits for it. A buffer it cannot allocate is left to that
 * save, which then allocates it or reports running out of memory. */
void fy_ckpt_async_reserve(fy_ckpt_async *a, const fy_param_table *tab);
/* Waits, then frees the snapshot buffers kept for reuse. */
void fy_ckpt_async_free(fy_ckpt_async *a);

#endif
