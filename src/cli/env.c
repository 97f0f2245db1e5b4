/* The environment variables ferry reads, all in one place: only the CLI
 * reads the environment; the library takes these settings as explicit
 * options (fy_backend_opts, fy_log_set_level). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
 * libgomp's spin iterations, about 10 ns each; its default, 300000, is a
 * few ms). Beside CPU-bound neighbours, threads spinning at every barrier
 * while the thread they wait for is descheduled made decode 40-240x and
 * training 35-70x slower (bench/contention.sh; docs/PERFORMANCE.md "Under
 * contention").
 *   train and every other command: 0, sleep at once (= passive): training's
 *     parallel regions are long, so a quiet machine trains as fast, and
 *     beside neighbours it ran 9-14x the default's speed.
 *   generate, serve: one decoded token is many short regions, and a thread
 *     that has gone to sleep is slow to wake (tens of us on a VM whose idle
 *     vCPU halts), so how long to spin depends on the neighbours, looked at
 *     once, here, at start-up (machine_quiet): 30000 (~0.3 ms) on a quiet
 *     machine, where tiny's q8_0 decode ran 1.6-7x faster than at 300
 *     (AMD EPYC 4394 against 2237 tok/s; Intel Xeon 3747 against 536);
 *     300 beside neighbours, where 30000 ran at 0.25-0.6x of 300 and 300
 *     about as fast as passive. */
#define SPIN_QUIET "30000"
#define SPIN_SHARED "300"

/* Tasks ready to run on the whole machine now, this process included
 * (/proc/stat's procs_running), or -1 where it cannot be read. */
static int procs_running(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "procs_running %d", &n) == 1) break;
    fclose(f);
    return n;
}

/* The threads this process will run: OMP_NUM_THREADS's first number, else
 * the CPUs it may run on (libgomp's own default). */
static int omp_threads(void) {
    const char *v = getenv("OMP_NUM_THREADS");
    int n = v ? atoi(v) : 0;
    if (n > 0) return n;
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
}

/* 1 when, at the least busy of 5 looks 0.2 ms apart, the online CPUs had
 * room for all of this process's threads beside every other task ready to
 * run. A busy neighbour is ready at every look, so it is seen; the kernel's
 * own short tasks are not: on a quiet 2-CPU VM one of them was ready at
 * ~80 % of looks (procs_running 2 with nothing else running, 2026-12-07),
 * and the earlier rule (room in 2 of 3 looks) picked the short spin for 2
 * of 5 starts, which cost a one-stream f32 server ~35 % (tiny: 550-630
 * against 860-910 tok/s). One that starts later is not seen either (the
 * choice is made once: a server on a machine that is sometimes shared is
 * better told OMP_WAIT_POLICY=passive or GOMP_SPINCOUNT=300). Costs ~1 ms
 * of start-up; changes timing only, never results. */
static int machine_quiet(void) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = omp_threads(), least = -1;
    for (int i = 0; i < 5; i++) {
        int r = procs_running();
        if (r < 0 || ncpu < 1) return 0;
        least = least < 0 || r < least ? r : least;
        if (i < 4) nanosleep(&(struct timespec){0, 200000}, NULL);
    }
    return (long)least - 1 + threads <= ncpu;
}

static const char *spin_count(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "generate") || !strcmp(argv[1], "serve")))
        return machine_quiet() ? SPIN_QUIET : SPIN_SHARED;
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

size_t fy_cli_llc_bytes(void) {
    /* sysfs, not sysconf: glibc's _SC_LEVEL3_CACHE_SIZE read 320 MB on a
     * VM whose L3 is 32 MB (AMD EPYC, 2026-12-07) */
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    unsigned long v = 0;
    char unit = 0;
    int got = f ? fscanf(f, "%lu%c", &v, &unit) : 0;
    if (f) fclose(f);
    if (got < 1) return 0;
    return (size_t)v * (unit == 'K' ? 1024u : unit == 'M' ? 1024u * 1024u : 1u);
}

/* 1 when mpirun (or another MPI launcher) started this process: Open MPI
 * sets OMPI_COMM_WORLD_SIZE, PMI-based launchers PMI_SIZE or PMIX_RANK. */
int fy_cli_mpi_launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}
