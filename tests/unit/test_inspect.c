/* inspect: summaries of a checkpoint, a safetensors file, a run directory and
 * a token shard; -1 naming the file on every kind of corruption; files are
 * never modified; the kind comes from magic bytes, not the name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "ckpt/checkpoint.h"
#include "ckpt/inspect.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "io/shard.h"
#include "model/model.h"
#include "testutil.h"

#define VOCAB 40

static char g_run[FY_PATH_MAX];

static void die(const char *what, const fy_err *err) {
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(1);
}

/* g_run/rel in one of 16 rotating buffers: callers keep copies of paths
 * they hold on to. */
static const char *path_in(const char *rel) {
    static char p[16][FY_PATH_MAX];
    static int k;
    char *out = p[k++ % 16];
    fy_err err;
    if (fy_path_join(out, FY_PATH_MAX, g_run, rel, &err)) die("path", &err);
    return out;
}

#define KEEP(var, rel) char var[FY_PATH_MAX]; snprintf(var, sizeof var, "%s", path_in(rel))

/* Builds a run: config.json, two checkpoints, a shard. Returns the model's
 * tensor count. */
static int build_run(void) {
    fy_err err;
    fy_config c;
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
    c.moe_intermediate_size = 8;
    c.intermediate_size = 16;
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
    fy_adamw_opts o = {.lr = 1e-3f, .total_steps = 10, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f};
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 1, &err) || fy_adamw_create(&opt, &m, &o, &err))
        die("model", &err);
    char *cfg = fy_config_to_json(&c, NULL);
    if (fy_write_file_atomic(path_in("config.json"), cfg, strlen(cfg), &err)) die("config", &err);
    free(cfg);
    for (int s = 1; s <= 2; s++)
        if (fy_ckpt_save(g_run, s * 10, &m, &opt, "{\"step\": 10, \"lr\": 0.001}", 0, NULL, 0,
                         &err))
            die("save", &err);
    int n = m.tab.n;
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);

    int32_t tok[1000];
    for (int i = 0; i < 1000; i++) tok[i] = (int32_t)(fy_rng_u64(5, 0, i) % VOCAB);
    if (fy_shard_write(path_in("train.bin"), tok, 1000, VOCAB, &err)) die("shard", &err);
    return n;
}

/* Runs inspect with output captured; returns rc, *text malloc'd. */
static int inspect(const char *path, char **text, fy_err *err) {
    size_t len;
    FILE *f = open_memstream(text, &len);
    int rc = fy_inspect(path, f, err);
    fclose(f);
    return rc;
}

/* Snapshot of every file under the run (paths and bytes), to prove inspect
 * writes nothing. */
typedef struct snap {
    int n;
    char path[32][FY_PATH_MAX];
    char *data[32];
    size_t len[32];
} snap;

static void snap_take(snap *s) {
    static const char *files[] = {
        "config.json", "train.bin", "checkpoints/LATEST",
        "checkpoints/step-00000010/model.safetensors",
        "checkpoints/step-00000010/optimizer.safetensors",
        "checkpoints/step-00000010/trainer_state.json",
        "checkpoints/step-00000010/MANIFEST.json",
        "checkpoints/step-00000020/model.safetensors",
        "checkpoints/step-00000020/optimizer.safetensors",
        "checkpoints/step-00000020/trainer_state.json",
        "checkpoints/step-00000020/MANIFEST.json",
    };
    fy_err err;
    s->n = 0;
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(s->path[s->n], FY_PATH_MAX, "%s", path_in(files[i]));
        if (fy_read_file(s->path[s->n], &s->data[s->n], &s->len[s->n], &err)) die("snap", &err);
        s->n++;
    }
}

/* 1 when every file is as in s; frees s. */
static int snap_same(snap *s) {
    snap now;
    snap_take(&now);
    int same = now.n == s->n;
    for (int i = 0; i < s->n; i++) {
        if (same && (now.len[i] != s->len[i] || memcmp(now.data[i], s->data[i], s->len[i]))) {
            fprintf(stderr, "  changed: %s\n", s->path[i]);
            same = 0;
        }
        free(now.data[i]);
        free(s->data[i]);
    }
    return same;
}

