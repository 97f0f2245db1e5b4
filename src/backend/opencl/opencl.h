/* Private to the OpenCL backend: device state, checked buffer access, the
 * kernel-launch helper and the op entry points the vtable uses. */
#ifndef FY_OPENCL_H
#define FY_OPENCL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __APPLE__
#include <OpenCL/cl.h>
#else
#include <CL/cl.h>
#endif

#include "backend/backend.h"

/* Every kernel of the kernels/ directory, by name (enum FY_OCL_K_<name>). */
#define FY_OCL_KERNELS(X)                                                                     \
    X(fy_axpy) X(fy_scale) X(fy_sumsq_part) X(fy_copy3d) X(fy_copy3d_serial) X(fy_adamw)       \
    X(fy_swiglu_fwd) X(fy_swiglu_bwd) X(fy_rope) X(fy_gemm_nn) X(fy_gemm_nt) X(fy_gemm_tn)     \
    X(fy_gemm_tt) X(fy_gemm_small) X(fy_gemm_reg_nn) X(fy_gemm_reg_nt) X(fy_gemm_reg_tn)       \
    X(fy_gemm_reg_tt) X(fy_rmsnorm_fwd) X(fy_rmsnorm_bwd_dx) X(fy_rmsnorm_dw_part)             \
    X(fy_rmsnorm_dw_sum) X(fy_softmax_causal) X(fy_softmax_rows) X(fy_softmax_bwd_causal)      \
    X(fy_xent) X(fy_rows_dot) X(fy_router_fwd) X(fy_router_bwd) X(fy_balance_counts)           \
    X(fy_balance_tok) X(fy_balance_bwd) X(fy_gather_rows) X(fy_scatter_add_rows)              \
    X(fy_q8_quant) X(fy_linear_q8) X(fy_linear_q4) X(fy_dropout) X(fy_linear_h16) \
    X(fy_dequant_rows)

enum {
#define FY_OCL_ENUM(name) FY_OCL_K_##name,
    FY_OCL_KERNELS(FY_OCL_ENUM)
#undef FY_OCL_ENUM
    FY_OCL_NKERNELS
};

/* Device-side error codes (kernels/00_common.cl has the same list). */
enum {
    FY_OCL_E_ROUTER_IDX = 1,
    FY_OCL_E_BALANCE_IDX = 2,
    FY_OCL_E_GATHER_IDX = 3,
    FY_OCL_E_SCATTER_IDX = 4,
    FY_OCL_E_ROWSDOT_IDX = 5,
    FY_OCL_E_XENT_TARGET = 6,
    FY_OCL_E_DEQUANT_IDX = 7,
};

/* Scratch slots: each op uses distinct slots for its temporaries. The
 * queue is in order, so a later op reusing a slot waits for the earlier. */
enum { FY_OCL_SCRATCH_A, FY_OCL_SCRATCH_B, FY_OCL_NSCRATCH };

/* Rows of one chunk of the rmsnorm dw reduction (as FY_CPU_ROW_CHUNK). */
#define FY_OCL_ROW_CHUNK 32

typedef struct fy_ocl_impl {
    cl_platform_id platform;
    cl_device_id device;
    cl_context ctx;
    cl_command_queue q;
    cl_program prog;
    cl_kernel k[FY_OCL_NKERNELS];
    char desc[512];     /* "platform / device" for messages */
    size_t red;         /* work-group size of row reductions (FY_RED) */
    int cpu_device;     /* CL_DEVICE_TYPE_CPU: GEMM without local memory */
    size_t acc_size;    /* sizeof(acc_t) on the device: 8 with cl_khr_fp64, else 4 */
    cl_ulong max_alloc; /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    cl_mem errf;        /* int[4] device-side error word: code, row, value, limit */
    cl_mem scratch[FY_OCL_NSCRATCH];
    size_t scratch_bytes[FY_OCL_NSCRATCH];
    /* RoPE cos/sin table on the device for the last (pos0, T, d_r, theta). */
    cl_mem rope_tab;
    size_t rope_cap;
    int rope_pos0, rope_T, rope_dr, rope_valid;
    fy_rope_params rope_p;
} fy_ocl_impl;

