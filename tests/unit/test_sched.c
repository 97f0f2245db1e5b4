/* The serving scheduler (serve/sched.h) and one request's generation state
 * (serve/seq.h), on a randomly initialised tiny model:
 * (a) batch invariance at the scheduler level: 32 requests (greedy and
 *     seeded sampling, different prompts, max_tokens, stop strings,
 *     logprobs) submitted together to 4- and 8-slot schedulers with small
 *     prefill chunks and a small KV pool each give the token ids, text,
 *     log-probabilities and finish of their solo fy_generate_ids run;
 * (b) a cancelled request (running, or waiting) frees its slot and KV while
 *     others complete;
 * (c) refusals: too long, queue full, shutting down, bad parameters;
 * (d) stop: grace 0 cuts running requests ("length", a prefix of the solo
 *     tokens) and ends waiting ones; a long grace lets all finish;
 * (e) the stats add up (tokens, requests, histograms, nothing left in use);
 * (g) a model step that fails (an injected backend fault) fails the
 *     requests in it with an error event; the scheduler serves on;
 * (f) seq: stop strings split across tokens are never emitted (checked
 *     against the decoded text at every step), UTF-8 is held back until
 *     complete, log-probabilities equal a direct log-softmax and their
 *     exponentials sum to one, top alternatives in (logit desc, id asc) order. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "core/clock.h"
#include "model/decode.h"
#include "serve/generate.h"
#include "serve/sched.h"
#include "serve/seq.h"
#include "testutil.h"

#define NREQ 32
#define MAXGEN 400
#define CTX 512

static const char *CORPUS =
    "the lamb and the lion lay down by the river, and the king sang. "
    "café crème, naïve façade – 5 € or 7 €; ünïcödé ✓ ok. "
    "we sailed north at dawn; the wind was cold and the sea was grey. ";

typedef struct world {
    fy_backend *be;
    fy_model m;
    fy_tokenizer *tok;
    int V;
} world;

static void make_world(world *w) {
    fy_err err;
    size_t cl = strlen(CORPUS);
    char *text = malloc(cl * 60 + 1);
    text[0] = 0;
    for (int i = 0; i < 60; i++) strcat(text, CORPUS + (i % 5));
    fy_tok_train_opts to = {320, 0, 1};
    if (fy_tokenizer_train_text(text, strlen(text), &to, &w->tok, &err)) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        exit(1);
    }
    free(text);
    w->V = fy_tokenizer_vocab_size(w->tok);
    fy_config c;
    if (fy_config_builtin("tiny", w->V, &c, &err)) exit(1);
    c.hidden_size = 48; c.num_hidden_layers = 2; c.num_attention_heads = 3;
    c.q_lora_rank = 20; c.kv_lora_rank = 18; c.qk_nope_head_dim = 10;
    c.qk_rope_head_dim = 6; c.v_head_dim = 9; c.moe_intermediate_size = 14; c.intermediate_size = 30;
    c.n_routed_experts = 6; c.num_experts_per_tok = 2; c.n_shared_experts = 1;
    c.first_k_dense_replace = 1;
    c.initializer_range = 0.05f;
    c.max_position_embeddings = CTX;
    if (fy_backend_cpu_create(&w->be, &err) || fy_model_create(&w->m, &c, w->be, &err) ||
        fy_model_init_weights(&w->m, 9, &err)) {
        fprintf(stderr, "model: %s\n", err.msg);
        exit(1);
    }
}

static void free_world(world *w) {
    fy_model_free(&w->m);
    fy_backend_destroy(w->be);
    fy_tokenizer_free(w->tok);
}

/* ---- a request and what came out of it ---------------------------------- */

typedef struct spec {
    int32_t prompt[80];
    int n;
    fy_request_params p;
    char stop_buf[FY_SCHED_MAX_STOP][16];
} spec;

typedef struct result {
    int n_ids;
    int32_t ids[MAXGEN];
    float lp[MAXGEN];
    int n_top[MAXGEN];
    int32_t top_tok[MAXGEN][FY_SCHED_MAX_TOP];
    float top_lp[MAXGEN][FY_SCHED_MAX_TOP];
    char text[8192];
    size_t text_len;
    const char *finish;
    int prompt_tokens, completion_tokens, stopped_by, error, done;
} result;

static void add_text(result *r, const char *t, size_t n) {
    if (r->text_len + n < sizeof r->text) {
        memcpy(r->text + r->text_len, t, n);
        r->text_len += n;
        r->text[r->text_len] = 0;
    }
}

static void on_tok(const fy_seq *s, void *ctx) {
    result *r = ctx;
    if (r->n_ids >= MAXGEN) return;
    int i = r->n_ids++;
    r->ids[i] = s->token;
    r->lp[i] = s->p.logprobs ? s->logprob : 0;
    r->n_top[i] = s->n_top;
    memcpy(r->top_tok[i], s->top_token, sizeof r->top_tok[i]);
    memcpy(r->top_lp[i], s->top_logprob, sizeof r->top_lp[i]);
}

static void on_txt(const char *t, size_t n, void *ctx) { add_text(ctx, t, n); }

static fy_seq_params seq_params(const fy_request_params *p) {
    fy_seq_params sp = {p->max_tokens, p->sampler, p->n_stop, {0}, p->logprobs, p->top_logprobs, p->ignore_eos};
    for (int i = 0; i < p->n_stop; i++) sp.stop[i] = p->stop[i];
    return sp;
}

