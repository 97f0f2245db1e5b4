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
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/train_cli.h"
#include "ckpt/checkpoint.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "interop/host.h"
#include "model/decode.h"
#include "model/lora.h"
#include "train/lora_base.h"
#include "parallel/comm.h"
#include "train/trainer.h"

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM: stop after this step */
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

/* The command line; 0 / -1 / NULL: not given. */
typedef struct train_flags {
    const char *cfgname, *data, *out, *backend, *init_from, *add_tokens;
    int cfg_set, vocab_set;
    int steps, batch, seq, seed, seed_set, eval_every, ckpt_every, keep;
    int resume, vocab, log_every, stop_after;
    int supervise, max_restarts;
    double lr, time_limit, heartbeat, backoff, abft;
    int recompute, ranks, micro, compress, diloco, expert_parallel, buckets;
    double bucket_mb;
    int zero;
    double comm_timeout;
    double outer_lr;
    int lora_rank;
    double lora_alpha, lora_dropout;
    const char *lora_targets;
    const char *base_weights;
} train_flags;

/* One run being set up: where it lives, how it is spread over ranks, and
 * its model config and training options as they are decided. */
typedef struct train_run {
    char run_dir[FY_PATH_MAX], data_dir[FY_PATH_MAX + 64];
    char data_source[FY_PATH_MAX]; /* --data as an absolute path ("": the default corpus; unknown in older runs) */
    int vocab_asked;               /* --vocab-size at the run's start (0: an older run) */
    const char *backend;    /* the flag, else the run's recorded one, else cpu */
    char saved_backend[128]; /* --resume: where the run was last trained */
    fy_comm *comm;
    int rank, n_ranks, follower;
    fy_config cfg;
    fy_train_opts o;
    fy_host_model *init;    /* --init-from: the model whose weights start the run */
} train_run;

