/* dequant_rows (backend.h): Q8_0, Q4_0, f16 and bf16 weights back to f32,
 * against values decoded here on the host from the encoders' outputs
 * (fy_q8_quantize, fy_q4_quantize, fy_h16_convert): scale times the int8
 * quant or the Q4_0 code - 8 read from GGUF's nibble order, 16 bits widened
 * by core/half.h; all rows or rows picked by idx, into a strided dst whose
 * gaps stay untouched; a bad idx and bad sizes are sticky errors.
 * `test_dequant opencl` (ctest test_dequant_opencl) runs the same on
 * OpenCL: the same bits, exit 77 without a device. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/half.h"
#include "testutil.h"

enum { ROWS = 37, IN = 96, LDD = 101, N = 9 };

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* xorshift64*, in [-2, 2) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return -2.0f + 4.0f * (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0);
}

/* The host's reading of the encoded matrix: ref [ROWS, IN]; the encoded
 * bytes go to q (zero-padded to whole floats), scales to s. */
static void encode(int fmt, const float *w, float *q, float *s, float *ref) {
    if (fmt == FY_WF_Q8_0) {
        int8_t *c = (int8_t *)q;
        fy_q8_quantize(w, ROWS, IN, IN, c, s);
        for (int i = 0; i < ROWS * IN; i++) ref[i] = s[i / 32] * (float)c[i];
    } else if (fmt == FY_WF_Q4_0) {
        uint8_t *c = (uint8_t *)q;
        fy_q4_quantize(w, ROWS, IN, IN, c, s);
        for (int i = 0; i < ROWS * IN; i++) { /* block i/32: 16 bytes, weight t in byte t%16, high nibble t>=16 */
            const int b = i / 32, t = i % 32, byte = c[b * 16 + t % 16];
            ref[i] = s[b] * (float)((t < 16 ? byte & 15 : byte >> 4) - 8);
        }
    } else {
        uint16_t *h = (uint16_t *)q;
        fy_h16_convert(w, (size_t)ROWS * IN, fmt, h);
        for (int i = 0; i < ROWS * IN; i++) ref[i] = fmt == FY_WF_BF16 ? fy_bf16_to_f32(h[i]) : fy_f16_to_f32(h[i]);
    }
}

