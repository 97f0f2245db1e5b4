/* Byte-level BPE tokenizer: vocabulary, pre-tokenizer, encode, decode,
 * streaming decode, tokenizer.json save/load (cJSON, Hugging Face's layout).
 * Training is in bpe_train.c. */
#include "io/tokenizer.h"

#include "core/fsutil.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/log.h"
#include "core/strbuf.h"
#include "io/tokenizer_impl.h"

/* ======================================================================
 * UTF-8 and GPT-2's byte-to-unicode alphabet
 * ====================================================================== */

size_t fy_utf8_scan(const unsigned char *s, size_t n, size_t *need) {
    unsigned c = s[0];
    if (c < 0x80) { *need = 1; return 1; }
    if (c < 0xC2 || c > 0xF4) { *need = 1; return 0; }
    size_t len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    *need = len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F; /* no surrogates */
    else if (c == 0xF0) lo = 0x90; /* no overlongs */
    else if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    if (n < 2) return 1;
    if (s[1] < lo || s[1] > hi) return 1;
    size_t k = 2;
    while (k < len && k < n) {
        if ((s[k] & 0xC0) != 0x80) return k;
        k++;
    }
    return k;
}

static inline int utf8_valid_at(const unsigned char *s, size_t n) {
    size_t need;
    return fy_utf8_scan(s, n, &need) == need;
}

size_t fy_utf8_valid_run(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        size_t need;
        if (fy_utf8_scan(s + i, n - i, &need) != need) break;
        i += need;
    }
    return i;
}

uint32_t fy_tok_byte_to_unicode(unsigned b) {
    b &= 0xFF;
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) return b;
    if (b <= 0x20) return 256 + b;
    if (b == 0xAD) return 256 + 67;
    return b + 162; /* 0x7F..0xA0 -> 289..322 */
}

/* Inverse of fy_tok_byte_to_unicode; -1 for code points outside the alphabet. */
static int unicode_to_byte(uint32_t cp) {
    if (cp < 256) {
        if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE)) return (int)cp;
        return -1;
    }
    if (cp <= 256 + 0x20) return (int)(cp - 256);
    if (cp <= 322) return (int)(cp - 162);
    if (cp == 323) return 0xAD;
    return -1;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Writes the alphabet form of n bytes into o (room for 2n+1). */
static size_t bytes_to_str_buf(const unsigned char *b, size_t n, char *o) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += put_utf8(o + k, fy_tok_byte_to_unicode(b[i]));
    o[k] = 0;
    return k;
}

char *fy_tok_bytes_to_str(const unsigned char *b, size_t n) {
    char *o = malloc(2 * n + 1);
    if (o) bytes_to_str_buf(b, n, o);
    return o;
}

/* Raw bytes of a token string, as HF's ByteLevel decoder does it: if every
 * character is in the alphabet, the bytes it stands for; otherwise the
 * string's own UTF-8 bytes. Writes into o (room for strlen(s)); returns length. */
static size_t str_to_bytes(const char *s, unsigned char *o) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), k = 0, i = 0;
    while (i < n) {
        size_t need;
        if (fy_utf8_scan(u + i, n - i, &need) != need) goto raw;
        uint32_t cp;
        if (need == 1) cp = u[i];
        else if (need == 2) cp = ((u[i] & 0x1Fu) << 6) | (u[i + 1] & 0x3Fu);
        else if (need == 3) cp = ((u[i] & 0x0Fu) << 12) | ((u[i + 1] & 0x3Fu) << 6) | (u[i + 2] & 0x3Fu);
        else cp = ((u[i] & 0x07u) << 18) | ((u[i + 1] & 0x3Fu) << 12) | ((u[i + 2] & 0x3Fu) << 6) | (u[i + 3] & 0x3Fu);
        int b = unicode_to_byte(cp);
        if (b < 0) goto raw;
        o[k++] = (unsigned char)b;
        i += need;
    }
    return k;
raw:
    memcpy(o, s, n);
    return n;
}

/* ======================================================================
 * Pre-tokenizer
 * ====================================================================== */

/* The GPT-2 pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s spelled out as Oniguruma (Hugging Face) has it: \t\n\v\f\r, U+0085
 * and the Z categories. PCRE2's \s differs: it lacks U+0085 (NEL) and has
 * U+180E (MONGOLIAN VOWEL SEPARATOR, a space before Unicode 6.3). */
#define FY_WS "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}"
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" FY_WS "\\p{L}\\p{N}]+"
    "|[" FY_WS "]+(?![^" FY_WS "])|[" FY_WS "]+";

int fy_pretok_init(fy_pretok *p, fy_err *err) {
    int ec;
    PCRE2_SIZE eo;
    p->jit = 0;
    p->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C, &ec, &eo, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return fy_fail(err, "tokenizer: compiling the pre-tokenizer regex: %s (at %zu)",
                       (const char *)msg, (size_t)eo);
    }
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

void fy_pretok_free(fy_pretok *p) {
    if (p->re) pcre2_code_free(p->re);
    p->re = NULL;
}

/* Splits valid UTF-8 s[0,n) with the regex. */
static int split_valid(const fy_pretok *p, pcre2_match_data *md, const unsigned char *s, size_t n,
                       fy_piece_fn cb, void *ctx) {
    size_t off = 0;
    while (off < n) {
        int rc;
        if (p->jit) {
            rc = pcre2_jit_match(p->re, s, n, off, 0, md, NULL);
            if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) /* e.g. JIT stack: try the interpreter */
                rc = pcre2_match(p->re, s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        } else {
            rc = pcre2_match(p->re, s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        }
        size_t b, e;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            b = ov[0];
            e = ov[1];
        } else {
            b = e = n; /* cannot happen for this pattern: the rest is one piece */
        }
        if (b > off) { /* unmatched gap: a piece of its own (HF "Isolated") */
            int r = cb(ctx, s + off, b - off);
            if (r) return r;
        }
        if (e == b) { /* empty match: cannot happen for this pattern; step one char */
            if (b >= n) break;
            size_t need;
            fy_utf8_scan(s + b, n - b, &need);
            e = b + need;
        }
        int r = cb(ctx, s + b, e - b);
        if (r) return r;
        off = e;
    }
    return 0;
}

int fy_pretok_split(const fy_pretok *p, pcre2_match_data *md, const unsigned char *s,
                    size_t len, fy_piece_fn cb, void *ctx) {
    size_t i = 0;
    while (i < len) {
        size_t v = fy_utf8_valid_run(s + i, len - i);
        if (v) {
            int r = split_valid(p, md, s + i, v, cb, ctx);
            if (r) return r;
            i += v;
        } else {
            size_t j = i + 1;
            while (j < len && !utf8_valid_at(s + j, len - j)) j++;
            int r = cb(ctx, s + i, j - i);
            if (r) return r;
            i = j;
        }
    }
    return 0;
}

static inline int is_graph_ascii(unsigned char c) { return c >= 0x21 && c <= 0x7E; }

size_t fy_tokenizer_split_point(const char *text, size_t len, size_t target) {
    const unsigned char *s = (const unsigned char *)text;
    size_t p = target < 2 ? 2 : target;
    for (; p < len; p++)
        if (s[p - 1] == '\n' && is_graph_ascii(s[p]) && is_graph_ascii(s[p - 2])) return p;
    return len;
}

/* ======================================================================
 * The tokenizer
 * ====================================================================== */

typedef struct pair_ent {
    uint64_t key; /* (left << 32) | right; UINT64_MAX = empty */
    int32_t rank, res;
} pair_ent;

typedef struct str_ent {
    uint64_t h;
    int32_t id; /* -1 = empty */
} str_ent;

struct fy_tokenizer {
    int32_t n_vocab, n_merges;
    size_t *boff; /* token bytes: bytes[boff[i], boff[i+1]) */
    char *bytes;
    size_t *soff; /* token strings: strs + soff[i], NUL-terminated */
    char *strs;
    uint8_t *types;
    int32_t *merges; /* 3 per merge */
    pair_ent *pairs;
    uint64_t pmask;
    str_ent *smap;
    uint64_t smask;
    int32_t byte_id[256];
    int32_t *added; /* ids of non-normal tokens, for FY_ENC_SPECIAL */
    int32_t n_added;
    uint8_t *anorm;     /* per added token: matched in normalized text */
    char *amat;         /* per added token: the bytes matched in text, */
    size_t *amoff;      /* amat[amoff[k], amoff[k+1]) */
    int32_t n_anorm;    /* how many have anorm set */
    uint8_t added_first[32]; /* bitmap of their first bytes */
    int ignore_merges;
    int32_t bos, eos, pad;
    fy_pretok pre;
    fy_hf_pre *hf; /* normalizer + pre-tokenizer other than ferry's own, or NULL */
    /* tokenizer.json's normalizer, pre_tokenizer, post_processor, decoder as
     * loaded (written back as they were); NULL when trained by ferry */
    cJSON *jcomp[4];
    int loaded;
};

