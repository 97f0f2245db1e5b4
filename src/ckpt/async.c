/* Asynchronous checkpoints (async.h): take the snapshot on the caller's
 * thread, write it from a background thread; one write in flight at a time.
 * The snapshot's host buffers are faulted in ahead of the copy (reserve:
 * in the background), because a copy into fresh pages costs ~1 s per GB in
 * this VM where a copy into mapped ones costs ~0.15 s. */
#include "ckpt/async.h"
#include "core/clock.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

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

/* ---- faulting the snapshot's buffers in ahead of the copy ---- */

/* Faults the whole pages of [p, p + bytes) in for writing without changing
 * what they hold (the copy faults in the partial pages at the ends); -1
 * where the kernel cannot (MADV_POPULATE_WRITE: Linux 5.14 on). Without
 * changing contents, so it may run while another thread copies into them. */
static int populate(char *p, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + bytes) & ~(page - 1);
    return hi > lo ? madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) : 0;
#else
    (void)p, (void)bytes;
    return -1;
#endif
}

/* Populates f's regions from byte `from` on in 1 MB slices until done, the
 * kernel cannot, or (background: the reserver) the save takes over. */
static void populate_fresh(struct fy_ckpt_fresh *f, size_t from, int background) {
    enum { SLICE = 1 << 20 }; /* ~0.5 ms of work: the take-over waits for none of it */
    size_t base = 0;
    for (int i = 0; i < f->n; base += f->bytes[i++])
        for (size_t g = from > base ? from : base; g < base + f->bytes[i];) {
            if (background && atomic_load(&f->stop)) return;
            const size_t len = base + f->bytes[i] - g < SLICE ? base + f->bytes[i] - g : SLICE;
            if (populate(f->p[i] + (g - base), len)) return;
            g += len;
            if (background) atomic_store(&f->populated, g);
        }
}

/* The reserver's per-thread nice (Linux). At 19 it got only idle gaps: two
 * training threads on two cores left it too few to fault 1.2 GB in before
 * the first save (small: first stall 0.39-0.41 s against 0.16-0.26 reused).
 * At 10 (~10 % of a core beside a nice-0 thread) the first save held
 * 0.12-0.14 s, a reused one's, with the faulting moved into the steps before
 * it (~0.1 s a step on small, once per process; docs/RELIABILITY.md). */
enum { RESERVE_NICE = 10 };
static void *reserver(void *arg) {
    fy_ckpt_async *a = arg;
#ifdef __linux__
    /* Below training's priority; never raised again: the save does not wait
     * for it. */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), RESERVE_NICE);
#endif
    populate_fresh(&a->fresh, 0, 1);
    return NULL;
}

static void join_reserver(fy_ckpt_async *a) {
    if (!a->reserving) return;
    atomic_store(&a->fresh.stop, 1);
    pthread_join(a->reserver, NULL);
    a->reserving = 0;
}

/* *h (when NULL) = n floats, unmapped until populated: a fresh region. */
static void alloc_fresh(fy_ckpt_async *a, float **h, size_t n) {
    const size_t bytes = (n ? n : 1) * sizeof(float);
    if (*h || !(*h = malloc(bytes))) return; /* NULL: snapshot_take reports it */
    a->fresh.p[a->fresh.n] = (char *)*h;
    a->fresh.bytes[a->fresh.n++] = bytes;
}

/* The snapshot's buffers for tab (opt: with the AdamW moments), allocated
 * where missing; those new are the fresh regions to populate. */
static void prepare(fy_ckpt_async *a, const fy_param_table *tab, int opt) {
    fy_ckpt_snapshot *s = &a->snap;
    const int missing = s->tab != tab || !s->params || !s->buffers || (opt && (!s->m || !s->v));
    if (!missing) return;
    join_reserver(a); /* it reads the regions changed below */
    if (s->tab != tab) { /* another model (or a fresh snapshot): start clean */
        fy_ckpt_snapshot_free(s);
        s->tab = tab; /* snapshot_take keeps buffers of the same table */
    }
    a->fresh.n = 0;
    atomic_store(&a->fresh.stop, 0);
    atomic_store(&a->fresh.populated, 0);
    alloc_fresh(a, &s->params, tab->n_params);
    alloc_fresh(a, &s->buffers, tab->n_buffers);
    if (opt) alloc_fresh(a, &s->m, tab->n_params), alloc_fresh(a, &s->v, tab->n_params);
    a->fresh_pending = a->fresh.n > 0;
}

/* Before a save's copy: the buffers, and what the reserver has not faulted
 * in yet faulted in here (it stops; the save waits for none of its work). */
static void take_over(fy_ckpt_async *a, const fy_param_table *tab, int opt) {
    prepare(a, tab, opt);
    if (!a->fresh_pending) return;
    atomic_store(&a->fresh.stop, 1);
    populate_fresh(&a->fresh, atomic_load(&a->fresh.populated), 0);
    a->fresh_pending = 0;
}

/* ---- saves ---- */

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
    take_over(a, &m->tab, opt != NULL);
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
    take_over(a, h->tab, 1);
    if (fy_ckpt_snapshot_take_host(&a->snap, step, h, trainer_state_json, err) ||
        fy_ckpt_snapshot_set_extra(&a->snap, extra, err))
        return -1;
    return start(a, run_dir, keep_last, t0, stall_s, err);
}

void fy_ckpt_async_reserve(fy_ckpt_async *a, const fy_param_table *tab) {
    if (fy_ckpt_async_wait(a, NULL)) return;
    join_reserver(a);
    fy_ckpt_snapshot_free(&a->snap); /* afresh: the buffers to fault in are new */
    prepare(a, tab, 1);
    if (a->fresh_pending && pthread_create(&a->reserver, NULL, reserver, a) == 0) a->reserving = 1;
}

void fy_ckpt_async_free(fy_ckpt_async *a) {
    fy_ckpt_async_wait(a, NULL);
    join_reserver(a);
    fy_ckpt_snapshot_free(&a->snap);
    a->fresh.n = a->fresh_pending = 0;
}
