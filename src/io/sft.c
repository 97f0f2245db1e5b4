/* `ferry data prepare` of JSONL examples (io/sft.h): lines -> padded rows
 * with a loss mask -> train/val row shards; bad lines reported by number. */
#include "io/sft.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/strbuf.h"
#include "io/prepare.h"

#define SFT_VAL_STREAM 0x736674ull /* "sft" */

void fy_sft_opts_default(fy_sft_opts *o) {
    memset(o, 0, sizeof *o);
    o->seq_len = 0;
    o->val_fraction = 0.02;
    o->seed = 20240101;
    o->shard_tokens = 64u << 20;
}

/* The rows of one split: ids and mask bytes, row after row. */
typedef struct rows {
    fy_strbuf ids, mask;
    uint64_t n;
} rows;

static int add_row(rows *r, const fy_sft_example *ex, int32_t pad, int T1, fy_err *err) {
    if (fy_strbuf_add(&r->ids, ex->ids, ex->n * sizeof *ex->ids, err) ||
        fy_strbuf_add(&r->mask, ex->mask, ex->n, err))
        return -1;
    for (size_t i = ex->n; i < (size_t)T1; i++) {
        static const uint8_t zero = 0;
        if (fy_strbuf_add(&r->ids, &pad, sizeof pad, err) || fy_strbuf_add(&r->mask, &zero, 1, err)) return -1;
    }
    r->n++;
    return 0;
}

static void warn_bad(void *ctx, const char *file, long line, const char *why) {
    fy_warn("%s:%ld: %s (line skipped)", file, line, why);
}

/* A bad line: reported and skipped, or the run's error. */
static int bad_line(const fy_sft_opts *o, fy_sft_stats *st, const char *file, long line, const fy_err *why,
                    fy_err *err) {
    st->bad++;
    if (o->fail_on_bad_line) return fy_fail(err, "%s:%ld: %s", file, line, why->msg);
    (o->on_bad_line ? o->on_bad_line : warn_bad)(o->ctx, file, line, why->msg);
    return 0;
}

typedef struct job {
    const fy_tokenizer *tok;
    const fy_chat_template *t;
    const fy_sft_opts *o;
    fy_sft_stats *st;
    int32_t pad;
    rows split[2]; /* train, val */
} job;

static int one_line(job *J, const char *file, long lineno, const char *p, size_t len, fy_err *err) {
    const fy_sft_opts *o = J->o;
    fy_sft_stats *st = J->st;
    size_t k = 0;
    while (k < len && isspace((unsigned char)p[k])) k++;
    if (k == len) {
        st->blank++;
        return 0;
    }
    fy_sft_example ex;
    fy_err why;
    if (fy_sft_encode(p, len, J->t, J->tok, o->train_on_prompt, &ex, &why))
        return bad_line(o, st, file, lineno, &why, err);
    const int T1 = o->seq_len + 1;
    if (ex.n > (size_t)T1) {
        fy_fail(&why, "%zu tokens, over --seq %d + 1 = %d (never truncated: raise --seq or shorten the example)", ex.n,
                o->seq_len, T1);
        fy_sft_example_free(&ex);
        return bad_line(o, st, file, lineno, &why, err);
    }
    int val = fy_rng_uniform(o->seed, SFT_VAL_STREAM, (uint64_t)st->lines) < o->val_fraction;
    int rc = add_row(&J->split[val], &ex, J->pad, T1, err);
    if (!rc) {
        st->examples[ex.format]++;
        st->boundary_mismatch += ex.boundary_mismatch;
        st->tokens += ex.n;
        st->pad += (uint64_t)T1 - ex.n;
        for (size_t i = 1; i < ex.n; i++) st->trained += ex.mask[i];
    }
    fy_sft_example_free(&ex);
    return rc;
}

static int one_file(job *J, const char *file, fy_err *err) {
    char *buf;
    size_t len;
    if (fy_read_file(file, &buf, &len, err)) return -1;
    long lineno = 0;
    int rc = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        lineno++;
        rc = one_line(J, file, lineno, buf + pos, end - pos, err);
        J->st->lines++;
        pos = end + 1;
    }
    free(buf);
    return rc;
}

/* Moves the last train row to val (the trainer needs a val split). */
static int move_last_row(rows *tr, rows *va, int T1, fy_err *err) {
    size_t ib = (size_t)T1 * sizeof(int32_t), mb = (size_t)T1;
    if (fy_strbuf_add(&va->ids, tr->ids.p + tr->ids.n - ib, ib, err) ||
        fy_strbuf_add(&va->mask, tr->mask.p + tr->mask.n - mb, mb, err))
        return -1;
    tr->ids.n -= ib;
    tr->mask.n -= mb;
    tr->n--;
    va->n++;
    return 0;
}

static int write_split(const job *J, const char *dir, int val, int *n_shards, fy_err *err) {
    const rows *r = &J->split[val];
    uint32_t T1 = (uint32_t)J->o->seq_len + 1;
    return fy_prepare_write_shards(dir, val ? "val" : "train", (const int32_t *)r->ids.p, (const uint8_t *)r->mask.p,
                                   r->n * T1, (uint32_t)fy_tokenizer_vocab_size(J->tok), T1, J->o->shard_tokens,
                                   n_shards, err);
}

int fy_sft_prepare(const char *const *files, int n_files, const fy_tokenizer *tok, const fy_chat_template *t,
                   const char *out_dir, const fy_sft_opts *o, fy_sft_stats *st, fy_err *err) {
    memset(st, 0, sizeof *st);
    if (n_files <= 0) return fy_fail(err, "data prepare: no input files");
    if (o->seq_len < 1) return fy_fail(err, "data prepare: JSONL examples need --seq T (rows of T+1 tokens)");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        return fy_fail(err, "data prepare: validation fraction %g must be in [0, 1)", o->val_fraction);
    job J;
    memset(&J, 0, sizeof J);
    J.tok = tok, J.t = t, J.o = o, J.st = st;
    J.pad = fy_tokenizer_pad(tok) >= 0 ? fy_tokenizer_pad(tok) : fy_tokenizer_eos(tok);
    if (J.pad < 0) return fy_fail(err, "data prepare: the tokenizer has neither a pad nor an eos token to pad with");
    int rc = 0;
    for (int f = 0; f < n_files && !rc; f++) rc = one_file(&J, files[f], err);
    if (!rc && J.split[0].n + J.split[1].n == 0) rc = fy_fail(err, "data prepare: no usable example in the input");
    if (!rc && o->val_fraction > 0 && J.split[1].n == 0 && J.split[0].n > 1)
        rc = move_last_row(&J.split[0], &J.split[1], o->seq_len + 1, err);
    st->train_rows = J.split[0].n;
    st->val_rows = J.split[1].n;
    if (!rc) rc = fy_mkdir_p(out_dir, err) || write_split(&J, out_dir, 0, &st->train_shards, err) ||
                  write_split(&J, out_dir, 1, &st->val_shards, err);
    for (int s = 0; s < 2; s++) {
        fy_strbuf_free(&J.split[s].ids);
        fy_strbuf_free(&J.split[s].mask);
    }
    return rc ? -1 : 0;
}
