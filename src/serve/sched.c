/* The continuous-batching scheduler (serve/sched.h): a worker thread owns
 * the model and a paged KV pool; each step it admits waiting requests FIFO
 * into free slots (reserving every position a request can need, so a
 * running request never runs out of KV), runs one fy_model_batch_step over
 * one token of each decoding slot plus prompt chunks (at most prefill_chunk
 * prompt tokens per step, earliest admitted first), and samples with
 * serve/seq.h, pushing each token to its request. */
#include "serve/sched.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "model/decode.h"
#include "serve/sched_req.h"

_Static_assert(FY_SCHED_MAX_STOP == FY_SEQ_MAX_STOP && FY_SCHED_MAX_TOP == FY_SEQ_MAX_TOP,
               "sched.h and seq.h limits differ");

const double fy_sched_hist_bounds[FY_SCHED_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                            0.5,   1.0,  2.5,   5.0,  10.0, 30.0};

struct fy_sched {
    fy_model *m;
    const fy_tokenizer *tok;
    fy_sched_opts o;
    int vocab;
    fy_kv_pool pool;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* work arrived / stop asked (worker waits) */
    pthread_cond_t done_cv;  /* the worker has exited */
    /* under mu */
    fy_request *q_head, *q_tail;
    int q_n;
    int stopping, join_claimed, exited;
    double deadline;         /* stopping: cut what still runs after this */
    fy_sched_stats st;
    /* the worker's alone */
    fy_request **slot;       /* [slots]: NULL when free */
    uint64_t *admit_no;      /* [slots]: admission order, for the prefill budget */
    uint64_t n_admitted;
    fy_batch_item *items;    /* [slots] */
    int *item_slot;          /* [slots] */
    float *logits;           /* [slots * vocab] */
};

static void hist_add(fy_sched_hist *h, double v) {
    int i = 0;
    while (i < FY_SCHED_HIST_BUCKETS && v > fy_sched_hist_bounds[i]) i++;
    h->count[i]++;
    h->sum += v;
    h->n++;
}

/* Positions a request can use: its prompt and every generated token but
 * the last, which is never fed back. */
static int positions_needed(int n, int max_tokens) { return n + max_tokens - 1; }

/* ---- the worker ---------------------------------------------------------- */

static void done_event(fy_request *r, const char *text, size_t n) {
    fy_req_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind = FY_EV_DONE;
    ev.finish_reason = r->seq_ready && r->seq.finish_reason ? r->seq.finish_reason : "length";
    ev.prompt_tokens = r->n_prompt;
    ev.completion_tokens = r->seq_ready ? r->seq.n_gen : 0;
    fy_req_push(r, &ev, text, n);
}

/* Frees slot i's KV and drops the worker's reference. */
static void free_slot(fy_sched *s, int i) {
    fy_request *r = s->slot[i];
    fy_kv_seq_release(&s->pool, &r->kv);
    if (r->seq_ready) fy_seq_free(&r->seq);
    r->seq_ready = 0;
    s->slot[i] = NULL;
    fy_req_unref(r);
}

/* Under s->mu: the figures that describe the worker's state now. */
static void sync_stats(fy_sched *s) {
    int busy = 0;
    for (int i = 0; i < s->o.slots; i++) busy += s->slot[i] != NULL;
    s->st.busy_slots = busy;
    s->st.queue_depth = s->q_n;
    s->st.kv_positions_used = (s->pool.n_blocks - s->pool.n_free) * s->pool.block;
}

static fy_request *queue_pop(fy_sched *s) {
    fy_request *r = s->q_head;
    if (r) {
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        r->next = NULL;
        s->q_n--;
    }
    return r;
}

