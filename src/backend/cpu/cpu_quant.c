/* Q8_0 inference weights on the CPU: y = x W^T, llama.cpp's way: the input
 * row is quantized like the weights (int8, one scale per 32), each block's
 * dot product is formed exactly in integers, and only the block sums meet
 * floats. Decode streams every weight once per token; int8 reads a quarter of
 * fp32's bytes, and the integer products (AVX-512 VNNI: 64 per instruction)
 * keep the kernel from being the limit.
 *
 * Every ISA gives the same bits: for block b, lane l (< 8) holds the exact
 * integer sum of products 4l .. 4l+3; lane l of accumulator half (b & 1)
 * adds (float)sum * (sw_b * sx_b) (no fused multiply-add); the 16 lanes
 * reduce as t_l = a_l + a_{l+8}, u_j = t_j + t_{j+4}, (u0 + u1) + (u2 + u3).
 * AVX-512 VNNI takes two blocks per register (vpdpbusd), AVX2 one
 * (vpmaddubsw + vpmaddwd), the portable kernel loops.
 *
 * Several input rows (a batch step: N > 1): every output is still formed
 * by exactly that arithmetic, so a row's outputs are the same bits alone or
 * beside others, whatever kernel or tile computes them. The AVX2 kernel
 * tiles 2 weight rows x 2 input rows (8 accumulators of its 16 registers):
 * w, |w| and x are loaded once per tile and block instead of once per
 * (row, input), about 13 instructions a (row, input, block) instead of 16
 * for one input row (26 before the tiles). Per pair it still spends sign,
 * vpmaddubsw, vpmaddwd, convert, the scale product, multiply and add: the
 * contract's float work (one convert, multiply and add per block and 8
 * lanes) bounds what batching saves here. VNNI tiles 4 weight rows x 3
 * input rows (q8_tile_vnni): w + 128 as vpdpbusd's unsigned operand, the
 * accumulator starting from -128 * (the quad's sum of x), formed once per
 * input row and block: the exact integer sums of q8_rows_vnni (which takes
 * |w| and x with w's sign; one zmm accumulator per pair holds both halves):
 * 5 vector operations a (pair, two blocks) where q8_rows_vnni spends 11.
 * For N > 1 all tiles go through fy_cpu_q8_blocked (cpu_q8.h): input rows
 * in L2-sized groups, weight rows in L1-sized spans. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_q8.h"

/* Outputs [o0, o1) from the quantized input row (xq, sx). */
typedef void q8_rows_fn(int in, int o0, int o1, const int8_t *xq, const float *sx, const int8_t *q,
                        const float *s, float *y, int accumulate);


static void q8_rows_portable(int in, int o0, int o1, const int8_t *xq, const float *sx, const int8_t *q,
                             const float *s, float *y, int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    for (int o = o0; o < o1; o++) {
        float a[16] = {0};
        for (int b = 0; b < nb; b++) {
            const int8_t *wb = q + (size_t)o * in + b * FY_Q8_BLOCK, *xb = xq + b * FY_Q8_BLOCK;
            const float d = s[(size_t)o * nb + b] * sx[b];
            for (int l = 0; l < 8; l++) {
                int v = 0;
                for (int k = 0; k < 4; k++) v += wb[4 * l + k] * xb[4 * l + k];
                a[(b & 1) * 8 + l] += (float)v * d;
            }
        }
        fy_cpu_put(y, o, fy_cpu_lanes16(a), accumulate);
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define FY_Q8_X86 1

/* One (weight row, input row) pair of a tile at block b into accumulator
 * A: |w| * (x with w's sign) = w * x, summed in pairs (they fit int16:
 * 2 * 127^2; |-128| reads as 128 unsigned) and quads (lane l: products
 * 4l .. 4l+3), then (float)sum * d with d = sw * sx. */
#define Q8_PAIR_AVX2(A, AW, WP, X, DP)                                                                      \
    A = _mm256_add_ps(                                                                                      \
        A, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(                                              \
                             _mm256_maddubs_epi16(AW, _mm256_sign_epi8(X, _mm256_loadu_si256(WP))), ones)), \
                         _mm256_set1_ps(DP)))

