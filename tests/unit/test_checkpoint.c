/* Checkpoints: bitwise round trip of params, buffers, moments and trainer
 * state; pruning; every kind of damage a crash or a bad disk can do (flipped
 * byte, truncation, missing manifest, bad LATEST, stale temporaries) with the
 * fallback to the previous checkpoint; refusal of checkpoints of another
 * config; BF16 model files. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "ckpt/checkpoint.h"
#include "ckpt/safetensors.h"
#include "core/checksum.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/rng.h"
#include "model/model.h"
#include "optim/optim.h"
#include "testutil.h"

#define VOCAB 40

static const char *g_tmp;
static int g_run_counter;

typedef struct harness {
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
} harness;

static void die(const char *what, const fy_err *err) {
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(1);
}

static fy_config tiny_config(void) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", VOCAB, &c, &err)) die("config", &err);
    c.hidden_size = 16;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.q_lora_rank = 8;
    c.kv_lora_rank = 8;
    c.qk_nope_head_dim = 4;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 4;
    c.n_routed_experts = 4;
    c.num_experts_per_tok = 2;
    c.n_shared_experts = 1;
    c.moe_intermediate_size = 8;
    c.intermediate_size = 16;
    c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1;
    return c;
}

/* A model after one AdamW step (non-zero moments, t = 1) and a random
 * router bias, so every block holds something distinctive. */
static void make(harness *h, fy_config c, uint64_t seed, int train) {
    fy_err err;
    if (fy_backend_cpu_create(&h->be, &err)) die("backend", &err);
    if (fy_model_create(&h->m, &c, h->be, &err) || fy_model_init_weights(&h->m, seed, &err))
        die("model", &err);
    fy_adamw_opts o = {.lr = 1e-3f, .min_lr = 1e-4f, .warmup_steps = 0, .total_steps = 100,
                       .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                       .grad_clip = 1.0f};
    if (fy_adamw_create(&h->opt, &h->m, &o, &err)) die("adamw", &err);
    if (!train) return;
    enum { B = 2, T = 4 };
    int32_t in[B * T], lab[B * T];
    for (int i = 0; i < B * T; i++) {
        in[i] = (int32_t)(fy_rng_u64(seed, 1, i) % VOCAB);
        lab[i] = (int32_t)(fy_rng_u64(seed, 2, i) % VOCAB);
    }
    fy_loss l;
    fy_model_zero_grad(&h->m);
    if (fy_model_forward(&h->m, in, lab, B, T, 1, &l, &err) || fy_model_backward(&h->m, &err) ||
        fy_adamw_step(&h->opt, &h->m, NULL, NULL, &err) || fy_model_update_bias(&h->m, &err))
        die("train step", &err);
    /* Random values in the buffer tensors (padding between them stays 0). */
    for (int i = 0; i < h->m.tab.n; i++) {
        const fy_tensor_info *t = &h->m.tab.t[i];
        if (!t->is_buffer) continue;
        float *b = malloc(t->n * sizeof *b);
        for (size_t j = 0; j < t->n; j++) b[j] = fy_rng_normal(seed, 3 + i, j);
        h->be->ops->upload(h->be, fy_at(&h->m.buffers, t->off), b, t->n);
        free(b);
    }
}

static void unmake(harness *h) {
    fy_adamw_free(&h->opt, h->be);
    fy_model_free(&h->m);
    fy_backend_destroy(h->be);
}

static float *host(fy_backend *be, fy_buf *b) {
    float *p = malloc(b->n * sizeof *p);
    be->ops->download(be, p, fy_at(b, 0), b->n);
    return p;
}

/* 1 when two device blocks hold bitwise the same floats. */
static int same_block(fy_backend *be, fy_buf *a, fy_buf *b) {
    if (a->n != b->n) return 0;
    float *x = host(be, a), *y = host(be, b);
    int same = memcmp(x, y, a->n * sizeof *x) == 0;
    free(x);
    free(y);
    return same;
}

static const char *new_run(const char *label) {
    static char p[FY_PATH_MAX];
    snprintf(p, sizeof p, "%s/%s-%d", g_tmp, label, g_run_counter++);
    fy_err err;
    if (fy_mkdir_p(p, &err)) die("mkdir", &err);
    return p;
}

