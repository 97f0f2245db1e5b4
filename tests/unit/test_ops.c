/* CPU backend ops: every forward against an independent double-precision
 * loop, every backward against central finite differences of
 * loss = sum(out * R), and determinism across OpenMP thread counts. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "testutil.h"

static fy_backend *be;
#define OPS (be->ops)

/* ------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* xorshift64*, [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}
static float frand(float lo, float hi) { return lo + (hi - lo) * (float)urand(); }
static void fill_rand(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = frand(lo, hi);
}
static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    if (!p) abort();
    return p;
}
static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    if (!p) abort();
    return p;
}

static fy_buf mkbuf(size_t n) {
    fy_buf b;
    fy_err e;
    if (fy_be_alloc(be, &b, n, &e)) {
        fprintf(stderr, "alloc failed: %s\n", e.msg);
        exit(2);
    }
    return b;
}
static fy_buf upbuf(const void *x, size_t n) {
    fy_buf b = mkbuf(n);
    OPS->upload(be, fy_at(&b, 0), x, n);
    return b;
}
static void put(fy_buf *b, const void *x, size_t n) { OPS->upload(be, fy_at(b, 0), x, n); }
static void get(void *x, fy_buf *b, size_t n) { OPS->download(be, x, fy_at(b, 0), n); }
static void freebuf(fy_buf *b) { fy_be_free(be, b); }

static void sync_ok(const char *what) {
    fy_err e = {{0}};
    int rc = fy_be_sync(be, &e);
    CHECK(rc == 0, "%s: backend error: %s", what, e.msg);
}

/* Makes `be` a new cpu backend whose Q8_0 kernel is isa ("portable",
 * "avx2"; NULL: the best) and returns the previous one for q8_restore. cpu
 * buffers are host memory, so the previous backend's serve this one. */
static fy_backend *q8_use(const char *isa) {
    fy_backend_opts o = {0};
    o.cpu_q8 = !isa ? FY_CPU_Q8_BEST : !strcmp(isa, "portable") ? FY_CPU_Q8_PORTABLE : FY_CPU_Q8_AVX2;
    fy_backend *prev = be;
    fy_err e;
    if (fy_backend_create_opts("cpu", &o, &be, &e)) {
        fprintf(stderr, "cpu backend with Q8_0 kernel %s: %s\n", isa ? isa : "best", e.msg);
        exit(2);
    }
    return prev;
}

static void q8_restore(fy_backend *prev) {
    sync_ok("Q8_0 kernel backend");
    fy_backend_destroy(be);
    be = prev;
}

/* Max over i of |got - want| / max(|want|, floor); fails above tol. */
static void cmp(const char *what, const float *got, const double *want, size_t n, double tol,
                double floor_) {
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fy_relerr(got[i], want[i], floor_);
        if (!(e <= worst)) { /* NaN counts as worst */
            worst = isnan(e) ? INFINITY : e;
            wi = i;
        }
    }
    CHECK(worst <= tol, "%s: max rel err %.3g at [%zu] (got %.9g, want %.9g), tol %.1g", what,
          worst, wi, n ? got[wi] : 0.0, n ? want[wi] : 0.0, tol);
}

static double max_abs_d(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Central finite differences of loss() over x[0..n) (host copy; loss()
 * must upload it), compared with the analytic gradient ana. The floor of
 * the relative error is 5% of the largest gradient. */
static void fd_check(const char *what, double (*loss)(void), float *x, size_t n,
                     const float *ana, float eps, double tol) {
    double *num = dalloc(n);
    for (size_t i = 0; i < n; i++) {
        float save = x[i];
        float xp = save + eps, xm = save - eps;
        x[i] = xp;
        double lp = loss();
        x[i] = xm;
        double lm = loss();
        x[i] = save;
        num[i] = (lp - lm) / ((double)xp - (double)xm);
    }
    loss(); /* leave the device copy as it was */
    /* Below 1e-5 the difference quotient is noise: the loss is a float sum
     * of O(1) terms, so its rounding (~1e-7) over 2 eps (~1e-2) is ~1e-5.
     * (1e-6 failed a gradient that is exactly zero: K=1 with normalised
     * weights gave analytic 1e-8 against numeric 0.) */
    double floor_ = 0.05 * max_abs_d(num, n);
    if (floor_ < 1e-5) floor_ = 1e-5;
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fy_relerr(ana[i], num[i], floor_);
        if (!(e <= worst)) {
            worst = isnan(e) ? INFINITY : e;
            wi = i;
        }
    }
    CHECK(worst <= tol,
          "%s: finite differences disagree: max rel err %.3g at [%zu] (analytic %.7g, "
          "numeric %.7g)", what, worst, wi, n ? ana[wi] : 0.0, n ? num[wi] : 0.0);
    free(num);
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ------------------------------------------------------------ create, errors, memory */

static void test_create_and_errors(void) {
    fy_err e = {{0}};
    fy_backend *b2 = NULL;
    CHECK(fy_backend_create("cpu", &b2, &e) == 0 && b2, "create cpu: %s", e.msg);
    if (b2) {
        CHECK(strcmp(b2->ops->name, "cpu") == 0, "name is %s", b2->ops->name);
        fy_backend_destroy(b2);
    }
#ifndef FERRY_HAVE_OPENCL
    b2 = NULL;
    CHECK(fy_backend_create("opencl:0:1", &b2, &e) == -1 && !b2, "opencl should fail");
    CHECK(strstr(e.msg, "backend 'opencl' is not built into this ferry"), "msg: %s", e.msg);
#else
    b2 = NULL;
    CHECK(fy_backend_create("opencl:99:0", &b2, &e) == -1 && !b2, "opencl:99:0 should fail");
    CHECK(strstr(e.msg, "opencl") && (strstr(e.msg, "no platform 99") ||
                                      strstr(e.msg, "no OpenCL platform")),
          "msg should say there is no platform 99: %s", e.msg);
#endif
    CHECK(fy_backend_create("cuda", &b2, &e) == -1, "cuda should fail");
    CHECK(strstr(e.msg, "this version of ferry has no CUDA backend"), "msg: %s", e.msg);
    CHECK(fy_backend_create("tpu", &b2, &e) == -1, "tpu should fail");
    CHECK(strstr(e.msg, "tpu") && strstr(e.msg, "cpu"), "msg should name spec and cpu: %s",
          e.msg);

    /* every op is filled in (the fault-checking ops after them are optional:
     * only a checking backend has them) */
    const void *const *fp = (const void *const *)&be->ops->destroy;
    size_t nfp = (offsetof(fy_backend_ops, fault_begin_step) - offsetof(fy_backend_ops, destroy)) / sizeof(void *);
    int missing = 0;
    for (size_t i = 0; i < nfp; i++) missing += fp[i] == NULL;
    CHECK(missing == 0, "%d ops missing from the cpu vtable", missing);

    /* sticky errors: first wins, sync reports and clears */
    fy_buf b = mkbuf(4);
    float tmp[8] = {0};
    OPS->upload(be, fy_at(&b, 2), tmp, 3); /* 2 + 3 > 4 */
    OPS->fill(be, fy_at(&b, 9), 1.0f, 1);
    CHECK(be->failed, "out-of-bounds upload should set failed");
    int rc = fy_be_sync(be, &e);
    CHECK(rc == -1 && strstr(e.msg, "upload"), "sync should report the first error: %s", e.msg);
    CHECK(fy_be_sync(be, &e) == 0, "sync should clear the error");
    int32_t tg[2] = {0, 7};
    fy_buf L = mkbuf(6), T = upbuf(tg, 2), lo = mkbuf(2);
    OPS->xent_fwdbwd(be, 2, 3, fy_at(&L, 0), fy_at(&T, 0), -100, 1.0f, fy_at(&lo, 0),
                     fy_at(&L, 0));
    rc = fy_be_sync(be, &e);
    CHECK(rc == -1 && strstr(e.msg, "targets"), "bad target should be reported: %s", e.msg);
    int32_t gi[1] = {5};
    fy_buf gidx = upbuf(gi, 1);
    OPS->gather_rows(be, 1, 2, fy_at(&L, 0), 2, fy_at(&gidx, 0), FY_NULL_REF, fy_at(&b, 0), 2);
    rc = fy_be_sync(be, &e);
    CHECK(rc == -1 && strstr(e.msg, "gather_rows"), "bad gather index: %s", e.msg);
    freebuf(&b), freebuf(&L), freebuf(&T), freebuf(&lo), freebuf(&gidx);
}

static void test_memory_blas1(void) {
    size_t n = 1003;
    fy_buf b = mkbuf(n);
    CHECK(((uintptr_t)b.handle & 63) == 0, "alloc not 64-byte aligned");
    float *x = falloc(n), *y = falloc(n), *z = falloc(n);
    get(x, &b, n);
    int nz = 0;
    for (size_t i = 0; i < n; i++) nz += x[i] != 0.0f;
    CHECK(nz == 0, "alloc not zero-filled (%d nonzero)", nz);
    fill_rand(x, n, -2, 2);
    fill_rand(y, n, -2, 2);
    put(&b, x, n);
    fy_buf c = upbuf(y, n);
    OPS->axpy(be, n - 3, 0.75f, fy_at(&b, 3), fy_at(&c, 0)); /* c[i] += .75 b[i+3] */
    get(z, &c, n);
    double *want = dalloc(n);
    for (size_t i = 0; i < n; i++) want[i] = i < n - 3 ? y[i] + 0.75 * x[i + 3] : y[i];
    cmp("axpy", z, want, n, 1e-6, 1.0);
    OPS->scale(be, n, -1.5f, fy_at(&c, 0));
    get(y, &c, n);
    for (size_t i = 0; i < n; i++) want[i] = -1.5 * z[i];
    cmp("scale", y, want, n, 1e-6, 1.0);
    OPS->fill(be, fy_at(&c, 10), 3.25f, 20);
    OPS->copy(be, fy_at(&c, 100), fy_at(&b, 0), 50);
    float *w = falloc(n);
    get(w, &c, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float e = (i >= 10 && i < 30) ? 3.25f : (i >= 100 && i < 150) ? x[i - 100] : y[i];
        bad += w[i] != e;
    }
    CHECK(bad == 0, "fill/copy: %d wrong elements", bad);
    double ss = 0.0;
    for (size_t i = 1; i < n; i++) ss += (double)x[i] * x[i];
    double got = OPS->sumsq(be, n - 1, fy_at(&b, 1));
    CHECK(fabs(got - ss) <= 1e-12 * ss, "sumsq %.17g want %.17g", got, ss);
    sync_ok("memory");
    freebuf(&b), freebuf(&c);
    free(x), free(y), free(z), free(w), free(want);
}

/* ------------------------------------------------------------ copy3d */

static void copy3d_case(const char *what, int n0, int n1, int n2, size_t ds0, size_t ds1,
                        size_t ss0, size_t ss1, int acc) {
    size_t dn = (size_t)(n0 - 1) * ds0 + (size_t)(n1 - 1) * ds1 + n2 + 5;
    size_t sn = (size_t)(n0 - 1) * ss0 + (size_t)(n1 - 1) * ss1 + n2 + 5;
    float *s = falloc(sn), *d = falloc(dn), *got = falloc(dn);
    fill_rand(s, sn, -1, 1);
    fill_rand(d, dn, -1, 1);
    fy_buf S = upbuf(s, sn), D = upbuf(d, dn);
    OPS->copy3d(be, n0, n1, n2, fy_at(&D, 2), ds0, ds1, fy_at(&S, 1), ss0, ss1, acc);
    get(got, &D, dn);
    /* the op was given offsets 2 (dst) and 1 (src): shift the reference */
    double *w2 = dalloc(dn);
    for (size_t e = 0; e < dn; e++) w2[e] = d[e];
    for (int i = 0; i < n0; i++)
        for (int j = 0; j < n1; j++)
            for (int k = 0; k < n2; k++) {
                double *t = &w2[2 + i * ds0 + j * ds1 + k];
                double v = s[1 + i * ss0 + j * ss1 + k];
                *t = acc ? *t + v : v;
            }
    cmp(what, got, w2, dn, 1e-5, 1.0);
    sync_ok(what);
    freebuf(&S), freebuf(&D);
    free(s), free(d), free(got), free(w2);
}

static void test_copy3d(void) {
    copy3d_case("copy3d strided", 3, 4, 5, 40, 9, 25, 6, 0);
    copy3d_case("copy3d strided accumulate", 3, 4, 5, 40, 9, 25, 6, 1);
    copy3d_case("copy3d broadcast src ss0=0", 3, 4, 5, 30, 7, 0, 5, 0);
    copy3d_case("copy3d broadcast src ss1=0", 3, 4, 5, 30, 7, 6, 0, 0);
    copy3d_case("copy3d reduce ds1=0", 3, 4, 5, 6, 0, 21, 5, 1);
    copy3d_case("copy3d reduce ds0=0", 3, 4, 5, 0, 6, 21, 5, 1);
    copy3d_case("copy3d reduce all", 3, 4, 5, 0, 0, 21, 5, 1);
    copy3d_case("copy3d overlapping rows", 3, 4, 5, 12, 3, 21, 5, 1);
    copy3d_case("copy3d big reduce (parallel)", 40, 30, 130, 0, 131, 3950, 131, 1);
    copy3d_case("copy3d big strided (parallel)", 40, 30, 130, 30 * 133, 133, 3950, 131, 0);
}

/* ------------------------------------------------------------ GEMM */

static void gemm_case(int ta, int tb, int M, int N, int K, int pad) {
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    int lda = ac + pad, ldb = bc + pad + 1, ldc = N + pad + 2;
    float *A = falloc((size_t)ar * lda), *B = falloc((size_t)br * ldb),
          *C = falloc((size_t)M * ldc), *G = falloc((size_t)M * ldc);
    fill_rand(A, (size_t)ar * lda, -1, 1);
    fill_rand(B, (size_t)br * ldb, -1, 1);
    fill_rand(C, (size_t)M * ldc, -1, 1);
    float alpha = 0.7f, beta = -0.3f;
    double *want = dalloc((size_t)M * ldc), *mag = dalloc((size_t)M * ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            size_t o = (size_t)i * ldc + j;
            if (j >= N) {
                want[o] = C[o]; /* padding untouched */
                mag[o] = 1;
                continue;
            }
            double s = 0, m = 0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
                m += fabs(a * b);
            }
            want[o] = alpha * s + beta * C[o];
            mag[o] = fabs(alpha) * m + fabs(beta * C[o]);
        }
    fy_buf bA = upbuf(A, (size_t)ar * lda), bB = upbuf(B, (size_t)br * ldb),
           bC = upbuf(C, (size_t)M * ldc);
    OPS->gemm(be, ta, tb, M, N, K, alpha, fy_at(&bA, 0), lda, fy_at(&bB, 0), ldb, beta,
              fy_at(&bC, 0), ldc);
    get(G, &bC, (size_t)M * ldc);
    double worst = 0;
    for (size_t o = 0; o < (size_t)M * ldc; o++) {
        double e = fabs(G[o] - want[o]) / (mag[o] + 1e-30);
        if (!(e <= worst)) worst = isnan(e) ? INFINITY : e;
    }
    CHECK(worst < 1e-5, "gemm ta=%d tb=%d M=%d N=%d K=%d: max err %.3g (relative to |terms|)",
          ta, tb, M, N, K, worst);
    sync_ok("gemm");
    freebuf(&bA), freebuf(&bB), freebuf(&bC);
    free(A), free(B), free(C), free(G), free(want), free(mag);
}

