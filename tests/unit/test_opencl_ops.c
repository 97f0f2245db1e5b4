/* OpenCL backend against the cpu backend: every op of backend.h run on both
 * with the same random inputs (odd shapes, T = 1, all GEMM transposes, beta
 * 0 and 1, accumulate 0 and 1, grouped routing, ties), compared with the
 * per-op tolerances of docs/BACKENDS.md; reductions run twice must agree
 * bitwise; device-side errors must come back through sync.
 * Exits 77 (skipped) when no OpenCL platform or device is available, or
 * when this ferry was built without OpenCL. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "testutil.h"

#ifndef FERRY_HAVE_OPENCL
int main(void) {
    printf("test_opencl_ops: SKIP: this ferry was built without OpenCL (no headers/library at "
           "configure time)\n");
    return 77;
}
#else

static fy_backend *cpu, *ocl;
static uint64_t seed_ctr = 1;

/* ------------------------------------------------------------ twins: one buffer per backend */

typedef struct twin {
    fy_buf c, o;
    size_t n;
} twin;

#define SIDE_BE(side) ((side) ? ocl : cpu)
/* fy_ref to element off of twin t on the backend of `side` */
#define RF(t, off) fy_at((side) ? &(t).o : &(t).c, (off))

static twin tw_new(size_t n) {
    twin t = {.n = n};
    fy_err e;
    if (fy_be_alloc(cpu, &t.c, n, &e) || fy_be_alloc(ocl, &t.o, n, &e)) {
        fprintf(stderr, "alloc of %zu failed: %s\n", n, e.msg);
        exit(1);
    }
    return t;
}
static void tw_set(twin *t, const void *v) {
    cpu->ops->upload(cpu, fy_at(&t->c, 0), v, t->n);
    ocl->ops->upload(ocl, fy_at(&t->o, 0), v, t->n);
}
static float *host_rand(size_t n, float scale) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    uint64_t s = seed_ctr++;
    for (size_t i = 0; i < n; i++) v[i] = scale * fy_rng_normal(77, s, i);
    return v;
}
static twin tw_rand(size_t n, float scale) {
    twin t = tw_new(n);
    float *v = host_rand(n, scale);
    tw_set(&t, v);
    free(v);
    return t;
}
static twin tw_ints(const int32_t *v, size_t n) {
    twin t = tw_new(n);
    tw_set(&t, v);
    return t;
}
static void tw_free(twin *t) {
    fy_be_free(cpu, &t->c);
    fy_be_free(ocl, &t->o);
}
static void tw_get(twin *t, void *hc, void *ho) {
    cpu->ops->download(cpu, hc, fy_at(&t->c, 0), t->n);
    ocl->ops->download(ocl, ho, fy_at(&t->o, 0), t->n);
}

static void sync_both(const char *what) {
    fy_err e = {{0}};
    CHECK(fy_be_sync(cpu, &e) == 0, "%s: cpu sync: %s", what, e.msg);
    CHECK(fy_be_sync(ocl, &e) == 0, "%s: opencl sync: %s", what, e.msg);
}

/* |o - c| <= rtol |c| + afrac max|c| elementwise; prints the worst error. */
static void cmp(const char *what, twin *t, double rtol, double afrac) {
    sync_both(what);
    float *hc = malloc(t->n * 4 + 4), *ho = malloc(t->n * 4 + 4);
    tw_get(t, hc, ho);
    double mx = 0, worst = 0;
    size_t bad = 0, at = 0, same = 0;
    for (size_t i = 0; i < t->n; i++) mx = fmax(mx, fabs(hc[i]));
    for (size_t i = 0; i < t->n; i++) {
        double d = fabs((double)ho[i] - hc[i]), lim = rtol * fabs(hc[i]) + afrac * mx;
        same += memcmp(&hc[i], &ho[i], 4) == 0;
        if (!(d <= lim) && !(isnan(hc[i]) && isnan(ho[i]))) {
            if (!bad) at = i;
            bad++;
        }
        if (mx > 0 && d / mx > worst) worst = d / mx;
    }
    CHECK(bad == 0, "%s: %zu of %zu elements outside tolerance (first at %zu: opencl %.9g, cpu "
                    "%.9g)", what, bad, t->n, at, bad ? ho[at] : 0.0, bad ? hc[at] : 0.0);
    if (getenv("FERRY_TEST_VERBOSE"))
        printf("  %-40s n=%-7zu max|err|/max|ref| %.2e, bitwise equal %zu/%zu\n", what, t->n,
               worst, same, t->n);
    free(hc);
    free(ho);
}

static void cmp_int(const char *what, twin *t) {
    sync_both(what);
    int32_t *hc = malloc(t->n * 4 + 4), *ho = malloc(t->n * 4 + 4);
    tw_get(t, hc, ho);
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < t->n; i++)
        if (hc[i] != ho[i]) {
            if (!bad) at = i;
            bad++;
        }
    CHECK(bad == 0, "%s: %zu of %zu ints differ (first at %zu: opencl %d, cpu %d)", what, bad,
          t->n, at, bad ? ho[at] : 0, bad ? hc[at] : 0);
    free(hc);
    free(ho);
}

/* The opencl halves of a and b are bitwise equal (determinism). */
static void same_bits(const char *what, twin *a, twin *b) {
    sync_both(what);
    float *ha = malloc(a->n * 4 + 4), *hb = malloc(a->n * 4 + 4);
    ocl->ops->download(ocl, ha, fy_at(&a->o, 0), a->n);
    ocl->ops->download(ocl, hb, fy_at(&b->o, 0), a->n);
    CHECK(memcmp(ha, hb, a->n * 4) == 0, "%s: two runs differ bitwise", what);
    free(ha);
    free(hb);
}

