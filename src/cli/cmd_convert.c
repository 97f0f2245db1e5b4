/* ferry convert: a model into another ecosystem's files, or one from there
 * into a ferry run (src/interop, docs/INTEROP.md).
 *   --model RUN_OR_CKPT|HF_DIR --to hf   --out DIR     Hugging Face directory
 *   --model RUN_OR_CKPT|HF_DIR --to gguf --out F.gguf  llama.cpp deepseek2
 *   --from hf HF_DIR --out RUN_DIR                     (= --model HF_DIR --to ferry)
 *   --model DIR --to ferry --weights FMT --out RUN     a weights image (inference only)
 * Every writer goes through a temporary name and reads its output back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "core/fsutil.h"
#include "interop/gguf.h"
#include "interop/hf.h"
#include "interop/host.h"
#include "ckpt/checkpoint.h"
#include "model/lora.h"
#include "train/lora_base.h"
#include "train/trainer.h"

#include <cjson/cJSON.h>

/* "5GB", "500MB", "64KB", "1000" (bytes); decimal units as transformers. */
static int parse_size(const char *s, uint64_t *out, fy_err *err) {
    char *end;
    double v = strtod(s, &end);
    uint64_t mul = 1;
    if (end == s || !(v > 0)) return fy_fail(err, "--max-shard-size %s: expected a size like 5GB", s);
    if (!strcasecmp(end, "GB")) mul = 1000000000ull;
    else if (!strcasecmp(end, "MB")) mul = 1000000ull;
    else if (!strcasecmp(end, "KB")) mul = 1000ull;
    else if (!strcasecmp(end, "GiB")) mul = 1ull << 30;
    else if (!strcasecmp(end, "MiB")) mul = 1ull << 20;
    else if (!strcasecmp(end, "KiB")) mul = 1ull << 10;
    else if (*end) return fy_fail(err, "--max-shard-size %s: unknown unit '%s' (GB, MB, KB, GiB, MiB, KiB)", s, end);
    if (v * (double)mul > 1e15) return fy_fail(err, "--max-shard-size %s: too large", s);
    *out = (uint64_t)(v * (double)mul);
    return 0;
}

/* The run's config.json text and its ferry.lora_rank (0: not a LoRA run). */
static int run_lora_rank(const char *dir, char *run, size_t cap, char **text, int *rank, fy_err *err) {
    char p[FY_PATH_MAX + 32];
    size_t len;
    *text = NULL;
    *rank = 0;
    if (fy_host_run_dir(dir, run, cap, err)) return -1;
    snprintf(p, sizeof p, "%s/config.json", run);
    if (fy_read_file(p, text, &len, err)) return -1;
    *rank = fy_cli_lora_rank(*text);
    return 0;
}

/* A LoRA run as a whole model: its base with the adapters merged
 * (fy_cli_load_model on the cpu), copied to the host. */
static int host_load_lora(const char *dir, fy_host_model *h, fy_err *err) {
    fy_loaded l;
    if (fy_cli_load_model(dir, "cpu", &l, err)) return -1;
    fy_model *m = &l.model;
    int rc = fy_host_alloc(h, &m->cfg, err);
    if (!rc) {
        m->be->ops->download(m->be, h->params, fy_at(&m->params, 0), m->tab.n_params);
        if (m->tab.n_buffers) m->be->ops->download(m->be, h->buffers, fy_at(&m->buffers, 0), m->tab.n_buffers);
        rc = fy_be_sync(m->be, err);
        h->tok = l.tok;
        l.tok = NULL;
    }
    fy_cli_unload(&l);
    return rc;
}

int fy_cli_host_load(const char *dir, fy_host_model *h, fy_err *err) {
    if (fy_hf_is_dir(dir)) return fy_hf_import(dir, h, err);
    char run[FY_PATH_MAX], *text;
    int rank;
    if (run_lora_rank(dir, run, sizeof run, &text, &rank, err)) return -1;
    free(text);
    return rank > 0 ? host_load_lora(dir, h, err) : fy_host_load_run(dir, h, err);
}

/* A LoRA run's directory and training options (rank, alpha, targets), and
 * with c its model config (from the same config.json); an error naming
 * `what` for any other model. */