static void test_gemm(void) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            gemm_case(ta, tb, 5, 7, 3, 2);
            gemm_case(ta, tb, 37, 29, 19, 3);
            gemm_case(ta, tb, 1, 3, 1, 1);
        }
}

/* ------------------------------------------------------------ RMSNorm */

enum { RN_N = 5, RN_D = 7, RN_LDX = 9, RN_LDY = 8, RN_LDDX = 10 };
static float rn_x[RN_N * RN_LDX], rn_w[RN_D], rn_R[RN_N * RN_LDY];
static fy_buf rn_bx, rn_bw, rn_by, rn_br;
static const float rn_eps = 1e-5f;

static double rn_loss(void) {
    put(&rn_bx, rn_x, RN_N * RN_LDX);
    put(&rn_bw, rn_w, RN_D);
    OPS->rmsnorm_fwd(be, RN_N, RN_D, fy_at(&rn_bx, 0), RN_LDX, fy_at(&rn_bw, 0), rn_eps,
                     fy_at(&rn_by, 0), RN_LDY, fy_at(&rn_br, 0));
    float y[RN_N * RN_LDY];
    get(y, &rn_by, RN_N * RN_LDY);
    double L = 0;
    for (int n = 0; n < RN_N; n++) L += dot_d(y + n * RN_LDY, rn_R + n * RN_LDY, RN_D);
    return L;
}

static void test_rmsnorm(void) {
    fill_rand(rn_x, RN_N * RN_LDX, -2, 2);
    fill_rand(rn_w, RN_D, 0.5f, 1.5f);
    fill_rand(rn_R, RN_N * RN_LDY, -1, 1);
    rn_bx = mkbuf(RN_N * RN_LDX), rn_bw = mkbuf(RN_D), rn_by = mkbuf(RN_N * RN_LDY),
    rn_br = mkbuf(RN_N);
    rn_loss();
    float y[RN_N * RN_LDY], r[RN_N];
    double wy[RN_N * RN_LDY] = {0}, wr[RN_N];
    get(y, &rn_by, RN_N * RN_LDY);
    get(r, &rn_br, RN_N);
    for (int n = 0; n < RN_N; n++) {
        double ms = 0;
        for (int j = 0; j < RN_D; j++) ms += (double)rn_x[n * RN_LDX + j] * rn_x[n * RN_LDX + j];
        wr[n] = 1.0 / sqrt(ms / RN_D + rn_eps);
        for (int j = 0; j < RN_D; j++) wy[n * RN_LDY + j] = rn_x[n * RN_LDX + j] * wr[n] * rn_w[j];
    }
    cmp("rmsnorm_fwd y", y, wy, RN_N * RN_LDY, 1e-5, 1e-2);
    cmp("rmsnorm_fwd rstd", r, wr, RN_N, 1e-6, 1e-6);

    /* backward: dx accumulated onto a preset value, dw added to a preset */
    float dx0[RN_N * RN_LDDX], dx[RN_N * RN_LDDX], dw0[RN_D], dw[RN_D];
    fill_rand(dx0, RN_N * RN_LDDX, -1, 1);
    fill_rand(dw0, RN_D, -1, 1);
    fy_buf bdy = upbuf(rn_R, RN_N * RN_LDY), bdx = upbuf(dx0, RN_N * RN_LDDX),
           bdw = upbuf(dw0, RN_D);
    for (int acc = 0; acc < 2; acc++) {
        put(&bdx, dx0, RN_N * RN_LDDX);
        put(&bdw, dw0, RN_D);
        OPS->rmsnorm_bwd(be, RN_N, RN_D, fy_at(&rn_bx, 0), RN_LDX, fy_at(&rn_bw, 0),
                         fy_at(&rn_br, 0), fy_at(&bdy, 0), RN_LDY, fy_at(&bdx, 0), RN_LDDX, acc,
                         fy_at(&bdw, 0));
        get(dx, &bdx, RN_N * RN_LDDX);
        get(dw, &bdw, RN_D);
        float gx[RN_N * RN_LDX], gw[RN_D];
        int pad_ok = 1;
        for (int n = 0; n < RN_N; n++)
            for (int j = 0; j < RN_LDDX; j++) {
                float v = dx[n * RN_LDDX + j];
                if (j >= RN_D) {
                    pad_ok &= v == dx0[n * RN_LDDX + j];
                    continue;
                }
                gx[n * RN_LDX + j] = acc ? v - dx0[n * RN_LDDX + j] : v;
            }
        for (int n = 0; n < RN_N; n++)
            for (int j = RN_D; j < RN_LDX; j++) gx[n * RN_LDX + j] = 0;
        for (int j = 0; j < RN_D; j++) gw[j] = dw[j] - dw0[j];
        CHECK(pad_ok, "rmsnorm_bwd wrote outside dx rows (acc=%d)", acc);
        fd_check(acc ? "rmsnorm_bwd dx (accumulate)" : "rmsnorm_bwd dx", rn_loss, rn_x,
                 RN_N * RN_LDX, gx, 5e-3f, 1e-2);
        fd_check("rmsnorm_bwd dw", rn_loss, rn_w, RN_D, gw, 5e-3f, 1e-2);
    }
    sync_ok("rmsnorm");
    freebuf(&bdy), freebuf(&bdx), freebuf(&bdw);
    freebuf(&rn_bx), freebuf(&rn_bw), freebuf(&rn_by), freebuf(&rn_br);
}

/* ------------------------------------------------------------ RoPE */

/* f_j written from YaRN's definition (not fy_rope_freqs): pair j turns
 * L/(2 pi) * f_j times over the original context L; pairs that turn more
 * than beta_fast times keep f_j, fewer than beta_slow get f_j / s, linear in
 * j in between (bounds floored/ceiled to whole pairs when truncated). */
static double want_freq(const fy_rope_params *rp, int dr, int j) {
    double f = pow(rp->theta, -2.0 * j / dr);
    if (!rp->yarn) return f;
    double lo = dr * log(rp->orig_max_pos / (rp->beta_fast * 2 * M_PI)) / (2 * log(rp->theta));
    double hi = dr * log(rp->orig_max_pos / (rp->beta_slow * 2 * M_PI)) / (2 * log(rp->theta));
    if (rp->truncate) lo = floor(lo), hi = ceil(hi);
    lo = fmax(lo, 0), hi = fmin(hi, dr - 1);
    if (hi == lo) hi += 0.001;
    double ramp = fmin(fmax((j - lo) / (hi - lo), 0), 1); /* 1: interpolate */
    return f * (1 - ramp) + f / rp->factor * ramp;
}

