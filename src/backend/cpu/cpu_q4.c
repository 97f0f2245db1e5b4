/* Q4_0 inference weights on the CPU (backend.h linear_q4): llama.cpp's
 * Q4_0 x Q8_0. The input row is quantized as for linear_q8 and each block's
 * dot product is exact in integers, combined in linear_q8's order (lane l
 * of accumulator half b & 1 adds the integer sum of products 4l .. 4l+3
 * times sw_b * sx_b; the 16 lanes reduce in cpu_quant.c's fixed tree), so
 * a Q4_0 matrix gives the bits of linear_q8 on its codes minus 8. Half the
 * bytes of Q8_0 stream per token. */
#include <omp.h>
#include <stdint.h>

#include "backend/cpu/cpu.h"

static float lanes_sum(const float a[16]) {
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

/* Outputs [o0, o1) of one quantized input row (xq, sx). */
static void q4_rows_portable(int in, int o0, int o1, const int8_t *xq, const float *sx, const uint8_t *q,
                             const float *s, float *y, int accumulate) {
    const int nb = in / FY_Q8_BLOCK;
    for (int o = o0; o < o1; o++) {
        float a[16] = {0};
        for (int b = 0; b < nb; b++) {
            const uint8_t *qb = q + ((size_t)o * nb + b) * (FY_Q8_BLOCK / 2);
            const int8_t *xb = xq + b * FY_Q8_BLOCK;
            int8_t wb[FY_Q8_BLOCK];
            for (int j = 0; j < FY_Q8_BLOCK / 2; j++) {
                wb[j] = (int8_t)((qb[j] & 15) - 8);
                wb[j + FY_Q8_BLOCK / 2] = (int8_t)((qb[j] >> 4) - 8);
            }
            const float d = s[(size_t)o * nb + b] * sx[b];
            for (int l = 0; l < 8; l++) {
                int v = 0;
                for (int k = 0; k < 4; k++) v += wb[4 * l + k] * xb[4 * l + k];
                a[(b & 1) * 8 + l] += (float)v * d;
            }
        }
        float r = lanes_sum(a);
        y[o] = accumulate ? y[o] + r : r;
    }
}

#define Q4_CHUNK 8

void fy_cpu_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws, fy_ref y,
                      int ldy, int accumulate) {
    const char *op = "linear_q4";
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x");
    const uint8_t *qp = (const uint8_t *)fy_cpu_f(be, wq, (size_t)out * (in / 8), op, "wq");
    const float *sp = fy_cpu_f(be, ws, (size_t)out * (in / FY_Q8_BLOCK), op, "ws");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    const size_t per = (size_t)in / 4 + in / FY_Q8_BLOCK; /* a quantized input row: bytes, then scales */
    float *scr = fy_cpu_scratch(be, per * N, op);
    if (!xp || !qp || !sp || !yp || !scr) return;
    for (int n = 0; n < N; n++)
        fy_q8_quantize(xp + (size_t)n * ldx, 1, in, in, (int8_t *)(scr + per * n), scr + per * n + in / 4);
    const int chunks = (out + Q4_CHUNK - 1) / Q4_CHUNK;
#pragma omp parallel for schedule(static) if ((size_t)out * in * N >= 65536)
    for (int c = 0; c < chunks; c++) {
        int o0 = c * Q4_CHUNK, o1 = o0 + Q4_CHUNK < out ? o0 + Q4_CHUNK : out;
        for (int n = 0; n < N; n++)
            q4_rows_portable(in, o0, o1, (const int8_t *)(scr + per * n), scr + per * n + in / 4, qp, sp,
                             yp + (size_t)n * ldy, accumulate);
    }
}
