#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/chaos/chaos.h"
#include "ckpt/async.h"
#include "ckpt/checkpoint.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "parallel/dp.h"
#include "parallel/ep.h"
#include "train/guard.h"
#include "train/inject.h"
#include "train/loader.h"
#include "train/plot.h"
#include "core/clock.h"

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
    fy_guard_opts_default(&o->guard);
}

/* ---- the "ferry" object of config.json ---- */

static int get_num(const cJSON *obj, const char *key, const char *where, double lo, double hi,
                   int integer, double *out, int *found, fy_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *found = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return fy_fail(err, "%s: ferry.%s must be a number", where, key);
    double d = v->valuedouble;
    if (integer && d != floor(d)) return fy_fail(err, "%s: ferry.%s=%g must be an integer", where, key, d);
    if (!(d >= lo && d <= hi)) return fy_fail(err, "%s: ferry.%s=%g is outside [%g, %g]", where, key, d, lo, hi);
    *out = d;
    *found = 1;
    return 0;
}

int fy_train_opts_from_json(const char *config_json, const char *where, fy_train_opts *o, fy_err *err) {
    cJSON *root = cJSON_Parse(config_json);
    if (!root) return fy_fail(err, "%s: not valid JSON", where);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "ferry");
    int rc = 0;
    if (f && cJSON_IsObject(f)) {
        struct { const char *key; double lo, hi; int integer; float *pf; int *pi; } keys[] = {
            {"lr", 0, 10, 0, &o->adam.lr, NULL},
            {"min_lr", 0, 10, 0, &o->adam.min_lr, NULL},
            {"warmup_steps", 0, 1e9, 1, NULL, &o->adam.warmup_steps},
            {"total_steps", 1, 1e9, 1, NULL, &o->adam.total_steps},
            {"beta1", 0, 0.999999, 0, &o->adam.beta1, NULL},
            {"beta2", 0, 0.999999999, 0, &o->adam.beta2, NULL},
            {"eps", 0, 1, 0, &o->adam.eps, NULL},
            {"weight_decay", 0, 10, 0, &o->adam.weight_decay, NULL},
            {"grad_clip", 0, 1e9, 0, &o->adam.grad_clip, NULL},
            {"batch_size", 1, 1 << 20, 1, NULL, &o->batch_size},
            {"seq_len", 1, 1 << 20, 1, NULL, &o->seq_len},
            {"eval_every", 0, 1e9, 1, NULL, &o->eval_every},
            {"eval_batches", 1, 1e6, 1, NULL, &o->eval_batches},
            {"ckpt_every", 0, 1e9, 1, NULL, &o->ckpt_every},
            {"keep_last", 0, 1e6, 1, NULL, &o->keep_last},
            {"log_every", 1, 1e9, 1, NULL, &o->log_every},
            {"micro_batch", 0, 1 << 20, 1, NULL, &o->micro_batch},
            {"compress_grads", 0, 1, 1, NULL, &o->compress},
            {"diloco_every", 0, 1e9, 1, NULL, &o->diloco_every},
            {"outer_lr", 0, 10, 0, &o->outer_lr, NULL},
            {"outer_momentum", 0, 0.999999, 0, &o->outer_momentum, NULL},
            {"expert_parallel", 0, 1, 1, NULL, &o->expert_parallel},
            {"grad_buckets", 0, 2, 1, NULL, &o->grad_buckets},
            {"bucket_mb", 0, 1e6, 0, &o->bucket_mb, NULL},
            {"zero", 0, 1, 1, NULL, &o->zero},
        };
        for (size_t i = 0; i < sizeof keys / sizeof keys[0] && !rc; i++) {
            double d;
            int found;
            rc = get_num(f, keys[i].key, where, keys[i].lo, keys[i].hi, keys[i].integer, &d, &found, err);
            if (!rc && found) {
                if (keys[i].pf) *keys[i].pf = (float)d;
                else *keys[i].pi = (int)d;
            }
        }
        struct { const char *key; double lo, hi; int integer; double *pd; int *pi; } gk[] = {
            {"guard_nonfinite", 0, 1, 1, NULL, &o->guard.nonfinite},
            {"guard_spike_window", 0, 1e6, 1, NULL, &o->guard.spike_window},
            {"guard_spike_min", 2, 1e6, 1, NULL, &o->guard.spike_min},
            {"guard_spike_z", 0, 1e9, 0, &o->guard.spike_z, NULL},
            {"guard_spike_ratio", 0, 1e9, 0, &o->guard.spike_ratio, NULL},
            {"guard_snapshot_every", 1, 1e9, 1, NULL, &o->guard.snapshot_every},
            {"guard_max_failures", 1, 1e6, 1, NULL, &o->guard.max_failures},
            {"guard_weight_checksum", 0, 1, 1, NULL, &o->guard.weight_checksum},
            {"abft_fraction", 0, 1, 0, &o->guard.abft_fraction, NULL},
            {"guard_recompute_every", 0, 1e9, 1, NULL, &o->guard.recompute_every},
        };
        for (size_t i = 0; i < sizeof gk / sizeof gk[0] && !rc; i++) {
            double d;
            int found;
            rc = get_num(f, gk[i].key, where, gk[i].lo, gk[i].hi, gk[i].integer, &d, &found, err);
            if (!rc && found) {
                if (gk[i].pd) *gk[i].pd = d;
                else *gk[i].pi = (int)d;
            }
        }
        double d;
        int found;
        if (!rc && !(rc = get_num(f, "seed", where, 0, 9007199254740992.0, 1, &d, &found, err)) && found)
            o->seed = (uint64_t)d;
    }
    cJSON_Delete(root);
    return rc;
}

