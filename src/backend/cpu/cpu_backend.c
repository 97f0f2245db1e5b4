/* The CPU backend: host memory, OpenMP loops, OpenBLAS GEMM. Ops run
 * synchronously on the calling thread (plus its OpenMP team); errors are
 * recorded as sticky and returned by sync. Arguments arrive checked
 * (backend_check.c); buffers are checked here as they are resolved. */
#include <errno.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/cpu/cpu.h"

float *fy_cpu_f(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg) {
    return fy_be_ref_ok(be, r, need, op, arg) ? (float *)r.buf->handle + r.off : NULL;
}

int32_t *fy_cpu_i(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg) {
    return (int32_t *)fy_cpu_f(be, r, need, op, arg);
}

float *fy_cpu_scratch(fy_backend *be, size_t n, const char *op) {
    fy_cpu_impl *im = be->impl;
    if (n > im->scratch_cap) {
        free(im->scratch);
        im->scratch_cap = 0;
        im->scratch = malloc((n ? n : 1) * sizeof(float));
        if (!im->scratch) {
            fy_be_set_error(be, "cpu %s: out of memory for %zu floats of scratch", op, n);
            return NULL;
        }
        im->scratch_cap = n;
    }
    return im->scratch;
}

/* ---------------------------------------------------------------- lifecycle */

static void cpu_destroy(fy_backend *be) {
    fy_cpu_impl *im = be->impl;
    if (im) {
        free(im->rope_tab);
        free(im->scratch);
        for (int i = 0; i < im->n_adopted; i++) /* buffers never freed: their memory goes back all the same */
            if (im->adopted[i].release) im->adopted[i].release(im->adopted[i].ctx);
        free(im->adopted);
    }
    free(im);
    free(be);
}

static int cpu_sync(fy_backend *be, fy_err *err) { return fy_be_take_error(be, err); }

/* ---------------------------------------------------------------- memory */

/* A buffer is zero-filled memory that becomes resident only where an op
 * writes it: from LAZY_MIN bytes on, an anonymous mapping (the kernel's zero
 * pages), below it calloc'd memory. A memset here made every page resident
 * at once (first touch costs ~1 s per GB on a VM, docs/RELIABILITY.md),
 * even those of buffers an inference never writes (the gradients, the
 * backward's workspace). From HUGE_MIN bytes on the mapping asks for
 * transparent huge pages (THP in "madvise" mode, a common default, gives
 * them only then): a first touch faults 2 MB in, not 4 KB, which is most of
 * a cold start's page faults. A 64-byte header before the data records the
 * mapping's length (0: calloc'd) for cpu_free, so it needs nothing but the
 * handle. */
#define LAZY_MIN ((size_t)1 << 20)
#define HUGE_MIN ((size_t)8 << 20)
#define HEADER 64

static int cpu_alloc(fy_backend *be, fy_buf *out, size_t n, fy_err *err) {
    memset(out, 0, sizeof *out);
    if (n > (SIZE_MAX - 2 * HEADER) / 4) return fy_fail(err, "cpu alloc: %zu elements is too many", n);
    size_t bytes = HEADER + ((n * 4 + 63) & ~(size_t)63);
    char *base;
    if (bytes >= LAZY_MIN) {
        base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED)
            return fy_fail(err, "cpu alloc: cannot map %zu bytes: %s", bytes, strerror(errno));
#ifdef MADV_HUGEPAGE
        if (bytes >= HUGE_MIN) madvise(base, bytes, MADV_HUGEPAGE); /* advice: its failure changes nothing */
#endif
        *(size_t *)base = bytes;
    } else {
        /* calloc aligns to 16 bytes: 48 more let the data start on 64 */
        char *raw = calloc(1, bytes + 48);
        if (!raw) return fy_fail(err, "cpu alloc: out of memory allocating %zu bytes", bytes);
        base = raw + ((64 - (uintptr_t)raw % 64) % 64);
        ((size_t *)base)[0] = 0;
        ((char **)base)[1] = raw;
    }
    out->be = be;
    out->n = n;
    out->handle = base + HEADER;
    return 0;
}

/* The index of handle among the adopted buffers, or -1. */
static int adopted_at(const fy_cpu_impl *im, const void *handle) {
    for (int i = 0; handle && i < im->n_adopted; i++)
        if (im->adopted[i].handle == handle) return i;
    return -1;
}

/* Host memory used in place: the kernels read weights through the handle
 * like any buffer's; it has no header (the bytes before it are not ours),
 * so cpu_free and cpu_sparse look it up first. */
