/* The batch-invariant linear of the CPU backend: linear_rows (backend.h),
 * y[n, o] (=|+=) dot(x[n, :], W[o, :]) with W in f32, and linear_h16, the
 * same with W held as IEEE half or bfloat16 and each weight widened exactly
 * as it is loaded: one dot product per output whose operation order depends
 * on `in` alone, never on N, on the tiling, on the thread count, on the ISA
 * or on the weights' format, so linear_h16 gives linear_rows' bits on the
 * widened matrix.
 *
 * The order: 16 partial sums, lane l adding the products of k = l, l + 16,
 * l + 32, ... in turn (each product rounded, then added: no fused
 * multiply-add; the build has -ffp-contract=off), then the fixed tree
 * t_l = a_l + a_{l+8}, u_j = t_j + t_{j+4}, (u0 + u1) + (u2 + u3), and y gets
 * one add when accumulating. AVX-512 holds the 16 lanes in one register,
 * AVX2 in two, the portable kernel in an array; a partial last group of 16
 * loads zeros, and adding +0 to a lane leaves it as it was (a lane is never
 * -0), so all three give the same bits. Widening is exact (core/half.h; the
 * vcvtph2ps instruction and the bf16 shift give the same bits, NaN payloads
 * included), so every weight enters the same product in every format.
 *
 * Speed: register tiles of several x rows by several W rows, so each W row
 * is read once per tile of x rows, W split over the threads in fixed chunks
 * of rows (W streams from memory once per call: half the bytes in 16 bits;
 * from LR_WIDEN_ROWS x rows a chunk of 16-bit W is widened once into the
 * thread's scratch and read by the f32 tiles).
 * Calls with many x rows go to cpu_gemm.c (fy_cpu_gemm_rows: outputs in
 * lanes, no horizontal sum per output, the same bits) where it is faster. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#include "backend/cpu/cpu.h"
#include "core/half.h"

static inline void put(float *y, float v, int accumulate) { *y = accumulate ? *y + v : v; }

static float lanes16(const float a[16]) {
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

/* The weights' element format: FY_H16_F16, FY_H16_BF16 (uint16_t) or f32.
 * The kernels below take it as a constant, one instance per format. */
enum { LR_F16 = FY_CPU_WF_F16, LR_BF16 = FY_CPU_WF_BF16, LR_F32 = FY_CPU_WF_F32 };

/* Element i of a weight array of format wf. */
static inline const void *lr_at(const void *w, size_t i, int wf) {
    return wf == LR_F32 ? (const void *)((const float *)w + i) : (const void *)((const uint16_t *)w + i);
}

static inline float lr_w1(const void *w, size_t i, int wf) {
    if (wf == LR_F32) return ((const float *)w)[i];
    const uint16_t h = ((const uint16_t *)w)[i];
    return wf == LR_BF16 ? fy_bf16_to_f32(h) : fy_f16_to_f32(h);
}

/* All nx rows of x against nw rows of W (outputs y[:, 0..nw)); W's row
 * stride ldw counts elements of its format. */
typedef void lr_block_fn(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw, float *y,
                         int ldy, int accumulate);

static inline void lr_block_portable(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw,
                                     float *y, int ldy, int accumulate, const int WF) {
    for (int j = 0; j < nw; j++) {
        const void *wr = lr_at(w, (size_t)j * ldw, WF);
        for (int i = 0; i < nx; i++) {
            const float *xr = x + (size_t)i * ldx;
            float a[16] = {0};
            int k = 0;
            for (; k + 16 <= in; k += 16)
                for (int l = 0; l < 16; l++) a[l] += xr[k + l] * lr_w1(wr, k + l, WF);
            for (int l = 0; k + l < in; l++) a[l] += xr[k + l] * lr_w1(wr, k + l, WF);
            put(y + (size_t)i * ldy + j, lanes16(a), accumulate);
        }
    }
}

/* One block function per format from a generic one: NAME_f32, NAME_f16,
 * NAME_bf16 (ATTR: the instances' target attribute). */
