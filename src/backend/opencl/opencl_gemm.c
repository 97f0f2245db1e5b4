/* GEMM of the OpenCL backend: the tiled kernels of kernels/gemm.cl (64x64
 * tiles, 16x16 work-groups, 4x4 per item) on GPUs and accelerators, the
 * register-blocked ones without local memory on CPU devices, or one item
 * per element when C has few rows (decode), where a 64-row tile would idle
 * most of the group. */
#include "backend/opencl/opencl.h"

/* Rows of C up to which the one-item-per-element kernel is used. */
#define SMALL_M 4

/* One GEMM operand: matrix (buffer, offset, row stride) and its strides
 * between the matrices of a batch (outer, inner). */
static void gemm_operand(fy_ocl_call *c, cl_mem m, size_t off, int ld, size_t s1, size_t s2) {
    fy_ocl_rows(c, m, off, ld);
    fy_ocl_ulong(c, s1);
    fy_ocl_ulong(c, s2);
}

void fy_ocl_gemm_batched(fy_backend *be, const char *op, int trans_a, int trans_b, int M, int N,
                         int K, float alpha, cl_mem A, size_t ao, int lda, size_t sa1,
                         size_t sa2, cl_mem B, size_t bo, int ldb, size_t sb1, size_t sb2,
                         float beta, cl_mem C, size_t co, int ldc, size_t sc1, size_t sc2,
                         int batch, int inner, int causal) {
    if (!M || !N || !batch) return;
    if (batch == 1 && M <= SMALL_M) { /* computes everything: valid for any `causal` */
        fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_gemm_small, op);
        fy_ocl_int(&c, trans_a);
        fy_ocl_int(&c, trans_b);
        fy_ocl_int(&c, M);
        fy_ocl_int(&c, N);
        fy_ocl_int(&c, K);
        fy_ocl_float(&c, alpha);
        fy_ocl_rows(&c, A, ao, lda);
        fy_ocl_rows(&c, B, bo, ldb);
        fy_ocl_float(&c, beta);
        fy_ocl_rows(&c, C, co, ldc);
        size_t g[2] = {fy_ocl_round((size_t)N, 64), (size_t)M};
        fy_ocl_run(&c, 2, g, NULL);
        return;
    }
    /* CPU devices: the kernels without local memory (PoCL runs them ~2x faster) */
    int reg = fy_ocl(be)->cpu_device;
    int kern = reg ? (trans_a ? (trans_b ? FY_OCL_K_fy_gemm_reg_tt : FY_OCL_K_fy_gemm_reg_tn)
                              : (trans_b ? FY_OCL_K_fy_gemm_reg_nt : FY_OCL_K_fy_gemm_reg_nn))
                   : (trans_a ? (trans_b ? FY_OCL_K_fy_gemm_tt : FY_OCL_K_fy_gemm_tn)
                              : (trans_b ? FY_OCL_K_fy_gemm_nt : FY_OCL_K_fy_gemm_nn));
    fy_ocl_call c = fy_ocl_begin(be, kern, op);
    fy_ocl_int(&c, M);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, K);
    fy_ocl_float(&c, alpha);
    gemm_operand(&c, A, ao, lda, sa1, sa2);
    gemm_operand(&c, B, bo, ldb, sb1, sb2);
    fy_ocl_float(&c, beta);
    gemm_operand(&c, C, co, ldc, sc1, sc2);
    fy_ocl_int(&c, inner > 0 ? inner : 1);
    fy_ocl_int(&c, causal);
    size_t rows = reg ? (size_t)(M + 3) / 4 : (size_t)(M + 63) / 64 * 16;
    size_t g[3] = {(size_t)(N + 63) / 64 * 16, rows, (size_t)batch};
    size_t l[3] = {16, reg ? 1 : 16, 1};
    fy_ocl_run(&c, 3, g, l);
}

void fy_ocl_gemm(fy_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 fy_ref A, int lda, fy_ref B, int ldb, float beta, fy_ref C, int ldc) {
    int ar = trans_a ? K : M, ac = trans_a ? M : K; /* stored shapes */
    int br = trans_b ? N : K, bc = trans_b ? K : N;
    cl_mem c = fy_ocl_mem(be, C, fy_ocl_span(M, ldc, N), "gemm", "C");
    if (!c) return;
    cl_mem a = NULL, b = NULL;
    if (K > 0) {
        a = fy_ocl_mem(be, A, fy_ocl_span(ar, lda, ac), "gemm", "A");
        b = fy_ocl_mem(be, B, fy_ocl_span(br, ldb, bc), "gemm", "B");
        if (!a || !b) return;
    } else { /* C = beta C: the kernel reads neither operand */
        a = b = c;
    }
    fy_ocl_gemm_batched(be, "gemm", trans_a, trans_b, M, N, K, alpha, a, K ? A.off : 0, lda, 0, 0,
                        b, K ? B.off : 0, ldb, 0, 0, beta, c, C.off, ldc, 0, 0, 1, 1,
                        FY_OCL_DENSE);
}
