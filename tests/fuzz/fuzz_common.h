/* Shared pieces of the fuzz targets (tests/fuzz/fuzz_*.c): a private
 * scratch directory for parsers that only take paths, and the small
 * tokenizer and chat templates the request and SFT parsers need.
 * Each target defines LLVMFuzzerTestOneInput; libFuzzer's main drives it
 * in the FERRY_FUZZ build, replay_main.c in the normal ones. */
#ifndef FY_FUZZ_COMMON_H
#define FY_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "io/chat.h"
#include "io/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A directory of this process's own (under /dev/shm when it exists, so
 * writing an input costs no disk I/O), made once and removed at exit. */
const char *fz_dir(void);
/* fz_dir()/name, written with data[0..n); returns the path (static
 * buffer per call site is the caller's: out must hold 4096 bytes).
 * Aborts when the write fails: that is the harness, not the parser. */
const char *fz_write(const char *name, const void *data, size_t n, char out[4096]);
/* Removes fz_dir()/name (file or directory tree). */
void fz_remove(const char *name);

/* A byte-level BPE tokenizer trained once from a fixed text (vocab 300)
 * with the chatml and deepseek3 chat tokens added, as a model's would be;
 * and the three chat templates chosen for it. */
const fy_tokenizer *fz_tokenizer(void);
const fy_chat_template *fz_template(fy_chat_kind k);

/* Splits data at the first occurrence of sep (a byte string): *a is before
 * it, *b after; without sep, a is all of data and b is empty. */
void fz_split(const uint8_t *data, size_t size, const char *sep, const uint8_t **a, size_t *na,
              const uint8_t **b, size_t *nb);

/* A NUL-terminated malloc'd copy of data[0..n). */
char *fz_strndup(const uint8_t *data, size_t n);

#endif
