/* The training data loader (loader.h): memory-mapped token shards of a
 * split, windows of T+1 tokens in a seeded per-epoch order (a Feistel
 * permutation), and validation batches. A row depends only on (seed, row). */
#include "train/loader.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/rng.h"
#include "model/model.h"

/* RNG stream for the per-epoch permutation key ("DATA" in ASCII). */
#define FY_LOADER_STREAM 0x44415441ull
#define FY_FEISTEL_ROUNDS 6

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void fy_loader_close(fy_loader *L) {
    if (!L) return;
    for (int i = 0; i < L->n_shards; i++) fy_shard_close(&L->shards[i]);
    free(L->shards);
    free(L->slot_start);
    L->shards = NULL;
    L->slot_start = NULL;
    L->n_shards = 0;
    L->slots_T = 0;
    L->n_slots = 0;
}

int fy_loader_open(fy_loader *L, const char *dir, const char *split, uint32_t expected_vocab,
                   fy_err *err) {
    memset(L, 0, sizeof *L);
    if (!split || !*split || strlen(split) >= sizeof L->split - 2 || strchr(split, '/'))
        return fy_fail(err, "data loader: bad split name \"%s\"", split ? split : "(null)");
    snprintf(L->dir, sizeof L->dir, "%s", dir);
    snprintf(L->split, sizeof L->split, "%s", split);

    DIR *d = opendir(dir);
    if (!d) return fy_fail(err, "data directory %s: cannot open: %s", dir, strerror(errno));
    char prefix[80];
    snprintf(prefix, sizeof prefix, "%s-", split);
    size_t plen = strlen(prefix);
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len <= plen + 4 || strncmp(e->d_name, prefix, plen) != 0 ||
            strcmp(e->d_name + len - 4, ".bin") != 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) break;
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) break;
        n++;
    }
    closedir(d);
    int rc = 0;
    if (e != NULL) {
        rc = fy_fail(err, "data directory %s: out of memory listing shards", dir);
        goto out;
    }
    if (n == 0) {
        rc = fy_fail(err, "data directory %s: no %s shards (%s*.bin)", dir, split, prefix);
        goto out;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    L->shards = calloc((size_t)n, sizeof *L->shards);
    if (!L->shards) {
        rc = fy_fail(err, "data directory %s: out of memory", dir);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        fy_shard *s = &L->shards[i];
        if (fy_shard_open(path, s, 1, expected_vocab, err) < 0) {
            rc = -1;
            goto out;
        }
        L->n_shards = i + 1;
        if (i == 0) {
            L->vocab_size = s->vocab_size;
            L->row_len = s->row_len;
        } else if (s->row_len != L->row_len) {
            rc = fy_fail(err, "token shard %s: rows of %u tokens, but %s/%s has %u (0 = a token stream)", path,
                         s->row_len, dir, names[0], L->row_len);
            goto out;
        } else if (s->vocab_size != L->vocab_size) {
            rc = fy_fail(err, "token shard %s: vocab %u differs from vocab %u of %s/%s", path,
                         s->vocab_size, L->vocab_size, dir, names[0]);
            goto out;
        }
        L->n_tokens += s->n_tokens;
    }
out:
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc < 0) fy_loader_close(L);
    return rc;
}

int fy_loader_n_slots(fy_loader *L, int T, uint64_t *n_slots, fy_err *err) {
    if (T <= 0) return fy_fail(err, "data loader: seq_len %d must be positive", T);
    if (L->row_len && L->row_len != (uint32_t)T + 1)
        return fy_fail(err, "%s split in %s holds examples padded to %u tokens (prepared with --seq %u); this run's "
                            "seq_len is %d: prepare the data again with --seq %d, or train with --seq %u",
                       L->split, L->dir, L->row_len, L->row_len - 1, T, T, L->row_len - 1);
    if (L->slots_T != T) {
        uint64_t *ss = realloc(L->slot_start, ((size_t)L->n_shards + 1) * sizeof *ss);
        if (!ss) return fy_fail(err, "data loader: out of memory");
        L->slot_start = ss;
        uint64_t total = 0, max_tokens = 0;
        int short_shards = 0;
        for (int i = 0; i < L->n_shards; i++) {
            uint64_t nt = L->shards[i].n_tokens;
            ss[i] = total;
            if (nt > max_tokens) max_tokens = nt;
            if (L->row_len) total += nt / L->row_len;
            else if (nt >= (uint64_t)T + 1) total += (nt - 1) / (uint64_t)T;
            else short_shards++;
        }
        ss[L->n_shards] = total;
        if (total == 0) {
            L->slots_T = 0;
            if (L->n_shards == 1)
                return fy_fail(err, "%s split in %s has %llu tokens, need at least %d for seq_len %d",
                               L->split, L->dir, (unsigned long long)L->n_tokens, T + 1, T);
            return fy_fail(err, "%s split in %s has %llu tokens in %d shards, but the largest has "
                                "%llu, need at least %d in one shard for seq_len %d (windows never "
                                "span shards)",
                           L->split, L->dir, (unsigned long long)L->n_tokens, L->n_shards,
                           (unsigned long long)max_tokens, T + 1, T);
        }
        if (short_shards)
            fy_warn("%s split in %s: %d of %d shards have fewer than %d tokens and are unused at "
                    "seq_len %d",
                    L->split, L->dir, short_shards, L->n_shards, T + 1, T);
        L->n_slots = total;
        L->slots_T = T;
    }
    if (n_slots) *n_slots = L->n_slots;
    return 0;
}

