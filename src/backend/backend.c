/* Backend selection (fy_backend_create_opts), the device list, and the
 * helpers every backend shares: the sticky error, the checked buffer
 * reference, Q8_0 quantization. Argument checks live in backend_check.c. */
#include "backend/backend.h"

#include "core/half.h"

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

/* The largest |x[i]| of a block, NaNs skipped (as `|x| > amax` skips
 * them): for floats >= 0 the order of their bit patterns is their order,
 * and NaN's patterns lie above +Inf's, so an integer maximum over the
 * non-NaN patterns gives it. In 16 lanes, then across them: GCC's -O2
 * vectorizer takes that form and not a single running maximum (load time:
 * every weight of a quantized model passes here once). */
static float block_amax(const float *x) {
    uint32_t lane[16] = {0};
    for (int i = 0; i < FY_Q8_BLOCK; i += 16)
        for (int j = 0; j < 16; j++) {
            uint32_t b;
            memcpy(&b, &x[i + j], sizeof b);
            b &= 0x7fffffffu;
            b = b > 0x7f800000u ? 0 : b;
            lane[j] = b > lane[j] ? b : lane[j];
        }
    uint32_t top = 0;
    for (int j = 0; j < 16; j++) top = lane[j] > top ? lane[j] : top;
    float amax;
    memcpy(&amax, &top, sizeof amax);
    return amax;
}

/* Rows in parallel from this many weights on: each row's bits are its own. */
#define QUANT_PAR_MIN (1 << 16)

void fy_q8_quantize(const float *w, int rows, int in, int ldw, int8_t *q, float *s) {
#pragma omp parallel for schedule(static) if ((size_t)rows * in >= QUANT_PAR_MIN)
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < in / FY_Q8_BLOCK; b++) {
            const float *x = w + (size_t)r * ldw + (size_t)b * FY_Q8_BLOCK;
            int8_t *o = q + (size_t)r * in + (size_t)b * FY_Q8_BLOCK;
            float amax = block_amax(x);
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

void fy_q8_quantize_gguf(const float *w, int rows, int in, int ldw, int8_t *q, float *s) {
#pragma omp parallel for schedule(static) if ((size_t)rows * in >= QUANT_PAR_MIN)
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < in / FY_Q8_BLOCK; b++) {
            const float *x = w + (size_t)r * ldw + (size_t)b * FY_Q8_BLOCK;
            int8_t *o = q + (size_t)r * in + (size_t)b * FY_Q8_BLOCK;
            float amax = 0.0f;
            for (int i = 0; i < FY_Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            s[(size_t)r * (in / FY_Q8_BLOCK) + b] = fy_f16_to_f32(fy_f32_to_f16(d));
            for (int i = 0; i < FY_Q8_BLOCK; i++) o[i] = (int8_t)roundf(x[i] * id);
        }
}

void fy_q4_quantize(const float *w, int rows, int in, int ldw, uint8_t *q, float *s) {
#pragma omp parallel for schedule(static) if ((size_t)rows * in >= QUANT_PAR_MIN)
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < in / FY_Q8_BLOCK; b++) {
            const float *x = w + (size_t)r * ldw + (size_t)b * FY_Q8_BLOCK;
            uint8_t *o = q + ((size_t)r * in + (size_t)b * FY_Q8_BLOCK) / 2;
            float amax = 0.0f, m = 0.0f;
            for (int i = 0; i < FY_Q8_BLOCK; i++)
                if (fabsf(x[i]) > amax) amax = fabsf(x[i]), m = x[i];
            float d = m / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            s[(size_t)r * (in / FY_Q8_BLOCK) + b] = fy_f16_to_f32(fy_f32_to_f16(d));
            for (int j = 0; j < FY_Q8_BLOCK / 2; j++) {
                /* truncation toward zero of a value >= 0.5, as ggml's (int8_t) cast */
                int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + FY_Q8_BLOCK / 2] * id + 8.5f);
                lo = lo > 15 ? 15 : lo, hi = hi > 15 ? 15 : hi;
                o[j] = (uint8_t)(lo | hi << 4);
            }
        }
}