/* The request alone: ferry generate's path. */
static void solo(world *w, const spec *sp, int chunk, result *r) {
    memset(r, 0, sizeof *r);
    fy_gen_opts o = {.p = seq_params(&sp->p), .prefill_chunk = chunk, .on_text = on_txt, .on_token = on_tok, .ctx = r};
    fy_gen_result res;
    fy_err err;
    if (fy_generate_ids(&w->m, w->tok, sp->prompt, sp->n, &o, &res, &err)) {
        fprintf(stderr, "solo: %s\n", err.msg);
        r->error = 1;
        return;
    }
    r->finish = res.finish_reason;
    r->prompt_tokens = res.prompt_tokens;
    r->completion_tokens = res.new_tokens;
    r->stopped_by = res.stopped_by;
    r->done = 1;
}

/* Reads a request's events into r until DONE or ERROR (or timeout). */
static void drain(fy_request *q, result *r, double timeout_s) {
    fy_req_event ev;
    while (fy_request_next(q, timeout_s, &ev)) {
        if (ev.kind == FY_EV_TOKEN && r->n_ids < MAXGEN) {
            int i = r->n_ids++;
            r->ids[i] = ev.token;
            r->lp[i] = ev.logprob;
            r->n_top[i] = ev.n_top;
            memcpy(r->top_tok[i], ev.top_token, sizeof r->top_tok[i]);
            memcpy(r->top_lp[i], ev.top_logprob, sizeof r->top_lp[i]);
        }
        add_text(r, ev.text, ev.text_len);
        if (ev.kind == FY_EV_DONE) {
            r->finish = ev.finish_reason;
            r->prompt_tokens = ev.prompt_tokens;
            r->completion_tokens = ev.completion_tokens;
            r->done = 1;
            return;
        }
        if (ev.kind == FY_EV_ERROR) {
            fprintf(stderr, "request error: %s\n", ev.err);
            r->error = 1;
            return;
        }
    }
}

/* 1 when b is a (served) copy of a (solo): same tokens, text, finish,
 * counts and log-probability bits. */
static int same_result(const result *a, const result *b, int logprobs, char *why, size_t wl) {
    if (a->n_ids != b->n_ids || memcmp(a->ids, b->ids, (size_t)a->n_ids * sizeof a->ids[0]))
        return snprintf(why, wl, "token ids differ (%d vs %d tokens)", a->n_ids, b->n_ids), 0;
    if (a->text_len != b->text_len || memcmp(a->text, b->text, a->text_len))
        return snprintf(why, wl, "text differs: '%.200s' vs '%.200s'", a->text, b->text), 0;
    if (!a->finish || !b->finish || strcmp(a->finish, b->finish))
        return snprintf(why, wl, "finish %s vs %s", a->finish, b->finish), 0;
    if (a->completion_tokens != b->completion_tokens || a->prompt_tokens != b->prompt_tokens)
        return snprintf(why, wl, "usage differs"), 0;
    if (logprobs)
        for (int i = 0; i < a->n_ids; i++)
            if (memcmp(&a->lp[i], &b->lp[i], sizeof a->lp[i]) || a->n_top[i] != b->n_top[i] ||
                memcmp(a->top_tok[i], b->top_tok[i], (size_t)a->n_top[i] * sizeof(int32_t)) ||
                memcmp(a->top_lp[i], b->top_lp[i], (size_t)a->n_top[i] * sizeof(float)))
                return snprintf(why, wl, "logprobs differ at token %d", i), 0;
    return 1;
}

/* The 32 requests: prompts cut from the corpus; greedy or sampled; some
 * with stop strings taken from their own output, some with logprobs. */
static void make_specs(world *w, spec *sp, result *ref) {
    fy_err err;
    for (int i = 0; i < NREQ; i++) {
        spec *s = &sp[i];
        memset(s, 0, sizeof *s);
        size_t cl = strlen(CORPUS), off = (size_t)(i * 11) % 120, len = 3 + (size_t)(i * 7) % 60;
        const char *t = CORPUS + off;
        if (off + len > cl) len = cl - off;
        int32_t *ids;
        size_t n;
        if (fy_tokenizer_encode(w->tok, t, len, &ids, &n, &err) || n < 1) exit(1);
        s->n = n > 80 ? 80 : (int)n;
        memcpy(s->prompt, ids, (size_t)s->n * sizeof *ids);
        free(ids);
        s->p.max_tokens = 8 + (i * 13) % 50;
        if (i % 3 == 0) s->p.sampler = (fy_sampler){0, 0, 1, 0};
        else s->p.sampler = (fy_sampler){0.7f + 0.1f * (i % 6), i % 2 ? 20 : 0, i % 4 == 2 ? 0.9f : 1.0f, (uint64_t)(i * 7 + 1)};
        if (i % 5 == 0) {
            s->p.logprobs = 1;
            s->p.top_logprobs = i % 20 + 1;
        }
        if (i % 4 == 1) { /* a stop string from the middle of the output without it */
            solo(w, s, 0, &ref[i]);
            if (ref[i].text_len >= 8) {
                memcpy(s->stop_buf[0], ref[i].text + ref[i].text_len / 2, 3);
                strcpy(s->stop_buf[1], "\x01zz"); /* never generated */
                s->p.n_stop = 2;
                s->p.stop[0] = s->stop_buf[0];
                s->p.stop[1] = s->stop_buf[1];
            }
        }
        solo(w, s, 0, &ref[i]);
    }
}

