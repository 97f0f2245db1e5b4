/* Tokenizer tests: training, round trips on text and arbitrary bytes, a naive
 * reference BPE, save/load, the streaming decoder, malformed tokenizer.json.
 *
 * With arguments it is also the C side of the Hugging Face agreement test
 * (tools/tok_hf_check.py) and a benchmark:
 *   test_tokenizer --train-and-encode OUTDIR
 *   test_tokenizer --encode TOKENIZER_JSON TEXT_FILE IDS_OUT [--special]
 *   test_tokenizer --pretok TEXT_FILE PIECES_OUT      (hex, one piece a line)
 *   test_tokenizer --bench TEXT_FILE VOCAB_SIZE [SAVE_JSON]
 *   test_tokenizer --encode-cases TOKENIZER_JSON CASES_JSON OUT_JSON SAVE_JSON
 *       (tools/interop/tok_hf_pretok.py: CASES_JSON is an array of strings;
 *       OUT_JSON has each one's ids without and with FY_ENC_SPECIAL, the
 *       decoded bytes of the latter in hex, and fy_tokenizer_pre_name; the
 *       loaded tokenizer is saved to SAVE_JSON) */
#include <cjson/cJSON.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rng.h"
#include "io/tokenizer.h"
#include "io/tokenizer_impl.h"
#include "testutil.h"
#include "core/clock.h"

/* ---------------------------------------------------------------- helpers */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap * 2 : 4096;
        while (c < b->n + n + 1) c *= 2;
        b->p = realloc(b->p, c);
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static uint64_t g_ctr;
static uint64_t rnd(uint64_t seed) { return fy_rng_u64(seed, 7, g_ctr++); }

/* Strict UTF-8 check, written independently of the library's. */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        int len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (i + len > n) return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

static const char *const WORDS[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "I", "this", "are", "or", "his", "from", "at", "which", "but",
    "have", "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her",
    "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no",
    "model", "training", "token", "tokenizer", "gradient", "expert", "attention", "layer",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "she'd", "DON'T", "O'Neil",
    "naïve", "café", "résumé", "Ελληνικά", "日本語", "中文字符", "русский", "עברית",
    "العربية", "हिन्दी", "한국어", "emoji", "🙂", "👍🏽", "👨‍👩‍👧", "∑x²", "½", "٣٤",
    "Ⅻ", "e\xcc\x81t\xc3\xa9", "ﬁne", "Straße", "ǅemal",
};
#define NWORDS (sizeof WORDS / sizeof WORDS[0])

static const char *const SEPS[] = {
    " ", " ", " ", " ", " ", " ", " ", ", ", ". ", "  ", "   ", "\n", "\n\n", "\t", " - ",
    "; ", "! ", "? ", " (", ") ", " \"", "\" ", "...", " \xc2\xa0", "\xe3\x80\x80", "\r\n",
    " \n ", ":", "/", "'", " '", "''",
};
#define NSEPS (sizeof SEPS / sizeof SEPS[0])

/* Seeded text: words, numbers, punctuation, runs of spaces, newlines. */
static char *gen_text(uint64_t seed, size_t target, size_t *len) {
    sbuf b = {0};
    g_ctr = 0;
    while (b.n < target) {
        uint64_t r = rnd(seed);
        if (r % 23 == 0) {
            char num[32];
            snprintf(num, sizeof num, "%llu", (unsigned long long)(rnd(seed) % 100000));
            sb_puts(&b, num);
        } else {
            /* Zipf-ish: low indices much more often */
            uint64_t u = rnd(seed) % (NWORDS * NWORDS);
            size_t k = 0;
            while ((k + 1) * (k + 1) <= u) k++;
            sb_puts(&b, WORDS[NWORDS - 1 - k]);
        }
        sb_puts(&b, SEPS[rnd(seed) % NSEPS]);
    }
    *len = b.n;
    return b.p;
}

/* Arbitrary bytes, heavy on NULs, high bytes and broken UTF-8. */
static char *gen_bytes(uint64_t seed, size_t n) {
    char *s = malloc(n + 1);
    static const char *const frags[] = {"\xe2\x82", "\xf0\x9f\x99", "\xed\xa0\x80", "\xc0\xaf",
                                        "\xf4\x90\x80\x80", "\xe2\x82\xac", "\xf0\x9f\x99\x82",
                                        " the", "'s", "  ", "\n", "\xc3\xa9", "\x80\x80"};
    size_t i = 0;
    while (i < n) {
        uint64_t r = rnd(seed);
        if (r % 3 == 0) {
            const char *f = frags[rnd(seed) % (sizeof frags / sizeof frags[0])];
            size_t l = strlen(f);
            if (i + l > n) l = n - i;
            memcpy(s + i, f, l);
            i += l;
        } else if (r % 3 == 1) {
            s[i++] = (char)(rnd(seed) & 0xFF);
        } else {
            s[i++] = (char)(r % 7 == 0 ? 0 : 'a' + rnd(seed) % 26);
        }
    }
    s[n] = 0;
    return s;
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    sbuf b = {0};
    char chunk[65536];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) sb_add(&b, chunk, r);
    fclose(f);
    if (!b.p) sb_add(&b, "", 0);
    *n = b.n;
    return b.p;
}

static int write_ids(const char *path, const int32_t *ids, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (size_t i = 0; i < n; i++) fprintf(f, "%d\n", (int)ids[i]);
    return fclose(f);
}

/* ------------------------------------------------- naive reference BPE */

typedef struct ref_bpe {
    const fy_tokenizer *tok;
    uint64_t *keys;
    int32_t *rank, *res;
    uint64_t mask;
    int32_t *out;
    size_t n, cap;
} ref_bpe;

static void ref_init(ref_bpe *r, const fy_tokenizer *tok) {
    memset(r, 0, sizeof *r);
    r->tok = tok;
    int32_t m = fy_tokenizer_n_merges(tok);
    r->mask = 15;
    while (r->mask + 1 < 4 * (uint64_t)m + 4) r->mask = 2 * r->mask + 1;
    r->keys = malloc((r->mask + 1) * sizeof *r->keys);
    r->rank = malloc((r->mask + 1) * sizeof *r->rank);
    r->res = malloc((r->mask + 1) * sizeof *r->res);
    for (uint64_t i = 0; i <= r->mask; i++) r->keys[i] = UINT64_MAX;
    for (int32_t k = 0; k < m; k++) {
        int32_t a, b, c;
        fy_tokenizer_merge(tok, k, &a, &b, &c);
        uint64_t key = ((uint64_t)a << 32) | (uint32_t)b;
        uint64_t i = (key * 0x9E3779B97F4A7C15ULL >> 20) & r->mask;
        while (r->keys[i] != UINT64_MAX) i = (i + 1) & r->mask;
        r->keys[i] = key;
        r->rank[i] = k;
        r->res[i] = c;
    }
}

static int ref_find(const ref_bpe *r, int32_t a, int32_t b, int32_t *res) {
    uint64_t key = ((uint64_t)a << 32) | (uint32_t)b;
    for (uint64_t i = (key * 0x9E3779B97F4A7C15ULL >> 20) & r->mask;; i = (i + 1) & r->mask) {
        if (r->keys[i] == key) {
            *res = r->res[i];
            return r->rank[i];
        }
        if (r->keys[i] == UINT64_MAX) return -1;
    }
}

