/* ferry train: data (default corpus or --data), tokenizer, config, then the
 * training loop of train/trainer.c. Flags override config.json, which
 * overrides the built-in defaults; the effective config is printed and
 * saved as RUN_DIR/config.json. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "ckpt/checkpoint.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "parallel/comm.h"
#include "io/prepare.h"
#include "train/supervise.h"
#include "train/trainer.h"

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM: stop after this step */
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_shards(const char *dir) {
    char p[FY_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/train-00000.bin", dir);
    return fy_file_exists(p);
}

/* The default corpus: the King James Bible from Debian's bible-kjv, one
 * verse per line without references. Extracted once into DIR/kjv.txt. */
static int default_corpus(const char *dir, char *txt, size_t cap, fy_err *err) {
    snprintf(txt, cap, "%s/kjv.txt", dir);
    if (fy_file_exists(txt)) return 0;
    if (fy_mkdir_p(dir, err)) return -1;
    char tmp[FY_PATH_MAX + 16], cmd[2 * FY_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", txt);
    snprintf(cmd, sizeof cmd,
             "bible -f 'Gen1:1-Rev22:21' 2>/dev/null | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' > '%s'", tmp);
    printf("preparing the default corpus (King James Bible, Debian bible-kjv) in %s\n", dir);
    fflush(stdout);
    int rc = system(cmd);
    struct stat st;
    if (rc != 0 || stat(tmp, &st) != 0 || st.st_size < 1000000) {
        remove(tmp);
        return fy_fail(err, "could not extract the default corpus with `bible` (install Debian's "
                            "bible-kjv package, or pass --data FILE|DIR)");
    }
    if (rename(tmp, txt) != 0) return fy_fail(err, "cannot rename %s", tmp);
    return 0;
}

/* Makes data_dir hold tokenizer.json + shards for the given text files. */
static int prepare(const char *data_dir, char **files, int nf, int vocab, fy_err *err) {
    char tokpath[FY_PATH_MAX + 32];
    snprintf(tokpath, sizeof tokpath, "%s/tokenizer.json", data_dir);
    if (has_shards(data_dir) && fy_file_exists(tokpath)) return 0; /* cached */
    if (fy_mkdir_p(data_dir, err)) return -1;
    printf("training a %d-token byte-level BPE tokenizer on %d file(s)\n", vocab, nf);
    fflush(stdout);
    fy_tok_train_opts to = {vocab, 0, 0};
    fy_tokenizer *tok;
    if (fy_tokenizer_train_files((const char *const *)files, nf, &to, &tok, err)) return -1;
    fy_prepare_opts po;
    fy_prepare_opts_default(&po);
    fy_prepare_stats st;
    int rc = fy_data_prepare((const char *const *)files, nf, tok, data_dir, &po, &st, err);
    if (!rc) rc = fy_tokenizer_save(tok, tokpath, err); /* last: marks the data ready */
    fy_tokenizer_free(tok);
    if (!rc)
        printf("data: %llu train tokens, %llu validation tokens in %s\n",
               (unsigned long long)st.train_tokens, (unsigned long long)st.val_tokens, data_dir);
    return rc;
}

/* Collects text files from --data (a file, or a directory of *.txt). */
static int text_files(const char *data, char **files, int cap, int *n, fy_err *err) {
    *n = 0;
    if (!is_dir(data)) {
        if (!fy_file_exists(data)) return fy_fail(err, "--data %s: no such file or directory", data);
        files[(*n)++] = strdup(data);
        return 0;
    }
    char cmd[FY_PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "find '%s' -maxdepth 1 -type f -name '*.txt' | sort", data);
    FILE *p = popen(cmd, "r");
    char line[FY_PATH_MAX];
    while (p && *n < cap && fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        files[(*n)++] = strdup(line);
    }
    if (p) pclose(p);
    if (!*n) return fy_fail(err, "--data %s: no *.txt files and no train-*.bin shards there", data);
    return 0;
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
        char path[FY_PATH_MAX + 16], *text = NULL;
        size_t len;
        fy_train_opts o;
        fy_train_opts_default(&o);
        snprintf(path, sizeof path, "%s/config.json", c->run_dir);
        if (!fy_read_file(path, &text, &len, err) && !fy_train_opts_from_json(text, path, &o, err))
            batch = o.batch_size;
        free(text);
        if (!batch) return fy_wrap(err, "supervisor: %d ranks could not start, and the batch size is unknown", n);
    }
    int m = n - 1;
    while (m > 1 && batch % m) m--;
    if (m < 1) return fy_fail(err, "supervisor: mpirun could not start even 1 rank");
    snprintf(note, cap, "%d ranks could not start; continuing on %d", n, m);
    snprintf(c->ranks, sizeof c->ranks, "%d", m);
    return 0;
}

/* --supervise: the same command without the supervisor's flags runs as a
 * child; relaunches add --resume. */
static int supervised(int argc, char **argv, const char *run_dir, int resume, int max_restarts,
                      double heartbeat, double backoff, int batch) {
    char **first = calloc(argc + 6, sizeof *first), **again = calloc(argc + 6, sizeof *again);
    fewer_ctx fc = {"", run_dir, batch};
    int n = 0, has_ranks = 0;
    first[n++] = "ferry";
    first[n++] = "train";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        /* --ranks N: its value in a buffer the supervisor may lower. */
        if ((!strcmp(a, "--ranks") && i + 1 < argc) || !strncmp(a, "--ranks=", 8)) {
            snprintf(fc.ranks, sizeof fc.ranks, "%s", a[7] == '=' ? a + 8 : argv[++i]);
            first[n++] = "--ranks";
            first[n++] = fc.ranks;
            has_ranks = 1;
            continue;
        }
        if (!strcmp(a, "--supervise")) continue;
        if (!strcmp(a, "--max-restarts") || !strcmp(a, "--heartbeat-timeout") || !strcmp(a, "--restart-backoff")) {
            i++; /* and its value */
            continue;
        }
        if (!strncmp(a, "--max-restarts=", 15) || !strncmp(a, "--heartbeat-timeout=", 20) ||
            !strncmp(a, "--restart-backoff=", 18))
            continue;
        first[n++] = argv[i];
    }
    memcpy(again, first, n * sizeof *first);
    int m = n;
    if (!resume) again[m++] = "--resume";
    fy_supervise_opts so = {run_dir, max_restarts, backoff, 30.0 > backoff ? 30.0 : backoff, heartbeat,
                            FY_EXIT_RANKS_UNAVAILABLE, has_ranks ? fewer_ranks : NULL, &fc};
    fy_err err;
    err.msg[0] = '\0';
    int rc = fy_supervise(first, again, &so, &err);
    free(first);
    free(again);
    if (rc == 1 && err.msg[0]) return fy_cli_fail("train", &err);
    return rc;
}

