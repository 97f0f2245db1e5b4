/* Growing a host model's vocabulary (ferry train --add-special-tokens):
 * the embedding and lm_head gain a row per new token, each the mean of that
 * tensor's existing rows, so a new token starts as an "average" token whose
 * logit is neither favoured nor starved (the usual choice, e.g. Hewitt's
 * note on new-token init). The MTP modules share both tensors (params.c),
 * so nothing else grows; every other tensor and buffer is copied as is. */
#include <stdlib.h>
#include <string.h>

#include "interop/host.h"

/* dst[V_old..V_new) = the mean of src's V_old rows of d (summed in double);
 * dst[0..V_old) = src's rows bit for bit. */
static int grow_rows(float *dst, const float *src, int V_old, int V_new, int d) {
    double *sum = calloc((size_t)d, sizeof *sum);
    if (!sum) return -1;
    memcpy(dst, src, (size_t)V_old * d * sizeof *dst);
    for (int v = 0; v < V_old; v++)
        for (int j = 0; j < d; j++) sum[j] += src[(size_t)v * d + j];
    for (int v = V_old; v < V_new; v++)
        for (int j = 0; j < d; j++) dst[(size_t)v * d + j] = (float)(sum[j] / V_old);
    free(sum);
    return 0;
}

/* Copies every tensor of `old` into g (same names, same shapes but the
 * vocabulary rows), growing the embedding and head. */
static int copy_grown(const fy_host_model *old, fy_host_model *g, fy_err *err) {
    int V0 = old->cfg.vocab_size, V1 = g->cfg.vocab_size, d = g->cfg.hidden_size;
    for (int i = 0; i < g->tab.n; i++) {
        const fy_tensor_info *t = &g->tab.t[i], *s = fy_params_find(&old->tab, t->name);
        if (!s) return fy_fail(err, "growing the vocabulary: %s missing from the model", t->name);
        float *dst = (t->is_buffer ? g->buffers : g->params) + t->off;
        const float *src = (s->is_buffer ? old->buffers : old->params) + s->off;
        if (!t->is_buffer && (t->off == g->tab.embed || t->off == g->tab.head)) {
            if (s->n != (size_t)V0 * d || t->n != (size_t)V1 * d)
                return fy_fail(err, "growing the vocabulary: %s is not [vocab, hidden]", t->name);
            if (grow_rows(dst, src, V0, V1, d)) return fy_fail(err, "out of memory");
        } else {
            if (s->n != t->n) return fy_fail(err, "growing the vocabulary: %s changed size", t->name);
            memcpy(dst, src, t->n * sizeof *dst);
        }
    }
    return 0;
}

int fy_host_grow_vocab(fy_host_model *h, fy_tokenizer *tok, fy_err *err) {
    int V1 = fy_tokenizer_vocab_size(tok);
    if (V1 <= h->cfg.vocab_size)
        return fy_fail(err, "growing the vocabulary: %d tokens, the model has %d", V1, h->cfg.vocab_size);
    fy_config c = h->cfg;
    c.vocab_size = V1;
    fy_host_model g;
    if (fy_host_alloc(&g, &c, err)) return -1;
    if (copy_grown(h, &g, err)) {
        fy_host_free(&g);
        return -1;
    }
    fy_host_free(h);
    g.tok = tok;
    *h = g;
    return 0;
}
