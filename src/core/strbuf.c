/* The growable byte buffer (core/strbuf.h): doubling capacity, starting at
 * 256 bytes, so n appends cost O(total) copies. */
#include "core/strbuf.h"

#include <stdlib.h>
#include <string.h>

int fy_strbuf_reserve(fy_strbuf *b, size_t extra, fy_err *err) {
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return fy_fail(err, "out of memory growing a text buffer to %zu bytes", cap);
    b->p = q;
    b->cap = cap;
    return 0;
}

int fy_strbuf_add(fy_strbuf *b, const void *s, size_t n, fy_err *err) {
    if (fy_strbuf_reserve(b, n, err)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

void fy_strbuf_free(fy_strbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}
