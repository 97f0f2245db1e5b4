/* 16-bit inference weights (backend.h linear_h16, core/half.h):
 * (a) the conversions, exhaustively: half -> float for all 65536 halves
 * against the value the format defines and against the CPU's own vcvtph2ps
 * (F16C), NaN payloads included; float -> half against vcvtps2ph (round
 * to nearest even) for every rounding case, NaN to ggml's 0x7e00; bf16 -> float
 * against the format's value; float -> bf16 against the nearer neighbour
 * (ties to even) for every upper half with the rounding-relevant lower
 * halves; (b) linear_h16 equals linear_rows on the widened matrix bit for
 * bit: both formats, N = 1, 2, 3, 7, 64, in not a multiple of 16, odd out,
 * accumulate 0/1, subnormal, infinite and NaN weights, every cpu kernel
 * choice, each row alone and among the others; (c) `test_h16 opencl`
 * (ctest test_h16_opencl): the OpenCL kernel gives the cpu's bits, exit 77
 * (skipped) where this ferry has no OpenCL or no device. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define H16_X86 1
#endif

#include "backend/backend.h"
#include "core/half.h"
#include "testutil.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- (a) conversions ---- */

/* A finite 16-bit float's value from the format's definition: ebits of
 * exponent, mbits of mantissa, bias 2^(ebits-1) - 1. */
static double value16(uint16_t h, int ebits, int mbits) {
    int e = (h >> mbits) & ((1 << ebits) - 1), m = h & ((1 << mbits) - 1), bias = (1 << (ebits - 1)) - 1;
    double v = e ? ldexp(m + ldexp(1, mbits), e - bias - mbits) : ldexp(m, 1 - bias - mbits);
    return (h >> 15) ? -v : v;
}