/* Copies a twin's contents into a new twin (on each backend from itself). */
static twin tw_clone(twin *t) {
    twin r = tw_new(t->n);
    cpu->ops->copy(cpu, fy_at(&r.c, 0), fy_at(&t->c, 0), t->n);
    ocl->ops->copy(ocl, fy_at(&r.o, 0), fy_at(&t->o, 0), t->n);
    return r;
}

/* Tolerances (docs/BACKENDS.md, "Tolerances"). */
#define TOL_ELEM 1e-6, 1e-7  /* elementwise maths: same operations, a few ulp at most */
#define TOL_RED 1e-5, 1e-6   /* row reductions in another order */
#define TOL_CHAIN 1e-4, 1e-5 /* chains of GEMMs + softmax (attention, decode) */

/* ------------------------------------------------------------ memory, BLAS-1, copies */

static void test_memory(void) {
    twin z = tw_new(1000);
    cmp("alloc is zero-filled", &z, 0, 0);
    twin a = tw_rand(1000, 1.0f);
    for (int side = 0; side < 2; side++) {
        fy_backend *be = SIDE_BE(side);
        be->ops->copy(be, RF(z, 3), RF(a, 10), 500);
        be->ops->copy(be, RF(a, 5), RF(a, 0), 300);   /* overlapping, forward */
        be->ops->copy(be, RF(a, 600), RF(a, 650), 300); /* overlapping, backward */
        be->ops->fill(be, RF(z, 900), -2.5f, 77);
    }
    cmp("copy", &z, 0, 0);
    cmp("copy overlapping (memmove)", &a, 0, 0);
    float h[1000];
    for (int i = 0; i < 1000; i++) h[i] = (float)i;
    tw_set(&a, h);
    for (int side = 0; side < 2; side++) {
        fy_backend *be = SIDE_BE(side);
        be->ops->axpy(be, 999, 0.37f, RF(z, 1), RF(a, 0));
        be->ops->scale(be, 777, -1.3f, RF(a, 100));
    }
    cmp("axpy + scale", &a, TOL_ELEM);
    size_t ns[] = {1, 1000, 100003};
    for (int k = 0; k < 3; k++) {
        twin x = tw_rand(ns[k], 2.0f);
        double c = cpu->ops->sumsq(cpu, ns[k], fy_at(&x.c, 0));
        double o = ocl->ops->sumsq(ocl, ns[k], fy_at(&x.o, 0));
        double o2 = ocl->ops->sumsq(ocl, ns[k], fy_at(&x.o, 0));
        sync_both("sumsq");
        CHECK(fabs(o - c) <= 1e-12 * c, "sumsq n=%zu: opencl %.17g cpu %.17g", ns[k], o, c);
        CHECK(memcmp(&o, &o2, sizeof o) == 0, "sumsq n=%zu not deterministic", ns[k]);
        tw_free(&x);
    }
    tw_free(&z);
    tw_free(&a);
}

static void test_copy3d(void) {
    /* n0, n1, n2, ds0, ds1, ss0, ss1, accumulate */
    struct { int n0, n1, n2; size_t ds0, ds1, ss0, ss1; int acc; } cs[] = {
        {3, 5, 7, 50, 9, 40, 8, 0},   /* disjoint, padded */
        {3, 5, 7, 50, 9, 40, 8, 1},
        {4, 6, 5, 0, 5, 35, 6, 1},    /* reduce over i */
        {4, 6, 5, 7, 0, 35, 6, 1},    /* reduce over j */
        {4, 6, 5, 0, 0, 35, 6, 1},    /* reduce over both */
        {4, 6, 5, 30, 5, 0, 5, 0},    /* broadcast src over i */
        {4, 6, 5, 0, 5, 35, 6, 0},    /* dst stride 0, overwrite: the last row wins */
        {3, 4, 6, 10, 3, 30, 7, 1},   /* overlapping dst rows: the serial path */
        {1, 1, 1, 0, 0, 0, 0, 1},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        twin d = tw_rand(400, 1.0f), s = tw_rand(400, 1.0f);
        for (int side = 0; side < 2; side++) {
            fy_backend *be = SIDE_BE(side);
            be->ops->copy3d(be, cs[c].n0, cs[c].n1, cs[c].n2, RF(d, 2), cs[c].ds0, cs[c].ds1,
                            RF(s, 1), cs[c].ss0, cs[c].ss1, cs[c].acc);
        }
        char what[64];
        snprintf(what, sizeof what, "copy3d case %zu", c);
        cmp(what, &d, 0, 0); /* the same additions in the same order: bitwise */
        tw_free(&d);
        tw_free(&s);
    }
}

/* ------------------------------------------------------------ GEMM */

