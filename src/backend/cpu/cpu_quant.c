/* Q8_0 inference weights on the CPU: y = x W^T with W dequantized on the fly.
 * Decode streams every weight once per token, so its time is the bytes read:
 * a quarter of fp32's (plus one scale per 32 weights).
 *
 * The arithmetic is fixed lane by lane so that every ISA gives the same
 * bits: 16 lanes, lane l of a block b adds (q[l] x[l] + q[l+16] x[l+16]) d_b
 * (no fused multiply-add), then t_l = a_l + a_{l+8} and a fixed tree. The
 * AVX-512 kernel holds the 16 lanes in one register, AVX2 in two, the
 * portable one in an array. GCC's vectorizer turned the plain loop into
 * 128-bit code (slower than f32 sgemv), hence the intrinsics. */
#include <immintrin.h>
#include <omp.h>

#include "backend/cpu/cpu.h"

static float lanes_sum(const float a[16]) {
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

static void put(float *y, int o, float v, int accumulate) { y[o] = accumulate ? y[o] + v : v; }

static void q8_rows_portable(int in, int o0, int o1, const float *x, const int8_t *q,
                             const float *s, float *y, int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    for (int o = o0; o < o1; o++) {
        const int8_t *qr = q + (size_t)o * in;
        float a[16] = {0};
        for (int b = 0; b < nb; b++) {
            const int8_t *qb = qr + b * FY_Q8_BLOCK;
            const float *xb = x + b * FY_Q8_BLOCK, d = s[(size_t)o * nb + b];
            for (int l = 0; l < 16; l++) a[l] += ((float)qb[l] * xb[l] + (float)qb[l + 16] * xb[l + 16]) * d;
        }
        put(y, o, lanes_sum(a), accumulate);
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define FY_Q8_X86 1

/* lanes_sum in registers (storing the vector and reading it back as floats
 * stalled on store forwarding: a quarter of the decode time). t = the 8
 * sums a_l + a_{l+8}; u_j = t_j + t_{j+4}; (u0 + u1) + (u2 + u3). */
__attribute__((target("avx2"))) static float hsum256(__m256 t) {
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 v = _mm_add_ps(u, _mm_shuffle_ps(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehl_ps(v, v)));
}

__attribute__((target("avx512f"))) static float hsum512(__m512 a) {
    __m256 lo = _mm512_castps512_ps256(a);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return hsum256(_mm256_add_ps(lo, hi));
}

/* One block of row r into accumulator acc (x0, x1: the block's x). */
#define Q8_BLOCK512(acc, r)                                                                     \
    do {                                                                                      \
        const int8_t *qb = q + (size_t)(o + (r)) * in + b * FY_Q8_BLOCK;                        \
        __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qb))); \
        __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qb + 16)))); \
        __m512 t = _mm512_add_ps(_mm512_mul_ps(q0, x0), _mm512_mul_ps(q1, x1));                  \
        acc = _mm512_add_ps(acc, _mm512_mul_ps(t, _mm512_set1_ps(s[(size_t)(o + (r)) * nb + b]))); \
    } while (0)

/* Four rows at a time, in four registers (an array of them was kept on the
 * stack): four independent add chains, and x read once for them. */
__attribute__((target("avx512f"))) static void q8_rows_avx512(int in, int o0, int o1, const float *x,
                                                              const int8_t *q, const float *s, float *y,
                                                              int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int b = 0; b < nb; b++) {
            __m512 x0 = _mm512_loadu_ps(x + b * FY_Q8_BLOCK), x1 = _mm512_loadu_ps(x + b * FY_Q8_BLOCK + 16);
            Q8_BLOCK512(a0, 0);
            Q8_BLOCK512(a1, 1);
            Q8_BLOCK512(a2, 2);
            Q8_BLOCK512(a3, 3);
        }
        put(y, o, hsum512(a0), accumulate);
        put(y, o + 1, hsum512(a1), accumulate);
        put(y, o + 2, hsum512(a2), accumulate);
        put(y, o + 3, hsum512(a3), accumulate);
    }
    if (o < o1) q8_rows_portable(in, o, o1, x, q, s, y, accumulate);
}

__attribute__((target("avx2"))) static void q8_rows_avx2(int in, int o0, int o1, const float *x,
                                                         const int8_t *q, const float *s, float *y,
                                                         int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    int o = o0;
    for (; o + 2 <= o1; o += 2) {
        __m256 a[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
        for (int b = 0; b < nb; b++) {
            const float *xb = x + b * FY_Q8_BLOCK;
            for (int r = 0; r < 2; r++) {
                const int8_t *qb = q + (size_t)(o + r) * in + b * FY_Q8_BLOCK;
                __m256 d = _mm256_set1_ps(s[(size_t)(o + r) * nb + b]);
                for (int h = 0; h < 2; h++) { /* lanes 8h .. 8h+7 */
                    __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qb + 8 * h))));
                    __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qb + 16 + 8 * h))));
                    __m256 t = _mm256_add_ps(_mm256_mul_ps(q0, _mm256_loadu_ps(xb + 8 * h)),
                                             _mm256_mul_ps(q1, _mm256_loadu_ps(xb + 16 + 8 * h)));
                    a[r][h] = _mm256_add_ps(a[r][h], _mm256_mul_ps(t, d));
                }
            }
        }
        for (int r = 0; r < 2; r++) put(y, o + r, hsum256(_mm256_add_ps(a[r][0], a[r][1])), accumulate);
    }
    if (o < o1) q8_rows_portable(in, o, o1, x, q, s, y, accumulate);
}
#endif

typedef void q8_rows_fn(int, int, int, const float *, const int8_t *, const float *, float *, int);

static q8_rows_fn *q8_rows_best(void) {
#ifdef FY_Q8_X86
    if (__builtin_cpu_supports("avx512f")) return q8_rows_avx512;
    if (__builtin_cpu_supports("avx2")) return q8_rows_avx2;
#endif
    return q8_rows_portable;
}

void fy_cpu_linear_q8(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq,
                      fy_ref ws, fy_ref y, int ldy, int accumulate) {
    const char *op = "linear_q8";
    if (N < 0 || in < 0 || out < 0 || in % FY_Q8_BLOCK || (N > 1 && (ldx < in || ldy < out))) {
        fy_be_set_error(be, "cpu %s: bad sizes N=%d in=%d (a multiple of %d) out=%d ldx=%d ldy=%d",
                        op, N, in, FY_Q8_BLOCK, out, ldx, ldy);
        return;
    }
    if (!N || !out) return;
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x");
    const int8_t *qp = (const int8_t *)fy_cpu_f(be, wq, (size_t)out * (in / 4), op, "wq");
    const float *sp = fy_cpu_f(be, ws, (size_t)out * (in / FY_Q8_BLOCK), op, "ws");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    if (!xp || !qp || !sp || !yp) return;
    q8_rows_fn *rows = q8_rows_best();
    /* Outputs in fixed chunks of 32 (the split depends on the shape only;
     * each output is one thread's anyway). */
    const int chunks = (out + 31) / 32;
    for (int n = 0; n < N; n++) {
        const float *xn = xp + (size_t)n * ldx;
        float *yn = yp + (size_t)n * ldy;
#pragma omp parallel for schedule(static) if ((size_t)out * in >= 65536)
        for (int c = 0; c < chunks; c++) {
            int o0 = c * 32, o1 = o0 + 32 < out ? o0 + 32 : out;
            rows(in, o0, o1, xn, qp, sp, yn, accumulate);
        }
    }
}