static int cpu_adopt(fy_backend *be, fy_buf *out, const void *host, size_t n, void (*release)(void *ctx), void *ctx,
                     fy_err *err) {
    fy_cpu_impl *im = be->impl;
    memset(out, 0, sizeof *out);
    struct fy_cpu_adopted *a = realloc(im->adopted, (size_t)(im->n_adopted + 1) * sizeof *a);
    if (!a) return fy_fail(err, "cpu adopt: out of memory");
    im->adopted = a;
    a[im->n_adopted++] = (struct fy_cpu_adopted){(void *)host, release, ctx};
    out->be = be;
    out->n = n;
    out->handle = (void *)host;
    return 0;
}

static void cpu_free(fy_backend *be, fy_buf *b) {
    if (!b) return;
    fy_cpu_impl *im = be ? be->impl : NULL;
    int k = im ? adopted_at(im, b->handle) : -1;
    if (k >= 0) {
        struct fy_cpu_adopted a = im->adopted[k];
        im->adopted[k] = im->adopted[--im->n_adopted];
        if (a.release) a.release(a.ctx);
    } else if (b->handle) {
        char *base = (char *)b->handle - HEADER;
        size_t len = ((size_t *)base)[0];
        if (len) munmap(base, len);
        else free(((char **)base)[1]);
    }
    b->handle = NULL;
    b->n = 0;
}

static void cpu_sparse(fy_backend *be, fy_buf *b) {
    if (!b || adopted_at(be->impl, b->handle) >= 0) return;
    size_t len = b->handle ? ((size_t *)((char *)b->handle - HEADER))[0] : 0;
#ifdef MADV_NOHUGEPAGE
    if (len) madvise((char *)b->handle - HEADER, len, MADV_NOHUGEPAGE); /* advice: its failure changes nothing */
#endif
}

/* Copies of 4 MB and more in 1 MB pieces on the threads: loading a model
 * uploads every f32 weight, and a fresh buffer's first touch is most of it. */
static void copy_par(float *d, const float *s, size_t n) {
    const long np = (long)((n + (1u << 18) - 1) >> 18);
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 20))
    for (long p = 0; p < np; p++) {
        size_t i = (size_t)p << 18, len = n - i < ((size_t)1 << 18) ? n - i : ((size_t)1 << 18);
        memcpy(d + i, s + i, len * 4);
    }
}

static void cpu_upload(fy_backend *be, fy_ref dst, const void *src, size_t n) {
    float *d = fy_cpu_f(be, dst, n, "upload", "dst");
    if (d && src) copy_par(d, src, n);
}

static void cpu_download(fy_backend *be, void *dst, fy_ref src, size_t n) {
    float *s = fy_cpu_f(be, src, n, "download", "src");
    if (s && dst) memcpy(dst, s, n * 4);
}

static void cpu_copy(fy_backend *be, fy_ref dst, fy_ref src, size_t n) {
    float *d = fy_cpu_f(be, dst, n, "copy", "dst");
    float *s = fy_cpu_f(be, src, n, "copy", "src");
    if (d && s) memmove(d, s, n * 4);
}

static void cpu_fill(fy_backend *be, fy_ref dst, float value, size_t n) {
    float *d = fy_cpu_f(be, dst, n, "fill", "dst");
    if (!d) return;
    ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for simd schedule(static) if (n > 4 * FY_CPU_PAR_MIN)
    for (ptrdiff_t i = 0; i < nn; i++) d[i] = value;
}

/* ---------------------------------------------------------------- BLAS-1 */

static void cpu_axpy(fy_backend *be, size_t n, float alpha, fy_ref x, fy_ref y) {
    float *xp = fy_cpu_f(be, x, n, "axpy", "x");
    float *yp = fy_cpu_f(be, y, n, "axpy", "y");
    if (!xp || !yp) return;
    ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for simd schedule(static) if (n > FY_CPU_PAR_MIN)
    for (ptrdiff_t i = 0; i < nn; i++) yp[i] += alpha * xp[i];
}

static void cpu_scale(fy_backend *be, size_t n, float alpha, fy_ref x) {
    float *xp = fy_cpu_f(be, x, n, "scale", "x");
    if (!xp) return;
    ptrdiff_t nn = (ptrdiff_t)n;
#pragma omp parallel for simd schedule(static) if (n > FY_CPU_PAR_MIN)
    for (ptrdiff_t i = 0; i < nn; i++) xp[i] *= alpha;
}

/* Fixed 4096-element chunks summed in double, partials combined in order:
 * the result does not depend on the thread count. */
#define SUMSQ_CHUNK 4096
FY_CPU_HOT static double sumsq_chunk(const float *x, int n) { return fy_cpu_dot_d(x, x, n); }

