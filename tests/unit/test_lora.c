/* LoRA adapters (model/lora.h): target parsing and refusals, PEFT's init
 * (A within +-1/sqrt(in), B zero, so a fresh adapter leaves the logits
 * bitwise as they were), a frozen base (no base gradient at all), and a
 * finite-difference check of adapted linears' A and B gradients (an
 * attention projection and one routed expert's down_proj, without and with
 * dropout), independent of the PyTorch oracle; and the dropout op: the cpu
 * kernel equals the common host fallback bit for bit, drops about p, and
 * depends on a row's key, not its place in the batch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/lora.h"
#include "model/model.h"
#include "testutil.h"

static fy_config small_config(void) {
    fy_config c = fy_test_grad_config(37);
    c.n_routed_experts = 4;
    return c;
}

static void die(const char *what, fy_err *err) {
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(1);
}

static void test_targets(void) {
    fy_err err;
    unsigned t;
    CHECK(fy_lora_parse_targets("q_a_proj,experts", &t, &err) == 0 && t == (FY_LORA_Q_A | FY_LORA_EXPERTS),
          "two targets: %#x", t);
    CHECK(fy_lora_parse_targets("all", &t, &err) == 0 && t == FY_LORA_ALL, "all: %#x", t);
    CHECK(fy_lora_parse_targets("q_a_proj,gate", &t, &err) != 0 && strstr(err.msg, "'gate'"), "unknown: %s",
          err.msg);
    CHECK(fy_lora_parse_targets("", &t, &err) != 0, "empty list refused");
    char s[256];
    fy_lora_targets_string(FY_LORA_KV_B | FY_LORA_DOWN, s, sizeof s);
    CHECK(!strcmp(s, "kv_b_proj,down_proj"), "string: %s", s);
    fy_lora_name("model.layers.3.self_attn.q_a_proj.weight", 'A', s, sizeof s);
    CHECK(!strcmp(s, "base_model.model.model.layers.3.self_attn.q_a_proj.lora_A.weight"), "name: %s", s);
}

static void test_refusals(fy_backend *be) {
    fy_config c = small_config();
    fy_model m;
    fy_err err;
    if (fy_model_create(&m, &c, be, &err)) die("create", &err);
    fy_lora_config lc = {.rank = 2, .alpha = 4, .targets = FY_LORA_ALL, .dropout = 1.0f};
    CHECK(fy_model_set_lora(&m, &lc, &err) != 0 && strstr(err.msg, "dropout"), "dropout: %s", err.msg);
    lc.dropout = 0, lc.rank = 0;
    CHECK(fy_model_set_lora(&m, &lc, &err) != 0 && strstr(err.msg, "rank"), "rank 0: %s", err.msg);
    lc.rank = 2, lc.targets = FY_LORA_Q; /* q_proj: this model has q_a/q_b */
    CHECK(fy_model_set_lora(&m, &lc, &err) != 0 && strstr(err.msg, "match no linear"), "no match: %s", err.msg);
    CHECK(m.lora == NULL, "a refused config leaves no adapters");
    fy_model_free(&m);
}

/* The loss on (in, lab); need_grad: after a zero_grad, forward and backward. */
static double loss_at(fy_model *m, const int32_t *in, const int32_t *lab, int B, int T, int need_grad) {
    fy_loss l;
    fy_err err;
    if (need_grad) fy_model_zero_grad(m);
    if (fy_model_forward(m, in, lab, B, T, need_grad, &l, &err)) die("forward", &err);
    if (need_grad && fy_model_backward(m, &err)) die("backward", &err);
    return l.total;
}

/* <dL/dX, R> against (L(X + eps R) - L(X - eps R)) / 2 eps for adapter matrix X. */
static void fd_check(fy_model *m, const fy_tensor_info *t, const float *p, const float *g, const int32_t *in,
                     const int32_t *lab, int B, int T) {
    fy_backend *be = m->be;
    size_t P = m->tab.n_params;
    float *R = malloc(t->n * sizeof *R), *wp = malloc(P * sizeof *wp);
    double nrm = 0, analytic = 0, eps = 4e-3;
    for (size_t j = 0; j < t->n; j++) R[j] = fy_rng_normal(99, t->id, j), nrm += (double)R[j] * R[j];
    for (size_t j = 0; j < t->n; j++) R[j] = (float)(R[j] / sqrt(nrm)), analytic += (double)g[t->off + j] * R[j];
    double l[2];
    for (int s = 0; s < 2; s++) {
        memcpy(wp, p, P * sizeof *wp);
        for (size_t j = 0; j < t->n; j++) wp[t->off + j] = p[t->off + j] + (float)((s ? -eps : eps) * R[j]);
        be->ops->upload(be, fy_at(&m->params, 0), wp, P);
        /* a training forward (with dropout), without its backward */
        fy_loss lt;
        fy_err err;
        if (fy_model_forward(m, in, lab, B, T, 1, &lt, &err)) die("forward", &err);
        l[s] = lt.total;
    }
    be->ops->upload(be, fy_at(&m->params, 0), p, P);
    double numeric = (l[0] - l[1]) / (2 * eps), e = fabs(numeric - analytic) / fmax(fabs(analytic), 2e-3);
    CHECK(fabs(analytic) > 1e-3, "%s: a gradient large enough to test (%.3g)", t->name, analytic);
    CHECK(e < 3e-2, "%s: analytic %.6g vs numeric %.6g (rel %.3g)", t->name, analytic, numeric, e);
    printf("p %.2f %-70s analytic %+.6f numeric %+.6f rel %.2e\n", m->lora->cfg.dropout, t->name, analytic, numeric, e);
    free(R);
    free(wp);
}

