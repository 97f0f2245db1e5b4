/* Generation: the latent-KV decode path (absorbed W_kvb, mla_decode) must
 * give the logits of a full recomputation without cache, at every step; greedy
 * text with the cache equals greedy text recomputed without it; sampling is
 * reproducible for a seed; the stop text stops generation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "model/decode.h"
#include "serve/generate.h"
#include "testutil.h"

static fy_config test_config(int V, int q_lora, int moe) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", V, &c, &err)) exit(1);
    c.hidden_size = 48; c.num_hidden_layers = 3; c.num_attention_heads = 3;
    c.q_lora_rank = q_lora ? 20 : 0; c.kv_lora_rank = 18; c.qk_nope_head_dim = 10;
    c.qk_rope_head_dim = 6; c.v_head_dim = 9; c.moe_intermediate_size = 14; c.intermediate_size = 30;
    c.n_routed_experts = moe ? 6 : 0; c.num_experts_per_tok = 2; c.n_shared_experts = 1;
    c.first_k_dense_replace = moe ? 1 : c.num_hidden_layers;
    c.initializer_range = 0.2f; /* peaked logits, so greedy choices are not near-ties */
    return c;
}

/* Max |a-b| over the vocabulary relative to max |b|. */
static double rel(const float *a, const float *b, int V) {
    double e = 0, s = 0;
    for (int i = 0; i < V; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return e / (s > 0 ? s : 1);
}

static int argmax(const float *x, int V) {
    int b = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void cache_vs_full(const char *label, int q_lora, int moe) {
    const int V = 97, P = 5, STEPS = 40;
    fy_err err;
    fy_backend *be;
    fy_model m;
    fy_config c = test_config(V, q_lora, moe);
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 3, &err)) {
        fprintf(stderr, "%s: %s\n", label, err.msg);
        exit(1);
    }
    int32_t seq[64];
    for (int i = 0; i < P; i++) seq[i] = (i * 31 + 7) % V;
    float *lc = malloc(V * sizeof *lc), *lf = malloc(V * sizeof *lf);
    fy_kv_cache kv;
    CHECK(fy_kv_cache_create(&kv, &m, P + STEPS, &err) == 0, "%s: cache: %s", label, err.msg);
    CHECK(fy_model_prefill(&m, &kv, seq, P, lc, &err) == 0, "%s: prefill: %s", label, err.msg);
    double worst = 0;
    int n = P, same = 1;
    for (int s = 0; s < STEPS; s++) {
        /* No cache: the whole sequence again, logits of the last position. */
        fy_loss loss;
        CHECK(fy_model_forward(&m, seq, NULL, 1, n, 0, &loss, &err) == 0, "%s: %s", label, err.msg);
        be->ops->download(be, lf, fy_add(fy_model_logits(&m), (size_t)(n - 1) * V), V);
        double e = rel(lc, lf, V);
        worst = fmax(worst, e);
        int next = argmax(lc, V);
        same &= next == argmax(lf, V);
        seq[n++] = next;
        if (s + 1 < STEPS)
            CHECK(fy_model_decode(&m, &kv, next, lc, &err) == 0, "%s: decode: %s", label, err.msg);
    }
    CHECK(worst < 1e-4, "%s: cached logits differ from recomputation by %.3g (relative)", label, worst);
    CHECK(same, "%s: greedy tokens with the cache differ from recomputation", label);
    printf("%-18s %d steps, worst logit rel err %.2e, greedy identical: %s\n", label, STEPS, worst,
           same ? "yes" : "no");
    fy_kv_cache_free(&kv, &m);
    free(lc);
    free(lf);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

typedef struct text_buf {
    char s[8192];
    size_t n;
} text_buf;

static void collect(const char *t, size_t n, void *ctx) {
    text_buf *b = ctx;
    if (b->n + n < sizeof b->s) {
        memcpy(b->s + b->n, t, n);
        b->n += n;
        b->s[b->n] = 0;
    }
}

static void sampling(void) {
    fy_err err;
    const char *corpus = "the lamb and the lion lay down by the river, and the king sang. ";
    char text[20000] = "";
    for (int i = 0; i < 200; i++) strcat(text, corpus + (i % 7));
    fy_tok_train_opts to = {300, 0, 1};
    fy_tokenizer *tok;
    CHECK(fy_tokenizer_train_text(text, strlen(text), &to, &tok, &err) == 0, "tokenizer: %s", err.msg);
    fy_backend *be;
    fy_model m;
    fy_config c = test_config(fy_tokenizer_vocab_size(tok), 1, 1);
    c.initializer_range = 0.05f;
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 9, &err))
        exit(1);
    text_buf a = {0}, b = {0}, d = {0}, st = {0};
    fy_gen_result r;
    fy_gen_opts o = {30, {1.0f, 0, 1.0f, 11}, NULL, collect, &a};
    CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
    o.ctx = &b;
    CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
    CHECK(a.n > 0 && !strcmp(a.s, b.s), "same seed gave different text:\n%s\n%s", a.s, b.s);
    o.sampler.seed = 12;
    o.ctx = &d;
    CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
    CHECK(strcmp(a.s, d.s) != 0, "different seeds gave the same text");
    /* A stop text taken from the middle of the first output stops there. */
    if (a.n > 6) {
        char stop[4];
        memcpy(stop, a.s + a.n / 2, 3);
        stop[3] = 0;
        o.sampler.seed = 11;
        o.stop = stop;
        o.ctx = &st;
        CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
        CHECK(r.stopped_by == 2 && !strstr(st.s, stop) && !strncmp(st.s, a.s, st.n),
              "stop text '%s' did not stop generation cleanly: '%s'", stop, st.s);
    }
    CHECK(fy_generate(&m, tok, "", &o, &r, &err) != 0 && strstr(err.msg, "empty"), "empty prompt accepted");
    fy_model_free(&m);
    fy_backend_destroy(be);
    fy_tokenizer_free(tok);
}

int main(void) {
    cache_vs_full("moe, q_lora", 1, 1);
    cache_vs_full("moe, plain q", 0, 1);
    cache_vs_full("dense, q_lora", 1, 0);
    sampling();
    return fy_test_finish("test_generate");
}