/* Repeatedly merge the lowest-rank adjacent pair, leftmost first. O(n^2). */
static int ref_piece(void *ctx, const unsigned char *p, size_t n) {
    ref_bpe *r = ctx;
    int32_t *s = malloc(n * sizeof *s);
    char one[8];
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        char *str = fy_tok_bytes_to_str(&c, 1);
        snprintf(one, sizeof one, "%s", str);
        free(str);
        s[i] = fy_tokenizer_token_to_id(r->tok, one);
    }
    size_t m = n;
    for (;;) {
        int best = -1;
        size_t at = 0;
        int32_t bres = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            int32_t res;
            int rk = ref_find(r, s[i], s[i + 1], &res);
            if (rk >= 0 && (best < 0 || rk < best)) {
                best = rk;
                at = i;
                bres = res;
            }
        }
        if (best < 0) break;
        s[at] = bres;
        memmove(s + at + 1, s + at + 2, (m - at - 2) * sizeof *s);
        m--;
    }
    if (r->n + m > r->cap) {
        r->cap = 2 * (r->n + m) + 64;
        r->out = realloc(r->out, r->cap * sizeof *r->out);
    }
    memcpy(r->out + r->n, s, m * sizeof *s);
    r->n += m;
    free(s);
    return 0;
}

static void ref_encode(ref_bpe *r, const char *text, size_t len) {
    fy_pretok pre;
    fy_err err;
    r->n = 0;
    if (fy_pretok_init(&pre, &err)) return;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(pre.re, NULL);
    fy_pretok_split(&pre, md, (const unsigned char *)text, len, ref_piece, r);
    pcre2_match_data_free(md);
    fy_pretok_free(&pre);
}

static void ref_free(ref_bpe *r) {
    free(r->keys);
    free(r->rank);
    free(r->res);
    free(r->out);
}

/* ------------------------------------------------------------- checks */

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* encode -> decode gives the input back; the ids equal the reference's. */
static void check_round_trip(const fy_tokenizer *tok, ref_bpe *ref, const char *s, size_t n,
                             const char *what) {
    fy_err err = {{0}};
    int32_t *ids = NULL;
    size_t nid = 0;
    int rc = fy_tokenizer_encode(tok, s, n, &ids, &nid, &err);
    CHECK(rc == 0, "%s: encode: %s", what, err.msg);
    if (rc) return;
    char *out = NULL;
    size_t on = 0;
    rc = fy_tokenizer_decode(tok, ids, nid, 0, &out, &on, &err);
    CHECK(rc == 0 && on == n && memcmp(out, s, n) == 0, "%s: decode(encode(x)) != x (%zu vs %zu bytes)",
          what, on, n);
    int32_t V = fy_tokenizer_vocab_size(tok);
    int special = 0;
    for (size_t i = 0; i < nid; i++)
        if (ids[i] < 0 || ids[i] >= V || fy_tokenizer_token_type(tok, ids[i]) != FY_TOKEN_NORMAL) special = 1;
    CHECK(!special, "%s: encode produced a special or out-of-range id", what);
    if (ref) {
        ref_encode(ref, s, n);
        CHECK(same_ids(ids, nid, ref->out, ref->n), "%s: ids differ from the naive reference (%zu vs %zu)",
              what, nid, ref->n);
    }
    free(out);
    free(ids);
}

static void check_stream(const fy_tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
                         int expect_valid, const char *what) {
    fy_err err = {{0}};
    char *whole = NULL;
    size_t wn = 0;
    fy_tokenizer_decode(tok, ids, n, flags, &whole, &wn, &err);
    fy_detok_stream st;
    fy_detok_stream_init(&st, tok, flags);
    sbuf acc = {0};
    sb_add(&acc, "", 0);
    int invalid_chunks = 0, rc_bad = 0;
    for (size_t i = 0; i < n; i++) {
        const char *o;
        size_t ol;
        if (fy_detok_stream_push(&st, ids[i], &o, &ol, &err)) rc_bad = 1;
        if (!valid_utf8((const unsigned char *)o, ol)) invalid_chunks++;
        sb_add(&acc, o, ol);
    }
    const char *o;
    size_t ol;
    if (fy_detok_stream_flush(&st, &o, &ol, &err)) rc_bad = 1;
    sb_add(&acc, o, ol);
    CHECK(!rc_bad, "%s: stream push/flush failed: %s", what, err.msg);
    if (expect_valid) CHECK(invalid_chunks == 0, "%s: %d chunks were not valid UTF-8", what, invalid_chunks);
    CHECK(acc.n == wn && memcmp(acc.p, whole, wn) == 0, "%s: stream output != decode (%zu vs %zu)", what,
          acc.n, wn);
    fy_detok_stream_free(&st);
    free(acc.p);
    free(whole);
}

static fy_tokenizer *train(const char *text, size_t n, int vocab, int threads) {
    fy_tok_train_opts o = {.vocab_size = vocab, .threads = threads};
    fy_tokenizer *tok = NULL;
    fy_err err = {{0}};
    int rc = fy_tokenizer_train_text(text, n, &o, &tok, &err);
    CHECK(rc == 0, "train: %s", err.msg);
    return tok;
}

static char *json_of(const fy_tokenizer *tok) {
    fy_err err;
    return fy_tokenizer_to_json(tok, NULL, &err);
}

/* ------------------------------------------ naive reference trainer */

typedef struct nwords {
    int32_t **sym;
    size_t *len;
    int64_t *cnt;
    size_t n, cap;
} nwords;

static int naive_piece(void *ctx, const unsigned char *p, size_t n) {
    nwords *w = ctx;
    for (size_t i = 0; i < w->n; i++) { /* linear search: small inputs only */
        if (w->len[i] != n) continue;
        size_t k = 0;
        while (k < n && w->sym[i][k] == p[k]) k++;
        if (k == n) {
            w->cnt[i]++;
            return 0;
        }
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->sym = realloc(w->sym, w->cap * sizeof *w->sym);
        w->len = realloc(w->len, w->cap * sizeof *w->len);
        w->cnt = realloc(w->cnt, w->cap * sizeof *w->cnt);
    }
    w->sym[w->n] = malloc(n * sizeof(int32_t));
    for (size_t k = 0; k < n; k++) w->sym[w->n][k] = p[k];
    w->len[w->n] = n;
    w->cnt[w->n] = 1;
    w->n++;
    return 0;
}

/* Recounts every pair before every merge; returns the number of merges and
 * fills m (3 ints each). Same rules: max count, ties to the lowest (a, b),
 * a pair is merged once, results reuse a token with the same bytes. */