/* Parses the flags: 0, 1 after --help, -1 on a bad flag (err set). */
static int parse_flags(int argc, char **argv, train_flags *f, fy_err *err) {
    *f = (train_flags){
        .cfgname = "tiny", .eval_every = -1, .ckpt_every = -1, .keep = -1, .vocab = 4096,
        .max_restarts = 10, .heartbeat = 300, .backoff = 1.0, .abft = -1,
        .recompute = -1, .micro = -1, .diloco = -1, .buckets = -1, .bucket_mb = -1, .zero = -1,
        .comm_timeout = FY_COMM_TIMEOUT_DEFAULT_S,
        .outer_lr = -1, .lora_alpha = -1, .lora_dropout = -1,
    };
    fy_arg spec[] = {
        {"--config", "-c", FY_ARG_STR, &f->cfgname, "NAME|FILE", "tiny (default), small, or a config.json", 0, 0, 0},
        {"--init-from", NULL, FY_ARG_STR, &f->init_from, "MODEL", "start from MODEL's config, weights and tokenizer (a ferry run/checkpoint or a Hugging Face dir); fresh optimizer, schedule and step 0", 0, 0, 0},
        {"--add-special-tokens", NULL, FY_ARG_STR, &f->add_tokens, "TOK,...", "with --init-from: add these special tokens, growing the embedding and head by rows that start as the mean of the old ones (docs/FINETUNE.md)", 0, 0, 0},
        {"--data", "-d", FY_ARG_STR, &f->data, "FILE|DIR", "text file(s) or a prepared shard dir (default: the KJV Bible)", 0, 0, 0},
        {"--out", "-o", FY_ARG_STR, &f->out, "RUN_DIR", "run directory (default runs/CONFIG); one trainer at a time holds it (RUN_DIR/train.lock)", 0, 0, 0},
        {"--backend", "-b", FY_ARG_STR, &f->backend, "SPEC", "cpu (default; --resume: the run's last), opencl, ... (ferry devices)", 0, 0, 0},
        {"--steps", "-s", FY_ARG_INT, &f->steps, "N", "total optimizer steps", 1, 1e9, 0},
        {"--batch", NULL, FY_ARG_INT, &f->batch, "B", "sequences per step", 1, 1 << 16, 0},
        {"--seq", NULL, FY_ARG_INT, &f->seq, "T", "tokens per sequence", 1, 1 << 20, 0},
        {"--lr", NULL, FY_ARG_FLOAT, &f->lr, "LR", "peak learning rate", 1e-9, 10, 0},
        {"--seed", NULL, FY_ARG_INT, &f->seed, "S", "seed for init and data order", 0, 2147483647, 0},
        {"--eval-every", NULL, FY_ARG_INT, &f->eval_every, "N", "steps between validation passes (0 = none)", 0, 1e9, 0},
        {"--ckpt-every", NULL, FY_ARG_INT, &f->ckpt_every, "N", "steps between checkpoints (0 = end only)", 0, 1e9, 0},
        {"--keep", NULL, FY_ARG_INT, &f->keep, "K", "checkpoints kept (default 3)", 0, 1e6, 0},
        {"--log-every", NULL, FY_ARG_INT, &f->log_every, "N", "steps between progress lines", 1, 1e9, 0},
        {"--time-limit", NULL, FY_ARG_FLOAT, &f->time_limit, "SEC", "stop with a checkpoint after SEC seconds", 1, 1e9, 0},
        {"--vocab-size", NULL, FY_ARG_INT, &f->vocab, "N", "tokenizer size when preparing text (default 4096; a prepared --data dir brings its own)", 259, 1 << 20, 0},
        {"--stop-after", NULL, FY_ARG_INT, &f->stop_after, "N", "stop with a checkpoint after step N, as Ctrl-C would", 1, 1e9, 0},
        {"--resume", "-r", FY_ARG_BOOL, &f->resume, NULL, "continue RUN_DIR from its newest complete checkpoint, keeping its model config, tokenizer and data (other --config/--data/--vocab-size are refused; --steps must exceed its step)", 0, 0, 0},
        {"--supervise", NULL, FY_ARG_BOOL, &f->supervise, NULL, "restart the trainer from LATEST when it dies or hangs", 0, 0, 0},
        {"--max-restarts", NULL, FY_ARG_INT, &f->max_restarts, "N", "supervisor: restarts before giving up (default 10)", 0, 1e6, 0},
        {"--heartbeat-timeout", NULL, FY_ARG_FLOAT, &f->heartbeat, "SEC", "supervisor: no step for SEC = hung (default 300)", 0.1, 1e7, 0},
        {"--restart-backoff", NULL, FY_ARG_FLOAT, &f->backoff, "SEC", "supervisor: first wait before a restart, doubling (default 1)", 0, 3600, 0},
        {"--abft", NULL, FY_ARG_FLOAT, &f->abft, "F", "guard: fraction of GEMMs checksum-checked (ABFT; default 0.02, 0 = off)", 0, 1, 0},
        {"--recompute-every", NULL, FY_ARG_INT, &f->recompute, "N", "guard: execute every N-th step twice, compare bitwise (0 = off)", 0, 1e9, 0},
        {"--ranks", NULL, FY_ARG_INT, &f->ranks, "N", "data-parallel ranks: runs mpirun -np N (docs/SCALING.md)", 1, 4096, 0},
        {"--micro-batch", NULL, FY_ARG_INT, &f->micro, "M", "sequences per micro-batch (default: --batch / ranks)", 0, 1 << 16, 0},
        {"--compress-grads", NULL, FY_ARG_BOOL, &f->compress, NULL, "send gradients (with --diloco: the outer deltas) as int8 with error feedback (slow links)", 0, 0, 0},
        {"--expert-parallel", NULL, FY_ARG_BOOL, &f->expert_parallel, NULL, "split the routed experts over the ranks (all-to-all)", 0, 0, 0},
        {"--grad-buckets", NULL, FY_ARG_INT, &f->buckets, "0|1|2", "send gradients in buckets during the backward (default 0; 2: with a progress thread driving MPI)", 0, 2, 0},
        {"--zero", NULL, FY_ARG_INT, &f->zero, "0|1", "1: shard the AdamW moments over the ranks (ZeRO-1, default); 0: every rank keeps them whole and the gradients are all-reduced (DDP)", 0, 1, 0},
        {"--bucket-mb", NULL, FY_ARG_FLOAT, &f->bucket_mb, "MB", "gradient bucket size for --grad-buckets (default 25, as PyTorch DDP; 0: each layer as it is done)", 0, 1e6, 0},
        {"--diloco", NULL, FY_ARG_INT, &f->diloco, "H", "DiLoCo: H local steps per outer step (0 = off; slow links)", 0, 1e9, 0},
        {"--outer-lr", NULL, FY_ARG_FLOAT, &f->outer_lr, "LR", "DiLoCo outer Nesterov learning rate (default 0.7)", 0, 10, 0},
        {"--lora-rank", NULL, FY_ARG_INT, &f->lora_rank, "R", "train LoRA adapters of rank R on the frozen model (docs/FINETUNE.md)", 1, 65536, 0},
        {"--lora-alpha", NULL, FY_ARG_FLOAT, &f->lora_alpha, "A", "LoRA scale alpha/R (default 16)", 1e-6, 1e6, 0},
        {"--lora-targets", NULL, FY_ARG_STR, &f->lora_targets, "LIST", "PEFT target_modules: q_a_proj,q_b_proj,q_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj,gate_proj,up_proj,down_proj,experts or all (default)", 0, 0, 0},
        {"--lora-dropout", NULL, FY_ARG_FLOAT, &f->lora_dropout, "P", "dropout on the adapters' input (default 0)", 0, 0.999, 0},
        {"--base-weights", NULL, FY_ARG_STR, &f->base_weights, "FMT", "f32 (default), bf16, f16, q8_0 or q4_0: hold the frozen LoRA base's linears so (QLoRA-style, docs/FINETUNE.md)", 0, 0, 0},
        {"--comm-timeout", NULL, FY_ARG_FLOAT, &f->comm_timeout, "SEC", "a collective slower than SEC = a lost rank (default " FY_COMM_TIMEOUT_DEFAULT_TEXT ")", 0.1, 1e6, 0},
    };
    const int nspec = (int)(sizeof spec / sizeof spec[0]);
    char *pos[1];
    int npos;
    int r = fy_args_parse(argc, argv, spec, nspec, "train", "[options]",
                          "Train a DeepSeek-V3-architecture model (MLA, DeepSeekMoE, MTP). With no --data it\n"
                          "prepares the King James Bible once (cached under data/kjv) and trains on it.\n"
                          "Ctrl-C stops after the current step with a checkpoint; --resume continues exactly.",
                          pos, 0, &npos, err);
    for (int i = 0; i < nspec; i++)
        if (spec[i].dst == &f->seed) f->seed_set = spec[i].set;
        else if (spec[i].dst == &f->cfgname) f->cfg_set = spec[i].set;
        else if (spec[i].dst == &f->vocab) f->vocab_set = spec[i].set;
    return r;
}

