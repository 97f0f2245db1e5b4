/* Checkpoint save, verify, resolve and load (docs/DESIGN.md §3).
 *
 * Crash safety comes from ordering: every file of a checkpoint is written
 * (each fsync'd) into step-XXXXXXXX.tmp.<pid>/, MANIFEST.json last, the
 * directory fsync'd and only then renamed to its final name; LATEST is
 * replaced atomically after that rename is durable. Removal goes the other
 * way: a directory is first renamed to a *.tmp.* name, so a crash midway
 * through deleting it leaves debris the next save clears, never a
 * half-deleted checkpoint under a real name. */
#include "ckpt/checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/safetensors.h"
#include "core/checksum.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/strbuf.h"
#include "ckpt/ckpt_impl.h"
#include "model/decode.h"

/* ---- names ---------------------------------------------------------------- */

void fy_ckpt_dirname(int step, char out[32]) { snprintf(out, 32, "step-%08d", step); }

/* Length of the canonical "step-XXXXXXXX" prefix of name (its step in
 * *step), or 0 when name does not start with one. Canonical means it is
 * exactly what fy_ckpt_dirname prints, so names and steps map one to one. */
static size_t step_prefix(const char *name, int *step) {
    if (strncmp(name, "step-", 5) != 0) return 0;
    size_t i = 5;
    long long v = 0;
    while (name[i] >= '0' && name[i] <= '9' && i < 20) v = v * 10 + (name[i++] - '0');
    if (i == 5 || v > 0x7fffffff) return 0;
    char canon[32];
    fy_ckpt_dirname((int)v, canon);
    if (strlen(canon) != i || strncmp(canon, name, i) != 0) return 0;
    *step = (int)v;
    return i;
}

static int is_ckpt_name(const char *name, int *step) {
    size_t n = step_prefix(name, step);
    return n > 0 && name[n] == '\0';
}

/* Debris of an interrupted save or prune: "step-XXXXXXXX.tmp.<anything>". */
static int is_tmp_name(const char *name) {
    int step;
    size_t n = step_prefix(name, &step);
    return n > 0 && strncmp(name + n, ".tmp.", 5) == 0;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cmp_desc(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

int fy_ckpt_list(const char *run_dir, int **steps, int *n, fy_err *err) {
    *steps = NULL;
    *n = 0;
    char ckdir[FY_PATH_MAX];
    if (fy_path_join(ckdir, sizeof ckdir, run_dir, FY_CKPT_DIRNAME, err)) return -1;
    DIR *d = opendir(ckdir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return fy_fail(err, "cannot list %s: %s", ckdir, strerror(errno));
    }
    int cap = 0, cnt = 0, *v = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        int step;
        if (!is_ckpt_name(de->d_name, &step)) continue;
        char p[FY_PATH_MAX];
        if (fy_path_join(p, sizeof p, ckdir, de->d_name, err) || !is_dir(p)) continue;
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            int *q = realloc(v, cap * sizeof *q);
            if (!q) {
                free(v);
                closedir(d);
                return fy_fail(err, "out of memory listing %s", ckdir);
            }
            v = q;
        }
        v[cnt++] = step;
    }
    closedir(d);
    qsort(v, cnt, sizeof *v, cmp_desc);
    *steps = v;
    *n = cnt;
    return 0;
}

int fy_ckpt_read_latest(const char *run_dir, char *name, size_t cap, fy_err *err) {
    char p[FY_PATH_MAX];
    if (fy_path_join(p, sizeof p, run_dir, FY_CKPT_DIRNAME "/" FY_CKPT_LATEST, err)) return -1;
    if (!fy_file_exists(p)) return fy_fail(err, "%s missing", p);
    char *text;
    size_t len;
    if (fy_read_file(p, &text, &len, err)) return -1;
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = '\0';
    int step;
    /* Only a canonical name: LATEST must never lead outside checkpoints/. */
    if (!is_ckpt_name(text, &step) || len + 1 > cap) {
        fy_fail(err, "%s: \"%.64s\" is not a checkpoint name (expected step-XXXXXXXX)", p, text);
        free(text);
        return -1;
    }
    memcpy(name, text, len + 1);
    free(text);
    return 0;
}

/* ---- manifest and verification -------------------------------------------- */

static int valid_file_name(const char *s) {
    return s[0] && strlen(s) < sizeof(((fy_ckpt_file *)0)->name) && !strchr(s, '/') &&
           strcmp(s, ".") && strcmp(s, "..") && strcmp(s, FY_CKPT_MANIFEST);
}

