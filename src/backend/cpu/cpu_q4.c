/* Q4_0 inference weights on the CPU (backend.h linear_q4): llama.cpp's
 * Q4_0 x Q8_0. The input row is quantized as for linear_q8 and each block's
 * dot product is exact in integers, combined in linear_q8's order (lane l
 * of accumulator half b & 1 adds the integer sum of products 4l .. 4l+3
 * times sw_b * sx_b; the 16 lanes reduce in cpu_q8.h's fixed tree), so
 * a Q4_0 matrix gives the bits of linear_q8 on its codes minus 8, whatever
 * kernel runs. Half the bytes of Q8_0 stream per token.
 *
 * AVX2: a block's 16 bytes become its 32 codes n (0 .. 15) in weight
 * order (the low nibbles are weights 0 .. 15, the high ones 16 .. 31: one
 * shift, one insert, one and). vpmaddubsw takes n as its unsigned operand
 * as it is (no sign trick: n >= 0, and n x + n' x' fits int16), vpmaddwd
 * sums the quads, and 8 * (the quad's sum of x) is subtracted: the exact
 * sum of (n - 8) x. The offset is formed once per input row and block and
 * serves both weight rows of a tile. Tiles as cpu_quant.c's AVX2 kernel:
 * 2 weight rows x 1 input row for decode, 2 x 2 for N > 1. There is no
 * AVX-512 kernel: FY_CPU_Q8_BEST runs the AVX2 one where the CPU has it. */
#include <omp.h>
#include <stdint.h>

#include "backend/cpu/cpu_q8.h"

#define Q4_BYTES (FY_Q8_BLOCK / 2) /* bytes of one block's codes */

/* Outputs [o0, o1) from the quantized input row (xq, sx). */
typedef void q4_rows_fn(int in, int o0, int o1, const int8_t *xq, const float *sx, const uint8_t *q,
                        const float *s, float *y, int accumulate);

/* Outputs [o0, o1) of every input row (N > 1): y row n at y + n * ldy. */
typedef void q4_tiles_fn(int in, int o0, int o1, int N, const fy_cpu_q8_inputs *xs, const uint8_t *q, const float *s,
                         float *y, int ldy, int accumulate);

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

/* The 32 codes of the block at p, unsigned bytes in weight order. */
__attribute__((target("avx2"), always_inline)) static inline __m256i q4_codes(const uint8_t *p, __m256i low4) {
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), low4);
}

/* Lane l: 8 * (x_4l + .. + x_4l+3), what the codes' offset of 8 takes off. */
#define Q4_OFFSET_AVX2(X) _mm256_madd_epi16(_mm256_maddubs_epi16(eight, X), ones)

/* One (weight row, input row) pair of a tile into accumulator A: codes N
 * times x summed in pairs and quads, less the offset OF, then (float)sum
 * * d with d = sw * sx. */
#define Q4_PAIR_AVX2(A, N, X, OF, DP)                                                                        \
    A = _mm256_add_ps(A, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(                                  \
                                           _mm256_madd_epi16(_mm256_maddubs_epi16(N, X), ones), OF)),       \
                                       _mm256_set1_ps(DP)))

/* Block b of the tile into the accumulators of half H (e: even blocks, o:
 * odd): the codes unpacked once for the C inputs, x and its offset once
 * for the R rows. Named accumulators: GCC kept an array in memory. */