/* ---- (a) + (e): batch invariance and the stats --------------------------- */

static void invariance(world *w, const spec *sp, const result *ref, int slots, int chunk, int kv_positions) {
    fy_err err;
    fy_sched *s;
    fy_sched_opts o = {.slots = slots, .ctx = 256, .kv_positions = kv_positions, .block = 8, .prefill_chunk = chunk,
                       .queue_max = 64};
    CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
    fy_request *q[NREQ];
    result *got = calloc(NREQ, sizeof *got);
    for (int i = 0; i < NREQ; i++) {
        int rc = fy_sched_submit(s, sp[i].prompt, sp[i].n, &sp[i].p, &q[i], &err);
        CHECK(rc == FY_SCHED_OK, "submit %d: %d %s", i, rc, err.msg);
    }
    int same = 0, stops = 0, cut_by_stop = 0;
    uint64_t gen = 0, prompt = 0, samples = 0;
    for (int i = 0; i < NREQ; i++) {
        drain(q[i], &got[i], 30);
        fy_request_release(q[i]);
        char why[512] = "";
        int ok = got[i].done && same_result(&ref[i], &got[i], sp[i].p.logprobs, why, sizeof why);
        CHECK(ok, "slots %d chunk %d: request %d differs from its solo run: %s", slots, chunk, i, why);
        same += ok;
        stops += sp[i].p.n_stop > 0;
        cut_by_stop += ref[i].stopped_by == 2;
        gen += (uint64_t)got[i].completion_tokens;
        prompt += (uint64_t)got[i].prompt_tokens;
        samples += (uint64_t)got[i].completion_tokens + (ref[i].stopped_by == 1);
    }
    fy_sched_stats st;
    fy_sched_get_stats(s, &st);
    CHECK(st.requests_total == NREQ && st.requests_done == NREQ && !st.requests_cancelled && !st.requests_failed,
          "requests: total %llu done %llu cancelled %llu failed %llu", (unsigned long long)st.requests_total,
          (unsigned long long)st.requests_done, (unsigned long long)st.requests_cancelled,
          (unsigned long long)st.requests_failed);
    CHECK(st.generated_tokens_total == gen, "generated %llu != sum of completion_tokens %llu",
          (unsigned long long)st.generated_tokens_total, (unsigned long long)gen);
    CHECK(st.prompt_tokens_total == prompt, "prompt tokens %llu != %llu", (unsigned long long)st.prompt_tokens_total,
          (unsigned long long)prompt);
    CHECK(st.ttft.n == NREQ && st.itl.n == samples - NREQ, "histograms: ttft %llu (want %d), itl %llu (want %llu)",
          (unsigned long long)st.ttft.n, NREQ, (unsigned long long)st.itl.n, (unsigned long long)(samples - NREQ));
    uint64_t c1 = 0, c2 = 0;
    for (int b = 0; b <= FY_SCHED_HIST_BUCKETS; b++) c1 += st.ttft.count[b], c2 += st.itl.count[b];
    CHECK(c1 == st.ttft.n && c2 == st.itl.n && st.ttft.sum > 0, "histogram buckets do not add up");
    CHECK(st.busy_slots == 0 && st.queue_depth == 0 && st.kv_positions_used == 0 && st.slots == slots,
          "left in use: busy %d queue %d kv %d", st.busy_slots, st.queue_depth, st.kv_positions_used);
    int total_blocks = ((kv_positions ? kv_positions : slots * 256) + 7) / 8;
    CHECK(st.kv_positions_total == total_blocks * 8, "kv total %d", st.kv_positions_total);
    /* decode steps are shared: far fewer steps than tokens sampled */
    CHECK(st.steps > 0 && (slots < 4 || st.steps < samples), "%llu steps for %llu samples", (unsigned long long)st.steps,
          (unsigned long long)samples);
    printf("sched %d slots, prefill chunk %2d, kv %4d: %d/%d requests identical to solo (%d with stop strings, "
           "%d cut by one), %llu tokens in %llu steps\n",
           slots, chunk, st.kv_positions_total, same, NREQ, stops, cut_by_stop, (unsigned long long)gen,
           (unsigned long long)st.steps);
    fy_sched_free(s);
    free(got);
}

/* A greedy request that runs to max_tokens alone (no eos): for tests that
 * need a request to keep running. */
static void long_spec(world *w, spec *sp, int max_tokens, int which) {
    result *r = malloc(sizeof *r);
    int found = 0;
    for (int t = 0; t < 40 && found <= which; t++) {
        memset(sp, 0, sizeof *sp);
        for (int k = 0; k < 4; k++) sp->prompt[k] = (int32_t)(3 + (t * 37 + k * 11) % (w->V - 3));
        sp->n = 4;
        sp->p.max_tokens = max_tokens;
        solo(w, sp, 0, r);
        if (r->done && r->completion_tokens == max_tokens) found++;
    }
    CHECK(found > which, "no prompt runs to %d tokens", max_tokens);
    free(r);
}

