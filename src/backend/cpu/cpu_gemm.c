/* linear_rows and linear_h16 for many x rows (prefill, training), with
 * cpu_linear.c's bits: the same 16 lane sums, each adding the same rounded
 * products in the same order, combined by the same tree, then one add into
 * y when accumulating (see cpu_linear.c's header for the order).
 *
 * Outputs in lanes: a panel of PW consecutive outputs of W is packed so one
 * vector holds PW / VL outputs' weights at the same k, the k in "phase
 * order" (phase l: k = l, l + 16, l + 32, ... ; phase after phase). For
 * each phase a register tile of R x rows (read in place, one broadcast a
 * row and k) by PW outputs adds x[i][k] * w[o][k] over that phase's k in
 * turn: one vector lane is exactly one of cpu_linear.c's 16 lane sums for
 * one (row, output), so the dot products no longer need a horizontal sum
 * per output, and each weight vector serves R rows, each broadcast x value
 * PW outputs. The 16 phase sums of each (row, output) are then combined
 * with lanes16()'s tree, vertically, PW outputs at a time. A phase with no
 * k left (in not a multiple of 16) keeps +0, as a lane that adds the +0
 * products of cpu_linear.c's zero-filled last group does (a lane is never
 * -0). Widening 16-bit weights while packing is exact (core/half.h), as it
 * is in cpu_linear.c. No fused multiply-add: mul, then add (the build has
 * -ffp-contract=off).
 *
 * Blocking: each chunk of outputs (its packed W, NB x in floats, sized to
 * stay in L2) is one unit of a fixed OpenMP split; inside it, R rows of x
 * at a time (in L1) against every panel of the chunk. Every
 * (row, output) is computed in full by one tile whatever the split, so the
 * bits depend on nothing but x and W. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"
#include "core/half.h"

#if defined(__GNUC__) && defined(__x86_64__)

/* off[l]: where phase l starts in the phase order, off[16] = in; phase l
 * holds the k = l + 16 m < in. */
static void gm_phases(int in, int off[17]) {
    int o = 0;
    for (int l = 0; l < 16; l++) {
        off[l] = o;
        o += in > l ? (in - l - 1) / 16 + 1 : 0;
    }
    off[16] = o;
}

/* Weight i of w (format wf) as a float: widened exactly (core/half.h). */
static inline float gm_w1(const void *w, size_t i, int wf) {
    if (wf == FY_CPU_WF_F32) return ((const float *)w)[i];
    const uint16_t h = ((const uint16_t *)w)[i];
    return wf == FY_CPU_WF_BF16 ? fy_bf16_to_f32(h) : fy_f16_to_f32(h);
}

/* Weights i .. i+7 of w as floats; vcvtph2ps and the bf16 shift widen
 * with core/half.h's bits, NaN payloads included (test_h16). */
__attribute__((target("avx2,f16c"), always_inline)) static inline __m256 gm_load8(const void *w, size_t i, int wf) {
    if (wf == FY_CPU_WF_F32) return _mm256_loadu_ps((const float *)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (wf == FY_CPU_WF_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* r[j][i] <-> r[i][j]. */
__attribute__((target("avx2"), always_inline)) static inline void gm_transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int j = 0; j < 8; j += 2)
        t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]), t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
    for (int j = 0; j < 8; j += 4) {
        s[j] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x20);
        r[j + 4] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x31);
    }
}

/* Outputs 0..nv of w (nv <= PW; PW a multiple of 8; zeros past nv)
 * packed for a panel: weight k of output c at dst[(off[k % 16] + k / 16) *
 * PW + c]. Whole groups of 16 k go 8 outputs x 8 k at a time through a
 * transpose, the rest (k past the last whole group, a last partial 8
 * outputs) one by one. */