#define LR_INSTANCES(NAME, ATTR)                                                                                    \
    ATTR static void NAME##_f32(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw,         \
                                float *y, int ldy, int accumulate) {                                               \
        NAME(in, x, ldx, nx, w, ldw, nw, y, ldy, accumulate, LR_F32);                                              \
    }                                                                                                              \
    ATTR static void NAME##_f16(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw,         \
                                float *y, int ldy, int accumulate) {                                               \
        NAME(in, x, ldx, nx, w, ldw, nw, y, ldy, accumulate, LR_F16);                                              \
    }                                                                                                              \
    ATTR static void NAME##_bf16(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw,        \
                                 float *y, int ldy, int accumulate) {                                              \
        NAME(in, x, ldx, nx, w, ldw, nw, y, ldy, accumulate, LR_BF16);                                             \
    }

LR_INSTANCES(lr_block_portable, )

#if defined(__GNUC__) && defined(__x86_64__)
#define FY_LR_X86 1

/* The fixed tree over 8 lanes (t_j + t_{j+4}, then pairs) in registers. */
__attribute__((target("avx2"))) static inline float lr_hsum256(__m256 t) {
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    __m128 v = _mm_add_ps(u, _mm_shuffle_ps(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehl_ps(v, v)));
}

/* ---- AVX2 (+F16C): lanes 0..7 and 8..15 in two registers. Tiles of 4 x
 * rows by 1 W row, each W row loaded (and widened) once per 4 x rows (N =
 * 16 rows of 512 against 1536 W rows, one thread, on an EPYC under load:
 * f32 28-42 -> 42-52 GFLOP/s, f16 41 -> 54-58, bf16 36 -> 50-54 against
 * the 2 x 2 tiles before, 2026-12-06); for a single x row (decode: the
 * weights stream from memory) 1 x 4 with the rows two tiles on prefetched
 * (a 1536 x 512 matrix: f32 190 -> 100 us, f16 54 -> 40 us, bf16 66 -> 48
 * us against 1 x 2 tiles; from DRAM, 96 such f16 matrices, two tiles on was
 * ~5% faster than one, 1 KB on along the same rows 40% slower) ---- */

/* Eight 16-bit weights widened exactly: vcvtph2ps, or bf16 shifted up. */
__attribute__((target("avx2,f16c"), always_inline)) static inline __m256 lr_widen256(__m128i h, const int WF) {
    if (WF == LR_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Weights i .. i+7 of w as floats. */
__attribute__((target("avx2,f16c"), always_inline)) static inline __m256 lr_load256(const void *w, size_t i,
                                                                                    const int WF) {
    if (WF == LR_F32) return _mm256_loadu_ps((const float *)w + i);
    return lr_widen256(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)), WF);
}

/* The first n of them (n may lie outside 1..7), zeros after: f32 under the
 * lane mask m; 16 bits as n/2 pairs (n is even: in is), never touching the
 * memory past them. */
__attribute__((target("avx2,f16c"), always_inline)) static inline __m256 lr_load256_tail(const void *w, size_t i,
                                                                                         int n, __m256i m,
                                                                                         const int WF) {
    if (WF == LR_F32) return _mm256_maskload_ps((const float *)w + i, m);
    __m128i pm = _mm_cmpgt_epi32(_mm_set1_epi32(n / 2), _mm_setr_epi32(0, 1, 2, 3));
    return lr_widen256(_mm_maskload_epi32((const int *)((const uint16_t *)w + i), pm), WF);
}

/* RX x rows by RW W rows from k = 0 to in; RX, RW, WF constants once inlined. */
__attribute__((target("avx2,f16c"), always_inline)) static inline void
lr_tile256(int in, const float *x, int ldx, const void *w, size_t ldw, float *y, int ldy, int accumulate,
           const int RX, const int RW, const int WF) {
    __m256 a[4][4][2];
    #pragma GCC unroll 4
    for (int i = 0; i < RX; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) a[i][j][0] = a[i][j][1] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        if (RX == 1 && RW == 4) { /* the rows two tiles on into L1 (integer arithmetic: they may lie
                                     past the matrix, where a prefetch is harmless but a pointer is not) */
            const uintptr_t next = (uintptr_t)2 * RW * ldw * (WF == LR_F32 ? 4 : 2);
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++)
                _mm_prefetch((const char *)((uintptr_t)lr_at(w, (size_t)j * ldw + k, WF) + next), _MM_HINT_T0);
        }
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            __m256 xv[4], wv[4];
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++) xv[i] = _mm256_loadu_ps(x + (size_t)i * ldx + k + 8 * h);
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++) wv[j] = lr_load256(w, (size_t)j * ldw + k + 8 * h, WF);
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++)
                #pragma GCC unroll 4
                for (int j = 0; j < RW; j++) a[i][j][h] = _mm256_add_ps(a[i][j][h], _mm256_mul_ps(xv[i], wv[j]));
        }
    }
    if (k < in) {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            const int n = in - k - 8 * h;
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
            __m256 xv[4], wv[4];
            #pragma GCC unroll 4
            for (int i = 0; i < RX; i++) xv[i] = _mm256_maskload_ps(x + (size_t)i * ldx + k + 8 * h, m);
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++) wv[j] = lr_load256_tail(w, (size_t)j * ldw + k + 8 * h, n, m, WF);
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

