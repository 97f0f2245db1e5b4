/* Serving's batch step (model/decode.h: fy_kv_pool, fy_model_batch_step):
 * (a) batch invariance: every sequence's logits at every step and its
 * latent KV in the pool are bitwise the same whether it runs alone one
 * token at a time or beside other sequences, in any order, with its prompt
 * cut into any chunks (f32 and Q8_0 weights); (b) the logits equal the full
 * forward's (plain MLA, another rounding) within a tolerance, with MoE +
 * shared experts, YaRN off and on; (c) the pool's accounting; (d) the
 * serving ops: linear_rows against a double reference and across N,
 * mla_paged against mla_decode bit for bit. `test_batch opencl` runs (a)
 * and (b) on OpenCL instead (ctest test_batch_opencl), exit 77 (skipped)
 * where this ferry has no OpenCL or no device. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "model/decode.h"
#include "testutil.h"

#define V 97
#define NSEQ 4
#define MAXLEN 40

static fy_config test_config(int yarn, int q_lora) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", V, &c, &err)) exit(1);
    c.hidden_size = 64; c.num_hidden_layers = 3; c.num_attention_heads = 3;
    c.q_lora_rank = q_lora ? 32 : 0; c.kv_lora_rank = 18; c.qk_nope_head_dim = 10;
    c.qk_rope_head_dim = 6; c.v_head_dim = 9; c.moe_intermediate_size = 32; c.intermediate_size = 64;
    c.n_routed_experts = 6; c.num_experts_per_tok = 2; c.n_shared_experts = 1;
    c.first_k_dense_replace = 1;
    c.initializer_range = 0.2f;
    if (yarn) {
        c.qk_rope_head_dim = 12;
        c.rope_theta = 100.0;
        fy_rope_scaling y = {.yarn = 1, .factor = 16, .original_max_position_embeddings = 8, .beta_fast = 4,
                             .beta_slow = 0.5, .mscale = 0.707, .mscale_all_dim = 1.0, .truncate = 1};
        c.rope_scaling = y;
    }
    return c;
}

static void make_model(const char *spec, fy_config *c, fy_backend **be, fy_model *m) {
    fy_err err;
    if (fy_backend_create(spec, be, &err) || fy_model_create(m, c, *be, &err) || fy_model_init_weights(m, 5, &err)) {
        fprintf(stderr, "model: %s\n", err.msg);
        exit(1);
    }
}

/* The test sequences: different lengths and tokens. */
static int seq_len(int s) { return 9 + 7 * s; }
static int32_t seq_tok(int s, int t) { return (int32_t)((t * 31 + s * 17 + 7) % V); }

/* logits[s][t]: after token t of sequence s; kv[s]: its rows of every layer */
typedef struct run {
    float *logits[NSEQ];
    char *have[NSEQ]; /* have[s][t]: logits after token t were returned */
} run;

static void run_free(run *r) {
    for (int s = 0; s < NSEQ; s++) free(r->logits[s]), free(r->have[s]);
}

/* Runs the sequences through batch steps: at each step every unfinished
 * sequence takes a chunk of up to chunk(s, step) tokens; items are listed
 * in the order perm, after `pad` unrelated sequences decoding along. */
typedef int (*chunk_fn)(int s, int step);

static int chunk_one(int s, int step) { (void)s, (void)step; return 1; }
static int chunk_mixed(int s, int step) { return 1 + (s * 3 + step * 5) % 6; }
static int chunk_big(int s, int step) { return step == 0 ? 8 + s : 1 + (step % 3); }