static int32_t naive_train(const char *text, size_t len, int32_t target, int32_t *m) {
    nwords w = {0};
    fy_pretok pre;
    fy_err err;
    fy_pretok_init(&pre, &err);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(pre.re, NULL);
    fy_pretok_split(&pre, md, (const unsigned char *)text, len, naive_piece, &w);
    pcre2_match_data_free(md);
    fy_pretok_free(&pre);
    char **tb = calloc(target, sizeof *tb);
    size_t *tl = calloc(target, sizeof *tl);
    for (int32_t i = 0; i < 256; i++) {
        tb[i] = malloc(1);
        tb[i][0] = (char)i;
        tl[i] = 1;
    }
    int32_t ntok = 256, nm = 0;
    int64_t *cnt = malloc((size_t)target * target * sizeof *cnt);
    while (ntok < target) {
        memset(cnt, 0, (size_t)ntok * ntok * sizeof *cnt);
        for (size_t i = 0; i < w.n; i++)
            for (size_t k = 0; k + 1 < w.len[i]; k++) cnt[(size_t)w.sym[i][k] * ntok + w.sym[i][k + 1]] += w.cnt[i];
        int64_t best = 0;
        int32_t ba = -1, bb = -1;
        for (int32_t a = 0; a < ntok; a++)
            for (int32_t b = 0; b < ntok; b++) {
                int64_t c = cnt[(size_t)a * ntok + b];
                if (c <= best) continue;
                int done = 0;
                for (int32_t r = 0; r < nm && !done; r++) done = m[3 * r] == a && m[3 * r + 1] == b;
                if (done) continue;
                best = c;
                ba = a;
                bb = b;
            }
        if (best < 2) break;
        size_t nl = tl[ba] + tl[bb];
        char *nb = malloc(nl);
        memcpy(nb, tb[ba], tl[ba]);
        memcpy(nb + tl[ba], tb[bb], tl[bb]);
        int32_t res = -1;
        for (int32_t t = 256; t < ntok && res < 0; t++)
            if (tl[t] == nl && memcmp(tb[t], nb, nl) == 0) res = t;
        if (res < 0) {
            res = ntok++;
            tb[res] = nb;
            tl[res] = nl;
        } else {
            free(nb);
        }
        m[3 * nm] = ba;
        m[3 * nm + 1] = bb;
        m[3 * nm + 2] = res;
        nm++;
        for (size_t i = 0; i < w.n; i++) {
            size_t j = 0;
            for (size_t k = 0; k < w.len[i];) {
                if (k + 1 < w.len[i] && w.sym[i][k] == ba && w.sym[i][k + 1] == bb) {
                    w.sym[i][j++] = res;
                    k += 2;
                } else {
                    w.sym[i][j++] = w.sym[i][k++];
                }
            }
            w.len[i] = j;
        }
    }
    for (int32_t i = 0; i < ntok; i++) free(tb[i]);
    for (size_t i = 0; i < w.n; i++) free(w.sym[i]);
    free(tb);
    free(tl);
    free(cnt);
    free(w.sym);
    free(w.len);
    free(w.cnt);
    return nm;
}

static void test_train_vs_naive(void) {
    size_t n;
    char *text = gen_text(3, 12000, &n);
    static const char extra[] = " aaaaaaaaaaaaaaaaaaaaaaaaa aaaaaaa aaa aaaa abababababab aabaabaabaab "
                                "aaaaaaaaaaaaaaaaaaaaaaaaa 1111111111111111 baaa baaa baaab ab ab aab";
    text = realloc(text, n + 3 * sizeof extra);
    for (int k = 0; k < 3; k++) {
        memcpy(text + n, extra, sizeof extra - 1);
        n += sizeof extra - 1;
    }
    const int32_t vocab = 420;
    int32_t *want = malloc(3 * 4096 * sizeof *want);
    int32_t nw = naive_train(text, n, vocab - 3, want);
    fy_tokenizer *tok = train(text, n, vocab, 1);
    if (tok) {
        int32_t nm = fy_tokenizer_n_merges(tok), bad = -1;
        for (int32_t r = 0; r < nm && r < nw && bad < 0; r++) {
            int32_t a, b, c;
            fy_tokenizer_merge(tok, r, &a, &b, &c);
            if (a != want[3 * r] || b != want[3 * r + 1] || c != want[3 * r + 2]) bad = r;
        }
        CHECK(nm == nw && bad < 0, "training differs from the naive trainer: %d vs %d merges, first "
              "difference at %d", (int)nm, (int)nw, (int)bad);
    }
    fy_tokenizer_free(tok);
    free(want);
    free(text);

    /* one long piece: training cost must not scale with piece length x merges */
    size_t big = 1 << 20;
    char *w = malloc(big);
    g_ctr = 0;
    for (size_t i = 0; i < big; i++) w[i] = "abcdefgh"[rnd(11) % 8];
    double t0 = fy_now_s();
    tok = train(w, big, 1000, 1);
    double dt = fy_now_s() - t0;
    CHECK(tok && fy_tokenizer_vocab_size(tok) == 1000 && dt < 30, "1 MB single piece: %.1f s", dt);
    if (tok) check_round_trip(tok, NULL, w, big, "1 MB single piece");
    fy_tokenizer_free(tok);
    free(w);
}

static void test_tiny(void) {
    /* classic example: aaabdaaabac -> (a,a), then a tie between (Z,a) and
     * (a,b), both 2: the lower pair of ids (a,b) = (97,98) wins; then (Z,Y). */
    fy_tokenizer *tok = train("aaabdaaabac", 11, 300, 1);
    if (!tok) return;
    CHECK(fy_tokenizer_n_merges(tok) == 3, "tiny: %d merges", (int)fy_tokenizer_n_merges(tok));
    CHECK(fy_tokenizer_vocab_size(tok) == 262, "tiny: vocab %d", (int)fy_tokenizer_vocab_size(tok));
    int32_t l, r, c;
    fy_tokenizer_merge(tok, 0, &l, &r, &c);
    CHECK(l == 'a' && r == 'a' && c == 256, "tiny merge 0: %d %d %d", l, r, c);
    fy_tokenizer_merge(tok, 1, &l, &r, &c);
    CHECK(l == 'a' && r == 'b' && c == 257, "tiny merge 1: %d %d %d", l, r, c);
    fy_tokenizer_merge(tok, 2, &l, &r, &c);
    CHECK(l == 256 && r == 257 && c == 258, "tiny merge 2: %d %d %d", l, r, c);
    CHECK(strcmp(fy_tokenizer_token_str(tok, 258), "aaab") == 0, "tiny: token 258 = %s",
          fy_tokenizer_token_str(tok, 258));
    CHECK(fy_tokenizer_bos(tok) == 259 && fy_tokenizer_eos(tok) == 260 && fy_tokenizer_pad(tok) == 261,
          "tiny: specials %d %d %d", fy_tokenizer_bos(tok), fy_tokenizer_eos(tok), fy_tokenizer_pad(tok));
    int32_t *ids;
    size_t n;
    fy_err err;
    fy_tokenizer_encode(tok, "aaabdaaabac", 11, &ids, &n, &err);
    int32_t want[] = {258, 'd', 258, 'a', 'c'};
    CHECK(same_ids(ids, n, want, 5), "tiny: encode gives %zu ids", n);
    free(ids);
    fy_tokenizer_free(tok);

    fy_err e2 = {{0}};
    fy_tok_train_opts o = {.vocab_size = 258};
    CHECK(fy_tokenizer_train_text("abc", 3, &o, &tok, &e2) != 0 && strstr(e2.msg, "too small"),
          "vocab 258 must be refused: %s", e2.msg);
    o.vocab_size = 259;
    CHECK(fy_tokenizer_train_text("abcabc", 6, &o, &tok, &e2) == 0 && fy_tokenizer_vocab_size(tok) == 259 &&
              fy_tokenizer_n_merges(tok) == 0,
          "vocab 259: %s", e2.msg);
    fy_tokenizer_free(tok);
}

