#include "parallel/comm.h"
#include "core/clock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef FERRY_HAVE_MPI
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#endif

struct fy_comm {
    int rank, size;
    int mpi;                /* 1: MPI_COMM_WORLD, 0: the one-rank communicator */
    int thread_multiple;    /* MPI gave MPI_THREAD_MULTIPLE: a progress thread may call it */
    double timeout_s;
    uint64_t bytes_sent;
    int lost;               /* a collective failed or timed out */
};

int fy_comm_have_mpi(void) {
#ifdef FERRY_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int fy_comm_launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int fy_comm_lost_peer(const fy_comm *c) { return c && c->lost; }

int fy_comm_init(double timeout_s, fy_comm **out, fy_err *err) {
    fy_comm *c = calloc(1, sizeof *c);
    if (!c) return fy_fail(err, "out of memory");
    c->size = 1;
    c->timeout_s = timeout_s > 0 ? timeout_s : 600;
    if (fy_comm_launched()) {
#ifdef FERRY_HAVE_MPI
        int provided = 0;
        /* MULTIPLE for the bucketed reduce-scatter's progress thread; an MPI
         * that offers less runs without it. */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
            free(c);
            return fy_fail(err, "MPI_Init_thread failed");
        }
        /* Errors come back as codes, so a failed call is reported, not fatal. */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &c->size);
        c->mpi = 1;
        c->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
#else
        free(c);
        return fy_fail(err, "this process was started by mpirun, but ferry was built without MPI "
                            "(apt-get install libopenmpi-dev openmpi-bin, then rebuild)");
#endif
    }
    *out = c;
    return 0;
}

void fy_comm_finalize(fy_comm *c) {
    if (!c) return;
#ifdef FERRY_HAVE_MPI
    if (c->mpi) MPI_Finalize();
#endif
    free(c);
}

void fy_comm_abort(fy_comm *c, int code) {
#ifdef FERRY_HAVE_MPI
    if (c && c->mpi) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    exit(code);
}

int fy_comm_rank(const fy_comm *c) { return c->rank; }
int fy_comm_size(const fy_comm *c) { return c->size; }
uint64_t fy_comm_bytes_sent(const fy_comm *c) { return c->bytes_sent; }
void fy_comm_set_timeout(fy_comm *c, double timeout_s) { c->timeout_s = timeout_s > 0 ? timeout_s : 600; }

/* ---- the fixed summation order ------------------------------------------- */

size_t fy_tree_split(size_t n) {
    size_t p = 1;
    while (p * 2 < n) p *= 2;
    return p;
}

/* out = tree sum of parts[lo..hi). */
static void tree_sum(const float *const *parts, int lo, int hi, size_t n, float *out, float *tmp) {
    if (hi - lo == 1) {
        if (out != parts[lo]) memcpy(out, parts[lo], n * sizeof *out);
        return;
    }
    int mid = lo + (int)fy_tree_split((size_t)(hi - lo));
    tree_sum(parts, lo, mid, n, out, tmp);
    if (hi - mid == 1) {
        const float *r = parts[mid];
        for (size_t i = 0; i < n; i++) out[i] += r[i];
        return;
    }
    /* The right subtree needs its own scratch: tmp holds it, tmp + n is
     * scratch for its right subtrees in turn (depth <= log2 parts). */
    tree_sum(parts, mid, hi, n, tmp, tmp + n);
    for (size_t i = 0; i < n; i++) out[i] += tmp[i];
}

void fy_tree_sum(const float *const *parts, int n_parts, size_t n, float *out) {
    if (n_parts <= 0) {
        memset(out, 0, n * sizeof *out);
        return;
    }
    if (n_parts <= 2) {
        tree_sum(parts, 0, n_parts, n, out, NULL);
        return;
    }
    int depth = 0;
    while ((1 << depth) < n_parts) depth++;
    /* Work in blocks so the scratch stays small. */
    enum { BLK = 4096 };
    float *tmp = malloc((size_t)depth * BLK * sizeof *tmp);
    const float **sub = malloc((size_t)n_parts * sizeof *sub);
    if (!tmp || !sub) abort(); /* a few KiB: nothing sensible to do without them */
    for (size_t b = 0; b < n; b += BLK) {
        size_t len = n - b < BLK ? n - b : BLK;
        for (int p = 0; p < n_parts; p++) sub[p] = parts[p] + b;
        tree_sum(sub, 0, n_parts, len, out + b, tmp);
    }
    free(tmp);
    free(sub);
}

