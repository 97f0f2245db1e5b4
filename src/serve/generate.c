#include "serve/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/decode.h"
#include "core/clock.h"

/* Text held back while it could still be the start of the stop string. */
typedef struct pending {
    char *p;
    size_t n, cap;
} pending;

static int pend_add(pending *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* Emits what can no longer be part of the stop string; returns 1 when the
 * stop string has appeared (the text before it is emitted, it is not). */
static int flush_safe(pending *b, const fy_gen_opts *o, int final) {
    size_t keep = 0, sl = o->stop ? strlen(o->stop) : 0;
    if (sl) {
        char *hit = memmem(b->p, b->n, o->stop, sl);
        if (hit) {
            if (o->on_text && hit > b->p) o->on_text(b->p, (size_t)(hit - b->p), o->ctx);
            b->n = 0;
            return 1;
        }
        /* Keep the longest tail that is a prefix of the stop string. */
        for (size_t k = sl - 1; k > 0 && !final; k--)
            if (k <= b->n && !memcmp(b->p + b->n - k, o->stop, k)) {
                keep = k;
                break;
            }
    }
    if (o->on_text && b->n > keep) o->on_text(b->p, b->n - keep, o->ctx);
    memmove(b->p, b->p + b->n - keep, keep);
    b->n = keep;
    return 0;
}

int fy_generate(fy_model *m, const fy_tokenizer *tok, const char *prompt, const fy_gen_opts *o,
                fy_gen_result *res, fy_err *err) {
    memset(res, 0, sizeof *res);
    const fy_config *c = &m->cfg;
    int V = c->vocab_size;
    int32_t *ids = NULL;
    void *scratch = NULL;
    size_t n = 0;
    float *logits = NULL;
    fy_kv_cache cache = {0};
    fy_detok_stream ds;
    pending pend = {0};
    int rc = -1;
    fy_detok_stream_init(&ds, tok, FY_DEC_SKIP_SPECIAL);

    if (fy_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n, err)) goto done;
    /* No <|bos|> is prepended: ferry's training data has none, so the model
     * has never seen one; a prompt starts as its text does. */
    int32_t eos = fy_tokenizer_eos(tok);
    if (n == 0) {
        fy_fail(err, "the prompt is empty");
        goto done;
    }
    int cap = (int)n + (o->max_new_tokens > 0 ? o->max_new_tokens : 0);
    if ((int)n > c->max_position_embeddings) {
        fy_fail(err, "prompt of %zu tokens exceeds max_position_embeddings %d", n, c->max_position_embeddings);
        goto done;
    }
    if (cap > c->max_position_embeddings) cap = c->max_position_embeddings;
    logits = malloc((size_t)V * sizeof *logits);
    scratch = malloc(fy_sample_scratch_size(V));
    if (!logits || !scratch) { fy_fail(err, "out of memory"); goto done; }
    if (fy_kv_cache_create(&cache, m, cap, err)) goto done;

    double t0 = fy_now_s();
    if (fy_model_prefill(m, &cache, ids, (int)n, logits, err)) goto done;
    res->prompt_tokens = (int)n;
    res->prefill_s = fy_now_s() - t0;
    t0 = fy_now_s();
    for (int i = 0; i < o->max_new_tokens; i++) {
        int32_t next = fy_sample(&o->sampler, logits, V, (uint64_t)cache.len, scratch);
        if (next == eos) {
            res->stopped_by = 1;
            break;
        }
        const char *txt;
        size_t tl;
        if (fy_detok_stream_push(&ds, next, &txt, &tl, err) || pend_add(&pend, txt, tl)) goto done;
        res->new_tokens++;
        if (flush_safe(&pend, o, 0)) {
            res->stopped_by = 2;
            break;
        }
        if (i + 1 == o->max_new_tokens || cache.len >= cache.cap) break;
        if (fy_model_decode(m, &cache, next, logits, err)) goto done;
    }
    res->decode_s = fy_now_s() - t0;
    if (res->stopped_by != 2) {
        const char *txt;
        size_t tl;
        if (fy_detok_stream_flush(&ds, &txt, &tl, err) || pend_add(&pend, txt, tl)) goto done;
        if (flush_safe(&pend, o, 1)) res->stopped_by = 2;
    }
    rc = 0;
done:
    fy_detok_stream_free(&ds);
    fy_kv_cache_free(&cache, m);
    free(pend.p);
    free(ids);
    free(logits);
    free(scratch);
    return rc;
}
