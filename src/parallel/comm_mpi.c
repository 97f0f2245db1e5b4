/* The communicator's MPI transport (comm_impl.h), built when CMake found
 * MPI as a module of its own (libferry_mpi.so) that comm_dl.c opens when a
 * process joins a job: non-blocking collectives waited for under the
 * timeout, and the streamed reductions' pieces in flight with their
 * progress thread. Of ferry it calls only what comm_mpi.syms exports from
 * the executables (fy_fail, fy_now_s, fy_comm_sum_pieces). */
#include "parallel/comm_impl.h"
#include "core/clock.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- waiting ---------------------------------------------------------------- */

/* A failed MPI call: the job has lost a rank. */
static int mpi_failed(fy_comm *c, int rc, const char *op, fy_err *err) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    c->lost = 1;
    return fy_fail(err, "rank %d: %s failed: %s", c->rank, op, msg);
}

/* Waits for a non-blocking collective, giving up after the timeout: a rank
 * that died or hangs must stop the job with a message, not freeze it. */
static int wait_req(fy_comm *c, MPI_Request *r, int rc, const char *op, fy_err *err) {
    if (rc != MPI_SUCCESS) return mpi_failed(c, rc, op, err);
    double t0 = fy_now_s();
    for (long spin = 0;; spin++) {
        int done = 0;
        rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_failed(c, rc, op, err);
        if (done) return 0;
        if (spin > 64) {
            /* Do not spin: ranks are often oversubscribed on the cores. */
            struct timespec ts = {0, spin > 4096 ? 200000 : 20000};
            nanosleep(&ts, NULL);
            if (fy_now_s() - t0 > c->timeout_s && (c->lost = 1))
                return fy_fail(err, "rank %d of %d: %s did not complete within %.0f s: a peer rank died or hangs",
                               c->rank, c->size, op, c->timeout_s);
        }
    }
}

static int fits_int(fy_comm *c, size_t v, const char *op, fy_err *err) {
    if (v > (size_t)INT_MAX)
        return fy_fail(err, "rank %d: %s: %zu elements exceed MPI's int counts (split the message)", c->rank, op, v);
    return 0;
}

static MPI_Datatype datatype(int esize) { return esize == FY_NET_FLOAT ? MPI_FLOAT : MPI_BYTE; }

/* ---- the blocking collectives -------------------------------------------------- */

static int mpi_barrier(fy_comm *c, fy_err *err) {
    MPI_Request req;
    int rc = MPI_Ibarrier(MPI_COMM_WORLD, &req);
    return wait_req(c, &req, rc, "barrier", err);
}

static int mpi_bcast(fy_comm *c, void *buf, size_t bytes, int root, fy_err *err) {
    if (fits_int(c, bytes, "broadcast", err)) return -1;
    if (c->rank == root) c->bytes_sent += bytes * (size_t)(c->size - 1);
    MPI_Request req;
    int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &req);
    return wait_req(c, &req, rc, "broadcast", err);
}

static int mpi_allgather(fy_comm *c, const void *send, size_t bytes, void *recv, fy_err *err) {
    if (fits_int(c, bytes, "all-gather", err)) return -1;
    c->bytes_sent += bytes * (size_t)(c->size - 1);
    MPI_Request req;
    int rc = MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD, &req);
    return wait_req(c, &req, rc, "all-gather", err);
}

static int mpi_alltoallv(fy_comm *c, const void *send, const size_t *sc, const size_t *sd, void *recv,
                         const size_t *rc, const size_t *rd, int esize, const char *op, fy_err *err) {
    int n = c->size;
    int *v = malloc(4 * (size_t)n * sizeof *v);
    if (!v) return fy_fail(err, "out of memory");
    int bad = 0;
    for (int p = 0; p < n && !bad; p++) {
        bad = fits_int(c, sc[p], op, err) || fits_int(c, sd[p], op, err) || fits_int(c, rc[p], op, err) ||
              fits_int(c, rd[p], op, err);
        v[p] = (int)sc[p], v[n + p] = (int)sd[p], v[2 * n + p] = (int)rc[p], v[3 * n + p] = (int)rd[p];
        if (p != c->rank) c->bytes_sent += sc[p] * (size_t)esize;
    }
    int r = -1;
    if (!bad) {
        MPI_Datatype t = datatype(esize);
        MPI_Request req;
        int rc0 = MPI_Ialltoallv(send, v, v + n, t, recv, v + 2 * n, v + 3 * n, t, MPI_COMM_WORLD, &req);
        r = wait_req(c, &req, rc0, op, err);
    }
    free(v);
    return r;
}