/* ---- int8 block quantization --------------------------------------------- */

static size_t n_blocks(size_t n) { return (n + FY_COMM_Q8_BLOCK - 1) / FY_COMM_Q8_BLOCK; }

size_t fy_quant8_bytes(size_t n) { return n_blocks(n) * sizeof(float) + n; }

/* The scales are stored with memcpy: a message packs several ranks'
 * blocks one after another, so q need not be 4-byte aligned. */
void fy_quant8(const float *x, size_t n, void *q, float *resid) {
    char *scale = q;
    int8_t *code = (int8_t *)(scale + n_blocks(n) * sizeof(float));
    for (size_t b = 0; b * FY_COMM_Q8_BLOCK < n; b++) {
        size_t lo = b * FY_COMM_Q8_BLOCK, hi = lo + FY_COMM_Q8_BLOCK < n ? lo + FY_COMM_Q8_BLOCK : n;
        float amax = 0;
        for (size_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
        float s = amax / 127.0f;
        memcpy(scale + b * sizeof s, &s, sizeof s);
        float inv = s > 0 ? 1.0f / s : 0.0f;
        for (size_t i = lo; i < hi; i++) {
            float r = nearbyintf(x[i] * inv);
            if (r > 127) r = 127;
            if (r < -127) r = -127;
            code[i] = (int8_t)r;
            if (resid) resid[i] = x[i] - (float)code[i] * s;
        }
    }
}

void fy_dequant8(const void *q, size_t n, float *out) {
    const char *scale = q;
    const int8_t *code = (const int8_t *)(scale + n_blocks(n) * sizeof(float));
    for (size_t b = 0; b * FY_COMM_Q8_BLOCK < n; b++) {
        size_t lo = b * FY_COMM_Q8_BLOCK, hi = lo + FY_COMM_Q8_BLOCK < n ? lo + FY_COMM_Q8_BLOCK : n;
        float s;
        memcpy(&s, scale + b * sizeof s, sizeof s);
        for (size_t i = lo; i < hi; i++) out[i] = (float)code[i] * s;
    }
}

/* ---- MPI plumbing ---------------------------------------------------------- */

#ifdef FERRY_HAVE_MPI
/* Waits for a non-blocking collective, giving up after the timeout: a rank
 * that died or hangs must stop the job with a message, not freeze it. */
static int wait_req(fy_comm *c, MPI_Request *r, int rc, const char *op, fy_err *err) {
    if (rc != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, msg, &len);
        c->lost = 1;
        return fy_fail(err, "rank %d: %s failed: %s", c->rank, op, msg);
    }
    double t0 = fy_now_s();
    for (long spin = 0;; spin++) {
        int done = 0;
        rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            char msg[MPI_MAX_ERROR_STRING];
            int len = 0;
            MPI_Error_string(rc, msg, &len);
            c->lost = 1;
            return fy_fail(err, "rank %d: %s failed: %s", c->rank, op, msg);
        }
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

/* Counts and displacements in elements of type t. */
static int a2av(fy_comm *c, const void *send, const size_t *sc, const size_t *sd, void *recv, const size_t *rc,
                const size_t *rd, MPI_Datatype t, size_t esize, const char *op, fy_err *err) {
    int n = c->size;
    int *v = malloc(4 * (size_t)n * sizeof *v);
    if (!v) return fy_fail(err, "out of memory");
    int bad = 0;
    for (int p = 0; p < n && !bad; p++) {
        bad = fits_int(c, sc[p], op, err) || fits_int(c, sd[p], op, err) || fits_int(c, rc[p], op, err) ||
              fits_int(c, rd[p], op, err);
        v[p] = (int)sc[p], v[n + p] = (int)sd[p], v[2 * n + p] = (int)rc[p], v[3 * n + p] = (int)rd[p];
        if (p != c->rank) c->bytes_sent += sc[p] * esize;
    }
    int r = -1;
    if (!bad) {
        MPI_Request req;
        int rc0 = MPI_Ialltoallv(send, v, v + n, t, recv, v + 2 * n, v + 3 * n, t, MPI_COMM_WORLD, &req);
        r = wait_req(c, &req, rc0, op, err);
    }
    free(v);
    return r;
}

static int agv(fy_comm *c, const void *send, void *recv, const size_t *counts, const size_t *displ, MPI_Datatype t,
               size_t esize, const char *op, fy_err *err) {
    int n = c->size;
    int *v = malloc(2 * (size_t)n * sizeof *v);
    if (!v) return fy_fail(err, "out of memory");
    int bad = 0;
    for (int p = 0; p < n && !bad; p++) {
        bad = fits_int(c, counts[p], op, err) || fits_int(c, displ[p], op, err);
        v[p] = (int)counts[p], v[n + p] = (int)displ[p];
    }
    c->bytes_sent += counts[c->rank] * esize * (size_t)(n - 1);
    int r = -1;
    if (!bad) {
        MPI_Request req;
        int rc0 = MPI_Iallgatherv(send, v[c->rank], t, recv, v, v + n, t, MPI_COMM_WORLD, &req);
        r = wait_req(c, &req, rc0, op, err);
    }
    free(v);
    return r;
}
#endif

/* ---- collectives ----------------------------------------------------------- */

int fy_comm_barrier(fy_comm *c, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) {
        MPI_Request req;
        int rc = MPI_Ibarrier(MPI_COMM_WORLD, &req);
        return wait_req(c, &req, rc, "barrier", err);
    }
#endif
    return 0;
}