int fy_json_count(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int parse_manifest(const char *text, const char *dir, fy_ckpt_manifest *out, fy_err *err) {
    cJSON *root = cJSON_Parse(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fy_fail(err, "checkpoint %s: %s is not a JSON object", dir, FY_CKPT_MANIFEST);
    }
    int rc = 0;
    uint64_t step = 0;
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    memset(out, 0, sizeof *out);
    if (fy_json_count(cJSON_GetObjectItemCaseSensitive(root, "step"), &step) || step > 0x7fffffff)
        rc = fy_fail(err, "checkpoint %s: %s: \"step\" missing or not a non-negative integer", dir,
                     FY_CKPT_MANIFEST);
    else if (!cJSON_IsObject(files))
        rc = fy_fail(err, "checkpoint %s: %s: \"files\" missing or not an object", dir,
                     FY_CKPT_MANIFEST);
    out->step = (int)step;
    for (const cJSON *f = rc ? NULL : files->child; f && rc == 0; f = f->next) {
        fy_ckpt_file *e = &out->files[out->n_files];
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(f, "xxh64");
        if (out->n_files == FY_CKPT_MAX_FILES)
            rc = fy_fail(err, "checkpoint %s: %s lists more than %d files", dir, FY_CKPT_MANIFEST,
                         FY_CKPT_MAX_FILES);
        else if (!valid_file_name(f->string))
            rc = fy_fail(err, "checkpoint %s: %s: \"%.80s\" is not a plain file name", dir,
                         FY_CKPT_MANIFEST, f->string);
        else if (fy_json_count(cJSON_GetObjectItemCaseSensitive(f, "bytes"), &e->bytes))
            rc = fy_fail(err, "checkpoint %s: %s: %s: \"bytes\" missing or invalid", dir,
                         FY_CKPT_MANIFEST, f->string);
        else if (!cJSON_IsString(h) || fy_xxh64_parse_hex(h->valuestring, &e->xxh64))
            rc = fy_fail(err, "checkpoint %s: %s: %s: \"xxh64\" is not 16 hex digits", dir,
                         FY_CKPT_MANIFEST, f->string);
        else {
            snprintf(e->name, sizeof e->name, "%s", f->string);
            for (int i = 0; i < out->n_files && rc == 0; i++)
                if (!strcmp(out->files[i].name, e->name))
                    rc = fy_fail(err, "checkpoint %s: %s lists %s twice", dir, FY_CKPT_MANIFEST,
                                 e->name);
            out->n_files++;
        }
    }
    cJSON_Delete(root);
    return rc;
}

int fy_ckpt_read_manifest(const char *ckpt_dir, fy_ckpt_manifest *out, fy_err *err) {
    char p[FY_PATH_MAX];
    if (fy_path_join(p, sizeof p, ckpt_dir, FY_CKPT_MANIFEST, err)) return -1;
    if (!is_dir(ckpt_dir))
        return fy_fail(err, "checkpoint %s: not a directory (or missing)", ckpt_dir);
    if (!fy_file_exists(p))
        return fy_fail(err, "checkpoint %s: %s missing (incomplete checkpoint)", ckpt_dir,
                       FY_CKPT_MANIFEST);
    char *text;
    size_t len;
    if (fy_read_file(p, &text, &len, err)) return fy_wrap(err, "checkpoint %s", ckpt_dir);
    int rc = parse_manifest(text, ckpt_dir, out, err);
    free(text);
    return rc;
}

/* After a file's checksum failed: which tensor is damaged, from the
 * per-tensor sums in MANIFEST.json (written by add_tensor_sums). */
static void locate_damage(const char *ckpt_dir, const char *name, const char *path, char *out, size_t cap) {
    char mp[FY_PATH_MAX], *text = NULL;
    size_t len;
    fy_err e;
    out[0] = '\0';
    if (fy_path_join(mp, sizeof mp, ckpt_dir, FY_CKPT_MANIFEST, &e) || fy_read_file(mp, &text, &len, &e)) return;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    const cJSON *fe = cJSON_GetObjectItemCaseSensitive(files, name);
    const cJSON *sums = cJSON_GetObjectItemCaseSensitive(fe, "tensors");
    fy_st_file *f = NULL;
    if (!cJSON_IsObject(sums)) {
        /* a manifest from before per-tensor sums: the file is all we can name */
    } else if (fy_st_open(path, &f, &e)) {
        snprintf(out, cap, "; its header is damaged (%.400s)", e.msg);
    } else {
        for (size_t i = 0; i < fy_st_count(f) && !out[0]; i++) {
            const fy_st_entry *t = fy_st_entry_at(f, i);
            const cJSON *h = cJSON_GetObjectItemCaseSensitive(sums, t->name);
            uint64_t want;
            if (!cJSON_IsString(h) || fy_xxh64_parse_hex(h->valuestring, &want))
                snprintf(out, cap, "; tensor %s is not in the manifest (damaged header?)", t->name);
            else if (fy_xxh64(t->data, t->nbytes) != want)
                snprintf(out, cap, "; damaged tensor: %s (data at byte %" PRIu64 ")", t->name, t->file_offset);
        }
        if (!out[0]) snprintf(out, cap, "; every tensor's data is intact: the damage is in the header or padding");
    }
    fy_st_close(f);
    cJSON_Delete(root);
}

int fy_ckpt_verify_file(const char *ckpt_dir, const fy_ckpt_file *f, fy_err *err) {
    char p[FY_PATH_MAX];
    if (fy_path_join(p, sizeof p, ckpt_dir, f->name, err)) return -1;
    struct stat st;
    if (stat(p, &st) != 0)
        return fy_fail(err, "checkpoint %s: %s: missing (%s)", ckpt_dir, f->name, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fy_fail(err, "checkpoint %s: %s: not a regular file", ckpt_dir, f->name);
    if ((uint64_t)st.st_size != f->bytes)
        return fy_fail(err, "checkpoint %s: %s: size %lld bytes, expected %" PRIu64 " (truncated?)",
                       ckpt_dir, f->name, (long long)st.st_size, f->bytes);
    uint64_t h;
    if (fy_xxh64_file(p, &h, err)) return fy_wrap(err, "checkpoint %s: %s", ckpt_dir, f->name);
    if (h != f->xxh64) {
        char want[FY_XXH64_HEX_LEN + 1], got[FY_XXH64_HEX_LEN + 1];
        fy_xxh64_hex(f->xxh64, want);
        fy_xxh64_hex(h, got);
        char where[512];
        locate_damage(ckpt_dir, f->name, p, where, sizeof where);
        return fy_fail(err, "checkpoint %s: %s: checksum mismatch (expected %s, got %s)%s", ckpt_dir,
                       f->name, want, got, where);
    }
    return 0;
}

/* Every listed file, or (weights_only) all but the training state a model
 * does not need: the optimizer's moments, the per-rank state (for a small
 * model 2/3 of the checkpoint's bytes, read and hashed for nothing). */
static int verify(const char *ckpt_dir, int weights_only, fy_err *err) {
    fy_ckpt_manifest man;
    if (fy_ckpt_read_manifest(ckpt_dir, &man, err)) return -1;
    int has_model = 0;
    const char *image = NULL;
    fy_quant q;
    for (int i = 0; i < man.n_files; i++) {
        const char *name = man.files[i].name;
        if (weights_only && (!strcmp(name, FY_CKPT_OPTIM) || !strcmp(name, FY_CKPT_DIST))) continue;
        if (fy_ckpt_verify_file(ckpt_dir, &man.files[i], err)) return -1;
        has_model |= !strcmp(name, FY_CKPT_MODEL);
        if (fy_ckpt_image_of(name, &q)) image = man.files[i].name;
    }
    if (!has_model && image && weights_only) return 0;
    if (!has_model && image)
        return fy_fail(err, "checkpoint %s holds %s weights for inference only (%s, from ferry convert --weights): "
                            "training, verify and export need a checkpoint of f32 weights (%s)",
                       ckpt_dir, fy_quant_name(q), image, FY_CKPT_MODEL);
    if (!has_model)
        return fy_fail(err, "checkpoint %s: %s does not list %s", ckpt_dir, FY_CKPT_MANIFEST,
                       FY_CKPT_MODEL);
    return 0;
}

int fy_ckpt_verify(const char *ckpt_dir, fy_err *err) { return verify(ckpt_dir, 0, err); }
int fy_ckpt_verify_weights(const char *ckpt_dir, fy_err *err) { return verify(ckpt_dir, 1, err); }

/* ---- save ------------------------------------------------------------------ */

/* Downloads a whole device block to a malloc'd host copy (n may be 0). */
static int add_tensor(fy_st_writer *w, const fy_tensor_info *t, const char *suffix,
                      const float *block, fy_err *err) {
    char name[160];
    snprintf(name, sizeof name, "%s%s", t->name, suffix);
    int64_t shape[2] = {t->shape[0], t->shape[1]};
    return fy_st_writer_add(w, name, FY_ST_F32, t->ndim, shape, block + t->off, err);
}

/* Copies a device block into *h, allocating it on first use: a snapshot
 * reused across saves (async checkpoints) then costs a copy, not page faults. */
static int snap_block(fy_backend *be, fy_buf *b, size_t n, float **h, const char *what, fy_err *err) {
    if (!*h && !(*h = malloc((n ? n : 1) * sizeof **h)))
        return fy_fail(err, "out of memory for a host copy of %s (%zu floats)", what, n);
    if (n) be->ops->download(be, *h, fy_at(b, 0), n);
    if (fy_be_sync(be, err)) return fy_wrap(err, "downloading %s", what);
    return 0;
}

/* Points s at tab for step, with the trainer's text. */
static int snap_begin(fy_ckpt_snapshot *s, int step, const fy_param_table *tab, const char *trainer_state,
                      fy_err *err) {
    if (s->tab != tab) { /* another model (or a fresh snapshot): start clean */
        fy_ckpt_snapshot_free(s);
        s->tab = tab;
    }
    s->step = step;
    free(s->trainer_state);
    s->trainer_state = strdup(trainer_state ? trainer_state : "{}");
    if (!s->trainer_state) return fy_fail(err, "out of memory");
    return 0;
}

static int snap_common(fy_ckpt_snapshot *s, int step, fy_model *m, const char *trainer_state, fy_err *err) {
    if (snap_begin(s, step, &m->tab, trainer_state, err)) return -1;
    if (snap_block(m->be, &m->params, m->tab.n_params, &s->params, "parameters", err) ||
        snap_block(m->be, &m->buffers, m->tab.n_buffers, &s->buffers, "buffers", err))
        return -1;
    return 0;
}

int fy_ckpt_snapshot_take(fy_ckpt_snapshot *s, int step, fy_model *m, const fy_adamw *opt,
                          const char *trainer_state, fy_err *err) {
    if (fy_params_is_shard(&m->tab))
        return fy_fail(err, "internal: an expert-parallel shard is saved with fy_ckpt_snapshot_take_host");
    if (opt && (opt->lo || opt->m.n != m->tab.n_params))
        return fy_fail(err, "internal: a ZeRO-1 optimizer shard is saved with fy_ckpt_snapshot_take_host");
    if (snap_common(s, step, m, trainer_state, err)) return -1;
    s->has_opt = opt != NULL;
    if (opt) {
        fy_buf mb = opt->m, vb = opt->v;   /* download takes non-const refs */
        s->opt_t = opt->t;
        if (snap_block(m->be, &mb, m->tab.n_params, &s->m, "AdamW exp_avg", err) ||
            snap_block(m->be, &vb, m->tab.n_params, &s->v, "AdamW exp_avg_sq", err))
            return -1;
    }
    return 0;
}

/* *dst (allocated on first use) = src[n]. */
static int copy_block(float **dst, const float *src, size_t n, const char *what, fy_err *err) {
    if (!*dst && !(*dst = malloc((n ? n : 1) * sizeof **dst)))
        return fy_fail(err, "out of memory for a host copy of %s (%zu floats)", what, n);
    memcpy(*dst, src, n * sizeof **dst);
    return 0;
}

int fy_ckpt_snapshot_take_host(fy_ckpt_snapshot *s, int step, const fy_ckpt_host *h, const char *trainer_state,
                               fy_err *err) {
    if (fy_params_is_shard(h->tab)) return fy_fail(err, "internal: a checkpoint needs the whole model's table");
    if (snap_begin(s, step, h->tab, trainer_state, err)) return -1;
    size_t np = h->tab->n_params;
    if (copy_block(&s->params, h->params, np, "parameters", err) ||
        copy_block(&s->buffers, h->buffers, h->tab->n_buffers, "buffers", err) ||
        copy_block(&s->m, h->m, np, "the AdamW moments", err) || copy_block(&s->v, h->v, np, "the AdamW moments", err))
        return -1;
    s->has_opt = 1;
    s->opt_t = h->opt_t;
    return 0;
}

static void clear_extra(fy_ckpt_snapshot *s) {
    for (int i = 0; i < s->n_extra; i++) free(s->extra_name[i]), free(s->extra_x[i]);
    free(s->extra_name);
    free(s->extra_x);
    free(s->extra_shape);
    free(s->extra_meta);
    s->n_extra = 0;
    s->extra_name = NULL, s->extra_x = NULL, s->extra_shape = NULL, s->extra_meta = NULL;
}

int fy_ckpt_snapshot_set_extra(fy_ckpt_snapshot *s, const fy_ckpt_extra *extra, fy_err *err) {
    clear_extra(s);
    if (!extra) return 0;
    int n = extra->n;
    s->extra_name = calloc(n ? n : 1, sizeof *s->extra_name);
    s->extra_x = calloc(n ? n : 1, sizeof *s->extra_x);
    s->extra_shape = calloc(n ? n : 1, sizeof *s->extra_shape);
    s->extra_meta = strdup(extra->meta ? extra->meta : "");
    if (!s->extra_name || !s->extra_x || !s->extra_shape || !s->extra_meta) goto oom;
    for (int i = 0; i < n; i++) {
        const fy_ckpt_extra_tensor *t = &extra->t[i];
        size_t len = (size_t)(t->rows * t->cols);
        s->n_extra = i + 1;
        s->extra_name[i] = strdup(t->name);
        s->extra_x[i] = malloc((len ? len : 1) * sizeof(float));
        if (!s->extra_name[i] || !s->extra_x[i]) goto oom;
        memcpy(s->extra_x[i], t->x, len * sizeof(float));
        s->extra_shape[i][0] = t->rows, s->extra_shape[i][1] = t->cols;
    }
    return 0;
oom:
    clear_extra(s);
    return fy_fail(err, "out of memory for a host copy of the per-rank state");
}

void fy_ckpt_snapshot_free(fy_ckpt_snapshot *s) {
    clear_extra(s);
    free(s->params);
    free(s->buffers);
    free(s->m);
    free(s->v);
    free(s->trainer_state);
    memset(s, 0, sizeof *s);
}

static int write_model(const char *path, const fy_ckpt_snapshot *s, fy_err *err) {
    fy_st_writer *w = fy_st_writer_new();
    int rc = w ? 0 : fy_fail(err, "out of memory");
    char sv[32];
    snprintf(sv, sizeof sv, "%d", s->step);
    for (int i = 0; i < s->tab->n && rc == 0; i++) {
        const fy_tensor_info *t = &s->tab->t[i];
        rc = add_tensor(w, t, "", t->is_buffer ? s->buffers : s->params, err);
    }
    if (rc == 0) rc = fy_st_writer_meta(w, "format", "pt", err);
    if (rc == 0) rc = fy_st_writer_meta(w, "ferry_step", sv, err);
    if (rc == 0) rc = fy_st_write(w, path, err);
    fy_st_writer_free(w);
    return rc;
}

static int write_optimizer(const char *path, const fy_ckpt_snapshot *s, fy_err *err) {
    fy_st_writer *w = fy_st_writer_new();
    int rc = w ? 0 : fy_fail(err, "out of memory");
    char sv[32];
    snprintf(sv, sizeof sv, "%d", s->opt_t);
    for (int i = 0; i < s->tab->n && rc == 0; i++) {
        const fy_tensor_info *t = &s->tab->t[i];
        if (t->is_buffer) continue;
        rc = add_tensor(w, t, ".exp_avg", s->m, err);
        if (rc == 0) rc = add_tensor(w, t, ".exp_avg_sq", s->v, err);
    }
    if (rc == 0) rc = fy_st_writer_meta(w, "step", sv, err);
    if (rc == 0) rc = fy_st_write(w, path, err);
    fy_st_writer_free(w);
    return rc;
}

static int write_extra(const char *path, const fy_ckpt_snapshot *s, fy_err *err) {
    fy_st_writer *w = fy_st_writer_new();
    int rc = w ? 0 : fy_fail(err, "out of memory");
    for (int i = 0; i < s->n_extra && rc == 0; i++)
        rc = fy_st_writer_add(w, s->extra_name[i], FY_ST_F32, 2, s->extra_shape[i], s->extra_x[i], err);
    if (rc == 0) rc = fy_st_writer_meta(w, "ferry_dist", s->extra_meta, err);
    if (rc == 0) rc = fy_st_write(w, path, err);
    fy_st_writer_free(w);
    return rc;
}

/* Per-tensor xxh64 of a safetensors file as written, under "tensors" of its
 * manifest entry: when the file's checksum fails, these name the damaged
 * tensor (locate_damage). */
static int add_tensor_sums(cJSON *entry, const char *path, fy_err *err) {
    fy_st_file *f;
    if (fy_st_open(path, &f, err)) return fy_wrap(err, "re-reading %s for its manifest", path);
    cJSON *t = cJSON_AddObjectToObject(entry, "tensors");
    for (size_t i = 0; i < fy_st_count(f); i++) {
        const fy_st_entry *e = fy_st_entry_at(f, i);
        char hex[FY_XXH64_HEX_LEN + 1];
        fy_xxh64_hex(fy_xxh64(e->data, e->nbytes), hex);
        cJSON_AddStringToObject(t, e->name, hex);
    }
    fy_st_close(f);
    return 0;
}

/* MANIFEST.json from the files as they are on disk, so it vouches for what
 * was actually written. */
static int write_manifest(const char *dir, int step, const char *const *names, int n, fy_err *err) {
    cJSON *root = cJSON_CreateObject(), *files = cJSON_CreateObject();
    int rc = 0;
    cJSON_AddNumberToObject(root, "step", step);
    cJSON_AddItemToObject(root, "files", files);
    for (int i = 0; i < n && rc == 0; i++) {
        char p[FY_PATH_MAX], hex[FY_XXH64_HEX_LEN + 1];
        struct stat st;
        uint64_t h;
        if ((rc = fy_path_join(p, sizeof p, dir, names[i], err))) break;
        if (stat(p, &st) != 0) {
            rc = fy_fail(err, "cannot stat %s: %s", p, strerror(errno));
            break;
        }
        if ((rc = fy_xxh64_file(p, &h, err))) break;
        fy_xxh64_hex(h, hex);
        cJSON *e = cJSON_AddObjectToObject(files, names[i]);
        cJSON_AddNumberToObject(e, "bytes", (double)st.st_size);
        cJSON_AddStringToObject(e, "xxh64", hex);
        if (fy_str_ends_with(names[i], ".safetensors")) rc = add_tensor_sums(e, p, err);
    }
    char *text = rc ? NULL : cJSON_Print(root);
    cJSON_Delete(root);
    if (rc) return rc;
    if (!text) return fy_fail(err, "out of memory building %s", FY_CKPT_MANIFEST);
    size_t len = strlen(text);
    char p[FY_PATH_MAX];
    rc = fy_path_join(p, sizeof p, dir, FY_CKPT_MANIFEST, err);
    if (rc == 0) {
        text[len] = '\n';   /* replaces the NUL: written with its length */
        rc = fy_write_file_atomic(p, text, len + 1, err);
    }
    free(text);
    return rc;
}

/* The run's files a checkpoint carries a copy of (those the run has), so
 * that its directory alone is a model: ferry generate --model CKPT_DIR. */
static const char *const run_files[] = {"config.json", "tokenizer.json", "tokenizer_config.json", "lora_base.json"};
#define N_RUN_FILES ((int)(sizeof run_files / sizeof run_files[0]))

/* A file of the checkpoint's temporary directory: written and synced, no
 * rename of its own (the directory is published whole, and synced once). */
static int write_synced(const char *path, const char *data, size_t len, fy_err *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fy_fail(err, "cannot create %s: %s", path, strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            close(fd);
            return fy_fail(err, "write error in %s at byte %zu: %s", path, done, strerror(e));
        }
        done += (size_t)w;
    }
    int rc = fsync(fd) != 0 ? fy_fail(err, "cannot sync %s: %s", path, strerror(errno)) : 0;
    if (close(fd) != 0 && !rc) rc = fy_fail(err, "cannot close %s: %s", path, strerror(errno));
    return rc;
}

static int copy_run_files(const char *run_dir, const char *dir, const char **names, int *n, fy_err *err) {
    for (int i = 0; i < N_RUN_FILES; i++) {
        char src[FY_PATH_MAX], dst[FY_PATH_MAX], *text = NULL;
        size_t len;
        if (fy_path_join(src, sizeof src, run_dir, run_files[i], err) ||
            fy_path_join(dst, sizeof dst, dir, run_files[i], err))
            return -1;
        if (!fy_file_exists(src)) continue;
        int rc = fy_read_file(src, &text, &len, err) || write_synced(dst, text, len, err) ? -1 : 0;
        free(text);
        if (rc) return -1;
        names[(*n)++] = run_files[i];
    }
    return 0;
}

static int write_contents(const char *run_dir, const char *dir, const fy_ckpt_snapshot *s, fy_err *err) {
    const char *names[4 + N_RUN_FILES];
    int n = 0;
    char p[FY_PATH_MAX];
    if (s->image) {
        if (fy_path_join(p, sizeof p, dir, s->image_name, err) || fy_st_write(s->image, p, err)) return -1;
        names[n++] = s->image_name;
    } else {
        if (fy_path_join(p, sizeof p, dir, FY_CKPT_MODEL, err) || write_model(p, s, err)) return -1;
        names[n++] = FY_CKPT_MODEL;
    }
    if (s->has_opt) {
        if (fy_path_join(p, sizeof p, dir, FY_CKPT_OPTIM, err) || write_optimizer(p, s, err)) return -1;
        names[n++] = FY_CKPT_OPTIM;
    }
    if (fy_path_join(p, sizeof p, dir, FY_CKPT_TRAINER, err) ||
        fy_write_file_atomic(p, s->trainer_state, strlen(s->trainer_state), err))
        return -1;
    names[n++] = FY_CKPT_TRAINER;
    if (s->extra_meta) {
        if (fy_path_join(p, sizeof p, dir, FY_CKPT_DIST, err) || write_extra(p, s, err)) return -1;
        names[n++] = FY_CKPT_DIST;
    }
    if (copy_run_files(run_dir, dir, names, &n, err) || write_manifest(dir, s->step, names, n, err)) return -1;
    return fy_fsync_dir(dir, err);
}

/* Renames ckdir/tmpname to ckdir/name. When name exists (the same step saved
 * again after a resume) the two are swapped atomically, so the name always
 * holds a complete checkpoint; file systems without RENAME_EXCHANGE fall back
 * to moving the old one aside first. The old one is then deleted. */
static int publish(const char *ckdir, const char *tmpname, const char *name, fy_err *err) {
    char tmp[FY_PATH_MAX], final[FY_PATH_MAX], aside[FY_PATH_MAX];
    if (fy_path_join(tmp, sizeof tmp, ckdir, tmpname, err) ||
        fy_path_join(final, sizeof final, ckdir, name, err))
        return -1;
    if (!fy_file_exists(final)) {
        if (rename(tmp, final) != 0)
            return fy_fail(err, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
        return fy_fsync_dir(ckdir, err);
    }
    const char *old = tmp;   /* after the exchange, tmp holds the old one */
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0) {
        if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
            return fy_fail(err, "cannot swap %s into %s: %s", tmp, final, strerror(errno));
        int k = snprintf(aside, sizeof aside, "%s.tmp.old.%ld", final, (long)getpid());
        if (k < 0 || (size_t)k >= sizeof aside) return fy_fail(err, "path too long: %s", final);
        if (rename(final, aside) != 0)
            return fy_fail(err, "cannot move %s aside: %s", final, strerror(errno));
        if (rename(tmp, final) != 0) {
            int e = errno;
            rename(aside, final);   /* put the old one back under its name */
            return fy_fail(err, "cannot rename %s to %s: %s", tmp, final, strerror(e));
        }
        old = aside;
    }
    if (fy_fsync_dir(ckdir, err)) return -1;
    fy_err e2;
    if (fy_remove_tree(old, &e2)) fy_warn("checkpoint: %s", e2.msg);
    return 0;
}

/* Removes one checkpoint: renamed to debris first (see the top comment). */
static void drop(const char *ckdir, const char *name) {
    char p[FY_PATH_MAX], q[FY_PATH_MAX + 64];
    fy_err e;
    if (fy_path_join(p, sizeof p, ckdir, name, &e)) return;
    snprintf(q, sizeof q, "%s.tmp.del.%ld", p, (long)getpid());
    if (rename(p, q) != 0) {
        fy_warn("checkpoint: cannot remove %s: %s", p, strerror(errno));
        return;
    }
    if (fy_remove_tree(q, &e)) fy_warn("checkpoint: %s", e.msg);
}

/* Removes debris, then all but `keep_last` checkpoints: `latest` plus the
 * newest others that have a manifest (no re-hashing: that would read every
 * checkpoint on every save). Failures only warn: the new checkpoint is
 * already safely in place. */
static void prune(const char *run_dir, const char *ckdir, const char *latest, int keep_last) {
    DIR *d = opendir(ckdir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_tmp_name(de->d_name)) continue;
        char p[FY_PATH_MAX];
        fy_err e;
        if (fy_path_join(p, sizeof p, ckdir, de->d_name, &e) == 0 && fy_remove_tree(p, &e) != 0)
            fy_warn("checkpoint: removing stale %s: %s", p, e.msg);
    }
    closedir(d);
    if (keep_last <= 0) return;
    int *steps, n, kept = 1;
    fy_err e;
    if (fy_ckpt_list(run_dir, &steps, &n, &e)) {
        fy_warn("checkpoint: %s", e.msg);
        return;
    }
    for (int i = 0; i < n; i++) {
        char name[32], p[FY_PATH_MAX], man[FY_PATH_MAX];
        fy_ckpt_dirname(steps[i], name);
        if (!strcmp(name, latest)) continue;
        if (fy_path_join(p, sizeof p, ckdir, name, &e) ||
            fy_path_join(man, sizeof man, p, FY_CKPT_MANIFEST, &e))
            continue;
        if (kept < keep_last && fy_file_exists(man)) kept++;
        else drop(ckdir, name);
    }
    free(steps);
    fy_fsync_dir(ckdir, &e);
}