static const char *const JCOMP_KEY[4] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};

static inline const pair_ent *pair_find(const fy_tokenizer *t, int32_t a, int32_t b) {
    if (!t->pairs) return NULL;
    uint64_t k = fy_tok_pair_key(a, b);
    for (uint64_t i = fy_tok_mix64(k) & t->pmask;; i = (i + 1) & t->pmask) {
        const pair_ent *e = &t->pairs[i];
        if (e->key == k) return e;
        if (e->key == UINT64_MAX) return NULL;
    }
}

static int32_t smap_find(const fy_tokenizer *t, const char *s, size_t n) {
    uint64_t h = XXH3_64bits(s, n);
    for (uint64_t i = h & t->smask;; i = (i + 1) & t->smask) {
        const str_ent *e = &t->smap[i];
        if (e->id < 0) return -1;
        if (e->h == h) {
            const char *o = t->strs + t->soff[e->id];
            if (strlen(o) == n && memcmp(o, s, n) == 0) return e->id;
        }
    }
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

void fy_tokenizer_free(fy_tokenizer *t) {
    if (!t) return;
    free(t->boff);
    free(t->bytes);
    free(t->soff);
    free(t->strs);
    free(t->types);
    free(t->merges);
    free(t->pairs);
    free(t->smap);
    free(t->added);
    free(t->anorm);
    free(t->amat);
    free(t->amoff);
    fy_pretok_free(&t->pre);
    fy_hf_pre_free(t->hf);
    for (int k = 0; k < 4; k++) cJSON_Delete(t->jcomp[k]);
    free(t);
}

/* The bytes each added token matches in text: its content, in NFC when it
 * is matched in normalized text (norm[id], may be NULL) and nfc is set, as
 * `tokenizers` normalizes the content of such tokens. */
static int tok_set_added_match(fy_tokenizer *t, const uint8_t *norm, int nfc) {
    fy_strbuf m = {0};
    size_t *off = malloc((t->n_added + 1) * sizeof *off);
    uint8_t *an = calloc(t->n_added + 1, 1);
    int rc = off && an ? 0 : -1;
    t->n_anorm = 0;
    memset(t->added_first, 0, sizeof t->added_first);
    for (int32_t k = 0; k < t->n_added && !rc; k++) {
        int32_t id = t->added[k];
        const char *c = t->strs + t->soff[id];
        an[k] = norm ? norm[id] : 0;
        t->n_anorm += an[k];
        off[k] = m.n;
        rc = an[k] && nfc ? fy_hf_nfc_append((const unsigned char *)c, strlen(c), &m)
                          : fy_strbuf_add(&m, c, strlen(c), NULL);
        if (!rc && m.n > off[k]) {
            unsigned char f = (unsigned char)m.p[off[k]];
            t->added_first[f >> 3] |= (uint8_t)(1u << (f & 7));
        }
    }
    if (!rc && !m.p) rc = fy_strbuf_reserve(&m, 0, NULL);
    if (rc) {
        free(off);
        free(an);
        free(m.p);
        return -1;
    }
    off[t->n_added] = m.n;
    free(t->amat);
    free(t->amoff);
    free(t->anorm);
    t->amat = m.p;
    t->amoff = off;
    t->anorm = an;
    return 0;
}

/* `tokenizers` keeps an added token matched in normalized text in its
 * normalized form, and decodes it so: its bytes become those of the NFC
 * form matched in text (tok_set_added_match), its string stays as written. */
static int tok_normalized_bytes(fy_tokenizer *t) {
    fy_strbuf b = {0};
    size_t *off = malloc((t->n_vocab + 1) * sizeof *off);
    unsigned char tmp[256];
    int rc = off ? fy_strbuf_reserve(&b, t->boff[t->n_vocab], NULL) : -1;
    for (int32_t i = 0, k = 0; i < t->n_vocab && !rc; i++) {
        off[i] = b.n;
        const char *src = t->bytes + t->boff[i];
        size_t n = t->boff[i + 1] - t->boff[i];
        unsigned char *conv = NULL;
        if (k < t->n_added && t->added[k] == i) {
            size_t ml = t->amoff[k + 1] - t->amoff[k];
            if (t->anorm[k]) {
                char *z = malloc(ml + 1);
                conv = ml < sizeof tmp ? tmp : malloc(ml);
                if (!z || !conv) rc = -1;
                else {
                    memcpy(z, t->amat + t->amoff[k], ml);
                    z[ml] = 0;
                    n = str_to_bytes(z, conv);
                    src = (const char *)conv;
                }
                free(z);
            }
            k++;
        }
        if (!rc) rc = fy_strbuf_add(&b, src, n, NULL);
        if (conv && conv != tmp) free(conv);
    }
    if (rc) {
        free(off);
        free(b.p);
        return -1;
    }
    off[t->n_vocab] = b.n;
    free(t->bytes);
    free(t->boff);
    t->bytes = b.p;
    t->boff = off;
    return 0;
}

int fy_tok_new(int32_t n, char *const *strs, const uint8_t *types, const char *name,
               fy_tokenizer **out, fy_err *err) {
    *out = NULL;
    if (n < 1 || n > FY_TOK_MAX_VOCAB)
        return fy_fail(err, "%s: vocabulary size %d out of range [1, %d]", name, (int)n,
                       FY_TOK_MAX_VOCAB);
    fy_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return fy_fail(err, "%s: out of memory", name);
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) total += strlen(strs[i]) + 1;
    t->n_vocab = n;
    t->boff = malloc((n + 1) * sizeof *t->boff);
    t->soff = malloc((n + 1) * sizeof *t->soff);
    t->strs = malloc(total);
    t->bytes = malloc(total);
    t->types = malloc(n);
    t->smask = pow2_at_least(2 * (uint64_t)n) - 1;
    t->smap = malloc((t->smask + 1) * sizeof *t->smap);
    t->bos = t->eos = t->pad = -1;
    if (!t->boff || !t->soff || !t->strs || !t->bytes || !t->types || !t->smap) {
        fy_tokenizer_free(t);
        return fy_fail(err, "%s: out of memory", name);
    }
    for (uint64_t i = 0; i <= t->smask; i++) t->smap[i].id = -1;
    size_t so = 0, bo = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t l = strlen(strs[i]);
        if (l == 0) {
            fy_tokenizer_free(t);
            return fy_fail(err, "%s: token id %d is an empty string", name, (int)i);
        }
        t->soff[i] = so;
        memcpy(t->strs + so, strs[i], l + 1);
        so += l + 1;
        t->boff[i] = bo;
        bo += str_to_bytes(strs[i], (unsigned char *)t->bytes + bo);
        t->types[i] = types ? types[i] : FY_TOKEN_NORMAL;
        uint64_t h = XXH3_64bits(strs[i], l);
        for (uint64_t k = h & t->smask;; k = (k + 1) & t->smask) {
            str_ent *e = &t->smap[k];
            if (e->id < 0) {
                e->h = h;
                e->id = i;
                break;
            }
            if (e->h == h && strcmp(t->strs + t->soff[e->id], strs[i]) == 0) {
                int32_t other = e->id;
                fy_tokenizer_free(t);
                return fy_fail(err, "%s: duplicate token \"%s\" (ids %d and %d)", name, strs[i],
                               (int)other, (int)i);
            }
        }
    }
    t->soff[n] = so;
    t->boff[n] = bo;
    /* byte -> id through the alphabet strings */
    for (int b = 0; b < 256; b++) {
        char s[8];
        unsigned char c = (unsigned char)b;
        size_t l = bytes_to_str_buf(&c, 1, s);
        t->byte_id[b] = smap_find(t, s, l);
    }
    /* added (non-normal) tokens, for FY_ENC_SPECIAL */
    for (int32_t i = 0; i < n; i++)
        if (t->types[i] != FY_TOKEN_NORMAL) t->n_added++;
    if (t->n_added) {
        t->added = malloc(t->n_added * sizeof *t->added);
        if (!t->added) {
            fy_tokenizer_free(t);
            return fy_fail(err, "%s: out of memory", name);
        }
        int32_t k = 0;
        for (int32_t i = 0; i < n; i++)
            if (t->types[i] != FY_TOKEN_NORMAL) t->added[k++] = i;
    }
    if (tok_set_added_match(t, NULL, 0)) {
        fy_tokenizer_free(t);
        return fy_fail(err, "%s: out of memory", name);
    }
    t->bos = smap_find(t, FY_TOK_BOS, strlen(FY_TOK_BOS));
    t->eos = smap_find(t, FY_TOK_EOS, strlen(FY_TOK_EOS));
    t->pad = smap_find(t, FY_TOK_PAD, strlen(FY_TOK_PAD));
    if (fy_pretok_init(&t->pre, err) != 0) {
        fy_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

int fy_tok_set_merges(fy_tokenizer *t, int32_t m, const int32_t *merges, const char *name,
                      fy_err *err) {
    free(t->merges);
    free(t->pairs);
    t->merges = NULL;
    t->pairs = NULL;
    t->n_merges = 0;
    if (m < 0) return fy_fail(err, "%s: negative merge count", name);
    if (m == 0) return 0;
    t->merges = malloc(3 * (size_t)m * sizeof *t->merges);
    t->pmask = pow2_at_least(2 * (uint64_t)m) - 1;
    t->pairs = malloc((t->pmask + 1) * sizeof *t->pairs);
    if (!t->merges || !t->pairs) return fy_fail(err, "%s: out of memory", name);
    memcpy(t->merges, merges, 3 * (size_t)m * sizeof *t->merges);
    for (uint64_t i = 0; i <= t->pmask; i++) t->pairs[i].key = UINT64_MAX;
    for (int32_t r = 0; r < m; r++) {
        int32_t a = merges[3 * r], b = merges[3 * r + 1], c = merges[3 * r + 2];
        if (a < 0 || a >= t->n_vocab || b < 0 || b >= t->n_vocab || c < 0 || c >= t->n_vocab)
            return fy_fail(err, "%s: merge %d (%d %d -> %d) refers to an id out of range [0, %d)",
                           name, (int)r, (int)a, (int)b, (int)c, (int)t->n_vocab);
        uint64_t k = fy_tok_pair_key(a, b);
        for (uint64_t i = fy_tok_mix64(k) & t->pmask;; i = (i + 1) & t->pmask) {
            pair_ent *e = &t->pairs[i];
            if (e->key == UINT64_MAX) {
                e->key = k;
                e->rank = r;
                e->res = c;
                break;
            }
            if (e->key == k)
                return fy_fail(err, "%s: merge %d (\"%s\" \"%s\") duplicates merge %d", name,
                               (int)r, t->strs + t->soff[a], t->strs + t->soff[b], (int)e->rank);
        }
    }
    t->n_merges = m;
    return 0;
}

/* ---- accessors ---- */

int32_t fy_tokenizer_vocab_size(const fy_tokenizer *t) { return t->n_vocab; }
int32_t fy_tokenizer_n_merges(const fy_tokenizer *t) { return t->n_merges; }
int32_t fy_tokenizer_bos(const fy_tokenizer *t) { return t->bos; }
int32_t fy_tokenizer_eos(const fy_tokenizer *t) { return t->eos; }
int32_t fy_tokenizer_pad(const fy_tokenizer *t) { return t->pad; }

int fy_tokenizer_set_special(fy_tokenizer *t, int32_t bos, int32_t eos, int32_t pad, fy_err *err) {
    const int32_t v[3] = {bos, eos, pad};
    static const char *const nm[3] = {"bos", "eos", "pad"};
    for (int k = 0; k < 3; k++)
        if (v[k] < -1 || v[k] >= t->n_vocab)
            return fy_fail(err, "tokenizer: %s id %d is out of range [-1, %d)", nm[k], (int)v[k],
                           (int)t->n_vocab);
    t->bos = bos;
    t->eos = eos;
    t->pad = pad;
    return 0;
}

const char *fy_tokenizer_pre_name(const fy_tokenizer *t) { return fy_hf_pre_name(t->hf); }

const char *fy_tokenizer_token_bytes(const fy_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->boff[id + 1] - t->boff[id];
    return t->bytes + t->boff[id];
}

const char *fy_tokenizer_token_str(const fy_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    return t->strs + t->soff[id];
}

int fy_tokenizer_token_type(const fy_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab) return 0;
    return t->types[id];
}