char *fy_train_opts_to_json(const fy_train_opts *o) {
    char *s = malloc(2048);
    if (!s) return NULL;
    snprintf(s, 2048,
             "{\"lr\": %.9g, \"min_lr\": %.9g, \"warmup_steps\": %d, \"total_steps\": %d, "
             "\"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, \"weight_decay\": %.9g, "
             "\"grad_clip\": %.9g, \"batch_size\": %d, \"seq_len\": %d, \"seed\": %llu, "
             "\"eval_every\": %d, \"eval_batches\": %d, \"ckpt_every\": %d, \"keep_last\": %d, "
             "\"log_every\": %d, \"guard_nonfinite\": %d, \"guard_spike_window\": %d, \"guard_spike_min\": %d, "
             "\"guard_spike_z\": %.9g, \"guard_spike_ratio\": %.9g, \"guard_snapshot_every\": %d, "
             "\"guard_max_failures\": %d, \"guard_weight_checksum\": %d, \"abft_fraction\": %.9g, \"guard_recompute_every\": %d, "
             "\"micro_batch\": %d, \"compress_grads\": %d, \"diloco_every\": %d, \"outer_lr\": %.9g, "
             "\"outer_momentum\": %.9g, \"expert_parallel\": %d, \"grad_buckets\": %d, \"bucket_mb\": %.9g, \"zero\": %d}",
             o->adam.lr, o->adam.min_lr, o->adam.warmup_steps, o->adam.total_steps, o->adam.beta1,
             o->adam.beta2, o->adam.eps, o->adam.weight_decay, o->adam.grad_clip, o->batch_size,
             o->seq_len, (unsigned long long)o->seed, o->eval_every, o->eval_batches, o->ckpt_every,
             o->keep_last, o->log_every, o->guard.nonfinite, o->guard.spike_window, o->guard.spike_min,
             o->guard.spike_z, o->guard.spike_ratio, o->guard.snapshot_every, o->guard.max_failures,
             o->guard.weight_checksum, o->guard.abft_fraction, o->guard.recompute_every, o->micro_batch,
             o->compress, o->diloco_every, o->outer_lr, o->outer_momentum, o->expert_parallel, o->grad_buckets,
             o->bucket_mb, o->zero);
    return s;
}

int fy_train_backend_create(const char *spec, const fy_guard_opts *g, fy_backend **out, fy_err *err) {
    if (!spec || !*spec) spec = "cpu";
    if (g->abft_fraction <= 0 || !strncmp(spec, "chaos", 5)) return fy_backend_create(spec, out, err);
    char wrapped[256];
    if (snprintf(wrapped, sizeof wrapped, "chaos:%s", spec) >= (int)sizeof wrapped)
        return fy_fail(err, "backend spec too long: %.64s...", spec);
    return fy_backend_create(wrapped, out, err);
}

/* ---- validation ---- */