int fy_ckpt_save(const char *run_dir, int step, fy_model *m, const fy_adamw *opt,
                 const char *trainer_state_json, int keep_last, char *out_dir, size_t out_cap,
                 fy_err *err) {
    if (step < 0) return fy_fail(err, "checkpoint: step %d is negative", step);
    fy_ckpt_snapshot s = {0};
    int rc = fy_ckpt_snapshot_take(&s, step, m, opt, trainer_state_json, err);
    if (rc == 0) rc = fy_ckpt_save_snapshot(run_dir, &s, keep_last, out_dir, out_cap, err);
    fy_ckpt_snapshot_free(&s);
    return rc;
}

int fy_ckpt_save_snapshot(const char *run_dir, const fy_ckpt_snapshot *s, int keep_last, char *out_dir,
                          size_t out_cap, fy_err *err) {
    int step = s->step;
    if (step < 0) return fy_fail(err, "checkpoint: step %d is negative", step);
    char ckdir[FY_PATH_MAX], name[32], tmpname[64], tmp[FY_PATH_MAX], final[FY_PATH_MAX];
    fy_ckpt_dirname(step, name);
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", name, (long)getpid());
    if (fy_path_join(ckdir, sizeof ckdir, run_dir, FY_CKPT_DIRNAME, err) ||
        fy_path_join(tmp, sizeof tmp, ckdir, tmpname, err) ||
        fy_path_join(final, sizeof final, ckdir, name, err))
        return -1;
    if (out_dir && strlen(final) >= out_cap)
        return fy_fail(err, "checkpoint %s: path does not fit in %zu bytes", final, out_cap);
    if (fy_mkdir_p(ckdir, err)) return -1;
    /* Same pid as a crashed writer (containers): its debris is ours to clear. */
    if (fy_file_exists(tmp) && fy_remove_tree(tmp, err)) return fy_wrap(err, "checkpoint %s", final);
    if (mkdir(tmp, 0755) != 0)
        return fy_fail(err, "checkpoint %s: cannot create %s: %s", final, tmp, strerror(errno));
    if (write_contents(run_dir, tmp, s, err)) {
        fy_err e2;
        fy_remove_tree(tmp, &e2);
        return fy_wrap(err, "saving checkpoint %s", final);
    }
    /* No clean-up on failure here: what is left under *.tmp.* may be the
     * old checkpoint mid-swap; the next save removes it once it is safe. */
    if (publish(ckdir, tmpname, name, err)) return fy_wrap(err, "saving checkpoint %s", final);
    char latest[FY_PATH_MAX], text[40];
    int len = snprintf(text, sizeof text, "%s\n", name);
    if (fy_path_join(latest, sizeof latest, ckdir, FY_CKPT_LATEST, err) ||
        fy_write_file_atomic(latest, text, (size_t)len, err))
        return fy_wrap(err, "saving checkpoint %s (the checkpoint is complete, LATEST not updated)",
                       final);
    prune(run_dir, ckdir, name, keep_last);
    if (out_dir) memcpy(out_dir, final, strlen(final) + 1);
    return 0;
}