static double cpu_sumsq(fy_backend *be, size_t n, fy_ref x) {
    float *xp = fy_cpu_f(be, x, n, "sumsq", "x");
    if (!xp) return 0.0;
    ptrdiff_t nc = (ptrdiff_t)((n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK);
    double *part = malloc((size_t)nc * sizeof *part);
    if (!part) {
        fy_be_set_error(be, "cpu sumsq: out of memory");
        return 0.0;
    }
#pragma omp parallel for schedule(static) if (n > FY_CPU_PAR_MIN)
    for (ptrdiff_t c = 0; c < nc; c++) {
        size_t i0 = (size_t)c * SUMSQ_CHUNK, i1 = i0 + SUMSQ_CHUNK < n ? i0 + SUMSQ_CHUNK : n;
        part[c] = sumsq_chunk(xp + i0, (int)(i1 - i0));
    }
    double s = 0.0;
    for (ptrdiff_t c = 0; c < nc; c++) s += part[c];
    free(part);
    return s;
}

/* ---------------------------------------------------------------- copy3d */

static void copy3d_row(float *d, const float *s, int n2, int accumulate) {
    if (accumulate) {
#pragma omp simd
        for (int k = 0; k < n2; k++) d[k] += s[k];
    } else {
        memmove(d, s, (size_t)n2 * sizeof *d);
    }
}

static void cpu_copy3d(fy_backend *be, int n0, int n1, int n2, fy_ref dst, size_t ds0,
                       size_t ds1, fy_ref src, size_t ss0, size_t ss1, int accumulate) {
    size_t dneed = (size_t)(n0 - 1) * ds0 + (size_t)(n1 - 1) * ds1 + (size_t)n2;
    size_t sneed = (size_t)(n0 - 1) * ss0 + (size_t)(n1 - 1) * ss1 + (size_t)n2;
    float *d = fy_cpu_f(be, dst, dneed, "copy3d", "dst");
    float *s = fy_cpu_f(be, src, sneed, "copy3d", "src");
    if (!d || !s) return;
    size_t work = (size_t)n0 * n1 * n2;
    ptrdiff_t rows = (ptrdiff_t)n0 * n1;
    /* Destination rows pairwise disjoint: every (i, j) row in parallel. */
    int disjoint = (n1 == 1 || ds1 >= (size_t)n2) &&
                   (n0 == 1 || ds0 >= (size_t)(n1 - 1) * ds1 + (size_t)n2);
    /* Destination rows either coincide or are disjoint (a stride of 0
     * reduces): split columns among threads, each adding rows in order. */
    size_t span_j = ds1 ? (size_t)(n1 - 1) * ds1 + (size_t)n2 : (size_t)n2;
    int colsplit = (n1 == 1 || ds1 == 0 || ds1 >= (size_t)n2) &&
                   (n0 == 1 || ds0 == 0 || ds0 >= span_j);
    if (disjoint) {
#pragma omp parallel for schedule(static) if (work > FY_CPU_PAR_MIN)
        for (ptrdiff_t r = 0; r < rows; r++) {
            size_t i = (size_t)r / n1, j = (size_t)r % n1;
            copy3d_row(d + i * ds0 + j * ds1, s + i * ss0 + j * ss1, n2, accumulate);
        }
    } else if (colsplit) {
        int nb = (n2 + 63) / 64;
#pragma omp parallel for schedule(static) if (work > FY_CPU_PAR_MIN && nb > 1)
        for (int cb = 0; cb < nb; cb++) {
            int k0 = cb * 64, k1 = k0 + 64 < n2 ? k0 + 64 : n2;
            for (size_t i = 0; i < (size_t)n0; i++)
                for (size_t j = 0; j < (size_t)n1; j++)
                    copy3d_row(d + i * ds0 + j * ds1 + k0, s + i * ss0 + j * ss1 + k0, k1 - k0,
                               accumulate);
        }
    } else {
        for (size_t i = 0; i < (size_t)n0; i++)
            for (size_t j = 0; j < (size_t)n1; j++)
                copy3d_row(d + i * ds0 + j * ds1, s + i * ss0 + j * ss1, n2, accumulate);
    }
}

/* ---------------------------------------------------------------- GEMM */

static void cpu_gemm(fy_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                     fy_ref A, int lda, fy_ref B, int ldb, float beta, fy_ref C, int ldc) {
    int ar = trans_a ? K : M, ac = trans_a ? M : K; /* stored shapes */
    int br = trans_b ? N : K, bc = trans_b ? K : N;
    float *c = fy_cpu_f(be, C, fy_cpu_span(M, ldc, N), "gemm", "C");
    if (!c) return;
    if (K == 0) { /* C = beta * C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
        return;
    }
    float *a = fy_cpu_f(be, A, fy_cpu_span(ar, lda, ac), "gemm", "A");
    float *b = fy_cpu_f(be, B, fy_cpu_span(br, ldb, bc), "gemm", "B");
    if (!a || !b || !fy_cpu_blas_open(be, "gemm")) return;
    if (M == 1) {
        /* One output row (decode, an expert with one token): sgemm would pack
         * the whole of B for it; gemv streams B once. x is A's only row (or
         * column, stride lda, when A is stored transposed). */
        if (beta == 0.0f)
            for (int j = 0; j < N; j++) c[j] = 0.0f; /* gemv reads y even when beta is 0 */
        if (trans_b)
            fy_cpu_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, b, ldb, a, trans_a ? lda : 1, beta, c, 1);
        else
            fy_cpu_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, b, ldb, a, trans_a ? lda : 1, beta, c, 1);
        return;
    }
    /* OpenBLAS's own threading splits C by the thread count, and its edge
     * kernels round differently from its main ones, so its results change
     * with OMP_NUM_THREADS (seen on AMD EPYC with 0.3.21). We split C into
     * pieces fixed by the shape alone (the longer of M and N, >= 128 rows or
     * columns each, at most 8) and run single-threaded OpenBLAS on each, so
     * the bits are the same for any thread count: a run resumed on another
     * machine, or data-parallel ranks with fewer cores, continue exactly.
     * Even one piece runs in a parallel region, which keeps OpenBLAS to one
     * thread. Measured no slower than OpenBLAS's threading (docs/PERFORMANCE.md). */
    const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    const int by_m = M >= N, dim = by_m ? M : N;
    int pieces = dim / 128;
    pieces = pieces < 1 ? 1 : pieces > 8 ? 8 : pieces;
    const int per = ((dim + pieces - 1) / pieces + 15) / 16 * 16;
    const int np = (dim + per - 1) / per;
