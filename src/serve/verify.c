/* Cross-backend agreement (serve/verify.h): captures one model's logits,
 * losses, gradients, router choices and greedy tokens on a backend, and
 * compares two captures against tolerances with a one-line verdict. */
#include "serve/verify.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/decode.h"
#include "serve/sampler.h"

static int greedy(fy_model *m, const fy_verify_input *in, int32_t *out, fy_err *err) {
    int V = m->cfg.vocab_size;
    fy_kv_cache cache = {0};
    float *logits = malloc((size_t)V * sizeof *logits);
    void *scratch = malloc(fy_sample_scratch_size(V));
    fy_sampler s = {0, 0, 1, 0}; /* temperature 0: argmax, ties to the lowest id */
    int rc = -1;
    if (!logits || !scratch) {
        fy_fail(err, "out of memory");
        goto done;
    }
    if (fy_kv_cache_create(&cache, m, in->n_prompt + in->n_new, err) ||
        fy_model_prefill(m, &cache, in->prompt, in->n_prompt, logits, err))
        goto done;
    for (int i = 0; i < in->n_new; i++) {
        out[i] = fy_sample(&s, logits, V, (uint64_t)cache.len, scratch);
        if (i + 1 < in->n_new && fy_model_decode(m, &cache, out[i], logits, err)) goto done;
    }
    rc = 0;
done:
    fy_kv_cache_free(&cache, m);
    free(logits);
    free(scratch);
    return rc;
}

int fy_verify_capture_run(fy_model *m, const fy_verify_input *in, fy_verify_capture *out, fy_err *err) {
    memset(out, 0, sizeof *out);
    const fy_config *c = &m->cfg;
    size_t N = (size_t)in->B * in->T;
    int K = c->num_experts_per_tok, n_moe = 0;
    for (int li = 0; li < c->num_hidden_layers; li++) n_moe += m->tab.layer[li].moe;
    if (in->n_prompt < 1 || in->n_new < 0 || in->n_prompt + in->n_new > c->max_position_embeddings)
        return fy_fail(err, "prompt of %d tokens + %d new exceeds max_position_embeddings %d (or is empty)",
                       in->n_prompt, in->n_new, c->max_position_embeddings);
    out->n_logits = N * c->vocab_size;
    out->n_grads = m->tab.n_params;
    out->n_route = N * K * n_moe;
    out->n_greedy = in->n_new;
    out->logits = malloc(out->n_logits * sizeof *out->logits);
    out->grads = malloc(out->n_grads * sizeof *out->grads);
    out->route = malloc((out->n_route + 1) * sizeof *out->route);
    out->greedy = malloc(((size_t)in->n_new + 1) * sizeof *out->greedy);
    float *w = malloc((N * K + 1) * sizeof *w);
    if (!out->logits || !out->grads || !out->route || !out->greedy || !w) {
        free(w);
        fy_verify_capture_free(out);
        return fy_fail(err, "out of memory for the host copies (%zu logits, %zu gradients)", out->n_logits,
                       out->n_grads);
    }
    fy_model_zero_grad(m);
    if (fy_model_forward(m, in->inputs, in->labels, in->B, in->T, 1, &out->loss, err) ||
        fy_model_backward(m, err))
        goto fail;
    m->be->ops->download(m->be, out->logits, fy_model_logits(m), out->n_logits);
    m->be->ops->download(m->be, out->grads, fy_at(&m->grads, 0), out->n_grads);
    /* Router choices now: the prefill below replaces the saved activations. */
    int32_t *r = out->route;
    for (int li = 0; li < c->num_hidden_layers; li++) {
        if (!m->tab.layer[li].moe) continue;
        if (fy_model_router_choice(m, li, r, w, err)) goto fail;
        r += N * K;
    }
    if (fy_be_sync(m->be, err) || greedy(m, in, out->greedy, err) || fy_be_sync(m->be, err)) goto fail;
    free(w);
    return 0;
fail:
    free(w);
    fy_verify_capture_free(out);
    return -1;
}

void fy_verify_capture_free(fy_verify_capture *c) {
    free(c->logits);
    free(c->grads);
    free(c->route);
    free(c->greedy);
    memset(c, 0, sizeof *c);
}

/* Error e relative to scale: NaN when a NaN or Inf was seen, 0 for no error,
 * Inf for an error against an all-zero reference. */
static double rel_err(int nan, double e, double scale) {
    return nan ? NAN : e == 0 ? 0 : scale > 0 ? e / scale : INFINITY;
}

static fy_verify_diff diff(const float *x, const float *r, size_t n) {
    fy_verify_diff d = {0, 0, 0};
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)x[i] - r[i]);
        if (!(e == e)) nan = 1; /* NaN or Inf on either side */
        if (e > d.max_abs) d.max_abs = e;
        if (fabs(r[i]) > d.scale) d.scale = fabs(r[i]);
    }
    d.rel = rel_err(nan, d.max_abs, d.scale);
    return d;
}