int32_t fy_tokenizer_token_to_id(const fy_tokenizer *t, const char *s) {
    return smap_find(t, s, strlen(s));
}

int fy_tokenizer_merge(const fy_tokenizer *t, int32_t r, int32_t *l, int32_t *rr, int32_t *res) {
    if (r < 0 || r >= t->n_merges) return -1;
    if (l) *l = t->merges[3 * r];
    if (rr) *rr = t->merges[3 * r + 1];
    if (res) *res = t->merges[3 * r + 2];
    return 0;
}

/* ======================================================================
 * Encoding
 * ====================================================================== */

#define CACHE_MAXLEN 22
#define CACHE_MAXIDS 8

typedef struct cache_ent {
    uint64_t h;
    uint8_t len, nid; /* len 0 = empty */
    char b[CACHE_MAXLEN];
    int32_t ids[CACHE_MAXIDS];
} cache_ent;

typedef struct enc_state {
    const fy_tokenizer *t;
    pcre2_match_data *md;
    int32_t *ids;
    size_t n, cap;
    /* per-piece scratch */
    int32_t *sym, *nxt, *prv;
    uint64_t *heap;
    size_t scap;
    char *mbuf; /* alphabet form of a piece, for ignore_merges */
    size_t mcap;
    cache_ent *cache;
    uint64_t cmask;
    fy_hf_scratch *hsc; /* for t->hf */
    int bad_byte; /* a byte without a token, or -1 */
    int oom;
} enc_state;

static int enc_init(enc_state *st, const fy_tokenizer *t, size_t len) {
    memset(st, 0, sizeof *st);
    st->t = t;
    st->bad_byte = -1;
    st->md = pcre2_match_data_create_from_pattern(t->pre.re, NULL);
    st->cap = len / 3 + 16;
    st->ids = malloc(st->cap * sizeof *st->ids);
    if (t->hf && !(st->hsc = fy_hf_scratch_new(t->hf))) return -1;
    if (len >= 4096) {
        uint64_t ents = pow2_at_least(len / 64);
        if (ents > 8192) ents = 8192;
        st->cache = calloc(ents, sizeof *st->cache);
        st->cmask = st->cache ? ents - 1 : 0;
    }
    return st->md && st->ids ? 0 : -1;
}

static void enc_release_scratch(enc_state *st) {
    if (st->md) pcre2_match_data_free(st->md);
    free(st->sym);
    free(st->nxt);
    free(st->prv);
    free(st->heap);
    free(st->mbuf);
    free(st->cache);
    fy_hf_scratch_free(st->hsc);
    st->hsc = NULL;
    st->md = NULL;
    st->sym = st->nxt = st->prv = NULL;
    st->heap = NULL;
    st->mbuf = NULL;
    st->cache = NULL;
}

static int push_ids(enc_state *st, const int32_t *ids, size_t k) {
    int32_t *p = fy_tok_grow(st->ids, &st->cap, st->n + k, sizeof *p, 16);
    if (!p) {
        st->oom = 1;
        return -1;
    }
    st->ids = p;
    memcpy(st->ids + st->n, ids, k * sizeof *ids);
    st->n += k;
    return 0;
}

static inline void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (v <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = v;
    return top;
}

static int ensure_scratch(enc_state *st, size_t n) {
    if (n <= st->scap) return 0;
    size_t c = st->scap ? st->scap : 64;
    while (c < n) c *= 2;
    int32_t *a = realloc(st->sym, c * sizeof *a);
    if (a) st->sym = a;
    int32_t *b = realloc(st->nxt, c * sizeof *b);
    if (b) st->nxt = b;
    int32_t *d = realloc(st->prv, c * sizeof *d);
    if (d) st->prv = d;
    uint64_t *h = realloc(st->heap, 2 * c * sizeof *h);
    if (h) st->heap = h;
    if (!a || !b || !d || !h) return -1;
    st->scap = c;
    return 0;
}