static inline fy_ocl_impl *fy_ocl(fy_backend *be) { return (fy_ocl_impl *)be->impl; }

/* Name of an OpenCL status code ("CL_OUT_OF_RESOURCES"). */
const char *fy_ocl_status(cl_int rc);

/* Records a sticky error naming op and the failed call when rc is not
 * CL_SUCCESS; returns rc != CL_SUCCESS. */
int fy_ocl_failed(fy_backend *be, cl_int rc, const char *op, const char *call);

/* The buffer of r, checked: `need` elements from r.off must lie inside it.
 * Records a sticky error naming op and argument and returns NULL if not. */
cl_mem fy_ocl_mem(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg);

/* A scratch buffer of at least `bytes` in slot `slot`, or NULL (error set). */
cl_mem fy_ocl_scratch(fy_backend *be, int slot, size_t bytes, const char *op);

/* Blocking read of `bytes` from the start of m into dst; -1 on failure. */
int fy_ocl_read(fy_backend *be, cl_mem m, size_t bytes, void *dst, const char *op);

/* Elements spanned by `rows` rows of `width` with row stride ld. */
static inline size_t fy_ocl_span(size_t rows, size_t ld, size_t width) {
    return rows ? (rows - 1) * ld + width : 0;
}

/* The number of whole rows of width D, stride ld, that fit in r's buffer. */
size_t fy_ocl_rows_in(fy_ref r, int D, int ld);

/* Kernel launch: set arguments in order, then run. An argument error is
 * remembered and reported (sticky) by fy_ocl_run, which then skips the
 * launch.
 *   fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_axpy, "axpy");
 *   fy_ocl_ulong(&c, n); fy_ocl_float(&c, alpha); fy_ocl_buf(&c, x, off); ...
 *   fy_ocl_run(&c, 1, global, NULL); */
typedef struct fy_ocl_call {
    fy_backend *be;
    cl_kernel k;
    int kernel; /* FY_OCL_K_*, for messages */
    const char *op;
    cl_uint n;
    cl_int rc;
    cl_uint bad_arg;
} fy_ocl_call;

fy_ocl_call fy_ocl_begin(fy_backend *be, int kernel, const char *op);
void fy_ocl_int(fy_ocl_call *c, int v);
void fy_ocl_float(fy_ocl_call *c, float v);
void fy_ocl_ulong(fy_ocl_call *c, cl_ulong v);
void fy_ocl_acc(fy_ocl_call *c, double v); /* an acc_t argument: double or float */
void fy_ocl_mem_only(fy_ocl_call *c, cl_mem m);
/* A buffer followed by its element offset (two kernel arguments). */
void fy_ocl_buf(fy_ocl_call *c, cl_mem m, size_t off);
/* A row-major matrix: buffer, element offset, row stride (three arguments). */
void fy_ocl_rows(fy_ocl_call *c, cl_mem m, size_t off, int ld);
/* An optional buffer: m and off, or (m NULL) `stand_in` at offset 0, which
 * the kernel must not read; then the flag m != NULL (three arguments). */
void fy_ocl_opt_buf(fy_ocl_call *c, cl_mem m, size_t off, cl_mem stand_in);
void fy_ocl_run(fy_ocl_call *c, cl_uint dims, const size_t *global, const size_t *local);

