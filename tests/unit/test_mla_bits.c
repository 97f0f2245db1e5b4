/* The cpu backend's tiled MLA attention (mla_paged, mla_decode) gives
 * bitwise (memcmp) the outputs of the per-pair algorithm written plainly
 * (mla_ref.h: chunks of 64 positions, each its own softmax, folded in
 * order): prefill rows of one sequence at causal positions after an
 * offset, batches mixing sequences (row groups break where the storage
 * changes) and empty rows, decode against a contiguous strided cache;
 * rows of one chunk, of several, and ending on a chunk's edge, with many
 * tiles (a tile per work item) and few ((tile, chunk) work items); head
 * counts that fill, split and leave tails in the tiles; ranks with and
 * without an 8-lane tail; 1 and 2 threads. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "mla_ref.h"
#include "testutil.h"

static fy_backend *be;

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static float frand(void) { /* xorshift64*, in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return -1.0f + 2.0f * (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0);
}

static float *host(fy_buf *b) { return b->handle; } /* cpu buffers are host memory */

static fy_buf buf(size_t n, float lo_hi) {
    fy_buf b;
    fy_err err;
    if (fy_be_alloc(be, &b, n ? n : 1, &err)) {
        fprintf(stderr, "test_mla_bits: %s\n", err.msg);
        exit(1);
    }
    for (size_t i = 0; i < (n ? n : 1); i++) host(&b)[i] = lo_hi * frand();
    return b;
}

/* n rows over nseq sequences: row i is on sequence seq_of[i] with len[i]
 * positions; sequence j's positions in blocks of bs, block ids shuffled
 * over a pool. Checks mla_paged at 1 and 2 threads against the reference. */
static void paged_case(const char *what, int n, const int *seq_of, const int32_t *len, int nseq, int H, int r,
                       int dn, int dr, int dv, int bs) {
    int most = 0;
    for (int i = 0; i < n; i++) most = len[i] > most ? len[i] : most;
    int nb = (most + bs - 1) / bs + 1, pool = nseq * nb;
    int32_t *blocks = malloc((size_t)pool * sizeof *blocks), *tab = malloc((size_t)n * sizeof *tab);
    for (int b = 0; b < pool; b++) blocks[b] = b;
    for (int b = pool - 1; b > 0; b--) { /* shuffle: positions scattered over the pool */
        int j = (int)((frand() + 1.0f) * 0.5f * (float)(b + 1)) % (b + 1), t = blocks[b];
        blocks[b] = blocks[j], blocks[j] = t;
    }
    for (int i = 0; i < n; i++) tab[i] = seq_of[i] * nb;
    const int dqk = dn + dr, ldq = H * dqk + 1, ldo = H * dv + 2;
    fy_buf q = buf((size_t)n * ldq, 1.0f), w = buf((size_t)H * (dn + dv) * r, 0.5f);
    fy_buf c = buf((size_t)pool * bs * r, 1.5f), k = buf((size_t)pool * bs * dr, 1.5f);
    fy_buf o = buf((size_t)n * ldo, 9.0f);
    size_t no = (size_t)n * ldo;
    float *want = malloc(no * sizeof *want);
    memcpy(want, host(&o), no * sizeof *want); /* the gaps between rows stay as they were */
    ref_mla_seq *rs = malloc((size_t)n * sizeof *rs);
    for (int i = 0; i < n; i++)
        rs[i] = (ref_mla_seq){host(&c), dr ? host(&k) : host(&c), (size_t)r, (size_t)dr, blocks + tab[i], bs, len[i]};
    float scale = 0.9f;
    CHECK(ref_mla_rows(1, n, H, r, dn, dr, dv, scale, host(&q), (size_t)ldq, (size_t)dqk, host(&w), rs, want,
                       (size_t)ldo) == 0, "%s: reference out of memory", what);
    for (int nt = 1; nt <= 2; nt++) {
        omp_set_num_threads(nt);
        for (size_t e = 0; e < no; e++) host(&o)[e] = want[e] + 1.0f; /* stale outputs must be overwritten */
        for (int i = 0; i < n; i++)
            for (int g = H * dv; g < ldo; g++) host(&o)[(size_t)i * ldo + g] = want[(size_t)i * ldo + g];
        be->ops->mla_paged(be, n, H, r, dn, dr, dv, scale, fy_at(&q, 0), ldq, fy_at(&w, 0), fy_at(&c, 0),
                           fy_at(&k, 0), bs, blocks, tab, len, fy_at(&o, 0), ldo);
        fy_err err;
        CHECK(fy_be_sync(be, &err) == 0, "%s: %s", what, err.msg);
        CHECK(memcmp(host(&o), want, no * sizeof *want) == 0, "%s: %d threads: bits differ", what, nt);
    }
    fy_be_free(be, &q), fy_be_free(be, &w), fy_be_free(be, &c), fy_be_free(be, &k), fy_be_free(be, &o);
    free(blocks), free(tab), free(want), free(rs);
}

