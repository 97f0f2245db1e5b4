/* Scalar conversions the Hugging Face converters use (ckpt/safetensors.h):
 * f32 -> f16 rounds to the nearest f16, ties to even (checked against the
 * neighbouring f16 values, from the format's definition), overflows to
 * infinity; f16 -> f32 -> f16 is the identity; F8_E4M3 decodes as the
 * OCP "E4M3FN" format defines it. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ckpt/safetensors.h"
#include "testutil.h"

/* r is the correctly rounded f16 of x > 0 (finite, below 65504). */
static int nearest_even(float x, uint16_t r) {
    double v = fy_f16_to_f32(r), e = fabs((double)x - v);
    for (int d = -1; d <= 1; d += 2) {
        int n = (int)r + d;
        if (n < 0 || n > 0x7bff) continue;
        double en = fabs((double)x - fy_f16_to_f32((uint16_t)n));
        if (en < e || (en == e && (r & 1))) return 0;
    }
    return 1;
}

static uint32_t rng = 12345;
static uint32_t next(void) { return rng = rng * 1664525u + 1013904223u; }

static void test_f16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue;  /* NaN */
        if (fy_f32_to_f16(fy_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK(bad == 0, "%d f16 values do not survive f16 -> f32 -> f16", bad);
    bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = next() % 0x477fe000u;   /* positive floats below 65504 */
        float x;
        memcpy(&x, &u, 4);
        uint16_t r = fy_f32_to_f16(x), rn = fy_f32_to_f16(-x);
        if (!nearest_even(x, r) || rn != (r | 0x8000u)) bad++;
    }
    CHECK(bad == 0, "%d random floats not rounded to the nearest f16 (ties to even)", bad);
    /* ties: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> 1 (even);
     * 1 + 3 * 2^-11 -> 1 + 2^-9 (even); 2^-25 (half the smallest) -> 0 */
    CHECK(fy_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "tie to even down");
    CHECK(fy_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "tie to even up");
    CHECK(fy_f32_to_f16(0x1p-25f) == 0 && fy_f32_to_f16(0x1.000002p-25f) == 1, "smallest subnormal rounding");
    CHECK(fy_f32_to_f16(65519.0f) == 0x7bff && fy_f32_to_f16(65520.0f) == 0x7c00, "overflow at 65520");
    CHECK(fy_f32_to_f16(INFINITY) == 0x7c00 && fy_f32_to_f16(-INFINITY) == 0xfc00, "infinities");
    uint16_t n = fy_f32_to_f16(NAN);
    CHECK((n & 0x7c00u) == 0x7c00u && (n & 0x3ffu), "NaN stays NaN (0x%04x)", n);
}

static void test_f8(void) {
    CHECK(fy_f8e4m3_to_f32(0x00) == 0 && signbit(fy_f8e4m3_to_f32(0x80)), "zeros");
    CHECK(fy_f8e4m3_to_f32(0x01) == 0x1p-9f && fy_f8e4m3_to_f32(0x07) == 7 * 0x1p-9f, "subnormals");
    CHECK(fy_f8e4m3_to_f32(0x08) == 0x1p-6f, "smallest normal");
    CHECK(fy_f8e4m3_to_f32(0x38) == 1.0f && fy_f8e4m3_to_f32(0x3c) == 1.5f && fy_f8e4m3_to_f32(0xb8) == -1.0f, "one");
    CHECK(fy_f8e4m3_to_f32(0x7e) == 448.0f && fy_f8e4m3_to_f32(0xfe) == -448.0f, "largest (448)");
    CHECK(isnan(fy_f8e4m3_to_f32(0x7f)) && isnan(fy_f8e4m3_to_f32(0xff)), "NaN");
    CHECK(fy_f8e4m3_to_f32(0x78) == 256.0f, "no infinity: 0x78 is 256");
    /* monotone over the positive codes */
    int mono = 1;
    for (int b = 1; b < 0x7f; b++) mono &= fy_f8e4m3_to_f32((uint8_t)b) > fy_f8e4m3_to_f32((uint8_t)(b - 1));
    CHECK(mono, "positive codes increase");
}

int main(void) {
    test_f16();
    test_f8();
    return fy_test_finish("test_safetensors_conv");
}