int fy_comm_bcast(fy_comm *c, void *buf, size_t bytes, int root, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) {
        if (fits_int(c, bytes, "broadcast", err)) return -1;
        if (c->rank == root) c->bytes_sent += bytes * (size_t)(c->size - 1);
        MPI_Request req;
        int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &req);
        return wait_req(c, &req, rc, "broadcast", err);
    }
#endif
    return 0;
}

int fy_comm_allgather(fy_comm *c, const void *send, size_t bytes, void *recv, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) {
        if (fits_int(c, bytes, "all-gather", err)) return -1;
        c->bytes_sent += bytes * (size_t)(c->size - 1);
        MPI_Request req;
        int rc = MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD, &req);
        return wait_req(c, &req, rc, "all-gather", err);
    }
#endif
    memmove(recv, send, bytes);
    return 0;
}

int fy_comm_allgatherv(fy_comm *c, const void *send, void *recv, const size_t *counts, const size_t *displ,
                       fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) return agv(c, send, recv, counts, displ, MPI_BYTE, 1, "all-gather", err);
#endif
    memmove((char *)recv + displ[0], send, counts[0]);
    return 0;
}

int fy_comm_alltoallv(fy_comm *c, const void *send, const size_t *scounts, const size_t *sdispl, void *recv,
                      const size_t *rcounts, const size_t *rdispl, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) return a2av(c, send, scounts, sdispl, recv, rcounts, rdispl, MPI_BYTE, 1, "all-to-all", err);
#endif
    memmove((char *)recv + rdispl[0], (const char *)send + sdispl[0], scounts[0]);
    return 0;
}

#ifdef FERRY_HAVE_MPI
/* In-place integer all-reduce (exact in any order). */
static int int_allreduce(fy_comm *c, void *x, size_t n, size_t esize, MPI_Datatype t, MPI_Op op, fy_err *err) {
    if (fits_int(c, n, "all-reduce", err)) return -1;
    c->bytes_sent += 2 * n * esize * (size_t)(c->size - 1) / c->size;
    MPI_Request req;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, x, (int)n, t, op, MPI_COMM_WORLD, &req);
    return wait_req(c, &req, rc, "all-reduce", err);
}
#endif

int fy_comm_allreduce_i64(fy_comm *c, int64_t *x, size_t n, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) return int_allreduce(c, x, n, sizeof *x, MPI_INT64_T, MPI_SUM, err);
#endif
    return 0;
}

int fy_comm_allreduce_max_i32(fy_comm *c, int32_t *x, size_t n, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (c->mpi) return int_allreduce(c, x, n, sizeof *x, MPI_INT32_T, MPI_MAX, err);
#endif
    return 0;
}

/* The shared second half of both reduce-scatters: recv holds the size
 * pieces of this rank's shard (piece p from rank p, counts[rank] floats
 * each), summed in tree order into out. */
static int sum_pieces(fy_comm *c, const float *recv, size_t len, float *out, fy_err *err) {
    const float **parts = malloc((size_t)c->size * sizeof *parts);
    if (!parts) return fy_fail(err, "out of memory");
    for (int p = 0; p < c->size; p++) parts[p] = recv + (size_t)p * len;
    fy_tree_sum(parts, c->size, len, out);
    free(parts);
    return 0;
}

