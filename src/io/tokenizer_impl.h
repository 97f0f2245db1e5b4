/* Internals shared by tokenizer.c (vocabulary, encode/decode, JSON) and
 * bpe_train.c (training). Not part of the public API. */
#ifndef FY_TOKENIZER_IMPL_H
#define FY_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "core/err.h"
#include "core/strbuf.h"
#include "io/tokenizer.h"

/* ---- UTF-8 ---- */

/* Scans the UTF-8 sequence starting at s (n >= 1 bytes available). *need is
 * the length the lead byte announces (1 for an invalid lead). Returns how
 * many bytes form a valid (possibly incomplete) prefix of that sequence:
 *   ret == *need            a complete valid sequence;
 *   ret < *need, ret == n   valid so far, cut off by the end of the input;
 *   otherwise               invalid; its maximal subpart is max(ret, 1). */
size_t fy_utf8_scan(const unsigned char *s, size_t n, size_t *need);
/* Length of the longest valid UTF-8 prefix of s[0,n). */
size_t fy_utf8_valid_run(const unsigned char *s, size_t n);

/* ---- pre-tokenizer ---- */

typedef struct fy_pretok {
    pcre2_code *re;
    int jit;
} fy_pretok;

int fy_pretok_init(fy_pretok *p, fy_err *err);
void fy_pretok_free(fy_pretok *p);

/* Called once per piece, in order; a non-zero return stops the split. */
typedef int (*fy_piece_fn)(void *ctx, const unsigned char *piece, size_t n);

/* Splits arbitrary bytes into pieces (see tokenizer.h). md must come from
 * pcre2_match_data_create_from_pattern(p->re). Returns the callback's
 * non-zero value if it stopped the split, else 0. */
int fy_pretok_split(const fy_pretok *p, pcre2_match_data *md, const unsigned char *s,
                    size_t len, fy_piece_fn cb, void *ctx);

/* ---- Hugging Face normalizer + pre-tokenizer chain (tokenizer_pre.c) ---- */

typedef struct fy_hf_pre fy_hf_pre;
typedef struct fy_hf_scratch fy_hf_scratch;

/* Reads tokenizer.json's "normalizer" (null, NFC, Sequence of NFC) and
 * "pre_tokenizer" (ByteLevel, Split, Digits, Sequence); anything else is
 * refused naming the key. *out stays NULL for ferry's own pre-tokenizer (a
 * lone ByteLevel with the GPT-2 regex, no prefix space, no normalizer),
 * which fy_pretok handles. */
int fy_hf_pre_parse(const cJSON *normalizer, const cJSON *pre_tokenizer, const char *name,
                    fy_hf_pre **out, fy_err *err);
void fy_hf_pre_free(fy_hf_pre *p);
int fy_hf_pre_nfc(const fy_hf_pre *p); /* the normalizer is NFC */
/* llama.cpp's tokenizer.ggml.pre for it ("gpt-2" for p == NULL), or NULL. */
const char *fy_hf_pre_name(const fy_hf_pre *p);
/* fy_tokenizer_split_point cuts leave the pieces unchanged (p == NULL too). */
int fy_hf_pre_cut_safe(const fy_hf_pre *p);
/* Per-thread scratch for fy_hf_pre_split (NULL when out of memory). */
fy_hf_scratch *fy_hf_scratch_new(const fy_hf_pre *p);
void fy_hf_scratch_free(fy_hf_scratch *sc);
/* Splits already-normalized bytes as the chain does; maximal runs of bytes
 * that start no valid UTF-8 sequence are pieces of their own. Returns the
 * callback's non-zero value if it stopped, -1 when out of memory, else 0. */
int fy_hf_pre_split(const fy_hf_pre *p, fy_hf_scratch *sc, const unsigned char *s, size_t len,
                    fy_piece_fn cb, void *ctx);
/* Appends the NFC form of s[0,n) (invalid UTF-8 bytes copied as they are). */
int fy_hf_nfc_append(const unsigned char *s, size_t n, fy_strbuf *out);

/* ---- assembling a tokenizer ---- */

/* A new tokenizer from its token strings (tokenizer.json form; the array and
 * the strings are copied) and types; checks that strings are unique and
 * non-empty. `name` prefixes messages. */
int fy_tok_new(int32_t n_vocab, char *const *strs, const uint8_t *types, const char *name,
               fy_tokenizer **out, fy_err *err);
/* Sets the merges (3 ints each: left, right, result); checks ids and that no
 * pair appears twice. */
int fy_tok_set_merges(fy_tokenizer *tok, int32_t n_merges, const int32_t *merges,
                      const char *name, fy_err *err);

/* Token string (GPT-2 alphabet) for raw bytes: malloc'd, NUL-terminated. */
char *fy_tok_bytes_to_str(const unsigned char *b, size_t n);

/* Maps a regular file read-only for reading it whole: *data (NULL for an
 * empty file) and *len; release with munmap(*data, *len). Errors name the
 * path. */
int fy_tok_map_file(const char *path, void **data, size_t *len, fy_err *err);

/* Cuts text into nc chunks at fy_tokenizer_split_point positions, so each
 * chunk can be processed independently: cut[0] = 0 ... cut[nc] = len. */
void fy_tok_cut_chunks(const char *text, size_t len, int nc, size_t *cut);

/* Room for `need` elements of `size` bytes in the array p of *cap elements
 * (doubling, from `first`): p itself when it has room, else the grown
 * array with *cap updated, or NULL when out of memory (p is then still
 * valid and unchanged). */
static inline void *fy_tok_grow(void *p, size_t *cap, size_t need, size_t size, size_t first) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : first;
    while (c < need) c *= 2;
    void *q = realloc(p, c * size);
    if (q) *cap = c;
    return q;
}

/* Key of an adjacent token pair (a, b) in the merge and pair-count maps. */
static inline uint64_t fy_tok_pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

/* murmur3's 64-bit finaliser: spreads pair keys over open-addressing slots. */
static inline uint64_t fy_tok_mix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

#endif
