/* The continuous-batching scheduler behind `ferry serve` (docs/SERVING.md).
 *
 * One worker thread owns the model. Every step it admits queued requests
 * into free slots (when the KV pool can hold prompt + max_tokens), then runs
 * one fy_model_batch_step over one token of every decoding slot plus a chunk
 * of every prefilling slot's prompt (chunked prefill between decode steps),
 * samples each slot's next token (serve/seq.h: the same code as ferry
 * generate) and hands it to the request's event queue. Requests are
 * reference-counted between the HTTP thread that submitted them and the
 * worker; a cancelled request (client gone) leaves its slot at the next
 * step. Because fy_model_batch_step is batch-invariant, a request's tokens
 * are the same whatever else runs beside it. */
#ifndef FY_SCHED_H
#define FY_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "serve/sampler.h"

#define FY_SCHED_MAX_STOP 4       /* stop strings per request (OpenAI's limit) */
#define FY_SCHED_MAX_TOP 20       /* top_logprobs at most (OpenAI's limit) */
#define FY_SCHED_HIST_BUCKETS 12  /* latency histogram buckets (+Inf separate) */

/* 0 in a field means its default. */
typedef struct fy_sched_opts {
    int slots;           /* requests decoded together (default 4) */
    int ctx;             /* positions per request at most: prompt + max_tokens (default and at most max_position_embeddings) */
    int kv_positions;    /* KV pool size in positions, shared by all slots (default slots * ctx; >= ctx) */
    int block;           /* KV pool block size in positions (default 16) */
    int prefill_chunk;   /* prompt tokens per step, all slots together (default 256) */
    int queue_max;       /* waiting requests at most; more are refused (FY_SCHED_BUSY) (default 256) */
} fy_sched_opts;

typedef struct fy_sched fy_sched;
typedef struct fy_request fy_request;

typedef struct fy_request_params {
    int max_tokens;                       /* >= 1 */
    fy_sampler sampler;                   /* temperature 0 = greedy */
    int n_stop;                           /* stop strings (not emitted; copied at submit) */
    const char *stop[FY_SCHED_MAX_STOP];
    int logprobs;                         /* 1: report each token's log-probability */
    int top_logprobs;                     /* 0..FY_SCHED_MAX_TOP alternatives per token */
    int ignore_eos;                       /* 1: generate past the end-of-sequence token (see below) */
    const struct fy_lora_unmerged *lora;  /* NULL: the bare model; else unmerged LoRA adapters made on it
                                             (model/lora.h) that outlive the scheduler */
} fy_request_params;
/* The end-of-sequence token ends a request ("stop") but is neither an
 * FY_EV_TOKEN nor counted in completion_tokens (as ferry generate). With
 * ignore_eos it is an ordinary token: emitted (its text is empty: special
 * tokens are skipped in text), counted, fed back. */

/* fy_sched_submit's refusals, besides plain errors (-1). */
enum { FY_SCHED_OK = 0, FY_SCHED_TOO_LONG = 1, FY_SCHED_BUSY = 2, FY_SCHED_STOPPING = 3 };

typedef enum {
    FY_EV_TOKEN = 1,   /* one generated token (text may be empty: held back) */
    FY_EV_DONE = 2,    /* finished: finish reason, usage and any final text */
    FY_EV_ERROR = 3,   /* failed: message in err */
} fy_event_kind;

typedef struct fy_req_event {
    fy_event_kind kind;
    /* FY_EV_TOKEN and FY_EV_DONE: text that became final (UTF-8 complete,
     * no part of a stop string); owned by the request, valid until the next
     * fy_request_next or fy_request_release. */
    const char *text;
    size_t text_len;
    /* FY_EV_TOKEN */
    int32_t token;
    float logprob;                        /* log-softmax of the raw logits */
    int n_top;
    int32_t top_token[FY_SCHED_MAX_TOP];
    float top_logprob[FY_SCHED_MAX_TOP];
    /* FY_EV_DONE */
    const char *finish_reason;            /* "stop" (eos or stop string) or "length" (static string) */
    int prompt_tokens, completion_tokens;
    /* FY_EV_ERROR */
    char err[256];
} fy_req_event;

/* Metrics (GET /metrics). Latency buckets are upper bounds in seconds. */
extern const double fy_sched_hist_bounds[FY_SCHED_HIST_BUCKETS];
typedef struct fy_sched_hist {
    uint64_t count[FY_SCHED_HIST_BUCKETS + 1]; /* per bucket, last = +Inf (not cumulative) */
    double sum;
    uint64_t n;
} fy_sched_hist;
/* Counters since create: prompt tokens count when a request is admitted,
 * generated tokens as they are sampled (eos not counted). The histograms
 * count every sampling of a request (eos included): ttft the first, itl
 * the others. queue_depth .. kv_positions_used describe now. */
typedef struct fy_sched_stats {
    uint64_t requests_total, requests_done, requests_cancelled, requests_failed;
    uint64_t prompt_tokens_total, generated_tokens_total;
    int queue_depth, busy_slots, slots;
    int kv_positions_used, kv_positions_total;
    fy_sched_hist ttft;                  /* submit to first token */
    fy_sched_hist itl;                   /* between consecutive tokens of a request */
    uint64_t steps;                      /* batch steps run */
} fy_sched_stats;

/* Starts the worker. m (with its decode weights set) and tok stay owned by
 * the caller and must outlive the scheduler; nothing else may run m while
 * the scheduler is running (its forward buffers are the model's). */
int fy_sched_create(fy_sched **out, fy_model *m, const fy_tokenizer *tok, const fy_sched_opts *o, fy_err *err);
/* Stops admitting (submit returns FY_SCHED_STOPPING); running and queued
 * requests finish, or are cut with finish_reason "length" after grace_s;
 * then the worker exits. Blocks until it has. */
void fy_sched_stop(fy_sched *s, double grace_s);
/* Stops (grace 0) if still running and frees. Requests still held by
 * callers stay valid until released. */
void fy_sched_free(fy_sched *s);

/* Queues a request for the prompt tokens[0..n). FY_SCHED_TOO_LONG: n +
 * max_tokens exceeds ctx (err says by how much); FY_SCHED_BUSY: the queue
 * is full; FY_SCHED_STOPPING: shutting down; -1: other error. On success
 * *out holds one reference for the caller. */
int fy_sched_submit(fy_sched *s, const int32_t *tokens, int n, const fy_request_params *p, fy_request **out,
                    fy_err *err);
/* Waits up to timeout_s (0: do not wait; < 0: no limit) for the request's
 * next event: 1 got one, 0 timed out. After FY_EV_DONE or FY_EV_ERROR there
 * are no more (0 at once). A cancelled request gives the events queued
 * before the cancel, then FY_EV_ERROR "the request was cancelled". */
int fy_request_next(fy_request *r, double timeout_s, fy_req_event *ev);
/* The client is gone: the request leaves its slot (or the queue) at the
 * next step; later events are dropped. Safe to call more than once. */
void fy_request_cancel(fy_request *r);
/* Drops the caller's reference (cancelling the request if not finished). */
void fy_request_release(fy_request *r);

void fy_sched_get_stats(fy_sched *s, fy_sched_stats *st);

#endif
