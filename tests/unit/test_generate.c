/* Generation: the latent-KV decode path (absorbed W_kvb, mla_decode) must
 * give the logits of a full recomputation without cache, at every step; greedy
 * text with the cache equals greedy text recomputed without it; sampling is
 * reproducible for a seed; the stop text stops generation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
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

static void cache_vs_full(const char *label, int q_lora, int moe, int yarn) {
    const int V = 97, P = 5, STEPS = 40;
    fy_err err;
    fy_backend *be;
    fy_model m;
    fy_config c = test_config(V, q_lora, moe);
    if (yarn) { /* positions run past the original context of 8; ramp inside the pairs */
        c.qk_rope_head_dim = 12;
        c.rope_theta = 100.0;
        fy_rope_scaling y = {.yarn = 1, .factor = 16, .original_max_position_embeddings = 8, .beta_fast = 4,
                             .beta_slow = 0.5, .mscale = 0.707, .mscale_all_dim = 1.0, .truncate = 1};
        c.rope_scaling = y;
    }
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

/* Q8_0 decode weights: teacher-forced on the f32 run's greedy tokens, the
 * quantized decode's logits stay close to f32's (int8 per 32 weights) but
 * are not the same (the copy is used; a flipped expert choice makes the
 * worst step ~7 % off here, hence the 10 % bound); dropping the copy gives f32's bits
 * back. Dimensions are multiples of 32 so that every matrix is quantized. */
static void q8_decode(void) {
    const int V = 96, P = 4, STEPS = 24;
    fy_err err;
    fy_backend *be;
    fy_model m;
    fy_config c;
    if (fy_config_builtin("tiny", V, &c, &err)) exit(1);
    c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 2; c.q_lora_rank = 32;
    c.kv_lora_rank = 32; c.qk_nope_head_dim = 16; c.qk_rope_head_dim = 8; c.v_head_dim = 16;
    c.moe_intermediate_size = 32; c.intermediate_size = 64; c.n_routed_experts = 4;
    c.num_experts_per_tok = 2; c.n_shared_experts = 1; c.first_k_dense_replace = 1;
    c.initializer_range = 0.2f;
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 5, &err)) {
        fprintf(stderr, "q8: %s\n", err.msg);
        exit(1);
    }
    int32_t seq[64];
    for (int i = 0; i < P; i++) seq[i] = (i * 13 + 3) % V;
    float *ref = malloc((size_t)STEPS * V * sizeof *ref), *l = malloc(V * sizeof *l);
    double worst = 0, least = 1;
    for (int pass = 0; pass < 3; pass++) { /* f32, q8_0, f32 again */
        fy_quant q = pass == 1 ? FY_QUANT_Q8_0 : FY_QUANT_F32;
        CHECK(fy_model_set_decode_quant(&m, q, &err) == 0, "q8: set %s: %s", fy_quant_name(q), err.msg);
        if (pass == 1) /* 2 x (q_a q_b kv_a o) + gate up down + shared 3 + 4 experts x 3 + head */
            CHECK(m.dq.n == 8 + 3 + 3 + 12 + 1, "q8: %d matrices quantized, want 27", m.dq.n);
        fy_kv_cache kv;
        CHECK(fy_kv_cache_create(&kv, &m, P + STEPS, &err) == 0, "q8: cache: %s", err.msg);
        CHECK(fy_model_prefill(&m, &kv, seq, P, l, &err) == 0, "q8: prefill: %s", err.msg);
        for (int s = 0; s < STEPS; s++) {
            if (pass == 0) seq[P + s] = argmax(l, V);
            CHECK(fy_model_decode(&m, &kv, seq[P + s], l, &err) == 0, "q8: decode: %s", err.msg);
            if (pass == 0) memcpy(ref + (size_t)s * V, l, V * sizeof *l);
            else if (pass == 1) {
                double e = rel(l, ref + (size_t)s * V, V);
                worst = fmax(worst, e);
                least = fmin(least, e);
            } else
                CHECK(!memcmp(l, ref + (size_t)s * V, V * sizeof *l), "q8: f32 after dropping the copy differs at step %d", s);
        }
        fy_kv_cache_free(&kv, &m);
    }
    CHECK(worst < 0.1, "q8: quantized decode logits off f32 by %.3g (relative)", worst);
    CHECK(least > 1e-6, "q8: quantized logits equal f32's (%.3g): the copy is not used", least);
    fy_quant bad;
    CHECK(fy_quant_parse("q4_k", &bad, &err) != 0 && strstr(err.msg, "q8_0"), "q8: q4_k accepted");
    printf("q8_0 decode        %d steps, logit rel err %.2e .. %.2e vs f32\n", STEPS, least, worst);
    free(ref);
    free(l);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

