/* Backend selection and the sticky-error helper shared by all backends. */
#include "backend/backend.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int fy_backend_chaos_create(const char *spec, fy_backend **out, fy_err *err);
#ifdef FERRY_HAVE_OPENCL
int fy_backend_opencl_create(const char *spec, fy_backend **out, fy_err *err);
/* Lists OpenCL platforms and devices as "opencl:P:D  ..." lines. */
int fy_opencl_list_devices(FILE *out, fy_err *err);
#endif
#ifdef FERRY_HAVE_CUDA
int fy_backend_cuda_create(const char *spec, fy_backend **out, fy_err *err);
#endif

/* What this build can create, for error messages. */
static const char *available_backends(void) {
    return "cpu, chaos:cpu"
#ifdef FERRY_HAVE_OPENCL
           ", opencl, opencl:P:D"
#endif
#ifdef FERRY_HAVE_CUDA
           ", cuda"
#endif
        ;
}

int fy_backend_create(const char *spec, fy_backend **out, fy_err *err) {
    if (!out) return fy_fail(err, "fy_backend_create: no output pointer");
    *out = NULL;
    if (!spec || !*spec) spec = "cpu";

    if (strcmp(spec, "cpu") == 0) return fy_backend_cpu_create(out, err);
    /* A wrapper that checks (ABFT) and corrupts GEMMs: DESIGN §5, train/guard.h. */
    if (strcmp(spec, "chaos") == 0 || strncmp(spec, "chaos:", 6) == 0)
        return fy_backend_chaos_create(spec, out, err);

    if (strcmp(spec, "opencl") == 0 || strncmp(spec, "opencl:", 7) == 0) {
#ifdef FERRY_HAVE_OPENCL
        return fy_backend_opencl_create(spec, out, err);
#else
        return fy_fail(err,
                       "backend 'opencl' is not built into this ferry (no OpenCL headers/library "
                       "at configure time: apt-get install ocl-icd-opencl-dev opencl-headers, "
                       "then re-run cmake); available: %s",
                       available_backends());
#endif
    }
    if (strcmp(spec, "cuda") == 0 || strncmp(spec, "cuda:", 5) == 0) {
#ifdef FERRY_HAVE_CUDA
        return fy_backend_cuda_create(spec, out, err);
#else
        return fy_fail(err,
                       "backend 'cuda' is not built into this ferry (no CUDA compiler at "
                       "configure time: install the CUDA toolkit (nvcc), then re-run cmake); "
                       "available: %s",
                       available_backends());
#endif
    }
    return fy_fail(err, "unknown backend '%s' (available: %s)", spec, available_backends());
}

int fy_backend_list_devices(FILE *out, fy_err *err) {
    fprintf(out, "cpu           host CPU, OpenMP + OpenBLAS\n");
    fprintf(out, "chaos:cpu     cpu wrapped in the fault-injection / ABFT-checking backend\n");
#ifdef FERRY_HAVE_OPENCL
    if (fy_opencl_list_devices(out, err)) return -1;
#else
    fprintf(out, "opencl        not built (no OpenCL headers/library at configure time)\n");
#endif
#ifdef FERRY_HAVE_CUDA
    fprintf(out, "cuda          built\n");
#else
    fprintf(out, "cuda          not built (no CUDA compiler at configure time)\n");
#endif
    return 0;
}

void fy_backend_destroy(fy_backend *be) {
    if (!be) return;
    be->ops->destroy(be);
}

void fy_be_set_error(fy_backend *be, const char *fmt, ...) {
    if (!be) return;
    if (be->failed) return; /* the first error wins */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err_msg, sizeof be->err_msg, fmt, ap);
    va_end(ap);
    be->failed = 1;
}

void fy_q8_quantize(const float *w, int rows, int in, int ldw, int8_t *q, float *s) {
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < in / FY_Q8_BLOCK; b++) {
            const float *x = w + (size_t)r * ldw + (size_t)b * FY_Q8_BLOCK;
            int8_t *o = q + (size_t)r * in + (size_t)b * FY_Q8_BLOCK;
            float amax = 0.0f;
            for (int i = 0; i < FY_Q8_BLOCK; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
            float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
            s[(size_t)r * (in / FY_Q8_BLOCK) + b] = d;
            /* Adding and subtracting 1.5 * 2^23 rounds half to even (the
             * default rounding mode) without a libm call: the CPU kernel
             * quantizes every input row this way, once per linear. The
             * clamp guards against w * id rounding past 127. */
            for (int i = 0; i < FY_Q8_BLOCK; i++) {
                float v = (x[i] * id + 12582912.0f) - 12582912.0f;
                o[i] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
            }
        }
}

/* ---- fault checking: the optional fault ops (backend.h) ---- */

int fy_be_fault_checks(const fy_backend *be) { return be && be->ops->fault_begin_step != NULL; }

int fy_be_fault_begin_step(fy_backend *be, int step, double fraction, int corrupt_index) {
    if (!fy_be_fault_checks(be)) return 0;
    be->ops->fault_begin_step(be, step, fraction, corrupt_index);
    return 1;
}

void fy_be_fault_phase(fy_backend *be, const char *phase) {
    if (be && be->ops->fault_phase) be->ops->fault_phase(be, phase);
}

int fy_be_fault_take(fy_backend *be, fy_be_fault *f) {
    return be && be->ops->fault_take ? be->ops->fault_take(be, f) : 0;
}

void fy_be_fault_counts(const fy_backend *be, long *checked, long *faults) {
    *checked = *faults = 0;
    if (be && be->ops->fault_counts) be->ops->fault_counts(be, checked, faults);
}
