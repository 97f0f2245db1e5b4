/* The communicator under mpirun -np N (tests/cmake/dist.cmake runs N = 1, 2
 * and 3): every collective against what the ranks' inputs say it must give,
 * the reductions bitwise against a serial tree sum computed here from all
 * ranks' inputs (each rank can generate every rank's data), the int8 path
 * within its quantization bound, and the timeout: a rank that does not show
 * up makes the others fail with a message instead of hanging.
 *   test_comm [--timeout-case] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parallel/comm.h"

#include "rank_check.h"

/* Rank r's input: values of mixed magnitude, so the summation order shows. */
static float value(int r, size_t i) {
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(r * 40503u + 17u);
    h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
    float u = (float)(h & 0xffffff) / 16777216.0f - 0.5f;
    return u * powf(10.0f, (float)((h >> 24) % 7) - 3.0f);
}

static void test_tree(void) {
    /* Aligned power-of-two blocks are subtrees: 8 leaves summed at once
     * equal 2 partial sums of 4 combined, and 4 partials of 2. */
    enum { L = 8, N = 1000 };
    float *leaf[L], all[N], half[2][N], quarter[4][N], a[N], b[N];
    for (int p = 0; p < L; p++) {
        leaf[p] = malloc(N * sizeof(float));
        for (int i = 0; i < N; i++) leaf[p][i] = value(p, (size_t)i);
    }
    fy_tree_sum((const float *const *)leaf, L, N, all);
    for (int h = 0; h < 2; h++) fy_tree_sum((const float *const *)leaf + 4 * h, 4, N, half[h]);
    for (int q = 0; q < 4; q++) fy_tree_sum((const float *const *)leaf + 2 * q, 2, N, quarter[q]);
    const float *hp[2] = {half[0], half[1]}, *qp[4] = {quarter[0], quarter[1], quarter[2], quarter[3]};
    fy_tree_sum(hp, 2, N, a);
    fy_tree_sum(qp, 4, N, b);
    CHECK(!memcmp(all, a, sizeof all) && !memcmp(all, b, sizeof all), "tree sum is not subtree-consistent");
    /* ... and the order matters (else the test above proves nothing). */
    float seq[N];
    memcpy(seq, leaf[0], sizeof seq);
    for (int p = 1; p < L; p++)
        for (int i = 0; i < N; i++) seq[i] += leaf[p][i];
    CHECK(memcmp(all, seq, sizeof all) != 0, "test data does not distinguish summation orders");
    CHECK(fy_tree_split(6) == 4 && fy_tree_split(8) == 4 && fy_tree_split(2) == 1 && fy_tree_split(3) == 2,
          "fy_tree_split");
    for (int p = 0; p < L; p++) free(leaf[p]);
}

static void test_quant(void) {
    enum { N = 1000 };
    float x[N], y[N], r[N];
    for (int i = 0; i < N; i++) x[i] = value(3, (size_t)i);
    char *q = malloc(fy_quant8_bytes(N));
    fy_quant8(x, N, q, r);
    fy_dequant8(q, N, y);
    int ok = 1;
    for (int b = 0; b < N; b += FY_COMM_Q8_BLOCK) {
        float amax = 0;
        for (int i = b; i < b + FY_COMM_Q8_BLOCK && i < N; i++) amax = fmaxf(amax, fabsf(x[i]));
        for (int i = b; i < b + FY_COMM_Q8_BLOCK && i < N; i++)
            ok &= fabsf(x[i] - y[i]) <= amax / 127.0f * 0.5f * 1.001f + 1e-12f && r[i] == x[i] - y[i];
    }
    CHECK(ok, "int8 block quantization error beyond half a step, or residual wrong");
    CHECK(fy_quant8_bytes(N) == 4 * ((N + FY_COMM_Q8_BLOCK - 1) / FY_COMM_Q8_BLOCK) + N, "quant8 size");
    free(q);
}

