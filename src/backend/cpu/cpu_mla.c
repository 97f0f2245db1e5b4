/* MLA attention of the CPU backend against the latent cache (absorbed:
 * queries meet c_kv and k_pe per position): mla_decode and mla_paged.
 *
 * Every (query row, head) pair is computed by one fixed sequence of
 * operations (mla_tile's comment), so its bits depend on neither the
 * thread count nor the other rows. What is shared is only memory traffic:
 * a tile holds up to MLA_ROWS rows of one sequence (a prefill's rows, or
 * one decode row) times up to MLA_HEADS heads, and each cached position is
 * loaded once for all of its pairs instead of once per pair. The split
 * into tiles depends on the shapes alone. */
#include <omp.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

#define MLA_ROWS 4  /* query rows of one sequence in a tile */
#define MLA_HEADS 4 /* most heads in a tile */
#define MLA_PAIRS (MLA_ROWS * MLA_HEADS)
#define MLA_TILES 8 /* fewer heads per tile while there would be fewer tiles (threads) */

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
    size_t most; /* score scratch per pair: the longest row's positions */
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

/* Four fy_cpu_dot(x, y[m], n) at once, sharing the loads of x: each has
 * fy_cpu_dot's 8 lanes, reduction and tail, so the same bits. */
static inline void mla_dot4(const float *x, const float *const *y, int n, float *out) {
    const float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
    float a0[8] = {0}, a1[8] = {0}, a2[8] = {0}, a3[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            const float xv = x[i + l];
            a0[l] += xv * y0[i + l];
            a1[l] += xv * y1[i + l];
            a2[l] += xv * y2[i + l];
            a3[l] += xv * y3[i + l];
        }
    float *a[4] = {a0, a1, a2, a3};
    for (int m = 0; m < 4; m++) {
        const float *v = a[m];
        float s = ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
        for (int t = i; t < n; t++) s += x[t] * y[m][t];
        out[m] = s;
    }
}

/* The pairs of a tile whose row attends position s (score rows of length
 * Sp[p] > s), in pair order. */
static int mla_active(const int *Sp, int P, int s, int *act) {
    int na = 0;
    for (int p = 0; p < P; p++)
        if (Sp[p] > s) act[na++] = p;
    return na;
}

/* score[s] of every active pair: position s's rows cr, kr loaded once. */
static void mla_scores_at(const mla_dims *d, const float *cr, const float *kr, int s, const int *act, int na,
                          float *const *ql, const float *const *qpe, float *sh) {
    int a = 0;
    for (; a + 4 <= na; a += 4) {
        const float *yc[4], *yk[4];
        float dc[4], dk[4];
        for (int m = 0; m < 4; m++) yc[m] = ql[act[a + m]], yk[m] = qpe[act[a + m]];
        mla_dot4(cr, yc, d->r, dc);
        mla_dot4(kr, yk, d->dr, dk);
        for (int m = 0; m < 4; m++) sh[(size_t)act[a + m] * d->most + s] = d->scale * dc[m] + d->scale * dk[m];
    }
    for (; a < na; a++) {
        int p = act[a];
        sh[(size_t)p * d->most + s] = d->scale * fy_cpu_dot(cr, ql[p], d->r) + d->scale * fy_cpu_dot(kr, qpe[p], d->dr);
    }
}

/* o_lat[p] += softmax(score[p])[s] * ckv[s] of every active pair. */
static void mla_accum_at(const mla_dims *d, const float *cr, int s, const int *act, int na, float *const *ol,
                         const float *sh) {
    const int r = d->r;
    int a = 0;
    for (; a + 4 <= na; a += 4) {
        float *o0 = ol[act[a]], *o1 = ol[act[a + 1]], *o2 = ol[act[a + 2]], *o3 = ol[act[a + 3]];
        const float p0 = sh[(size_t)act[a] * d->most + s], p1 = sh[(size_t)act[a + 1] * d->most + s];
        const float p2 = sh[(size_t)act[a + 2] * d->most + s], p3 = sh[(size_t)act[a + 3] * d->most + s];
#pragma omp simd
        for (int j = 0; j < r; j++) {
            const float c = cr[j];
            o0[j] += p0 * c;
            o1[j] += p1 * c;
            o2[j] += p2 * c;
            o3[j] += p3 * c;
        }
    }
    for (; a < na; a++) {
        float *o = ol[act[a]];
        const float p = sh[(size_t)act[a] * d->most + s];
#pragma omp simd
        for (int j = 0; j < r; j++) o[j] += p * cr[j];
    }
}