/* ---- resolve --------------------------------------------------------------- */

static int copy_out(char *out, size_t cap, const char *s, fy_err *err) {
    size_t n = strlen(s);
    if (n >= cap) return fy_fail(err, "checkpoint path %s does not fit in %zu bytes", s, cap);
    memcpy(out, s, n + 1);
    return 0;
}

static int resolve(const char *path, int weights_only, char *out_dir, size_t cap, fy_err *err) {
    char ckdir[FY_PATH_MAX], cand[FY_PATH_MAX], latest[64] = "";
    if (fy_path_join(ckdir, sizeof ckdir, path, FY_CKPT_DIRNAME, err)) return -1;
    if (!is_dir(ckdir)) {
        if (verify(path, weights_only, err)) return -1;
        return copy_out(out_dir, cap, path, err);
    }
    fy_err why;
    if (fy_ckpt_read_latest(path, latest, sizeof latest, &why) == 0) {
        if (fy_path_join(cand, sizeof cand, ckdir, latest, err)) return -1;
        if (verify(cand, weights_only, &why) == 0) return copy_out(out_dir, cap, cand, err);
    } else {
        latest[0] = '\0';
    }
    int *steps, n;
    if (fy_ckpt_list(path, &steps, &n, err)) return -1;
    if (n == 0) {
        free(steps);
        return fy_fail(err, "run %s: no checkpoint in %s (%s)", path, ckdir, why.msg);
    }
    fy_warn("%s; falling back to the newest checkpoint that verifies", why.msg);
    for (int i = 0; i < n; i++) {
        char name[32];
        fy_ckpt_dirname(steps[i], name);
        if (!strcmp(name, latest)) continue;   /* already failed above */
        if (fy_path_join(cand, sizeof cand, ckdir, name, err)) break;
        if (verify(cand, weights_only, &why) == 0) {
            free(steps);
            fy_warn("resuming from %s", cand);
            return copy_out(out_dir, cap, cand, err);
        }
        fy_warn("skipping: %s", why.msg);
    }
    free(steps);
    return fy_fail(err, "run %s: no checkpoint in %s verifies (last problem: %s)", path, ckdir,
                   why.msg);
}