void fy_h16_convert(const float *w, size_t n, int fmt, uint16_t *out) {
    const long nb = (long)((n + 4095) / 4096); /* blocks of 4096 in parallel */
#pragma omp parallel for schedule(static) if (n >= QUANT_PAR_MIN)
    for (long b = 0; b < nb; b++) {
        const size_t lo = (size_t)b * 4096, len = n - lo < 4096 ? n - lo : 4096;
        (fmt == FY_H16_BF16 ? fy_f32_to_bf16_n : fy_f32_to_f16_n)(w + lo, len, out + lo);
    }
}

/* ---- host memory as a buffer ---- */

int fy_be_adopt(fy_backend *be, fy_buf *out, const void *host, size_t n, void (*release)(void *ctx), void *ctx,
                fy_err *err) {
    if (be->ops->adopt && (uintptr_t)host % 64 == 0) return be->ops->adopt(be, out, host, n, release, ctx, err);
    if (fy_be_alloc(be, out, n ? n : 1, err)) return -1;
    be->ops->upload(be, fy_at(out, 0), host, n);
    if (fy_be_sync(be, err)) { /* the copy failed: nothing of host is kept */
        fy_be_free(be, out);
        return -1;
    }
    if (release) release(ctx);
    return 0;
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

/* ---- RoPE table (shared so every backend rotates by the same floats) ---- */

/* YaRN's inverse dimension formula: the pair index whose wavelength fits
 * `rot` rotations into `len` positions (transformers' find_correction_dim). */
static double yarn_corr_dim(double rot, int d_r, double theta, double len) {
    return d_r * log(len / (rot * 2.0 * M_PI)) / (2.0 * log(theta));
}

void fy_rope_freqs(const fy_rope_params *rp, int d_r, double *freq) {
    int half = d_r / 2;
    for (int j = 0; j < half; j++) freq[j] = pow((double)rp->theta, -2.0 * j / (double)d_r);
    if (!rp->yarn) return;
    double lo = yarn_corr_dim(rp->beta_fast, d_r, rp->theta, rp->orig_max_pos);
    double hi = yarn_corr_dim(rp->beta_slow, d_r, rp->theta, rp->orig_max_pos);
    if (rp->truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    if (lo < 0) lo = 0;
    if (hi > d_r - 1) hi = d_r - 1;
    if (lo == hi) hi += 0.001; /* as transformers: no division by zero */
    for (int j = 0; j < half; j++) {
        /* ramp 0 below lo (keep f_j), 1 above hi (f_j / factor) */
        double r = (j - lo) / (hi - lo);
        r = r < 0 ? 0 : r > 1 ? 1 : r;
        freq[j] = freq[j] / rp->factor * r + freq[j] * (1.0 - r);
    }
}

void fy_rope_table(const fy_rope_params *rp, int T, int pos0, int d_r, float *tab, double *freq) {
    int half = d_r / 2;
    fy_rope_freqs(rp, d_r, freq);
    double mul = rp->yarn ? rp->mul : 1.0;
    for (int t = 0; t < T; t++) {
        double pos = (double)pos0 + t;
        for (int j = 0; j < half; j++) {
            double a = pos * freq[j];
            tab[((size_t)t * half + j) * 2] = (float)(cos(a) * mul);
            tab[((size_t)t * half + j) * 2 + 1] = (float)(sin(a) * mul);
        }
    }
}

int fy_rope_params_equal(const fy_rope_params *a, const fy_rope_params *b) {
    if (a->theta != b->theta || a->yarn != b->yarn) return 0;
    if (!a->yarn) return 1;
    return a->factor == b->factor && a->orig_max_pos == b->orig_max_pos && a->beta_fast == b->beta_fast &&
           a->beta_slow == b->beta_slow && a->truncate == b->truncate && a->mul == b->mul;
}
