/* One request's generation state, shared by `ferry generate` (generate.c)
 * and the serving scheduler (sched.c), so that a served request's tokens
 * and text are those of ferry generate: after each forward the caller hands
 * the logits of the sequence's last position to fy_seq_step, which samples
 * the next token (serve/sampler.h, drawn at (seed, position)), computes its
 * log-probability and top alternatives when asked, decodes it to UTF-8-safe
 * text, holds back text that could still be the start of a stop string, and
 * decides whether the sequence has ended (end-of-sequence token, a stop
 * string, or max_tokens). */
#ifndef FY_SEQ_H
#define FY_SEQ_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "core/strbuf.h"
#include "io/tokenizer.h"
#include "serve/sampler.h"

#define FY_SEQ_MAX_STOP 4   /* stop strings at most */
#define FY_SEQ_MAX_TOP 20   /* top alternatives at most */

typedef struct fy_seq_params {
    int max_tokens;                       /* >= 1: tokens sampled at most */
    fy_sampler sampler;                   /* temperature 0 = greedy */
    int n_stop;                           /* 0..FY_SEQ_MAX_STOP; empty strings are ignored */
    const char *stop[FY_SEQ_MAX_STOP];    /* copied by fy_seq_init */
    int logprobs;                         /* 1: compute each token's log-probability */
    int top_logprobs;                     /* 0..FY_SEQ_MAX_TOP alternatives (implies logprobs) */
    int ignore_eos;                       /* 1: the end-of-sequence token is just a token (emitted, counted,
                                             fed back); only stop strings and max_tokens end the sequence */
} fy_seq_params;

typedef struct fy_seq {
    /* settings */
    fy_seq_params p;
    char *stop[FY_SEQ_MAX_STOP];          /* own copies; p.stop points at them */
    size_t stop_len[FY_SEQ_MAX_STOP];
    const fy_tokenizer *tok;
    int32_t eos;
    int vocab;
    int n_prompt;
    /* state */
    int n_gen;                            /* tokens generated, eos not counted */
    int done;
    const char *finish_reason;            /* "stop" or "length" once done */
    int stopped_by;                       /* once done: 0 length, 1 eos, 2 stop string */
    /* the last fy_seq_step's result */
    int32_t token;                        /* the sampled token; -1 when it was eos (not emitted) */
    int feed;                             /* 1: feed token to the model for the next logits */
    fy_strbuf out;                        /* text that became final in the last step (may be empty) */
    float logprob;                        /* when logprobs: the token's log-softmax (also for eos) */
    int n_top;
    int32_t top_token[FY_SEQ_MAX_TOP];    /* by descending logit, ties by lower id */
    float top_logprob[FY_SEQ_MAX_TOP];
    /* internals */
    fy_detok_stream ds;
    fy_strbuf pend;                       /* decoded text held back (could start a stop string) */
    void *scratch;                        /* fy_sample's */
} fy_seq;

/* n_prompt: the prompt's length (the first sampled token sits at position
 * n_prompt: fy_sample's draw position). vocab: the logits' length. */
int fy_seq_init(fy_seq *s, const fy_tokenizer *tok, int vocab, int n_prompt, const fy_seq_params *p,
                fy_err *err);
/* Consumes the logits [vocab] after the sequence's last token: samples the
 * next one and updates the result fields above. Call only while !done. */
int fy_seq_step(fy_seq *s, const float *logits, fy_err *err);
/* Ends a sequence that is not done from outside (server shutting down, the
 * context full): finish_reason "length" (or "stop" if the held-back text
 * completes a stop string); what was held back becomes final in s->out. */
int fy_seq_finish(fy_seq *s, fy_err *err);
void fy_seq_free(fy_seq *s);

/* Log-softmax of logits[V] at token, and the k (<= FY_SEQ_MAX_TOP) likeliest
 * tokens with theirs (descending logit, ties by lower id). Exposed for tests. */
float fy_seq_logprobs(const float *logits, int V, int32_t token, int k, int32_t *top_token, float *top_logprob);

#endif
