/* Serving throughput of the batch step (model/decode.h), and the
 * batch-invariant linear next to OpenBLAS. Prints one JSON line for
 * bench/batch.sh.
 *   bench_batch --config tiny|small [--vocab V] [--weights f32|q8_0] --batch B
 *               [--ctx P] [--steps S] [--reps R]
 *     B sequences, each with a P-token prompt (prefilled in chunks of 64 in
 *     batch steps), then S decode steps of one token for all B sequences;
 *     reports aggregate decoded tokens/s (best of R).
 *   bench_batch --linear IN OUT --batch N [--reps R] [--kernel avx2|portable]
 *               [--gemm-rows G]
 *     y = x W^T for N rows: linear_rows of the cpu backend (rows_gflops;
 *     the kernel family and the many-row threshold as fy_backend_opts
 *     cpu_q8 / cpu_gemm_rows set them), the same with the many-row kernel
 *     off (tiles_gflops: cpu_linear.c's tiles alone) and cblas_sgemm
 *     (OpenBLAS's own threading), interleaved, GFLOP/s (best of R).
 *   bench_batch --linear-q8|--linear-q4 IN OUT --batch N [--reps R] [--kernel avx2|portable]
 *     y = x W^T for N rows with Q8_0 or Q4_0 weights (linear_q8 / linear_q4
 *     of the cpu backend, its best kernel or the one --kernel names): GMAC/s
 *     and GFLOP/s (best of R by wall time, and by process CPU time),
 *     cblas_sgemm's GFLOP/s on the same shape timed in between (both ways),
 *     and the number of calls timed (a fixed count, for instruction counts
 *     under callgrind). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "core/clock.h"
#include "core/rng.h"
#include "model/decode.h"

/* --kernel (bench_linear, bench_linear_q) and --gemm-rows (bench_linear). */
static fy_backend_opts lin_opts;

static int bench_linear(int in, int out, int N, int reps) {
    fy_backend *be, *be_t;
    fy_err err;
    fy_buf bx, bw, by;
    fy_backend_opts tiles = lin_opts;
    tiles.cpu_gemm_rows = -1;
    if (fy_backend_create_opts("cpu", &lin_opts, &be, &err) || fy_backend_create_opts("cpu", &tiles, &be_t, &err) ||
        fy_be_alloc(be, &bx, (size_t)N * in, &err) ||
        fy_be_alloc(be, &bw, (size_t)out * in, &err) || fy_be_alloc(be, &by, (size_t)N * out, &err)) {
        fprintf(stderr, "bench_batch: %s\n", err.msg);
        return 1;
    }
    float *x = bx.handle, *w = bw.handle, *y = by.handle; /* cpu buffers are host memory */
    for (size_t i = 0; i < (size_t)N * in; i++) x[i] = (float)(fy_rng_u64(1, 0, i) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < (size_t)out * in; i++) w[i] = (float)(fy_rng_u64(2, 0, i) % 1000) / 1000.0f - 0.5f;
    /* enough calls per timing that each lasts ~ a few ms */
    int calls = (int)(2e7 / ((double)N * in * out)) + 1;
    double best_r = 1e30, best_t = 1e30, best_b = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = fy_now_s();
        for (int c = 0; c < calls; c++)
            be->ops->linear_rows(be, N, in, out, fy_at(&bx, 0), in, fy_at(&bw, 0), in, fy_at(&by, 0), out, 0);
        double t1 = fy_now_s();
        for (int c = 0; c < calls; c++)
            be_t->ops->linear_rows(be_t, N, in, out, fy_at(&bx, 0), in, fy_at(&bw, 0), in, fy_at(&by, 0), out, 0);
        double t2 = fy_now_s();
        for (int c = 0; c < calls; c++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
        double t3 = fy_now_s();
        best_r = t1 - t0 < best_r ? t1 - t0 : best_r;
        best_t = t2 - t1 < best_t ? t2 - t1 : best_t;
        best_b = t3 - t2 < best_b ? t3 - t2 : best_b;
    }
    double flop = 2.0 * N * in * out * calls;
    printf("{\"in\": %d, \"out\": %d, \"n\": %d, \"rows_gflops\": %.2f, \"tiles_gflops\": %.2f, "
           "\"sgemm_gflops\": %.2f}\n",
           in, out, N, flop / best_r * 1e-9, flop / best_t * 1e-9, flop / best_b * 1e-9);
    fy_be_free(be, &bx), fy_be_free(be, &bw), fy_be_free(be, &by);
    fy_backend_destroy(be);
    fy_backend_destroy(be_t);
    return 0;
}

/* Process CPU time in seconds: with one thread (OMP_NUM_THREADS=1,
 * OPENBLAS_NUM_THREADS=1) it counts only this run's cycles, steadier than
 * wall time on a machine that others share. */