/* Keyed permutation of [0, n): balanced Feistel network over 2^(2h) >= n,
 * cycle-walking until the value lands in range. The domain is < 4n, so the
 * expected number of walks is < 4; the walk always ends because x < n lies on
 * its own cycle. */
uint64_t fy_loader_permute(uint64_t x, uint64_t n, uint64_t key) {
    if (n <= 1) return 0;
    int bits = 0;
    while (bits < 63 && (1ull << bits) < n) bits++;
    if (bits & 1) bits++;
    int h = bits / 2;
    uint64_t mask = h >= 64 ? ~0ull : (1ull << h) - 1;
    do {
        uint64_t l = x >> h, r = x & mask;
        for (int round = 0; round < FY_FEISTEL_ROUNDS; round++) {
            uint64_t nl = r;
            r = l ^ (fy_rng_u64(key, (uint64_t)round, r) & mask);
            l = nl;
        }
        x = (l << h) | r;
    } while (x >= n);
    return x;
}

static void slot_to_window(const fy_loader *L, uint64_t slot, int T, fy_window *w) {
    /* Last shard i with slot_start[i] <= slot (shards without slots are skipped
     * because their start equals the next one's). */
    int lo = 0, hi = L->n_shards - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (L->slot_start[mid] <= slot) lo = mid;
        else hi = mid - 1;
    }
    w->shard = lo;
    w->slot = slot;
    w->pos = (slot - L->slot_start[lo]) * (L->row_len ? (uint64_t)L->row_len : (uint64_t)T);
}

int fy_loader_locate(fy_loader *L, uint64_t seed, uint64_t g, int T, fy_window *w, fy_err *err) {
    uint64_t ns;
    if (fy_loader_n_slots(L, T, &ns, err) < 0) return -1;
    uint64_t epoch = g / ns;
    uint64_t key = fy_rng_u64(seed, FY_LOADER_STREAM, epoch);
    slot_to_window(L, fy_loader_permute(g % ns, ns, key), T, w);
    w->epoch = epoch;
    return 0;
}

static int copy_window(const fy_loader *L, const fy_window *w, int T, int32_t *in, int32_t *lab,
                       fy_err *err) {
    const fy_shard *s = &L->shards[w->shard];
    if (fy_shard_read(s, w->pos, (uint64_t)T, in, err) < 0 || fy_shard_read(s, w->pos + 1, (uint64_t)T, lab, err) < 0)
        return -1;
    /* A label the mask leaves out (prompt, padding) is not trained on. */
    for (int t = 0; s->mask && t < T; t++)
        if (!fy_shard_trained(s, w->pos + 1 + (uint64_t)t)) lab[t] = FY_IGNORE_INDEX;
    return 0;
}

int fy_loader_rows(fy_loader *L, uint64_t seed, uint64_t row0, int nrows, int T,
                   int32_t *inputs, int32_t *labels, fy_err *err) {
    if (nrows < 0) return fy_fail(err, "data loader: negative row count %d", nrows);
    for (int r = 0; r < nrows; r++) {
        fy_window w;
        if (fy_loader_locate(L, seed, row0 + (uint64_t)r, T, &w, err) < 0) return -1;
        if (copy_window(L, &w, T, inputs + (size_t)r * T, labels + (size_t)r * T, err) < 0)
            return -1;
    }
    return 0;
}

static int check_ranks(int rank, int n_ranks, int B, fy_err *err) {
    if (n_ranks <= 0 || rank < 0 || rank >= n_ranks)
        return fy_fail(err, "data loader: rank %d of %d is out of range", rank, n_ranks);
    if (B <= 0) return fy_fail(err, "data loader: batch size %d must be positive", B);
    return 0;
}

int fy_loader_batch(fy_loader *L, uint64_t seed, uint64_t step, int rank, int n_ranks, int B,
                    int T, int32_t *inputs, int32_t *labels, fy_err *err) {
    if (check_ranks(rank, n_ranks, B, err) < 0) return -1;
    uint64_t global_b = (uint64_t)n_ranks * (uint64_t)B;
    return fy_loader_rows(L, seed, step * global_b + (uint64_t)rank * (uint64_t)B, B, T, inputs,
                          labels, err);
}

int fy_loader_val_batches(fy_loader *L, int n_ranks, int B, int T, uint64_t max_batches,
                          uint64_t *n_batches, fy_err *err) {
    if (check_ranks(0, n_ranks, B, err) < 0) return -1;
    uint64_t ns;
    if (fy_loader_n_slots(L, T, &ns, err) < 0) return -1;
    uint64_t nb = ns / ((uint64_t)n_ranks * (uint64_t)B);
    if (nb == 0) nb = 1;
    if (max_batches > 0 && nb > max_batches) nb = max_batches;
    *n_batches = nb;
    return 0;
}

int fy_loader_val_batch(fy_loader *L, uint64_t index, int rank, int n_ranks, int B, int T,
                        int32_t *inputs, int32_t *labels, fy_err *err) {
    if (check_ranks(rank, n_ranks, B, err) < 0) return -1;
    uint64_t ns;
    if (fy_loader_n_slots(L, T, &ns, err) < 0) return -1;
    uint64_t row0 = index * (uint64_t)n_ranks * (uint64_t)B + (uint64_t)rank * (uint64_t)B;
    for (int r = 0; r < B; r++) {
        fy_window w;
        slot_to_window(L, (row0 + (uint64_t)r) % ns, T, &w);
        w.epoch = 0;
        if (copy_window(L, &w, T, inputs + (size_t)r * T, labels + (size_t)r * T, err) < 0)
            return -1;
    }
    return 0;
}
