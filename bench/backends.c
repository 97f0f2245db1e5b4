/* One measurement on one backend, for bench/backends.sh; prints one JSON line.
 *   bench_backends --backend SPEC train  --config tiny|small --vocab V --batch B --seq T --steps S
 *   bench_backends --backend SPEC decode --config tiny|small --vocab V --prompt P --new N
 *   bench_backends --backend SPEC gemm   --m M --n N --k K [--trans-a] --reps R
 *   bench_backends openblas        gemm   --m M --n N --k K [--trans-a] --reps R
 * "openblas" calls cblas_sgemm directly on host memory: the peer every
 * backend's fy_be_gemm is measured against (and what the cpu backend wraps). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/decode.h"
#include "model/model.h"
#include "optim/optim.h"
#include "core/clock.h"

typedef struct opts {
    const char *backend, *mode, *config;
    int V, B, T, steps, warmup, P, NEW, M, N, K, trans_a, reps;
} opts;

static int die(const char *what, const fy_err *err) {
    fprintf(stderr, "bench_backends: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    return 1;
}

static void random_fill(float *x, size_t n, uint64_t stream) {
    for (size_t i = 0; i < n; i++) x[i] = fy_rng_uniform(9, stream, i) - 0.5f;
}

static int bench_gemm(const opts *o) {
    int M = o->M, N = o->N, K = o->K, ta = o->trans_a;
    int lda = ta ? M : K;
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c = calloc(nc, sizeof *c);
    if (!a || !b || !c) return die("out of memory", NULL);
    random_fill(a, na, 1);
    random_fill(b, nb, 2);
    double t = 0;
    if (!strcmp(o->backend, "openblas")) {
        for (int r = 0; r <= o->reps; r++) {
            if (r == 1) t = fy_now_s(); /* the first call warms up */
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, lda, b, N,
                        0.0f, c, N);
        }
        t = fy_now_s() - t;
    } else {
        fy_err err;
        fy_backend *be;
        fy_buf A, B, C;
        if (fy_backend_create(o->backend, &be, &err)) return die(o->backend, &err);
        if (fy_be_alloc(be, &A, na, &err) || fy_be_alloc(be, &B, nb, &err) || fy_be_alloc(be, &C, nc, &err))
            return die("alloc", &err);
        be->ops->upload(be, fy_at(&A, 0), a, na);
        be->ops->upload(be, fy_at(&B, 0), b, nb);
        if (fy_be_sync(be, &err)) return die("upload", &err);
        for (int r = 0; r <= o->reps; r++) {
            if (r == 1) {
                if (fy_be_sync(be, &err)) return die("gemm", &err);
                t = fy_now_s();
            }
            be->ops->gemm(be, ta, 0, M, N, K, 1.0f, fy_at(&A, 0), lda, fy_at(&B, 0), N, 0.0f, fy_at(&C, 0), N);
        }
        if (fy_be_sync(be, &err)) return die("gemm", &err);
        t = fy_now_s() - t;
        fy_be_free(be, &A);
        fy_be_free(be, &B);
        fy_be_free(be, &C);
        fy_backend_destroy(be);
    }
    printf("{\"backend\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"trans_a\": %d, \"ms\": %.3f, \"gflops\": %.2f}\n",
           o->backend, M, N, K, ta, t / o->reps * 1e3, 2.0 * M * N * K * o->reps / t * 1e-9);
    free(a);
    free(b);
    free(c);
    return 0;
}

