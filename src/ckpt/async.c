/* Asynchronous checkpoints (async.h): take the snapshot on the caller's
 * thread, write it from a background thread; one write in flight at a time. */
#include "ckpt/async.h"
#include "core/clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void fy_ckpt_async_init(fy_ckpt_async *a) { memset(a, 0, sizeof *a); }

static void *writer(void *arg) {
    fy_ckpt_async *a = arg;
    double t0 = fy_now_s();
    a->rc = fy_ckpt_save_snapshot(a->run_dir, &a->snap, a->keep_last, NULL, 0, &a->err);
    a->write_s = fy_now_s() - t0;
    return NULL;
}

int fy_ckpt_async_wait(fy_ckpt_async *a, fy_err *err) {
    if (!a->running) return 0;
    pthread_join(a->thread, NULL);
    a->running = 0; /* the snapshot's buffers stay for the next save */
    if (a->rc) {
        if (err) *err = a->err;
        return -1;
    }
    return 0;
}

/* Starts writing the snapshot just taken into a->snap. */
static int start(fy_ckpt_async *a, const char *run_dir, int keep_last, double t0, double *stall_s, fy_err *err) {
    snprintf(a->run_dir, sizeof a->run_dir, "%s", run_dir);
    a->keep_last = keep_last;
    a->rc = 0;
    if (pthread_create(&a->thread, NULL, writer, a) != 0)
        return fy_fail(err, "cannot start the checkpoint writer thread");
    a->running = 1;
    if (stall_s) *stall_s = fy_now_s() - t0;
    return 0;
}

int fy_ckpt_async_save(fy_ckpt_async *a, const char *run_dir, int step, fy_model *m, const fy_adamw *opt,
                       const char *trainer_state_json, const fy_ckpt_extra *extra, int keep_last,
                       double *stall_s, fy_err *err) {
    double t0 = fy_now_s();
    if (fy_ckpt_async_wait(a, err)) return fy_wrap(err, "previous checkpoint");
    if (strlen(run_dir) >= sizeof a->run_dir) return fy_fail(err, "run directory path too long");
    if (fy_ckpt_snapshot_take(&a->snap, step, m, opt, trainer_state_json, err) ||
        fy_ckpt_snapshot_set_extra(&a->snap, extra, err))
        return -1;
    return start(a, run_dir, keep_last, t0, stall_s, err);
}

int fy_ckpt_async_save_host(fy_ckpt_async *a, const char *run_dir, int step, const fy_ckpt_host *h,
                            const char *trainer_state_json, const fy_ckpt_extra *extra, int keep_last,
                            double *stall_s, fy_err *err) {
    double t0 = fy_now_s();
    if (fy_ckpt_async_wait(a, err)) return fy_wrap(err, "previous checkpoint");
    if (strlen(run_dir) >= sizeof a->run_dir) return fy_fail(err, "run directory path too long");
    if (fy_ckpt_snapshot_take_host(&a->snap, step, h, trainer_state_json, err) ||
        fy_ckpt_snapshot_set_extra(&a->snap, extra, err))
        return -1;
    return start(a, run_dir, keep_last, t0, stall_s, err);
}

void fy_ckpt_async_free(fy_ckpt_async *a) {
    fy_ckpt_async_wait(a, NULL);
    fy_ckpt_snapshot_free(&a->snap);
}
