/* ferry generate --model DIR --prompt TEXT: loads a trained model (common.c)
 * and streams its continuation of the prompt to stdout (serve/generate.h);
 * --print-ids prints token ids instead of text, to compare with other
 * engines (llama.cpp, docs/INTEROP.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "model/decode.h"
#include "serve/generate.h"
#include "serve/sampler.h"

static void print_text(const char *text, size_t n, void *ctx) {
    (void)ctx;
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

static void print_list(const char *label, const int32_t *ids, int n) {
    printf("%s", label);
    for (int i = 0; i < n; i++) printf(" %d", (int)ids[i]);
    printf("\n");
}

/* Same tokens as fy_generate (no <|bos|>, stop at <|eos|>, which is not
 * printed), printed as two lines: "prompt: ID..." and "ids: ID...". */
static int generate_ids(fy_model *m, const fy_tokenizer *tok, const char *prompt, const fy_gen_opts *o,
                        fy_err *err) {
    int V = m->cfg.vocab_size, rc = -1, n_out = 0;
    int32_t *ids = NULL, *out = NULL;
    size_t n = 0;
    float *logits = malloc((size_t)V * sizeof *logits);
    void *scratch = malloc(fy_sample_scratch_size(V));
    fy_kv_cache cache = {0};
    if (!logits || !scratch) { fy_fail(err, "out of memory"); goto done; }
    if (fy_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n, err)) goto done;
    if (n == 0 || (int)n > m->cfg.max_position_embeddings) {
        fy_fail(err, "the prompt has %zu tokens: needs 1 to max_position_embeddings %d", n, m->cfg.max_position_embeddings);
        goto done;
    }
    int cap = (int)n + o->max_new_tokens;
    if (cap > m->cfg.max_position_embeddings) cap = m->cfg.max_position_embeddings;
    if (!(out = malloc((size_t)o->max_new_tokens * sizeof *out + 1))) { fy_fail(err, "out of memory"); goto done; }
    if (fy_kv_cache_create(&cache, m, cap, err) || fy_model_prefill(m, &cache, ids, (int)n, logits, err)) goto done;
    for (int i = 0; i < o->max_new_tokens; i++) {
        int32_t next = fy_sample(&o->sampler, logits, V, (uint64_t)cache.len, scratch);
        if (next == fy_tokenizer_eos(tok)) break;
        out[n_out++] = next;
        if (i + 1 == o->max_new_tokens || cache.len >= cache.cap) break;
        if (fy_model_decode(m, &cache, next, logits, err)) goto done;
    }
    print_list("prompt:", ids, (int)n);
    print_list("ids:", out, n_out);
    rc = 0;
done:
    fy_kv_cache_free(&cache, m);
    free(ids);
    free(out);
    free(logits);
    free(scratch);
    return rc;
}

int fy_cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *backend = "cpu", *stop = NULL, *weights = "f32";
    int n = 128, top_k = 0, seed = 0, stats = 0, print_ids = 0;
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
        {"--print-ids", NULL, FY_ARG_BOOL, &print_ids, NULL,
         "print token ids, not text: a line 'prompt: ID...' then 'ids: ID...' (the new tokens; <|eos|> ends them, unprinted)",
         0, 0, 0},
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
    if (print_ids) {
        int rc = generate_ids(&l.model, l.tok, prompt, &o, &err);
        fy_cli_unload(&l);
        return rc ? fy_cli_fail("generate", &err) : 0;
    }
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
