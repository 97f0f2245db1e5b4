/* The training loop (trainer.h) and what it needs around it: the trainer's
 * options as JSON, validation, metrics.jsonl and loss.svg, checkpoints with
 * trainer_state.json, and the guards' rollback. fy_train_run reads top to
 * bottom: set up; per step fetch, execute, check, log, evaluate, checkpoint;
 * finish. It reaches the hardware only through backend.h. */
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt/async.h"
#include "ckpt/checkpoint.h"
#include "core/clock.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "model/lora.h"
#include "model/lora_qbase.h"
#include "parallel/dp.h"
#include "parallel/ep.h"
#include "train/guard.h"
#include "train/inject.h"
#include "train/jsonl.h"
#include "train/lora_base.h"
#include "train/loader.h"
#include "train/plot.h"

void fy_train_opts_default(fy_train_opts *o) {
    memset(o, 0, sizeof *o);
    fy_adamw_opts a = {2e-3f, 2e-4f, 50, 600, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    o->adam = a;
    o->batch_size = 8;
    o->seq_len = 256;
    o->seed = 1337;
    o->eval_every = 100;
    o->eval_batches = 8;
    o->ckpt_every = 200;
    o->keep_last = 3;
    o->log_every = 10;
    o->outer_lr = 0.7f;
    o->outer_momentum = 0.5f; /* 0.9 (the paper's) was worse for few outer steps: docs/SCALING.md */
    o->grad_buckets = 0; /* measured slower with Open MPI here: docs/SCALING.md */
    o->bucket_mb = 25;   /* PyTorch DDP's bucket_cap_mb */
    o->zero = 1;
    o->lora_alpha = 16.0f;            /* with rank 8: scale 2, a common choice */
    o->lora_targets = FY_LORA_ALL;
    o->lora_base_seeded = 1;
    fy_guard_opts_default(&o->guard);
}

/* ---- the "ferry" object of config.json ---- */

/* One key of the "ferry" object: its range, whether it must be an integer,
 * and the member it sets. Read and written in this order. */
/* K_TARGETS: LoRA target bits (an unsigned int member), written as a list
 * of PEFT target_modules names; read from that list, a comma-separated
 * string, or the bit mask runs before 2026-12-06 wrote. */
/* K_QUANT: a weight format (fy_quant, an int member) written and read as
 * its name ("q8_0"). */
typedef enum { K_FLOAT, K_DOUBLE, K_INT, K_U64, K_TARGETS, K_QUANT } key_type;
typedef struct opt_key {
    const char *key;
    double lo, hi;
    key_type type;
    size_t off;
} opt_key;

#define KEY(name, lo, hi, type, member) {name, lo, hi, type, offsetof(fy_train_opts, member)}
static const opt_key opt_keys[] = {
    KEY("lr", 0, 10, K_FLOAT, adam.lr),
    KEY("min_lr", 0, 10, K_FLOAT, adam.min_lr),
    KEY("warmup_steps", 0, 1e9, K_INT, adam.warmup_steps),
    KEY("total_steps", 1, 1e9, K_INT, adam.total_steps),
    KEY("beta1", 0, 0.999999, K_FLOAT, adam.beta1),
    KEY("beta2", 0, 0.999999999, K_FLOAT, adam.beta2),
    KEY("eps", 0, 1, K_FLOAT, adam.eps),
    KEY("weight_decay", 0, 10, K_FLOAT, adam.weight_decay),
    KEY("grad_clip", 0, 1e9, K_FLOAT, adam.grad_clip),
    KEY("batch_size", 1, 1 << 20, K_INT, batch_size),
    KEY("seq_len", 1, 1 << 20, K_INT, seq_len),
    KEY("seed", 0, 9007199254740992.0, K_U64, seed),
    KEY("eval_every", 0, 1e9, K_INT, eval_every),
    KEY("eval_batches", 1, 1e6, K_INT, eval_batches),
    KEY("ckpt_every", 0, 1e9, K_INT, ckpt_every),
    KEY("keep_last", 0, 1e6, K_INT, keep_last),
    KEY("log_every", 1, 1e9, K_INT, log_every),
    KEY("guard_nonfinite", 0, 1, K_INT, guard.nonfinite),
    KEY("guard_spike_window", 0, 1e6, K_INT, guard.spike_window),
    KEY("guard_spike_min", 2, 1e6, K_INT, guard.spike_min),
    KEY("guard_spike_z", 0, 1e9, K_DOUBLE, guard.spike_z),
    KEY("guard_spike_ratio", 0, 1e9, K_DOUBLE, guard.spike_ratio),
    KEY("guard_snapshot_every", 1, 1e9, K_INT, guard.snapshot_every),
    KEY("guard_max_failures", 1, 1e6, K_INT, guard.max_failures),
    KEY("guard_weight_checksum", 0, 1, K_INT, guard.weight_checksum),
    KEY("abft_fraction", 0, 1, K_DOUBLE, guard.abft_fraction),
    KEY("guard_recompute_every", 0, 1e9, K_INT, guard.recompute_every),
    KEY("micro_batch", 0, 1 << 20, K_INT, micro_batch),
    KEY("compress_grads", 0, 1, K_INT, compress),
    KEY("diloco_every", 0, 1e9, K_INT, diloco_every),
    KEY("outer_lr", 0, 10, K_FLOAT, outer_lr),
    KEY("outer_momentum", 0, 0.999999, K_FLOAT, outer_momentum),
    KEY("expert_parallel", 0, 1, K_INT, expert_parallel),
    KEY("grad_buckets", 0, 2, K_INT, grad_buckets),
    KEY("bucket_mb", 0, 1e6, K_FLOAT, bucket_mb),
    KEY("zero", 0, 1, K_INT, zero),
    KEY("lora_rank", 0, 65536, K_INT, lora_rank),
    KEY("lora_alpha", 0, 1e6, K_FLOAT, lora_alpha),
    KEY("lora_dropout", 0, 0.999, K_FLOAT, lora_dropout),
    KEY("lora_targets", 1, FY_LORA_ALL, K_TARGETS, lora_targets),
    KEY("lora_base_seeded", 0, 1, K_INT, lora_base_seeded),
    KEY("lora_base_weights", 0, 0, K_QUANT, lora_base_weights),
};
#undef KEY

/* ferry.lora_targets as a list of names or a comma-separated string. */
static int read_targets(const cJSON *v, const char *where, unsigned *out, fy_err *err) {
    if (cJSON_IsString(v)) {
        if (fy_lora_parse_targets(v->valuestring, out, err)) return fy_wrap(err, "%s: ferry.lora_targets", where);
        return 0;
    }
    if (!cJSON_IsArray(v)) return fy_fail(err, "%s: ferry.lora_targets must be a list of names", where);
    *out = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        unsigned bits;
        if (!cJSON_IsString(e)) return fy_fail(err, "%s: ferry.lora_targets must list names (strings)", where);
        if (fy_lora_parse_targets(e->valuestring, &bits, err)) return fy_wrap(err, "%s: ferry.lora_targets", where);
        *out |= bits;
    }
    if (!*out) return fy_fail(err, "%s: ferry.lora_targets is an empty list", where);
    return 0;
}

/* Sets k's member of o from obj[k->key] when present (not null). */
static int read_key(const cJSON *obj, const opt_key *k, const char *where, fy_train_opts *o, fy_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, k->key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (k->type == K_QUANT) {
        fy_quant q;
        if (!cJSON_IsString(v)) return fy_fail(err, "%s: ferry.%s must be a weight format name", where, k->key);
        if (fy_quant_parse(v->valuestring, &q, err)) return fy_wrap(err, "%s: ferry.%s", where, k->key);
        *(int *)((char *)o + k->off) = (int)q;
        return 0;
    }
    if (k->type == K_TARGETS && !cJSON_IsNumber(v)) {
        unsigned bits;
        if (read_targets(v, where, &bits, err)) return -1;
        *(int *)((char *)o + k->off) = (int)bits;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return fy_fail(err, "%s: ferry.%s must be a number", where, k->key);
    double d = v->valuedouble;
    if (k->type != K_FLOAT && k->type != K_DOUBLE && d != floor(d))
        return fy_fail(err, "%s: ferry.%s=%g must be an integer", where, k->key, d);
    if (!(d >= k->lo && d <= k->hi))
        return fy_fail(err, "%s: ferry.%s=%g is outside [%g, %g]", where, k->key, d, k->lo, k->hi);
    void *p = (char *)o + k->off;
    if (k->type == K_FLOAT) *(float *)p = (float)d;
    else if (k->type == K_DOUBLE) *(double *)p = d;
    else if (k->type == K_INT || k->type == K_TARGETS) *(int *)p = (int)d;
    else *(uint64_t *)p = (uint64_t)d;
    return 0;
}

int fy_train_opts_from_json(const char *config_json, const char *where, fy_train_opts *o, fy_err *err) {
    cJSON *root = cJSON_Parse(config_json);
    if (!root) return fy_fail(err, "%s: not valid JSON", where);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "ferry");
    int rc = 0;
    for (size_t i = 0; f && cJSON_IsObject(f) && i < sizeof opt_keys / sizeof opt_keys[0] && !rc; i++)
        rc = read_key(f, &opt_keys[i], where, o, err);
    cJSON_Delete(root);
    return rc;
}