static void one_format(fy_backend *be, int fmt, const char *name) {
    float *w = malloc(sizeof(float) * ROWS * IN), *q = calloc(ROWS * IN, sizeof(float)),
          *s = calloc(ROWS * IN / 32, sizeof(float)), *ref = malloc(sizeof(float) * ROWS * IN),
          *out = malloc(sizeof(float) * ROWS * LDD);
    if (!w || !q || !s || !ref || !out) abort();
    for (int i = 0; i < ROWS * IN; i++) w[i] = frand();
    w[5] = 0.0f, w[IN + 3] = -0.0f; /* zeros and one all-zero block */
    for (int i = 0; i < 32; i++) w[2 * IN + 32 + i] = 0.0f;
    encode(fmt, w, q, s, ref);
    const int32_t idx[N] = {3, 0, 36, 3, 17, 1, 35, 2, 36};
    fy_buf bq, bs, bi, bd;
    fy_err e;
    CHECK(!fy_be_alloc(be, &bq, ROWS * IN, &e) && !fy_be_alloc(be, &bs, ROWS * IN / 32, &e) &&
              !fy_be_alloc(be, &bi, N, &e) && !fy_be_alloc(be, &bd, (size_t)ROWS * LDD, &e),
          "%s: alloc: %s", name, e.msg);
    be->ops->upload(be, fy_at(&bq, 0), q, ROWS * IN);
    be->ops->upload(be, fy_at(&bs, 0), s, ROWS * IN / 32);
    be->ops->upload(be, fy_at(&bi, 0), idx, N);
    for (int i = 0; i < ROWS * LDD; i++) out[i] = 1234.5f;
    be->ops->upload(be, fy_at(&bd, 0), out, (size_t)ROWS * LDD);

    /* every row, into dst rows of stride LDD: the gaps keep 1234.5 */
    be->ops->dequant_rows(be, fmt, ROWS, IN, fy_at(&bq, 0), fy_at(&bs, 0), ROWS, FY_NULL_REF, fy_at(&bd, 0), LDD);
    be->ops->download(be, out, fy_at(&bd, 0), (size_t)ROWS * LDD);
    CHECK(!fy_be_sync(be, &e), "%s: %s", name, e.msg);
    int bad = 0;
    for (int r = 0; r < ROWS; r++) {
        bad += memcmp(out + (size_t)r * LDD, ref + (size_t)r * IN, IN * sizeof(float)) != 0;
        for (int j = IN; j < LDD && r + 1 < ROWS; j++) bad += out[(size_t)r * LDD + j] != 1234.5f;
    }
    CHECK(!bad, "%s: all rows: %d rows differ from the host's decoding", name, bad);

    /* rows by index (repeats allowed), packed */
    be->ops->dequant_rows(be, fmt, ROWS, IN, fy_at(&bq, 0), fy_at(&bs, 0), N, fy_at(&bi, 0), fy_at(&bd, 0), IN);
    be->ops->download(be, out, fy_at(&bd, 0), (size_t)N * IN);
    CHECK(!fy_be_sync(be, &e), "%s: %s", name, e.msg);
    bad = 0;
    for (int i = 0; i < N; i++) bad += memcmp(out + (size_t)i * IN, ref + (size_t)idx[i] * IN, IN * sizeof(float)) != 0;
    CHECK(!bad, "%s: by idx: %d rows differ", name, bad);

    /* an index past the rows, and an n past them without idx: sticky errors */
    const int32_t far[1] = {ROWS};
    be->ops->upload(be, fy_at(&bi, 0), far, 1);
    be->ops->dequant_rows(be, fmt, ROWS, IN, fy_at(&bq, 0), fy_at(&bs, 0), 1, fy_at(&bi, 0), fy_at(&bd, 0), IN);
    CHECK(fy_be_sync(be, &e) != 0, "%s: idx = rows accepted", name);
    be->ops->dequant_rows(be, fmt, ROWS, IN, fy_at(&bq, 0), fy_at(&bs, 0), ROWS + 1, FY_NULL_REF, fy_at(&bd, 0),
                          IN);
    CHECK(fy_be_sync(be, &e) != 0, "%s: n > rows without idx accepted", name);
    be->ops->dequant_rows(be, fmt, ROWS, IN + 1, fy_at(&bq, 0), fy_at(&bs, 0), 1, FY_NULL_REF, fy_at(&bd, 0), IN);
    CHECK(fy_be_sync(be, &e) != 0, "%s: odd in accepted", name);
    fy_be_free(be, &bq), fy_be_free(be, &bs), fy_be_free(be, &bi), fy_be_free(be, &bd);
    free(w), free(q), free(s), free(ref), free(out);
}

static void run(fy_backend *be) {
    CHECK(be->ops->dequant_rows != NULL, "backend %s has no dequant_rows", be->ops->name);
    if (!be->ops->dequant_rows) return;
    one_format(be, FY_WF_Q8_0, "q8_0");
    one_format(be, FY_WF_Q4_0, "q4_0");
    one_format(be, FY_WF_F16, "f16");
    one_format(be, FY_WF_BF16, "bf16");
    fy_err e;
    be->ops->dequant_rows(be, 9, 1, 32, FY_NULL_REF, FY_NULL_REF, 1, FY_NULL_REF, FY_NULL_REF, 32);
    CHECK(fy_be_sync(be, &e) != 0, "unknown format accepted");
}

int main(int argc, char **argv) {
    const int ocl = argc > 1 && !strcmp(argv[1], "opencl");
#ifndef FERRY_HAVE_OPENCL
    if (ocl) {
        printf("test_dequant: SKIP: this ferry was built without OpenCL\n");
        return 77;
    }
#endif
    fy_backend *be = NULL;
    fy_err e;
    if (fy_backend_create(ocl ? "opencl" : "cpu", &be, &e)) {
        printf("test_dequant: %s: %s\n", ocl ? "SKIP: no OpenCL device" : "FAIL: no cpu backend", e.msg);
        return ocl ? 77 : 1;
    }
    run(be);
    fy_backend_destroy(be);
    return fy_test_finish(ocl ? "test_dequant opencl" : "test_dequant");
}