static void rope_case(int N, int T, int pos0, int H, int dr, int hs, int ld, const fy_rope_params *rp) {
    size_t n = (size_t)N * ld;
    float *x = falloc(n), *y = falloc(n), *z = falloc(n), *R = falloc(n), *g = falloc(n);
    double *want = dalloc(n);
    double mul = rp->yarn ? rp->mul : 1.0;
    fill_rand(x, n, -1, 1);
    fill_rand(R, n, -1, 1);
    for (size_t e = 0; e < n; e++) want[e] = x[e];
    for (int r = 0; r < N; r++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < dr / 2; j++) {
                size_t o = (size_t)r * ld + (size_t)h * hs + 2 * j;
                double pos = pos0 + r % T;
                double ang = pos * want_freq(rp, dr, j);
                want[o] = mul * (x[o] * cos(ang) - x[o + 1] * sin(ang));
                want[o + 1] = mul * (x[o] * sin(ang) + x[o + 1] * cos(ang));
            }
    fy_buf b = upbuf(x, n);
    OPS->rope(be, N, T, pos0, H, dr, fy_at(&b, 0), ld, hs, rp, 0);
    get(y, &b, n);
    char what[96];
    snprintf(what, sizeof what, "rope fwd N=%d T=%d pos0=%d yarn=%d", N, T, pos0, rp->yarn);
    cmp(what, y, want, n, 2e-6, 1e-1);
    OPS->rope(be, N, T, pos0, H, dr, fy_at(&b, 0), ld, hs, rp, 1);
    get(z, &b, n);
    /* the inverse is the transpose: a rotation back, times mul again */
    for (size_t e = 0; e < n; e++) want[e] = x[e];
    for (int r = 0; r < N; r++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < dr; j++) want[(size_t)r * ld + (size_t)h * hs + j] *= mul * mul;
    snprintf(what, sizeof what, "rope inverse(fwd(x)) == mul^2 x, T=%d yarn=%d", T, rp->yarn);
    cmp(what, z, want, n, 2e-6, 1e-1);
    /* rope is linear: d sum(rope(x) R)/dx = rope^T R, which must be inverse(R) */
    put(&b, R, n);
    OPS->rope(be, N, T, pos0, H, dr, fy_at(&b, 0), ld, hs, rp, 1);
    get(g, &b, n);
    double *num = dalloc(n);
    for (size_t e = 0; e < n; e++) {
        /* exact derivative: the fwd applied to a unit vector, dotted with R */
        for (size_t q = 0; q < n; q++) z[q] = q == e ? 1.0f : 0.0f;
        put(&b, z, n);
        OPS->rope(be, N, T, pos0, H, dr, fy_at(&b, 0), ld, hs, rp, 0);
        get(y, &b, n);
        num[e] = dot_d(y, R, n);
    }
    snprintf(what, sizeof what, "rope inverse == backward, T=%d yarn=%d", T, rp->yarn);
    cmp(what, g, num, n, 1e-5, 1e-2);
    sync_ok("rope");
    freebuf(&b);
    free(x), free(y), free(z), free(R), free(g), free(want), free(num);
}

static void test_rope(void) {
    fy_rope_params p = fy_rope_plain(10000.0f);
    rope_case(6, 3, 2, 2, 6, 8, 19, &p);
    rope_case(1, 1, 0, 1, 2, 2, 2, &p);
    p = fy_rope_plain(500.0f);
    rope_case(5, 1, 7, 3, 4, 5, 15, &p);
    /* YaRN: d_r = 32 over an original context of 64 puts the ramp inside the
     * pairs; truncated and not, attention_factor != 1 */
    fy_rope_params y = fy_rope_plain(10000.0f);
    y.yarn = 1, y.factor = 4, y.orig_max_pos = 64, y.beta_fast = 32, y.beta_slow = 1;
    y.truncate = 1, y.mul = 1.1386;
    rope_case(7, 7, 90, 2, 32, 40, 80, &y);
    y.truncate = 0, y.factor = 2.5, y.beta_fast = 8, y.mul = 0.9;
    rope_case(4, 2, 300, 1, 16, 0, 21, &y);
}

/* ------------------------------------------------------------ attention */

static int at_B, at_T, at_H, at_dqk, at_dv;
static float at_scale;
static float *at_q, *at_k, *at_v, *at_R;
static fy_buf at_bq, at_bk, at_bv, at_bo, at_bP;

static double at_loss(void) {
    size_t rows = (size_t)at_B * at_T, nq = rows * at_H * at_dqk, nv = rows * at_H * at_dv;
    put(&at_bq, at_q, nq);
    put(&at_bk, at_k, nq);
    put(&at_bv, at_v, nv);
    OPS->attn_fwd(be, at_B, at_T, at_H, at_dqk, at_dv, at_scale, fy_at(&at_bq, 0),
                  fy_at(&at_bk, 0), fy_at(&at_bv, 0), fy_at(&at_bo, 0), fy_at(&at_bP, 0));
    float *o = falloc(nv);
    get(o, &at_bo, nv);
    double L = dot_d(o, at_R, nv);
    free(o);
    return L;
}

static void attn_case(int B, int T, int H, int dqk, int dv, int do_fd) {
    at_B = B, at_T = T, at_H = H, at_dqk = dqk, at_dv = dv;
    at_scale = 1.0f / sqrtf((float)dqk);
    size_t rows = (size_t)B * T, nq = rows * H * dqk, nv = rows * H * dv,
           nP = (size_t)B * H * T * T;
    at_q = falloc(nq), at_k = falloc(nq), at_v = falloc(nv), at_R = falloc(nv);
    fill_rand(at_q, nq, -1.5f, 1.5f);
    fill_rand(at_k, nq, -1.5f, 1.5f);
    fill_rand(at_v, nv, -1, 1);
    fill_rand(at_R, nv, -1, 1);
    at_bq = mkbuf(nq), at_bk = mkbuf(nq), at_bv = mkbuf(nv), at_bo = mkbuf(nv), at_bP = mkbuf(nP);
    at_loss();
    float *o = falloc(nv), *P = falloc(nP);
    double *wo = dalloc(nv), *wP = dalloc(nP);
    get(o, &at_bo, nv);
    get(P, &at_bP, nP);
    double *srow = dalloc(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *qi = at_q + ((size_t)(b * T + i) * H + h) * dqk;
                double mx = -INFINITY, z = 0;
                for (int j = 0; j <= i; j++) {
                    const float *kj = at_k + ((size_t)(b * T + j) * H + h) * dqk;
                    double s = 0;
                    for (int c = 0; c < dqk; c++) s += (double)qi[c] * kj[c];
                    srow[j] = s * at_scale;
                    if (srow[j] > mx) mx = srow[j];
                }
                for (int j = 0; j <= i; j++) z += exp(srow[j] - mx);
                double *prow = wP + (((size_t)b * H + h) * T + i) * T;
                for (int j = 0; j < T; j++) prow[j] = j <= i ? exp(srow[j] - mx) / z : 0.0;
                for (int c = 0; c < dv; c++) {
                    double s = 0;
                    for (int j = 0; j <= i; j++)
                        s += prow[j] * at_v[((size_t)(b * T + j) * H + h) * dv + c];
                    wo[((size_t)(b * T + i) * H + h) * dv + c] = s;
                }
            }
    char what[96];
    snprintf(what, sizeof what, "attn_fwd out B=%d T=%d H=%d", B, T, H);
    cmp(what, o, wo, nv, 2e-5, 1e-1);
    snprintf(what, sizeof what, "attn_fwd P B=%d T=%d H=%d", B, T, H);
    cmp(what, P, wP, nP, 2e-5, 1e-2);
    int upper = 0;
    for (int bh = 0; bh < B * H; bh++)
        for (int i = 0; i < T; i++)
            for (int j = i + 1; j < T; j++) upper += P[((size_t)bh * T + i) * T + j] != 0.0f;
    CHECK(upper == 0, "attn_fwd: %d nonzero P entries above the diagonal", upper);

    if (do_fd) {
        fy_buf bdo = upbuf(at_R, nv), bdq = mkbuf(nq), bdk = mkbuf(nq), bdv = mkbuf(nv);
        /* poison the outputs: the op must overwrite them */
        float *junk = falloc(nq > nv ? nq : nv);
        for (size_t e = 0; e < (nq > nv ? nq : nv); e++) junk[e] = 1e3f;
        put(&bdq, junk, nq), put(&bdk, junk, nq), put(&bdv, junk, nv);
        OPS->attn_bwd(be, B, T, H, dqk, dv, at_scale, fy_at(&at_bq, 0), fy_at(&at_bk, 0),
                      fy_at(&at_bv, 0), fy_at(&at_bP, 0), fy_at(&bdo, 0), fy_at(&bdq, 0),
                      fy_at(&bdk, 0), fy_at(&bdv, 0));
        float *gq = falloc(nq), *gk = falloc(nq), *gv = falloc(nv);
        get(gq, &bdq, nq), get(gk, &bdk, nq), get(gv, &bdv, nv);
        snprintf(what, sizeof what, "attn_bwd dq T=%d", T);
        fd_check(what, at_loss, at_q, nq, gq, 5e-3f, 1e-2);
        snprintf(what, sizeof what, "attn_bwd dk T=%d", T);
        fd_check(what, at_loss, at_k, nq, gk, 5e-3f, 1e-2);
        snprintf(what, sizeof what, "attn_bwd dv T=%d", T);
        fd_check(what, at_loss, at_v, nv, gv, 5e-3f, 1e-2);
        freebuf(&bdo), freebuf(&bdq), freebuf(&bdk), freebuf(&bdv);
        free(gq), free(gk), free(gv), free(junk);
    }
    sync_ok("attn");
    freebuf(&at_bq), freebuf(&at_bk), freebuf(&at_bv), freebuf(&at_bo), freebuf(&at_bP);
    free(at_q), free(at_k), free(at_v), free(at_R);
    free(o), free(P), free(wo), free(wP), free(srow);
}

static void test_attn(void) {
    attn_case(2, 3, 2, 5, 3, 1);
    attn_case(2, 1, 3, 5, 3, 1);
    attn_case(1, 67, 2, 3, 2, 1); /* more than one 64-row block */
    attn_case(1, 131, 1, 4, 3, 0);
}

/* ------------------------------------------------------------ MLA decode */

/* The absorbed decode attention against the unabsorbed math in double:
 * per head k_nope[s] = W_kb ckv[s], v[s] = W_vb ckv[s] (the keys and values
 * the prefill path builds), then softmax(scale (q_nope.k_nope + q_pe.kpe)) v. */
static void mla_case(int H, int S, int r, int dn, int dr, int dv) {
    int ld = r + dr + 2, ldq = dn + dr + 3; /* cache rows [c_kv ; k_pe ; pad], as the cache stores them */
    size_t ncache = (size_t)(S ? S : 1) * ld, nq = (size_t)H * ldq, nw = (size_t)H * (dn + dv) * r;
    float *q = falloc(nq), *w = falloc(nw ? nw : 1), *cache = falloc(ncache), *o = falloc((size_t)H * dv);
    double *want = dalloc((size_t)H * dv), *sc = dalloc(S ? S : 1);
    fill_rand(q, nq, -1, 1);
    fill_rand(w, nw ? nw : 1, -0.5f, 0.5f);
    fill_rand(cache, ncache, -1.5f, 1.5f);
    float scale = 0.7f;
    for (int h = 0; h < H; h++) {
        const float *qh = q + (size_t)h * ldq, *wkb = w + (size_t)h * (dn + dv) * r, *wvb = wkb + (size_t)dn * r;
        double mx = -INFINITY, z = 0;
        for (int t = 0; t < S; t++) {
            const float *ct = cache + (size_t)t * ld;
            double a = 0;
            for (int i = 0; i < dn; i++) {
                double k = 0;
                for (int c = 0; c < r; c++) k += (double)wkb[(size_t)i * r + c] * ct[c];
                a += qh[i] * k;
            }
            for (int c = 0; c < dr; c++) a += (double)qh[dn + c] * ct[r + c];
            sc[t] = scale * a;
            mx = sc[t] > mx ? sc[t] : mx;
        }
        for (int t = 0; t < S; t++) z += exp(sc[t] - mx);
        for (int j = 0; j < dv; j++) {
            double acc = 0;
            for (int t = 0; t < S; t++) {
                double v = 0;
                for (int c = 0; c < r; c++) v += (double)wvb[(size_t)j * r + c] * cache[(size_t)t * ld + c];
                acc += exp(sc[t] - mx) / z * v;
            }
            want[(size_t)h * dv + j] = acc;
        }
    }
    fill_rand(o, (size_t)H * dv, 5, 9); /* stale output: every element must be written */
    fy_buf bq = upbuf(q, nq), bw = upbuf(w, nw ? nw : 1), bc = upbuf(cache, ncache), bo = upbuf(o, (size_t)H * dv);
    OPS->mla_decode(be, H, S, r, dn, dr, dv, scale, fy_at(&bq, 0), ldq, fy_at(&bw, 0), fy_at(&bc, 0), ld,
                    fy_at(&bc, r), ld, fy_at(&bo, 0));
    get(o, &bo, (size_t)H * dv);
    char what[112];
    snprintf(what, sizeof what, "mla_decode H=%d S=%d r=%d dn=%d dr=%d dv=%d", H, S, r, dn, dr, dv);
    cmp(what, o, want, (size_t)H * dv, 2e-5, 1e-1);
    sync_ok(what);
    freebuf(&bq), freebuf(&bw), freebuf(&bc), freebuf(&bo);
    free(q), free(w), free(cache), free(o), free(want), free(sc);
}

