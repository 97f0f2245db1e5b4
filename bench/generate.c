/* Generation throughput: prefill of a random prompt, then greedy decoding
 * through the latent KV cache. Prints one JSON line for bench/generate.sh.
 *   bench_generate --config tiny|small --vocab V --prompt P --new N
 *                  [--weights f32|bf16|f16|q8_0|q4_0]
 *                  [--reps R] [--dump-config PATH] [--kernel avx2|portable]
 *                  [--gemm-rows G]
 * (--kernel, --gemm-rows: fy_backend_opts cpu_q8 and cpu_gemm_rows.)
 * The prompt is prefilled and decoded R times over (the cache emptied in
 * between) and the best of each figure is kept: one process, one set of
 * weights, so a noisy neighbour costs a repetition, not the figure.
 * (--prompt 0 with --dump-config only writes the config as JSON.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "model/decode.h"
#include "core/clock.h"

int main(int argc, char **argv) {
    const char *cfgname = "tiny", *dump = NULL, *weights = "f32";
    int V = 8192, P = 64, NEW = 128, REPS = 1;
    fy_backend_opts opts = {0};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) cfgname = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab")) V = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prompt")) P = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--new")) NEW = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dump-config")) dump = argv[i + 1];
        else if (!strcmp(argv[i], "--weights")) weights = argv[i + 1];
        else if (!strcmp(argv[i], "--reps")) REPS = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gemm-rows")) opts.cpu_gemm_rows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kernel"))
            opts.cpu_q8 = !strcmp(argv[i + 1], "avx2")       ? FY_CPU_Q8_AVX2
                          : !strcmp(argv[i + 1], "portable") ? FY_CPU_Q8_PORTABLE
                                                             : FY_CPU_Q8_BEST;
        else { fprintf(stderr, "bench_generate: unknown flag %s\n", argv[i]); return 2; }
    }
    fy_err err;
    fy_config c;
    fy_backend *be;
    fy_model m;
    fy_kv_cache kv;
    fy_quant q;
    if (fy_quant_parse(weights, &q, &err) || fy_config_builtin(cfgname, V, &c, &err)) {
        fprintf(stderr, "bench_generate: %s\n", err.msg);
        return 1;
    }
    if (dump) {
        char *js = fy_config_to_json(&c, NULL);
        if (!js || fy_write_file_atomic(dump, js, strlen(js), &err)) return 1;
        free(js);
        if (P == 0) return 0; /* --prompt 0: only write the config */
    }
    if (P <= 0 || NEW < 0 || REPS < 1) {
        fprintf(stderr, "bench_generate: --prompt must be > 0, --new >= 0 and --reps >= 1\n");
        return 2;
    }
    if (fy_backend_create_opts("cpu", &opts, &be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 1, &err) || fy_model_set_decode_quant(&m, q, &err) ||
        fy_kv_cache_create(&kv, &m, P + NEW, &err)) {
        fprintf(stderr, "bench_generate: %s\n", err.msg);
        return 1;
    }
    int32_t *prompt = malloc(P * sizeof *prompt);
    float *logits = malloc(V * sizeof *logits);
    for (int i = 0; i < P; i++) prompt[i] = (int)(fy_rng_u64(2, 0, i) % V);
    double best_p = 0, best_d = 0;
    for (int r = 0; r < REPS; r++) {
        kv.len = 0;
        double t0 = fy_now_s();
        if (fy_model_prefill(&m, &kv, prompt, P, logits, &err)) goto fail;
        double t1 = fy_now_s();
        for (int s = 0; s < NEW; s++) {
            int best = 0;
            for (int i = 1; i < V; i++)
                if (logits[i] > logits[best]) best = i;
            if (fy_model_decode(&m, &kv, best, logits, &err)) goto fail;
        }
        double t2 = fy_now_s();
        if (P / (t1 - t0) > best_p) best_p = P / (t1 - t0);
        if (NEW > 0 && NEW / (t2 - t1) > best_d) best_d = NEW / (t2 - t1);
    }
    printf("{\"config\": \"%s\", \"quant\": \"%s\", \"prefill_tok_s\": %.1f, \"decode_tok_s\": %.1f}\n", cfgname, fy_quant_name(q), best_p, best_d);
    free(prompt);
    free(logits);
    fy_kv_cache_free(&kv, &m);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
fail:
    fprintf(stderr, "bench_generate: %s\n", err.msg);
    return 1;
}
