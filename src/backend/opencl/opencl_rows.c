/* Row-wise ops of the OpenCL backend: RMSNorm, RoPE, SwiGLU. */
#include <math.h>
#include <stdlib.h>

#include "backend/opencl/opencl.h"

/* ---------------------------------------------------------------- RMSNorm */

void fy_ocl_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps,
                        fy_ref y, int ldy, fy_ref rstd) {
    const char *op = "rmsnorm_fwd";
    cl_mem xm = fy_ocl_mem(be, x, fy_ocl_span(N, ldx, D), op, "x");
    cl_mem wm = fy_ocl_mem(be, w, D, op, "w");
    cl_mem ym = fy_ocl_mem(be, y, fy_ocl_span(N, ldy, D), op, "y");
    cl_mem rm = fy_ocl_mem(be, rstd, N, op, "rstd");
    if (!xm || !wm || !ym || !rm) return;
    fy_ocl_impl *im = fy_ocl(be);
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_rmsnorm_fwd, op);
    fy_ocl_int(&c, D);
    fy_ocl_rows(&c, xm, x.off, ldx);
    fy_ocl_buf(&c, wm, w.off);
    fy_ocl_float(&c, eps);
    fy_ocl_rows(&c, ym, y.off, ldy);
    fy_ocl_buf(&c, rm, rstd.off);
    size_t g = (size_t)N * im->red;
    fy_ocl_run(&c, 1, &g, &im->red);
}

/* dx per row (a work-group each); dw in two deterministic passes: partials
 * over fixed chunks of rows (rows added in order), then the partials added
 * in chunk order per column, the cpu backend's scheme. */
void fy_ocl_rmsnorm_bwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, fy_ref rstd,
                        fy_ref dy, int lddy, fy_ref dx, int lddx, int accumulate_dx, fy_ref dw) {
    const char *op = "rmsnorm_bwd";
    cl_mem xm = fy_ocl_mem(be, x, fy_ocl_span(N, ldx, D), op, "x");
    cl_mem wm = fy_ocl_mem(be, w, D, op, "w");
    cl_mem rm = fy_ocl_mem(be, rstd, N, op, "rstd");
    cl_mem dym = fy_ocl_mem(be, dy, fy_ocl_span(N, lddy, D), op, "dy");
    cl_mem dxm = dx.buf ? fy_ocl_mem(be, dx, fy_ocl_span(N, lddx, D), op, "dx") : NULL;
    cl_mem dwm = dw.buf ? fy_ocl_mem(be, dw, D, op, "dw") : NULL;
    if (!xm || !wm || !rm || !dym || (dx.buf && !dxm) || (dw.buf && !dwm)) return;
    fy_ocl_impl *im = fy_ocl(be);
    if (dwm) { /* before dx: dx may alias dy */
        int nchunk = (N + FY_OCL_ROW_CHUNK - 1) / FY_OCL_ROW_CHUNK;
        cl_mem part = fy_ocl_scratch(be, FY_OCL_SCRATCH_A, (size_t)nchunk * D * 4, op);
        if (!part) return;
        fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_rmsnorm_dw_part, op);
        fy_ocl_int(&c, N);
        fy_ocl_int(&c, D);
        fy_ocl_int(&c, FY_OCL_ROW_CHUNK);
        fy_ocl_rows(&c, xm, x.off, ldx);
        fy_ocl_buf(&c, rm, rstd.off);
        fy_ocl_rows(&c, dym, dy.off, lddy);
        fy_ocl_mem_only(&c, part);
        size_t g[2] = {fy_ocl_round((size_t)D, 64), (size_t)nchunk};
        fy_ocl_run(&c, 2, g, NULL);
        fy_ocl_call s = fy_ocl_begin(be, FY_OCL_K_fy_rmsnorm_dw_sum, op);
        fy_ocl_int(&s, D);
        fy_ocl_int(&s, nchunk);
        fy_ocl_mem_only(&s, part);
        fy_ocl_buf(&s, dwm, dw.off);
        size_t g1 = fy_ocl_round((size_t)D, 64);
        fy_ocl_run(&s, 1, &g1, NULL);
    }
    if (dxm) {
        fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_rmsnorm_bwd_dx, op);
        fy_ocl_int(&c, D);
        fy_ocl_rows(&c, xm, x.off, ldx);
        fy_ocl_buf(&c, wm, w.off);
        fy_ocl_buf(&c, rm, rstd.off);
        fy_ocl_rows(&c, dym, dy.off, lddy);
        fy_ocl_rows(&c, dxm, dx.off, lddx);
        fy_ocl_int(&c, accumulate_dx);
        size_t g = (size_t)N * im->red;
        fy_ocl_run(&c, 1, &g, &im->red);
    }
}

