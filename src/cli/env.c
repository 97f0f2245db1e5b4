/* The environment variables ferry reads, all in one place: only the CLI
 * reads the environment; the library takes these settings as explicit
 * options (fy_backend_opts, fy_log_set_level). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
 * OMP_WAIT_POLICY and GOMP_SPINCOUNT are libgomp's (OpenBLAS's OpenMP build
 * shares its threads): ferry reads them only to leave them alone when set,
 * and otherwise set GOMP_SPINCOUNT per command (fy_cli_env_openmp).
 * FERRY_INJECT (fault injection for tests) is read by cmd_train.c into the
 * trainer's options (train/inject.h); FERRY_API_KEY (ferry serve's key when
 * neither --api-key nor --api-key-file is given) by cmd_serve.c. */
/* How long an idle OpenMP thread spins before it sleeps (GOMP_SPINCOUNT, in
 * libgomp's spin iterations; its default, 300000, is a few ms). Beside
 * CPU-bound neighbours, threads spinning at every barrier while the thread
 * they wait for is descheduled made decode 40-240x and training 35-70x
 * slower (bench/contention.sh; docs/PERFORMANCE.md "Under contention").
 *   train and every other command: 0, sleep at once (= passive): training's
 *     parallel regions are long, so a quiet machine trains as fast, and
 *     beside neighbours it ran 9-14x the default's speed.
 *   generate, serve: 300. One decoded token is many short regions: sleeping
 *     at once cost 2.4x of quiet-machine q8_0 decode (a futex wake per
 *     region) and 1000 spins none, but beside a busy neighbour 1000 ran at
 *     0.4x passive's speed; 300 kept 92 % of quiet decode and matched
 *     passive there. */
static const char *spin_count(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "generate") || !strcmp(argv[1], "serve"))) return "300";
    return "0";
}

/* libgomp reads its settings once, in a library constructor that runs
 * before main: a setenv here comes too late for this process. So when the
 * user set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT, ferry sets
 * GOMP_SPINCOUNT and executes itself again, once (same pid, arguments and
 * environment otherwise; the new process sees the variable set and goes
 * on; children such as mpirun's ranks inherit it). Where re-executing
 * fails, it carries on with libgomp's default. */
void fy_cli_env_openmp(int argc, char **argv) {
    const char *policy = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    if ((policy && *policy) || (spin && *spin)) return; /* the user's choice (empty: none) */
    if (setenv("GOMP_SPINCOUNT", spin_count(argc, argv), 1)) return;
    execv("/proc/self/exe", argv);
    unsetenv("GOMP_SPINCOUNT"); /* not this process's setting: keep children consistent */
}

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