__attribute__((target("avx2,f16c"))) static void gm_pack_w(const void *w, size_t ldw, int wf, int nv, int in,
                                                            int PW, const int *off, float *dst) {
    const int full = in / 16 * 16;
    for (int c0 = 0; c0 < PW; c0 += 8) {
        int c = c0;
        if (c0 + 8 <= nv) {
            for (int g = 0; 16 * g < full; g++)
                for (int h = 0; h < 16; h += 8) {
                    __m256 r[8];
                    for (int j = 0; j < 8; j++) r[j] = gm_load8(w, (size_t)(c0 + j) * ldw + 16 * g + h, wf);
                    gm_transpose8(r);
                    for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + (size_t)(off[h + j] + g) * PW + c0, r[j]);
                }
            for (; c < c0 + 8; c++)
                for (int k = full; k < in; k++)
                    dst[(size_t)(off[k % 16] + k / 16) * PW + c] = gm_w1(w, (size_t)c * ldw + k, wf);
            continue;
        }
        for (; c < c0 + 8; c++)
            for (int k = 0; k < in; k++)
                dst[(size_t)(off[k % 16] + k / 16) * PW + c] = c < nv ? gm_w1(w, (size_t)c * ldw + k, wf) : 0.0f;
    }
}

/* One panel: x rows 0..nr (row stride ldx; R in the tile, the rest
 * repeating row 0) against packed W panel wp (PW outputs); phase sums to
 * part[l][i][PW], then y[i][0..nv) for i < nr. */
typedef void gm_panel_fn(const int *off, const float *x, int ldx, const float *wp, float *part, float *y, int ldy,
                         int nr, int nv, int accumulate);

/* ---- AVX-512: PW = 16 C outputs, R x C registers ---- */

__attribute__((target("avx512f"), always_inline)) static inline void
gm_panel512(const int *off, const float *x, int ldx, const float *wp, float *part, float *y, int ldy, int nr,
            int nv, int accumulate, const int R, const int C) {
    const int PW = 16 * C;
    const float *xr[12]; /* the rows past nr repeat row 0: computed, never stored */
    #pragma GCC unroll 12
    for (int i = 0; i < R; i++) xr[i] = x + (size_t)(i < nr ? i : 0) * ldx;
    for (int l = 0; l < 16; l++) {
        __m512 a[12][4];
        #pragma GCC unroll 12
        for (int i = 0; i < R; i++)
            #pragma GCC unroll 4
            for (int c = 0; c < C; c++) a[i][c] = _mm512_setzero_ps();
        const float *wq = wp + (size_t)off[l] * PW;
        for (int k = l; k < off[16]; k += 16, wq += PW) {
            __m512 wv[4];
            #pragma GCC unroll 4
            for (int c = 0; c < C; c++) wv[c] = _mm512_loadu_ps(wq + 16 * c);
            #pragma GCC unroll 12
            for (int i = 0; i < R; i++) {
                const __m512 xb = _mm512_set1_ps(xr[i][k]);
                #pragma GCC unroll 4
                for (int c = 0; c < C; c++) a[i][c] = _mm512_add_ps(a[i][c], _mm512_mul_ps(xb, wv[c]));
            }
        }
        #pragma GCC unroll 12
        for (int i = 0; i < R; i++)
            #pragma GCC unroll 4
            for (int c = 0; c < C; c++) _mm512_storeu_ps(part + ((size_t)l * R + i) * PW + 16 * c, a[i][c]);
    }
    for (int i = 0; i < nr; i++)
        for (int c = 0; c < C && 16 * c < nv; c++) {
            const float *p = part + (size_t)i * PW + 16 * c;
            const size_t ls = (size_t)R * PW; /* one phase on */
            __m512 t[8], u[4];
            #pragma GCC unroll 8
            for (int l = 0; l < 8; l++)
                t[l] = _mm512_add_ps(_mm512_loadu_ps(p + l * ls), _mm512_loadu_ps(p + (l + 8) * ls));
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) u[j] = _mm512_add_ps(t[j], t[j + 4]);
            __m512 s = _mm512_add_ps(_mm512_add_ps(u[0], u[1]), _mm512_add_ps(u[2], u[3]));
            const int n = nv - 16 * c;
            const __mmask16 m = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
            float *yo = y + (size_t)i * ldy + 16 * c;
            if (accumulate) s = _mm512_add_ps(_mm512_maskz_loadu_ps(m, yo), s);
            _mm512_mask_storeu_ps(yo, m, s);
        }
}