int fy_ckpt_resolve(const char *path, char *out_dir, size_t cap, fy_err *err) {
    return resolve(path, 0, out_dir, cap, err);
}

int fy_ckpt_resolve_weights(const char *path, char *out_dir, size_t cap, fy_err *err) {
    return resolve(path, 1, out_dir, cap, err);
}

/* ---- load ------------------------------------------------------------------ */

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

/* Checks that f holds table tensor t (with suffix) in the expected shape
 * and a float dtype, without reading it; *out gets its entry. */
int fy__ckpt_check_tensor(const fy_st_file *f, const char *dir, const char *file, const fy_tensor_info *t,
                        const char *suffix, const fy_st_entry **out, fy_err *err) {
    char name[160];
    snprintf(name, sizeof name, "%s%s", t->name, suffix);
    const fy_st_entry *e = fy_st_find(f, name);
    if (!e) return fy_fail(err, "checkpoint %s: %s: tensor %s missing", dir, file, name);
    int64_t want[2] = {t->shape[0], t->shape[1]};
    int same = e->ndim == t->ndim;
    for (int i = 0; same && i < t->ndim; i++) same = e->shape[i] == want[i];
    if (!same) {
        char a[64], b[160];
        shape_str(a, sizeof a, t->ndim, want);
        shape_str(b, sizeof b, e->ndim, e->shape);
        return fy_fail(err, "checkpoint %s: %s: tensor %s has shape %s, expected %s "
                       "(a checkpoint of a different config?)", dir, file, name, b, a);
    }
    if (e->dtype != FY_ST_F32 && e->dtype != FY_ST_BF16 && e->dtype != FY_ST_F16)
        return fy_fail(err, "checkpoint %s: %s: tensor %s has dtype %s, expected F32, BF16 or F16", dir, file,
                       name, fy_st_dtype_name(e->dtype));
    *out = e;
    return 0;
}

