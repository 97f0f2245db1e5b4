/* 16-bit inference weights on the CPU (backend.h linear_h16): W as IEEE
 * half or bfloat16, widened exactly to float and dotted with x's rows in
 * linear_rows' order (cpu_linear.c: 16 lanes, lane l adding the products
 * of k = l, l + 16, ..., no fused multiply-add, then the fixed tree), so
 * the bits equal linear_rows on the widened matrix. Half the bytes of f32
 * stream per token. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"
#include "core/half.h"

static float lanes_sum(const float a[16]) {
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}

/* Outputs [o0, o1) of every input row; wf: `in` floats of scratch. */
static void h16_rows_portable(int fmt, int in, int o0, int o1, int N, const float *x, int ldx, const uint16_t *w,
                              float *wf, float *y, int ldy, int accumulate) {
    for (int o = o0; o < o1; o++) {
        const uint16_t *wr = w + (size_t)o * in;
        for (int k = 0; k < in; k++) wf[k] = fmt == FY_H16_BF16 ? fy_bf16_to_f32(wr[k]) : fy_f16_to_f32(wr[k]);
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * ldx;
            float a[16] = {0};
            int k = 0;
            for (; k + 16 <= in; k += 16)
                for (int l = 0; l < 16; l++) a[l] += xr[k + l] * wf[k + l];
            for (int l = 0; k + l < in; l++) a[l] += xr[k + l] * wf[k + l];
            float r = lanes_sum(a);
            float *yo = y + (size_t)n * ldy + o;
            *yo = accumulate ? *yo + r : r;
        }
    }
}

#define H16_CHUNK 16

void fy_cpu_linear_h16(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w, fy_ref y,
                       int ldy, int accumulate) {
    const char *op = "linear_h16";
    const float *xp = fy_cpu_f(be, x, fy_cpu_span(N, ldx, in), op, "x");
    const uint16_t *wp = (const uint16_t *)fy_cpu_f(be, w, (size_t)out * (in / 2), op, "w");
    float *yp = fy_cpu_f(be, y, fy_cpu_span(N, ldy, out), op, "y");
    const int nt = omp_get_max_threads();
    float *scr = fy_cpu_scratch(be, (size_t)in * nt, op); /* one widened row per thread */
    if (!xp || !wp || !yp || !scr) return;
    const int chunks = (out + H16_CHUNK - 1) / H16_CHUNK;
#pragma omp parallel for schedule(static) num_threads(nt) if ((size_t)out * in * N >= 65536)
    for (int c = 0; c < chunks; c++) {
        int o0 = c * H16_CHUNK, o1 = o0 + H16_CHUNK < out ? o0 + H16_CHUNK : out;
        h16_rows_portable(fmt, in, o0, o1, N, xp, ldx, wp, scr + (size_t)in * omp_get_thread_num(), yp, ldy,
                          accumulate);
    }
}
