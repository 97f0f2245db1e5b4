/* MLA attention of the CPU backend against the latent cache (absorbed:
 * queries meet c_kv and k_pe per position): mla_decode and mla_paged.
 *
 * Every (query row, head) pair is computed by one fixed sequence of
 * operations (mla_chunk's and mla_fold's comments), so its bits depend on
 * neither the thread count nor the other rows, and mla_decode == mla_paged:
 * a row decoded alone, in a serve batch or prefilled gets the same bits.
 * A pair's positions are cut into chunks of MLA_CHUNK (a constant): each
 * chunk has its own softmax (max, exp, sum, probabilities) and weighted
 * latent sum, and the chunks are folded in the order 0, 1, 2, ... with
 * the usual rescaling (a row of one chunk is the plain softmax).
 *
 * What is shared is only memory traffic: a tile holds up to MLA_ROWS rows
 * of one sequence (a prefill's rows) times MLA_HEADS heads, or one row (a
 * decode row) times up to MLA_PAIRS heads, and each cached position is
 * loaded once for all of its pairs instead of once per pair. With
 * MLA_TILES tiles or more, a tile is a work item (its chunks in order);
 * with fewer (a decode step), the (tile, chunk) pairs are, so one decode
 * row reads the cache once per token for all heads and still spreads over
 * threads, and the folds run after. The split depends on the shapes alone.
 * The kernels work on four pairs (or four positions) at once in 8-lane
 * vectors that are fy_cpu_dot's lanes, reduced in its order: test_mla_bits
 * holds them to the per-pair code written plainly (tests/unit/mla_ref.h),
 * bit for bit. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"

#define MLA_ROWS 4    /* query rows of one sequence in a tile */
#define MLA_HEADS 4   /* heads in a tile of several rows */
#define MLA_PAIRS 16  /* (row, head) pairs in a tile: MLA_ROWS x MLA_HEADS, or one row x 16 heads */
/* Positions in a chunk; it fixes the bits, so a constant. 64: a chunk's
 * rows (small: 64 x 160 floats, 40 KB) stay in L1 from the score pass to
 * the sum pass, and a decode row of a few hundred positions gives enough
 * (tile, chunk) items to keep threads even. */
#define MLA_CHUNK 64
#define MLA_TILES 8   /* fewer tiles than this: (tile, chunk) work items */

/* The per-position kernels go inside mla_chunk's ISA clones (cpu.h): a
 * call out of a clone would run them as baseline x86-64. */
#if defined(__GNUC__)
#define MLA_INLINE __attribute__((always_inline)) static inline
#else
#define MLA_INLINE static inline
#endif

/* Where a sequence's positions live: position s is row blocks[s / bs] * bs
 * + s % bs of c (row stride ldc) and k (ldk); blocks NULL: row s. */
typedef struct mla_seq {
    const float *c, *k;
    size_t ldc, ldk;
    const int32_t *blocks;
    int bs, S;
} mla_seq;

/* The sizes of one call. */
typedef struct mla_dims {
    int r, dn, dr, dv;
    float scale;
} mla_dims;

/* Runs of positions that are consecutive rows: [s0, s0 + *cnt) from *row. */
static size_t mla_run(const mla_seq *q, int s0, int *cnt) {
    if (!q->blocks) {
        *cnt = q->S - s0;
        return (size_t)s0;
    }
    int left = q->S - s0, in_blk = q->bs - s0 % q->bs;
    *cnt = left < in_blk ? left : in_blk;
    return (size_t)q->blocks[s0 / q->bs] * q->bs + s0 % q->bs;
}

static int mla_same_store(const mla_seq *a, const mla_seq *b) {
    return a->c == b->c && a->k == b->k && a->ldc == b->ldc && a->ldk == b->ldk && a->blocks == b->blocks &&
           a->bs == b->bs;
}

#if defined(__GNUC__) && !defined(__clang__)
#define MLA_VEC 1
/* fy_cpu_dot's 8 lanes as one vector: lane-wise IEEE mul and add, the same
 * bits as the scalar lanes, but the compiler cannot split them. Unaligned,
 * and may alias the floats it is loaded from. */
typedef float mla_v8 __attribute__((vector_size(32)));
typedef float mla_v8u __attribute__((vector_size(32), aligned(4), may_alias));
#define MLA_LD(p) (*(const mla_v8u *)(p))
typedef float mla_v4 __attribute__((vector_size(16)));
typedef int mla_i4 __attribute__((vector_size(16)));

