/* ferry generate --model DIR --prompt TEXT: loads a trained model (common.c)
 * and streams its continuation of the prompt to stdout (serve/generate.h). */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "model/decode.h"
#include "serve/generate.h"

static void print_text(const char *text, size_t n, void *ctx) {
    (void)ctx;
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

int fy_cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *backend = "cpu", *stop = NULL, *weights = "f32";
    int n = 128, top_k = 0, seed = 0, stats = 0;
    double temperature = 0.8, top_p = 1.0;
    fy_arg spec[] = {
        {"--model", "-m", FY_ARG_STR, &model, "DIR", "run directory or checkpoint directory (required)", 0, 0, 0},
        {"--prompt", "-p", FY_ARG_STR, &prompt, "TEXT", "text to continue (required)", 0, 0, 0},
        {"--n", "-n", FY_ARG_INT, &n, "N", "new tokens at most (default 128)", 0, 1 << 20, 0},
        {"--temperature", NULL, FY_ARG_FLOAT, &temperature, "T", "0 = greedy (default 0.8)", 0, 100, 0},
        {"--top-k", NULL, FY_ARG_INT, &top_k, "K", "sample among the K likeliest (0 = all)", 0, 1 << 24, 0},
        {"--top-p", NULL, FY_ARG_FLOAT, &top_p, "P", "nucleus sampling mass (default 1 = off)", 1e-6, 1, 0},
        {"--seed", NULL, FY_ARG_INT, &seed, "S", "sampling seed (default 0)", 0, 2147483647, 0},
        {"--stop", NULL, FY_ARG_STR, &stop, "TEXT", "stop when this text is generated", 0, 0, 0},
        {"--backend", "-b", FY_ARG_STR, &backend, "SPEC", "cpu (default), opencl, ... (see ferry devices)", 0, 0, 0},
        {"--weights", NULL, FY_ARG_STR, &weights, "FMT", "decode weights: f32 (default) or q8_0 (int8, 3.6x fewer bytes)", 0, 0, 0},
        {"--stats", NULL, FY_ARG_BOOL, &stats, NULL, "print prefill/decode speed to stderr", 0, 0, 0},
    };
    char *pos[1];
    int npos;
    fy_err err;
    int r = fy_args_parse(argc, argv, spec, (int)(sizeof spec / sizeof spec[0]), "generate",
                          "--model DIR --prompt TEXT [options]",
                          "Continue a prompt with a trained model: prefill, then token-by-token decoding\n"
                          "from the latent KV cache, streamed to stdout.",
                          pos, 0, &npos, &err);
    if (r) return r > 0 ? 0 : fy_cli_fail("generate", &err);
    if (!model || !prompt) {
        return fy_cli_failf("generate", "needs --model DIR and --prompt TEXT");
    }
    fy_quant wq;
    if (fy_quant_parse(weights, &wq, &err)) return fy_cli_fail("generate", &err);
    fy_loaded l;
    if (fy_cli_load_model(model, backend, &l, &err)) return fy_cli_fail("generate", &err);
    if (fy_model_set_decode_quant(&l.model, wq, &err)) {
        fy_cli_unload(&l);
        return fy_cli_fail("generate", &err);
    }
    fy_gen_opts o = {n, {(float)temperature, top_k, (float)top_p, (uint64_t)seed}, stop, print_text, NULL};
    fy_gen_result res;
    fputs(prompt, stdout);
    int rc = fy_generate(&l.model, l.tok, prompt, &o, &res, &err);
    printf("\n");
    fy_cli_unload(&l);
    if (rc) return fy_cli_fail("generate", &err);
    if (stats)
        fprintf(stderr, "prefill %d tokens: %.1f tok/s; decode %d tokens: %.1f tok/s\n", res.prompt_tokens,
                res.prompt_tokens / (res.prefill_s > 0 ? res.prefill_s : 1e-9), res.new_tokens,
                res.new_tokens / (res.decode_s > 0 ? res.decode_s : 1e-9));
    return 0;
}
