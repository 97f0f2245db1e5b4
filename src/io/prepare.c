/* `ferry data prepare`: text files cut into blocks of lines, each block sent
 * to train or val by a seeded draw, each split encoded and written as token
 * shards (stale shards of an earlier, larger run removed). */
#include "io/prepare.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/rng.h"
#include "io/shard.h"

void fy_prepare_opts_default(fy_prepare_opts *o) {
    o->val_fraction = 0.02;
    o->block_lines = 32;
    o->seed = 20240101;
    o->shard_tokens = 64u << 20;
}

typedef struct text {
    char *p;
    size_t n, cap;
} text;

static int append(text *t, const char *s, size_t n) {
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1 << 20;
        while (cap < t->n + n + 1) cap *= 2;
        char *q = realloc(t->p, cap);
        if (!q) return -1;
        t->p = q;
        t->cap = cap;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    return 0;
}

int fy_prepare_write_shards(const char *dir, const char *split, const int32_t *ids, const uint8_t *mask, uint64_t n,
                            uint32_t vocab, uint32_t row_len, uint64_t shard_tokens, int *n_shards, fy_err *err) {
    /* Rows never straddle two shard files. */
    if (row_len) shard_tokens = shard_tokens < row_len ? row_len : shard_tokens - shard_tokens % row_len;
    *n_shards = 0;
    for (uint64_t off = 0; off < n || *n_shards == 0; off += shard_tokens) {
        char path[FY_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s-%05d.bin", dir, split, *n_shards);
        uint64_t k = n - off < shard_tokens ? n - off : shard_tokens;
        if (fy_shard_write_rows(path, ids ? ids + off : ids, mask ? mask + off : NULL, k, vocab, row_len, err)) return -1;
        (*n_shards)++;
        if (k == 0) break;
    }
    /* Shards of an earlier, larger preparation would be read as data. */
    for (int i = *n_shards;; i++) {
        char path[FY_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s-%05d.bin", dir, split, i);
        if (!fy_file_exists(path) || remove(path) != 0) break;
    }
    return 0;
}

static int write_split(const char *dir, const char *split, const text *t, const fy_tokenizer *tok,
                       const fy_prepare_opts *o, uint64_t *n_tokens, int *n_shards, fy_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (fy_tokenizer_encode(tok, t->p ? t->p : "", t->n, &ids, &n, err)) return -1;
    *n_tokens = n;
    uint32_t V = (uint32_t)fy_tokenizer_vocab_size(tok);
    int rc = fy_prepare_write_shards(dir, split, ids, NULL, n, V, 0, o->shard_tokens, n_shards, err);
    free(ids);
    return rc;
}

int fy_data_prepare(const char *const *files, int n_files, const fy_tokenizer *tok,
                    const char *out_dir, const fy_prepare_opts *o, fy_prepare_stats *st,
                    fy_err *err) {
    memset(st, 0, sizeof *st);
    if (n_files <= 0) return fy_fail(err, "data prepare: no input files");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        return fy_fail(err, "data prepare: validation fraction %g must be in [0, 1)", o->val_fraction);
    text tr = {0}, va = {0};
    uint64_t block = 0;
    int rc = -1;
    for (int f = 0; f < n_files; f++) {
        char *buf;
        size_t len;
        if (fy_read_file(files[f], &buf, &len, err)) goto done;
        st->bytes += len;
        size_t pos = 0;
        while (pos < len) {
            /* One block: block_lines lines (the last line may lack '\n'). */
            size_t end = pos;
            for (int l = 0; l < o->block_lines && end < len; l++) {
                char *nl = memchr(buf + end, '\n', len - end);
                end = nl ? (size_t)(nl - buf) + 1 : len;
            }
            int to_val = fy_rng_uniform(o->seed, 0x76616c, block++) < o->val_fraction;
            if (append(to_val ? &va : &tr, buf + pos, end - pos)) {
                free(buf);
                fy_fail(err, "out of memory reading %s", files[f]);
                goto done;
            }
            pos = end;
        }
        free(buf);
    }
    if (fy_mkdir_p(out_dir, err) ||
        write_split(out_dir, "train", &tr, tok, o, &st->train_tokens, &st->train_shards, err) ||
        write_split(out_dir, "val", &va, tok, o, &st->val_tokens, &st->val_shards, err))
        goto done;
    rc = 0;
done:
    free(tr.p);
    free(va.p);
    return rc;
}
