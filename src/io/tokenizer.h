/* Byte-level BPE tokenizer (docs/DESIGN.md §3 "Tokenizer").
 *
 * Text is split with the GPT-2 pre-tokenizer regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (PCRE2, UTF + UCP, JIT when available); each piece's bytes start as one
 * token per byte and learned merges are applied lowest rank first, leftmost
 * first among equal ranks (Hugging Face `tokenizers` semantics).
 *
 * Ids of a ferry-trained tokenizer: 0..255 are the single bytes (id b = byte
 * b), merged tokens follow in the order they were learned, and the three
 * control tokens <|bos|>, <|eos|>, <|pad|> are the last ids V-3, V-2, V-1.
 *
 * Arbitrary bytes round trip: decode(encode(x)) == x for any byte string,
 * including NULs and invalid UTF-8. The regex only ever sees valid UTF-8:
 * the input is cut into maximal valid runs, which are split by the regex, and
 * maximal runs of bytes that start no valid UTF-8 sequence, each of which is
 * one piece of its own. (Hugging Face takes Rust strings, so only valid UTF-8
 * can be compared with it; on valid UTF-8 the ids are identical.)
 *
 * tokenizer.json is the Hugging Face format (BPE model, ByteLevel
 * pre-tokenizer with use_regex and no prefix space, ByteLevel decoder);
 * tokens are written in GPT-2's byte-to-unicode alphabet. Files written by
 * Hugging Face for a byte-level BPE load too (merges as "a b" strings or
 * ["a","b"] pairs, byte tokens at any ids), with the NFC normalizer and the
 * Split / Digits / ByteLevel pre-tokenizers and their Sequences that
 * DeepSeek-V3-family files use (tokenizer_pre.c, docs/DESIGN.md §3.6); such
 * a file is saved back with its components as loaded.
 *
 * Thread safety: a loaded or trained fy_tokenizer is immutable (once
 * fy_tokenizer_set_special, if used, has run); encode and decode may run
 * concurrently on the same tokenizer. */
#ifndef FY_TOKENIZER_H
#define FY_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct fy_tokenizer fy_tokenizer;

/* Token types: the values of GGUF's tokenizer.ggml.token_type. */
enum { FY_TOKEN_NORMAL = 1, FY_TOKEN_CONTROL = 3, FY_TOKEN_USER_DEFINED = 4 };

#define FY_TOK_BOS "<|bos|>"
#define FY_TOK_EOS "<|eos|>"
#define FY_TOK_PAD "<|pad|>"
#define FY_TOK_N_SPECIAL 3
#define FY_TOK_MIN_VOCAB 259 /* 256 bytes + 3 specials */
#define FY_TOK_MAX_VOCAB (1 << 24)

/* ---- training ------------------------------------------------------- */

typedef struct fy_tok_train_opts {
    int vocab_size; /* total, including the 3 specials: >= 259 */
    int min_freq;   /* stop when the best pair occurs fewer times (0 = 2) */
    int threads;    /* threads for counting pieces (0 = OpenMP default) */
} fy_tok_train_opts;

/* Trainer: counts pre-token pieces over any number of texts/files, then
 * learns merges. Counting is parallel over large inputs (cut where the
 * pre-tokenization cannot change), and the result is deterministic: the most
 * frequent adjacent pair is merged, ties broken by the lowest (left, right)
 * pair of ids. If the text runs out of pairs occurring >= min_freq times, the
 * vocabulary is smaller than asked (a warning is logged). */
typedef struct fy_bpe_trainer fy_bpe_trainer;

int fy_bpe_trainer_new(fy_bpe_trainer **out, int threads, fy_err *err);
int fy_bpe_trainer_add_text(fy_bpe_trainer *t, const char *text, size_t len, fy_err *err);
int fy_bpe_trainer_add_file(fy_bpe_trainer *t, const char *path, fy_err *err);
int fy_bpe_trainer_train(fy_bpe_trainer *t, const fy_tok_train_opts *opts,
                         fy_tokenizer **out, fy_err *err);