static int mpi_allgatherv(fy_comm *c, const void *send, void *recv, const size_t *counts, const size_t *displ,
                          int esize, const char *op, fy_err *err) {
    int n = c->size;
    int *v = malloc(2 * (size_t)n * sizeof *v);
    if (!v) return fy_fail(err, "out of memory");
    int bad = 0;
    for (int p = 0; p < n && !bad; p++) {
        bad = fits_int(c, counts[p], op, err) || fits_int(c, displ[p], op, err);
        v[p] = (int)counts[p], v[n + p] = (int)displ[p];
    }
    c->bytes_sent += counts[c->rank] * (size_t)esize * (size_t)(n - 1);
    int r = -1;
    if (!bad) {
        MPI_Datatype t = datatype(esize);
        MPI_Request req;
        int rc0 = MPI_Iallgatherv(send, v[c->rank], t, recv, v, v + n, t, MPI_COMM_WORLD, &req);
        r = wait_req(c, &req, rc0, op, err);
    }
    free(v);
    return r;
}

/* In-place integer all-reduce (exact in any order). */
static int mpi_allreduce_int(fy_comm *c, void *x, size_t n, enum fy_net_op op, fy_err *err) {
    const size_t esize = op == FY_NET_SUM_I64 ? sizeof(int64_t) : sizeof(int32_t);
    if (fits_int(c, n, "all-reduce", err)) return -1;
    c->bytes_sent += 2 * n * esize * (size_t)(c->size - 1) / c->size;
    MPI_Request req;
    int rc = op == FY_NET_SUM_I64
                 ? MPI_Iallreduce(MPI_IN_PLACE, x, (int)n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD, &req)
                 : MPI_Iallreduce(MPI_IN_PLACE, x, (int)n, MPI_INT32_T, MPI_MAX, MPI_COMM_WORLD, &req);
    return wait_req(c, &req, rc, "all-reduce", err);
}

/* ---- the streamed reductions' pieces in flight ------------------------------ */

/* One streamed reduction's MPI state (fy_comm_rs.net_state). */
typedef struct {
    MPI_Request *req;           /* one per posted range */
    int *cnt;                   /* [n_req][4 * size] the int counts each request reads */
    int n_req, cap_req;
    /* Open MPI moves a non-blocking collective only inside MPI calls; this
     * thread makes them (MPI_Test on the posted pieces every 50 us) while
     * the backward computes. mu guards req and n_req: MPI forbids two
     * threads testing one request. */
    pthread_t progress;
    pthread_mutex_t mu;
    int has_progress, stop;
    /* All-reduce mode (fy_comm_ar_*): bucket i (request req[i], its
     * reduce-scatter) is reduce-scattered into recv[roff ..], summed into
     * this rank's piece of x, then all-gathered (request ag) back into x. */
    struct ar_bucket { size_t lo, hi, roff; int summed; MPI_Request ag; } *bk;
    int *agcnt;                 /* [cap_req][2 * size] the all-gathers' int counts */
    /* The all-gathers run on a communicator of their own: MPI matches the
     * collectives of a communicator by their order, and a rank posts an
     * all-gather whenever its bucket's reduce-scatter is done, between the
     * reduce-scatters. Among themselves they go in bucket order. */
    MPI_Comm ag_comm;
    int has_ag_comm;
    float *x;                   /* ar: the vector reduced in place */
    size_t recv_used;           /* ar: floats of recv taken by the posted buckets */
} mpi_rs;