/* Global size rounded up to a multiple of m. */
static inline size_t fy_ocl_round(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* Zero structure attention's GEMMs may exploit (kernels/gemm.cl). */
enum {
    FY_OCL_DENSE = 0,
    FY_OCL_CAUSAL_C = 1,  /* only C[m][n], n <= m, is wanted */
    FY_OCL_CAUSAL_A = 2,  /* op(A)[m][k] = 0 for k > m */
    FY_OCL_CAUSAL_AT = 3, /* op(A)[m][k] = 0 for k < m */
};

/* GEMM over `batch` matrices (z / inner, z % inner with strides s1, s2 per
 * operand); operands already checked by the caller. */
void fy_ocl_gemm_batched(fy_backend *be, const char *op, int trans_a, int trans_b, int M, int N,
                         int K, float alpha, cl_mem A, size_t ao, int lda, size_t sa1,
                         size_t sa2, cl_mem B, size_t bo, int ldb, size_t sb1, size_t sb2,
                         float beta, cl_mem C, size_t co, int ldc, size_t sc1, size_t sc2,
                         int batch, int inner, int causal);

/* --- ops (see backend.h for the contracts) --- */
void fy_ocl_gemm(fy_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 fy_ref A, int lda, fy_ref B, int ldb, float beta, fy_ref C, int ldc);
void fy_ocl_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps,
                        fy_ref y, int ldy, fy_ref rstd);
void fy_ocl_rmsnorm_bwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, fy_ref rstd,
                        fy_ref dy, int lddy, fy_ref dx, int lddx, int accumulate_dx, fy_ref dw);
void fy_ocl_rope(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r, fy_ref x, int ld,
                 int head_stride, const fy_rope_params *rp, int inverse);
void fy_ocl_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref h, int ldh);
void fy_ocl_swiglu_bwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref dh, int lddh, fy_ref dg, fy_ref du);
void fy_ocl_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref out, fy_ref P);
void fy_ocl_attn_bwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                     fy_ref k, fy_ref v, fy_ref P, fy_ref dout, fy_ref dq, fy_ref dk, fy_ref dv_);
void fy_ocl_linear_q8(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                      fy_ref y, int ldy, int accumulate);
void fy_ocl_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                      fy_ref y, int ldy, int accumulate);
void fy_ocl_mla_decode(fy_backend *be, int H, int S, int r, int dn, int dr, int dv, float scale,
                       fy_ref q, int ldq, fy_ref wkv_b, fy_ref ckv, int ld_ckv, fy_ref kpe, int ld_kpe,
                       fy_ref out);
void fy_ocl_router_fwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref logits, fy_ref bias,
                       fy_ref s, fy_ref idx, fy_ref w);
void fy_ocl_router_bwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref s, fy_ref idx,
                       fy_ref dw, fy_ref dlogits, int accumulate);
float fy_ocl_balance_fwd(fy_backend *be, int B, int T, int E, int K, float alpha, fy_ref s,
                         fy_ref idx);
void fy_ocl_balance_bwd(fy_backend *be, int B, int T, int E, int K, float alpha, float dloss,
                        fy_ref s, fy_ref idx, fy_ref dlogits);
void fy_ocl_gather_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx, fy_ref w,
                        fy_ref dst, int ldd);
void fy_ocl_scatter_add_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx,
                             fy_ref w, fy_ref dst, int ldd);
void fy_ocl_dropout(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                    const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate);
void fy_ocl_rows_dot(fy_backend *be, int n, int D, fy_ref a, int lda, fy_ref ia, fy_ref b, int ldb,
                     fy_ref out, int accumulate);
double fy_ocl_xent_fwdbwd(fy_backend *be, int N, int V, fy_ref logits, fy_ref targets,
                          int ignore_index, float grad_scale, fy_ref losses, fy_ref dlogits);
void fy_ocl_adamw(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v, float lr,
                  float b1, float b2, float eps, float wd, int t, float grad_scale);
void fy_ocl_linear_h16(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w, fy_ref y,
                       int ldy, int accumulate);
void fy_ocl_dequant_rows(fy_backend *be, int fmt, int rows, int in, fy_ref wq, fy_ref ws, int n, fy_ref idx,
                         fy_ref dst, int ldd);

#endif
