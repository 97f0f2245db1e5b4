/* The chaos:INNER backend (chaos.h): INNER's ops with checked and, on
 * request, corrupted GEMMs, and the perturbed kernels of
 * fy_backend_opts.perturb. Reached only through backend.h. */
#include "backend/chaos/chaos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fy_chaos {
    fy_backend be;             /* first: a fy_backend * to this is a fy_chaos * */
    fy_backend *inner;
    fy_backend_ops ops;
    char name[64];
    int step, gemm_count, corrupt_index;
    double fraction;
    char phase[16];
    int has_fault;
    fy_be_fault fault;
    long checked, faults;
    int perturb_op;            /* fy_backend_opts.perturb (see chaos.h): 0 = off */
    float perturb_factor;
} fy_chaos;

static void chaos_destroy(fy_backend *be) {
    fy_chaos *c = (fy_chaos *)be;
    fy_backend_destroy(c->inner);
    free(c);
}

/* ---- the fault ops (backend.h): begin a step, name the phase, take the
 * recorded fault ---- */

static void chaos_fault_begin_step(fy_backend *be, int step, double fraction, int corrupt_index) {
    fy_chaos *c = (fy_chaos *)be;
    c->step = step;
    c->gemm_count = 0;
    c->fraction = fraction;
    c->corrupt_index = corrupt_index;
    c->has_fault = 0;
    snprintf(c->phase, sizeof c->phase, "forward");
}

static void chaos_fault_phase(fy_backend *be, const char *phase) {
    fy_chaos *c = (fy_chaos *)be;
    snprintf(c->phase, sizeof c->phase, "%s", phase);
}

static int chaos_fault_take(fy_backend *be, fy_be_fault *f) {
    fy_chaos *c = (fy_chaos *)be;
    if (!c->has_fault) return 0;
    *f = c->fault;
    c->has_fault = 0;
    return 1;
}

static void chaos_fault_counts(const fy_backend *be, long *checked, long *faults) {
    const fy_chaos *c = (const fy_chaos *)be;
    *checked = c->checked;
    *faults = c->faults;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Host copy of a stored rows x cols matrix with row stride ld. */
static float *fetch(fy_backend *inner_as, fy_ref r, int rows, int cols, int ld) {
    size_t n = rows > 0 ? (size_t)(rows - 1) * ld + cols : 0;
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (h && n) inner_as->ops->download(inner_as, h, r, n);
    return h;
}

static void chaos_gemm(fy_backend *be, int ta, int tb, int M, int N, int K, float alpha, fy_ref A, int lda,
                       fy_ref B, int ldb, float beta, fy_ref C, int ldc) {
    fy_chaos *c = (fy_chaos *)be;
    int idx = c->gemm_count++;
    int check = c->fraction > 0 && M > 0 && N > 0 &&
                (c->fraction >= 1 ||
                 (double)(mix(((uint64_t)c->step << 32) ^ (uint64_t)idx) >> 11) * 0x1.0p-53 < c->fraction);
    double *cold = NULL, *acold = NULL;
    if (check && beta != 0) {
        float *h = fetch(be, C, M, N, ldc);
        cold = calloc((size_t)N, sizeof *cold);
        acold = calloc((size_t)N, sizeof *acold);
        if (h && cold && acold)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    cold[j] += h[(size_t)i * ldc + j];
                    acold[j] += fabs(h[(size_t)i * ldc + j]);
                }
        free(h);
    }
    c->inner->ops->gemm(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (idx == c->corrupt_index && M > 0 && N > 0) {
        /* One wrong element, as a flaky multiplier would leave it. */
        fy_ref e = fy_add(C, (size_t)(M / 2) * ldc + N / 2);
        float x;
        be->ops->download(be, &x, e, 1);
        x += 1.0f + fabsf(x);
        be->ops->upload(be, e, &x, 1);
    }
    if (!check) goto out;
    c->checked++;
    float *a = fetch(be, A, ta ? K : M, ta ? M : K, lda);
    float *b = fetch(be, B, tb ? N : K, tb ? K : N, ldb);
    float *h = fetch(be, C, M, N, ldc);
    double *ra = calloc((size_t)K + 1, sizeof *ra), *rabs = calloc((size_t)K + 1, sizeof *rabs);
    if (!a || !b || !h || !ra || !rabs) goto done;
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            double v = ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k];
            ra[k] += v;
            rabs[k] += fabs(v);
        }
    const double u = 0x1.0p-24;
    for (int j = 0; j < N; j++) {
        double want = 0, mag = 0, got = 0;
        for (int k = 0; k < K; k++) {
            double v = tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
            want += ra[k] * v;
            mag += rabs[k] * fabs(v);
        }
        want *= alpha;
        mag *= fabs(alpha);
        if (cold) {
            want += beta * cold[j];
            mag += fabs(beta) * acold[j];
        }
        for (int i = 0; i < M; i++) got += h[(size_t)i * ldc + j];
        /* fp32 accumulation error bound, with slack for blocked summation. */
        double tol = 4.0 * u * (K + M + 2) * mag + 1e-30;
        if (!(fabs(got - want) <= tol)) {
            c->faults++;
            if (!c->has_fault) {
                c->fault = (fy_be_fault){.step = c->step, .gemm_index = idx, .trans_a = ta, .trans_b = tb,
                                         .M = M, .N = N, .K = K, .column = j, .A = A, .B = B, .C = C,
                                         .got = got, .want = want, .tol = tol};
                snprintf(c->fault.phase, sizeof c->fault.phase, "%s", c->phase);
                c->has_fault = 1;
            }
            break;
        }
    }
done:
    free(a);
    free(b);
    free(h);
    free(ra);
    free(rabs);
out:
    free(cold);
    free(acold);
}