static const char *ckpt_path(const char *run, int step, const char *file) {
    static char p[2][FY_PATH_MAX];
    static int k;
    char *out = p[k++ % 2], name[32];
    fy_ckpt_dirname(step, name);
    snprintf(out, FY_PATH_MAX, "%s/checkpoints/%s%s%s", run, name, file ? "/" : "",
             file ? file : "");
    return out;
}

static void save(const char *run, int step, harness *h, int with_opt, int keep) {
    fy_err err;
    char ts[64];
    snprintf(ts, sizeof ts, "{\"step\": %d}", step);
    if (fy_ckpt_save(run, step, &h->m, with_opt ? &h->opt : NULL, ts, keep, NULL, 0, &err))
        die("save", &err);
}

static void flip_byte(const char *path, long off_from_end) {
    FILE *f = fopen(path, "r+b");
    fseek(f, -off_from_end, SEEK_END);
    int c = fgetc(f);
    fseek(f, -off_from_end, SEEK_END);
    fputc(c ^ 0x40, f);
    fclose(f);
}

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static char *read_text(const char *path) {
    char *t = NULL;
    size_t n;
    fy_err err;
    if (fy_read_file(path, &t, &n, &err)) return NULL;
    return t;
}

static int resolves_to(const char *path, const char *want) {
    char out[FY_PATH_MAX];
    fy_err err;
    if (fy_ckpt_resolve(path, out, sizeof out, &err)) {
        fprintf(stderr, "  resolve %s: %s\n", path, err.msg);
        return 0;
    }
    if (strcmp(out, want)) fprintf(stderr, "  resolve %s gave %s, want %s\n", path, out, want);
    return strcmp(out, want) == 0;
}

/* ---- round trip ------------------------------------------------------------ */

