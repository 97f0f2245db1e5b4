/* A growable byte buffer for text built piece by piece (streamed output,
 * decoded tokens, joined documents). It stays NUL-terminated, the NUL not
 * counted in n, so its text is also a C string. */
#ifndef FY_STRBUF_H
#define FY_STRBUF_H

#include <stddef.h>
#include <string.h>

#include "core/err.h"

typedef struct fy_strbuf {
    char *p;         /* NULL until the first add */
    size_t n, cap;   /* bytes held, bytes allocated */
} fy_strbuf;         /* zero-initialise: fy_strbuf b = {0}; */

/* Room for extra more bytes (and the NUL) without another allocation; out
 * of memory leaves b as it was and fails (err may be NULL). */
int fy_strbuf_reserve(fy_strbuf *b, size_t extra, fy_err *err);
/* Appends s[0..n); out of memory leaves b as it was and fails. */
int fy_strbuf_add(fy_strbuf *b, const void *s, size_t n, fy_err *err);
void fy_strbuf_free(fy_strbuf *b);

/* 1 when C string s ends with suffix ("x.jsonl", ".jsonl"). */
static inline int fy_str_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

#endif