/* A --config naming a file (path or *.json) rather than a built-in. */
static int config_is_file(const char *cfgname) {
    return strchr(cfgname, '/') || strchr(cfgname, '.');
}

int fy_cli_train_opts_load(const char *path, fy_train_opts *o, fy_err *err) {
    char *text = NULL;
    size_t len;
    int rc = fy_read_file(path, &text, &len, err) || fy_train_opts_from_json(text, path, o, err) ? -1 : 0;
    free(text);
    return rc;
}

/* Joins the ranks (one, outside mpirun). Under mpirun every rank runs this
 * command; rank 0 prepares the data and the run directory while the others
 * wait here, then they read its config.json. */
static int join_ranks(const train_flags *f, train_run *run, fy_comm **commp, fy_err *err) {
    if (fy_comm_init(fy_cli_mpi_launched(), f->comm_timeout, &run->comm, err)) return -1;
    fy_cli_rank_status(run->comm, -1); /* started (for fy_cli_launch_ranks) */
    *commp = run->comm;
    run->rank = fy_comm_rank(run->comm);
    run->n_ranks = fy_comm_size(run->comm);
    run->follower = run->rank > 0;
    if (f->ranks > 0 && f->ranks != run->n_ranks)
        fy_warn("--ranks %d, but mpirun started %d ranks: training on %d", f->ranks, run->n_ranks, run->n_ranks);
    if (!run->follower) return 0;
    if (!freopen("/dev/null", "w", stdout)) return fy_fail(err, "cannot silence rank %d's stdout", run->rank);
    fy_comm_set_timeout(run->comm, 24 * 3600.0); /* rank 0 may be preparing a corpus */
    if (fy_comm_barrier(run->comm, err)) return -1;
    fy_comm_set_timeout(run->comm, f->comm_timeout);
    return 0;
}

/* --resume (and every rank but 0): the run's own config.json wins; flags
 * may still extend or adjust it. */
static int load_saved_run(train_run *run, fy_err *err) {
    char path[FY_PATH_MAX + 16], *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/config.json", run->run_dir);
    if (fy_read_file(path, &text, &len, err) || fy_config_parse(text, path, &run->cfg, err) ||
        fy_train_opts_from_json(text, path, &run->o, err)) {
        free(text);
        return -1;
    }
    cJSON *js = cJSON_Parse(text);
    free(text);
    const char *dd = fy_cli_ferry_string(js, "data_dir"), *rb = fy_cli_ferry_string(js, "backend");
    const char *ds = fy_cli_ferry_string(js, "data_source");
    if (!dd) {
        cJSON_Delete(js);
        return fy_fail(err, "%s: no ferry.data_dir to resume from", path);
    }
    snprintf(run->data_dir, sizeof run->data_dir, "%s", dd);
    snprintf(run->data_source, sizeof run->data_source, "%s", ds ? ds : "");
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(js, "ferry");
    const cJSON *va = cJSON_GetObjectItemCaseSensitive(fs, "vocab_size_asked");
    run->vocab_asked = cJSON_IsNumber(va) ? va->valueint : 0;
    /* Runs record absolute paths; an older run's relative one is relative to
     * the directory it was started in. */
    if (dd[0] != '/' && !fy_file_exists(dd)) {
        cJSON_Delete(js);
        return fy_fail(err, "%s: ferry.data_dir \"%s\" is relative to the directory the run was started in: "
                            "resume from there, or write its absolute path there", path, dd);
    }
    /* The backend is a run-time choice, never a property of the run: the
     * checkpoint is plain fp32 tensors. The recorded one is only the
     * default, and continuing elsewhere is fine (within fp32 rounding of
     * the other backend, not bit-identical to staying). */
    if (rb && rb[0]) {
        snprintf(run->saved_backend, sizeof run->saved_backend, "%s", rb);
        if (run->backend && strcmp(run->backend, run->saved_backend) && !run->follower)
            printf("note: %s was last trained on backend %s; resuming it on %s\n", run->run_dir,
                   run->saved_backend, run->backend);
        if (!run->backend) run->backend = run->saved_backend;
    }
    cJSON_Delete(js);
    return 0;
}

/* --vocab-size sizes a tokenizer trained on text (it may come out smaller:
 * too few distinct pairs); a prepared --data directory and --init-from's
 * model bring their own, which a note says when it differs. */
static void note_vocab_flag(const train_flags *f, int V, const char *where) {
    if (f->vocab_set && f->vocab != V)
        printf("note: --vocab-size %d is not used: %s brings its %d-token tokenizer\n", f->vocab, where, V);
}

/* fy_train_opts.init_weights for --init-from: the model's weights. */
static int init_from_host(fy_model *m, void *ctx, fy_err *err) {
    return fy_host_to_model((const fy_host_model *)ctx, m, err);
}

/* The trainer has copied the weights: drop the host copy (fy_host_free
 * leaves it empty, so the final free at the end of train_main is a no-op). */
static void release_host(void *ctx) { fy_host_free((fy_host_model *)ctx); }

/* --init-from's model (with --add-special-tokens' rows) into run->init, the
 * trainer's initial weights. Every rank loads it (the same files, so the
 * same bits: the ranks share a filesystem, as they share the run
 * directory and the data); rank 0 also takes its config and tokenizer. */
