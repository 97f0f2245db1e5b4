/* Training-step throughput: forward + backward + AdamW on random tokens.
 * Prints one JSON line so bench/train_step can put it beside PyTorch's.
 *   bench_train_step --config tiny|small|FILE.json --vocab V --batch B --seq T
 *                    --steps S --warmup W [--dump-config PATH] [--lora-rank R]
 *                    [--lora-targets LIST]
 * --lora-rank: LoRA adapters of rank R (alpha 2R) on every target (or the
 * PEFT target_modules of --lora-targets), the base
 * frozen, AdamW on the adapters only; "trainable" counts what AdamW updates
 * and "max_rss_mb" is the process's peak resident memory.
 * "sgemm_gflops": the ceiling the step is held against, OpenBLAS's sgemm
 * (the library the training GEMMs call) alone on the model's largest
 * linear at this batch, [B*T x hidden] @ [hidden x intermediate], on the
 * same threads, timed after the steps (best of 5). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <omp.h>

#include "backend/backend.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include <sys/resource.h>

#include "model/lora.h"
#include "model/model.h"
#include "optim/optim.h"
#include "core/clock.h"

/* Matmul FLOPs of one token's forward: 2 per active weight (routed experts
 * counted K times, embeddings not at all), plus causal attention scores and
 * values at the mean context length (T+1)/2. Training = 3x forward. */
static double forward_flops_per_token(const fy_model *m, const fy_param_table *tab, int T) {
    const fy_config *c = &m->cfg;
    double f = 0;
    for (int i = 0; i < tab->n; i++) {
        const fy_tensor_info *t = &tab->t[i];
        if (t->is_buffer || t->ndim != 2 || !strcmp(t->name, "model.embed_tokens.weight")) continue;
        if (strstr(t->name, ".experts.")) continue; /* counted below */
        f += 2.0 * t->n;
    }
    int moe_layers = 0;
    for (int li = 0; li < tab->n_layers; li++) moe_layers += tab->layer[li].moe;
    f += 2.0 * moe_layers * c->num_experts_per_tok * 3.0 * c->moe_intermediate_size * c->hidden_size;
    double ctx = (T + 1) / 2.0;
    f += 2.0 * tab->n_layers * c->num_attention_heads * ctx *
         (fy_cfg_qk_head_dim(c) + c->v_head_dim);
    return f;
}

/* GFLOP/s of cblas_sgemm on [M x K] @ [K x N], best of 5 after one warm-up. */
static double sgemm_ceiling(int M, int K, int N) {
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * N), *c = malloc(sizeof(float) * M * N);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return 0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(fy_rng_u64(7, 0, i) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)(fy_rng_u64(8, 0, i) % 1000) * 1e-3f - 0.5f;
    double best = 1e30;
    for (int r = 0; r < 6; r++) {
        double t = fy_now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
        t = fy_now_s() - t;
        if (r > 0 && t < best) best = t;
    }
    free(a), free(b), free(c);
    return 2.0 * M * K * N / best * 1e-9;
}

int main(int argc, char **argv) {
    const char *cfgname = "tiny", *dump = NULL, *targets = NULL;
    int V = 8192, B = 8, T = 256, steps = 5, warmup = 2, rank = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "bench_train_step: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--config")) cfgname = v;
        else if (!strcmp(a, "--vocab")) V = atoi(v);
        else if (!strcmp(a, "--batch")) B = atoi(v);
        else if (!strcmp(a, "--seq")) T = atoi(v);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--dump-config")) dump = v;
        else if (!strcmp(a, "--lora-rank")) rank = atoi(v);
        else if (!strcmp(a, "--lora-targets")) targets = v;
        else { fprintf(stderr, "bench_train_step: unknown flag %s\n", a); return 2; }
        i++;
    }
    fy_err err;
    fy_config c;
    if (strchr(cfgname, '.') ? fy_config_load(cfgname, &c, &err)
                             : fy_config_builtin(cfgname, V, &c, &err)) {
        fprintf(stderr, "bench_train_step: %s\n", err.msg);
        return 1;
    }
    if (dump) {
        char *js = fy_config_to_json(&c, NULL);
        if (!js || fy_write_file_atomic(dump, js, strlen(js), &err)) {
            fprintf(stderr, "bench_train_step: %s\n", err.msg);
            return 1;
        }
        free(js);
    }
    fy_backend *be;
    fy_model m;
    fy_adamw opt;
    fy_adamw_opts ao = {3e-4f, 3e-5f, 10, 1000, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    fy_lora_config lc = {rank, 2.0f * rank, FY_LORA_ALL, 0.0f};
    if (targets && fy_lora_parse_targets(targets, &lc.targets, &err)) {
        fprintf(stderr, "bench_train_step: %s\n", err.msg);
        return 1;
    }
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 1, &err) || (rank > 0 && (fy_model_set_lora(&m, &lc, &err) ||
                                                            fy_model_lora_init(&m, 1, &err))) ||
        fy_adamw_create(&opt, &m, &ao, &err)) {
        fprintf(stderr, "bench_train_step: %s\n", err.msg);
        return 1;
    }
    int N = B * T;
    int32_t *in = malloc(N * sizeof *in), *lab = malloc(N * sizeof *lab);
    double t0 = 0;
    for (int s = 0; s < warmup + steps; s++) {
        if (s == warmup) t0 = fy_now_s();
        for (int i = 0; i < N; i++) {
            in[i] = (int)(fy_rng_u64(5, s, i) % c.vocab_size);
            lab[i] = (int)(fy_rng_u64(6, s, i) % c.vocab_size);
        }
        fy_loss l;
        float gn, lr;
        fy_model_zero_grad(&m);
        if (fy_model_forward(&m, in, lab, B, T, 1, &l, &err) || fy_model_backward(&m, &err) ||
            fy_adamw_step(&opt, &m, &gn, &lr, &err) || fy_model_update_bias(&m, &err)) {
            fprintf(stderr, "bench_train_step: %s\n", err.msg);
            return 1;
        }
    }
    double dt = (fy_now_s() - t0) / steps;
    const fy_param_table *base = m.lora ? &m.lora->base_tab : &m.tab;
    size_t trainable = fy_params_count(&m.tab), params = fy_params_count(base);
    /* The full step's FLOPs: a LoRA step does fewer (no base dW), so its
     * GFLOP/s is the full-equivalent rate, comparable to a full row's. */
    double tps = N / dt, fpt = 3.0 * forward_flops_per_token(&m, base, T);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru); /* before the ceiling's buffers */
    const double ceiling = sgemm_ceiling(N, c.hidden_size, c.intermediate_size);
    printf("{\"impl\": \"ferry\", \"config\": \"%s\", \"threads\": %d, \"batch\": %d, \"seq\": %d, "
           "\"params\": %zu, \"trainable\": %zu, \"step_ms\": %.2f, \"tokens_per_s\": %.1f, \"gflops\": %.2f, "
           "\"max_rss_mb\": %.1f, \"sgemm_gflops\": %.2f, \"sgemm_shape\": \"%d x %d x %d\"}\n",
           cfgname, omp_get_max_threads(), B, T, params, trainable, dt * 1e3, tps, tps * fpt * 1e-9,
           ru.ru_maxrss / 1024.0, ceiling, N, c.hidden_size, c.intermediate_size);
    free(in);
    free(lab);
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
}