static void test_collectives(fy_comm *c) {
    const int me = fy_comm_rank(c), n = fy_comm_size(c);
    fy_err err;
    CHECK(fy_comm_barrier(c, &err) == 0, "barrier: %s", err.msg);

    int32_t token = me == 0 ? 4242 : -1;
    CHECK(fy_comm_bcast(c, &token, sizeof token, 0, &err) == 0 && token == 4242, "bcast");

    int32_t mine = 100 + me, *all = malloc((size_t)n * sizeof *all);
    CHECK(fy_comm_allgather(c, &mine, sizeof mine, all, &err) == 0, "allgather: %s", err.msg);
    int ok = 1;
    for (int r = 0; r < n; r++) ok &= all[r] == 100 + r;
    CHECK(ok, "allgather contents");
    free(all);

    int64_t s[2] = {me, 1LL << 40};
    CHECK(fy_comm_allreduce_i64(c, s, 2, &err) == 0 && s[0] == (int64_t)n * (n - 1) / 2 && s[1] == n * (1LL << 40),
          "allreduce i64");
    int32_t mx = me * 7;
    CHECK(fy_comm_allreduce_max_i32(c, &mx, 1, &err) == 0 && mx == (n - 1) * 7, "allreduce max");

    /* all-to-all-v: rank r sends p+1 bytes of value (r*16 + p) to rank p. */
    size_t sc[16], sd[16], rc[16], rd[16], so = 0, ro = 0;
    unsigned char sb[256], rb[256];
    for (int p = 0; p < n; p++) {
        sc[p] = (size_t)p + 1, sd[p] = so;
        memset(sb + so, me * 16 + p, sc[p]);
        so += sc[p];
        rc[p] = (size_t)me + 1, rd[p] = ro, ro += rc[p];
    }
    CHECK(fy_comm_alltoallv(c, sb, sc, sd, rb, rc, rd, &err) == 0, "alltoallv: %s", err.msg);
    ok = 1;
    for (int p = 0; p < n; p++)
        for (size_t k = 0; k < rc[p]; k++) ok &= rb[rd[p] + k] == (unsigned char)(p * 16 + me);
    CHECK(ok, "alltoallv contents");

    /* The float reductions, bitwise against the tree over ranks. */
    const size_t N = 100003;
    float *x = malloc(N * sizeof *x), *want = malloc(N * sizeof *want), **parts = malloc((size_t)n * sizeof *parts);
    for (int r = 0; r < n; r++) {
        parts[r] = malloc(N * sizeof(float));
        for (size_t i = 0; i < N; i++) parts[r][i] = value(r, i);
    }
    fy_tree_sum((const float *const *)parts, n, N, want);
    memcpy(x, parts[me], N * sizeof *x);
    uint64_t before = fy_comm_bytes_sent(c);
    CHECK(fy_comm_allreduce_f32(c, x, N, &err) == 0, "allreduce f32: %s", err.msg);
    CHECK(!memcmp(x, want, N * sizeof *x), "allreduce f32 differs from the tree sum over ranks");
    uint64_t sent = fy_comm_bytes_sent(c) - before;
    if (n > 1)
        CHECK(sent >= N * 4 * (n - 1) / n && sent <= 2 * N * 4 + 64, "allreduce bytes %llu for %zu floats",
              (unsigned long long)sent, N);

    /* reduce-scatter on uneven shards, plain and int8. */
    size_t counts[16], displ[16], off = 0;
    for (int r = 0; r < n; r++) {
        counts[r] = N / n + (r == 0 ? N % n : 0);
        displ[r] = off, off += counts[r];
    }
    float *shard = malloc(counts[me] * sizeof *shard + 4), *resid = malloc(N * sizeof *resid);
    CHECK(fy_comm_reduce_scatter_f32(c, parts[me], shard, counts, displ, &err) == 0 &&
              !memcmp(shard, want + displ[me], counts[me] * sizeof *shard),
          "reduce-scatter f32 differs from the tree sum");
    before = fy_comm_bytes_sent(c);
    CHECK(fy_comm_reduce_scatter_q8(c, parts[me], shard, counts, displ, resid, &err) == 0, "reduce-scatter q8: %s",
          err.msg);
    double maxerr = 0, maxabs = 0;
    for (size_t i = 0; i < counts[me]; i++) {
        maxerr = fmax(maxerr, fabs(shard[i] - want[displ[me] + i]));
        maxabs = fmax(maxabs, fabs(want[displ[me] + i]));
    }
    /* Each of n-1 peers adds at most half a quantization step of its block. */
    CHECK(maxerr <= (n - 1) * 0.5 * 500.0 / 127.0 * 1.01 + 1e-6, "q8 reduce-scatter error %g", maxerr);
    if (n > 1) {
        uint64_t q8 = fy_comm_bytes_sent(c) - before;
        CHECK(q8 * 3 < (N - counts[me]) * 4, "int8 reduce-scatter sent %llu bytes for %zu floats",
              (unsigned long long)q8, N - counts[me]);
        /* The residual is what the peers did not get. */
        int rok = 1;
        for (int p = 0; p < n; p++)
            if (p != me) {
                char *q = malloc(fy_quant8_bytes(counts[p]));
                float *y = malloc(counts[p] * sizeof *y + 4);
                fy_quant8(parts[me] + displ[p], counts[p], q, NULL);
                fy_dequant8(q, counts[p], y);
                for (size_t i = 0; i < counts[p]; i++) rok &= resid[displ[p] + i] == parts[me][displ[p] + i] - y[i];
                free(q), free(y);
            }
        CHECK(rok, "q8 residual is not x minus what was sent");
    }
    /* all-gather of shards, plain and int8 (every rank ends with the same bits). */
    float *full = malloc(N * sizeof *full);
    CHECK(fy_comm_allgather_f32(c, want + displ[me], full, counts, displ, 0, NULL, &err) == 0 &&
              !memcmp(full, want, N * sizeof *full),
          "allgather f32");
    CHECK(fy_comm_allgather_f32(c, want + displ[me], full, counts, displ, 1, NULL, &err) == 0, "allgather q8");
    uint64_t h = 0; /* unsigned: the hash wraps */
    for (size_t i = 0; i < N; i++) h = h * 31 + (uint64_t)(int64_t)(full[i] * 1e6);
    uint64_t h0 = h;
    CHECK(fy_comm_bcast(c, &h0, sizeof h0, 0, &err) == 0 && h0 == h, "q8 allgather differs between ranks");
    for (int r = 0; r < n; r++) free(parts[r]);
    free(parts), free(x), free(want), free(shard), free(resid), free(full);
}

