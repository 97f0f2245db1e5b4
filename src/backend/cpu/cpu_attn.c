/* Causal self-attention of the CPU backend. One (batch, head) pair per
 * OpenMP iteration; within it, rows are processed in blocks so GEMMs skip
 * most of the masked upper triangle. Every GEMM runs single-threaded inside
 * the parallel region (OpenBLAS does so when called in one), and each output
 * element is produced by the same sequence of operations whatever the thread
 * count, so results are deterministic. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"

#define ATTN_BLOCK 32

/* Rows i0..i0+m of a causal score block S (row stride T) become softmax
 * probabilities over keys 0..i, zero above the diagonal. */
FY_CPU_HOT static void softmax_causal_rows(float *S, int T, int i0, int m) {
    for (int r = 0; r < m; r++) {
        int i = i0 + r;
        float *row = S + (size_t)r * T;
        float mx = fy_cpu_max(row, i + 1);
#pragma omp simd
        for (int j = 0; j <= i; j++) row[j] = fy_cpu_exp(row[j] - mx);
        float inv = 1.0f / fy_cpu_sum(row, i + 1);
#pragma omp simd
        for (int j = 0; j <= i; j++) row[j] *= inv;
        if (i + 1 < T) memset(row + i + 1, 0, (size_t)(T - i - 1) * sizeof *row);
    }
}

/* dS = P * (dP - rowsum(P * dP)) for rows i0..i0+m; dP arrives in dS
 * (row stride n), P has row stride T. */
FY_CPU_HOT static void softmax_bwd_rows(const float *P, int T, float *dS, int n, int i0, int m) {
    for (int r = 0; r < m; r++) {
        int i = i0 + r;
        const float *pr = P + (size_t)r * T;
        float *ds = dS + (size_t)r * n;
        float dot = fy_cpu_dot(pr, ds, i + 1);
#pragma omp simd
        for (int j = 0; j <= i; j++) ds[j] = pr[j] * (ds[j] - dot);
        if (i + 1 < n) memset(ds + i + 1, 0, (size_t)(n - i - 1) * sizeof *ds);
    }
}

/* Each of m rows of width n (stride ld) becomes its softmax. */
FY_CPU_HOT static void softmax_rows(float *S, int ld, int m, int n) {
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

void fy_cpu_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref out, fy_ref P) {
    const char *op = "attn_fwd";
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dv, rows = (size_t)B * T;
    const float *qp = fy_cpu_f(be, q, rows * qs, op, "q");
    const float *kp = fy_cpu_f(be, k, rows * qs, op, "k");
    const float *vp = fy_cpu_f(be, v, rows * vs, op, "v");
    float *op_ = fy_cpu_f(be, out, rows * vs, op, "out");
    float *pp = fy_cpu_f(be, P, (size_t)B * H * T * T, op, "P");
    if (!qp || !kp || !vp || !op_ || !pp) return;
    int BH = B * H;
    int nblk = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) if (BH > 1 && (size_t)BH * T * T * (dqk + dv) > 65536)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / H, h = bh % H;
        const float *Q = qp + (size_t)b * T * qs + (size_t)h * dqk;
        const float *K = kp + (size_t)b * T * qs + (size_t)h * dqk;
        const float *V = vp + (size_t)b * T * vs + (size_t)h * dv;
        float *O = op_ + (size_t)b * T * vs + (size_t)h * dv;
        float *Pb = pp + (size_t)bh * T * T;
        for (int blk = 0; blk < nblk; blk++) {
            int i0 = blk * ATTN_BLOCK, i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
            int m = i1 - i0, n = i1; /* rows i0..i1 see keys 0..i1 */
            float *S = Pb + (size_t)i0 * T;
            if (dqk > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, dqk, scale,
                            Q + (size_t)i0 * qs, (int)qs, K, (int)qs, 0.0f, S, T);
            else
                for (int r = 0; r < m; r++)
                    for (int j = 0; j < n; j++) S[(size_t)r * T + j] = 0.0f;
            softmax_causal_rows(S, T, i0, m);
            if (dv > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, dv, n, 1.0f, S, T, V,
                            (int)vs, 0.0f, O + (size_t)i0 * vs, (int)vs);
        }
    }
}

