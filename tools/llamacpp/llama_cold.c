/* One cold generation with llama.cpp (libllama), the counterpart of one
 * `ferry generate --stats` process in bench/llamacpp.sh: load the GGUF,
 * prefill the prompt in one pass, decode N tokens greedily, exit.
 *
 *   llama_cold MODEL.gguf PROMPT N THREADS [REPACK]
 *
 * llama.cpp's own defaults otherwise (what llama-bench runs with too): KV
 * cache f16, flash attention auto, mmap on, n_ubatch 512; the batch is
 * raised to the prompt's length so the prompt goes in one llama_decode
 * call, as ferry prefills it in one forward. REPACK 0 turns off the
 * repacked/AMX weight buffers (llama-bench's --repack 0; see llama_ids.c
 * for the AMX abort on small shapes); default 1, llama.cpp's default.
 * The end-of-sequence token does not stop decoding (ferry runs with
 * --ignore-eos), so both sides always decode N tokens.
 *
 * Prints one JSON line: {"prompt_tokens": P, "new_tokens": N,
 * "prefill_tok_s": X, "decode_tok_s": Y}; the clocks do not cover the load
 * (the process's whole wall time comes from /usr/bin/time in the script). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static double now_s(void) { return 1e-6 * (double)llama_time_us(); }

static void quiet(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT N THREADS [REPACK 0|1]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2];
    int n_new = atoi(argv[3]), threads = atoi(argv[4]);
    int repack = argc > 5 ? atoi(argv[5]) : 1;
    if (n_new < 1 || threads < 1) {
        fprintf(stderr, "llama_cold: N and THREADS must be >= 1\n");
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = repack != 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "llama_cold: %s: llama.cpp could not load it\n", path);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int cap = (int)strlen(prompt) + 8;
    llama_token *toks = malloc((size_t)(cap + n_new) * sizeof *toks);
    int n = toks ? llama_tokenize(vocab, prompt, (int32_t)strlen(prompt), toks, cap, true, false) : -1;
    if (n <= 0) {
        fprintf(stderr, "llama_cold: tokenizing the prompt failed (%d)\n", n);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + n_new + 8);
    if (cp.n_batch < (uint32_t)n) cp.n_batch = (uint32_t)n;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    struct llama_sampler *smpl = llama_sampler_init_greedy();
    if (!ctx || !smpl) {
        fprintf(stderr, "llama_cold: cannot create a context\n");
        return 1;
    }
    /* Clocked as ferry's --stats clocks fy_generate (serve/generate.c): the
     * prefill is the prompt's pass; the decode is N samplings and the N - 1
     * passes between them, reported as N tokens over that time. */
    llama_token *out = toks + n;
    double t0 = now_s();
    if (llama_decode(ctx, llama_batch_get_one(toks, n))) {
        fprintf(stderr, "llama_cold: llama_decode failed on the prompt\n");
        return 1;
    }
    double t1 = now_s();
    for (int i = 0;; i++) {
        out[i] = llama_sampler_sample(smpl, ctx, -1);
        if (i == n_new - 1) break;
        if (llama_decode(ctx, llama_batch_get_one(&out[i], 1))) {
            fprintf(stderr, "llama_cold: llama_decode failed at new token %d\n", i + 1);
            return 1;
        }
    }
    double t2 = now_s();
    printf("{\"prompt_tokens\": %d, \"new_tokens\": %d, \"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f}\n", n,
           n_new, n / (t1 - t0), n_new / (t2 - t1));
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(toks);
    return 0;
}
