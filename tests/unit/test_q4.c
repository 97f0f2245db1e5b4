/* Q4_0 inference weights on the CPU (backend.h linear_q4): fy_q4_quantize
 * against a transcription of ggml's quantize_row_q4_0_ref and against the
 * GGUF writer's Q4_0 rows; linear_q4 against linear_q8 on the expanded
 * codes (n - 8, the same scales) bit for bit, on every kernel choice
 * (fy_backend_opts.cpu_q8), against an exact-integer oracle, a row alone
 * against the same row inside a batch, and 1 thread against 2. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/half.h"
#include "interop/gguf_quant.h"
#include "testutil.h"

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static float frand(float lo, float hi) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return lo + (hi - lo) * (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0);
}
static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    if (!p) abort();
    return p;
}

/* The cpu backend with Q8_0/Q4_0 kernel k (FY_CPU_Q8_*); exits on error. */
static fy_backend *cpu_with(int k) {
    fy_backend_opts o = {0};
    o.cpu_q8 = k;
    fy_backend *be;
    fy_err e;
    if (fy_backend_create_opts("cpu", &o, &be, &e)) {
        fprintf(stderr, "cpu backend with kernel %d: %s\n", k, e.msg);
        exit(2);
    }
    return be;
}

/* ggml-quants.c quantize_row_q4_0_ref for one block, the scale kept as the
 * float before its rounding to half (the caller compares that). */
static float ggml_q4_0_block(const float *x, uint8_t qs[16]) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) amax = fabsf(x[j]), max = x[j];
    const float d = max / -8, id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < 16; j++) {
        const float x0 = x[j] * id, x1 = x[16 + j] * id;
        const uint8_t xi0 = (uint8_t)(int8_t)(x0 + 8.5f) < 15 ? (uint8_t)(int8_t)(x0 + 8.5f) : 15;
        const uint8_t xi1 = (uint8_t)(int8_t)(x1 + 8.5f) < 15 ? (uint8_t)(int8_t)(x1 + 8.5f) : 15;
        qs[j] = xi0 | (uint8_t)(xi1 << 4);
    }
    return d;
}

/* Codes as ggml's, the scale the half nearest ggml's float scale (ties:
 * either neighbour is allowed here, the GGUF comparison pins the bits),
 * and the GGUF Q4_0 row (f16 scale, 16 code bytes a block) the same bits. */
static void test_q4_quantize(void) {
    enum { R = 3, IN = 160, LD = 171, NB = IN / 32 };
    float *w = falloc((size_t)R * LD), s[R * NB];
    uint8_t q[R * IN / 2], g[NB * 18];
    for (int i = 0; i < R * LD; i++) w[i] = frand(-2, 2);
    for (int i = 0; i < 32; i++) w[LD + 32 + i] = 0.0f; /* row 1, block 1: zeros */
    w[2 * LD + 70] = -9.0f;                               /* row 2, block 2: a negative outlier */
    w[2 * LD + 100] = 1e-30f;                             /* row 2, block 3: a subnormal-half scale */
    for (int i = 96; i < 128; i++) w[2 * LD + i] = i == 100 ? 1e-30f : 0.0f;
    w[2 * LD + 130] = 70000.0f * 8; /* row 2, block 4: the scale overflows half */
    fy_q4_quantize(w, R, IN, LD, q, s);
    int codes = 1, scales = 1, gguf = 1;
    for (int r = 0; r < R; r++) {
        fy_gguf_encode_row(FY_GGUF_Q4_0, w + (size_t)r * LD, IN, g);
        for (int b = 0; b < NB; b++) {
            uint8_t ref[16];
            float d = ggml_q4_0_block(w + (size_t)r * LD + b * 32, ref), sb = s[r * NB + b];
            codes &= !memcmp(ref, q + (r * NB + b) * 16, 16);
            uint16_t h = fy_f32_to_f16(sb);
            float ulp = fabsf(d) < 6.1035156e-05f ? 5.9604645e-08f : ldexpf(1.0f, ilogbf(d) - 10);
            scales &= isinf(sb) ? fabsf(d) >= 65520.0f : fabsf(sb - d) <= 0.5f * ulp;
            gguf &= (uint16_t)(g[b * 18] | g[b * 18 + 1] << 8) == h;
            gguf &= !memcmp(g + b * 18 + 2, q + (r * NB + b) * 16, 16);
        }
    }
    CHECK(codes, "fy_q4_quantize: codes differ from ggml's quantize_row_q4_0_ref");
    CHECK(scales, "fy_q4_quantize: a scale is not the half nearest ggml's d = max / -8");
    CHECK(gguf, "fy_q4_quantize and the GGUF writer's Q4_0 rows differ");
    CHECK(s[NB + 1] == 0.0f, "fy_q4_quantize: the all-zero block has scale %g", s[NB + 1]);
    CHECK(isinf(s[2 * NB + 4]), "fy_q4_quantize: a scale past half's range is %g, not infinity", s[2 * NB + 4]);
    free(w);
}

/* Runs op (4: linear_q4, 8: linear_q8) on backend be with y starting as
 * y0; the result into out. */
