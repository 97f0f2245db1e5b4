/* The scheduler's request object (serve/sched.h's fy_request), internal to
 * sched*.c: its prompt and settings, its event queue (mutex + condvar: the
 * worker pushes, the submitter waits in fy_request_next), its reference
 * count (submitter + worker) and the worker-side generation state. */
#ifndef FY_SCHED_REQ_H
#define FY_SCHED_REQ_H

#include <pthread.h>
#include <stdint.h>

#include "model/decode.h"
#include "serve/sched.h"
#include "serve/seq.h"

typedef struct fy_req_node {
    fy_req_event ev;  /* ev.text is NULL here; the text is in `text` */
    char *text;       /* malloc'd, NUL-terminated; NULL when empty */
} fy_req_node;

struct fy_request {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                      /* under mu */
    int cancelled;                 /* under mu */
    int ended;                     /* under mu: DONE or ERROR queued (or cancelled) */
    int delivered_end;             /* under mu: the caller has seen the last event */
    int oom;                       /* under mu: an event could not be queued: report an error */
    fy_req_node *q;                /* under mu: ring of pending events */
    int q_head, q_n, q_cap;
    char *cur_text;                /* under mu: the text of the event last returned */

    /* Set at submit, then read-only. */
    int32_t *prompt;
    int n_prompt;
    fy_request_params p;           /* stop[] point at stop_copy */
    char *stop_copy[FY_SCHED_MAX_STOP];
    double t_submit;

    /* The worker's alone. */
    struct fy_request *next;       /* waiting queue link (under the scheduler's mutex) */
    fy_seq seq;
    int seq_ready;
    fy_kv_seq kv;
    int fed;                       /* prompt tokens run so far */
    double t_last;                 /* when the last token was sampled (0: none yet) */
};

/* A new request with two references (caller and worker). */
int fy_req_new(fy_request **out, const int32_t *tokens, int n, const fy_request_params *p, fy_err *err);
/* Drops one reference; the last frees it. */
void fy_req_unref(fy_request *r);
/* 1 when the request was cancelled (the worker's check). */
int fy_req_cancelled(fy_request *r);
/* Queues an event (copying text[0..n)) and wakes the waiter; dropped when
 * cancelled or already ended. DONE and ERROR end the request. Returns -1
 * only on out of memory (then the request is ended with an error event
 * that needs no allocation). */
int fy_req_push(fy_request *r, const fy_req_event *ev, const char *text, size_t n);
/* Ends the request with an FY_EV_ERROR carrying msg. */
void fy_req_fail(fy_request *r, const char *msg);

#endif