int fy_comm_reduce_scatter_f32(fy_comm *c, const float *x, float *out, const size_t *counts,
                               const size_t *displ, fy_err *err) {
    if (c->size == 1) {
        memmove(out, x + displ[0], counts[0] * sizeof *x);
        return 0;
    }
#ifdef FERRY_HAVE_MPI
    int n = c->size;
    size_t len = counts[c->rank];
    size_t *v = malloc(4 * (size_t)n * sizeof *v);
    float *recv = malloc((size_t)n * len * sizeof *recv + 1);
    if (!v || !recv) {
        free(v); free(recv);
        return fy_fail(err, "out of memory");
    }
    for (int p = 0; p < n; p++) {
        v[p] = counts[p], v[n + p] = displ[p];               /* send: shard p of x to rank p */
        v[2 * n + p] = len, v[3 * n + p] = (size_t)p * len;  /* recv: piece p of my shard */
    }
    int rc = a2av(c, x, v, v + n, recv, v + 2 * n, v + 3 * n, MPI_FLOAT, sizeof(float), "reduce-scatter", err);
    if (!rc) rc = sum_pieces(c, recv, len, out, err);
    free(v);
    free(recv);
    return rc;
#else
    return fy_fail(err, "internal: a %d-rank communicator without MPI", c->size);
#endif
}

/* ---- the streamed reduce-scatter ----------------------------------------- */

struct fy_comm_rs {
    fy_comm *c;
    size_t *counts, *displ;     /* [size] each */
    size_t len;                 /* this rank's shard */
    size_t n_total, posted;     /* elements; posted so far */
    float *recv;                /* [size][len]: piece p of the shard from rank p */
    int active;
#ifdef FERRY_HAVE_MPI
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
#endif
    int ar;                     /* all-reduce mode */
    float *x;                   /* ar: the vector reduced in place */
    size_t recv_used, recv_cap; /* ar: floats of recv taken by the posted buckets, and its size */
};

#ifdef FERRY_HAVE_MPI
static int ar_advance_locked(fy_comm_rs *s, int wait, fy_err *err);

static void *rs_progress(void *arg) {
    fy_comm_rs *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int stop = s->stop;
        if (s->ar && !stop) {
            fy_err ignored; /* the waiter sees the errors */
            ar_advance_locked(s, 0, &ignored);
        }
        for (int i = 0; i < s->n_req && !stop && !s->ar; i++)
            if (s->req[i] != MPI_REQUEST_NULL) {
                int done = 0;
                MPI_Test(&s->req[i], &done, MPI_STATUS_IGNORE); /* errors: the waiter sees them */
            }
        pthread_mutex_unlock(&s->mu);
        if (stop) return NULL;
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}
#endif

/* The state both streamed reductions share, with recv of recv_floats
 * (NULL: out of memory). */
static fy_comm_rs *rs_new(fy_comm *c, size_t recv_floats) {
    fy_comm_rs *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->c = c;
#ifdef FERRY_HAVE_MPI
    pthread_mutex_init(&s->mu, NULL);
#endif
    if (!(s->recv = malloc(recv_floats * sizeof *s->recv + 1))) {
        fy_comm_rs_free(s);
        return NULL;
    }
    return s;
}

/* Starts the progress thread when asked for and possible. */
static void rs_start_progress(fy_comm_rs *s, int progress) {
#ifdef FERRY_HAVE_MPI
    fy_comm *c = s->c;
    if (progress && c->mpi && c->size > 1 && c->thread_multiple)
        s->has_progress = pthread_create(&s->progress, NULL, rs_progress, s) == 0;
#else
    (void)s, (void)progress;
#endif
}

int fy_comm_rs_create(fy_comm *c, const size_t *counts, const size_t *displ, int progress, fy_comm_rs **out,
                      fy_err *err) {
    fy_comm_rs *s = rs_new(c, (size_t)c->size * counts[c->rank]);
    if (!s || !(s->counts = malloc(2 * (size_t)c->size * sizeof *s->counts))) {
        fy_comm_rs_free(s);
        return fy_fail(err, "out of memory");
    }
    s->displ = s->counts + c->size;
    for (int p = 0; p < c->size; p++) {
        s->counts[p] = counts[p], s->displ[p] = displ[p];
        if (displ[p] + counts[p] > s->n_total) s->n_total = displ[p] + counts[p];
    }
    s->len = counts[c->rank];
    rs_start_progress(s, progress);
    *out = s;
    return 0;
}