/* Reference sampler: full sort, top-k, nucleus, inverse CDF (same sums in
 * the same order as fy_sample, so picks must agree exactly). */
static int ref_cmp(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (l[i] != l[j]) return l[i] < l[j] ? 1 : -1;
    return (i > j) - (i < j);
}

static int32_t ref_sample(const fy_sampler *s, const float *l, int V, uint64_t pos, int32_t *idx) {
    int best = argmax(l, V);
    double inv_t = 1.0 / s->temperature, mx = l[best];
    double u = fy_rng_uniform(s->seed, 0x73616d70, pos);
    int k = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    for (int i = 0; i < V; i++) idx[i] = i;
    qsort_r(idx, V, sizeof *idx, ref_cmp, (void *)l);
#define RP(id) exp(((double)l[id] - mx) * inv_t)
    double total = 0;
    if (k == V)
        for (int i = 0; i < V; i++) total += RP(i);
    else
        for (int i = 0; i < k; i++) total += RP(idx[i]);
    int keep = k;
    if (s->top_p > 0 && s->top_p < 1) {
        double acc = 0;
        for (int i = 0; i < k; i++)
            if ((acc += RP(idx[i])) >= s->top_p * total) {
                keep = i + 1;
                break;
            }
    }
    double kept = 0, acc = 0;
    for (int i = 0; i < keep; i++) kept += RP(idx[i]);
    for (int i = 0; i < keep; i++)
        if ((acc += RP(idx[i])) > u * kept) return idx[i];
    return idx[keep - 1];
#undef RP
}