/* Each of m rows of width n (stride ld) becomes its softmax. */
static void softmax_rows(float *S, int ld, int m, int n) {
    for (int r = 0; r < m; r++) {
        float *row = S + (size_t)r * ld;
        float mx = fy_cpu_max(row, n);
#pragma omp simd
        for (int j = 0; j < n; j++) row[j] = fy_cpu_exp(row[j] - mx);
        float inv = 1.0f / fy_cpu_sum(row, n);
#pragma omp simd
        for (int j = 0; j < n; j++) row[j] *= inv;
    }
}

/* One tile: rows 0..R of seq (one sequence's storage; row i's query heads
 * at q + i*ldq + h*ldh, its output at o + i*ldo + h*dv) times heads
 * h0..h0+G, single-threaded. Each pair (row, head), with its own S
 * positions, gets exactly the operations of the one-pair algorithm:
 *   q_lat = sum_i q_nope[i] W_kb[i, :]           (rows added in order)
 *   score[s] = scale dot(ckv[s], q_lat) + scale dot(kpe[s], q_pe)
 *   o_lat = sum_s softmax(score)[s] ckv[s]        (positions in order)
 *   out[v] = dot(W_vb[v, :], o_lat)
 * dots are fy_cpu_dot's 8 lanes; the order is fixed by (r, dn, dr, dv, S)
 * alone, so contiguous and paged positions give the same bits
 * (mla_decode == mla_paged). Only the loop nest differs: positions
 * outermost, pairs inside. A row with S = 0 gets zeros.
 * scr: P (2r + most) floats, P = R G. */
FY_CPU_HOT static void mla_tile(const mla_dims *d, const mla_seq *seq, int R, int G, int h0, const float *q,
                                size_t ldq, size_t ldh, const float *w, float *o, size_t ldo, float *scr) {
    const int r = d->r, dn = d->dn, dv = d->dv, P = R * G;
    const size_t wh = (size_t)(dn + dv) * r; /* W_kb then W_vb of a head */
    float *ql[MLA_PAIRS], *ol[MLA_PAIRS], *oh[MLA_PAIRS];
    const float *qh[MLA_PAIRS], *qpe[MLA_PAIRS];
    int Sp[MLA_PAIRS], act[MLA_PAIRS], S = 0;
    for (int i = 0; i < R; i++)
        for (int g = 0; g < G; g++) {
            int p = i * G + g;
            ql[p] = scr + (size_t)p * r, ol[p] = scr + (size_t)(P + p) * r;
            qh[p] = q + i * ldq + (h0 + g) * ldh, qpe[p] = qh[p] + dn;
            oh[p] = o + i * ldo + (size_t)(h0 + g) * dv;
            Sp[p] = seq[i].S;
            S = Sp[p] > S ? Sp[p] : S;
        }
    float *sh = scr + 2 * (size_t)P * r; /* pair p's scores at sh + p * most */
    memset(scr, 0, 2 * (size_t)P * r * sizeof *scr);
    for (int g = 0; g < G; g++) { /* W_kb's row i read once for the tile's rows */
        const float *wkb = w + (h0 + g) * wh;
        for (int i = 0; i < dn; i++) {
            const float *wr = wkb + (size_t)i * r;
            for (int ri = 0; ri < R; ri++) {
                float *qlp = ql[ri * G + g];
                const float a = qh[ri * G + g][i];
#pragma omp simd
                for (int j = 0; j < r; j++) qlp[j] += a * wr[j];
            }
        }
    }
    mla_seq all = seq[0]; /* the rows share the storage; the longest reaches S */
    all.S = S;
    for (int s0 = 0, cnt; s0 < S; s0 += cnt) {
        size_t row = mla_run(&all, s0, &cnt);
        for (int t = 0, s = s0; t < cnt; t++, s++) {
            int na = mla_active(Sp, P, s, act);
            mla_scores_at(d, all.c + (row + t) * all.ldc, all.k + (row + t) * all.ldk, s, act, na, ql, qpe, sh);
        }
    }
    for (int p = 0; p < P; p++)
        if (Sp[p]) softmax_rows(sh + (size_t)p * d->most, Sp[p], 1, Sp[p]);
    for (int s0 = 0, cnt; s0 < S; s0 += cnt) {
        size_t row = mla_run(&all, s0, &cnt);
        for (int t = 0, s = s0; t < cnt; t++, s++) {
            int na = mla_active(Sp, P, s, act);
            mla_accum_at(d, all.c + (row + t) * all.ldc, s, act, na, ol, sh);
        }
    }
    for (int g = 0; g < G; g++) { /* W_vb's row v read once for the tile's rows */
        const float *wvb = w + (h0 + g) * wh + (size_t)dn * r;
        int rows[MLA_ROWS], nr = 0;
        for (int ri = 0; ri < R; ri++) {
            if (Sp[ri * G + g]) rows[nr++] = ri * G + g;
            else memset(oh[ri * G + g], 0, (size_t)dv * sizeof(float));
        }
        for (int v = 0; v < dv; v++) {
            const float *wv = wvb + (size_t)v * r;
            int a = 0;
            if (nr == 4) {
                const float *y[4] = {ol[rows[0]], ol[rows[1]], ol[rows[2]], ol[rows[3]]};
                float dd[4];
                mla_dot4(wv, y, r, dd);
                for (int m = 0; m < 4; m++) oh[rows[m]][v] = dd[m];
                a = 4;
            }
            for (; a < nr; a++) oh[rows[a]][v] = fy_cpu_dot(wv, ol[rows[a]], r);
        }
    }
}