static void run_batch(fy_model *m, int block, int only, chunk_fn chunk, int reverse, int pad, run *out,
                      float **kv_out) {
    fy_err err;
    fy_kv_pool pool;
    const fy_config *c = &m->cfg;
    CHECK(fy_kv_pool_create(&pool, m, (NSEQ + pad) * (MAXLEN + 8), block, &err) == 0, "pool: %s", err.msg);
    fy_kv_seq seq[NSEQ + 8];
    memset(seq, 0, sizeof seq);
    int done[NSEQ] = {0};
    int32_t padtok[8][MAXLEN + 8];
    for (int s = 0; s < NSEQ; s++) {
        out->logits[s] = calloc((size_t)MAXLEN * V, sizeof(float));
        out->have[s] = calloc(MAXLEN, 1);
    }
    float *lg = malloc((size_t)(NSEQ + pad) * V * sizeof *lg);
    for (int step = 0;; step++) {
        fy_batch_item it[NSEQ + 8];
        int n = 0, who[NSEQ + 8];
        for (int k = 0; k < pad; k++) { /* unrelated sequences, one token a step */
            int L = seq[NSEQ + k].len;
            if (L >= MAXLEN) continue;
            padtok[k][L] = (int32_t)((L * 13 + k * 29 + step) % V);
            CHECK(fy_kv_seq_reserve(&pool, &seq[NSEQ + k], L + 1, &err) == 0, "reserve: %s", err.msg);
            it[n] = (fy_batch_item){&seq[NSEQ + k], &padtok[k][L], 1, (k + step) % 2, NULL};
            who[n++] = -1;
        }
        for (int q = 0; q < NSEQ; q++) {
            int s = reverse ? NSEQ - 1 - q : q;
            if ((only >= 0 && s != only) || done[s] >= seq_len(s)) continue;
            int k = chunk(s, step), left = seq_len(s) - done[s];
            k = k < left ? k : left;
            CHECK(fy_kv_seq_reserve(&pool, &seq[s], done[s] + k, &err) == 0, "reserve: %s", err.msg);
            static int32_t toks[NSEQ][MAXLEN];
            for (int t = 0; t < k; t++) toks[s][t] = seq_tok(s, done[s] + t);
            it[n] = (fy_batch_item){&seq[s], toks[s], k, 1, NULL};
            who[n++] = s;
        }
        int any = 0;
        for (int i = 0; i < n; i++) any |= who[i] >= 0;
        if (!any) break;
        int rc = fy_model_batch_step(m, &pool, it, n, lg, &err);
        CHECK(rc == 0, "batch step: %s", err.msg);
        if (rc) break;
        for (int i = 0, j = 0; i < n; i++) {
            if (!it[i].want_logits) continue;
            int s = who[i];
            if (s >= 0) {
                done[s] += it[i].n;
                memcpy(out->logits[s] + (size_t)(done[s] - 1) * V, lg + (size_t)j * V, V * sizeof *lg);
                out->have[s][done[s] - 1] = 1;
            }
            j++;
        }
    }
    /* every sequence's latent KV, positions in order, every layer */
    int rkv = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    for (int s = 0; s < NSEQ; s++) {
        if (only >= 0 && s != only) continue;
        float *dst = kv_out[s];
        for (int l = 0; l < c->num_hidden_layers; l++)
            for (int t = 0; t < seq_len(s); t++) {
                size_t prow = (size_t)seq[s].blocks[t / block] * block + t % block;
                m->be->ops->download(m->be, dst, fy_add(pool.ckv[l], prow * rkv), rkv);
                m->be->ops->download(m->be, dst + rkv, fy_add(pool.kpe[l], prow * dr), dr);
                dst += rkv + dr;
            }
    }
    for (int s = 0; s < NSEQ + pad; s++) fy_kv_seq_release(&pool, &seq[s]);
    CHECK(pool.n_free == pool.n_blocks, "all blocks back: %d of %d", pool.n_free, pool.n_blocks);
    fy_kv_pool_free(&pool, m);
    free(lg);
}

static size_t kv_size(const fy_config *c, int s) {
    return (size_t)c->num_hidden_layers * seq_len(s) * (c->kv_lora_rank + c->qk_rope_head_dim);
}