int fy_eval_loss(fy_model *m, fy_loader *val, int B, int T, int n, double *loss, fy_err *err) {
    uint64_t avail;
    if (fy_loader_val_batches(val, 1, B, T, (uint64_t)n, &avail, err)) return -1;
    int32_t *in = malloc((size_t)B * T * sizeof *in), *lab = malloc((size_t)B * T * sizeof *lab);
    if (!in || !lab) {
        free(in); free(lab);
        return fy_fail(err, "out of memory");
    }
    double sum = 0;
    long count = 0;
    int rc = 0;
    for (uint64_t i = 0; i < avail && !rc; i++) {
        fy_loss l;
        rc = fy_loader_val_batch(val, i, 0, 1, B, T, in, lab, err) ||
             fy_model_forward(m, in, lab, B, T, 0, &l, err);
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
    int32_t *in = malloc((size_t)B * T * sizeof *in), *lab = malloc((size_t)B * T * sizeof *lab);
    size_t per = (avail + dp->size - 1) / dp->size;
    double *mine = calloc(2 * per + 1, sizeof *mine), *all = calloc(2 * per * dp->size + 1, sizeof *all);
    int rc = 0;
    if (!in || !lab || !mine || !all) rc = fy_fail(err, "out of memory");
    /* With expert parallelism every forward is collective: a rank out of
     * batches runs its first one again, and drops the result. */
    for (uint64_t j = 0, i = dp->rank; !rc && j < per; i += dp->size, j++) {
        if (i >= avail && m->ep.size <= 1) break;
        fy_loss l;
        uint64_t b = i < avail ? i : (uint64_t)dp->rank % avail;
        rc = fy_loader_val_batch(val, b, 0, 1, B, T, in, lab, err) || fy_model_forward(m, in, lab, B, T, 0, &l, err);
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

typedef struct history {
    double *x, *y, *vx, *vy;
    int n, cap, vn, vcap;
} history;

static void push(double **x, double **y, int *n, int *cap, double a, double b) {
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 256;
        double *nx = realloc(*x, c * sizeof **x), *ny = realloc(*y, c * sizeof **y);
        if (nx) *x = nx;
        if (ny) *y = ny;
        if (!nx || !ny) return;
        *cap = c;
    }
    (*x)[*n] = a;
    (*y)[*n] = b;
    (*n)++;
}

/* Keeps the metrics of steps <= upto (a resumed run replays the rest) and
 * loads them into the history. */
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
                const cJSON *lv = cJSON_GetObjectItemCaseSensitive(o, "loss");
                const cJSON *vv = cJSON_GetObjectItemCaseSensitive(o, "val_loss");
                if (lv && cJSON_IsNumber(lv)) push(&h->x, &h->y, &h->n, &h->cap, st->valuedouble, lv->valuedouble);
                if (vv && cJSON_IsNumber(vv)) push(&h->vx, &h->vy, &h->vn, &h->vcap, st->valuedouble, vv->valuedouble);
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
    fy_series s[2] = {{"train loss", "#1f77b4", h->x, h->y, h->n},
                      {"validation loss", "#d62728", h->vx, h->vy, h->vn}};
    if (fy_plot_svg(path, "ferry training loss", s, 2, &err)) fy_warn("%s", err.msg);
}

static void fmt_duration(double s, char *out, size_t cap) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(out, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else snprintf(out, cap, "%ldm%02lds", t / 60, t % 60);
}

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
    char extra[64 + 12 * 64] = "";
    if (k->n) {
        size_t len = (size_t)snprintf(extra, sizeof extra, ",\n  \"skipped_batches\": [");
        for (int i = 0; i < k->n && len + 16 < sizeof extra; i++)
            len += (size_t)snprintf(extra + len, sizeof extra - len, "%s%d", i ? ", " : "", k->s[i]);
        snprintf(extra + len, sizeof extra - len, "]");
    }
    char state[512 + sizeof extra];
    snprintf(state, sizeof state,
             "{\n  \"step\": %d,\n  \"tokens_seen\": %lld,\n  \"elapsed_s\": %.3f,\n  \"seed\": %llu,\n"
             "  \"loss\": %.9g,\n  \"val_loss\": %s%.9g%s%s\n}\n",
             step, tokens, elapsed, (unsigned long long)o->seed, loss, isfinite(val) ? "" : "\"",
             val, isfinite(val) ? "" : "\"", extra);
    double stall = 0;
    /* Gathering checkpoint state is not training traffic: counted apart. */
    uint64_t bytes0 = fy_comm_bytes_sent(dp->comm);
    fy_ckpt_extra dist;
    int rc = fy_dp_extra_state(dp, m, opt, &dist, err);
    if (rc == 0) rc = save_files(writer, m, opt, dp, o, run_dir, step, state, dist.meta ? &dist : NULL, &stall, err);
    dp->ckpt_bytes += fy_comm_bytes_sent(dp->comm) - bytes0;
    if (rc) return fy_wrap(err, "saving checkpoint at step %d", step);
    if (dp->rank != 0) return 0;
    fy_info("checkpoint step %d: training held %.3f s, writing in the background", step, stall);
    return 0;
}

/* What a GEMM operand is, for fault reports: a weight, a weight's gradient
 * (both named, which names the layer), or an activation. */
static void name_ref(const fy_model *m, fy_ref r, char *out, size_t cap) {
    const fy_tensor_info *t = r.buf ? fy_tensor_at(m, r.off) : NULL;
    if (r.buf == &m->params && t) snprintf(out, cap, "weight %s", t->name);
    else if (r.buf == &m->grads && t) snprintf(out, cap, "grad of %s", t->name);
    else snprintf(out, cap, "activation");
}

static void describe_gemm_fault(const fy_model *m, const fy_chaos_fault *f, char *reason, size_t rcap,
                                char *where, size_t wcap) {
    char a[128], b[128], c[128];
    name_ref(m, f->A, a, sizeof a);
    name_ref(m, f->B, b, sizeof b);
    name_ref(m, f->C, c, sizeof c);
    snprintf(reason, rcap, "ABFT checksum mismatch in a GEMM (column %d sums to %.6g, expected %.6g, tolerance %.2g)",
             f->column, f->got, f->want, f->tol);
    snprintf(where, wcap, "step %d %s GEMM #%d (M=%d N=%d K=%d%s%s): A=%s, B=%s, C=%s", f->step, f->phase,
             f->gemm_index, f->M, f->N, f->K, f->trans_a ? " A^T" : "", f->trans_b ? " B^T" : "", a, b, c);
}

/* One execution of a step on the current state: forward and backward of
 * this rank's micro-batches, the loss guards on the batch loss of all ranks,
 * the data-parallel AdamW step and the bias update, then the chaos backend's
 * ABFT verdict (voted: a fault on any rank is a fault on all, so the ranks
 * stay in step). in/lab hold the local micro-batches one after the other.
 * inj (NULL on a re-execution) injects the faults due at this step. Returns
 * 0 when the step was computed, 1 when a guard flagged it (reason and where
 * say what and where), -1 on an error. Every rank returns the same verdict. */
