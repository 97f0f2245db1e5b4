/* Inside the communicator (src/parallel only; users include comm.h): the
 * state comm.c shares with the one transport the build compiles, comm_mpi.c
 * or comm_single.c, and the few operations that transport provides. */
#ifndef FY_COMM_IMPL_H
#define FY_COMM_IMPL_H

#include "parallel/comm.h"

typedef struct fy_comm_net fy_comm_net;

struct fy_comm {
    int rank, size;
    const fy_comm_net *net; /* the transport once joined (MPI); NULL: the one-rank communicator */
    double timeout_s;
    uint64_t bytes_sent;
    int lost;               /* a collective failed or timed out */
    int thread_multiple;    /* the transport may be called from a second thread (MPI_THREAD_MULTIPLE) */
};

/* What both streamed reductions (fy_comm_rs_*, fy_comm_ar_*) keep whatever
 * the transport; its pending pieces live in net_state. */
struct fy_comm_rs {
    fy_comm *c;
    size_t *counts, *displ;     /* [size] each (reduce-scatter) */
    size_t len;                 /* this rank's shard */
    size_t n_total, posted;     /* elements; posted so far */
    float *recv;                /* rs: [size][len], piece p of the shard from rank p; ar: the buckets' pieces */
    size_t recv_cap;            /* ar: floats of recv */
    int active;
    int ar;                     /* all-reduce mode */
    int max_buckets;            /* ar: at most this many buckets per reduction */
    void *net_state;            /* the transport's pending pieces (NULL on one rank) */
};

/* Element types of a transfer: counts and displacements are in elements. */
enum { FY_NET_BYTE = 1, FY_NET_FLOAT = 4 };
/* Integer reductions. */
enum fy_net_op { FY_NET_SUM_I64, FY_NET_MAX_I32 };

/* A transport moves the bytes between ranks; comm.c does the rest (the
 * one-rank cases, byte counting, packing, the tree sums). Each call is
 * collective, with size > 1 or at least a joined job. */
struct fy_comm_net {
    void (*leave)(fy_comm *c);
    void (*kill)(fy_comm *c, int code);
    int (*barrier)(fy_comm *c, fy_err *err);
    int (*bcast)(fy_comm *c, void *buf, size_t bytes, int root, fy_err *err);
    int (*allgather)(fy_comm *c, const void *send, size_t bytes, void *recv, fy_err *err);
    /* esize: FY_NET_BYTE or FY_NET_FLOAT; op names the collective in errors. */
    int (*allgatherv)(fy_comm *c, const void *send, void *recv, const size_t *counts, const size_t *displ,
                      int esize, const char *op, fy_err *err);
    int (*alltoallv)(fy_comm *c, const void *send, const size_t *sc, const size_t *sd, void *recv,
                     const size_t *rc, const size_t *rd, int esize, const char *op, fy_err *err);
    int (*allreduce_int)(fy_comm *c, void *x, size_t n, enum fy_net_op op, fy_err *err);
    /* The streamed reductions: open sets s->net_state (and starts the
     * progress thread when asked for and possible); wait completes every
     * posted piece (fy_comm_rs_begin / _finish); post sends x[lo, hi). */
    int (*rs_open)(fy_comm_rs *s, int progress, fy_err *err);
    void (*rs_close)(fy_comm_rs *s);
    int (*rs_wait)(fy_comm_rs *s, fy_err *err);
    int (*rs_post)(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err);
    int (*rs_progress_thread)(const fy_comm_rs *s);
};

/* Joins the job that mpirun started (comm_dl.c: opens the MPI module and
 * calls its fy_comm_mpi_join, which runs MPI_Init_thread and sets c->net,
 * rank and size; comm_single.c: fails, there is no MPI). */
int fy_comm_net_join(fy_comm *c, fy_err *err);
int fy_comm_mpi_join(fy_comm *c, fy_err *err);

/* out = the tree sum of the size pieces of len floats in recv (piece p
 * from rank p): the end of every reduce-scatter. */
int fy_comm_sum_pieces(fy_comm *c, const float *recv, size_t len, float *out, fy_err *err);
/* Piece k of n of the range [lo, hi): [piece(k), piece(k + 1)). */
static inline size_t fy_comm_piece(size_t lo, size_t hi, int k, int n) {
    return lo + (hi - lo) * (size_t)k / (size_t)n;
}

#endif
