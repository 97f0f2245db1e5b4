/* 16-bit inference weights on OpenCL (backend.h linear_h16): one
 * work-item per output widens W's row and dots it with x's row in the cpu
 * backend's order (kernels/h16.cl): the same bits as cpu_linear.c, which
 * are linear_rows' on the widened matrix. */
#include "backend/opencl/opencl.h"

void fy_ocl_linear_h16(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w, fy_ref y,
                       int ldy, int accumulate) {
    const char *op = "linear_h16";
    cl_mem ym = fy_ocl_mem(be, y, fy_ocl_span(N, ldy, out), op, "y");
    /* in = 0: no weights to read; any buffer stands in for x and W */
    cl_mem xm = in ? fy_ocl_mem(be, x, fy_ocl_span(N, ldx, in), op, "x") : ym;
    cl_mem wm = in ? fy_ocl_mem(be, w, (size_t)out * (in / 2), op, "w") : ym;
    if (!xm || !wm || !ym) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_linear_h16, op);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, in);
    fy_ocl_int(&c, out);
    fy_ocl_int(&c, fmt == FY_H16_BF16);
    fy_ocl_rows(&c, xm, in ? x.off : 0, ldx);
    fy_ocl_buf(&c, wm, in ? w.off : 0);
    fy_ocl_rows(&c, ym, y.off, ldy);
    fy_ocl_int(&c, accumulate);
    size_t g[2] = {fy_ocl_round((size_t)out, 32), (size_t)N};
    fy_ocl_run(&c, 2, g, NULL);
}
