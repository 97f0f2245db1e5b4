/* How `ferry train` runs when it does not simply train in this process:
 * under a supervisor that restarts it (--supervise), or as N ranks under
 * mpirun (--ranks N). Children are spawned from argv arrays, never a shell. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/train_cli.h"
#include "core/fsutil.h"
#include "train/supervise.h"

/* How argument `a` gives flag `name`: 2 as "name" (its value is the next
 * word), 1 as "name=value", 0 not at all. */
static int flag_form(const char *a, const char *name) {
    size_t n = strlen(name);
    if (strncmp(a, name, n)) return 0;
    return a[n] == '\0' ? 2 : a[n] == '=' ? 1 : 0;
}

/* The supervisor's way to fewer ranks: --ranks N becomes the largest
 * M < N that divides the run's global batch (from its config.json). */
typedef struct fewer_ctx {
    char ranks[16];       /* the value both argvs point to */
    const char *run_dir;
    int batch;            /* from the flags, 0: read config.json */
} fewer_ctx;

static int fewer_ranks(void *vctx, char *note, size_t cap, fy_err *err) {
    fewer_ctx *c = vctx;
    int n = atoi(c->ranks), batch = c->batch;
    if (!batch) {
        char path[FY_PATH_MAX + 16];
        fy_train_opts o;
        fy_train_opts_default(&o);
        snprintf(path, sizeof path, "%s/config.json", c->run_dir);
        if (!fy_cli_train_opts_load(path, &o, err)) batch = o.batch_size;
        if (!batch) return fy_wrap(err, "supervisor: %d ranks could not start, and the batch size is unknown", n);
    }
    int m = n - 1;
    while (m > 1 && batch % m) m--;
    if (m < 1) return fy_fail(err, "supervisor: mpirun could not start even 1 rank");
    snprintf(note, cap, "%d ranks could not start; continuing on %d", n, m);
    snprintf(c->ranks, sizeof c->ranks, "%d", m);
    return 0;
}

/* The child's flags: argv less the supervisor's own, with --ranks N's value
 * in fc->ranks (which fewer_ranks may lower). Returns the count. */
static int child_flags(int argc, char **argv, char **av, fewer_ctx *fc, int *has_ranks) {
    static const char *const supervisor_flags[] = {"--max-restarts", "--heartbeat-timeout", "--restart-backoff"};
    int n = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int rf = flag_form(a, "--ranks"), skip = 0;
        if ((rf == 2 && i + 1 < argc) || rf == 1) {
            snprintf(fc->ranks, sizeof fc->ranks, "%s", rf == 1 ? a + 8 : argv[++i]);
            av[n++] = "--ranks";
            av[n++] = fc->ranks;
            *has_ranks = 1;
            continue;
        }
        if (!strcmp(a, "--supervise")) continue;
        for (int k = 0; k < 3 && !skip; k++) skip = flag_form(a, supervisor_flags[k]);
        if (skip == 2) i++; /* and its value */
        if (!skip) av[n++] = argv[i];
    }
    return n;
}

int fy_cli_train_supervised(int argc, char **argv, const fy_cli_supervise_args *a) {
    char **first = calloc(argc + 6, sizeof *first), **again = calloc(argc + 6, sizeof *again);
    fewer_ctx fc = {"", a->run_dir, a->batch};
    fy_err err;
    if (!first || !again) {
        free(first);
        free(again);
        return fy_cli_failf("train", "out of memory");
    }
    int has_ranks = 0, n = 2;
    first[0] = "ferry";
    first[1] = "train";
    n += child_flags(argc, argv, first + 2, &fc, &has_ranks);
    /* A restart resumes the run: --init-from (and the tokens it added)
     * started it and is not repeated. */
    int m = 0;
    for (int i = 0; i < n; i++) {
        int f = flag_form(first[i], "--init-from");
        if (!f) f = flag_form(first[i], "--add-special-tokens");
        if (f == 2 && i + 1 < n) i++;
        if (!f) again[m++] = first[i];
    }
    if (!a->resume) again[m++] = "--resume";
    fy_supervise_opts so = {a->run_dir, a->max_restarts, a->backoff, 30.0 > a->backoff ? 30.0 : a->backoff,
                            a->heartbeat, FY_EXIT_RANKS_UNAVAILABLE, has_ranks ? fewer_ranks : NULL, &fc};
    err.msg[0] = '\0';
    int rc = fy_supervise(first, again, &so, &err);
    free(first);
    free(again);
    if (rc == 1 && err.msg[0]) return fy_cli_fail("train", &err);
    return rc;
}

