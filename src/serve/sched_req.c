/* The scheduler's request object (serve/sched_req.h): events handed from
 * the worker to the submitter under the request's own mutex, and the
 * reference count that lets either side let go first. */
#include "serve/sched_req.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"

int fy_req_new(fy_request **out, const int32_t *tokens, int n, const fy_request_params *p, fy_err *err) {
    fy_request *r = calloc(1, sizeof *r);
    if (!r) return fy_fail(err, "out of memory");
    r->refs = 2;
    r->p = *p;
    r->n_prompt = n;
    if (!(r->prompt = malloc((size_t)n * sizeof *r->prompt))) goto oom;
    memcpy(r->prompt, tokens, (size_t)n * sizeof *tokens);
    for (int i = 0; i < p->n_stop; i++) {
        const char *st = p->stop[i] ? p->stop[i] : "";
        if (!(r->stop_copy[i] = strdup(st))) goto oom;
        r->p.stop[i] = r->stop_copy[i];
    }
    for (int i = p->n_stop; i < FY_SCHED_MAX_STOP; i++) r->p.stop[i] = NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int bad = pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (bad) goto oom;
    if (pthread_mutex_init(&r->mu, NULL)) {
        pthread_cond_destroy(&r->cv);
        goto oom;
    }
    r->t_submit = fy_now_s();
    *out = r;
    return 0;
oom:
    for (int i = 0; i < FY_SCHED_MAX_STOP; i++) free(r->stop_copy[i]);
    free(r->prompt);
    free(r);
    return fy_fail(err, "out of memory");
}

static void req_destroy(fy_request *r) {
    for (int i = 0; i < r->q_n; i++) free(r->q[(r->q_head + i) % r->q_cap].text);
    free(r->q);
    free(r->cur_text);
    for (int i = 0; i < FY_SCHED_MAX_STOP; i++) free(r->stop_copy[i]);
    free(r->prompt);
    if (r->seq_ready) fy_seq_free(&r->seq);
    free(r->kv.blocks); /* normally released to the pool by the worker already */
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

void fy_req_unref(fy_request *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (!left) req_destroy(r);
}

int fy_req_cancelled(fy_request *r) {
    pthread_mutex_lock(&r->mu);
    int c = r->cancelled;
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* Room for one more event; 0 ok. Under r->mu. */
static int grow(fy_request *r) {
    if (r->q_n < r->q_cap) return 0;
    int cap = r->q_cap ? 2 * r->q_cap : 8;
    fy_req_node *q = malloc((size_t)cap * sizeof *q);
    if (!q) return -1;
    for (int i = 0; i < r->q_n; i++) q[i] = r->q[(r->q_head + i) % r->q_cap];
    free(r->q);
    r->q = q;
    r->q_head = 0;
    r->q_cap = cap;
    return 0;
}

int fy_req_push(fy_request *r, const fy_req_event *ev, const char *text, size_t n) {
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    if (r->cancelled || r->ended) goto out;
    char *t = NULL;
    if (n && (t = malloc(n + 1))) {
        memcpy(t, text, n);
        t[n] = 0;
    }
    if ((n && !t) || grow(r)) {
        free(t);
        r->oom = 1;
        r->ended = 1;
        rc = -1;
        goto out;
    }
    fy_req_node *nd = &r->q[(r->q_head + r->q_n++) % r->q_cap];
    nd->ev = *ev;
    nd->ev.text = NULL;
    nd->ev.text_len = n;
    nd->text = t;
    if (ev->kind != FY_EV_TOKEN) r->ended = 1;
out:
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void fy_req_fail(fy_request *r, const char *msg) {
    fy_req_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = FY_EV_ERROR;
    snprintf(ev.err, sizeof ev.err, "%s", msg);
    fy_req_push(r, &ev, NULL, 0);
}

static void error_event(fy_req_event *ev, const char *msg) {
    memset(ev, 0, sizeof *ev);
    ev->kind = FY_EV_ERROR;
    snprintf(ev->err, sizeof ev->err, "%s", msg);
    ev->text = "";
}

int fy_request_next(fy_request *r, double timeout_s, fy_req_event *ev) {
    struct timespec until;
    double t = fy_now_s() + (timeout_s > 0 ? timeout_s : 0);
    until.tv_sec = (time_t)t;
    until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&r->mu);
    free(r->cur_text);
    r->cur_text = NULL;
    int got = 0;
    while (!r->delivered_end) {
        if (r->q_n) {
            fy_req_node nd = r->q[r->q_head];
            r->q_head = (r->q_head + 1) % r->q_cap;
            r->q_n--;
            *ev = nd.ev;
            r->cur_text = nd.text;
            ev->text = nd.text ? nd.text : "";
            if (ev->kind != FY_EV_TOKEN) r->delivered_end = 1;
            got = 1;
            break;
        }
        if (r->cancelled || r->oom) {
            error_event(ev, r->cancelled ? "the request was cancelled" : "out of memory queueing an event");
            r->delivered_end = 1;
            got = 1;
            break;
        }
        if (timeout_s == 0) break;
        if (timeout_s < 0) pthread_cond_wait(&r->cv, &r->mu);
        else if (pthread_cond_timedwait(&r->cv, &r->mu, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&r->mu);
    return got;
}

void fy_request_cancel(fy_request *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    if (!r->ended) r->cancelled = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void fy_request_release(fy_request *r) {
    if (!r) return;
    fy_request_cancel(r);
    fy_req_unref(r);
}
