/* `ferry data prepare`: text files -> tokenizer ids -> train/val shards. */
#ifndef FY_PREPARE_H
#define FY_PREPARE_H

#include <stdint.h>

#include "core/err.h"
#include "io/tokenizer.h"

typedef struct fy_prepare_opts {
    double val_fraction;   /* share of line blocks held out for validation */
    int block_lines;       /* lines per block that goes wholly to one split */
    uint64_t seed;         /* which blocks are held out */
    uint64_t shard_tokens; /* tokens per shard file at most */
} fy_prepare_opts;

typedef struct fy_prepare_stats {
    uint64_t bytes, train_tokens, val_tokens;
    int train_shards, val_shards;
} fy_prepare_stats;

void fy_prepare_opts_default(fy_prepare_opts *o);

/* Reads every file, assigns blocks of block_lines lines to train or val by a
 * seeded hash (so val text is spread over the corpus, not one end of it),
 * encodes each split and writes DIR/train-NNNNN.bin and DIR/val-NNNNN.bin.
 * Existing shards in DIR are replaced only once the new ones are written. */
int fy_data_prepare(const char *const *files, int n_files, const fy_tokenizer *tok,
                    const char *out_dir, const fy_prepare_opts *o, fy_prepare_stats *st,
                    fy_err *err);

/* Writes DIR/SPLIT-00000.bin, ... of at most shard_tokens tokens each (at
 * least one file, maybe empty), rows of row_len kept whole, with the mask
 * when given (io/shard.h), and removes higher-numbered SPLIT shards left by
 * an earlier, larger preparation. */
int fy_prepare_write_shards(const char *dir, const char *split, const int32_t *ids, const uint8_t *mask, uint64_t n,
                            uint32_t vocab, uint32_t row_len, uint64_t shard_tokens, int *n_shards, fy_err *err);

#endif
