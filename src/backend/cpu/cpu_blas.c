/* OpenBLAS for the cpu backend, opened (dlopen) by the first op that
 * multiplies with it rather than linked into ferry: inference (generate,
 * serve) runs on ferry's own kernels and never calls BLAS, and loading the
 * library alone raised every process's peak RSS by ~3.5 MB (its
 * initialiser's buffers, libgfortran). Training's GEMMs and attention open
 * it before their first parallel region (fy_cpu_blas_open), once per
 * process. FY_BLAS_PATH (set by CMakeLists.txt) is the file of the OpenMP
 * build the build found, so the library that runs is the one compiled
 * against. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "backend/cpu/cpu.h"

#ifndef FY_BLAS_PATH
#define FY_BLAS_PATH "libopenblas.so.0"
#endif

fy_cpu_sgemm_fn *fy_cpu_sgemm;
fy_cpu_sgemv_fn *fy_cpu_sgemv;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char open_error[512];

static void open_once(void) {
    void *h = dlopen(FY_BLAS_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(open_error, sizeof open_error, "cannot load OpenBLAS (%s): %s", FY_BLAS_PATH, dlerror());
        return;
    }
    void *gemm = dlsym(h, "cblas_sgemm"), *gemv = dlsym(h, "cblas_sgemv");
    if (!gemm || !gemv) {
        snprintf(open_error, sizeof open_error, "%s has no cblas_sgemm / cblas_sgemv", FY_BLAS_PATH);
        dlclose(h);
        return;
    }
    /* POSIX: a pointer from dlsym holds the function's address */
    memcpy(&fy_cpu_sgemm, &gemm, sizeof gemm);
    memcpy(&fy_cpu_sgemv, &gemv, sizeof gemv);
}

int fy_cpu_blas_open(fy_backend *be, const char *op) {
    pthread_once(&once, open_once);
    if (fy_cpu_sgemm) return 1;
    fy_be_set_error(be, "cpu %s: %s", op, open_error);
    return 0;
}