static void test_gemm(void) {
    int shapes[][3] = {{1, 1, 1},   {1, 37, 19},  {3, 100, 7},  {5, 70, 33}, {64, 64, 64},
                       {65, 129, 17}, {100, 3, 300}, {7, 9, 0},   {130, 67, 129}};
    float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.25f, 0.75f}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int q = 0; q < 3; q++) {
                    int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
                    int lda = ac + 3, ldb = bc + 1, ldc = N + 2;
                    size_t na = (size_t)(ar ? ar : 1) * lda, nb = (size_t)(br ? br : 1) * ldb,
                           nc = (size_t)M * ldc;
                    float *ha = host_rand(na, 1.0f), *hb = host_rand(nb, 1.0f);
                    float *hc = host_rand(nc, 1.0f);
                    float alpha = ab[q][0], beta = ab[q][1];
                    if (beta == 0.0f) /* C must not be read */
                        for (size_t i = 0; i < nc; i++) hc[i] = NAN;
                    twin A = tw_new(na), B = tw_new(nb), C = tw_new(nc);
                    tw_set(&A, ha);
                    tw_set(&B, hb);
                    tw_set(&C, hc);
                    for (int side = 0; side < 2; side++) {
                        fy_backend *be = SIDE_BE(side);
                        be->ops->gemm(be, ta, tb, M, N, K, alpha, RF(A, 0), lda, RF(B, 0), ldb,
                                      beta, RF(C, 0), ldc);
                    }
                    sync_both("gemm");
                    float *rc = malloc(nc * 4), *ro = malloc(nc * 4);
                    tw_get(&C, rc, ro);
                    size_t bad = 0;
                    double worst = 0;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            /* error bound: relative to |alpha| sum_k |a||b| + |beta c| */
                            double mag = 0;
                            for (int k = 0; k < K; k++) {
                                double a = ta ? ha[(size_t)k * lda + i] : ha[(size_t)i * lda + k];
                                double b = tb ? hb[(size_t)j * ldb + k] : hb[(size_t)k * ldb + j];
                                mag += fabs(a * b);
                            }
                            size_t e = (size_t)i * ldc + j;
                            mag = fabs(alpha) * mag + (beta != 0.0f ? fabs(beta * hc[e]) : 0.0);
                            double d = fabs((double)ro[e] - rc[e]);
                            if (!(d <= 4e-6 * mag + 1e-30)) bad++;
                            if (mag > 0 && d / mag > worst) worst = d / mag;
                        }
                    /* the padding between rows is untouched */
                    for (int i = 0; i < M; i++)
                        for (int j = N; j < ldc; j++)
                            if (memcmp(&ro[(size_t)i * ldc + j], &hc[(size_t)i * ldc + j], 4)) bad++;
                    CHECK(bad == 0, "gemm M=%d N=%d K=%d ta=%d tb=%d alpha=%g beta=%g: %zu bad "
                                    "(worst err / sum|a||b| %.2e)", M, N, K, ta, tb, alpha, beta,
                          bad, worst);
                    free(ha); free(hb); free(hc); free(rc); free(ro);
                    tw_free(&A); tw_free(&B); tw_free(&C);
                }
}

/* ------------------------------------------------------------ rows: rmsnorm, rope, swiglu */

static void test_rmsnorm(void) {
    int shapes[][2] = {{1, 7}, {13, 40}, {70, 257}, {33, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int acc = 0; acc < 2; acc++) {
            int N = shapes[s][0], D = shapes[s][1], ld = D + 3;
            twin x = tw_rand((size_t)N * ld, 1.5f), w = tw_rand(D, 1.0f);
            twin y = tw_rand((size_t)N * ld, 1.0f), r = tw_new(N);
            twin dy = tw_rand((size_t)N * ld, 1.0f), dx = tw_rand((size_t)N * ld, 1.0f);
            twin dw = tw_rand(D, 1.0f);
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                be->ops->rmsnorm_fwd(be, N, D, RF(x, 0), ld, RF(w, 0), 1e-5f, RF(y, 0), ld,
                                     RF(r, 0));
                be->ops->rmsnorm_bwd(be, N, D, RF(x, 0), ld, RF(w, 0), RF(r, 0), RF(dy, 0), ld,
                                     RF(dx, 0), ld, acc, RF(dw, 0));
            }
            char what[80];
            snprintf(what, sizeof what, "rmsnorm N=%d D=%d acc=%d y", N, D, acc);
            cmp(what, &y, TOL_RED);
            cmp("rmsnorm rstd", &r, TOL_RED);
            cmp("rmsnorm_bwd dx", &dx, TOL_RED);
            cmp("rmsnorm_bwd dw", &dw, TOL_RED);
            /* determinism of the dw reduction; dx NULL */
            twin dw2 = tw_rand(D, 1.0f), dw3 = tw_clone(&dw2);
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                be->ops->rmsnorm_bwd(be, N, D, RF(x, 0), ld, RF(w, 0), RF(r, 0), RF(dy, 0), ld,
                                     FY_NULL_REF, ld, 0, RF(dw2, 0));
                be->ops->rmsnorm_bwd(be, N, D, RF(x, 0), ld, RF(w, 0), RF(r, 0), RF(dy, 0), ld,
                                     FY_NULL_REF, ld, 0, RF(dw3, 0));
            }
            cmp("rmsnorm_bwd dw (no dx)", &dw2, TOL_RED);
            same_bits("rmsnorm_bwd dw determinism", &dw2, &dw3);
            tw_free(&x); tw_free(&w); tw_free(&y); tw_free(&r); tw_free(&dy); tw_free(&dx);
            tw_free(&dw); tw_free(&dw2); tw_free(&dw3);
        }
}

static void test_rope(void) {
    /* N, T, pos0, heads, d_r, ld, head_stride */
    int cs[][7] = {{13, 5, 3, 3, 6, 31, 10}, {1, 1, 17, 2, 4, 9, 4}, {40, 40, 0, 1, 32, 32, 0},
                   {40, 40, 70, 1, 32, 32, 0}};
    /* the last case with YaRN (ramp inside the 16 pairs, cos/sin times 1.2) */
    fy_rope_params plain = fy_rope_plain(10000.0f), yarn = plain;
    yarn.yarn = 1, yarn.factor = 4, yarn.orig_max_pos = 64, yarn.beta_fast = 32, yarn.beta_slow = 1;
    yarn.truncate = 1, yarn.mul = 1.2;
    for (int c = 0; c < 4; c++)
        for (int inv = 0; inv < 2; inv++) {
            int N = cs[c][0], T = cs[c][1], p0 = cs[c][2], H = cs[c][3], dr = cs[c][4];
            int ld = cs[c][5], hs = cs[c][6];
            twin x = tw_rand((size_t)N * ld, 1.0f);
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                be->ops->rope(be, N, T, p0, H, dr, RF(x, 0), ld, hs, c == 3 ? &yarn : &plain, inv);
            }
            cmp("rope", &x, TOL_ELEM);
            tw_free(&x);
        }
}