static int execute_step(fy_model *m, fy_adamw *opt, fy_dp *dp, const fy_guard_opts *g, struct fy_chaos *chaos,
                        fy_inject *inj, const fy_loss_window *win, int step, uint64_t bi, const int32_t *in,
                        const int32_t *lab, int T, fy_loss *l, float *gn, float *lr, char *reason, size_t rcap,
                        char *where, size_t wcap, fy_err *err) {
    char what[320];
    const int k = dp->local_micro, mb = dp->micro;
    fy_loss part[64];
    *gn = NAN;
    if (chaos) {
        int gi = -1;
        if (inj && inj->n && fy_inject_gemm_due(inj, step, &gi))
            fy_warn("inject gemm: corrupting GEMM #%d of step %d", gi, step);
        fy_chaos_begin_step(chaos, step, g->abft_fraction, gi);
    }
    for (int j = 0; j < k; j++) {
        size_t off = (size_t)j * mb * T;
        if (chaos) fy_chaos_set_phase(chaos, "forward");
        fy_model_zero_grad(m);
        if (fy_model_forward(m, in + off, lab + off, mb, T, 1, &part[j], err)) return fy_wrap(err, "step %d", step);
        if (inj && inj->n && j == 0) {
            int r = fy_inject_act(inj, step, m, what, sizeof what, err);
            if (r < 0) return -1;
            if (r) fy_warn("inject %s", what);
        }
        if (chaos) fy_chaos_set_phase(chaos, "backward");
        /* A non-finite loss fails the step below; its backward is not needed,
         * except with several ranks: a backward may be collective (expert
         * parallel, gradient buckets), so every rank runs it. */
        if ((isfinite(part[j].total) || dp->size > 1) && fy_model_backward(m, err))
            return fy_wrap(err, "step %d", step);
        if (inj && inj->n && j == k - 1 && fy_inject_grad(inj, step, m, what, sizeof what)) fy_warn("inject %s", what);
        if (fy_dp_accumulate(dp, m, j, err)) return -1;
    }
    if (fy_dp_mean_loss(dp, part, l, err)) return -1;
    if (g->nonfinite && (!isfinite(l->total) || !isfinite(l->main))) {
        snprintf(reason, rcap, "non-finite loss (%g)", l->total);
        snprintf(where, wcap, "forward of batch %llu", (unsigned long long)bi);
        return 1;
    }
    if (fy_loss_is_spike(win, g, l->main, reason, rcap)) {
        snprintf(where, wcap, "batch %llu", (unsigned long long)bi);
        return 1;
    }
    if (fy_dp_step(dp, m, opt, gn, lr, err)) {
        if (g->nonfinite && !isfinite(*gn)) {
            snprintf(reason, rcap, "non-finite gradient norm (%g)", *gn);
            return fy_find_nonfinite_grad(m, where, wcap, err) ? -1 : 1;
        }
        return fy_wrap(err, "step %d", step);
    }
    if (fy_model_update_bias(m, err)) return fy_wrap(err, "step %d", step);
    int bad = 0;
    if (chaos) {
        fy_chaos_fault cf;
        bad = fy_chaos_take_fault(chaos, &cf);
        fy_chaos_begin_step(chaos, step, g->abft_fraction, -1); /* disarm */
        if (bad) describe_gemm_fault(m, &cf, reason, rcap, where, wcap);
    }
    int any = fy_dp_vote(dp, bad, err);
    if (any < 0) return -1;
    if (any && !bad) {
        snprintf(reason, rcap, "a fault on another rank");
        snprintf(where, wcap, "step %d", step);
    }
    return any ? 1 : 0;
}

/* Appends a guard event to metrics.jsonl (reason and where are JSON-escaped
 * crudely: quotes and backslashes dropped). */
static void log_event(FILE *mf, int step, const char *event, const char *reason, const char *where,
                      int restored, int skip) {
    char r[400], w[640];
    const char *src[2] = {reason, where};
    char *dst[2] = {r, w};
    for (int k = 0; k < 2; k++) {
        size_t j = 0;
        for (const char *c = src[k]; c && *c && j + 1 < (k ? sizeof w : sizeof r); c++)
            if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20) dst[k][j++] = *c;
        dst[k][j] = '\0';
    }
    fprintf(mf, "{\"step\": %d, \"event\": \"%s\", \"reason\": \"%s\", \"where\": \"%s\"", step, event, r, w);
    if (restored >= 0) fprintf(mf, ", \"restored_step\": %d", restored);
    if (skip) fprintf(mf, ", \"skip_batch\": true");
    fprintf(mf, "}\n");
    fflush(mf);
}