/* BPE of one piece, Hugging Face's order: repeatedly merge the adjacent pair
 * of lowest rank, leftmost first (a min-heap on (rank, position) with stale
 * entries skipped). */
static int bpe_piece(void *ctx, const unsigned char *p, size_t n) {
    enc_state *st = ctx;
    const fy_tokenizer *t = st->t;
    if (n == 1) {
        int32_t id = t->byte_id[p[0]];
        if (id < 0) {
            st->bad_byte = p[0];
            return 1;
        }
        return push_ids(st, &id, 1) ? 1 : 0;
    }
    cache_ent *ce = NULL;
    uint64_t h = 0;
    if (st->cache && n <= CACHE_MAXLEN) {
        h = XXH3_64bits(p, n);
        ce = &st->cache[h & st->cmask];
        if (ce->len == n && ce->h == h && memcmp(ce->b, p, n) == 0)
            return push_ids(st, ce->ids, ce->nid) ? 1 : 0;
    }
    if (t->ignore_merges) {
        char *m = fy_tok_grow(st->mbuf, &st->mcap, 2 * n + 1, 1, 64);
        if (!m) {
            st->oom = 1;
            return 1;
        }
        st->mbuf = m;
        size_t l = bytes_to_str_buf(p, n, st->mbuf);
        int32_t id = smap_find(t, st->mbuf, l);
        if (id >= 0 && t->types[id] == FY_TOKEN_NORMAL) return push_ids(st, &id, 1) ? 1 : 0;
    }
    if (ensure_scratch(st, n)) {
        st->oom = 1;
        return 1;
    }
    int32_t *sym = st->sym, *nxt = st->nxt, *prv = st->prv;
    uint64_t *heap = st->heap;
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_id[p[i]];
        if (sym[i] < 0) {
            st->bad_byte = p[i];
            return 1;
        }
        nxt[i] = (int32_t)i + 1;
        prv[i] = (int32_t)i - 1;
    }
    nxt[n - 1] = -1;
    for (size_t i = 0; i + 1 < n; i++) {
        const pair_ent *e = pair_find(t, sym[i], sym[i + 1]);
        if (e) heap_push(heap, &nh, ((uint64_t)(uint32_t)e->rank << 32) | i);
    }
    while (nh) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t rank = (int32_t)(top >> 32), pos = (int32_t)(uint32_t)top;
        if (sym[pos] < 0) continue;
        int32_t q = nxt[pos];
        if (q < 0) continue;
        const pair_ent *e = pair_find(t, sym[pos], sym[q]);
        if (!e || e->rank != rank) continue; /* stale */
        sym[pos] = e->res;
        sym[q] = -1;
        nxt[pos] = nxt[q];
        if (nxt[q] >= 0) prv[nxt[q]] = pos;
        if (prv[pos] >= 0) {
            const pair_ent *f = pair_find(t, sym[prv[pos]], sym[pos]);
            if (f) heap_push(heap, &nh, ((uint64_t)(uint32_t)f->rank << 32) | (uint32_t)prv[pos]);
        }
        if (nxt[pos] >= 0) {
            const pair_ent *f = pair_find(t, sym[pos], sym[nxt[pos]]);
            if (f) heap_push(heap, &nh, ((uint64_t)(uint32_t)f->rank << 32) | (uint32_t)pos);
        }
    }
    size_t start = st->n, k = 0;
    for (int32_t i = 0; i >= 0; i = nxt[i]) sym[k++] = sym[i];
    if (push_ids(st, sym, k)) return 1;
    if (ce && k <= CACHE_MAXIDS) {
        ce->h = h;
        ce->len = (uint8_t)n;
        ce->nid = (uint8_t)k;
        memcpy(ce->b, p, n);
        memcpy(ce->ids, st->ids + start, k * sizeof *ce->ids);
    }
    return 0;
}

/* Pre-tokenizes normalized text and encodes each piece. */
static int enc_pre(enc_state *st, const unsigned char *s, size_t len) {
    int r = st->t->hf ? fy_hf_pre_split(st->t->hf, st->hsc, s, len, bpe_piece, st)
                      : fy_pretok_split(&st->t->pre, st->md, s, len, bpe_piece, st);
    if (r && st->bad_byte < 0) st->oom = 1;
    return r ? -1 : 0;
}

static size_t match_added(const fy_tokenizer *t, const unsigned char *s, size_t n, int pass, int32_t *id);

/* Encodes text between added tokens, as `tokenizers` does: normalize, then
 * (with FY_ENC_SPECIAL) split on the added tokens matched in normalized
 * text, then pre-tokenize and BPE. */
static int enc_run_ex(enc_state *st, const unsigned char *s, size_t len, int special) {
    const fy_tokenizer *t = st->t;
    fy_strbuf nb = {0};
    if (fy_hf_pre_nfc(t->hf)) {
        if (fy_hf_nfc_append(s, len, &nb)) {
            free(nb.p);
            st->oom = 1;
            return -1;
        }
        s = (const unsigned char *)nb.p;
        len = nb.n;
    }
    int rc = 0;
    if (special && t->n_anorm > 0) {
        size_t seg = 0, i = 0;
        while (i < len && rc == 0) {
            int32_t id = -1;
            size_t l = 0;
            if (t->added_first[s[i] >> 3] & (1u << (s[i] & 7))) l = match_added(t, s + i, len - i, 1, &id);
            if (l) {
                if (i > seg) rc = enc_pre(st, s + seg, i - seg);
                if (rc == 0) rc = push_ids(st, &id, 1);
                i += l;
                seg = i;
            } else {
                i++;
            }
        }
        if (rc == 0 && len > seg) rc = enc_pre(st, s + seg, len - seg);
    } else {
        rc = enc_pre(st, s, len);
    }
    free(nb.p);
    return rc;
}

static int enc_run(enc_state *st, const unsigned char *s, size_t len) { return enc_run_ex(st, s, len, 0); }

static int enc_fail(enc_state *st, fy_err *err) {
    if (st->bad_byte >= 0)
        return fy_fail(err, "tokenizer: byte 0x%02x has no token in the vocabulary", st->bad_byte);
    return fy_fail(err, "tokenizer: out of memory while encoding");
}

/* Length of the longest added token matching at s, and its id: in pass 0
 * those matched in the raw text, in pass 1 those matched in normalized
 * text (`tokenizers`' two tries). */
static size_t match_added(const fy_tokenizer *t, const unsigned char *s, size_t n, int pass, int32_t *id) {
    size_t best = 0;
    for (int32_t k = 0; k < t->n_added; k++) {
        if (t->anorm[k] != pass) continue;
        size_t l = t->amoff[k + 1] - t->amoff[k];
        if (l > best && l <= n && memcmp(s, t->amat + t->amoff[k], l) == 0) {
            best = l;
            *id = t->added[k];
        }
    }
    return best;
}