static int load_init_model(const train_flags *f, train_run *run, fy_err *err) {
    fy_host_model *h = calloc(1, sizeof *h);
    if (!h) return fy_fail(err, "out of memory");
    if (fy_cli_host_load(f->init_from, h, err)) {
        free(h);
        return fy_wrap(err, "--init-from %s", f->init_from);
    }
    run->init = h;
    if (f->add_tokens && fy_cli_host_add_special_tokens(f->add_tokens, h, err)) return fy_wrap(err, "--init-from %s", f->init_from);
    run->o.init_weights = init_from_host;
    run->o.init_ctx = h;
    run->o.init_release = release_host;
    return 0;
}

/* A new run from --init-from MODEL: its config and tokenizer (saved into
 * the run; the data is tokenized with it), its weights kept in run->init
 * for the trainer's first step. Training options start from the defaults. */
static int start_from_model(const train_flags *f, train_run *run, fy_err *err) {
    if (f->cfg_set) return fy_fail(err, "--init-from %s takes the model's config: --config is refused", f->init_from);
    if (load_init_model(f, run, err)) return -1;
    fy_host_model *h = run->init;
    note_vocab_flag(f, fy_tokenizer_vocab_size(h->tok), f->init_from);
    run->vocab_asked = f->vocab;
    run->cfg = h->cfg;
    if (fy_cli_train_data(f->data, run->run_dir, f->vocab, h->tok, run->data_dir, sizeof run->data_dir, err))
        return f->add_tokens ? fy_wrap(err, "--add-special-tokens (prepared data needs ferry data prepare --model %s "
                                            "--add-special-tokens with the same tokens)", f->init_from)
                             : -1;
    if (fy_mkdir_p(run->run_dir, err)) return -1;
    char path[FY_PATH_MAX + 160];
    snprintf(path, sizeof path, "%s/tokenizer.json", run->run_dir);
    if (fy_tokenizer_save(h->tok, path, err)) return -1;
    printf("initialised from %s: %zu parameters\n", f->init_from, fy_params_count(&h->tab));
    return 0;
}

/* The step of a run's newest checkpoint, from its name (0: none yet; the
 * run then starts over, as resume_verdict decides). Not verified: the
 * trainer verifies what it loads. */
static int newest_step(const char *run_dir, fy_err *err) {
    char name[64];
    fy_err ignore;
    int step = 0, *steps = NULL, n = 0;
    if (fy_ckpt_read_latest(run_dir, name, sizeof name, &ignore) == 0 && sscanf(name, "step-%d", &step) == 1)
        return step;
    if (fy_ckpt_list(run_dir, &steps, &n, err)) return -1;
    step = n > 0 ? steps[0] : 0;
    free(steps);
    return step;
}

/* config.json in run_dir: refused when it holds a run with any completed
 * step (--resume continues it); a run that never completed one (stopped by
 * a check before step 1) is started anew. The caller holds the run's lock. */
static int check_no_run(const char *run_dir, fy_err *err) {
    char path[FY_PATH_MAX + 32], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/config.json", run_dir);
    if (!fy_file_exists(path)) return 0;
    fy_err ignore;
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    int stepped = fy_read_file(path, &text, &len, &ignore) == 0 && len > 0;
    free(text);
    int newest = newest_step(run_dir, &ignore);
    if (stepped || newest != 0)
        return fy_fail(err, "%s already holds a run: pass --resume to continue it, or choose another --out",
                       run_dir);
    printf("note: %s holds a run that never completed a step: starting it anew\n", run_dir);
    return 0;
}

/* A new run: its data, then the model config (built-in or a file) whose
 * vocabulary is the tokenizer's, and the tokenizer copied into the run. */
static int start_new_run(const train_flags *f, train_run *run, fy_err *err) {
    char path[FY_PATH_MAX + 160];
    if (check_no_run(run->run_dir, err)) return -1;
    if (f->data && fy_path_absolute(run->data_source, sizeof run->data_source, f->data, err)) return -1;
    if (f->init_from) return start_from_model(f, run, err);
    if (fy_cli_train_data(f->data, run->run_dir, f->vocab, NULL, run->data_dir, sizeof run->data_dir, err))
        return -1;
    fy_tokenizer *tok;
    snprintf(path, sizeof path, "%s/tokenizer.json", run->data_dir);
    if (fy_tokenizer_load(path, &tok, err)) return -1;
    int V = fy_tokenizer_vocab_size(tok);
    if (!strcmp(run->data_dir, run->data_source)) note_vocab_flag(f, V, run->data_dir);
    run->vocab_asked = f->vocab;
    fy_config *cfg = &run->cfg;
    int rc = config_is_file(f->cfgname) ? fy_config_load(f->cfgname, cfg, err)
                                        : fy_config_builtin(f->cfgname, V, cfg, err);
    if (!rc && strchr(f->cfgname, '.')) rc = fy_cli_train_opts_load(f->cfgname, &run->o, err);
    if (!rc && cfg->vocab_size != V)
        rc = fy_fail(err, "config vocab_size %d != tokenizer vocabulary %d (%s)", cfg->vocab_size, V, path);
    cfg->bos_token_id = fy_tokenizer_bos(tok);
    cfg->eos_token_id = fy_tokenizer_eos(tok);
    if (!rc) rc = fy_mkdir_p(run->run_dir, err);
    snprintf(path, sizeof path, "%s/tokenizer.json", run->run_dir);
    if (!rc) rc = fy_tokenizer_save(tok, path, err);
    fy_tokenizer_free(tok);
    return rc;
}

