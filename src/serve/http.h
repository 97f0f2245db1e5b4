/* The HTTP server of `ferry serve` (docs/SERVING.md): libmicrohttpd, one
 * thread per connection, routing to the OpenAI API (serve/api.h) and the
 * scheduler (serve/sched.h), the chat page at "/", and the limits that make
 * it safe to expose (API key, body size, connections, read deadlines).
 *
 * Life: fy_http_start listens at once and answers /health 503 "loading";
 * fy_http_set_ready hands it the scheduler, and the model routes open;
 * fy_http_quiesce stops accepting (and answers 503 to requests on open
 * connections) while the caller drains the scheduler; fy_http_drain lets
 * the last answers go out; fy_http_stop closes every connection and frees. Signals are the caller's (src/cli). */
#ifndef FY_HTTP_H
#define FY_HTTP_H

#include <stddef.h>

#include "core/err.h"
#include "io/tokenizer.h"
#include "io/chat.h"
#include "serve/api.h"
#include "serve/sched.h"

typedef struct fy_http_opts {
    const char *host;          /* address to bind: "127.0.0.1", "0.0.0.0", "::", "::1", a name */
    int port;                  /* 0 = any free port (fy_http_port says which) */
    const char *api_key;       /* NULL or "": no key needed */
    const char *model_id;      /* the name /v1/models lists and requests must use (or omit) */
    size_t max_body;           /* request bodies above this get 413 */
    int max_connections;       /* open connections at most (one thread each) */
    int max_per_ip;            /* connections per client address at most (0 = no limit) */
    double timeout_s;          /* a request's headers + body must arrive within this; a stalled reader or an
                                  idle keep-alive connection is dropped after it too */
} fy_http_opts;

typedef struct fy_http fy_http;

int fy_http_start(fy_http **out, const fy_http_opts *o, fy_err *err);
/* The port listened on. */
int fy_http_port(const fy_http *h);
/* The model routes open: sched, tok, chat and adapters must outlive the
 * server. A request's prompt + max_tokens is at most ctx; one that gives
 * no max_tokens gets min(ctx - prompt, max_tokens). adapters[0..n): LoRA
 * adapters served beside the base under their own model names. */
void fy_http_set_ready(fy_http *h, fy_sched *sched, const fy_tokenizer *tok, const fy_chat_template *chat, int ctx,
                       int max_tokens, const fy_api_adapter *adapters, int n_adapters);
/* Stops accepting connections; requests still arriving on open ones get 503. */
void fy_http_quiesce(fy_http *h);
/* Waits up to max_s seconds for the answers being written (after the
 * scheduler stopped, every request has its last event: what is left is
 * sending it, so that streams end with [DONE]); the count still unfinished. */
int fy_http_drain(fy_http *h, double max_s);
/* Closes every connection (waiting for their threads) and frees. */
void fy_http_stop(fy_http *h);

#endif