/* ---- (b) cancellation ----------------------------------------------------- */

static int wait_stats(fy_sched *s, uint64_t cancelled, fy_sched_stats *st) {
    double t0 = fy_now_s();
    do {
        fy_sched_get_stats(s, st);
        if (st->requests_cancelled == cancelled && st->busy_slots == 0 && st->queue_depth == 0 &&
            st->kv_positions_used == 0)
            return 1;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    } while (fy_now_s() - t0 < 10);
    return 0;
}

static void cancel(world *w, const spec *sp, const result *ref) {
    fy_err err;
    spec L;
    long_spec(w, &L, MAXGEN, 0);
    int done_running = 0, done_waiting = 0;
    for (int attempt = 0; attempt < 5 && !(done_running && done_waiting); attempt++) {
        fy_sched *s;
        fy_sched_opts o = {.slots = 2, .ctx = CTX, .prefill_chunk = 8};
        CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
        /* running: L in a slot, two others beside it */
        fy_request *ql, *qo[2];
        CHECK(fy_sched_submit(s, L.prompt, L.n, &L.p, &ql, &err) == 0, "submit: %s", err.msg);
        for (int i = 0; i < 2; i++) CHECK(fy_sched_submit(s, sp[i].prompt, sp[i].n, &sp[i].p, &qo[i], &err) == 0, "submit");
        fy_req_event ev;
        int seen = 0;
        while (seen < 3 && fy_request_next(ql, 10, &ev) && ev.kind == FY_EV_TOKEN) seen++;
        fy_request_cancel(ql);
        int ended_first = 0; /* L reached its end before the cancel: try again */
        while (fy_request_next(ql, 10, &ev))
            if (ev.kind != FY_EV_TOKEN) {
                ended_first = ev.kind == FY_EV_DONE;
                CHECK(ev.kind == FY_EV_DONE || strstr(ev.err, "cancelled"), "after cancel: %s", ev.err);
                break;
            }
        fy_request_release(ql);
        for (int i = 0; i < 2; i++) {
            result *got = calloc(1, sizeof *got);
            char why[512] = "";
            drain(qo[i], got, 30);
            fy_request_release(qo[i]);
            CHECK(same_result(&ref[i], got, sp[i].p.logprobs, why, sizeof why), "beside a cancel: %s", why);
            free(got);
        }
        fy_sched_stats st;
        if (!ended_first) {
            CHECK(wait_stats(s, 1, &st), "cancelled running request: cancelled %llu busy %d kv %d",
                  (unsigned long long)st.requests_cancelled, st.busy_slots, st.kv_positions_used);
            CHECK(st.requests_done == 2, "done %llu", (unsigned long long)st.requests_done);
            done_running = 1;
        }
        /* waiting: one slot busy with L, Q queued behind it and cancelled */
        fy_sched_stop(s, 0);
        fy_sched_free(s);
        o.slots = 1;
        CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
        fy_request *qq;
        CHECK(fy_sched_submit(s, L.prompt, L.n, &L.p, &ql, &err) == 0, "submit: %s", err.msg);
        CHECK(fy_sched_submit(s, sp[0].prompt, sp[0].n, &sp[0].p, &qq, &err) == 0, "submit: %s", err.msg);
        fy_request_release(qq); /* cancels it */
        CHECK(fy_request_next(ql, 10, &ev) == 1, "L produced nothing");
        fy_sched_get_stats(s, &st);
        int l_running = st.requests_done == 0;
        fy_request_release(ql);
        if (l_running && wait_stats(s, 2, &st)) done_waiting = 1;
        fy_sched_free(s);
    }
    CHECK(done_running, "a running request was never cancelled in 5 tries");
    CHECK(done_waiting, "a waiting request's cancel was not counted / its slot not freed");
    printf("cancel: running and waiting requests leave their slot and KV; others unaffected\n");
}

/* ---- (c) refusals ---------------------------------------------------------- */