static void test_swiglu(void) {
    int shapes[][2] = {{1, 1}, {7, 33}, {64, 100}};
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], F = shapes[s][1], ld = F + 5;
        twin g = tw_rand((size_t)N * ld, 3.0f), u = tw_rand((size_t)N * ld, 1.0f);
        twin h = tw_rand((size_t)N * ld, 1.0f), dh = tw_rand((size_t)N * ld, 1.0f);
        twin dg = tw_rand((size_t)N * ld, 1.0f), du = tw_rand((size_t)N * ld, 1.0f);
        for (int side = 0; side < 2; side++) {
            fy_backend *be = SIDE_BE(side);
            be->ops->swiglu_fwd(be, N, F, RF(g, 0), ld, RF(u, 0), ld, RF(h, 0), ld);
            be->ops->swiglu_bwd(be, N, F, RF(g, 0), ld, RF(u, 0), ld, RF(dh, 0), ld, RF(dg, 0),
                                RF(du, 0));
        }
        cmp("swiglu_fwd", &h, TOL_ELEM);
        cmp("swiglu_bwd dg", &dg, TOL_ELEM);
        cmp("swiglu_bwd du", &du, TOL_ELEM);
        tw_free(&g); tw_free(&u); tw_free(&h); tw_free(&dh); tw_free(&dg); tw_free(&du);
    }
}

/* dropout (LoRA): the mask is integer hashing and one float multiply, so
 * opencl must give the cpu's bits, with and without row keys. */
static void test_dropout(void) {
    int n = 45, D = 70, ld = 73;
    int32_t keys[45];
    for (int i = 0; i < n; i++) keys[i] = (i * 11 + 3) % 50;
    for (int acc = 0; acc < 2; acc++)
        for (int k = 0; k < 2; k++) {
            twin x = tw_rand((size_t)n * ld, 1.0f), y = tw_rand((size_t)n * ld, 1.0f);
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                be->ops->dropout(be, n, D, 0.35f, 0x1234567890ull, 17, 1000003, k ? keys : NULL, RF(x, 0), ld,
                                 RF(y, 0), ld, acc);
            }
            sync_both("dropout");
            float *hc = malloc(y.n * 4), *ho = malloc(y.n * 4);
            tw_get(&y, hc, ho);
            CHECK(!memcmp(hc, ho, y.n * 4), "dropout (keys %d, accumulate %d): opencl differs from cpu", k, acc);
            free(hc), free(ho);
            tw_free(&x), tw_free(&y);
        }
}

/* ------------------------------------------------------------ attention */

static void test_attn(void) {
    int cs[][5] = {{2, 9, 3, 10, 7}, {1, 1, 2, 5, 3}, {3, 1, 1, 4, 4}, {2, 70, 2, 16, 8},
                   {1, 5, 2, 6, 0}};
    for (int c = 0; c < 5; c++) {
        int B = cs[c][0], T = cs[c][1], H = cs[c][2], dqk = cs[c][3], dv = cs[c][4];
        size_t rows = (size_t)B * T, qs = (size_t)H * dqk, vs = (size_t)H * dv;
        float scale = 1.0f / sqrtf((float)dqk);
        twin q = tw_rand(rows * qs, 1.0f), k = tw_rand(rows * qs, 1.0f);
        twin v = tw_rand(rows * vs, 1.0f), out = tw_new(rows * vs);
        twin P = tw_rand((size_t)B * H * T * T, 1.0f), dout = tw_rand(rows * vs, 1.0f);
        twin dq = tw_rand(rows * qs, 1.0f), dk = tw_rand(rows * qs, 1.0f);
        twin dvv = tw_rand(rows * vs, 1.0f), dq2 = tw_new(rows * qs);
        for (int side = 0; side < 2; side++) {
            fy_backend *be = SIDE_BE(side);
            be->ops->attn_fwd(be, B, T, H, dqk, dv, scale, RF(q, 0), RF(k, 0), RF(v, 0),
                              RF(out, 0), RF(P, 0));
            be->ops->attn_bwd(be, B, T, H, dqk, dv, scale, RF(q, 0), RF(k, 0), RF(v, 0), RF(P, 0),
                              RF(dout, 0), RF(dq, 0), RF(dk, 0), RF(dvv, 0));
        }
        char what[96];
        snprintf(what, sizeof what, "attn B=%d T=%d H=%d dqk=%d dv=%d P", B, T, H, dqk, dv);
        cmp(what, &P, TOL_CHAIN);
        cmp("attn out", &out, TOL_CHAIN);
        cmp("attn_bwd dq", &dq, TOL_CHAIN);
        cmp("attn_bwd dk", &dk, TOL_CHAIN);
        cmp("attn_bwd dv", &dvv, TOL_CHAIN);
        ocl->ops->attn_bwd(ocl, B, T, H, dqk, dv, scale, fy_at(&q.o, 0), fy_at(&k.o, 0),
                           fy_at(&v.o, 0), fy_at(&P.o, 0), fy_at(&dout.o, 0), fy_at(&dq2.o, 0),
                           fy_at(&dk.o, 0), fy_at(&dvv.o, 0));
        same_bits("attn_bwd determinism", &dq, &dq2);
        tw_free(&q); tw_free(&k); tw_free(&v); tw_free(&out); tw_free(&P); tw_free(&dout);
        tw_free(&dq); tw_free(&dk); tw_free(&dvv); tw_free(&dq2);
    }
}

