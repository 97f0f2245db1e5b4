/* xxHash64 (seed 0) checksums of memory and files, written as 16 lowercase
 * hex digits: the form MANIFEST.json and `ferry inspect` use. */
#ifndef FY_CHECKSUM_H
#define FY_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define FY_XXH64_HEX_LEN 16

uint64_t fy_xxh64(const void *data, size_t len);

/* Streams the file in chunks (never holds it whole in memory). */
int fy_xxh64_file(const char *path, uint64_t *out, fy_err *err);

/* Writes 16 lowercase hex digits and a NUL into out[17]. */
void fy_xxh64_hex(uint64_t h, char out[FY_XXH64_HEX_LEN + 1]);

/* Parses exactly 16 hex digits (either case); -1 on anything else. */
int fy_xxh64_parse_hex(const char *s, uint64_t *out);

/* Incremental hashing, for data produced piece by piece. */
typedef struct fy_xxh64_stream fy_xxh64_stream;
fy_xxh64_stream *fy_xxh64_begin(void);        /* NULL when out of memory */
void fy_xxh64_update(fy_xxh64_stream *s, const void *data, size_t len);
uint64_t fy_xxh64_end(fy_xxh64_stream *s);   /* frees s */

#endif
