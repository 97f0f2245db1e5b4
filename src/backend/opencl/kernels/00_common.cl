/* Shared by every kernel of the OpenCL backend (this file is first in the
 * program: the .cl files are concatenated in name order).
 *
 * Host build options define:
 *   FY_RED   work-group size of row reductions (a power of two)
 *   FY_FP64  when the device has cl_khr_fp64: sums the cpu backend forms in
 *            double are formed in double here too (acc_t)
 * Multiply-adds are never contracted into FMAs outside the GEMM (which uses
 * mad() on purpose): elementwise maths then rounds exactly as the cpu
 * backend's, so sigmoid, SwiGLU, AdamW and the router's choices agree
 * bitwise with it. */
#pragma OPENCL FP_CONTRACT OFF

#ifdef FY_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double acc_t;
#else
typedef float acc_t;
#endif

/* Device-side error codes (opencl.h has the same list and the messages). */
#define FY_OCL_E_ROUTER_IDX 1
#define FY_OCL_E_BALANCE_IDX 2
#define FY_OCL_E_GATHER_IDX 3
#define FY_OCL_E_SCATTER_IDX 4
#define FY_OCL_E_ROWSDOT_IDX 5
#define FY_OCL_E_XENT_TARGET 6
#define FY_OCL_E_DEQUANT_IDX 7

/* The first error wins: errf = {code, row, value, limit}; sync reports it. */
inline void fy_flag(global int *errf, int code, int row, int value, int limit) {
    if (atomic_cmpxchg(errf, 0, code) == 0) {
        errf[1] = row;
        errf[2] = value;
        errf[3] = limit;
    }
}

/* exp(x) exactly as fy_cpu_exp (backend/cpu/cpu.h): Cephes polynomial with
 * the same operation order and the same clamping, so it is bitwise equal. */
inline float fy_exp(float x) {
    uint xb = as_uint(x);
    uint mag = xb & 0x7fffffffu, neg = xb >> 31;
    const uint HI = 0x42b0999au /* 88.3f */, LO = 0x42aea8f6u /* 87.33f */;
    uint nm = 0u - neg;
    uint lim = (LO & nm) | (HI & ~nm);
    uint om = 0u - (uint)(mag > lim);
    uint cb = (lim & om) | (mag & ~om) | (xb & 0x80000000u);
    float xc = as_float(cb);
    const float magic = 12582912.0f;
    float t = xc * 1.44269504088896341f + magic;
    float nf = t - magic;
    uint n = as_uint(t) - 0x4B400000u;
    float r = xc - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint eb = (n + 127u) << 23;
    float res = p * as_float(eb);
    uint rb = as_uint(res);
    rb &= ~(0u - (neg & (uint)(mag > LO)));
    uint qm = 0u - (uint)(mag > 0x7f800000u);
    rb = (xb & qm) | (rb & ~qm);
    return as_float(rb);
}

inline float fy_sigmoid(float x) { return 1.0f / (1.0f + fy_exp(-x)); }

/* Work-group reductions over FY_RED items in a fixed tree order: the same
 * inputs give the same result on every run. `sh` is a local array of
 * FY_RED declared by the kernel. Every item must call them. */
inline acc_t wg_sum_acc(local acc_t *sh, acc_t v) {
    int l = get_local_id(0);
    sh[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = FY_RED / 2; s > 0; s >>= 1) {
        if (l < s) sh[l] += sh[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    acc_t r = sh[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_sum_f(local float *sh, float v) {
    int l = get_local_id(0);
    sh[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = FY_RED / 2; s > 0; s >>= 1) {
        if (l < s) sh[l] += sh[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = sh[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_max_f(local float *sh, float v) {
    int l = get_local_id(0);
    sh[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = FY_RED / 2; s > 0; s >>= 1) {
        if (l < s) sh[l] = sh[l + s] > sh[l] ? sh[l + s] : sh[l];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = sh[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
