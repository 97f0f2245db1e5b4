/* The communicator: the few collectives ferry's scale-out needs (docs/DESIGN.md §6),
 * over MPI when the build found it, and a one-rank communicator otherwise
 * (or when the process was not started by mpirun), so the trainer has one
 * code path for any rank count.
 *
 * Every collective returns 0, or -1 with a message that names the rank, the
 * collective and what went wrong. A collective that does not complete within
 * the communicator's timeout fails with "rank R: <op> did not complete within
 * S s: a peer rank died or hangs" instead of blocking forever; the caller
 * should then stop the job (fy_comm_abort), since a half-finished collective
 * leaves the others waiting.
 *
 * The floating-point reductions are deterministic: partial results are
 * combined in a fixed order that depends only on the rank count (a binary
 * tree over ranks, see fy_tree_split), never on timing.
 *
 * Every byte a rank hands to the network is counted in bytes_sent, so the
 * trainer can report communication per step. */
#ifndef FY_COMM_H
#define FY_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct fy_comm fy_comm;

/* The collective timeout when none is given (ferry train --comm-timeout):
 * long enough for a slow step, short enough to restart a lost job soon. */
#define FY_COMM_TIMEOUT_DEFAULT_S 300
/* The same as a string literal, for help texts. */
#define FY_COMM_TIMEOUT_DEFAULT_TEXT FY_COMM_STR_(FY_COMM_TIMEOUT_DEFAULT_S)
#define FY_COMM_STR_(x) FY_COMM_STR2_(x)
#define FY_COMM_STR2_(x) #x

/* Joins the job: with join (the caller found that mpirun started this
 * process: the CLI reads that from the environment, the library never does)
 * MPI_Init_thread, refused by a build without MPI; the one-rank communicator
 * otherwise. timeout_s bounds every collective (<= 0:
 * FY_COMM_TIMEOUT_DEFAULT_S). */
int fy_comm_init(int join, double timeout_s, fy_comm **out, fy_err *err);
/* Leaves the job (MPI_Finalize after a barrier); frees c. */
void fy_comm_finalize(fy_comm *c);
/* Ends every rank of the job with `code` (MPI_Abort); the one-rank
 * communicator just exits. */
void fy_comm_abort(fy_comm *c, int code);

int fy_comm_rank(const fy_comm *c);
int fy_comm_size(const fy_comm *c);
uint64_t fy_comm_bytes_sent(const fy_comm *c);
/* timeout_s <= 0: FY_COMM_TIMEOUT_DEFAULT_S. */
void fy_comm_set_timeout(fy_comm *c, double timeout_s);
/* 1 when built with MPI (whether or not this process runs under mpirun). */
int fy_comm_have_mpi(void);
/* 1 once a collective failed or timed out: the job has lost a rank. */
int fy_comm_lost_peer(const fy_comm *c);
/* The exit code ferry uses for "a rank of the job died or hangs": the
 * supervisor restarts such a job from its newest checkpoint. */
#define FY_EXIT_RANK_LOST 75
/* The exit code of `ferry train --ranks N` when mpirun could not start the
 * N ranks at all (a host gone, not enough slots): the supervisor retries
 * with fewer. */
#define FY_EXIT_RANKS_UNAVAILABLE 76

int fy_comm_barrier(fy_comm *c, fy_err *err);
int fy_comm_bcast(fy_comm *c, void *buf, size_t bytes, int root, fy_err *err);
/* recv[r*bytes ..] = rank r's send (bytes each). */
int fy_comm_allgather(fy_comm *c, const void *send, size_t bytes, void *recv, fy_err *err);
/* recv[displ[r] ..] = rank r's send, counts[r] bytes each (counts and displ
 * are the same on every rank). */
int fy_comm_allgatherv(fy_comm *c, const void *send, void *recv, const size_t *counts, const size_t *displ,
                       fy_err *err);
/* Rank r sends send[sdispl[p] .. +scounts[p]] to rank p, which receives it at
 * recv[rdispl[r] .. +rcounts[r]] (bytes). */
int fy_comm_alltoallv(fy_comm *c, const void *send, const size_t *scounts, const size_t *sdispl, void *recv,
                      const size_t *rcounts, const size_t *rdispl, fy_err *err);
/* Exact integer sums over ranks, in place. */
int fy_comm_allreduce_i64(fy_comm *c, int64_t *x, size_t n, fy_err *err);
/* Element-wise maximum over ranks, in place. */
int fy_comm_allreduce_max_i32(fy_comm *c, int32_t *x, size_t n, fy_err *err);

/* Deterministic reduce-scatter of float vectors of length n_total split into
 * per-rank shards [displ[r], displ[r] + counts[r]): rank r gets in out (its
 * shard, counts[r] floats) the sum over ranks of x[displ[r] ..], combined in
 * the tree order of fy_tree_sum. */
int fy_comm_reduce_scatter_f32(fy_comm *c, const float *x, float *out, const size_t *counts,
                               const size_t *displ, fy_err *err);
/* The same with the pieces for other ranks sent as int8 with one float scale
 * per FY_COMM_Q8_BLOCK elements (about 3.9x fewer bytes); this rank's own piece
 * is summed exactly. resid (n_total floats, may be NULL) gets x minus what
 * the peers received (zero on the own shard): the error to add back into
 * the next call's x (error feedback). */
