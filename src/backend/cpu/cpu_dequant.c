/* Inference weight formats back to f32 on the CPU (backend.h dequant_rows):
 * Q8_0, Q4_0 (GGUF block order, cpu_q4.c) and the two 16-bit formats, one
 * row at a time. Each weight is one float product scale * quant (or an
 * exact widening), so the result is the same bits on every backend
 * (kernels/quant.cl) and whatever the threads. */
#include <stdint.h>

#include "backend/cpu/cpu.h"
#include "core/half.h"

#define Q4_BYTES 16 /* bytes of one Q4_0 block of 32 */

static void dq_row(int fmt, int in, const void *wq, const float *ws, size_t r, float *d) {
    const int nb = in / FY_Q8_BLOCK;
    if (fmt == FY_WF_Q8_0) {
        const int8_t *q = (const int8_t *)wq + r * (size_t)in;
        const float *s = ws + r * (size_t)nb;
        for (int i = 0; i < in; i++) d[i] = s[i / FY_Q8_BLOCK] * (float)q[i];
    } else if (fmt == FY_WF_Q4_0) {
        for (int b = 0; b < nb; b++) {
            const uint8_t *q = (const uint8_t *)wq + (r * nb + b) * Q4_BYTES;
            const float s = ws[r * nb + b];
            for (int j = 0; j < 16; j++) {
                d[b * 32 + j] = s * (float)((q[j] & 15) - 8);
                d[b * 32 + j + 16] = s * (float)((q[j] >> 4) - 8);
            }
        }
    } else {
        const uint16_t *h = (const uint16_t *)wq + r * (size_t)in;
        for (int i = 0; i < in; i++) d[i] = fmt == FY_WF_BF16 ? fy_bf16_to_f32(h[i]) : fy_f16_to_f32(h[i]);
    }
}

void fy_cpu_dequant_rows(fy_backend *be, int fmt, int rows, int in, fy_ref wq, fy_ref ws, int n, fy_ref idx,
                         fy_ref dst, int ldd) {
    const char *op = "dequant_rows";
    const int quant = fmt == FY_WF_Q8_0 || fmt == FY_WF_Q4_0;
    /* elements (floats) of wq a row takes: in bytes (Q8_0), in/2 bytes
     * (Q4_0), in halves (16 bits) */
    const size_t per = fmt == FY_WF_Q8_0 ? (size_t)in / 4 : fmt == FY_WF_Q4_0 ? (size_t)in / 8 : (size_t)in / 2;
    const void *qp = fy_cpu_f(be, wq, (size_t)rows * per, op, "wq");
    const float *sp = quant ? fy_cpu_f(be, ws, (size_t)rows * (in / FY_Q8_BLOCK), op, "ws") : NULL;
    const int32_t *ip = idx.buf ? fy_cpu_i(be, idx, n, op, "idx") : NULL;
    float *dp = fy_cpu_f(be, dst, fy_cpu_span(n, ldd, in), op, "dst");
    if (!qp || (quant && !sp) || (idx.buf && !ip) || !dp) return;
    int bad = -1;
#pragma omp parallel for schedule(static) if ((size_t)n * in > FY_CPU_PAR_MIN)
    for (int i = 0; i < n; i++) {
        const int32_t r = ip ? ip[i] : i;
        if (r < 0 || r >= rows) {
#pragma omp atomic write
            bad = i;
            continue;
        }
        dq_row(fmt, in, qp, sp, (size_t)r, dp + (size_t)i * ldd);
    }
    if (bad >= 0) fy_be_set_error(be, "cpu %s: idx[%d] = %d outside the %d rows of W", op, bad, ip[bad], rows);
}