static int ar_advance_locked(fy_comm_rs *s, int wait, fy_err *err);

static void *rs_progress(void *arg) {
    fy_comm_rs *s = arg;
    mpi_rs *m = s->net_state;
    for (;;) {
        pthread_mutex_lock(&m->mu);
        int stop = m->stop;
        if (s->ar && !stop) {
            fy_err ignored; /* the waiter sees the errors */
            ar_advance_locked(s, 0, &ignored);
        }
        for (int i = 0; i < m->n_req && !stop && !s->ar; i++)
            if (m->req[i] != MPI_REQUEST_NULL) {
                int done = 0;
                MPI_Test(&m->req[i], &done, MPI_STATUS_IGNORE); /* errors: the waiter sees them */
            }
        pthread_mutex_unlock(&m->mu);
        if (stop) return NULL;
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}

static int mpi_rs_wait(fy_comm_rs *s, fy_err *err) {
    mpi_rs *m = s->net_state;
    int rc = 0;
    pthread_mutex_lock(&m->mu);
    /* All-reduce: every bucket's all-gather is posted first, on every rank
     * alike, also when the reduction is dropped. */
    if (s->ar) rc = ar_advance_locked(s, 1, err);
    for (int i = 0; i < m->n_req; i++) {
        if (!rc) rc = wait_req(s->c, &m->req[i], MPI_SUCCESS, "reduce-scatter (bucketed)", err);
        if (!rc && s->ar && m->bk[i].summed) rc = wait_req(s->c, &m->bk[i].ag, MPI_SUCCESS, "all-gather (bucketed)", err);
    }
    m->n_req = 0;
    m->recv_used = 0;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static void mpi_rs_close(fy_comm_rs *s) {
    mpi_rs *m = s->net_state;
    if (m->has_progress) {
        pthread_mutex_lock(&m->mu);
        m->stop = 1;
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->progress, NULL);
    }
    if (m->n_req && !s->c->lost) {
        fy_err e;
        mpi_rs_wait(s, &e);
    }
    pthread_mutex_destroy(&m->mu);
    free(m->req);
    free(m->cnt);
    free(m->bk);
    free(m->agcnt);
    if (m->has_ag_comm) MPI_Comm_free(&m->ag_comm);
    free(m);
    s->net_state = NULL;
}

static int mpi_rs_open(fy_comm_rs *s, int progress, fy_err *err) {
    fy_comm *c = s->c;
    const int N = c->size, cap = s->max_buckets;
    mpi_rs *m = calloc(1, sizeof *m);
    if (!m) return fy_fail(err, "out of memory");
    pthread_mutex_init(&m->mu, NULL);
    s->net_state = m;
    if (s->ar) {
        /* Requests and their count arrays are allocated once: MPI reads the
         * arrays of a pending collective, so they may not move. */
        m->cap_req = cap;
        m->req = malloc((size_t)cap * sizeof *m->req);
        m->cnt = malloc((size_t)cap * 4 * N * sizeof *m->cnt);
        m->bk = calloc((size_t)cap, sizeof *m->bk);
        m->agcnt = malloc((size_t)cap * 2 * N * sizeof *m->agcnt);
        if (!m->req || !m->cnt || !m->bk || !m->agcnt)
            return fy_fail(err, "out of memory for the bucketed all-reduce (%zu floats)", s->n_total);
        if (MPI_Comm_dup(MPI_COMM_WORLD, &m->ag_comm) != MPI_SUCCESS)
            return fy_fail(err, "bucketed all-reduce: MPI_Comm_dup failed");
        m->has_ag_comm = 1;
    }
    if (progress && c->thread_multiple) m->has_progress = pthread_create(&m->progress, NULL, rs_progress, s) == 0;
    return 0;
}

static int mpi_rs_progress_thread(const fy_comm_rs *s) { return ((const mpi_rs *)s->net_state)->has_progress; }

/* A reduce-scatter range, with m->mu held. */
static int rs_post_locked(fy_comm_rs *s, const float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    mpi_rs *m = s->net_state;
    const int n = c->size;
    if (m->n_req == m->cap_req) {
        int cap = m->cap_req ? 2 * m->cap_req : 16;
        MPI_Request *r = realloc(m->req, (size_t)cap * sizeof *r);
        if (r) m->req = r;
        int *v = r ? realloc(m->cnt, (size_t)cap * 4 * n * sizeof *v) : NULL;
        if (!r || !v) return fy_fail(err, "out of memory");
        m->cnt = v;
        m->cap_req = cap;
    }
    int *v = m->cnt + (size_t)m->n_req * 4 * n;
    const size_t mlo = s->displ[c->rank], mhi = mlo + s->len;
    /* My part of [lo, hi) that rank p owns goes to p; from every rank comes
     * its part of [lo, hi) that I own, into that rank's row of recv. */
    size_t in_lo = lo > mlo ? lo : mlo, in_hi = hi < mhi ? hi : mhi;
    if (in_hi < in_lo) in_hi = in_lo;
    for (int p = 0; p < n; p++) {
        size_t plo = s->displ[p], phi = plo + s->counts[p];
        size_t a = lo > plo ? lo : plo, b = hi < phi ? hi : phi;
        if (b < a) b = a;
        size_t rd = (size_t)p * s->len + (in_lo - mlo);
        if (fits_int(c, a, "reduce-scatter", err) || fits_int(c, rd, "reduce-scatter", err)) return -1;
        v[p] = (int)(b - a), v[n + p] = (int)a;
        v[2 * n + p] = (int)(in_hi - in_lo), v[3 * n + p] = (int)rd;
        if (p != c->rank) c->bytes_sent += (b - a) * sizeof(float);
    }
    int rc = MPI_Ialltoallv(x, v, v + n, MPI_FLOAT, s->recv, v + 2 * n, v + 3 * n, MPI_FLOAT, MPI_COMM_WORLD,
                            &m->req[m->n_req]);
    if (rc != MPI_SUCCESS) return wait_req(c, &m->req[m->n_req], rc, "reduce-scatter (bucketed)", err);
    m->n_req++;
    /* Drive the earlier pieces along. */
    for (int i = 0; i < m->n_req; i++) {
        int done = 0;
        MPI_Test(&m->req[i], &done, MPI_STATUS_IGNORE);
    }
    return 0;
}

/* Bucket i's reduce-scatter is done: sum this rank's piece into x, post
 * the all-gather of the bucket. */
static int ar_sum_and_gather(fy_comm_rs *s, int i, fy_err *err) {
    fy_comm *c = s->c;
    mpi_rs *m = s->net_state;
    struct ar_bucket *b = &m->bk[i];
    const int n = c->size, me = c->rank;
    size_t a = fy_comm_piece(b->lo, b->hi, me, n), len = fy_comm_piece(b->lo, b->hi, me + 1, n) - a;
    if (fy_comm_sum_pieces(c, s->recv + b->roff, len, m->x + a, err)) return -1;
    b->summed = 1;
    int *v = m->agcnt + (size_t)i * 2 * n;
    c->bytes_sent += len * sizeof(float) * (size_t)(n - 1);
    int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, m->x + b->lo, v, v + n, MPI_FLOAT, m->ag_comm,
                             &b->ag);
    return rc == MPI_SUCCESS ? 0 : wait_req(c, &b->ag, rc, "all-gather (bucketed)", err);
}

