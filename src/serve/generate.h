/* Text generation: encode the prompt, prefill the latent KV cache, then
 * sample and decode token by token, streaming UTF-8-safe text. */
#ifndef FY_GENERATE_H
#define FY_GENERATE_H

#include <stddef.h>

#include "core/err.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "serve/sampler.h"

typedef struct fy_gen_opts {
    int max_new_tokens;
    fy_sampler sampler;
    const char *stop;   /* stop when the output contains this text (not emitted); NULL = none */
    /* Receives the generated text in pieces (never a split UTF-8 sequence). */
    void (*on_text)(const char *text, size_t n, void *ctx);
    void *ctx;
} fy_gen_opts;

typedef struct fy_gen_result {
    int prompt_tokens, new_tokens;
    double prefill_s, decode_s;
    int stopped_by;     /* 0 max tokens, 1 end-of-sequence token, 2 stop text */
} fy_gen_result;

int fy_generate(fy_model *m, const fy_tokenizer *tok, const char *prompt, const fy_gen_opts *o,
                fy_gen_result *res, fy_err *err);

#endif
