/* 16-bit inference weights (backend.h linear_h16): each weight widened
 * exactly (core/half.c's bits: integer arithmetic, NaN payloads kept and
 * made quiet) and dotted with x's row in the cpu backend's order
 * (cpu_linear.c: 16 lanes, lane l adding the products of k = l, l + 16,
 * ..., mul then add, no contraction (00_common.cl), then the fixed tree),
 * so the bits equal the cpu's, on a device with single-precision denormals
 * (CL_FP_DENORM) where bf16 subnormals or denormal products occur. The
 * weights' buffer is a float buffer: its ushort offset is 2 x the element
 * offset passed. */

inline float fy_widen16(uint h, int bf16) {
    if (bf16) return as_float(h << 16);
    uint sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 31u) return as_float(sign | 0x7f800000u | m << 13 | (m ? 0x400000u : 0u));
    if (e == 0u) return as_float(sign | as_uint((float)m * 0x1p-24f)); /* zero, subnormal: exact */
    return as_float(sign | (e + 112u) << 23 | m << 13);
}

/* y[n, o] (=|+=) dot(x[n, :], widen(W[o, :])); one output a work-item,
 * global (out, N). */
kernel void fy_linear_h16(int N, int in, int out, int bf16, global const float *x, ulong xo, int ldx,
                          global const ushort *w, ulong wo, global float *y, ulong yo, int ldy, int accumulate) {
    int o = get_global_id(0), n = get_global_id(1);
    if (o >= out || n >= N) return;
    global const ushort *wr = w + wo * 2 + (ulong)o * in;
    global const float *xr = x + xo + (ulong)n * ldx;
    float a[16];
    for (int l = 0; l < 16; l++) a[l] = 0.0f;
    int k = 0;
    for (; k + 16 <= in; k += 16)
        for (int l = 0; l < 16; l++) a[l] += xr[k + l] * fy_widen16(wr[k + l], bf16);
    for (int l = 0; k + l < in; l++) a[l] += xr[k + l] * fy_widen16(wr[k + l], bf16);
    float u[8];
    for (int l = 0; l < 8; l++) u[l] = a[l] + a[l + 8];
    float r = ((u[0] + u[4]) + (u[1] + u[5])) + ((u[2] + u[6]) + (u[3] + u[7]));
    global float *yp = y + yo + (ulong)n * ldy + o;
    *yp = accumulate ? *yp + r : r;
}