/* Host floats of elements [first, first + count) of a checked tensor: F32
 * straight from the file's mapping (prefaulted in one call), the 16-bit
 * types (and unaligned F32) widened or copied into staging. */
static const float *chunk_floats(const fy_st_file *f, const fy_st_entry *e, size_t first, size_t count,
                                 float *staging, fy_err *err) {
    if (e->dtype == FY_ST_F32 && (uintptr_t)e->data % sizeof(float) == 0) {
        fy_st_prefault(f, e, first, count);
        return (const float *)e->data + first;
    }
    return fy_st_read_f32_range(f, e->name, (size_t)e->numel, first, count, staging, err) ? NULL : staging;
}

/* A tensor is copied in chunks of whole rows, about CHUNK bytes of floats
 * each (one row at least), each chunk's pages of the mapping dropped once
 * copied (fy_st_release): the copy is all that stays, and the largest
 * tensor (the embedding, the head) is never resident twice. */
#define CHUNK ((size_t)1 << 20)

static size_t rows_of(const fy_tensor_info *t) { return t->ndim == 2 ? (size_t)t->shape[0] : 1; }

static size_t chunk_rows(const fy_tensor_info *t) {
    size_t row = t->n / rows_of(t), per = CHUNK / sizeof(float) / (row ? row : 1);
    return per ? per : 1;
}

