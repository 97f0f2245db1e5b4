/* Mixture-of-experts ops of the OpenCL backend: router, balance loss, row
 * gather/scatter, row dots. Index errors found on the device are reported
 * by the next sync (the device-side error word). */
#include <stdlib.h>

#include "backend/opencl/opencl.h"

/* Group masks are 64-bit (kernels/moe.cl). */
#define MAX_GROUPS 64

/* The group limit of this backend's router kernel (the options' own
 * consistency is checked in backend_check.c). */
static int router_check(fy_backend *be, const char *op, const fy_router_opts *o) {
    int G = o->n_group < 1 ? 1 : o->n_group;
    if (G > MAX_GROUPS) {
        fy_be_set_error(be, "opencl %s: n_group=%d, this backend supports at most %d groups", op,
                        G, MAX_GROUPS);
        return -1;
    }
    return 0;
}

void fy_ocl_router_fwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref logits,
                       fy_ref bias, fy_ref s, fy_ref idx, fy_ref w) {
    const char *op = "router_fwd";
    if (router_check(be, op, o)) return;
    if (!N) return;
    int E = o->n_experts, K = o->top_k, G = o->n_group < 1 ? 1 : o->n_group;
    int keep = G > 1 && o->topk_group < G ? o->topk_group : G;
    cl_mem lm = fy_ocl_mem(be, logits, (size_t)N * E, op, "logits");
    cl_mem bm = bias.buf ? fy_ocl_mem(be, bias, E, op, "bias") : NULL;
    cl_mem sm = fy_ocl_mem(be, s, (size_t)N * E, op, "s");
    cl_mem im_ = fy_ocl_mem(be, idx, (size_t)N * K, op, "idx");
    cl_mem wm = fy_ocl_mem(be, w, (size_t)N * K, op, "w");
    if (!lm || (bias.buf && !bm) || !sm || !im_ || !wm) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_router_fwd, op);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, E);
    fy_ocl_int(&c, K);
    fy_ocl_int(&c, G);
    fy_ocl_int(&c, keep);
    fy_ocl_int(&c, o->norm_topk_prob);
    fy_ocl_float(&c, o->scaling);
    fy_ocl_buf(&c, lm, logits.off);
    fy_ocl_buf(&c, bm ? bm : lm, bm ? bias.off : 0); /* any valid buffer when there is none */
    fy_ocl_int(&c, bm != NULL);
    fy_ocl_buf(&c, sm, s.off);
    fy_ocl_buf(&c, im_, idx.off);
    fy_ocl_buf(&c, wm, w.off);
    size_t g = fy_ocl_round((size_t)N, 64);
    fy_ocl_run(&c, 1, &g, NULL);
}

void fy_ocl_router_bwd(fy_backend *be, int N, const fy_router_opts *o, fy_ref s, fy_ref idx,
                       fy_ref dw, fy_ref dlogits, int accumulate) {
    const char *op = "router_bwd";
    if (router_check(be, op, o)) return;
    if (!N) return;
    int E = o->n_experts, K = o->top_k;
    cl_mem sm = fy_ocl_mem(be, s, (size_t)N * E, op, "s");
    cl_mem im_ = fy_ocl_mem(be, idx, (size_t)N * K, op, "idx");
    cl_mem dwm = fy_ocl_mem(be, dw, (size_t)N * K, op, "dw");
    cl_mem dlm = fy_ocl_mem(be, dlogits, (size_t)N * E, op, "dlogits");
    if (!sm || !im_ || !dwm || !dlm) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_router_bwd, op);
    fy_ocl_int(&c, N);
    fy_ocl_int(&c, E);
    fy_ocl_int(&c, K);
    fy_ocl_int(&c, o->norm_topk_prob);
    fy_ocl_float(&c, o->scaling);
    fy_ocl_buf(&c, sm, s.off);
    fy_ocl_buf(&c, im_, idx.off);
    fy_ocl_buf(&c, dwm, dw.off);
    fy_ocl_buf(&c, dlm, dlogits.off);
    fy_ocl_int(&c, accumulate);
    fy_ocl_mem_only(&c, fy_ocl(be)->errf);
    size_t g = fy_ocl_round((size_t)N, 64);
    fy_ocl_run(&c, 1, &g, NULL);
}

/* ---------------------------------------------------------------- balance loss */

