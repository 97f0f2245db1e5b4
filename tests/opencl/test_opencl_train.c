/* Training and generation on opencl equal cpu at the model level: the same
 * initial weights (fy_model_init_weights, same seed), 50 AdamW steps with
 * grad clipping, warmup + cosine and bias updates on the same synthetic
 * batches, through the public model/optimizer API. Losses must agree to
 * 1e-4 relative at every step; the final weights and a greedy decode
 * (prefill + mla_decode steps) are compared too, and a second opencl run
 * must reproduce the first bitwise (losses, grad norms, weights). Exits 77 without an
 * OpenCL device or without OpenCL in this build. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/decode.h"
#include "model/model.h"
#include "testutil.h"
#include "optim/optim.h"

#ifndef FERRY_HAVE_OPENCL
int main(void) {
    printf("test_opencl_train: SKIP: this ferry was built without OpenCL\n");
    return 77;
}
#else

#define STEPS 50
#define B 2
#define T 16

typedef struct run {
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
} run;

static int setup(run *r, const char *spec, const fy_config *c, const fy_adamw_opts *ao,
                 fy_err *err) {
    if (fy_backend_create(spec, &r->be, err)) return -1;
    if (fy_model_create(&r->m, c, r->be, err) || fy_model_init_weights(&r->m, 42, err) ||
        fy_adamw_create(&r->opt, &r->m, ao, err))
        return -1;
    return 0;
}

static int step(run *r, const int32_t *in, const int32_t *lab, fy_loss *l, float *gn, fy_err *err) {
    float lr;
    fy_model_zero_grad(&r->m);
    if (fy_model_forward(&r->m, in, lab, B, T, 1, l, err) || fy_model_backward(&r->m, err) ||
        fy_adamw_step(&r->opt, &r->m, gn, &lr, err) || fy_model_update_bias(&r->m, err))
        return -1;
    return fy_be_sync(r->be, err);
}

int main(void) {
    fy_err err = {{0}};
    fy_config c;
    if (fy_config_builtin("tiny", 61, &c, &err)) {
        fprintf(stderr, "config: %s\n", err.msg);
        return 1;
    }
    /* The oracle_train shape, with group-limited routing: every op runs. */
    c.hidden_size = 48; c.num_hidden_layers = 2; c.num_attention_heads = 2;
    c.q_lora_rank = 24; c.kv_lora_rank = 20; c.qk_nope_head_dim = 12; c.qk_rope_head_dim = 8;
    c.v_head_dim = 12; c.n_routed_experts = 8; c.num_experts_per_tok = 2; c.n_shared_experts = 1;
    c.n_group = 2; c.topk_group = 1;
    c.moe_intermediate_size = 24; c.intermediate_size = 64; c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1; c.aux_loss_alpha = 0.001f; c.bias_update_speed = 0.001f;
    fy_adamw_opts ao = {3e-3f, 3e-4f, 10, STEPS, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};

    run oc = {0}, oc2 = {0}, cp = {0}; /* oc2: a second opencl run, for determinism */
    const char *spec = getenv("FERRY_OPENCL_DEVICE") ? getenv("FERRY_OPENCL_DEVICE") : "opencl";
    if (fy_backend_create(spec, &oc.be, &err)) {
        if (strstr(err.msg, "no OpenCL platform") || strstr(err.msg, "have no devices")) {
            printf("test_opencl_train: SKIP: no OpenCL device: %s\n", err.msg);
            return 77;
        }
        fprintf(stderr, "test_opencl_train: %s\n", err.msg);
        return 1;
    }
    fy_backend_destroy(oc.be);
    if (setup(&oc, spec, &c, &ao, &err) || setup(&oc2, spec, &c, &ao, &err) ||
        setup(&cp, "cpu", &c, &ao, &err)) {
        fprintf(stderr, "test_opencl_train: setup: %s\n", err.msg);
        return 1;
    }

    /* Learnable sequences t' = (a t + 3) mod V with 10% noise, as oracle_train. */
    size_t n = (size_t)STEPS * B * T;
    int32_t *in = malloc(n * sizeof *in), *lab = malloc(n * sizeof *lab);
    for (int s = 0; s < STEPS; s++)
        for (int b = 0; b < B; b++) {
            int a = 1 + (int)(fy_rng_u64(9, s, b) % 4), tok = (int)(fy_rng_u64(8, s, b) % c.vocab_size);
            for (int t = 0; t <= T; t++) {
                size_t i = ((size_t)s * B + b) * T + t;
                if (t < T) in[i] = tok;
                if (t > 0) lab[i - 1] = (t == 5) ? FY_IGNORE_INDEX : tok;
                tok = fy_rng_uniform(7, s * B + b, t) < 0.1f ? (int)(fy_rng_u64(6, s * B + b, t) % c.vocab_size)
                                                             : (a * tok + 3) % c.vocab_size;
            }
        }

    double worst = 0;
    for (int s = 0; s < STEPS; s++) {
        fy_loss lo, lc;
        float go, gc;
        size_t o = (size_t)s * B * T;
        if (step(&oc, in + o, lab + o, &lo, &go, &err)) {
            fprintf(stderr, "opencl step %d: %s\n", s + 1, err.msg);
            return 1;
        }
        fy_loss lo2;
        float go2;
        if (step(&oc2, in + o, lab + o, &lo2, &go2, &err)) {
            fprintf(stderr, "opencl (second run) step %d: %s\n", s + 1, err.msg);
            return 1;
        }
        CHECK(memcmp(&lo.total, &lo2.total, sizeof lo.total) == 0 && memcmp(&go, &go2, sizeof go) == 0,
              "step %d: two opencl runs differ (loss %.17g vs %.17g)", s + 1, lo.total, lo2.total);
        if (step(&cp, in + o, lab + o, &lc, &gc, &err)) {
            fprintf(stderr, "cpu step %d: %s\n", s + 1, err.msg);
            return 1;
        }
        double rel = fabs(lo.total - lc.total) / fabs(lc.total);
        if (rel > worst) worst = rel;
        CHECK(rel <= 1e-4, "step %d: loss opencl %.9g cpu %.9g (rel %.2e)", s + 1, lo.total,
              lc.total, rel);
        CHECK(fy_relerr(go, gc, 1e-6) <= 1e-3, "step %d: grad norm opencl %.9g cpu %.9g", s + 1,
              go, gc);
        if (s == 0 || s == STEPS - 1)
            printf("step %2d: loss opencl %.7f cpu %.7f (main %.7f / %.7f), grad norm %.5f / %.5f\n",
                   s + 1, lo.total, lc.total, lo.main, lc.main, go, gc);
    }
    printf("worst relative loss difference over %d steps: %.2e\n", STEPS, worst);

    /* Final weights: each tensor within 1e-3 of its own scale. */
    size_t np = cp.m.tab.n_params;
    float *po = malloc(np * 4), *pc = malloc(np * 4);
    oc.be->ops->download(oc.be, po, fy_at(&oc.m.params, 0), np);
    float *po2 = malloc(np * 4);
    oc2.be->ops->download(oc2.be, po2, fy_at(&oc2.m.params, 0), np);
    CHECK(memcmp(po, po2, np * 4) == 0, "final weights of two opencl runs differ bitwise");
    free(po2);
    cp.be->ops->download(cp.be, pc, fy_at(&cp.m.params, 0), np);
    double wworst = 0;
    for (int i = 0; i < cp.m.tab.n; i++) {
        const fy_tensor_info *t = &cp.m.tab.t[i];
        if (t->is_buffer) continue;
        double mx = 0, d = 0;
        for (size_t j = 0; j < t->n; j++) {
            mx = fmax(mx, fabs(pc[t->off + j]));
            d = fmax(d, fabs((double)po[t->off + j] - pc[t->off + j]));
        }
        if (mx > 0 && d / mx > wworst) wworst = d / mx;
        CHECK(d <= 1e-3 * mx, "final %s: max diff %.3g of max %.3g", t->name, d, mx);
    }
    printf("final weights: worst max|diff|/max|w| per tensor %.2e\n", wworst);

    /* Greedy decode on both (prefill + latent-space decode steps). */
    fy_kv_cache ko, kc;
    int V = c.vocab_size, P = 5, G = 8;
    float *lo = malloc(V * 4), *lc = malloc(V * 4);
    if (fy_kv_cache_create(&ko, &oc.m, P + G + 1, &err) || fy_kv_cache_create(&kc, &cp.m, P + G + 1, &err)) {
        fprintf(stderr, "kv cache: %s\n", err.msg);
        return 1;
    }
    if (fy_model_prefill(&oc.m, &ko, in, P, lo, &err) || fy_model_prefill(&cp.m, &kc, in, P, lc, &err)) {
        fprintf(stderr, "prefill: %s\n", err.msg);
        return 1;
    }
    int same_tokens = 1;
    for (int g = 0; g < G; g++) {
        double mx = 0, d = 0;
        int ao_ = 0, ac = 0;
        for (int v = 0; v < V; v++) {
            mx = fmax(mx, fabs(lc[v]));
            d = fmax(d, fabs((double)lo[v] - lc[v]));
            if (lo[v] > lo[ao_]) ao_ = v;
            if (lc[v] > lc[ac]) ac = v;
        }
        CHECK(d <= 1e-4 * mx + 1e-6, "decode step %d: logits differ by %.3g (max %.3g)", g, d, mx);
        same_tokens &= ao_ == ac;
        if (fy_model_decode(&oc.m, &ko, ac, lo, &err) || fy_model_decode(&cp.m, &kc, ac, lc, &err)) {
            fprintf(stderr, "decode: %s\n", err.msg);
            return 1;
        }
    }
    CHECK(same_tokens, "greedy tokens differ between opencl and cpu");
    fy_kv_cache_free(&ko, &oc.m);
    fy_kv_cache_free(&kc, &cp.m);
    free(lo); free(lc); free(po); free(pc); free(in); free(lab);
    fy_adamw_free(&oc2.opt, oc2.be);
    fy_model_free(&oc2.m);
    fy_backend_destroy(oc2.be);
    fy_adamw_free(&oc.opt, oc.be);
    fy_adamw_free(&cp.opt, cp.be);
    fy_model_free(&oc.m);
    fy_model_free(&cp.m);
    fy_backend_destroy(oc.be);
    fy_backend_destroy(cp.be);
    return fy_test_finish("test_opencl_train");
}
#endif
