/* Private to the CPU backend: shared helpers and the op entry points that
 * cpu_backend.c puts into the vtable. */
#ifndef FY_CPU_H
#define FY_CPU_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "backend/backend.h"

/* Work (elements touched) below which a loop stays on the calling thread. */
#define FY_CPU_PAR_MIN 32768

/* Fixed chunk of rows for reductions across rows: partial sums are formed per
 * chunk and combined in chunk order, so results never depend on the number
 * of threads. */
#define FY_CPU_ROW_CHUNK 32

typedef struct fy_cpu_impl {
    /* RoPE cos/sin table for the last (pos0, T, d_r, theta) seen. */
    float *rope_tab;
    size_t rope_cap;
    int rope_pos0, rope_T, rope_dr;
    fy_rope_params rope_p;
    int rope_valid;
    /* Scratch for ops that need a temporary (grown on demand). */
    float *scratch;
    size_t scratch_cap;
    int q8_kernel; /* fy_backend_opts.cpu_q8 (FY_CPU_Q8_*) */
    int gemm_rows; /* fy_backend_opts.cpu_gemm_rows */
    /* Buffers over memory the backend does not own (cpu_adopt): freed by
     * their release, not by the allocator; a handful per model. */
    struct fy_cpu_adopted {
        void *handle;
        void (*release)(void *ctx);
        void *ctx;
    } *adopted;
    int n_adopted;
} fy_cpu_impl;

/* OpenBLAS (cpu_blas.c): opened at the first op that needs it. An op that
 * calls fy_cpu_sgemm / fy_cpu_sgemv (cblas_sgemm / cblas_sgemv, the same
 * arguments) first calls fy_cpu_blas_open, outside its parallel regions:
 * 1 when they are set, else 0 with the backend's error recorded. */
#include <cblas.h>
typedef void fy_cpu_sgemm_fn(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint M,
                             blasint N, blasint K, float alpha, const float *A, blasint lda, const float *B,
                             blasint ldb, float beta, float *C, blasint ldc);
typedef void fy_cpu_sgemv_fn(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE t, blasint m, blasint n, float alpha,
                             const float *a, blasint lda, const float *x, blasint incx, float beta, float *y,
                             blasint incy);
extern fy_cpu_sgemm_fn *fy_cpu_sgemm;
extern fy_cpu_sgemv_fn *fy_cpu_sgemv;
int fy_cpu_blas_open(fy_backend *be, const char *op);

/* The backend's scratch of at least n floats, or NULL (error recorded). */
float *fy_cpu_scratch(fy_backend *be, size_t n, const char *op);

/* Checked pointers: the element `need` past r must lie inside r's buffer.
 * On failure records a sticky error naming op and argument, returns NULL. */
float *fy_cpu_f(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg);
int32_t *fy_cpu_i(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg);

/* Elements spanned by `rows` rows of `width` with row stride ld. */
static inline size_t fy_cpu_span(size_t rows, size_t ld, size_t width) {
    return rows ? (rows - 1) * ld + width : 0;
}

/* Hot row kernels are compiled for AVX-512, AVX2 and baseline x86-64 and
 * the best one is picked when the program loads (GCC target_clones; the
 * build has no -march). The library is built with -ffp-contract=off
 * (CMakeLists.txt): avx512f brings 512-bit FMA and GCC contracted mul + add
 * into it in the avx512f clones (46 fused instructions in cpu_rows.c alone,
 * found 2026-12-03), so the clones differed in the last bits. Without
 * contraction, and with every kernel fixing its operation order (explicit
 * 8-lane reductions, elementwise maths), all clones give the same bits, so
 * a run resumed on a machine with another ISA stays bit-exact. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FY_CPU_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FY_CPU_HOT
#endif

/* exp(x) in float, written so that loops calling it vectorize under
 * `#pragma omp simd` at -O2 (every select is integer mask arithmetic: float
 * compares would block if-conversion under -ftrapping-math). Cephes expf
 * polynomial, ~1 ulp. exp(x) = 0 for x < -87.33 (no denormals), saturates at
 * exp(88.3) for larger x, NaN propagates. */