static double cpu_s(void) { return (double)clock() / CLOCKS_PER_SEC; }

/* linear_q8 (bits 8) or linear_q4 (bits 4) against cblas_sgemm on the same
 * shape, interleaved; best of `reps` by wall and by CPU time. */
static int bench_linear_q(int bits, int in, int out, int N, int reps) {
    fy_backend *be;
    fy_err err;
    fy_buf bx, bq, bs, by;
    const size_t nw = (size_t)out * in;
    if (fy_backend_create_opts("cpu", &lin_opts, &be, &err) || fy_be_alloc(be, &bx, (size_t)N * in, &err) ||
        fy_be_alloc(be, &bq, nw / (bits == 8 ? 4 : 8), &err) || fy_be_alloc(be, &bs, nw / FY_Q8_BLOCK, &err) ||
        fy_be_alloc(be, &by, (size_t)N * out, &err)) {
        fprintf(stderr, "bench_batch: %s\n", err.msg);
        return 1;
    }
    float *x = bx.handle, *w = malloc(nw * sizeof *w), *yb = malloc((size_t)N * out * sizeof *yb);
    if (!w || !yb) return 1;
    for (size_t i = 0; i < (size_t)N * in; i++) x[i] = (float)(fy_rng_u64(1, 0, i) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < nw; i++) w[i] = (float)(fy_rng_u64(2, 0, i) % 1000) / 1000.0f - 0.5f;
    if (bits == 8) fy_q8_quantize(w, out, in, in, (int8_t *)bq.handle, bs.handle);
    else fy_q4_quantize(w, out, in, in, (uint8_t *)bq.handle, bs.handle);
    int calls = (int)(2e7 / ((double)N * in * out)) + 1;
    double best = 1e30, best_cpu = 1e30, best_b = 1e30, best_bcpu = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = fy_now_s(), c0 = cpu_s();
        for (int c = 0; c < calls; c++) {
            if (bits == 8)
                be->ops->linear_q8(be, N, in, out, fy_at(&bx, 0), in, fy_at(&bq, 0), fy_at(&bs, 0), fy_at(&by, 0),
                                   out, 0);
            else
                be->ops->linear_q4(be, N, in, out, fy_at(&bx, 0), in, fy_at(&bq, 0), fy_at(&bs, 0), fy_at(&by, 0),
                                   out, 0);
        }
        double t1 = fy_now_s(), c1 = cpu_s();
        for (int c = 0; c < calls; c++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, w, in, 0.0f, yb, out);
        double t2 = fy_now_s(), c2 = cpu_s();
        best = t1 - t0 < best ? t1 - t0 : best;
        best_cpu = c1 - c0 < best_cpu ? c1 - c0 : best_cpu;
        best_bcpu = c2 - c1 < best_bcpu ? c2 - c1 : best_bcpu;
        best_b = t2 - t1 < best_b ? t2 - t1 : best_b;
    }
    const double macs = (double)N * in * out * calls;
    printf("{\"in\": %d, \"out\": %d, \"n\": %d, \"calls\": %d, \"q%d_gmacs\": %.2f, \"q%d_gflops\": %.2f, "
           "\"q%d_gflops_cpu\": %.2f, \"sgemm_gflops\": %.2f, \"sgemm_gflops_cpu\": %.2f}\n",
           in, out, N, calls, bits, macs / best * 1e-9, bits, 2 * macs / best * 1e-9, bits,
           2 * macs / (best_cpu > 0 ? best_cpu : 1e-9) * 1e-9, 2 * macs / best_b * 1e-9,
           2 * macs / (best_bcpu > 0 ? best_bcpu : 1e-9) * 1e-9);
    free(w), free(yb);
    fy_be_free(be, &bx), fy_be_free(be, &bq), fy_be_free(be, &bs), fy_be_free(be, &by);
    fy_backend_destroy(be);
    return 0;
}

/* Prefills every sequence (chunks of 64, all sequences in each step), then
 * times `steps` decode steps of all of them; returns decoded tokens/s. */