__attribute__((target("avx2,f16c"), always_inline)) static inline void
lr_block_avx2(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw, float *y, int ldy,
              int accumulate, const int WF) {
    if (nx == 1) { /* decode */
        int j = 0;
        for (; j + 4 <= nw; j += 4)
            lr_tile256(in, x, ldx, lr_at(w, (size_t)j * ldw, WF), ldw, y + j, ldy, accumulate, 1, 4, WF);
        for (; j < nw; j++)
            lr_tile256(in, x, ldx, lr_at(w, (size_t)j * ldw, WF), ldw, y + j, ldy, accumulate, 1, 1, WF);
        return;
    }
    for (int j = 0; j < nw; j++) {
        const void *wj = lr_at(w, (size_t)j * ldw, WF);
        int i = 0;
        for (; i + 4 <= nx; i += 4)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 4, 1, WF);
        for (; i + 2 <= nx; i += 2)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 2, 1, WF);
        for (; i < nx; i++)
            lr_tile256(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 1, WF);
    }
}

LR_INSTANCES(lr_block_avx2, __attribute__((target("avx2,f16c"))))

/* ---- AVX-512: the 16 lanes in one register; tiles of 4 x 4 ---- */

/* Sixteen 16-bit weights widened exactly (vcvtph2ps zmm is AVX-512F). The
 * 16-bit paths of the AVX-512 kernel have not run on a machine with
 * AVX-512 (written beside the AVX2 ones, which were tested on an AVX2-only
 * EPYC, 2026-12-06); the f32 path is the kernel as it was before. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 lr_widen512(__m256i h, const int WF) {
    if (WF == LR_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f"), always_inline)) static inline __m512 lr_load512(const void *w, size_t i,
                                                                                 const int WF) {
    if (WF == LR_F32) return _mm512_loadu_ps((const float *)w + i);
    return lr_widen512(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)), WF);
}

/* The first n (1..15, even for 16 bits) weights, zeros after; m: n ones. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 lr_load512_tail(const void *w, size_t i,
                                                                                      int n, __mmask16 m,
                                                                                      const int WF) {
    if (WF == LR_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m512i p = _mm512_maskz_loadu_epi32((__mmask16)((1u << (n / 2)) - 1), (const uint16_t *)w + i);
    return lr_widen512(_mm512_castsi512_si256(p), WF);
}

__attribute__((target("avx512f"), always_inline)) static inline void
lr_tile512(int in, const float *x, int ldx, const void *w, size_t ldw, float *y, int ldy, int accumulate,
           const int RX, const int RW, const int WF) {
    __m512 a[4][4];
    #pragma GCC unroll 4
    for (int i = 0; i < RX; i++)
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) a[i][j] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        if (RX == 1 && RW == 4) { /* decode: the rows two tiles on into L1, as lr_tile256 does */
            const uintptr_t next = (uintptr_t)2 * RW * ldw * (WF == LR_F32 ? 4 : 2);
            #pragma GCC unroll 4
            for (int j = 0; j < RW; j++)
                _mm_prefetch((const char *)((uintptr_t)lr_at(w, (size_t)j * ldw + k, WF) + next), _MM_HINT_T0);
        }
        __m512 xv[4], wv[4];
        #pragma GCC unroll 4
        for (int i = 0; i < RX; i++) xv[i] = _mm512_loadu_ps(x + (size_t)i * ldx + k);
        #pragma GCC unroll 4
        for (int j = 0; j < RW; j++) wv[j] = lr_load512(w, (size_t)j * ldw + k, WF);
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
        for (int j = 0; j < RW; j++) wv[j] = lr_load512_tail(w, (size_t)j * ldw + k, in - k, m, WF);
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