/* The target bits as a JSON list of names (PEFT's target_modules). */
static void add_targets(cJSON *j, const char *key, unsigned bits) {
    char names[512], *save = NULL;
    fy_lora_targets_string(bits, names, sizeof names);
    cJSON *a = cJSON_AddArrayToObject(j, key);
    for (char *t = strtok_r(names, ",", &save); a && t; t = strtok_r(NULL, ",", &save))
        cJSON_AddItemToArray(a, cJSON_CreateString(t));
}

char *fy_train_opts_to_json(const fy_train_opts *o) {
    cJSON *j = cJSON_CreateObject();
    for (size_t i = 0; j && i < sizeof opt_keys / sizeof opt_keys[0]; i++) {
        const opt_key *k = &opt_keys[i];
        const void *p = (const char *)o + k->off;
        if (k->type == K_FLOAT) fy_json_add_float(j, k->key, *(const float *)p);
        else if (k->type == K_DOUBLE) cJSON_AddNumberToObject(j, k->key, *(const double *)p);
        else if (k->type == K_INT) cJSON_AddNumberToObject(j, k->key, *(const int *)p);
        else if (k->type == K_TARGETS) add_targets(j, k->key, (unsigned)*(const int *)p);
        else if (k->type == K_QUANT) cJSON_AddStringToObject(j, k->key, fy_quant_name((fy_quant)*(const int *)p));
        else cJSON_AddNumberToObject(j, k->key, (double)*(const uint64_t *)p);
    }
    char *s = fy_json_print_spaced(j, 0);
    cJSON_Delete(j);
    return s;
}

int fy_train_backend_create(const char *spec, const fy_guard_opts *g, const fy_backend_opts *bo, fy_backend **out,
                            fy_err *err) {
    if (!spec || !*spec) spec = "cpu";
    if (g->abft_fraction <= 0 || !strncmp(spec, "chaos", 5)) return fy_backend_create_opts(spec, bo, out, err);
    char wrapped[256];
    if (snprintf(wrapped, sizeof wrapped, "chaos:%s", spec) >= (int)sizeof wrapped)
        return fy_fail(err, "backend spec too long: %.64s...", spec);
    return fy_backend_create_opts(wrapped, bo, out, err);
}

/* Token buffers for B*T inputs and labels. */
static int alloc_batch(size_t n, int32_t **in, int32_t **lab, fy_err *err) {
    *in = malloc(n * sizeof **in);
    *lab = malloc(n * sizeof **lab);
    if (*in && *lab) return 0;
    free(*in);
    free(*lab);
    *in = *lab = NULL;
    return fy_fail(err, "out of memory");
}

/* ---- validation ---- */

/* The main-head loss of validation batch b, evaluated whole. */
static int val_batch_loss(fy_model *m, fy_loader *val, uint64_t b, int B, int T, int32_t *in, int32_t *lab,
                          fy_loss *l, fy_err *err) {
    return fy_loader_val_batch(val, b, 0, 1, B, T, in, lab, err) || fy_model_forward(m, in, lab, B, T, 0, l, err)
               ? -1 : 0;
}

int fy_eval_loss(fy_model *m, fy_loader *val, int B, int T, int n, double *loss, fy_err *err) {
    uint64_t avail;
    int32_t *in, *lab;
    if (fy_loader_val_batches(val, 1, B, T, (uint64_t)n, &avail, err) ||
        alloc_batch((size_t)B * T, &in, &lab, err))
        return -1;
    double sum = 0;
    long count = 0;
    int rc = 0;
    for (uint64_t i = 0; i < avail && !rc; i++) {
        fy_loss l;
        rc = val_batch_loss(m, val, i, B, T, in, lab, &l, err);
        if (!rc) {
            sum += l.main * l.n_main;
            count += l.n_main;
        }
    }
    free(in);
    free(lab);
    *loss = count ? sum / count : NAN;
    return rc ? -1 : 0;
}

/* Validation over the ranks: batch i is evaluated whole by rank i mod N, and
 * the per-batch sums are added in batch order, so the loss is the one a
 * single rank computes. */
static int eval_loss_dp(fy_model *m, fy_dp *dp, fy_loader *val, int B, int T, int n, double *loss, fy_err *err) {
    if (dp->size == 1) return fy_eval_loss(m, val, B, T, n, loss, err);
    uint64_t avail;
    if (fy_loader_val_batches(val, 1, B, T, (uint64_t)n, &avail, err)) return -1;
    int32_t *in = NULL, *lab = NULL;
    size_t per = (avail + dp->size - 1) / dp->size;
    double *mine = calloc(2 * per + 1, sizeof *mine), *all = calloc(2 * per * dp->size + 1, sizeof *all);
    int rc = alloc_batch((size_t)B * T, &in, &lab, err);
    if (!rc && (!mine || !all)) rc = fy_fail(err, "out of memory");
    /* With expert parallelism every forward is collective: a rank out of
     * batches runs its first one again, and drops the result. */
    for (uint64_t j = 0, i = dp->rank; !rc && j < per; i += dp->size, j++) {
        if (i >= avail && m->ep.size <= 1) break;
        fy_loss l;
        uint64_t b = i < avail ? i : (uint64_t)dp->rank % avail;
        rc = val_batch_loss(m, val, b, B, T, in, lab, &l, err);
        if (!rc && i < avail) mine[2 * j] = l.main * l.n_main, mine[2 * j + 1] = l.n_main;
    }
    /* Every rank joins the gather, even after a local error. */
    fy_err scratch;
    int bad = fy_dp_vote(dp, rc != 0, rc ? &scratch : err);
    if (!rc && bad) rc = fy_fail(err, "validation failed on another rank");
    if (!rc) rc = fy_comm_allgather(dp->comm, mine, 2 * per * sizeof *mine, all, err);
    double sum = 0, count = 0;
    for (uint64_t i = 0; !rc && i < avail; i++) {
        const double *e = all + 2 * per * (i % dp->size) + 2 * (i / dp->size);
        sum += e[0];
        count += e[1];
    }
    free(in); free(lab); free(mine); free(all);
    *loss = count > 0 ? sum / count : NAN;
    return rc ? -1 : 0;
}

/* ---- metrics history (metrics.jsonl and loss.svg) ---- */

typedef struct series {
    double *x, *y;
    int n, cap;
} series;

typedef struct history {
    series train, val;
} history;

static void push(series *s, double x, double y) {
    if (s->n == s->cap) {
        int c = s->cap ? s->cap * 2 : 256;
        double *nx = realloc(s->x, c * sizeof *nx);
        if (nx) s->x = nx;
        double *ny = nx ? realloc(s->y, c * sizeof *ny) : NULL;
        if (ny) s->y = ny;
        if (!nx || !ny) return;
        s->cap = c;
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
}

static void history_free(history *h) {
    free(h->train.x); free(h->train.y);
    free(h->val.x); free(h->val.y);
}

/* Keeps the metrics of steps <= upto (a resumed run replays the rest) and
 * loads them into the history: "loss_main", as the run itself pushes into
 * the history and the spike window (printed exactly, so the window of a
 * resumed run holds the same bits as the uninterrupted run's). */
static int metrics_reopen(const char *path, int upto, int readonly, history *h, FILE **out, fy_err *err) {
    char *text = NULL;
    size_t len = 0;
    fy_err ignore;
    size_t keep = 0;
    if (upto > 0 && fy_read_file(path, &text, &len, &ignore) == 0) {
        char *line = text;
        while (line && *line) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = '\0';
            cJSON *o = cJSON_Parse(line);
            const cJSON *st = o ? cJSON_GetObjectItemCaseSensitive(o, "step") : NULL;
            if (st && cJSON_IsNumber(st) && st->valueint <= upto) {
                const cJSON *lv = cJSON_GetObjectItemCaseSensitive(o, "loss_main");
                const cJSON *vv = cJSON_GetObjectItemCaseSensitive(o, "val_loss");
                if (lv && cJSON_IsNumber(lv)) push(&h->train, st->valuedouble, lv->valuedouble);
                if (vv && cJSON_IsNumber(vv)) push(&h->val, st->valuedouble, vv->valuedouble);
                memmove(text + keep, line, strlen(line));
                keep += strlen(line);
                text[keep++] = '\n';
            }
            cJSON_Delete(o);
            line = nl ? nl + 1 : NULL;
        }
    }
    /* Ranks other than 0 only read the history (for the spike window). */
    int rc = readonly ? 0 : fy_write_file_atomic(path, text ? text : "", keep, err);
    free(text);
    if (rc) return -1;
    *out = fopen(readonly ? "/dev/null" : path, "a");
    if (!*out) return fy_fail(err, "cannot append to %s", path);
    return 0;
}