/* ---------------------------------------------------------------- RoPE */

/* The cos/sin table, computed on the host in double exactly as the cpu
 * backend does (so the rotation is bitwise the same) and cached on the
 * device for the last (T, pos0, d_r, rope params). */
static cl_mem rope_table(fy_backend *be, int T, int pos0, int d_r, const fy_rope_params *rp) {
    fy_ocl_impl *im = fy_ocl(be);
    if (im->rope_valid && im->rope_T == T && im->rope_pos0 == pos0 && im->rope_dr == d_r &&
        fy_rope_params_equal(&im->rope_p, rp))
        return im->rope_tab;
    int half = d_r / 2;
    size_t need = (size_t)T * half * 2;
    im->rope_valid = 0;
    if (need > im->rope_cap || !im->rope_tab) {
        if (im->rope_tab) clReleaseMemObject(im->rope_tab);
        im->rope_tab = NULL;
        im->rope_cap = 0;
        cl_int rc;
        im->rope_tab = clCreateBuffer(im->ctx, CL_MEM_READ_ONLY, (need ? need : 1) * 4, NULL, &rc);
        if (fy_ocl_failed(be, rc, "rope", "clCreateBuffer (table)")) {
            im->rope_tab = NULL;
            return NULL;
        }
        im->rope_cap = need;
    }
    float *tab = malloc((need ? need : 1) * sizeof *tab);
    double *freq = malloc((size_t)(half ? half : 1) * sizeof *freq);
    if (!tab || !freq) {
        free(tab);
        free(freq);
        fy_be_set_error(be, "opencl rope: out of memory");
        return NULL;
    }
    fy_rope_table(rp, T, pos0, d_r, tab, freq);
    free(freq);
    /* blocking: in queue order after kernels still reading the old table */
    cl_int rc = clEnqueueWriteBuffer(im->q, im->rope_tab, CL_TRUE, 0, need * 4, tab, 0, NULL, NULL);
    free(tab);
    if (fy_ocl_failed(be, rc, "rope", "clEnqueueWriteBuffer (table)")) return NULL;
    im->rope_valid = 1;
    im->rope_T = T;
    im->rope_pos0 = pos0;
    im->rope_dr = d_r;
    im->rope_p = *rp;
    return im->rope_tab;
}

void fy_ocl_rope(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r, fy_ref x, int ld,
                 int head_stride, const fy_rope_params *rp, int inverse) {
    size_t width = (size_t)(n_heads - 1) * head_stride + d_r;
    cl_mem xm = fy_ocl_mem(be, x, fy_ocl_span(N, ld, width), "rope", "x");
    if (!xm) return;
    int tn = T < N ? T : N; /* positions actually used */
    cl_mem tab = rope_table(be, tn, pos0, d_r, rp);
    if (!tab) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_rope, "rope");
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, T);
    fy_ocl_int(&c, n_heads);
    fy_ocl_int(&c, d_r);
    fy_ocl_rows(&c, xm, x.off, ld);
    fy_ocl_int(&c, head_stride);
    fy_ocl_mem_only(&c, tab);
    fy_ocl_float(&c, inverse ? -1.0f : 1.0f);
    size_t g[3] = {(size_t)d_r / 2, (size_t)n_heads, (size_t)N};
    fy_ocl_run(&c, 3, g, NULL);
}

