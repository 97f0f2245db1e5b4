/* Asynchronous checkpoints (async.h): take the snapshot on the caller's
 * thread, write it from a background thread; one write in flight at a time. */
#include "ckpt/async.h"
#include "core/clock.h"

#include <stdio.h>
#include <stdlib.h>
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

/* n floats (n may be 0, as in checkpoint.c's snap_block), every page
 * written once so that the kernel maps it now; NULL when out of memory.
 * (Not malloc + memset 0: the compiler may make that a calloc, which
 * touches nothing.) */
static float *touched(size_t n) {
    const size_t bytes = (n ? n : 1) * sizeof(float);
    float *x = malloc(bytes);
    volatile char *p = (volatile char *)x;
    for (size_t i = 0; x && i < bytes; i += 4096) p[i] = 0;
    return x;
}

static void *reserver(void *arg) {
    fy_ckpt_async *a = arg;
    fy_ckpt_snapshot *s = &a->snap;
    const size_t np = s->tab->n_params;
    s->params = touched(np);
    s->buffers = touched(s->tab->n_buffers);
    s->m = touched(np);
    s->v = touched(np);
    return NULL;
}

void fy_ckpt_async_reserve(fy_ckpt_async *a, const fy_param_table *tab) {
    if (fy_ckpt_async_wait(a, NULL)) return;
    fy_ckpt_snapshot_free(&a->snap);
    a->snap.tab = tab; /* the first save of tab keeps these buffers (snap_begin) */
    a->rc = 0;
    if (pthread_create(&a->thread, NULL, reserver, a) == 0) a->running = 1;
}

void fy_ckpt_async_free(fy_ckpt_async *a) {
    fy_ckpt_async_wait(a, NULL);
    fy_ckpt_snapshot_free(&a->snap);
}