/* Queues the per-sequence expert counts into scratch B; NULL on error. */
static cl_mem balance_counts(fy_backend *be, const char *op, int B, int T, int E, int K,
                             cl_mem im_, size_t io) {
    cl_mem counts = fy_ocl_scratch(be, FY_OCL_SCRATCH_B, (size_t)B * E * 4, op);
    if (!counts) return NULL;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_balance_counts, op);
    fy_ocl_int(&c, B);
    fy_ocl_int(&c, T);
    fy_ocl_int(&c, E);
    fy_ocl_int(&c, K);
    fy_ocl_buf(&c, im_, io);
    fy_ocl_mem_only(&c, counts);
    fy_ocl_mem_only(&c, fy_ocl(be)->errf);
    size_t g[2] = {(size_t)E, (size_t)B};
    fy_ocl_run(&c, 2, g, NULL);
    return counts;
}

/* Per-token terms on the device, summed in token order on the host (the
 * cpu backend's order, in double). Blocking. */
float fy_ocl_balance_fwd(fy_backend *be, int B, int T, int E, int K, float alpha, fy_ref s,
                         fy_ref idx) {
    const char *op = "balance_fwd";
    size_t N = (size_t)B * T;
    fy_ocl_impl *im = fy_ocl(be);
    cl_mem sm = fy_ocl_mem(be, s, N * E, op, "s");
    cl_mem im_ = fy_ocl_mem(be, idx, N * K, op, "idx");
    if (!sm || !im_) return 0.0f;
    cl_mem counts = balance_counts(be, op, B, T, E, K, im_, idx.off);
    cl_mem per = fy_ocl_scratch(be, FY_OCL_SCRATCH_A, N * im->acc_size, op);
    void *host = malloc(N * im->acc_size);
    if (!counts || !per || !host) {
        if (!host) fy_be_set_error(be, "opencl %s: out of memory", op);
        free(host);
        return 0.0f;
    }
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_balance_tok, op);
    fy_ocl_int(&c, (int)N);
    fy_ocl_int(&c, T);
    fy_ocl_int(&c, E);
    fy_ocl_buf(&c, sm, s.off);
    fy_ocl_mem_only(&c, counts);
    fy_ocl_mem_only(&c, per);
    size_t g = fy_ocl_round(N, 64);
    fy_ocl_run(&c, 1, &g, NULL);
    double tot = 0.0;
    if (!fy_ocl_read(be, per, N * im->acc_size, host, op))
        for (size_t t = 0; t < N; t++)
            tot += im->acc_size == 8 ? ((double *)host)[t] : (double)((float *)host)[t];
    free(host);
    double fscale = (double)E / ((double)K * T);
    return (float)((double)alpha / B * fscale / T * tot);
}

void fy_ocl_balance_bwd(fy_backend *be, int B, int T, int E, int K, float alpha, float dloss,
                        fy_ref s, fy_ref idx, fy_ref dlogits) {
    const char *op = "balance_bwd";
    size_t N = (size_t)B * T;
    cl_mem sm = fy_ocl_mem(be, s, N * E, op, "s");
    cl_mem im_ = fy_ocl_mem(be, idx, N * K, op, "idx");
    cl_mem dlm = fy_ocl_mem(be, dlogits, N * E, op, "dlogits");
    if (!sm || !im_ || !dlm) return;
    cl_mem counts = balance_counts(be, op, B, T, E, K, im_, idx.off);
    if (!counts) return;
    double fscale = (double)E / ((double)K * T);
    double coef = (double)dloss * alpha / ((double)B * T) * fscale;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_balance_bwd, op);
    fy_ocl_int(&c, (int)N);
    fy_ocl_int(&c, T);
    fy_ocl_int(&c, E);
    fy_ocl_acc(&c, coef);
    fy_ocl_buf(&c, sm, s.off);
    fy_ocl_mem_only(&c, counts);
    fy_ocl_buf(&c, dlm, dlogits.off);
    size_t g = fy_ocl_round(N, 64);
    fy_ocl_run(&c, 1, &g, NULL);
}

/* ---------------------------------------------------------------- gather / scatter */

static int rows_too_many(fy_backend *be, const char *op, size_t rows) {
    if (rows > 0x7fffffff) {
        fy_be_set_error(be, "opencl %s: %zu rows exceed the 32-bit row index", op, rows);
        return 1;
    }
    return 0;
}