int fy_tokenizer_encode_ex(const fy_tokenizer *t, const char *text, size_t len, unsigned flags,
                           int32_t **ids, size_t *n, fy_err *err) {
    const unsigned char *s = (const unsigned char *)text;
    *ids = NULL;
    *n = 0;
    int special = (flags & FY_ENC_SPECIAL) && t->n_added > 0;
    int threads = omp_get_max_threads();
    if (!special && fy_hf_pre_cut_safe(t->hf) && len >= (1u << 20) && threads > 1) {
        /* parallel: chunks cut where pre-tokenization cannot change */
        int nc = threads * 4;
        size_t *cut = malloc((nc + 1) * sizeof *cut);
        enc_state *sts = calloc(nc, sizeof *sts);
        if (!cut || !sts) {
            free(cut);
            free(sts);
            return fy_fail(err, "tokenizer: out of memory while encoding");
        }
        fy_tok_cut_chunks(text, len, nc, cut);
        int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
        for (int c = 0; c < nc; c++) {
            size_t cl = cut[c + 1] - cut[c];
            if (enc_init(&sts[c], t, cl) || enc_run(&sts[c], s + cut[c], cl)) {
                if (!sts[c].ids) sts[c].oom = 1;
                bad |= 1;
            }
            enc_release_scratch(&sts[c]);
        }
        size_t total = 0;
        int rc = 0;
        for (int c = 0; c < nc; c++) total += sts[c].n;
        if (bad) {
            for (int c = 0; c < nc && !rc; c++)
                if (sts[c].bad_byte >= 0 || sts[c].oom || !sts[c].ids) rc = enc_fail(&sts[c], err);
            if (!rc) rc = fy_fail(err, "tokenizer: encoding failed");
        } else {
            int32_t *o = malloc((total ? total : 1) * sizeof *o);
            if (!o) {
                rc = fy_fail(err, "tokenizer: out of memory while encoding");
            } else {
                size_t k = 0;
                for (int c = 0; c < nc; c++) {
                    memcpy(o + k, sts[c].ids, sts[c].n * sizeof *o);
                    k += sts[c].n;
                }
                *ids = o;
                *n = total;
            }
        }
        for (int c = 0; c < nc; c++) free(sts[c].ids);
        free(sts);
        free(cut);
        return rc;
    }

    enc_state st;
    if (enc_init(&st, t, len)) {
        enc_release_scratch(&st);
        free(st.ids);
        return fy_fail(err, "tokenizer: out of memory while encoding");
    }
    int rc = 0;
    if (special) {
        size_t seg = 0, i = 0;
        while (i < len && rc == 0) {
            int32_t id = -1;
            size_t l = 0;
            if (t->added_first[s[i] >> 3] & (1u << (s[i] & 7))) l = match_added(t, s + i, len - i, 0, &id);
            if (l) {
                if (i > seg) rc = enc_run_ex(&st, s + seg, i - seg, 1);
                if (rc == 0) rc = push_ids(&st, &id, 1);
                i += l;
                seg = i;
            } else {
                i++;
            }
        }
        if (rc == 0 && len > seg) rc = enc_run_ex(&st, s + seg, len - seg, 1);
    } else {
        rc = enc_run(&st, s, len);
    }
    enc_release_scratch(&st);
    if (rc) {
        free(st.ids);
        return enc_fail(&st, err);
    }
    *ids = st.ids;
    *n = st.n;
    return 0;
}

int fy_tokenizer_encode(const fy_tokenizer *t, const char *text, size_t len, int32_t **ids,
                        size_t *n, fy_err *err) {
    return fy_tokenizer_encode_ex(t, text, len, 0, ids, n, err);
}

int fy_tok_map_file(const char *path, void **data, size_t *len, fy_err *err) {
    *data = NULL;
    *len = 0;
    struct stat sb;
    int fd = fy_open_regular(path, &sb, err);
    if (fd < 0) return -1;
    size_t n = (size_t)sb.st_size;
    void *map = n ? mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return fy_fail(err, "%s: mmap: %s", path, strerror(e));
    *data = map;
    *len = n;
    return 0;
}

int fy_tokenizer_encode_file(const fy_tokenizer *t, const char *path, unsigned flags,
                             int32_t **ids, size_t *n, fy_err *err) {
    *ids = NULL;
    *n = 0;
    void *map;
    size_t len;
    if (fy_tok_map_file(path, &map, &len, err)) return -1;
    int rc = fy_tokenizer_encode_ex(t, map ? map : "", len, flags, ids, n, err);
    if (map) munmap(map, len);
    return rc ? fy_wrap(err, "%s", path) : 0;
}

/* ======================================================================
 * Decoding
 * ====================================================================== */

/* Appends s with invalid UTF-8 replaced by U+FFFD, one per maximal subpart. */
static int strbuf_add_lossy(fy_strbuf *b, const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] < 0x80) j++;
        if (j > i && fy_strbuf_add(b, s + i, j - i, NULL)) return -1;
        i = j;
        if (i >= n) break;
        size_t need, got = fy_utf8_scan(s + i, n - i, &need);
        if (got == need) {
            if (fy_strbuf_add(b, s + i, need, NULL)) return -1;
            i += need;
        } else {
            if (fy_strbuf_add(b, "\xEF\xBF\xBD", 3, NULL)) return -1;
            i += got ? got : 1;
        }
    }
    return 0;
}

int fy_tokenizer_decode(const fy_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                        char **out, size_t *len, fy_err *err) {
    fy_strbuf raw = {0};
    *out = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return fy_fail(err, "tokenizer: decode: id %d at position %zu is out of range [0, %d)",
                           (int)ids[i], i, (int)t->n_vocab);
        total += t->boff[ids[i] + 1] - t->boff[ids[i]];
    }
    if (fy_strbuf_reserve(&raw, total, NULL)) return fy_fail(err, "tokenizer: out of memory while decoding");
    raw.p[0] = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if ((flags & FY_DEC_SKIP_SPECIAL) && t->types[id] == FY_TOKEN_CONTROL) continue;
        fy_strbuf_add(&raw, t->bytes + t->boff[id], t->boff[id + 1] - t->boff[id], NULL);
    }
    if (flags & FY_DEC_LOSSY) {
        fy_strbuf l = {0};
        if (fy_strbuf_reserve(&l, raw.n, NULL) || strbuf_add_lossy(&l, (unsigned char *)raw.p, raw.n)) {
            free(raw.p);
            free(l.p);
            return fy_fail(err, "tokenizer: out of memory while decoding");
        }
        free(raw.p);
        raw = l;
    }
    *out = raw.p;
    if (len) *len = raw.n;
    return 0;
}

void fy_detok_stream_init(fy_detok_stream *s, const fy_tokenizer *tok, unsigned flags) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->flags = flags;
}

void fy_detok_stream_free(fy_detok_stream *s) {
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

/* Emits w[0,n) into the stream's output buffer (lossy if asked). */
static int stream_emit(fy_detok_stream *s, const unsigned char *w, size_t n, const char **out,
                       size_t *len, fy_err *err) {
    fy_strbuf b = {s->buf, 0, s->cap};
    int rc = (s->flags & FY_DEC_LOSSY) ? strbuf_add_lossy(&b, w, n) : fy_strbuf_add(&b, w, n, NULL);
    if (!rc && !b.p) rc = fy_strbuf_reserve(&b, 0, NULL);
    s->buf = b.p;
    s->cap = b.cap;
    if (rc) return fy_fail(err, "tokenizer: out of memory while decoding");
    b.p[b.n] = 0;
    *out = b.p;
    *len = b.n;
    return 0;
}

int fy_detok_stream_push(fy_detok_stream *s, int32_t id, const char **out, size_t *len,
                         fy_err *err) {
    const fy_tokenizer *t = s->tok;
    *out = "";
    *len = 0;
    if (id < 0 || id >= t->n_vocab)
        return fy_fail(err, "tokenizer: decode: id %d is out of range [0, %d)", (int)id,
                       (int)t->n_vocab);
    size_t tl = 0;
    const unsigned char *tb = (const unsigned char *)t->bytes + t->boff[id];
    if (!((s->flags & FY_DEC_SKIP_SPECIAL) && t->types[id] == FY_TOKEN_CONTROL))
        tl = t->boff[id + 1] - t->boff[id];
    size_t n = (size_t)s->npend + tl;
    unsigned char small[64];
    unsigned char *w = n <= sizeof small ? small : malloc(n);
    if (!w) return fy_fail(err, "tokenizer: out of memory while decoding");
    memcpy(w, s->pend, s->npend);
    memcpy(w + s->npend, tb, tl);
    /* hold back a valid but incomplete sequence at the end */
    size_t hold = 0;
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = w[n - k];
        if ((c & 0xC0) == 0x80) continue; /* continuation: look further back */
        if (c >= 0xC2 && c <= 0xF4) {
            size_t need, got = fy_utf8_scan(w + n - k, k, &need);
            if (got == k && k < need) hold = k;
        }
        break;
    }
    int rc = stream_emit(s, w, n - hold, out, len, err);
    memcpy(s->pend, w + n - hold, hold);
    s->npend = (int)hold;
    if (w != small) free(w);
    return rc;
}

int fy_detok_stream_flush(fy_detok_stream *s, const char **out, size_t *len, fy_err *err) {
    unsigned char w[4];
    size_t n = (size_t)s->npend;
    memcpy(w, s->pend, n);
    s->npend = 0;
    return stream_emit(s, w, n, out, len, err);
}

/* ======================================================================
 * tokenizer.json: save (Hugging Face's layout, built with cJSON)
 * ====================================================================== */

static const char *tok_str(const fy_tokenizer *t, int32_t id) { return t->strs + t->soff[id]; }