static void refusals(world *w, const spec *sp) {
    fy_err err;
    fy_sched *s;
    fy_sched_opts o = {.slots = 1, .ctx = 64, .prefill_chunk = 16, .queue_max = 1};
    CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
    fy_request *q = NULL;
    fy_request_params p = sp[0].p;
    p.max_tokens = 64 - sp[0].n + 1;
    int rc = fy_sched_submit(s, sp[0].prompt, sp[0].n, &p, &q, &err);
    CHECK(rc == FY_SCHED_TOO_LONG && !q && strstr(err.msg, "by 1"), "too long: rc %d %s", rc, err.msg);
    p.max_tokens = 64 - sp[0].n; /* fits exactly */
    rc = fy_sched_submit(s, sp[0].prompt, sp[0].n, &p, &q, &err);
    CHECK(rc == FY_SCHED_OK, "exact fit refused: %d %s", rc, err.msg);
    result *r = calloc(1, sizeof *r);
    drain(q, r, 30);
    fy_request_release(q);
    CHECK(r->done && r->error == 0, "exact fit did not finish");
    free(r);
    /* bad parameters: plain errors */
    int32_t bad_tok = w->V;
    p = sp[0].p;
    CHECK(fy_sched_submit(s, &bad_tok, 1, &p, &q, &err) == -1 && strstr(err.msg, "not in"), "bad token: %s", err.msg);
    CHECK(fy_sched_submit(s, sp[0].prompt, 0, &p, &q, &err) == -1, "empty prompt accepted");
    p.max_tokens = 0;
    CHECK(fy_sched_submit(s, sp[0].prompt, 1, &p, &q, &err) == -1, "max_tokens 0 accepted");
    p = sp[0].p;
    p.top_logprobs = 21;
    CHECK(fy_sched_submit(s, sp[0].prompt, 1, &p, &q, &err) == -1, "top_logprobs 21 accepted");
    fy_sched_free(s);

    /* BUSY: one slot held by a long request, one waiting, the next refused */
    spec L;
    long_spec(w, &L, MAXGEN, 0);
    int busy = 0;
    for (int attempt = 0; attempt < 5 && !busy; attempt++) {
        fy_sched_opts ob = {.slots = 1, .ctx = CTX, .prefill_chunk = 16, .queue_max = 1};
        CHECK(fy_sched_create(&s, &w->m, w->tok, &ob, &err) == 0, "create: %s", err.msg);
        fy_request *ql, *q1 = NULL, *q2 = NULL;
        fy_req_event ev;
        CHECK(fy_sched_submit(s, L.prompt, L.n, &L.p, &ql, &err) == 0, "submit: %s", err.msg);
        fy_request_next(ql, 10, &ev); /* L is in its slot */
        int r1 = fy_sched_submit(s, sp[1].prompt, sp[1].n, &sp[1].p, &q1, &err);
        int r2 = fy_sched_submit(s, sp[2].prompt, sp[2].n, &sp[2].p, &q2, &err);
        CHECK(r1 == FY_SCHED_OK, "first waiting request refused: %d", r1);
        if (r2 == FY_SCHED_BUSY) {
            busy = 1;
            CHECK(!q2 && strstr(err.msg, "queue"), "busy: %s", err.msg);
        }
        fy_request_release(ql);
        fy_request_release(q1);
        fy_request_release(q2);
        /* STOPPING: after stop, nothing is taken */
        fy_sched_stop(s, 0);
        rc = fy_sched_submit(s, sp[1].prompt, sp[1].n, &sp[1].p, &q1, &err);
        CHECK(rc == FY_SCHED_STOPPING && !q1, "after stop: %d", rc);
        fy_sched_free(s);
    }
    CHECK(busy, "a full queue never answered BUSY");
    printf("refusals: too long (by 1), exact fit runs, bad parameters, busy, stopping\n");
}

/* ---- (d) stop with grace ----------------------------------------------------- */

static void stop_grace(world *w, const spec *sp, const result *ref) {
    fy_err err;
    enum { NL = 6 };
    spec *L = calloc(NL, sizeof *L);
    result *lref = calloc(NL, sizeof *lref), *got = calloc(NL, sizeof *got);
    for (int i = 0; i < NL; i++) {
        long_spec(w, &L[i], 300, i % 3);
        solo(w, &L[i], 0, &lref[i]);
    }
    /* grace 0: running requests are cut, waiting ones end with nothing */
    fy_sched *s;
    fy_sched_opts o = {.slots = 2, .ctx = CTX, .prefill_chunk = 8};
    CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
    fy_request *q[NL];
    for (int i = 0; i < NL; i++) CHECK(fy_sched_submit(s, L[i].prompt, L[i].n, &L[i].p, &q[i], &err) == 0, "submit");
    fy_sched_stop(s, 0);
    int cut = 0, empty = 0;
    for (int i = 0; i < NL; i++) {
        drain(q[i], &got[i], 1);
        fy_request_release(q[i]);
        CHECK(got[i].done && !strcmp(got[i].finish, "length"), "request %d: not ended with length", i);
        CHECK(got[i].n_ids <= lref[i].n_ids && !memcmp(got[i].ids, lref[i].ids, (size_t)got[i].n_ids * 4) &&
                  !strncmp(got[i].text, lref[i].text, got[i].text_len),
              "request %d: the cut output is not a prefix of the solo run", i);
        CHECK(got[i].completion_tokens == got[i].n_ids, "request %d: usage %d for %d tokens", i,
              got[i].completion_tokens, got[i].n_ids);
        cut += got[i].n_ids < lref[i].n_ids;
        empty += got[i].n_ids == 0;
    }
    CHECK(cut == NL && empty >= NL - 2, "grace 0: %d cut, %d never started", cut, empty);
    fy_sched_stats st;
    fy_sched_get_stats(s, &st);
    CHECK(st.requests_done == NL && st.busy_slots == 0 && st.queue_depth == 0 && st.kv_positions_used == 0,
          "after stop: done %llu busy %d queue %d kv %d", (unsigned long long)st.requests_done, st.busy_slots,
          st.queue_depth, st.kv_positions_used);
    fy_sched_free(s);
    /* a long grace: everything running or waiting finishes as alone */
    CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
    fy_request *qa[8];
    for (int i = 0; i < 8; i++) CHECK(fy_sched_submit(s, sp[i].prompt, sp[i].n, &sp[i].p, &qa[i], &err) == 0, "submit");
    fy_sched_stop(s, 120);
    int same = 0;
    for (int i = 0; i < 8; i++) {
        result *r = calloc(1, sizeof *r);
        char why[512] = "";
        drain(qa[i], r, 1);
        fy_request_release(qa[i]);
        same += same_result(&ref[i], r, sp[i].p.logprobs, why, sizeof why);
        free(r);
    }
    CHECK(same == 8, "long grace: %d of 8 finished as alone", same);
    fy_sched_free(s);
    printf("stop: grace 0 cut %d running/waiting requests (prefixes of their solo runs); long grace: %d/8 complete\n",
           cut, same);
    free(L);
    free(lref);
    free(got);
}