/* linear_q8: the same bits as the cpu kernel (kernels/quant.cl follows
 * cpu_quant.c's accumulation); strides, accumulation, odd block counts, an
 * all-zero input block. */
static void q8_case(int N, int in, int out, int ldx, int ldy, int accumulate) {
    float *w = host_rand((size_t)out * in, 1.0f), *s = malloc((size_t)out * in / 32 * sizeof *s);
    int8_t *q = malloc((size_t)out * in);
    fy_q8_quantize(w, out, in, in, q, s);
    twin tq = tw_new((size_t)out * in / 4), ts = tw_new((size_t)out * in / 32);
    tw_set(&tq, q);
    tw_set(&ts, s);
    twin x = tw_rand((size_t)N * ldx, 1.0f), y = tw_rand((size_t)N * ldy, 1.0f);
    if (in >= 64) { /* row 0, block 1: zeros */
        float z[32] = {0};
        cpu->ops->upload(cpu, fy_at(&x.c, 32), z, 32);
        ocl->ops->upload(ocl, fy_at(&x.o, 32), z, 32);
    }
    for (int side = 0; side < 2; side++) {
        fy_backend *be = SIDE_BE(side);
        be->ops->linear_q8(be, N, in, out, RF(x, 0), ldx, RF(tq, 0), RF(ts, 0), RF(y, 0), ldy, accumulate);
    }
    char what[80];
    snprintf(what, sizeof what, "linear_q8 N=%d in=%d out=%d acc=%d", N, in, out, accumulate);
    cmp(what, &y, 0, 0); /* bit for bit */
    tw_free(&tq), tw_free(&ts), tw_free(&x), tw_free(&y);
    free(w), free(s), free(q);
}

/* linear_q4: the same bits as the cpu kernel (cpu_q4.c), as q8_case; off
 * > 0 puts every operand off + k elements into its buffer (the model's
 * Q4_0 copy packs all matrices into one). */
static void q4_case(int N, int in, int out, int ldx, int ldy, int accumulate, size_t off) {
    float *w = host_rand((size_t)out * in, 1.0f), *s = malloc(((size_t)out * in / 32 + off) * sizeof *s);
    uint8_t *q = malloc((size_t)out * in / 2 + 4 * off);
    fy_q4_quantize(w, out, in, in, q + 4 * off, s + off);
    twin tq = tw_new((size_t)out * in / 8 + off), ts = tw_new((size_t)out * in / 32 + off);
    tw_set(&tq, q);
    tw_set(&ts, s);
    twin x = tw_rand((size_t)N * ldx + 2 * off, 1.0f), y = tw_rand((size_t)N * ldy + 3 * off, 1.0f);
    for (int side = 0; side < 2; side++) {
        fy_backend *be = SIDE_BE(side);
        be->ops->linear_q4(be, N, in, out, RF(x, 2 * off), ldx, RF(tq, off), RF(ts, off), RF(y, 3 * off), ldy,
                           accumulate);
    }
    char what[96];
    snprintf(what, sizeof what, "linear_q4 N=%d in=%d out=%d acc=%d off=%zu", N, in, out, accumulate, off);
    cmp(what, &y, 0, 0); /* bit for bit */
    tw_free(&tq), tw_free(&ts), tw_free(&x), tw_free(&y);
    free(w), free(s), free(q);
}

static void test_linear_q4(void) {
    q4_case(1, 32, 1, 32, 1, 0, 0);
    q4_case(1, 256, 37, 256, 37, 0, 0);
    q4_case(1, 512, 300, 512, 300, 1, 0);
    q4_case(3, 96, 9, 100, 11, 0, 0); /* strides; columns past out untouched */
    q4_case(7, 160, 5, 160, 5, 1, 0); /* an odd number of blocks; the cpu's 2 x 2 tiles */
    q4_case(1, 64, 300, 64, 300, 0, 37); /* offsets into the buffers */
    q4_case(5, 128, 64, 128, 64, 1, 1001);
    twin b = tw_new(64);
    ocl->ops->linear_q4(ocl, 1, 40, 1, fy_at(&b.o, 0), 40, fy_at(&b.o, 0), fy_at(&b.o, 0), fy_at(&b.o, 0), 1, 0);
    fy_err e = {{0}};
    CHECK(fy_be_sync(ocl, &e) != 0 && strstr(e.msg, "multiple of 32"), "opencl linear_q4 in=40 accepted");
    tw_free(&b);
}

static void test_linear_q8(void) {
    q8_case(1, 32, 1, 32, 1, 0);
    q8_case(1, 256, 37, 256, 37, 0);
    q8_case(1, 512, 300, 512, 300, 1);
    q8_case(3, 96, 9, 100, 11, 0); /* strides; columns past out untouched */
    q8_case(1, 160, 5, 160, 5, 0); /* an odd number of blocks */
    twin b = tw_new(64);
    ocl->ops->linear_q8(ocl, 1, 40, 1, fy_at(&b.o, 0), 40, fy_at(&b.o, 0), fy_at(&b.o, 0), fy_at(&b.o, 0), 1, 0);
    fy_err e = {{0}};
    CHECK(fy_be_sync(ocl, &e) != 0 && strstr(e.msg, "multiple of 32"), "opencl linear_q8 in=40 accepted");
    tw_free(&b);
}