/* Block b of the tile into the accumulators of half H (e: even blocks, o:
 * odd): w and |w| loaded once for the C inputs, x once for the R rows.
 * Named accumulators, not an array: GCC kept an array in memory. */
#define Q8_TILE_BLOCK_AVX2(b, H)                                                                    \
    do {                                                                                            \
        const __m256i *w0_ = (const __m256i *)(q + (size_t)o * in + (b) * FY_Q8_BLOCK);             \
        const __m256i *w1_ = (const __m256i *)(q + (size_t)(o + R - 1) * in + (b) * FY_Q8_BLOCK);   \
        const float sw0_ = s[(size_t)o * nb + (b)], sw1_ = s[(size_t)(o + R - 1) * nb + (b)];       \
        const float sx0_ = sr[0][b], sx1_ = sr[C - 1][b];                                           \
        __m256i aw0_ = _mm256_abs_epi8(_mm256_loadu_si256(w0_)), aw1_ = aw0_;                       \
        if (R > 1) aw1_ = _mm256_abs_epi8(_mm256_loadu_si256(w1_));                                 \
        __m256i x_ = _mm256_loadu_si256((const __m256i *)(xr[0] + (b) * FY_Q8_BLOCK));              \
        Q8_PAIR_AVX2(a00##H, aw0_, w0_, x_, sw0_ * sx0_);                                           \
        if (R > 1) Q8_PAIR_AVX2(a10##H, aw1_, w1_, x_, sw1_ * sx0_);                                \
        if (C > 1) {                                                                                \
            x_ = _mm256_loadu_si256((const __m256i *)(xr[1] + (b) * FY_Q8_BLOCK));                  \
            Q8_PAIR_AVX2(a01##H, aw0_, w0_, x_, sw0_ * sx1_);                                       \
            if (R > 1) Q8_PAIR_AVX2(a11##H, aw1_, w1_, x_, sw1_ * sx1_);                            \
        }                                                                                           \
    } while (0)

/* Weight rows o .. o+R-1 against input rows xr[0 .. C-1] (R, C <= 2),
 * accumulators in registers. Instantiated with constant R and C. (Forming
 * each tile's d = sw * sx eight blocks at a time ahead of the loop cost
 * more instructions than the scalar product here: 16-32 blocks a row.)
 * pf: the first pass over these rows, which streams them from memory;
 * prefetching cut small's decode CPU time ~20% at batch 1 and 16. */
__attribute__((target("avx2"), always_inline)) static inline void
q8_tile_avx2(const int R, const int C, int in, int o, const int8_t *const xr[2], const float *const sr[2],
             const int8_t *q, const float *s, float *const yr[2], int accumulate, int pf) {
    const int nb = in / FY_Q8_BLOCK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 a00e = _mm256_setzero_ps(), a00o = a00e, a01e = a00e, a01o = a00e;
    __m256 a10e = a00e, a10o = a00e, a11e = a00e, a11o = a00e;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        if (pf) { /* four row pairs ahead into L1, as q8_rows_vnni */
            uintptr_t ahead = (uintptr_t)(q + (size_t)o * in + b * FY_Q8_BLOCK) + (uintptr_t)8 * in;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + in), _MM_HINT_T0);
        }
        Q8_TILE_BLOCK_AVX2(b, e);
        Q8_TILE_BLOCK_AVX2(b + 1, o);
    }
    if (b < nb) Q8_TILE_BLOCK_AVX2(b, e); /* the last block, in/32 odd */
    if (R == 1) {
        fy_cpu_put(yr[0], o, fy_cpu_hsum256(_mm256_add_ps(a00e, a00o)), accumulate);
        if (C > 1) fy_cpu_put(yr[1], o, fy_cpu_hsum256(_mm256_add_ps(a01e, a01o)), accumulate);
        return;
    }
    __m128 v = fy_cpu_hsum256x4(_mm256_add_ps(a00e, a00o), _mm256_add_ps(a10e, a10o), _mm256_add_ps(a01e, a01o),
                                _mm256_add_ps(a11e, a11o));
    fy_cpu_put2(yr[0], o, v, accumulate);
    if (C > 1) fy_cpu_put2(yr[1], o, _mm_movehl_ps(v, v), accumulate);
}

/* One input row: two weight rows at a time, x loaded once for both (the
 * one-row loop this replaced kept its two accumulators in memory: a
 * store-forwarding chain per block, 22 instructions a block). */
__attribute__((target("avx2"))) static void q8_rows_avx2(int in, int o0, int o1, const int8_t *xq, const float *sx,
                                                         const int8_t *q, const float *s, float *y, int accumulate) {
    const int8_t *const xr[2] = {xq, xq};
    const float *const sr[2] = {sx, sx};
    float *const yr[2] = {y, y};
    int o = o0;
    for (; o + 2 <= o1; o += 2) q8_tile_avx2(2, 1, in, o, xr, sr, q, s, yr, accumulate, 1);
    if (o < o1) q8_tile_avx2(1, 1, in, o, xr, sr, q, s, yr, accumulate, 1);
}

/* 2 x 2 tiles (16 ymm registers: 8 accumulators, w, |w|, x, products),
 * the odd row or input in 2 x 1, 1 x 2, 1 x 1 tiles. */
__attribute__((target("avx2"))) static void q8_tiles_avx2(int in, int o0, int o1, int N,
                                                          const fy_cpu_q8_inputs *xs, const void *qv, const float *s,
                                                          float *y, int ldy, int accumulate) {
    const int8_t *q = qv;
    for (int n = 0; n < N; n += 2) {
        const int C = n + 1 < N ? 2 : 1;
        const int8_t *const xr[2] = {fy_cpu_q8_xq(xs, n), fy_cpu_q8_xq(xs, n + C - 1)};
        const float *const sr[2] = {fy_cpu_q8_sx(xs, n), fy_cpu_q8_sx(xs, n + C - 1)};
        float *const yr[2] = {y + (size_t)n * ldy, y + (size_t)(n + C - 1) * ldy};
        int o = o0;
        for (; o + 2 <= o1; o += 2) { /* the 2 x 2 tile with and without the prefetch, no test per block */
            if (C == 1) q8_tile_avx2(2, 1, in, o, xr, sr, q, s, yr, accumulate, !n);
            else if (n) q8_tile_avx2(2, 2, in, o, xr, sr, q, s, yr, accumulate, 0);
            else q8_tile_avx2(2, 2, in, o, xr, sr, q, s, yr, accumulate, 1);
        }
        if (o < o1) {
            if (C == 2) q8_tile_avx2(1, 2, in, o, xr, sr, q, s, yr, accumulate, !n);
            else q8_tile_avx2(1, 1, in, o, xr, sr, q, s, yr, accumulate, !n);
        }
    }
}

/* One pair of blocks (b, b+1) of row o+R into accumulator A; `last` masks
 * the second block off (in/32 odd). */
#define Q8_PAIR512(A, R)                                                                          \
    do {                                                                                          \
        const int8_t *wb = q + (size_t)(o + (R)) * in + b * FY_Q8_BLOCK;                          \
        const float *sb = s + (size_t)(o + (R)) * nb + b;                                         \
        __m512i w = _mm512_maskz_loadu_epi8(m, wb);                                               \
        __m512i sxw = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), zero, x);                  \
        __m512i iv = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w), sxw);                          \
        __m128 ws = two ? load2f(sb) : _mm_load_ss(sb);                                           \
        __m512 d = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(_mm_mul_ps(ws, xs)));       \
        A = _mm512_add_ps(A, _mm512_mul_ps(_mm512_cvtepi32_ps(iv), d));                           \
    } while (0)