static void plot(const char *run_dir, const history *h) {
    char path[FY_PATH_MAX];
    fy_err err;
    snprintf(path, sizeof path, "%s/loss.svg", run_dir);
    fy_series s[2] = {{"train loss", "#1f77b4", h->train.x, h->train.y, h->train.n},
                      {"validation loss", "#d62728", h->val.x, h->val.y, h->val.n}};
    if (fy_plot_svg(path, "ferry training loss", s, 2, &err)) fy_warn("%s", err.msg);
}

static void fmt_duration(double s, char *out, size_t cap) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(out, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(out, cap, "%ldm%02lds", t / 60, t % 60);
}

/* Seconds kept to the millisecond in the JSON files: more is noise. */
static double round_ms(double s) { return round(s * 1000) / 1000; }

/* Steps whose batch a guard skipped (sorted; a step may appear twice): step
 * s trains on batch s - 1 + (number of entries <= s). Saved in
 * trainer_state.json as "skipped_batches" so resume stays exact. */
typedef struct skips {
    int *s;
    int n, cap;
} skips;

static uint64_t batch_index(const skips *k, int step) {
    uint64_t i = (uint64_t)step - 1;
    for (int j = 0; j < k->n; j++) i += k->s[j] <= step;
    return i;
}

static int skips_add(skips *k, int step) {
    if (k->n == k->cap) {
        int c = k->cap ? k->cap * 2 : 16;
        int *p = realloc(k->s, c * sizeof *p);
        if (!p) return -1;
        k->s = p;
        k->cap = c;
    }
    int i = k->n++;
    while (i > 0 && k->s[i - 1] > step) {
        k->s[i] = k->s[i - 1];
        i--;
    }
    k->s[i] = step;
    return 0;
}

/* ---- checkpoints ---- */

/* trainer_state.json: where the run is, and what resume needs besides the
 * weights and moments. Caller frees. */
static char *trainer_state(int step, long long tokens, double elapsed, uint64_t seed, double loss, double val,
                           const skips *k) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", step);
    cJSON_AddNumberToObject(j, "tokens_seen", (double)tokens);
    cJSON_AddNumberToObject(j, "elapsed_s", round_ms(elapsed));
    cJSON_AddNumberToObject(j, "seed", (double)seed);
    fy_json_add_real(j, "loss", loss);
    fy_json_add_real(j, "val_loss", val);
    if (j && k->n) cJSON_AddItemToObject(j, "skipped_batches", cJSON_CreateIntArray(k->s, k->n));
    char *s = fy_json_print_spaced(j, 1);
    cJSON_Delete(j);
    return s;
}

/* The files of one checkpoint: ZeRO-1 moment shards and expert shards are
 * gathered onto rank 0 first. */
static int save_files(fy_ckpt_async *writer, fy_model *m, fy_adamw *opt, fy_dp *dp, const fy_train_opts *o,
                      const char *run_dir, int step, const char *state, const fy_ckpt_extra *extra, double *stall,
                      fy_err *err) {
    fy_ckpt_host h;
    if (fy_dp_checkpoint_state(dp, m, opt, &h, err)) return -1;
    if (dp->rank != 0) return 0;
    if (h.tab) return fy_ckpt_async_save_host(writer, run_dir, step, &h, state, extra, o->keep_last, stall, err);
    return fy_ckpt_async_save(writer, run_dir, step, m, opt, state, extra, o->keep_last, stall, err);
}

/* Checkpoints are asynchronous: the loop waits only for the host snapshot;
 * the write (crash-safe, LATEST last) runs on the writer's thread. A failed
 * write is reported by the next save or at the end of the run. */
static int save(fy_ckpt_async *writer, fy_model *m, fy_adamw *opt, fy_dp *dp, const fy_train_opts *o,
                const char *run_dir, int step, long long tokens, double elapsed, double loss, double val,
                const skips *k, fy_err *err) {
    char *state = trainer_state(step, tokens, elapsed, o->seed, loss, val, k);
    if (!state) return fy_fail(err, "out of memory");
    double stall = 0;
    /* Gathering checkpoint state is not training traffic: counted apart. */
    uint64_t bytes0 = fy_comm_bytes_sent(dp->comm);
    fy_ckpt_extra dist;
    int rc = fy_dp_extra_state(dp, m, opt, &dist, err);
    if (rc == 0) rc = save_files(writer, m, opt, dp, o, run_dir, step, state, dist.meta ? &dist : NULL, &stall, err);
    dp->ckpt_bytes += fy_comm_bytes_sent(dp->comm) - bytes0;
    free(state);
    if (rc) return fy_wrap(err, "saving checkpoint at step %d", step);
    if (dp->rank != 0) return 0;
    fy_info("checkpoint step %d: training held %.3f s, writing in the background", step, stall);
    return 0;
}

/* ---- one training run: its state ---- */

/* Everything a run holds between steps. Set up by run_setup, changed by the
 * steps of the loop below, released by run_free. */
typedef struct run {
    /* what the run was given */
    fy_model *m;
    const fy_train_opts *o;
    const fy_guard_opts *g;
    const char *run_dir;
    int B, T, total;
    /* set up once */
    fy_comm *comm, *self;        /* self: a one-rank comm when o->comm is NULL */
    int rank0, n_ranks;
    int checks;                  /* the backend checks GEMMs (fy_be_fault_checks) */
    int guarded;                 /* a guard is on: snapshots are taken */
    fy_loader train, val;
    fy_adamw opt;
    fy_dp dp;
    fy_ckpt_async writer;
    fy_inject inj;
    int32_t *in, *lab;           /* this rank's micro-batches, one after the other */
    FILE *mf;                    /* metrics.jsonl */
    char mpath[FY_PATH_MAX];
    history h;
    skips sk;
    /* the guards' rollback bases and state checksums */
    fy_snapshot snap, pre;
    fy_state_sums sums, first;
    fy_loss_window win;
    /* After a resume the checkpoint just loaded is the rollback base until
     * the first regular snapshot (or the next checkpoint, which may rotate
     * it away): a snapshot at once would copy the whole state into memory
     * touched for the first time before the first step, seconds for the
     * small model in a VM (the kill-to-training time, docs/RELIABILITY.md). */
    char disk_base[FY_PATH_MAX];
    int disk_step;               /* -1: none */
    /* progress */
    int start, step;             /* the step resumed from; the step being run */
    long long tokens, snap_tokens, disk_tokens;
    double elapsed0, t_start, t_last, loss, val_loss, snap_loss;
    int last_log;                /* step of the last progress line */
    int logged_upto;             /* metrics, evals and checkpoints are done up to here */
    int saved;                   /* the step just run was checkpointed */
    int saved_step;              /* the newest step whose checkpoint is known written (or resumed from) */
    int pending_step;            /* the step whose checkpoint is being written in the background (-1: none) */
    int held;                    /* the model holds the state after step `held` exactly (-1: mid-step) */
    int val_step;                /* the step of val_loss */
    int fail_streak, fail_step;  /* consecutive failed attempts, the furthest step that failed */
} run;

/* One attempt at a step: its batch, its result, or why a guard refused it. */
typedef struct step_result {
    fy_loss l;
    float gn, lr;
} step_result;

