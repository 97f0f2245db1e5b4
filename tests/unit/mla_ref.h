/* The per-pair MLA attention that src/backend/cpu/cpu_mla.c replaced (a
 * copy of its mla_head, kept as the reference): one (query row, head) pair
 * at a time, each cached position streamed once per pair. test_mla_bits
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

static size_t ref_mla_run(const ref_mla_seq *q, int s0, int *cnt) {
    if (!q->blocks) {
        *cnt = q->S - s0;
        return (size_t)s0;
    }
    int left = q->S - s0, in_blk = q->bs - s0 % q->bs;
    *cnt = left < in_blk ? left : in_blk;
    return (size_t)q->blocks[s0 / q->bs] * q->bs + s0 % q->bs;
}

FY_CPU_HOT static void ref_mla_head(const ref_mla_seq *q, int r, int dn, int dr, int dv, float scale,
                                    const float *qh, const float *wkb, float *scr, float *o) {
    float *ql = scr, *ol = scr + r, *sh = ol + r;
    const float *wvb = wkb + (size_t)dn * r;
    memset(ql, 0, 2 * (size_t)r * sizeof *ql);
    for (int i = 0; i < dn; i++) {
        const float a = qh[i], *wr = wkb + (size_t)i * r;
#pragma omp simd
        for (int j = 0; j < r; j++) ql[j] += a * wr[j];
    }
    for (int s0 = 0, cnt; s0 < q->S; s0 += cnt) {
        size_t row = ref_mla_run(q, s0, &cnt);
        for (int t = 0; t < cnt; t++) {
            const float *cr = q->c + (row + t) * q->ldc, *kr = q->k + (row + t) * q->ldk;
            sh[s0 + t] = scale * fy_cpu_dot(cr, ql, r) + scale * fy_cpu_dot(kr, qh + dn, dr);
        }
    }
    float mx = fy_cpu_max(sh, q->S);
#pragma omp simd
    for (int j = 0; j < q->S; j++) sh[j] = fy_cpu_exp(sh[j] - mx);
    float inv = 1.0f / fy_cpu_sum(sh, q->S);
#pragma omp simd
    for (int j = 0; j < q->S; j++) sh[j] *= inv;
    for (int s0 = 0, cnt; s0 < q->S; s0 += cnt) {
        size_t row = ref_mla_run(q, s0, &cnt);
        for (int t = 0; t < cnt; t++) {
            const float p = sh[s0 + t], *cr = q->c + (row + t) * q->ldc;
#pragma omp simd
            for (int j = 0; j < r; j++) ol[j] += p * cr[j];
        }
    }
    for (int v = 0; v < dv; v++) o[v] = fy_cpu_dot(wvb + (size_t)v * r, ol, r);
}

/* Every (row, head) pair of n rows, one pair per iteration of a parallel
 * loop over nt threads (the old mla_rows). 0, or -1 out of memory. */
static int ref_mla_rows(int nt, int n, int H, int r, int dn, int dr, int dv, float scale, const float *q,
                        size_t ldq, size_t ldh, const float *w, const ref_mla_seq *seq, float *o, size_t ldo) {
    int most = 0;
    for (int i = 0; i < n; i++) most = seq[i].S > most ? seq[i].S : most;
    const size_t per = 2 * (size_t)r + most;
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