/* NaN sorts first: it is the worst possible answer. */
static int worse_first(const void *a, const void *b) {
    double x = ((const fy_verify_grad *)a)->d.rel, y = ((const fy_verify_grad *)b)->d.rel;
    if (isnan(x) || isnan(y)) return isnan(y) - isnan(x);
    return (x < y) - (x > y);
}

static int within(double rel, double tol) { return rel <= tol; } /* false for NaN */

int fy_verify_compare(const fy_param_table *tab, const fy_verify_capture *ref, const fy_verify_capture *x,
                      const fy_verify_tol *tol, fy_verify_report *r, fy_err *err) {
    memset(r, 0, sizeof *r);
    if (ref->n_logits != x->n_logits || ref->n_grads != x->n_grads || ref->n_route != x->n_route ||
        ref->n_greedy != x->n_greedy || ref->n_grads != tab->n_params)
        return fy_fail(err, "verify: captures of different shapes (not the same model and input)");
    r->logits = diff(x->logits, ref->logits, ref->n_logits);

    static const char *mtp_names[FY_MAX_MTP] = {"mtp1", "mtp2"};
    r->loss_name[0] = "total", r->loss_ref[0] = ref->loss.total, r->loss_got[0] = x->loss.total;
    r->loss_name[1] = "main", r->loss_ref[1] = ref->loss.main, r->loss_got[1] = x->loss.main;
    r->loss_name[2] = "balance", r->loss_ref[2] = ref->loss.balance, r->loss_got[2] = x->loss.balance;
    r->n_losses = 3;
    for (int k = 0; k < FY_MAX_MTP; k++)
        if (ref->loss.mtp[k] != 0 || x->loss.mtp[k] != 0) {
            r->loss_name[r->n_losses] = mtp_names[k];
            r->loss_ref[r->n_losses] = ref->loss.mtp[k];
            r->loss_got[r->n_losses++] = x->loss.mtp[k];
        }
    for (int i = 0; i < r->n_losses; i++) {
        double d = fabs(r->loss_got[i] - r->loss_ref[i]), s = fabs(r->loss_ref[i]);
        r->loss_rel[i] = rel_err(!(d == d), d, s);
    }

    r->grads = calloc((size_t)tab->n + 1, sizeof *r->grads);
    if (!r->grads) return fy_fail(err, "out of memory");
    for (int i = 0; i < tab->n; i++) {
        const fy_tensor_info *t = &tab->t[i];
        if (t->is_buffer) continue;
        fy_verify_grad *g = &r->grads[r->n_grads++];
        g->tensor = i;
        g->d = diff(x->grads + t->off, ref->grads + t->off, t->n);
        if (!within(g->d.rel, tol->grad)) r->n_grads_over++;
    }
    qsort(r->grads, (size_t)r->n_grads, sizeof *r->grads, worse_first);

    r->route_total = ref->n_route;
    for (size_t i = 0; i < ref->n_route; i++) r->route_diff += ref->route[i] != x->route[i];
    r->greedy_n = ref->n_greedy;
    r->greedy_first_diff = -1;
    for (int i = 0; i < ref->n_greedy && r->greedy_first_diff < 0; i++)
        if (ref->greedy[i] != x->greedy[i]) r->greedy_first_diff = i;

    /* The verdict, and one line naming what was worst in each failed check. */
    size_t n = 0, cap = sizeof r->reason;
#define ADD(...) (n += (size_t)snprintf(r->reason + (n < cap ? n : cap - 1), n < cap ? cap - n : 1, __VA_ARGS__))
    if (!within(r->logits.rel, tol->logits))
        ADD("logits rel err %.3g > %.3g (max abs %.3g at logit scale %.3g)", r->logits.rel, tol->logits,
            r->logits.max_abs, r->logits.scale);
    int worst_loss = -1;
    for (int i = 0; i < r->n_losses; i++)
        if (!within(r->loss_rel[i], tol->logits) &&
            (worst_loss < 0 || !(r->loss_rel[i] <= r->loss_rel[worst_loss])))
            worst_loss = i;
    if (worst_loss >= 0)
        ADD("%sloss %s %.9g vs %.9g (rel %.3g > %.3g)", n ? "; " : "", r->loss_name[worst_loss],
            r->loss_got[worst_loss], r->loss_ref[worst_loss], r->loss_rel[worst_loss], tol->logits);
    if (r->n_grads_over)
        ADD("%sgradient of %s rel err %.3g > %.3g (%d of %d tensors over)", n ? "; " : "",
            tab->t[r->grads[0].tensor].name, r->grads[0].d.rel, tol->grad, r->n_grads_over, r->n_grads);
    if (r->greedy_first_diff >= 0)
        ADD("%sgreedy tokens differ from position %d of %d", n ? "; " : "", r->greedy_first_diff, r->greedy_n);
    /* Near-tied experts can swap under rounding alone; say so, as it explains
     * large errors in a few expert tensors better than a wrong kernel does. */
    if (n && r->route_diff)
        ADD("; %zu of %zu router choices differ", r->route_diff, r->route_total);
#undef ADD
    r->pass = n == 0;
    return 0;
}

void fy_verify_report_free(fy_verify_report *r) {
    free(r->grads);
    memset(r, 0, sizeof *r);
}