typedef struct attempt {
    int step;
    uint64_t bi;                 /* the batch */
    step_result res;
    uint64_t bytes;              /* sent by this rank during the step */
    double now, elapsed;         /* when it was accepted; training time so far */
    char reason[400], where[640];
} attempt;

/* ---- executing a step ---- */

/* What a GEMM operand is, for fault reports: a weight, a weight's gradient
 * (both named, which names the layer), or an activation. */
static void name_ref(const fy_model *m, fy_ref r, char *out, size_t cap) {
    const fy_tensor_info *t = r.buf ? fy_tensor_at(m, r.off) : NULL;
    if (r.buf == &m->params && t) snprintf(out, cap, "weight %s", t->name);
    else if (r.buf == &m->grads && t) snprintf(out, cap, "grad of %s", t->name);
    else snprintf(out, cap, "activation");
}

static void describe_gemm_fault(const fy_model *m, const fy_be_fault *f, attempt *a) {
    char A[128], B[128], C[128];
    name_ref(m, f->A, A, sizeof A);
    name_ref(m, f->B, B, sizeof B);
    name_ref(m, f->C, C, sizeof C);
    snprintf(a->reason, sizeof a->reason,
             "ABFT checksum mismatch in a GEMM (column %d sums to %.6g, expected %.6g, tolerance %.2g)", f->column,
             f->got, f->want, f->tol);
    snprintf(a->where, sizeof a->where, "step %d %s GEMM #%d (M=%d N=%d K=%d%s%s): A=%s, B=%s, C=%s", f->step,
             f->phase, f->gemm_index, f->M, f->N, f->K, f->trans_a ? " A^T" : "", f->trans_b ? " B^T" : "", A, B, C);
}

/* Forward and backward of this rank's micro-batches, and the batch loss of
 * all ranks in out->l. inj (NULL on a re-execution) injects the faults due. */
static int forward_backward(run *R, const attempt *a, fy_inject *inj, step_result *out, fy_err *err) {
    fy_model *m = R->m;
    const int k = R->dp.local_micro, mb = R->dp.micro, step = a->step;
    char what[320];
    fy_loss part[64];
    for (int j = 0; j < k; j++) {
        size_t off = (size_t)j * mb * R->T;
        fy_be_fault_phase(m->be, "forward");
        fy_model_zero_grad(m);
        /* LoRA dropout's key: this micro-batch's first token in the global batch */
        fy_model_lora_dropout_key(m, R->o->seed, step, (int64_t)fy_dp_micro_index(&R->dp, j) * mb * R->T);
        if (fy_model_forward(m, R->in + off, R->lab + off, mb, R->T, 1, &part[j], err))
            return fy_wrap(err, "step %d", step);
        if (inj && inj->n && j == 0) {
            int r = fy_inject_act(inj, step, m, what, sizeof what, err);
            if (r < 0) return -1;
            if (r) fy_warn("inject %s", what);
        }
        fy_be_fault_phase(m->be, "backward");
        /* A non-finite loss fails the step below; its backward is not needed,
         * except with several ranks: a backward may be collective (expert
         * parallel, gradient buckets), so every rank runs it. */
        if ((isfinite(part[j].total) || R->dp.size > 1) && fy_model_backward(m, err))
            return fy_wrap(err, "step %d", step);
        if (inj && inj->n && j == k - 1 && fy_inject_grad(inj, step, m, what, sizeof what))
            fy_warn("inject %s", what);
        if (fy_dp_accumulate(&R->dp, m, j, err)) return -1;
    }
    return fy_dp_mean_loss(&R->dp, part, &out->l, err);
}

/* The backend's ABFT verdict on the step, voted: a fault on any rank is a
 * fault on all, so the ranks stay in step. */
static int gemm_verdict(run *R, attempt *a, fy_err *err) {
    fy_be_fault f;
    int bad = fy_be_fault_take(R->m->be, &f);
    fy_be_fault_begin_step(R->m->be, a->step, R->g->abft_fraction, -1); /* disarm */
    if (bad) describe_gemm_fault(R->m, &f, a);
    int any = fy_dp_vote(&R->dp, bad, err);
    if (any < 0) return -1;
    if (any && !bad) {
        snprintf(a->reason, sizeof a->reason, "a fault on another rank");
        snprintf(a->where, sizeof a->where, "step %d", a->step);
    }
    return any ? 1 : 0;
}

/* One execution of a step on the current state: forward and backward, the
 * loss guards on the batch loss of all ranks, the data-parallel AdamW step
 * and the bias update, then the backend's ABFT verdict. Returns 0 when the
 * step was computed (into out), 1 when a guard flagged it (a->reason and
 * a->where say what and where), -1 on an error. Every rank returns the same
 * verdict. */
static int execute_step(run *R, attempt *a, fy_inject *inj, step_result *out, fy_err *err) {
    fy_model *m = R->m;
    const fy_guard_opts *g = R->g;
    out->gn = NAN;
    if (R->checks) {
        int gi = -1;
        if (inj && inj->n && fy_inject_gemm_due(inj, a->step, &gi))
            fy_warn("inject gemm: corrupting GEMM #%d of step %d", gi, a->step);
        fy_be_fault_begin_step(m->be, a->step, g->abft_fraction, gi);
    }
    if (forward_backward(R, a, inj, out, err)) return -1;
    if (g->nonfinite && (!isfinite(out->l.total) || !isfinite(out->l.main))) {
        snprintf(a->reason, sizeof a->reason, "non-finite loss (%g)", out->l.total);
        snprintf(a->where, sizeof a->where, "forward of batch %llu", (unsigned long long)a->bi);
        return 1;
    }
    if (fy_loss_is_spike(&R->win, g, out->l.main, a->reason, sizeof a->reason)) {
        snprintf(a->where, sizeof a->where, "batch %llu", (unsigned long long)a->bi);
        return 1;
    }
    if (fy_dp_step(&R->dp, m, &R->opt, &out->gn, &out->lr, err)) {
        if (g->nonfinite && !isfinite(out->gn)) {
            snprintf(a->reason, sizeof a->reason, "non-finite gradient norm (%g)", out->gn);
            return fy_find_nonfinite_grad(m, a->where, sizeof a->where, err) ? -1 : 1;
        }
        return fy_wrap(err, "step %d", a->step);
    }
    if (fy_model_update_bias(m, err)) return fy_wrap(err, "step %d", a->step);
    return gemm_verdict(R, a, err);
}

static int save_run(run *R, int step, double elapsed, fy_err *err) {
    return save(&R->writer, R->m, &R->opt, &R->dp, R->o, R->run_dir, step, R->tokens, elapsed, R->loss,
                R->val_loss, &R->sk, err);
}

/* save_run, keeping track of which checkpoint is known written: a save
 * starts only once the previous background write has succeeded. */
static int save_run_tracked(run *R, int step, double elapsed, fy_err *err) {
    if (save_run(R, step, elapsed, err)) {
        R->pending_step = -1; /* its failure may be the previous write's: not known written */
        return -1;
    }
    if (R->pending_step >= 0) R->saved_step = R->pending_step;
    R->pending_step = step;
    return 0;
}

/* ---- the steps of the loop; each returns -1 on an error (err set), 0 to
 * go on, 1 when a guard refused the step (a->reason, a->where say why) ---- */

/* Silent corruption of the state between steps: the state checksums taken
 * after the last accepted step must still hold, on every rank. */
static int check_state(run *R, attempt *a, fy_err *err) {
    if (!R->g->weight_checksum || !R->sums.valid) return 0;
    const int step = a->step;
    int r = fy_state_sums_verify(&R->sums, R->m, &R->opt, a->where, sizeof a->where, err);
    if (r < 0) return -1;
    int any = fy_dp_vote(&R->dp, r, err);
    if (any <= 0) return any;
    if (r) {
        snprintf(a->reason, sizeof a->reason, "state checksum changed between steps %d and %d", step - 1, step);
    } else {
        snprintf(a->reason, sizeof a->reason, "a state checksum changed on another rank");
        snprintf(a->where, sizeof a->where, "between steps %d and %d", step - 1, step);
    }
    return 1;
}

/* A rollback base every snapshot_every steps (in memory). */
static int snapshot_if_due(run *R, int step, fy_err *err) {
    /* DiLoCo snapshots at outer steps only, so no rollback crosses one. */
    const int every = R->dp.diloco.local_steps ? R->dp.diloco.local_steps : R->g->snapshot_every;
    int want = !R->snap.valid || ((step - 1) % every == 0 && R->snap.step != step - 1);
    if (!R->snap.valid && R->disk_step >= 0) want = (step - 1) % every == 0 && step - 1 != R->disk_step;
    if (!R->guarded || !want) return 0;
    if (fy_snapshot_take(&R->snap, R->m, &R->opt, step - 1, err)) return -1;
    R->snap_tokens = R->tokens;
    R->snap_loss = R->loss;
    return 0;
}