/* fy_cpu_dot's reduction ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))
 * of four 8-lane sums at once, each add of it one lane of a vector add
 * (t = low + high half, then the pairs of t, then the pairs of those). */
MLA_INLINE void mla_reduce4(const mla_v8 *a, float *out) {
    /* Named halves, not memcpy into an array: GCC took those copies
     * through the stack (~12 % of a prefill's attention, perf annotate,
     * 2026-12-07). */
#define MLA_HALVES(v) (__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7))
    const mla_v4 t0 = MLA_HALVES(a[0]), t1 = MLA_HALVES(a[1]), t2 = MLA_HALVES(a[2]), t3 = MLA_HALVES(a[3]);
#undef MLA_HALVES
    const mla_i4 ev = {0, 2, 4, 6}, od = {1, 3, 5, 7};
    mla_v4 p01 = __builtin_shuffle(t0, t1, ev) + __builtin_shuffle(t0, t1, od);
    mla_v4 p23 = __builtin_shuffle(t2, t3, ev) + __builtin_shuffle(t2, t3, od);
    mla_v4 s = __builtin_shuffle(p01, p23, ev) + __builtin_shuffle(p01, p23, od);
    memcpy(out, &s, sizeof s);
}
#endif

/* fy_cpu_dot's reduction of the 8 lanes a, then its tail over [i, n). */
MLA_INLINE float mla_finish(const float *a, const float *x, const float *y, int i, int n) {
    float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

/* Four fy_cpu_dot(x, y[m], n) at once, sharing the loads of x: each has
 * fy_cpu_dot's 8 lanes, reduction and tail, so the same bits. */
MLA_INLINE void mla_dot4(const float *x, const float *const *y, int n, float *out) {
    const float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
    int i = 0;
#if MLA_VEC
    mla_v8 a[4] = {{0}, {0}, {0}, {0}};
    for (; i + 8 <= n; i += 8) {
        const mla_v8 xv = MLA_LD(x + i);
        a[0] += xv * MLA_LD(y0 + i);
        a[1] += xv * MLA_LD(y1 + i);
        a[2] += xv * MLA_LD(y2 + i);
        a[3] += xv * MLA_LD(y3 + i);
    }
    mla_reduce4(a, out);
    for (int m = 0; m < 4; m++)
        for (int t = i; t < n; t++) out[m] += x[t] * y[m][t];
#else
    float a[4][8];
    memset(a, 0, sizeof a);
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            const float xv = x[i + l];
            a[0][l] += xv * y0[i + l];
            a[1][l] += xv * y1[i + l];
            a[2][l] += xv * y2[i + l];
            a[3][l] += xv * y3[i + l];
        }
    for (int m = 0; m < 4; m++) out[m] = mla_finish(a[m], x, y[m], i, n);
#endif
}

/* mla_dot4 for two x (positions) against the same four y (pairs): each y
 * load serves two positions. out0, out1: the two positions' four dots. */
MLA_INLINE void mla_dot4x2(const float *x0, const float *x1, const float *const *y, int n, float *out0,
                           float *out1) {
#if MLA_VEC
    const float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
    mla_v8 a[4] = {{0}, {0}, {0}, {0}}, b[4] = {{0}, {0}, {0}, {0}};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const mla_v8 u = MLA_LD(x0 + i), v = MLA_LD(x1 + i), w0 = MLA_LD(y0 + i), w1 = MLA_LD(y1 + i);
        const mla_v8 w2 = MLA_LD(y2 + i), w3 = MLA_LD(y3 + i);
        a[0] += u * w0, a[1] += u * w1, a[2] += u * w2, a[3] += u * w3;
        b[0] += v * w0, b[1] += v * w1, b[2] += v * w2, b[3] += v * w3;
    }
    mla_reduce4(a, out0);
    mla_reduce4(b, out1);
    for (int m = 0; m < 4; m++)
        for (int t = i; t < n; t++) out0[m] += x0[t] * y[m][t], out1[m] += x1[t] * y[m][t];
#else
    mla_dot4(x0, y, n, out0);
    mla_dot4(x1, y, n, out1);
#endif
}

/* The pairs of a tile whose row attends position s (Sp[p] > s), in pair
 * order, and the end of the positions that have the same active pairs. */
MLA_INLINE int mla_active(const int *Sp, int P, int S, int s, int *act, int *end) {
    int na = 0;
    *end = S;
    for (int p = 0; p < P; p++)
        if (Sp[p] > s) {
            act[na++] = p;
            *end = Sp[p] < *end ? Sp[p] : *end;
        }
    return na;
}