/* One sequence's prefill: T rows at positions off.. (row i attends
 * off + i + 1 positions). */
static void prefill_case(int T, int off, int H, int r, int dn, int dr, int dv, int bs) {
    int *seq_of = calloc((size_t)T, sizeof *seq_of);
    int32_t *len = malloc((size_t)T * sizeof *len);
    for (int i = 0; i < T; i++) len[i] = off + i + 1;
    char what[128];
    snprintf(what, sizeof what, "prefill T=%d off=%d H=%d r=%d dn=%d dr=%d dv=%d bs=%d", T, off, H, r, dn, dr, dv,
             bs);
    paged_case(what, T, seq_of, len, 1, H, r, dn, dr, dv, bs);
    free(seq_of), free(len);
}

/* A batch step: items of 3, 1, 6 and 1 rows on four sequences, one row
 * attending nothing. */
static void batch_case(int H, int r, int dn, int dr, int dv, int bs) {
    const int seq_of[] = {0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 3, 1};
    const int32_t len[] = {5, 6, 7, 40, 1, 2, 3, 4, 5, 6, 0, 41};
    char what[128];
    snprintf(what, sizeof what, "batch H=%d r=%d dn=%d dr=%d dv=%d bs=%d", H, r, dn, dr, dv, bs);
    paged_case(what, 12, seq_of, len, 4, H, r, dn, dr, dv, bs);
}

/* Long rows (many chunks, some ending on a chunk's edge) next to short
 * and empty ones: H = 4 gives few tiles, H = 16 many. */
static void batch_long_case(int H, int r, int dn, int dr, int dv, int bs) {
    const int seq_of[] = {0, 1, 2, 2, 2, 3, 4, 5};
    const int32_t len[] = {600, 1, 256, 257, 258, 0, 513, 300};
    char what[128];
    snprintf(what, sizeof what, "long batch H=%d r=%d dn=%d dr=%d dv=%d bs=%d", H, r, dn, dr, dv, bs);
    paged_case(what, 8, seq_of, len, 6, H, r, dn, dr, dv, bs);
}