__attribute__((target("avx512f"), always_inline)) static inline void
lr_block_avx512(int in, const float *x, int ldx, int nx, const void *w, size_t ldw, int nw, float *y, int ldy,
                int accumulate, const int WF) {
    int j = 0;
    for (; j + 4 <= nw; j += 4) {
        const void *wj = lr_at(w, (size_t)j * ldw, WF);
        int i = 0;
        for (; i + 4 <= nx; i += 4)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 4, 4, WF);
        for (; i < nx; i++)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 4, WF);
    }
    for (; j < nw; j++) {
        const void *wj = lr_at(w, (size_t)j * ldw, WF);
        int i = 0;
        for (; i + 4 <= nx; i += 4)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 4, 1, WF);
        for (; i < nx; i++)
            lr_tile512(in, x + (size_t)i * ldx, ldx, wj, ldw, y + (size_t)i * ldy + j, ldy, accumulate, 1, 1, WF);
    }
}

LR_INSTANCES(lr_block_avx512, __attribute__((target("avx512f"))))

/* nw rows of `in` 16-bit weights (row stride ldw) widened into out[nw][in]
 * with the kernels' own loads, so each float is the one they would have
 * multiplied by. */
#define LR_WIDEN(NAME, ATTR, LOAD, VL, STORE)                                                                         \
    ATTR static void NAME(const void *w, size_t ldw, int nw, int in, int WF, float *out) {                     \
        for (int j = 0; j < nw; j++) {                                                                        \
            const void *wj = lr_at(w, (size_t)j * ldw, WF);                                                    \
            float *o = out + (size_t)j * in;                                                                  \
            int k = 0;                                                                                        \
            if (WF == LR_F16)                                                                                 \
                for (; k + VL <= in; k += VL) STORE(o + k, LOAD(wj, k, LR_F16));                              \
            else                                                                                              \
                for (; k + VL <= in; k += VL) STORE(o + k, LOAD(wj, k, LR_BF16));                             \
            for (; k < in; k++) o[k] = lr_w1(wj, k, WF);                                                      \
        }                                                                                                     \
    }
LR_WIDEN(lr_widen_avx512, __attribute__((target("avx512f"))), lr_load512, 16, _mm512_storeu_ps)
LR_WIDEN(lr_widen_avx2, __attribute__((target("avx2,f16c"))), lr_load256, 8, _mm256_storeu_ps)
#endif

/* Kernel k's instance for format wf. */
#define LR_PICK(k, wf) ((wf) == LR_F32 ? k##_f32 : (wf) == LR_F16 ? k##_f16 : k##_bf16)

#ifdef FY_LR_X86
#include <cpuid.h>
/* AVX2 and F16C. clang 14's __builtin_cpu_supports knows no "f16c", so
 * F16C comes from CPUID leaf 1 (ECX bit 29), read once: CPUID exits to
 * the hypervisor in a VM (microseconds), and this runs once per linear. */
static int lr_avx2_f16c(void) {
    static int cached = -1; /* a benign race: every thread computes the same value */
    if (cached < 0) {
        unsigned a, b, c, d;
        int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
        cached = f16c && __builtin_cpu_supports("avx2");
    }
    return cached;
}
#endif

/* The best kernel family this CPU runs, or the lesser one
 * fy_backend_opts.cpu_q8 asks for (the same option as the Q8_0 kernels; all
 * give the same bits). The AVX2 kernels also want F16C (every AVX2 CPU has
 * it; every AVX-512 CPU has both). */
static int lr_isa(fy_backend *be) {
    const int want = ((fy_cpu_impl *)be->impl)->q8_kernel;
    if (want == FY_CPU_Q8_PORTABLE) return FY_CPU_ISA_PORTABLE;
#ifdef FY_LR_X86
    const int avx2 = lr_avx2_f16c();
    if (want == FY_CPU_Q8_AVX2 && avx2) return FY_CPU_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f")) return FY_CPU_ISA_AVX512;
    if (avx2) return FY_CPU_ISA_AVX2;
#endif
    return FY_CPU_ISA_PORTABLE;
}

static lr_block_fn *lr_best(int isa, int wf) {
#ifdef FY_LR_X86
    if (isa == FY_CPU_ISA_AVX512) return LR_PICK(lr_block_avx512, wf);
    if (isa == FY_CPU_ISA_AVX2) return LR_PICK(lr_block_avx2, wf);
#endif
    (void)isa;
    return LR_PICK(lr_block_portable, wf);
}