/* A block of np <= 4 consecutive positions: their cache rows; s: the
 * first one's offset in its chunk. */
typedef struct mla_blk {
    const float *cr[4], *kr[4];
    int s, np;
} mla_blk;

/* score[s] of every active pair for the block's positions. Four pairs at a
 * time share a position's row loads; a pair left over takes four positions
 * at a time (fy_cpu_dot(cr, ql) == fy_cpu_dot(ql, cr): products commute). */
MLA_INLINE void mla_scores_at(const mla_dims *d, const mla_blk *b, const int *act, int na, float *const *ql,
                              const float *const *qpe, float *sh) {
    int a = 0;
    for (; a + 4 <= na; a += 4) {
        const float *yc[4], *yk[4];
        for (int m = 0; m < 4; m++) yc[m] = ql[act[a + m]], yk[m] = qpe[act[a + m]];
        int t = 0;
        for (; t + 2 <= b->np; t += 2) {
            float dc[2][4], dk[2][4];
            mla_dot4x2(b->cr[t], b->cr[t + 1], yc, d->r, dc[0], dc[1]);
            mla_dot4x2(b->kr[t], b->kr[t + 1], yk, d->dr, dk[0], dk[1]);
            for (int m = 0; m < 4; m++) {
                float *out = sh + (size_t)act[a + m] * MLA_CHUNK + b->s + t;
                out[0] = d->scale * dc[0][m] + d->scale * dk[0][m];
                out[1] = d->scale * dc[1][m] + d->scale * dk[1][m];
            }
        }
        for (; t < b->np; t++) {
            float dc[4], dk[4];
            mla_dot4(b->cr[t], yc, d->r, dc);
            mla_dot4(b->kr[t], yk, d->dr, dk);
            for (int m = 0; m < 4; m++)
                sh[(size_t)act[a + m] * MLA_CHUNK + b->s + t] = d->scale * dc[m] + d->scale * dk[m];
        }
    }
    for (; a < na; a++) {
        const int p = act[a];
        float *out = sh + (size_t)p * MLA_CHUNK + b->s;
        if (b->np == 4) {
            float dc[4], dk[4];
            mla_dot4(ql[p], b->cr, d->r, dc);
            mla_dot4(qpe[p], b->kr, d->dr, dk);
            for (int t = 0; t < 4; t++) out[t] = d->scale * dc[t] + d->scale * dk[t];
        } else {
            for (int t = 0; t < b->np; t++)
                out[t] = d->scale * fy_cpu_dot(b->cr[t], ql[p], d->r) + d->scale * fy_cpu_dot(b->kr[t], qpe[p], d->dr);
        }
    }
}

/* o_lat[p] += softmax(score[p])[s] * ckv[s] of every active pair, the
 * block's positions in order: four pairs share a position's row, a pair
 * left over adds four positions in one pass. */
MLA_INLINE void mla_accum_at(const mla_dims *d, const mla_blk *b, const int *act, int na, float *const *ol,
                             const float *sh) {
    const int r = d->r;
    int a = 0;
    for (; a + 4 <= na; a += 4) {
        float *o0 = ol[act[a]], *o1 = ol[act[a + 1]], *o2 = ol[act[a + 2]], *o3 = ol[act[a + 3]];
        const float *p0 = sh + (size_t)act[a] * MLA_CHUNK + b->s, *p1 = sh + (size_t)act[a + 1] * MLA_CHUNK + b->s;
        const float *p2 = sh + (size_t)act[a + 2] * MLA_CHUNK + b->s, *p3 = sh + (size_t)act[a + 3] * MLA_CHUNK + b->s;
        if (b->np == 4) { /* each o_lat loaded and stored once for four positions */
            const float *c0 = b->cr[0], *c1 = b->cr[1], *c2 = b->cr[2], *c3 = b->cr[3];
#pragma omp simd
            for (int j = 0; j < r; j++) {
                const float x0 = c0[j], x1 = c1[j], x2 = c2[j], x3 = c3[j];
                o0[j] = (((o0[j] + p0[0] * x0) + p0[1] * x1) + p0[2] * x2) + p0[3] * x3;
                o1[j] = (((o1[j] + p1[0] * x0) + p1[1] * x1) + p1[2] * x2) + p1[3] * x3;
                o2[j] = (((o2[j] + p2[0] * x0) + p2[1] * x1) + p2[2] * x2) + p2[3] * x3;
                o3[j] = (((o3[j] + p3[0] * x0) + p3[1] * x1) + p3[2] * x2) + p3[3] * x3;
            }
            continue;
        }
        for (int t = 0; t < b->np; t++) {
            const float *cr = b->cr[t], q0 = p0[t], q1 = p1[t], q2 = p2[t], q3 = p3[t];
#pragma omp simd
            for (int j = 0; j < r; j++) {
                const float c = cr[j];
                o0[j] += q0 * c;
                o1[j] += q1 * c;
                o2[j] += q2 * c;
                o3[j] += q3 * c;
            }
        }
    }
    for (; a < na; a++) {
        float *o = ol[act[a]];
        const float *pp = sh + (size_t)act[a] * MLA_CHUNK + b->s;
        if (b->np == 4) {
            const float *c0 = b->cr[0], *c1 = b->cr[1], *c2 = b->cr[2], *c3 = b->cr[3];
            const float p0 = pp[0], p1 = pp[1], p2 = pp[2], p3 = pp[3];
#pragma omp simd
            for (int j = 0; j < r; j++) o[j] = (((o[j] + p0 * c0[j]) + p1 * c1[j]) + p2 * c2[j]) + p3 * c3[j];
        } else {
            for (int t = 0; t < b->np; t++) {
                const float p = pp[t], *cr = b->cr[t];
#pragma omp simd
                for (int j = 0; j < r; j++) o[j] += p * cr[j];
            }
        }
    }
}

