/* Q4_0 inference weights on the CPU (backend.h linear_q4): llama.cpp's
 * Q4_0 x Q8_0. The input row is quantized as for linear_q8 and each block's
 * dot product is exact in integers, combined in linear_q8's order (lane l
 * of accumulator half b & 1 adds the integer sum of products 4l .. 4l+3
 * times sw_b * sx_b; the 16 lanes reduce in cpu_q8.h's fixed tree), so
 * a Q4_0 matrix gives the bits of linear_q8 on its codes minus 8, whatever
 * kernel runs. Half the bytes of Q8_0 stream per token.
 *
 * AVX2 takes two blocks (b even, b + 1) a step. Their 32 bytes hold the
 * low nibbles (weights 0 .. 15) and high nibbles (16 .. 31) of both, so
 * one load, one shift and two ands give two registers of codes n (0 .. 15):
 * L = [b's weights 0 .. 15 | b+1's 0 .. 15], H = [b's 16 .. 31 | b+1's
 * 16 .. 31]. The input row is laid out the same way once per call (q4_prep:
 * its bytes permuted within each pair of blocks), so L and H meet it
 * without a shuffle. vpmaddubsw takes n as its unsigned operand as it is
 * (n x + n' x' fits int16), vpmaddwd sums the quads, and 8 * (the quad's
 * sum of x), also formed by q4_prep, is subtracted: the exact sum of
 * (n - 8) x. The int32 lanes of L's products are then lanes 0 .. 3 of
 * blocks b and b + 1, H's lanes 4 .. 7: accumulator AL holds [even 0 .. 3 |
 * odd 0 .. 3], AH [even 4 .. 7 | odd 4 .. 7], each lane adding the same
 * products in the same order as linear_q8's even and odd halves, which two
 * permutes recover at the end. Tiles as cpu_quant.c's AVX2 kernel: 2
 * weight rows x 1 input row for decode, 2 x 2 for N > 1.
 *
 * From Q4_UNPACK_ROWS input rows on a VNNI CPU (prefill), the codes are
 * unpacked to int8 once per span of weight rows and linear_q8's VNNI
 * tiles run on them (q4_as_q8, below). For fewer rows (a serve step's
 * handful) AVX-512 VNNI (FY_CPU_Q8_BEST, N > 1) tiles 4 weight rows x 3
 * input rows: L and H side by side in one zmm meet q4_prep's 64 bytes as
 * they are, vpdpbusd takes n as its unsigned operand (exact quad sums,
 * from the negated offsets), and one accumulator per pair holds AL and AH:
 * the same integers, products and additions, so the same bits. Decode
 * (N = 1) stays on the AVX2 tiles: 4 x 1 VNNI tiles were at most ~10 %
 * faster there, within a shared machine's noise (2026-12-06). Both go
 * through fy_cpu_q8_blocked (cpu_q8.h): input rows in L2-sized groups,
 * weight rows in L1-sized spans. */
#include <omp.h>
#include <stdint.h>

#include "backend/cpu/cpu_q8.h"

#define Q4_BYTES (FY_Q8_BLOCK / 2) /* bytes of one block's codes */

