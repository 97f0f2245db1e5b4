/* Unmerged LoRA adapters in serving's batch step (model/lora.h,
 * fy_model_lora_detach; model/decode.h, fy_batch_item.lora): (a) rows of
 * adapters A, B and none side by side in one batch, prompts in chunks,
 * give bitwise the logits each sequence gets alone one token at a time
 * (f32 and Q8_0 weights; B adapts kv_b_proj, which attention absorbs);
 * (b) the unmerged logits equal those of the same adapters merged into the
 * base (fy_model_lora_merge: another rounding) within 1e-5 of the largest
 * logit, and differ from the base's (else (a) proves little); (c) an
 * adapter made on another base is refused. `test_lora_serve opencl` runs it
 * on OpenCL (no mla_paged there: the gathered attention), exit 77
 * (skipped) where this ferry has no OpenCL or no device. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/decode.h"
#include "model/lora.h"
#include "testutil.h"

#define V 97
#define NSEQ 4
#define MAXLEN 30

static void die(const char *what, fy_err *err) {
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(1);
}

/* test_batch.c's shape: q_lora, MoE of 6 experts (top 2) + 1 shared. */
static fy_config config(void) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", V, &c, &err)) die("config", &err);
    c.hidden_size = 64; c.num_hidden_layers = 3; c.num_attention_heads = 3;
    c.q_lora_rank = 32; c.kv_lora_rank = 18; c.qk_nope_head_dim = 10;
    c.qk_rope_head_dim = 6; c.v_head_dim = 9; c.moe_intermediate_size = 32; c.intermediate_size = 64;
    c.n_routed_experts = 6; c.num_experts_per_tok = 2; c.n_shared_experts = 1;
    c.first_k_dense_replace = 1;
    c.initializer_range = 0.2f;
    return c;
}

static void make_base(fy_backend *be, fy_model *m) {
    fy_config c = config();
    fy_err err;
    if (fy_model_create(m, &c, be, &err) || fy_model_init_weights(m, 5, &err)) die("model", &err);
}

/* Adapters on m with every A and B drawn from `seed` (B nonzero, unlike
 * PEFT's init, so that they change the logits). */
static void put_adapters(fy_model *m, const fy_lora_config *lc, uint64_t seed) {
    fy_err err;
    if (fy_model_set_lora(m, lc, &err)) die("set_lora", &err);
    float *h = malloc(m->tab.n_params * sizeof *h);
    if (!h) exit(1);
    for (size_t i = 0; i < m->tab.n_params; i++) h[i] = 0.3f * (2.0f * fy_rng_uniform(seed, 1, i) - 1.0f);
    m->be->ops->upload(m->be, fy_at(&m->params, 0), h, m->tab.n_params);
    free(h);
    if (fy_be_sync(m->be, &err)) die("upload", &err);
}

static int seq_len(int s) { return 12 + 5 * s; }
static int32_t seq_tok(int s, int t) { return (int32_t)((t * 29 + s * 13 + 3) % V); }

/* lg[(s * MAXLEN + t) * V]: the logits after token t of sequence s. */
typedef struct logits {
    float *lg;
    char have[NSEQ][MAXLEN];
} logits;

static float *at(logits *r, int s, int t) { return r->lg + ((size_t)s * MAXLEN + t) * V; }

/* Batched: every sequence in every step (its adapter ad[s]), the prompt's
 * first 3 + 2s tokens as one chunk, then one token a step; items listed in
 * reverse. Alone (only >= 0): that sequence one token at a time. */