/* Two float scales into the low half of a vector. The scale rows are only
 * float-aligned, so this goes through memcpy (a plain vmovq) rather than a
 * cast to double *, which UBSan rightly calls a misaligned load. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static __m128 load2f(const float *p) {
    double t;
    memcpy(&t, p, sizeof t);
    return _mm_castpd_ps(_mm_set_sd(t));
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static float hsum512(__m512 a) {
    __m256 lo = _mm512_castps512_ps256(a);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return fy_cpu_hsum256(_mm256_add_ps(lo, hi));
}

/* Two rows at a time: two independent add chains, x loaded once for both. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
q8_rows_vnni(int in, int o0, int o1, const int8_t *xq, const float *sx, const int8_t *q, const float *s,
             float *y, int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    int o = o0;
    for (; o + 2 <= o1; o += 2) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        for (int b = 0; b < nb; b += 2) {
            const int two = b + 1 < nb;
            const __mmask64 m = two ? ~(__mmask64)0 : (__mmask64)0xffffffffu;
            __m512i x = _mm512_maskz_loadu_epi8(m, xq + b * FY_Q8_BLOCK);
            __m128 xs = two ? load2f(sx + b) : _mm_load_ss(sx + b);
            /* Rows four pairs ahead into L1: the loads of w stalled
             * (decode streams the weights from L3; 970 -> 1030 tok/s).
             * Integer arithmetic: the address may lie past the matrix, where
             * a prefetch is harmless but forming the pointer would not be. */
            uintptr_t ahead = (uintptr_t)(q + (size_t)o * in + b * FY_Q8_BLOCK) + (uintptr_t)8 * in;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + in), _MM_HINT_T0);
            Q8_PAIR512(a0, 0);
            Q8_PAIR512(a1, 1);
        }
        fy_cpu_put(y, o, hsum512(a0), accumulate);
        fy_cpu_put(y, o + 1, hsum512(a1), accumulate);
    }
    if (o < o1) q8_rows_avx2(in, o, o1, xq, sx, q, s, y, accumulate);
}