static void q4_rows_portable(int in, int o0, int o1, const int8_t *xq, const float *sx, const uint8_t *q,
                             const float *s, float *y, int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    for (int o = o0; o < o1; o++) {
        float a[16] = {0};
        for (int b = 0; b < nb; b++) {
            const uint8_t *qb = q + ((size_t)o * nb + b) * Q4_BYTES;
            const int8_t *xb = xq + b * FY_Q8_BLOCK;
            int8_t wb[FY_Q8_BLOCK];
            for (int j = 0; j < Q4_BYTES; j++) {
                wb[j] = (int8_t)((qb[j] & 15) - 8);
                wb[j + Q4_BYTES] = (int8_t)((qb[j] >> 4) - 8);
            }
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
#define FY_Q4_X86 1

/* Floats of one input row in the scratch: the bytes (in/4), the scales
 * (in/32), then for AVX2 the offsets (in/4 int32) and the pairs' scales
 * (in/8: [sx_b x 4 | sx_b+1 x 4] per pair). */
static size_t q4_per(int in) { return (size_t)in / 4 + in / FY_Q8_BLOCK + in / 4 + in / 8; }
static const int32_t *q4_off(const fy_cpu_q8_inputs *xs, int n) {
    return (const int32_t *)(fy_cpu_q8_sx(xs, n) + xs->in / FY_Q8_BLOCK);
}
static const float *q4_sx8(const fy_cpu_q8_inputs *xs, int n) {
    return fy_cpu_q8_sx(xs, n) + xs->in / FY_Q8_BLOCK + xs->in / 4;
}

/* Input row x quantized (fy_cpu_q8_quantize_row) into xq, sx, then each
 * pair of blocks' bytes permuted to [b 0..15 | b+1 0..15 | b 16..31 | b+1
 * 16..31] (a last odd block stays as it is), the offsets 8 * (sum of each
 * quad) in that order, and the pairs' scales. */
__attribute__((target("avx2"))) static void q4_prep(const float *x, int in, int8_t *xq, float *sx, int32_t *off,
                                                    float *sx8) {
    const __m256i ones = _mm256_set1_epi16(1), eight = _mm256_set1_epi8(8);
    const int nb = in / FY_Q8_BLOCK;
    fy_cpu_q8_quantize_row(0, x, in, xq, sx);
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(xq + b * FY_Q8_BLOCK));
        __m256i v = _mm256_loadu_si256((const __m256i *)(xq + b * FY_Q8_BLOCK + 32));
        __m256i lo = _mm256_permute2x128_si256(u, v, 0x20), hi = _mm256_permute2x128_si256(u, v, 0x31);
        _mm256_storeu_si256((__m256i *)(xq + b * FY_Q8_BLOCK), lo);
        _mm256_storeu_si256((__m256i *)(xq + b * FY_Q8_BLOCK + 32), hi);
        _mm256_storeu_si256((__m256i *)(off + b * 8), _mm256_madd_epi16(_mm256_maddubs_epi16(eight, lo), ones));
        _mm256_storeu_si256((__m256i *)(off + b * 8 + 8), _mm256_madd_epi16(_mm256_maddubs_epi16(eight, hi), ones));
        _mm256_storeu_ps(sx8 + b * 4, _mm256_set_m128(_mm_set1_ps(sx[b + 1]), _mm_set1_ps(sx[b])));
    }
    if (b < nb) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(xq + b * FY_Q8_BLOCK));
        _mm256_storeu_si256((__m256i *)(off + b * 8), _mm256_madd_epi16(_mm256_maddubs_epi16(eight, u), ones));
    }
}

/* [p[0] x 4 | p[1] x 4] (memcpy: the scale rows are only float-aligned). */
__attribute__((target("avx2"), always_inline)) static inline __m256 q4_scales2(const float *p, __m256i sel) {
    double t;
    memcpy(&t, p, sizeof t);
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_set_sd(t))), sel);
}

/* One (weight row, input row) pair of a tile at a pair of blocks: codes NL,
 * NH against the prepared bytes at XP, less the offsets at FP, times D
 * (sw * sx per block) into AL, AH. */
#define Q4_PAIR_AVX2(AL, AH, NL, NH, XP, FP, D)                                                               \
    do {                                                                                                     \
        __m256i pl_ = _mm256_madd_epi16(_mm256_maddubs_epi16(NL, _mm256_loadu_si256((const __m256i *)(XP))), \
                                        ones);                                                               \
        __m256i ph_ = _mm256_madd_epi16(                                                                     \
            _mm256_maddubs_epi16(NH, _mm256_loadu_si256((const __m256i *)((XP) + 32))), ones);             \
        pl_ = _mm256_sub_epi32(pl_, _mm256_loadu_si256((const __m256i *)(FP)));                             \
        ph_ = _mm256_sub_epi32(ph_, _mm256_loadu_si256((const __m256i *)((FP) + 8)));                       \
        AL = _mm256_add_ps(AL, _mm256_mul_ps(_mm256_cvtepi32_ps(pl_), D));                                   \
        AH = _mm256_add_ps(AH, _mm256_mul_ps(_mm256_cvtepi32_ps(ph_), D));                                   \
    } while (0)

/* The codes of weight row r's blocks b, b + 1: NL, NH as above. */
#define Q4_CODES2_AVX2(NL, NH, r)                                                                \
    do {                                                                                         \
        __m256i v_ = _mm256_loadu_si256((const __m256i *)(q + ((size_t)(r) * nb + b) * Q4_BYTES)); \
        NL = _mm256_and_si256(v_, low4);                                                         \
        NH = _mm256_and_si256(_mm256_srli_epi16(v_, 4), low4);                                   \
    } while (0)