/* ---------------------------------------------------------------- SwiGLU */

void fy_ocl_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref h, int ldh) {
    const char *op = "swiglu_fwd";
    cl_mem gm = fy_ocl_mem(be, g, fy_ocl_span(N, ldg, F), op, "g");
    cl_mem um = fy_ocl_mem(be, u, fy_ocl_span(N, ldu, F), op, "u");
    cl_mem hm = fy_ocl_mem(be, h, fy_ocl_span(N, ldh, F), op, "h");
    if (!gm || !um || !hm) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_swiglu_fwd, op);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, F);
    fy_ocl_rows(&c, gm, g.off, ldg);
    fy_ocl_rows(&c, um, u.off, ldu);
    fy_ocl_rows(&c, hm, h.off, ldh);
    size_t gs[2] = {fy_ocl_round((size_t)F, 32), (size_t)N};
    fy_ocl_run(&c, 2, gs, NULL);
}

void fy_ocl_swiglu_bwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                       fy_ref dh, int lddh, fy_ref dg, fy_ref du) {
    const char *op = "swiglu_bwd";
    cl_mem gm = fy_ocl_mem(be, g, fy_ocl_span(N, ldg, F), op, "g");
    cl_mem um = fy_ocl_mem(be, u, fy_ocl_span(N, ldu, F), op, "u");
    cl_mem dhm = fy_ocl_mem(be, dh, fy_ocl_span(N, lddh, F), op, "dh");
    cl_mem dgm = fy_ocl_mem(be, dg, fy_ocl_span(N, ldg, F), op, "dg");
    cl_mem dum = fy_ocl_mem(be, du, fy_ocl_span(N, ldu, F), op, "du");
    if (!gm || !um || !dhm || !dgm || !dum) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_swiglu_bwd, op);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, F);
    fy_ocl_rows(&c, gm, g.off, ldg);
    fy_ocl_rows(&c, um, u.off, ldu);
    fy_ocl_rows(&c, dhm, dh.off, lddh);
    fy_ocl_buf(&c, dgm, dg.off);
    fy_ocl_buf(&c, dum, du.off);
    size_t gs[2] = {fy_ocl_round((size_t)F, 32), (size_t)N};
    fy_ocl_run(&c, 2, gs, NULL);
}

/* ---------------------------------------------------------------- dropout */

void fy_ocl_dropout(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                    const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate) {
    const char *op = "dropout";
    cl_mem sm = fy_ocl_mem(be, src, fy_ocl_span(n, lds, D), op, "src");
    cl_mem dm = fy_ocl_mem(be, dst, fy_ocl_span(n, ldd, D), op, "dst");
    if (!sm || !dm) return;
    cl_mem km = NULL;
    if (keys) { /* the row keys travel in a scratch, written before the call returns */
        km = fy_ocl_scratch(be, FY_OCL_SCRATCH_A, (size_t)n * 4, op);
        if (!km || fy_ocl_failed(be, clEnqueueWriteBuffer(fy_ocl(be)->q, km, CL_TRUE, 0, (size_t)n * 4, keys, 0,
                                                          NULL, NULL), op, "clEnqueueWriteBuffer"))
            return;
    }
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_dropout, op);
    fy_ocl_int(&c, n);
    fy_ocl_int(&c, D);
    fy_ocl_float(&c, p);
    fy_ocl_float(&c, 1.0f / (1.0f - p));
    fy_ocl_ulong(&c, fy_rng_key(seed, stream)); /* the per-call half of the hash, once */
    fy_ocl_ulong(&c, (cl_ulong)key0);
    fy_ocl_opt_buf(&c, km, 0, sm);
    fy_ocl_rows(&c, sm, src.off, lds);
    fy_ocl_rows(&c, dm, dst.off, ldd);
    fy_ocl_int(&c, accumulate);
    size_t gs[2] = {fy_ocl_round((size_t)D, 32), (size_t)n};
    fy_ocl_run(&c, 2, gs, NULL);
}
