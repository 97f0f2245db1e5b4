/* The communicator's way to MPI in a build that found it: the transport
 * (comm_mpi.c) is a module of its own, libferry_mpi.so, opened here when a
 * process started by mpirun joins its job, not linked into ferry. Open MPI
 * and its libraries (hwloc, libevent, the runtime) cost every process
 * ~1.2 MB of resident memory and ~0.7 ms of start-up, twice with ferry's
 * re-exec (src/cli/env.c), and only a multi-rank run uses them.
 * FY_MPI_MODULE (set by CMakeLists.txt) is where the build put the module;
 * a ferry moved elsewhere finds it beside its executable. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "parallel/comm_impl.h"

#ifndef FY_MPI_MODULE
#define FY_MPI_MODULE "libferry_mpi.so"
#endif

int fy_comm_have_mpi(void) { return 1; }

/* What the module calls back (comm_mpi.syms), referenced here so that an
 * executable linking the static ferrycore holds them all (the linker takes
 * from an archive only what something references) and exports them. */
__attribute__((used)) static const struct {
    int (*fail)(fy_err *, const char *, ...);
    double (*now)(void);
    int (*sum_pieces)(fy_comm *, const float *, size_t, float *, fy_err *);
} module_needs = {fy_fail, fy_now_s, fy_comm_sum_pieces};

/* The module, from the build's path or beside the executable; RTLD_GLOBAL:
 * Open MPI's own components, which it opens in turn, look up its symbols. */
static void *open_module(char *why, size_t cap) {
    void *h = dlopen(FY_MPI_MODULE, RTLD_NOW | RTLD_GLOBAL);
    if (h) return h;
    snprintf(why, cap, "%s", dlerror());
    char exe[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = n > 0 ? memrchr(exe, '/', (size_t)n) : NULL;
    if (!slash) return NULL;
    *slash = '\0';
    snprintf(path, sizeof path, "%s/libferry_mpi.so", exe);
    return dlopen(path, RTLD_NOW | RTLD_GLOBAL);
}

int fy_comm_net_join(fy_comm *c, fy_err *err) {
    char why[512];
    void *h = open_module(why, sizeof why);
    if (!h)
        return fy_fail(err, "this process was started by mpirun, but ferry's MPI transport cannot be loaded: %s "
                            "(libferry_mpi.so is built beside ferry)", why);
    void *f = dlsym(h, "fy_comm_mpi_join");
    if (!f) return fy_fail(err, "%s has no fy_comm_mpi_join (a module of another build?)", FY_MPI_MODULE);
    int (*join)(fy_comm *, fy_err *);
    memcpy(&join, &f, sizeof join); /* POSIX: a pointer from dlsym holds the function's address */
    return join(c, err); /* the module stays loaded: MPI is initialised once per process */
}