static void run(fy_model *m, const fy_lora_unmerged *const *ad, int only, logits *out) {
    fy_err err;
    fy_kv_pool pool;
    fy_kv_seq seq[NSEQ];
    memset(seq, 0, sizeof seq);
    memset(out->have, 0, sizeof out->have);
    int32_t tok[NSEQ][MAXLEN];
    if (fy_kv_pool_create(&pool, m, NSEQ * 2 * MAXLEN, 8, &err)) die("pool", &err);
    for (int s = 0; s < NSEQ; s++) {
        for (int t = 0; t < seq_len(s); t++) tok[s][t] = seq_tok(s, t);
        if (fy_kv_seq_reserve(&pool, &seq[s], seq_len(s), &err)) die("reserve", &err);
    }
    float *lg = malloc((size_t)NSEQ * V * sizeof *lg);
    int fed[NSEQ] = {0};
    for (int step = 0;; step++) {
        fy_batch_item it[NSEQ];
        int n = 0, pos[NSEQ], who[NSEQ];
        for (int s = NSEQ - 1; s >= 0; s--) {
            if ((only >= 0 && s != only) || fed[s] == seq_len(s)) continue;
            int k = only < 0 && step == 0 ? 3 + 2 * s : 1;
            it[n] = (fy_batch_item){&seq[s], tok[s] + fed[s], k, 1, ad[s]};
            who[n] = s, pos[n++] = fed[s] + k - 1;
            fed[s] += k;
        }
        if (!n) break;
        if (fy_model_batch_step(m, &pool, it, n, lg, &err)) die("batch step", &err);
        for (int j = 0; j < n; j++) {
            memcpy(at(out, who[j], pos[j]), lg + (size_t)j * V, V * sizeof *lg);
            out->have[who[j]][pos[j]] = 1;
        }
    }
    free(lg);
    for (int s = 0; s < NSEQ; s++) fy_kv_seq_release(&pool, &seq[s]);
    fy_kv_pool_free(&pool, m);
}

static const fy_lora_config cfg_a = {4, 8.0f, FY_LORA_ALL, 0};
static const fy_lora_config cfg_b = {2, 3.0f, FY_LORA_Q_A | FY_LORA_KV_B | FY_LORA_O | FY_LORA_EXPERTS, 0};

/* (a): each sequence alone vs all in one batch, bit for bit. */
static void invariance(fy_model *m, const fy_lora_unmerged *const *ad, const char *what) {
    logits alone = {calloc((size_t)NSEQ * MAXLEN * V, sizeof(float)), {{0}}};
    logits batch = {calloc((size_t)NSEQ * MAXLEN * V, sizeof(float)), {{0}}};
    logits tmp = {calloc((size_t)NSEQ * MAXLEN * V, sizeof(float)), {{0}}};
    for (int s = 0; s < NSEQ; s++) {
        run(m, ad, s, &tmp);
        memcpy(at(&alone, s, 0), at(&tmp, s, 0), (size_t)MAXLEN * V * sizeof(float));
    }
    run(m, ad, -1, &batch);
    int compared = 0;
    for (int s = 0; s < NSEQ; s++) {
        int same = 1;
        for (int t = 0; t < seq_len(s); t++) {
            if (!batch.have[s][t]) continue;
            compared++;
            same &= !memcmp(at(&alone, s, t), at(&batch, s, t), V * sizeof(float));
        }
        CHECK(same, "%s: sequence %d (adapter %s) batched differs from alone", what, s,
              ad[s] == ad[0] ? "A" : ad[s] ? "B" : "none");
    }
    CHECK(compared >= 40, "%s: %d positions compared", what, compared);
    free(alone.lg), free(batch.lg), free(tmp.lg);
}