/* Under s->mu: drops cancelled requests from the queue. */
static void drop_cancelled_queued(fy_sched *s) {
    fy_request **pp = &s->q_head, *prev = NULL;
    while (*pp) {
        fy_request *r = *pp;
        if (!fy_req_cancelled(r)) {
            prev = r;
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        if (s->q_tail == r) s->q_tail = prev;
        s->q_n--;
        s->st.requests_cancelled++;
        fy_req_unref(r);
    }
}

/* Under s->mu: moves waiting requests FIFO into free slots while the pool
 * can hold all the positions each may need; the first that does not fit
 * waits (no overtaking). */
static void admit(fy_sched *s) {
    for (int i = 0; i < s->o.slots && s->q_head; i++) {
        if (s->slot[i]) continue;
        fy_request *r = s->q_head;
        fy_err err;
        if (fy_kv_seq_reserve(&s->pool, &r->kv, positions_needed(r->n_prompt, r->p.max_tokens), &err)) return;
        queue_pop(s);
        fy_seq_params sp = {r->p.max_tokens, r->p.sampler, r->p.n_stop, {0}, r->p.logprobs, r->p.top_logprobs,
                            r->p.ignore_eos};
        for (int k = 0; k < r->p.n_stop; k++) sp.stop[k] = r->p.stop[k];
        if (fy_seq_init(&r->seq, s->tok, s->vocab, r->n_prompt, &sp, &err)) {
            fy_kv_seq_release(&s->pool, &r->kv);
            fy_req_fail(r, err.msg);
            s->st.requests_failed++;
            fy_req_unref(r);
            i--; /* the slot is still free */
            continue;
        }
        r->seq_ready = 1;
        r->fed = 0;
        s->slot[i] = r;
        s->admit_no[i] = s->n_admitted++;
        s->st.prompt_tokens_total += (uint64_t)r->n_prompt;
    }
}

/* Under s->mu: the grace period is over: every running request ends now
 * with what it has ("length"), every waiting one with nothing. */
static void cut_all(fy_sched *s) {
    for (int i = 0; i < s->o.slots; i++) {
        fy_request *r = s->slot[i];
        if (!r) continue;
        fy_err err;
        if (fy_req_cancelled(r)) {
            s->st.requests_cancelled++;
        } else if (fy_seq_finish(&r->seq, &err)) {
            fy_req_fail(r, err.msg);
            s->st.requests_failed++;
        } else {
            done_event(r, r->seq.out.p, r->seq.out.n);
            s->st.requests_done++;
        }
        free_slot(s, i);
    }
    fy_request *r;
    while ((r = queue_pop(s))) {
        if (fy_req_cancelled(r)) {
            s->st.requests_cancelled++;
        } else {
            done_event(r, NULL, 0);
            s->st.requests_done++;
        }
        fy_req_unref(r);
    }
}

/* Slot i has sampled (fy_seq_step): its token and, when the sequence
 * ended, its DONE go to the request, its latency to the histograms. Under
 * s->mu, so that the counters already include a request when its client
 * sees it end. */
static void deliver(fy_sched *s, int i, double now) {
    fy_request *r = s->slot[i];
    hist_add(r->t_last ? &s->st.itl : &s->st.ttft, now - (r->t_last ? r->t_last : r->t_submit));
    r->t_last = now;
    const fy_seq *q = &r->seq;
    if (q->token >= 0) {
        fy_req_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind = FY_EV_TOKEN;
        ev.token = q->token;
        ev.logprob = q->logprob;
        ev.n_top = q->n_top;
        memcpy(ev.top_token, q->top_token, sizeof ev.top_token);
        memcpy(ev.top_logprob, q->top_logprob, sizeof ev.top_logprob);
        s->st.generated_tokens_total++;
        fy_req_push(r, &ev, q->out.p, q->out.n);
    }
    if (q->done) {
        s->st.requests_done++;
        if (q->token >= 0) done_event(r, NULL, 0);
        else done_event(r, q->out.p, q->out.n);
        free_slot(s, i);
    }
}

/* The batch of this step: one token per decoding slot, then prompt chunks
 * within the prefill budget, earliest admitted first. Returns the count. */
static int build_batch(fy_sched *s, int *chunk) {
    int n = 0, budget = s->o.prefill_chunk;
    for (int i = 0; i < s->o.slots; i++) {
        fy_request *r = s->slot[i];
        if (!r || r->fed < r->n_prompt) continue;
        s->items[n] = (fy_batch_item){&r->kv, &r->seq.token, 1, 1, r->p.lora};
        chunk[n] = 0;
        s->item_slot[n++] = i;
    }
    uint64_t after = 0;
    int any = 0;
    while (budget > 0) { /* the prefilling slot admitted next after `after` */
        int best = -1;
        for (int i = 0; i < s->o.slots; i++) {
            fy_request *r = s->slot[i];
            if (!r || r->fed >= r->n_prompt || (any && s->admit_no[i] <= after)) continue;
            if (best < 0 || s->admit_no[i] < s->admit_no[best]) best = i;
        }
        if (best < 0) break;
        fy_request *r = s->slot[best];
        int k = r->n_prompt - r->fed < budget ? r->n_prompt - r->fed : budget;
        s->items[n] = (fy_batch_item){&r->kv, r->prompt + r->fed, k, r->fed + k == r->n_prompt, r->p.lora};
        chunk[n] = k;
        s->item_slot[n++] = best;
        budget -= k;
        after = s->admit_no[best];
        any = 1;
    }
    return n;
}

/* One step: leaves cancelled slots, runs the batch and samples without
 * s->mu (the slots and the pool are the worker's alone, so submitters and
 * readers of the stats never wait for a forward or for sampling), then
 * hands out the events and updates the counters under it. */
static void step(fy_sched *s) {
    const int slots = s->o.slots;
    int chunk[slots], sampled[slots], lidx[slots];
    uint64_t cancelled = 0;
    for (int i = 0; i < slots; i++)
        if (s->slot[i] && fy_req_cancelled(s->slot[i])) {
            cancelled++;
            free_slot(s, i);
        }
    int n = build_batch(s, chunk), n_want = 0;
    fy_err err, serr;
    int rc = n ? fy_model_batch_step(s->m, &s->pool, s->items, n, s->logits, &err) : 0;
    double now = fy_now_s();
    for (int j = 0; j < n; j++) {
        sampled[j] = 0;
        lidx[j] = !rc && s->items[j].want_logits ? n_want++ : -1;
        if (!rc) s->slot[s->item_slot[j]]->fed += chunk[j];
    }
    /* Each slot samples from its own logits with its own state: in
     * parallel when the vocabulary makes it worth it (same tokens). */
#pragma omp parallel for schedule(dynamic) if (n_want > 1 && (int64_t)n_want * s->vocab >= (1 << 12))
    for (int j = 0; j < n; j++) {
        if (lidx[j] < 0) continue;
        fy_err e;
        if (fy_seq_step(&s->slot[s->item_slot[j]]->seq, s->logits + (size_t)lidx[j] * s->vocab, &e)) {
            sampled[j] = -1;
#pragma omp critical(fy_sched_err)
            serr = e;
        } else {
            sampled[j] = 1;
        }
    }
    pthread_mutex_lock(&s->mu);
    s->st.steps += n > 0;
    s->st.requests_cancelled += cancelled;
    for (int j = 0; j < n; j++) {
        int i = s->item_slot[j];
        if (rc || sampled[j] < 0) { /* the model step (or sampling) failed: the request cannot go on */
            s->st.requests_failed++;
            fy_req_fail(s->slot[i], rc ? err.msg : serr.msg);
            free_slot(s, i);
        } else if (sampled[j]) {
            deliver(s, i, now);
        }
    }
    sync_stats(s);
    pthread_mutex_unlock(&s->mu);
}

static int any_active(const fy_sched *s) {
    for (int i = 0; i < s->o.slots; i++)
        if (s->slot[i]) return 1;
    return 0;
}

static void *worker(void *arg) {
    fy_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        drop_cancelled_queued(s);
        if (s->stopping && fy_now_s() >= s->deadline) {
            cut_all(s);
            break;
        }
        admit(s);
        sync_stats(s);
        if (!any_active(s)) {
            if (s->q_head) { /* cannot happen: submit refuses what the pool cannot hold */
                fy_request *r = queue_pop(s);
                fy_req_fail(r, "the KV pool cannot hold this request");
                s->st.requests_failed++;
                fy_req_unref(r);
                continue;
            }
            if (s->stopping) break;
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        step(s);
        pthread_mutex_lock(&s->mu);
    }
    sync_stats(s);
    s->exited = 1;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- the API ------------------------------------------------------------- */

static int check_opts(fy_sched_opts *o, const fy_model *m, fy_err *err) {
    int max_pos = m->cfg.max_position_embeddings;
    if (!o->slots) o->slots = 4;
    if (!o->ctx) o->ctx = max_pos;
    if (!o->block) o->block = 16;
    if (!o->kv_positions) o->kv_positions = o->slots * o->ctx;
    if (!o->prefill_chunk) o->prefill_chunk = 256;
    if (!o->queue_max) o->queue_max = 256;
    if (o->slots < 1 || o->slots > 1024) return fy_fail(err, "slots %d: must be 1 to 1024", o->slots);
    if (o->ctx < 2 || o->ctx > max_pos)
        return fy_fail(err, "ctx %d: must be 2 to max_position_embeddings %d", o->ctx, max_pos);
    if (o->block < 1 || o->block > 4096) return fy_fail(err, "block %d: must be 1 to 4096", o->block);
    if (o->kv_positions < o->ctx)
        return fy_fail(err, "kv_positions %d is less than ctx %d: a full-length request could never run",
                       o->kv_positions, o->ctx);
    if (o->prefill_chunk < 1) return fy_fail(err, "prefill_chunk %d: must be at least 1", o->prefill_chunk);
    if (o->queue_max < 1) return fy_fail(err, "queue_max %d: must be at least 1", o->queue_max);
    return 0;
}

static void sched_destroy(fy_sched *s) {
    if (s->pool.n_blocks) fy_kv_pool_free(&s->pool, s->m);
    free(s->slot);
    free(s->admit_no);
    free(s->items);
    free(s->item_slot);
    free(s->logits);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->done_cv);
    free(s);
}

int fy_sched_create(fy_sched **out, fy_model *m, const fy_tokenizer *tok, const fy_sched_opts *o, fy_err *err) {
    *out = NULL;
    fy_sched_opts oo = *o;
    if (check_opts(&oo, m, err)) return -1;
    fy_sched *s = calloc(1, sizeof *s);
    if (!s) return fy_fail(err, "out of memory");
    s->m = m;
    s->tok = tok;
    s->o = oo;
    s->vocab = m->cfg.vocab_size;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    int n = oo.slots;
    s->slot = calloc((size_t)n, sizeof *s->slot);
    s->admit_no = calloc((size_t)n, sizeof *s->admit_no);
    s->items = calloc((size_t)n, sizeof *s->items);
    s->item_slot = calloc((size_t)n, sizeof *s->item_slot);
    s->logits = malloc((size_t)n * (size_t)s->vocab * sizeof *s->logits);
    if (!s->slot || !s->admit_no || !s->items || !s->item_slot || !s->logits) {
        sched_destroy(s);
        return fy_fail(err, "out of memory");
    }
    if (fy_kv_pool_create(&s->pool, m, oo.kv_positions, oo.block, err)) {
        memset(&s->pool, 0, sizeof s->pool);
        sched_destroy(s);
        return -1;
    }
    s->st.slots = n;
    s->st.kv_positions_total = s->pool.n_blocks * s->pool.block;
    if (pthread_create(&s->thread, NULL, worker, s)) {
        sched_destroy(s);
        return fy_fail(err, "cannot start the scheduler thread");
    }
    *out = s;
    return 0;
}

void fy_sched_stop(fy_sched *s, double grace_s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    double d = fy_now_s() + (grace_s > 0 ? grace_s : 0);
    if (!s->stopping || d < s->deadline) s->deadline = d;
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    int me = !s->join_claimed;
    s->join_claimed = 1;
    if (!me)
        while (!s->exited) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (me) pthread_join(s->thread, NULL);
}

void fy_sched_free(fy_sched *s) {
    if (!s) return;
    fy_sched_stop(s, 0);
    sched_destroy(s);
}

static int check_params(const fy_sched *s, const int32_t *tokens, int n, const fy_request_params *p, fy_err *err) {
    if (n < 1) return fy_fail(err, "the prompt is empty");
    if (p->max_tokens < 1) return fy_fail(err, "max_tokens must be at least 1 (got %d)", p->max_tokens);
    if (p->n_stop < 0 || p->n_stop > FY_SCHED_MAX_STOP)
        return fy_fail(err, "%d stop strings: at most %d", p->n_stop, FY_SCHED_MAX_STOP);
    if (p->top_logprobs < 0 || p->top_logprobs > FY_SCHED_MAX_TOP)
        return fy_fail(err, "top_logprobs %d: must be 0 to %d", p->top_logprobs, FY_SCHED_MAX_TOP);
    if (!(p->sampler.temperature >= 0) || !(p->sampler.top_p >= 0 && p->sampler.top_p <= 1) || p->sampler.top_k < 0)
        return fy_fail(err, "bad sampling settings: temperature %g, top_p %g, top_k %d", p->sampler.temperature,
                       p->sampler.top_p, p->sampler.top_k);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->vocab)
            return fy_fail(err, "prompt token %d is %d: not in [0, %d)", i, tokens[i], s->vocab);
    return 0;
}