/* Positions [s_lo, all->S) in blocks of up to 4 within runs of
 * consecutive rows, the active pairs constant over each block: scores
 * (accumulate 0) or o_lat (1); a pair's scores at sh + p * MLA_CHUNK, from
 * position s_lo on. */
MLA_INLINE void mla_sweep(const mla_dims *d, const mla_seq *all, const int *Sp, int P, int s_lo, int accumulate,
                          float *const *ql, const float *const *qpe, float *const *ol, float *sh) {
    int act[MLA_PAIRS];
    for (int s0 = s_lo, end; s0 < all->S; s0 = end) {
        const int na = mla_active(Sp, P, all->S, s0, act, &end);
        for (int s1 = s0, cnt; s1 < end; s1 += cnt) {
            size_t row = mla_run(all, s1, &cnt);
            cnt = cnt < end - s1 ? cnt : end - s1;
            for (int t = 0; t < cnt; t += 4) {
                mla_blk blk = {{0}, {0}, s1 + t - s_lo, cnt - t < 4 ? cnt - t : 4};
                for (int u = 0; u < blk.np; u++) {
                    blk.cr[u] = all->c + (row + t + u) * all->ldc;
                    blk.kr[u] = all->k + (row + t + u) * all->ldk;
                }
                if (accumulate) mla_accum_at(d, &blk, act, na, ol, sh);
                else mla_scores_at(d, &blk, act, na, ql, qpe, sh);
            }
        }
    }
}

/* A row of n scores becomes its softmax; *m: their max, *l: the sum of
 * exp(score - max) (the probabilities are those times 1 / l). */
MLA_INLINE void mla_softmax(float *row, int n, float *m, float *l) {
    const float mx = fy_cpu_max(row, n);
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] = fy_cpu_exp(row[j] - mx);
    const float sum = fy_cpu_sum(row, n), inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] *= inv;
    *m = mx, *l = sum;
}

/* A tile: rows 0..R of seq (one sequence's storage; row i's query heads at
 * q + i*ldq + h*ldh, its output at o + i*ldo + h*dv) times heads
 * h0..h0+G; pair p = i G + g attends Sp[p] positions. */
typedef struct mla_tl {
    const mla_seq *seq;
    int R, G, h0, P, S; /* S: the longest row's positions */
    int Sp[MLA_PAIRS];
    const float *qh[MLA_PAIRS], *qpe[MLA_PAIRS];
    float *oh[MLA_PAIRS];
} mla_tl;

static void mla_tl_init(const mla_dims *d, const mla_seq *seq, int R, int G, int h0, const float *q, size_t ldq,
                        size_t ldh, float *o, size_t ldo, mla_tl *t) {
    t->seq = seq, t->R = R, t->G = G, t->h0 = h0, t->P = R * G, t->S = 0;
    for (int i = 0; i < R; i++)
        for (int g = 0; g < G; g++) {
            const int p = i * G + g;
            t->qh[p] = q + i * ldq + (h0 + g) * ldh, t->qpe[p] = t->qh[p] + d->dn;
            t->oh[p] = o + i * ldo + (size_t)(h0 + g) * d->dv;
            t->Sp[p] = seq[i].S;
            t->S = seq[i].S > t->S ? seq[i].S : t->S;
        }
}