static void test_pretok_edges(const fy_tokenizer *tok, ref_bpe *ref) {
    static const char *const cases[] = {
        "", "a", " ", "  ", "\n", "don't 'S 've", "a  \nb", "x\ny", "hello world", "  hello",
        "e\xcc\x81t", "\xef\xbb\xbf" "BOM", "tab\tsep\r\nCRLF", "ÿ\xc2\xad\x7f", "<|bos|><|eos|>",
        "caf\xc3\xa9\xff\xfe", "\xe2\x82", "\xf0\x9f\x99", "a\xc0\xaf" "b", "\xed\xa0\x80\xed\xb0\x80",
        "12345678901234567890", "!!!???...", "\xe3\x80\x80 x", "\xc2\x85NEL",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "edge case %zu", i);
        check_round_trip(tok, ref, cases[i], strlen(cases[i]), what);
    }
    check_round_trip(tok, ref, "a\0b\0\0 c", 7, "NULs");
    /* long runs: one huge piece each */
    size_t big = 300000;
    char *s = malloc(big);
    const char fill[] = {' ', 'a', '7', '\xff', '.'};
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(s, fill[k], big);
        char what[64];
        snprintf(what, sizeof what, "run of 0x%02x", (unsigned char)fill[k]);
        check_round_trip(tok, NULL, s, big, what);
    }
    for (size_t i = 0; i < big; i++) s[i] = "ab"[i % 2];
    check_round_trip(tok, NULL, s, big, "run of abab");
    free(s);
}

static void test_special(const fy_tokenizer *tok) {
    const char *t = "one<|eos|>two <|bos|><|pad|>";
    int32_t *ids;
    size_t n;
    fy_err err;
    int32_t bos = fy_tokenizer_bos(tok), eos = fy_tokenizer_eos(tok), pad = fy_tokenizer_pad(tok);
    fy_tokenizer_encode(tok, t, strlen(t), &ids, &n, &err);
    int found = 0;
    for (size_t i = 0; i < n; i++) found |= ids[i] == bos || ids[i] == eos || ids[i] == pad;
    CHECK(!found, "special strings must be plain text by default");
    free(ids);
    CHECK(fy_tokenizer_encode_ex(tok, t, strlen(t), FY_ENC_SPECIAL, &ids, &n, &err) == 0, "%s", err.msg);
    int ne = 0, nb = 0, np = 0;
    for (size_t i = 0; i < n; i++) {
        ne += ids[i] == eos;
        nb += ids[i] == bos;
        np += ids[i] == pad;
    }
    CHECK(ne == 1 && nb == 1 && np == 1 && ids[n - 1] == pad && ids[n - 2] == bos,
          "FY_ENC_SPECIAL: %d eos, %d bos, %d pad", ne, nb, np);
    char *out;
    size_t on;
    fy_tokenizer_decode(tok, ids, n, 0, &out, &on, &err);
    CHECK(strcmp(out, t) == 0, "decode with specials: %s", out);
    free(out);
    fy_tokenizer_decode(tok, ids, n, FY_DEC_SKIP_SPECIAL, &out, &on, &err);
    CHECK(strcmp(out, "onetwo ") == 0, "decode skipping specials: '%s'", out);
    free(out);
    free(ids);
    int32_t bad = fy_tokenizer_vocab_size(tok);
    CHECK(fy_tokenizer_decode(tok, &bad, 1, 0, &out, &on, &err) != 0 && strstr(err.msg, "out of range"),
          "decode of a bad id: %s", err.msg);
}

static void test_vocab_shape(const fy_tokenizer *tok, int vocab) {
    int32_t V = fy_tokenizer_vocab_size(tok);
    CHECK(V == vocab, "vocab %d, asked %d", (int)V, vocab);
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        size_t l;
        const char *p = fy_tokenizer_token_bytes(tok, b, &l);
        if (l != 1 || (unsigned char)p[0] != b) bad++;
    }
    CHECK(bad == 0, "%d of ids 0..255 are not their byte", bad);
    CHECK(fy_tokenizer_bos(tok) == V - 3 && fy_tokenizer_eos(tok) == V - 2 && fy_tokenizer_pad(tok) == V - 1,
          "specials not at V-3..V-1");
    CHECK(fy_tokenizer_token_type(tok, V - 1) == FY_TOKEN_CONTROL &&
              fy_tokenizer_token_type(tok, V - 4) == FY_TOKEN_NORMAL,
          "token types");
    CHECK(strcmp(fy_tokenizer_token_str(tok, ' '), "\xc4\xa0") == 0 && fy_tokenizer_token_to_id(tok, "\xc4\xa0") == ' ',
          "byte 0x20 is written as U+0120");
    CHECK(fy_tokenizer_token_to_id(tok, "<|eos|>") == V - 2, "token_to_id(<|eos|>)");
    /* every merge result is the concatenation of its parts; results are new ids in order */
    int32_t M = fy_tokenizer_n_merges(tok), next = 256;
    bad = 0;
    for (int32_t r = 0; r < M; r++) {
        int32_t a, b, c;
        size_t la, lb, lc;
        fy_tokenizer_merge(tok, r, &a, &b, &c);
        const char *pa = fy_tokenizer_token_bytes(tok, a, &la), *pb = fy_tokenizer_token_bytes(tok, b, &lb);
        const char *pc = fy_tokenizer_token_bytes(tok, c, &lc);
        if (lc != la + lb || memcmp(pc, pa, la) || memcmp(pc + la, pb, lb) || a >= c || b >= c) bad++;
        if (c == next) next++;
        else if (c > next) bad++;
    }
    CHECK(bad == 0, "%d bad merges", bad);
    CHECK(next == V - 3, "merge results cover 256..V-4 (next %d)", (int)next);
}

static void test_save_load(const fy_tokenizer *tok, const char *text, size_t tn, const char *rb, size_t rn) {
    const char *dir = fy_test_tmpdir("test_tokenizer");
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    fy_err err = {{0}};
    CHECK(fy_tokenizer_save(tok, path, &err) == 0, "save: %s", err.msg);
    fy_tokenizer *t2 = NULL;
    CHECK(fy_tokenizer_load(path, &t2, &err) == 0, "load: %s", err.msg);
    if (!t2) return;
    CHECK(fy_tokenizer_vocab_size(t2) == fy_tokenizer_vocab_size(tok) &&
              fy_tokenizer_n_merges(t2) == fy_tokenizer_n_merges(tok),
          "load: sizes differ");
    const char *ins[2] = {text, rb};
    size_t lens[2] = {tn, rn};
    for (int k = 0; k < 2; k++) {
        int32_t *a, *b;
        size_t na, nb;
        fy_tokenizer_encode(tok, ins[k], lens[k], &a, &na, &err);
        fy_tokenizer_encode(t2, ins[k], lens[k], &b, &nb, &err);
        CHECK(same_ids(a, na, b, nb), "save/load: ids differ on input %d", k);
        free(a);
        free(b);
    }
    char *j1 = json_of(tok), *j2 = json_of(t2);
    CHECK(j1 && j2 && strcmp(j1, j2) == 0, "save -> load -> save is not identical");
    CHECK(fy_tokenizer_token_type(t2, fy_tokenizer_eos(t2)) == FY_TOKEN_CONTROL, "loaded eos type");
    free(j1);
    free(j2);
    fy_tokenizer_free(t2);
}