/* --base-weights: fixed when a LoRA run starts; on --resume only the run's own. */
static int apply_base_weights(const train_flags *f, fy_train_opts *o, fy_err *err) {
    fy_quant q;
    if (!f->base_weights) return 0;
    if (fy_quant_parse(f->base_weights, &q, err)) return fy_wrap(err, "--base-weights");
    if (f->resume && (int)q != o->lora_base_weights)
        return fy_fail(err, "--base-weights %s: this run holds its LoRA base as %s (--resume keeps it): drop "
                            "--base-weights", f->base_weights, fy_quant_name((fy_quant)o->lora_base_weights));
    if (!f->resume && !f->lora_rank) return fy_fail(err, "--base-weights needs --lora-rank (only a LoRA base is frozen)");
    o->lora_base_weights = (int)q;
    return 0;
}

/* --lora-*: fixed when a run starts (a resumed run keeps its own). */
static int apply_lora_flags(const train_flags *f, fy_train_opts *o, fy_err *err) {
    if (apply_base_weights(f, o, err)) return -1;
    int given = f->lora_rank || f->lora_alpha >= 0 || f->lora_dropout >= 0 || f->lora_targets;
    if (!given) return 0;
    if (f->resume) return fy_fail(err, "--lora-*: a run's LoRA settings are fixed when it starts (--resume keeps them)");
    if (!f->lora_rank) return fy_fail(err, "--lora-alpha, --lora-targets and --lora-dropout need --lora-rank");
    o->lora_rank = f->lora_rank;
    if (f->lora_alpha >= 0) o->lora_alpha = (float)f->lora_alpha;
    if (f->lora_dropout >= 0) o->lora_dropout = (float)f->lora_dropout;
    unsigned t;
    if (f->lora_targets && fy_lora_parse_targets(f->lora_targets, &t, err)) return fy_wrap(err, "--lora-targets");
    if (f->lora_targets) o->lora_targets = (int)t;
    o->lora_base_seeded = !f->init_from;
    o->lora_base = f->init_from;
    return 0;
}

/* --resume of a LoRA run whose base came from --init-from: that base again,
 * from the source its record names (the trainer checks its weights). */
static int reload_lora_base(train_run *run, fy_err *err) {
    char src[FY_PATH_MAX];
    if (run->o.lora_rank == 0 || run->o.lora_base_seeded) return 0;
    if (fy_lora_base_source(run->run_dir, src, sizeof src, err)) return -1;
    fy_host_model *h = calloc(1, sizeof *h);
    if (!h) return fy_fail(err, "out of memory");
    run->init = h;
    if (fy_cli_host_load(src, h, err)) return fy_wrap(err, "the LoRA base %s of %s", src, run->run_dir);
    run->o.init_weights = init_from_host;
    run->o.init_ctx = h;
    run->o.init_release = release_host;
    printf("LoRA base: %s\n", src);
    return 0;
}

/* --config on --resume: the run's model must be the one it names. */
static int check_config_flag(const train_flags *f, const train_run *run, fy_err *err) {
    fy_config c;
    if (config_is_file(f->cfgname) ? fy_config_load(f->cfgname, &c, err)
                                   : fy_config_builtin(f->cfgname, run->cfg.vocab_size, &c, err))
        return fy_wrap(err, "--config %s", f->cfgname);
    c.bos_token_id = run->cfg.bos_token_id;
    c.eos_token_id = run->cfg.eos_token_id;
    const fy_config_json_opts jo = {.no_ferry = 1};
    char *a = fy_config_to_json_opts(&c, &jo), *b = fy_config_to_json_opts(&run->cfg, &jo);
    int same = a && b && !strcmp(a, b);
    free(a);
    free(b);
    if (same) return 0;
    return fy_fail(err, "--config %s is not the model of %s (--resume keeps the run's model, %s/config.json): drop "
                        "--config, or start a new run with another --out", f->cfgname, run->run_dir, run->run_dir);
}

/* --resume keeps the run's model config, tokenizer and data: a flag that
 * names others is refused (the same ones are fine: a supervisor's restart
 * repeats the first command line), and so is --steps at or below the
 * step the run is at. total: the run's own length (before --steps).
 * 1: the run is complete and nothing was asked of it. */
static int check_resume_flags(const train_flags *f, train_run *run, int total, fy_err *err) {
    char abs[FY_PATH_MAX], dd[FY_PATH_MAX], path[FY_PATH_MAX + 32];
    if (f->data) {
        if (fy_path_absolute(abs, sizeof abs, f->data, err) || fy_path_absolute(dd, sizeof dd, run->data_dir, err))
            return -1;
        if (strcmp(abs, dd) && strcmp(abs, run->data_source))
            return fy_fail(err, "--data %s: %s trains on %s (--resume keeps a run's data): drop --data, or train "
                                "on new data in a new run (--init-from %s --data %s --out NEW)",
                           f->data, run->run_dir, run->data_source[0] ? run->data_source : run->data_dir,
                           run->run_dir, f->data);
    }
    if (f->cfg_set && check_config_flag(f, run, err)) return -1;
    if (f->vocab_set) {
        fy_tokenizer *tok;
        snprintf(path, sizeof path, "%s/tokenizer.json", run->run_dir);
        if (fy_tokenizer_load(path, &tok, err)) return -1;
        int V = fy_tokenizer_vocab_size(tok);
        fy_tokenizer_free(tok);
        if (f->vocab != run->vocab_asked && f->vocab != V)
            return fy_fail(err, "--vocab-size %d: %s was started with --vocab-size %d and has a %d-token tokenizer "
                                "(--resume keeps the run's tokenizer): drop --vocab-size", f->vocab, run->run_dir,
                           run->vocab_asked, V);
    }
    const int now = newest_step(run->run_dir, err);
    if (now < 0) return -1;
    const int want = f->steps ? f->steps : total;
    if (want < now || (want == now && f->steps && total != now))
        return fy_fail(err, "--steps %d: %s is already at step %d: pass --steps above %d to train further",
                       f->steps, run->run_dir, now, now);
    if (want == now) {
        printf("%s is complete at step %d: nothing to train (pass --steps above %d to continue it)\n",
               run->run_dir, now, now);
        return 1;
    }
    printf("resuming %s at step %d of %d: keeping its model config, tokenizer and data (%s)\n", run->run_dir, now,
           want, run->data_dir);
    return 0;
}