/* This rank's micro-batches of the step's batch, global rows bi*B + i*micro
 * for its global micro-batch indices i; then a poisoned batch, if injected. */
static int fetch_batch(run *R, attempt *a, fy_err *err) {
    const fy_dp *dp = &R->dp;
    const int T = R->T;
    a->bi = batch_index(&R->sk, a->step);
    for (int j = 0; j < dp->local_micro; j++) {
        uint64_t row0 = a->bi * (uint64_t)R->B + (uint64_t)fy_dp_micro_index(dp, j) * dp->micro;
        size_t off = (size_t)j * dp->micro * T;
        if (fy_loader_rows(&R->train, R->o->seed, row0, dp->micro, T, R->in + off, R->lab + off, err)) return -1;
    }
    char what[320];
    const size_t n = (size_t)dp->local_micro * dp->micro * T;
    if (R->inj.n && fy_inject_batch(&R->inj, a->step, R->lab, n, R->m->cfg.vocab_size, what, sizeof what))
        fy_warn("inject %s", what);
    return 0;
}

/* Silent corruption during the step: execute it again from the same state
 * and require bitwise the same result (the backend is deterministic).
 * Disagreeing executions are both discarded. */
static int reexecute_step(run *R, attempt *a, fy_err *err) {
    const int step = a->step;
    fy_snapshot *base = R->snap.valid && R->snap.step == step - 1 ? &R->snap : &R->pre;
    if (base == &R->pre && fy_snapshot_take(&R->pre, R->m, &R->opt, step - 1, err)) return -1;
    if (fy_state_sums_compute(&R->first, R->m, &R->opt, err) || fy_snapshot_restore(base, R->m, &R->opt, err))
        return -1;
    step_result again;
    int r = execute_step(R, a, NULL, &again, err);
    if (r) return r;
    r = fy_state_sums_verify(&R->first, R->m, &R->opt, a->where, sizeof a->where, err);
    if (r < 0) return -1;
    const step_result *once = &a->res;
    int differs = r || memcmp(&once->l.total, &again.l.total, sizeof once->l.total) ||
                  memcmp(&once->gn, &again.gn, sizeof once->gn);
    int any = fy_dp_vote(&R->dp, differs, err);
    if (any < 0) return -1;
    if (any && !differs) {
        snprintf(a->reason, sizeof a->reason, "re-execution of step %d disagrees on another rank", step);
        snprintf(a->where, sizeof a->where, "step %d", step);
        return 1;
    }
    if (differs) {
        snprintf(a->reason, sizeof a->reason,
                 "re-execution of step %d disagrees with its first execution (loss %.9g vs %.9g, "
                 "grad norm %.9g vs %.9g)", step, once->l.total, again.l.total, once->gn, again.gn);
        if (!r) snprintf(a->where, sizeof a->where, "loss or gradient norm of step %d", step);
        return 1;
    }
    return 0;
}

/* Forward, backward, gradient reduction and update (execute_step); every
 * recompute_every-th step a second time to compare. */
static int run_step(run *R, attempt *a, fy_err *err) {
    fy_dp_mark(&R->dp);
    int r = execute_step(R, a, &R->inj, &a->res, err);
    a->bytes = fy_dp_step_bytes(&R->dp);
    if (r) return r;
    const int every = R->g->recompute_every;
    return every > 0 && (a->step - 1) % every == 0 ? reexecute_step(R, a, err) : 0;
}

/* The step is accepted: the guards' state and the progress follow it. */
static int accept_step(run *R, attempt *a, fy_err *err) {
    if (a->step > R->fail_step) R->fail_streak = 0;
    if (a->step > R->logged_upto) fy_loss_window_push(&R->win, a->res.l.main);
    if (R->g->weight_checksum && fy_state_sums_compute(&R->sums, R->m, &R->opt, err)) return -1;
    char what[320];
    if (R->inj.n) fy_inject_state(&R->inj, a->step, R->m, &R->opt, what, sizeof what);
    R->tokens += (long long)R->B * R->T;
    R->loss = a->res.l.total;
    a->now = fy_now_s();
    a->elapsed = R->elapsed0 + a->now - R->t_start;
    return 0;
}

/* The progress line, every log_every steps, the first and the last. */
static void print_progress(run *R, const attempt *a) {
    const int step = a->step, total = R->total, first = step == R->start + 1;
    if (step % R->o->log_every && !first && step != total) return;
    const int B = R->B, T = R->T;
    double tps = (double)(step - R->last_log) * B * T / fmax(a->now - R->t_last, 1e-9);
    char eta[32], rate[32] = "   - tok/s", comm[48] = "";
    fmt_duration((total - step) * (double)B * T / fmax(tps, 1e-9), eta, sizeof eta);
    if (!first) snprintf(rate, sizeof rate, "%.0f tok/s", tps);
    if (R->n_ranks > 1) snprintf(comm, sizeof comm, " | sent %.2f MB", a->bytes / 1e6);
    const step_result *s = &a->res;
    if (R->rank0)
        printf("step %5d/%d | loss %.4f (main %.4f) | lr %.2e | grad %.3f | %s%s | ETA %s\n", step, total,
               s->l.total, s->l.main, s->lr, s->gn, rate, comm, first ? "-" : eta);
    fflush(stdout);
    R->t_last = a->now;
    R->last_log = step;
}

/* Appends j to metrics.jsonl (a whole line or nothing) and frees it. */
static int append_metrics(run *R, cJSON *j, fy_err *err) {
    int rc = fy_json_append_line(R->mf, j), e = errno;
    cJSON_Delete(j);
    if (!rc) return 0;
    if (e == ENOSPC || e == EDQUOT)
        return fy_fail(err, "%s: the disk is full (%s); the file keeps whole lines only", R->mpath, strerror(e));
    return fy_fail(err, "cannot append to %s: %s", R->mpath, strerror(e));
}

/* The step's line of metrics.jsonl, its point of loss.svg, its progress line. */
static int log_step(run *R, const attempt *a, fy_err *err) {
    const step_result *s = &a->res;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", a->step);
    fy_json_add_real(j, "loss", s->l.total);
    fy_json_add_real(j, "loss_main", s->l.main);
    fy_json_add_float(j, "lr", s->lr);
    fy_json_add_float(j, "grad_norm", s->gn);
    cJSON_AddNumberToObject(j, "tokens", (double)R->tokens);
    cJSON_AddNumberToObject(j, "elapsed_s", round_ms(a->elapsed));
    cJSON_AddNumberToObject(j, "comm_bytes", (double)a->bytes);
    if (append_metrics(R, j, err)) return -1;
    push(&R->h.train, a->step, s->l.main);
    print_progress(R, a);
    return 0;
}

/* A validation pass every eval_every steps and at the end. */
static int evaluate(run *R, int step, fy_err *err) {
    const fy_train_opts *o = R->o;
    if (o->eval_every <= 0 || (step % o->eval_every && step != R->total)) return 0;
    if (eval_loss_dp(R->m, &R->dp, &R->val, R->B, R->T, o->eval_batches, &R->val_loss, err)) return -1;
    R->val_step = step;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", step);
    fy_json_add_real(j, "val_loss", R->val_loss);
    if (append_metrics(R, j, err)) return -1;
    push(&R->h.val, step, R->val_loss);
    if (R->rank0) {
        printf("step %5d/%d | validation loss %.4f\n", step, R->total, R->val_loss);
        fflush(stdout);
        plot(R->run_dir, &R->h);
    }
    return 0;
}

/* DiLoCo's outer step: the ranks' weights are averaged and moved. */
static int outer_step(run *R, int step, fy_err *err) {
    fy_dp_mark(&R->dp);
    if (fy_dp_outer_step(&R->dp, R->m, err)) return -1;
    /* The outer step changed the weights on purpose: re-take the state
     * sums, or the next step's check would roll it back. */
    if (R->g->weight_checksum && fy_state_sums_compute(&R->sums, R->m, &R->opt, err)) return -1;
    if (!R->rank0) return 0;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", step);
    cJSON_AddStringToObject(j, "event", "outer_step");
    cJSON_AddNumberToObject(j, "comm_bytes", (double)fy_dp_step_bytes(&R->dp));
    return append_metrics(R, j, err);
}

