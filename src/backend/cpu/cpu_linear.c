/* The batch-invariant f32 linear of the CPU backend (linear_rows,
 * backend.h): y[n, o] (=|+=) dot(x[n, :], W[o, :]), one dot product per
 * output whose operation order depends on `in` alone, never on N, on the
 * tiling, on the thread count or on the ISA.
 *
 * The order: 16 partial sums, lane l adding the products of k = l, l + 16,
 * l + 32, ... in turn (each product rounded, then added: no fused
 * multiply-add; the build has -ffp-contract=off), then the fixed tree
 * t_l = a_l + a_{l+8}, u_j = t_j + t_{j+4}, (u0 + u1) + (u2 + u3), and y gets
 * one add when accumulating. AVX-512 holds the 16 lanes in one register,
 * AVX2 in two, the portable kernel in an array; a partial last group of 16
 * loads zeros, and adding +0 to a lane leaves it as it was (a lane is never
 * -0), so all three give the same bits.
 *
 * Speed: register tiles of several x rows by several W rows, so each W row
 * is read once per tile of x rows, W split over the threads in fixed chunks
 * of rows (W streams from memory once per call). */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#include "backend/cpu/cpu.h"

static inline void put(float *y, float v, int accumulate) { *y = accumulate ? *y + v : v; }

static float lanes16(const float a[16]) {
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

/* All nx rows of x against nw rows of W (outputs y[:, 0..nw)). */
typedef void lr_block_fn(int in, const float *x, int ldx, int nx, const float *w, int ldw, int nw, float *y, int ldy,
                         int accumulate);

static void lr_block_portable(int in, const float *x, int ldx, int nx, const float *w, int ldw, int nw, float *y,
                              int ldy, int accumulate) {
    for (int j = 0; j < nw; j++) {
        const float *wr = w + (size_t)j * ldw;
        for (int i = 0; i < nx; i++) {
            const float *xr = x + (size_t)i * ldx;
            float a[16] = {0};
            int k = 0;
            for (; k + 16 <= in; k += 16)
                for (int l = 0; l < 16; l++) a[l] += xr[k + l] * wr[k + l];
            for (int l = 0; k + l < in; l++) a[l] += xr[k + l] * wr[k + l];
            put(y + (size_t)i * ldy + j, lanes16(a), accumulate);
        }
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define FY_LR_X86 1

/* The fixed tree over 8 lanes (t_j + t_{j+4}, then pairs) in registers. */
__attribute__((target("avx2"))) static inline float lr_hsum256(__m256 t) {
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 v = _mm_add_ps(u, _mm_shuffle_ps(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehl_ps(v, v)));
}

/* ---- AVX2: lanes 0..7 and 8..15 in two registers; tiles of 2 x 2 ---- */

/* RX x rows by RW W rows from k = 0 to in; RX, RW constants once inlined. */
__attribute__((target("avx2"), always_inline)) static inline void
lr_tile256(int in, const float *x, int ldx, const float *w, int ldw, float *y, int ldy, int accumulate, const int RX,
           const int RW) {
    __m256 a[2][2][2];
    #pragma GCC unroll 4
    for (int i = 0; i < RX; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) a[i][j][0] = a[i][j][1] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= in; k += 16)
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            __m256 xv[2], wv[2];
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++) xv[i] = _mm256_loadu_ps(x + (size_t)i * ldx + k + 8 * h);
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++) wv[j] = _mm256_loadu_ps(w + (size_t)j * ldw + k + 8 * h);
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++)
                #pragma GCC unroll 4
                for (int j = 0; j < RW; j++) a[i][j][h] = _mm256_add_ps(a[i][j][h], _mm256_mul_ps(xv[i], wv[j]));
        }
    if (k < in) {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(in - k - 8 * h), idx);
            __m256 xv[2], wv[2];
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++) xv[i] = _mm256_maskload_ps(x + (size_t)i * ldx + k + 8 * h, m);
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++) wv[j] = _mm256_maskload_ps(w + (size_t)j * ldw + k + 8 * h, m);
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++)
                #pragma GCC unroll 4
                for (int j = 0; j < RW; j++) a[i][j][h] = _mm256_add_ps(a[i][j][h], _mm256_mul_ps(xv[i], wv[j]));
        }
    }
    #pragma GCC unroll 4
    for (int i = 0; i < RX; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++)
            put(y + (size_t)i * ldy + j, lr_hsum256(_mm256_add_ps(a[i][j][0], a[i][j][1])), accumulate);
}

__attribute__((target("avx2"))) static void lr_block_avx2(int in, const float *x, int ldx, int nx, const float *w,
                                                          int ldw, int nw, float *y, int ldy, int accumulate) {
    int j = 0;
    for (; j + 2 <= nw; j += 2) {
        const float *wj = w + (size_t)j * ldw;
        int i = 0;
        for (; i + 2 <= nx; i += 2)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 2, 2);
        for (; i < nx; i++)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 2);
    }
    for (; j < nw; j++) {
        const float *wj = w + (size_t)j * ldw;
        int i = 0;
        for (; i + 2 <= nx; i += 2)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 2, 1);
        for (; i < nx; i++)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 1);
    }
}