void fy_bpe_trainer_free(fy_bpe_trainer *t);

/* Conveniences over the trainer. */
int fy_tokenizer_train_text(const char *text, size_t len, const fy_tok_train_opts *opts,
                            fy_tokenizer **out, fy_err *err);
int fy_tokenizer_train_files(const char *const *paths, int n_paths,
                             const fy_tok_train_opts *opts, fy_tokenizer **out, fy_err *err);

/* ---- tokenizer.json ----------------------------------------------------- */

/* Writes tokenizer.json atomically (temporary file + rename). */
int fy_tokenizer_save(const fy_tokenizer *tok, const char *path, fy_err *err);
/* The JSON text (malloc'd, NUL-terminated); NULL with err set on failure. */
char *fy_tokenizer_to_json(const fy_tokenizer *tok, size_t *len, fy_err *err);
/* Loads and validates; a malformed file is refused with a message naming
 * the file and what is wrong. */
int fy_tokenizer_load(const char *path, fy_tokenizer **out, fy_err *err);
/* Same from memory; `name` is used in messages. */
int fy_tokenizer_from_json(const char *json, size_t len, const char *name,
                           fy_tokenizer **out, fy_err *err);
void fy_tokenizer_free(fy_tokenizer *tok);

/* ---- encoding ----------------------------------------------------------- */

/* Encode flags. By default special-token strings in the text ("<|eos|>") are
 * plain text. FY_ENC_SPECIAL matches added tokens (special or not) in the
 * text first, leftmost-longest, as Hugging Face's encode() does. */
enum { FY_ENC_SPECIAL = 1 };

/* *ids is malloc'd (caller frees; non-NULL even when *n == 0). Inputs of 1 MB
 * and more are encoded by OpenMP threads (same ids). Fails only on memory or
 * on a byte that has no token (possible only in a loaded vocabulary). */
int fy_tokenizer_encode(const fy_tokenizer *tok, const char *text, size_t len,
                        int32_t **ids, size_t *n, fy_err *err);
int fy_tokenizer_encode_ex(const fy_tokenizer *tok, const char *text, size_t len,
                           unsigned flags, int32_t **ids, size_t *n, fy_err *err);
int fy_tokenizer_encode_file(const fy_tokenizer *tok, const char *path, unsigned flags,
                             int32_t **ids, size_t *n, fy_err *err);

/* A cut position p >= target (or len) such that encoding text[0,p) and
 * text[p,len) separately gives the same ids as encoding the whole (without
 * FY_ENC_SPECIAL), for ferry's own pre-tokenizer and DeepSeek-V3's (with or
 * without NFC): p follows a lone "\n" between printable ASCII characters.
 * For chunked or parallel encoding of large text. */
size_t fy_tokenizer_split_point(const char *text, size_t len, size_t target);

/* ---- decoding ----------------------------------------------------------- */

enum {
    FY_DEC_SKIP_SPECIAL = 1, /* leave out control (special) tokens */
    FY_DEC_LOSSY = 2,        /* replace invalid UTF-8 with U+FFFD, maximal
                                subparts, as Rust's from_utf8_lossy (HF) */
};

/* The bytes of the tokens, concatenated (malloc'd, NUL appended but not
 * counted in *len). Fails on an id out of range. */
int fy_tokenizer_decode(const fy_tokenizer *tok, const int32_t *ids, size_t n,
                        unsigned flags, char **out, size_t *len, fy_err *err);

/* Streaming decoder: push one token at a time; what comes out is every byte
 * so far except an incomplete UTF-8 sequence at the end, which is held back
 * until the bytes completing it arrive. Invalid bytes are passed through (or
 * replaced with FY_DEC_LOSSY), so all chunks plus the flush equal
 * fy_tokenizer_decode of the same ids with the same flags. */
