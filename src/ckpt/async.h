/* Asynchronous checkpoints: the training loop waits only for the snapshot
 * (device -> host copy); a background thread writes it to disk with the
 * crash-safe protocol of checkpoint.h. One write is in flight at a time: a new
 * save first waits for the previous one. */
#ifndef FY_CKPT_ASYNC_H
#define FY_CKPT_ASYNC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

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
    /* Snapshot buffers allocated but not yet faulted in: n regions, bytes
     * [0, populated) of them (counted across the regions in order) done by
     * the reserver thread. The main thread changes them only while no
     * reserver runs. */
    struct fy_ckpt_fresh {
        int n;
        char *p[4];
        size_t bytes[4];
        _Atomic int stop;          /* the save took over: the reserver stops */
        _Atomic size_t populated;  /* written by the reserver only */
    } fresh;
    int fresh_pending;             /* fresh holds regions no save populated yet */
    pthread_t reserver;
    int reserving;                 /* the reserver thread is to be joined */
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
/* Allocates the host buffers of a snapshot of tab (parameters, buffers and
 * the two AdamW moments) and starts faulting them in on a background thread
 * (MADV_POPULATE_WRITE in 1 MB slices, at nice 10), so that a process's
 * first save copies into memory already mapped instead of stalling on fresh
 * pages (~1-2 s per GB in this VM) while the training steps before it run.
 * Nice 19: the thread uses the cycles training leaves idle instead of
 * taking a core from training's threads. The first save never waits for
 * it: it stops the thread and faults in what is left itself (the same
 * populate, cheaper than faulting page by page in the copy). Waits for a
 * write in flight first; a buffer it cannot allocate is left to the save,
 * which then allocates it or reports running out of memory. */
void fy_ckpt_async_reserve(fy_ckpt_async *a, const fy_param_table *tab);
/* Waits, then frees the snapshot buffers kept for reuse. */
void fy_ckpt_async_free(fy_ckpt_async *a);

#endif