/* ---- AVX-512: the 16 lanes in one register; tiles of 4 x 4 ---- */

__attribute__((target("avx512f"), always_inline)) static inline void
lr_tile512(int in, const float *x, int ldx, const float *w, int ldw, float *y, int ldy, int accumulate, const int RX,
           const int RW) {
    __m512 a[4][4];
    #pragma GCC unroll 4
    for (int i = 0; i < RX; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) a[i][j] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        __m512 xv[4], wv[4];
        #pragma GCC unroll 4
        for (int i = 0; i < RX; i++) xv[i] = _mm512_loadu_ps(x + (size_t)i * ldx + k);
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) wv[j] = _mm512_loadu_ps(w + (size_t)j * ldw + k);
        #pragma GCC unroll 4
        for (int i = 0; i < RX; i++)
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++) a[i][j] = _mm512_add_ps(a[i][j], _mm512_mul_ps(xv[i], wv[j]));
    }
    if (k < in) {
        const __mmask16 m = (__mmask16)((1u << (in - k)) - 1);
        __m512 xv[4], wv[4];
        #pragma GCC unroll 4
        for (int i = 0; i < RX; i++) xv[i] = _mm512_maskz_loadu_ps(m, x + (size_t)i * ldx + k);
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) wv[j] = _mm512_maskz_loadu_ps(m, w + (size_t)j * ldw + k);
        #pragma GCC unroll 4
        for (int i = 0; i < RX; i++)
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++) a[i][j] = _mm512_add_ps(a[i][j], _mm512_mul_ps(xv[i], wv[j]));
    }
    #pragma GCC unroll 4
    for (int i = 0; i < RX; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) {
            __m256 lo = _mm512_castps512_ps256(a[i][j]);
            __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[i][j]), 1));
            put(y + (size_t)i * ldy + j, lr_hsum256(_mm256_add_ps(lo, hi)), accumulate);
        }
}

__attribute__((target("avx512f"))) static void lr_block_avx512(int in, const float *x, int ldx, int nx,
                                                               const float *w, int ldw, int nw, float *y, int ldy,
                                                               int accumulate) {
    int j = 0;
    for (; j + 4 <= nw; j += 4) {
        const float *wj = w + (size_t)j * ldw;
        int i = 0;
        for (; i + 4 <= nx; i += 4)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 4, 4);
        for (; i < nx; i++)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 4);
    }
    for (; j < nw; j++) {
        const float *wj = w + (size_t)j * ldw;
        int i = 0;
        for (; i + 4 <= nx; i += 4)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 4, 1);
        for (; i < nx; i++)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 1);
    }
}
#endif

/* The best kernel this CPU runs, or the lesser one fy_backend_opts.cpu_q8
 * asks for (the same option as the Q8_0 kernels; all give the same bits). */
static lr_block_fn *lr_best(fy_backend *be) {
    const int want = ((fy_cpu_impl *)be->impl)->q8_kernel;
    if (want == FY_CPU_Q8_PORTABLE) return lr_block_portable;
#ifdef FY_LR_X86
    if (want == FY_CPU_Q8_AVX2 && __builtin_cpu_supports("avx2")) return lr_block_avx2;
    if (__builtin_cpu_supports("avx512f")) return lr_block_avx512;
    if (__builtin_cpu_supports("avx2")) return lr_block_avx2;
#endif
    return lr_block_portable;
}

/* W rows per parallel chunk: a multiple of every tile's height. */
#define LR_CHUNK 16
/* Multiply-adds below which a call stays on one thread: waking the team
 * costs ~10-50 us on a shared machine, more than a 256 x 256 one-row
 * linear takes alone (~3 us, 2026-12-05). */
#define LR_PAR_MIN (1u << 20)

void fy_cpu_linear_rows(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref w, int ldw, fy_ref y,
                        int ldy, int accumulate) {
    const char *op = "linear_rows";
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    const float *xp = in ? fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x") : NULL;
    const float *wp = in ? fy_cpu_f(be, w, fy_cpu_span(out, ldw, in), op, "w") : NULL;
    if (!yp || (in && (!xp || !wp))) return;
    if (!in) { /* empty dot products: 0 */
        for (int n = 0; n < N; n++)
            for (int o = 0; o < out; o++) put(yp + (size_t)n * ldy + o, 0.0f, accumulate);
        return;
    }
    lr_block_fn *block = lr_best(be);
    const int chunks = (out + LR_CHUNK - 1) / LR_CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1 && (size_t)N * in * out >= LR_PAR_MIN)
    for (int c = 0; c < chunks; c++) {
        int o0 = c * LR_CHUNK, nw = out - o0 < LR_CHUNK ? out - o0 : LR_CHUNK;
        block(in, xp, ldx, N, wp + (size_t)o0 * ldw, ldw, nw, yp + o0, ldy, accumulate);
    }
}
