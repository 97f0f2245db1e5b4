/* Loss and optimizer ops of the OpenCL backend: softmax cross-entropy
 * (per-row losses summed in row order on the host), AdamW. */
#include <math.h>
#include <stdlib.h>

#include "backend/opencl/opencl.h"

double fy_ocl_xent_fwdbwd(fy_backend *be, int N, int V, fy_ref logits, fy_ref targets,
                          int ignore_index, float grad_scale, fy_ref losses, fy_ref dlogits) {
    const char *op = "xent_fwdbwd";
    fy_ocl_impl *im = fy_ocl(be);
    size_t NV = (size_t)N * V;
    cl_mem xm = fy_ocl_mem(be, logits, NV, op, "logits");
    cl_mem tm = fy_ocl_mem(be, targets, N, op, "targets");
    cl_mem lm = fy_ocl_mem(be, losses, N, op, "losses");
    cl_mem dm = fy_ocl_mem(be, dlogits, NV, op, "dlogits");
    if (!xm || !tm || !lm || !dm) return 0.0;
    cl_mem per = fy_ocl_scratch(be, FY_OCL_SCRATCH_A, (size_t)N * im->acc_size, op);
    void *host = malloc((size_t)N * im->acc_size);
    if (!per || !host) {
        if (!host) fy_be_set_error(be, "opencl %s: out of memory", op);
        free(host);
        return 0.0;
    }
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_xent, op);
    fy_ocl_int(&c, V);
    fy_ocl_buf(&c, xm, logits.off);
    fy_ocl_buf(&c, tm, targets.off);
    fy_ocl_int(&c, ignore_index);
    fy_ocl_float(&c, grad_scale);
    fy_ocl_buf(&c, lm, losses.off);
    fy_ocl_buf(&c, dm, dlogits.off);
    fy_ocl_mem_only(&c, per);
    fy_ocl_mem_only(&c, im->errf);
    size_t g = (size_t)N * im->red;
    fy_ocl_run(&c, 1, &g, &im->red);
    double tot = 0.0;
    if (!fy_ocl_read(be, per, (size_t)N * im->acc_size, host, op))
        for (int n = 0; n < N; n++)
            tot += im->acc_size == 8 ? ((double *)host)[n] : (double)((float *)host)[n];
    free(host);
    return tot;
}

void fy_ocl_adamw(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v, float lr,
                  float b1, float b2, float eps, float wd, int t, float grad_scale) {
    const char *op = "adamw";
    cl_mem pm = fy_ocl_mem(be, p, n, op, "p");
    cl_mem gm = fy_ocl_mem(be, g, n, op, "g");
    cl_mem mm = fy_ocl_mem(be, m, n, op, "m");
    cl_mem vm = fy_ocl_mem(be, v, n, op, "v");
    if (!pm || !gm || !mm || !vm) return;
    /* bias corrections exactly as the cpu backend computes them */
    float bc1 = (float)(1.0 - pow((double)b1, t));
    float bc2 = (float)(1.0 - pow((double)b2, t));
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_adamw, op);
    fy_ocl_ulong(&c, n);
    fy_ocl_buf(&c, pm, p.off);
    fy_ocl_buf(&c, gm, g.off);
    fy_ocl_buf(&c, mm, m.off);
    fy_ocl_buf(&c, vm, v.off);
    fy_ocl_float(&c, lr);
    fy_ocl_float(&c, b1);
    fy_ocl_float(&c, b2);
    fy_ocl_float(&c, eps);
    fy_ocl_float(&c, wd);
    fy_ocl_float(&c, bc1);
    fy_ocl_float(&c, bc2);
    fy_ocl_float(&c, grad_scale);
    size_t gs = fy_ocl_round(n, 64);
    fy_ocl_run(&c, 1, &gs, NULL);
}