/* q_lat = sum_i q_nope[i] W_kb[i, :] (rows added in order) of head g's
 * pairs, W_kb's row i read once for the tile's rows. */
FY_CPU_HOT static void mla_qlat(const mla_dims *d, const mla_tl *t, int g, const float *w, float *const *ql) {
    const int r = d->r, G = t->G;
    const float *wkb = w + (size_t)(t->h0 + g) * (d->dn + d->dv) * r;
    for (int ri = 0; ri < t->R; ri++) memset(ql[ri * G + g], 0, (size_t)r * sizeof(float));
    for (int i = 0; i < d->dn; i++) {
        const float *wr = wkb + (size_t)i * r;
        for (int ri = 0; ri < t->R; ri++) {
            float *qlp = ql[ri * G + g];
            const float a = t->qh[ri * G + g][i];
#pragma omp simd
            for (int j = 0; j < r; j++) qlp[j] += a * wr[j];
        }
    }
}

/* Chunk k of every pair of the tile that reaches it: its positions s in
 * [k C, min((k + 1) C, S_p)), C = MLA_CHUNK, get
 *   score[s] = scale dot(ckv[s], q_lat) + scale dot(kpe[s], q_pe)
 *   m = max score, e[s] = exp(score[s] - m), l = sum e, p[s] = e[s] (1 / l)
 *   o = sum_s p[s] ckv[s]                  (from zeros, positions in order)
 * into ol[p] and ml[2p], ml[2p + 1] = m, l. dots are fy_cpu_dot's 8 lanes,
 * max and sum fy_cpu_max's and fy_cpu_sum's; the order is fixed by
 * (r, dn, dr, dv, S_p) alone, so contiguous and paged positions give the
 * same bits. Only the loop nest differs: positions outermost, pairs
 * inside. sh: MLA_PAIRS * MLA_CHUNK floats. */
FY_CPU_HOT static void mla_chunk(const mla_dims *d, const mla_tl *t, int k, float *const *ql, float *const *ol,
                                 float *ml, float *sh) {
    const int lo = k * MLA_CHUNK, hi = t->S - lo < MLA_CHUNK ? t->S : lo + MLA_CHUNK;
    for (int p = 0; p < t->P; p++)
        if (t->Sp[p] > lo) memset(ol[p], 0, (size_t)d->r * sizeof(float));
    mla_seq all = t->seq[0]; /* the rows share the storage; the longest reaches hi */
    all.S = hi;
    mla_sweep(d, &all, t->Sp, t->P, lo, 0, ql, t->qpe, ol, sh);
    for (int p = 0; p < t->P; p++)
        if (t->Sp[p] > lo)
            mla_softmax(sh + (size_t)p * MLA_CHUNK, (t->Sp[p] < hi ? t->Sp[p] : hi) - lo, ml + 2 * p, ml + 2 * p + 1);
    mla_sweep(d, &all, t->Sp, t->P, lo, 1, ql, t->qpe, ol, sh);
}

/* Folds a pair's next chunk (ok; mk, lk = mlk[0], mlk[1]) into its
 * chunks so far (o; m, l = ml[0], ml[1]): both are softmax-weighted means,
 *   m' = max(m, mk), a = l exp(m - m'), b = lk exp(mk - m'), l' = a + b
 *   o[j] = o[j] (a / l') + ok[j] (b / l'),  then m, l = m', l'. */
FY_CPU_HOT static void mla_fold(int r, float *o, float *ml, const float *ok, const float *mlk) {
    const float m = ml[0] > mlk[0] ? ml[0] : mlk[0];
    const float a = ml[1] * fy_cpu_exp(ml[0] - m), b = mlk[1] * fy_cpu_exp(mlk[0] - m), l = a + b;
    const float fa = a / l, fb = b / l;
#pragma omp simd
    for (int j = 0; j < r; j++) o[j] = o[j] * fa + ok[j] * fb;
    ml[0] = m, ml[1] = l;
}

/* out[v] = dot(W_vb[v, :], o_lat) of head g's pairs, W_vb's row v read
 * once for the tile's rows; a row with S = 0 gets zeros. */