static double one_rep(fy_model *m, fy_kv_pool *pool, fy_kv_seq *seq, int B, int P, int steps, float *logits,
                      fy_err *err) {
    const int V = m->cfg.vocab_size, CH = 64;
    fy_batch_item *it = malloc((size_t)B * sizeof *it);
    int32_t *tok = malloc((size_t)B * (P > 1 ? P : 1) * sizeof *tok), *next = malloc((size_t)B * sizeof *next);
    double rate = -1;
    if (!it || !tok || !next) goto out;
    for (int b = 0; b < B; b++) {
        fy_kv_seq_release(pool, &seq[b]);
        if (fy_kv_seq_reserve(pool, &seq[b], P + steps, err)) goto out;
        for (int t = 0; t < P; t++) tok[(size_t)b * P + t] = (int32_t)(fy_rng_u64(3, b, t) % V);
    }
    for (int p0 = 0; p0 < P; p0 += CH) {
        int n = P - p0 < CH ? P - p0 : CH;
        for (int b = 0; b < B; b++) it[b] = (fy_batch_item){&seq[b], tok + (size_t)b * P + p0, n, 1, NULL};
        if (fy_model_batch_step(m, pool, it, B, logits, err)) goto out;
    }
    for (int b = 0; b < B; b++) next[b] = (int32_t)(b % V);
    double t0 = fy_now_s();
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++) it[b] = (fy_batch_item){&seq[b], &next[b], 1, 1, NULL};
        if (fy_model_batch_step(m, pool, it, B, logits, err)) goto out;
        for (int b = 0; b < B; b++) { /* greedy */
            const float *l = logits + (size_t)b * V;
            int best = 0;
            for (int i = 1; i < V; i++)
                if (l[i] > l[best]) best = i;
            next[b] = best;
        }
    }
    rate = (double)B * steps / (fy_now_s() - t0);
out:
    free(it), free(tok), free(next);
    return rate;
}

static int bench_model(const char *cfgname, int V, const char *weights, int B, int P, int steps, int reps) {
    fy_err err;
    fy_config c;
    fy_backend *be;
    fy_model m;
    fy_quant q;
    fy_kv_pool pool;
    if (fy_quant_parse(weights, &q, &err) || fy_config_builtin(cfgname, V, &c, &err) ||
        fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 1, &err) ||
        fy_model_set_decode_quant(&m, q, &err) || fy_kv_pool_create(&pool, &m, B * ((P + steps + 15) / 16 * 16), 16, &err)) {
        fprintf(stderr, "bench_batch: %s\n", err.msg);
        return 1;
    }
    fy_kv_seq *seq = calloc((size_t)B, sizeof *seq);
    float *logits = malloc((size_t)B * V * sizeof *logits);
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t = one_rep(&m, &pool, seq, B, P, steps, logits, &err);
        if (t < 0) {
            fprintf(stderr, "bench_batch: %s\n", err.msg);
            return 1;
        }
        best = t > best ? t : best;
    }
    printf("{\"config\": \"%s\", \"quant\": \"%s\", \"batch\": %d, \"ctx\": %d, \"tok_s\": %.1f}\n", cfgname,
           fy_quant_name(q), B, P, best);
    for (int b = 0; b < B; b++) fy_kv_seq_release(&pool, &seq[b]);
    free(seq), free(logits);
    fy_kv_pool_free(&pool, &m);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return 0;
}

int main(int argc, char **argv) {
    const char *cfgname = "tiny", *weights = "f32";
    int V = 8192, B = 1, P = 64, STEPS = 32, REPS = 3, lin_in = 0, lin_out = 0, lin_q = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) cfgname = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab")) V = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--weights")) weights = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ctx")) P = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) STEPS = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) REPS = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--gemm-rows")) lin_opts.cpu_gemm_rows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kernel")) /* fy_backend_opts.cpu_q8, for every --linear* */
            lin_opts.cpu_q8 = !strcmp(argv[i + 1], "avx2") ? FY_CPU_Q8_AVX2 : !strcmp(argv[i + 1], "portable")
                                                                              ? FY_CPU_Q8_PORTABLE
                                                                              : FY_CPU_Q8_BEST;
        else if ((!strcmp(argv[i], "--linear") || !strcmp(argv[i], "--linear-q8") ||
                  !strcmp(argv[i], "--linear-q4")) &&
                 i + 2 < argc) {
            lin_q = !strcmp(argv[i], "--linear-q8") ? 8 : !strcmp(argv[i], "--linear-q4") ? 4 : 0;
            lin_in = atoi(argv[i + 1]);
            lin_out = atoi(argv[i + 2]);
            i++;
        } else {
            fprintf(stderr, "bench_batch: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    if (B < 1 || P < 0 || STEPS < 1 || REPS < 1 || (lin_in && lin_out < 1)) {
        fprintf(stderr, "bench_batch: --batch, --steps, --reps must be >= 1, --ctx >= 0\n");
        return 2;
    }
    if (lin_q && lin_in % FY_Q8_BLOCK) {
        fprintf(stderr, "bench_batch: --linear-q%d IN must be a multiple of %d\n", lin_q, FY_Q8_BLOCK);
        return 2;
    }
    if (lin_in > 0 && lin_q) return bench_linear_q(lin_q, lin_in, lin_out, B, REPS);
    if (lin_in > 0) return bench_linear(lin_in, lin_out, B, REPS);
    return bench_model(cfgname, V, weights, B, P, STEPS, REPS);
}