/* e plus a last odd block's products (in/32 odd; it belongs to the even
 * half): codes at qb against the input's bytes xq (as quantized: a lone
 * block is not permuted), less the offsets at off, times d = sw * sx. */
__attribute__((target("avx2"), always_inline)) static inline __m256 q4_tail(__m256 e, const uint8_t *qb, float d,
                                                                           const int8_t *xq, const int32_t *off) {
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(15);
    __m128i t = _mm_loadu_si128((const __m128i *)qb);
    __m256i n = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), low4);
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(n, _mm256_loadu_si256((const __m256i *)xq)), ones);
    p = _mm256_sub_epi32(p, _mm256_loadu_si256((const __m256i *)off));
    return _mm256_add_ps(e, _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d)));
}

/* The even half (lanes 0 .. 3 of AL and of AH) and the odd half (lanes 4
 * .. 7 of each) of a (row, input) pair. */
#define Q4_EVEN(AL, AH) _mm256_permute2f128_ps(AL, AH, 0x20)
#define Q4_ODD(AL, AH) _mm256_permute2f128_ps(AL, AH, 0x31)

/* Weight rows o .. o+R-1 against prepared input rows n0, n0+C-1 (R, C <=
 * 2), accumulators in registers (named: GCC kept an array in memory);
 * instantiated with constant R and C. pf: the first pass over these rows,
 * which streams them from memory: the rows eight ahead are prefetched into
 * L1 (as cpu_quant.c's kernels). */
__attribute__((target("avx2"), always_inline)) static inline void
q4_tile_avx2(const int R, const int C, int in, int o, const fy_cpu_q8_inputs *xs, int n0, const uint8_t *q,
             const float *s, float *y, int ldy, int accumulate, int pf) {
    const int nb = in / FY_Q8_BLOCK, n1 = n0 + C - 1;
    const size_t row = (size_t)in / 2; /* bytes of a weight row */
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(15);
    const __m256i sel = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const int8_t *x0 = fy_cpu_q8_xq(xs, n0), *x1 = fy_cpu_q8_xq(xs, n1);
    const int32_t *f0 = q4_off(xs, n0), *f1 = q4_off(xs, n1);
    const float *c0 = q4_sx8(xs, n0), *c1 = q4_sx8(xs, n1);
    __m256 a00l = _mm256_setzero_ps(), a00h = a00l, a01l = a00l, a01h = a00l;
    __m256 a10l = a00l, a10h = a00l, a11l = a00l, a11h = a00l;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        if (pf) { /* integer arithmetic: the address may lie past the matrix */
            uintptr_t ahead = (uintptr_t)(q + (size_t)o * row + (size_t)b * Q4_BYTES) + (uintptr_t)8 * row;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + row), _MM_HINT_T0);
        }
        __m256i n0l, n0h, n1l = ones, n1h = ones;
        Q4_CODES2_AVX2(n0l, n0h, o);
        __m256 sw0 = q4_scales2(s + (size_t)o * nb + b, sel), sw1 = sw0;
        if (R > 1) {
            Q4_CODES2_AVX2(n1l, n1h, o + 1);
            sw1 = q4_scales2(s + (size_t)(o + 1) * nb + b, sel);
        }
        __m256 sx = _mm256_loadu_ps(c0 + b * 4);
        Q4_PAIR_AVX2(a00l, a00h, n0l, n0h, x0 + b * FY_Q8_BLOCK, f0 + b * 8, _mm256_mul_ps(sw0, sx));
        if (R > 1) Q4_PAIR_AVX2(a10l, a10h, n1l, n1h, x0 + b * FY_Q8_BLOCK, f0 + b * 8, _mm256_mul_ps(sw1, sx));
        if (C > 1) {
            sx = _mm256_loadu_ps(c1 + b * 4);
            Q4_PAIR_AVX2(a01l, a01h, n0l, n0h, x1 + b * FY_Q8_BLOCK, f1 + b * 8, _mm256_mul_ps(sw0, sx));
            if (R > 1)
                Q4_PAIR_AVX2(a11l, a11h, n1l, n1h, x1 + b * FY_Q8_BLOCK, f1 + b * 8, _mm256_mul_ps(sw1, sx));
        }
    }
    __m256 e00 = Q4_EVEN(a00l, a00h), e10 = Q4_EVEN(a10l, a10h), e01 = Q4_EVEN(a01l, a01h), e11 = Q4_EVEN(a11l, a11h);
    if (b < nb) {
        const uint8_t *q0 = q + ((size_t)o * nb + b) * Q4_BYTES, *q1 = q + ((size_t)(o + R - 1) * nb + b) * Q4_BYTES;
        const float sw0 = s[(size_t)o * nb + b], sw1 = s[(size_t)(o + R - 1) * nb + b];
        const float sx0 = fy_cpu_q8_sx(xs, n0)[b], sx1 = fy_cpu_q8_sx(xs, n1)[b];
        e00 = q4_tail(e00, q0, sw0 * sx0, x0 + b * FY_Q8_BLOCK, f0 + b * 8);
        if (R > 1) e10 = q4_tail(e10, q1, sw1 * sx0, x0 + b * FY_Q8_BLOCK, f0 + b * 8);
        if (C > 1) {
            e01 = q4_tail(e01, q0, sw0 * sx1, x1 + b * FY_Q8_BLOCK, f1 + b * 8);
            if (R > 1) e11 = q4_tail(e11, q1, sw1 * sx1, x1 + b * FY_Q8_BLOCK, f1 + b * 8);
        }
    }
    float *y0 = y + (size_t)n0 * ldy, *y1 = y + (size_t)n1 * ldy;
    __m256 t00 = _mm256_add_ps(e00, Q4_ODD(a00l, a00h));
    if (R == 1) {
        fy_cpu_put(y0, o, fy_cpu_hsum256(t00), accumulate);
        if (C > 1) fy_cpu_put(y1, o, fy_cpu_hsum256(_mm256_add_ps(e01, Q4_ODD(a01l, a01h))), accumulate);
        return;
    }
    __m256 t10 = _mm256_add_ps(e10, Q4_ODD(a10l, a10h)), t01 = t00, t11 = t10;
    if (C > 1) t01 = _mm256_add_ps(e01, Q4_ODD(a01l, a01h)), t11 = _mm256_add_ps(e11, Q4_ODD(a11l, a11h));
    __m128 v = fy_cpu_hsum256x4(t00, t10, t01, t11);
    fy_cpu_put2(y0, o, v, accumulate);
    if (C > 1) fy_cpu_put2(y1, o, _mm_movehl_ps(v, v), accumulate);
}