/* mla_decode against a contiguous cache of rows [c_kv ; k_pe ; pad]. */
static void decode_case(int H, int S, int r, int dn, int dr, int dv) {
    const int ld = r + dr + 3, ldq = dn + dr + 1;
    fy_buf q = buf((size_t)H * ldq, 1.0f), w = buf((size_t)H * (dn + dv) * r, 0.5f);
    fy_buf c = buf((size_t)S * ld, 1.5f), o = buf((size_t)H * dv, 9.0f);
    float *want = malloc(((size_t)H * dv + 1) * sizeof *want);
    ref_mla_seq rs = {host(&c), dr ? host(&c) + r : host(&c), (size_t)ld, (size_t)ld, NULL, 1, S};
    char what[128];
    snprintf(what, sizeof what, "decode H=%d S=%d r=%d dn=%d dr=%d dv=%d", H, S, r, dn, dr, dv);
    CHECK(ref_mla_rows(1, 1, H, r, dn, dr, dv, 0.8f, host(&q), 0, (size_t)ldq, host(&w), &rs, want, 0) == 0,
          "%s: reference out of memory", what);
    for (int nt = 1; nt <= 2; nt++) {
        omp_set_num_threads(nt);
        for (int e = 0; e < H * dv; e++) host(&o)[e] = 7.0f;
        be->ops->mla_decode(be, H, S, r, dn, dr, dv, 0.8f, fy_at(&q, 0), ldq, fy_at(&w, 0), fy_at(&c, 0), ld,
                            fy_at(&c, r), ld, fy_at(&o, 0));
        fy_err err;
        CHECK(fy_be_sync(be, &err) == 0, "%s: %s", what, err.msg);
        CHECK(memcmp(host(&o), want, (size_t)H * dv * sizeof *want) == 0, "%s: %d threads: bits differ", what, nt);
    }
    fy_be_free(be, &q), fy_be_free(be, &w), fy_be_free(be, &c), fy_be_free(be, &o);
    free(want);
}

int main(void) {
    fy_err err;
    if (fy_backend_cpu_create(&be, &err)) {
        fprintf(stderr, "test_mla_bits: %s\n", err.msg);
        return 1;
    }
    prefill_case(1, 0, 2, 16, 8, 8, 8, 16);
    prefill_case(7, 0, 4, 64, 32, 32, 32, 16);   /* the tiny config's sizes */
    prefill_case(13, 5, 3, 20, 6, 4, 5, 4);      /* 3 heads; rank with an 8-lane tail */
    prefill_case(33, 17, 8, 128, 64, 32, 64, 16); /* the small config's sizes */
    prefill_case(21, 0, 5, 9, 5, 0, 6, 3);       /* no rope part; 5 heads */
    prefill_case(9, 2, 1, 13, 4, 3, 7, 5);       /* one head */
    prefill_case(70, 40, 16, 24, 8, 8, 8, 8);    /* full tiles of 4 heads */
    prefill_case(33, 300, 8, 128, 64, 32, 64, 16); /* five chunks, many tiles */
    prefill_case(3, 520, 4, 64, 32, 32, 32, 16);    /* nine chunks, one tile */
    prefill_case(10, 252, 5, 20, 6, 4, 5, 7);      /* rows ending either side of a chunk's edge */
    batch_long_case(4, 64, 32, 32, 32, 16);
    batch_long_case(16, 24, 8, 8, 8, 5);
    batch_case(4, 64, 32, 32, 32, 16);
    batch_case(6, 17, 5, 3, 4, 4);
    batch_case(2, 8, 0, 4, 3, 2); /* no nope part */
    for (int H = 1; H <= 17; H += 4) {
        decode_case(H, 1, 64, 32, 32, 32);
        decode_case(H, 77, 64, 32, 32, 32);
    }
    decode_case(8, 300, 128, 64, 32, 64);
    decode_case(16, 130, 32, 16, 8, 16);
    decode_case(3, 45, 11, 5, 0, 6);
    decode_case(2, 9, 6, 0, 4, 3);
    decode_case(12, 50, 5, 3, 2, 3);
    decode_case(42, 60, 16, 8, 8, 8); /* tiles of 16 heads and a tail of 10 */
    decode_case(4, 64, 64, 32, 32, 32); /* one full chunk */
    decode_case(4, 65, 64, 32, 32, 32);
    decode_case(4, 256, 64, 32, 32, 32);
    decode_case(8, 700, 128, 64, 32, 64); /* the small config's sizes, eleven chunks */
    decode_case(17, 600, 16, 8, 8, 8);
    decode_case(3, 1100, 11, 5, 0, 6);
    fy_backend_destroy(be);
    return fy_test_finish("test_mla_bits");
}