static inline float fy_cpu_exp(float x) {
    uint32_t xb;
    memcpy(&xb, &x, 4);
    uint32_t mag = xb & 0x7fffffffu, neg = xb >> 31;
    const uint32_t HI = 0x42b0999au /* 88.3f */, LO = 0x42aea8f6u /* 87.33f */;
    uint32_t nm = 0u - neg;
    uint32_t lim = (LO & nm) | (HI & ~nm);
    uint32_t om = 0u - (uint32_t)(mag > lim);
    uint32_t cb = (lim & om) | (mag & ~om) | (xb & 0x80000000u);
    float xc;
    memcpy(&xc, &cb, 4);
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = xc * 1.44269504088896341f + magic;
    float nf = t - magic;
    uint32_t tb;
    memcpy(&tb, &t, 4);
    uint32_t n = tb - 0x4B400000u; /* the integer nf, two's complement */
    float r = xc - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t eb = (n + 127u) << 23;
    float sc;
    memcpy(&sc, &eb, 4);
    float res = p * sc;
    uint32_t rb;
    memcpy(&rb, &res, 4);
    rb &= ~(0u - (neg & (uint32_t)(mag > LO)));   /* underflow (and -inf) to 0 */
    uint32_t qm = 0u - (uint32_t)(mag > 0x7f800000u); /* NaN in, NaN out */
    rb = (xb & qm) | (rb & ~qm);
    memcpy(&res, &rb, 4);
    return res;
}

/* Reductions over a row with 8 independent lanes (they vectorize at -O2)
 * combined in a fixed order: deterministic, and not latency-bound. */
static inline float fy_cpu_max(const float *x, int n) {
    float a[8];
    for (int l = 0; l < 8; l++) a[l] = x[0];
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] = x[i + l] > a[l] ? x[i + l] : a[l];
    float m = a[0];
    for (int l = 1; l < 8; l++) m = a[l] > m ? a[l] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static inline float fy_cpu_sum(const float *x, int n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += x[i + l];
    float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += x[i];
    return s;
}

static inline double fy_cpu_sum_d(const float *x, int n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += (double)x[i + l];
    double s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += (double)x[i];
    return s;
}

static inline float fy_cpu_dot(const float *x, const float *y, int n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += x[i + l] * y[i + l];
    float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

/* Products formed in double (exact), accumulated in double. */
static inline double fy_cpu_dot_d(const float *x, const float *y, int n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += (double)x[i + l] * (double)y[i + l];
    double s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    for (; i < n; i++) s += (double)x[i] * (double)y[i];
    return s;
}

static inline float fy_cpu_sigmoid(float x) { return 1.0f / (1.0f + fy_cpu_exp(-x)); }

/* --- ops (see backend.h for the contracts) --- */
void fy_cpu_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps,
                        fy_ref y, int ldy, fy_ref rstd);
void fy_cpu_rmsnorm_bwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, fy_ref rstd,
                        fy_ref dy, int lddy, fy_ref dx, int lddx, int accumulate_dx, fy_ref dw);
void fy_cpu_rope(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r, fy_ref x, int ld,
                 int head_stride, const fy_rope_params *rp, int inverse);
void fy_cpu_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref h, int ldh);
void fy_cpu_swiglu_bwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref dh, int lddh, fy_ref dg, fy_ref du);

void fy_cpu_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref out, fy_ref P);
void fy_cpu_attn_bwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref P, fy_ref dout, fy_ref dq, fy_ref dk, fy_ref dv_);

void fy_cpu_mla_decode(fy_backend *be, int H, int S, int r, int dn, int dr, int dv, float scale,
                       fy_ref q, int ldq, fy_ref wkv_b, fy_ref ckv, int ld_ckv, fy_ref kpe, int ld_kpe,
                       fy_ref out);