static void test_dropout_op(fy_backend *be) {
    enum { n = 64, D = 37, ld = 40 };
    float *x = malloc(n * ld * sizeof *x), *a = malloc(n * ld * sizeof *a), *b = malloc(n * ld * sizeof *b);
    for (int i = 0; i < n * ld; i++) x[i] = fy_rng_normal(1, 2, i);
    fy_buf bx, by;
    fy_err err;
    if (fy_be_alloc(be, &bx, n * ld, &err) || fy_be_alloc(be, &by, n * ld, &err)) die("alloc", &err);
    int32_t keys[n];
    for (int i = 0; i < n; i++) keys[i] = (i * 7) % n;
    be->ops->upload(be, fy_at(&bx, 0), x, n * ld);
    be->ops->fill(be, fy_at(&by, 0), 1.0f, n * ld);
    be->ops->dropout(be, n, D, 0.3f, 11, 5, 100, keys, fy_at(&bx, 0), ld, fy_at(&by, 0), ld, 1);
    be->ops->download(be, a, fy_at(&by, 0), n * ld);
    /* the same call through the host fallback */
    fy_backend_ops no_kernel = *be->impl_ops;
    const fy_backend_ops *own = be->impl_ops;
    no_kernel.dropout = NULL;
    be->impl_ops = &no_kernel;
    be->ops->fill(be, fy_at(&by, 0), 1.0f, n * ld);
    be->ops->dropout(be, n, D, 0.3f, 11, 5, 100, keys, fy_at(&bx, 0), ld, fy_at(&by, 0), ld, 1);
    be->ops->download(be, b, fy_at(&by, 0), n * ld);
    be->impl_ops = own;
    CHECK(!memcmp(a, b, n * ld * sizeof *a), "cpu kernel == host fallback");
    int dropped = 0, scaled = 1, gaps = 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ld; j++) {
            float v = a[i * ld + j], s = 1.0f / (1.0f - 0.3f);
            if (j >= D) gaps &= v == 1.0f;
            else if (v == 1.0f) dropped++;
            else scaled &= v == 1.0f + x[i * ld + j] * s;
        }
    CHECK(gaps && scaled, "kept elements are 1 + x / (1 - p), the gaps untouched");
    CHECK(dropped > 0.25 * n * D && dropped < 0.35 * n * D, "dropped %d of %d (p 0.3)", dropped, n * D);
    /* row i with key k gets what row 0 gets with key k */
    be->ops->fill(be, fy_at(&by, 0), 1.0f, D);
    be->ops->dropout(be, 1, D, 0.3f, 11, 5, 100, &keys[9], fy_at(&bx, 9 * ld), ld, fy_at(&by, 0), ld, 1);
    be->ops->download(be, b, fy_at(&by, 0), D);
    int same = 1;
    for (int j = 0; j < D; j++) same &= b[j] == a[9 * ld + j];
    CHECK(same, "a row's mask depends on its key alone");
    CHECK(fy_be_sync(be, &err) == 0, "dropout ops ran: %s", err.msg);
    fy_be_free(be, &bx);
    fy_be_free(be, &by);
    free(x), free(a), free(b);
}

