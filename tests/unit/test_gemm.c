/* The cpu linear's many-row kernel (src/backend/cpu/cpu_gemm.c; forced
 * here from 2 rows on through fy_backend_opts.cpu_gemm_rows, AVX-512 where
 * the CPU has it and AVX2) gives the bits of cpu_linear.c's tiles (the
 * option at -1), of its portable kernel, of the one-row path, and of a
 * reference written here from cpu_linear.c's stated order (16 lane sums
 * over k = l mod 16, mul then add, the fixed tree, one add into y): memcmp
 * over many shapes (in not a multiple of 16, in < 16, odd N and out, panel,
 * chunk and row-block tails), accumulate on and off, x and y with row
 * strides wider than the rows, W in f32, f16 and bf16, signed zeros and
 * infinities among the weights, 1 and 2 threads. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/half.h"
#include "testutil.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float frand(void) { /* xorshift, uniform in [-1, 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static fy_backend *make_backend(int kernel, int gemm_rows) {
    fy_backend_opts o = {0};
    o.cpu_q8 = kernel;
    o.cpu_gemm_rows = gemm_rows;
    fy_backend *be = NULL;
    fy_err err;
    if (fy_backend_create_opts("cpu", &o, &be, &err)) {
        fprintf(stderr, "cpu: %s\n", err.msg);
        exit(1);
    }
    return be;
}

/* The order cpu_linear.c's header states, for one (row, output). */
static float ref_dot(const float *x, const float *w, int in) {
    float a[16] = {0};
    for (int k = 0; k < in; k++) {
        const float p = x[k] * w[k];
        a[k % 16] = a[k % 16] + p;
    }
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = a[l] + a[l + 8];
    return ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
}


/* One shape: fmt -1 (f32), FY_H16_F16 or FY_H16_BF16. */
#define NBE 4
static void check_shape(fy_backend *const bes[NBE], int fmt, int N, int in, int out, int acc, int threads) {
    const int ldx = in + 3, ldy = out + 5;
    const size_t nx = (size_t)N * ldx, ny = (size_t)N * ldy, nw = (size_t)out * in;
    float *x = malloc(nx * sizeof *x), *wf = malloc(nw * sizeof *wf), *y0 = malloc(ny * sizeof *y0);
    float *want = malloc(ny * sizeof *want), *got = malloc(ny * sizeof *got), *one = malloc(ny * sizeof *one);
    uint16_t *w16 = malloc((nw + 1) * sizeof *w16);
    if (!x || !wf || !y0 || !want || !got || !one || !w16) exit(1);
    for (size_t i = 0; i < nx; i++) x[i] = frand();
    for (size_t i = 0; i < ny; i++) y0[i] = frand();
    for (size_t i = 0; i < nw; i++) {
        const float v = frand();
        w16[i] = fmt == FY_H16_BF16 ? fy_f32_to_bf16(v) : fy_f32_to_f16(v);
        wf[i] = fmt < 0 ? v : fmt == FY_H16_BF16 ? fy_bf16_to_f32(w16[i]) : fy_f16_to_f32(w16[i]);
    }
    if (in >= 4 && out >= 3) { /* signed zeros in row 0, infinities in row 2, a zero x column */
        const uint16_t z = 0x8000, inf = fmt == FY_H16_BF16 ? 0x7f80 : 0x7c00;
        w16[0] = z, w16[1] = 0, w16[2 * (size_t)in + 1] = inf, w16[2 * (size_t)in + 3] = inf | 0x8000;
        wf[0] = -0.0f, wf[1] = 0.0f;
        wf[2 * (size_t)in + 1] = fmt == FY_H16_BF16 ? fy_bf16_to_f32(inf) : fy_f16_to_f32(inf);
        wf[2 * (size_t)in + 3] = -wf[2 * (size_t)in + 1];
        if (fmt < 0) wf[2 * (size_t)in + 1] = 1.0f / 0.0f, wf[2 * (size_t)in + 3] = -1.0f / 0.0f;
        for (int n = 0; n < N; n++) x[(size_t)n * ldx + 1] = n % 2 ? -0.0f : 0.0f;
    }
    memcpy(want, y0, ny * sizeof *want);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            const float d = ref_dot(x + (size_t)n * ldx, wf + (size_t)o * in, in);
            float *yo = want + (size_t)n * ldy + o;
            *yo = acc ? *yo + d : d;
        }
    omp_set_num_threads(threads);
    for (int k = 0; k < NBE; k++) {
        memcpy(got, y0, ny * sizeof *got);
        memcpy(one, y0, ny * sizeof *one);
        fy_test_linear(bes[k], fmt, N, in, out, x, ldx, w16, wf, got, ldy, acc);
        for (int n = 0; n < N; n++) /* each row alone: the one-row path */
            fy_test_linear(bes[k], fmt, 1, in, out, x + (size_t)n * ldx, ldx, w16, wf, one + (size_t)n * ldy, ldy, acc);
        CHECK(!memcmp(got, want, ny * sizeof *got), "fmt %d kernel %d N %d in %d out %d acc %d threads %d: not the "
              "reference's bits", fmt, k, N, in, out, acc, threads);
        CHECK(!memcmp(one, want, ny * sizeof *one), "fmt %d kernel %d N %d in %d out %d acc %d: one row at a time "
              "not the reference's bits", fmt, k, N, in, out, acc);
    }
    free(x), free(wf), free(y0), free(want), free(got), free(one), free(w16);
}

int main(void) {
    fy_backend *bes[NBE] = {make_backend(FY_CPU_Q8_BEST, 2), make_backend(FY_CPU_Q8_AVX2, 2),
                            make_backend(FY_CPU_Q8_BEST, -1), make_backend(FY_CPU_Q8_PORTABLE, 0)};
    const int th = omp_get_max_threads();
    static const int ins[] = {2, 14, 16, 18, 46, 64, 130, 512}; /* even: linear_h16 packs two a float */
    static const int outs[] = {1, 15, 16, 33, 70, 130};
    static const int ns[] = {2, 7, 9, 32, 33, 71};
    int s = 0;
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 6; b++, s++) {
            const int fmt = s % 3 == 0 ? -1 : s % 3 == 1 ? FY_H16_F16 : FY_H16_BF16;
            check_shape(bes, fmt, ns[s % 6], ins[a], outs[b], s % 2, 1 + s % 2);
            check_shape(bes, -1, ns[(s + 5) % 6], ins[a], outs[b], (s + 1) % 2, 2 - s % 2);
        }
    check_shape(bes, -1, 200, 300, 260, 1, 2); /* several chunks and row blocks */
    check_shape(bes, FY_H16_BF16, 97, 1000, 40, 0, 2);
    check_shape(bes, FY_H16_F16, 65, 4100, 50, 1, 2); /* chunks of one panel */
    omp_set_num_threads(th);
    for (int k = 0; k < NBE; k++) fy_backend_destroy(bes[k]);
    return fy_test_finish("test_gemm");
}