static void test_mla_decode(void) {
    int Ss[] = {0, 1, 17, 70};
    int H = 3, r = 18, dn = 5, dr = 6, dv = 7, ldq = 13, ldc = 20, ldk = 8;
    for (int c = 0; c < 4; c++) {
        int S = Ss[c];
        twin q = tw_rand((size_t)H * ldq, 1.0f), w = tw_rand((size_t)H * (dn + dv) * r, 0.5f);
        twin ckv = tw_rand((size_t)(S ? S : 1) * ldc, 1.0f), kpe = tw_rand((size_t)(S ? S : 1) * ldk, 1.0f);
        twin out = tw_rand((size_t)H * dv, 1.0f);
        for (int side = 0; side < 2; side++) {
            fy_backend *be = SIDE_BE(side);
            be->ops->mla_decode(be, H, S, r, dn, dr, dv, 0.3f, RF(q, 0), ldq, RF(w, 0), RF(ckv, 0), ldc,
                                RF(kpe, 0), ldk, RF(out, 0));
        }
        cmp("mla_decode", &out, TOL_CHAIN);
        tw_free(&q); tw_free(&w); tw_free(&ckv); tw_free(&kpe); tw_free(&out);
    }
}

static void test_router_balance(void) {
    struct { int E, K, G, tg, norm; float scaling; int bias, ties; } cs[] = {
        {12, 3, 1, 1, 1, 1.0f, 0, 0}, {12, 3, 4, 2, 1, 2.5f, 1, 0}, {12, 3, 4, 2, 0, 2.5f, 1, 1},
        {6, 2, 1, 1, 0, 1.0f, 1, 1},  {8, 4, 2, 1, 1, 1.0f, 0, 0},  {8, 8, 2, 2, 0, 1.0f, 1, 0},  {64, 6, 8, 3, 1, 1.5f, 1, 0},
    };
    int Bs = 3, Ts[] = {13, 1};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++)
        for (int ti = 0; ti < 2; ti++) {
            int E = cs[c].E, K = cs[c].K, T = Ts[ti], N = Bs * T;
            fy_router_opts o = {E, K, cs[c].G, cs[c].tg, cs[c].norm, cs[c].scaling};
            float *hl = host_rand((size_t)N * E, 2.0f);
            if (cs[c].ties) /* coarse values: many exact ties between experts and groups */
                for (size_t i = 0; i < (size_t)N * E; i++) hl[i] = roundf(hl[i]);
            twin lg = tw_new((size_t)N * E), bias = tw_rand(E, 0.1f);
            tw_set(&lg, hl);
            twin s = tw_new((size_t)N * E), idx = tw_new((size_t)N * K), w = tw_new((size_t)N * K);
            twin dw = tw_rand((size_t)N * K, 1.0f), dl = tw_rand((size_t)N * E, 1.0f);
            twin dl0 = tw_rand((size_t)N * E, 1.0f);
            float bc = 0, bo = 0;
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                be->ops->router_fwd(be, N, &o, RF(lg, 0), cs[c].bias ? RF(bias, 0) : FY_NULL_REF,
                                    RF(s, 0), RF(idx, 0), RF(w, 0));
                be->ops->router_bwd(be, N, &o, RF(s, 0), RF(idx, 0), RF(dw, 0), RF(dl, 0), 1);
                be->ops->router_bwd(be, N, &o, RF(s, 0), RF(idx, 0), RF(dw, 0), RF(dl0, 0), 0);
                float l = be->ops->balance_fwd(be, Bs, T, E, K, 0.01f, RF(s, 0), RF(idx, 0));
                be->ops->balance_bwd(be, Bs, T, E, K, 0.01f, 0.7f, RF(s, 0), RF(idx, 0),
                                     RF(dl, 0));
                if (side) bo = l;
                else bc = l;
            }
            char what[96];
            snprintf(what, sizeof what, "router E=%d K=%d G=%d norm=%d ties=%d T=%d idx", E, K,
                     cs[c].G, cs[c].norm, cs[c].ties, T);
            cmp_int(what, &idx);
            cmp("router s", &s, TOL_ELEM);
            cmp("router w", &w, TOL_ELEM);
            cmp("router_bwd + balance_bwd (accumulate)", &dl, TOL_RED);
            cmp("router_bwd (overwrite)", &dl0, TOL_ELEM);
            CHECK(fabsf(bo - bc) <= 1e-6f * fabsf(bc), "balance_fwd: opencl %.9g cpu %.9g", bo, bc);
            float b2 = ocl->ops->balance_fwd(ocl, Bs, T, E, K, 0.01f, fy_at(&s.o, 0), fy_at(&idx.o, 0));
            CHECK(memcmp(&b2, &bo, 4) == 0, "balance_fwd not deterministic");
            free(hl);
            tw_free(&lg); tw_free(&bias); tw_free(&s); tw_free(&idx); tw_free(&w); tw_free(&dw);
            tw_free(&dl); tw_free(&dl0);
        }
}