FY_CPU_HOT static void mla_out(const mla_dims *d, const mla_tl *t, int g, const float *w, float *const *ol) {
    const int r = d->r, dv = d->dv, G = t->G;
    const float *wvb = w + (size_t)(t->h0 + g) * (d->dn + dv) * r + (size_t)d->dn * r;
    int rows[MLA_ROWS], nr = 0;
    for (int ri = 0; ri < t->R; ri++) {
        if (t->Sp[ri * G + g]) rows[nr++] = ri * G + g;
        else memset(t->oh[ri * G + g], 0, (size_t)dv * sizeof(float));
    }
    for (int v = 0; v < dv; v++) {
        const float *wv = wvb + (size_t)v * r;
        int a = 0;
        for (; a + 4 <= nr; a += 4) {
            const float *y[4] = {ol[rows[a]], ol[rows[a + 1]], ol[rows[a + 2]], ol[rows[a + 3]]};
            float dd[4];
            mla_dot4(wv, y, r, dd);
            for (int m = 0; m < 4; m++) t->oh[rows[a + m]][v] = dd[m];
        }
        for (; a < nr; a++) t->oh[rows[a]][v] = fy_cpu_dot(wv, ol[rows[a]], r);
    }
}

/* A whole tile, single-threaded: its chunks in order, each folded into
 * the ones before. scr: P (3r + 4 + MLA_CHUNK) floats. */
static void mla_tile(const mla_dims *d, const mla_tl *t, const float *w, float *scr) {
    const int r = d->r, P = t->P;
    float *ql[MLA_PAIRS], *ol[MLA_PAIRS], *ok[MLA_PAIRS];
    for (int p = 0; p < P; p++)
        ql[p] = scr + (size_t)p * r, ol[p] = scr + (size_t)(P + p) * r, ok[p] = scr + (size_t)(2 * P + p) * r;
    float *ml = scr + 3 * (size_t)P * r, *mlk = ml + 2 * P, *sh = mlk + 2 * P;
    for (int g = 0; g < t->G; g++) mla_qlat(d, t, g, w, ql);
    mla_chunk(d, t, 0, ql, ol, ml, sh);
    for (int k = 1; k * MLA_CHUNK < t->S; k++) {
        mla_chunk(d, t, k, ql, ok, mlk, sh);
        for (int p = 0; p < P; p++)
            if (t->Sp[p] > k * MLA_CHUNK) mla_fold(r, ol[p], ml + 2 * p, ok[p], mlk + 2 * p);
    }
    for (int g = 0; g < t->G; g++) mla_out(d, t, g, w, ol);
}

/* The shapes of one mla_rows call, and where tile t is. */
typedef struct mla_plan {
    const mla_seq *seq;
    const float *q, *w;
    float *o;
    size_t ldq, ldh, ldo;
    const int *g0; /* row groups: rows g0[k]..g0[k+1] */
    int H, G, nhc; /* heads, heads per tile, tiles per row group */
} mla_plan;

static void mla_plan_tile(const mla_dims *d, const mla_plan *pl, int t, mla_tl *tl) {
    const int i0 = pl->g0[t / pl->nhc], h0 = t % pl->nhc * pl->G;
    mla_tl_init(d, pl->seq + i0, pl->g0[t / pl->nhc + 1] - i0, pl->H - h0 < pl->G ? pl->H - h0 : pl->G, h0,
                pl->q + (size_t)i0 * pl->ldq, pl->ldq, pl->ldh, pl->o + (size_t)i0 * pl->ldo, pl->ldo, tl);
}

/* Few tiles (mla_rows): the (tile, chunk) items, then per (tile, head)
 * the folds in chunk order and W_vb, one parallel loop each. A thread
 * makes q_lat of a tile the first time it takes one of its chunks (the
 * same bits whoever makes it; one barrier fewer). cb[t]..cb[t + 1]: tile
 * t's chunks' items; glob: per item MLA_PAIRS r latent sums, then per item
 * 2 MLA_PAIRS (m, l); mine: this thread's MLA_PAIRS MLA_CHUNK scores, then
 * MLA_TILES MLA_PAIRS r of q_lat. */