/* Moves the buckets on, in bucket order: once a bucket's reduce-scatter is
 * done it is summed and its all-gather posted; a bucket still in its
 * reduce-scatter holds back the later ones (the all-gathers must go in the
 * same order on every rank). wait: block on each reduce-scatter. */
static int ar_advance_locked(fy_comm_rs *s, int wait, fy_err *err) {
    mpi_rs *m = s->net_state;
    for (int i = 0; i < m->n_req; i++) {
        struct ar_bucket *b = &m->bk[i];
        int done = 0;
        if (b->summed) {
            if (!wait && b->ag != MPI_REQUEST_NULL) MPI_Test(&b->ag, &done, MPI_STATUS_IGNORE);
            continue;
        }
        if (wait) {
            if (wait_req(s->c, &m->req[i], MPI_SUCCESS, "reduce-scatter (bucketed)", err)) return -1;
            done = 1;
        } else if (MPI_Test(&m->req[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            done = 0;
        }
        if (!done) break;
        if (ar_sum_and_gather(s, i, err)) return -1;
    }
    return 0;
}

/* An all-reduce bucket, with m->mu held. */
static int ar_post_locked(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    mpi_rs *m = s->net_state;
    const int n = c->size, me = c->rank;
    if (m->n_req == m->cap_req)
        return fy_fail(err, "internal: bucketed all-reduce: more than %d buckets in one reduction", m->cap_req);
    size_t mine = fy_comm_piece(lo, hi, me + 1, n) - fy_comm_piece(lo, hi, me, n);
    if (m->recv_used + (size_t)n * mine > s->recv_cap)
        return fy_fail(err, "internal: bucketed all-reduce: out of receive space");
    if (fits_int(c, hi, "all-reduce (bucketed)", err) || fits_int(c, m->recv_used + (size_t)n * mine, "all-reduce", err))
        return -1;
    const int i = m->n_req;
    int *v = m->cnt + (size_t)i * 4 * n, *g = m->agcnt + (size_t)i * 2 * n;
    for (int k = 0; k < n; k++) {
        size_t a = fy_comm_piece(lo, hi, k, n), b = fy_comm_piece(lo, hi, k + 1, n);
        v[k] = (int)(b - a), v[n + k] = (int)a;                                       /* piece k to rank k */
        v[2 * n + k] = (int)mine, v[3 * n + k] = (int)(m->recv_used + (size_t)k * mine); /* my piece from rank k */
        g[k] = (int)(b - a), g[n + k] = (int)(a - lo);
        if (k != me) c->bytes_sent += (b - a) * sizeof(float);
    }
    m->bk[i] = (struct ar_bucket){lo, hi, m->recv_used, 0, MPI_REQUEST_NULL};
    m->recv_used += (size_t)n * mine;
    m->x = x;
    int rc = MPI_Ialltoallv(x, v, v + n, MPI_FLOAT, s->recv, v + 2 * n, v + 3 * n, MPI_FLOAT, MPI_COMM_WORLD,
                            &m->req[i]);
    if (rc != MPI_SUCCESS) return wait_req(c, &m->req[i], rc, "reduce-scatter (bucketed)", err);
    m->n_req++;
    return ar_advance_locked(s, 0, err);
}

/* A range of a multi-rank reduction, posted under the mutex the progress
 * thread shares. */
static int mpi_rs_post(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err) {
    mpi_rs *m = s->net_state;
    pthread_mutex_lock(&m->mu);
    int rc = s->ar ? ar_post_locked(s, x, lo, hi, err) : rs_post_locked(s, x, lo, hi, err);
    pthread_mutex_unlock(&m->mu);
    return rc;
}

/* ---- joining and leaving ------------------------------------------------------ */

static void mpi_leave(fy_comm *c) {
    (void)c;
    MPI_Finalize();
}

static void mpi_kill(fy_comm *c, int code) {
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code);
}

static const fy_comm_net mpi_net = {
    mpi_leave,  mpi_kill,    mpi_barrier,  mpi_bcast,   mpi_allgather,          mpi_allgatherv,
    mpi_alltoallv, mpi_allreduce_int, mpi_rs_open, mpi_rs_close, mpi_rs_wait, mpi_rs_post,
    mpi_rs_progress_thread,
};

int fy_comm_mpi_join(fy_comm *c, fy_err *err) {
    int provided = 0;
    /* MULTIPLE for the bucketed reduce-scatter's progress thread; an MPI
     * that offers less runs without it. */
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        return fy_fail(err, "MPI_Init_thread failed");
    /* Errors come back as codes, so a failed call is reported, not fatal. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->net = &mpi_net;
    c->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
    return 0;
}