static void test_gather_scatter(void) {
    int ns[] = {1, 50, 300}, Ds[] = {1, 37, 130};
    for (int c = 0; c < 3; c++)
        for (int wi = 0; wi < 2; wi++) {
            int n = ns[c], D = Ds[c], rows = 7 + c * 20, lds = D + 2, ldd = D + 1;
            int32_t *hi = malloc(n * sizeof *hi);
            for (int i = 0; i < n; i++) hi[i] = (int)(fy_rng_u64(5, c, i) % rows);
            twin idx = tw_ints(hi, n), w = tw_rand(n, 1.0f);
            twin table = tw_rand((size_t)rows * lds, 1.0f), g = tw_rand((size_t)n * ldd, 1.0f);
            twin src = tw_rand((size_t)n * lds, 1.0f), dst = tw_rand((size_t)rows * ldd, 1.0f);
            twin dst2 = tw_clone(&dst), dots = tw_rand(n, 1.0f), dots0 = tw_new(n);
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                fy_ref wr = wi ? RF(w, 0) : FY_NULL_REF;
                be->ops->gather_rows(be, n, D, RF(table, 0), lds, RF(idx, 0), wr, RF(g, 0), ldd);
                be->ops->scatter_add_rows(be, n, D, RF(src, 0), lds, RF(idx, 0), wr, RF(dst, 0),
                                          ldd);
                be->ops->rows_dot(be, n, D, RF(table, 0), lds, RF(idx, 0), RF(src, 0), lds,
                                  RF(dots, 0), 1);
                be->ops->rows_dot(be, n, D, RF(table, 0), lds, RF(idx, 0), RF(src, 0), lds,
                                  RF(dots0, 0), 0);
            }
            ocl->ops->scatter_add_rows(ocl, n, D, fy_at(&src.o, 0), lds, fy_at(&idx.o, 0),
                                       wi ? fy_at(&w.o, 0) : FY_NULL_REF, fy_at(&dst2.o, 0), ldd);
            cmp("gather_rows", &g, 0, 0);
            cmp("scatter_add_rows (repeated rows, in order of i)", &dst, 0, 0);
            same_bits("scatter_add_rows determinism", &dst, &dst2);
            cmp("rows_dot accumulate", &dots, TOL_RED);
            cmp("rows_dot overwrite", &dots0, TOL_RED);
            free(hi);
            tw_free(&idx); tw_free(&w); tw_free(&table); tw_free(&g); tw_free(&src);
            tw_free(&dst); tw_free(&dst2); tw_free(&dots); tw_free(&dots0);
        }
}

/* ------------------------------------------------------------ loss, optimizer */

static void test_xent(void) {
    int cs[][2] = {{1, 5}, {13, 101}, {40, 1000}};
    for (int c = 0; c < 3; c++)
        for (int alias = 0; alias < 2; alias++) {
            int N = cs[c][0], V = cs[c][1];
            int32_t *ht = malloc(N * sizeof *ht);
            for (int i = 0; i < N; i++)
                ht[i] = (i % 4 == 3) ? -100 : (int)(fy_rng_u64(4, c, i) % V);
            twin x = tw_rand((size_t)N * V, 3.0f), tg = tw_ints(ht, N), loss = tw_new(N);
            twin d = tw_rand((size_t)N * V, 1.0f);
            double lc = 0, lo = 0, lo2 = 0;
            for (int side = 0; side < 2; side++) {
                fy_backend *be = SIDE_BE(side);
                double l = be->ops->xent_fwdbwd(be, N, V, RF(x, 0), RF(tg, 0), -100, 0.5f,
                                                RF(loss, 0), alias ? RF(x, 0) : RF(d, 0));
                if (side) lo = l;
                else lc = l;
            }
            cmp("xent losses", &loss, TOL_RED);
            cmp(alias ? "xent dlogits (aliasing logits)" : "xent dlogits", alias ? &x : &d, TOL_RED);
            CHECK(fabs(lo - lc) <= 1e-5 * fabs(lc) + 1e-6, "xent total: opencl %.9g cpu %.9g", lo, lc);
            if (!alias) {
                lo2 = ocl->ops->xent_fwdbwd(ocl, N, V, fy_at(&x.o, 0), fy_at(&tg.o, 0), -100, 0.5f,
                                            fy_at(&loss.o, 0), fy_at(&d.o, 0));
                CHECK(memcmp(&lo, &lo2, sizeof lo) == 0, "xent total not deterministic");
            }
            free(ht);
            tw_free(&x); tw_free(&tg); tw_free(&loss); tw_free(&d);
        }
}

static void test_adamw(void) {
    size_t n = 10007;
    twin p = tw_rand(n, 1.0f), g = tw_rand(n, 0.1f), m = tw_rand(n, 0.01f), v = tw_new(n);
    float *hv = host_rand(n, 0.01f);
    for (size_t i = 0; i < n; i++) hv[i] *= hv[i];
    tw_set(&v, hv);
    free(hv);
    for (int t = 1; t <= 7; t += 6)
        for (int side = 0; side < 2; side++) {
            fy_backend *be = SIDE_BE(side);
            be->ops->adamw(be, n - 3, RF(p, 1), RF(g, 2), RF(m, 0), RF(v, 3), 1e-3f, 0.9f, 0.95f,
                           1e-8f, 0.1f, t, 0.8f);
        }
    cmp("adamw p", &p, TOL_ELEM);
    cmp("adamw m", &m, TOL_ELEM);
    cmp("adamw v", &v, TOL_ELEM);
    tw_free(&p); tw_free(&g); tw_free(&m); tw_free(&v);
}

/* ------------------------------------------------------------ errors */