int fy_sched_submit(fy_sched *s, const int32_t *tokens, int n, const fy_request_params *p, fy_request **out,
                    fy_err *err) {
    *out = NULL;
    if (check_params(s, tokens, n, p, err)) return -1;
    if ((int64_t)n + p->max_tokens > s->o.ctx) {
        fy_fail(err, "prompt (%d tokens) + max_tokens (%d) = %lld exceeds the context of %d by %lld", n,
                p->max_tokens, (long long)n + p->max_tokens, s->o.ctx, (long long)n + p->max_tokens - s->o.ctx);
        return FY_SCHED_TOO_LONG;
    }
    fy_request *r;
    if (fy_req_new(&r, tokens, n, p, err)) return -1;
    pthread_mutex_lock(&s->mu);
    int rc = s->stopping ? FY_SCHED_STOPPING : s->q_n >= s->o.queue_max ? FY_SCHED_BUSY : FY_SCHED_OK;
    if (rc == FY_SCHED_OK) {
        if (s->q_tail) s->q_tail->next = r;
        else s->q_head = r;
        s->q_tail = r;
        s->q_n++;
        s->st.requests_total++;
        s->st.queue_depth = s->q_n;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != FY_SCHED_OK) {
        fy_fail(err, rc == FY_SCHED_STOPPING ? "the server is shutting down"
                                             : "the queue is full (%d waiting)", s->o.queue_max);
        fy_req_unref(r);
        fy_req_unref(r);
        return rc;
    }
    *out = r;
    return 0;
}

void fy_sched_get_stats(fy_sched *s, fy_sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    pthread_mutex_unlock(&s->mu);
}