/* One block step (b, and b + 1 when TWO) of weight row o+r in a VNNI tile:
 * w loaded once, made unsigned (w ^ 0x80 = w + 128, 0 .. 255) and its scales
 * spread [sw_b x 8 | sw_b+1 x 8] once, for the C input rows. */
#define Q8V_ROW(r, TWO)                                                                                 \
    do {                                                                                                \
        const int8_t *wb_ = q + (size_t)(o + (r)) * in + b * FY_Q8_BLOCK;                               \
        const float *sb_ = s + (size_t)(o + (r)) * nb + b;                                              \
        __m512i w_ = TWO ? _mm512_loadu_si512(wb_) : _mm512_maskz_loadu_epi8(0xffffffffu, wb_);         \
        __m512i wu_ = _mm512_xor_si512(w_, c128);                                                       \
        __m512 sw_ = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(TWO ? load2f(sb_) : _mm_load_ss(sb_))); \
        Q8V_PAIR(a##r##0, wu_, sw_, 0);                                                                 \
        if (C > 1) Q8V_PAIR(a##r##1, wu_, sw_, 1);                                                      \
        if (C > 2) Q8V_PAIR(a##r##2, wu_, sw_, 2);                                                      \
        if (C > 3) Q8V_PAIR(a##r##3, wu_, sw_, 3);                                                      \
    } while (0)
/* sum (w + 128) x - 128 sum x = sum w x per quad, exact (vpdpbusd from
 * the input's -128 sum x), times sw * sx, added: q8_rows_vnni's integers
 * and float order. */
#define Q8V_PAIR(A, WU, SW, c) (A = fy_cpu_vnni_step(A, nx##c, WU, x##c, SW, xs##c))
/* Input row c at the step: its bytes, -128 * (each quad's sum), scales
 * [sx_b x 8 | sx_b+1 x 8]. */
#define Q8V_X(c, TWO)                                                                                   \
    do {                                                                                                \
        if (C > (c)) {                                                                                  \
            x##c = TWO ? _mm512_loadu_si512(xr[c] + b * FY_Q8_BLOCK)                                    \
                       : _mm512_maskz_loadu_epi8(0xffffffffu, xr[c] + b * FY_Q8_BLOCK);                 \
            nx##c = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c128, x##c));                      \
            xs##c = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(TWO ? load2f(sr[c] + b)          \
                                                                           : _mm_load_ss(sr[c] + b)));  \
        }                                                                                               \
    } while (0)
#define Q8V_STEP(TWO)                                                                                   \
    do {                                                                                                \
        Q8V_X(0, TWO);                                                                                  \
        Q8V_X(1, TWO);                                                                                  \
        Q8V_X(2, TWO);                                                                                  \
        Q8V_X(3, TWO);                                                                                  \
        Q8V_ROW(0, TWO);                                                                                \
        if (R > 1) Q8V_ROW(1, TWO);                                                                     \
        if (R > 2) Q8V_ROW(2, TWO);                                                                     \
        if (R > 3) Q8V_ROW(3, TWO);                                                                     \
    } while (0)
#define Q8V_PUT(r, c)                                                                                   \
    do {                                                                                                \
        if (R > (r) && C > (c)) fy_cpu_put(yr[c], o + (r), hsum512(a##r##c), accumulate);               \
    } while (0)

/* Weight rows o .. o+R-1 against input rows xr[0 .. C-1] (R, C <= 4) with
 * VNNI, each (row, input) pair one zmm accumulator holding both halves
 * (lanes 0 .. 7: even blocks, 8 .. 15: odd), exactly as q8_rows_vnni's
 * per row: w, its sign and |w| are formed once per tile instead of once
 * per input row. Named accumulators (GCC kept an array in memory), constant
 * R and C. pf: the first input rows of a group, which meet these weight
 * rows first: the rows eight ahead are prefetched into L1. */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
q8_tile_vnni(const int R, const int C, int in, int o, const int8_t *const xr[4], const float *const sr[4],
             const int8_t *q, const float *s, float *const yr[4], int accumulate, int pf) {
    const int nb = in / FY_Q8_BLOCK;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    __m512i x0 = zero, x1 = zero, x2 = zero, x3 = zero, nx0 = zero, nx1 = zero, nx2 = zero, nx3 = zero;
    __m512 xs0 = _mm512_setzero_ps(), xs1 = xs0, xs2 = xs0, xs3 = xs0;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        if (pf) { /* integer arithmetic: the address may lie past the matrix */
            uintptr_t ahead = (uintptr_t)(q + (size_t)o * in + b * FY_Q8_BLOCK) + (uintptr_t)8 * in;
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)(ahead + (uintptr_t)r * in), _MM_HINT_T0);
        }
        Q8V_STEP(1);
    }
    if (b < nb) Q8V_STEP(0); /* the last block, in/32 odd: the odd half adds +0, as in q8_rows_vnni */
    Q8V_PUT(0, 0);
    Q8V_PUT(0, 1);
    Q8V_PUT(0, 2);
    Q8V_PUT(0, 3);
    Q8V_PUT(1, 0);
    Q8V_PUT(1, 1);
    Q8V_PUT(1, 2);
    Q8V_PUT(1, 3);
    Q8V_PUT(2, 0);
    Q8V_PUT(2, 1);
    Q8V_PUT(2, 2);
    Q8V_PUT(2, 3);
    Q8V_PUT(3, 0);
    Q8V_PUT(3, 1);
    Q8V_PUT(3, 2);
    Q8V_PUT(3, 3);
}