static int lora_run_opts(const char *model, const char *what, char *run, size_t cap, fy_train_opts *o, fy_config *c,
                         fy_err *err) {
    char *text = NULL;
    int rank;
    if (run_lora_rank(model, run, cap, &text, &rank, err)) return -1;
    fy_train_opts_default(o);
    int rc = rank <= 0 ? fy_fail(err, "%s is not a LoRA run (no ferry.lora_rank): nothing to export as %s", model, what)
                       : fy_train_opts_from_json(text, run, o, err);
    if (!rc && c) rc = fy_config_parse(text, run, c, err);
    free(text);
    return rc;
}

/* --to gguf-lora: the adapters as llama.cpp's LoRA GGUF (interop/gguf.h),
 * for the base exported with --to gguf. */
static int export_gguf_lora(const char *model, const char *out, fy_err *err) {
    char run[FY_PATH_MAX], ck[FY_PATH_MAX], p[FY_PATH_MAX + 64];
    fy_train_opts o;
    fy_config c;
    if (lora_run_opts(model, "a llama.cpp LoRA", run, sizeof run, &o, &c, err) ||
        fy_ckpt_resolve(model, ck, sizeof ck, err))
        return -1;
    snprintf(p, sizeof p, "%s/model.safetensors", ck);
    return fy_gguf_export_lora(&c, p, o.lora_rank, o.lora_alpha, out, err);
}

/* --to peft: a LoRA run's adapters as PEFT writes them, adapter_model.safetensors
 * (the checkpoint's tensors: already PEFT's names) and adapter_config.json. */
