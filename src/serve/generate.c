/* Text generation (serve/generate.h): encode the prompt, prefill the KV
 * cache, then sample and decode one token at a time, streaming the text
 * and holding back what could still turn out to be the stop string. */
#include "serve/generate.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/strbuf.h"
#include "model/decode.h"

/* Emits what can no longer be part of the stop string; returns 1 when the
 * stop string has appeared (the text before it is emitted, it is not). */
static int flush_safe(fy_strbuf *b, const fy_gen_opts *o, int final) {
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
    fy_strbuf pend = {0}; /* text held back while it could still start the stop string */
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
        if (fy_detok_stream_push(&ds, next, &txt, &tl, err) || fy_strbuf_add(&pend, txt, tl, err)) goto done;
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
        if (fy_detok_stream_flush(&ds, &txt, &tl, err) || fy_strbuf_add(&pend, txt, tl, err)) goto done;
        if (flush_safe(&pend, o, 1)) res->stopped_by = 2;
    }
    rc = 0;
done:
    fy_detok_stream_free(&ds);
    fy_kv_cache_free(&cache, m);
    fy_strbuf_free(&pend);
    free(ids);
    free(logits);
    free(scratch);
    return rc;
}
