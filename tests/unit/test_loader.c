/* Data loader: stateless, reproducible batches; rank slicing; epoch
 * permutation coverage; windows inside shards; validation order; errors. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/shard.h"
#include "testutil.h"
#include "train/loader.h"

#define VOCAB 100000
#define T 16

/* Token at (shard k, position i): unique, so a window's origin can be read
 * back from its first token. */
static int32_t tok_at(int k, uint64_t i) { return (int32_t)(k * 20000 + i); }

static const uint64_t shard_len[] = {1000, 10, 2345, 17}; /* 10 < T+1: unused; 17 = T+1 */
#define NSH 4

static char dir[1024];

static void write_shard(const char *name, int k, uint64_t n, uint32_t vocab) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int32_t *t = malloc(n * sizeof *t);
    for (uint64_t i = 0; i < n; i++) t[i] = tok_at(k, i) % (int32_t)vocab;
    fy_err err = {{0}};
    CHECK(fy_shard_write(p, t, n, vocab, &err) == 0, "write %s: %s", name, err.msg);
    free(t);
}

/* Checks one row: labels are inputs shifted by one, the window lies inside
 * its shard on the T grid, and the tokens are the shard's. Returns the global
 * slot or UINT64_MAX. */
static uint64_t check_row(const fy_loader *L, const int32_t *in, const int32_t *lab) {
    int k = in[0] / 20000;
    uint64_t pos = (uint64_t)(in[0] % 20000);
    if (k < 0 || k >= NSH) return UINT64_MAX;
    int ok = pos % T == 0 && pos + T < shard_len[k];
    for (int t = 0; t < T; t++) {
        ok &= in[t] == tok_at(k, pos + t);
        ok &= lab[t] == tok_at(k, pos + t + 1);
        if (t + 1 < T) ok &= lab[t] == in[t + 1];
    }
    if (!ok) return UINT64_MAX;
    return L->slot_start[k] + pos / T;
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", fy_test_tmpdir("test_loader"));
    write_shard("train-00000.bin", 0, shard_len[0], VOCAB);
    write_shard("train-00001.bin", 1, shard_len[1], VOCAB);
    write_shard("train-00002.bin", 2, shard_len[2], VOCAB);
    write_shard("train-00003.bin", 3, shard_len[3], VOCAB);
    write_shard("val-00000.bin", 0, 500, VOCAB);
    write_shard("trainer-notes.bin.tmp", 0, 5, VOCAB); /* not a shard of the split */

    fy_err err = {{0}};
    fy_loader L;
    CHECK(fy_loader_open(&L, dir, "train", VOCAB, &err) == 0, "open train: %s", err.msg);
    CHECK(L.n_shards == NSH, "n_shards %d", L.n_shards);
    CHECK(L.n_tokens == 1000 + 10 + 2345 + 17, "n_tokens %llu", (unsigned long long)L.n_tokens);
    uint64_t ns = 0;
    CHECK(fy_loader_n_slots(&L, T, &ns, &err) == 0, "n_slots: %s", err.msg);
    uint64_t want_ns = 999 / T + 0 + 2344 / T + 16 / T;
    CHECK(ns == want_ns, "n_slots %llu want %llu", (unsigned long long)ns,
          (unsigned long long)want_ns);

    enum { B = 8 };
    int32_t in[B * T], lab[B * T], in2[B * T], lab2[B * T];

    /* Same (seed, step) -> same batch, also from a freshly opened loader. */
    CHECK(fy_loader_batch(&L, 42, 7, 0, 1, B, T, in, lab, &err) == 0, "batch: %s", err.msg);
    fy_loader L2;
    CHECK(fy_loader_open(&L2, dir, "train", 0, &err) == 0, "reopen: %s", err.msg);
    CHECK(fy_loader_batch(&L2, 42, 7, 0, 1, B, T, in2, lab2, &err) == 0, "batch2: %s", err.msg);
    CHECK(memcmp(in, in2, sizeof in) == 0 && memcmp(lab, lab2, sizeof lab) == 0,
          "same (seed, step) gave different batches");
    fy_loader_close(&L2);

    /* Different step, different seed -> different batch. */
    fy_loader_batch(&L, 42, 8, 0, 1, B, T, in2, lab2, &err);
    CHECK(memcmp(in, in2, sizeof in) != 0, "steps 7 and 8 gave the same batch");
    fy_loader_batch(&L, 43, 7, 0, 1, B, T, in2, lab2, &err);
    CHECK(memcmp(in, in2, sizeof in) != 0, "seeds 42 and 43 gave the same batch");

    /* Rows are valid windows with shifted labels. */
    for (int b = 0; b < B; b++)
        CHECK(check_row(&L, in + b * T, lab + b * T) != UINT64_MAX, "row %d is not a valid window", b);

    /* Rank slices: 2 ranks x 4 rows and 4 ranks x 2 rows == 1 rank x 8 rows. */
    for (uint64_t step = 0; step < 5; step++) {
        fy_loader_batch(&L, 9, step, 0, 1, B, T, in, lab, &err);
        for (int nr = 2; nr <= 4; nr *= 2) {
            int b = B / nr;
            for (int r = 0; r < nr; r++) {
                CHECK(fy_loader_batch(&L, 9, step, r, nr, b, T, in2, lab2, &err) == 0, "%s", err.msg);
                CHECK(memcmp(in2, in + r * b * T, sizeof(int32_t) * b * T) == 0 &&
                          memcmp(lab2, lab + r * b * T, sizeof(int32_t) * b * T) == 0,
                      "step %llu: rank %d of %d differs from rows of the global batch",
                      (unsigned long long)step, r, nr);
            }
        }
    }

    /* One epoch of draws through the batch API: every slot exactly once,
     * every window in bounds. Then epoch 1: again a permutation, new order. */
    {
        uint8_t *seen = calloc(ns, 1);
        uint64_t *order0 = malloc(ns * sizeof *order0);
        int bad = 0, dup = 0;
        for (int epoch = 0; epoch < 2; epoch++) {
            memset(seen, 0, ns);
            int same_order = 1;
            for (uint64_t g = epoch * ns; g < (epoch + 1) * ns; g++) {
                int32_t i1[T], l1[T];
                /* batch of one row on one of 3 ranks: g = step*3 + rank */
                fy_loader_batch(&L, 5, g / 3, (int)(g % 3), 3, 1, T, i1, l1, &err);
                uint64_t slot = check_row(&L, i1, l1);
                if (slot == UINT64_MAX || slot >= ns) { bad++; continue; }
                if (seen[slot]++) dup++;
                if (epoch == 0) order0[g] = slot;
                else if (order0[g - ns] != slot) same_order = 0;
                fy_window w;
                fy_loader_locate(&L, 5, g, T, &w, &err);
                if (w.slot != slot || w.epoch != (uint64_t)epoch || w.shard == 1) bad++;
            }
            uint64_t missing = 0;
            for (uint64_t i = 0; i < ns; i++) missing += !seen[i];
            CHECK(bad == 0 && dup == 0 && missing == 0,
                  "epoch %d: %d bad windows, %d repeats, %llu slots missing", epoch, bad, dup,
                  (unsigned long long)missing);
            if (epoch == 1) CHECK(!same_order, "epochs 0 and 1 drew slots in the same order");
        }
        free(seen);
        free(order0);
    }

    /* The permutation is a bijection for awkward sizes, and keys matter. */
    {
        uint64_t sizes[] = {1, 2, 3, 5, 17, 64, 65, 1000, 4097};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            uint64_t n = sizes[i];
            uint8_t *hit = calloc(n, 1);
            int ok = 1, identity = 1;
            for (uint64_t x = 0; x < n; x++) {
                uint64_t y = fy_loader_permute(x, n, 0x1234 + i);
                if (y >= n || hit[y]++) ok = 0;
                if (y != x) identity = 0;
            }
            CHECK(ok, "permute is not a bijection of [0, %llu)", (unsigned long long)n);
            if (n >= 17) CHECK(!identity, "permute of %llu is the identity", (unsigned long long)n);
            free(hit);
        }
    }

    /* Validation: fixed windows in order. */
    {
        fy_loader V;
        CHECK(fy_loader_open(&V, dir, "val", VOCAB, &err) == 0, "open val: %s", err.msg);
        uint64_t vs = 0, nb = 0;
        fy_loader_n_slots(&V, T, &vs, &err);
        CHECK(vs == 499 / T, "val slots %llu", (unsigned long long)vs);
        CHECK(fy_loader_val_batches(&V, 2, 4, T, 0, &nb, &err) == 0 && nb == vs / 8,
              "val batches %llu", (unsigned long long)nb);
        CHECK(fy_loader_val_batches(&V, 2, 4, T, 2, &nb, &err) == 0 && nb == 2, "capped %llu",
              (unsigned long long)nb);
        int ok = 1;
        for (uint64_t i = 0; i < 3; i++)
            for (int r = 0; r < 2; r++) {
                fy_loader_val_batch(&V, i, r, 2, 4, T, in, lab, &err);
                for (int b = 0; b < 4; b++) {
                    uint64_t slot = (i * 8 + r * 4 + b) % vs;
                    ok &= in[b * T] == tok_at(0, slot * T) && lab[b * T + T - 1] == tok_at(0, slot * T + T);
                }
            }
        CHECK(ok, "val batches are not the slots in order");
        /* Too long a sequence for the split. */
        CHECK(fy_loader_n_slots(&V, 500, &vs, &err) == -1, "seq_len 500 accepted");
        char want[1400];
        snprintf(want, sizeof want, "val split in %s has 500 tokens, need at least 501 for seq_len 500",
                 dir);
        CHECK(strstr(err.msg, want) != NULL, "message: %s", err.msg);
        CHECK(fy_loader_val_batch(&V, 0, 0, 1, 1, 600, in, lab, &err) == -1, "val T=600 accepted");
        CHECK(fy_loader_n_slots(&V, T, &vs, &err) == 0, "T back to 16: %s", err.msg);
        fy_loader_close(&V);
    }

    /* Multi-shard split where no shard is long enough. */
    CHECK(fy_loader_n_slots(&L, 3000, &ns, &err) == -1 && strstr(err.msg, "train split") &&
              strstr(err.msg, "need at least 3001"),
          "train seq_len 3000: %s", err.msg);
    CHECK(fy_loader_batch(&L, 1, 0, 0, 1, 1, 3000, in, lab, &err) == -1, "batch T=3000 accepted");
    CHECK(fy_loader_batch(&L, 1, 0, 2, 2, 1, T, in, lab, &err) == -1, "rank 2 of 2 accepted");
    fy_loader_close(&L);

    /* Open errors. */
    CHECK(fy_loader_open(&L, dir, "test", 0, &err) == -1 && strstr(err.msg, dir) &&
              strstr(err.msg, "test-"),
          "missing split: %s", err.msg);
    CHECK(fy_loader_open(&L, dir, "train", 8192, &err) == -1 &&
              strstr(err.msg, "shard vocab 100000 != model vocab 8192") &&
              strstr(err.msg, "train-00000.bin"),
          "vocab mismatch: %s", err.msg);
    CHECK(fy_loader_open(&L, "/nonexistent/ferry-data", "train", 0, &err) == -1 &&
              strstr(err.msg, "/nonexistent/ferry-data"),
          "missing dir: %s", err.msg);
    write_shard("val-00001.bin", 0, 100, 4096);
    CHECK(fy_loader_open(&L, dir, "val", 0, &err) == -1 && strstr(err.msg, "val-00001.bin") &&
              strstr(err.msg, "differs"),
          "mixed vocab: %s", err.msg);
    /* A corrupted shard is caught at open and named. */
    {
        char p[1200];
        snprintf(p, sizeof p, "%s/train-00002.bin", dir);
        FILE *f = fopen(p, "r+b");
        fseek(f, 64 + 100, SEEK_SET);
        fputc(0x55, f);
        fclose(f);
        CHECK(fy_loader_open(&L, dir, "train", VOCAB, &err) == -1 &&
                  strstr(err.msg, "train-00002.bin") && strstr(err.msg, "checksum"),
              "corrupt shard: %s", err.msg);
    }

    return fy_test_finish("test_loader");
}