int fy_train_run(fy_model *m, const fy_train_opts *o, const char *run_dir, const char *data_dir,
                 int resume, volatile sig_atomic_t *stop, fy_train_result *res, fy_err *err) {
    const int B = o->batch_size, T = o->seq_len, total = o->adam.total_steps;
    const fy_guard_opts *g = &o->guard;
    memset(res, 0, sizeof *res);
    res->last_val_loss = NAN;
    fy_loader train = {0}, val = {0};
    fy_adamw opt = {0};
    fy_ckpt_async writer;
    fy_ckpt_async_init(&writer);
    history h = {0};
    FILE *mf = NULL;
    int32_t *in = NULL, *lab = NULL;
    char *state = NULL;
    int rc = -1, start = 0;
    long long tokens = 0;
    double elapsed0 = 0;
    skips sk = {0};
    fy_inject inj;
    fy_snapshot snap = {0}, pre = {0};
    /* After a resume the checkpoint just loaded is the rollback base until
     * the first regular snapshot (or the next checkpoint, which may rotate
     * it away): a snapshot at once would copy the whole state into memory
     * touched for the first time before the first step, seconds for the
     * small model in a VM (the kill-to-training time, docs/RELIABILITY.md). */
    char disk_base[FY_PATH_MAX] = "";
    int disk_step = -1;
    fy_state_sums sums = {0}, first = {0};
    fy_loss_window win = {0};
    struct fy_chaos *chaos = fy_chaos_of(m->be);
    fy_comm *self = NULL, *comm = o->comm;
    fy_dp dp = {0};
    if (!comm && fy_comm_init(0, &self, err)) return -1;
    if (!comm) comm = self;
    const int rank0 = fy_comm_rank(comm) == 0, n_ranks = fy_comm_size(comm);
    const int guarded = g->nonfinite || g->spike_window > 0 || g->weight_checksum || chaos || g->recompute_every > 0;

    if (o->expert_parallel && n_ranks > 1) {
        /* DiLoCo's local steps have no gradient exchange, and an expert's
         * gradient exists only on its owner. Attached first: the model then
         * holds this rank's experts only, and the rest is sized for that. */
        if (o->diloco_every > 0) {
            fy_fail(err, "expert parallel cannot run with DiLoCo (--diloco): the local steps would not update "
                    "the experts of other ranks");
            goto done;
        }
        if (fy_ep_attach(comm, m, err)) goto done;
    }
    if (fy_inject_from_env(&inj, err) || fy_inject_resolve(&inj, m, err)) goto done;
    for (int i = 0; i < inj.n && !chaos; i++)
        if (inj.f[i].kind == FY_INJ_GEMM) {
            fy_fail(err, "FERRY_INJECT: gemm faults need a chaos backend (--backend chaos:%s)", m->be->ops->name);
            goto done;
        }
    if (fy_loss_window_init(&win, g->spike_window)) {
        fy_fail(err, "out of memory");
        goto done;
    }
    if (fy_loader_open(&train, data_dir, "train", (uint32_t)m->cfg.vocab_size, err) ||
        fy_loader_open(&val, data_dir, "val", (uint32_t)m->cfg.vocab_size, err) ||
        fy_dp_init(&dp, comm, m, B, o->micro_batch, o->compress, o->zero,
                   &(fy_dp_diloco){o->diloco_every, o->outer_lr, o->outer_momentum}, err) ||
        fy_dp_create_optimizer(&dp, m, &o->adam, &opt, err))
        goto done;
    if (dp.ep.on && rank0) /* dp keeps the whole table (for checkpoints) */
        printf("expert parallel: %d routed experts over %d ranks (rank 0 holds experts %d-%d: %zu of the "
               "model's %zu parameters), rows sent with all-to-all\n", m->cfg.n_routed_experts, n_ranks,
               m->tab.exp_lo, m->tab.exp_hi - 1, fy_params_count(&m->tab), fy_params_count(&dp.ep.full_tab));
    if (dp.local_micro > (int)(sizeof ((fy_loss[64]){0}) / sizeof(fy_loss))) {
        fy_fail(err, "%d micro-batches per rank: at most 64 (raise --micro-batch)", dp.local_micro);
        goto done;
    }
    /* Fault injection edits the gradients after the backward, so with it
     * they travel after the backward too. */
    if (fy_dp_set_bucketing(&dp, m, inj.n ? 0 : o->grad_buckets, o->bucket_mb, err)) goto done;
    char buckets[128] = "", how[48] = "layer by layer";
    if (o->bucket_mb > 0) snprintf(how, sizeof how, "in buckets of %g MB", o->bucket_mb);
    if (fy_dp_bucketing(&dp))
        snprintf(buckets, sizeof buckets, ", gradients sent %s during the backward%s", how,
                 fy_comm_rs_progress_thread(dp.bk.rs) ? " (progress thread)" : "");
    if (n_ranks > 1 && rank0)
        printf("data parallel: %d ranks, %d micro-batch(es) of %d per rank, %s%s\n", n_ranks, dp.local_micro,
               dp.micro, dp.diloco.local_steps ? "DiLoCo local steps" : dp.compress ? "int8 gradients with error feedback"
                                                 : dp.replicated ? "AdamW on every rank, gradients all-reduced (--zero 0)"
                                                                 : "ZeRO-1 sharded AdamW moments", buckets);
    if (dp.diloco.local_steps && o->ckpt_every % dp.diloco.local_steps) {
        fy_fail(err, "DiLoCo: ckpt_every %d must be a multiple of diloco_every %d (checkpoints follow outer steps)",
                o->ckpt_every, dp.diloco.local_steps);
        goto done;
    }
    if (n_ranks > 1 && rank0 && dp.diloco.local_steps)
        printf("DiLoCo: %d local steps, then outer Nesterov SGD (lr %g, momentum %g) on the averaged delta%s\n",
               dp.diloco.local_steps, dp.diloco.outer_lr, dp.diloco.outer_momentum,
               dp.compress ? " (deltas sent as int8 with error feedback)" : "");
    if (resume) {
        char dir[FY_PATH_MAX];
        if (fy_ckpt_resolve(run_dir, dir, sizeof dir, err) || fy_dp_load(&dp, dir, m, &opt, &state, err))
            goto done;
        cJSON *js = cJSON_Parse(state);
        const cJSON *st = js ? cJSON_GetObjectItemCaseSensitive(js, "step") : NULL;
        const cJSON *tk = js ? cJSON_GetObjectItemCaseSensitive(js, "tokens_seen") : NULL;
        const cJSON *el = js ? cJSON_GetObjectItemCaseSensitive(js, "elapsed_s") : NULL;
        const cJSON *sb = js ? cJSON_GetObjectItemCaseSensitive(js, "skipped_batches") : NULL;
        if (!st || !cJSON_IsNumber(st)) {
            cJSON_Delete(js);
            fy_fail(err, "%s/trainer_state.json: missing \"step\"", dir);
            goto done;
        }
        start = st->valueint;
        tokens = tk && cJSON_IsNumber(tk) ? (long long)tk->valuedouble : (long long)start * B * T;
        elapsed0 = el && cJSON_IsNumber(el) ? el->valuedouble : 0;
        const cJSON *e;
        if (sb && cJSON_IsArray(sb))
            cJSON_ArrayForEach(e, sb) if (cJSON_IsNumber(e)) skips_add(&sk, e->valueint);
        cJSON_Delete(js);
        if (opt.t != start) {
            fy_fail(err, "%s: optimizer step %d != trainer step %d", dir, opt.t, start);
            goto done;
        }
        if (rank0) fy_info("resuming from %s at step %d", dir, start);
        snprintf(disk_base, sizeof disk_base, "%s", dir);
        disk_step = start;
    } else if (fy_model_init_weights(m, o->seed, err)) {
        goto done;
    }
    /* DiLoCo restarts the outer momentum at zero on resume (docs/SCALING.md). */
    if (fy_dp_set_anchor(&dp, m, err)) goto done;
    char mpath[FY_PATH_MAX];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", run_dir);
    /* Rank 0 trims metrics.jsonl to the resumed step first; the others then
     * read the same history. */
    if (rank0 && metrics_reopen(mpath, start, 0, &h, &mf, err)) goto done;
    if (fy_comm_barrier(comm, err)) goto done;
    if (!rank0 && metrics_reopen(mpath, start, 1, &h, &mf, err)) goto done;
    /* The spike window continues from the logged losses of a resumed run. */
    for (int i = h.n > win.cap ? h.n - win.cap : 0; i < h.n; i++) fy_loss_window_push(&win, h.y[i]);

    in = malloc((size_t)B * T * sizeof *in);
    lab = malloc((size_t)B * T * sizeof *lab);
    if (!in || !lab) {
        fy_fail(err, "out of memory");
        goto done;
    }
    double t_start = fy_now_s(), t_last = t_start, loss = NAN, val_loss = NAN;
    double snap_loss = NAN;
    long long snap_tokens = tokens, disk_tokens = tokens;
    int step = start, last_log = start, saved = 0;
    int logged_upto = start;   /* metrics, evals and checkpoints are done up to here */
    int fail_streak = 0, fail_step = 0;
    for (step = start + 1; step <= total; step++) {
        fy_loss l;
        float gn = NAN, lr;
        char reason[400] = "", where[640] = "", what[320];
        saved = 0;
        /* Silent corruption of the state between steps. */
        if (g->weight_checksum && sums.valid) {
            int r = fy_state_sums_verify(&sums, m, &opt, where, sizeof where, err);
            if (r < 0) goto done;
            int any = fy_dp_vote(&dp, r, err);
            if (any < 0) goto done;
            if (any) {
                if (r) snprintf(reason, sizeof reason, "state checksum changed between steps %d and %d", step - 1, step);
                else snprintf(reason, sizeof reason, "a state checksum changed on another rank"),
                     snprintf(where, sizeof where, "between steps %d and %d", step - 1, step);
                goto fault;
            }
        }
        /* DiLoCo snapshots at outer steps only, so no rollback crosses one. */
        const int snap_every = dp.diloco.local_steps ? dp.diloco.local_steps : g->snapshot_every;
        int want_snap = !snap.valid || ((step - 1) % snap_every == 0 && snap.step != step - 1);
        if (!snap.valid && disk_step >= 0) want_snap = (step - 1) % snap_every == 0 && step - 1 != disk_step;
        if (guarded && want_snap) {
            if (fy_snapshot_take(&snap, m, &opt, step - 1, err)) goto done;
            snap_tokens = tokens;
            snap_loss = loss;
        }
        uint64_t bi = batch_index(&sk, step);
        /* This rank's micro-batches: global rows bi*B + i*micro for its
         * global micro-batch indices i. */
        const size_t local_rows = (size_t)dp.local_micro * dp.micro;
        for (int j = 0; j < dp.local_micro; j++) {
            uint64_t row0 = bi * (uint64_t)B + (uint64_t)fy_dp_micro_index(&dp, j) * dp.micro;
            size_t off = (size_t)j * dp.micro * T;
            if (fy_loader_rows(&train, o->seed, row0, dp.micro, T, in + off, lab + off, err)) goto done;
        }
        if (inj.n && fy_inject_batch(&inj, step, lab, local_rows * T, m->cfg.vocab_size, what, sizeof what))
            fy_warn("inject %s", what);
        fy_dp_mark(&dp);
        int r = execute_step(m, &opt, &dp, g, chaos, &inj, &win, step, bi, in, lab, T, &l, &gn, &lr, reason,
                             sizeof reason, where, sizeof where, err);
        const uint64_t step_bytes = fy_dp_step_bytes(&dp);
        if (r < 0) goto done;
        if (r) goto fault;
        if (g->recompute_every > 0 && (step - 1) % g->recompute_every == 0) {
            /* Silent corruption during the step: execute it again from the same
             * state and require bitwise the same result (the backend is
             * deterministic). Disagreeing executions are both discarded. */
            fy_snapshot *base = snap.valid && snap.step == step - 1 ? &snap : &pre;
            if (base == &pre && fy_snapshot_take(&pre, m, &opt, step - 1, err)) goto done;
            fy_loss l2;
            float gn2, lr2;
            if (fy_state_sums_compute(&first, m, &opt, err) || fy_snapshot_restore(base, m, &opt, err)) goto done;
            r = execute_step(m, &opt, &dp, g, chaos, NULL, &win, step, bi, in, lab, T, &l2, &gn2, &lr2, reason,
                             sizeof reason, where, sizeof where, err);
            if (r < 0) goto done;
            if (r) goto fault;
            r = fy_state_sums_verify(&first, m, &opt, where, sizeof where, err);
            if (r < 0) goto done;
            int differs = r || memcmp(&l.total, &l2.total, sizeof l.total) || memcmp(&gn, &gn2, sizeof gn);
            int any = fy_dp_vote(&dp, differs, err);
            if (any < 0) goto done;
            if (any && !differs) {
                snprintf(reason, sizeof reason, "re-execution of step %d disagrees on another rank", step);
                snprintf(where, sizeof where, "step %d", step);
                goto fault;
            }
            if (differs) {
                snprintf(reason, sizeof reason,
                         "re-execution of step %d disagrees with its first execution (loss %.9g vs %.9g, "
                         "grad norm %.9g vs %.9g)", step, l.total, l2.total, gn, gn2);
                if (!r) snprintf(where, sizeof where, "loss or gradient norm of step %d", step);
                goto fault;
            }
        }
        /* The step is accepted. */
        if (step > fail_step) fail_streak = 0;
        if (step > logged_upto) fy_loss_window_push(&win, l.main);
        if (g->weight_checksum && fy_state_sums_compute(&sums, m, &opt, err)) goto done;
        if (inj.n) fy_inject_state(&inj, step, m, &opt, what, sizeof what);
        tokens += (long long)B * T;
        loss = l.total;
        double now = fy_now_s(), elapsed = elapsed0 + now - t_start;
        if (step <= logged_upto) continue; /* replaying after a rollback */
        logged_upto = step;
        fprintf(mf, "{\"step\": %d, \"loss\": %.6f, \"loss_main\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, "
                    "\"tokens\": %lld, \"elapsed_s\": %.3f, \"comm_bytes\": %llu}\n",
                step, l.total, l.main, lr, gn, tokens, elapsed, (unsigned long long)step_bytes);
        push(&h.x, &h.y, &h.n, &h.cap, step, l.main);
        if (step % o->log_every == 0 || step == start + 1 || step == total) {
            double tps = (double)(step - last_log) * B * T / fmax(now - t_last, 1e-9);
            char eta[32];
            fmt_duration((total - step) * (double)B * T / fmax(tps, 1e-9), eta, sizeof eta);
            char rate[32] = "   - tok/s";
            if (step > start + 1) snprintf(rate, sizeof rate, "%.0f tok/s", tps);
            char comm_s[48] = "";
            if (n_ranks > 1) snprintf(comm_s, sizeof comm_s, " | sent %.2f MB", step_bytes / 1e6);
            if (rank0) printf("step %5d/%d | loss %.4f (main %.4f) | lr %.2e | grad %.3f | %s%s | ETA %s\n", step,
                              total, l.total, l.main, lr, gn, rate, comm_s, step > start + 1 ? eta : "-");
            fflush(stdout);
            t_last = now;
            last_log = step;
        }
        if (o->eval_every > 0 && (step % o->eval_every == 0 || step == total)) {
            if (eval_loss_dp(m, &dp, &val, B, T, o->eval_batches, &val_loss, err)) goto done;
            fprintf(mf, "{\"step\": %d, \"val_loss\": %.6f}\n", step, val_loss);
            push(&h.vx, &h.vy, &h.vn, &h.vcap, step, val_loss);
            if (rank0) {
                printf("step %5d/%d | validation loss %.4f\n", step, total, val_loss);
                fflush(stdout);
                plot(run_dir, &h);
            }
        }
        fflush(mf);
        int out_of_time = o->time_limit_s > 0 && now - t_start >= o->time_limit_s;
        int paused = o->stop_after > 0 && step >= o->stop_after && step < total;
        int interrupted = stop && *stop;
        if (n_ranks > 1) { /* every rank stops at the same step */
            int32_t v[2] = {interrupted, out_of_time};
            if (fy_comm_allreduce_max_i32(comm, v, 2, err)) goto done;
            interrupted = v[0], out_of_time = v[1];
        }
        /* DiLoCo: the outer step every H steps, at the end, and before any
         * checkpoint (which then holds the synchronised weights). */
        int will_save = interrupted || out_of_time || paused || (o->ckpt_every > 0 && step % o->ckpt_every == 0);
        if (dp.diloco.local_steps && (step % dp.diloco.local_steps == 0 || step == total || will_save)) {
            fy_dp_mark(&dp);
            if (fy_dp_outer_step(&dp, m, err)) goto done;
            /* The outer step changed the weights on purpose: re-take the state
             * sums, or the next step's check would roll it back. */
            if (g->weight_checksum && fy_state_sums_compute(&sums, m, &opt, err)) goto done;
            if (rank0) fprintf(mf, "{\"step\": %d, \"event\": \"outer_step\", \"comm_bytes\": %llu}\n", step,
                               (unsigned long long)fy_dp_step_bytes(&dp));
        }
        if (interrupted || out_of_time || paused) {
            res->interrupted = 1;
            if (save(&writer, m, &opt, &dp, o, run_dir, step, tokens, elapsed, loss, val_loss, &sk, err))
                goto done;
            if (rank0)
                printf("%s at step %d: checkpoint written; continue with --resume\n",
                       out_of_time ? "time limit reached" : paused ? "stopped as asked" : "interrupted", step);
            saved = 1;
            break;
        }
        if (o->ckpt_every > 0 && step % o->ckpt_every == 0) {
            if (save(&writer, m, &opt, &dp, o, run_dir, step, tokens, elapsed, loss, val_loss, &sk, err))
                goto done;
            saved = 1;
            disk_step = -1; /* keep_last may remove the checkpoint resumed from */
        }
        continue;
    fault:
        /* Discard the step: restore the last snapshot and replay from it. */
        fail_streak++;
        if (step > fail_step) fail_step = step;
        {
            int data_fault = !strncmp(reason, "non-finite", 10) || !strncmp(reason, "loss ", 5);
            /* A data fault that repeats at the same step skips its batch. */
            int skip = data_fault && fail_streak >= 2 && step == fail_step && fail_streak < g->max_failures;
            const int from_disk = !snap.valid && disk_step >= 0, base_step = from_disk ? disk_step : snap.step;
            if (!snap.valid && !from_disk) {
                fy_fail(err, "step %d: %s at %s, and no snapshot to roll back to", step, reason, where);
                goto done;
            }
            log_event(mf, step, "rollback", reason, where, base_step, skip);
            fy_warn("guard: step %d: %s (at %s); rolling back to step %d%s%s", step, reason, where, base_step,
                    from_disk ? " (the checkpoint resumed from)" : "", skip ? " and skipping the batch" : "");
            if (fail_streak >= g->max_failures) {
                fy_fail(err,
                        "guard: %d consecutive failed attempts at step %d, the last: %s (at %s); stopping "
                        "instead of looping (bad data or unstable hardware; see %s)",
                        fail_streak, fail_step, reason, where, mpath);
                goto done;
            }
            if (skip && (sk.n >= 64 || skips_add(&sk, step))) {
                fy_fail(err, "guard: too many skipped batches (%d); stopping", sk.n);
                goto done;
            }
            if (from_disk) {
                if (fy_dp_load(&dp, disk_base, m, &opt, NULL, err)) goto done;
                fy_model_zero_grad(m);
                memset(m->loads, 0, (size_t)m->tab.n_layers * (m->cfg.n_routed_experts + 1) * sizeof *m->loads);
            } else if (fy_snapshot_restore(&snap, m, &opt, err)) {
                goto done;
            }
            if (g->weight_checksum && fy_state_sums_compute(&sums, m, &opt, err)) goto done;
            step = base_step;
            tokens = from_disk ? disk_tokens : snap_tokens;
            loss = from_disk ? NAN : snap_loss;
        }
    }
    if (step > total) step = total;
    if (!saved && step > start &&
        save(&writer, m, &opt, &dp, o, run_dir, step, tokens, elapsed0 + fy_now_s() - t_start, loss,
             val_loss, &sk, err))
        goto done;
    if (rank0) plot(run_dir, &h);
    char per_step[64] = "";
    if (fy_dp_bucketing(&dp) && step > start)
        snprintf(per_step, sizeof per_step, "; %.1f gradient buckets per step", (double)dp.bk.sent / (step - start));
    if (rank0 && n_ranks > 1)
        printf("communication: rank 0 sent %llu bytes in %d steps (%.1f bytes per token); checkpoints %llu more%s\n",
               (unsigned long long)(fy_comm_bytes_sent(comm) - dp.ckpt_bytes), step - start,
               step > start ? (fy_comm_bytes_sent(comm) - dp.ckpt_bytes) / ((double)(step - start) * B * T) : 0.0,
               (unsigned long long)dp.ckpt_bytes, per_step);
    res->step = step;
    res->last_loss = loss;
    res->last_val_loss = val_loss;
    rc = 0;
done:
    /* The last checkpoint must be on disk before the run reports success. */
    if (rc == 0 && fy_ckpt_async_wait(&writer, err)) {
        fy_wrap(err, "writing the last checkpoint");
        rc = -1;
    }
    fy_ckpt_async_free(&writer);
    if (mf) fclose(mf);
    free(in);
    free(lab);
    free(state);
    free(h.x); free(h.y); free(h.vx); free(h.vy);
    free(sk.s);
    fy_snapshot_free(&snap);
    fy_snapshot_free(&pre);
    fy_state_sums_free(&sums);
    fy_state_sums_free(&first);
    fy_loss_window_free(&win);
    fy_adamw_free(&opt, m->be);
    fy_dp_free(&dp, m);
    /* After an expert-parallel run m holds the whole table again, zeroed:
     * the trained weights are in the last checkpoint. */
    if (m->ep.size > 1) fy_model_set_expert_parallel(m, NULL, NULL);
    if (self) fy_comm_finalize(self);
    fy_loader_close(&train);
    fy_loader_close(&val);
    return rc;
}