void fy_ocl_gather_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx, fy_ref w,
                        fy_ref dst, int ldd) {
    const char *op = "gather_rows";
    cl_mem sm = fy_ocl_mem(be, src, D, op, "src");
    cl_mem im_ = fy_ocl_mem(be, idx, n, op, "idx");
    cl_mem wm = w.buf ? fy_ocl_mem(be, w, n, op, "w") : NULL;
    cl_mem dm = fy_ocl_mem(be, dst, fy_ocl_span(n, ldd, D), op, "dst");
    if (!sm || !im_ || (w.buf && !wm) || !dm) return;
    size_t nsrc = fy_ocl_rows_in(src, D, lds);
    if (rows_too_many(be, op, nsrc)) return;
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_gather_rows, op);
    fy_ocl_int(&c, n);
    fy_ocl_int(&c, D);
    fy_ocl_int(&c, (int)nsrc);
    fy_ocl_rows(&c, sm, src.off, lds);
    fy_ocl_buf(&c, im_, idx.off);
    fy_ocl_opt_buf(&c, wm, w.off, im_);
    fy_ocl_rows(&c, dm, dst.off, ldd);
    fy_ocl_mem_only(&c, fy_ocl(be)->errf);
    size_t g[2] = {fy_ocl_round((size_t)D, 32), (size_t)n};
    fy_ocl_run(&c, 2, g, NULL);
}

/* Destination rows are split into G buckets (row % G); item (column,
 * bucket) walks all i in order: deterministic, no atomics, G times the
 * parallelism of one item per column for G times the index reads. */
void fy_ocl_scatter_add_rows(fy_backend *be, int n, int D, fy_ref src, int lds, fy_ref idx,
                             fy_ref w, fy_ref dst, int ldd) {
    const char *op = "scatter_add_rows";
    cl_mem sm = fy_ocl_mem(be, src, fy_ocl_span(n, lds, D), op, "src");
    cl_mem im_ = fy_ocl_mem(be, idx, n, op, "idx");
    cl_mem wm = w.buf ? fy_ocl_mem(be, w, n, op, "w") : NULL;
    cl_mem dm = fy_ocl_mem(be, dst, D, op, "dst");
    if (!sm || !im_ || (w.buf && !wm) || !dm) return;
    size_t ndst = fy_ocl_rows_in(dst, D, ldd);
    if (rows_too_many(be, op, ndst)) return;
    int G = ndst < 32 ? (int)ndst : 32; /* ndst >= 1: dst was checked to hold a row */
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_scatter_add_rows, op);
    fy_ocl_int(&c, n);
    fy_ocl_int(&c, D);
    fy_ocl_int(&c, (int)ndst);
    fy_ocl_int(&c, G);
    fy_ocl_rows(&c, sm, src.off, lds);
    fy_ocl_buf(&c, im_, idx.off);
    fy_ocl_opt_buf(&c, wm, w.off, im_);
    fy_ocl_rows(&c, dm, dst.off, ldd);
    fy_ocl_mem_only(&c, fy_ocl(be)->errf);
    size_t g[2] = {fy_ocl_round((size_t)D, 32), (size_t)G};
    fy_ocl_run(&c, 2, g, NULL);
}

void fy_ocl_rows_dot(fy_backend *be, int n, int D, fy_ref a, int lda, fy_ref ia, fy_ref b, int ldb,
                     fy_ref out, int accumulate) {
    const char *op = "rows_dot";
    cl_mem am = fy_ocl_mem(be, a, D, op, "a");
    cl_mem iam = fy_ocl_mem(be, ia, n, op, "ia");
    cl_mem bm = fy_ocl_mem(be, b, fy_ocl_span(n, ldb, D), op, "b");
    cl_mem om = fy_ocl_mem(be, out, n, op, "out");
    if (!am || !iam || !bm || !om) return;
    size_t na = fy_ocl_rows_in(a, D, lda);
    if (rows_too_many(be, op, na)) return;
    fy_ocl_impl *im = fy_ocl(be);
    fy_ocl_call c = fy_ocl_begin(be, FY_OCL_K_fy_rows_dot, op);
    fy_ocl_int(&c, D);
    fy_ocl_int(&c, (int)na);
    fy_ocl_rows(&c, am, a.off, lda);
    fy_ocl_buf(&c, iam, ia.off);
    fy_ocl_rows(&c, bm, b.off, ldb);
    fy_ocl_buf(&c, om, out.off);
    fy_ocl_int(&c, accumulate);
    fy_ocl_mem_only(&c, im->errf);
    size_t g = (size_t)n * im->red;
    fy_ocl_run(&c, 1, &g, &im->red);
}