static int contains(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

static void flip_byte(const char *path, long off_from_end) {
    FILE *f = fopen(path, "r+b");
    fseek(f, -off_from_end, SEEK_END);
    int c = fgetc(f);
    fseek(f, -off_from_end, SEEK_END);
    fputc(c ^ 0x20, f);
    fclose(f);
}

int main(void) {
    snprintf(g_run, sizeof g_run, "%s/run", fy_test_tmpdir("inspect"));
    fy_err err;
    if (fy_mkdir_p(g_run, &err)) die("mkdir", &err);
    int n_tensors = build_run();
    char want[64];
    snprintf(want, sizeof want, "tensors: %d\n", n_tensors);
    KEEP(ck, "checkpoints/step-00000020");
    char *out = NULL;
    snap s;

    /* Good artifacts. */
    snap_take(&s);
    CHECK(inspect(ck, &out, &err) == 0, "checkpoint: %s", err.msg);
    CHECK(contains(out, want) && contains(out, "step: 20") && contains(out, "OK"),
          "checkpoint summary:\n%s", out);
    CHECK(contains(out, "lr=0.001"), "trainer state shown:\n%s", out);
    free(out);
    CHECK(inspect(path_in("checkpoints/step-00000020/model.safetensors"), &out, &err) == 0, "%s",
          err.msg);
    CHECK(contains(out, want) && contains(out, "F32") &&
              contains(out, "model.embed_tokens.weight") &&
              contains(out, "[40, 16]") && contains(out, "ferry_step = 20") &&
              contains(out, "match"),
          "safetensors summary:\n%s", out);
    free(out);
    CHECK(inspect(g_run, &out, &err) == 0, "run: %s", err.msg);
    CHECK(contains(out, "LATEST: step-00000020") && contains(out, "step-00000010: OK") &&
              contains(out, "hidden 16") && contains(out, "layers 2"),
          "run summary:\n%s", out);
    free(out);
    CHECK(inspect(path_in("train.bin"), &out, &err) == 0, "shard: %s", err.msg);
    CHECK(contains(out, "tokens: 1000") && contains(out, "vocab: 40") && contains(out, "width: 2"),
          "shard summary:\n%s", out);
    free(out);
    CHECK(fy_inspect(path_in("train.bin"), NULL, &err) == 0, "NULL output");
    CHECK(snap_same(&s), "inspect modified a file");

    /* The kind comes from magic bytes: a shard named .safetensors is a shard. */
    if (rename(path_in("train.bin"), path_in("odd.safetensors")) == 0) {
        CHECK(inspect(path_in("odd.safetensors"), &out, &err) == 0 && contains(out, "token shard"),
              "shard under another name:\n%s", out);
        free(out);
        rename(path_in("odd.safetensors"), path_in("train.bin"));
    }
    fy_write_file_atomic(path_in("notes.txt"), "hello world", 11, &err);
    CHECK(fy_inspect(path_in("notes.txt"), NULL, &err) == -1 && contains(err.msg, "notes.txt"),
          "unknown file: %s", err.msg);

    /* Corrupted checkpoint: one flipped data byte. */
    KEEP(mp, "checkpoints/step-00000020/model.safetensors");
    flip_byte(mp, 7);
    snap_take(&s);
    CHECK(inspect(ck, &out, &err) == -1 && contains(err.msg, "model.safetensors") &&
              contains(err.msg, "checksum mismatch"),
          "corrupt checkpoint: %s", err.msg);
    CHECK(contains(out, "BAD"), "the bad file is marked:\n%s", out);
    free(out);
    CHECK(fy_inspect(mp, NULL, &err) == -1 && contains(err.msg, "model.safetensors"),
          "corrupt safetensors file (via its manifest): %s", err.msg);
    CHECK(inspect(g_run, &out, &err) == -1 && contains(err.msg, "step-00000020") &&
              contains(out, "step-00000010: OK"),
          "corrupt run: %s\n%s", err.msg, out);
    free(out);
    CHECK(snap_same(&s), "inspect modified a corrupt file");
    flip_byte(mp, 7);

    /* Corrupted safetensors header of a standalone file. */
    char *data;
    size_t len;
    if (fy_read_file(mp, &data, &len, &err)) die("read", &err);
    data[12] = '\x01';
    KEEP(lone, "lone.safetensors");
    fy_write_file_atomic(lone, data, len, &err);
    free(data);
    CHECK(fy_inspect(lone, NULL, &err) == -1 && contains(err.msg, "lone.safetensors"),
          "bad header: %s", err.msg);

    /* Incomplete checkpoint: no manifest. */
    KEEP(man, "checkpoints/step-00000010/MANIFEST.json");
    char *mtext;
    if (fy_read_file(man, &mtext, &len, &err)) die("read", &err);
    unlink(man);
    CHECK(fy_inspect(path_in("checkpoints/step-00000010"), NULL, &err) == -1 &&
              contains(err.msg, "MANIFEST.json missing"),
          "incomplete: %s", err.msg);
    fy_write_file_atomic(man, mtext, len, &err);
    free(mtext);

    /* Corrupted shard payload. */
    KEEP(sp, "train.bin");
    flip_byte(sp, 3);
    CHECK(fy_inspect(sp, NULL, &err) == -1 && contains(err.msg, "train.bin"), "bad shard: %s",
          err.msg);
    flip_byte(sp, 3);
    CHECK(fy_inspect(g_run, NULL, &err) == 0, "all restored: %s", err.msg);
    CHECK(fy_inspect(path_in("nonexistent"), NULL, &err) == -1 && contains(err.msg, "nonexistent"),
          "missing path: %s", err.msg);
    return fy_test_finish("test_inspect");
}