/* (a): alone and one token at a time, against batches with other chunkings. */
static void invariance(const char *label, fy_model *m) {
    run solo, b;
    float *kv0[NSEQ], *kv1[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        kv0[s] = malloc(kv_size(&m->cfg, s) * sizeof(float));
        kv1[s] = malloc(kv_size(&m->cfg, s) * sizeof(float));
    }
    memset(&solo, 0, sizeof solo);
    for (int s = 0; s < NSEQ; s++) { /* each alone */
        run r;
        run_batch(m, 4, s, chunk_one, 0, 0, &r, kv0);
        solo.logits[s] = r.logits[s];
        solo.have[s] = r.have[s];
        r.logits[s] = NULL;
        r.have[s] = NULL;
        run_free(&r);
    }
    struct { chunk_fn f; int reverse, pad, block; const char *name; } how[] = {
        {chunk_one, 0, 0, 4, "together, one token each"},
        {chunk_mixed, 1, 3, 4, "mixed chunks, reversed, 3 pads"},
        {chunk_big, 0, 5, 16, "prompt chunks, 5 pads, blocks of 16"},
        {chunk_mixed, 0, 1, 1, "mixed chunks, blocks of 1"},
    };
    for (size_t h = 0; h < sizeof how / sizeof how[0]; h++) {
        run_batch(m, how[h].block, -1, how[h].f, how[h].reverse, how[h].pad, &b, kv1);
        for (int s = 0; s < NSEQ; s++) {
            int same = 1, seen = 0;
            for (int t = 0; t < seq_len(s); t++) {
                if (!b.have[s][t]) continue;
                seen++;
                same &= !memcmp(solo.logits[s] + (size_t)t * V, b.logits[s] + (size_t)t * V, V * sizeof(float));
            }
            CHECK(same && seen > 0 && b.have[s][seq_len(s) - 1],
                  "%s: %s: sequence %d logits differ from its solo run (%d steps compared)", label, how[h].name, s,
                  seen);
            CHECK(!memcmp(kv0[s], kv1[s], kv_size(&m->cfg, s) * sizeof(float)),
                  "%s: %s: sequence %d latent KV differs from its solo run", label, how[h].name, s);
        }
        run_free(&b);
    }
    run_free(&solo);
    for (int s = 0; s < NSEQ; s++) free(kv0[s]), free(kv1[s]);
}

static void test_invariance(const char *spec, int yarn, int q_lora) {
    fy_config c = test_config(yarn, q_lora);
    fy_backend *be;
    fy_model m;
    fy_err err;
    make_model(spec, &c, &be, &m);
    char label[64];
    snprintf(label, sizeof label, "%s yarn=%d q_lora=%d f32", spec, yarn, q_lora);
    invariance(label, &m);
    CHECK(fy_model_set_decode_quant(&m, FY_QUANT_Q8_0, &err) == 0, "q8: %s", err.msg);
    snprintf(label, sizeof label, "%s yarn=%d q_lora=%d q8_0", spec, yarn, q_lora);
    invariance(label, &m);
    fy_model_free(&m);
    fy_backend_destroy(be);
}