int fy_comm_rs_progress_thread(const fy_comm_rs *s) {
#ifdef FERRY_HAVE_MPI
    return s && s->has_progress;
#else
    (void)s;
    return 0;
#endif
}

#ifdef FERRY_HAVE_MPI
static int rs_wait_all(fy_comm_rs *s, fy_err *err) {
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    /* All-reduce: every bucket's all-gather is posted first, on every rank
     * alike, also when the reduction is dropped. */
    if (s->ar) rc = ar_advance_locked(s, 1, err);
    for (int i = 0; i < s->n_req; i++) {
        if (!rc) rc = wait_req(s->c, &s->req[i], MPI_SUCCESS, "reduce-scatter (bucketed)", err);
        if (!rc && s->ar && s->bk[i].summed) rc = wait_req(s->c, &s->bk[i].ag, MPI_SUCCESS, "all-gather (bucketed)", err);
    }
    s->n_req = 0;
    s->recv_used = 0;
    pthread_mutex_unlock(&s->mu);
    return rc;
}
#endif

void fy_comm_rs_free(fy_comm_rs *s) {
    if (!s) return;
#ifdef FERRY_HAVE_MPI
    if (s->has_progress) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->progress, NULL);
    }
    if (s->n_req && !s->c->lost) {
        fy_err e;
        rs_wait_all(s, &e);
    }
    pthread_mutex_destroy(&s->mu);
    free(s->req);
    free(s->cnt);
    free(s->bk);
    free(s->agcnt);
    if (s->has_ag_comm) MPI_Comm_free(&s->ag_comm);
#endif
    free(s->counts);
    free(s->recv);
    free(s);
}

int fy_comm_rs_active(const fy_comm_rs *s) { return s && s->active; }

int fy_comm_rs_begin(fy_comm_rs *s, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    if (s->n_req && rs_wait_all(s, err)) return -1;
#else
    (void)err;
#endif
    s->posted = 0;
    s->active = 1;
    return 0;
}

#ifdef FERRY_HAVE_MPI
/* rs_post's MPI part, with s->mu held. */
static int rs_post_locked(fy_comm_rs *s, const float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    const int n = c->size;
    if (s->n_req == s->cap_req) {
        int cap = s->cap_req ? 2 * s->cap_req : 16;
        MPI_Request *r = realloc(s->req, (size_t)cap * sizeof *r);
        if (r) s->req = r;
        int *v = r ? realloc(s->cnt, (size_t)cap * 4 * n * sizeof *v) : NULL;
        if (!r || !v) return fy_fail(err, "out of memory");
        s->cnt = v;
        s->cap_req = cap;
    }
    int *v = s->cnt + (size_t)s->n_req * 4 * n;
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
                            &s->req[s->n_req]);
    if (rc != MPI_SUCCESS) return wait_req(c, &s->req[s->n_req], rc, "reduce-scatter (bucketed)", err);
    s->n_req++;
    /* Drive the earlier pieces along. */
    for (int i = 0; i < s->n_req; i++) {
        int done = 0;
        MPI_Test(&s->req[i], &done, MPI_STATUS_IGNORE);
    }
    return 0;
}
#endif

#ifdef FERRY_HAVE_MPI
static int ar_post_locked(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err);
#endif

/* A range of a multi-rank reduction, posted under the mutex the progress
 * thread shares. */
