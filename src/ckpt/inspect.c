/* `ferry inspect`: summaries of shards, safetensors files, checkpoints and
 * run directories. Every check records the first failure and carries on, so
 * one call prints everything that is wrong, then returns -1. */
#include "ckpt/inspect.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "core/checksum.h"
#include "core/fsutil.h"
#include "io/shard.h"
#include "model/config.h"
#include "model/params.h"

#define FIRST_TENSORS 10

typedef struct report {
    FILE *out;
    fy_err *err;
    int failed;
} report;

static void pr(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pr(report *r, const char *fmt, ...) {
    if (!r->out) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(r->out, fmt, ap);
    va_end(ap);
}

/* Prints a failure; the first one becomes the returned error. */
static void fail(report *r, const fy_err *e) {
    pr(r, "  FAILED: %s\n", e->msg);
    if (!r->failed && r->err) *r->err = *e;
    r->failed = 1;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has(const char *dir, const char *name) {
    char p[FY_PATH_MAX];
    fy_err e;
    return fy_path_join(p, sizeof p, dir, name, &e) == 0 && fy_file_exists(p);
}

/* 1234567 -> "1.23M" */
static void human(char out[32], double v) {
    const char *unit[] = {"", "K", "M", "G", "T"};
    int u = 0;
    while (v >= 1000 && u < 4) v /= 1000, u++;
    snprintf(out, 32, u ? "%.2f%s" : "%.0f%s", v, unit[u]);
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

/* ---- safetensors --------------------------------------------------------- */

/* Non-finite elements of a float tensor (0 for other dtypes). */
static uint64_t count_nonfinite(const fy_st_entry *e) {
    const unsigned char *p = e->data;
    uint64_t bad = 0;
    for (uint64_t i = 0; i < e->numel; i++) {
        if (e->dtype == FY_ST_F32) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            bad += (u & 0x7f800000u) == 0x7f800000u;
        } else if (e->dtype == FY_ST_BF16 || e->dtype == FY_ST_F16) {
            uint16_t h, mask = e->dtype == FY_ST_BF16 ? 0x7f80 : 0x7c00;
            memcpy(&h, p + 2 * i, 2);
            bad += (h & mask) == mask;
        } else {
            return 0;
        }
    }
    return bad;
}

/* When the MANIFEST.json beside `path` lists it, checks size and xxh64. */
static void check_against_manifest(report *r, const char *path) {
    char dir[FY_PATH_MAX];
    fy_err e;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (fy_path_dirname(dir, sizeof dir, path, &e) || !has(dir, FY_CKPT_MANIFEST)) return;
    fy_ckpt_manifest man;
    if (fy_ckpt_read_manifest(dir, &man, &e)) {
        fail(r, &e);
        return;
    }
    for (int i = 0; i < man.n_files; i++) {
        if (strcmp(man.files[i].name, base)) continue;
        if (fy_ckpt_verify_file(dir, &man.files[i], &e)) fail(r, &e);
        else pr(r, "  size and xxh64 match %s/%s\n", dir, FY_CKPT_MANIFEST);
    }
}

static void st_summary(report *r, const char *path, int first_n) {
    fy_st_file *f;
    fy_err e;
    if (fy_st_open(path, &f, &e)) {
        fail(r, &e);
        return;
    }
    uint64_t total = 0, nonfinite = 0;
    uint64_t cnt[FY_ST_NDTYPES] = {0}, elems[FY_ST_NDTYPES] = {0};
    const char *first_bad = NULL;
    size_t n = fy_st_count(f);
    for (size_t i = 0; i < n; i++) {
        const fy_st_entry *t = fy_st_entry_at(f, i);
        total += t->numel;
        cnt[t->dtype]++;
        elems[t->dtype] += t->numel;
        uint64_t bad = count_nonfinite(t);
        if (bad && !first_bad) first_bad = t->name;
        nonfinite += bad;
    }
    char h[32];
    human(h, (double)total);
    pr(r, "  tensors: %zu\n  parameters: %" PRIu64 " (%s)\n  dtypes:", n, total, h);
    for (int d = 0; d < FY_ST_NDTYPES; d++)
        if (cnt[d])
            pr(r, " %s x%" PRIu64 " (%" PRIu64 " values)", fy_st_dtype_name((fy_st_dtype)d), cnt[d],
               elems[d]);
    pr(r, "\n");
    for (size_t i = 0; i < n && (int)i < first_n; i++) {
        const fy_st_entry *t = fy_st_entry_at(f, i);
        char s[160];
        shape_str(s, sizeof s, t->ndim, t->shape);
        pr(r, "    %-56s %-5s %s\n", t->name, fy_st_dtype_name(t->dtype), s);
    }
    if (first_n > 0 && n > (size_t)first_n) pr(r, "    ... %zu more\n", n - (size_t)first_n);
    for (size_t i = 0; i < fy_st_meta_count(f); i++) {
        const char *k, *v;
        fy_st_meta_at(f, i, &k, &v);
        pr(r, "  metadata %s = %s\n", k ? k : "?", v ? v : "?");
    }
    /* A diverged model is still a valid file: a warning, not a failure. */
    if (nonfinite)
        pr(r, "  warning: %" PRIu64 " non-finite values (first in %s)\n", nonfinite, first_bad);
    fy_st_close(f);
}

/* ---- checkpoint directory ------------------------------------------------- */

static void trainer_summary(report *r, const char *path) {
    char *text;
    size_t len;
    fy_err e;
    if (fy_read_file(path, &text, &len, &e)) {
        fail(r, &e);
        return;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j)) {
        pr(r, "  trainer_state.json: %zu bytes, not a JSON object\n", len);
        cJSON_Delete(j);
        return;
    }
    pr(r, "  trainer state:");
    for (const cJSON *v = j->child; v; v = v->next) {
        if (cJSON_IsNumber(v)) pr(r, " %s=%.10g", v->string, v->valuedouble);
        else if (cJSON_IsString(v) && strlen(v->valuestring) < 40)
            pr(r, " %s=\"%s\"", v->string, v->valuestring);
        else if (cJSON_IsBool(v)) pr(r, " %s=%s", v->string, cJSON_IsTrue(v) ? "true" : "false");
    }
    pr(r, "\n");
    cJSON_Delete(j);
}

static void ckpt_summary(report *r, const char *dir) {
    fy_ckpt_manifest man;
    fy_err e;
    char p[FY_PATH_MAX];
    pr(r, "checkpoint %s\n", dir);
    if (fy_ckpt_read_manifest(dir, &man, &e)) {
        fail(r, &e);
    } else {
        pr(r, "  step: %d\n", man.step);
        int has_model = 0;
        for (int i = 0; i < man.n_files; i++) {
            const fy_ckpt_file *f = &man.files[i];
            char hex[FY_XXH64_HEX_LEN + 1];
            fy_xxh64_hex(f->xxh64, hex);
            pr(r, "  %-24s %12" PRIu64 " bytes  xxh64 %s  ", f->name, f->bytes, hex);
            if (fy_ckpt_verify_file(dir, f, &e)) {
                pr(r, "BAD\n");
                fail(r, &e);
            } else {
                pr(r, "OK\n");
            }
            has_model |= !strcmp(f->name, FY_CKPT_MODEL);
        }
        if (!has_model) {
            fy_fail(&e, "checkpoint %s: %s does not list %s", dir, FY_CKPT_MANIFEST, FY_CKPT_MODEL);
            fail(r, &e);
        }
    }
    if (fy_path_join(p, sizeof p, dir, FY_CKPT_MODEL, &e) == 0 && fy_file_exists(p)) {
        pr(r, " %s:\n", FY_CKPT_MODEL);
        st_summary(r, p, FIRST_TENSORS);
    }
    if (fy_path_join(p, sizeof p, dir, FY_CKPT_OPTIM, &e) == 0 && fy_file_exists(p)) {
        pr(r, " %s:\n", FY_CKPT_OPTIM);
        st_summary(r, p, 0);
    }
    if (fy_path_join(p, sizeof p, dir, FY_CKPT_DIST, &e) == 0 && fy_file_exists(p)) {
        pr(r, " %s (per-rank state, parallel/dp.h):\n", FY_CKPT_DIST);
        st_summary(r, p, FIRST_TENSORS);
    }
    if (fy_path_join(p, sizeof p, dir, FY_CKPT_TRAINER, &e) == 0 && fy_file_exists(p))
        trainer_summary(r, p);
}

/* ---- run directory --------------------------------------------------------- */

static void config_summary(report *r, const char *run) {
    char p[FY_PATH_MAX];
    fy_err e;
    fy_config c;
    if (fy_path_join(p, sizeof p, run, "config.json", &e) || !fy_file_exists(p)) {
        pr(r, "  config.json: missing\n");
        return;
    }
    if (fy_config_load(p, &c, &e)) {
        fail(r, &e);
        return;
    }
    pr(r, "  config: vocab %d, hidden %d, layers %d (+%d MTP), heads %d, ", c.vocab_size,
       c.hidden_size, c.num_hidden_layers, c.num_nextn_predict_layers, c.num_attention_heads);
    if (c.n_routed_experts)
        pr(r, "experts %d routed (%d per token) + %d shared", c.n_routed_experts,
           c.num_experts_per_tok, c.n_shared_experts);
    else
        pr(r, "dense");
    fy_param_table t;
    if (fy_params_build(&c, &t, &e) == 0) {
        char h[32];
        human(h, (double)fy_params_count(&t));
        pr(r, ", %s parameters", h);
        fy_params_free(&t);
    }
    pr(r, "\n");
}

static void run_summary(report *r, const char *run) {
    char ckdir[FY_PATH_MAX], latest[64] = "", p[FY_PATH_MAX];
    fy_err e;
    pr(r, "run %s\n", run);
    config_summary(r, run);
    pr(r, "  tokenizer.json: %s, metrics.jsonl: %s\n", has(run, "tokenizer.json") ? "yes" : "no",
       has(run, "metrics.jsonl") ? "yes" : "no");
    int *steps = NULL, n = 0;
    if (fy_path_join(ckdir, sizeof ckdir, run, FY_CKPT_DIRNAME, &e) ||
        fy_ckpt_list(run, &steps, &n, &e)) {
        fail(r, &e);
        return;
    }
    int latest_ok = fy_ckpt_read_latest(run, latest, sizeof latest, &e) == 0;
    if (latest_ok) pr(r, "  LATEST: %s\n", latest);
    else if (n > 0 || has(ckdir, FY_CKPT_LATEST)) fail(r, &e);
    else pr(r, "  no checkpoints yet\n");
    int latest_found = 0;
    for (int i = 0; i < n; i++) {
        char name[32];
        fy_ckpt_dirname(steps[i], name);
        int is_latest = latest_ok && !strcmp(name, latest);
        latest_found |= is_latest;
        pr(r, "  %s%s: ", name, is_latest ? " (LATEST)" : "");
        fy_quant q;
        int image = 0;
        if (fy_path_join(p, sizeof p, ckdir, name, &e) || (image = fy_ckpt_image_format(p, &q, &e)) < 0 ||
            (image ? fy_ckpt_verify_weights(p, &e) : fy_ckpt_verify(p, &e))) {
            pr(r, "BAD\n");
            fail(r, &e);
        } else {
            pr(r, image ? "OK (a %s weights image: inference only)\n" : "OK\n", image ? fy_quant_name(q) : "");
        }
    }
    free(steps);
    if (latest_ok && !latest_found) {
        fy_fail(&e, "run %s: LATEST names %s, which does not exist", run, latest);
        fail(r, &e);
    }
    DIR *d = opendir(ckdir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (!strncmp(de->d_name, "step-", 5) && strstr(de->d_name, ".tmp."))
            pr(r, "  %s: left by an interrupted save (the next save removes it)\n", de->d_name);
    if (d) closedir(d);
}

/* ---- files and dispatch ----------------------------------------------------- */

static void shard_summary(report *r, const char *path) {
    fy_shard s;
    fy_err e;
    pr(r, "token shard %s\n", path);
    if (fy_shard_open(path, &s, 1, 0, &e)) {
        fail(r, &e);
        return;
    }
    char hex[FY_XXH64_HEX_LEN + 1], h[32];
    fy_xxh64_hex(s.payload_checksum, hex);
    human(h, (double)s.n_tokens);
    pr(r, "  vocab: %u\n  tokens: %" PRIu64 " (%s)\n  width: %u bytes\n"
          "  payload xxh64 %s: OK (all tokens < vocab)\n",
       s.vocab_size, s.n_tokens, h, s.token_width, hex);
    if (s.row_len) {
        uint64_t trained = 0;
        for (uint64_t i = 0; i < s.n_tokens; i++) trained += fy_shard_trained(&s, i);
        pr(r, "  rows: %" PRIu64 " examples of %u tokens (version %u)\n  loss mask: %s, %" PRIu64 " tokens trained on\n",
           s.n_tokens / s.row_len, s.row_len, s.version, s.mask ? "yes" : "no", trained);
    }
    fy_shard_close(&s);
}

int fy_inspect(const char *path, FILE *out, fy_err *err) {
    report r = {out, err, 0};
    struct stat st;
    if (stat(path, &st) != 0) return fy_fail(err, "inspect %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        char ck[FY_PATH_MAX];
        fy_err e;
        if (has(path, FY_CKPT_MANIFEST) || has(path, FY_CKPT_MODEL)) ckpt_summary(&r, path);
        else if ((fy_path_join(ck, sizeof ck, path, FY_CKPT_DIRNAME, &e) == 0 && is_dir(ck)) ||
                 has(path, "config.json"))
            run_summary(&r, path);
        else
            return fy_fail(err, "inspect %s: not a checkpoint or run directory (no %s, %s, "
                           "checkpoints/ or config.json)", path, FY_CKPT_MANIFEST, FY_CKPT_MODEL);
        return r.failed ? -1 : 0;
    }
    if (!S_ISREG(st.st_mode))
        return fy_fail(err, "inspect %s: not a regular file or directory", path);
    unsigned char head[9] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fy_fail(err, "inspect %s: cannot open: %s", path, strerror(errno));
    ssize_t got = pread(fd, head, sizeof head, 0);
    close(fd);
    if (got >= 8 && !memcmp(head, FY_SHARD_MAGIC, 8)) {
        shard_summary(&r, path);
    } else if (got == 9 && head[8] == '{') {
        pr(&r, "safetensors %s\n", path);
        st_summary(&r, path, FIRST_TENSORS);
        check_against_manifest(&r, path);
    } else {
        return fy_fail(err, "inspect %s: not a token shard (no FERRYTOK magic) nor a safetensors "
                       "file (no JSON header), %lld bytes", path, (long long)st.st_size);
    }
    return r.failed ? -1 : 0;
}