static void mla_split(const mla_dims *d, const mla_plan *pl, int ntile, const int *cb, float *glob, float *mine) {
    const int r = d->r, G = pl->G, nitem = cb[ntile];
    float *OL = glob, *ML = OL + (size_t)nitem * MLA_PAIRS * r, *sh = mine, *QL = mine + MLA_PAIRS * MLA_CHUNK;
    char have[MLA_TILES] = {0}; /* the tiles whose q_lat this thread has made */
#pragma omp for schedule(dynamic, 1)
    for (int x = 0; x < nitem; x++) {
        int t = 0;
        while (cb[t + 1] <= x) t++;
        mla_tl tl;
        mla_plan_tile(d, pl, t, &tl);
        float *ql[MLA_PAIRS], *ol[MLA_PAIRS];
        for (int p = 0; p < tl.P; p++)
            ql[p] = QL + ((size_t)t * MLA_PAIRS + p) * r, ol[p] = OL + ((size_t)x * MLA_PAIRS + p) * r;
        if (!have[t]) {
            for (int g = 0; g < tl.G; g++) mla_qlat(d, &tl, g, pl->w, ql);
            have[t] = 1;
        }
        mla_chunk(d, &tl, x - cb[t], ql, ol, ML + (size_t)x * 2 * MLA_PAIRS, sh);
    }
#pragma omp for schedule(dynamic, 1)
    for (int x = 0; x < ntile * G; x++) {
        const int t = x / G, g = x % G;
        mla_tl tl;
        mla_plan_tile(d, pl, t, &tl);
        if (g >= tl.G) continue;
        float *ol[MLA_PAIRS];
        for (int p = 0; p < tl.P; p++) ol[p] = OL + ((size_t)cb[t] * MLA_PAIRS + p) * r; /* chunk 0: the start */
        for (int ri = 0; ri < tl.R; ri++) {
            const int p = ri * tl.G + g;
            float *ml = ML + ((size_t)cb[t] * MLA_PAIRS + p) * 2;
            for (int k = 1; k * MLA_CHUNK < tl.Sp[p]; k++)
                mla_fold(r, ol[p], ml, OL + ((size_t)(cb[t] + k) * MLA_PAIRS + p) * r,
                         ML + ((size_t)(cb[t] + k) * MLA_PAIRS + p) * 2);
        }
        mla_out(d, &tl, g, pl->w, ol);
    }
}

/* Every (row, head) pair of n rows; row i's query heads at q + i*ldq +
 * h*ldh, its output at o + i*ldo + h*dv, positions seq[i]. Tiles are up to
 * MLA_ROWS consecutive rows on one storage times a chunk of heads; a
 * pair's bits depend on neither its tile nor its work item (mla_chunk,
 * mla_fold), so neither on the thread count nor on the other rows. */
static void mla_rows(fy_backend *be, const char *op, int n, int H, int r, int dn, int dr, int dv, float scale,
                     const float *q, size_t ldq, size_t ldh, const float *w, const mla_seq *seq, float *o, size_t ldo) {
    mla_dims d = {r, dn, dr, dv, scale};
    size_t work = 0;
    for (int i = 0; i < n; i++) work += (size_t)H * (seq[i].S + dn + dv) * r;
    if (!r) { /* a zero-width latent: zeros */
        for (int i = 0; i < n; i++) memset(o + (size_t)i * ldo, 0, (size_t)H * dv * sizeof *o);
        return;
    }
    int *g0 = malloc(((size_t)n + 1) * sizeof *g0), ng = 0, most_rows = 1;
    if (!g0) {
        fy_be_set_error(be, "cpu %s: out of memory", op);
        return;
    }
    for (int i = 0, j; i < n; i = j) {
        g0[ng++] = i;
        for (j = i + 1; j < n && j - i < MLA_ROWS && mla_same_store(&seq[i], &seq[j]); j++) {}
        most_rows = j - i > most_rows ? j - i : most_rows;
    }
    g0[ng] = n;
    const int G = H < MLA_PAIRS / most_rows ? H : MLA_PAIRS / most_rows, nhc = (H + G - 1) / G;
    const int ntile = ng * nhc, split = ntile < MLA_TILES;
    mla_plan pl = {seq, q, w, o, ldq, ldh, ldo, g0, H, G, nhc};
    int cb[MLA_TILES + 1] = {0}; /* split: tile t's chunks are items cb[t]..cb[t + 1] */
    for (int t = 0; split && t < ntile; t++) {
        int S = 0;
        for (int i = g0[t / nhc]; i < g0[t / nhc + 1]; i++) S = seq[i].S > S ? seq[i].S : S;
        cb[t + 1] = cb[t] + (S + MLA_CHUNK - 1) / MLA_CHUNK;
    }
    const int nt = work > 16384 ? omp_get_max_threads() : 1;
    const size_t glob = split ? (size_t)cb[ntile] * (r + 2) * MLA_PAIRS : 0;
    const size_t per = (size_t)MLA_PAIRS * (MLA_CHUNK + (split ? (size_t)MLA_TILES * r : 3 * (size_t)r + 4));
    float *scr = fy_cpu_scratch(be, glob + (size_t)nt * per, op);
    if (scr) {
#pragma omp parallel if (nt > 1) num_threads(nt)
        {
            float *mine = scr + glob + (size_t)omp_get_thread_num() * per;
            if (split) {
                mla_split(&d, &pl, ntile, cb, scr, mine);
            } else {
#pragma omp for schedule(dynamic, 1)
                for (int t = 0; t < ntile; t++) {
                    mla_tl tl;
                    mla_plan_tile(&d, &pl, t, &tl);
                    mla_tile(&d, &tl, w, mine);
                }
            }
        }
    }
    free(g0);
}