static void test_mla_decode(void) {
    mla_case(3, 7, 5, 4, 4, 3);
    mla_case(2, 1, 5, 6, 4, 7);
    mla_case(4, 37, 9, 5, 0, 6);
    mla_case(1, 300, 16, 8, 6, 8);
    mla_case(8, 130, 32, 16, 8, 16); /* above the parallel threshold */
    mla_case(2, 0, 5, 4, 4, 3);      /* empty cache: zeros */
    mla_case(2, 9, 6, 0, 4, 3);      /* no nope part */
}

/* ------------------------------------------------------------ Q8_0 linear */

/* fy_q8_quantize against its definition: |q| <= 127, the block's largest
 * |w| maps to +-127, |w - d q| <= d/2; an all-zero block gets d = 0. */
static void test_q8_quantize(void) {
    enum { R = 3, IN = 96, LD = 101 };
    float *w = falloc((size_t)R * LD), s[R * IN / 32];
    int8_t q[R * IN];
    fill_rand(w, (size_t)R * LD, -2, 2);
    for (int i = 0; i < 32; i++) w[LD + 32 + i] = 0.0f; /* row 1, block 1 */
    w[2 * LD + 5] = 9.0f;                                /* an outlier */
    fy_q8_quantize(w, R, IN, LD, q, s);
    int ok = 1;
    for (int r = 0; r < R; r++)
        for (int b = 0; b < IN / 32; b++) {
            float d = s[r * (IN / 32) + b], amax = 0;
            int qmax = 0;
            for (int i = 0; i < 32; i++) {
                float x = w[(size_t)r * LD + b * 32 + i];
                int qi = q[r * IN + b * 32 + i];
                amax = fmaxf(amax, fabsf(x));
                qmax = abs(qi) > qmax ? abs(qi) : qmax;
                ok &= abs(qi) <= 127 && fabsf(x - d * qi) <= d * 0.5f * (1 + 1e-5f) + 1e-12f;
            }
            ok &= amax == 0 ? (d == 0 && qmax == 0) : (qmax == 127 && fabsf(d * 127 - amax) <= 1e-6f * amax);
        }
    CHECK(ok, "q8 quantize: a block breaks |q| <= 127, max -> 127 or |w - d q| <= d/2");
    CHECK(s[1 * (IN / 32) + 1] == 0.0f, "q8 quantize: the all-zero block has a nonzero scale");
    free(w);
}

/* y = x W^T by the op's definition: x's rows quantized like the weights,
 * exact integer block sums, scaled in double; strides, accumulation, odd
 * block counts, shapes that leave partial row groups. */
static void q8_case(int N, int in, int out, int ldx, int ldy, int accumulate) {
    float *w = falloc((size_t)out * in), *x = falloc((size_t)N * ldx), *y = falloc((size_t)N * ldy);
    float *s = falloc((size_t)out * in / 32);
    int8_t *q = malloc((size_t)out * in);
    double *want = dalloc((size_t)N * ldy);
    fill_rand(w, (size_t)out * in, -1, 1);
    fill_rand(x, (size_t)N * ldx, -1, 1);
    fill_rand(y, (size_t)N * ldy, -1, 1);
    if (in >= 96) { /* row 0: an all-zero block, and a block of exact ties (d = 1, halves round to even) */
        for (int i = 32; i < 64; i++) x[i] = 0.0f;
        x[64] = 127.0f;
        for (int i = 1; i < 32; i++) x[64 + i] = (float)(i - 16) + 0.5f;
    }
    fy_q8_quantize(w, out, in, in, q, s);
    int8_t *xq = malloc(in);
    float *sx = falloc(in / 32);
    for (int n = 0; n < N; n++) {
        fy_q8_quantize(x + (size_t)n * ldx, 1, in, in, xq, sx);
        for (int o = 0; o < ldy; o++) {
            double a = accumulate || o >= out ? y[(size_t)n * ldy + o] : 0;
            for (int b = 0; o < out && b < in / 32; b++) {
                long dot = 0;
                for (int i = b * 32; i < b * 32 + 32; i++) dot += q[(size_t)o * in + i] * xq[i];
                a += (double)s[(size_t)o * (in / 32) + b] * sx[b] * (double)dot;
            }
            want[(size_t)n * ldy + o] = a;
        }
    }
    free(xq), free(sx);
    fy_buf bx = upbuf(x, (size_t)N * ldx), by = upbuf(y, (size_t)N * ldy), bq = upbuf(q, (size_t)out * in / 4),
           bs = upbuf(s, (size_t)out * in / 32);
    /* every kernel this CPU has (fy_backend_opts.cpu_q8) gives the same bits */
    const char *isa[] = {"portable", "avx2", NULL};
    float *ref = falloc((size_t)N * ldy), *y0 = falloc((size_t)N * ldy);
    memcpy(y0, y, (size_t)N * ldy * sizeof *y);
    for (int k = 0; k < 3; k++) {
        fy_backend *prev = q8_use(isa[k]);
        OPS->upload(be, fy_at(&by, 0), y0, (size_t)N * ldy);
        OPS->linear_q8(be, N, in, out, fy_at(&bx, 0), ldx, fy_at(&bq, 0), fy_at(&bs, 0), fy_at(&by, 0), ldy,
                       accumulate);
        get(k ? y : ref, &by, (size_t)N * ldy);
        if (k)
            CHECK(!memcmp(ref, y, (size_t)N * ldy * sizeof *y), "linear_q8 in=%d out=%d: the %s kernel's bits "
                  "differ from the portable one's", in, out, isa[k] ? isa[k] : "best");
        q8_restore(prev);
    }
    free(ref), free(y0);
    char what[96];
    snprintf(what, sizeof what, "linear_q8 N=%d in=%d out=%d acc=%d", N, in, out, accumulate);
    cmp(what, y, want, (size_t)N * ldy, 2e-5, 1.0);
    sync_ok(what);
    freebuf(&bx), freebuf(&by), freebuf(&bq), freebuf(&bs);
    free(w), free(x), free(y), free(s), free(q), free(want);
}

static void test_linear_q8(void) {
    test_q8_quantize();
    q8_case(1, 32, 1, 32, 1, 0);
    q8_case(1, 256, 37, 256, 37, 0);   /* 4-row groups and a remainder */
    q8_case(1, 512, 300, 512, 300, 1); /* threaded (out * in >= 65536), accumulate */
    q8_case(3, 96, 9, 100, 11, 0);     /* strides; columns past out untouched */
    q8_case(2, 64, 6, 64, 6, 1);
    q8_case(1, 160, 5, 160, 5, 0);     /* 5 blocks: an odd one at the end */
    /* N > 1 goes through the tiled kernels (weight rows x input rows): every
     * N from 1 to 17 (full tiles and a remainder), out not a multiple of the
     * tile or of the 8-row chunk, odd and even block counts, both modes;
     * each against the portable per-row kernel bit for bit (q8_case) */
    for (int N = 1; N <= 17; N++) {
        q8_case(N, 96, 13, 100, 15, N & 1);     /* 3 blocks */
        q8_case(N, 128, 6, 128, 6, !(N & 1));  /* 4 blocks, one chunk */
    }
    q8_case(17, 480, 37, 483, 37, 1); /* threaded, 15 blocks */
    q8_case(16, 512, 64, 512, 64, 0); /* threaded, whole tiles only */
    /* in not a multiple of 32: a recorded error */
    fy_buf b = mkbuf(64);
    OPS->linear_q8(be, 1, 40, 1, fy_at(&b, 0), 40, fy_at(&b, 0), fy_at(&b, 0), fy_at(&b, 0), 1, 0);
    fy_err e = {{0}};
    CHECK(fy_be_sync(be, &e) != 0 && strstr(e.msg, "multiple of 32"), "linear_q8 in=40 accepted");
    freebuf(&b);
}

/* The fused SwiGLU against its definition: linear_q8, linear_q8,
 * swiglu_fwd, linear_q8, bit for bit (g, u, h and y), on every kernel. */
static void swiglu_q8_case(int d, int F, int accumulate) {
    size_t nw = (size_t)F * d;
    float *wg = falloc(nw), *wu = falloc(nw), *wd = falloc(nw), *x = falloc(d), *y0 = falloc(d);
    float *sg = falloc(nw / 32), *su = falloc(nw / 32), *sd = falloc(nw / 32);
    int8_t *qg = malloc(nw), *qu = malloc(nw), *qd = malloc(nw);
    fill_rand(wg, nw, -1, 1), fill_rand(wu, nw, -1, 1), fill_rand(wd, nw, -1, 1);
    fill_rand(x, d, -2, 2), fill_rand(y0, d, -1, 1);
    fy_q8_quantize(wg, F, d, d, qg, sg), fy_q8_quantize(wu, F, d, d, qu, su), fy_q8_quantize(wd, d, F, F, qd, sd);
    fy_buf bx = upbuf(x, d), bqg = upbuf(qg, nw / 4), bqu = upbuf(qu, nw / 4), bqd = upbuf(qd, nw / 4);
    fy_buf bsg = upbuf(sg, nw / 32), bsu = upbuf(su, nw / 32), bsd = upbuf(sd, nw / 32);
    fy_buf bg = mkbuf(F), bu = mkbuf(F), bh = mkbuf(F), by = mkbuf(d);
    float *ref = falloc(3 * (size_t)F + d), *got = falloc(3 * (size_t)F + d);
    const char *isa[] = {"portable", "avx2", NULL};
    char what[96];
    snprintf(what, sizeof what, "swiglu_q8 d=%d F=%d acc=%d", d, F, accumulate);
    for (int k = 0; k < 3; k++) {
        fy_backend *prev = q8_use(isa[k]);
        for (int fused = 0; fused < 2; fused++) {
            put(&by, y0, d);
            if (fused) {
                OPS->swiglu_q8(be, d, F, fy_at(&bx, 0), fy_at(&bqg, 0), fy_at(&bsg, 0), fy_at(&bqu, 0),
                               fy_at(&bsu, 0), fy_at(&bqd, 0), fy_at(&bsd, 0), fy_at(&bg, 0), fy_at(&bu, 0),
                               fy_at(&bh, 0), fy_at(&by, 0), accumulate);
            } else {
                OPS->linear_q8(be, 1, d, F, fy_at(&bx, 0), d, fy_at(&bqg, 0), fy_at(&bsg, 0), fy_at(&bg, 0), F, 0);
                OPS->linear_q8(be, 1, d, F, fy_at(&bx, 0), d, fy_at(&bqu, 0), fy_at(&bsu, 0), fy_at(&bu, 0), F, 0);
                OPS->swiglu_fwd(be, 1, F, fy_at(&bg, 0), F, fy_at(&bu, 0), F, fy_at(&bh, 0), F);
                OPS->linear_q8(be, 1, F, d, fy_at(&bh, 0), F, fy_at(&bqd, 0), fy_at(&bsd, 0), fy_at(&by, 0), d,
                               accumulate);
            }
            float *o = fused ? got : ref;
            get(o, &bg, F), get(o + F, &bu, F), get(o + 2 * F, &bh, F), get(o + 3 * F, &by, d);
        }
        CHECK(!memcmp(ref, got, (3 * (size_t)F + d) * sizeof *ref), "%s (%s kernel): fused bits differ from "
              "linear_q8 x2, swiglu_fwd, linear_q8", what, isa[k] ? isa[k] : "best");
        q8_restore(prev);
    }
    /* and y is not trivially equal: it moved away from y0 */
    int moved = 0;
    for (int i = 0; i < d; i++) moved |= got[3 * F + i] != y0[i];
    CHECK(moved, "%s: y unchanged", what);
    sync_ok(what);
    freebuf(&bx), freebuf(&bqg), freebuf(&bqu), freebuf(&bqd), freebuf(&bsg), freebuf(&bsu), freebuf(&bsd);
    freebuf(&bg), freebuf(&bu), freebuf(&bh), freebuf(&by);
    free(wg), free(wu), free(wd), free(x), free(y0), free(sg), free(su), free(sd), free(qg), free(qu), free(qd);
    free(ref), free(got);
}