/* A hand-written HF-style file: merges as pairs, byte tokens at permuted ids. */
static void test_hf_style(void) {
    sbuf j = {0};
    sb_puts(&j, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":259,\"content\":\"<|endoftext|>\","
                "\"special\":true}],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
                "\"add_prefix_space\":false,\"trim_offsets\":true},\"post_processor\":null,"
                "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"dropout\":null,"
                "\"continuing_subword_prefix\":\"\",\"end_of_word_suffix\":\"\",\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        char *s = fy_tok_bytes_to_str(&c, 1);
        char e[64];
        snprintf(e, sizeof e, "\"%s%s\":%d,", (b == '"' || b == '\\') ? "\\" : "", s, (b * 7 + 3) % 256);
        sb_puts(&j, e);
        free(s);
    }
    sb_puts(&j, "\"\xc4\xa0t\":256,\"he\":257,\"\xc4\xa0the\":258},\"merges\":[[\"\xc4\xa0\",\"t\"],"
                "[\"h\",\"e\"],[\"\xc4\xa0t\",\"he\"]]}}");
    fy_tokenizer *tok = NULL;
    fy_err err = {{0}};
    CHECK(fy_tokenizer_from_json(j.p, j.n, "hf.json", &tok, &err) == 0, "HF-style file: %s", err.msg);
    free(j.p);
    if (!tok) return;
    int32_t *ids;
    size_t n;
    fy_tokenizer_encode(tok, "the the", 7, &ids, &n, &err);
    int32_t want[] = {('t' * 7 + 3) % 256, 257, 258};
    CHECK(same_ids(ids, n, want, 3), "HF-style encode: %zu ids (%d %d)", n, n ? ids[0] : -1, n > 1 ? ids[1] : -1);
    free(ids);
    char *out;
    size_t on;
    int32_t d[] = {258, 259, 257};
    fy_tokenizer_decode(tok, d, 3, 0, &out, &on, &err);
    CHECK(strcmp(out, " the<|endoftext|>he") == 0, "HF-style decode: %s", out);
    free(out);
    CHECK(fy_tokenizer_token_type(tok, 259) == FY_TOKEN_CONTROL && fy_tokenizer_eos(tok) == -1, "HF-style types");
    fy_tokenizer_free(tok);
}

typedef struct bad_case {
    const char *json, *want;
} bad_case;