static void test_round_trip(void) {
    const char *run = new_run("roundtrip");
    harness a, b;
    make(&a, tiny_config(), 1, 1);
    make(&b, tiny_config(), 2, 0);
    fy_err err;
    char out[FY_PATH_MAX];
    const char *ts = "{\"step\": 7, \"tokens\": 123, \"rng\": [1, 2, 3]}\n";
    CHECK(fy_ckpt_save(run, 7, &a.m, &a.opt, ts, 0, out, sizeof out, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(out, ckpt_path(run, 7, NULL)), "out_dir %s", out);
    char lp[FY_PATH_MAX];
    snprintf(lp, sizeof lp, "%s/checkpoints/LATEST", run);
    char *latest = read_text(lp);
    CHECK(latest && !strcmp(latest, "step-00000007\n"), "LATEST is \"%s\"", latest ? latest : "?");
    free(latest);
    CHECK(fy_ckpt_verify(out, &err) == 0, "%s", err.msg);

    /* Metadata as specified. */
    fy_st_file *f;
    if (fy_st_open(ckpt_path(run, 7, FY_CKPT_MODEL), &f, &err) == 0) {
        CHECK(fy_st_count(f) == (size_t)a.m.tab.n, "model has %zu tensors", fy_st_count(f));
        const char *fmt = fy_st_meta(f, "format"), *st = fy_st_meta(f, "ferry_step");
        CHECK(fmt && !strcmp(fmt, "pt"), "format meta");
        CHECK(st && !strcmp(st, "7"), "ferry_step meta");
        CHECK(fy_st_find(f, "model.layers.1.mlp.gate.e_score_correction_bias") != NULL,
              "router bias saved");
        fy_st_close(f);
    } else CHECK(0, "%s", err.msg);
    if (fy_st_open(ckpt_path(run, 7, FY_CKPT_OPTIM), &f, &err) == 0) {
        const char *st = fy_st_meta(f, "step");
        CHECK(st && !strcmp(st, "1"), "optimizer step meta %s", st ? st : "(none)");
        CHECK(fy_st_find(f, "model.embed_tokens.weight.exp_avg_sq") != NULL, "exp_avg_sq");
        CHECK(fy_st_find(f, "model.layers.1.mlp.gate.e_score_correction_bias.exp_avg") == NULL,
              "no moments for buffers");
        fy_st_close(f);
    } else CHECK(0, "%s", err.msg);

    char *ts2 = NULL;
    CHECK(fy_ckpt_load(out, &b.m, &b.opt, &ts2, &err) == 0, "%s", err.msg);
    CHECK(same_block(a.be, &a.m.params, &b.m.params), "params differ after load");
    CHECK(same_block(a.be, &a.m.buffers, &b.m.buffers), "buffers differ after load");
    CHECK(same_block(a.be, &a.opt.m, &b.opt.m), "exp_avg differs after load");
    CHECK(same_block(a.be, &a.opt.v, &b.opt.v), "exp_avg_sq differs after load");
    CHECK(b.opt.t == a.opt.t && b.opt.t == 1, "opt t %d vs %d", b.opt.t, a.opt.t);
    CHECK(ts2 && !strcmp(ts2, ts), "trainer state \"%s\"", ts2 ? ts2 : "(null)");
    free(ts2);
    /* Model only; optimizer and trainer state not wanted. */
    CHECK(fy_ckpt_load(out, &b.m, NULL, NULL, &err) == 0, "%s", err.msg);

    /* Saved without optimizer: loading moments is refused, the model loads. */
    save(run, 8, &a, 0, 0);
    CHECK(!fy_file_exists(ckpt_path(run, 8, FY_CKPT_OPTIM)), "no optimizer file");
    CHECK(fy_ckpt_load(ckpt_path(run, 8, NULL), &b.m, &b.opt, NULL, &err) == -1 &&
              contains(err.msg, FY_CKPT_OPTIM),
          "missing optimizer: %s", err.msg);
    CHECK(fy_ckpt_load(ckpt_path(run, 8, NULL), &b.m, NULL, NULL, &err) == 0, "%s", err.msg);
    unmake(&a);
    unmake(&b);
}

/* ---- pruning and re-saving a step -------------------------------------------- */

static void test_keep_last(void) {
    const char *run = new_run("keep");
    harness a;
    make(&a, tiny_config(), 3, 1);
    for (int s = 1; s <= 4; s++) save(run, s * 100, &a, 1, 2);
    int *steps, n;
    fy_err err;
    CHECK(fy_ckpt_list(run, &steps, &n, &err) == 0, "%s", err.msg);
    CHECK(n == 2 && steps[0] == 400 && steps[1] == 300, "after 4 saves keep 2: %d left", n);
    free(steps);
    CHECK(resolves_to(run, ckpt_path(run, 400, NULL)), "LATEST is the newest");

    /* The same step again (a resume re-saving it): swapped in atomically. */
    char ts_path[FY_PATH_MAX];
    CHECK(fy_ckpt_save(run, 400, &a.m, &a.opt, "{\"again\": 1}", 2, NULL, 0, &err) == 0, "%s",
          err.msg);
    snprintf(ts_path, sizeof ts_path, "%s", ckpt_path(run, 400, FY_CKPT_TRAINER));
    char *t = read_text(ts_path);
    CHECK(t && !strcmp(t, "{\"again\": 1}"), "re-saved step holds the new state");
    free(t);
    CHECK(fy_ckpt_verify(ckpt_path(run, 400, NULL), &err) == 0, "%s", err.msg);
    CHECK(fy_ckpt_list(run, &steps, &n, &err) == 0 && n == 2, "still 2 after re-save");
    free(steps);
    char dbg[FY_PATH_MAX];
    snprintf(dbg, sizeof dbg, "%s/checkpoints/step-00000400.tmp.%d", run, (int)getpid());
    CHECK(!fy_file_exists(dbg), "the swapped-out copy was removed");

    /* keep_last <= 0 keeps everything. */
    const char *run2 = new_run("keepall");
    for (int s = 1; s <= 3; s++) save(run2, s, &a, 0, 0);
    CHECK(fy_ckpt_list(run2, &steps, &n, &err) == 0 && n == 3, "keep all: %d", n);
    free(steps);
    /* keep_last 1 keeps only LATEST's. */
    save(run2, 4, &a, 0, 1);
    CHECK(fy_ckpt_list(run2, &steps, &n, &err) == 0 && n == 1 && steps[0] == 4, "keep 1: %d", n);
    free(steps);
    unmake(&a);
}

/* ---- damage and fallback ------------------------------------------------------- */

static void test_corruption(void) {
    const char *run = new_run("corrupt");
    harness a, b;
    make(&a, tiny_config(), 4, 1);
    make(&b, tiny_config(), 5, 0);
    fy_err err;
    char lp[FY_PATH_MAX];
    snprintf(lp, sizeof lp, "%s/checkpoints/LATEST", run);
    save(run, 1, &a, 1, 0);
    save(run, 2, &a, 1, 0);
    char c1[FY_PATH_MAX], c2[FY_PATH_MAX];
    snprintf(c1, sizeof c1, "%s", ckpt_path(run, 1, NULL));
    snprintf(c2, sizeof c2, "%s", ckpt_path(run, 2, NULL));
    CHECK(resolves_to(run, c2), "good run resolves to LATEST");

    /* One flipped byte in the data of model.safetensors. */
    char mp[FY_PATH_MAX];
    snprintf(mp, sizeof mp, "%s", ckpt_path(run, 2, FY_CKPT_MODEL));
    flip_byte(mp, 10);
    CHECK(fy_ckpt_verify(c2, &err) == -1 && contains(err.msg, "model.safetensors") &&
              contains(err.msg, "checksum mismatch") && contains(err.msg, c2),
          "flipped byte: %s", err.msg);
    CHECK(resolves_to(run, c1), "falls back past a flipped byte");
    CHECK(fy_ckpt_load(c2, &b.m, NULL, NULL, &err) == -1 && contains(err.msg, "model.safetensors"),
          "load refuses a corrupt checkpoint: %s", err.msg);
    char out[FY_PATH_MAX];
    CHECK(fy_ckpt_resolve(c2, out, sizeof out, &err) == -1, "a checkpoint dir is not replaced");
    flip_byte(mp, 10);
    CHECK(fy_ckpt_verify(c2, &err) == 0, "restored: %s", err.msg);

    /* The manifest's per-tensor sums name the damaged tensor: flip a byte in
     * the middle of one tensor's data. */
    {
        fy_st_file *sf;
        CHECK(fy_st_open(mp, &sf, &err) == 0, "open %s: %s", mp, err.msg);
        const fy_st_entry *t = fy_st_entry_at(sf, fy_st_count(sf) / 2);
        char name[128];
        snprintf(name, sizeof name, "damaged tensor: %s ", t->name);
        struct stat fst;
        stat(mp, &fst);
        long from_end = (long)(fst.st_size - (t->file_offset + t->nbytes / 2));
        fy_st_close(sf);
        flip_byte(mp, from_end);
        CHECK(fy_ckpt_verify(c2, &err) == -1 && contains(err.msg, "model.safetensors: checksum mismatch") &&
                  contains(err.msg, name),
              "damaged tensor named (%s): %s", name, err.msg);
        CHECK(fy_ckpt_load(c2, &b.m, NULL, NULL, &err) == -1 && contains(err.msg, name),
              "load names the tensor: %s", err.msg);
        CHECK(resolves_to(run, c1), "falls back past a damaged tensor");
        flip_byte(mp, from_end);
        /* A flipped header byte: no tensor is blamed. */
        FILE *hf = fopen(mp, "r+b");
        fseek(hf, 20, SEEK_SET);
        int c = fgetc(hf);
        fseek(hf, 20, SEEK_SET);
        fputc(c ^ 0x01, hf);
        fclose(hf);
        CHECK(fy_ckpt_verify(c2, &err) == -1 && contains(err.msg, "checksum mismatch") &&
                  !contains(err.msg, "damaged tensor:"),
              "header flip: %s", err.msg);
        hf = fopen(mp, "r+b");
        fseek(hf, 20, SEEK_SET);
        fputc(c, hf);
        fclose(hf);
        CHECK(fy_ckpt_verify(c2, &err) == 0, "restored again: %s", err.msg);
    }

    /* Truncated optimizer.safetensors. */
    char op[FY_PATH_MAX];
    snprintf(op, sizeof op, "%s", ckpt_path(run, 2, FY_CKPT_OPTIM));
    struct stat st;
    stat(op, &st);
    CHECK(truncate(op, st.st_size - 100) == 0, "truncate");
    CHECK(fy_ckpt_verify(c2, &err) == -1 && contains(err.msg, "optimizer.safetensors") &&
              contains(err.msg, "size"),
          "truncated: %s", err.msg);
    CHECK(resolves_to(run, c1), "falls back past a truncated file");

    /* MANIFEST.json never written (crash before the end of a save). */
    save(run, 2, &a, 1, 0);
    char man[FY_PATH_MAX];
    snprintf(man, sizeof man, "%s", ckpt_path(run, 2, FY_CKPT_MANIFEST));
    CHECK(unlink(man) == 0, "unlink manifest");
    CHECK(fy_ckpt_verify(c2, &err) == -1 &&
              contains(err.msg, "MANIFEST.json missing (incomplete checkpoint)"),
          "no manifest: %s", err.msg);
    CHECK(resolves_to(run, c1), "falls back past an incomplete checkpoint");
    CHECK(fy_ckpt_resolve(c2, out, sizeof out, &err) == -1 && contains(err.msg, "MANIFEST.json"),
          "explicit incomplete checkpoint refused: %s", err.msg);

    /* A manifest that is not JSON. */
    fy_write_file_atomic(man, "{\"step\": 2, \"files\": {", 22, &err);
    CHECK(fy_ckpt_verify(c2, &err) == -1 && contains(err.msg, "MANIFEST.json"), "bad manifest: %s",
          err.msg);

    /* LATEST naming a missing directory, garbage, or missing. */
    save(run, 2, &a, 1, 0);
    fy_write_file_atomic(lp, "step-00000099\n", 14, &err);
    CHECK(resolves_to(run, c2), "LATEST names a missing dir");
    fy_write_file_atomic(lp, "../../etc\n", 10, &err);
    CHECK(resolves_to(run, c2), "LATEST garbage");
    unlink(lp);
    CHECK(resolves_to(run, c2), "LATEST missing");

    /* A stale temporary from a crashed writer: ignored, then removed. */
    char stale[FY_PATH_MAX], junk[FY_PATH_MAX];
    snprintf(stale, sizeof stale, "%s/checkpoints/step-00000003.tmp.123", run);
    fy_path_join(junk, sizeof junk, stale, FY_CKPT_MODEL, &err);
    fy_mkdir_p(stale, &err);
    fy_write_file_atomic(junk, "partial", 7, &err);
    CHECK(resolves_to(run, c2), "stale temporary ignored");
    int *steps, n;
    CHECK(fy_ckpt_list(run, &steps, &n, &err) == 0 && n == 2, "list skips temporaries: %d", n);
    free(steps);
    save(run, 3, &a, 1, 0);
    CHECK(!fy_file_exists(stale), "next save removed the stale temporary");
    CHECK(resolves_to(run, ckpt_path(run, 3, NULL)), "new save is LATEST");

    /* Nothing verifies: an error, not a crash or a guess. */
    for (int s = 1; s <= 3; s++) unlink(ckpt_path(run, s, FY_CKPT_MANIFEST));
    CHECK(fy_ckpt_resolve(run, out, sizeof out, &err) == -1 && contains(err.msg, "no checkpoint"),
          "nothing verifies: %s", err.msg);
    const char *empty = new_run("empty");
    CHECK(fy_ckpt_resolve(empty, out, sizeof out, &err) == -1, "empty dir is not a checkpoint");
    unmake(&a);
    unmake(&b);
}

/* ---- refusals --------------------------------------------------------------------- */

static void test_refusals(void) {
    const char *run = new_run("refuse");
    harness a, wide, nomtp;
    fy_config c = tiny_config();
    make(&a, c, 6, 1);
    fy_config cw = c;
    cw.hidden_size = 24;
    make(&wide, cw, 7, 0);
    fy_config cn = c;
    cn.num_nextn_predict_layers = 0;
    make(&nomtp, cn, 8, 0);
    fy_err err;
    save(run, 1, &a, 1, 0);
    const char *dir = ckpt_path(run, 1, NULL);

    float *before = host(wide.be, &wide.m.params);
    CHECK(fy_ckpt_load(dir, &wide.m, &wide.opt, NULL, &err) == -1 &&
              contains(err.msg, "model.embed_tokens.weight") && contains(err.msg, "[40, 16]") &&
              contains(err.msg, "[40, 24]"),
          "shape mismatch: %s", err.msg);
    float *after = host(wide.be, &wide.m.params);
    CHECK(!memcmp(before, after, wide.m.params.n * sizeof *before), "failed load changed params");
    free(before);
    free(after);

    /* The file has MTP tensors this model lacks: the first is named. */
    CHECK(fy_ckpt_load(dir, &nomtp.m, NULL, NULL, &err) == -1 &&
              contains(err.msg, "unexpected tensor model.layers.2."),
          "extra tensor: %s", err.msg);
    /* The other way: the model wants tensors the file lacks. */
    const char *run2 = new_run("refuse2");
    save(run2, 1, &nomtp, 1, 0);
    CHECK(fy_ckpt_load(ckpt_path(run2, 1, NULL), &a.m, &a.opt, NULL, &err) == -1 &&
              contains(err.msg, "missing") && contains(err.msg, "model.layers.2."),
          "missing tensor: %s", err.msg);
    unmake(&a);
    unmake(&wide);
    unmake(&nomtp);
}

/* ---- BF16 model file ---------------------------------------------------------------- */

/* Rewrites a checkpoint's model.safetensors as BF16 and its manifest to
 * match: what a checkpoint converted for export looks like. */
static void convert_to_bf16(const char *dir, const fy_model *m) {
    char mp[FY_PATH_MAX], man[FY_PATH_MAX];
    fy_err err;
    fy_path_join(mp, sizeof mp, dir, FY_CKPT_MODEL, &err);
    fy_path_join(man, sizeof man, dir, FY_CKPT_MANIFEST, &err);
    fy_st_file *f;
    if (fy_st_open(mp, &f, &err)) die("open", &err);
    fy_st_writer *w = fy_st_writer_new();
    uint16_t **copies = calloc(fy_st_count(f), sizeof *copies);
    for (size_t i = 0; i < fy_st_count(f); i++) {
        const fy_st_entry *e = fy_st_entry_at(f, i);
        copies[i] = malloc(e->numel * sizeof **copies);
        for (uint64_t k = 0; k < e->numel; k++) {
            float x;
            memcpy(&x, (const char *)e->data + 4 * k, 4);
            copies[i][k] = fy_f32_to_bf16(x);
        }
        if (fy_st_writer_add(w, e->name, FY_ST_BF16, e->ndim, e->shape, copies[i], &err))
            die("bf16", &err);
    }
    fy_st_close(f);
    if (fy_st_write(w, mp, &err)) die("write bf16", &err);
    fy_st_writer_free(w);
    for (size_t i = 0; i < (size_t)m->tab.n; i++) free(copies[i]);
    free(copies);
    /* Patch the manifest entry. */
    char *text = read_text(man);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *e = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "files"), FY_CKPT_MODEL);
    struct stat st;
    stat(mp, &st);
    uint64_t h;
    char hex[17];
    fy_xxh64_file(mp, &h, &err);
    fy_xxh64_hex(h, hex);
    cJSON_ReplaceItemInObject(e, "bytes", cJSON_CreateNumber((double)st.st_size));
    cJSON_ReplaceItemInObject(e, "xxh64", cJSON_CreateString(hex));
    text = cJSON_Print(root);
    fy_write_file_atomic(man, text, strlen(text), &err);
    free(text);
    cJSON_Delete(root);
}