/* After a logged step: the stop flag, the time limit and --stop-after (the
 * same verdict on every rank), DiLoCo's outer step, and the checkpoint when
 * one is due or the run stops (*stopped). */
static int end_step(run *R, const attempt *a, volatile sig_atomic_t *stop, int *stopped, fy_err *err) {
    const fy_train_opts *o = R->o;
    const int step = a->step;
    int out_of_time = o->time_limit_s > 0 && a->now - R->t_start >= o->time_limit_s;
    int paused = o->stop_after > 0 && step >= o->stop_after && step < R->total;
    int interrupted = stop && *stop;
    if (R->n_ranks > 1) { /* every rank stops at the same step */
        int32_t v[2] = {interrupted, out_of_time};
        if (fy_comm_allreduce_max_i32(R->comm, v, 2, err)) return -1;
        interrupted = v[0], out_of_time = v[1];
    }
    const int halt = interrupted || out_of_time || paused, due = o->ckpt_every > 0 && step % o->ckpt_every == 0;
    *stopped = halt;
    /* DiLoCo: the outer step every H steps, at the end, and before any
     * checkpoint (which then holds the synchronised weights). */
    const int H = R->dp.diloco.local_steps;
    if (H && (step % H == 0 || step == R->total || halt || due) && outer_step(R, step, err)) return -1;
    if (!halt && !due) return 0;
    if (save_run_tracked(R, step, a->elapsed, err)) return -1;
    R->saved = 1;
    if (!halt) R->disk_step = -1; /* keep_last may remove the checkpoint resumed from */
    else if (R->rank0)
        printf("%s at step %d: checkpoint written; continue with --resume\n",
               out_of_time ? "time limit reached" : paused ? "stopped as asked" : "interrupted", step);
    return 0;
}

/* The guard event of a rollback, in metrics.jsonl at once. */
static int log_rollback(run *R, const attempt *a, int restored, int skip, fy_err *err) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", a->step);
    cJSON_AddStringToObject(j, "event", "rollback");
    cJSON_AddStringToObject(j, "reason", a->reason);
    cJSON_AddStringToObject(j, "where", a->where);
    cJSON_AddNumberToObject(j, "restored_step", restored);
    if (skip) cJSON_AddTrueToObject(j, "skip_batch");
    if (append_metrics(R, j, err)) return -1;
    fflush(R->mf);
    return 0;
}

/* A guard refused the step: restore the last snapshot (or the checkpoint
 * resumed from) and replay from it; R->step goes back to its step. A data
 * fault that repeats at the same step skips its batch. */
static int roll_back(run *R, const attempt *a, fy_err *err) {
    fy_model *m = R->m;
    const fy_guard_opts *g = R->g;
    const int step = a->step;
    R->fail_streak++;
    if (step > R->fail_step) R->fail_step = step;
    int data_fault = !strncmp(a->reason, "non-finite", 10) || !strncmp(a->reason, "loss ", 5);
    int skip = data_fault && R->fail_streak >= 2 && step == R->fail_step && R->fail_streak < g->max_failures;
    const int from_disk = !R->snap.valid && R->disk_step >= 0, base = from_disk ? R->disk_step : R->snap.step;
    if (!R->snap.valid && !from_disk)
        return fy_fail(err, "step %d: %s at %s, and no snapshot to roll back to", step, a->reason, a->where);
    if (log_rollback(R, a, base, skip, err)) return -1;
    fy_warn("guard: step %d: %s (at %s); rolling back to step %d%s%s", step, a->reason, a->where, base,
            from_disk ? " (the checkpoint resumed from)" : "", skip ? " and skipping the batch" : "");
    if (R->fail_streak >= g->max_failures)
        return fy_fail(err,
                       "guard: %d consecutive failed attempts at step %d, the last: %s (at %s); stopping "
                       "instead of looping (bad data or unstable hardware; see %s)",
                       R->fail_streak, R->fail_step, a->reason, a->where, R->mpath);
    if (skip && (R->sk.n >= 64 || skips_add(&R->sk, step)))
        return fy_fail(err, "guard: too many skipped batches (%d); stopping", R->sk.n);
    if (from_disk) {
        if (fy_dp_load(&R->dp, R->disk_base, m, &R->opt, NULL, err)) return -1;
        fy_model_zero_grad(m);
        memset(m->loads, 0, (size_t)m->tab.n_layers * (m->cfg.n_routed_experts + 1) * sizeof *m->loads);
    } else if (fy_snapshot_restore(&R->snap, m, &R->opt, err)) {
        return -1;
    }
    if (g->weight_checksum && fy_state_sums_compute(&R->sums, m, &R->opt, err)) return -1;
    R->step = base;
    R->tokens = from_disk ? R->disk_tokens : R->snap_tokens;
    R->loss = from_disk ? NAN : R->snap_loss;
    return 0;
}

/* ---- setting up and finishing a run ---- */

static int run_init(run *R, fy_model *m, const fy_train_opts *o, const char *run_dir, fy_err *err) {
    memset(R, 0, sizeof *R);
    R->m = m;
    R->o = o;
    R->g = &o->guard;
    R->run_dir = run_dir;
    R->B = o->batch_size, R->T = o->seq_len, R->total = o->adam.total_steps;
    fy_ckpt_async_init(&R->writer);
    R->disk_step = R->pending_step = -1;
    R->held = -1;
    R->loss = R->val_loss = R->snap_loss = NAN;
    R->comm = o->comm;
    if (!R->comm && fy_comm_init(0, 0, &R->self, err)) return -1;
    if (!R->comm) R->comm = R->self;
    R->rank0 = fy_comm_rank(R->comm) == 0, R->n_ranks = fy_comm_size(R->comm);
    R->checks = fy_be_fault_checks(m->be);
    const fy_guard_opts *g = R->g;
    R->guarded = g->nonfinite || g->spike_window > 0 || g->weight_checksum || R->checks || g->recompute_every > 0;
    return 0;
}

/* Expert parallelism is attached first: the model then holds this rank's
 * experts only, and the rest is sized for that. */
static int attach_experts(run *R, fy_err *err) {
    if (!R->o->expert_parallel || R->n_ranks <= 1) return 0;
    /* DiLoCo's local steps have no gradient exchange, and an expert's
     * gradient exists only on its owner. */
    if (R->o->diloco_every > 0)
        return fy_fail(err, "expert parallel cannot run with DiLoCo (--diloco): the local steps would not update "
                            "the experts of other ranks");
    return fy_ep_attach(R->comm, R->m, err);
}

/* The fault-injection spec (o->inject), checked against the model and the
 * backend: a GEMM fault needs a backend that checks GEMMs. */
static int setup_inject(run *R, fy_err *err) {
    if (fy_inject_setup(&R->inj, R->o->inject, R->m, err)) return -1;
    for (int i = 0; i < R->inj.n && !R->checks; i++)
        if (R->inj.f[i].kind == FY_INJ_GEMM)
            return fy_fail(err, "FERRY_INJECT: gemm faults need a chaos backend (--backend chaos:%s)",
                           R->m->be->ops->name);
    return 0;
}

/* The data-parallel line: ranks, micro-batches, how gradients travel. */
static void print_data_parallel(const run *R) {
    const fy_dp *dp = &R->dp;
    char buckets[128] = "", how[48] = "layer by layer";
    if (R->o->bucket_mb > 0) snprintf(how, sizeof how, "in buckets of %g MB", R->o->bucket_mb);
    if (fy_dp_bucketing(dp))
        snprintf(buckets, sizeof buckets, ", gradients sent %s during the backward%s", how,
                 fy_comm_rs_progress_thread(dp->bk.rs) ? " (progress thread)" : "");
    if (R->n_ranks > 1 && R->rank0)
        printf("data parallel: %d ranks, %d micro-batch(es) of %d per rank, %s%s\n", R->n_ranks, dp->local_micro,
               dp->micro, dp->diloco.local_steps ? "DiLoCo local steps" : dp->compress ? "int8 gradients with error feedback"
                                                  : dp->replicated ? "AdamW on every rank, gradients all-reduced (--zero 0)"
                                                                   : "ZeRO-1 sharded AdamW moments", buckets);
}

/* What the run will read, checked before step 1 rather than found at the
 * first batch or evaluation with steps done: the training split has a
 * window of seq_len + 1 tokens, and so does the validation split when the
 * run evaluates. */