#define GM_PANEL512(R, C)                                                                                          \
    __attribute__((target("avx512f"))) static void gm_panel512_##R##x##C(const int *off, const float *x, int ldx, \
                                                                        const float *wp, float *part, float *y,  \
                                                                        int ldy, int nr, int nv, int accumulate) { \
        gm_panel512(off, x, ldx, wp, part, y, ldy, nr, nv, accumulate, R, C);                                         \
    }
GM_PANEL512(8, 3)

/* ---- AVX2: PW = 8 C outputs, R x C registers (16 in all) ---- */

__attribute__((target("avx2"), always_inline)) static inline void
gm_panel256(const int *off, const float *x, int ldx, const float *wp, float *part, float *y, int ldy, int nr,
            int nv, int accumulate, const int R, const int C) {
    const int PW = 8 * C;
    const float *xr[8]; /* the rows past nr repeat row 0: computed, never stored */
    #pragma GCC unroll 8
    for (int i = 0; i < R; i++) xr[i] = x + (size_t)(i < nr ? i : 0) * ldx;
    for (int l = 0; l < 16; l++) {
        __m256 a[8][4];
        #pragma GCC unroll 8
        for (int i = 0; i < R; i++)
            #pragma GCC unroll 4
            for (int c = 0; c < C; c++) a[i][c] = _mm256_setzero_ps();
        const float *wq = wp + (size_t)off[l] * PW;
        for (int k = l; k < off[16]; k += 16, wq += PW) {
            __m256 wv[4];
            #pragma GCC unroll 4
            for (int c = 0; c < C; c++) wv[c] = _mm256_loadu_ps(wq + 8 * c);
            #pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                const __m256 xb = _mm256_broadcast_ss(xr[i] + k);
                #pragma GCC unroll 4
                for (int c = 0; c < C; c++) a[i][c] = _mm256_add_ps(a[i][c], _mm256_mul_ps(xb, wv[c]));
            }
        }
        #pragma GCC unroll 8
        for (int i = 0; i < R; i++)
            #pragma GCC unroll 4
            for (int c = 0; c < C; c++) _mm256_storeu_ps(part + ((size_t)l * R + i) * PW + 8 * c, a[i][c]);
    }
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i = 0; i < nr; i++)
        for (int c = 0; c < C && 8 * c < nv; c++) {
            const float *p = part + (size_t)i * PW + 8 * c;
            const size_t ls = (size_t)R * PW;
            __m256 t[8], u[4];
            #pragma GCC unroll 8
            for (int l = 0; l < 8; l++)
                t[l] = _mm256_add_ps(_mm256_loadu_ps(p + l * ls), _mm256_loadu_ps(p + (l + 8) * ls));
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) u[j] = _mm256_add_ps(t[j], t[j + 4]);
            __m256 s = _mm256_add_ps(_mm256_add_ps(u[0], u[1]), _mm256_add_ps(u[2], u[3]));
            const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nv - 8 * c), idx);
            float *yo = y + (size_t)i * ldy + 8 * c;
            if (accumulate) s = _mm256_add_ps(_mm256_maskload_ps(yo, m), s);
            _mm256_maskstore_ps(yo, m, s);
        }
}

#define GM_PANEL256(R, C)                                                                                          \
    __attribute__((target("avx2"))) static void gm_panel256_##R##x##C(const int *off, const float *x, int ldx,    \
                                                                     const float *wp, float *part, float *y,     \
                                                                     int ldy, int nr, int nv, int accumulate) {  \
        gm_panel256(off, x, ldx, wp, part, y, ldy, nr, nv, accumulate, R, C);                                         \
    }
GM_PANEL256(6, 2)

/* Floats of packed W a chunk holds at most (256 KB: inside the L2 of the
 * CPUs measured, beside the x block). */