/* Flags over config over defaults. */
static int apply_flags(const train_flags *f, train_run *run, fy_err *err) {
    fy_train_opts *o = &run->o;
    if (f->steps) o->adam.total_steps = f->steps;
    if (f->batch) o->batch_size = f->batch;
    if (f->seq) o->seq_len = f->seq;
    if (f->lr > 0) {
        o->adam.lr = (float)f->lr;
        o->adam.min_lr = (float)f->lr / 10;
    }
    if (f->seed_set) o->seed = (uint64_t)f->seed;
    if (f->eval_every >= 0) o->eval_every = f->eval_every;
    if (f->ckpt_every >= 0) o->ckpt_every = f->ckpt_every;
    if (f->keep >= 0) o->keep_last = f->keep;
    if (f->log_every) o->log_every = f->log_every;
    o->time_limit_s = f->time_limit;
    o->stop_after = f->stop_after;
    if (f->abft >= 0) o->guard.abft_fraction = f->abft;
    if (f->recompute >= 0) o->guard.recompute_every = f->recompute;
    o->inject = getenv("FERRY_INJECT"); /* fault injection for tests (train/inject.h) */
    if (f->micro >= 0) o->micro_batch = f->micro;
    if (f->compress) o->compress = 1;
    if (f->expert_parallel) o->expert_parallel = 1;
    if (f->buckets >= 0) o->grad_buckets = f->buckets;
    if (f->bucket_mb >= 0) o->bucket_mb = (float)f->bucket_mb;
    if (f->zero >= 0) o->zero = f->zero;
    if (f->diloco >= 0) o->diloco_every = f->diloco;
    if (f->outer_lr >= 0) o->outer_lr = (float)f->outer_lr;
    if (apply_lora_flags(f, o, err)) return -1;
    if (!f->resume && !run->follower && o->micro_batch == 0 && run->n_ranks > 1) {
        /* Fix the micro-batch at the run's start, so that the run continues
         * bit-identically on another rank count (parallel/dp.h). */
        o->micro_batch = o->batch_size / run->n_ranks > 0 ? o->batch_size / run->n_ranks : 1;
    }
    o->comm = run->comm;
    if (o->adam.warmup_steps >= o->adam.total_steps) o->adam.warmup_steps = o->adam.total_steps / 10;
    if (o->seq_len > run->cfg.max_position_embeddings)
        return fy_fail(err, "--seq %d exceeds max_position_embeddings %d", o->seq_len,
                       run->cfg.max_position_embeddings);
    return 0;
}

/* The backend, created before anything is written (a recorded one may not
 * exist on this machine: say how to continue elsewhere). */
static int create_backend(train_run *run, fy_backend **be, fy_err *err) {
    if (!run->backend) run->backend = "cpu";
    if (!fy_train_backend_create(run->backend, &run->o.guard, fy_cli_backend_opts(&(fy_backend_opts){0}), be, err)) return 0;
    if (run->saved_backend[0] && run->backend == run->saved_backend)
        fy_wrap(err, "%s was last trained on '%s' (pass --backend cpu, or see ferry devices, to resume "
                     "it elsewhere)", run->run_dir, run->saved_backend);
    return -1;
}

/* The "ferry" section of config.json: the training options, the data
 * directory (absolute), "data_source" (--data, absolute; absent for the
 * default corpus), "vocab_size_asked" (--vocab-size at the start, so a
 * restart repeating it is told apart from another), and "backend", where
 * the run was last trained (for
 * information and as the --resume default). */
static char *ferry_section(const train_run *run) {
    char *opts = fy_train_opts_to_json(&run->o);
    cJSON *js = opts ? cJSON_Parse(opts) : NULL;
    free(opts);
    char *text = NULL;
    if (js && cJSON_AddStringToObject(js, "data_dir", run->data_dir) &&
        (!run->data_source[0] || cJSON_AddStringToObject(js, "data_source", run->data_source)) &&
        (!run->vocab_asked || cJSON_AddNumberToObject(js, "vocab_size_asked", run->vocab_asked)) &&
        cJSON_AddStringToObject(js, "backend", run->backend))
        text = cJSON_PrintUnformatted(js);
    cJSON_Delete(js);
    return text;
}

