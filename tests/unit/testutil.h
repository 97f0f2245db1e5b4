/* Minimal test helpers: CHECK records a failure and keeps going; main()
 * returns fy_test_finish(), which prints "N passed, M failed". */
#ifndef FY_TESTUTIL_H
#define FY_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

#include "backend/backend.h"
#include "model/config.h"

extern int fy_test_pass, fy_test_fail;

#define CHECK(cond, ...) do { \
    if (cond) { fy_test_pass++; } \
    else { fy_test_fail++; fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

/* Relative error |a-b| / max(|b|, floor). */
double fy_relerr(double a, double b, double floor_);

/* A scratch directory for this test (created, under FERRY_TEST_TMP or /tmp). */
const char *fy_test_tmpdir(const char *test_name);

int fy_test_finish(const char *name);

/* The small DeepSeek-V3 of the gradient tests (test_model_grad, test_lora,
 * test_masked_loss): the built-in tiny config with vocabulary V, shrunk to
 * hidden 24, 2 layers (1 dense + 1 MoE of 6 experts, top 2, 1 shared),
 * 3 heads, q_lora 10, kv_lora 9, 1 MTP module, initializer_range 0.2 (weights
 * large enough that gradients stand well above fp32 noise). Exits on error. */
fy_config fy_test_grad_config(int V);

/* y (=|+=) x W^T through be, host in and out: linear_h16 on w16 [out, in]
 * (fmt FY_H16_F16 or FY_H16_BF16) or linear_rows on wf [out, in] (fmt < 0).
 * w16 must have room for one more element when out * in is odd (it travels
 * as whole floats). CHECKs the backend's sync; exits when it cannot allocate.
 * (test_h16, test_gemm.) */
void fy_test_linear(fy_backend *be, int fmt, int N, int in, int out, const float *x, int ldx, const uint16_t *w16,
                    const float *wf, float *y, int ldy, int acc);

#endif
