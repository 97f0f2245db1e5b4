/* ferry convert: a model into another ecosystem's files, or one from there
 * into a ferry run (src/interop, docs/INTEROP.md).
 *   --model RUN_OR_CKPT|HF_DIR --to hf   --out DIR     Hugging Face directory
 *   --model RUN_OR_CKPT|HF_DIR --to gguf --out F.gguf  llama.cpp deepseek2
 *   --from hf HF_DIR --out RUN_DIR                     (= --model HF_DIR --to ferry)
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

int fy_cli_host_load(const char *dir, fy_host_model *h, fy_err *err) {
    return fy_hf_is_dir(dir) ? fy_hf_import(dir, h, err) : fy_host_load_run(dir, h, err);
}

static int convert(const char *to, const char *model, const char *out, const char *dtype, const char *type,
                   const char *shard, fy_err *err) {
    fy_hf_export_opts ho = {FY_ST_BF16, 0};
    fy_gguf_type gt = FY_GGUF_F16;
    if (!strcmp(to, "hf")) {
        if (!strcmp(dtype, "f32")) ho.dtype = FY_ST_F32;
        else if (!strcmp(dtype, "f16")) ho.dtype = FY_ST_F16;
        else if (strcmp(dtype, "bf16")) return fy_fail(err, "--dtype %s: expected bf16, f16 or f32", dtype);
        if (shard && parse_size(shard, &ho.max_shard_bytes, err)) return -1;
    } else if (!strcmp(to, "gguf")) {
        if (fy_gguf_type_parse(type, &gt, err)) return -1;
    } else if (strcmp(to, "ferry")) {
        return fy_fail(err, "--to %s: expected hf, gguf or ferry", to);
    }
    if (fy_file_exists(out)) return fy_fail(err, "%s already exists: not overwriting it", out);
    fy_host_model h;
    if (fy_cli_host_load(model, &h, err)) return -1;
    int rc = !strcmp(to, "hf")     ? fy_hf_export(&h, out, &ho, err)
             : !strcmp(to, "gguf") ? fy_gguf_export(&h, out, gt, err)
                                   : fy_host_save_new_run(&h, out, err);
    fy_host_free(&h);
    return rc;
}

int fy_cmd_convert(int argc, char **argv) {
    const char *model = NULL, *from = NULL, *to = NULL, *out = NULL, *dtype = "bf16", *type = "f16", *shard = NULL;
    fy_arg spec[] = {
        {"--model", "-m", FY_ARG_STR, &model, "DIR", "ferry run or checkpoint directory, or a Hugging Face directory", 0, 0, 0},
        {"--to", NULL, FY_ARG_STR, &to, "FMT", "hf (Hugging Face directory), gguf (llama.cpp) or ferry (a run directory)", 0, 0, 0},
        {"--from", NULL, FY_ARG_STR, &from, "hf", "--from hf HF_DIR: import a Hugging Face directory as a ferry run", 0, 0, 0},
        {"--out", "-o", FY_ARG_STR, &out, "PATH", "output directory (hf, ferry) or file (gguf); must not exist (required)", 0, 0, 0},
        {"--dtype", NULL, FY_ARG_STR, &dtype, "T", "hf: bf16 (default, round to nearest even), f16 or f32 (exact)", 0, 0, 0},
        {"--max-shard-size", NULL, FY_ARG_STR, &shard, "SIZE", "hf: largest shard, e.g. 5GB (default) or 500MB", 0, 0, 0},
        {"--type", NULL, FY_ARG_STR, &type, "T", "gguf: matrices as f16 (default), bf16, f32, q8_0 or q4_0", 0, 0, 0},
    };
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), "convert",
                          "--model DIR --to hf|gguf|ferry --out PATH [options]  |  --from hf HF_DIR --out RUN_DIR",
                          "Convert a model between ferry and the ecosystem (docs/INTEROP.md):\n"
                          "  --to hf    a Hugging Face DeepseekV3 directory (transformers, vLLM, SGLang)\n"
                          "  --to gguf  a GGUF file for llama.cpp (architecture deepseek2)\n"
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
    if (!model || !to || !out) return fy_cli_failf("convert", "needs --model DIR --to hf|gguf|ferry --out PATH (see --help)");
    if (convert(to, model, out, dtype, type, shard, &err)) return fy_cli_fail("convert", &err);
    fprintf(stderr, "ferry convert: wrote %s\n", out);
    return 0;
}