static void test_errors(void) {
    fy_err e = {{0}};
    fy_buf b;
    CHECK(fy_be_alloc(ocl, &b, 10, &e) == 0, "alloc: %s", e.msg);
    ocl->ops->fill(ocl, fy_at(&b, 5), 1.0f, 6); /* one past the end */
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "fill") && strstr(e.msg, "out of bounds"),
          "out-of-bounds fill: %s", e.msg);
    CHECK(fy_be_sync(ocl, &e) == 0, "the error is cleared by sync: %s", e.msg);
    int32_t bad[3] = {0, 9, 1};
    fy_buf idx, dst;
    fy_be_alloc(ocl, &idx, 3, &e);
    fy_be_alloc(ocl, &dst, 30, &e);
    ocl->ops->upload(ocl, fy_at(&idx, 0), bad, 3);
    ocl->ops->gather_rows(ocl, 3, 4, fy_at(&b, 0), 4, fy_at(&idx, 0), FY_NULL_REF, fy_at(&dst, 0), 4);
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "gather_rows") && strstr(e.msg, "idx[1] = 9"),
          "bad gather index: %s", e.msg);
    CHECK(fy_be_sync(ocl, &e) == 0, "device error cleared: %s", e.msg);
    /* every other op that reads indices on the device */
    ocl->ops->scatter_add_rows(ocl, 3, 4, fy_at(&dst, 0), 4, fy_at(&idx, 0), FY_NULL_REF,
                               fy_at(&b, 0), 4);
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "scatter_add_rows") && strstr(e.msg, "= 9"),
          "bad scatter index: %s", e.msg);
    ocl->ops->rows_dot(ocl, 3, 4, fy_at(&b, 0), 4, fy_at(&idx, 0), fy_at(&dst, 0), 4,
                       fy_at(&dst, 20), 0);
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "rows_dot") && strstr(e.msg, "ia[1] = 9"),
          "bad rows_dot index: %s", e.msg);
    fy_router_opts ro = {4, 1, 1, 1, 1, 1.0f};
    ocl->ops->router_bwd(ocl, 3, &ro, fy_at(&dst, 0), fy_at(&idx, 0), fy_at(&dst, 0),
                         fy_at(&dst, 12), 0);
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "router_bwd") && strstr(e.msg, "is 9"),
          "bad router_bwd index: %s", e.msg);
    (void)ocl->ops->balance_fwd(ocl, 1, 3, 4, 1, 0.1f, fy_at(&dst, 0), fy_at(&idx, 0));
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "balance") && strstr(e.msg, "is 9"),
          "bad balance index: %s", e.msg);
    (void)ocl->ops->xent_fwdbwd(ocl, 3, 4, fy_at(&dst, 0), fy_at(&idx, 0), -100, 1.0f,
                                fy_at(&dst, 12), fy_at(&dst, 0));
    CHECK(fy_be_sync(ocl, &e) == -1 && strstr(e.msg, "xent") && strstr(e.msg, "targets[1] = 9"),
          "bad xent target: %s", e.msg);
    CHECK(fy_be_sync(ocl, &e) == 0, "device errors cleared: %s", e.msg);
    fy_backend *x = NULL;
    CHECK(fy_backend_create("opencl:99:0", &x, &e) == -1 && !x && strstr(e.msg, "no platform 99"),
          "opencl:99:0: %s", e.msg);
    CHECK(fy_backend_create("opencl:0:99", &x, &e) == -1 && !x && strstr(e.msg, "no device 99"),
          "opencl:0:99: %s", e.msg);
    CHECK(fy_backend_create("opencl:zz", &x, &e) == -1 && !x && strstr(e.msg, "opencl:P:D"),
          "opencl:zz: %s", e.msg);
    fy_be_free(ocl, &b);
    fy_be_free(ocl, &idx);
    fy_be_free(ocl, &dst);
}

int main(void) {
    fy_err e = {{0}};
    const char *spec = getenv("FERRY_OPENCL_DEVICE") ? getenv("FERRY_OPENCL_DEVICE") : "opencl";
    /* FERRY_OPENCL_GEMM=tiled|reg picks the first backend's GEMM kernels, as
     * the ferry CLI does (src/cli/env.c); the library reads no environment. */
    const char *gemm = getenv("FERRY_OPENCL_GEMM");
    fy_backend_opts opts = {0};
    opts.opencl_gemm = !gemm ? FY_OPENCL_GEMM_AUTO : !strcmp(gemm, "reg") ? FY_OPENCL_GEMM_REG : FY_OPENCL_GEMM_TILED;
    if (fy_backend_create_opts(spec, &opts, &ocl, &e)) {
        if (strstr(e.msg, "no OpenCL platform") || strstr(e.msg, "have no devices")) {
            printf("test_opencl_ops: SKIP: no OpenCL device: %s\n", e.msg);
            return 77;
        }
        fprintf(stderr, "test_opencl_ops: creating %s failed: %s\n", spec, e.msg);
        return 1;
    }
    if (fy_backend_cpu_create(&cpu, &e)) {
        fprintf(stderr, "cpu: %s\n", e.msg);
        return 1;
    }
    /* every op is filled in */
    const void *const *fp = (const void *const *)&ocl->ops->destroy;
    const void *const *end = (const void *const *)(&ocl->ops->mla_decode + 1);
    for (; fp < end; fp++) CHECK(*fp != NULL, "an op of the opencl vtable is NULL");

    test_memory();
    test_copy3d();
    test_gemm();
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_dropout();
    test_attn();
    test_mla_decode();
    test_linear_q8();
    test_linear_q4();
    test_router_balance();
    test_gather_scatter();
    test_xent();
    test_adamw();
    test_errors();
    /* The other GEMM kernel family (tiled with local memory for GPUs, or
     * register-blocked for CPU devices) on a second backend: both are
     * checked whatever the device. */
    const char *other = gemm && !strcmp(gemm, "reg") ? "tiled" : "reg";
    opts.opencl_gemm = !strcmp(other, "reg") ? FY_OPENCL_GEMM_REG : FY_OPENCL_GEMM_TILED;
    fy_backend_destroy(ocl);
    ocl = NULL;
    if (fy_backend_create_opts(spec, &opts, &ocl, &e)) {
        fprintf(stderr, "test_opencl_ops: creating %s with FERRY_OPENCL_GEMM=%s: %s\n", spec,
                other, e.msg);
        return 1;
    }
    test_gemm();
    test_attn();
    test_mla_decode();
    test_linear_q8();
    fy_backend_destroy(ocl);
    fy_backend_destroy(cpu);
    return fy_test_finish("test_opencl_ops");
}
#endif