/* Outputs [o0, o1) of every prepared input row: 2 x 2 tiles, the odd row
 * or input in 2 x 1, 1 x 2, 1 x 1 tiles (decode: 2 x 1). */
__attribute__((target("avx2"))) static void q4_tiles_avx2(int in, int o0, int o1, int N, const fy_cpu_q8_inputs *xs,
                                                          const void *qv, const float *s, float *y, int ldy,
                                                          int accumulate) {
    const uint8_t *q = qv;
    for (int n = 0; n < N; n += 2) {
        const int C = n + 1 < N ? 2 : 1;
        int o = o0;
        for (; o + 2 <= o1; o += 2) { /* with and without the prefetch, no test per block */
            if (C == 1) q4_tile_avx2(2, 1, in, o, xs, n, q, s, y, ldy, accumulate, !n);
            else if (n) q4_tile_avx2(2, 2, in, o, xs, n, q, s, y, ldy, accumulate, 0);
            else q4_tile_avx2(2, 2, in, o, xs, n, q, s, y, ldy, accumulate, 1);
        }
        if (o < o1) {
            if (C == 2) q4_tile_avx2(1, 2, in, o, xs, n, q, s, y, ldy, accumulate, !n);
            else q4_tile_avx2(1, 1, in, o, xs, n, q, s, y, ldy, accumulate, !n);
        }
    }
}

/* One weight row r of a VNNI tile at the pair of blocks (b, b + 1): the
 * 32 code bytes split into the 64 codes [b 0..15 | b+1 0..15 | b 16..31 |
 * b+1 16..31] (q4_prep's order of the input bytes), its scales
 * [sw_b x 4 | sw_b+1 x 4] twice; then each input row c's pair. */