/* added_tokens: every non-normal token, as HF writes them. */
static int add_added_tokens(const fy_tokenizer *t, cJSON *root) {
    cJSON *arr = cJSON_AddArrayToObject(root, "added_tokens");
    if (!arr) return -1;
    int32_t k = -1;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (t->types[i] == FY_TOKEN_NORMAL) continue;
        k++;
        cJSON *a = cJSON_CreateObject();
        if (!a || !cJSON_AddItemToArray(arr, a)) {
            cJSON_Delete(a);
            return -1;
        }
        if (!cJSON_AddNumberToObject(a, "id", i) || !cJSON_AddStringToObject(a, "content", tok_str(t, i)) ||
            !cJSON_AddFalseToObject(a, "single_word") || !cJSON_AddFalseToObject(a, "lstrip") ||
            !cJSON_AddFalseToObject(a, "rstrip") || !cJSON_AddBoolToObject(a, "normalized", t->anorm[k]) ||
            !cJSON_AddBoolToObject(a, "special", t->types[i] == FY_TOKEN_CONTROL))
            return -1;
    }
    return 0;
}

/* A ByteLevel component (the pre-tokenizer and the decoder). */
static int add_byte_level(cJSON *root, const char *key, int add_prefix_space) {
    cJSON *o = cJSON_AddObjectToObject(root, key);
    return o && cJSON_AddStringToObject(o, "type", "ByteLevel") &&
                   cJSON_AddBoolToObject(o, "add_prefix_space", add_prefix_space) &&
                   cJSON_AddTrueToObject(o, "trim_offsets") && cJSON_AddTrueToObject(o, "use_regex")
               ? 0
               : -1;
}

/* model.merges: "a b" strings, unless a token contains a space: then
 * ["a", "b"] pairs for all of them. */
static int add_merges(const fy_tokenizer *t, cJSON *model) {
    cJSON *arr = cJSON_AddArrayToObject(model, "merges");
    if (!arr) return -1;
    int pairs = 0;
    for (int32_t r = 0; r < t->n_merges && !pairs; r++)
        pairs = strchr(tok_str(t, t->merges[3 * r]), ' ') || strchr(tok_str(t, t->merges[3 * r + 1]), ' ');
    fy_strbuf ab = {0};
    int rc = 0;
    for (int32_t r = 0; r < t->n_merges && !rc; r++) {
        const char *ab_str[2] = {tok_str(t, t->merges[3 * r]), tok_str(t, t->merges[3 * r + 1])};
        cJSON *m = NULL;
        if (pairs) {
            m = cJSON_CreateStringArray(ab_str, 2);
        } else {
            ab.n = 0;
            if (!fy_strbuf_add(&ab, ab_str[0], strlen(ab_str[0]), NULL) && !fy_strbuf_add(&ab, " ", 1, NULL) &&
                !fy_strbuf_add(&ab, ab_str[1], strlen(ab_str[1]), NULL))
                m = cJSON_CreateString(ab.p);
        }
        if (!m || !cJSON_AddItemToArray(arr, m)) {
            cJSON_Delete(m);
            rc = -1;
        }
    }
    free(ab.p);
    return rc;
}

/* model: a byte-level BPE with no options, then vocab and merges. */
static int add_model(const fy_tokenizer *t, cJSON *root) {
    cJSON *model = cJSON_AddObjectToObject(root, "model"), *vocab = NULL;
    if (!model || !cJSON_AddStringToObject(model, "type", "BPE") || !cJSON_AddNullToObject(model, "dropout") ||
        !cJSON_AddNullToObject(model, "unk_token") ||
        !cJSON_AddNullToObject(model, "continuing_subword_prefix") ||
        !cJSON_AddNullToObject(model, "end_of_word_suffix") || !cJSON_AddFalseToObject(model, "fuse_unk") ||
        !cJSON_AddFalseToObject(model, "byte_fallback") ||
        (t->ignore_merges && !cJSON_AddTrueToObject(model, "ignore_merges")) ||
        !(vocab = cJSON_AddObjectToObject(model, "vocab")))
        return -1;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (!cJSON_AddNumberToObject(vocab, tok_str(t, i), i)) return -1;
    return add_merges(t, model);
}

/* Component k (JCOMP_KEY) as loaded; ferry's own when trained or absent. */
static int add_component(const fy_tokenizer *t, cJSON *root, int k) {
    if (t->jcomp[k]) {
        cJSON *c = cJSON_Duplicate(t->jcomp[k], 1);
        if (c && cJSON_AddItemToObject(root, JCOMP_KEY[k], c)) return 0;
        cJSON_Delete(c);
        return -1;
    }
    if (k == 1 || k == 3) return add_byte_level(root, JCOMP_KEY[k], k == 3);
    return cJSON_AddNullToObject(root, JCOMP_KEY[k]) ? 0 : -1;
}

char *fy_tokenizer_to_json(const fy_tokenizer *t, size_t *len, fy_err *err) {
    cJSON *root = cJSON_CreateObject();
    int bad = !root || !cJSON_AddStringToObject(root, "version", "1.0") ||
              !cJSON_AddNullToObject(root, "truncation") || !cJSON_AddNullToObject(root, "padding") ||
              add_added_tokens(t, root) || add_component(t, root, 0) || add_component(t, root, 1) ||
              add_component(t, root, 2) || add_component(t, root, 3) || add_model(t, root);
    char *text = bad ? NULL : cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) {
        fy_fail(err, "tokenizer: out of memory while writing JSON");
        return NULL;
    }
    if (len) *len = strlen(text);
    return text;
}

int fy_tokenizer_save(const fy_tokenizer *t, const char *path, fy_err *err) {
    size_t len;
    char *json = fy_tokenizer_to_json(t, &len, err);
    if (!json) return fy_wrap(err, "%s", path);
    int rc = fy_write_file_atomic(path, json, len, err);
    free(json);
    return rc;
}

void fy_tok_cut_chunks(const char *text, size_t len, int nc, size_t *cut) {
    cut[0] = 0;
    for (int c = 1; c < nc; c++) {
        size_t target = len / nc * c;
        if (target < cut[c - 1]) target = cut[c - 1];
        cut[c] = fy_tokenizer_split_point(text, len, target);
    }
    cut[nc] = len;
}

/* ======================================================================
 * tokenizer.json: load
 * ====================================================================== */

/* A string -> id map over borrowed strings (for the loader). */
typedef struct smap_t {
    const char **key;
    int32_t *val;
    uint64_t mask;
} smap_t;

static int smap_init(smap_t *m, size_t n) {
    m->mask = pow2_at_least(2 * (uint64_t)n + 2) - 1;
    m->key = calloc(m->mask + 1, sizeof *m->key);
    m->val = malloc((m->mask + 1) * sizeof *m->val);
    return m->key && m->val ? 0 : -1;
}

static void smap_free(smap_t *m) {
    free(m->key);
    free(m->val);
}

/* Inserts; returns the existing value if the key is present, else -1. */
static int32_t smap_put(smap_t *m, const char *k, int32_t v) {
    for (uint64_t i = XXH3_64bits(k, strlen(k)) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->key[i]) {
            m->key[i] = k;
            m->val[i] = v;
            return -1;
        }
        if (strcmp(m->key[i], k) == 0) return m->val[i];
    }
}

/* The value of the n-byte key k (not NUL-terminated), or -1. */
static int32_t smap_getn(const smap_t *m, const char *k, size_t n) {
    for (uint64_t i = XXH3_64bits(k, n) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->key[i]) return -1;
        if (strncmp(m->key[i], k, n) == 0 && m->key[i][n] == 0) return m->val[i];
    }
}

static int32_t smap_get(const smap_t *m, const char *k) { return smap_getn(m, k, strlen(k)); }

static const char *json_type_name(const cJSON *j) {
    if (!j) return "missing";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsObject(j)) return "an object";
    return "invalid";
}

static int json_int(const cJSON *j, int64_t *v) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d == floor(d)) || d < -1e15 || d > 1e15) return -1;
    *v = (int64_t)d;
    return 0;
}

/* The "type" of a component object, or NULL. */
static const char *comp_type(const cJSON *j) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(j, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

/* Warns that component `key`, when present and not ByteLevel, is ignored. */
static void warn_unless_byte_level(const cJSON *root, const char *key, const char *why, const char *name) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!c || cJSON_IsNull(c)) return;
    const char *ty = comp_type(c);
    if (!ty || strcmp(ty, "ByteLevel") != 0)
        fy_warn("%s: %s %s is ignored (%s)", name, key, ty ? ty : json_type_name(c), why);
}