static void test_model(fy_backend *be, float dropout) {
    fy_config c = small_config();
    fy_model m;
    fy_err err;
    int B = 2, T = 5, N = B * T;
    if (fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 7, &err)) die("create", &err);
    int32_t in[10], lab[10];
    for (int i = 0; i < N; i++) {
        in[i] = (int)(fy_rng_u64(3, 1, i) % c.vocab_size);
        lab[i] = i % 5 == 4 ? FY_IGNORE_INDEX : (int)(fy_rng_u64(3, 2, i) % c.vocab_size);
    }
    size_t V = c.vocab_size, nl = (size_t)N * V;
    float *base = malloc(nl * sizeof *base), *adapted = malloc(nl * sizeof *adapted);
    loss_at(&m, in, lab, B, T, 0);
    be->ops->download(be, base, fy_model_logits(&m), nl);

    fy_lora_config lc = {.rank = 3, .alpha = 6, .targets = FY_LORA_Q_B | FY_LORA_KV_B | FY_LORA_EXPERTS,
                         .dropout = dropout};
    if (fy_model_set_lora(&m, &lc, &err) || fy_model_lora_init(&m, 5, &err)) die("lora", &err);
    fy_model_lora_dropout_key(&m, 21, 3, 1000);
    fy_lora *L = m.lora;
    /* q_b and kv_b of the 2 main layers, 3 kinds x 4 experts of layer 1: 16 adapters. */
    CHECK(L->n_ad == 16 && m.tab.n == 32, "%d adapters, %d tensors", L->n_ad, m.tab.n);
    size_t P = m.tab.n_params;
    float *p = malloc(P * sizeof *p), *g = malloc(P * sizeof *g);
    be->ops->download(be, p, fy_at(&m.params, 0), P);
    int a_ok = 1, b_zero = 1, a_spread = 0;
    for (int i = 0; i < m.tab.n; i++) {
        const fy_tensor_info *t = &m.tab.t[i];
        int is_a = strstr(t->name, ".lora_A.") != NULL;
        float bound = 1.0f / sqrtf((float)t->shape[1]);
        for (size_t j = 0; j < t->n; j++) {
            float v = p[t->off + j];
            if (is_a) a_ok &= fabsf(v) <= bound, a_spread |= fabsf(v) > 0.5f * bound;
            else b_zero &= v == 0.0f;
        }
    }
    CHECK(a_ok && a_spread, "A within +-1/sqrt(in) and spread over it");
    CHECK(b_zero, "B starts at zero");
    loss_at(&m, in, lab, B, T, 0);
    be->ops->download(be, adapted, fy_model_logits(&m), nl);
    CHECK(!memcmp(base, adapted, nl * sizeof *base), "a fresh adapter leaves the logits bitwise unchanged");

    /* Random B, then a backward: the base gets nothing, the adapters their FD-checked gradient. */
    for (int i = 0; i < m.tab.n; i++)
        if (strstr(m.tab.t[i].name, ".lora_B."))
            for (size_t j = 0; j < m.tab.t[i].n; j++) p[m.tab.t[i].off + j] = 0.3f * fy_rng_normal(17, i, j);
    be->ops->upload(be, fy_at(&m.params, 0), p, P);
    loss_at(&m, in, lab, B, T, 1);
    be->ops->download(be, g, fy_at(&m.grads, 0), P);
    /* The swap: m's table, params and grads are the adapter block (what a
     * run trains); the frozen base has no gradient buffer at all. */
    CHECK(m.grads.n == m.tab.n_params && m.params.n == m.tab.n_params && m.tab.n_buffers == 0 &&
          m.tab.n_params < L->base_tab.n_params / 4, "the model's block is the adapters' (%zu of %zu)", m.tab.n_params,
          L->base_tab.n_params);
    CHECK(fy_params_find(&L->base_tab, "lm_head.weight") && !fy_params_find(&m.tab, "lm_head.weight"),
          "the base's tensors are in base_tab only");
    /* ... and keeps its router bias (the loads of the forwards above are dropped) */
    size_t nb = L->base_tab.n_buffers;
    float *b0 = malloc(nb * sizeof *b0), *b1 = malloc(nb * sizeof *b1);
    be->ops->download(be, b0, fy_at(&m.buffers, 0), nb);
    if (fy_model_update_bias(&m, &err)) die("update_bias", &err);
    be->ops->download(be, b1, fy_at(&m.buffers, 0), nb);
    CHECK(nb > 0 && !memcmp(b0, b1, nb * sizeof *b0), "the router bias stays as it was");
    free(b0), free(b1);
    const char *fd[] = {"base_model.model.model.layers.0.self_attn.kv_b_proj.lora_A.weight",
                        "base_model.model.model.layers.0.self_attn.kv_b_proj.lora_B.weight",
                        "base_model.model.model.layers.1.mlp.experts.2.down_proj.lora_A.weight",
                        "base_model.model.model.layers.1.mlp.experts.2.down_proj.lora_B.weight"};
    for (int k = 0; k < 4; k++) {
        const fy_tensor_info *t = fy_params_find(&m.tab, fd[k]);
        CHECK(t != NULL, "adapter %s exists", fd[k]);
        if (t) fd_check(&m, t, p, g, in, lab, B, T);
    }
    /* Merged: W += s B A gives the adapted model's evaluation logits (no
     * dropout), and the model is plain again. */
    loss_at(&m, in, lab, B, T, 0);
    be->ops->download(be, adapted, fy_model_logits(&m), nl);
    if (fy_model_lora_merge(&m, &err)) die("merge", &err);
    CHECK(m.lora == NULL, "merge removes the adapters");
    loss_at(&m, in, lab, B, T, 0);
    be->ops->download(be, base, fy_model_logits(&m), nl);
    double num = 0, den = 0;
    for (size_t i = 0; i < nl; i++) num += (double)(base[i] - adapted[i]) * (base[i] - adapted[i]), den += (double)adapted[i] * adapted[i];
    CHECK(sqrt(num / den) < 1e-5, "merged logits within %.2g of the adapted ones", sqrt(num / den));
    free(base); free(adapted); free(p); free(g);
    fy_model_free(&m);
}

int main(void) {
    fy_backend *be;
    fy_err err;
    if (fy_backend_cpu_create(&be, &err)) die("cpu", &err);
    test_targets();
    test_refusals(be);
    test_dropout_op(be);
    test_model(be, 0.0f);
    test_model(be, 0.25f);
    fy_backend_destroy(be);
    return fy_test_finish("test_lora");
}