void fy_cpu_mla_decode(fy_backend *be, int H, int S, int r, int dn, int dr, int dv, float scale,
                       fy_ref q, int ldq, fy_ref wkv_b, fy_ref ckv, int ld_ckv, fy_ref kpe, int ld_kpe,
                       fy_ref out) {
    const char *op = "mla_decode";
    float *o = fy_cpu_f(be, out, (size_t)H * dv, op, "out");
    if (!o) return;
    mla_seq seq = {NULL, NULL, (size_t)ld_ckv, (size_t)ld_kpe, NULL, 1, S};
    if (S && r) {
        const float *qp = fy_cpu_f(be, q, fy_cpu_span(H, ldq, dn + dr), op, "q");
        const float *w = fy_cpu_f(be, wkv_b, (size_t)H * (dn + dv) * r, op, "wkv_b");
        seq.c = fy_cpu_f(be, ckv, fy_cpu_span(S, ld_ckv, r), op, "ckv");
        seq.k = dr ? fy_cpu_f(be, kpe, fy_cpu_span(S, ld_kpe, dr), op, "kpe") : seq.c;
        if (!qp || !w || !seq.c || !seq.k) return;
        mla_rows(be, op, 1, H, r, dn, dr, dv, scale, qp, 0, (size_t)ldq, w, &seq, o, 0);
    } else {
        memset(o, 0, (size_t)H * dv * sizeof *o);
    }
}

/* mla_decode per row against paged positions (backend.h): the same
 * mla_rows, so row i gives mla_decode's bits for its positions. */
void fy_cpu_mla_paged(fy_backend *be, int n, int H, int r, int dn, int dr, int dv, float scale, fy_ref q, int ldq,
                      fy_ref wkv_b, fy_ref ckv, fy_ref kpe, int bs, const int32_t *blocks, const int32_t *tab,
                      const int32_t *len, fy_ref out, int ldo) {
    const char *op = "mla_paged";
    size_t rows = 0; /* pool rows the sequences reach */
    for (int i = 0; i < n; i++)
        for (int b = 0; (size_t)b * bs < (size_t)len[i]; b++) {
            int32_t id = blocks[tab[i] + b];
            if (id < 0) {
                fy_be_set_error(be, "cpu %s: row %d: block %d has id %d", op, i, b, id);
                return;
            }
            rows = (size_t)(id + 1) * bs > rows ? (size_t)(id + 1) * bs : rows;
        }
    const size_t dqr = (size_t)dn + dr;
    float *o = fy_cpu_f(be, out, fy_cpu_span(n, ldo, (size_t)H * dv), op, "out");
    const float *qp = fy_cpu_f(be, q, fy_cpu_span(n, ldq, H * dqr), op, "q");
    const float *w = r ? fy_cpu_f(be, wkv_b, (size_t)H * (dn + dv) * r, op, "wkv_b") : NULL;
    const float *c = rows && r ? fy_cpu_f(be, ckv, rows * r, op, "ckv") : NULL;
    const float *k = rows && dr ? fy_cpu_f(be, kpe, rows * dr, op, "kpe") : c;
    if (!o || !qp || (r && !w) || (rows && r && (!c || !k))) return;
    mla_seq *seq = malloc((size_t)n * sizeof *seq);
    if (!seq) {
        fy_be_set_error(be, "cpu %s: out of memory", op);
        return;
    }
    for (int i = 0; i < n; i++) seq[i] = (mla_seq){c, k, (size_t)r, (size_t)dr, blocks + tab[i], bs, len[i]};
    mla_rows(be, op, n, H, r, dn, dr, dv, scale, qp, (size_t)ldq, dqr, w, seq, o, (size_t)ldo);
    free(seq);
}
