/* MLA attention against the latent cache: the cpu backend's mla_paged
 * (tiles of rows x heads, src/backend/cpu/cpu_mla.c) next to the per-pair
 * code it replaced (tests/unit/mla_ref.h), timed alternately in one
 * process, medians; the outputs must be bitwise equal. Prints one JSON
 * line per case for bench/mla.sh.
 *   bench_mla --config tiny|small [--ctx T] [--reps R] [--only CASE]
 *     prefill:  T rows of one sequence, row i attending i + 1 positions
 *     decode:   1 row attending T positions
 *     decode16: 16 rows of 16 sequences, each attending T positions
 *   Positions in blocks of 16 of a pool, as the server's KV cache. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/cpu/cpu.h"
#include "core/clock.h"
#include "core/rng.h"
#include "mla_ref.h"
#include "model/config.h"

enum { BS = 16 };

/* CPU time of the process (all threads): on a shared machine it counts
 * the time the kernels ran, not the time they waited for a core. */
static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float rnd(uint64_t stream, size_t i) { return (float)(fy_rng_u64(7, stream, i) % 2001) / 1000.0f - 1.0f; }

/* n rows, row i on sequence i / per_seq with len[i] positions. */
static int run_case(fy_backend *be, const char *name, const fy_config *cf, int n, int per_seq, const int32_t *len,
                    int reps) {
    const int H = cf->num_attention_heads, r = cf->kv_lora_rank, dn = cf->qk_nope_head_dim;
    const int dr = cf->qk_rope_head_dim, dv = cf->v_head_dim, dqk = dn + dr, nseq = (n + per_seq - 1) / per_seq;
    const float scale = fy_cfg_softmax_scale(cf);
    int most = 0;
    for (int i = 0; i < n; i++) most = len[i] > most ? len[i] : most;
    const int nb = (most + BS - 1) / BS, pool = nseq * nb;
    fy_err err;
    fy_buf bq, bw, bc, bk, bo;
    if (fy_be_alloc(be, &bq, (size_t)n * H * dqk, &err) || fy_be_alloc(be, &bw, (size_t)H * (dn + dv) * r, &err) ||
        fy_be_alloc(be, &bc, (size_t)pool * BS * r, &err) || fy_be_alloc(be, &bk, (size_t)pool * BS * dr, &err) ||
        fy_be_alloc(be, &bo, (size_t)n * H * dv, &err)) {
        fprintf(stderr, "bench_mla: %s\n", err.msg);
        return 1;
    }
    float *q = bq.handle, *w = bw.handle, *c = bc.handle, *k = bk.handle, *o = bo.handle; /* host memory */
    for (size_t i = 0; i < (size_t)n * H * dqk; i++) q[i] = rnd(1, i);
    for (size_t i = 0; i < (size_t)H * (dn + dv) * r; i++) w[i] = 0.2f * rnd(2, i);
    for (size_t i = 0; i < (size_t)pool * BS * r; i++) c[i] = rnd(3, i);
    for (size_t i = 0; i < (size_t)pool * BS * dr; i++) k[i] = rnd(4, i);
    int32_t *blocks = malloc((size_t)pool * sizeof *blocks), *tab = malloc((size_t)n * sizeof *tab);
    ref_mla_seq *rs = malloc((size_t)n * sizeof *rs);
    float *want = malloc((size_t)n * H * dv * sizeof *want);
    double *tn = malloc(4 * (size_t)reps * sizeof *tn), *to = tn + reps, *cn = to + reps, *co = cn + reps;
    if (!blocks || !tab || !rs || !want || !tn) {
        fprintf(stderr, "bench_mla: out of memory\n");
        return 1;
    }
    for (int b = 0; b < pool; b++) blocks[b] = (b * 7 + 3) % pool; /* scattered blocks */
    size_t work = 0, flop = 0;
    for (int i = 0; i < n; i++) {
        tab[i] = i / per_seq * nb;
        rs[i] = (ref_mla_seq){c, k, (size_t)r, (size_t)dr, blocks + tab[i], BS, len[i]};
        work += (size_t)H * (len[i] + dn + dv) * r;
        flop += 2 * (size_t)H * ((size_t)len[i] * (2 * r + dr) + (size_t)(dn + dv) * r);
    }
    const int nt_old = work > 16384 ? omp_get_max_threads() : 1; /* the old mla_rows' rule */
    const int calls = (int)(4e7 / (double)flop) + 1;
    for (int rep = 0; rep < reps; rep++) {
        double c0 = cpu_s(), t0 = fy_now_s();
        for (int t = 0; t < calls; t++)
            be->ops->mla_paged(be, n, H, r, dn, dr, dv, scale, fy_at(&bq, 0), H * dqk, fy_at(&bw, 0), fy_at(&bc, 0),
                               fy_at(&bk, 0), BS, blocks, tab, len, fy_at(&bo, 0), H * dv);
        double t1 = fy_now_s(), c1 = cpu_s();
        for (int t = 0; t < calls; t++)
            if (ref_mla_rows(nt_old, n, H, r, dn, dr, dv, scale, q, (size_t)H * dqk, (size_t)dqk, w, rs, want,
                             (size_t)H * dv)) {
                fprintf(stderr, "bench_mla: out of memory\n");
                return 1;
            }
        double t2 = fy_now_s(), c2 = cpu_s();
        tn[rep] = (t1 - t0) / calls, to[rep] = (t2 - t1) / calls;
        cn[rep] = (c1 - c0) / calls, co[rep] = (c2 - c1) / calls;
    }
    if (fy_be_sync(be, &err)) {
        fprintf(stderr, "bench_mla: %s\n", err.msg);
        return 1;
    }
    int same = memcmp(o, want, (size_t)n * H * dv * sizeof *o) == 0;
    qsort(tn, reps, sizeof *tn, cmp_d), qsort(to, reps, sizeof *to, cmp_d);
    qsort(cn, reps, sizeof *cn, cmp_d), qsort(co, reps, sizeof *co, cmp_d);
    double mn = tn[reps / 2], mo = to[reps / 2];
    printf("{\"case\": \"%s\", \"rows\": %d, \"ctx\": %d, \"new_ms\": %.4f, \"old_ms\": %.4f, \"speedup\": %.2f, "
           "\"new_cpu_ms\": %.4f, \"old_cpu_ms\": %.4f, \"cpu_speedup\": %.2f, \"same_bits\": %s}\n",
           name, n, most, mn * 1e3, mo * 1e3, mo / mn, cn[reps / 2] * 1e3, co[reps / 2] * 1e3,
           co[reps / 2] / cn[reps / 2], same ? "true" : "false");
    fy_be_free(be, &bq), fy_be_free(be, &bw), fy_be_free(be, &bc), fy_be_free(be, &bk), fy_be_free(be, &bo);
    free(blocks), free(tab), free(rs), free(want), free(tn);
    return same ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *cfgname = "tiny", *only = "";
    int T = 512, REPS = 7;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) cfgname = argv[i + 1];
        else if (!strcmp(argv[i], "--ctx")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) REPS = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--only")) only = argv[i + 1];
        else {
            fprintf(stderr, "bench_mla: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    fy_config cf;
    fy_err err;
    fy_backend *be;
    if (T < 1 || REPS < 1) {
        fprintf(stderr, "bench_mla: --ctx and --reps must be >= 1\n");
        return 2;
    }
    if (fy_config_builtin(cfgname, 8192, &cf, &err) || fy_backend_cpu_create(&be, &err)) {
        fprintf(stderr, "bench_mla: %s\n", err.msg);
        return 1;
    }
    int32_t *len = malloc((size_t)(T > 16 ? T : 16) * sizeof *len);
    if (!len) return 1;
    for (int i = 0; i < T; i++) len[i] = i + 1;
    int bad = 0;
    if (!*only || !strcmp(only, "prefill")) bad |= run_case(be, "prefill", &cf, T, T, len, REPS);
    for (int i = 0; i < 16; i++) len[i] = T;
    if (!*only || !strcmp(only, "decode")) bad |= run_case(be, "decode", &cf, 1, 1, len, REPS);
    if (!*only || !strcmp(only, "decode16")) bad |= run_case(be, "decode16", &cf, 16, 1, len, REPS);
    free(len);
    fy_backend_destroy(be);
    return bad;
}