/* (b): sequence s with adapter u unmerged vs merged into a second base. */
static void vs_merged(fy_backend *be, fy_model *m, const fy_lora_unmerged *u, const fy_lora_config *lc,
                      uint64_t seed, const char *what) {
    fy_model mm;
    fy_err err;
    make_base(be, &mm);
    put_adapters(&mm, lc, seed);
    if (fy_model_lora_merge(&mm, &err)) die("merge", &err);
    const fy_lora_unmerged *un[NSEQ] = {u, u, u, u}, *none[NSEQ] = {0};
    logits a = {calloc((size_t)NSEQ * MAXLEN * V, sizeof(float)), {{0}}};
    logits b = {calloc((size_t)NSEQ * MAXLEN * V, sizeof(float)), {{0}}};
    logits c = {calloc((size_t)NSEQ * MAXLEN * V, sizeof(float)), {{0}}};
    run(m, un, 2, &a);
    run(&mm, none, 2, &b);
    run(m, none, 2, &c);
    double worst = 0, big = 0, moved = 0;
    for (int t = 0; t < seq_len(2); t++)
        for (int v = 0; v < V; v++) {
            double x = at(&a, 2, t)[v], y = at(&b, 2, t)[v], z = at(&c, 2, t)[v];
            worst = fabs(x - y) > worst ? fabs(x - y) : worst;
            big = fabs(y) > big ? fabs(y) : big;
            moved = fabs(y - z) > moved ? fabs(y - z) : moved;
        }
    printf("%s: unmerged vs merged max |diff| %.3g of max |logit| %.3g; the adapters move logits by %.3g\n", what,
           worst, big, moved);
    CHECK(worst <= 1e-5 * big, "%s: unmerged vs merged differ by %g (max logit %g)", what, worst, big);
    CHECK(moved > 1e-2 * big, "%s: the adapters barely change the logits (%g)", what, moved);
    free(a.lg), free(b.lg), free(c.lg);
    fy_model_free(&mm);
}

int main(int argc, char **argv) {
    fy_backend *be;
    fy_err err;
    fy_model m;
    const char *spec = argc > 1 ? argv[1] : "cpu";
    if (fy_backend_create(spec, &be, &err)) {
        if (!strcmp(spec, "cpu")) die("backend", &err);
        printf("SKIP: no %s backend here (%s)\n", spec, err.msg);
        return 77;
    }
    make_base(be, &m);
    fy_lora_unmerged *ua, *ub;
    size_t n_base = m.tab.n_params;
    put_adapters(&m, &cfg_a, 11);
    if (fy_model_lora_detach(&m, &ua, &err)) die("detach A", &err);
    CHECK(!m.lora && m.tab.n_params == n_base, "after detach the model is the base again");
    put_adapters(&m, &cfg_b, 12);
    if (fy_model_lora_detach(&m, &ub, &err)) die("detach B", &err);
    CHECK(ub->kvb.handle != NULL && ua->kvb.handle != NULL, "kv_b_proj adapters carry merged copies");

    vs_merged(be, &m, ua, &cfg_a, 11, "adapter A (all targets)");
    vs_merged(be, &m, ub, &cfg_b, 12, "adapter B (q_a, kv_b, o, experts)");

    const fy_lora_unmerged *mix[NSEQ] = {ua, ub, NULL, ua};
    invariance(&m, mix, "f32");
    if (fy_model_set_decode_quant(&m, FY_QUANT_Q8_0, &err)) die("q8_0", &err);
    invariance(&m, mix, "q8_0");

    /* (c) */
    fy_kv_pool pool;
    fy_kv_seq s = {0};
    int32_t t = 1;
    float lg[V];
    if (fy_kv_pool_create(&pool, &m, 16, 8, &err) || fy_kv_seq_reserve(&pool, &s, 1, &err)) die("pool", &err);
    ua->base_n_params++;
    fy_batch_item it = {&s, &t, 1, 1, ua};
    CHECK(fy_model_batch_step(&m, &pool, &it, 1, lg, &err) == -1 && strstr(err.msg, "another base"),
          "an adapter of another base: %s", err.msg);
    ua->base_n_params--;
    CHECK(fy_model_batch_step(&m, &pool, &it, 1, lg, &err) == 0, "then it runs: %s", err.msg);
    fy_kv_seq_release(&pool, &s);
    fy_kv_pool_free(&pool, &m);

    fy_lora_unmerged_free(be, ua);
    fy_lora_unmerged_free(be, ub);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return fy_test_finish("test_lora_serve");
}