#define Q4V_ROW(r)                                                                                      \
    do {                                                                                                \
        __m256i v_ = _mm256_loadu_si256((const __m256i *)(q + ((size_t)(o + (r)) * nb + b) * Q4_BYTES)); \
        __m512i n_ = _mm512_and_si512(                                                                  \
            _mm512_inserti64x4(_mm512_castsi256_si512(v_), _mm256_srli_epi16(v_, 4), 1), low4);         \
        __m512 sw_ = _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(load2f4(s + (size_t)(o + (r)) * nb + b))); \
        Q4V_PAIR(a##r##0, n_, sw_, 0);                                                                  \
        if (C > 1) Q4V_PAIR(a##r##1, n_, sw_, 1);                                                       \
        if (C > 2) Q4V_PAIR(a##r##2, n_, sw_, 2);                                                       \
    } while (0)
/* Lanes [b quads 0..3 | b+1 0..3 | b 4..7 | b+1 4..7]: the exact sum of
 * (n - 8) x per quad (vpdpbusd, n unsigned, from q4_prep's -8 * sum x),
 * times sw * sx, the AVX2 kernel's AL (low half) and AH (high half). */
#define Q4V_PAIR(A, N, SW, c) (A = fy_cpu_vnni_step(A, nf##c, N, xv##c, SW, xs##c))
/* Input row c at the pair of blocks: its bytes, the offsets negated, its
 * scales [sx_b x 4 | sx_b+1 x 4] twice. */
#define Q4V_X(c)                                                                                        \
    do {                                                                                                \
        xv##c = _mm512_loadu_si512(x##c + b * FY_Q8_BLOCK);                                             \
        nf##c = _mm512_sub_epi32(zero, _mm512_loadu_si512(f##c + b * 8));                               \
        xs##c = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(sc##c + b * 4)))); \
    } while (0)

/* Two float scales into the low half of a vector (memcpy: only
 * float-aligned). */
__attribute__((target("avx512f"), always_inline)) static inline __m128 load2f4(const float *p) {
    double t;
    memcpy(&t, p, sizeof t);
    return _mm_castpd_ps(_mm_set_sd(t));
}

/* The even (lanes 0..3, 8..11) and odd (4..7, 12..15) halves of a VNNI
 * accumulator plus a last odd block, summed in the fixed tree. */
__attribute__((target("avx512f,avx512bw,avx512vnni,avx2"), always_inline)) static inline float
q4v_sum(__m512 a, int tail, const uint8_t *qb, float d, const int8_t *xq, const int32_t *off) {
    __m256 al = _mm512_castps512_ps256(a), ah = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    __m256 e = Q4_EVEN(al, ah);
    if (tail) e = q4_tail(e, qb, d, xq, off);
    return fy_cpu_hsum256(_mm256_add_ps(e, Q4_ODD(al, ah)));
}

/* Weight rows o .. o+R-1 (R <= 4) against prepared input rows n0 ..
 * n0+C-1 (C <= 3) with VNNI: one zmm accumulator per (row, input) pair holding
 * the AVX2 kernel's AL and AH, the same integer sums and float order, so
 * the same bits. Named accumulators, constant R and C; pf as q4_tile_avx2. */
__attribute__((target("avx512f,avx512bw,avx512vnni,avx2"), always_inline)) static inline void
q4_tile_vnni(const int R, const int C, int in, int o, const fy_cpu_q8_inputs *xs, int n0, const uint8_t *q,
             const float *s, float *y, int ldy, int accumulate, int pf) {
    const int nb = in / FY_Q8_BLOCK, n1 = n0 + (C > 1), n2 = n0 + C - 1;
    const size_t row = (size_t)in / 2;
    const __m512i zero = _mm512_setzero_si512(), low4 = _mm512_set1_epi8(15);
    const __m512i sel = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    const int8_t *x0 = fy_cpu_q8_xq(xs, n0), *x1 = fy_cpu_q8_xq(xs, n1), *x2 = fy_cpu_q8_xq(xs, n2);
    const int32_t *f0 = q4_off(xs, n0), *f1 = q4_off(xs, n1), *f2 = q4_off(xs, n2);
    const float *sc0 = q4_sx8(xs, n0), *sc1 = q4_sx8(xs, n1), *sc2 = q4_sx8(xs, n2);
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    __m512i xv0 = zero, xv1 = zero, xv2 = zero, nf0 = zero, nf1 = zero, nf2 = zero;
    __m512 xs0 = a00, xs1 = a00, xs2 = a00;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        if (pf) { /* integer arithmetic: the address may lie past the matrix */
            uintptr_t ahead = (uintptr_t)(q + (size_t)o * row + (size_t)b * Q4_BYTES) + (uintptr_t)8 * row;
            for (int r = 0; r < R; r++) _mm_prefetch((const char *)(ahead + r * row), _MM_HINT_T0);
        }
        Q4V_X(0);
        if (C > 1) Q4V_X(1);
        if (C > 2) Q4V_X(2);
        Q4V_ROW(0);
        if (R > 1) Q4V_ROW(1);
        if (R > 2) Q4V_ROW(2);
        if (R > 3) Q4V_ROW(3);
    }
    const int tail = b < nb;
    float *y0 = y + (size_t)n0 * ldy, *y1 = y + (size_t)n1 * ldy, *y2 = y + (size_t)n2 * ldy;
    const float sx0 = tail ? fy_cpu_q8_sx(xs, n0)[b] : 0, sx1 = tail ? fy_cpu_q8_sx(xs, n1)[b] : 0;
    const float sx2 = tail ? fy_cpu_q8_sx(xs, n2)[b] : 0;
#define Q4V_PUT(r)                                                                                          \
    do {                                                                                                    \
        if (R > (r)) {                                                                                      \
            const uint8_t *qb_ = q + ((size_t)(o + (r)) * nb + b) * Q4_BYTES;                               \
            const float sw_ = tail ? s[(size_t)(o + (r)) * nb + b] : 0;                                     \
            fy_cpu_put(y0, o + (r), q4v_sum(a##r##0, tail, qb_, sw_ * sx0, x0 + b * FY_Q8_BLOCK, f0 + b * 8), \
                       accumulate);                                                                         \
            if (C > 1)                                                                                      \
                fy_cpu_put(y1, o + (r), q4v_sum(a##r##1, tail, qb_, sw_ * sx1, x1 + b * FY_Q8_BLOCK, f1 + b * 8), \
                           accumulate);                                                                     \
            if (C > 2)                                                                                      \
                fy_cpu_put(y2, o + (r), q4v_sum(a##r##2, tail, qb_, sw_ * sx2, x2 + b * FY_Q8_BLOCK, f2 + b * 8), \
                           accumulate);                                                                     \
        }                                                                                                   \
    } while (0)
    Q4V_PUT(0);
    Q4V_PUT(1);
    Q4V_PUT(2);
    Q4V_PUT(3);
#undef Q4V_PUT
}

/* Outputs [o0, o1) of every prepared input row: 4 x 3 VNNI tiles (as
 * linear_q8's: ~10-15 % over 4 x 2), the last rows and inputs in smaller
 * ones. */
__attribute__((target("avx512f,avx512bw,avx512vnni,avx2"))) static void
q4_tiles_vnni(int in, int o0, int o1, int N, const fy_cpu_q8_inputs *xs, const void *qv, const float *s, float *y,
              int ldy, int accumulate) {
    const uint8_t *q = qv;
    for (int n = 0; n < N; n += 3) {
        const int C = N - n < 3 ? N - n : 3, pf = !n;
        int o = o0;
        for (; o + 4 <= o1; o += 4) {
            if (C == 3 && pf) q4_tile_vnni(4, 3, in, o, xs, n, q, s, y, ldy, accumulate, 1);
            else if (C == 3) q4_tile_vnni(4, 3, in, o, xs, n, q, s, y, ldy, accumulate, 0);
            else if (C == 2) q4_tile_vnni(4, 2, in, o, xs, n, q, s, y, ldy, accumulate, pf);
            else q4_tile_vnni(4, 1, in, o, xs, n, q, s, y, ldy, accumulate, pf);
        }
        for (; o < o1; o++) {
            if (C == 3) q4_tile_vnni(1, 3, in, o, xs, n, q, s, y, ldy, accumulate, pf);
            else if (C == 2) q4_tile_vnni(1, 2, in, o, xs, n, q, s, y, ldy, accumulate, pf);
            else q4_tile_vnni(1, 1, in, o, xs, n, q, s, y, ldy, accumulate, pf);
        }
    }
}
#else
static size_t q4_per(int in) { return (size_t)in / 4 + in / FY_Q8_BLOCK; }
#endif

/* AVX2 unless fy_backend_opts.cpu_q8 asks for the portable kernel or the
 * CPU lacks it (tests check that all give the same bits); 2: VNNI's
 * tiles for N > 1 too, where the CPU has them and the best is asked for. */
static int q4_use_avx2(fy_backend *be) {
    const int want = ((fy_cpu_impl *)be->impl)->q8_kernel;
    if (want == FY_CPU_Q8_PORTABLE) return 0;
#ifdef FY_Q4_X86
    if (!__builtin_cpu_supports("avx2")) return 0;
    if (want == FY_CPU_Q8_BEST && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) return 2;
    return 1;
#else
    return 0;
#endif
}

#ifdef FY_Q4_X86
/* Rows [o0, o1) of the Q4_0 codes as linear_q8's int8 weights (code - 8,
 * weight j of a block from the low nibble of byte j, j + 16 from its high
 * one) into out[o1 - o0][in]. */
__attribute__((target("avx2"))) static void q4_unpack_rows(const uint8_t *q, int in, int o0, int o1, int8_t *out) {
    const __m128i low4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    const size_t nb = (size_t)(o1 - o0) * (size_t)(in / FY_Q8_BLOCK);
    const uint8_t *src = q + (size_t)o0 * (in / 2);
    for (size_t b = 0; b < nb; b++) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(src + b * Q4_BYTES));
        _mm_storeu_si128((__m128i *)(out + b * FY_Q8_BLOCK), _mm_sub_epi8(_mm_and_si128(v, low4), eight));
        _mm_storeu_si128((__m128i *)(out + b * FY_Q8_BLOCK + 16),
                         _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), low4), eight));
    }
}

