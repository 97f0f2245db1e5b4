/* Text generation for one prompt (ferry generate): the prompt runs through
 * fy_model_batch_step in chunks over a one-sequence paged KV pool, then one
 * token at a time, each sampled by serve/seq.h — the same steps the serving
 * scheduler (serve/sched.h) takes for a request, so a served request's
 * tokens equal ferry generate's. Text streams UTF-8-safe. */
#ifndef FY_GENERATE_H
#define FY_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "serve/seq.h"

typedef struct fy_gen_opts {
    /* max_tokens (clamped so that the prompt and the tokens fed back fit
     * max_position_embeddings), sampler, stop strings (not emitted),
     * logprobs. */
    fy_seq_params p;
    int prefill_chunk;  /* prompt tokens per forward; 0 = the whole prompt at once */
    /* NULL: the model itself; else unmerged LoRA adapters on it
     * (model/lora.h), as the server runs a request naming them */
    const struct fy_lora_unmerged *lora;
    /* Receives the generated text in pieces (never a split UTF-8 sequence,
     * never a part of a stop string). May be NULL. */
    void (*on_text)(const char *text, size_t n, void *ctx);
    /* Each generated token (s->token; s->logprob, s->top_* when asked);
     * the end-of-sequence token is not one. May be NULL. */
    void (*on_token)(const fy_seq *s, void *ctx);
    void *ctx;
} fy_gen_opts;

typedef struct fy_gen_result {
    int prompt_tokens, new_tokens;
    double prefill_s, decode_s;
    int stopped_by;             /* 0 max tokens, 1 end-of-sequence token, 2 stop string */
    const char *finish_reason;  /* "length" or "stop" */
} fy_gen_result;

/* Encodes prompt (no <|bos|>: ferry's training data has none) and generates. */
int fy_generate(fy_model *m, const fy_tokenizer *tok, const char *prompt, const fy_gen_opts *o,
                fy_gen_result *res, fy_err *err);
/* The same from prompt ids[0..n) (1 <= n <= max_position_embeddings). */
int fy_generate_ids(fy_model *m, const fy_tokenizer *tok, const int32_t *ids, int n, const fy_gen_opts *o,
                    fy_gen_result *res, fy_err *err);

#endif