static int data_preflight(run *R, fy_err *err) {
    uint64_t n;
    if (fy_loader_n_slots(&R->train, R->T, &n, err)) return fy_wrap(err, "before step 1");
    if (R->o->eval_every > 0 && fy_loader_n_slots(&R->val, R->T, &n, err))
        return fy_wrap(err, "before step 1: validation every %d steps needs a validation split with a window of "
                            "%d tokens (ferry data prepare --val-fraction F for a larger one, or --eval-every 0)",
                       R->o->eval_every, R->T + 1);
    return 0;
}

/* Loaders, data parallelism (parallel/dp.h) and the optimizer. */
static int setup_data_parallel(run *R, const char *data_dir, fy_err *err) {
    const fy_train_opts *o = R->o;
    fy_model *m = R->m;
    fy_dp *dp = &R->dp;
    if (fy_loader_open(&R->train, data_dir, "train", (uint32_t)m->cfg.vocab_size, err) ||
        fy_loader_open(&R->val, data_dir, "val", (uint32_t)m->cfg.vocab_size, err) || data_preflight(R, err) ||
        fy_dp_init(dp, R->comm, m, R->B, o->micro_batch, o->compress, o->zero,
                   &(fy_dp_diloco){o->diloco_every, o->outer_lr, o->outer_momentum}, err) ||
        fy_dp_create_optimizer(dp, m, &o->adam, &R->opt, err))
        return -1;
    if (dp->ep.on && R->rank0) /* dp keeps the whole table (for checkpoints) */
        printf("expert parallel: %d routed experts over %d ranks (rank 0 holds experts %d-%d: %zu of the "
               "model's %zu parameters), rows sent with all-to-all\n", m->cfg.n_routed_experts, R->n_ranks,
               m->tab.exp_lo, m->tab.exp_hi - 1, fy_params_count(&m->tab), fy_params_count(&dp->ep.full_tab));
    if (dp->local_micro > 64) /* forward_backward's part[] */
        return fy_fail(err, "%d micro-batches per rank: at most 64 (raise --micro-batch)", dp->local_micro);
    /* Fault injection edits the gradients after the backward, so with it
     * they travel after the backward too. */
    if (fy_dp_set_bucketing(dp, m, R->inj.n ? 0 : o->grad_buckets, o->bucket_mb, err)) return -1;
    print_data_parallel(R);
    if (dp->diloco.local_steps && o->ckpt_every % dp->diloco.local_steps)
        return fy_fail(err, "DiLoCo: ckpt_every %d must be a multiple of diloco_every %d (checkpoints follow outer "
                            "steps)", o->ckpt_every, dp->diloco.local_steps);
    if (R->n_ranks > 1 && R->rank0 && dp->diloco.local_steps)
        printf("DiLoCo: %d local steps, then outer Nesterov SGD (lr %g, momentum %g) on the averaged delta%s\n",
               dp->diloco.local_steps, dp->diloco.outer_lr, dp->diloco.outer_momentum,
               dp->compress ? " (deltas sent as int8 with error feedback)" : "");
    return 0;
}

/* Reads trainer_state.json of a checkpoint: the step, tokens, time, and the
 * skipped batches. */
static int read_trainer_state(run *R, const char *state, const char *dir, fy_err *err) {
    cJSON *js = cJSON_Parse(state);
    const cJSON *st = js ? cJSON_GetObjectItemCaseSensitive(js, "step") : NULL;
    const cJSON *tk = js ? cJSON_GetObjectItemCaseSensitive(js, "tokens_seen") : NULL;
    const cJSON *el = js ? cJSON_GetObjectItemCaseSensitive(js, "elapsed_s") : NULL;
    const cJSON *sb = js ? cJSON_GetObjectItemCaseSensitive(js, "skipped_batches") : NULL;
    uint64_t step, tokens = 0;
    if (fy_json_count(st, &step) || step > 0x7fffffff) {
        cJSON_Delete(js);
        return fy_fail(err, "%s/trainer_state.json: \"step\" missing or not a count", dir);
    }
    if (tk && fy_json_count(tk, &tokens)) {
        cJSON_Delete(js);
        return fy_fail(err, "%s/trainer_state.json: \"tokens_seen\" is not a count", dir);
    }
    R->start = (int)step;
    R->tokens = tk ? (long long)tokens : (long long)R->start * R->B * R->T;
    R->elapsed0 = el && cJSON_IsNumber(el) ? el->valuedouble : 0;
    const cJSON *e;
    if (sb && cJSON_IsArray(sb))
        cJSON_ArrayForEach(e, sb) if (cJSON_IsNumber(e)) skips_add(&R->sk, e->valueint);
    cJSON_Delete(js);
    return 0;
}

/* Restores the newest complete checkpoint of the run. */
static int resume_run(run *R, fy_err *err) {
    char dir[FY_PATH_MAX], *state = NULL;
    if (fy_ckpt_resolve(R->run_dir, dir, sizeof dir, err) || fy_dp_load(&R->dp, dir, R->m, &R->opt, &state, err)) {
        free(state);
        return -1;
    }
    int rc = read_trainer_state(R, state, dir, err);
    free(state);
    if (rc) return -1;
    if (R->opt.t != R->start) return fy_fail(err, "%s: optimizer step %d != trainer step %d", dir, R->opt.t, R->start);
    if (R->rank0) fy_info("resuming from %s at step %d", dir, R->start);
    snprintf(R->disk_base, sizeof R->disk_base, "%s", dir);
    R->disk_step = R->start;
    return 0;
}

/* metrics.jsonl, trimmed to the step resumed from, and the history and the
 * spike window it holds. */
static int open_metrics(run *R, fy_err *err) {
    snprintf(R->mpath, sizeof R->mpath, "%s/metrics.jsonl", R->run_dir);
    /* Rank 0 trims metrics.jsonl to the resumed step first; the others then
     * read the same history. */
    if (R->rank0 && metrics_reopen(R->mpath, R->start, 0, &R->h, &R->mf, err)) return -1;
    if (fy_comm_barrier(R->comm, err)) return -1;
    if (!R->rank0 && metrics_reopen(R->mpath, R->start, 1, &R->h, &R->mf, err)) return -1;
    /* The last validation loss of a resumed run is its newest logged one. */
    if (R->h.val.n) {
        R->val_loss = R->h.val.y[R->h.val.n - 1];
        R->val_step = (int)R->h.val.x[R->h.val.n - 1];
    }
    /* The spike window continues from the logged losses of a resumed run. */
    const series *s = &R->h.train;
    for (int i = s->n > R->win.cap ? s->n - R->win.cap : 0; i < s->n; i++) fy_loss_window_push(&R->win, s->y[i]);
    return 0;
}

/* LoRA: the frozen base (the seeded init or init_weights; on resume too,
 * since the checkpoints hold only the adapters), then the adapters, which
 * become the model's trainable block before the optimizer is sized. */
static int lora_setup(run *R, int resume, fy_err *err) {
    const fy_train_opts *o = R->o;
    fy_model *m = R->m;
    if (resume && !o->lora_base_seeded && !o->init_weights)
        return fy_fail(err, "this LoRA run's base came from --init-from and was not loaded again");
    /* The backward reports no bucket ranges with adapters on (model/lora.h). */
    if (o->grad_buckets)
        return fy_fail(err, "LoRA with --grad-buckets is not supported yet (the adapters' gradients are reduced after "
                            "the backward)");
    fy_lora_config lc = {o->lora_rank, o->lora_alpha, (unsigned)o->lora_targets, o->lora_dropout};
    size_t base = fy_params_count(&m->tab);
    if (o->init_weights ? o->init_weights(m, o->init_ctx, err) : fy_model_init_weights(m, o->seed, err))
        return fy_wrap(err, "LoRA base");
    /* The base is recorded when the run starts and must match on resume. */
    if (fy_lora_base_record(m, R->run_dir, o->lora_base_seeded ? NULL : o->lora_base, !resume, R->comm, err))
        return fy_wrap(err, "LoRA base of %s", R->run_dir);
    if (fy_model_set_lora(m, &lc, err)) return fy_wrap(err, "LoRA");
    /* After the record: it hashes the base as loaded (f32), so a resume
     * checks the same source whichever format holds it. */
    if (fy_model_lora_quantize_base(m, (fy_quant)o->lora_base_weights, err)) return fy_wrap(err, "LoRA");
    char t[256];
    fy_lora_targets_string(lc.targets, t, sizeof t);
    if (R->rank0)
        printf("LoRA: rank %d, alpha %g, dropout %g on %s: %d adapters, %zu trainable of %zu parameters (base frozen, "
               "%s)\n",
               lc.rank, lc.alpha, lc.dropout, t, m->lora->n_ad, fy_params_count(&m->tab), base,
               fy_quant_name(fy_model_lora_base_format(m)));
    return 0;
}