/* Q8V_TC input rows a tile (Q8V_TR weight rows): the remainders in
 * smaller tiles. 4 x 3 (12 accumulators; N=512, in=2048, one thread:
 * ~100 GFLOP/s) over 4 x 2 (~85) and 4 x 4 or 2 x 4 (~88, ~77). */
#define Q8V_TR 4
#define Q8V_TC 3
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
q8_tiles_vnni(int in, int o0, int o1, int N, const fy_cpu_q8_inputs *xs, const void *qv, const float *s, float *y,
              int ldy, int accumulate) {
    const int8_t *q = qv;
    for (int n = 0; n < N; n += Q8V_TC) {
        const int C = N - n < Q8V_TC ? N - n : Q8V_TC;
        const int8_t *xr[8]; /* [c .. c+3] valid for every c < C */
        const float *sr[8];
        float *yr[8];
        for (int c = 0; c < 8; c++) {
            const int m = n + (c < C ? c : C - 1);
            xr[c] = fy_cpu_q8_xq(xs, m), sr[c] = fy_cpu_q8_sx(xs, m), yr[c] = y + (size_t)m * ldy;
        }
        const int pf = !n;
        int o = o0;
        for (; o + Q8V_TR <= o1; o += Q8V_TR) {
            if (C == Q8V_TC && pf) q8_tile_vnni(Q8V_TR, Q8V_TC, in, o, xr, sr, q, s, yr, accumulate, 1);
            else if (C == Q8V_TC) q8_tile_vnni(Q8V_TR, Q8V_TC, in, o, xr, sr, q, s, yr, accumulate, 0);
            else
                for (int c = 0; c < C; c++) /* the last input rows, fewer than a tile's */
                    q8_tile_vnni(Q8V_TR, 1, in, o, xr + c, sr + c, q, s, yr + c, accumulate, pf);
        }
        for (; o < o1; o++) /* the last rows of a span, fewer than a tile's */
            for (int c = 0; c < C; c++) q8_tile_vnni(1, 1, in, o, xr + c, sr + c, q, s, yr + c, accumulate, pf);
    }
}