#define Q4_TILE_BLOCK_AVX2(b, H)                                                                    \
    do {                                                                                            \
        const float sw0_ = s[(size_t)o * nb + (b)], sw1_ = s[(size_t)(o + R - 1) * nb + (b)];       \
        const float sx0_ = sr[0][b], sx1_ = sr[C - 1][b];                                           \
        __m256i n0_ = q4_codes(q + ((size_t)o * nb + (b)) * Q4_BYTES, low4), n1_ = n0_;             \
        if (R > 1) n1_ = q4_codes(q + ((size_t)(o + R - 1) * nb + (b)) * Q4_BYTES, low4);          \
        __m256i x_ = _mm256_loadu_si256((const __m256i *)(xr[0] + (b) * FY_Q8_BLOCK));              \
        __m256i of_ = Q4_OFFSET_AVX2(x_);                                                           \
        Q4_PAIR_AVX2(a00##H, n0_, x_, of_, sw0_ * sx0_);                                            \
        if (R > 1) Q4_PAIR_AVX2(a10##H, n1_, x_, of_, sw1_ * sx0_);                                 \
        if (C > 1) {                                                                                \
            x_ = _mm256_loadu_si256((const __m256i *)(xr[1] + (b) * FY_Q8_BLOCK));                  \
            of_ = Q4_OFFSET_AVX2(x_);                                                               \
            Q4_PAIR_AVX2(a01##H, n0_, x_, of_, sw0_ * sx1_);                                        \
            if (R > 1) Q4_PAIR_AVX2(a11##H, n1_, x_, of_, sw1_ * sx1_);                             \
        }                                                                                           \
    } while (0)

/* Weight rows o .. o+R-1 against input rows xr[0 .. C-1] (R, C <= 2),
 * accumulators in registers; instantiated with constant R and C. pf: the
 * first pass over these rows, which streams them from memory: the rows
 * eight ahead are prefetched into L1 (as cpu_quant.c's kernels). */
__attribute__((target("avx2"), always_inline)) static inline void
q4_tile_avx2(const int R, const int C, int in, int o, const int8_t *const xr[2], const float *const sr[2],
             const uint8_t *q, const float *s, float *const yr[2], int accumulate, int pf) {
    const int nb = in / FY_Q8_BLOCK;
    const size_t row = (size_t)in / 2; /* bytes of a weight row */
    const __m256i ones = _mm256_set1_epi16(1), eight = _mm256_set1_epi8(8), low4 = _mm256_set1_epi8(15);
    __m256 a00e = _mm256_setzero_ps(), a00o = a00e, a01e = a00e, a01o = a00e;
    __m256 a10e = a00e, a10o = a00e, a11e = a00e, a11o = a00e;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        if (pf) { /* integer arithmetic: the address may lie past the matrix */
            uintptr_t ahead = (uintptr_t)(q + (size_t)o * row + (size_t)b * Q4_BYTES) + (uintptr_t)8 * row;
            _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)(ahead + row), _MM_HINT_T0);
        }
        Q4_TILE_BLOCK_AVX2(b, e);
        Q4_TILE_BLOCK_AVX2(b + 1, o);
    }
    if (b < nb) Q4_TILE_BLOCK_AVX2(b, e); /* the last block, in/32 odd */
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

/* One input row (decode): two weight rows at a time, x loaded once. */
__attribute__((target("avx2"))) static void q4_rows_avx2(int in, int o0, int o1, const int8_t *xq, const float *sx,
                                                         const uint8_t *q, const float *s, float *y,
                                                         int accumulate) {
    const int8_t *const xr[2] = {xq, xq};
    const float *const sr[2] = {sx, sx};
    float *const yr[2] = {y, y};
    int o = o0;
    for (; o + 2 <= o1; o += 2) q4_tile_avx2(2, 1, in, o, xr, sr, q, s, yr, accumulate, 1);
    if (o < o1) q4_tile_avx2(1, 1, in, o, xr, sr, q, s, yr, accumulate, 1);
}

/* 2 x 2 tiles, the odd row or input in 2 x 1, 1 x 2, 1 x 1 tiles. */
__attribute__((target("avx2"))) static void q4_tiles_avx2(int in, int o0, int o1, int N, const fy_cpu_q8_inputs *xs,
                                                          const uint8_t *q, const float *s, float *y, int ldy,
                                                          int accumulate) {
    for (int n = 0; n < N; n += 2) {
        const int C = n + 1 < N ? 2 : 1;
        const int8_t *const xr[2] = {fy_cpu_q8_xq(xs, n), fy_cpu_q8_xq(xs, n + C - 1)};
        const float *const sr[2] = {fy_cpu_q8_sx(xs, n), fy_cpu_q8_sx(xs, n + C - 1)};
        float *const yr[2] = {y + (size_t)n * ldy, y + (size_t)(n + C - 1) * ldy};
        int o = o0;
        for (; o + 2 <= o1; o += 2) { /* with and without the prefetch, no test per block */
            if (C == 1) q4_tile_avx2(2, 1, in, o, xr, sr, q, s, yr, accumulate, !n);
            else if (n) q4_tile_avx2(2, 2, in, o, xr, sr, q, s, yr, accumulate, 0);
            else q4_tile_avx2(2, 2, in, o, xr, sr, q, s, yr, accumulate, 1);
        }
        if (o < o1) {
            if (C == 2) q4_tile_avx2(1, 2, in, o, xr, sr, q, s, yr, accumulate, !n);
            else q4_tile_avx2(1, 1, in, o, xr, sr, q, s, yr, accumulate, !n);
        }
    }
}
#endif

/* The kernel fy_backend_opts.cpu_q8 asks for: FY_CPU_Q8_PORTABLE the
 * portable one, otherwise AVX2 where the CPU has it (tests check that all
 * give the same bits). */
static q4_rows_fn *q4_rows_best(fy_backend *be) {
    if (((fy_cpu_impl *)be->impl)->q8_kernel == FY_CPU_Q8_PORTABLE) return q4_rows_portable;
#ifdef FY_Q4_X86
    if (__builtin_cpu_supports("avx2")) return q4_rows_avx2;
#endif
    return q4_rows_portable;
}

/* The tiled kernel that gives `rows`' bits for N > 1 input rows, or NULL. */
static q4_tiles_fn *q4_tiles_for(q4_rows_fn *rows) {
#ifdef FY_Q4_X86
    if (rows == q4_rows_avx2) return q4_tiles_avx2;
#endif
    (void)rows;
    return NULL;
}

/* All N input rows are quantized first, then each chunk of W's rows meets
 * every row while it is in cache (W streams from memory once, not N
 * times); row n's outputs are the same bits as a call with that row alone. */
void fy_cpu_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws, fy_ref y,
                      int ldy, int accumulate) {
    const char *op = "linear_q4";
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x");
    const uint8_t *qp = (const uint8_t *)fy_cpu_f(be, wq, (size_t)out * (in / 8), op, "wq");
    const float *sp = fy_cpu_f(be, ws, (size_t)out * (in / FY_Q8_BLOCK), op, "ws");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    const size_t per = (size_t)in / 4 + in / FY_Q8_BLOCK; /* a quantized input row: bytes, then scales */
    float *scr = fy_cpu_scratch(be, per * N, op);
    if (!xp || !qp || !sp || !yp || !scr) return;
    q4_rows_fn *rows = q4_rows_best(be);
    for (int n = 0; n < N; n++)
        fy_cpu_q8_quantize_row(rows == q4_rows_portable, xp + (size_t)n * ldx, in, (int8_t *)(scr + per * n),
                               scr + per * n + in / 4);
    q4_tiles_fn *tiles = N > 1 ? q4_tiles_for(rows) : NULL;
    const fy_cpu_q8_inputs xs = {scr, per, in};
    const int chunks = (out + FY_CPU_Q8_CHUNK - 1) / FY_CPU_Q8_CHUNK;
#pragma omp parallel for schedule(static) if ((size_t)out * in * N >= FY_CPU_Q8_PAR_MIN)
    for (int c = 0; c < chunks; c++) {
        int o0 = c * FY_CPU_Q8_CHUNK, o1 = o0 + FY_CPU_Q8_CHUNK < out ? o0 + FY_CPU_Q8_CHUNK : out;
        if (tiles) {
            tiles(in, o0, o1, N, &xs, qp, sp, yp, ldy, accumulate);
            continue;
        }
        for (int n = 0; n < N; n++)
            rows(in, o0, o1, fy_cpu_q8_xq(&xs, n), fy_cpu_q8_sx(&xs, n), qp, sp, yp + (size_t)n * ldy, accumulate);
    }
}
