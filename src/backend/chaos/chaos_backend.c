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
    fy_chaos_fault fault;
    long checked, faults;
} fy_chaos;

static void chaos_destroy(fy_backend *be) {
    fy_chaos *c = (fy_chaos *)be;
    fy_backend_destroy(c->inner);
    free(c);
}

fy_chaos *fy_chaos_of(fy_backend *be) {
    return be && be->ops && be->ops->destroy == chaos_destroy ? (fy_chaos *)be : NULL;
}

void fy_chaos_begin_step(fy_chaos *c, int step, double fraction, int corrupt_index) {
    c->step = step;
    c->gemm_count = 0;
    c->fraction = fraction;
    c->corrupt_index = corrupt_index;
    c->has_fault = 0;
    snprintf(c->phase, sizeof c->phase, "forward");
}

void fy_chaos_set_phase(fy_chaos *c, const char *phase) { snprintf(c->phase, sizeof c->phase, "%s", phase); }

int fy_chaos_take_fault(fy_chaos *c, fy_chaos_fault *f) {
    if (!c->has_fault) return 0;
    *f = c->fault;
    c->has_fault = 0;
    return 1;
}

void fy_chaos_counts(fy_chaos *c, long *checked, long *faults) {
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
                fy_chaos_fault *f = &c->fault;
                f->step = c->step;
                f->gemm_index = idx;
                f->trans_a = ta;
                f->trans_b = tb;
                f->M = M;
                f->N = N;
                f->K = K;
                f->column = j;
                snprintf(f->phase, sizeof f->phase, "%s", c->phase);
                f->A = A;
                f->B = B;
                f->C = C;
                f->got = got;
                f->want = want;
                f->tol = tol;
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

int fy_backend_chaos_create(const char *spec, fy_backend **out, fy_err *err) {
    *out = NULL;
    const char *inner_spec = strncmp(spec, "chaos:", 6) == 0 ? spec + 6 : "cpu";
    if (!*inner_spec) inner_spec = "cpu";
    if (strncmp(inner_spec, "chaos", 5) == 0) return fy_fail(err, "backend '%s': chaos cannot wrap chaos", spec);
    fy_chaos *c = calloc(1, sizeof *c);
    if (!c) return fy_fail(err, "out of memory");
    if (fy_backend_create(inner_spec, &c->inner, err)) {
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
    c->be.ops = &c->ops;
    c->be.impl = c->inner->impl;
    c->corrupt_index = -1;
    *out = &c->be;
    return 0;
}