/* "mpirun -np N SELF train FLAGS" with FLAGS = argv less --ranks. */
static char **mpirun_argv(int argc, char **argv, char *np, char *self) {
    char **av = calloc((size_t)argc + 8, sizeof *av);
    if (!av) return NULL;
    int k = 0;
    av[k++] = "mpirun";
    av[k++] = "-np";
    av[k++] = np;
    av[k++] = self;
    av[k++] = "train";
    for (int i = 0; i < argc; i++) { /* argv holds the flags after "train" */
        int rf = flag_form(argv[i], "--ranks");
        if (rf == 2) i++;
        if (!rf) av[k++] = argv[i];
    }
    return av;
}

/* The ranks share this host's cores: OpenMP's default (every core per
 * process) would oversubscribe them, and spinning threads then wait for
 * descheduled ones at every barrier (tens of times slower). */
static void threads_per_rank(int ranks) {
    if (getenv("OMP_NUM_THREADS")) return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    char t[24];
    snprintf(t, sizeof t, "%ld", cores / ranks > 1 ? cores / ranks : 1);
    setenv("OMP_NUM_THREADS", t, 1);
    fprintf(stderr, "ferry train: --ranks %d on %ld cores: OMP_NUM_THREADS=%s per rank (set it to choose)\n", ranks,
            cores, t);
}

/* Reads (and removes) the ranks' status files in dir: how many started,
 * the first rank that left no exit code (-1: none), rank 0's code (-1: none). */
static void collect_status(const char *dir, int ranks, int *started, int *missing, int *rank0) {
    *started = 0;
    *missing = *rank0 = -1;
    for (int r = 0; r < ranks; r++) {
        char path[FY_PATH_MAX];
        snprintf(path, sizeof path, "%s/rank-%d.started", dir, r);
        if (!unlink(path)) (*started)++;
        snprintf(path, sizeof path, "%s/rank-%d", dir, r);
        FILE *f = fopen(path, "r");
        int c = -1;
        if (f) {
            if (fscanf(f, "%d", &c) != 1) c = -1;
            fclose(f);
            unlink(path);
        }
        if (c < 0 && *missing < 0) *missing = r;
        if (r == 0) *rank0 = c;
    }
    rmdir(dir);
}

/* Runs mpirun and waits: its exit status, 127 when it cannot be run. */
static int run_mpirun(char **av) {
    pid_t pid;
    fy_err err;
    fflush(stdout);
    if (fy_cli_spawn(av, -1, -1, &pid, &err)) {
        fprintf(stderr, "ferry train: --ranks: %s: install openmpi-bin, or launch with your MPI's own launcher\n",
                err.msg);
        return 127;
    }
    return fy_cli_wait(pid);
}

/* Each rank leaves its exit code in a status file, so a rank that died
 * (killed, crashed: no file) is told apart from a clean failure, and
 * reported with FY_EXIT_RANK_LOST for the supervisor to retry. mpirun's own
 * options (hosts, root in containers) come from the environment
 * (OMPI_MCA_*, OMPI_ALLOW_RUN_AS_ROOT*) or a direct mpirun. */
int fy_cli_launch_ranks(int argc, char **argv, int ranks) {
    char self[FY_PATH_MAX], np[16], dir[] = "/tmp/ferry-ranks-XXXXXX";
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return fy_cli_failf("train", "--ranks: cannot find this program's path");
    self[n] = '\0';
    if (!mkdtemp(dir)) return fy_cli_failf("train", "--ranks: cannot create a status directory in /tmp");
    snprintf(np, sizeof np, "%d", ranks);
    char **av = mpirun_argv(argc, argv, np, self);
    if (!av) return 1;
    setenv("FERRY_RANK_STATUS_DIR", dir, 1);
    threads_per_rank(ranks);
    int code = run_mpirun(av);
    free(av);
    int started, missing, rank0;
    collect_status(dir, ranks, &started, &missing, &rank0);
    if (code == 127) return 127;
    if (!started && code != 0) {
        fprintf(stderr, "ferry train: mpirun could not start %d ranks (exit status %d; its message is above); "
                        "--supervise retries with fewer\n", ranks, code);
        return FY_EXIT_RANKS_UNAVAILABLE;
    }
    if (missing >= 0 && code != 0) {
        fprintf(stderr, "ferry train: rank %d of %d died without finishing (mpirun exit status %d); the run "
                        "can continue from its newest checkpoint with --resume (--supervise does it)\n",
                missing, ranks, code);
        return FY_EXIT_RANK_LOST;
    }
    return rank0 >= 0 ? rank0 : code;
}

void fy_cli_rank_status(const fy_comm *c, int code) {
    const char *dir = getenv("FERRY_RANK_STATUS_DIR");
    if (!dir || !c) return;
    char path[FY_PATH_MAX];
    snprintf(path, sizeof path, "%s/rank-%d%s", dir, fy_comm_rank(c), code < 0 ? ".started" : "");
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%d\n", code);
        fclose(f);
    }
}