/* Input rows from which prefill unpacks the codes: each thread takes its
 * weight rows a span at a time, unpacks the span's codes to int8 once,
 * and runs linear_q8's VNNI tiles on them against every input row. The
 * Q4_0 tiles above unpack nibbles again for every tile of input rows;
 * linear_q8's give the same bits on the codes minus 8 (this file's top
 * comment), so only the speed changes: tiny's q4_0 prefill was ~5 %
 * behind its q8_0 (bench/llamacpp.sh, 2026-12-07). */
#define Q4_UNPACK_ROWS 16

/* linear_q4 for N >= Q4_UNPACK_ROWS input rows on a VNNI CPU; scr: the
 * quantized inputs (per8 floats a row), then each thread's span of
 * unpacked codes (span_rows * in bytes). */
static void q4_as_q8(fy_cpu_q8_tiles_fn *tiles, int N, int in, int out, const float *xp, int ldx,
                     const uint8_t *qp, const float *sp, float *yp, int ldy, int accumulate, float *scr, size_t per8,
                     int span_rows) {
    const fy_cpu_q8_inputs xs = {scr, per8, in};
    for (int n = 0; n < N; n++)
        fy_cpu_q8_quantize_row(0, xp + (size_t)n * ldx, in, (int8_t *)(scr + per8 * n), scr + per8 * n + in / 4);
    int8_t *spans = (int8_t *)(scr + per8 * N);
    const int group = fy_cpu_q8_group(per8 * sizeof(float));
    const int nb = in / FY_Q8_BLOCK, chunks = (out + FY_CPU_Q8_CHUNK - 1) / FY_CPU_Q8_CHUNK;
#pragma omp parallel if ((size_t)out * in * N >= FY_CPU_Q8_PAR_MIN)
    {
        /* the threads' shares of 8-row chunks as fy_cpu_q8_blocked splits them */
        const int t = omp_get_thread_num();
        int c0, c1;
        fy_cpu_q8_share(chunks, t, omp_get_num_threads(), &c0, &c1);
        const int r0 = c0 * FY_CPU_Q8_CHUNK, r1 = c1 * FY_CPU_Q8_CHUNK < out ? c1 * FY_CPU_Q8_CHUNK : out;
        int8_t *w8 = spans + (size_t)t * span_rows * in;
        for (int o0 = r0; o0 < r1; o0 += span_rows) {
            const int o1 = o0 + span_rows < r1 ? o0 + span_rows : r1;
            q4_unpack_rows(qp, in, o0, o1, w8);
            for (int g = 0; g < N; g += group) {
                const fy_cpu_q8_inputs xg = {xs.x + xs.per * g, xs.per, xs.in};
                tiles(in, 0, o1 - o0, N - g < group ? N - g : group, &xg, w8, sp + (size_t)o0 * nb,
                      yp + (size_t)g * ldy + o0, ldy, accumulate);
            }
        }
    }
}
#endif