static void run_linear(fy_backend *be, int op, int N, int in, int out, const float *x, int ldx, const void *q,
                       const float *s, const float *y0, int ldy, int acc, float *res) {
    size_t nq = (size_t)out * in / (op == 4 ? 8 : 4), ny = (size_t)N * ldy;
    fy_buf bx, bq, bs, by;
    fy_err e = {{0}};
    if (fy_be_alloc(be, &bx, (size_t)N * ldx, &e) || fy_be_alloc(be, &bq, nq, &e) ||
        fy_be_alloc(be, &bs, (size_t)out * in / 32, &e) || fy_be_alloc(be, &by, ny, &e)) {
        fprintf(stderr, "alloc: %s\n", e.msg);
        exit(2);
    }
    be->ops->upload(be, fy_at(&bx, 0), x, (size_t)N * ldx);
    be->ops->upload(be, fy_at(&bq, 0), q, nq);
    be->ops->upload(be, fy_at(&bs, 0), s, (size_t)out * in / 32);
    be->ops->upload(be, fy_at(&by, 0), y0, ny);
    if (op == 4)
        be->ops->linear_q4(be, N, in, out, fy_at(&bx, 0), ldx, fy_at(&bq, 0), fy_at(&bs, 0), fy_at(&by, 0), ldy, acc);
    else
        be->ops->linear_q8(be, N, in, out, fy_at(&bx, 0), ldx, fy_at(&bq, 0), fy_at(&bs, 0), fy_at(&by, 0), ldy, acc);
    be->ops->download(be, res, fy_at(&by, 0), ny);
    CHECK(fy_be_sync(be, &e) == 0, "linear_q%d: backend error: %s", op, e.msg);
    fy_be_free(be, &bx), fy_be_free(be, &bq), fy_be_free(be, &bs), fy_be_free(be, &by);
}

/* The op's definition in exact integers and double: x's rows quantized as
 * Q8_0, sum_b ws sx sum (n - 8) xq. */
static void oracle(int N, int in, int out, const float *x, int ldx, const int8_t *w8, const float *s,
                   const float *y0, int ldy, int acc, double *want) {
    int8_t *xq = malloc(in);
    float *sx = falloc(in / 32);
    for (int n = 0; n < N; n++) {
        fy_q8_quantize(x + (size_t)n * ldx, 1, in, in, xq, sx);
        for (int o = 0; o < ldy; o++) {
            double a = acc || o >= out ? y0[(size_t)n * ldy + o] : 0;
            for (int b = 0; o < out && b < in / 32; b++) {
                long dot = 0;
                for (int i = b * 32; i < b * 32 + 32; i++) dot += w8[(size_t)o * in + i] * xq[i];
                a += (double)s[(size_t)o * (in / 32) + b] * sx[b] * (double)dot;
            }
            want[(size_t)n * ldy + o] = a;
        }
    }
    free(xq), free(sx);
}

/* One shape: linear_q4 on kernels portable, avx2 and best, linear_q8 on
 * the expanded codes, all the same bits; close to the oracle; each row
 * alone as in the batch; one thread as two. */