/* The bucketed reduce-scatter: ranges posted in a backward-like order
 * (from the end, uneven sizes, some crossing shard borders, one empty)
 * give the bits of the one-shot reduce-scatter; twice in a row (the
 * stream is reused every step), and a reduction left unfinished (a
 * discarded step) does not spoil the next. */
static void test_bucketed(fy_comm *c, int progress) {
    const int me = fy_comm_rank(c), n = fy_comm_size(c);
    fy_err err;
    const size_t N = 50021;
    size_t counts[16], displ[16];
    for (int r = 0; r < n; r++) displ[r] = N * r / n, counts[r] = N * (r + 1) / n - displ[r];
    float *x = malloc(N * sizeof *x), *want = malloc(counts[me] * sizeof *want + 1);
    float *got = malloc(counts[me] * sizeof *got + 1);
    for (size_t i = 0; i < N; i++) x[i] = value(me, i * 3 + 1);
    CHECK(fy_comm_reduce_scatter_f32(c, x, want, counts, displ, &err) == 0, "reduce-scatter: %s", err.msg);
    fy_comm_rs *rs;
    CHECK(fy_comm_rs_create(c, counts, displ, progress, &rs, &err) == 0, "rs create: %s", err.msg);
    /* a progress thread exactly when asked for and possible (Open MPI gives THREAD_MULTIPLE) */
    if (!progress || n == 1) CHECK(!fy_comm_rs_progress_thread(rs), "progress thread started unasked");
    else CHECK(fy_comm_rs_progress_thread(rs), "no progress thread with MPI_THREAD_MULTIPLE (asked for)");
    const size_t cuts[] = {N, 41000, 33333, 33333, 25010, 7, 0};
    for (int round = 0; round < 3; round++) {
        CHECK(fy_comm_rs_begin(rs, &err) == 0, "rs begin: %s", err.msg);
        int posts = round == 1 ? 2 : 6; /* round 1: abandoned after two pieces */
        for (int k = 0; k < posts; k++)
            CHECK(fy_comm_rs_post(rs, x, cuts[k + 1], cuts[k], &err) == 0, "rs post: %s", err.msg);
        if (round == 1) continue;
        memset(got, 0, counts[me] * sizeof *got);
        CHECK(fy_comm_rs_finish(rs, got, &err) == 0, "rs finish: %s", err.msg);
        CHECK(!memcmp(got, want, counts[me] * sizeof *got), "bucketed reduce-scatter differs (round %d)", round);
    }
    /* Not covering the vector is an error, not a silent partial sum. */
    CHECK(fy_comm_rs_begin(rs, &err) == 0, "rs begin: %s", err.msg);
    CHECK(fy_comm_rs_post(rs, x, 100, N, &err) == 0, "rs post: %s", err.msg);
    CHECK(fy_comm_rs_finish(rs, got, &err) != 0 && strstr(err.msg, "of 50021 elements"), "partial coverage accepted");
    fy_comm_rs_free(rs);
    free(x); free(want); free(got);
}

/* The bucketed all-reduce: the same backward-like ranges give the bits of
 * the one-shot all-reduce on every rank, reused over rounds, with a dropped
 * round in between; too many buckets and partial coverage are errors. */