/* q8_quantize_row512 for AVX2 (the same bits by the same argument): 8
 * floats a vector, the maximum reduced in registers, the int32 -> int8
 * narrowing by two saturating packs (exact: |v| <= 127) and one permute to
 * undo their 128-bit interleave. */
__attribute__((target("avx2"))) static void q8_quantize_row256(const float *x, int in, int8_t *q, float *s) {
    const __m256 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
    const __m256 big = _mm256_set1_ps(12582912.0f), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < in / FY_Q8_BLOCK; b++) {
        const float *xb = x + (size_t)b * FY_Q8_BLOCK;
        __m256 v[4], m = zero;
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m); /* NaN |x| leaves m, as in the 512 one */
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        s[b] = d;
        __m256 vid = _mm256_set1_ps(id);
        __m256i r[4];
        for (int i = 0; i < 4; i++) {
            __m256 t = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[i], vid), big), big);
            r[i] = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(t, hi), lo));
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        _mm256_storeu_si256((__m256i *)(q + (size_t)b * FY_Q8_BLOCK), _mm256_permutevar8x32_epi32(p, order));
    }
}

/* fy_q8_quantize of one row, 32 floats a step; the same bits (IEEE max,
 * multiply, add and subtract in the same order; NaN lanes are dropped from
 * the maximum as the scalar comparison drops them). Once per linear on the
 * critical path of decode: the scalar loop was 5% of a token. */
__attribute__((target("avx512f"))) static void q8_quantize_row512(const float *x, int in, int8_t *q, float *s) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 big = _mm512_set1_ps(12582912.0f), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    for (int b = 0; b < in / FY_Q8_BLOCK; b++) {
        const float *xb = x + (size_t)b * FY_Q8_BLOCK;
        __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        /* max(a, b) returns b when either is NaN: NaN |x| leaves the running maximum */
        __m512 m = _mm512_max_ps(_mm512_abs_ps(v1), _mm512_max_ps(_mm512_abs_ps(v0), zero));
        float amax = _mm512_reduce_max_ps(m);
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        s[b] = d;
        __m512 vid = _mm512_set1_ps(id);
        __m512 r0 = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v0, vid), big), big);
        __m512 r1 = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v1, vid), big), big);
        r0 = _mm512_max_ps(_mm512_min_ps(r0, hi), lo);
        r1 = _mm512_max_ps(_mm512_min_ps(r1, hi), lo);
        _mm_storeu_si128((__m128i *)(q + (size_t)b * FY_Q8_BLOCK), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r0)));
        _mm_storeu_si128((__m128i *)(q + (size_t)b * FY_Q8_BLOCK + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r1)));
    }
}
#endif

/* The best kernel this CPU runs; fy_backend_opts.cpu_q8 (FY_CPU_Q8_*) picks
 * a lesser one (tests check that all give the same bits). portable also
 * takes the scalar input quantizer. */
static q8_rows_fn *q8_rows_best(fy_backend *be) {
    const int want = ((fy_cpu_impl *)be->impl)->q8_kernel;
    if (want == FY_CPU_Q8_PORTABLE) return q8_rows_portable;
#ifdef FY_Q8_X86
    if (want == FY_CPU_Q8_AVX2 && __builtin_cpu_supports("avx2")) return q8_rows_avx2;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) return q8_rows_vnni;
    if (__builtin_cpu_supports("avx2")) return q8_rows_avx2;
#endif
    return q8_rows_portable;
}

/* The tiled kernel that gives `rows`' bits for N > 1 input rows, or NULL
 * (then each input row goes through `rows`). */
static fy_cpu_q8_tiles_fn *q8_tiles_for(q8_rows_fn *rows) {
#ifdef FY_Q8_X86
    if (rows == q8_rows_avx2) return q8_tiles_avx2;
    if (rows == q8_rows_vnni) return q8_tiles_vnni;
#endif
    (void)rows;
    return NULL;
}

