/* Backend selection (fy_backend_create_opts), the device list, and the
 * helpers every backend shares: the sticky error, the checked buffer
 * reference, Q8_0 quantization. Argument checks live in backend_check.c. */
#include "backend/backend.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Each backend's constructor; the common checks are installed afterwards. */
int fy_backend_cpu_new(const fy_backend_opts *opts, fy_backend **out, fy_err *err);
int fy_backend_chaos_create(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err);
#ifdef FERRY_HAVE_OPENCL
int fy_backend_opencl_create(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err);
/* Lists OpenCL platforms and devices as "opencl:P:D  ..." lines. */
int fy_opencl_list_devices(FILE *out, fy_err *err);
#endif
/* backend_check.c: points be->ops at the checking layer. */
void fy_backend_install_checks(fy_backend *be);

/* What this build can create, for error messages. */
static const char *available_backends(void) {
    return "cpu, chaos:cpu"
#ifdef FERRY_HAVE_OPENCL
           ", opencl, opencl:P:D"
#endif
        ;
}

int fy_backend_create_unchecked(const char *spec, const fy_backend_opts *opts, fy_backend **out,
                                fy_err *err) {
    static const fy_backend_opts defaults;
    if (!out) return fy_fail(err, "fy_backend_create: no output pointer");
    *out = NULL;
    if (!spec || !*spec) spec = "cpu";
    if (!opts) opts = &defaults;

    if (strcmp(spec, "cpu") == 0) return fy_backend_cpu_new(opts, out, err);
    /* A wrapper that checks (ABFT) and corrupts GEMMs: docs/DESIGN.md §5, train/guard.h. */
    if (strcmp(spec, "chaos") == 0 || strncmp(spec, "chaos:", 6) == 0)
        return fy_backend_chaos_create(spec, opts, out, err);

    if (strcmp(spec, "opencl") == 0 || strncmp(spec, "opencl:", 7) == 0) {
#ifdef FERRY_HAVE_OPENCL
        return fy_backend_opencl_create(spec, opts, out, err);
#else
        return fy_fail(err,
                       "backend 'opencl' is not built into this ferry (no OpenCL headers/library "
                       "at configure time: apt-get install ocl-icd-opencl-dev opencl-headers, "
                       "then re-run cmake); available: %s",
                       available_backends());
#endif
    }
    if (strcmp(spec, "cuda") == 0 || strncmp(spec, "cuda:", 5) == 0)
        return fy_fail(err, "backend '%s': this version of ferry has no CUDA backend (available: %s)", spec,
                       available_backends());
    return fy_fail(err, "unknown backend '%s' (available: %s)", spec, available_backends());
}

int fy_backend_create_opts(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err) {
    if (fy_backend_create_unchecked(spec, opts, out, err)) return -1;
    fy_backend_install_checks(*out);
    return 0;
}

int fy_backend_create(const char *spec, fy_backend **out, fy_err *err) {
    return fy_backend_create_opts(spec, NULL, out, err);
}

int fy_backend_cpu_create(fy_backend **out, fy_err *err) { return fy_backend_create_opts("cpu", NULL, out, err); }

int fy_backend_list_devices(FILE *out, fy_err *err) {
    fprintf(out, "cpu           host CPU, OpenMP + OpenBLAS\n");
    fprintf(out, "chaos:cpu     cpu wrapped in the fault-injection / ABFT-checking backend\n");
#ifdef FERRY_HAVE_OPENCL
    if (fy_opencl_list_devices(out, err)) return -1;
#else
    fprintf(out, "opencl        not built (no OpenCL headers/library at configure time)\n");
#endif
    fprintf(out, "cuda          none: this version of ferry has no CUDA backend\n");
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

int fy_be_take_error(fy_backend *be, fy_err *err) {
    if (!be->failed) return 0;
    fy_fail(err, "%s", be->err_msg);
    be->failed = 0;
    be->err_msg[0] = 0;
    return -1;
}

int fy_be_ref_ok(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg) {
    if (!r.buf || !r.buf->handle) {
        fy_be_set_error(be, "%s %s: %s is a null buffer", be->ops->name, op, arg);
        return 0;
    }
    if (r.off > r.buf->n || need > r.buf->n - r.off) {
        fy_be_set_error(be, "%s %s: %s out of bounds: needs %zu elements at offset %zu of a buffer of %zu",
                        be->ops->name, op, arg, need, r.off, r.buf->n);
        return 0;
    }
    return 1;
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