/* post_processor and decoder are recorded, not applied: ferry adds no
 * special tokens itself when encoding and decodes byte-level. Others warn. */
static void check_components(const cJSON *root, const char *name) {
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    const char *ty = comp_type(pp);
    if (pp && !cJSON_IsNull(pp) && !(ty && (!strcmp(ty, "ByteLevel") || !strcmp(ty, "TemplateProcessing") ||
                                            !strcmp(ty, "Sequence"))))
        fy_warn("%s: post_processor %s is ignored (ferry adds special tokens itself)", name,
                ty ? ty : json_type_name(pp));
    warn_unless_byte_level(root, "decoder", "ferry decodes byte-level", name);
}

static int check_model_opts(const cJSON *model, const char *name, int *ignore_merges, fy_err *err) {
    const char *ty = comp_type(model);
    const cJSON *tyj = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (tyj && !ty) return fy_fail(err, "%s: model.type is %s, not a string", name, json_type_name(tyj));
    if (ty && strcmp(ty, "BPE") != 0)
        return fy_fail(err, "%s: model.type is \"%s\"; only BPE is supported", name, ty);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (d && !cJSON_IsNull(d) && !(cJSON_IsNumber(d) && d->valuedouble == 0))
        return fy_fail(err, "%s: model.dropout is not supported (must be null)", name);
    static const char *const empty_ok[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(model, empty_ok[k]);
        if (j && !cJSON_IsNull(j) && !(cJSON_IsString(j) && j->valuestring[0] == 0))
            return fy_fail(err, "%s: model.%s is not supported (must be null or \"\")", name, empty_ok[k]);
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
        return fy_fail(err, "%s: model.byte_fallback=true is not supported (not a byte-level BPE)", name);
    *ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    return 0;
}

/* What the loader gathers from tokenizer.json before it builds the
 * tokenizer; strings are borrowed from the parsed JSON. */
typedef struct json_load {
    const char *name;            /* prefixes messages */
    const cJSON *vocab, *merges; /* model.vocab, model.merges */
    const cJSON *added;          /* added_tokens, or NULL */
    const cJSON *root;
    fy_hf_pre *hf;               /* moves into the tokenizer */
    uint8_t *anorm;              /* per id: an added token matched in normalized text */
    int ignore_merges;
    int64_t n_model, max_id;     /* entries and largest id in model.vocab */
    int64_t n_vocab;             /* with the added tokens */
    char **strs;                 /* token string by id */
    uint8_t *types;
    smap_t sm;                   /* token string -> id */
    int32_t *merge_ids;          /* 3 per merge: left, right, result */
    int n_merges;
    fy_strbuf cat;               /* scratch: a merge's two halves joined */
} json_load;

static void json_load_free(json_load *L) {
    fy_hf_pre_free(L->hf);
    free(L->anorm);
    smap_free(&L->sm);
    free(L->cat.p);
    free(L->merge_ids);
    free(L->strs);
    free(L->types);
}

/* Step 1: the parts of the document and the options ferry cannot honour. */
static int find_parts(const cJSON *root, json_load *L, fy_err *err) {
    const char *name = L->name;
    if (!cJSON_IsObject(root))
        return fy_fail(err, "%s: top level is %s, not an object", name, json_type_name(root));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return fy_fail(err, "%s: \"model\" is %s (expected an object)", name, json_type_name(model));
    if (check_model_opts(model, name, &L->ignore_merges, err)) return -1;
    if (fy_hf_pre_parse(cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                        cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), name, &L->hf, err))
        return -1;
    check_components(root, name);
    L->root = root;
    L->vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(L->vocab))
        return fy_fail(err, "%s: model.vocab is %s (expected an object)", name, json_type_name(L->vocab));
    L->merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(L->merges))
        return fy_fail(err, "%s: model.merges is %s (expected an array)", name, json_type_name(L->merges));
    L->added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (L->added && !cJSON_IsNull(L->added) && !cJSON_IsArray(L->added))
        return fy_fail(err, "%s: added_tokens is %s (expected an array)", name, json_type_name(L->added));
    if (cJSON_IsNull(L->added)) L->added = NULL;
    return 0;
}

/* Step 2: every id is an integer in range; the vocabulary size. Model ids
 * are counted here, checked for gaps once they are placed. */
static int count_ids(json_load *L, fy_err *err) {
    const char *name = L->name;
    const cJSON *e;
    L->max_id = -1;
    cJSON_ArrayForEach(e, L->vocab) {
        int64_t id;
        if (json_int(e, &id))
            return fy_fail(err, "%s: model.vocab[\"%s\"] is %s, not an integer id", name, e->string,
                           json_type_name(e));
        if (id < 0 || id >= FY_TOK_MAX_VOCAB)
            return fy_fail(err, "%s: model.vocab[\"%s\"]: id %lld out of range [0, %d)", name, e->string,
                           (long long)id, FY_TOK_MAX_VOCAB);
        if (id > L->max_id) L->max_id = id;
        L->n_model++;
    }
    if (L->n_model == 0) return fy_fail(err, "%s: model.vocab is empty", name);
    /* added tokens: ids beyond the model vocab extend it */
    int64_t max_all = L->max_id, n_added = 0;
    cJSON_ArrayForEach(e, L->added) {
        const cJSON *cj = cJSON_GetObjectItemCaseSensitive(e, "content");
        int64_t id;
        if (!cJSON_IsObject(e) || json_int(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) ||
            !cJSON_IsString(cj) || !cj->valuestring[0])
            return fy_fail(err, "%s: added_tokens[%lld] needs an integer \"id\" and a non-empty \"content\"",
                           name, (long long)n_added);
        if (id < 0 || id >= FY_TOK_MAX_VOCAB)
            return fy_fail(err, "%s: added_tokens[%lld] \"%s\": id %lld out of range [0, %d)", name,
                           (long long)n_added, cj->valuestring, (long long)id, FY_TOK_MAX_VOCAB);
        if (id > max_all) max_all = id;
        n_added++;
    }
    L->n_vocab = max_all + 1;
    if (L->n_vocab > L->n_model + n_added)
        return fy_fail(err, "%s: ids run to %lld but there are only %lld tokens (ids must have no gaps)",
                       name, (long long)max_all, (long long)(L->n_model + n_added));
    return 0;
}

/* Step 3: model.vocab's strings at their ids: each id and string once, ids
 * 0..n_model-1. */
static int place_model_vocab(json_load *L, fy_err *err) {
    const char *name = L->name;
    L->strs = calloc(L->n_vocab, sizeof *L->strs);
    L->types = malloc(L->n_vocab);
    if (!L->strs || !L->types || smap_init(&L->sm, (size_t)L->n_vocab))
        return fy_fail(err, "%s: out of memory", name);
    memset(L->types, FY_TOKEN_NORMAL, L->n_vocab);
    const cJSON *e;
    cJSON_ArrayForEach(e, L->vocab) {
        int64_t id = 0;
        json_int(e, &id);
        if (!e->string || !e->string[0])
            return fy_fail(err, "%s: model.vocab has an empty token (id %lld)", name, (long long)id);
        if (L->strs[id])
            return fy_fail(err, "%s: model.vocab: duplicate id %lld (\"%s\" and \"%s\")", name,
                           (long long)id, L->strs[id], e->string);
        if (smap_put(&L->sm, e->string, (int32_t)id) >= 0)
            return fy_fail(err, "%s: model.vocab: duplicate token \"%s\"", name, e->string);
        L->strs[id] = e->string;
    }
    for (int64_t i = 0; L->max_id + 1 != L->n_model && i <= L->max_id; i++)
        if (!L->strs[i])
            return fy_fail(err, "%s: model.vocab has no token with id %lld (ids must be 0..%lld)", name,
                           (long long)i, (long long)L->n_model - 1);
    return 0;
}

/* An added token's flags: single_word, lstrip, rstrip must be false (ferry
 * does not honour them); normalized (default: not special) is kept. */