/* All N input rows are prepared first, then the AVX2 tiles meet them in
 * cache-sized groups and spans (fy_cpu_q8_blocked); the portable kernel
 * takes each chunk of W's rows against every row while it is in cache.
 * Row n's outputs are the same bits as a call with that row alone. */
void fy_cpu_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws, fy_ref y,
                      int ldy, int accumulate) {
    const char *op = "linear_q4";
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x");
    const uint8_t *qp = (const uint8_t *)fy_cpu_f(be, wq, (size_t)out * (in / 8), op, "wq");
    const float *sp = fy_cpu_f(be, ws, (size_t)out * (in / FY_Q8_BLOCK), op, "ws");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    if (!xp || !qp || !sp || !yp) return;
    const int avx2 = q4_use_avx2(be);
    (void)avx2; /* read only where the AVX2 kernel is compiled */
#ifdef FY_Q4_X86
    fy_cpu_q8_tiles_fn *t8 = avx2 == 2 && N >= Q4_UNPACK_ROWS ? fy_cpu_q8_tiles_vnni() : NULL;
    if (t8) {
        /* spans of whole 8-row chunks, about FY_CPU_Q8_WSPAN bytes of int8 codes */
        int span_rows = (int)(FY_CPU_Q8_WSPAN / (size_t)in) / FY_CPU_Q8_CHUNK * FY_CPU_Q8_CHUNK;
        span_rows = span_rows < FY_CPU_Q8_CHUNK ? FY_CPU_Q8_CHUNK : span_rows;
        const size_t per8 = (size_t)in / 4 + in / FY_Q8_BLOCK;
        float *s8 = fy_cpu_scratch(be, per8 * N + (size_t)omp_get_max_threads() * span_rows * in / 4 + 1, op);
        if (s8) q4_as_q8(t8, N, in, out, xp, ldx, qp, sp, yp, ldy, accumulate, s8, per8, span_rows);
        return;
    }
#endif
    const size_t per = q4_per(in);
    float *scr = fy_cpu_scratch(be, per * N, op);
    if (!scr) return;
    const fy_cpu_q8_inputs xs = {scr, per, in};
    for (int n = 0; n < N; n++) {
        int8_t *xq = (int8_t *)(scr + per * n);
        float *sx = scr + per * n + in / 4;
#ifdef FY_Q4_X86
        if (avx2) {
            q4_prep(xp + (size_t)n * ldx, in, xq, sx, (int32_t *)q4_off(&xs, n), (float *)q4_sx8(&xs, n));
            continue;
        }
#endif
        fy_cpu_q8_quantize_row(1, xp + (size_t)n * ldx, in, xq, sx);
    }
#ifdef FY_Q4_X86
    if (avx2) { /* decode too: one group, its chunks split as before */
        const size_t wrow = (size_t)in / 2 + (size_t)in / FY_Q8_BLOCK * sizeof(float); /* codes, scales */
        fy_cpu_q8_blocked(avx2 == 2 && N > 1 ? q4_tiles_vnni : q4_tiles_avx2, N, in, out, wrow, &xs, qp, sp, yp, ldy,
                          accumulate);
        return;
    }
#endif
    const int chunks = (out + FY_CPU_Q8_CHUNK - 1) / FY_CPU_Q8_CHUNK;
#pragma omp parallel for schedule(static) if ((size_t)out * in * N >= FY_CPU_Q8_PAR_MIN)
    for (int c = 0; c < chunks; c++) {
        int o0 = c * FY_CPU_Q8_CHUNK, o1 = o0 + FY_CPU_Q8_CHUNK < out ? o0 + FY_CPU_Q8_CHUNK : out;
        for (int n = 0; n < N; n++)
            q4_rows_portable(in, o0, o1, fy_cpu_q8_xq(&xs, n), fy_cpu_q8_sx(&xs, n), qp, sp, yp + (size_t)n * ldy,
                             accumulate);
    }
}
