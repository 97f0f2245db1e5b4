/* Q8_0 inference weights (backend.h linear_q8): the input rows quantized
 * like the weights, exact integer block sums, and the float accumulation of
 * the cpu backend's kernels (cpu_quant.c) step for step, so the two
 * backends give the same bits. Quants are bytes; their buffers are float
 * buffers, so byte offsets are 4 x the element offsets passed. */

/* One block of 32 of row n a work-item; global (in/32, N). scale =
 * max|x| / 127, q = round-half-even(x / scale) by the 1.5 * 2^23 trick (no
 * contraction: 00_common.cl). */
kernel void fy_q8_quant(int N, int in, global const float *x, ulong xo, int ldx, global char *xq, ulong xqo,
                        global float *sx, ulong sxo) {
    int b = get_global_id(0), n = get_global_id(1), nb = in / 32;
    if (b >= nb || n >= N) return;
    global const float *p = x + xo + (ulong)n * ldx + (ulong)b * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) {
        float a = fabs(p[i]);
        amax = a > amax ? a : amax;
    }
    float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    sx[sxo + (ulong)n * nb + b] = d;
    global char *q = xq + xqo * 4 + (ulong)n * in + (ulong)b * 32;
    for (int i = 0; i < 32; i++) {
        float v = (p[i] * id + 12582912.0f) - 12582912.0f;
        q[i] = (char)(int)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
    }
}

/* y (=|+=) the 16 lanes reduced as cpu_quant.c's (cpu_q8.h). */
void fy_q8_put(float a[16], global float *yp, int accumulate) {
    float u[8];
    for (int l = 0; l < 8; l++) u[l] = a[l] + a[l + 8];
    float r = ((u[0] + u[4]) + (u[1] + u[5])) + ((u[2] + u[6]) + (u[3] + u[7]));
    *yp = accumulate ? *yp + r : r;
}

/* y[n, o] (=|+=) sum_b ws[o, b] sx[n, b] sum_{i in b} wq[o, i] xq[n, i];
 * one output a work-item, global (out, N). Lane l of half (b & 1) adds
 * block b's products 4l .. 4l+3; the 16 lanes reduce as cpu_quant.c's. */
kernel void fy_linear_q8(int N, int in, int out, global const char *xq, ulong xqo, global const float *sx,
                         ulong sxo, global const char *wq, ulong wqo, global const float *ws, ulong wso,
                         global float *y, ulong yo, int ldy, int accumulate) {
    int o = get_global_id(0), n = get_global_id(1), nb = in / 32;
    if (o >= out || n >= N) return;
    global const char *w = wq + wqo * 4 + (ulong)o * in, *xr = xq + xqo * 4 + (ulong)n * in;
    global const float *s = ws + wso + (ulong)o * nb, *t = sx + sxo + (ulong)n * nb;
    float a[16];
    for (int l = 0; l < 16; l++) a[l] = 0.0f;
    for (int b = 0; b < nb; b++) {
        const float d = s[b] * t[b];
        for (int l = 0; l < 8; l++) {
            int v = 0;
            for (int k = 0; k < 4; k++) v += w[b * 32 + 4 * l + k] * xr[b * 32 + 4 * l + k];
            a[(b & 1) * 8 + l] += (float)v * d;
        }
    }
    fy_q8_put(a, y + yo + (ulong)n * ldy + o, accumulate);
}

/* linear_q4 (backend.h): as fy_linear_q8 with wq[o, i] = n - 8, n the
 * 4-bit code of weight i (GGUF Q4_0: block b of row o is 16 bytes, byte j
 * holding weight j in its low nibble and weight j + 16 in its high one),
 * so lanes 0 .. 3 read low nibbles and 4 .. 7 high ones: the bits of
 * cpu_q4.c, which are linear_q8's on the codes - 8. */
kernel void fy_linear_q4(int N, int in, int out, global const char *xq, ulong xqo, global const float *sx,
                         ulong sxo, global const uchar *wq, ulong wqo, global const float *ws, ulong wso,
                         global float *y, ulong yo, int ldy, int accumulate) {
    int o = get_global_id(0), n = get_global_id(1), nb = in / 32;
    if (o >= out || n >= N) return;
    global const uchar *w = wq + wqo * 4 + (ulong)o * nb * 16;
    global const char *xr = xq + xqo * 4 + (ulong)n * in;
    global const float *s = ws + wso + (ulong)o * nb, *t = sx + sxo + (ulong)n * nb;
    float a[16];
    for (int l = 0; l < 16; l++) a[l] = 0.0f;
    for (int b = 0; b < nb; b++) {
        const float d = s[b] * t[b];
        for (int l = 0; l < 8; l++) {
            int v = 0;
            for (int k = 0; k < 4; k++) {
                uchar c = w[b * 16 + (4 * l + k) % 16];
                v += ((l < 4 ? c & 15 : c >> 4) - 8) * xr[b * 32 + 4 * l + k];
            }
            a[(b & 1) * 8 + l] += (float)v * d;
        }
    }
    fy_q8_put(a, y + yo + (ulong)n * ldy + o, accumulate);
}

/* dequant_rows (backend.h): dst[i, j] = weight j of row r (r = idx[i], or
 * i without idx) as f32, the cpu's bits (cpu_dequant.c): scale * quant as
 * one float product, or the exact widening of kernels/h16.cl. fmt 0 f16, 1
 * bf16, 2 Q8_0, 3 Q4_0 (FY_WF_*). One weight a work-item, global (in, n). */
kernel void fy_dequant_rows(int fmt, int rows, int in, global const uchar *wq, ulong wqo, global const float *ws,
                            ulong wso, global const int *idx, ulong io, int has_idx, global float *dst, ulong dof,
                            int ldd, global int *errf) {
    int j = get_global_id(0), i = get_global_id(1), nb = in / 32;
    if (j >= in) return;
    int r = has_idx ? idx[io + i] : i;
    if (r < 0 || r >= rows) {
        if (j == 0) fy_flag(errf, FY_OCL_E_DEQUANT_IDX, i, r, rows);
        return;
    }
    float v;
    if (fmt == 2) {
        v = ws[wso + (ulong)r * nb + j / 32] * (float)((global const char *)wq)[wqo * 4 + (ulong)r * in + j];
    } else if (fmt == 3) {
        int b = j / 32, t = j % 32;
        uchar c = wq[wqo * 4 + ((ulong)r * nb + b) * 16 + t % 16];
        v = ws[wso + (ulong)r * nb + b] * (float)((int)(t < 16 ? c & 15 : c >> 4) - 8);
    } else {
        global const ushort *h = (global const ushort *)wq;
        v = fy_widen16(h[wqo * 2 + (ulong)r * in + j], fmt == 1);
    }
    dst[dof + (ulong)i * ldd + j] = v;
}