/* --ranks N outside mpirun: run "mpirun -np N <this ferry> train <the same
 * flags>" and wait for it. Each rank leaves its exit code in a status file,
 * so a rank that died (killed, crashed: no file) is told apart from a clean
 * failure, and reported with FY_EXIT_RANK_LOST for the supervisor to retry.
 * mpirun's own options (hosts, root in containers) come from the
 * environment (OMPI_MCA_*, OMPI_ALLOW_RUN_AS_ROOT*) or a direct mpirun. */
static int launch_ranks(int argc, char **argv, int ranks) {
    char self[FY_PATH_MAX], np[16], dir[] = "/tmp/ferry-ranks-XXXXXX";
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "ferry train: --ranks: cannot find this program's path\n");
        return 1;
    }
    self[n] = '\0';
    if (!mkdtemp(dir)) {
        fprintf(stderr, "ferry train: --ranks: cannot create a status directory in /tmp\n");
        return 1;
    }
    snprintf(np, sizeof np, "%d", ranks);
    char **av = calloc((size_t)argc + 8, sizeof *av);
    if (!av) return 1;
    int k = 0;
    av[k++] = "mpirun";
    av[k++] = "-np";
    av[k++] = np;
    av[k++] = self;
    av[k++] = "train";
    for (int i = 0; i < argc; i++) { /* argv holds the flags after "train" */
        if (!strcmp(argv[i], "--ranks")) { i++; continue; }
        if (!strncmp(argv[i], "--ranks=", 8)) continue;
        av[k++] = argv[i];
    }
    setenv("FERRY_RANK_STATUS_DIR", dir, 1);
    /* The ranks share this host's cores: OpenMP's default (every core per
     * process) would oversubscribe them, and spinning threads then wait for
     * descheduled ones at every barrier (tens of times slower). */
    if (!getenv("OMP_NUM_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        char t[24];
        snprintf(t, sizeof t, "%ld", cores / ranks > 1 ? cores / ranks : 1);
        setenv("OMP_NUM_THREADS", t, 1);
        fprintf(stderr, "ferry train: --ranks %d on %ld cores: OMP_NUM_THREADS=%s per rank (set it to choose)\n", ranks,
                cores, t);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execvp("mpirun", av);
        fprintf(stderr, "ferry train: --ranks: cannot run mpirun (%s): install openmpi-bin, or launch with "
                        "your MPI's own launcher\n", strerror(errno));
        _exit(127);
    }
    free(av);
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    int code = pid < 0 ? 127 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    int missing = -1, rank0 = -1, started = 0;
    for (int r = 0; r < ranks; r++) {
        char path[sizeof dir + 32];
        snprintf(path, sizeof path, "%s/rank-%d.started", dir, r);
        if (!unlink(path)) started++;
        snprintf(path, sizeof path, "%s/rank-%d", dir, r);
        FILE *f = fopen(path, "r");
        int c = -1;
        if (f) {
            if (fscanf(f, "%d", &c) != 1) c = -1;
            fclose(f);
            unlink(path);
        }
        if (c < 0 && missing < 0) missing = r;
        if (r == 0) rank0 = c;
    }
    rmdir(dir);
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

/* Under mpirun: leaves this rank's exit code for launch_ranks (code < 0:
 * the mark that the rank started). */
static void rank_status(const fy_comm *c, int code) {
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

static int train_main(int argc, char **argv, fy_comm **commp);

int fy_cmd_train(int argc, char **argv) {
    fy_comm *comm = NULL;
    int rc = train_main(argc, argv, &comm);
    if (!comm) return rc;
    if (fy_comm_size(comm) > 1 && fy_comm_lost_peer(comm)) rc = FY_EXIT_RANK_LOST;
    rank_status(comm, rc);
    fflush(stdout);
    fflush(stderr);
    /* A rank that failed alone would leave the others waiting: end the job. */
    if (rc != 0 && rc != 130 && fy_comm_size(comm) > 1) fy_comm_abort(comm, rc);
    fy_comm_finalize(comm);
    return rc;
}

static int train_main(int argc, char **argv, fy_comm **commp) {
    const char *cfgname = "tiny", *data = NULL, *out = NULL, *backend = NULL;
    int steps = 0, batch = 0, seq = 0, seed = 0, eval_every = -1, ckpt_every = -1, keep = -1;
    int resume = 0, vocab = 4096, log_every = 0, stop_after = 0;
    int supervise = 0, max_restarts = 10;
    double lr = 0, time_limit = 0, heartbeat = 300, backoff = 1.0, abft = -1;
    int recompute = -1, ranks = 0, micro = -1, compress = 0, diloco = -1, expert_parallel = 0, buckets = -1;
    double bucket_mb = -1;
    int zero = -1;
    double comm_timeout = 300, outer_lr = -1;
    fy_arg spec[] = {
        {"--config", "-c", FY_ARG_STR, &cfgname, "NAME|FILE", "tiny (default), small, or a config.json", 0, 0, 0},
        {"--data", "-d", FY_ARG_STR, &data, "FILE|DIR", "text file(s) or a prepared shard dir (default: the KJV Bible)", 0, 0, 0},
        {"--out", "-o", FY_ARG_STR, &out, "RUN_DIR", "run directory (default runs/CONFIG)", 0, 0, 0},
        {"--backend", "-b", FY_ARG_STR, &backend, "SPEC", "cpu (default; --resume: the run's last), opencl, ... (ferry devices)", 0, 0, 0},
        {"--steps", "-s", FY_ARG_INT, &steps, "N", "total optimizer steps", 1, 1e9, 0},
        {"--batch", NULL, FY_ARG_INT, &batch, "B", "sequences per step", 1, 1 << 16, 0},
        {"--seq", NULL, FY_ARG_INT, &seq, "T", "tokens per sequence", 1, 1 << 20, 0},
        {"--lr", NULL, FY_ARG_FLOAT, &lr, "LR", "peak learning rate", 1e-9, 10, 0},
        {"--seed", NULL, FY_ARG_INT, &seed, "S", "seed for init and data order", 0, 2147483647, 0},
        {"--eval-every", NULL, FY_ARG_INT, &eval_every, "N", "steps between validation passes (0 = none)", 0, 1e9, 0},
        {"--ckpt-every", NULL, FY_ARG_INT, &ckpt_every, "N", "steps between checkpoints (0 = end only)", 0, 1e9, 0},
        {"--keep", NULL, FY_ARG_INT, &keep, "K", "checkpoints kept (default 3)", 0, 1e6, 0},
        {"--log-every", NULL, FY_ARG_INT, &log_every, "N", "steps between progress lines", 1, 1e9, 0},
        {"--time-limit", NULL, FY_ARG_FLOAT, &time_limit, "SEC", "stop with a checkpoint after SEC seconds", 1, 1e9, 0},
        {"--vocab-size", NULL, FY_ARG_INT, &vocab, "N", "tokenizer size when preparing text (default 4096)", 259, 1 << 20, 0},
        {"--stop-after", NULL, FY_ARG_INT, &stop_after, "N", "stop with a checkpoint after step N, as Ctrl-C would", 1, 1e9, 0},
        {"--resume", "-r", FY_ARG_BOOL, &resume, NULL, "continue RUN_DIR from its newest complete checkpoint", 0, 0, 0},
        {"--supervise", NULL, FY_ARG_BOOL, &supervise, NULL, "restart the trainer from LATEST when it dies or hangs", 0, 0, 0},
        {"--max-restarts", NULL, FY_ARG_INT, &max_restarts, "N", "supervisor: restarts before giving up (default 10)", 0, 1e6, 0},
        {"--heartbeat-timeout", NULL, FY_ARG_FLOAT, &heartbeat, "SEC", "supervisor: no step for SEC = hung (default 300)", 0.1, 1e7, 0},
        {"--restart-backoff", NULL, FY_ARG_FLOAT, &backoff, "SEC", "supervisor: first wait before a restart, doubling (default 1)", 0, 3600, 0},
        {"--abft", NULL, FY_ARG_FLOAT, &abft, "F", "guard: fraction of GEMMs checksum-checked (ABFT; default 0.02, 0 = off)", 0, 1, 0},
        {"--recompute-every", NULL, FY_ARG_INT, &recompute, "N", "guard: execute every N-th step twice, compare bitwise (0 = off)", 0, 1e9, 0},
        {"--ranks", NULL, FY_ARG_INT, &ranks, "N", "data-parallel ranks: runs mpirun -np N (docs/SCALING.md)", 1, 4096, 0},
        {"--micro-batch", NULL, FY_ARG_INT, &micro, "M", "sequences per micro-batch (default: --batch / ranks)", 0, 1 << 16, 0},
        {"--compress-grads", NULL, FY_ARG_BOOL, &compress, NULL, "send gradients (with --diloco: the outer deltas) as int8 with error feedback (slow links)", 0, 0, 0},
        {"--expert-parallel", NULL, FY_ARG_BOOL, &expert_parallel, NULL, "split the routed experts over the ranks (all-to-all)", 0, 0, 0},
        {"--grad-buckets", NULL, FY_ARG_INT, &buckets, "0|1|2", "send gradients in buckets during the backward (default 0; 2: with a progress thread driving MPI)", 0, 2, 0},
        {"--zero", NULL, FY_ARG_INT, &zero, "0|1", "1: shard the AdamW moments over the ranks (ZeRO-1, default); 0: every rank keeps them whole and the gradients are all-reduced (DDP)", 0, 1, 0},
        {"--bucket-mb", NULL, FY_ARG_FLOAT, &bucket_mb, "MB", "gradient bucket size for --grad-buckets (default 25, as PyTorch DDP; 0: each layer as it is done)", 0, 1e6, 0},
        {"--diloco", NULL, FY_ARG_INT, &diloco, "H", "DiLoCo: H local steps per outer step (0 = off; slow links)", 0, 1e9, 0},
        {"--outer-lr", NULL, FY_ARG_FLOAT, &outer_lr, "LR", "DiLoCo outer Nesterov learning rate (default 0.7)", 0, 10, 0},
        {"--comm-timeout", NULL, FY_ARG_FLOAT, &comm_timeout, "SEC", "a collective slower than SEC = a lost rank (default 300)", 0.1, 1e6, 0},
    };
    const int nspec = (int)(sizeof spec / sizeof spec[0]);
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, nspec, "train", "[options]",
                          "Train a DeepSeek-V3-architecture model (MLA, DeepSeekMoE, MTP). With no --data it\n"
                          "prepares the King James Bible once (cached under data/kjv) and trains on it.\n"
                          "Ctrl-C stops after the current step with a checkpoint; --resume continues exactly.",
                          pos, 0, &npos, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("train", &err);

    char run_dir[FY_PATH_MAX], data_dir[FY_PATH_MAX + 64], path[FY_PATH_MAX + 160];
    snprintf(run_dir, sizeof run_dir, "%s", out ? out : "");
    if (!out) snprintf(run_dir, sizeof run_dir, "runs/%s", strchr(cfgname, '/') || strchr(cfgname, '.') ? "custom" : cfgname);
    if (supervise) return supervised(argc, argv, run_dir, resume, max_restarts, heartbeat, backoff, batch);
    if (ranks > 0 && !fy_comm_launched()) return launch_ranks(argc, argv, ranks);
    /* Under mpirun every rank runs this; rank 0 prepares the data and the run
     * directory while the others wait, then they read its config.json. */
    fy_comm *comm;
    if (fy_comm_init(comm_timeout, &comm, &err)) return fy_cli_fail("train", &err);
    rank_status(comm, -1); /* started (for launch_ranks) */
    *commp = comm;
    const int rank = fy_comm_rank(comm), n_ranks = fy_comm_size(comm), follower = rank > 0;
    if (ranks > 0 && ranks != n_ranks)
        fy_warn("--ranks %d, but mpirun started %d ranks: training on %d", ranks, n_ranks, n_ranks);
    if (follower) {
        if (!freopen("/dev/null", "w", stdout)) return 1;
        fy_comm_set_timeout(comm, 24 * 3600.0); /* rank 0 may be preparing a corpus */
        if (fy_comm_barrier(comm, &err)) return fy_cli_fail("train", &err);
        fy_comm_set_timeout(comm, comm_timeout);
    }
    /* A wrong --backend is reported before any data preparation or file write. */
    fy_backend *be = NULL;
    if (backend) {
        if (fy_backend_create(backend, &be, &err)) return fy_cli_fail("train", &err);
        fy_backend_destroy(be);
    }

    fy_config cfg;
    fy_train_opts o;
    fy_train_opts_default(&o);
    char *saved_json = NULL, saved_backend[128] = "";
    snprintf(path, sizeof path, "%s/config.json", run_dir);
    if (resume || follower) {
        /* The run's own config wins; flags may still extend or adjust it. */
        size_t len;
        if (fy_read_file(path, &saved_json, &len, &err) || fy_config_parse(saved_json, path, &cfg, &err) ||
            fy_train_opts_from_json(saved_json, path, &o, &err))
            return fy_cli_fail("train", &err);
        cJSON *js = cJSON_Parse(saved_json);
        const cJSON *f = js ? cJSON_GetObjectItemCaseSensitive(js, "ferry") : NULL;
        const cJSON *dd = f ? cJSON_GetObjectItemCaseSensitive(f, "data_dir") : NULL;
        if (!dd || !cJSON_IsString(dd)) {
            cJSON_Delete(js);
            fy_fail(&err, "%s: no ferry.data_dir to resume from", path);
            return fy_cli_fail("train", &err);
        }
        snprintf(data_dir, sizeof data_dir, "%s", dd->valuestring);
        /* The backend is a run-time choice, never a property of the run: the
         * checkpoint is plain fp32 tensors. The recorded one is only the
         * default, and continuing elsewhere is fine (within fp32 rounding of
         * the other backend, not bit-identical to staying). */
        const cJSON *rb = f ? cJSON_GetObjectItemCaseSensitive(f, "backend") : NULL;
        if (rb && cJSON_IsString(rb) && rb->valuestring[0]) {
            snprintf(saved_backend, sizeof saved_backend, "%s", rb->valuestring);
            if (backend && strcmp(backend, saved_backend) && !follower)
                printf("note: %s was last trained on backend %s; resuming it on %s\n", run_dir, saved_backend,
                       backend);
            if (!backend) backend = saved_backend;
        }
        cJSON_Delete(js);
    } else {
        if (fy_file_exists(path)) {
            fy_fail(&err, "%s already holds a run: pass --resume to continue it, or choose another --out", run_dir);
            return fy_cli_fail("train", &err);
        }
        /* Data: a prepared shard dir, text files, or the default corpus. */
        char *files[256];
        int nf = 0;
        if (data && is_dir(data) && has_shards(data)) {
            snprintf(data_dir, sizeof data_dir, "%s", data);
        } else if (data) {
            snprintf(data_dir, sizeof data_dir, "%s/data", run_dir);
            if (text_files(data, files, 256, &nf, &err) || prepare(data_dir, files, nf, vocab, &err))
                return fy_cli_fail("train", &err);
        } else {
            char txt[FY_PATH_MAX];
            snprintf(data_dir, sizeof data_dir, "data/kjv-v%d", vocab);
            if (default_corpus("data", txt, sizeof txt, &err)) return fy_cli_fail("train", &err);
            files[nf++] = strdup(txt);
            if (prepare(data_dir, files, nf, vocab, &err)) return fy_cli_fail("train", &err);
        }
        for (int i = 0; i < nf; i++) free(files[i]);
        /* Model config: built-in or file; the vocabulary is the tokenizer's. */
        fy_tokenizer *tok;
        snprintf(path, sizeof path, "%s/tokenizer.json", data_dir);
        if (fy_tokenizer_load(path, &tok, &err)) return fy_cli_fail("train", &err);
        int V = fy_tokenizer_vocab_size(tok);
        int rc = strchr(cfgname, '.') || strchr(cfgname, '/') ? fy_config_load(cfgname, &cfg, &err)
                                                             : fy_config_builtin(cfgname, V, &cfg, &err);
        if (!rc && strchr(cfgname, '.')) {
            char *txt;
            size_t len;
            rc = fy_read_file(cfgname, &txt, &len, &err) || fy_train_opts_from_json(txt, cfgname, &o, &err);
            free(txt);
        }
        if (!rc && cfg.vocab_size != V)
            rc = fy_fail(&err, "config vocab_size %d != tokenizer vocabulary %d (%s)", cfg.vocab_size, V, path);
        cfg.bos_token_id = fy_tokenizer_bos(tok);
        cfg.eos_token_id = fy_tokenizer_eos(tok);
        if (!rc) rc = fy_mkdir_p(run_dir, &err);
        char dst[FY_PATH_MAX + 32];
        snprintf(dst, sizeof dst, "%s/tokenizer.json", run_dir);
        if (!rc) rc = fy_tokenizer_save(tok, dst, &err);
        fy_tokenizer_free(tok);
        if (rc) return fy_cli_fail("train", &err);
    }
    /* Flags over config over defaults. */
    if (steps) o.adam.total_steps = steps;
    if (batch) o.batch_size = batch;
    if (seq) o.seq_len = seq;
    if (lr > 0) {
        o.adam.lr = (float)lr;
        o.adam.min_lr = (float)lr / 10;
    }
    if (spec[8].set) o.seed = (uint64_t)seed;
    if (eval_every >= 0) o.eval_every = eval_every;
    if (ckpt_every >= 0) o.ckpt_every = ckpt_every;
    if (keep >= 0) o.keep_last = keep;
    if (log_every) o.log_every = log_every;
    o.time_limit_s = time_limit;
    o.stop_after = stop_after;
    if (abft >= 0) o.guard.abft_fraction = abft;
    if (recompute >= 0) o.guard.recompute_every = recompute;
    o.inject = getenv("FERRY_INJECT"); /* fault injection for tests (train/inject.h) */
    if (micro >= 0) o.micro_batch = micro;
    if (compress) o.compress = 1;
    if (expert_parallel) o.expert_parallel = 1;
    if (buckets >= 0) o.grad_buckets = buckets;
    if (bucket_mb >= 0) o.bucket_mb = (float)bucket_mb;
    if (zero >= 0) o.zero = zero;
    if (diloco >= 0) o.diloco_every = diloco;
    if (outer_lr >= 0) o.outer_lr = (float)outer_lr;
    if (!resume && !follower && o.micro_batch == 0 && n_ranks > 1) {
        /* Fix the micro-batch at the run's start, so that the run continues
         * bit-identically on another rank count (parallel/dp.h). */
        o.micro_batch = o.batch_size / n_ranks > 0 ? o.batch_size / n_ranks : 1;
    }
    o.comm = comm;
    if (o.adam.warmup_steps >= o.adam.total_steps) o.adam.warmup_steps = o.adam.total_steps / 10;
    if (o.seq_len > cfg.max_position_embeddings) {
        fy_fail(&err, "--seq %d exceeds max_position_embeddings %d", o.seq_len, cfg.max_position_embeddings);
        return fy_cli_fail("train", &err);
    }

    /* The backend, created before anything is written (a recorded one may not
     * exist on this machine: say how to continue elsewhere). */
    if (!backend) backend = "cpu";
    if (fy_train_backend_create(backend, &o.guard, &be, &err)) {
        if (saved_backend[0] && backend == saved_backend)
            fy_wrap(&err, "%s was last trained on '%s' (pass --backend cpu, or see ferry devices, to resume "
                          "it elsewhere)", run_dir, saved_backend);
        free(saved_json);
        return fy_cli_fail("train", &err);
    }
    /* Save and print the effective config. "backend" records where the run
     * was last trained, for information and as the --resume default. */
    char *opts = fy_train_opts_to_json(&o);
    char extra[FY_PATH_MAX + 1400];
    snprintf(extra, sizeof extra, "%.*s, \"data_dir\": \"%s\", \"backend\": \"%s\"}", (int)strlen(opts) - 1,
             opts, data_dir, backend);
    free(opts);
    char *js = fy_config_to_json(&cfg, extra);
    snprintf(path, sizeof path, "%s/config.json", run_dir);
    if (!js || (!follower && fy_write_file_atomic(path, js, strlen(js), &err))) {
        free(js);
        fy_backend_destroy(be);
        return fy_cli_fail("train", &err);
    }
    printf("effective config (%s):\n%s\n", path, js);
    free(js);
    free(saved_json);

    fy_model m;
    if (fy_model_create(&m, &cfg, be, &err)) {
        fy_backend_destroy(be);
        return fy_cli_fail("train", &err);
    }
    printf("model: %zu parameters, %d layers + %d MTP, backend %s, batch %d x %d\n",
           fy_params_count(&m.tab), cfg.num_hidden_layers, cfg.num_nextn_predict_layers, be->ops->name,
           o.batch_size, o.seq_len);
    printf("guards: NaN/spike %s, state checksums %s, ABFT on %g%% of GEMMs, re-execution every %d steps "
           "(0 = off)\n", o.guard.nonfinite ? "on" : "off", o.guard.weight_checksum ? "on" : "off",
           100 * o.guard.abft_fraction, o.guard.recompute_every);
    fflush(stdout);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    /* A run killed before its first checkpoint resumes by starting over from
     * its saved config: what a supervisor's restart needs. */
    if (resume) {
        char latest[FY_PATH_MAX + 32];
        snprintf(latest, sizeof latest, "%s/checkpoints/LATEST", run_dir);
        int *steps = NULL, n = 0;
        fy_err ignore;
        if (!fy_file_exists(latest) && (fy_ckpt_list(run_dir, &steps, &n, &ignore) != 0 || n == 0)) {
            printf("%s has no checkpoint yet: starting it from step 0\n", run_dir);
            resume = 0;
        }
        free(steps);
    }
    if (n_ranks > 1) {
        /* The others may start: rank 0 has written config.json; all take
         * rank 0's verdict on whether there is a checkpoint to resume. */
        int32_t rv = resume;
        if ((!follower && fy_comm_barrier(comm, &err)) || fy_comm_bcast(comm, &rv, sizeof rv, 0, &err)) {
            fy_model_free(&m);
            fy_backend_destroy(be);
            return fy_cli_fail("train", &err);
        }
        resume = rv;
    }
    fy_train_result res;
    int rc = fy_train_run(&m, &o, run_dir, data_dir, resume, &g_stop, &res, &err);
    fy_model_free(&m);
    fy_backend_destroy(be);
    if (rc) return fy_cli_fail("train", &err);
    char val[48] = "no validation pass (--eval-every 0)";
    if (isfinite(res.last_val_loss)) snprintf(val, sizeof val, "validation loss %.4f", res.last_val_loss);
    printf("done: step %d, train loss %.4f, %s; run directory %s\n", res.step, res.last_loss, val, run_dir);
    return res.interrupted && g_stop ? 130 : 0;
}