/* ---- (g) a failing model step ---------------------------------------------------- */

/* Fault injection: the backend's sync fails once when armed, as a device
 * error would (the ops table is swapped for a copy with sync wrapped). */
static _Atomic int g_fail_sync;
static fy_backend_ops g_ops;
static int (*g_sync)(fy_backend *, fy_err *);

static int failing_sync(fy_backend *be, fy_err *err) {
    int rc = g_sync(be, err);
    if (!rc && g_fail_sync && __atomic_exchange_n(&g_fail_sync, 0, __ATOMIC_SEQ_CST))
        return fy_fail(err, "injected device fault");
    return rc;
}

static void step_error(world *w, const spec *sp, const result *ref) {
    fy_err err;
    g_ops = *w->be->ops;
    g_sync = g_ops.sync;
    g_ops.sync = failing_sync;
    const fy_backend_ops *saved = w->be->ops;
    w->be->ops = &g_ops;
    spec L;
    long_spec(w, &L, 200, 0);
    fy_sched *s;
    fy_sched_opts o = {.slots = 4, .ctx = CTX, .prefill_chunk = 8};
    CHECK(fy_sched_create(&s, &w->m, w->tok, &o, &err) == 0, "create: %s", err.msg);
    fy_request *q[3];
    CHECK(fy_sched_submit(s, L.prompt, L.n, &L.p, &q[0], &err) == 0, "submit: %s", err.msg);
    for (int i = 1; i < 3; i++) CHECK(fy_sched_submit(s, L.prompt, L.n, &L.p, &q[i], &err) == 0, "submit");
    fy_req_event ev;
    CHECK(fy_request_next(q[0], 30, &ev) == 1 && ev.kind == FY_EV_TOKEN, "no first token");
    g_fail_sync = 1;
    int errors = 0, dones = 0;
    for (int i = 0; i < 3; i++) {
        while (fy_request_next(q[i], 30, &ev) && ev.kind == FY_EV_TOKEN) {
        }
        errors += ev.kind == FY_EV_ERROR && strstr(ev.err, "injected");
        dones += ev.kind == FY_EV_DONE;
        fy_request_release(q[i]);
    }
    CHECK(errors >= 1 && errors + dones == 3, "after a failed step: %d errors, %d done", errors, dones);
    /* the scheduler goes on: new requests run as alone */
    int same = 0;
    for (int i = 0; i < 4; i++) {
        fy_request *r;
        result *got = calloc(1, sizeof *got);
        char why[512] = "";
        CHECK(fy_sched_submit(s, sp[i].prompt, sp[i].n, &sp[i].p, &r, &err) == 0, "submit after fault: %s", err.msg);
        drain(r, got, 30);
        fy_request_release(r);
        same += same_result(&ref[i], got, sp[i].p.logprobs, why, sizeof why);
        free(got);
    }
    CHECK(same == 4, "after a failed step, %d of 4 new requests as alone", same);
    fy_sched_stats st;
    fy_sched_get_stats(s, &st);
    CHECK(st.requests_failed == (uint64_t)errors && st.requests_done == (uint64_t)(dones + 4) && st.busy_slots == 0 &&
              st.kv_positions_used == 0,
          "stats after a fault: failed %llu done %llu busy %d kv %d", (unsigned long long)st.requests_failed,
          (unsigned long long)st.requests_done, st.busy_slots, st.kv_positions_used);
    fy_sched_free(s);
    w->be->ops = saved;
    printf("step error: %d requests failed with the step, the scheduler served %d more as alone\n", errors, same);
}

/* ---- (f) seq ------------------------------------------------------------------ */

static int32_t byte_token(const fy_tokenizer *tok, unsigned char b) {
    for (int32_t i = 0; i < fy_tokenizer_vocab_size(tok); i++) {
        size_t n;
        const char *t = fy_tokenizer_token_bytes(tok, i, &n);
        if (t && n == 1 && (unsigned char)t[0] == b) return i;
    }
    return -1;
}

static int utf8_complete(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if (((unsigned char)s[i + j] >> 6) != 2) return 0;
        i += k;
    }
    return 1;
}

/* Drives a greedy seq through the given tokens (one-hot logits) and checks,
 * after every step, that what was emitted is exactly the decoded text so
 * far, less an incomplete UTF-8 tail, less the longest tail that could
 * still start a stop string, and cut at the first stop string. */