#ifdef H16_X86
__attribute__((target("avx2,f16c"))) static uint32_t hw_f16_to_f32(uint16_t h) {
    return (uint32_t)_mm_cvtsi128_si32(_mm_castps_si128(_mm_cvtph_ps(_mm_cvtsi32_si128(h))));
}
__attribute__((target("avx2,f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_mm_cvtsi128_si32(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT));
}
static int have_f16c(void) { return __builtin_cpu_supports("f16c"); }
#else
static uint32_t hw_f16_to_f32(uint16_t h) { return h; }
static uint16_t hw_f32_to_f16(float f) { return (uint16_t)f; }
static int have_f16c(void) { return 0; }
#endif

static void test_to_f32(void) {
    int bad = 0, bad_hw = 0, bad_bf = 0;
    const int hw = have_f16c();
    for (uint32_t i = 0; i < 65536; i++) {
        const uint16_t h = (uint16_t)i;
        const uint32_t f = bits(fy_f16_to_f32(h)), sign = (uint32_t)(h & 0x8000u) << 16;
        if ((h & 0x7c00u) == 0x7c00u) /* inf, NaN: quiet, payload shifted up */
            bad += f != (sign | 0x7f800000u | (uint32_t)(h & 0x3ffu) << 13 | ((h & 0x3ffu) ? 0x400000u : 0));
        else
            bad += from_bits(f) != value16(h, 5, 10) || (f & 0x80000000u) != sign;
        if (hw) bad_hw += f != hw_f16_to_f32(h);
        const uint32_t b = bits(fy_bf16_to_f32(h));
        if ((h & 0x7f80u) == 0x7f80u) bad_bf += b != (uint32_t)h << 16;
        else bad_bf += from_bits(b) != value16(h, 8, 7) || (b & 0x80000000u) != sign;
    }
    CHECK(bad == 0, "%d halves widen to another value", bad);
    CHECK(bad_hw == 0, "%d halves widen to other bits than vcvtph2ps", bad_hw);
    CHECK(bad_bf == 0, "%d bfloat16s widen to another value", bad_bf);
    if (!hw) printf("test_h16: no F16C here: the hardware cross-checks did not run\n");
}

/* Float -> half against vcvtps2ph: every pattern of the upper 19 bits
 * (sign, exponent, the 10 kept mantissa bits) with the lower 13 bits at
 * each rounding case of a normal half (0, just above 0, below / at / above
 * the halfway 0x1000, all ones, one random); for a subnormal half the
 * halfway point lies in the upper bits, which run through all patterns. */
static void test_to_f16(void) {
    if (!have_f16c()) {
        printf("test_h16: no F16C here: float -> half not checked against the hardware\n");
        return;
    }
    static const uint32_t low[] = {0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff};
    int bad = 0, bad_nan = 0;
    uint32_t s = 7;
    for (uint32_t hi = 0; hi < (1u << 19); hi++)
        for (int j = 0; j < 7; j++) {
            s = s * 1664525u + 1013904223u;
            const uint32_t u = hi << 13 | (j < 6 ? low[j] : s >> 19);
            const float f = from_bits(u);
            const uint16_t h = fy_f32_to_f16(f);
            if ((u & 0x7fffffffu) > 0x7f800000u) bad_nan += h != (((u >> 16) & 0x8000u) | 0x7e00u);
            else bad += h != hw_f32_to_f16(f);
        }
    CHECK(bad == 0, "%d floats round to another half than vcvtps2ph", bad);
    CHECK(bad_nan == 0, "%d NaNs not narrowed to ggml's sign | 0x7e00", bad_nan);
}

/* fy_f32_to_f16_n (vcvtps2ph where there is F16C, NaN lanes redone) and
 * fy_f32_to_bf16_n give their one-at-a-time functions' bits: every 97th
 * float pattern (the whole range, NaNs included), in arrays of odd length
 * so the scalar tail runs too. */
static void test_to_f16_n(void) {
    enum { N = 4099 };
    static float f[N];
    static uint16_t h[N], hb[N];
    long bad = 0, bad_bf = 0;
    uint64_t u = 0;
    while (u < (1ull << 32)) {
        for (int i = 0; i < N; i++, u += 97) f[i] = from_bits((uint32_t)u);
        fy_f32_to_f16_n(f, N, h);
        fy_f32_to_bf16_n(f, N, hb);
        for (int i = 0; i < N; i++) bad += h[i] != fy_f32_to_f16(f[i]), bad_bf += hb[i] != fy_f32_to_bf16(f[i]);
    }
    CHECK(bad == 0, "fy_f32_to_f16_n: %ld floats narrowed to other bits than fy_f32_to_f16", bad);
    CHECK(bad_bf == 0, "fy_f32_to_bf16_n: %ld floats narrowed to other bits than fy_f32_to_bf16", bad_bf);
}

/* f32 -> bf16: the nearer of the two bf16 around x, ties to the even one;
 * the one past the largest finite counts as 2^128 (IEEE overflow rule). */
static int bf16_ok(float x, uint16_t r) {
    uint32_t u = bits(x), lo = u >> 16, sign = u & 0x80000000u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return r == (uint16_t)(lo | 0x40);
    if ((u & 0x7fffffffu) == 0x7f800000u) return r == lo;
    double ax = fabs((double)x), vlo = fabs(value16((uint16_t)lo, 8, 7));
    uint32_t hi = (lo & 0x7fffu) + 1;
    double vhi = hi == 0x7f80u ? ldexp(1, 128) : value16((uint16_t)hi, 8, 7);
    uint32_t want = ax - vlo < vhi - ax || (ax - vlo == vhi - ax && !(lo & 1)) ? lo : (sign >> 16) | hi;
    return r == want;
}

static void test_to_bf16(void) {
    static const uint32_t low[] = {0, 1, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xc000, 0xffff};
    int bad = 0;
    uint32_t s = 1;
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (int j = 0; j < 9; j++) {
            s = s * 1664525u + 1013904223u;
            uint32_t u = hi << 16 | (j < 8 ? low[j] : s >> 16);
            float x = from_bits(u);
            bad += !bf16_ok(x, fy_f32_to_bf16(x));
        }
    CHECK(bad == 0, "%d floats not rounded to the nearest bfloat16 (ties to even)", bad);
}

/* ---- (b) linear_h16 against linear_rows on the widened matrix ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* xorshift, uniform in [-1, 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static fy_backend *make_backend(const char *spec, int kernel) {
    fy_backend_opts o = {0};
    o.cpu_q8 = kernel;
    fy_backend *be = NULL;
    fy_err err;
    if (fy_backend_create_opts(spec, &o, &be, &err)) {
        fprintf(stderr, "%s: %s\n", spec, err.msg);
        exit(1);
    }
    return be;
}


/* A random 16-bit matrix; with `special`, rows 0-4 hold subnormals,
 * infinities, NaNs (with payloads) and signed zeros among their weights
 * (each in its own row, so the other rows' outputs stay finite). One NaN a
 * row: where two NaNs meet in a sum, which payload wins depends on the
 * operand order the compiler picks for a commutative add (C fixes no NaN
 * payloads), for linear_rows as much as for linear_h16. */
static void make_w(int fmt, int in, int out, int special, uint16_t *w16, float *wf) {
    for (size_t i = 0; i < (size_t)out * in; i++)
        w16[i] = fmt == FY_H16_BF16 ? fy_f32_to_bf16(frand()) : fy_f32_to_f16(frand());
    if (special && in >= 4) {
        const int sub = fmt == FY_H16_BF16 ? 0x0003 : 0x0201, inf = fmt == FY_H16_BF16 ? 0x7f80 : 0x7c00;
        const int nan = fmt == FY_H16_BF16 ? 0x7f85 : 0x7d2b; /* signalling, payload */
        for (int k = 0; k < in; k += 3) w16[k] = (uint16_t)(sub + k % 7), w16[k + 1 < in ? k + 1 : k] |= 0x8000;
        if (out > 1) w16[(size_t)in + 2] = (uint16_t)inf, w16[(size_t)in + 3] = (uint16_t)(inf | 0x8000);
        if (out > 2) w16[(size_t)2 * in + in / 2] = (uint16_t)nan;
        if (out > 3) w16[(size_t)3 * in] = 0x8000, w16[(size_t)3 * in + 1] = 0;
        if (out > 4) w16[(size_t)4 * in + in - 1] = 0xffffu;
    }
    for (size_t i = 0; i < (size_t)out * in; i++)
        wf[i] = fmt == FY_H16_BF16 ? fy_bf16_to_f32(w16[i]) : fy_f16_to_f32(w16[i]);
}

/* linear_h16 of every kernel choice against linear_rows (best kernel) on
 * the widened matrix, the whole of y compared (columns past out included);
 * each row alone against it among Nmax. ref: where a second backend (the
 * OpenCL one) is checked against the cpu's bits instead. */
static void h16_case(fy_backend *other, int fmt, int Nmax, int in, int out, int acc, int special) {
    const int ldx = in + 3, ldy = out + 2;
    float *x = malloc((size_t)Nmax * ldx * sizeof *x), *wf = malloc(((size_t)out * in + 1) * sizeof *wf);
    uint16_t *w16 = malloc(((size_t)out * in + 2) * sizeof *w16);
    float *y0 = malloc((size_t)Nmax * ldy * sizeof *y0), *ref = malloc((size_t)Nmax * ldy * sizeof *ref);
    float *y = malloc((size_t)Nmax * ldy * sizeof *y);
    for (size_t i = 0; i < (size_t)Nmax * ldx; i++) x[i] = frand();
    for (size_t i = 0; i < (size_t)Nmax * ldy; i++) y0[i] = frand();
    make_w(fmt, in, out, special, w16, wf);
    char what[128];
    snprintf(what, sizeof what, "%s N=%d in=%d out=%d acc=%d special=%d", fmt == FY_H16_BF16 ? "bf16" : "f16",
             Nmax, in, out, acc, special);
    fy_backend *cpu = make_backend("cpu", FY_CPU_Q8_BEST);
    memcpy(ref, y0, (size_t)Nmax * ldy * sizeof *ref);
    fy_test_linear(cpu, -1, Nmax, in, out, x, ldx, NULL, wf, ref, ldy, acc);
    if (other) {
        memcpy(y, y0, (size_t)Nmax * ldy * sizeof *y);
        fy_test_linear(other, fmt, Nmax, in, out, x, ldx, w16, NULL, y, ldy, acc);
        CHECK(!memcmp(y, ref, (size_t)Nmax * ldy * sizeof *y), "opencl %s: not linear_rows' bits", what);
    } else {
        const int kernels[] = {FY_CPU_Q8_PORTABLE, FY_CPU_Q8_AVX2, FY_CPU_Q8_BEST};
        for (int kk = 0; kk < 3; kk++) {
            fy_backend *be = make_backend("cpu", kernels[kk]);
            memcpy(y, y0, (size_t)Nmax * ldy * sizeof *y);
            fy_test_linear(be, fmt, Nmax, in, out, x, ldx, w16, NULL, y, ldy, acc);
            CHECK(!memcmp(y, ref, (size_t)Nmax * ldy * sizeof *y), "%s kernel %d: not linear_rows' bits", what,
                  kernels[kk]);
            fy_backend_destroy(be);
        }
        for (int n = 0; n < Nmax; n += 1 + n / 4) { /* row n alone */
            memcpy(y, y0 + (size_t)n * ldy, (size_t)ldy * sizeof *y);
            fy_test_linear(cpu, fmt, 1, in, out, x + (size_t)n * ldx, ldx, w16, NULL, y, ldy, acc);
            CHECK(!memcmp(y, ref + (size_t)n * ldy, (size_t)out * sizeof *y), "%s: row %d alone differs", what, n);
        }
    }
    /* the case means something: finite outputs apart from the special rows */
    int finite = 1;
    for (int n = 0; n < Nmax; n++)
        for (int o = special ? 5 : 0; o < out; o++) finite &= isfinite(ref[(size_t)n * ldy + o]);
    CHECK(finite, "%s: non-finite outputs", what);
    fy_backend_destroy(cpu);
    free(x), free(wf), free(w16), free(y0), free(ref), free(y);
}

static void test_linear(fy_backend *other) {
    static const int shapes[][3] = {/* N, in, out */
                                    {1, 64, 33},  {2, 38, 7},  {3, 16, 5},    {7, 250, 19}, {64, 1000, 33},
                                    {1, 2, 1},    {5, 18, 3},  {1, 4096, 64}, {2, 0, 3},    {64, 96, 130},
                                    {4, 30, 2}};
    for (int fmt = 0; fmt < 2; fmt++)
        for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
            for (int acc = 0; acc < 2; acc++)
                h16_case(other, fmt, shapes[s][0], shapes[s][1], shapes[s][2], acc, (int)(s + acc) % 2);
}

/* Bad calls: an odd `in` or an unknown format is refused with a message. */
static void test_errors(fy_backend *be) {
    fy_buf b;
    fy_err e = {{0}};
    if (fy_be_alloc(be, &b, 64, &e)) exit(1);
    be->ops->linear_h16(be, FY_H16_F16, 1, 5, 1, fy_at(&b, 0), 5, fy_at(&b, 0), fy_at(&b, 32), 1, 0);
    CHECK(fy_be_sync(be, &e) != 0 && strstr(e.msg, "even"), "linear_h16 in=5 accepted: %s", e.msg);
    be->ops->linear_h16(be, 7, 1, 4, 1, fy_at(&b, 0), 4, fy_at(&b, 0), fy_at(&b, 32), 1, 0);
    CHECK(fy_be_sync(be, &e) != 0 && strstr(e.msg, "format"), "linear_h16 format 7 accepted: %s", e.msg);
    be->ops->linear_h16(be, FY_H16_F16, 1, 64, 4, fy_at(&b, 0), 64, fy_at(&b, 40), fy_at(&b, 0), 4, 0);
    CHECK(fy_be_sync(be, &e) != 0, "linear_h16 with W past its buffer accepted");
    fy_be_free(be, &b);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "opencl")) {
#ifndef FERRY_HAVE_OPENCL
        printf("test_h16: SKIP: this ferry was built without OpenCL\n");
        return 77;
#else
        fy_backend *ocl = NULL;
        fy_err e;
        if (fy_backend_create("opencl", &ocl, &e)) {
            printf("test_h16: SKIP: no OpenCL device: %s\n", e.msg);
            return 77;
        }
        test_linear(ocl);
        test_errors(ocl);
        fy_backend_destroy(ocl);
        return fy_test_finish("test_h16 opencl");
#endif
    }
    test_to_f32();
    test_to_bf16();
    test_to_f16();
    test_to_f16_n();
    test_linear(NULL);
    fy_backend *cpu = make_backend("cpu", FY_CPU_Q8_BEST);
    test_errors(cpu);
    fy_backend_destroy(cpu);
    return fy_test_finish("test_h16");
}