/* Saves (rank 0) and prints the effective config. */
static int save_config(const train_run *run, fy_err *err) {
    char path[FY_PATH_MAX + 16];
    char *extra = ferry_section(run), *js = extra ? fy_config_to_json(&run->cfg, extra) : NULL;
    free(extra);
    if (!js) return fy_fail(err, "cannot build the run's config.json (out of memory)");
    snprintf(path, sizeof path, "%s/config.json", run->run_dir);
    if (!run->follower && fy_write_file_atomic(path, js, strlen(js), err)) {
        free(js);
        return -1;
    }
    printf("effective config (%s):\n%s\n", path, js);
    free(js);
    return 0;
}

static void print_model(const train_run *run, const fy_model *m, const fy_backend *be) {
    const fy_train_opts *o = &run->o;
    printf("model: %zu parameters, %d layers + %d MTP, backend %s, batch %d x %d\n", fy_params_count(&m->tab),
           run->cfg.num_hidden_layers, run->cfg.num_nextn_predict_layers, be->ops->name, o->batch_size,
           o->seq_len);
    printf("guards: NaN/spike %s, state checksums %s, ABFT on %g%% of GEMMs, re-execution every %d steps "
           "(0 = off)\n", o->guard.nonfinite ? "on" : "off", o->guard.weight_checksum ? "on" : "off",
           100 * o->guard.abft_fraction, o->guard.recompute_every);
    fflush(stdout);
}

/* Whether to resume from a checkpoint: a run killed before its first one
 * resumes by starting over from its saved config (what a supervisor's
 * restart needs). With ranks, all take rank 0's verdict, once rank 0 has
 * written config.json (the others may start then). */
static int resume_verdict(const train_run *run, int *resume, fy_err *err) {
    if (*resume) {
        char latest[FY_PATH_MAX + 32];
        snprintf(latest, sizeof latest, "%s/checkpoints/LATEST", run->run_dir);
        int *steps = NULL, n = 0;
        fy_err ignore;
        if (!fy_file_exists(latest) && (fy_ckpt_list(run->run_dir, &steps, &n, &ignore) != 0 || n == 0)) {
            printf("%s has no checkpoint yet: starting it from step 0\n", run->run_dir);
            *resume = 0;
        }
        free(steps);
    }
    if (run->n_ranks == 1) return 0;
    int32_t rv = *resume;
    if ((!run->follower && fy_comm_barrier(run->comm, err)) || fy_comm_bcast(run->comm, &rv, sizeof rv, 0, err))
        return -1;
    *resume = rv;
    return 0;
}

/* Builds the model on the backend (taking it over) and trains. */
static int train(train_run *run, fy_backend *be, int resume, fy_err *err) {
    fy_model m;
    if (fy_model_create(&m, &run->cfg, be, err)) {
        fy_backend_destroy(be);
        return 1;
    }
    print_model(run, &m, be);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fy_train_result res;
    int rc = resume_verdict(run, &resume, err);
    if (!rc) rc = fy_train_run(&m, &run->o, run->run_dir, run->data_dir, resume, &g_stop, &res, err);
    fy_model_free(&m);
    fy_backend_destroy(be);
    if (rc) return 1;
    char val[80] = "no validation pass (--eval-every 0)";
    if (run->o.eval_every > 0) snprintf(val, sizeof val, "no validation pass yet");
    if (isfinite(res.last_val_loss) && res.val_step == res.step)
        snprintf(val, sizeof val, "validation loss %.4f", res.last_val_loss);
    else if (isfinite(res.last_val_loss)) /* stopped between evaluations */
        snprintf(val, sizeof val, "validation loss %.4f at step %d", res.last_val_loss, res.val_step);
    printf("done: step %d, train loss %.4f, %s; run directory %s\n", res.step, res.last_loss, val, run->run_dir);
    return res.interrupted && g_stop ? 130 : 0;
}

/* ---- the run directory's lock ---- */

#define RUN_LOCK "train.lock"

/* Whether pid is this process's parent, grandparent, ... (/proc/PID/stat's
 * fourth field, after the command name in parentheses). */
static int is_ancestor(long pid) {
    long p = (long)getppid();
    for (int depth = 0; p > 1 && depth < 64; depth++) {
        if (p == pid) return 1;
        char path[64], *text;
        size_t len;
        fy_err ignore;
        snprintf(path, sizeof path, "/proc/%ld/stat", p);
        if (fy_read_file(path, &text, &len, &ignore)) return 0;
        const char *close = strrchr(text, ')');
        if (!close || sscanf(close + 1, " %*c %ld", &p) != 1) p = 0;
        free(text);
    }
    return 0;
}

/* One process trains in a run directory at a time: the lock RUN_DIR/
 * train.lock, held until this process ends. Its holder may be the
 * supervisor or the --ranks launcher above this process, which took it for
 * the run (and rank 0 under mpirun is the one that takes it; the other
 * ranks write nothing there). A lock whose holder ended without releasing
 * it (killed) is free again: taken over, saying so. */