typedef struct fy_detok_stream {
    const fy_tokenizer *tok;
    unsigned flags;
    unsigned char pend[4];
    int npend;
    char *buf;
    size_t cap;
} fy_detok_stream;

void fy_detok_stream_init(fy_detok_stream *s, const fy_tokenizer *tok, unsigned flags);
/* *out points into the stream's buffer, valid until the next call. */
int fy_detok_stream_push(fy_detok_stream *s, int32_t id, const char **out, size_t *len,
                         fy_err *err);
/* Emits what is held back, as is (or replaced with FY_DEC_LOSSY). */
int fy_detok_stream_flush(fy_detok_stream *s, const char **out, size_t *len, fy_err *err);
void fy_detok_stream_free(fy_detok_stream *s);

/* ---- vocabulary --------------------------------------------------------- */

int32_t fy_tokenizer_vocab_size(const fy_tokenizer *tok);
int32_t fy_tokenizer_n_merges(const fy_tokenizer *tok);
/* Raw bytes of a token (NULL if id out of range). */
const char *fy_tokenizer_token_bytes(const fy_tokenizer *tok, int32_t id, size_t *len);
/* The token as written in tokenizer.json / GGUF: GPT-2 byte-to-unicode
 * alphabet for BPE tokens, plain text for added tokens. NUL-terminated. */
const char *fy_tokenizer_token_str(const fy_tokenizer *tok, int32_t id);
int fy_tokenizer_token_type(const fy_tokenizer *tok, int32_t id); /* 0 if out of range */
/* Id of a token given in its tokenizer.json form, or -1. */
int32_t fy_tokenizer_token_to_id(const fy_tokenizer *tok, const char *str);
/* Merge of rank r: left + right -> result. Returns -1 if r is out of range. */
int fy_tokenizer_merge(const fy_tokenizer *tok, int32_t rank, int32_t *left, int32_t *right,
                       int32_t *result);
/* Ids of <|bos|>, <|eos|>, <|pad|>, or -1 if the vocabulary lacks them
 * (or what fy_tokenizer_set_special set). */
int32_t fy_tokenizer_bos(const fy_tokenizer *tok);
int32_t fy_tokenizer_eos(const fy_tokenizer *tok);
int32_t fy_tokenizer_pad(const fy_tokenizer *tok);
/* For tokenizers whose bos/eos/pad are not ferry's <|bos|>/<|eos|>/<|pad|>
 * (a Hugging Face directory's tokenizer_config.json names them): sets the
 * ids the three functions above return; -1 = none. Call it before the
 * tokenizer is shared between threads. Fails on an id out of range. */
int fy_tokenizer_set_special(fy_tokenizer *tok, int32_t bos, int32_t eos, int32_t pad, fy_err *err);
/* A new tokenizer: tok with the n tokens toks[] appended as special
 * (control) added tokens with the next ids V, V+1, ..., as Hugging Face's
 * add_special_tokens gives them; encode with FY_ENC_SPECIAL matches each as
 * one id. Refuses an empty token, one given twice, and one tok already has
 * (fy_tokenizer_token_to_id finds it). bos/eos/pad stay tok's. */
int fy_tokenizer_add_special(const fy_tokenizer *tok, const char *const *toks, int n, fy_tokenizer **out,
                             fy_err *err);
/* llama.cpp's name (GGUF tokenizer.ggml.pre) for this tokenizer's
 * normalizer + pre-tokenizer: "gpt-2" for ferry's own (ByteLevel with the
 * GPT-2 regex, no normalizer), "deepseek-v3" for DeepSeek-V3's Sequence
 * with no normalizer; NULL when llama.cpp has none that splits the same. */
const char *fy_tokenizer_pre_name(const fy_tokenizer *tok);

/* GPT-2's bytes_to_unicode: the code point byte b is written as. */
uint32_t fy_tok_byte_to_unicode(unsigned b);

#endif