static int export_peft(const char *model, const char *out, fy_err *err) {
    char run[FY_PATH_MAX], ck[FY_PATH_MAX], src[FY_PATH_MAX], p[FY_PATH_MAX + 64];
    fy_train_opts o;
    int rc;
    if (lora_run_opts(model, "PEFT", run, sizeof run, &o, NULL, err)) return -1;
    /* PEFT (0.21) on transformers 5 turns the target names gate/up/down_proj
     * of a deepseek_v3 model into the fused routed experts' parameters and
     * drops the dense and shared-expert MLPs: only attention adapters load
     * as trained (docs/FINETUNE.md). */
    if (o.lora_targets & (FY_LORA_GATE | FY_LORA_UP | FY_LORA_DOWN | FY_LORA_EXPERTS))
        return fy_fail(err, "%s adapts MLP projections or routed experts: their PEFT export is not built yet (PEFT on "
                            "transformers 5 maps gate/up/down_proj to the fused routed experts; docs/FINETUNE.md); "
                            "attention targets export", model);
    if (fy_lora_base_source(run, src, sizeof src, err) || fy_ckpt_resolve(model, ck, sizeof ck, err) ||
        fy_mkdir_p(out, err))
        return -1;
    char *st = NULL;
    size_t len;
    snprintf(p, sizeof p, "%s/model.safetensors", ck);
    if (fy_read_file(p, &st, &len, err)) return -1;
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
    rc = fy_write_file_atomic(p, st, len, err);
    free(st);
    if (rc) return -1;
    char t[256];
    fy_lora_targets_string((unsigned)o.lora_targets, t, sizeof t);
    cJSON *js = cJSON_CreateObject(), *tm = cJSON_CreateArray();
    for (char *s = strtok(t, ","); s; s = strtok(NULL, ",")) cJSON_AddItemToArray(tm, cJSON_CreateString(s));
    cJSON_AddStringToObject(js, "peft_type", "LORA");
    cJSON_AddStringToObject(js, "task_type", "CAUSAL_LM");
    if (src[0]) cJSON_AddStringToObject(js, "base_model_name_or_path", src);
    else cJSON_AddNullToObject(js, "base_model_name_or_path");
    cJSON_AddNumberToObject(js, "r", o.lora_rank);
    cJSON_AddNumberToObject(js, "lora_alpha", o.lora_alpha);
    cJSON_AddNumberToObject(js, "lora_dropout", o.lora_dropout);
    cJSON_AddItemToObject(js, "target_modules", tm);
    cJSON_AddStringToObject(js, "bias", "none");
    cJSON_AddBoolToObject(js, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(js, "use_rslora", 0);
    cJSON_AddBoolToObject(js, "inference_mode", 1);
    char *cj = cJSON_Print(js);
    cJSON_Delete(js);
    snprintf(p, sizeof p, "%s/adapter_config.json", out);
    rc = !cj ? fy_fail(err, "out of memory") : fy_write_file_atomic(p, cj, strlen(cj), err);
    free(cj);
    return rc;
}

/* --to ferry --weights FMT: a run whose checkpoint is a weights image
 * (ckpt/checkpoint.h): the run written as f32 beside out, loaded for
 * inference in FMT on the cpu (each weight checked finite and encoded), its
 * copy saved as the image in place of the f32 checkpoint, loaded back from
 * the image and compared byte for byte, then renamed to out. */
static int save_image_run(const fy_host_model *h, const char *out, const char *weights, fy_err *err) {
    char tmp[FY_PATH_MAX];
    fy_loaded l = {0}, back = {0};
    fy_ckpt_manifest man;
    void *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (fy_file_exists(out)) return fy_fail(err, "%s already exists: not overwriting it", out);
    if (fy_dir_tmp_beside(out, tmp, sizeof tmp, err)) return -1;
    int rc = fy_host_save_run(h, tmp, err) || fy_cli_load_inference(tmp, "cpu", weights, 0, &l, err) ||
             fy_ckpt_read_manifest(l.ckpt_dir, &man, err) || fy_model_image_bytes(&l.model, &a, &na, err) ||
             fy_ckpt_image_save(tmp, man.step, &l.model, err) || fy_cli_load_inference(tmp, "cpu", NULL, 0, &back, err) ||
             fy_model_image_bytes(&back.model, &b, &nb, err);
    if (!rc && (na != nb || memcmp(a, b, na) || back.model.dq.kind != l.model.dq.kind))
        rc = fy_fail(err, "the weights image read back differs from what was written");
    free(a);
    free(b);
    if (l.be) fy_cli_unload(&l);
    if (back.be) fy_cli_unload(&back);
    if (!rc) rc = fy_dir_publish(tmp, out, err);
    if (rc) fy_remove_tree(tmp, &(fy_err){0});
    return rc;
}

static int convert(const char *to, const char *model, const char *out, const char *dtype, const char *type,
                   const char *shard, const char *add_tokens, const char *weights, fy_err *err) {
    fy_quant wq;
    if (weights && strcmp(to, "ferry"))
        return fy_fail(err, "--weights is for --to ferry (--to gguf takes --type, --to hf --dtype)");
    if (weights && fy_quant_parse(weights, &wq, err)) return -1;
    fy_hf_export_opts ho = {FY_ST_BF16, 0};
    fy_gguf_type gt = FY_GGUF_F16;
    if (!strcmp(to, "hf")) {
        if (!strcmp(dtype, "f32")) ho.dtype = FY_ST_F32;
        else if (!strcmp(dtype, "f16")) ho.dtype = FY_ST_F16;
        else if (strcmp(dtype, "bf16")) return fy_fail(err, "--dtype %s: expected bf16, f16 or f32", dtype);
        if (shard && parse_size(shard, &ho.max_shard_bytes, err)) return -1;
    } else if (!strcmp(to, "gguf")) {
        if (fy_gguf_type_parse(type, &gt, err)) return -1;
    } else if (!strcmp(to, "peft")) {
        if (add_tokens) return fy_fail(err, "--add-special-tokens: adapters alone cannot grow the vocabulary (--to peft)");
        if (fy_file_exists(out)) return fy_fail(err, "%s already exists: not overwriting it", out);
        return export_peft(model, out, err);
    } else if (!strcmp(to, "gguf-lora")) {
        if (add_tokens) return fy_fail(err, "--add-special-tokens: adapters alone cannot grow the vocabulary (--to gguf-lora)");
        return export_gguf_lora(model, out, err);
    } else if (strcmp(to, "ferry")) {
        return fy_fail(err, "--to %s: expected hf, gguf, gguf-lora, ferry or peft", to);
    }
    if (fy_file_exists(out)) return fy_fail(err, "%s already exists: not overwriting it", out);
    fy_host_model h;
    if (fy_cli_host_load(model, &h, err)) return -1;
    int rc = add_tokens ? fy_cli_host_add_special_tokens(add_tokens, &h, err) : 0;
    if (!rc) rc = !strcmp(to, "hf")     ? fy_hf_export(&h, out, &ho, err)
             : !strcmp(to, "gguf") ? fy_gguf_export(&h, out, gt, err)
             : weights             ? save_image_run(&h, out, weights, err)
                                   : fy_host_save_new_run(&h, out, err);
    fy_host_free(&h);
    return rc;
}

int fy_cmd_convert(int argc, char **argv) {
    const char *model = NULL, *from = NULL, *to = NULL, *out = NULL, *dtype = "bf16", *type = "f16", *shard = NULL;
    const char *add_tokens = NULL, *weights = NULL;
    fy_arg spec[] = {
        {"--model", "-m", FY_ARG_STR, &model, "DIR", "ferry run or checkpoint directory, or a Hugging Face directory", 0, 0, 0},
        {"--to", NULL, FY_ARG_STR, &to, "FMT", "hf (Hugging Face directory), gguf (llama.cpp), ferry (a run directory), peft or gguf-lora (a LoRA run's adapters for PEFT or llama.cpp); a LoRA run goes to hf, gguf, ferry merged", 0, 0, 0},
        {"--from", NULL, FY_ARG_STR, &from, "hf", "--from hf HF_DIR: import a Hugging Face directory as a ferry run", 0, 0, 0},
        {"--out", "-o", FY_ARG_STR, &out, "PATH", "output directory (hf, ferry) or file (gguf); must not exist (required)", 0, 0, 0},
        {"--dtype", NULL, FY_ARG_STR, &dtype, "T", "hf: bf16 (default, round to nearest even), f16 or f32 (exact)", 0, 0, 0},
        {"--max-shard-size", NULL, FY_ARG_STR, &shard, "SIZE", "hf: largest shard, e.g. 5GB (default) or 500MB", 0, 0, 0},
        {"--type", NULL, FY_ARG_STR, &type, "T", "gguf: matrices as f16 (default), bf16, f32, q8_0 or q4_0", 0, 0, 0},
        {"--weights", NULL, FY_ARG_STR, &weights, "FMT", "ferry: a weights image in f32, bf16, f16, q8_0 or q4_0 that generate and serve map as it is, for inference only (docs/DESIGN.md 3.3); without it: a run that trains", 0, 0, 0},
        {"--add-special-tokens", NULL, FY_ARG_STR, &add_tokens, "TOK,...", "add these special tokens: the embedding and head grow by rows that start as the mean of the old ones (docs/FINETUNE.md)", 0, 0, 0},
    };
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), "convert",
                          "--model DIR --to hf|gguf|ferry|peft|gguf-lora --out PATH [options]  |  --from hf HF_DIR --out RUN_DIR",
                          "Convert a model between ferry and the ecosystem (docs/INTEROP.md):\n"
                          "  --to hf    a Hugging Face DeepseekV3 directory (transformers, vLLM, SGLang)\n"
                          "  --to gguf  a GGUF file for llama.cpp (architecture deepseek2)\n"
                          "  --to peft  a LoRA run's adapters for PEFT (docs/FINETUNE.md); other formats merge them\n"
                          "  --to gguf-lora  a LoRA run's adapters as llama.cpp's LoRA GGUF, over the base's --to gguf\n"
                          "             (o_proj, MLP and expert targets: llama.cpp's deepseek2 ignores the others)\n"
                          "  --to ferry --weights FMT  an inference-only run in FMT (f32, bf16, f16, q8_0, q4_0), loaded by mapping it\n"
                          "  --from hf  a Hugging Face directory (bf16/f16/f32 or DeepSeek's FP8) into a ferry run\n"
                          "Every output is written under a temporary name and read back before it is renamed.",
                          pos, 1, &npos, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("convert", &err);
    if (from) {
        if (strcmp(from, "hf")) return fy_cli_failf("convert", "--from %s: only --from hf is known", from);
        if (npos != 1 || model) return fy_cli_failf("convert", "--from hf needs the directory: --from hf HF_DIR --out RUN_DIR");
        model = pos[0];
        if (to && strcmp(to, "ferry")) return fy_cli_failf("convert", "--from hf writes a ferry run; leave out --to %s", to);
        to = "ferry";
    } else if (npos) {
        return fy_cli_failf("convert", "unexpected argument '%s' (the model is given with --model)", pos[0]);
    }
    if (!model || !to || !out) return fy_cli_failf("convert", "needs --model DIR --to hf|gguf|ferry|peft|gguf-lora --out PATH (see --help)");
    if (convert(to, model, out, dtype, type, shard, add_tokens, weights, &err)) return fy_cli_fail("convert", &err);
    fprintf(stderr, "ferry convert: wrote %s\n", out);
    return 0;
}