static void test_swiglu_q8(void) {
    swiglu_q8_case(64, 96, 0);   /* one thread (F d < 65536) */
    swiglu_q8_case(256, 384, 1); /* threaded, accumulate */
    swiglu_q8_case(512, 160, 0); /* threaded, F an odd number of blocks */
    fy_buf b = mkbuf(64);
    fy_ref r = fy_at(&b, 0);
    OPS->swiglu_q8(be, 64, 40, r, r, r, r, r, r, r, r, r, r, r, 0);
    fy_err e = {{0}};
    CHECK(fy_be_sync(be, &e) != 0 && strstr(e.msg, "multiples of 32"), "swiglu_q8 F=40 accepted");
    freebuf(&b);
}

/* ------------------------------------------------------------ SwiGLU */

enum { SW_N = 5, SW_F = 7, SW_LDG = 9, SW_LDU = 8, SW_LDH = 11 };
static float sw_g[SW_N * SW_LDG], sw_u[SW_N * SW_LDU], sw_R[SW_N * SW_LDH];
static fy_buf sw_bg, sw_bu, sw_bh;

static double sw_loss(void) {
    put(&sw_bg, sw_g, SW_N * SW_LDG);
    put(&sw_bu, sw_u, SW_N * SW_LDU);
    OPS->swiglu_fwd(be, SW_N, SW_F, fy_at(&sw_bg, 0), SW_LDG, fy_at(&sw_bu, 0), SW_LDU,
                    fy_at(&sw_bh, 0), SW_LDH);
    float h[SW_N * SW_LDH];
    get(h, &sw_bh, SW_N * SW_LDH);
    double L = 0;
    for (int n = 0; n < SW_N; n++) L += dot_d(h + n * SW_LDH, sw_R + n * SW_LDH, SW_F);
    return L;
}

static void test_swiglu(void) {
    fill_rand(sw_g, SW_N * SW_LDG, -4, 4);
    fill_rand(sw_u, SW_N * SW_LDU, -2, 2);
    fill_rand(sw_R, SW_N * SW_LDH, -1, 1);
    sw_bg = mkbuf(SW_N * SW_LDG), sw_bu = mkbuf(SW_N * SW_LDU), sw_bh = mkbuf(SW_N * SW_LDH);
    sw_loss();
    float h[SW_N * SW_LDH];
    double wh[SW_N * SW_LDH];
    get(h, &sw_bh, SW_N * SW_LDH);
    for (int n = 0; n < SW_N; n++)
        for (int j = 0; j < SW_LDH; j++) {
            if (j >= SW_F) {
                wh[n * SW_LDH + j] = 0; /* untouched zeros */
                continue;
            }
            double g = sw_g[n * SW_LDG + j];
            wh[n * SW_LDH + j] = g / (1 + exp(-g)) * sw_u[n * SW_LDU + j];
        }
    cmp("swiglu_fwd", h, wh, SW_N * SW_LDH, 1e-5, 1e-2);
    fy_buf bdh = upbuf(sw_R, SW_N * SW_LDH), bdg = mkbuf(SW_N * SW_LDG),
           bdu = mkbuf(SW_N * SW_LDU);
    OPS->swiglu_bwd(be, SW_N, SW_F, fy_at(&sw_bg, 0), SW_LDG, fy_at(&sw_bu, 0), SW_LDU,
                    fy_at(&bdh, 0), SW_LDH, fy_at(&bdg, 0), fy_at(&bdu, 0));
    float dg[SW_N * SW_LDG], du[SW_N * SW_LDU];
    get(dg, &bdg, SW_N * SW_LDG);
    get(du, &bdu, SW_N * SW_LDU);
    fd_check("swiglu_bwd dg", sw_loss, sw_g, SW_N * SW_LDG, dg, 5e-3f, 1e-2);
    fd_check("swiglu_bwd du", sw_loss, sw_u, SW_N * SW_LDU, du, 5e-3f, 1e-2);
    sync_ok("swiglu");
    freebuf(&bdh), freebuf(&bdg), freebuf(&bdu);
    freebuf(&sw_bg), freebuf(&sw_bu), freebuf(&sw_bh);
}

/* ------------------------------------------------------------ router */

/* Independent reference: rank-based selection in double. */
static void router_ref(int N, const fy_router_opts *o, const float *logits, const float *bias,
                       double *s, int *idx, double *w) {
    int E = o->n_experts, K = o->top_k, G = o->n_group, gs = E / G;
    double *sb = dalloc(E), *gsc = dalloc(G);
    int *allowed = calloc(E, sizeof *allowed);
    for (int t = 0; t < N; t++) {
        for (int e = 0; e < E; e++) {
            s[t * E + e] = 1.0 / (1.0 + exp(-(double)logits[t * E + e]));
            /* the selection compares float s + b, as the op does */
            sb[e] = (float)s[t * E + e] + (bias ? bias[e] : 0.0f);
        }
        for (int g = 0; g < G; g++) { /* sum of the two largest */
            int a = -1, b = -1;
            for (int e = g * gs; e < (g + 1) * gs; e++) {
                if (a < 0 || sb[e] > sb[a]) b = a, a = e;
                else if (b < 0 || sb[e] > sb[b]) b = e;
            }
            gsc[g] = sb[a] + (b >= 0 ? sb[b] : 0.0);
        }
        for (int e = 0; e < E; e++) {
            int g = e / gs, rank = 0;
            for (int h = 0; h < G; h++) rank += gsc[h] > gsc[g] || (gsc[h] == gsc[g] && h < g);
            allowed[e] = G == 1 || rank < o->topk_group;
        }
        double sum = 0;
        for (int e = 0; e < E; e++) {
            if (!allowed[e]) continue;
            int rank = 0;
            for (int f = 0; f < E; f++)
                rank += allowed[f] && (sb[f] > sb[e] || (sb[f] == sb[e] && f < e));
            if (rank < K) {
                idx[t * K + rank] = e;
                sum += s[t * E + e];
            }
        }
        for (int k = 0; k < K; k++) {
            double v = s[t * E + idx[t * K + k]];
            w[t * K + k] = (o->norm_topk_prob ? v / sum : v) * o->scaling;
        }
    }
    free(sb), free(gsc), free(allowed);
}