int fy_comm_reduce_scatter_q8(fy_comm *c, const float *x, float *out, const size_t *counts,
                              const size_t *displ, float *resid, fy_err *err);
/* All-gather of float shards into full (n_total floats). With q8, the shards
 * travel as int8 blocks and every rank, the owner included, ends with the
 * dequantized values (so all ranks hold the same bits); then resid, when
 * non-NULL, gets (over the own shard, counts[rank] floats) what quantization
 * dropped. */
int fy_comm_allgather_f32(fy_comm *c, const float *shard, float *full, const size_t *counts,
                          const size_t *displ, int q8, float *resid, fy_err *err);
/* Deterministic all-reduce (sum) of n floats in place: reduce-scatter on
 * equal shards, then all-gather; every rank ends with the same bits. */
int fy_comm_allreduce_f32(fy_comm *c, float *x, size_t n, fy_err *err);

/* ---- a reduce-scatter posted piece by piece (gradient bucketing) ---------
 * The same result, bit for bit, as fy_comm_reduce_scatter_f32, but x's
 * ranges are handed over as they become final (the backward produces the
 * gradients layer by layer), each sent at once with a non-blocking
 * all-to-all, so communication overlaps the rest of the backward. Every
 * rank posts the same ranges in the same order; together they must cover
 * [0, n_total) once. post also drives the progress of the earlier pieces
 * (MPI moves non-blocking collectives while it is being called). */
typedef struct fy_comm_rs fy_comm_rs;
/* counts/displ: the shards, as for fy_comm_reduce_scatter_f32 (copied).
 * progress: also start a thread that drives the posted pieces between calls
 * (needs MPI_THREAD_MULTIPLE; without it, no thread). */
int fy_comm_rs_create(fy_comm *c, const size_t *counts, const size_t *displ, int progress, fy_comm_rs **out,
                      fy_err *err);
void fy_comm_rs_free(fy_comm_rs *s);
/* Starts a new reduction (drops pieces of an unfinished one after waiting
 * for them). */
int fy_comm_rs_begin(fy_comm_rs *s, fy_err *err);
/* x[lo, hi) is final: send its pieces. x must stay unchanged there until
 * fy_comm_rs_finish. */
int fy_comm_rs_post(fy_comm_rs *s, const float *x, size_t lo, size_t hi, fy_err *err);
/* Waits for every piece, then out (this rank's shard) = the tree sum. */
int fy_comm_rs_finish(fy_comm_rs *s, float *out, fy_err *err);
/* 1 between begin and finish. */
int fy_comm_rs_active(const fy_comm_rs *s);

/* ---- an all-reduce posted bucket by bucket (DDP-style bucketing) --------
 * x[0, n) summed over the ranks in place, the bits of fy_comm_allreduce_f32,
 * with the buckets handed over as they become final. Each bucket is split
 * into one piece per rank: a non-blocking all-to-all sends every piece to
 * its rank (so both directions of a link carry data at once), the rank sums
 * its piece in the fixed tree order, and a non-blocking all-gather returns
 * the summed pieces into x. Begin, active, the progress thread and free are
 * those of the reduce-scatter above; at most max_buckets per reduction. x
 * must stay unchanged in the posted ranges (it is written there) until
 * fy_comm_ar_finish, after which x holds the sums; fy_comm_rs_begin
 * completes the buckets of an unfinished reduction into its x (every rank
 * runs the same collectives) before the next one starts. */
int fy_comm_ar_create(fy_comm *c, size_t n, int max_buckets, int progress, fy_comm_rs **out, fy_err *err);
int fy_comm_ar_post(fy_comm_rs *s, float *x, size_t lo, size_t hi, fy_err *err);
int fy_comm_ar_finish(fy_comm_rs *s, fy_err *err);
/* 1 when a thread of s drives the posted pieces between calls. */
int fy_comm_rs_progress_thread(const fy_comm_rs *s);

/* ---- the fixed summation order -------------------------------------------
 * Partial sums over leaves [lo, hi) are combined as a binary tree that splits
 * at lo + (the largest power of two < hi - lo). Every aligned power-of-two
 * block of leaves is a subtree of it, so N ranks that each hold the tree sum
 * of k = 2^j consecutive leaves, combined with the same rule over ranks,
 * produce the bits one rank gets summing all N*k leaves. */
size_t fy_tree_split(size_t n);
/* out[i] = tree sum over p of parts[p][i], for n_parts parts of n floats. */
void fy_tree_sum(const float *const *parts, int n_parts, size_t n, float *out);

/* ---- int8 block quantization (for compressed gradients) ------------------ */
#define FY_COMM_Q8_BLOCK 256
/* Bytes fy_quant8 writes for n floats. */
size_t fy_quant8_bytes(size_t n);
/* q gets the scales then the int8 codes of x; when resid is non-NULL it gets
 * x - dequant(q) (the error to feed back into the next step). */
void fy_quant8(const float *x, size_t n, void *q, float *resid);
void fy_dequant8(const void *q, size_t n, float *out);

#endif
