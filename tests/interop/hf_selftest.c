/* The Hugging Face converters without Python (runs where the interop venv
 * is missing): a random model of the "tiny" config with a trained
 * tokenizer is exported f32 / bf16 / f16 in small shards and imported again.
 * f32 must come back bit for bit, bf16 and f16 as the scalar rounding of each
 * value (nearest even), the router bias exactly (always F32), the config and
 * the vocabulary unchanged; an existing output is refused, a truncated shard
 * is refused naming it, and no temporary directory is left.
 * usage: hf_selftest SCRATCH_DIR */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "interop/hf.h"

static int fails;
#define EXPECT(c, ...) do { if (!(c)) { fails++; fprintf(stderr, "FAIL: " __VA_ARGS__); fputc('\n', stderr); } } while (0)

static float rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)(*s >> 40) / (float)(1u << 24) - 0.5f) * 0.2f;
}

static float round_to(fy_st_dtype dt, float x) {
    return dt == FY_ST_BF16 ? fy_bf16_to_f32(fy_f32_to_bf16(x)) : dt == FY_ST_F16 ? fy_f16_to_f32(fy_f32_to_f16(x)) : x;
}

static void check_same(const fy_host_model *a, const fy_host_model *b, fy_st_dtype dt, const char *what) {
    EXPECT(b->tab.n == a->tab.n && b->tab.n_params == a->tab.n_params, "%s: another model came back", what);
    if (b->tab.n != a->tab.n) return;
    size_t bad = 0;
    for (int i = 0; i < a->tab.n; i++) {
        const fy_tensor_info *t = &a->tab.t[i];
        const float *x = (t->is_buffer ? a->buffers : a->params) + t->off, *y = (t->is_buffer ? b->buffers : b->params) + t->off;
        for (size_t j = 0; j < t->n; j++) {
            float want = t->is_buffer ? x[j] : round_to(dt, x[j]);
            if (memcmp(&want, &y[j], 4)) bad++;
        }
    }
    EXPECT(bad == 0, "%s: %zu values differ from the rounding of the originals", what, bad);
    EXPECT(fy_tokenizer_vocab_size(a->tok) == fy_tokenizer_vocab_size(b->tok), "%s: vocabulary", what);
    EXPECT(a->cfg.hidden_size == b->cfg.hidden_size && a->cfg.num_nextn_predict_layers == b->cfg.num_nextn_predict_layers &&
               a->cfg.routed_scaling_factor == b->cfg.routed_scaling_factor && a->cfg.rope_theta == b->cfg.rope_theta,
           "%s: config", what);
}

static int count_shards(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, "model-", 6)) n++;
    if (d) closedir(d);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *dir = argv[1];
    fy_err err = {{0}};
    if (fy_mkdir_p(dir, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    static const char text[] = "the river runs by the stone city; every servant sang, and the king waited. 12345 ";
    char *big = malloc(sizeof text * 400);
    for (int i = 0; i < 400; i++) memcpy(big + i * (sizeof text - 1), text, sizeof text - 1);
    fy_tok_train_opts to = {300, 2, 1};
    fy_host_model h;
    fy_config c;
    fy_tokenizer *tok;
    if (fy_tokenizer_train_text(big, 400 * (sizeof text - 1), &to, &tok, &err) ||
        fy_config_builtin("tiny", fy_tokenizer_vocab_size(tok), &c, &err) || fy_host_alloc(&h, &c, &err))
        return fprintf(stderr, "setup: %s\n", err.msg), 1;
    free(big);
    h.tok = tok;
    uint64_t s = 7;
    for (size_t i = 0; i < h.tab.n_params; i++) h.params[i] = rnd(&s);
    for (size_t i = 0; i < h.tab.n_buffers; i++) h.buffers[i] = rnd(&s);
    const fy_st_dtype dts[3] = {FY_ST_F32, FY_ST_BF16, FY_ST_F16};
    const char *names[3] = {"f32", "bf16", "f16"};
    char out[FY_PATH_MAX + 32];
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof out, "%s/out_%s", dir, names[k]);
        fy_hf_export_opts o = {dts[k], 1000000};
        fy_host_model b;
        if (fy_hf_export(&h, out, &o, &err) || fy_hf_import(out, &b, &err)) {
            EXPECT(0, "%s: %s", names[k], err.msg);
            continue;
        }
        EXPECT(fy_hf_is_dir(out), "%s: not recognised as a Hugging Face directory", out);
        EXPECT(count_shards(out) > 1, "%s: expected several shards of 1 MB", out);
        check_same(&h, &b, dts[k], names[k]);
        fy_host_free(&b);
    }
    snprintf(out, sizeof out, "%s/out_f32", dir);
    fy_hf_export_opts o = {FY_ST_F32, 0};
    EXPECT(fy_hf_export(&h, out, &o, &err) && strstr(err.msg, "already exists"), "an existing output was not refused");
    char shard[FY_PATH_MAX + 128];
    snprintf(out, sizeof out, "%s/out_bf16", dir);
    snprintf(shard, sizeof shard, "%s/model-00002-of-%05d.safetensors", out, count_shards(out));
    struct stat st;
    fy_host_model b;
    if (stat(shard, &st) == 0 && truncate(shard, st.st_size / 2) == 0)
        EXPECT(fy_hf_import(out, &b, &err) && strstr(err.msg, "model-00002-of-"), "a truncated shard was not refused: %s", err.msg);
    else
        EXPECT(0, "no shard %s", shard);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) EXPECT(!strstr(e->d_name, ".tmp"), "temporary %s left in %s", e->d_name, dir);
    if (d) closedir(d);
    fy_host_free(&h);
    printf("hf_selftest: %s\n", fails ? "FAILED" : "PASS");
    return fails ? 1 : 0;
}