static int post_locked(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err) {
#ifdef FERRY_HAVE_MPI
    pthread_mutex_lock(&s->mu);
    int rc = s->ar ? ar_post_locked(s, x, lo, hi, err) : rs_post_locked(s, x, lo, hi, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
#else
    (void)x, (void)lo, (void)hi;
    return fy_fail(err, "internal: a %d-rank communicator without MPI", s->c->size);
#endif
}

int fy_comm_rs_post(fy_comm_rs *s, const float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    if (!s->active || lo > hi || hi > s->n_total)
        return fy_fail(err, "internal: bucketed reduce-scatter: range [%zu, %zu) of %zu posted outside a reduction",
                       lo, hi, s->n_total);
    s->posted += hi - lo;
    if (c->size == 1) {
        size_t a = lo > s->displ[0] ? lo : s->displ[0], b = hi < s->displ[0] + s->len ? hi : s->displ[0] + s->len;
        if (b > a) memcpy(s->recv + (a - s->displ[0]), x + a, (b - a) * sizeof *x);
        return 0;
    }
    return post_locked(s, (float *)x, lo, hi, err); /* the reduce-scatter only reads x */
}

/* Ends a reduction of either kind (what names it): waits for every piece
 * and checks that the posted ranges covered [0, n_total). */
static int rs_end(fy_comm_rs *s, const char *what, fy_err *err) {
    if (!s->active) return fy_fail(err, "internal: %s finished twice", what);
    s->active = 0;
#ifdef FERRY_HAVE_MPI
    if (rs_wait_all(s, err)) return -1;
#endif
    if (s->posted != s->n_total)
        return fy_fail(err, "internal: %s got %zu of %zu elements", what, s->posted, s->n_total);
    return 0;
}

int fy_comm_rs_finish(fy_comm_rs *s, float *out, fy_err *err) {
    if (rs_end(s, "bucketed reduce-scatter", err)) return -1;
    return sum_pieces(s->c, s->recv, s->len, out, err);
}

/* ---- the streamed all-reduce ----------------------------------------------- */

int fy_comm_ar_create(fy_comm *c, size_t n, int max_buckets, int progress, fy_comm_rs **out, fy_err *err) {
    const int N = c->size, cap = max_buckets > 0 ? max_buckets : 1;
    /* A bucket's pieces take N * ceil(len / N) floats: at most len + N. */
    const size_t recv_cap = n + (size_t)N * cap;
    fy_comm_rs *s = rs_new(c, recv_cap);
    int ok = s != NULL;
    if (ok) s->ar = 1, s->n_total = n, s->recv_cap = recv_cap;
#ifdef FERRY_HAVE_MPI
    /* Requests and their count arrays are allocated once: MPI reads the
     * arrays of a pending collective, so they may not move. */
    if (ok) {
        s->cap_req = cap;
        s->req = malloc((size_t)cap * sizeof *s->req);
        s->cnt = malloc((size_t)cap * 4 * N * sizeof *s->cnt);
        s->bk = calloc((size_t)cap, sizeof *s->bk);
        s->agcnt = malloc((size_t)cap * 2 * N * sizeof *s->agcnt);
        ok = s->req && s->cnt && s->bk && s->agcnt;
    }
#endif
    if (!ok) {
        fy_comm_rs_free(s);
        return fy_fail(err, "out of memory for the bucketed all-reduce (%zu floats)", n);
    }
#ifdef FERRY_HAVE_MPI
    if (c->mpi && N > 1) {
        if (MPI_Comm_dup(MPI_COMM_WORLD, &s->ag_comm) != MPI_SUCCESS) {
            fy_comm_rs_free(s);
            return fy_fail(err, "bucketed all-reduce: MPI_Comm_dup failed");
        }
        s->has_ag_comm = 1;
    }
#endif
    rs_start_progress(s, progress);
    *out = s;
    return 0;
}

/* Piece k of bucket [lo, hi): [piece(k), piece(k + 1)). */
static size_t piece(size_t lo, size_t hi, int k, int n) { return lo + (hi - lo) * (size_t)k / (size_t)n; }

#ifdef FERRY_HAVE_MPI
/* Bucket i's reduce-scatter is done: sum this rank's piece into x, post
 * the all-gather of the bucket. */
static int ar_sum_and_gather(fy_comm_rs *s, int i, fy_err *err) {
    fy_comm *c = s->c;
    struct ar_bucket *b = &s->bk[i];
    const int n = c->size, me = c->rank;
    size_t a = piece(b->lo, b->hi, me, n), len = piece(b->lo, b->hi, me + 1, n) - a;
    if (sum_pieces(c, s->recv + b->roff, len, s->x + a, err)) return -1;
    b->summed = 1;
    int *v = s->agcnt + (size_t)i * 2 * n;
    c->bytes_sent += len * sizeof(float) * (size_t)(n - 1);
    int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, s->x + b->lo, v, v + n, MPI_FLOAT, s->ag_comm,
                             &b->ag);
    return rc == MPI_SUCCESS ? 0 : wait_req(c, &b->ag, rc, "all-gather (bucketed)", err);
}