static int added_flags(json_load *L, const cJSON *a, int64_t k, const char *c, int special, int64_t id,
                       fy_err *err) {
    static const char *const no[] = {"single_word", "lstrip", "rstrip"};
    for (int f = 0; f < 3; f++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(a, no[f]);
        if (j && !cJSON_IsFalse(j))
            return fy_fail(err, "%s: added_tokens[%lld] \"%s\": %s=%s is not supported (only false)", L->name,
                           (long long)k, c, no[f], cJSON_IsTrue(j) ? "true" : json_type_name(j));
    }
    const cJSON *nj = cJSON_GetObjectItemCaseSensitive(a, "normalized");
    if (nj && !cJSON_IsBool(nj))
        return fy_fail(err, "%s: added_tokens[%lld] \"%s\": normalized is %s, not a boolean", L->name,
                       (long long)k, c, json_type_name(nj));
    if (!L->anorm && !(L->anorm = calloc(L->n_vocab, 1))) return fy_fail(err, "%s: out of memory", L->name);
    L->anorm[id] = nj ? cJSON_IsTrue(nj) : !special;
    return 0;
}

/* Step 4: added tokens. One already in model.vocab must keep its id there;
 * a new one takes the next id, as Hugging Face would give it. Either way
 * it gets its type (control when "special"). */
static int place_added_tokens(json_load *L, fy_err *err) {
    const char *name = L->name;
    int64_t next_new = L->n_model, k = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, L->added) {
        int64_t id = 0;
        json_int(cJSON_GetObjectItemCaseSensitive(a, "id"), &id);
        const char *c = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
        int32_t in_model = smap_get(&L->sm, c);
        if (in_model >= 0 && in_model < L->n_model) {
            if (in_model != id)
                return fy_fail(err, "%s: added_tokens[%lld] \"%s\": id %lld, but model.vocab has it as %d",
                               name, (long long)k, c, (long long)id, (int)in_model);
        } else if (in_model >= 0) {
            return fy_fail(err, "%s: added_tokens[%lld]: duplicate token \"%s\"", name, (long long)k, c);
        } else if (L->strs[id]) {
            return fy_fail(err, "%s: added_tokens[%lld] \"%s\": duplicate id %lld (also \"%s\")", name,
                           (long long)k, c, (long long)id, L->strs[id]);
        } else if (id != next_new) {
            return fy_fail(err, "%s: added_tokens[%lld] \"%s\": id %lld, but Hugging Face would give it "
                                "%lld (added tokens outside model.vocab must follow it in order)",
                           name, (long long)k, c, (long long)id, (long long)next_new);
        } else {
            next_new++;
            L->strs[id] = (char *)c;
            smap_put(&L->sm, c, (int32_t)id);
        }
        int special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special"));
        L->types[id] = special ? FY_TOKEN_CONTROL : FY_TOKEN_USER_DEFINED;
        if (added_flags(L, a, k, c, special, id, err)) return -1;
        k++;
    }
    for (int64_t i = 0; i < L->n_vocab; i++)
        if (!L->strs[i])
            return fy_fail(err, "%s: no token has id %lld (ids must have no gaps)", name, (long long)i);
    return 0;
}

/* A merge's two token strings (not NUL-terminated): from an "a b" string
 * or an ["a", "b"] pair. */
static int merge_halves(const cJSON *m, int r, const char *name, const char *half[2], size_t n[2],
                        fy_err *err) {
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ') || sp == s || !sp[1])
            return fy_fail(err, "%s: model.merges[%d] \"%s\" is not two tokens separated by one space",
                           name, r, s);
        half[0] = s;
        n[0] = (size_t)(sp - s);
        half[1] = sp + 1;
        n[1] = strlen(sp + 1);
        return 0;
    }
    const cJSON *a = cJSON_IsArray(m) ? m->child : NULL, *b = a ? a->next : NULL;
    if (!cJSON_IsString(a) || !cJSON_IsString(b) || b->next)
        return fy_fail(err, "%s: model.merges[%d] is %s (expected \"a b\" or [\"a\", \"b\"])", name, r,
                       json_type_name(m));
    half[0] = a->valuestring;
    half[1] = b->valuestring;
    n[0] = strlen(half[0]);
    n[1] = strlen(half[1]);
    return 0;
}

/* The ids of merge r (left, right, result): all three in model.vocab. */
static int merge_ids(json_load *L, int r, const char *const half[2], const size_t n[2], int32_t ids[3],
                     fy_err *err) {
    for (int k = 0; k < 2; k++) {
        ids[k] = smap_getn(&L->sm, half[k], n[k]);
        if (ids[k] < 0 || ids[k] >= L->n_model)
            return fy_fail(err, "%s: model.merges[%d] \"%.*s %.*s\": unknown token \"%.*s\"", L->name, r,
                           (int)n[0], half[0], (int)n[1], half[1], (int)n[k], half[k]);
    }
    L->cat.n = 0;
    if (fy_strbuf_add(&L->cat, half[0], n[0], NULL) || fy_strbuf_add(&L->cat, half[1], n[1], NULL))
        return fy_fail(err, "%s: out of memory", L->name);
    ids[2] = smap_getn(&L->sm, L->cat.p, L->cat.n);
    if (ids[2] < 0 || ids[2] >= L->n_model)
        return fy_fail(err, "%s: model.merges[%d] \"%.*s %.*s\": merged token \"%s\" is not in model.vocab",
                       L->name, r, (int)n[0], half[0], (int)n[1], half[1], L->cat.p);
    return 0;
}

/* Step 5: the merges, in rank order. Walks the array's list: indexing it
 * (cJSON_GetArrayItem) costs O(rank) a merge, minutes for 100k merges. */
static int read_merges(json_load *L, fy_err *err) {
    int n = cJSON_GetArraySize(L->merges);
    L->merge_ids = malloc(3 * (size_t)(n ? n : 1) * sizeof *L->merge_ids);
    if (!L->merge_ids) return fy_fail(err, "%s: out of memory", L->name);
    const cJSON *m;
    int r = 0;
    cJSON_ArrayForEach(m, L->merges) {
        const char *half[2];
        size_t len[2];
        if (merge_halves(m, r, L->name, half, len, err) ||
            merge_ids(L, r, half, len, L->merge_ids + 3 * (size_t)r, err))
            return -1;
        r++;
    }
    L->n_merges = r;
    return 0;
}

/* Step 6: the tokenizer itself. */
static int build_from(json_load *L, fy_tokenizer **out, fy_err *err) {
    fy_tokenizer *t = NULL;
    if (fy_tok_new((int32_t)L->n_vocab, L->strs, L->types, L->name, &t, err) ||
        fy_tok_set_merges(t, L->n_merges, L->merge_ids, L->name, err)) {
        fy_tokenizer_free(t);
        return -1;
    }
    t->ignore_merges = L->ignore_merges;
    t->loaded = 1;
    for (int k = 0; k < 4; k++) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(L->root, JCOMP_KEY[k]);
        if (c && !(t->jcomp[k] = cJSON_Duplicate(c, 1))) {
            fy_tokenizer_free(t);
            return fy_fail(err, "%s: out of memory", L->name);
        }
    }
    if (L->anorm && (tok_set_added_match(t, L->anorm, fy_hf_pre_nfc(L->hf)) ||
                     (fy_hf_pre_nfc(L->hf) && tok_normalized_bytes(t)))) {
        fy_tokenizer_free(t);
        return fy_fail(err, "%s: out of memory", L->name);
    }
    t->hf = L->hf;
    L->hf = NULL;
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) {
            fy_warn("%s: byte 0x%02x has no token; text containing it cannot be encoded", L->name, b);
            break;
        }
    *out = t;
    return 0;
}

int fy_tokenizer_from_json(const char *json, size_t len, const char *name, fy_tokenizer **out,
                           fy_err *err) {
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        long at = ep && ep >= json && ep <= json + len ? (long)(ep - json) : -1;
        return fy_fail(err, "%s: not valid JSON (error near byte %ld)", name, at);
    }
    json_load L = {.name = name};
    int rc = find_parts(root, &L, err) || count_ids(&L, err) || place_model_vocab(&L, err) ||
                     place_added_tokens(&L, err) || read_merges(&L, err) || build_from(&L, out, err)
                 ? -1
                 : 0;
    json_load_free(&L);
    cJSON_Delete(root);
    return rc;
}

int fy_tokenizer_load(const char *path, fy_tokenizer **out, fy_err *err) {
    *out = NULL;
    char *text;
    size_t len;
    /* Far above any real one (DeepSeek-V3's is 8 MB); parsing takes several
     * times the file's size in memory. */
    if (fy_read_file_max(path, (size_t)1 << 30, &text, &len, err)) return -1;
    int rc = len ? fy_tokenizer_from_json(text, len, path, out, err)
                 : fy_fail(err, "%s: empty file", path);
    free(text);
    return rc;
}
