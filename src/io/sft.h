/* Supervised fine-tuning data (docs/FINETUNE.md): JSONL examples -> rows of
 * T+1 tokens with a loss mask -> row shards (io/shard.h version 2) that the
 * training loader reads with FY_IGNORE_INDEX labels where the mask is 0.
 *
 * Formats, detected per line:
 *   {"messages": [{"role": "system|developer|user|assistant", "content": S}, ...]}
 *       rendered with the model's chat template (io/chat.h, the code ferry
 *       serve uses); content may also be a list of {"type": "text", "text"}
 *       parts, joined with "\n" as the server joins them;
 *   {"prompt": S, "completion": S}   plain text, the eos token after the
 *       completion (as /v1/completions sees a prompt); both may instead be
 *       lists of messages (TRL's conversational form): then one chat;
 *   {"text": S}                      plain text + eos, every token trained.
 *
 * Token boundaries. A chat is tokenized in segments cut at the replies: the
 * text before a reply (up to and including the assistant header), then the
 * reply (its content and the end-of-turn token), each encoded on its own
 * with special tokens recognised. The first segment is byte for byte the
 * prompt `ferry serve` renders and encodes for that conversation, and a
 * reply encoded alone is what the model produces after that prompt, so
 * training sees the token boundaries inference sees (encoding the whole
 * rendering at once could merge the header's last bytes with the reply's
 * first, e.g. ferry's "assistant: " + "Hello" -> " Hello": a token the model
 * never starts a reply with at inference). Later turns are checked: the
 * rendering before each reply must equal the server's prompt for the
 * messages before it (else the line is bad: deepseek3 moves every system
 * message to the front), and a history whose whole-string encoding differs
 * from the segments is counted (stats.boundary_mismatch), not refused.
 *
 * Mask: by default only reply tokens (content + end-of-turn token) are
 * trained (1); with train_on_prompt every token is, and messages after the
 * last reply are kept. A token's mask says whether it is trained on as a
 * label; padding is 0. */
#ifndef FY_SFT_H
#define FY_SFT_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/chat.h"
#include "io/tokenizer.h"

typedef enum { FY_SFT_MESSAGES = 0, FY_SFT_PROMPT = 1, FY_SFT_TEXT = 2, FY_SFT_N_FORMATS = 3 } fy_sft_format;

/* One example's tokens and mask (malloc'd arrays of n). */
typedef struct fy_sft_example {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
    fy_sft_format format;
    int boundary_mismatch; /* later replies whose history encodes differently whole */
} fy_sft_example;

/* Parses one JSONL line and builds its tokens and mask (ex is reset first;
 * free with fy_sft_example_free). The error says what is wrong with the
 * line: not JSON, no known format, an unknown role, no reply to train on. */
int fy_sft_encode(const char *line, size_t len, const fy_chat_template *t, const fy_tokenizer *tok,
                  int train_on_prompt, fy_sft_example *ex, fy_err *err);
void fy_sft_example_free(fy_sft_example *ex);

typedef struct fy_sft_opts {
    int seq_len;          /* T: each example is one row of T+1 tokens */
    int train_on_prompt;
    int fail_on_bad_line; /* 0: report and skip a bad line; 1: fail the run */
    double val_fraction;  /* share of examples held out (by a seeded draw per line) */
    uint64_t seed;
    uint64_t shard_tokens; /* tokens per shard file at most (rounded down to rows) */
    /* Called for each bad line (NULL: a warning in the log). */
    void (*on_bad_line)(void *ctx, const char *file, long line, const char *why);
    void *ctx;
} fy_sft_opts;

typedef struct fy_sft_stats {
    long lines, blank, bad;
    long examples[FY_SFT_N_FORMATS]; /* good lines per format */
    uint64_t train_rows, val_rows;
    uint64_t tokens;  /* example tokens (not padding) over all rows */
    uint64_t trained; /* tokens trained on as labels */
    uint64_t pad;     /* padding tokens */
    long boundary_mismatch;
    int train_shards, val_shards;
} fy_sft_stats;

void fy_sft_opts_default(fy_sft_opts *o);

/* Reads the JSONL files, turns each good line into one row of T+1 tokens
 * (padded with the tokenizer's pad token, else eos; padding masked), sends
 * it to train or val, and writes DIR/train-NNNNN.bin and DIR/val-NNNNN.bin
 * as row shards with the mask. A line over T+1 tokens is bad, never cut.
 * With val_fraction > 0 and no line drawn for val, the last train row goes
 * there (the trainer needs a val split). */
int fy_sft_prepare(const char *const *files, int n_files, const fy_tokenizer *tok, const fy_chat_template *t,
                   const char *out_dir, const fy_sft_opts *o, fy_sft_stats *st, fy_err *err);

#endif