#define GM_CHUNK_FLOATS (1 << 16)
/* Where these kernels beat cpu_linear.c's (one thread, a Xeon with
 * AVX-512 and 2 MB of L2 a core, 2026-12-06, docs/PERFORMANCE.md): against
 * its AVX2 4 x 1 tiles from 64 rows on; its AVX-512 4 x 4 tiles already
 * run near the mul + add limit and pack nothing, and lose only once x
 * outgrows the L2 (they read all of x again for every 4 outputs): from 64
 * rows with more than 1 MB of x. */
#define GM_ROWS_AVX2 64
#define GM_ROWS_AVX512 64
#define GM_X_AVX512 (1u << 18)
/* Multiply-adds below which a call stays on one thread (cpu_linear.c's). */
#define GM_PAR_MIN (1u << 20)

int fy_cpu_gemm_rows(fy_backend *be, int isa, int wf, int N, int in, int out, const float *x, int ldx, const void *w,
                     size_t ldw, float *y, int ldy, int accumulate) {
    gm_panel_fn *panel;
    int R, PW, rows;
    if (isa == FY_CPU_ISA_AVX512) panel = gm_panel512_8x3, R = 8, PW = 48, rows = GM_ROWS_AVX512;
    else if (isa == FY_CPU_ISA_AVX2) panel = gm_panel256_6x2, R = 6, PW = 16, rows = GM_ROWS_AVX2;
    else return 0;
    const int want = ((fy_cpu_impl *)be->impl)->gemm_rows;
    if (want < 0 || N < (want ? want : rows)) return 0;
    if (!want && isa == FY_CPU_ISA_AVX512 && (size_t)N * in <= GM_X_AVX512) return 0;
    int off[17];
    gm_phases(in, off);
    const int T = omp_get_max_threads();
    /* outputs per chunk: a multiple of PW, the packed W within GM_CHUNK_FLOATS,
     * and at least two chunks per thread where out allows */
    int nb = GM_CHUNK_FLOATS / in / PW * PW;
    const int share = ((out + 2 * T - 1) / (2 * T) + PW - 1) / PW * PW;
    nb = nb < share ? nb : share;
    nb = nb < PW ? PW : nb;
    const size_t per = (size_t)nb * in + (size_t)16 * R * PW;
    float *scr = fy_cpu_scratch(be, (size_t)T * per, wf == FY_CPU_WF_F32 ? "linear_rows" : "linear_h16");
    if (!scr) return 1; /* error recorded */
    const int chunks = (out + nb - 1) / nb;
    const size_t esz = wf == FY_CPU_WF_F32 ? 4 : 2;
#pragma omp parallel for schedule(static) if (chunks > 1 && (size_t)N * in * out >= GM_PAR_MIN)
    for (int ch = 0; ch < chunks; ch++) {
        float *pw = scr + (size_t)omp_get_thread_num() * per, *part = pw + (size_t)nb * in;
        const int o0 = ch * nb, nout = out - o0 < nb ? out - o0 : nb, npan = (nout + PW - 1) / PW;
        for (int p = 0; p < npan; p++) {
            const int nv = nout - p * PW < PW ? nout - p * PW : PW;
            gm_pack_w((const char *)w + ((size_t)o0 + (size_t)p * PW) * ldw * esz, ldw, wf, nv, in, PW, off,
                      pw + (size_t)p * PW * in);
        }
        for (int r0 = 0; r0 < N; r0 += R) {
            const int nr = N - r0 < R ? N - r0 : R;
            for (int p = 0; p < npan; p++) {
                const int nv = nout - p * PW < PW ? nout - p * PW : PW;
                panel(off, x + (size_t)r0 * ldx, ldx, pw + (size_t)p * PW * in, part,
                      y + (size_t)r0 * ldy + o0 + p * PW, ldy, nr, nv, accumulate);
            }
        }
    }
    return 1;
}

#else

int fy_cpu_gemm_rows(fy_backend *be, int isa, int wf, int N, int in, int out, const float *x, int ldx, const void *w,
                     size_t ldw, float *y, int ldy, int accumulate) {
    (void)be, (void)isa, (void)wf, (void)N, (void)in, (void)out, (void)x, (void)ldx, (void)w, (void)ldw, (void)y;
    (void)ldy, (void)accumulate;
    return 0;
}

#endif