static void drive(world *w, const int32_t *toks, int n, const char *const *stops, int n_stop, const char *label) {
    fy_err err;
    fy_seq s;
    fy_seq_params p = {.max_tokens = n, .sampler = {0, 0, 1, 0}, .n_stop = n_stop};
    for (int i = 0; i < n_stop; i++) p.stop[i] = stops[i];
    CHECK(fy_seq_init(&s, w->tok, w->V, 3, &p, &err) == 0, "seq init: %s", err.msg);
    float *l = calloc((size_t)w->V, sizeof *l);
    char emitted[2048] = "";
    size_t en = 0;
    int ok = 1, step = 0;
    for (; step < n && !s.done; step++) {
        memset(l, 0, (size_t)w->V * sizeof *l);
        l[toks[step]] = 10;
        CHECK(fy_seq_step(&s, l, &err) == 0, "%s: step: %s", label, err.msg);
        if (!(s.done && s.stopped_by == 0)) /* cut by length: the partial character comes out as is */
            CHECK(utf8_complete(s.out.p ? s.out.p : "", s.out.n), "%s: step %d emitted a split UTF-8 character",
                  label, step);
        if (s.out.n) memcpy(emitted + en, s.out.p, s.out.n);
        en += s.out.n;
        emitted[en] = 0;
        /* the oracle */
        char *full;
        size_t fl;
        if (fy_tokenizer_decode(w->tok, toks, (size_t)step + 1, FY_DEC_SKIP_SPECIAL, &full, &fl, &err)) exit(1);
        size_t cutat = fl;
        for (int k = 0; k < n_stop; k++) {
            char *h = memmem(full, fl, stops[k], strlen(stops[k]));
            if (h && (size_t)(h - full) < cutat) cutat = (size_t)(h - full);
        }
        size_t want = cutat;
        if (cutat == fl && !s.done) {
            while (want > 0 && !utf8_complete(full, want)) want--;
            size_t hold = 0;
            for (int k = 0; k < n_stop; k++)
                for (size_t j = strlen(stops[k]) - 1; j > hold; j--)
                    if (j <= want && !memcmp(full + want - j, stops[k], j)) {
                        hold = j;
                        break;
                    }
            want -= hold;
        }
        if (en != want || memcmp(emitted, full, want)) {
            if (ok) fprintf(stderr, "%s: step %d: emitted '%s', want '%.*s'\n", label, step, emitted, (int)want, full);
            ok = 0;
        }
        if (cutat < fl) CHECK(s.done && s.stopped_by == 2 && !strcmp(s.finish_reason, "stop"), "%s: stop missed", label);
        free(full);
    }
    CHECK(ok, "%s: emitted text differs from the oracle", label);
    CHECK(s.done, "%s: not done after %d tokens", label, n);
    fy_seq_free(&s);
    free(l);
}

static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (l[i] != l[j]) return l[i] < l[j] ? 1 : -1;
    return (i > j) - (i < j);
}

