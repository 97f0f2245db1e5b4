/* The per-pair MLA attention, written plainly, as the reference for
 * src/backend/cpu/cpu_mla.c: one (query row, head) pair at a time, each
 * cached position streamed once per pair, in cpu_mla.c's order (chunks of
 * 64 positions, each its own softmax, folded in order). test_mla_bits
 * holds the tiled kernels to its bits; bench_batch --mla times both.
 * Include after backend/cpu/cpu.h; build with -ffp-contract=off, as the
 * library is (tests/CMakeLists.txt, bench/CMakeLists.txt). */
#ifndef FERRY_TESTS_MLA_REF_H
#define FERRY_TESTS_MLA_REF_H

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Row i's positions: position s is row blocks[s / bs] * bs + s % bs of c
 * (row stride ldc) and k (ldk); blocks NULL: row s. */
typedef struct ref_mla_seq {
    const float *c, *k;
    size_t ldc, ldk;
    const int32_t *blocks;
    int bs, S;
} ref_mla_seq;

#define REF_MLA_CHUNK 64 /* cpu_mla.c's MLA_CHUNK */

/* Position s's row of q->c and q->k. */
static size_t ref_mla_pos(const ref_mla_seq *q, int s) {
    return q->blocks ? (size_t)q->blocks[s / q->bs] * q->bs + s % q->bs : (size_t)s;
}

/* One (row, head) pair: its positions in chunks of REF_MLA_CHUNK, each
 * with its own softmax and latent sum, folded in order with the usual
 * rescaling. scr: 3r + REF_MLA_CHUNK floats. */
FY_CPU_HOT static void ref_mla_head(const ref_mla_seq *q, int r, int dn, int dr, int dv, float scale,
                                    const float *qh, const float *wkb, float *scr, float *o) {
    float *ql = scr, *ol = scr + r, *ok = ol + r, *sh = ok + r;
    const float *wvb = wkb + (size_t)dn * r;
    memset(ql, 0, (size_t)r * sizeof *ql);
    for (int i = 0; i < dn; i++) {
        const float a = qh[i], *wr = wkb + (size_t)i * r;
#pragma omp simd
        for (int j = 0; j < r; j++) ql[j] += a * wr[j];
    }
    float m = 0.0f, l = 0.0f; /* the chunks so far: their max and sum of exp */
    for (int lo = 0; lo < q->S; lo += REF_MLA_CHUNK) {
        const int n = q->S - lo < REF_MLA_CHUNK ? q->S - lo : REF_MLA_CHUNK;
        for (int t = 0; t < n; t++) {
            size_t row = ref_mla_pos(q, lo + t);
            const float *cr = q->c + row * q->ldc, *kr = q->k + row * q->ldk;
            sh[t] = scale * fy_cpu_dot(cr, ql, r) + scale * fy_cpu_dot(kr, qh + dn, dr);
        }
        const float mk = fy_cpu_max(sh, n);
#pragma omp simd
        for (int t = 0; t < n; t++) sh[t] = fy_cpu_exp(sh[t] - mk);
        const float lk = fy_cpu_sum(sh, n), inv = 1.0f / lk;
#pragma omp simd
        for (int t = 0; t < n; t++) sh[t] *= inv;
        float *oc = lo ? ok : ol; /* chunk 0 is the start of the fold */
        memset(oc, 0, (size_t)r * sizeof *oc);
        for (int t = 0; t < n; t++) {
            const float p = sh[t], *cr = q->c + ref_mla_pos(q, lo + t) * q->ldc;
#pragma omp simd
            for (int j = 0; j < r; j++) oc[j] += p * cr[j];
        }
        if (!lo) {
            m = mk, l = lk;
            continue;
        }
        const float m2 = m > mk ? m : mk;
        const float a = l * fy_cpu_exp(m - m2), b = lk * fy_cpu_exp(mk - m2), l2 = a + b;
        const float fa = a / l2, fb = b / l2;
        for (int j = 0; j < r; j++) ol[j] = ol[j] * fa + ok[j] * fb;
        m = m2, l = l2;
    }
    for (int v = 0; v < dv; v++) o[v] = fy_cpu_dot(wvb + (size_t)v * r, ol, r);
}

/* Every (row, head) pair of n rows, one pair per iteration of a parallel
 * loop over nt threads (the old mla_rows). 0, or -1 out of memory. */
static int ref_mla_rows(int nt, int n, int H, int r, int dn, int dr, int dv, float scale, const float *q,
                        size_t ldq, size_t ldh, const float *w, const ref_mla_seq *seq, float *o, size_t ldo) {
    const size_t per = 3 * (size_t)r + REF_MLA_CHUNK;
    float *scr = malloc((size_t)nt * per * sizeof *scr + 1);
    if (!scr) return -1;
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1) num_threads(nt)
    for (int ih = 0; ih < n * H; ih++) {
        int i = ih / H, h = ih % H;
        float *oh = o + (size_t)i * ldo + (size_t)h * dv;
        if (!seq[i].S || !r) {
            memset(oh, 0, (size_t)dv * sizeof *oh);
            continue;
        }
        ref_mla_head(&seq[i], r, dn, dr, dv, scale, q + (size_t)i * ldq + (size_t)h * ldh,
                     w + (size_t)h * (dn + dv) * r, scr + (size_t)omp_get_thread_num() * per, oh);
    }
    free(scr);
    return 0;
}

#endif