static void sampler_unit(void) {
    enum { V = 500 };
    float l[V];
    void *scr = malloc(fy_sample_scratch_size(V));
    int32_t scr2[V];
    /* Greedy: argmax, ties to the lowest id. */
    for (int i = 0; i < V; i++) l[i] = (float)(i % 7);
    fy_sampler g = {0, 0, 1, 1};
    CHECK(fy_sample(&g, l, V, 0, scr) == 6, "greedy tie should pick id 6");
    /* fy_argmax (16 lanes, combined) against the one-at-a-time loop: few
     * distinct values (many ties), signed zeros, -inf, NaNs, every length
     * up to 80 and the serving vocabularies. */
    {
        static float big[8193];
        const float vals[] = {0.0f, -0.0f, 1.0f, -1.0f, 2.5f, -INFINITY, INFINITY, NAN};
        int same = 1;
        uint64_t st = 12345;
        for (int t = 0; t < 4000; t++) {
            int n = t < 2000 ? 1 + t % 80 : (t % 2 ? 8192 : 8193);
            int nv = 2 + t % 7; /* draw from the first nv values: ties, zeros, infinities, NaNs */
            for (int i = 0; i < n; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                big[i] = (t % 3) ? vals[(st >> 33) % nv] : (float)((st >> 40) % 1000) * 0.01f;
            }
            same &= fy_argmax(big, n) == argmax(big, n);
        }
        big[0] = NAN, big[1] = 5.0f;
        same &= fy_argmax(big, 40) == argmax(big, 40) && fy_argmax(big, 40) == 0;
        CHECK(same, "fy_argmax differs from the one-at-a-time argmax");
    }
    /* top_k = 1 or a tiny top_p is greedy at any temperature and seed. */
    for (int i = 0; i < V; i++) l[i] = (float)sin(i * 1.7) * 3;
    int am = argmax(l, V), ok = 1;
    for (uint64_t p = 0; p < 200; p++) {
        fy_sampler a = {2.0f, 1, 1, p}, b = {2.0f, 0, 1e-6f, p};
        ok &= fy_sample(&a, l, V, p, scr) == am && fy_sample(&b, l, V, p, scr) == am;
    }
    CHECK(ok, "top_k=1 / top_p=1e-6 must be greedy");
    /* Against the full-sort reference: peaked and flat logits (the latter
     * exercise the fall-back to sorting everything), many settings. */
    const float temps[] = {0.3f, 1.0f, 5.0f, 50.0f};
    const int ks[] = {0, 1, 2, 5, 40, V - 1};
    const float ps[] = {1.0f, 0.95f, 0.5f, 0.1f};
    int agree = 1, tried = 0;
    for (int shape = 0; shape < 3; shape++) {
        for (int i = 0; i < V; i++)
            l[i] = shape == 0 ? (float)sin(i * 1.7) * 8 : shape == 1 ? (float)cos(i * 0.37) * 0.2f
                                                                     : (float)(i % 3);
        for (size_t a = 0; a < 4; a++)
            for (size_t b = 0; b < 6; b++)
                for (size_t c = 0; c < 4; c++) {
                    if (ks[b] == 0 && ps[c] >= 1) continue; /* plain temperature: id order */
                    for (uint64_t p = 0; p < 20; p++) {
                        fy_sampler sp = {temps[a], ks[b], ps[c], 7 + shape};
                        int32_t x = fy_sample(&sp, l, V, p, scr), y = ref_sample(&sp, l, V, p, scr2);
                        tried++;
                        if (x != y && agree) {
                            fprintf(stderr, "shape %d T=%g k=%d p=%g pos=%d: %d vs ref %d\n", shape,
                                    temps[a], ks[b], ps[c], (int)p, x, y);
                            agree = 0;
                        }
                    }
                }
    }
    CHECK(agree, "fy_sample differs from the full-sort reference");
    /* Frequencies follow the (renormalized) softmax: plain temperature and
     * top-k = 3 on 5 tokens. */
    float l5[5] = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f};
    for (int mode = 0; mode < 2; mode++) {
        double cnt[5] = {0}, pr[5], z = 0;
        int kk = mode ? 3 : 0;
        for (int i = 0; i < 5; i++) z += pr[i] = (mode && l5[i] < 0.4f) ? 0 : exp(l5[i]);
        const int N = 40000;
        for (int p = 0; p < N; p++) {
            fy_sampler sp = {1.0f, kk, 1.0f, 5};
            cnt[fy_sample(&sp, l5, 5, (uint64_t)p, scr)] += 1.0 / N;
        }
        double worst = 0;
        for (int i = 0; i < 5; i++) worst = fmax(worst, fabs(cnt[i] - pr[i] / z));
        CHECK(worst < 0.01, "mode %d: sampled frequencies off the softmax by %.3f", mode, worst);
    }
    free(scr);
    printf("sampler: %d picks agree with the full-sort reference; frequencies match softmax\n", tried);
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
    fy_gen_opts o = {.p = {.max_tokens = 30, .sampler = {1.0f, 0, 1.0f, 11}}, .on_text = collect, .ctx = &a};
    CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
    o.ctx = &b;
    CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
    CHECK(a.n > 0 && !strcmp(a.s, b.s), "same seed gave different text:\n%s\n%s", a.s, b.s);
    o.p.sampler.seed = 12;
    o.ctx = &d;
    CHECK(fy_generate(&m, tok, "the king", &o, &r, &err) == 0, "generate: %s", err.msg);
    CHECK(strcmp(a.s, d.s) != 0, "different seeds gave the same text");
    /* A stop text taken from the middle of the first output stops there. */
    if (a.n > 6) {
        char stop[4];
        memcpy(stop, a.s + a.n / 2, 3);
        stop[3] = 0;
        o.p.sampler.seed = 11;
        o.p.n_stop = 1;
        o.p.stop[0] = stop;
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
    sampler_unit();
    cache_vs_full("moe, q_lora", 1, 1, 0);
    cache_vs_full("moe, plain q", 0, 1, 0);
    cache_vs_full("dense, q_lora", 1, 0, 0);
    cache_vs_full("moe, q_lora, yarn", 1, 1, 1);
    q8_decode();
    sampling();
    return fy_test_finish("test_generate");
}