fy_cpu_q8_tiles_fn *fy_cpu_q8_tiles_vnni(void) {
#ifdef FY_Q8_X86
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) return q8_tiles_vnni;
#endif
    return NULL;
}

void fy_cpu_q8_quantize_row(int portable, const float *x, int in, int8_t *xq, float *sx) {
#ifdef FY_Q8_X86
    if (!portable && __builtin_cpu_supports("avx512f")) {
        q8_quantize_row512(x, in, xq, sx);
        return;
    }
    if (!portable && __builtin_cpu_supports("avx2")) {
        q8_quantize_row256(x, in, xq, sx);
        return;
    }
#endif
    (void)portable;
    fy_q8_quantize(x, 1, in, in, xq, sx);
}

/* The input quantizer that goes with `rows`: the AVX-512 or AVX2 one
 * unless the portable kernel was asked for (same bits every way). */
static void quantize_row(q8_rows_fn *rows, const float *x, int in, int8_t *xq, float *sx) {
    fy_cpu_q8_quantize_row(rows == q8_rows_portable, x, in, xq, sx);
}

#define Q8_CHUNK FY_CPU_Q8_CHUNK
static int n_chunks(int out) { return (out + Q8_CHUNK - 1) / Q8_CHUNK; }
static void chunk_rows(q8_rows_fn *rows, int c, int in, int out, const int8_t *xq, const float *sx,
                       const int8_t *q, const float *s, float *y, int accumulate) {
    int o0 = c * Q8_CHUNK, o1 = o0 + Q8_CHUNK < out ? o0 + Q8_CHUNK : out;
    rows(in, o0, o1, xq, sx, q, s, y, accumulate);
}

void fy_cpu_q8_blocked(fy_cpu_q8_tiles_fn *tiles, int N, int in, int out, size_t wrow, const fy_cpu_q8_inputs *xs,
                       const void *q, const float *s, float *y, int ldy, int accumulate) {
    const int chunks = (out + Q8_CHUNK - 1) / Q8_CHUNK;
    const int group = fy_cpu_q8_group(xs->per * sizeof(float));
    int span = (int)(FY_CPU_Q8_WSPAN / (wrow * Q8_CHUNK)); /* chunks a span */
    if (span < 1) span = 1;
#pragma omp parallel if ((size_t)out * in * N >= FY_CPU_Q8_PAR_MIN)
    {
        int c0, c1;
        fy_cpu_q8_share(chunks, omp_get_thread_num(), omp_get_num_threads(), &c0, &c1);
        for (int g = 0; g < N; g += group) {
            const fy_cpu_q8_inputs xg = {xs->x + xs->per * g, xs->per, xs->in};
            const int gn = N - g < group ? N - g : group;
            for (int c = c0; c < c1; c += span) {
                const int o0 = c * Q8_CHUNK, e = c + span < c1 ? c + span : c1;
                const int o1 = e * Q8_CHUNK < out ? e * Q8_CHUNK : out;
                tiles(in, o0, o1, gn, &xg, q, s, y + (size_t)g * ldy, ldy, accumulate);
            }
        }
    }
}

/* All N input rows are quantized first, then the tiled kernel meets them
 * in cache-sized groups and spans (fy_cpu_q8_blocked), or, without tiles,
 * each chunk of W's rows meets every row while it is in cache (W streams
 * from memory once, not N times); row n's outputs are the same bits as a
 * call with that row alone. */
