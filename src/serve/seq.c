/* One request's generation state (serve/seq.h): sample, log-probabilities,
 * UTF-8-safe text with stop strings held back, and the end of the sequence.
 * The same code runs under ferry generate and the server's scheduler. */
#include "serve/seq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int fy_seq_init(fy_seq *s, const fy_tokenizer *tok, int vocab, int n_prompt, const fy_seq_params *p,
                fy_err *err) {
    memset(s, 0, sizeof *s);
    if (p->max_tokens < 1) return fy_fail(err, "max_tokens must be at least 1 (got %d)", p->max_tokens);
    if (p->n_stop < 0 || p->n_stop > FY_SEQ_MAX_STOP)
        return fy_fail(err, "%d stop strings: at most %d", p->n_stop, FY_SEQ_MAX_STOP);
    if (p->top_logprobs < 0 || p->top_logprobs > FY_SEQ_MAX_TOP)
        return fy_fail(err, "top_logprobs %d: must be 0 to %d", p->top_logprobs, FY_SEQ_MAX_TOP);
    if (vocab < 1) return fy_fail(err, "vocabulary of %d", vocab);
    s->p = *p;
    s->p.n_stop = 0;
    for (int i = 0; i < p->n_stop; i++) {
        if (!p->stop[i] || !p->stop[i][0]) continue;
        int j = s->p.n_stop;
        s->stop_len[j] = strlen(p->stop[i]);
        if (!(s->stop[j] = malloc(s->stop_len[j] + 1))) {
            fy_seq_free(s);
            return fy_fail(err, "out of memory");
        }
        memcpy(s->stop[j], p->stop[i], s->stop_len[j] + 1);
        s->p.stop[j] = s->stop[j];
        s->p.n_stop++;
    }
    for (int i = s->p.n_stop; i < FY_SEQ_MAX_STOP; i++) s->p.stop[i] = NULL;
    if (s->p.top_logprobs > 0) s->p.logprobs = 1;
    s->tok = tok;
    s->eos = fy_tokenizer_eos(tok);
    s->vocab = vocab;
    s->n_prompt = n_prompt;
    s->token = -1;
    fy_detok_stream_init(&s->ds, tok, FY_DEC_SKIP_SPECIAL);
    if (!(s->scratch = malloc(fy_sample_scratch_size(vocab)))) {
        fy_seq_free(s);
        return fy_fail(err, "out of memory");
    }
    return 0;
}

void fy_seq_free(fy_seq *s) {
    for (int i = 0; i < FY_SEQ_MAX_STOP; i++) free(s->stop[i]);
    fy_detok_stream_free(&s->ds);
    fy_strbuf_free(&s->pend);
    fy_strbuf_free(&s->out);
    free(s->scratch);
    memset(s, 0, sizeof *s);
}

/* Moves what can no longer be part of a stop string from pend to out;
 * returns 1 when a stop string has appeared (the text before the earliest
 * one is moved, the rest dropped). final: nothing more will come, so no
 * tail is held back. */
static int flush_safe(fy_seq *s, int final, fy_err *err) {
    fy_strbuf *b = &s->pend;
    const char *first = NULL;
    size_t keep = 0;
    for (int i = 0; i < s->p.n_stop; i++) {
        size_t sl = s->stop_len[i];
        const char *hit = b->n ? memmem(b->p, b->n, s->stop[i], sl) : NULL;
        if (hit && (!first || hit < first)) first = hit;
        /* The longest tail that is a proper prefix of this stop string. */
        for (size_t k = sl - 1; k > keep && !final; k--)
            if (k <= b->n && !memcmp(b->p + b->n - k, s->stop[i], k)) {
                keep = k;
                break;
            }
    }
    if (first) {
        if (fy_strbuf_add(&s->out, b->p, (size_t)(first - b->p), err)) return -1;
        b->n = 0;
        return 1;
    }
    if (b->n > keep && fy_strbuf_add(&s->out, b->p, b->n - keep, err)) return -1;
    if (b->n) memmove(b->p, b->p + b->n - keep, keep);
    b->n = keep;
    if (b->p) b->p[b->n] = 0;
    return 0;
}