static void test_malformed(void) {
    const char *dir = fy_test_tmpdir("test_tokenizer_bad");
    static const char V[] = "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}";
    static const char PT[] = "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},";
    char buf[32][512];
    bad_case cases[] = {
        {"{\"model\": ", "not valid JSON"},
        {"[1,2]", "not an object"},
        {"{\"version\":\"1.0\"}", "\"model\""},
        {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "only BPE"},
        {buf[0], "model.vocab"},
        {buf[1], "model.merges"},
        {buf[2], "unknown token \"c\""},
        {buf[3], "out of range"},
        {buf[4], "duplicate id"},
        {buf[5], "not two tokens"},
        {buf[6], "is not in model.vocab"},
        {buf[7], "no gaps"},
        {buf[8], "pre_tokenizer type \"Whitespace\" is not supported"},
        {buf[9], "added_tokens[0]"},
        {buf[10], "not an integer id"},
        {buf[11], "normalizer \"NFKC\" is not supported"},
        {buf[12], "duplicate token"},
        {buf[13], "model.dropout"},
        {"{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "only BPE"},
        {buf[14], "model.byte_fallback=true"},
        {buf[15], "pre_tokenizer.pretokenizers[0] type \"Metaspace\""},
        {buf[16], "lstrip=true is not supported"},
        {buf[17], "pre_tokenizer.behavior \"Around\""},
        {buf[18], "does not compile"},
        {buf[19], "\\h or \\H"},
        {buf[20], "normalizer.normalizers[1] \"Lowercase\""},
        {buf[21], "no ByteLevel step"},
        {buf[22], "single_word=true"},
        {buf[23], "pre_tokenizer.pattern must be"},
        {buf[24], "a nested character class"},
    };
    static const char SEQ[] = "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[%s,"
                              "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},";
    char pt[400];
    snprintf(buf[14], 512, "{%s\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,%s,\"merges\":[]}}", PT, V);
    snprintf(pt, sizeof pt, SEQ, "{\"type\":\"Metaspace\"}");
    snprintf(buf[15], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", pt, V);
    snprintf(buf[16], 512, "{%s\"added_tokens\":[{\"id\":3,\"content\":\"x\",\"lstrip\":true}],"
             "\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", PT, V);
    snprintf(buf[17], 512, "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
             "\"behavior\":\"Around\"},\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", V);
    snprintf(pt, sizeof pt, SEQ, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\"}");
    snprintf(buf[18], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", pt, V);
    snprintf(pt, sizeof pt, SEQ, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\h+\"},\"behavior\":\"Isolated\"}");
    snprintf(buf[19], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", pt, V);
    snprintf(buf[20], 512, "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
             "{\"type\":\"Lowercase\"}]},%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", PT, V);
    snprintf(buf[21], 512, "{\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":true},"
             "\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", V);
    snprintf(buf[22], 512, "{%s\"added_tokens\":[{\"id\":3,\"content\":\"x\",\"single_word\":true}],"
             "\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", PT, V);
    snprintf(buf[23], 512, "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":\"a\",\"behavior\":\"Isolated\"},"
             "\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", V);
    snprintf(pt, sizeof pt, SEQ, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a[b]]\"},\"behavior\":\"Isolated\"}");
    snprintf(buf[24], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", pt, V);
    snprintf(buf[0], 512, "{%s\"model\":{\"type\":\"BPE\",\"merges\":[]}}", PT);
    snprintf(buf[1], 512, "{%s\"model\":{\"type\":\"BPE\",%s}}", PT, V);
    snprintf(buf[2], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[\"a c\"]}}", PT, V);
    snprintf(buf[3], 512, "{%s\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", PT);
    snprintf(buf[4], 512, "{%s\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", PT);
    snprintf(buf[5], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[\"ab\"]}}", PT, V);
    snprintf(buf[6], 512, "{%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[\"b a\"]}}", PT, V);
    snprintf(buf[7], 512, "{%s\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":5},\"merges\":[]}}", PT);
    snprintf(buf[8], 512, "{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", V);
    snprintf(buf[9], 512, "{%s\"added_tokens\":[{\"content\":\"x\"}],\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", PT, V);
    snprintf(buf[10], 512, "{%s\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"},\"merges\":[]}}", PT);
    snprintf(buf[11], 512, "{\"normalizer\":{\"type\":\"NFKC\"},%s\"model\":{\"type\":\"BPE\",%s,\"merges\":[]}}", PT, V);
    snprintf(buf[12], 512, "{%s\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]}}", PT);
    snprintf(buf[13], 512, "{%s\"model\":{\"type\":\"BPE\",\"dropout\":0.1,%s,\"merges\":[]}}", PT, V);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/bad%zu.json", dir, i);
        write_file(path, cases[i].json, strlen(cases[i].json));
        fy_tokenizer *tok = NULL;
        fy_err err = {{0}};
        int rc = fy_tokenizer_load(path, &tok, &err);
        CHECK(rc != 0 && !tok, "bad case %zu was accepted", i);
        CHECK(strstr(err.msg, cases[i].want) && strstr(err.msg, path),
              "bad case %zu: message '%s' lacks '%s' or the path", i, err.msg, cases[i].want);
        fy_tokenizer_free(tok);
    }
    fy_tokenizer *tok = NULL;
    fy_err err = {{0}};
    CHECK(fy_tokenizer_load("/nonexistent/tokenizer.json", &tok, &err) != 0 &&
              strstr(err.msg, "/nonexistent/tokenizer.json"),
          "missing file: %s", err.msg);
}

static void test_split_and_files(const fy_tokenizer *tok, const char *text, size_t n) {
    fy_err err;
    int32_t *all;
    size_t nall;
    fy_tokenizer_encode(tok, text, n, &all, &nall, &err);
    int bad = 0;
    for (int k = 1; k < 20; k++) {
        size_t p = fy_tokenizer_split_point(text, n, n / 20 * k);
        int32_t *a, *b;
        size_t na, nb;
        fy_tokenizer_encode(tok, text, p, &a, &na, &err);
        fy_tokenizer_encode(tok, text + p, n - p, &b, &nb, &err);
        if (na + nb != nall || memcmp(a, all, na * 4) || memcmp(b, all + na, nb * 4)) bad++;
        free(a);
        free(b);
    }
    CHECK(bad == 0, "split points changed the ids %d times", bad);
    free(all);

    /* training from two files cut at a split point == training on the text */
    const char *dir = fy_test_tmpdir("test_tokenizer_files");
    char p1[1200], p2[1200];
    snprintf(p1, sizeof p1, "%s/a.txt", dir);
    snprintf(p2, sizeof p2, "%s/b.txt", dir);
    size_t cut = fy_tokenizer_split_point(text, n, n / 3);
    write_file(p1, text, cut);
    write_file(p2, text + cut, n - cut);
    const char *paths[2] = {p1, p2};
    fy_tok_train_opts o = {.vocab_size = 700};
    fy_tokenizer *tf = NULL, *tt = train(text, n, 700, 1);
    CHECK(fy_tokenizer_train_files(paths, 2, &o, &tf, &err) == 0, "train_files: %s", err.msg);
    char *j1 = tt ? json_of(tt) : NULL, *j2 = tf ? json_of(tf) : NULL;
    CHECK(j1 && j2 && strcmp(j1, j2) == 0, "train_files != train_text");
    free(j1);
    free(j2);
    fy_tokenizer_free(tf);
    fy_tokenizer_free(tt);
    fy_err e2 = {{0}};
    const char *missing = "/nonexistent/x.txt";
    CHECK(fy_tokenizer_train_files(&missing, 1, &o, &tf, &e2) != 0 && strstr(e2.msg, missing),
          "missing training file: %s", e2.msg);
}

static void test_parallel(void) {
    /* >= 1 MB: counting and encoding run in parallel chunks; same result */
    size_t n;
    char *text = gen_text(99, 1300000, &n);
    fy_tokenizer *t1 = train(text, n, 600, 1), *t2 = train(text, n, 600, 2);
    char *j1 = t1 ? json_of(t1) : NULL, *j2 = t2 ? json_of(t2) : NULL;
    CHECK(j1 && j2 && strcmp(j1, j2) == 0, "parallel training differs from serial");
    if (t1) {
        fy_err err;
        int32_t *a, *b;
        size_t na, nb;
        int saved = omp_get_max_threads();
        omp_set_num_threads(1);
        fy_tokenizer_encode(t1, text, n, &a, &na, &err);
        omp_set_num_threads(saved > 1 ? saved : 2);
        fy_tokenizer_encode(t1, text, n, &b, &nb, &err);
        omp_set_num_threads(saved);
        CHECK(same_ids(a, na, b, nb), "parallel encode differs from serial (%zu vs %zu)", na, nb);
        free(a);
        free(b);
    }
    free(j1);
    free(j2);
    fy_tokenizer_free(t1);
    fy_tokenizer_free(t2);
    free(text);
}

/* Pieces of text under a pre_tokenizer JSON, joined with '|'. */
static int join_piece(void *ctx, const unsigned char *p, size_t n) {
    sbuf *b = ctx;
    if (b->n) sb_add(b, "|", 1);
    sb_add(b, p, n);
    return 0;
}

static char *split_with(const char *pt_json, const char *text) {
    cJSON *pt = cJSON_Parse(pt_json);
    fy_hf_pre *p = NULL;
    fy_err err = {{0}};
    sbuf b = {0};
    if (fy_hf_pre_parse(NULL, pt, "t.json", &p, &err) || !p) {
        CHECK(0, "pre_tokenizer %s refused: %s", pt_json, err.msg);
    } else {
        fy_hf_scratch *sc = fy_hf_scratch_new(p);
        fy_hf_pre_split(p, sc, (const unsigned char *)text, strlen(text), join_piece, &b);
        fy_hf_scratch_free(sc);
    }
    sb_add(&b, "", 1);
    fy_hf_pre_free(p);
    cJSON_Delete(pt);
    return b.p;
}

/* Split behaviours on "a-b--c" with the literal "-", as tokenizers
 * documents them (pre_tokenizers.Split), then a ByteLevel without regex. */
static void test_split_behaviours(void) {
    static const char *const beh[][2] = {
        {"Removed", "a|b|c"},          {"Isolated", "a|-|b|-|-|c"},  {"MergedWithPrevious", "a-|b-|-|c"},
        {"MergedWithNext", "a|-b|-|-c"}, {"Contiguous", "a|-|b|--|c"},
    };
    for (int k = 0; k < 5; k++) {
        char js[400];
        snprintf(js, sizeof js, "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                 "{\"String\":\"-\"},\"behavior\":\"%s\",\"invert\":false},{\"type\":\"ByteLevel\","
                 "\"add_prefix_space\":false,\"use_regex\":false}]}", beh[k][0]);
        char *got = split_with(js, "a-b--c");
        CHECK(got && strcmp(got, beh[k][1]) == 0, "Split %s: \"%s\", want \"%s\"", beh[k][0], got, beh[k][1]);
        free(got);
    }
    /* invert: the pattern marks what to keep, Removed drops the rest */
    char *got = split_with("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                           "{\"Regex\":\"\\\\p{L}+\"},\"behavior\":\"Removed\",\"invert\":true},"
                           "{\"type\":\"ByteLevel\",\"use_regex\":false}]}", "ab, cd!");
    CHECK(got && strcmp(got, "ab|cd") == 0, "inverted Removed Split: \"%s\"", got);
    free(got);
    /* Digits: runs or single digits; ByteLevel's prefix space on every piece */
    got = split_with("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":"
                     "false},{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":false}]}", "x123y4");
    CHECK(got && strcmp(got, " x| 123| y| 4") == 0, "Digits + prefix space: \"%s\"", got);
    free(got);
}

/* fy_tokenizer_set_special, fy_tokenizer_pre_name, and the components of a
 * loaded file kept on save. */
static void test_hf_api(const fy_tokenizer *trained) {
    CHECK(fy_tokenizer_pre_name(trained) && strcmp(fy_tokenizer_pre_name(trained), "gpt-2") == 0,
          "pre_name of a ferry tokenizer: %s", fy_tokenizer_pre_name(trained));
    char *j = json_of(trained);
    cJSON *root = cJSON_Parse(j);
    free(j);
    cJSON *seq = cJSON_Parse("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                             "{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior\":\"Isolated\",\"invert\":false},"
                             "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}");
    cJSON_ReplaceItemInObject(root, "pre_tokenizer", seq);
    cJSON_ReplaceItemInObject(root, "normalizer", cJSON_Parse("{\"type\":\"NFC\"}"));
    char *mod = cJSON_Print(root);
    fy_tokenizer *t = NULL;
    fy_err err = {{0}};
    CHECK(fy_tokenizer_from_json(mod, strlen(mod), "seq.json", &t, &err) == 0, "Sequence file: %s", err.msg);
    if (t) {
        CHECK(fy_tokenizer_pre_name(t) == NULL, "pre_name of a Split-digits chain: %s", fy_tokenizer_pre_name(t));
        char *back = json_of(t);
        cJSON *br = cJSON_Parse(back);
        CHECK(cJSON_Compare(cJSON_GetObjectItem(br, "pre_tokenizer"), seq, 1) &&
                  cJSON_Compare(cJSON_GetObjectItem(br, "normalizer"), cJSON_GetObjectItem(root, "normalizer"), 1),
              "saved pre_tokenizer/normalizer differ from the loaded ones");
        cJSON_Delete(br);
        free(back);
        int32_t v = fy_tokenizer_vocab_size(t);
        CHECK(fy_tokenizer_set_special(t, 5, 6, -1, &err) == 0 && fy_tokenizer_bos(t) == 5 &&
                  fy_tokenizer_eos(t) == 6 && fy_tokenizer_pad(t) == -1, "set_special");
        CHECK(fy_tokenizer_set_special(t, 1, v, 2, &err) != 0 && strstr(err.msg, "eos") && fy_tokenizer_eos(t) == 6,
              "set_special out of range accepted: %s", err.msg);
        fy_tokenizer_free(t);
    }
    free(mod);
    cJSON_Delete(root);
}

static int run_tests(void) {
    test_tiny();
    test_train_vs_naive();
    test_hf_style();
    test_malformed();

    size_t tn;
    char *text = gen_text(1, 300000, &tn);
    const int vocab = 1000;
    fy_tokenizer *tok = train(text, tn, vocab, 0);
    if (!tok) return fy_test_finish("test_tokenizer");
    test_vocab_shape(tok, vocab);
    test_split_behaviours();
    test_hf_api(tok);
    {
        fy_tokenizer *again = train(text, tn, vocab, 0);
        char *j1 = json_of(tok), *j2 = again ? json_of(again) : NULL;
        CHECK(j1 && j2 && strcmp(j1, j2) == 0, "training is not deterministic");
        free(j1);
        free(j2);
        fy_tokenizer_free(again);
    }
    ref_bpe ref;
    ref_init(&ref, tok);
    check_round_trip(tok, &ref, text, tn, "generated text");
    {
        int32_t *ids;
        size_t n;
        fy_err err;
        fy_tokenizer_encode(tok, text, tn, &ids, &n, &err);
        CHECK(n < tn / 2, "compression: %zu ids for %zu bytes", n, tn);
        check_stream(tok, ids, n, 0, 1, "stream on text");
        check_stream(tok, ids, n, FY_DEC_LOSSY, 1, "lossy stream on text");
        free(ids);
    }
    test_pretok_edges(tok, &ref);
    g_ctr = 0;
    size_t rn = 0;
    char *rb = NULL;
    for (int k = 0; k < 200; k++) {
        size_t n = (size_t)(rnd(5) % 3000);
        char *s = gen_bytes(1000 + k, n);
        char what[64];
        snprintf(what, sizeof what, "random bytes #%d", k);
        check_round_trip(tok, &ref, s, n, what);
        int32_t *ids;
        size_t ni;
        fy_err err;
        fy_tokenizer_encode(tok, s, n, &ids, &ni, &err);
        check_stream(tok, ids, ni, 0, valid_utf8((unsigned char *)s, n), what);
        check_stream(tok, ids, ni, FY_DEC_LOSSY, 1, what);
        free(ids);
        if (k == 7) {
            rb = s;
            rn = n;
        } else {
            free(s);
        }
    }
    test_special(tok);
    test_save_load(tok, text, tn, rb, rn);
    test_split_and_files(tok, text, tn);
    test_parallel();
    ref_free(&ref);
    free(rb);
    free(text);
    fy_tokenizer_free(tok);
    return fy_test_finish("test_tokenizer");
}

/* ------------------------------------------------------------- CLI modes */

static int cli_train_and_encode(const char *dir) {
    fy_err err = {{0}};
    char path[2048];
    size_t tn;
    char *text = gen_text(2024, 200000, &tn);
    /* extra: every ASCII char, long whitespace, digits mixed with letters */
    static const char extra[] =
        "\nASCII: !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`{|}~\n"
        "x\t\t  \n\n\n   \t y 3.14159 1,000,000 v2.0 abc123def 'quoted' \"dq\" it''s\n"
        "\xe2\x80\xa8 \xe2\x80\xa9 \xe1\x9a\x80 \xe2\x80\x8b \xc2\x85 \xef\xbb\xbf end   \n";
    char *all = malloc(tn + sizeof extra);
    memcpy(all, text, tn);
    memcpy(all + tn, extra, sizeof extra - 1);
    tn += sizeof extra - 1;
    free(text);
    snprintf(path, sizeof path, "%s/text.txt", dir);
    if (write_file(path, all, tn)) return fprintf(stderr, "cannot write %s\n", path), 1;
    fy_tokenizer *tok = NULL;
    fy_tok_train_opts o = {.vocab_size = 1200};
    if (fy_tokenizer_train_text(all, tn, &o, &tok, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (fy_tokenizer_save(tok, path, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    int32_t *ids;
    size_t n;
    fy_tokenizer_encode(tok, all, tn, &ids, &n, &err);
    snprintf(path, sizeof path, "%s/ids.txt", dir);
    write_ids(path, ids, n);
    free(ids);
    /* special-token strings, parsed as HF does */
    static const char sp[] = "Hello<|bos|> world<|eos|><|eos|>\n<|pad|>x <|bos|";
    snprintf(path, sizeof path, "%s/special.txt", dir);
    write_file(path, sp, sizeof sp - 1);
    fy_tokenizer_encode_ex(tok, sp, sizeof sp - 1, FY_ENC_SPECIAL, &ids, &n, &err);
    snprintf(path, sizeof path, "%s/special_ids.txt", dir);
    write_ids(path, ids, n);
    free(ids);
    /* arbitrary bytes: HF can only decode these ids (lossy) */
    g_ctr = 0;
    char *rb = gen_bytes(77, 20000);
    snprintf(path, sizeof path, "%s/random.bin", dir);
    write_file(path, rb, 20000);
    fy_tokenizer_encode(tok, rb, 20000, &ids, &n, &err);
    snprintf(path, sizeof path, "%s/random_ids.txt", dir);
    write_ids(path, ids, n);
    char *out;
    size_t on;
    fy_tokenizer_decode(tok, ids, n, FY_DEC_LOSSY, &out, &on, &err);
    snprintf(path, sizeof path, "%s/random_lossy.txt", dir);
    write_file(path, out, on);
    free(out);
    free(ids);
    free(rb);
    free(all);
    fy_tokenizer_free(tok);
    return 0;
}

static int cli_encode(const char *json, const char *textf, const char *out, int special) {
    fy_err err = {{0}};
    fy_tokenizer *tok;
    if (fy_tokenizer_load(json, &tok, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    int32_t *ids;
    size_t n;
    if (fy_tokenizer_encode_file(tok, textf, special ? FY_ENC_SPECIAL : 0, &ids, &n, &err))
        return fprintf(stderr, "%s\n", err.msg), 1;
    int rc = write_ids(out, ids, n) ? 1 : 0;
    free(ids);
    fy_tokenizer_free(tok);
    return rc;
}

/* Pre-tokenizer pieces, one per line in hex (to compare with HF's pre_tokenize_str). */
static int hex_piece(void *ctx, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) fprintf(ctx, "%02x", p[i]);
    fputc('\n', ctx);
    return 0;
}

static int cli_pretok(const char *textf, const char *outf) {
    size_t n;
    char *text = read_all(textf, &n);
    FILE *f = fopen(outf, "w");
    fy_pretok pre;
    fy_err err;
    if (!text || !f || fy_pretok_init(&pre, &err)) return fprintf(stderr, "pretok: cannot start\n"), 1;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(pre.re, NULL);
    fy_pretok_split(&pre, md, (const unsigned char *)text, n, hex_piece, f);
    pcre2_match_data_free(md);
    fy_pretok_free(&pre);
    free(text);
    return fclose(f) ? 1 : 0;
}

static cJSON *ids_json(const int32_t *ids, size_t n) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    return a;
}

static int cli_encode_cases(const char *json, const char *casesf, const char *outf, const char *savef) {
    fy_err err = {{0}};
    fy_tokenizer *tok;
    size_t n;
    char *text = read_all(casesf, &n);
    cJSON *cases = text ? cJSON_ParseWithLength(text, n) : NULL;
    free(text);
    if (!cJSON_IsArray(cases)) return fprintf(stderr, "%s: not a JSON array\n", casesf), 1;
    if (fy_tokenizer_load(json, &tok, &err) || fy_tokenizer_save(tok, savef, &err))
        return fprintf(stderr, "%s\n", err.msg), 1;
    cJSON *out = cJSON_CreateObject(), *plain = cJSON_AddArrayToObject(out, "plain");
    cJSON *spec = cJSON_AddArrayToObject(out, "special"), *dec = cJSON_AddArrayToObject(out, "decoded");
    const char *pn = fy_tokenizer_pre_name(tok);
    if (pn) cJSON_AddStringToObject(out, "pre_name", pn);
    else cJSON_AddNullToObject(out, "pre_name");
    const cJSON *c;
    int rc = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *s = cJSON_GetStringValue(c);
        int32_t *ids;
        size_t k;
        for (int sp = 0; sp < 2 && !rc; sp++) {
            if (fy_tokenizer_encode_ex(tok, s, strlen(s), sp ? FY_ENC_SPECIAL : 0, &ids, &k, &err)) {
                rc = fprintf(stderr, "%s\n", err.msg);
                break;
            }
            cJSON_AddItemToArray(sp ? spec : plain, ids_json(ids, k));
            if (sp) {
                char *d;
                size_t dl;
                if (fy_tokenizer_decode(tok, ids, k, 0, &d, &dl, &err)) rc = fprintf(stderr, "%s\n", err.msg);
                char *hex = malloc(2 * dl + 1);
                for (size_t i = 0; i < dl && !rc; i++) sprintf(hex + 2 * i, "%02x", (unsigned char)d[i]);
                hex[rc ? 0 : 2 * dl] = 0;
                cJSON_AddItemToArray(dec, cJSON_CreateString(hex));
                free(hex);
                free(d);
            }
            free(ids);
        }
    }
    char *o = cJSON_PrintUnformatted(out);
    FILE *f = fopen(outf, "w");
    if (!f || fputs(o, f) < 0 || fclose(f)) rc = fprintf(stderr, "cannot write %s\n", outf);
    free(o);
    cJSON_Delete(out);
    cJSON_Delete(cases);
    fy_tokenizer_free(tok);
    return rc ? 1 : 0;
}

static int cli_bench(const char *textf, int vocab, const char *save) {
    fy_err err = {{0}};
    size_t n;
    char *text = read_all(textf, &n);
    if (!text) return fprintf(stderr, "cannot read %s\n", textf), 1;
    fy_tok_train_opts o = {.vocab_size = vocab};
    fy_tokenizer *tok;
    double t0 = fy_now_s();
    if (fy_tokenizer_train_files(&textf, 1, &o, &tok, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    double t1 = fy_now_s();
    int32_t *ids;
    size_t ni;
    fy_tokenizer_encode(tok, text, n, &ids, &ni, &err);
    double t2 = fy_now_s();
    char *out;
    size_t on;
    fy_tokenizer_decode(tok, ids, ni, 0, &out, &on, &err);
    double t3 = fy_now_s();
    if (save && fy_tokenizer_save(tok, save, &err)) fprintf(stderr, "%s\n", err.msg);
    printf("bytes %zu  threads %d  vocab %d  train %.3f s  encode %.3f s (%.1f MB/s, %zu tokens, %.2f "
           "bytes/token)  decode %.3f s  round trip %s\n",
           n, omp_get_max_threads(), (int)fy_tokenizer_vocab_size(tok), t1 - t0, t2 - t1,
           n / 1e6 / (t2 - t1), ni, (double)n / ni, t3 - t2,
           on == n && memcmp(out, text, n) == 0 ? "ok" : "FAILED");
    free(out);
    free(ids);
    free(text);
    fy_tokenizer_free(tok);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--train-and-encode") == 0) return cli_train_and_encode(argv[2]);
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "--encode") == 0)
        return cli_encode(argv[2], argv[3], argv[4], argc == 6 && strcmp(argv[5], "--special") == 0);
    if (argc == 4 && strcmp(argv[1], "--pretok") == 0) return cli_pretok(argv[2], argv[3]);
    if (argc == 6 && strcmp(argv[1], "--encode-cases") == 0)
        return cli_encode_cases(argv[2], argv[3], argv[4], argv[5]);
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "--bench") == 0)
        return cli_bench(argv[2], atoi(argv[3]), argc == 5 ? argv[4] : NULL);
    if (argc > 1) {
        fprintf(stderr, "usage: test_tokenizer [--train-and-encode OUTDIR | --encode TOKENIZER_JSON "
                        "TEXT IDS_OUT [--special] | --pretok TEXT OUT | --bench TEXT VOCAB [SAVE_JSON]]\n");
        return 2;
    }
    return run_tests();
}