static int lock_run(const char *run_dir, int resume, fy_dir_lock *lk, fy_err *err) {
    char host[256];
    fy_lock_owner o;
    if (resume && !fy_file_exists(run_dir)) return fy_fail(err, "--resume %s: no such run directory", run_dir);
    if (fy_mkdir_p(run_dir, err)) return -1;
    int r = fy_dir_lock_take(run_dir, RUN_LOCK, lk, &o, err);
    if (r < 0) return -1;
    fy_host_name(host, sizeof host);
    const int here = o.pid > 0 && !strcmp(o.host, host);
    if (r == 1 && here && is_ancestor(o.pid)) return 0;
    if (r == 1 && here && kill((pid_t)o.pid, 0) != 0 && errno == ESRCH) /* its children share the lock */
        return fy_fail(err, "%s is in use: %s/%s names pid %ld, which has ended, but a process it started (a "
                            "supervised trainer) still holds the lock: stop that one (fuser %s/%s names it)",
                       run_dir, run_dir, RUN_LOCK, o.pid, run_dir, RUN_LOCK);
    if (r == 1 && o.pid > 0)
        return fy_fail(err, "%s is in use by ferry train pid %ld on %s (%s/%s): wait for it to end, stop it, or "
                            "choose another --out", run_dir, o.pid, o.host, run_dir, RUN_LOCK);
    if (r == 1)
        return fy_fail(err, "%s is in use by another ferry train (%s/%s is locked)", run_dir, run_dir, RUN_LOCK);
    if (o.pid > 0)
        fy_warn("%s/%s was left by pid %ld on %s, which %s: taking it over", run_dir, RUN_LOCK, o.pid, o.host,
                here && kill((pid_t)o.pid, 0) != 0 ? "is no longer running" : "no longer holds it");
    return 0;
}

/* train_main's own result: an exit code; 1 after a failure in err. */
static int train_main(int argc, char **argv, fy_comm **commp, fy_dir_lock *lock, fy_err *err) {
    train_flags f;
    int r = parse_flags(argc, argv, &f, err);
    if (r) return r > 0 ? 0 : 1;
    train_run run = {.backend = f.backend};
    fy_train_opts_default(&run.o);
    if (f.out)
        snprintf(run.run_dir, sizeof run.run_dir, "%s", f.out);
    else
        snprintf(run.run_dir, sizeof run.run_dir, "runs/%s", config_is_file(f.cfgname) ? "custom" : f.cfgname);
    /* The supervisor and the --ranks launcher hold the lock for their children. */
    if (f.supervise || (f.ranks > 0 && !fy_cli_mpi_launched())) {
        if (lock_run(run.run_dir, f.resume, lock, err)) return 1;
        if (!f.supervise) return fy_cli_launch_ranks(argc, argv, f.ranks);
        fy_cli_supervise_args sa = {run.run_dir, f.resume, f.max_restarts, f.batch, f.heartbeat, f.backoff};
        return fy_cli_train_supervised(argc, argv, &sa);
    }
    if (join_ranks(&f, &run, commp, err)) return 1;
    /* A wrong --backend is reported before any data preparation or file write. */
    fy_backend *be = NULL;
    if (f.backend) {
        if (fy_backend_create_opts(f.backend, fy_cli_backend_opts(&(fy_backend_opts){0}), &be, err)) return 1;
        fy_backend_destroy(be);
    }
    if (f.add_tokens && (!f.init_from || f.lora_rank)) {
        fy_fail(err, f.lora_rank ? "--add-special-tokens with --lora-rank: the new embedding and head rows would stay "
                                   "frozen at their mean init (LoRA trains only adapters); fine-tune fully"
                                 : "--add-special-tokens grows a model given with --init-from");
        return 1;
    }
    if (f.init_from && f.resume) {
        fy_fail(err, "--init-from with --resume: a resumed run continues from its own checkpoint");
        return 1;
    }
    if (!run.follower && lock_run(run.run_dir, f.resume, lock, err)) return 1;
    int rc = 1;
    if (f.resume || run.follower ? load_saved_run(&run, err) : start_new_run(&f, &run, err)) goto done;
    const int total = run.o.adam.total_steps;
    if (apply_flags(&f, &run, err)) goto done;
    if (f.resume && !run.follower) { /* before anything is loaded or written */
        int r = check_resume_flags(&f, &run, total, err);
        if (r == 1 && run.n_ranks > 1) fy_fail(err, "%s is complete: nothing to train", run.run_dir);
        if (r) {
            rc = r == 1 && run.n_ranks == 1 ? 0 : 1;
            goto done;
        }
    }
    /* Ranks 1.. of a new --init-from run load the model as rank 0 did; a
     * resumed run's weights come from its checkpoint (a LoRA run's base
     * from the source its record names). */
    const int follow_new = run.follower && !f.resume && f.init_from;
    if ((follow_new ? load_init_model(&f, &run, err) : (f.resume || run.follower) && reload_lora_base(&run, err)) ||
        create_backend(&run, &be, err))
        goto done;
    if (save_config(&run, err)) {
        fy_backend_destroy(be);
        goto done;
    }
    rc = train(&run, be, f.resume, err);
done:
    if (run.init) fy_host_free(run.init);
    free(run.init);
    return rc;
}

int fy_cmd_train(int argc, char **argv) {
    fy_comm *comm = NULL;
    fy_dir_lock lock = {-1};
    fy_err err;
    err.msg[0] = '\0';
    int rc = train_main(argc, argv, &comm, &lock, &err);
    fy_dir_lock_release(&lock);
    if (rc == 1 && err.msg[0]) fy_cli_fail("train", &err);
    if (!comm) return rc;
    if (fy_comm_size(comm) > 1 && fy_comm_lost_peer(comm)) rc = FY_EXIT_RANK_LOST;
    fy_cli_rank_status(comm, rc);
    fflush(stdout);
    fflush(stderr);
    /* A rank that failed alone would leave the others waiting: end the job. */
    if (rc != 0 && rc != 130 && fy_comm_size(comm) > 1) fy_comm_abort(comm, rc);
    fy_comm_finalize(comm);
    return rc;
}