static void q4_case(int N, int in, int out, int ldx, int ldy, int acc) {
    const size_t ny = (size_t)N * ldy;
    float *w = falloc((size_t)out * in), *x = falloc((size_t)N * ldx), *y0 = falloc(ny);
    float *s = falloc((size_t)out * in / 32), *ref = falloc(ny), *got = falloc(ny);
    uint8_t *q4 = malloc((size_t)out * in / 2 + 4);
    int8_t *q8 = malloc((size_t)out * in + 4);
    double *want = calloc(ny, sizeof *want);
    for (size_t i = 0; i < (size_t)out * in; i++) w[i] = frand(-1, 1);
    for (size_t i = 0; i < (size_t)N * ldx; i++) x[i] = frand(-1, 1);
    for (size_t i = 0; i < ny; i++) y0[i] = frand(-1, 1);
    if (in >= 64)
        for (int i = 32; i < 64; i++) x[i] = 0.0f; /* row 0, block 1: zeros */
    fy_q4_quantize(w, out, in, in, q4, s);
    for (size_t i = 0; i < (size_t)out * in; i++) { /* weight j of a block: byte j % 16, high nibble if j >= 16 */
        size_t blk = i / 32, j = i % 32;
        uint8_t byte = q4[blk * 16 + j % 16];
        q8[i] = (int8_t)((j < 16 ? byte & 15 : byte >> 4) - 8);
    }
    char what[96];
    snprintf(what, sizeof what, "linear_q4 N=%d in=%d out=%d ldx=%d ldy=%d acc=%d", N, in, out, ldx, ldy, acc);
    const int kinds[] = {FY_CPU_Q8_PORTABLE, FY_CPU_Q8_AVX2, FY_CPU_Q8_BEST};
    const char *names[] = {"portable", "avx2", "best"};
    for (int k = 0; k < 3; k++) {
        fy_backend *be = cpu_with(kinds[k]);
        run_linear(be, 8, N, in, out, x, ldx, q8, s, y0, ldy, acc, k ? got : ref);
        if (k) CHECK(!memcmp(ref, got, ny * 4), "%s: linear_q8's %s kernel differs from portable", what, names[k]);
        run_linear(be, 4, N, in, out, x, ldx, q4, s, y0, ldy, acc, got);
        CHECK(!memcmp(ref, got, ny * 4), "%s, %s kernel: not linear_q8's bits on the codes - 8", what, names[k]);
        for (int op = 4; kinds[k] != FY_CPU_Q8_PORTABLE && op <= 8; op += 4) {
            const void *q = op == 4 ? (const void *)q4 : (const void *)q8;
            int alone = 1; /* row n by itself (decode's path): the bits it has in the batch */
            float *row = falloc(ldy);
            for (int n = 0; n < N; n++) {
                run_linear(be, op, 1, in, out, x + (size_t)n * ldx, ldx, q, s, y0 + (size_t)n * ldy, ldy, acc, row);
                alone &= !memcmp(row, ref + (size_t)n * ldy, (size_t)ldy * 4);
            }
            free(row);
            CHECK(alone, "%s, %s kernel, linear_q%d: a row alone differs from the same row in the batch", what,
                  names[k], op);
            int th = omp_get_max_threads();
            for (int nt = 1; nt <= 2; nt++) { /* each thread's share of the chunks, groups and spans */
                omp_set_num_threads(nt);
                run_linear(be, op, N, in, out, x, ldx, q, s, y0, ldy, acc, got);
                CHECK(!memcmp(ref, got, ny * 4), "%s, %s kernel, linear_q%d: %d thread(s) differ", what, names[k],
                      op, nt);
            }
            omp_set_num_threads(th);
        }
        fy_backend_destroy(be);
    }
    oracle(N, in, out, x, ldx, q8, s, y0, ldy, acc, want);
    double worst = 0;
    for (size_t i = 0; i < ny; i++) worst = fmax(worst, fy_relerr(ref[i], want[i], 1.0));
    CHECK(worst <= 2e-5, "%s: max rel err %.3g against the exact oracle", what, worst);
    free(w), free(x), free(y0), free(s), free(ref), free(got), free(q4), free(q8), free(want);
}

int main(void) {
    test_q4_quantize();
    const int Ns[] = {1, 2, 3, 7, 64};
    for (int i = 0; i < 5; i++) {
        int N = Ns[i];
        q4_case(N, 96, 13, 100, 15, N & 1); /* 3 blocks, odd out, strides, columns past out untouched */
        q4_case(N, 128, 6, 128, 6, !(N & 1)); /* 4 blocks, one chunk */
        q4_case(N, 160, 21, 160, 21, 1);      /* 5 blocks */
    }
    q4_case(1, 32, 1, 32, 1, 0);
    for (int N = 1; N <= 3; N++) {
        q4_case(N, 32, 13, 32, 13, N & 1); /* one block: the tail alone, in every tile */
        q4_case(N, 64, 9, 64, 9, 0);       /* one pair of blocks */
    }
    q4_case(1, 512, 301, 512, 301, 0); /* threaded (out * in >= 65536), odd out */
    q4_case(9, 480, 37, 483, 40, 1);   /* threaded, 15 blocks */
    q4_case(16, 512, 64, 512, 64, 0);  /* threaded, whole tiles only */
    /* Prefill's cache blocking (cpu_q8.h fy_cpu_q8_blocked): input rows in
     * groups of ~96 KiB (in = 1024: 84 rows for Q8_0, 36 for Q4_0; in = 256:
     * 336 and 144), weight rows in spans of ~16 KiB (in = 256: 56 rows for
     * Q8_0, 96 for Q4_0), both cut wherever the shape puts them: N around
     * and across the boundaries, out across spans and the threads' shares,
     * both modes; every N against the portable kernel, each row alone, 1
     * and 2 threads. */
    const int Nb[] = {1, 3, 17, 35, 36, 37, 83, 84, 85, 95, 96, 97, 513};
    for (int i = 0; i < 13; i++) q4_case(Nb[i], 1024, 40, 1030, 41, i & 1);
    q4_case(97, 256, 203, 256, 203, 1);
    q4_case(513, 256, 203, 260, 205, 0);
    q4_case(341, 288, 131, 288, 131, 1); /* 9 blocks: the odd one in every tile */
    /* in not a multiple of 32: a recorded error */
    fy_backend *be = cpu_with(FY_CPU_Q8_BEST);
    fy_buf b;
    fy_err e = {{0}};
    if (fy_be_alloc(be, &b, 64, &e)) return 2;
    be->ops->linear_q4(be, 1, 40, 1, fy_at(&b, 0), 40, fy_at(&b, 0), fy_at(&b, 0), fy_at(&b, 0), 1, 0);
    CHECK(fy_be_sync(be, &e) != 0 && strstr(e.msg, "multiple of 32"), "linear_q4 in=40 accepted");
    fy_be_free(be, &b);
    fy_backend_destroy(be);
    return fy_test_finish("test_q4");
}