static void test_bf16(void) {
    const char *run = new_run("bf16");
    harness a, b;
    make(&a, tiny_config(), 9, 1);
    make(&b, tiny_config(), 10, 0);
    fy_err err;
    save(run, 1, &a, 0, 0);
    const char *dir = ckpt_path(run, 1, NULL);
    convert_to_bf16(dir, &a.m);
    CHECK(fy_ckpt_verify(dir, &err) == 0, "%s", err.msg);
    CHECK(fy_ckpt_load(dir, &b.m, NULL, NULL, &err) == 0, "bf16 load: %s", err.msg);
    float *x = host(a.be, &a.m.params), *y = host(b.be, &b.m.params);
    int ok = 1;
    for (size_t i = 0; i < a.m.params.n; i++)
        ok &= y[i] == fy_bf16_to_f32(fy_f32_to_bf16(x[i]));
    CHECK(ok, "bf16 values are the rounded originals");
    free(x);
    free(y);
    unmake(&a);
    unmake(&b);
}

int main(void) {
    g_tmp = fy_test_tmpdir("checkpoint");
    fy_log_set_level(FY_LOG_ERROR);   /* the fallbacks' warnings are expected */
    test_round_trip();
    test_keep_last();
    test_corruption();
    test_refusals();
    test_bf16();
    return fy_test_finish("test_checkpoint");
}