static void test_bucketed_allreduce(fy_comm *c, int progress) {
    const int me = fy_comm_rank(c), n = fy_comm_size(c);
    fy_err err;
    const size_t N = 50021;
    float *x = malloc(N * sizeof *x), *want = malloc(N * sizeof *want), *y = malloc(N * sizeof *y);
    for (size_t i = 0; i < N; i++) x[i] = value(me, i * 5 + 2);
    memcpy(want, x, N * sizeof *x);
    CHECK(fy_comm_allreduce_f32(c, want, N, &err) == 0, "all-reduce: %s", err.msg);
    fy_comm_rs *ar;
    CHECK(fy_comm_ar_create(c, N, 8, progress, &ar, &err) == 0, "ar create: %s", err.msg);
    if (!progress || n == 1) CHECK(!fy_comm_rs_progress_thread(ar), "progress thread started unasked");
    else CHECK(fy_comm_rs_progress_thread(ar), "no progress thread with MPI_THREAD_MULTIPLE (asked for)");
    const size_t cuts[] = {N, 41000, 33333, 33333, 25010, 7, 0};
    uint64_t b0 = fy_comm_bytes_sent(c);
    for (int round = 0; round < 3; round++) {
        /* begin first: dropping round 1 completes its buckets into y */
        CHECK(fy_comm_rs_begin(ar, &err) == 0, "ar begin: %s", err.msg);
        memcpy(y, x, N * sizeof *x);
        int posts = round == 1 ? 2 : 6; /* round 1: dropped after two buckets */
        for (int k = 0; k < posts; k++)
            CHECK(fy_comm_ar_post(ar, y, cuts[k + 1], cuts[k], &err) == 0, "ar post: %s", err.msg);
        if (round == 1) continue;
        CHECK(fy_comm_ar_finish(ar, &err) == 0, "ar finish: %s", err.msg);
        CHECK(!memcmp(y, want, N * sizeof *y), "bucketed all-reduce differs from the one-shot one (round %d)", round);
    }
    /* each rank sends (n-1)/n of the vector twice per full round (pieces out, sums back) */
    uint64_t sent = fy_comm_bytes_sent(c) - b0, full = 2 * (uint64_t)N * 4 * (n - 1) / n;
    if (n > 1) CHECK(sent >= 2 * full - 64 * n && sent <= 3 * full, "bucketed all-reduce sent %llu bytes, expected about %llu",
                     (unsigned long long)sent, (unsigned long long)(2 * full));
    CHECK(fy_comm_rs_begin(ar, &err) == 0, "ar begin: %s", err.msg);
    CHECK(fy_comm_ar_post(ar, y, 100, N, &err) == 0, "ar post: %s", err.msg);
    CHECK(fy_comm_ar_finish(ar, &err) != 0 && strstr(err.msg, "of 50021 elements"), "partial coverage accepted");
    if (n > 1) {
        CHECK(fy_comm_rs_begin(ar, &err) == 0, "ar begin: %s", err.msg);
        int rc = 0;
        for (int k = 0; k < 9 && rc == 0; k++) rc = fy_comm_ar_post(ar, y, (size_t)k * 10, (size_t)k * 10 + 10, &err);
        CHECK(rc != 0 && strstr(err.msg, "more than 8 buckets"), "a ninth bucket accepted (%s)", rc ? err.msg : "");
    }
    fy_comm_rs_free(ar);
    free(x); free(want); free(y);
}

int main(int argc, char **argv) {
    fy_comm *c;
    fy_err err;
    if (fy_comm_init(getenv("OMPI_COMM_WORLD_SIZE") != NULL, argc > 1 ? 1.0 : 60.0, &c, &err)) {
        fprintf(stderr, "comm init: %s\n", err.msg);
        return 1;
    }
    rank_ = fy_comm_rank(c);
    if (argc > 1 && !strcmp(argv[1], "--timeout-case")) {
        /* The last rank arrives 4 s late to a barrier with a 1 s timeout. */
        if (fy_comm_size(c) < 2) {
            printf("SKIP: the timeout case needs 2 ranks\n");
            return 77;
        }
        if (rank_ == fy_comm_size(c) - 1) {
            sleep(4);
            printf("late rank: done\n");
            fflush(stdout);
            _exit(0); /* the others are gone */
        }
        int rc = fy_comm_barrier(c, &err);
        CHECK(rc != 0 && strstr(err.msg, "did not complete within") && strstr(err.msg, "died or hangs") &&
                  fy_comm_lost_peer(c),
              "a missing rank was not reported as such (rc %d: %s)", rc, rc ? err.msg : "");
        if (rc) printf("rank %d reported: %s\n", rank_, err.msg);
        printf("test_comm timeout: %d passed, %d failed\n", pass, fail);
        fflush(stdout);
        _exit(fail ? 1 : 0); /* no MPI_Finalize: a peer never came */
    }
    if (rank_ == 0) test_tree(), test_quant();
    test_collectives(c);
    test_bucketed(c, 0);
    test_bucketed(c, 1);
    test_bucketed_allreduce(c, 0);
    test_bucketed_allreduce(c, 1);
    if (rank_ == 0) printf("test_comm (%d ranks, MPI %s): %d passed, %d failed\n", fy_comm_size(c),
                           fy_comm_have_mpi() ? "built in" : "not built", pass, fail);
    int32_t f = fail;
    fy_comm_allreduce_max_i32(c, &f, 1, &err);
    fy_comm_finalize(c);
    return f ? 1 : 0;
}