static void finish(fy_seq *s, int by) {
    s->done = 1;
    s->feed = 0;
    s->stopped_by = by;
    s->finish_reason = by ? "stop" : "length";
}

/* The end of a sequence not cut by a stop string: what the detokenizer and
 * pend hold becomes final (a stop string may still complete in it). */
static int drain(fy_seq *s, int by, fy_err *err) {
    const char *txt;
    size_t tl;
    if (fy_detok_stream_flush(&s->ds, &txt, &tl, err) || fy_strbuf_add(&s->pend, txt, tl, err)) return -1;
    int r = flush_safe(s, 1, err);
    if (r < 0) return -1;
    finish(s, r ? 2 : by);
    return 0;
}

float fy_seq_logprobs(const float *logits, int V, int32_t token, int k, int32_t *top_token, float *top_logprob) {
    double mx = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    double z = 0;
    for (int i = 0; i < V; i++) z += exp((double)logits[i] - mx);
    double lse = mx + log(z);
    if (k > V) k = V;
    if (k > FY_SEQ_MAX_TOP) k = FY_SEQ_MAX_TOP;
    /* Insertion into a sorted top-k list: strictly greater logits go first,
     * so among equal logits the lower id (seen first) stays ahead. */
    int n = 0;
    for (int i = 0; i < V && k > 0; i++) {
        if (n == k && !(logits[i] > logits[top_token[n - 1]])) continue;
        int j = n < k ? n++ : n - 1;
        while (j > 0 && logits[i] > logits[top_token[j - 1]]) {
            top_token[j] = top_token[j - 1];
            j--;
        }
        top_token[j] = i;
    }
    for (int i = 0; i < n; i++) top_logprob[i] = (float)((double)logits[top_token[i]] - lse);
    return (float)((double)logits[token] - lse);
}

int fy_seq_step(fy_seq *s, const float *logits, fy_err *err) {
    if (s->done) return fy_fail(err, "the sequence has ended");
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    /* Finite weights can still overflow (fy_cli_check_weights catches the
     * non-finite ones): sampling from NaN logits would print garbage. */
    for (int i = 0; i < s->vocab; i++)
        if (isnan(logits[i]) || logits[i] == INFINITY)
            return fy_fail(err, "the model's logits are not finite (%g for token %d at position %d): its "
                                "weights or activations overflow", logits[i], i, s->n_prompt + s->n_gen);
    int32_t next = fy_sample(&s->p.sampler, logits, s->vocab, (uint64_t)(s->n_prompt + s->n_gen), s->scratch);
    s->n_top = 0;
    if (s->p.logprobs)
        s->logprob = fy_seq_logprobs(logits, s->vocab, next, s->p.top_logprobs, s->top_token, s->top_logprob);
    if (s->p.logprobs) s->n_top = s->p.top_logprobs < s->vocab ? s->p.top_logprobs : s->vocab;
    if (next == s->eos && !s->p.ignore_eos) {
        s->token = -1;
        return drain(s, 1, err);
    }
    s->token = next;
    s->n_gen++;
    const char *txt;
    size_t tl;
    if (fy_detok_stream_push(&s->ds, next, &txt, &tl, err) || fy_strbuf_add(&s->pend, txt, tl, err)) return -1;
    int r = flush_safe(s, 0, err);
    if (r < 0) return -1;
    if (r) {
        finish(s, 2);
        return 0;
    }
    if (s->n_gen >= s->p.max_tokens) return drain(s, 0, err);
    s->feed = 1;
    return 0;
}

int fy_seq_finish(fy_seq *s, fy_err *err) {
    s->out.n = 0;
    if (s->out.p) s->out.p[0] = 0;
    s->token = -1;
    if (s->done) return 0;
    return drain(s, 0, err);
}