/* Everything before the first step: parallelism, fault injection, data,
 * optimizer, weights (initialised or resumed), metrics, batch buffers. */
static int run_setup(run *R, const char *data_dir, int resume, fy_err *err) {
    /* LoRA before fault injection: its tensors are the adapters then. */
    if (attach_experts(R, err) || (R->o->lora_rank > 0 && lora_setup(R, resume, err)) || setup_inject(R, err))
        return -1;
    if (fy_loss_window_init(&R->win, R->g->spike_window)) return fy_fail(err, "out of memory");
    if (setup_data_parallel(R, data_dir, err)) return -1;
    const fy_train_opts *o = R->o;
    if (resume ? resume_run(R, err)
        : o->lora_rank > 0 ? fy_model_lora_init(R->m, o->seed, err) /* the base is in place (lora_setup) */
        : o->init_weights  ? o->init_weights(R->m, o->init_ctx, err)
                           : fy_model_init_weights(R->m, o->seed, err))
        return -1;
    if (o->init_release) o->init_release(o->init_ctx);
    /* DiLoCo restarts the outer momentum at zero on resume (docs/SCALING.md). */
    if (fy_dp_set_anchor(&R->dp, R->m, err) || open_metrics(R, err) ||
        alloc_batch((size_t)R->B * R->T, &R->in, &R->lab, err))
        return -1;
    R->t_start = R->t_last = fy_now_s();
    R->snap_tokens = R->disk_tokens = R->tokens;
    R->last_log = R->logged_upto = R->saved_step = R->held = R->start;
    return 0;
}

/* After the last step: the final checkpoint (unless the step just saved
 * one), loss.svg, the communication summary, the result. */
static int finish_run(run *R, fy_train_result *res, fy_err *err) {
    if (R->step > R->total) R->step = R->total;
    const int step = R->step, steps = step - R->start;
    if (!R->saved && steps > 0 && save_run_tracked(R, step, R->elapsed0 + fy_now_s() - R->t_start, err)) return -1;
    if (R->rank0) plot(R->run_dir, &R->h);
    const fy_dp *dp = &R->dp;
    char per_step[64] = "";
    if (fy_dp_bucketing(dp) && steps > 0)
        snprintf(per_step, sizeof per_step, "; %.1f gradient buckets per step", (double)dp->bk.sent / steps);
    const uint64_t sent = fy_comm_bytes_sent(R->comm) - dp->ckpt_bytes;
    if (R->rank0 && R->n_ranks > 1)
        printf("communication: rank 0 sent %llu bytes in %d steps (%.1f bytes per token); checkpoints %llu more%s\n",
               (unsigned long long)sent, steps, steps > 0 ? sent / ((double)steps * R->B * R->T) : 0.0,
               (unsigned long long)dp->ckpt_bytes, per_step);
    res->step = step;
    res->last_loss = R->loss;
    res->last_val_loss = R->val_loss;
    res->val_step = R->val_step;
    return 0;
}

/* A failure after steps completed since the last checkpoint (metrics.jsonl
 * on a full disk, an evaluation, a checkpoint's write, the next batch):
 * those steps are saved when the model holds the state after one exactly,
 * and err says so. One rank only: with more, the save gathers over ranks
 * that may be the failure. */
static void rescue(run *R, fy_err *err) {
    fy_err e2;
    if (fy_ckpt_async_wait(&R->writer, &e2) == 0 && R->pending_step >= 0) R->saved_step = R->pending_step;
    R->pending_step = -1; /* a failed write is in err already, or older than it */
    if (R->held <= R->saved_step || R->n_ranks > 1 || R->dp.diloco.local_steps) return;
    char msg[2 * sizeof err->msg + 160]; /* both messages; fy_fail cuts to fit */
    if (save_run(R, R->held, R->elapsed0 + fy_now_s() - R->t_start, &e2) || fy_ckpt_async_wait(&R->writer, &e2))
        snprintf(msg, sizeof msg, "%s; steps %d-%d are lost: saving them failed too: %s", err->msg,
                 R->saved_step + 1, R->held, e2.msg);
    else
        snprintf(msg, sizeof msg, "%s; steps up to %d are saved in a checkpoint (--resume continues from there)",
                 err->msg, R->held);
    fy_fail(err, "%s", msg);
}

/* Releases the run; rc is the run's verdict so far, returned unless the
 * last checkpoint failed to reach the disk. */
static int run_free(run *R, int rc, fy_err *err) {
    /* The last checkpoint must be on disk before the run reports success. */
    if (rc == 0 && fy_ckpt_async_wait(&R->writer, err)) {
        fy_wrap(err, "writing the last checkpoint");
        rc = -1;
    }
    fy_ckpt_async_free(&R->writer);
    if (R->mf) fclose(R->mf);
    free(R->in);
    free(R->lab);
    history_free(&R->h);
    free(R->sk.s);
    fy_snapshot_free(&R->snap);
    fy_snapshot_free(&R->pre);
    fy_state_sums_free(&R->sums);
    fy_state_sums_free(&R->first);
    fy_loss_window_free(&R->win);
    fy_adamw_free(&R->opt, R->m->be);
    fy_dp_free(&R->dp, R->m);
    /* After an expert-parallel run m holds the whole table again, zeroed:
     * the trained weights are in the last checkpoint. (With LoRA adapters on
     * it stays a shard, which the caller frees.) */
    if (R->m->ep.size > 1) fy_model_set_expert_parallel(R->m, NULL, NULL);
    if (R->self) fy_comm_finalize(R->self);
    fy_loader_close(&R->train);
    fy_loader_close(&R->val);
    return rc;
}

/* ---- the run ---- */

int fy_train_run(fy_model *m, const fy_train_opts *o, const char *run_dir, const char *data_dir,
                 int resume, volatile sig_atomic_t *stop, fy_train_result *res, fy_err *err) {
    memset(res, 0, sizeof *res);
    res->last_val_loss = NAN;
    run R;
    int rc = -1;
    if (run_init(&R, m, o, run_dir, err) || run_setup(&R, data_dir, resume, err)) goto done;
    /* A step a guard refuses is rolled back: R.step returns to the step of
     * the snapshot restored, and the loop replays from there. */
    for (R.step = R.start + 1; R.step <= R.total; R.step++) {
        attempt a = {.step = R.step};
        R.saved = 0;
        int r = check_state(&R, &a, err);              /* corruption between steps */
        if (r == 0) r = snapshot_if_due(&R, a.step, err);
        if (r == 0) r = fetch_batch(&R, &a, err);
        if (r == 0) R.held = -1;                       /* the step changes the state */
        if (r == 0) r = run_step(&R, &a, err);         /* forward, backward, reduce, guards, update */
        if (r < 0) goto done;
        if (r > 0) {
            R.held = -1;
            if (roll_back(&R, &a, err)) goto done;
            R.held = R.step;
            continue;
        }
        if (accept_step(&R, &a, err)) goto done;
        R.held = a.step;
        if (a.step <= R.logged_upto) continue;         /* replaying after a rollback */
        R.logged_upto = a.step;
        if (log_step(&R, &a, err) || evaluate(&R, a.step, err)) goto done;
        fflush(R.mf);                                  /* the supervisor's heartbeat */
        /* The first checkpoint's host buffers, faulted in in the background
         * (at nice 10; the save does what it left) from the first step on:
         * not before it, a restart's first step is its recovery time. One
         * rank: multi-rank saves may gather another table. */
        if (a.step == R.start + 1 && R.n_ranks == 1 && o->ckpt_every > 0)
            fy_ckpt_async_reserve(&R.writer, &R.m->tab);
        int stopped;
        if (end_step(&R, &a, stop, &stopped, err)) goto done; /* outer step, checkpoint */
        if (stopped) {
            res->interrupted = 1;
            break;
        }
    }
    if (finish_run(&R, res, err)) goto done;
    rc = 0;
done:
    if (rc) rescue(&R, err);
    return run_free(&R, rc, err);
}