void fy_cpu_linear_rows(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref w, int ldw, fy_ref y,
                        int ldy, int accumulate);
void fy_cpu_mla_paged(fy_backend *be, int n, int H, int r, int dn, int dr, int dv, float scale, fy_ref q, int ldq,
                      fy_ref wkv_b, fy_ref ckv, fy_ref kpe, int bs, const int32_t *blocks, const int32_t *tab,
                      const int32_t *len, fy_ref out, int ldo);
void fy_cpu_linear_q8(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq,
                      fy_ref ws, fy_ref y, int ldy, int accumulate);
void fy_cpu_swiglu_q8(fy_backend *be, int d, int F, fy_ref x, fy_ref gq, fy_ref gs, fy_ref uq, fy_ref us,
                      fy_ref dq, fy_ref ds, fy_ref g, fy_ref u, fy_ref h, fy_ref y, int accumulate);
void fy_cpu_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws, fy_ref y,
                      int ldy, int accumulate);
void fy_cpu_linear_h16(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w, fy_ref y,
                       int ldy, int accumulate);
/* The linear's weight formats (FY_H16_* and f32) and kernel families. */
enum { FY_CPU_WF_F16 = FY_H16_F16, FY_CPU_WF_BF16 = FY_H16_BF16, FY_CPU_WF_F32 };
enum { FY_CPU_ISA_PORTABLE, FY_CPU_ISA_AVX2, FY_CPU_ISA_AVX512 };
/* y[n, o] (=|+=) dot(x[n, :], W[o, :]) for all N rows with linear_rows'
 * bits (cpu_gemm.c), W of format wf (FY_CPU_WF_*, row stride ldw in its
 * elements), kernels of family isa. Returns 0 where it leaves the call to
 * the caller's kernels (no kernel for isa, or N below the rows from which
 * it is faster: fy_backend_opts.cpu_gemm_rows), else 1 (also when it
 * failed: the error is recorded on be). */
int fy_cpu_gemm_rows(fy_backend *be, int isa, int wf, int N, int in, int out, const float *x, int ldx, const void *w,
                     size_t ldw, float *y, int ldy, int accumulate);
void fy_cpu_dequant_rows(fy_backend *be, int fmt, int rows, int in, fy_ref wq, fy_ref ws, int n, fy_ref idx,
                         fy_ref dst, int ldd);
/* h[j] = silu(g[j]) * u[j] for one row (swiglu_fwd's; swiglu_q8 shares it
 * so the two give the same bits). */
void fy_cpu_swiglu_row(const float *g, const float *u, float *h, int F);

void fy_cpu_router_fwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref logits, fy_ref bias,
                       fy_ref s, fy_ref idx, fy_ref w);
void fy_cpu_router_bwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref s, fy_ref idx,
                       fy_ref dw, fy_ref dlogits, int accumulate);
float fy_cpu_balance_fwd(fy_backend *be, int B, int T, int E, int K, float alpha, fy_ref s,
                         fy_ref idx);
void fy_cpu_balance_bwd(fy_backend *be, int B, int T, int E, int K, float alpha, float dloss,
                        fy_ref s, fy_ref idx, fy_ref dlogits);
void fy_cpu_gather_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx, fy_ref w,
                        fy_ref dst, int ldd);
void fy_cpu_scatter_add_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx,
                             fy_ref w, fy_ref dst, int ldd);
void fy_cpu_rows_dot(fy_backend *be, int n, int D, fy_ref a, int lda, fy_ref ia, fy_ref b, int ldb,
                     fy_ref out, int accumulate);
void fy_cpu_dropout(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                    const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate);

double fy_cpu_xent_fwdbwd(fy_backend *be, int N, int V, fy_ref logits, fy_ref targets,
                          int ignore_index, float grad_scale, fy_ref losses, fy_ref dlogits);
void fy_cpu_adamw(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v, float lr,
                  float b1, float b2, float eps, float wd, int t, float grad_scale);

#endif