/* Moves the buckets on, in bucket order: once a bucket's reduce-scatter is
 * done it is summed and its all-gather posted; a bucket still in its
 * reduce-scatter holds back the later ones (the all-gathers must go in the
 * same order on every rank). wait: block on each reduce-scatter. */
static int ar_advance_locked(fy_comm_rs *s, int wait, fy_err *err) {
    for (int i = 0; i < s->n_req; i++) {
        struct ar_bucket *b = &s->bk[i];
        int done = 0;
        if (b->summed) {
            if (!wait && b->ag != MPI_REQUEST_NULL) MPI_Test(&b->ag, &done, MPI_STATUS_IGNORE);
            continue;
        }
        if (wait) {
            if (wait_req(s->c, &s->req[i], MPI_SUCCESS, "reduce-scatter (bucketed)", err)) return -1;
            done = 1;
        } else if (MPI_Test(&s->req[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            done = 0;
        }
        if (!done) break;
        if (ar_sum_and_gather(s, i, err)) return -1;
    }
    return 0;
}

static int ar_post_locked(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    const int n = c->size, me = c->rank;
    if (s->n_req == s->cap_req)
        return fy_fail(err, "internal: bucketed all-reduce: more than %d buckets in one reduction", s->cap_req);
    size_t mine = piece(lo, hi, me + 1, n) - piece(lo, hi, me, n);
    if (s->recv_used + (size_t)n * mine > s->recv_cap)
        return fy_fail(err, "internal: bucketed all-reduce: out of receive space");
    if (fits_int(c, hi, "all-reduce (bucketed)", err) || fits_int(c, s->recv_used + (size_t)n * mine, "all-reduce", err))
        return -1;
    const int i = s->n_req;
    int *v = s->cnt + (size_t)i * 4 * n, *g = s->agcnt + (size_t)i * 2 * n;
    for (int k = 0; k < n; k++) {
        size_t a = piece(lo, hi, k, n), b = piece(lo, hi, k + 1, n);
        v[k] = (int)(b - a), v[n + k] = (int)a;                                       /* piece k to rank k */
        v[2 * n + k] = (int)mine, v[3 * n + k] = (int)(s->recv_used + (size_t)k * mine); /* my piece from rank k */
        g[k] = (int)(b - a), g[n + k] = (int)(a - lo);
        if (k != me) c->bytes_sent += (b - a) * sizeof(float);
    }
    s->bk[i] = (struct ar_bucket){lo, hi, s->recv_used, 0, MPI_REQUEST_NULL};
    s->recv_used += (size_t)n * mine;
    s->x = x;
    int rc = MPI_Ialltoallv(x, v, v + n, MPI_FLOAT, s->recv, v + 2 * n, v + 3 * n, MPI_FLOAT, MPI_COMM_WORLD,
                            &s->req[i]);
    if (rc != MPI_SUCCESS) return wait_req(c, &s->req[i], rc, "reduce-scatter (bucketed)", err);
    s->n_req++;
    return ar_advance_locked(s, 0, err);
}
#endif

int fy_comm_ar_post(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err) {
    fy_comm *c = s->c;
    if (!s->ar || !s->active || lo > hi || hi > s->n_total)
        return fy_fail(err, "internal: bucketed all-reduce: range [%zu, %zu) of %zu posted outside a reduction", lo,
                       hi, s->n_total);
    s->posted += hi - lo;
    if (c->size == 1 || hi == lo) return 0; /* one rank: x is its own sum */
    return post_locked(s, x, lo, hi, err);
}

int fy_comm_ar_finish(fy_comm_rs *s, fy_err *err) {
    if (!s->ar) return fy_fail(err, "internal: fy_comm_ar_finish on a bucketed reduce-scatter");
    return rs_end(s, "bucketed all-reduce", err);
}

int fy_comm_reduce_scatter_q8(fy_comm *c, const float *x, float *out, const size_t *counts,
                              const size_t *displ, float *resid, fy_err *err) {
    if (c->size == 1) {
        memmove(out, x + displ[0], counts[0] * sizeof *x);
        if (resid) memset(resid + displ[0], 0, counts[0] * sizeof *resid);
        return 0;
    }
#ifdef FERRY_HAVE_MPI
    int n = c->size, me = c->rank;
    size_t len = counts[me], qlen = fy_quant8_bytes(len);
    size_t *v = calloc(4 * (size_t)n, sizeof *v);
    size_t sbytes = 0;
    for (int p = 0; p < n; p++) sbytes += fy_quant8_bytes(counts[p]);
    char *send = calloc(1, sbytes + 1), *recv = malloc((size_t)n * qlen + 1);
    float *pieces = malloc((size_t)n * len * sizeof *pieces + 1);
    int rc = -1;
    if (!v || !send || !recv || !pieces) {
        fy_fail(err, "out of memory");
        goto out;
    }
    size_t off = 0;
    for (int p = 0; p < n; p++) {
        size_t qb = fy_quant8_bytes(counts[p]);
        if (p != me) fy_quant8(x + displ[p], counts[p], send + off, resid ? resid + displ[p] : NULL);
        else if (resid) memset(resid + displ[p], 0, counts[p] * sizeof *resid);
        v[p] = p == me ? 0 : qb, v[n + p] = off;
        v[2 * n + p] = p == me ? 0 : qlen, v[3 * n + p] = (size_t)p * qlen;
        off += qb;
    }
    if (a2av(c, send, v, v + n, recv, v + 2 * n, v + 3 * n, MPI_BYTE, 1, "reduce-scatter (int8)", err)) goto out;
    for (int p = 0; p < n; p++) {
        if (p == me) memcpy(pieces + (size_t)p * len, x + displ[me], len * sizeof *pieces);
        else fy_dequant8(recv + (size_t)p * qlen, len, pieces + (size_t)p * len);
    }
    rc = sum_pieces(c, pieces, len, out, err);
out:
    free(v); free(send); free(recv); free(pieces);
    return rc;
#else
    (void)resid;
    return fy_fail(err, "internal: a %d-rank communicator without MPI", c->size);
#endif
}

int fy_comm_allgather_f32(fy_comm *c, const float *shard, float *full, const size_t *counts,
                          const size_t *displ, int q8, float *resid, fy_err *err) {
    int me = c->rank;
    if (c->size == 1 && !q8) {
        memmove(full + displ[0], shard, counts[0] * sizeof *full);
        return 0;
    }
    if (!q8) {
#ifdef FERRY_HAVE_MPI
        return agv(c, shard, full, counts, displ, MPI_FLOAT, sizeof(float), "all-gather", err);
#endif
    }
    int n = c->size;
    size_t *v = malloc(2 * (size_t)n * sizeof *v);
    size_t total = 0;
    for (int p = 0; p < n; p++) total += fy_quant8_bytes(counts[p]);
    char *q = malloc(total + 1);
    if (!v || !q) {
        free(v); free(q);
        return fy_fail(err, "out of memory");
    }
    size_t off = 0;
    for (int p = 0; p < n; p++) v[p] = fy_quant8_bytes(counts[p]), v[n + p] = off, off += v[p];
    int rc = 0;
    if (n == 1) {
        fy_quant8(shard, counts[me], q, resid);
    } else {
#ifdef FERRY_HAVE_MPI
        char *own = malloc(v[me] + 1);
        if (!own) rc = fy_fail(err, "out of memory");
        else {
            fy_quant8(shard, counts[me], own, resid);
            rc = agv(c, own, q, v, v + n, MPI_BYTE, 1, "all-gather (int8)", err);
        }
        free(own);
#endif
    }
    for (int p = 0; p < n && !rc; p++) fy_dequant8(q + v[n + p], counts[p], full + displ[p]);
    free(v);
    free(q);
    return rc;
}

int fy_comm_allreduce_f32(fy_comm *c, float *x, size_t n, fy_err *err) {
    if (c->size == 1) return 0;
    int N = c->size;
    size_t *counts = malloc(2 * (size_t)N * sizeof *counts);
    if (!counts) return fy_fail(err, "out of memory");
    size_t *displ = counts + N, per = (n + N - 1) / N;
    for (int p = 0; p < N; p++) {
        displ[p] = (size_t)p * per < n ? (size_t)p * per : n;
        counts[p] = displ[p] + per < n ? per : n - displ[p];
    }
    float *mine = malloc(counts[c->rank] * sizeof *mine + 1);
    int rc = !mine ? fy_fail(err, "out of memory")
                   : fy_comm_reduce_scatter_f32(c, x, mine, counts, displ, err) ||
                         fy_comm_allgather_f32(c, mine, x, counts, displ, 0, NULL, err);
    free(mine);
    free(counts);
    return rc ? -1 : 0;
}