/* S = scale Q K^T, P = softmax(S) (causal), O = P V.
 *   dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP));
 *   dQ = scale dS K;  dK = scale dS^T Q.
 * Row blocks are visited last to first: the last block covers every key, so
 * it initialises dK, dV (beta = 0) and the others add into them. */
void fy_cpu_attn_bwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref P, fy_ref dout, fy_ref dq, fy_ref dk,
                     fy_ref dv_) {
    const char *op = "attn_bwd";
    size_t qs = (size_t)H * dqk, vs = (size_t)H * dv, rows = (size_t)B * T;
    const float *qp = fy_cpu_f(be, q, rows * qs, op, "q");
    const float *kp = fy_cpu_f(be, k, rows * qs, op, "k");
    const float *vp = fy_cpu_f(be, v, rows * vs, op, "v");
    const float *pp = fy_cpu_f(be, P, (size_t)B * H * T * T, op, "P");
    const float *dop = fy_cpu_f(be, dout, rows * vs, op, "dout");
    float *dqp = fy_cpu_f(be, dq, rows * qs, op, "dq");
    float *dkp = fy_cpu_f(be, dk, rows * qs, op, "dk");
    float *dvp = fy_cpu_f(be, dv_, rows * vs, op, "dv");
    if (!qp || !kp || !vp || !pp || !dop || !dqp || !dkp || !dvp) return;
    int BH = B * H;
    int nblk = (T + ATTN_BLOCK - 1) / ATTN_BLOCK;
    int bm = T < ATTN_BLOCK ? T : ATTN_BLOCK;
    int oom = 0;
#pragma omp parallel if (BH > 1 && (size_t)BH * T * T * (dqk + dv) > 65536)
    {
        float *dS = malloc((size_t)bm * T * sizeof *dS);
        if (!dS) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < BH; bh++) {
            if (!dS) continue;
            int b = bh / H, h = bh % H;
            size_t qo = (size_t)b * T * qs + (size_t)h * dqk;
            size_t vo = (size_t)b * T * vs + (size_t)h * dv;
            const float *Q = qp + qo, *K = kp + qo, *V = vp + vo, *dO = dop + vo;
            float *dQ = dqp + qo, *dK = dkp + qo, *dV = dvp + vo;
            const float *Pb = pp + (size_t)bh * T * T;
            for (int blk = nblk - 1; blk >= 0; blk--) {
                int i0 = blk * ATTN_BLOCK, i1 = i0 + ATTN_BLOCK < T ? i0 + ATTN_BLOCK : T;
                int m = i1 - i0, n = i1;
                float beta = blk == nblk - 1 ? 0.0f : 1.0f;
                const float *Pr = Pb + (size_t)i0 * T;
                const float *dOr = dO + (size_t)i0 * vs;
                if (dv > 0) {
                    /* dV[0:n] (+)= P[i0:i1, 0:n]^T dO[i0:i1] */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, dv, m, 1.0f, Pr, T,
                                dOr, (int)vs, beta, dV, (int)vs);
                    /* dP = dO[i0:i1] V[0:n]^T, into dS (ld n) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, dv, 1.0f, dOr,
                                (int)vs, V, (int)vs, 0.0f, dS, n);
                } else {
                    for (size_t e = 0; e < (size_t)m * n; e++) dS[e] = 0.0f;
                }
                softmax_bwd_rows(Pr, T, dS, n, i0, m);
                if (dqk > 0) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, dqk, n, scale, dS, n,
                                K, (int)qs, 0.0f, dQ + (size_t)i0 * qs, (int)qs);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, dqk, m, scale, dS, n,
                                Q + (size_t)i0 * qs, (int)qs, beta, dK, (int)qs);
                }
            }
        }
        free(dS);
    }
    if (oom) fy_be_set_error(be, "cpu attn_bwd: out of memory");
}

/* ---------------------------------------------------------------- MLA decode */

/* Where a sequence's positions live: position s is row blocks[s / bs] * bs
 * + s % bs of c (row stride ldc) and k (ldk); blocks NULL: row s. */
typedef struct mla_seq {
    const float *c, *k;
    size_t ldc, ldk;
    const int32_t *blocks;
    int bs, S;
} mla_seq;

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

/* One head of one query, query to output, single-threaded, in an order
 * fixed by (r, dn, dr, dv, S) alone, so contiguous and paged positions give
 * the same bits (mla_decode == mla_paged):
 *   q_lat = sum_i q_nope[i] W_kb[i, :]           (rows added in order)
 *   score[s] = scale dot(ckv[s], q_lat) + scale dot(kpe[s], q_pe)
 *   o_lat = sum_s softmax(score)[s] ckv[s]        (positions in order)
 *   out[v] = dot(W_vb[v, :], o_lat)
 * dots are fy_cpu_dot's 8 lanes. scr: 2r + S floats. */
FY_CPU_HOT static void mla_head(const mla_seq *q, int r, int dn, int dr, int dv, float scale, const float *qh,
                                const float *wkb, float *scr, float *o) {
    float *ql = scr, *ol = scr + r, *sh = ol + r;
    const float *wvb = wkb + (size_t)dn * r;
    memset(ql, 0, 2 * (size_t)r * sizeof *ql);
    for (int i = 0; i < dn; i++) {
        const float a = qh[i], *wr = wkb + (size_t)i * r;
#pragma omp simd
        for (int j = 0; j < r; j++) ql[j] += a * wr[j];
    }
    for (int s0 = 0, cnt; s0 < q->S; s0 += cnt) {
        size_t row = mla_run(q, s0, &cnt);
        for (int t = 0; t < cnt; t++) {
            const float *cr = q->c + (row + t) * q->ldc, *kr = q->k + (row + t) * q->ldk;
            sh[s0 + t] = scale * fy_cpu_dot(cr, ql, r) + scale * fy_cpu_dot(kr, qh + dn, dr);
        }
    }
    softmax_rows(sh, q->S, 1, q->S);
    for (int s0 = 0, cnt; s0 < q->S; s0 += cnt) {
        size_t row = mla_run(q, s0, &cnt);
        for (int t = 0; t < cnt; t++) {
            const float p = sh[s0 + t], *cr = q->c + (row + t) * q->ldc;
#pragma omp simd
            for (int j = 0; j < r; j++) ol[j] += p * cr[j];
        }
    }
    for (int v = 0; v < dv; v++) o[v] = fy_cpu_dot(wvb + (size_t)v * r, ol, r);
}

/* Every (row, head) pair of n rows as one parallel loop; row i's query
 * heads at q + i*ldq + h*ldh, its output at o + i*ldo + h*dv, positions
 * seq[i]. One thread per pair from query to output: a pair's bits do not
 * depend on the thread count or on the other rows. Threads get scratch of
 * 2r + max S floats each. */
static void mla_rows(fy_backend *be, const char *op, int n, int H, int r, int dn, int dr, int dv, float scale,
                     const float *q, size_t ldq, size_t ldh, const float *w, const mla_seq *seq, float *o, size_t ldo) {
    int most = 0;
    size_t work = 0;
    for (int i = 0; i < n; i++) {
        most = seq[i].S > most ? seq[i].S : most;
        work += (size_t)H * (seq[i].S + dn + dv) * r;
    }
    const int nt = work > 16384 ? omp_get_max_threads() : 1;
    const size_t per = 2 * (size_t)r + most;
    float *scr = fy_cpu_scratch(be, (size_t)nt * per, op);
    if (!scr) return;
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1) num_threads(nt)
    for (int ih = 0; ih < n * H; ih++) {
        int i = ih / H, h = ih % H;
        float *oh = o + (size_t)i * ldo + (size_t)h * dv;
        if (!seq[i].S || !r) { /* softmax over nothing, or a zero-width latent: zeros */
            memset(oh, 0, (size_t)dv * sizeof *oh);
            continue;
        }
        mla_head(&seq[i], r, dn, dr, dv, scale, q + (size_t)i * ldq + (size_t)h * ldh, w + (size_t)h * (dn + dv) * r,
                 scr + (size_t)omp_get_thread_num() * per, oh);
    }
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
 * mla_head, so row i gives mla_decode's bits for its positions. */
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