/* Every (row, head) pair of n rows; row i's query heads at q + i*ldq +
 * h*ldh, its output at o + i*ldo + h*dv, positions seq[i]. Tiles (up to
 * MLA_ROWS consecutive rows on one storage, times a chunk of heads) are
 * the parallel loop's iterations; a pair's bits do not depend on its tile
 * (mla_tile), so neither on the thread count nor on the other rows. */
static void mla_rows(fy_backend *be, const char *op, int n, int H, int r, int dn, int dr, int dv, float scale,
                     const float *q, size_t ldq, size_t ldh, const float *w, const mla_seq *seq, float *o, size_t ldo) {
    mla_dims d = {r, dn, dr, dv, scale, 0};
    size_t work = 0;
    for (int i = 0; i < n; i++) {
        d.most = (size_t)seq[i].S > d.most ? (size_t)seq[i].S : d.most;
        work += (size_t)H * (seq[i].S + dn + dv) * r;
    }
    if (!r) { /* a zero-width latent: zeros */
        for (int i = 0; i < n; i++) memset(o + (size_t)i * ldo, 0, (size_t)H * dv * sizeof *o);
        return;
    }
    int *g0 = malloc(((size_t)n + 1) * sizeof *g0), ng = 0; /* row groups: rows g0[k]..g0[k+1] */
    if (!g0) {
        fy_be_set_error(be, "cpu %s: out of memory", op);
        return;
    }
    for (int i = 0, j; i < n; i = j) {
        g0[ng++] = i;
        for (j = i + 1; j < n && j - i < MLA_ROWS && mla_same_store(&seq[i], &seq[j]); j++) {}
    }
    g0[ng] = n;
    int G = H < MLA_HEADS ? H : MLA_HEADS;
    while (G > 1 && (size_t)ng * ((H + G - 1) / G) < MLA_TILES) G /= 2;
    const int nhc = (H + G - 1) / G, ntile = ng * nhc;
    const int nt = work > 16384 ? omp_get_max_threads() : 1;
    const size_t per = (size_t)MLA_ROWS * G * (2 * (size_t)r + d.most);
    float *scr = fy_cpu_scratch(be, (size_t)nt * per, op);
    if (scr) {
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1) num_threads(nt)
        for (int t = 0; t < ntile; t++) {
            int i0 = g0[t / nhc], R = g0[t / nhc + 1] - i0, h0 = t % nhc * G;
            mla_tile(&d, seq + i0, R, H - h0 < G ? H - h0 : G, h0, q + (size_t)i0 * ldq, ldq, ldh, w,
                     o + (size_t)i0 * ldo, ldo, scr + (size_t)omp_get_thread_num() * per);
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
 * mla_tile, so row i gives mla_decode's bits for its positions. */
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