#pragma omp parallel for schedule(static, 1)
    for (int p = 0; p < np; p++) {
        int lo = p * per, len = dim - lo < per ? dim - lo : per;
        if (by_m)
            fy_cpu_sgemm(CblasRowMajor, ta, tb, len, N, K, alpha, trans_a ? a + lo : a + (size_t)lo * lda, lda, b,
                        ldb, beta, c + (size_t)lo * ldc, ldc);
        else
            fy_cpu_sgemm(CblasRowMajor, ta, tb, M, len, K, alpha, a, lda, trans_b ? b + (size_t)lo * ldb : b + lo,
                        ldb, beta, c + lo, ldc);
    }
}

/* ---------------------------------------------------------------- vtable */

static const fy_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .sync = cpu_sync,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .sparse = cpu_sparse,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .sumsq = cpu_sumsq,
    .copy3d = cpu_copy3d,
    .gemm = cpu_gemm,
    .rmsnorm_fwd = fy_cpu_rmsnorm_fwd,
    .rmsnorm_bwd = fy_cpu_rmsnorm_bwd,
    .rope = fy_cpu_rope,
    .attn_fwd = fy_cpu_attn_fwd,
    .attn_bwd = fy_cpu_attn_bwd,
    .swiglu_fwd = fy_cpu_swiglu_fwd,
    .swiglu_bwd = fy_cpu_swiglu_bwd,
    .router_fwd = fy_cpu_router_fwd,
    .router_bwd = fy_cpu_router_bwd,
    .balance_fwd = fy_cpu_balance_fwd,
    .balance_bwd = fy_cpu_balance_bwd,
    .gather_rows = fy_cpu_gather_rows,
    .scatter_add_rows = fy_cpu_scatter_add_rows,
    .rows_dot = fy_cpu_rows_dot,
    .dropout = fy_cpu_dropout,
    .xent_fwdbwd = fy_cpu_xent_fwdbwd,
    .adamw = fy_cpu_adamw,
    .mla_decode = fy_cpu_mla_decode,
    .linear_q8 = fy_cpu_linear_q8,
    .swiglu_q8 = fy_cpu_swiglu_q8,
    .linear_q4 = fy_cpu_linear_q4,
    .linear_h16 = fy_cpu_linear_h16,
    .linear_rows = fy_cpu_linear_rows,
    .mla_paged = fy_cpu_mla_paged,
    .dequant_rows = fy_cpu_dequant_rows,
    .adopt = cpu_adopt,
};

/* For fy_backend_create_opts (backend.c), which installs the checks. */
int fy_backend_cpu_new(const fy_backend_opts *opts, fy_backend **out, fy_err *err) {
    *out = NULL;
    fy_backend *be = calloc(1, sizeof *be);
    fy_cpu_impl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return fy_fail(err, "cpu backend: out of memory");
    }
    im->q8_kernel = opts->cpu_q8;
    im->gemm_rows = opts->cpu_gemm_rows;
    be->ops = &cpu_ops;
    be->impl = im;
    *out = be;
    return 0;
}
