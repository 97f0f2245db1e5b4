/* xxHash64 checksums (core/checksum.h) of memory, streams and whole files,
 * and their 16-hex-digit text form. */
#include "core/checksum.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

uint64_t fy_xxh64(const void *data, size_t len) {
    return (uint64_t)XXH64(data, len, 0);
}

struct fy_xxh64_stream {
    XXH64_state_t *st;
};

fy_xxh64_stream *fy_xxh64_begin(void) {
    fy_xxh64_stream *s = malloc(sizeof *s);
    if (!s) return NULL;
    s->st = XXH64_createState();
    if (!s->st) {
        free(s);
        return NULL;
    }
    XXH64_reset(s->st, 0);
    return s;
}

void fy_xxh64_update(fy_xxh64_stream *s, const void *data, size_t len) {
    XXH64_update(s->st, data, len);
}

uint64_t fy_xxh64_end(fy_xxh64_stream *s) {
    uint64_t h = (uint64_t)XXH64_digest(s->st);
    XXH64_freeState(s->st);
    free(s);
    return h;
}

int fy_xxh64_file(const char *path, uint64_t *out, fy_err *err) {
    enum { CHUNK = 1 << 20 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fy_fail(err, "cannot open %s to checksum: %s", path, strerror(errno));
    char *buf = malloc(CHUNK);
    fy_xxh64_stream *s = fy_xxh64_begin();
    if (!buf || !s) {
        free(buf);
        if (s) fy_xxh64_end(s);
        close(fd);
        return fy_fail(err, "out of memory checksumming %s", path);
    }
    unsigned long long at = 0;
    for (;;) {
        ssize_t r = read(fd, buf, CHUNK);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            fy_xxh64_end(s);
            close(fd);
            return fy_fail(err, "read error in %s at byte %llu: %s", path, at, strerror(e));
        }
        if (r == 0) break;
        fy_xxh64_update(s, buf, (size_t)r);
        at += (unsigned long long)r;
    }
    free(buf);
    close(fd);
    *out = fy_xxh64_end(s);
    return 0;
}

void fy_xxh64_hex(uint64_t h, char out[FY_XXH64_HEX_LEN + 1]) {
    snprintf(out, FY_XXH64_HEX_LEN + 1, "%016" PRIx64, h);
}

int fy_xxh64_parse_hex(const char *s, uint64_t *out) {
    uint64_t h = 0;
    for (int i = 0; i < FY_XXH64_HEX_LEN; i++) {
        char c = s[i];
        int v;
        if (c >= '0' && c <= '9') v = c - '0';
        else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
        else return -1;   /* also stops at an early NUL */
        h = (h << 4) | (uint64_t)v;
    }
    if (s[FY_XXH64_HEX_LEN] != '\0') return -1;
    *out = h;
    return 0;
}
