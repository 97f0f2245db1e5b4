/* Text generation (serve/generate.h): the prompt in chunks, then one token
 * per forward, through fy_model_batch_step over a one-sequence KV pool and
 * serve/seq.h's sampling and text handling, as the scheduler runs them. */
#include "serve/generate.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "model/decode.h"

/* Positions a sequence needs: its prompt, and every generated token but the
 * last fed back. */
static int positions_needed(int n, int max_tokens) { return n + (max_tokens > 1 ? max_tokens - 1 : 0); }

static int prefill(fy_model *m, fy_kv_pool *pool, fy_kv_seq *kv, const int32_t *ids, int n, const fy_gen_opts *o,
                   float *logits, fy_err *err) {
    int chunk = o->prefill_chunk;
    if (chunk <= 0 || chunk > n) chunk = n;
    for (int fed = 0; fed < n; fed += chunk) {
        int k = n - fed < chunk ? n - fed : chunk;
        fy_batch_item it = {kv, ids + fed, k, fed + k == n, o->lora};
        if (fy_model_batch_step(m, pool, &it, 1, logits, err)) return -1;
    }
    return 0;
}

static void emit(const fy_seq *s, const fy_gen_opts *o) {
    if (s->token >= 0 && o->on_token) o->on_token(s, o->ctx);
    if (s->out.n && o->on_text) o->on_text(s->out.p, s->out.n, o->ctx);
}

int fy_generate_ids(fy_model *m, const fy_tokenizer *tok, const int32_t *ids, int n, const fy_gen_opts *o,
                    fy_gen_result *res, fy_err *err) {
    memset(res, 0, sizeof *res);
    const int V = m->cfg.vocab_size, max_pos = m->cfg.max_position_embeddings;
    if (n < 1) return fy_fail(err, "the prompt is empty");
    if (n > max_pos) return fy_fail(err, "prompt of %d tokens exceeds max_position_embeddings %d", n, max_pos);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return fy_fail(err, "prompt token %d is %d: not in [0, %d)", i, ids[i], V);
    fy_seq_params p = o->p;
    if (p.max_tokens > max_pos - n + 1) p.max_tokens = max_pos - n + 1;
    fy_seq s;
    if (fy_seq_init(&s, tok, V, n, &p, err)) return -1;
    fy_kv_pool pool = {0};
    fy_kv_seq kv = {0};
    float *logits = malloc((size_t)V * sizeof *logits);
    int rc = -1, have_pool = 0, need = positions_needed(n, p.max_tokens);
    if (!logits) {
        fy_fail(err, "out of memory");
        goto done;
    }
    if (fy_kv_pool_create(&pool, m, need, 16, err)) goto done;
    have_pool = 1;
    if (fy_kv_seq_reserve(&pool, &kv, need, err)) goto done;
    double t0 = fy_now_s();
    if (prefill(m, &pool, &kv, ids, n, o, logits, err)) goto done;
    res->prompt_tokens = n;
    res->prefill_s = fy_now_s() - t0;
    t0 = fy_now_s();
    for (;;) {
        if (fy_seq_step(&s, logits, err)) goto done;
        emit(&s, o);
        if (s.done) break;
        fy_batch_item it = {&kv, &s.token, 1, 1, o->lora};
        if (fy_model_batch_step(m, &pool, &it, 1, logits, err)) goto done;
    }
    res->decode_s = fy_now_s() - t0;
    res->new_tokens = s.n_gen;
    res->stopped_by = s.stopped_by;
    res->finish_reason = s.finish_reason;
    rc = 0;
done:
    if (have_pool) {
        fy_kv_seq_release(&pool, &kv);
        fy_kv_pool_free(&pool, m);
    }
    fy_seq_free(&s);
    free(logits);
    return rc;
}

int fy_generate(fy_model *m, const fy_tokenizer *tok, const char *prompt, const fy_gen_opts *o,
                fy_gen_result *res, fy_err *err) {
    memset(res, 0, sizeof *res);
    int32_t *ids = NULL;
    size_t n = 0;
    if (fy_tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n, err)) return -1;
    int rc = n == 0 ? fy_fail(err, "the prompt is empty")
             : n > (size_t)m->cfg.max_position_embeddings
                 ? fy_fail(err, "prompt of %zu tokens exceeds max_position_embeddings %d", n,
                           m->cfg.max_position_embeddings)
                 : fy_generate_ids(m, tok, ids, (int)n, o, res, err);
    free(ids);
    return rc;
}
