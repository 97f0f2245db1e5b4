/* Token data shards (docs/DESIGN.md §3): one file of token ids, memory-mapped for
 * training.
 *
 * Layout (all integers little-endian):
 *   off  0  char[8]  magic "FERRYTOK"
 *   off  8  u32      version (1)
 *   off 12  u32      token_width in bytes (2 or 4)
 *   off 16  u32      vocab_size (every token id is < vocab_size)
 *   off 20  u32      header_size (64)
 *   off 24  u64      n_tokens
 *   off 32  u64      payload checksum: XXH64(seed 0) of the payload bytes
 *   off 40  u64      header checksum: XXH64(seed 0) of bytes [0, 40)
 *   off 48  zero padding to 64
 *   off 64  n_tokens tokens, token_width bytes each, unsigned little-endian
 * The file is exactly 64 + n_tokens * token_width bytes long.
 *
 * Version 2 (written only for examples in rows, `ferry data prepare` of chat
 * JSONL; pre-training shards stay version 1, byte for byte):
 *   off 40  u64      header checksum: XXH64(seed 0) of bytes [0, 40) ++ [48, 64)
 *   off 48  u32      row_len: 0 = one token stream; else the tokens are rows of
 *                    row_len tokens (one example each) and n_tokens is a multiple
 *   off 52  u32      flags: bit 0 = a loss mask follows the tokens (others 0)
 *   off 56  zero padding to 64
 *   off 64  tokens as in version 1, then with the mask flag ceil(n_tokens / 8)
 *           bytes: bit (i % 8) of byte i / 8 is 1 when token i is trained on
 *           (counts as a label), 0 for prompt and padding tokens
 * and the payload checksum covers the tokens and the mask bytes.
 *
 * Writers choose width 2 when vocab_size <= 65536, else 4. */
#ifndef FY_SHARD_H
#define FY_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define FY_SHARD_MAGIC "FERRYTOK"
#define FY_SHARD_VERSION 1u
#define FY_SHARD_VERSION_ROWS 2u
#define FY_SHARD_FLAG_MASK 1u
#define FY_SHARD_HEADER_SIZE 64u

typedef struct fy_shard {
    char path[1024];
    const uint8_t *map;       /* whole file, read-only mapping (NULL when closed) */
    size_t map_size;
    const uint8_t *payload;   /* map + 64 */
    uint32_t token_width;     /* 2 or 4 */
    uint32_t vocab_size;
    uint64_t n_tokens;
    uint64_t payload_checksum;
    uint32_t version;
    uint32_t row_len;         /* 0: a token stream; else rows of row_len tokens */
    const uint8_t *mask;      /* packed loss mask (version 2 with the flag), else NULL */
} fy_shard;

/* Writes tokens[0..n) to path atomically (temp file in the same directory,
 * fsync, rename, fsync of the directory): a crash leaves either the old file
 * or the complete new one. Refuses (before touching the disk) any token < 0 or
 * >= vocab_size, naming its index, and vocab_size == 0. n may be 0. */
int fy_shard_write(const char *path, const int32_t *tokens, uint64_t n,
                   uint32_t vocab_size, fy_err *err);

/* The same with rows and a loss mask (version 2): mask[i] (one byte per
 * token, 0 or 1; NULL = no mask) says whether token i is trained on, row_len
 * > 0 says the tokens are rows of that length (n must be a multiple). With
 * no mask and row_len 0 this is fy_shard_write (version 1). */
int fy_shard_write_rows(const char *path, const int32_t *tokens, const uint8_t *mask, uint64_t n,
                        uint32_t vocab_size, uint32_t row_len, fy_err *err);

/* Memory-maps and validates path: magic, header checksum, version, width,
 * header size, exact file size, vocab (against expected_vocab when it is > 0),
 * and, when verify_payload, the payload checksum and every token < vocab.
 * The file is opened read-only. On failure *s is left closed (safe to pass to
 * fy_shard_close) and the message names the file. */
int fy_shard_open(const char *path, fy_shard *s, int verify_payload,
                  uint32_t expected_vocab, fy_err *err);

/* Payload checksum and token-range check of an open shard (what
 * verify_payload does at open). */
int fy_shard_verify(const fy_shard *s, fy_err *err);

void fy_shard_close(fy_shard *s);

/* Token i (no bounds check; i < s->n_tokens). */
static inline int32_t fy_shard_token(const fy_shard *s, uint64_t i) {
    const uint8_t *p = s->payload + i * s->token_width;
    if (s->token_width == 2) return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8);
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

/* 1 when token i is trained on: its mask bit, or always without a mask. */
static inline int fy_shard_trained(const fy_shard *s, uint64_t i) {
    return s->mask ? (s->mask[i >> 3] >> (i & 7)) & 1 : 1;
}

/* Copies tokens [start, start+count) into out as int32. Fails (naming the
 * file) when the range exceeds the shard. */
int fy_shard_read(const fy_shard *s, uint64_t start, uint64_t count, int32_t *out,
                  fy_err *err);

#endif