static int bench_model(const opts *o) {
    fy_err err;
    fy_config c;
    fy_backend *be;
    fy_model m;
    if (fy_config_builtin(o->config, o->V, &c, &err)) return die("config", &err);
    if (fy_backend_create(o->backend, &be, &err)) return die(o->backend, &err);
    if (fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 1, &err)) return die("model", &err);
    if (!strcmp(o->mode, "train")) {
        fy_adamw opt;
        fy_adamw_opts ao = {3e-4f, 3e-5f, 10, 1000, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
        if (fy_adamw_create(&opt, &m, &ao, &err)) return die("adamw", &err);
        int N = o->B * o->T;
        int32_t *in = malloc(N * sizeof *in), *lab = malloc(N * sizeof *lab);
        double t0 = 0;
        for (int s = 0; s < o->warmup + o->steps; s++) {
            if (s == o->warmup) t0 = fy_now_s();
            for (int i = 0; i < N; i++) {
                in[i] = (int)(fy_rng_u64(5, s, i) % c.vocab_size);
                lab[i] = (int)(fy_rng_u64(6, s, i) % c.vocab_size);
            }
            fy_loss l;
            float gn, lr;
            fy_model_zero_grad(&m);
            if (fy_model_forward(&m, in, lab, o->B, o->T, 1, &l, &err) || fy_model_backward(&m, &err) ||
                fy_adamw_step(&opt, &m, &gn, &lr, &err) || fy_model_update_bias(&m, &err))
                return die("train step", &err);
        }
        double dt = (fy_now_s() - t0) / o->steps;
        printf("{\"backend\": \"%s\", \"config\": \"%s\", \"batch\": %d, \"seq\": %d, \"step_ms\": %.2f, "
               "\"tokens_per_s\": %.1f}\n", o->backend, o->config, o->B, o->T, dt * 1e3, N / dt);
        free(in);
        free(lab);
        fy_adamw_free(&opt, be);
    } else {
        fy_kv_cache kv;
        if (fy_kv_cache_create(&kv, &m, o->P + o->NEW, &err)) return die("kv cache", &err);
        int32_t *prompt = malloc(o->P * sizeof *prompt);
        float *logits = malloc(c.vocab_size * sizeof *logits);
        for (int i = 0; i < o->P; i++) prompt[i] = (int)(fy_rng_u64(2, 0, i) % c.vocab_size);
        if (fy_model_prefill(&m, &kv, prompt, o->P, logits, &err)) return die("prefill", &err);
        double t0 = fy_now_s();
        int32_t next = prompt[o->P - 1];
        for (int i = 0; i < o->NEW; i++) {
            int best = 0; /* greedy, like generate --temperature 0 */
            for (int v = 1; v < c.vocab_size; v++)
                if (logits[v] > logits[best]) best = v;
            next = best;
            if (fy_model_decode(&m, &kv, next, logits, &err)) return die("decode", &err);
        }
        double dt = fy_now_s() - t0;
        printf("{\"backend\": \"%s\", \"config\": \"%s\", \"prompt\": %d, \"new\": %d, \"decode_tok_s\": %.1f}\n",
               o->backend, o->config, o->P, o->NEW, o->NEW / dt);
        free(prompt);
        free(logits);
        fy_kv_cache_free(&kv, &m);
    }
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
}

int main(int argc, char **argv) {
    opts o = {"cpu", NULL, "tiny", 8192, 4, 128, 2, 1, 32, 64, 2048, 768, 256, 0, 5};
    int i = 1;
    if (i + 1 < argc && !strcmp(argv[i], "--backend")) {
        o.backend = argv[i + 1];
        i += 2;
    } else if (i < argc && !strcmp(argv[i], "openblas")) {
        o.backend = "openblas";
        i++;
    }
    if (i < argc) o.mode = argv[i++];
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--trans-a")) { o.trans_a = 1; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "bench_backends: %s needs a value\n", a); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "--config")) o.config = v;
        else if (!strcmp(a, "--vocab")) o.V = atoi(v);
        else if (!strcmp(a, "--batch")) o.B = atoi(v);
        else if (!strcmp(a, "--seq")) o.T = atoi(v);
        else if (!strcmp(a, "--steps")) o.steps = atoi(v);
        else if (!strcmp(a, "--warmup")) o.warmup = atoi(v);
        else if (!strcmp(a, "--prompt")) o.P = atoi(v);
        else if (!strcmp(a, "--new")) o.NEW = atoi(v);
        else if (!strcmp(a, "--m")) o.M = atoi(v);
        else if (!strcmp(a, "--n")) o.N = atoi(v);
        else if (!strcmp(a, "--k")) o.K = atoi(v);
        else if (!strcmp(a, "--reps")) o.reps = atoi(v);
        else { fprintf(stderr, "bench_backends: unknown flag %s\n", a); return 2; }
    }
    int model_mode = o.mode && (!strcmp(o.mode, "train") || !strcmp(o.mode, "decode"));
    if (!o.mode || (!model_mode && strcmp(o.mode, "gemm")) || (model_mode && !strcmp(o.backend, "openblas"))) {
        fprintf(stderr, "usage: bench_backends (--backend SPEC (train|decode|gemm) | openblas gemm) [flags]\n");
        return 2;
    }
    if (o.B < 1 || o.T < 1 || o.steps < 1 || o.warmup < 0 || o.P < 1 || o.NEW < 1 || o.M < 1 || o.N < 1 ||
        o.K < 1 || o.reps < 1) {
        fprintf(stderr, "bench_backends: sizes, steps and reps must be positive\n");
        return 2;
    }
    return model_mode ? bench_model(&o) : bench_gemm(&o);
}
