/* Greedy token ids from llama.cpp (libllama), to compare with
 * `ferry generate --temperature 0 --print-ids` (tools/llamacpp/check.sh).
 *
 *   llama_ids MODEL.gguf PROMPT N [f32|f16 [LORA_ADAPTER.gguf]]
 *
 * Loads the GGUF on the CPU, tokenizes PROMPT as the file says (ferry's
 * files: no <|bos|>), decodes N tokens greedily with flash attention off
 * and the KV cache in the given type (default f32), stopping at the
 * end-of-sequence token (not printed), with the plain CPU weight buffers
 * (see use_extra_bufts below). Prints "prompt: ID..." and
 * "ids: ID...", the format of ferry's --print-ids, then "gaps: G..." (for
 * each new token, its logit minus the runner-up's: how near a tie the
 * choice was). Logs go to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void print_list(const char *label, const llama_token *ids, int n) {
    printf("%s", label);
    for (int i = 0; i < n; i++) printf(" %d", (int)ids[i]);
    printf("\n");
}

/* Largest logit minus the second largest. */
static float top2_gap(const float *l, int V) {
    float a = -1e30f, b = -1e30f;
    for (int i = 0; i < V; i++)
        if (l[i] > a) b = a, a = l[i];
        else if (l[i] > b) b = l[i];
    return a - b;
}

static void quiet(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT N [f32|f16 [LORA_ADAPTER.gguf]]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2];
    int n_new = atoi(argv[3]);
    int kv_f16 = argc > 4 && !strcmp(argv[4], "f16");
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    /* No repacked/AMX weight buffers: ggml's AMX buffer (Sapphire Rapids and
     * later) takes Q8_0/Q4_0/F16 weights but cannot run a matmul whose output
     * rows are not a multiple of 32 and then aborts (ggml-backend.cpp
     * "cur_backend_id != -1"); a test model's tiny shapes hit that. The plain
     * CPU kernels compute the same products. */
    mp.use_extra_bufts = false;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "llama_ids: %s: llama.cpp could not load it\n", path);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int cap = (int)strlen(prompt) + 8;
    llama_token *toks = malloc((size_t)(cap + n_new) * sizeof *toks);
    int n = llama_tokenize(vocab, prompt, (int32_t)strlen(prompt), toks, cap, true, false);
    if (n <= 0) {
        fprintf(stderr, "llama_ids: tokenizing the prompt failed (%d)\n", n);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + n_new + 8);
    cp.n_batch = cp.n_ctx;
    cp.n_ubatch = cp.n_ctx;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llama_ids: cannot create a context\n");
        return 1;
    }
    if (argc > 5) {
        /* a LoRA adapter GGUF at scale 1 (llama-cli's --lora) */
        struct llama_adapter_lora *ad = llama_adapter_lora_init(model, argv[5]);
        float one = 1.0f;
        if (!ad || llama_set_adapters_lora(ctx, &ad, 1, &one)) {
            fprintf(stderr, "llama_ids: %s: llama.cpp could not load or apply the LoRA adapter\n", argv[5]);
            return 1;
        }
    }
    struct llama_sampler *smpl = llama_sampler_init_greedy();
    llama_token eos = llama_vocab_eos(vocab), *out = toks + n;
    int V = llama_vocab_n_tokens(vocab);
    float *gaps = malloc((size_t)(n_new + 1) * sizeof *gaps);
    int n_out = 0;
    struct llama_batch batch = llama_batch_get_one(toks, n);
    for (int i = 0; i < n_new; i++) {
        if (llama_decode(ctx, batch)) {
            fprintf(stderr, "llama_ids: llama_decode failed at token %d\n", i);
            return 1;
        }
        llama_token next = llama_sampler_sample(smpl, ctx, -1);
        gaps[n_out] = top2_gap(llama_get_logits_ith(ctx, -1), V);
        if (next == eos) break;
        out[n_out++] = next;
        batch = llama_batch_get_one(&out[n_out - 1], 1);
    }
    print_list("prompt:", toks, n);
    print_list("ids:", out, n_out);
    printf("gaps:");
    for (int i = 0; i < n_out; i++) printf(" %.4f", gaps[i]);
    printf("\n");
    free(gaps);
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(toks);
    return 0;
}