/* ---- perturb: a deliberately wrong kernel, for `ferry verify` -------
 * Separate from ABFT and GEMM corruption above: it models a backend whose
 * kernel is consistently (not transiently) off by a small factor, which only a
 * comparison against another backend can find. */
enum { PERTURB_OFF, PERTURB_RMSNORM, PERTURB_SWIGLU, PERTURB_ATTN };

/* y[i*ld + j] *= f for i < rows, j < cols, with the inner backend's scale. */
static void scale_rows(fy_backend *be, int rows, int cols, fy_ref y, int ld, float f) {
    if (ld == cols) {
        be->ops->scale(be, (size_t)rows * cols, f, y);
        return;
    }
    for (int i = 0; i < rows; i++) be->ops->scale(be, (size_t)cols, f, fy_add(y, (size_t)i * ld));
}

static void perturbed_rmsnorm_fwd(fy_backend *be, int N, int D, fy_ref x, int ldx, fy_ref w, float eps,
                                  fy_ref y, int ldy, fy_ref rstd) {
    fy_chaos *c = (fy_chaos *)be;
    c->inner->ops->rmsnorm_fwd(be, N, D, x, ldx, w, eps, y, ldy, rstd);
    scale_rows(be, N, D, y, ldy, c->perturb_factor);
}

static void perturbed_swiglu_fwd(fy_backend *be, int N, int F, fy_ref g, int ldg, fy_ref u, int ldu,
                                 fy_ref h, int ldh) {
    fy_chaos *c = (fy_chaos *)be;
    c->inner->ops->swiglu_fwd(be, N, F, g, ldg, u, ldu, h, ldh);
    scale_rows(be, N, F, h, ldh, c->perturb_factor);
}

static void perturbed_attn_fwd(fy_backend *be, int B, int T, int H, int dqk, int dv, float scale, fy_ref q,
                               fy_ref k, fy_ref v, fy_ref out, fy_ref P) {
    fy_chaos *c = (fy_chaos *)be;
    c->inner->ops->attn_fwd(be, B, T, H, dqk, dv, scale, q, k, v, out, P);
    scale_rows(be, B * T, H * dv, out, H * dv, c->perturb_factor);
}

/* Parses v = "OP:EPS" (OP rmsnorm|swiglu|attn; fy_backend_opts.perturb):
 * every forward output of that op is multiplied by (1 + EPS). NULL or
 * empty: no perturbation. The message names FERRY_PERTURB, where users set it. */
static int perturb_setup(fy_chaos *c, const char *v, fy_err *err) {
    if (!v || !*v) return 0;
    static const struct { const char *name; int op; } ops[] = {
        {"rmsnorm", PERTURB_RMSNORM}, {"swiglu", PERTURB_SWIGLU}, {"attn", PERTURB_ATTN}};
    const char *colon = strchr(v, ':');
    char *end = NULL;
    double eps = colon ? strtod(colon + 1, &end) : 0;
    for (size_t i = 0; colon && i < sizeof ops / sizeof ops[0]; i++)
        if (strlen(ops[i].name) == (size_t)(colon - v) && !strncmp(v, ops[i].name, colon - v) &&
            end != colon + 1 && !*end && isfinite(eps) && fabs(eps) < 1)
            c->perturb_op = ops[i].op;
    if (!c->perturb_op)
        return fy_fail(err, "FERRY_PERTURB '%s': expected OP:EPS with OP rmsnorm, swiglu or attn and |EPS| < 1 "
                            "(e.g. rmsnorm:1e-3)", v);
    c->perturb_factor = (float)(1.0 + eps);
    if (c->perturb_op == PERTURB_RMSNORM) c->ops.rmsnorm_fwd = perturbed_rmsnorm_fwd;
    if (c->perturb_op == PERTURB_SWIGLU) c->ops.swiglu_fwd = perturbed_swiglu_fwd;
    if (c->perturb_op == PERTURB_ATTN) c->ops.attn_fwd = perturbed_attn_fwd;
    return 0;
}

int fy_backend_chaos_create(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err) {
    *out = NULL;
    const char *inner_spec = strncmp(spec, "chaos:", 6) == 0 ? spec + 6 : "cpu";
    if (!*inner_spec) inner_spec = "cpu";
    if (strncmp(inner_spec, "chaos", 5) == 0) return fy_fail(err, "backend '%s': chaos cannot wrap chaos", spec);
    fy_chaos *c = calloc(1, sizeof *c);
    if (!c) return fy_fail(err, "out of memory");
    /* Unchecked: the checks run once, on the wrapper, before its ops reach
     * the inner ones. */
    if (fy_backend_create_unchecked(inner_spec, opts, &c->inner, err)) {
        free(c);
        return fy_wrap(err, "backend '%s'", spec);
    }
    /* The wrapper shares the inner backend's private state, so the inner
     * ops run unchanged on it; sticky errors land on the wrapper. */
    c->ops = *c->inner->ops;
    snprintf(c->name, sizeof c->name, "chaos:%s", c->inner->ops->name);
    c->ops.name = c->name;
    c->ops.destroy = chaos_destroy;
    c->ops.gemm = chaos_gemm;
    c->ops.fault_begin_step = chaos_fault_begin_step;
    c->ops.fault_phase = chaos_fault_phase;
    c->ops.fault_take = chaos_fault_take;
    c->ops.fault_counts = chaos_fault_counts;
    c->be.ops = &c->ops;
    c->be.impl = c->inner->impl;
    c->corrupt_index = -1;
    if (perturb_setup(c, opts->perturb, err)) {
        chaos_destroy(&c->be);
        return fy_wrap(err, "backend '%s'", spec);
    }
    *out = &c->be;
    return 0;
}