static void seq_unit(world *w) {
    fy_err err;
    /* Stop strings split across tokens, several per sequence, overlapping. */
    const char *text = "the king sang by the river and the lamb lay down";
    int32_t *ids;
    size_t n;
    if (fy_tokenizer_encode(w->tok, text, strlen(text), &ids, &n, &err)) exit(1);
    const char *st1[] = {"ver a"}, *st2[] = {"xyz", "g by t", "lamb"}, *st3[] = {"zzz"}, *st4[] = {"e r", "ee"},
               *st5[] = {"d", "the river and the lamb lay down!"};
    drive(w, ids, (int)n, st1, 1, "stop 'ver a'");
    drive(w, ids, (int)n, st2, 3, "three stops");
    drive(w, ids, (int)n, st3, 1, "stop never hit");
    drive(w, ids, (int)n, st4, 2, "overlapping prefixes");
    drive(w, ids, (int)n, st5, 2, "a long stop never completed");
    drive(w, ids, (int)n, NULL, 0, "no stop");
    free(ids);
    /* UTF-8: "€ ✓" byte by byte, with a stop string inside a character. */
    const unsigned char bytes[] = {0xE2, 0x82, 0xAC, ' ', 0xE2, 0x9C, 0x93, ' ', 'o', 'k'};
    int32_t bt[10];
    int have = 1;
    for (int i = 0; i < 10; i++) have &= (bt[i] = byte_token(w->tok, bytes[i])) >= 0;
    CHECK(have, "byte tokens missing");
    if (have) {
        const char *s1[] = {"\xE2\x9C\x93 o"}, *s2[] = {"\xE2\x82\xAC"};
        drive(w, bt, 10, NULL, 0, "utf-8 bytes");
        drive(w, bt, 10, s1, 1, "utf-8 + stop");
        drive(w, bt, 10, s2, 1, "stop on a character split over 3 tokens");
        drive(w, bt, 2, NULL, 0, "utf-8 cut by length"); /* the partial character comes out at the end */
    }
    /* eos ends with "stop", not counted; max_tokens ends with "length". */
    fy_seq s;
    fy_seq_params p = {.max_tokens = 5, .sampler = {0, 0, 1, 0}};
    float *l = calloc((size_t)w->V, sizeof *l);
    CHECK(fy_seq_init(&s, w->tok, w->V, 1, &p, &err) == 0, "init: %s", err.msg);
    l[5] = 3;
    fy_seq_step(&s, l, &err);
    l[5] = 0;
    l[fy_tokenizer_eos(w->tok)] = 3;
    fy_seq_step(&s, l, &err);
    CHECK(s.done && s.n_gen == 1 && s.token == -1 && !strcmp(s.finish_reason, "stop") && s.stopped_by == 1,
          "eos: done %d n_gen %d", s.done, s.n_gen);
    fy_seq_free(&s);
    memset(l, 0, (size_t)w->V * sizeof *l);
    l[7] = 1;
    CHECK(fy_seq_init(&s, w->tok, w->V, 1, &p, &err) == 0, "init: %s", err.msg);
    int steps = 0;
    while (!s.done && steps < 10) fy_seq_step(&s, l, &err), steps++;
    CHECK(steps == 5 && s.n_gen == 5 && !strcmp(s.finish_reason, "length"), "length after %d", steps);
    fy_seq_free(&s);
    /* logprobs: a direct log-softmax; exp sums to one; top order with ties. */
    int V = w->V, bad = 0, order_bad = 0;
    double worst = 0, sum_err = 0;
    int32_t *idx = malloc((size_t)V * sizeof *idx);
    for (int trial = 0; trial < 6; trial++) {
        for (int i = 0; i < V; i++)
            l[i] = trial % 2 ? (float)((i * 7 + trial) % 5) : (float)(sin(i * 0.37 + trial) * 4 * trial);
        double mx = -INFINITY, z = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, l[i]);
        for (int i = 0; i < V; i++) z += exp(l[i] - mx);
        double total = 0;
        int32_t tt[FY_SEQ_MAX_TOP];
        float tl[FY_SEQ_MAX_TOP];
        for (int t = 0; t < V; t++) {
            float lp = fy_seq_logprobs(l, V, t, 0, tt, tl);
            double want = (double)l[t] - mx - log(z);
            worst = fmax(worst, fabs(lp - want));
            total += exp(lp);
        }
        sum_err = fmax(sum_err, fabs(total - 1));
        for (int i = 0; i < V; i++) idx[i] = i;
        qsort_r(idx, (size_t)V, sizeof *idx, cmp_desc, l);
        int k = 1 + trial * 3 + (trial == 5 ? 4 : 0);
        fy_seq_logprobs(l, V, 0, k, tt, tl);
        for (int i = 0; i < k; i++) {
            order_bad += tt[i] != idx[i];
            bad += fabs(tl[i] - ((double)l[idx[i]] - mx - log(z))) > 1e-5;
        }
    }
    CHECK(worst < 1e-5 && sum_err < 1e-5 && !bad, "logprobs: worst %.3g, sum off by %.3g, %d top values off", worst,
          sum_err, bad);
    CHECK(order_bad == 0, "top alternatives out of (logit desc, id asc) order: %d", order_bad);
    /* through seq: the sampled token's logprob and top list, k = 20 */
    p = (fy_seq_params){.max_tokens = 2, .sampler = {1.0f, 0, 1, 3}, .logprobs = 1, .top_logprobs = 20};
    CHECK(fy_seq_init(&s, w->tok, w->V, 1, &p, &err) == 0, "init: %s", err.msg);
    for (int i = 0; i < V; i++) l[i] = (float)cos(i * 1.3) * 2;
    fy_seq_step(&s, l, &err);
    int32_t tt[FY_SEQ_MAX_TOP];
    float tl[FY_SEQ_MAX_TOP];
    float lp = fy_seq_logprobs(l, V, s.token >= 0 ? s.token : fy_tokenizer_eos(w->tok), 20, tt, tl);
    CHECK(s.n_top == 20 && s.logprob == lp && !memcmp(tt, s.top_token, sizeof tt) && tl[0] >= tl[19],
          "seq logprobs: n_top %d", s.n_top);
    fy_seq_free(&s);
    /* bad settings */
    p.top_logprobs = 21;
    CHECK(fy_seq_init(&s, w->tok, w->V, 1, &p, &err) != 0, "top 21 accepted");
    p.top_logprobs = 0;
    p.max_tokens = 0;
    CHECK(fy_seq_init(&s, w->tok, w->V, 1, &p, &err) != 0, "max_tokens 0 accepted");
    free(idx);
    free(l);
    printf("seq: stop strings across tokens and UTF-8 held back match the oracle; logprobs within %.1e, sum 1 +- %.1e\n",
           worst, sum_err);
}

int main(void) {
    world w;
    make_world(&w);
    seq_unit(&w);
    spec *sp = calloc(NREQ, sizeof *sp);
    result *ref = calloc(NREQ, sizeof *ref), *r2 = calloc(1, sizeof *r2);
    make_specs(&w, sp, ref);
    /* ferry generate's chunking changes nothing either */
    int same = 0;
    for (int i = 0; i < NREQ; i++) {
        char why[256];
        solo(&w, &sp[i], 1 + i % 5, r2);
        same += same_result(&ref[i], r2, sp[i].p.logprobs, why, sizeof why);
    }
    CHECK(same == NREQ, "generate: %d of %d identical with a chunked prompt", same, NREQ);
    invariance(&w, sp, ref, 4, 5, 0);
    invariance(&w, sp, ref, 8, 16, 3 * 256); /* the pool, not the slots, limits admission */
    invariance(&w, sp, ref, 1, 1, 0);
    invariance(&w, sp, ref, 16, 32, 0); /* 16 slots x V: sampling runs in parallel */
    cancel(&w, sp, ref);
    refusals(&w, sp);
    stop_grace(&w, sp, ref);
    step_error(&w, sp, ref);
    free(sp);
    free(ref);
    free(r2);
    free_world(&w);
    return fy_test_finish("test_sched");
}
