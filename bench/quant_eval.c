/* A weight format against f32 on a trained run (docs/PERFORMANCE.md, "Q4_0
 * weights"):
 *   bench_quant_eval --model RUN [--weights q4_0] [--n 64] PROMPT...
 * Per prompt: f32 decodes N greedy tokens (its logits kept); the format is
 * then teacher-forced on those tokens (prompt logits and every step's:
 * relative error max_i |l_i - f_i| / max_i |f_i|, and whether the argmax
 * agrees), and decodes N greedy tokens of its own (tokens equal before
 * the first difference, and at that step f32's top-2 logit gap, to tell a
 * near tie from a wrong token). Prints one line per prompt and a summary;
 * exits 1 on an error, never on a figure (the caller judges). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "ckpt/checkpoint.h"
#include "interop/host.h"
#include "io/tokenizer.h"
#include "model/decode.h"

static int argmax(const float *l, int V) {
    int b = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

static double rel(const float *a, const float *b, int V) {
    double e = 0, s = 0;
    for (int i = 0; i < V; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return e / (s > 0 ? s : 1);
}

/* The top logit minus the second. */
static double gap(const float *l, int V) {
    int b = argmax(l, V);
    double s = -INFINITY;
    for (int i = 0; i < V; i++)
        if (i != b && l[i] > s) s = l[i];
    return l[b] - s;
}

/* Prefill ids[0, P), then decode: forced (ids[P ..] given) or greedy
 * (written to ids[P ..]); logits of the prompt's last position and of each
 * step into L (n + 1 rows of V). */
static int run(fy_model *m, int32_t *ids, int P, int n, int forced, float *L, int V, fy_err *err) {
    fy_kv_cache kv;
    if (fy_kv_cache_create(&kv, m, P + n + 1, err)) return -1;
    int rc = fy_model_prefill(m, &kv, ids, P, L, err);
    for (int s = 0; !rc && s < n; s++) {
        if (!forced) ids[P + s] = argmax(L + (size_t)s * V, V);
        rc = fy_model_decode(m, &kv, ids[P + s], L + (size_t)(s + 1) * V, err);
    }
    fy_kv_cache_free(&kv, m);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    double worst, sum, near; /* logit error: worst, sum; f32's gap at the first greedy difference */
    double gaps[4096];       /* f32's top-2 gap at each position (the first 4096) */
    int steps, argmax_same, greedy_same, greedy_total, full;
} tally;

/* One prompt: f32 greedy (logits L32), the format forced on its tokens
 * (Lq), then the format greedy (ids own). */
static int eval_prompt(fy_model *m, fy_quant q, const int32_t *pids, int P, int n, int V, tally *t, fy_err *err) {
    int32_t *ref = malloc((size_t)(P + n) * sizeof *ref), *own = malloc((size_t)(P + n) * sizeof *own);
    float *L32 = malloc((size_t)(n + 1) * V * sizeof *L32), *Lq = malloc((size_t)(n + 1) * V * sizeof *Lq);
    int rc = -1;
    if (!ref || !own || !L32 || !Lq) {
        fy_fail(err, "out of memory");
        goto out;
    }
    memcpy(ref, pids, P * sizeof *ref), memcpy(own, pids, P * sizeof *own);
    if (fy_model_set_decode_quant(m, FY_QUANT_F32, err) || run(m, ref, P, n, 0, L32, V, err) ||
        fy_model_set_decode_quant(m, q, err) || run(m, ref, P, n, 1, Lq, V, err))
        goto out;
    double worst = 0;
    for (int s = 0; s <= n; s++) {
        double e = rel(Lq + (size_t)s * V, L32 + (size_t)s * V, V);
        if (t->steps < 4096) t->gaps[t->steps] = gap(L32 + (size_t)s * V, V);
        worst = fmax(worst, e), t->sum += e, t->steps++;
        t->argmax_same += argmax(Lq + (size_t)s * V, V) == argmax(L32 + (size_t)s * V, V);
    }
    t->worst = fmax(t->worst, worst);
    if (run(m, own, P, n, 0, Lq, V, err)) goto out;
    int k = 0;
    while (k < n && own[P + k] == ref[P + k]) k++;
    t->greedy_same += k, t->greedy_total += n, t->full += k == n;
    if (k < n) t->near = fmax(t->near, gap(L32 + (size_t)k * V, V));
    printf("  prompt of %d tokens: logit rel err worst %.2e; greedy %d/%d tokens equal", P, worst, k, n);
    if (k < n) printf(" (first difference: f32's top-2 gap there %.3f)", gap(L32 + (size_t)k * V, V));
    printf("\n");
    rc = 0;
out:
    free(ref), free(own), free(L32), free(Lq);
    return rc;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *weights = "q4_0";
    int n = 64, first = argc;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--weights") && i + 1 < argc) weights = argv[++i];
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
        else {
            first = i;
            break;
        }
    }
    if (!dir || first == argc || n < 1) {
        fprintf(stderr, "usage: bench_quant_eval --model RUN [--weights FMT] [--n N] PROMPT...\n");
        return 2;
    }
    fy_err err = {{0}};
    char run_dir[4096], ckpt[4096], path[4200];
    fy_config cfg;
    fy_quant q;
    fy_tokenizer *tok = NULL;
    fy_backend *be = NULL;
    fy_model m;
    int made = 0;
    static tally t; /* 32 KB of gaps: not on the stack */
    if (fy_quant_parse(weights, &q, &err) || fy_host_run_dir(dir, run_dir, sizeof run_dir, &err)) goto fail;
    snprintf(path, sizeof path, "%s/config.json", run_dir);
    if (fy_config_load(path, &cfg, &err) || fy_host_run_tokenizer(run_dir, &cfg, &tok, &err) ||
        fy_ckpt_resolve(dir, ckpt, sizeof ckpt, &err) || fy_backend_create("cpu", &be, &err) ||
        fy_model_create(&m, &cfg, be, &err))
        goto fail;
    made = 1;
    if (fy_ckpt_load(ckpt, &m, NULL, NULL, &err)) goto fail;
    printf("%s against f32, %d new tokens, %s\n", fy_quant_name(q), n, ckpt);
    for (int i = first; i < argc; i++) {
        int32_t *ids;
        size_t P;
        if (fy_tokenizer_encode(tok, argv[i], strlen(argv[i]), &ids, &P, &err)) goto fail;
        int rc = P ? eval_prompt(&m, q, ids, (int)P, n, cfg.vocab_size, &t, &err) : 0;
        free(ids);
        if (rc) goto fail;
    }
    int ng = t.steps < 4096 ? t.steps : 4096;
    qsort(t.gaps, ng, sizeof *t.gaps, cmp_double);
    printf("%s: logit rel err mean %.2e, worst %.2e over %d positions (forced on f32's tokens); argmax equal "
           "at %d/%d; greedy %d/%d tokens equal before the first difference, %d/%d prompts identical; largest f32 "
           "top-2 gap at a first difference %.3f (median f32 top-2 gap %.3f)\n",
           fy_quant_name(q), t.sum / (t.steps ? t.steps : 1), t.worst, t.steps, t.argmax_same, t.steps, t.greedy_same,
           t.greedy_total, t.full, argc - first, t.near, ng ? t.gaps[ng / 2] : 0.0);
    fy_model_free(&m);
    fy_backend_destroy(be);
    fy_tokenizer_free(tok);
    return 0;
fail:
    fprintf(stderr, "bench_quant_eval: %s\n", err.msg);
    if (made) fy_model_free(&m);
    if (be) fy_backend_destroy(be);
    if (tok) fy_tokenizer_free(tok);
    return 1;
}
