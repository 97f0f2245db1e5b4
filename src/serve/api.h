/* The OpenAI-compatible API of `ferry serve` (docs/SERVING.md), without the
 * HTTP: parsing request bodies into scheduler requests and building the
 * response bodies (whole JSON, Server-Sent Events chunks, errors, /v1/models,
 * /tokenize, /detokenize, /metrics), all with cJSON. serve/http.c moves the
 * bytes; everything here is a pure function of its inputs, so it is tested
 * without a socket (tests/unit/test_api.c). */
#ifndef FY_API_H
#define FY_API_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "core/strbuf.h"
#include "io/tokenizer.h"
#include "io/chat.h"
#include "serve/sched.h"

/* An error answer: HTTP status and OpenAI's {"error":{message,type,code}}. */
typedef struct fy_api_error {
    int status;
    char type[48];   /* "invalid_request_error", "exceed_context_size_error", ... */
    char code[48];   /* "" = null */
    char msg[768];
} fy_api_error;

/* Fills e and returns -1. */
int fy_api_fail(fy_api_error *e, int status, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* {"error":{...}} (malloc'd; NULL only when out of memory). */
char *fy_api_error_json(const fy_api_error *e);

typedef enum { FY_API_COMPLETION = 0, FY_API_CHAT = 1 } fy_api_kind;

/* A LoRA adapter served beside the base (ferry serve --lora NAME=DIR):
 * a request whose "model" is name gets base + lora. */
typedef struct fy_api_adapter {
    const char *name;                /* its model name in the API */
    const char *root;                /* where it was loaded from (/v1/models' "root") */
    const struct fy_lora_unmerged *lora;
} fy_api_adapter;

/* What a request is checked against. */
typedef struct fy_api_ctx {
    const char *model_id;            /* the base model served (--alias or the directory's name) */
    const fy_tokenizer *tok;
    const fy_chat_template *chat;
    int ctx;                         /* prompt + max_tokens at most */
    int max_tokens;                  /* max_tokens when absent: min(ctx - prompt, this) */
    const fy_api_adapter *adapters;  /* [n_adapters]: the other model names served */
    int n_adapters;
} fy_api_ctx;

/* A parsed /v1/completions or /v1/chat/completions request. */
typedef struct fy_api_req {
    fy_api_kind kind;
    int32_t *tokens;                 /* the prompt, tokenized (malloc'd) */
    int n_tokens;
    int max_tokens;                  /* resolved: >= 1, n_tokens + max_tokens <= ctx */
    fy_request_params params;        /* stop strings point into stop_buf */
    char *stop_buf[FY_SCHED_MAX_STOP];
    int stream, include_usage;
    int logprobs, top_logprobs;      /* completions: logprobs=N gives logprobs 1, top N */
    const char *model;               /* the model name it asked for (the ctx's string): the answer's "model" */
} fy_api_req;

/* Parses, renders (chat) and tokenizes body[0..len). 0, or -1 with e set
 * (400 for bad JSON, a wrong field, n != 1, a bad max_tokens; 400
 * exceed_context_size_error when prompt + max_tokens > ctx; 404 for a
 * model name that is neither the base's nor an adapter's). An adapter's
 * name sets params.lora. */
int fy_api_parse(fy_api_kind kind, const char *body, size_t len, const fy_api_ctx *c, fy_api_req *out,
                 fy_api_error *e);
void fy_api_req_free(fy_api_req *r);

/* One request's answer being built from its scheduler events. */
typedef struct fy_api_job {
    fy_api_kind kind;
    int stream, include_usage, logprobs, top_logprobs;
    char id[64];
    long long created;
    const char *model;
    const fy_tokenizer *tok;
    fy_strbuf text;                  /* the whole completion (not streamed) */
    void *lp;                        /* cJSON logprobs being built (not streamed) */
    size_t offset;                   /* bytes of completion so far (text_offset) */
    int done;
    const char *finish_reason;
    int prompt_tokens, completion_tokens;
} fy_api_job;

/* id_seq makes the id unique within the server ("cmpl-..." / "chatcmpl-..."). */
void fy_api_job_init(fy_api_job *j, const fy_api_req *r, const char *model, const fy_tokenizer *tok,
                     unsigned long long id_seq, long long created);
/* Takes one event. Streaming: appends the SSE lines it makes to sse (a
 * chunk per token with text or logprobs; for FY_EV_DONE the last text, the
 * finish chunk, the usage chunk if asked and "data: [DONE]"). Not
 * streaming: accumulates. FY_EV_ERROR is not for here (http answers 500). */
int fy_api_job_event(fy_api_job *j, const fy_req_event *ev, fy_strbuf *sse, fy_err *err);
/* The whole JSON answer of a finished non-streaming job (malloc'd). */
char *fy_api_job_result(fy_api_job *j);
/* The first streaming chunk of a chat answer: delta {role: assistant}. */
int fy_api_job_start(fy_api_job *j, fy_strbuf *sse, fy_err *err);
void fy_api_job_free(fy_api_job *j);

/* GET /v1/models: the base, then each adapter with "parent" (the base)
 * and "root" (its directory), as vLLM lists LoRA modules. */
char *fy_api_models_json(const fy_api_ctx *c, long long created);
/* POST /tokenize {"content", "add_special"?, "parse_special"?} -> {"tokens"}. */
char *fy_api_tokenize(const fy_tokenizer *tok, const char *body, size_t len, fy_api_error *e);
/* POST /detokenize {"tokens"} -> {"content"}. */
char *fy_api_detokenize(const fy_tokenizer *tok, const char *body, size_t len, fy_api_error *e);
/* POST /apply-template {"messages"} -> {"prompt"} (as llama-server). */
char *fy_api_apply_template(const fy_chat_template *t, const char *body, size_t len, fy_api_error *e);
/* GET /metrics: Prometheus text exposition format 0.0.4; bounds are the
 * histograms' FY_SCHED_HIST_BUCKETS upper bounds (fy_sched_hist_bounds). */
int fy_api_metrics_text(const fy_sched_stats *st, const double *bounds, fy_strbuf *out, fy_err *err);

/* Appends s[0..n) with invalid UTF-8 replaced by U+FFFD (JSON strings
 * must be valid UTF-8). */
int fy_api_utf8_clean(const char *s, size_t n, fy_strbuf *out, fy_err *err);

#endif