static void router_fwd_case(const char *what, int N, const fy_router_opts *o, const float *logits,
                            const float *bias, const int *expect_idx) {
    int E = o->n_experts, K = o->top_k;
    fy_buf bl = upbuf(logits, (size_t)N * E), bb = bias ? upbuf(bias, E) : mkbuf(1),
           bs = mkbuf((size_t)N * E), bi = mkbuf((size_t)N * K), bw = mkbuf((size_t)N * K);
    OPS->router_fwd(be, N, o, fy_at(&bl, 0), bias ? fy_at(&bb, 0) : FY_NULL_REF, fy_at(&bs, 0),
                    fy_at(&bi, 0), fy_at(&bw, 0));
    float *s = falloc((size_t)N * E), *w = falloc((size_t)N * K);
    int32_t *idx = calloc((size_t)N * K, sizeof *idx);
    get(s, &bs, (size_t)N * E);
    get(idx, &bi, (size_t)N * K);
    get(w, &bw, (size_t)N * K);
    double *ws = dalloc((size_t)N * E), *ww = dalloc((size_t)N * K);
    int *wi = calloc((size_t)N * K, sizeof *wi);
    router_ref(N, o, logits, bias, ws, wi, ww);
    int mism = -1;
    for (int e = 0; e < N * K && mism < 0; e++)
        if (idx[e] != wi[e]) mism = e;
    CHECK(mism < 0, "%s: idx[%d] = %d, want %d", what, mism, mism >= 0 ? idx[mism] : 0,
          mism >= 0 ? wi[mism] : 0);
    if (expect_idx) {
        int bad = 0;
        for (int e = 0; e < N * K; e++) bad += idx[e] != expect_idx[e];
        CHECK(bad == 0, "%s: %d indices differ from the hand-worked answer", what, bad);
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%s: s", what);
    cmp(buf, s, ws, (size_t)N * E, 1e-6, 1e-3);
    snprintf(buf, sizeof buf, "%s: w", what);
    if (mism < 0) cmp(buf, w, ww, (size_t)N * K, 2e-6, 1e-3);
    sync_ok(what);
    freebuf(&bl), freebuf(&bb), freebuf(&bs), freebuf(&bi), freebuf(&bw);
    free(s), free(w), free(idx), free(ws), free(ww), free(wi);
}

static float logit_of(double p) { return (float)log(p / (1 - p)); }

static void test_router_fwd(void) {
    enum { N = 7, E = 12 };
    float logits[N * E], bias[E];
    fill_rand(logits, N * E, -3, 3);
    fill_rand(bias, E, -0.3f, 0.3f);
    fy_router_opts o = {E, 3, 1, 1, 1, 2.5f};
    router_fwd_case("router no groups, bias, norm", N, &o, logits, bias, NULL);
    o.norm_topk_prob = 0, o.scaling = 1.0f;
    router_fwd_case("router no bias, no norm", N, &o, logits, NULL, NULL);
    o = (fy_router_opts){E, 4, 4, 2, 1, 1.5f};
    router_fwd_case("router random groups", N, &o, logits, bias, NULL);
    o = (fy_router_opts){E, 2, 3, 1, 0, 1.0f};
    router_fwd_case("router random groups keep 1", N, &o, logits, NULL, NULL);

    /* Hand-worked group limit: 4 groups of 2. Group 0 holds the single best
     * expert (0.95) but scores 0.95+0.05 = 1.0; groups 1 (0.6+0.6) and
     * 2 (0.58+0.55) win, so experts 2, 3 (tie: lower index first), 4. */
    float gl[8];
    double sv[8] = {0.95, 0.05, 0.6, 0.6, 0.58, 0.55, 0.1, 0.1};
    for (int e = 0; e < 8; e++) gl[e] = logit_of(sv[e]);
    o = (fy_router_opts){8, 3, 4, 2, 1, 1.0f};
    int want1[3] = {2, 3, 4};
    router_fwd_case("router group limit drops the best single expert", 1, &o, gl, NULL, want1);
    o.n_group = 1;
    int want2[3] = {0, 2, 3};
    router_fwd_case("router same scores without groups", 1, &o, gl, NULL, want2);
    /* ties everywhere: equal logits pick the lowest indices in order */
    float tie[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    o = (fy_router_opts){8, 3, 1, 1, 1, 1.0f};
    int want3[3] = {0, 1, 2};
    router_fwd_case("router all ties", 1, &o, tie, NULL, want3);
    /* tied groups: groups 1 and 3 tie for the second place; group 1 wins */
    float tg[8];
    double sv2[8] = {0.1, 0.2, 0.9, 0.3, 0.7, 0.8, 0.3, 0.9};
    for (int e = 0; e < 8; e++) tg[e] = logit_of(sv2[e]);
    o = (fy_router_opts){8, 2, 4, 2, 0, 1.0f};
    /* group scores: 0.3, 1.2, 1.5, 1.2 -> keep 2 and 1 -> experts 2 (0.9), 5 (0.8) */
    int want4[2] = {2, 5};
    router_fwd_case("router tied groups", 1, &o, tg, NULL, want4);
    /* negative s + b: dropped groups are -inf, not 0 (DeepSeek, not the HF port) */
    float ln[4] = {logit_of(0.6), logit_of(0.5), logit_of(0.3), logit_of(0.2)};
    float bn[4] = {-1.0f, -1.0f, -1.0f, -1.0f};
    o = (fy_router_opts){4, 2, 2, 1, 1, 1.0f};
    int want6[2] = {0, 1};
    router_fwd_case("router negative scores with groups", 1, &o, ln, bn, want6);
    /* bias changes the choice but not the weight (w uses s without bias) */
    float lb[4] = {logit_of(0.9), logit_of(0.5), logit_of(0.4), logit_of(0.2)};
    float bb[4] = {0.0f, 0.0f, 0.6f, 0.0f};
    o = (fy_router_opts){4, 2, 1, 1, 0, 1.0f};
    int want5[2] = {2, 0};
    router_fwd_case("router bias reorders", 1, &o, lb, bb, want5);
}

static int rb_N;
static fy_router_opts rb_o;
static float *rb_logits, *rb_R;
static fy_buf rb_bl, rb_bs, rb_bi, rb_bw;
static int32_t *rb_idx0;
static int rb_changed;

static double rb_loss(void) {
    int E = rb_o.n_experts, K = rb_o.top_k;
    put(&rb_bl, rb_logits, (size_t)rb_N * E);
    OPS->router_fwd(be, rb_N, &rb_o, fy_at(&rb_bl, 0), FY_NULL_REF, fy_at(&rb_bs, 0),
                    fy_at(&rb_bi, 0), fy_at(&rb_bw, 0));
    float *w = falloc((size_t)rb_N * K);
    int32_t *idx = calloc((size_t)rb_N * K, sizeof *idx);
    get(w, &rb_bw, (size_t)rb_N * K);
    get(idx, &rb_bi, (size_t)rb_N * K);
    if (rb_idx0 && memcmp(idx, rb_idx0, (size_t)rb_N * K * sizeof *idx)) rb_changed = 1;
    double L = dot_d(w, rb_R, (size_t)rb_N * K);
    free(w), free(idx);
    return L;
}

static void router_bwd_case(const char *what, int N, fy_router_opts o) {
    rb_N = N, rb_o = o;
    int E = o.n_experts, K = o.top_k;
    rb_logits = falloc((size_t)N * E), rb_R = falloc((size_t)N * K);
    /* logits spaced 0.25 apart (a random permutation per row): no near-ties */
    for (int t = 0; t < N; t++) {
        for (int e = 0; e < E; e++) rb_logits[t * E + e] = -2.0f + 0.25f * e + frand(0, 0.05f);
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(urand() * (e + 1));
            float tmp = rb_logits[t * E + e];
            rb_logits[t * E + e] = rb_logits[t * E + j], rb_logits[t * E + j] = tmp;
        }
    }
    fill_rand(rb_R, (size_t)N * K, -1, 1);
    rb_bl = mkbuf((size_t)N * E), rb_bs = mkbuf((size_t)N * E), rb_bi = mkbuf((size_t)N * K),
    rb_bw = mkbuf((size_t)N * K);
    rb_idx0 = NULL;
    rb_changed = 0;
    rb_loss();
    rb_idx0 = calloc((size_t)N * K, sizeof *rb_idx0);
    get(rb_idx0, &rb_bi, (size_t)N * K);
    fy_buf bdw = upbuf(rb_R, (size_t)N * K), bdl = mkbuf((size_t)N * E);
    float *pre = falloc((size_t)N * E), *g = falloc((size_t)N * E);
    fill_rand(pre, (size_t)N * E, -1, 1);
    for (int acc = 0; acc < 2; acc++) {
        put(&bdl, pre, (size_t)N * E);
        OPS->router_bwd(be, N, &o, fy_at(&rb_bs, 0), fy_at(&rb_bi, 0), fy_at(&bdw, 0),
                        fy_at(&bdl, 0), acc);
        get(g, &bdl, (size_t)N * E);
        if (acc)
            for (size_t e = 0; e < (size_t)N * E; e++) g[e] -= pre[e];
        char buf[128];
        snprintf(buf, sizeof buf, "%s%s", what, acc ? " (accumulate)" : "");
        fd_check(buf, rb_loss, rb_logits, (size_t)N * E, g, 3e-3f, 1e-2);
    }
    CHECK(!rb_changed, "%s: the selection changed under perturbation (test setup)", what);
    sync_ok(what);
    freebuf(&bdw), freebuf(&bdl), freebuf(&rb_bl), freebuf(&rb_bs), freebuf(&rb_bi),
        freebuf(&rb_bw);
    free(rb_logits), free(rb_R), free(rb_idx0), free(pre), free(g);
    rb_idx0 = NULL;
}

static void test_router_bwd(void) {
    router_bwd_case("router_bwd norm", 5, (fy_router_opts){9, 3, 1, 1, 1, 2.5f});
    router_bwd_case("router_bwd no norm", 5, (fy_router_opts){9, 3, 1, 1, 0, 1.5f});
    router_bwd_case("router_bwd groups", 3, (fy_router_opts){12, 4, 4, 2, 1, 1.0f});
    router_bwd_case("router_bwd K=1 norm", 3, (fy_router_opts){5, 1, 1, 1, 1, 1.0f});
}

/* ------------------------------------------------------------ balance loss */

static int bl_B, bl_T, bl_E, bl_K;
static float bl_alpha;
static float *bl_logits;
static fy_buf bl_bs, bl_bi;

static void sigmoid_host(const float *l, float *s, size_t n) {
    for (size_t i = 0; i < n; i++) s[i] = (float)(1.0 / (1.0 + exp(-(double)l[i])));
}

static double bl_loss(void) {
    size_t n = (size_t)bl_B * bl_T * bl_E;
    float *s = falloc(n);
    sigmoid_host(bl_logits, s, n);
    put(&bl_bs, s, n);
    free(s);
    return OPS->balance_fwd(be, bl_B, bl_T, bl_E, bl_K, bl_alpha, fy_at(&bl_bs, 0),
                            fy_at(&bl_bi, 0));
}

static void test_balance(void) {
    bl_B = 2, bl_T = 3, bl_E = 7, bl_K = 2, bl_alpha = 1.0f;
    size_t N = (size_t)bl_B * bl_T, n = N * bl_E;
    bl_logits = falloc(n);
    fill_rand(bl_logits, n, -2, 2);
    int32_t idx[6 * 2];
    for (size_t t = 0; t < N; t++) { /* two distinct experts per token, skewed */
        idx[t * 2] = (int32_t)(t % 3);
        idx[t * 2 + 1] = (int32_t)(3 + (t * 5) % 4);
    }
    bl_bs = mkbuf(n), bl_bi = upbuf(idx, N * bl_K);
    float *s = falloc(n);
    sigmoid_host(bl_logits, s, n);
    double want = 0;
    for (int b = 0; b < bl_B; b++) {
        double f[7] = {0}, P[7] = {0};
        for (int t = 0; t < bl_T; t++)
            for (int k = 0; k < bl_K; k++) f[idx[(b * bl_T + t) * bl_K + k]] += 1;
        for (int i = 0; i < bl_E; i++) f[i] *= (double)bl_E / (bl_K * bl_T);
        for (int t = 0; t < bl_T; t++) {
            const float *st = s + (size_t)(b * bl_T + t) * bl_E;
            double S = 0;
            for (int j = 0; j < bl_E; j++) S += st[j];
            for (int i = 0; i < bl_E; i++) P[i] += st[i] / S / bl_T;
        }
        for (int i = 0; i < bl_E; i++) want += bl_alpha * f[i] * P[i] / bl_B;
    }
    double got = bl_loss();
    CHECK(fabs(got - want) <= 1e-6 * fabs(want), "balance_fwd %.9g want %.9g", got, want);
    float alpha2 = 0.3f;
    bl_alpha = alpha2;
    got = bl_loss();
    CHECK(fabs(got - alpha2 * want) <= 1e-6 * fabs(want), "balance_fwd alpha: %.9g want %.9g",
          got, alpha2 * want);
    bl_alpha = 1.0f;
    /* backward: adds dloss * dL/dlogits into dlogits */
    float dloss = 1.7f;
    float *pre = falloc(n), *g = falloc(n);
    fill_rand(pre, n, -1, 1);
    fy_buf bdl = upbuf(pre, n);
    bl_loss();
    OPS->balance_bwd(be, bl_B, bl_T, bl_E, bl_K, bl_alpha, dloss, fy_at(&bl_bs, 0),
                     fy_at(&bl_bi, 0), fy_at(&bdl, 0));
    get(g, &bdl, n);
    for (size_t e = 0; e < n; e++) g[e] = (g[e] - pre[e]) / dloss;
    fd_check("balance_bwd", bl_loss, bl_logits, n, g, 1e-2f, 1e-2);
    sync_ok("balance");
    freebuf(&bl_bs), freebuf(&bl_bi), freebuf(&bdl);
    free(bl_logits), free(s), free(pre), free(g);
}

/* ------------------------------------------------------------ gather / scatter / rows_dot */

enum { GS_R = 4, GS_n = 7, GS_D = 5, GS_LDS = 6, GS_LDD = 8 };
static float gs_src[GS_R * GS_LDS], gs_w[GS_n], gs_R[GS_n * GS_LDD];
static int32_t gs_idx[GS_n] = {2, 0, 3, 2, 2, 1, 0};
static fy_buf gs_bsrc, gs_bidx, gs_bw, gs_bdst;
static int gs_use_w;

static double gather_loss(void) {
    put(&gs_bsrc, gs_src, GS_R * GS_LDS);
    put(&gs_bw, gs_w, GS_n);
    OPS->gather_rows(be, GS_n, GS_D, fy_at(&gs_bsrc, 0), GS_LDS, fy_at(&gs_bidx, 0),
                     gs_use_w ? fy_at(&gs_bw, 0) : FY_NULL_REF, fy_at(&gs_bdst, 0), GS_LDD);
    float d[GS_n * GS_LDD];
    get(d, &gs_bdst, GS_n * GS_LDD);
    double L = 0;
    for (int i = 0; i < GS_n; i++) L += dot_d(d + i * GS_LDD, gs_R + i * GS_LDD, GS_D);
    return L;
}

/* scatter: src is [GS_n, GS_LDD] rows, dst is [GS_R, GS_LDS] */
static float sc_src[GS_n * GS_LDD], sc_R[GS_R * GS_LDS];
static fy_buf sc_bsrc, sc_bdst;

static double scatter_loss(void) {
    put(&sc_bsrc, sc_src, GS_n * GS_LDD);
    put(&gs_bw, gs_w, GS_n);
    float z[GS_R * GS_LDS] = {0};
    put(&sc_bdst, z, GS_R * GS_LDS);
    OPS->scatter_add_rows(be, GS_n, GS_D, fy_at(&sc_bsrc, 0), GS_LDD, fy_at(&gs_bidx, 0),
                          gs_use_w ? fy_at(&gs_bw, 0) : FY_NULL_REF, fy_at(&sc_bdst, 0),
                          GS_LDS);
    float d[GS_R * GS_LDS];
    get(d, &sc_bdst, GS_R * GS_LDS);
    double L = 0;
    for (int r = 0; r < GS_R; r++) L += dot_d(d + r * GS_LDS, sc_R + r * GS_LDS, GS_D);
    return L;
}

/* rows_dot: a [GS_R, GS_LDS], b [GS_n, GS_LDD] */
static float rd_R[GS_n];
static fy_buf rd_bout;
static double rowsdot_loss(void) {
    put(&gs_bsrc, gs_src, GS_R * GS_LDS);
    put(&sc_bsrc, sc_src, GS_n * GS_LDD);
    OPS->rows_dot(be, GS_n, GS_D, fy_at(&gs_bsrc, 0), GS_LDS, fy_at(&gs_bidx, 0),
                  fy_at(&sc_bsrc, 0), GS_LDD, fy_at(&rd_bout, 0), 0);
    float o[GS_n];
    get(o, &rd_bout, GS_n);
    return dot_d(o, rd_R, GS_n);
}

static void test_gather_scatter(void) {
    fill_rand(gs_src, GS_R * GS_LDS, -1, 1);
    fill_rand(gs_w, GS_n, 0.2f, 1.5f);
    fill_rand(gs_R, GS_n * GS_LDD, -1, 1);
    fill_rand(sc_src, GS_n * GS_LDD, -1, 1);
    fill_rand(sc_R, GS_R * GS_LDS, -1, 1);
    fill_rand(rd_R, GS_n, -1, 1);
    gs_bsrc = mkbuf(GS_R * GS_LDS), gs_bidx = upbuf(gs_idx, GS_n), gs_bw = mkbuf(GS_n),
    gs_bdst = mkbuf(GS_n * GS_LDD), sc_bsrc = mkbuf(GS_n * GS_LDD),
    sc_bdst = mkbuf(GS_R * GS_LDS), rd_bout = mkbuf(GS_n);
    fy_buf bR = upbuf(gs_R, GS_n * GS_LDD), bscR = upbuf(sc_R, GS_R * GS_LDS),
           brdR = upbuf(rd_R, GS_n);
    for (gs_use_w = 0; gs_use_w < 2; gs_use_w++) {
        const char *wn = gs_use_w ? " (w)" : " (no w)";
        char what[96];
        /* forward values */
        gather_loss();
        float d[GS_n * GS_LDD];
        double wd[GS_n * GS_LDD];
        get(d, &gs_bdst, GS_n * GS_LDD);
        for (int i = 0; i < GS_n; i++)
            for (int j = 0; j < GS_LDD; j++)
                wd[i * GS_LDD + j] = j < GS_D ? (double)gs_src[gs_idx[i] * GS_LDS + j] *
                                                    (gs_use_w ? gs_w[i] : 1.0)
                                              : 0.0;
        snprintf(what, sizeof what, "gather_rows fwd%s", wn);
        cmp(what, d, wd, GS_n * GS_LDD, 1e-6, 1e-3);
        scatter_loss();
        float sd[GS_R * GS_LDS];
        double wsd[GS_R * GS_LDS] = {0};
        get(sd, &sc_bdst, GS_R * GS_LDS);
        for (int i = 0; i < GS_n; i++)
            for (int j = 0; j < GS_D; j++)
                wsd[gs_idx[i] * GS_LDS + j] +=
                    (double)sc_src[i * GS_LDD + j] * (gs_use_w ? gs_w[i] : 1.0);
        snprintf(what, sizeof what, "scatter_add_rows fwd%s", wn);
        cmp(what, sd, wsd, GS_R * GS_LDS, 1e-5, 1e-2);

        /* gather backward: d/dsrc = scatter_add(R, idx, w); d/dw = rows_dot(src, idx, R) */
        float z[GS_R * GS_LDS] = {0}, gsrc[GS_R * GS_LDS], gw[GS_n];
        put(&sc_bdst, z, GS_R * GS_LDS);
        OPS->scatter_add_rows(be, GS_n, GS_D, fy_at(&bR, 0), GS_LDD, fy_at(&gs_bidx, 0),
                              gs_use_w ? fy_at(&gs_bw, 0) : FY_NULL_REF, fy_at(&sc_bdst, 0),
                              GS_LDS);
        get(gsrc, &sc_bdst, GS_R * GS_LDS);
        snprintf(what, sizeof what, "gather_rows bwd src = scatter_add%s", wn);
        fd_check(what, gather_loss, gs_src, GS_R * GS_LDS, gsrc, 1e-2f, 1e-3);
        if (gs_use_w) {
            fy_buf bo = mkbuf(GS_n);
            OPS->rows_dot(be, GS_n, GS_D, fy_at(&gs_bsrc, 0), GS_LDS, fy_at(&gs_bidx, 0),
                          fy_at(&bR, 0), GS_LDD, fy_at(&bo, 0), 0);
            get(gw, &bo, GS_n);
            fd_check("gather_rows bwd w = rows_dot", gather_loss, gs_w, GS_n, gw, 1e-2f, 1e-3);
            freebuf(&bo);
        }
        /* scatter backward: d/dsrc = gather(R, idx, w); d/dw = rows_dot(R, idx, src) */
        fy_buf bg = mkbuf(GS_n * GS_LDD);
        float gsc[GS_n * GS_LDD];
        OPS->gather_rows(be, GS_n, GS_D, fy_at(&bscR, 0), GS_LDS, fy_at(&gs_bidx, 0),
                         gs_use_w ? fy_at(&gs_bw, 0) : FY_NULL_REF, fy_at(&bg, 0), GS_LDD);
        get(gsc, &bg, GS_n * GS_LDD);
        snprintf(what, sizeof what, "scatter_add_rows bwd src = gather%s", wn);
        fd_check(what, scatter_loss, sc_src, GS_n * GS_LDD, gsc, 1e-2f, 1e-3);
        if (gs_use_w) {
            fy_buf bo = mkbuf(GS_n);
            put(&sc_bsrc, sc_src, GS_n * GS_LDD);
            OPS->rows_dot(be, GS_n, GS_D, fy_at(&bscR, 0), GS_LDS, fy_at(&gs_bidx, 0),
                          fy_at(&sc_bsrc, 0), GS_LDD, fy_at(&bo, 0), 0);
            get(gw, &bo, GS_n);
            fd_check("scatter_add_rows bwd w = rows_dot", scatter_loss, gs_w, GS_n, gw, 1e-2f,
                     1e-3);
            freebuf(&bo);
        }
        freebuf(&bg);
    }
    /* rows_dot forward (and accumulate) and backward */
    rowsdot_loss();
    float o[GS_n], pre[GS_n], o2[GS_n];
    double wo[GS_n];
    get(o, &rd_bout, GS_n);
    for (int i = 0; i < GS_n; i++)
        wo[i] = dot_d(gs_src + gs_idx[i] * GS_LDS, sc_src + i * GS_LDD, GS_D);
    cmp("rows_dot fwd", o, wo, GS_n, 1e-6, 1e-2);
    fill_rand(pre, GS_n, -1, 1);
    put(&rd_bout, pre, GS_n);
    OPS->rows_dot(be, GS_n, GS_D, fy_at(&gs_bsrc, 0), GS_LDS, fy_at(&gs_bidx, 0),
                  fy_at(&sc_bsrc, 0), GS_LDD, fy_at(&rd_bout, 0), 1);
    get(o2, &rd_bout, GS_n);
    for (int i = 0; i < GS_n; i++) wo[i] += pre[i];
    cmp("rows_dot accumulate", o2, wo, GS_n, 1e-6, 1e-2);
    /* d/da = scatter_add(b, ia, R); d/db = gather(a, ia, R) */
    float ga[GS_R * GS_LDS] = {0}, gb[GS_n * GS_LDD];
    fy_buf bga = upbuf(ga, GS_R * GS_LDS), bgb = mkbuf(GS_n * GS_LDD);
    OPS->scatter_add_rows(be, GS_n, GS_D, fy_at(&sc_bsrc, 0), GS_LDD, fy_at(&gs_bidx, 0),
                          fy_at(&brdR, 0), fy_at(&bga, 0), GS_LDS);
    OPS->gather_rows(be, GS_n, GS_D, fy_at(&gs_bsrc, 0), GS_LDS, fy_at(&gs_bidx, 0),
                     fy_at(&brdR, 0), fy_at(&bgb, 0), GS_LDD);
    get(ga, &bga, GS_R * GS_LDS);
    get(gb, &bgb, GS_n * GS_LDD);
    fd_check("rows_dot bwd a", rowsdot_loss, gs_src, GS_R * GS_LDS, ga, 1e-2f, 1e-3);
    fd_check("rows_dot bwd b", rowsdot_loss, sc_src, GS_n * GS_LDD, gb, 1e-2f, 1e-3);
    sync_ok("gather/scatter");
    freebuf(&gs_bsrc), freebuf(&gs_bidx), freebuf(&gs_bw), freebuf(&gs_bdst), freebuf(&sc_bsrc),
        freebuf(&sc_bdst), freebuf(&rd_bout), freebuf(&bR), freebuf(&bscR), freebuf(&brdR),
        freebuf(&bga), freebuf(&bgb);
}

/* ------------------------------------------------------------ cross-entropy */

enum { XE_N = 5, XE_V = 11 };
static float xe_logits[XE_N * XE_V];
static int32_t xe_tg[XE_N] = {3, -100, 10, 0, 7};
static fy_buf xe_bl, xe_bt, xe_blo, xe_bd;

static double xe_loss(void) {
    put(&xe_bl, xe_logits, XE_N * XE_V);
    return OPS->xent_fwdbwd(be, XE_N, XE_V, fy_at(&xe_bl, 0), fy_at(&xe_bt, 0), -100, 1.0f,
                            fy_at(&xe_blo, 0), fy_at(&xe_bd, 0));
}

static void test_xent(void) {
    fill_rand(xe_logits, XE_N * XE_V, -3, 3);
    for (int j = 0; j < XE_V; j++) xe_logits[2 * XE_V + j] += 80.0f; /* stability */
    xe_logits[4 * XE_V + 1] = 40.0f; /* one dominant logit */
    xe_bl = mkbuf(XE_N * XE_V), xe_bt = upbuf(xe_tg, XE_N), xe_blo = mkbuf(XE_N),
    xe_bd = mkbuf(XE_N * XE_V);
    float gs = 0.37f;
    put(&xe_bl, xe_logits, XE_N * XE_V);
    double tot = OPS->xent_fwdbwd(be, XE_N, XE_V, fy_at(&xe_bl, 0), fy_at(&xe_bt, 0), -100, gs,
                                  fy_at(&xe_blo, 0), fy_at(&xe_bd, 0));
    float lo[XE_N], d[XE_N * XE_V], d2[XE_N * XE_V];
    double wl[XE_N], wd[XE_N * XE_V], wt = 0;
    get(lo, &xe_blo, XE_N);
    get(d, &xe_bd, XE_N * XE_V);
    for (int n = 0; n < XE_N; n++) {
        const float *x = xe_logits + n * XE_V;
        if (xe_tg[n] == -100) {
            wl[n] = 0;
            for (int j = 0; j < XE_V; j++) wd[n * XE_V + j] = 0;
            continue;
        }
        double mx = x[0], z = 0;
        for (int j = 1; j < XE_V; j++) mx = x[j] > mx ? x[j] : mx;
        for (int j = 0; j < XE_V; j++) z += exp(x[j] - mx);
        wl[n] = mx + log(z) - x[xe_tg[n]];
        wt += wl[n];
        for (int j = 0; j < XE_V; j++)
            wd[n * XE_V + j] = (exp(x[j] - mx) / z - (j == xe_tg[n])) * gs;
    }
    cmp("xent losses", lo, wl, XE_N, 1e-5, 1e-3);
    CHECK(fabs(tot - wt) <= 1e-5 * fabs(wt), "xent sum %.9g want %.9g", tot, wt);
    cmp("xent dlogits", d, wd, XE_N * XE_V, 1e-5, 1e-3);
    /* in place: dlogits aliasing logits gives the same bits */
    double tot2 = OPS->xent_fwdbwd(be, XE_N, XE_V, fy_at(&xe_bl, 0), fy_at(&xe_bt, 0), -100, gs,
                                   fy_at(&xe_blo, 0), fy_at(&xe_bl, 0));
    get(d2, &xe_bl, XE_N * XE_V);
    CHECK(tot2 == tot && memcmp(d, d2, sizeof d) == 0, "xent in place differs from out of place");
    /* finite differences of the summed loss (grad_scale 1) */
    xe_loss();
    get(d, &xe_bd, XE_N * XE_V);
    fd_check("xent dlogits", xe_loss, xe_logits, XE_N * XE_V, d, 3e-3f, 1e-2);
    sync_ok("xent");
    freebuf(&xe_bl), freebuf(&xe_bt), freebuf(&xe_blo), freebuf(&xe_bd);
}

/* ------------------------------------------------------------ AdamW */

static void test_adamw(void) {
    enum { n = 37 };
    float p[n], g[n], m[n], v[n];
    double rp[n], rm[n] = {0}, rv[n] = {0};
    fill_rand(p, n, -1, 1);
    for (int i = 0; i < n; i++) rp[i] = p[i];
    fy_buf bp = upbuf(p, n), bg = mkbuf(n), bm = mkbuf(n), bv = mkbuf(n);
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gsc = 0.5f;
    for (int t = 1; t <= 3; t++) {
        fill_rand(g, n, -2, 2);
        put(&bg, g, n);
        OPS->adamw(be, n, fy_at(&bp, 0), fy_at(&bg, 0), fy_at(&bm, 0), fy_at(&bv, 0), lr, b1, b2,
                   eps, wd, t, gsc);
        for (int i = 0; i < n; i++) {
            double gi = (double)g[i] * gsc;
            rm[i] = b1 * rm[i] + (1 - (double)b1) * gi;
            rv[i] = b2 * rv[i] + (1 - (double)b2) * gi * gi;
            double mh = rm[i] / (1 - pow(b1, t)), vh = rv[i] / (1 - pow(b2, t));
            rp[i] -= lr * (mh / (sqrt(vh) + eps) + wd * rp[i]);
        }
    }
    float g2[n];
    get(p, &bp, n), get(m, &bm, n), get(v, &bv, n), get(g2, &bg, n);
    cmp("adamw p", p, rp, n, 1e-5, 1e-2);
    cmp("adamw m", m, rm, n, 1e-5, 1e-3);
    cmp("adamw v", v, rv, n, 1e-5, 1e-4);
    CHECK(memcmp(g, g2, sizeof g) == 0, "adamw must not modify g");
    /* split into pieces at odd offsets (as a sharded optimizer would): same bits */
    float p2[n], m2[n], v2[n];
    fy_buf cp = upbuf(p, n), cm = upbuf(m, n), cv = upbuf(v, n);
    OPS->adamw(be, n, fy_at(&bp, 0), fy_at(&bg, 0), fy_at(&bm, 0), fy_at(&bv, 0), lr, b1, b2, eps,
               wd, 4, gsc);
    for (int i0 = 0, len = 1; i0 < n; i0 += len, len++) {
        int l = i0 + len <= n ? len : n - i0;
        OPS->adamw(be, l, fy_at(&cp, i0), fy_at(&bg, i0), fy_at(&cm, i0), fy_at(&cv, i0), lr, b1,
                   b2, eps, wd, 4, gsc);
    }
    get(p, &bp, n), get(m, &bm, n), get(v, &bv, n);
    get(p2, &cp, n), get(m2, &cm, n), get(v2, &cv, n);
    CHECK(!memcmp(p, p2, sizeof p) && !memcmp(m, m2, sizeof m) && !memcmp(v, v2, sizeof v),
          "adamw on pieces differs from adamw on the whole");
    freebuf(&cp), freebuf(&cm), freebuf(&cv);
    sync_ok("adamw");
    freebuf(&bp), freebuf(&bg), freebuf(&bm), freebuf(&bv);
}

/* ------------------------------------------------------------ determinism */

/* Runs f with 1, 2 and 3 OpenMP threads; the outputs must be bitwise equal. */
static void same_bits(const char *what, void (*f)(float *out), size_t n) {
    int saved = omp_get_max_threads();
    float *ref = falloc(n), *out = falloc(n);
    omp_set_num_threads(1);
    f(ref);
    int diff_at = -1, nt_bad = 0;
    for (int nt = 2; nt <= 3 && diff_at < 0; nt++) {
        omp_set_num_threads(nt);
        f(out);
        for (size_t i = 0; i < n; i++)
            if (memcmp(&ref[i], &out[i], 4)) {
                diff_at = (int)i, nt_bad = nt;
                break;
            }
    }
    CHECK(diff_at < 0, "%s: 1 thread and %d threads differ at [%d]: %.9g vs %.9g", what, nt_bad,
          diff_at, diff_at >= 0 ? ref[diff_at] : 0.0, diff_at >= 0 ? out[diff_at] : 0.0);
    omp_set_num_threads(saved);
    free(ref), free(out);
}

enum { DN = 301, DD = 131 };
static float *det_x, *det_dy, *det_w;

static void det_rmsnorm(float *out) {
    fy_buf bx = upbuf(det_x, DN * DD), bw = upbuf(det_w, DD), bdy = upbuf(det_dy, DN * DD),
           by = mkbuf(DN * DD), br = mkbuf(DN), bdx = mkbuf(DN * DD), bdw = mkbuf(DD);
    OPS->rmsnorm_fwd(be, DN, DD, fy_at(&bx, 0), DD, fy_at(&bw, 0), 1e-6f, fy_at(&by, 0), DD,
                     fy_at(&br, 0));
    OPS->rmsnorm_bwd(be, DN, DD, fy_at(&bx, 0), DD, fy_at(&bw, 0), fy_at(&br, 0), fy_at(&bdy, 0),
                     DD, fy_at(&bdx, 0), DD, 0, fy_at(&bdw, 0));
    get(out, &bdw, DD);
    get(out + DD, &bdx, DN * DD);
    freebuf(&bx), freebuf(&bw), freebuf(&bdy), freebuf(&by), freebuf(&br), freebuf(&bdx),
        freebuf(&bdw);
}

enum { SN = 2000, SD = 150, SR = 13 };
static void det_scatter(float *out) {
    int32_t *idx = calloc(SN, sizeof *idx);
    for (int i = 0; i < SN; i++) idx[i] = (i * 7 + i / 3) % SR; /* many repeats */
    fy_buf bs = upbuf(det_x, (size_t)SN * SD), bi = upbuf(idx, SN), bw = upbuf(det_dy, SN),
           bd = mkbuf((size_t)SR * SD);
    OPS->scatter_add_rows(be, SN, SD, fy_at(&bs, 0), SD, fy_at(&bi, 0), fy_at(&bw, 0),
                          fy_at(&bd, 0), SD);
    get(out, &bd, (size_t)SR * SD);
    freebuf(&bs), freebuf(&bi), freebuf(&bw), freebuf(&bd);
    free(idx);
}

static void det_sumsq(float *out) {
    fy_buf b = upbuf(det_x, (size_t)SN * SD);
    double s = OPS->sumsq(be, (size_t)SN * SD - 7, fy_at(&b, 3));
    memcpy(out, &s, sizeof s);
    freebuf(&b);
}

static void det_gemm(float *out) {
    int M = 150, N = 170, K = 190;
    fy_buf a = upbuf(det_x, (size_t)M * K), b = upbuf(det_dy, (size_t)K * N),
           c = mkbuf((size_t)M * N);
    OPS->gemm(be, 0, 1, M, N, K, 1.0f, fy_at(&a, 0), K, fy_at(&b, 0), K, 0.0f, fy_at(&c, 0), N);
    get(out, &c, (size_t)M * N);
    freebuf(&a), freebuf(&b), freebuf(&c);
}

static void det_attn(float *out) {
    int B = 2, T = 70, H = 3, dqk = 8, dv = 5;
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv;
    fy_buf q = upbuf(det_x, nq), k = upbuf(det_x + nq, nq), v = upbuf(det_dy, nv),
           o = mkbuf(nv), P = mkbuf((size_t)B * H * T * T), dq = mkbuf(nq), dk = mkbuf(nq),
           dvb = mkbuf(nv), dO = upbuf(det_dy + nv, nv);
    OPS->attn_fwd(be, B, T, H, dqk, dv, 0.3f, fy_at(&q, 0), fy_at(&k, 0), fy_at(&v, 0),
                  fy_at(&o, 0), fy_at(&P, 0));
    OPS->attn_bwd(be, B, T, H, dqk, dv, 0.3f, fy_at(&q, 0), fy_at(&k, 0), fy_at(&v, 0),
                  fy_at(&P, 0), fy_at(&dO, 0), fy_at(&dq, 0), fy_at(&dk, 0), fy_at(&dvb, 0));
    get(out, &o, nv);
    get(out + nv, &dq, nq);
    get(out + nv + nq, &dk, nq);
    get(out + nv + 2 * nq, &dvb, nv);
    freebuf(&q), freebuf(&k), freebuf(&v), freebuf(&o), freebuf(&P), freebuf(&dq), freebuf(&dk),
        freebuf(&dvb), freebuf(&dO);
}

static void det_balance(float *out) {
    int B = 3, T = 200, E = 16, K = 4;
    size_t N = (size_t)B * T;
    int32_t *idx = calloc(N * K, sizeof *idx);
    for (size_t t = 0; t < N; t++)
        for (int k = 0; k < K; k++) idx[t * K + k] = (int32_t)((t * 3 + k * 5) % E);
    float *s = falloc(N * E);
    for (size_t e = 0; e < N * E; e++) s[e] = 0.05f + 0.9f * fabsf(det_x[e]) / 2.0f;
    fy_buf bs = upbuf(s, N * E), bi = upbuf(idx, N * K), bd = mkbuf(N * E);
    out[0] = OPS->balance_fwd(be, B, T, E, K, 0.01f, fy_at(&bs, 0), fy_at(&bi, 0));
    OPS->balance_bwd(be, B, T, E, K, 0.01f, 1.0f, fy_at(&bs, 0), fy_at(&bi, 0), fy_at(&bd, 0));
    get(out + 1, &bd, N * E);
    freebuf(&bs), freebuf(&bi), freebuf(&bd);
    free(idx), free(s);
}

static void test_determinism(void) {
    size_t n = (size_t)SN * SD;
    det_x = falloc(n), det_dy = falloc(n), det_w = falloc(DD);
    fill_rand(det_x, n, -2, 2);
    fill_rand(det_dy, n, -1, 1);
    fill_rand(det_w, DD, 0.5f, 1.5f);
    same_bits("rmsnorm_bwd dw/dx", det_rmsnorm, DD + DN * DD);
    same_bits("scatter_add_rows with repeated indices", det_scatter, (size_t)SR * SD);
    same_bits("sumsq", det_sumsq, 2);
    same_bits("gemm", det_gemm, 150 * 170);
    same_bits("attn fwd/bwd", det_attn, 2 * (size_t)2 * 70 * 3 * (8 + 5));
    same_bits("balance fwd/bwd", det_balance, 1 + 3 * 200 * 16);
    sync_ok("determinism");
    free(det_x), free(det_dy), free(det_w);
}

int main(void) {
    fy_err e = {{0}};
    if (fy_backend_create("cpu", &be, &e)) {
        fprintf(stderr, "cannot create cpu backend: %s\n", e.msg);
        return 1;
    }
    test_create_and_errors();
    test_memory_blas1();
    test_copy3d();
    test_gemm();
    test_rmsnorm();
    test_rope();
    test_attn();
    test_mla_decode();
    test_linear_q8();
    test_swiglu_q8();
    test_swiglu();
    test_router_fwd();
    test_router_bwd();
    test_balance();
    test_gather_scatter();
    test_xent();
    test_adamw();
    test_determinism();
    fy_backend_destroy(be);
    return fy_test_finish("test_ops");
}