/* Uploads a checked tensor (table entry ti) to dst. */
static int upload_tensor(fy_backend *be, const fy_st_file *f, const fy_st_entry *e, const fy_tensor_info *ti,
                         fy_ref dst, float *staging, fy_err *err) {
    size_t row = ti->n / rows_of(ti), per = chunk_rows(ti);
    for (size_t r = 0; r < rows_of(ti); r += per) {
        size_t nr = rows_of(ti) - r < per ? rows_of(ti) - r : per;
        const float *w = chunk_floats(f, e, r * row, nr * row, staging, err);
        if (!w) return -1;
        be->ops->upload(be, fy_add(dst, r * row), w, nr * row);
        /* The source (the mapping, the staging buffer) must outlive the copy. */
        int rc = fy_be_sync(be, err);
        fy_st_release(f, e, r * row, nr * row);
        if (rc) return -1;
    }
    return 0;
}

/* The model's tensor ti from the file, chunk by chunk: the model decides
 * where each goes (model/decode.h, fy_model_load_rows). */
int fy__ckpt_load_model_tensor(fy_model *m, const fy_st_file *f, const fy_st_entry *e, const fy_tensor_info *ti,
                             float *staging, fy_err *err) {
    if (!fy_model_needs_tensor(m, ti)) return 0;
    size_t row = ti->n / rows_of(ti), per = chunk_rows(ti);
    for (size_t r = 0; r < rows_of(ti); r += per) {
        size_t nr = rows_of(ti) - r < per ? rows_of(ti) - r : per;
        const float *w = chunk_floats(f, e, r * row, nr * row, staging, err);
        int rc = w ? fy_model_load_rows(m, ti, (int)r, (int)nr, w, err) : -1;
        fy_st_release(f, e, r * row, nr * row);
        if (rc) return -1;
    }
    return 0;
}

/* Names the first tensor of f that the table does not expect (called only
 * when f holds more tensors than expected). suffixes: what each table name
 * may carry in this file. */
static int name_extra(const fy_st_file *f, const fy_param_table *tab, const char *const *suffixes,
                      int n_suffixes, int trainable_only, const char *dir, const char *file,
                      fy_err *err) {
    const char **names = malloc((tab->n ? tab->n : 1) * sizeof *names);
    if (!names) return fy_fail(err, "out of memory");
    int n = 0;
    for (int i = 0; i < tab->n; i++)
        if (!trainable_only || !tab->t[i].is_buffer) names[n++] = tab->t[i].name;
    qsort(names, n, sizeof *names, cmp_str_ptr);
    int rc = fy_fail(err, "checkpoint %s: %s: holds more tensors than the model expects", dir,
                     file);
    for (size_t i = 0; i < fy_st_count(f); i++) {
        const char *en = fy_st_entry_at(f, i)->name;
        int known = 0;
        for (int s = 0; s < n_suffixes && !known; s++) {
            size_t ln = strlen(en), ls = strlen(suffixes[s]);
            char base[160];
            if (ln < ls || ln - ls >= sizeof base || strcmp(en + ln - ls, suffixes[s])) continue;
            memcpy(base, en, ln - ls);
            base[ln - ls] = '\0';
            const char *key = base;
            known = bsearch(&key, names, n, sizeof *names, cmp_str_ptr) != NULL;
        }
        /* An expert shard's table lacks the other ranks' experts. */
        if (!known && fy_params_is_shard(tab) && fy_params_is_expert_name(en)) known = 1;
        if (!known) {
            rc = fy_fail(err, "checkpoint %s: %s: unexpected tensor %s (not in this model)",
                         dir, file, en);
            break;
        }
    }
    free(names);
    return rc;
}

