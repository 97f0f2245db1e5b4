/* The environment variables ferry reads, all in one place: only the CLI
 * reads the environment; the library takes these settings as explicit
 * options (fy_backend_opts, fy_log_set_level). */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/log.h"

/* The variables (unset or unrecognised: the default, except where noted):
 *   FERRY_LOG          error | warn | info | debug: the log level (default
 *                      info).
 *   FERRY_PERTURB      OP:EPS, OP rmsnorm | swiglu | attn, |EPS| < 1: chaos
 *                      backends multiply every forward output of OP by
 *                      (1 + EPS), to show that `ferry verify` catches a
 *                      wrong kernel. A malformed value makes creating a
 *                      chaos backend fail, naming the variable.
 *   FERRY_CPU_Q8       portable | avx2: the cpu backend's Q8_0 kernel
 *                      (default: the best this CPU runs; same bits).
 *   FERRY_OPENCL_GEMM  reg | anything else (tiled): the OpenCL GEMM kernel
 *                      family (unset: register-blocked on CPU devices,
 *                      tiled elsewhere).
 * FERRY_INJECT (fault injection for tests) is read by cmd_train.c into the
 * trainer's options (train/inject.h); FERRY_API_KEY (ferry serve's key when
 * neither --api-key nor --api-key-file is given) by cmd_serve.c. */
void fy_cli_env_log(void) {
    const char *log = getenv("FERRY_LOG");
    fy_log_set_level(!log                      ? FY_LOG_INFO
                     : !strcmp(log, "error") ? FY_LOG_ERROR
                     : !strcmp(log, "warn")  ? FY_LOG_WARN
                     : !strcmp(log, "debug") ? FY_LOG_DEBUG
                                             : FY_LOG_INFO);
}

fy_backend_opts *fy_cli_backend_opts(fy_backend_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->perturb = getenv("FERRY_PERTURB");
    const char *q8 = getenv("FERRY_CPU_Q8");
    opts->cpu_q8 = !q8                        ? FY_CPU_Q8_BEST
                   : !strcmp(q8, "portable") ? FY_CPU_Q8_PORTABLE
                   : !strcmp(q8, "avx2")     ? FY_CPU_Q8_AVX2
                                             : FY_CPU_Q8_BEST;
    const char *gemm = getenv("FERRY_OPENCL_GEMM");
    opts->opencl_gemm = !gemm ? FY_OPENCL_GEMM_AUTO : !strcmp(gemm, "reg") ? FY_OPENCL_GEMM_REG : FY_OPENCL_GEMM_TILED;
    return opts;
}

/* 1 when mpirun (or another MPI launcher) started this process: Open MPI
 * sets OMPI_COMM_WORLD_SIZE, PMI-based launchers PMI_SIZE or PMIX_RANK. */
int fy_cli_mpi_launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}
