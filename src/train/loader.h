/* Training data loader over token shards (io/shard.h).
 *
 * A data set is every "<split>-*.bin" shard in one directory (e.g.
 * train-00000.bin, train-00001.bin, val-00000.bin), taken in name order.
 * All shards are memory-mapped and fully verified (payload checksum, token
 * range) at open, and must share one vocab size.
 *
 * Windows. For sequence length T a "slot" is a window of T+1 consecutive
 * tokens starting at a multiple of T inside one shard: slot j of a shard with
 * n tokens covers [j*T, j*T+T], j < (n-1)/T. Consecutive slots share one
 * boundary token, so over one epoch every token of a shard (but the leftover
 * tail) is predicted exactly once. Windows never span shards; shards shorter
 * than T+1 tokens contribute no slots. Slots are numbered globally over the
 * shards in name order.
 *
 * Sampling (training). The g-th window ever drawn (global row counter g) is
 *   epoch = g / n_slots, slot = P_key(g % n_slots), key = hash(seed, epoch)
 * where P_key is a keyed bijection of [0, n_slots): a 6-round Feistel network
 * on the smallest even-width power-of-two domain >= n_slots, with
 * cycle-walking back into range. So each epoch visits every slot exactly once
 * in a fresh shuffled order (like a shuffled PyTorch DataLoader without
 * drop-last effects), yet every window is a pure function of (seed, g) with
 * no loader state: a resumed run recomputes any step's batch exactly.
 * fy_loader_batch uses g = step * (n_ranks*B) + rank*B + b, so data-parallel
 * ranks take disjoint row blocks of one global batch, and the rows equal
 * those of a 1-rank run with batch n_ranks*B. (If the global batch size ever
 * changes mid-run, call fy_loader_rows with a running "rows drawn" counter
 * instead of deriving it from the step.)
 *
 * Rows. Shards written as rows (io/shard.h version 2: `ferry data prepare`
 * of chat JSONL, one padded example per row of T+1 tokens) have one slot per
 * row instead: slot j covers [j*(T+1), j*(T+1)+T], nothing is shared between
 * rows, and the shards' row length must be the run's T+1. Sampling is the
 * same. With a loss mask, the label of every position whose target token is
 * not trained on (prompt, padding) is FY_IGNORE_INDEX (model/model.h).
 *
 * Validation. fy_loader_val_batch takes slots in order (no shuffle): row r of
 * val batch i is slot (i*global_B + r) mod n_slots.
 *
 * Not thread-safe: the slot table for T is built lazily by the first call
 * that uses a new T. */
#ifndef FY_LOADER_H
#define FY_LOADER_H

#include <stdint.h>

#include "core/err.h"
#include "io/shard.h"

typedef struct fy_loader {
    char dir[1024];
    char split[64];
    int n_shards;
    fy_shard *shards;
    uint32_t vocab_size;
    uint64_t n_tokens;        /* over all shards */
    uint32_t row_len;         /* the shards' row length (0: token streams) */
    /* slot table for seq_len slots_T (built lazily) */
    int slots_T;
    uint64_t *slot_start;     /* [n_shards+1]: first global slot of each shard */
    uint64_t n_slots;
} fy_loader;

/* Where one drawn row comes from. */
typedef struct fy_window {
    int shard;          /* index into L->shards */
    uint64_t pos;       /* first token of the window in that shard */
    uint64_t slot;      /* global slot index */
    uint64_t epoch;
} fy_window;

/* Opens every "<split>-*.bin" in dir (split: "train" or "val"). expected_vocab
 * > 0 is checked against every shard; with 0 the shards need only agree. */
int fy_loader_open(fy_loader *L, const char *dir, const char *split, uint32_t expected_vocab,
                   fy_err *err);
void fy_loader_close(fy_loader *L);

/* Number of window slots for seq_len T; fails when no shard has T+1 tokens
 * ("val split in DIR has 100 tokens, need at least 257 for seq_len 256"). */
int fy_loader_n_slots(fy_loader *L, int T, uint64_t *n_slots, fy_err *err);

/* The window of global row counter g (see the sampling note above). */
int fy_loader_locate(fy_loader *L, uint64_t seed, uint64_t g, int T, fy_window *w, fy_err *err);

/* Rows g = row0 .. row0+nrows-1 into inputs/labels [nrows*T]:
 * inputs[r*T+t] = tok[p+t], labels[r*T+t] = tok[p+t+1] (FY_IGNORE_INDEX where
 * the shard's mask leaves token p+t+1 out). */
int fy_loader_rows(fy_loader *L, uint64_t seed, uint64_t row0, int nrows, int T,
                   int32_t *inputs, int32_t *labels, fy_err *err);

/* This rank's B rows of the global batch of `step` (global batch n_ranks*B). */
int fy_loader_batch(fy_loader *L, uint64_t seed, uint64_t step, int rank, int n_ranks, int B,
                    int T, int32_t *inputs, int32_t *labels, fy_err *err);

/* How many validation batches of global size n_ranks*B to run: the number of
 * whole batches the slots fill (at least 1), capped at max_batches when > 0. */
int fy_loader_val_batches(fy_loader *L, int n_ranks, int B, int T, uint64_t max_batches,
                          uint64_t *n_batches, fy_err *err);

/* This rank's rows of validation batch `index` (fixed windows, in order). */
int fy_loader_val_batch(fy_loader *L, uint64_t index, int rank, int n_ranks, int B, int T,
                        int32_t *inputs, int32_t *labels, fy_err *err);

/* The keyed bijection of [0, n) used for shuffling (exposed for tests). */
uint64_t fy_loader_permute(uint64_t x, uint64_t n, uint64_t key);

#endif
