/* Q8_0 and Q4_0 inference weights on OpenCL (backend.h linear_q8,
 * linear_q4): the input rows quantized into scratch, then one work-item per
 * output forms the exact integer block sums and accumulates them as the cpu
 * backend does (kernels/quant.cl): the same bits as cpu_quant.c and
 * cpu_q4.c. */
#include "backend/opencl/opencl.h"

/* kernel fy_linear_q8 or fy_linear_q4, whose weights take bits bits each. */
static void linear_quant(fy_backend *be, const char *op, int kernel, int bits, int N, int in, int out, fy_ref x,
                         int ldx, fy_ref wq, fy_ref ws, fy_ref y, int ldy, int accumulate) {
    cl_mem xm = fy_ocl_mem(be, x, fy_ocl_span(N, ldx, in), op, "x");
    cl_mem qm = fy_ocl_mem(be, wq, (size_t)out * (in / (32 / bits)), op, "wq");
    cl_mem sm = fy_ocl_mem(be, ws, (size_t)out * (in / FY_Q8_BLOCK), op, "ws");
    cl_mem ym = fy_ocl_mem(be, y, fy_ocl_span(N, ldy, out), op, "y");
    /* the quantized rows: N * in bytes (N * in/4 elements), then N * in/32 scales */
    const size_t nq = (size_t)N * (in / 4), ns = (size_t)N * (in / FY_Q8_BLOCK);
    cl_mem scr = fy_ocl_scratch(be, FY_OCL_SCRATCH_A, (nq + ns) * 4, op);
    if (!xm || !qm || !sm || !ym || !scr) return;
    if (in) {
        fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_q8_quant, op);
        fy_ocl_int(&c, N);
        fy_ocl_int(&c, in);
        fy_ocl_rows(&c, xm, x.off, ldx);
        fy_ocl_buf(&c, scr, 0);
        fy_ocl_buf(&c, scr, nq);
        size_t g[2] = {fy_ocl_round((size_t)in / FY_Q8_BLOCK, 32), (size_t)N};
        fy_ocl_run(&c, 2, g, NULL);
    }
    fy_ocl_call c = fy_ocl_begin(be, kernel, op);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, in);
    fy_ocl_int(&c, out);
    fy_ocl_buf(&c, scr, 0);
    fy_ocl_buf(&c, scr, nq);
    fy_ocl_buf(&c, qm, wq.off);
    fy_ocl_buf(&c, sm, ws.off);
    fy_ocl_rows(&c, ym, y.off, ldy);
    fy_ocl_int(&c, accumulate);
    size_t g[2] = {fy_ocl_round((size_t)out, 32), (size_t)N};
    fy_ocl_run(&c, 2, g, NULL);
}

void fy_ocl_linear_q8(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                      fy_ref y, int ldy, int accumulate) {
    linear_quant(be, "linear_q8", FY_OCL_K_fy_linear_q8, 8, N, in, out, x, ldx, wq, ws, y, ldy, accumulate);
}

void fy_ocl_linear_q4(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                      fy_ref y, int ldy, int accumulate) {
    linear_quant(be, "linear_q4", FY_OCL_K_fy_linear_q4, 4, N, in, out, x, ldx, wq, ws, y, ldy, accumulate);
}

void fy_ocl_dequant_rows(fy_backend *be, int fmt, int rows, int in, fy_ref wq, fy_ref ws, int n, fy_ref idx,
                         fy_ref dst, int ldd) {
    const char *op = "dequant_rows";
    const int quant = fmt == FY_WF_Q8_0 || fmt == FY_WF_Q4_0;
    const size_t per = fmt == FY_WF_Q8_0 ? (size_t)in / 4 : fmt == FY_WF_Q4_0 ? (size_t)in / 8 : (size_t)in / 2;
    cl_mem qm = fy_ocl_mem(be, wq, (size_t)rows * per, op, "wq");
    cl_mem sm = quant ? fy_ocl_mem(be, ws, (size_t)rows * (in / FY_Q8_BLOCK), op, "ws") : NULL;
    cl_mem im_ = idx.buf ? fy_ocl_mem(be, idx, n, op, "idx") : NULL;
    cl_mem dm = fy_ocl_mem(be, dst, fy_ocl_span(n, ldd, in), op, "dst");
    if (!qm || (quant && !sm) || (idx.buf && !im_) || !dm) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_dequant_rows, op);
    fy_ocl_int(&c, fmt);
    fy_ocl_int(&c, rows);
    fy_ocl_int(&c, in);
    fy_ocl_buf(&c, qm, wq.off);
    fy_ocl_buf(&c, sm ? sm : qm, sm ? ws.off : 0); /* 16 bits: no scales, W stands in */
    fy_ocl_opt_buf(&c, im_, idx.off, qm);
    fy_ocl_rows(&c, dm, dst.off, ldd);
    fy_ocl_mem_only(&c, fy_ocl(be)->errf);
    size_t g[2] = {fy_ocl_round((size_t)in, 32), (size_t)n};
    fy_ocl_run(&c, 2, g, NULL);
}