/* Opens and checks one file of a checkpoint: every tensor the table
 * expects (suffixes: the names per table entry in this file), nothing more
 * (an expert shard's table: and as many more as the other ranks' experts);
 * e gets [n_entries x n_suffixes] entries. */
static int check_file(const char *dir, const char *file, const fy_param_table *tab, const char *const *suffixes,
                      int n_suffixes, int trainable_only, fy_st_file **fp, const fy_st_entry **e, fy_err *err) {
    char path[FY_PATH_MAX];
    if (fy_path_join(path, sizeof path, dir, file, err)) return -1;
    if (!fy_file_exists(path))
        return fy_fail(err, "checkpoint %s: %s missing%s", dir, file,
                       trainable_only ? " (saved without optimizer state?)" : "");
    if (fy_st_open(path, fp, err)) return -1;
    int rc = 0;
    size_t expected = 0;
    for (int i = 0; i < tab->n && rc == 0; i++) {
        if (trainable_only && tab->t[i].is_buffer) continue;
        for (int s = 0; s < n_suffixes && rc == 0; s++)
            rc = fy__ckpt_check_tensor(*fp, dir, file, &tab->t[i], suffixes[s], &e[(size_t)i * n_suffixes + s], err);
        expected += n_suffixes;
    }
    if (fy_params_is_shard(tab)) expected += (size_t)(tab->n_all - tab->n) * n_suffixes; /* others' experts */
    if (rc == 0 && fy_st_count(*fp) != expected)
        rc = name_extra(*fp, tab, suffixes, n_suffixes, trainable_only, dir, file, err);
    if (rc) {
        fy_st_close(*fp);
        *fp = NULL;
    }
    return rc;
}

/* fy_ckpt_load, or (verified 0) fy_ckpt_load_weights. */
static int load(const char *ckpt_dir, int verified, fy_model *m, fy_adamw *opt, char **trainer_state_json,
                fy_err *err) {
    if (trainer_state_json) *trainer_state_json = NULL;
    if (!verified && fy_ckpt_verify(ckpt_dir, err)) return -1;
    const fy_param_table *tab = &m->tab;
    static const char *const none[] = {""}, *const moments[] = {".exp_avg", ".exp_avg_sq"};
    /* Everything that can be wrong is checked before the device changes:
     * checksums (verify), then names, shapes and dtypes of both files, the
     * optimizer step and the trainer state. Only then are the tensors
     * copied, straight from the files' mappings: no host copy of the state
     * (on a restart that is memory touched for the first time, seconds for
     * a large model; docs/RELIABILITY.md). */
    fy_st_file *fm = NULL, *fo = NULL;
    const fy_st_entry **em = calloc(tab->n ? tab->n : 1, sizeof *em);
    const fy_st_entry **eo = calloc(2 * (size_t)(tab->n ? tab->n : 1), sizeof *eo);
    char *ts = NULL;
    float *staging = NULL;
    int rc = 0, t = 0;
    if (!em || !eo) rc = fy_fail(err, "out of memory");
    if (rc == 0) rc = check_file(ckpt_dir, FY_CKPT_MODEL, tab, none, 1, 0, &fm, em, err);
    if (rc == 0 && opt) rc = check_file(ckpt_dir, FY_CKPT_OPTIM, tab, moments, 2, 1, &fo, eo, err);
    if (rc == 0 && opt) {
        const char *s = fy_st_meta(fo, "step");
        char *end = NULL;
        long st = s ? strtol(s, &end, 10) : -1;
        if (!s || !*s || *end || st < 0 || st > 0x7fffffff)
            rc = fy_fail(err, "checkpoint %s: %s: metadata \"step\" missing or not a step count", ckpt_dir,
                         FY_CKPT_OPTIM);
        t = (int)st;
    }
    if (rc == 0 && trainer_state_json) {
        char path[FY_PATH_MAX];
        size_t len;
        rc = fy_path_join(path, sizeof path, ckpt_dir, FY_CKPT_TRAINER, err);
        if (rc == 0 && fy_read_file(path, &ts, &len, err))
            rc = fy_wrap(err, "checkpoint %s", ckpt_dir);
    }
    size_t biggest = 1;
    for (int i = 0; i < tab->n; i++)
        if (tab->t[i].n > biggest) biggest = tab->t[i].n;
    if (rc == 0 && !(staging = malloc(biggest * sizeof *staging)))
        rc = fy_fail(err, "out of memory");
    fy_backend *be = m->be;
    for (int i = 0; i < tab->n && rc == 0; i++) {
        const fy_tensor_info *ti = &tab->t[i];
        rc = fy__ckpt_load_model_tensor(m, fm, em[i], ti, staging, err);
        if (rc == 0 && opt && !ti->is_buffer)
            rc = upload_tensor(be, fo, eo[2 * (size_t)i], ti, fy_at(&opt->m, ti->off), staging, err) ||
                 upload_tensor(be, fo, eo[2 * (size_t)i + 1], ti, fy_at(&opt->v, ti->off), staging, err);
        if (rc) fy_wrap(err, "checkpoint %s: uploading %s", ckpt_dir, ti->name);
    }
    fy_model_load_finish(m);
    if (rc == 0 && opt) opt->t = t;
    if (rc == 0 && trainer_state_json) *trainer_state_json = ts;
    else free(ts);
    if (fm) fy_st_close(fm);
    if (fo) fy_st_close(fo);
    free(em);
    free(eo);
    free(staging);
    return rc;
}

int fy_ckpt_load(const char *ckpt_dir, fy_model *m, fy_adamw *opt, char **trainer_state_json, fy_err *err) {
    return load(ckpt_dir, 0, m, opt, trainer_state_json, err);
}

int fy_ckpt_load_weights(const char *ckpt_dir, fy_model *m, fy_err *err) {
    return load(ckpt_dir, 1, m, NULL, NULL, err);
}