void fy_cpu_linear_q8(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq,
                      fy_ref ws, fy_ref y, int ldy, int accumulate) {
    const char *op = "linear_q8";
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x");
    const int8_t *qp = (const int8_t *)fy_cpu_f(be, wq, (size_t)out * (in / 4), op, "wq");
    const float *sp = fy_cpu_f(be, ws, (size_t)out * (in / FY_Q8_BLOCK), op, "ws");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    /* each quantized input row: in bytes, then in/32 scales */
    const size_t per = (size_t)in / 4 + in / FY_Q8_BLOCK;
    float *scr = fy_cpu_scratch(be, per * N, op);
    if (!xp || !qp || !sp || !yp || !scr) return;
    q8_rows_fn *rows = q8_rows_best(be);
    for (int n = 0; n < N; n++)
        quantize_row(rows, xp + (size_t)n * ldx, in, (int8_t *)(scr + per * n), scr + per * n + in / 4);
    fy_cpu_q8_tiles_fn *tiles = N > 1 ? q8_tiles_for(rows) : NULL;
    const fy_cpu_q8_inputs xs = {scr, per, in};
    if (tiles) {
        fy_cpu_q8_blocked(tiles, N, in, out, (size_t)in + (size_t)in / FY_Q8_BLOCK * sizeof(float), &xs, qp, sp, yp,
                          ldy, accumulate);
        return;
    }
    const int chunks = n_chunks(out);
#pragma omp parallel for schedule(static) if ((size_t)out * in * N >= FY_CPU_Q8_PAR_MIN)
    for (int c = 0; c < chunks; c++)
        for (int n = 0; n < N; n++)
            chunk_rows(rows, c, in, out, fy_cpu_q8_xq(&xs, n), fy_cpu_q8_sx(&xs, n), qp, sp, yp + (size_t)n * ldy,
                       accumulate);
}

/* One parallel region: gate and up rows split over the threads, then one
 * thread forms h (the whole row, as swiglu_fwd does) and quantizes it, then
 * the down rows split again. */
void fy_cpu_swiglu_q8(fy_backend *be, int d, int F, fy_ref x, fy_ref gq, fy_ref gs, fy_ref uq, fy_ref us,
                      fy_ref dq, fy_ref ds, fy_ref g, fy_ref u, fy_ref h, fy_ref y, int accumulate) {
    const char *op = "swiglu_q8";
    const size_t nw = (size_t)F * d;
    const float *xp = fy_cpu_f(be, x, d, op, "x");
    const int8_t *gqp = (const int8_t *)fy_cpu_f(be, gq, nw / 4, op, "gq");
    const int8_t *uqp = (const int8_t *)fy_cpu_f(be, uq, nw / 4, op, "uq");
    const int8_t *dqp = (const int8_t *)fy_cpu_f(be, dq, nw / 4, op, "dq");
    const float *gsp = fy_cpu_f(be, gs, nw / FY_Q8_BLOCK, op, "gs");
    const float *usp = fy_cpu_f(be, us, nw / FY_Q8_BLOCK, op, "us");
    const float *dsp = fy_cpu_f(be, ds, nw / FY_Q8_BLOCK, op, "ds");
    float *gp = fy_cpu_f(be, g, F, op, "g"), *up = fy_cpu_f(be, u, F, op, "u");
    float *hp = fy_cpu_f(be, h, F, op, "h"), *yp = fy_cpu_f(be, y, d, op, "y");
    /* x quantized (d bytes, d/32 scales), then h (F bytes, F/32 scales) */
    float *scr = fy_cpu_scratch(be, (size_t)d / 4 + d / FY_Q8_BLOCK + F / 4 + F / FY_Q8_BLOCK, op);
    if (!xp || !gqp || !uqp || !dqp || !gsp || !usp || !dsp || !gp || !up || !hp || !yp || !scr) return;
    int8_t *xq = (int8_t *)scr, *hq = (int8_t *)(scr + d / 4 + d / FY_Q8_BLOCK);
    float *sx = scr + d / 4, *sh = scr + d / 4 + d / FY_Q8_BLOCK + F / 4;
    q8_rows_fn *rows = q8_rows_best(be);
    quantize_row(rows, xp, d, xq, sx);
    const int cf = n_chunks(F), cd = n_chunks(d);
#pragma omp parallel if (nw >= 65536)
    {
#pragma omp for schedule(static)
        for (int c = 0; c < cf; c++) {
            chunk_rows(rows, c, d, F, xq, sx, gqp, gsp, gp, 0);
            chunk_rows(rows, c, d, F, xq, sx, uqp, usp, up, 0);
        }
#pragma omp single
        {
            fy_cpu_swiglu_row(gp, up, hp, F);
            quantize_row(rows, hp, F, hq, sh);
        }
#pragma omp for schedule(static)
        for (int c = 0; c < cd; c++) chunk_rows(rows, c, F, d, hq, sh, dqp, dsp, yp, accumulate);
    }
}