/* Max |a-b| over the vocabulary relative to max |b|. */
static double rel(const float *a, const float *b, int n) {
    double e = 0, m = 0;
    for (int i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return e / (m > 0 ? m : 1);
}

/* (b): every step's logits against the full forward of the whole sequence
 * (plain MLA through attn_fwd and gemm: only the rounding differs). */
static void test_vs_forward(const char *spec, int yarn, int q_lora) {
    fy_config c = test_config(yarn, q_lora);
    fy_backend *be;
    fy_model m;
    fy_err err;
    make_model(spec, &c, &be, &m);
    run b;
    float *kv[NSEQ];
    for (int s = 0; s < NSEQ; s++) kv[s] = malloc(kv_size(&c, s) * sizeof(float));
    run_batch(&m, 4, -1, chunk_one, 0, 2, &b, kv);
    double worst = 0;
    float *full = malloc((size_t)MAXLEN * V * sizeof *full);
    for (int s = 0; s < NSEQ; s++) {
        int32_t tok[MAXLEN];
        for (int t = 0; t < seq_len(s); t++) tok[t] = seq_tok(s, t);
        fy_loss loss;
        CHECK(fy_model_forward(&m, tok, NULL, 1, seq_len(s), 0, &loss, &err) == 0, "forward: %s", err.msg);
        be->ops->download(be, full, fy_model_logits(&m), (size_t)seq_len(s) * V);
        for (int t = 0; t < seq_len(s); t++) worst = fmax(worst, rel(b.logits[s] + (size_t)t * V, full + (size_t)t * V, V));
    }
    CHECK(worst < 1e-4, "%s yarn=%d q_lora=%d: batch logits differ from the full forward by %.3g (relative)", spec,
          yarn, q_lora, worst);
    printf("%s yarn=%d q_lora=%d: batch step vs full forward, worst logit rel err %.2e\n", spec, yarn, q_lora, worst);
    run_free(&b);
    for (int s = 0; s < NSEQ; s++) free(kv[s]);
    free(full);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

/* (c): the pool's accounting, and errors that leave everything as it was. */
static void test_pool(void) {
    fy_config c = test_config(0, 0);
    fy_backend *be;
    fy_model m;
    fy_err err;
    fy_kv_pool p;
    make_model("cpu", &c, &be, &m);
    CHECK(fy_kv_pool_create(&p, &m, 0, 4, &err) == -1, "an empty pool is refused");
    CHECK(fy_kv_pool_create(&p, &m, 10, 0, &err) == -1, "blocks of 0 are refused");
    CHECK(fy_kv_pool_create(&p, &m, 10, 4, &err) == 0, "pool: %s", err.msg);
    CHECK(p.n_blocks == 3 && p.n_free == 3 && fy_kv_pool_free_positions(&p) == 12, "10 positions round up to 3 blocks");
    fy_kv_seq a = {0}, b = {0};
    CHECK(fy_kv_seq_reserve(&p, &a, 5, &err) == 0 && a.n_blocks == 2 && p.n_free == 1, "5 positions take 2 blocks");
    CHECK(fy_kv_seq_reserve(&p, &a, 8, &err) == 0 && a.n_blocks == 2 && p.n_free == 1, "8 fit the same 2");
    CHECK(fy_kv_seq_reserve(&p, &b, 9, &err) == -1 && strstr(err.msg, "KV pool full"), "9 more do not fit: %s",
          err.msg);
    CHECK(b.n_blocks == 0 && b.blocks == NULL && p.n_free == 1, "a failed reserve changes nothing");
    CHECK(fy_kv_seq_reserve(&p, &b, 4, &err) == 0 && b.n_blocks == 1 && p.n_free == 0, "the last block");
    CHECK(a.blocks[0] != a.blocks[1] && b.blocks[0] != a.blocks[0] && b.blocks[0] != a.blocks[1], "distinct blocks");
    /* a step's errors leave lengths and the pool alone */
    int32_t good[6] = {1, 2, 3, 4, 5, 6}, bad[2] = {1, V};
    float lg[2 * V];
    fy_batch_item it[2] = {{&a, good, 6, 1, NULL}, {&b, bad, 2, 1, NULL}};
    CHECK(fy_model_batch_step(&m, &p, it, 2, lg, &err) == -1 && strstr(err.msg, "outside the vocabulary"),
          "a bad token: %s", err.msg);
    it[1].tokens = good;
    it[1].n = 5;
    CHECK(fy_model_batch_step(&m, &p, it, 2, lg, &err) == -1 && strstr(err.msg, "room for 4"), "no room: %s",
          err.msg);
    it[1].seq = &a;
    it[1].n = 1;
    CHECK(fy_model_batch_step(&m, &p, it, 2, lg, &err) == -1 && strstr(err.msg, "share one sequence"),
          "one sequence twice: %s", err.msg);
    CHECK(fy_model_batch_step(&m, &p, it, 1, NULL, &err) == -1, "logits wanted, nowhere to put them");
    CHECK(a.len == 0 && b.len == 0 && p.n_free == 0, "failed steps change nothing");
    it[1] = (fy_batch_item){&b, good, 4, 0, NULL};
    CHECK(fy_model_batch_step(&m, &p, it, 2, lg, &err) == 0, "step: %s", err.msg);
    CHECK(a.len == 6 && b.len == 4, "lengths advance: %d %d", a.len, b.len);
    fy_kv_seq_release(&p, &a);
    CHECK(p.n_free == 2 && a.blocks == NULL && a.len == 0 && a.n_blocks == 0, "release gives the blocks back");
    CHECK(fy_kv_seq_reserve(&p, &a, 8, &err) == 0 && p.n_free == 0, "and they are taken again");
    fy_kv_seq_release(&p, &a);
    fy_kv_seq_release(&p, &b);
    CHECK(p.n_free == 3, "all free");
    fy_kv_pool_free(&p, &m);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

/* ---- (d) the serving ops ---- */

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) { /* xorshift, uniform in [-1, 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static fy_backend *cpu_isa(int kernel) {
    fy_backend_opts o = {0};
    o.cpu_q8 = kernel;
    fy_backend *be;
    fy_err err;
    if (fy_backend_create_opts("cpu", &o, &be, &err)) {
        fprintf(stderr, "cpu: %s\n", err.msg);
        exit(1);
    }
    return be;
}

/* y = x W^T (+ y0) through linear_rows of backend be, host in and out. */
static void run_linear_rows(fy_backend *be, int N, int in, int out, const float *x, int ldx, const float *w, int ldw,
                            float *y, int ldy, int acc) {
    fy_buf bx, bw, by;
    fy_err err;
    size_t nx = (size_t)(N - 1) * ldx + in, nw = (size_t)(out - 1) * ldw + in, ny = (size_t)(N - 1) * ldy + out;
    if (fy_be_alloc(be, &bx, nx, &err) || fy_be_alloc(be, &bw, nw, &err) || fy_be_alloc(be, &by, ny, &err)) exit(1);
    be->ops->upload(be, fy_at(&bx, 0), x, nx);
    be->ops->upload(be, fy_at(&bw, 0), w, nw);
    be->ops->upload(be, fy_at(&by, 0), y, ny);
    be->ops->linear_rows(be, N, in, out, fy_at(&bx, 0), ldx, fy_at(&bw, 0), ldw, fy_at(&by, 0), ldy, acc);
    be->ops->download(be, y, fy_at(&by, 0), ny);
    CHECK(fy_be_sync(be, &err) == 0, "linear_rows: %s", err.msg);
    fy_be_free(be, &bx), fy_be_free(be, &bw), fy_be_free(be, &by);
}

/* Against a double-precision reference; bitwise across N (each row alone
 * vs all rows together), across the kernels (portable, AVX2, best) and
 * through the per-row gemm fallback within rounding. */
static void test_linear_rows(int in, int out, int Nmax, int acc) {
    const int ldx = in + 3, ldw = in + 5, ldy = out + 2;
    float *x = malloc((size_t)Nmax * ldx * sizeof *x), *w = malloc((size_t)out * ldw * sizeof *w);
    float *y0 = malloc((size_t)Nmax * ldy * sizeof *y0), *y = malloc((size_t)Nmax * ldy * sizeof *y);
    float *row = malloc((size_t)ldy * sizeof *row);
    for (size_t i = 0; i < (size_t)Nmax * ldx; i++) x[i] = frand();
    for (size_t i = 0; i < (size_t)out * ldw; i++) w[i] = frand();
    for (size_t i = 0; i < (size_t)Nmax * ldy; i++) y0[i] = frand();
    const int kernels[] = {FY_CPU_Q8_PORTABLE, FY_CPU_Q8_AVX2, FY_CPU_Q8_BEST};
    float *first = malloc((size_t)Nmax * ldy * sizeof *first);
    for (int kk = 0; kk < 3; kk++) {
        fy_backend *be = cpu_isa(kernels[kk]);
        memcpy(y, y0, (size_t)Nmax * ldy * sizeof *y);
        run_linear_rows(be, Nmax, in, out, x, ldx, w, ldw, y, ldy, acc);
        if (!kk) {
            memcpy(first, y, (size_t)Nmax * ldy * sizeof *y);
            double worst = 0;
            for (int n = 0; n < Nmax; n++)
                for (int o = 0; o < out; o++) {
                    double ref = acc ? y0[(size_t)n * ldy + o] : 0, mag = fabs(ref);
                    for (int k = 0; k < in; k++) {
                        ref += (double)x[(size_t)n * ldx + k] * w[(size_t)o * ldw + k];
                        mag += fabs((double)x[(size_t)n * ldx + k] * w[(size_t)o * ldw + k]);
                    }
                    worst = fmax(worst, fabs(y[(size_t)n * ldy + o] - ref) / (mag > 0 ? mag : 1));
                }
            CHECK(worst < 4e-7 * sqrt(in + 1.0) + 1e-7, "linear_rows in=%d out=%d: error %.3g vs double", in, out,
                  worst);
            /* padding columns of y stay as they were */
            int pad_ok = 1;
            for (int n = 0; n + 1 < Nmax; n++)
                pad_ok &= !memcmp(y + (size_t)n * ldy + out, y0 + (size_t)n * ldy + out, 2 * sizeof *y);
            CHECK(pad_ok, "linear_rows writes only its outputs");
        } else {
            CHECK(!memcmp(first, y, (size_t)Nmax * ldy * sizeof *y),
                  "linear_rows in=%d out=%d N=%d: kernel %d differs from the portable one", in, out, Nmax, kernels[kk]);
        }
        if (kk == 2) /* each row alone, and the first n rows, against the full batch */
            for (int n = 0; n < Nmax; n += 1 + n / 3) {
                memcpy(row, y0 + (size_t)n * ldy, (size_t)ldy * sizeof *row);
                run_linear_rows(be, 1, in, out, x + (size_t)n * ldx, ldx, w, ldw, row, ldy, acc);
                CHECK(!memcmp(row, first + (size_t)n * ldy, (size_t)out * sizeof *row),
                      "linear_rows in=%d out=%d: row %d alone differs from it among %d rows", in, out, n, Nmax);
                memcpy(y, y0, (size_t)Nmax * ldy * sizeof *y);
                run_linear_rows(be, n + 1, in, out, x, ldx, w, ldw, y, ldy, acc);
                CHECK(!memcmp(y, first, ((size_t)n * ldy + out) * sizeof *y),
                      "linear_rows in=%d out=%d: the first %d rows differ from them among %d", in, out, n + 1, Nmax);
            }
        fy_backend_destroy(be);
    }
    free(x), free(w), free(y0), free(y), free(row), free(first);
}

/* mla_paged against mla_decode on the same positions laid out contiguous:
 * the same bits, rows in any order and of any length. */
static void test_mla_paged(int H, int r, int dn, int dr, int dv, int bs) {
    enum { NR = 5, NB = 24 };
    fy_backend *be = cpu_isa(FY_CPU_Q8_BEST);
    fy_err err;
    const int dq = H * (dn + dr), rows = NB * bs, lens[NR] = {1, bs, bs + 1, 3 * bs + 2, 7 * bs - 1};
    int32_t blocks[NR * 8], tab[NR], len[NR];
    int nb = 0, perm[NB];
    for (int i = 0; i < NB; i++) perm[i] = i;
    for (int i = NB - 1; i > 0; i--) { /* blocks handed out in a shuffled order */
        int j = (int)((frand() + 1) * 0.5 * (i + 1)) % (i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < NR; i++) {
        tab[i] = nb;
        len[i] = lens[i];
        for (int b = 0; b * bs < lens[i]; b++) blocks[nb] = perm[nb % NB], nb++;
    }
    size_t nw = (size_t)H * (dn + dv) * r;
    float *hq = malloc((size_t)NR * dq * 4), *hw = malloc(nw * 4), *hc = malloc((size_t)rows * r * 4);
    float *hk = malloc((size_t)rows * dr * 4), *o1 = malloc((size_t)NR * H * dv * 4), *o2 = malloc((size_t)H * dv * 4);
    for (size_t i = 0; i < (size_t)NR * dq; i++) hq[i] = frand();
    for (size_t i = 0; i < nw; i++) hw[i] = frand() * 0.3f;
    for (size_t i = 0; i < (size_t)rows * r; i++) hc[i] = frand();
    for (size_t i = 0; i < (size_t)rows * dr; i++) hk[i] = frand();
    fy_buf q, w, c, k, o, gc, gk;
    if (fy_be_alloc(be, &q, (size_t)NR * dq, &err) || fy_be_alloc(be, &w, nw, &err) ||
        fy_be_alloc(be, &c, (size_t)rows * r, &err) || fy_be_alloc(be, &k, (size_t)rows * dr + 1, &err) ||
        fy_be_alloc(be, &o, (size_t)NR * H * dv, &err) || fy_be_alloc(be, &gc, (size_t)rows * r, &err) ||
        fy_be_alloc(be, &gk, (size_t)rows * dr + 1, &err))
        exit(1);
    be->ops->upload(be, fy_at(&q, 0), hq, (size_t)NR * dq);
    be->ops->upload(be, fy_at(&w, 0), hw, nw);
    be->ops->upload(be, fy_at(&c, 0), hc, (size_t)rows * r);
    be->ops->upload(be, fy_at(&k, 0), hk, (size_t)rows * dr);
    float scale = 0.37f;
    be->ops->mla_paged(be, NR, H, r, dn, dr, dv, scale, fy_at(&q, 0), dq, fy_at(&w, 0), fy_at(&c, 0), fy_at(&k, 0),
                       bs, blocks, tab, len, fy_at(&o, 0), H * dv);
    be->ops->download(be, o1, fy_at(&o, 0), (size_t)NR * H * dv);
    for (int i = 0; i < NR; i++) {
        for (int s = 0; s < len[i]; s++) { /* row i's positions, contiguous */
            size_t pr = (size_t)blocks[tab[i] + s / bs] * bs + s % bs;
            be->ops->copy(be, fy_at(&gc, (size_t)s * r), fy_at(&c, pr * r), r);
            be->ops->copy(be, fy_at(&gk, (size_t)s * dr), fy_at(&k, pr * dr), dr);
        }
        be->ops->mla_decode(be, H, len[i], r, dn, dr, dv, scale, fy_at(&q, (size_t)i * dq), dn + dr, fy_at(&w, 0),
                            fy_at(&gc, 0), r, fy_at(&gk, 0), dr > 0 ? dr : 1, fy_at(&o, 0));
        be->ops->download(be, o2, fy_at(&o, 0), (size_t)H * dv);
        CHECK(!memcmp(o1 + (size_t)i * H * dv, o2, (size_t)H * dv * 4),
              "mla_paged H=%d r=%d dr=%d bs=%d: row %d (%d positions) differs from mla_decode", H, r, dr, bs, i, len[i]);
    }
    CHECK(fy_be_sync(be, &err) == 0, "mla: %s", err.msg);
    fy_be_free(be, &q), fy_be_free(be, &w), fy_be_free(be, &c), fy_be_free(be, &k), fy_be_free(be, &o);
    fy_be_free(be, &gc), fy_be_free(be, &gk);
    free(hq), free(hw), free(hc), free(hk), free(o1), free(o2);
    fy_backend_destroy(be);
}

/* OpenCL (no linear_rows or mla_paged of its own: the fallbacks): the batch
 * step is invariant there too, and agrees with cpu within rounding. Returns
 * 77 (skipped) where there is no OpenCL, else the test's status. */
static int test_opencl(void) {
#ifndef FERRY_HAVE_OPENCL
    printf("SKIP: opencl batch step: this ferry was built without OpenCL\n");
    return 77;
#else
    fy_backend *probe;
    fy_err err;
    if (fy_backend_create("opencl", &probe, &err)) {
        printf("SKIP: opencl batch step: no OpenCL device (%s)\n", err.msg);
        return 77;
    }
    fy_backend_destroy(probe);
    fy_config c = test_config(1, 1);
    fy_backend *bc, *bo;
    fy_model mc, mo;
    make_model("cpu", &c, &bc, &mc);
    make_model("opencl", &c, &bo, &mo);
    run rc, ro;
    float *kc[NSEQ], *ko[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        kc[s] = malloc(kv_size(&c, s) * sizeof(float));
        ko[s] = malloc(kv_size(&c, s) * sizeof(float));
    }
    run_batch(&mc, 4, -1, chunk_mixed, 0, 2, &rc, kc);
    run_batch(&mo, 4, -1, chunk_mixed, 0, 2, &ro, ko);
    double worst = 0, worst_kv = 0;
    for (int s = 0; s < NSEQ; s++) {
        for (int t = 0; t < seq_len(s); t++)
            if (rc.have[s][t] && ro.have[s][t])
                worst = fmax(worst, rel(ro.logits[s] + (size_t)t * V, rc.logits[s] + (size_t)t * V, V));
        worst_kv = fmax(worst_kv, rel(ko[s], kc[s], (int)kv_size(&c, s)));
    }
    CHECK(worst < 1e-4 && worst_kv < 1e-4, "opencl batch step vs cpu: logits %.3g, latent KV %.3g (relative)", worst,
          worst_kv);
    printf("opencl batch step vs cpu: worst logit rel err %.2e, latent KV %.2e\n", worst, worst_kv);
    run_free(&rc), run_free(&ro);
    for (int s = 0; s < NSEQ; s++) free(kc[s]), free(ko[s]);
    invariance("opencl f32", &mo);
    /* OpenCL has Q8_0 decode weights (linear_q8): their failing is a failure. */
    int q8 = fy_model_set_decode_quant(&mo, FY_QUANT_Q8_0, &err);
    CHECK(q8 == 0, "opencl q8_0 decode weights: %s", err.msg);
    if (q8 == 0) invariance("opencl q8_0", &mo);
    fy_model_free(&mc), fy_model_free(&mo);
    fy_backend_destroy(bc), fy_backend_destroy(bo);
    return fy_test_finish("test_batch opencl");
#endif
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "opencl")) return test_opencl();
    test_linear_rows(64, 48, 9, 0);
    test_linear_rows(37, 13, 7, 1);
    test_linear_rows(256, 130, 21, 0);
    test_linear_rows(5, 3, 3, 1);
    test_mla_paged(3, 18, 10, 6, 9, 4);
    test_mla_paged(4, 64, 16, 8, 16, 16);
    test_mla_paged(2, 33, 0, 0, 5, 1);
    test_pool();
    test_vs_forward("cpu", 0, 1);
    test_vs_forward("cpu", 1, 0);
    test_invariance("cpu", 0, 1);
    test_invariance("cpu", 1, 0);
    return fy_test_finish("test_batch");
}