/* W rows per parallel chunk: a multiple of every tile's height. */
#define LR_CHUNK 16
/* x rows from which 16-bit W is widened once per chunk (into a thread's
 * scratch) and run through the f32 kernel: the 16-bit kernels widen each
 * weight again for every tile of x rows (vpmovzxwd + vpslld were ~18 % of
 * tiny's bf16 prefill linears, perf annotate, 2026-12-07). Widening is
 * exact, so the bits are the same either way. */
#define LR_WIDEN_ROWS 8
/* Multiply-adds below which a call stays on one thread: waking the team
 * costs ~10-50 us on a shared machine, more than a 256 x 256 one-row
 * linear takes alone (~3 us, 2026-12-05). */
#define LR_PAR_MIN 65536u

/* Both ops once the pointers are checked; ldw in elements of format wf. */
static void lr_run(fy_backend *be, int wf, int N, int in, int out, const float *xp, int ldx, const void *wp,
                   size_t ldw, float *yp, int ldy, int accumulate) {
    if (!in) { /* empty dot products: 0 */
        for (int n = 0; n < N; n++)
            for (int o = 0; o < out; o++) put(yp + (size_t)n * ldy + o, 0.0f, accumulate);
        return;
    }
    const int isa = lr_isa(be);
    if (N > 1 && fy_cpu_gemm_rows(be, isa, wf, N, in, out, xp, ldx, wp, ldw, yp, ldy, accumulate))
        return;
    lr_block_fn *block = lr_best(isa, wf);
    const int chunks = (out + LR_CHUNK - 1) / LR_CHUNK;
    void (*widen)(const void *, size_t, int, int, int, float *) = NULL;
#ifdef FY_LR_X86
    if (wf != LR_F32 && N >= LR_WIDEN_ROWS)
        widen = isa == FY_CPU_ISA_AVX512 ? lr_widen_avx512 : isa == FY_CPU_ISA_AVX2 ? lr_widen_avx2 : NULL;
#endif
    float *scr = widen ? fy_cpu_scratch(be, (size_t)omp_get_max_threads() * LR_CHUNK * in, "linear_h16") : NULL;
    if (widen && !scr) return; /* error recorded */
    lr_block_fn *block32 = lr_best(isa, LR_F32);
#pragma omp parallel for schedule(static) if (chunks > 1 && (size_t)N * in * out >= LR_PAR_MIN)
    for (int c = 0; c < chunks; c++) {
        int o0 = c * LR_CHUNK, nw = out - o0 < LR_CHUNK ? out - o0 : LR_CHUNK;
        if (widen) {
            float *w32 = scr + (size_t)omp_get_thread_num() * LR_CHUNK * in;
            widen(lr_at(wp, (size_t)o0 * ldw, wf), ldw, nw, in, wf, w32);
            block32(in, xp, ldx, N, w32, (size_t)in, nw, yp + o0, ldy, accumulate);
        } else {
            block(in, xp, ldx, N, lr_at(wp, (size_t)o0 * ldw, wf), ldw, nw, yp + o0, ldy, accumulate);
        }
    }
}

void fy_cpu_linear_rows(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref w, int ldw, fy_ref y,
                        int ldy, int accumulate) {
    const char *op = "linear_rows";
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    const float *xp = in ? fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x") : NULL;
    const float *wp = in ? fy_cpu_f(be, w, fy_cpu_span(out, ldw, in), op, "w") : NULL;
    if (!yp || (in && (!xp || !wp))) return;
    lr_run(be, LR_F32, N, in, out, xp, ldx, wp, (size_t)ldw, yp, ldy, accumulate);
}

/* W: out rows of `in` 16-bit weights, packed (in / 2 elements a row). */
void fy_cpu_linear_h16(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w, fy_ref y,
                       int ldy, int accumulate) {
    const char *op = "linear_h16";
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    const float *xp = in ? fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x") : NULL;
    const float *wp = in ? fy_cpu_f(be, w, (size_t)out * (in / 2), op, "w") : NULL;
    if (!yp || (in && (!xp || !wp))) return;
    lr_run(be, fmt == FY_H16_BF16 ? LR_BF16 : LR_F16, N, in, out, xp, ldx, wp, (size_t)in, yp, ldy, accumulate);
}
