/* A chat data set made from the King James Bible (the default corpus,
 * Debian's bible-kjv): `ferry data chat-kjv` (docs/FINETUNE.md).
 *
 * Input: verse lines as `bible -f Gen1:1-Rev22:21` prints them,
 * "Ge1:3 And God said, Let there be light: and there was light."
 * (book abbreviation, chapter:verse, a space, the text). Output: JSONL
 * {"messages": [...]} conversations, example k drawn from (seed, k) alone:
 *   "What does Genesis 1:3 say?"            -> the verse text        (1/2)
 *   "Which book says \"<verse text>\"?"     -> "Genesis 1:3"         (1/4)
 *   the first, then "And the next verse?"   -> the following verse   (1/4)
 * so a fine-tuned model can be seen to follow the format. Deterministic: the
 * same verses, n and seed give the same bytes. */
#ifndef FY_KJV_CHAT_H
#define FY_KJV_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct fy_kjv_chat_opts {
    long n;        /* conversations to write */
    uint64_t seed;
    int max_chars; /* only verses of at most this many bytes (0 = all) */
} fy_kjv_chat_opts;

/* The book's name for a bible-kjv abbreviation ("Ge" -> "Genesis"); the
 * abbreviation itself when unknown. */
const char *fy_kjv_book_name(const char *abbr);

/* Writes o->n conversations built from the verse lines in verses[0..len) to
 * out_path (atomically). Fails when no line parses as a verse. */
int fy_kjv_chat_write(const char *verses, size_t len, const fy_kjv_chat_opts *o, const char *out_path,
                      long *n_verses, fy_err *err);

#endif
