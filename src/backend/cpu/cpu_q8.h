/* Private to the CPU's quantized kernels (cpu_quant.c: Q8_0, cpu_q4.c:
 * Q4_0): the pieces of linear_q8's fixed arithmetic that both share, so a
 * Q4_0 matrix gives linear_q8's bits on its codes minus 8 (backend.h):
 * the 16-lane reduction tree, the output chunks and the input quantizer. */
#ifndef FY_CPU_Q8_H
#define FY_CPU_Q8_H

#include <stdint.h>
#include <string.h>

#include "backend/cpu/cpu.h"

/* Outputs go in fixed chunks of 8 (the split depends on the shape only;
 * each output is one thread's anyway): fine enough that 160 rows split
 * 80/80 between two threads (chunks of 32 split them 96/64). */
#define FY_CPU_Q8_CHUNK 8

/* A call's work (out * in * N) below which it stays on the calling thread. */
#define FY_CPU_Q8_PAR_MIN 65536

/* Lane l (< 8) of half h holds a[8h + l]: t_l = a_l + a_{l+8},
 * u_j = t_j + t_{j+4}, (u0 + u1) + (u2 + u3). */
static inline float fy_cpu_lanes16(const float a[16]) {
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

/* The quantized input rows of one call: row n's in bytes at x + n * per
 * floats, its in/32 scales right after them (the kernels' scratch). */
typedef struct {
    const float *x;
    size_t per;
    int in;
} fy_cpu_q8_inputs;
static inline const int8_t *fy_cpu_q8_xq(const fy_cpu_q8_inputs *xs, int n) {
    return (const int8_t *)(xs->x + xs->per * n);
}
static inline const float *fy_cpu_q8_sx(const fy_cpu_q8_inputs *xs, int n) { return xs->x + xs->per * n + xs->in / 4; }

static inline void fy_cpu_put(float *y, int o, float v, int accumulate) { y[o] = accumulate ? y[o] + v : v; }

/* Outputs [o0, o1) of input rows 0 .. N-1 of xs (a kernel's tiles; q:
 * int8 codes for Q8_0, packed nibbles for Q4_0): y row n at y + n * ldy. */
typedef void fy_cpu_q8_tiles_fn(int in, int o0, int o1, int N, const fy_cpu_q8_inputs *xs, const void *q,
                                const float *s, float *y, int ldy, int accumulate);

/* Prefill's cache blocking (N > 1): the quantized input rows go in groups
 * of about FY_CPU_Q8_XGROUP bytes, which stay in L2 while a thread walks
 * its weight rows in spans of about FY_CPU_Q8_WSPAN bytes (L1), each span
 * meeting the whole group before the next; the weights stream once a
 * group, not once a call, but the inputs no longer stream once per 8
 * weight rows (N = 512, in = 2048: 1.1 MiB of them, from L3). Only the
 * order in which outputs are formed changes: each output is one tile's,
 * by the fixed arithmetic above, so the bits are those of N = 1. */
#define FY_CPU_Q8_XGROUP (96 * 1024)
#define FY_CPU_Q8_WSPAN (16 * 1024)

/* Input rows a group holds (whole tiles of 2 or 3 rows; xrow: bytes of
 * one quantized input row), and thread t of nt's share [*c0, *c1) of
 * `chunks` chunks, as a static schedule would split them. */
static inline int fy_cpu_q8_group(size_t xrow) {
    int group = (int)(FY_CPU_Q8_XGROUP / xrow);
    return group < 6 ? 6 : group - group % 6;
}
static inline void fy_cpu_q8_share(int chunks, int t, int nt, int *c0, int *c1) {
    *c0 = (int)((long long)chunks * t / nt), *c1 = (int)((long long)chunks * (t + 1) / nt);
}

/* The N input rows of xs through `tiles` in groups and spans (wrow: bytes
 * of one weight row), the chunks split over the threads as a static
 * schedule would; threaded when out * in * N >= FY_CPU_Q8_PAR_MIN. */
void fy_cpu_q8_blocked(fy_cpu_q8_tiles_fn *tiles, int N, int in, int out, size_t wrow, const fy_cpu_q8_inputs *xs,
                       const void *q, const float *s, float *y, int ldy, int accumulate);

/* linear_q8's AVX-512 VNNI tiles (N > 1), where the CPU has VNNI, else
 * NULL: cpu_q4.c runs them on Q4_0 codes unpacked to int8. */
fy_cpu_q8_tiles_fn *fy_cpu_q8_tiles_vnni(void);

/* Row x (in floats) quantized as fy_q8_quantize does (xq: in bytes, sx:
 * in/32 scales), by the AVX-512 or AVX2 quantizer where the CPU has one
 * unless `portable` (the same bits every way). */
void fy_cpu_q8_quantize_row(int portable, const float *x, int in, int8_t *xq, float *sx);

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

/* fy_cpu_lanes16 of t = (even half + odd half) in registers (storing the
 * vector and reading it back as floats stalled on store forwarding: a
 * quarter of the decode time). */
__attribute__((target("avx2"))) static inline float fy_cpu_hsum256(__m256 t) {
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 v = _mm_add_ps(u, _mm_shuffle_ps(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehl_ps(v, v)));
}

/* fy_cpu_hsum256 of four vectors at once, [hsum(t0), hsum(t1), hsum(t2),
 * hsum(t3)]: the same additions (u_j = t_j + t_{j+4}, then (u0 + u1) +
 * (u2 + u3)) in 14 instructions instead of 28. */
__attribute__((target("avx2"))) static inline __m128 fy_cpu_hsum256x4(__m256 t0, __m256 t1, __m256 t2, __m256 t3) {
    __m256 u01 = _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
    __m256 u23 = _mm256_add_ps(_mm256_permute2f128_ps(t2, t3, 0x20), _mm256_permute2f128_ps(t2, t3, 0x31));
    __m256 v = _mm256_hadd_ps(u01, u23); /* per half: u0 + u1, u2 + u3 of t0, t2 (t1, t3 above) */
    __m256 r = _mm256_hadd_ps(v, v);     /* (u0 + u1) + (u2 + u3): t0, t2 below, t1, t3 above */
    return _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
}

/* fy_cpu_put of v's two low lanes to outputs o, o + 1 (memcpy: y is only
 * float-aligned). */
__attribute__((target("avx2"))) static inline void fy_cpu_put2(float *y, int o, __m128 v, int accumulate) {
    if (accumulate) {
        double t;
        memcpy(&t, y + o, sizeof t);
        v = _mm_add_ps(_mm_castpd_ps(_mm_set_sd(t)), v);
    }
    double r = _mm_cvtsd_f64(_mm_castps_pd(v));
    memcpy(y + o, &r, sizeof r);
}

/* The step both VNNI tile kernels (Q8_0 and Q4_0) take per weight row and
 * input row: a + float(off + sum of u x per quad) * (sw * sx), the integers
 * exact (vpdpbusd, u unsigned, off the input's precomputed correction),
 * then the float operations in this order, which fixes their bits. */
__attribute__((target("avx512f,avx512vnni"), always_inline)) static inline __m512
fy_cpu_vnni_step(__m512 a, __m512i off, __m512i u, __m512i x, __m512 sw, __m512 sx) {
    __m512i iv = _mm512_dpbusd_epi32(off, u, x);
    return _mm512_add_ps(a, _mm512_mul_ps(_mm512_cvtepi32_ps(iv), _mm512_mul_ps(sw, sx)));
}
#endif

#endif
