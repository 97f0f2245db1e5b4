/* Token shards (format in shard.h): atomic writing, and opening with every
 * header field and checksum verified before training reads a token. */
#include "io/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/fsutil.h"

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static int pwrite_all(int fd, const void *buf, size_t n, off_t off) {
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

static void encode_tokens(uint8_t *dst, const int32_t *src, size_t n, uint32_t width) {
    if (width == 2) {
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)src[i];
            dst[2 * i] = (uint8_t)v;
            dst[2 * i + 1] = (uint8_t)(v >> 8);
        }
    } else {
        for (size_t i = 0; i < n; i++) put_u32(dst + 4 * i, (uint32_t)src[i]);
    }
}

/* Streams the tokens at `width` bytes each, then the mask packed 8 to a
 * byte (when given); *sum = XXH64 of all those bytes. */
static int write_payload(fy_atomic_file *a, const int32_t *tokens, const uint8_t *mask, uint64_t n, uint32_t width,
                         uint64_t *sum, fy_err *err) {
    enum { CHUNK = 1 << 16 };
    XXH64_state_t *st = XXH64_createState();
    uint8_t *buf = malloc((size_t)CHUNK * width);
    int rc = st && buf ? 0 : fy_fail(err, "out of memory");
    if (st) XXH64_reset(st, 0);
    for (uint64_t i = 0; i < n && rc == 0; i += CHUNK) {
        size_t m = (size_t)(n - i < CHUNK ? n - i : CHUNK);
        encode_tokens(buf, tokens + i, m, width);
        XXH64_update(st, buf, m * width);
        rc = fy_atomic_write(a, buf, m * width, err);
    }
    /* CHUNK is a multiple of 8: each chunk of the mask fills whole bytes. */
    for (uint64_t i = 0; mask && i < n && rc == 0; i += CHUNK) {
        size_t m = (size_t)(n - i < CHUNK ? n - i : CHUNK), nb = (m + 7) / 8;
        memset(buf, 0, nb);
        for (size_t j = 0; j < m; j++) buf[j >> 3] |= (uint8_t)((mask[i + j] != 0) << (j & 7));
        XXH64_update(st, buf, nb);
        rc = fy_atomic_write(a, buf, nb, err);
    }
    if (rc == 0) *sum = XXH64_digest(st);
    free(buf);
    XXH64_freeState(st);
    return rc;
}

/* The header checksum: of [0, 40) in version 1, of [0, 40) ++ [48, 64) in
 * version 2 (which adds the row length and flags there). */
static uint64_t header_sum(const uint8_t *h, uint32_t version) {
    if (version < FY_SHARD_VERSION_ROWS) return XXH64(h, 40, 0);
    uint8_t b[56];
    memcpy(b, h, 40);
    memcpy(b + 40, h + 48, 16);
    return XXH64(b, sizeof b, 0);
}

int fy_shard_write(const char *path, const int32_t *tokens, uint64_t n,
                   uint32_t vocab_size, fy_err *err) {
    return fy_shard_write_rows(path, tokens, NULL, n, vocab_size, 0, err);
}

int fy_shard_write_rows(const char *path, const int32_t *tokens, const uint8_t *mask, uint64_t n,
                        uint32_t vocab_size, uint32_t row_len, fy_err *err) {
    if (row_len && n % row_len)
        return fy_fail(err, "writing shard %s: %llu tokens are not whole rows of %u", path, (unsigned long long)n,
                       row_len);
    if (vocab_size == 0) return fy_fail(err, "writing shard %s: vocab_size is 0", path);
    if (n > 0 && !tokens) return fy_fail(err, "writing shard %s: no tokens given", path);
    for (uint64_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= vocab_size)
            return fy_fail(err, "writing shard %s: token %lld at index %llu is outside [0, %u)",
                           path, (long long)tokens[i], (unsigned long long)i, vocab_size);
    }
    uint32_t width = vocab_size <= 65536u ? 2u : 4u;
    uint32_t version = mask || row_len ? FY_SHARD_VERSION_ROWS : FY_SHARD_VERSION;

    /* The header holds the payload's checksum: write a blank one, stream the
     * payload, then fill the header in place before the commit. */
    fy_atomic_file a;
    if (fy_atomic_open(&a, path, err)) return fy_wrap(err, "writing shard %s", path);
    uint8_t hdr[FY_SHARD_HEADER_SIZE];
    memset(hdr, 0, sizeof hdr);
    uint64_t payload_sum = 0;
    if (fy_atomic_write(&a, hdr, sizeof hdr, err) || write_payload(&a, tokens, mask, n, width, &payload_sum, err))
        goto fail;
    memcpy(hdr, FY_SHARD_MAGIC, 8);
    put_u32(hdr + 8, version);
    put_u32(hdr + 12, width);
    put_u32(hdr + 16, vocab_size);
    put_u32(hdr + 20, FY_SHARD_HEADER_SIZE);
    put_u64(hdr + 24, n);
    put_u64(hdr + 32, payload_sum);
    if (version == FY_SHARD_VERSION_ROWS) {
        put_u32(hdr + 48, row_len);
        put_u32(hdr + 52, mask ? FY_SHARD_FLAG_MASK : 0u);
    }
    put_u64(hdr + 40, header_sum(hdr, version));
    if (pwrite_all(a.fd, hdr, sizeof hdr, 0) < 0) {
        fy_fail(err, "write error in %s: %s", a.tmp, strerror(errno));
        goto fail;
    }
    if (fy_atomic_commit(&a, err)) return fy_wrap(err, "writing shard %s", path);
    return 0;
fail:
    fy_atomic_abort(&a);
    return fy_wrap(err, "writing shard %s", path);
}

void fy_shard_close(fy_shard *s) {
    if (!s) return;
    if (s->map) munmap((void *)s->map, s->map_size);
    s->map = NULL;
    s->payload = NULL;
    s->map_size = 0;
}

int fy_shard_verify(const fy_shard *s, fy_err *err) {
    size_t bytes = (size_t)s->n_tokens * s->token_width + (s->mask ? (size_t)(s->n_tokens + 7) / 8 : 0);
    uint64_t sum = XXH64(s->payload, bytes, 0);
    if (sum != s->payload_checksum)
        return fy_fail(err, "token shard %s: payload checksum mismatch (stored %016llx, computed "
                            "%016llx): the token data is corrupted",
                       s->path, (unsigned long long)s->payload_checksum, (unsigned long long)sum);
    if (s->token_width == 2 && s->vocab_size >= 65536u) return 0;
    for (uint64_t i = 0; i < s->n_tokens; i++) {
        uint32_t t = (uint32_t)fy_shard_token(s, i);
        if (t >= s->vocab_size)
            return fy_fail(err, "token shard %s: token %u at index %llu >= vocab %u", s->path, t,
                           (unsigned long long)i, s->vocab_size);
    }
    return 0;
}

int fy_shard_open(const char *path, fy_shard *s, int verify_payload, uint32_t expected_vocab,
                  fy_err *err) {
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO: refused below, not waited on */
    if (fd < 0) return fy_fail(err, "token shard %s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return fy_fail(err, "token shard %s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fy_fail(err, "token shard %s: not a regular file", path);
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < FY_SHARD_HEADER_SIZE) {
        /* Too short to hold a header: say whether it even looks like a shard. */
        uint8_t head[8] = {0};
        ssize_t r = pread(fd, head, fsize < 8 ? fsize : 8, 0);
        close(fd);
        if (r >= 0 && (size_t)r == (fsize < 8 ? fsize : 8) &&
            memcmp(head, FY_SHARD_MAGIC, (size_t)r) == 0)
            return fy_fail(err, "token shard %s: truncated: %llu bytes, expected at least the "
                                "%u-byte header",
                           path, (unsigned long long)fsize, FY_SHARD_HEADER_SIZE);
        return fy_fail(err, "token shard %s: not a ferry token shard (%llu bytes, no header)", path,
                       (unsigned long long)fsize);
    }
    void *m = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED) return fy_fail(err, "token shard %s: mmap failed: %s", path, strerror(e));
    s->map = m;
    s->map_size = (size_t)fsize;
    const uint8_t *h = s->map;

    if (memcmp(h, FY_SHARD_MAGIC, 8) != 0) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: not a ferry token shard (bad magic)", path);
    }
    uint32_t version = get_u32(h + 8);
    uint64_t hstored = get_u64(h + 40), hsum = header_sum(h, version == FY_SHARD_VERSION_ROWS ? version : 1);
    if (hsum != hstored) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: header checksum mismatch (stored %016llx, computed "
                            "%016llx): the header is corrupted",
                       path, (unsigned long long)hstored, (unsigned long long)hsum);
    }
    uint32_t width = get_u32(h + 12), vocab = get_u32(h + 16), hsize = get_u32(h + 20);
    uint32_t row_len = version == FY_SHARD_VERSION_ROWS ? get_u32(h + 48) : 0;
    uint32_t flags = version == FY_SHARD_VERSION_ROWS ? get_u32(h + 52) : 0;
    uint64_t n = get_u64(h + 24);
    if (version != FY_SHARD_VERSION && version != FY_SHARD_VERSION_ROWS) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: unsupported version %u (this build reads %u and %u)", path,
                       version, FY_SHARD_VERSION, FY_SHARD_VERSION_ROWS);
    }
    if (flags & ~FY_SHARD_FLAG_MASK || (row_len && n % row_len)) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: flags %#x or %llu tokens in rows of %u are not valid", path, flags,
                       (unsigned long long)n, row_len);
    }
    uint64_t mask_bytes = flags & FY_SHARD_FLAG_MASK ? (n + 7) / 8 : 0;
    if (width != 2 && width != 4) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: token width %u (must be 2 or 4)", path, width);
    }
    if (hsize != FY_SHARD_HEADER_SIZE) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: header size %u (must be %u)", path, hsize,
                       FY_SHARD_HEADER_SIZE);
    }
    if (vocab == 0 || (width == 2 && vocab > 65536u)) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: vocab size %u does not fit token width %u", path, vocab,
                       width);
    }
    if (n > (UINT64_MAX - FY_SHARD_HEADER_SIZE) / (width + 1) ||
        fsize != FY_SHARD_HEADER_SIZE + n * width + mask_bytes) {
        fy_shard_close(s);
        if (n <= (UINT64_MAX - FY_SHARD_HEADER_SIZE) / (width + 1) &&
            fsize < FY_SHARD_HEADER_SIZE + n * width + mask_bytes)
            return fy_fail(err, "token shard %s: truncated: %llu bytes, expected %llu (%llu tokens "
                                "x %u bytes + %u header)",
                           path, (unsigned long long)fsize,
                           (unsigned long long)(FY_SHARD_HEADER_SIZE + n * width + mask_bytes),
                           (unsigned long long)n, width, FY_SHARD_HEADER_SIZE);
        return fy_fail(err, "token shard %s: size %llu bytes does not match header (%llu tokens x "
                            "%u bytes + %u header)",
                       path, (unsigned long long)fsize, (unsigned long long)n, width,
                       FY_SHARD_HEADER_SIZE);
    }
    s->payload = h + FY_SHARD_HEADER_SIZE;
    s->token_width = width;
    s->vocab_size = vocab;
    s->n_tokens = n;
    s->payload_checksum = get_u64(h + 32);
    s->version = version;
    s->row_len = row_len;
    s->mask = mask_bytes ? s->payload + n * width : NULL;
    if (expected_vocab > 0 && vocab != expected_vocab) {
        fy_shard_close(s);
        return fy_fail(err, "token shard %s: shard vocab %u != model vocab %u", path, vocab,
                       expected_vocab);
    }
    if (verify_payload && fy_shard_verify(s, err) < 0) {
        fy_shard_close(s);
        return -1;
    }
    return 0;
}

int fy_shard_read(const fy_shard *s, uint64_t start, uint64_t count, int32_t *out, fy_err *err) {
    if (start > s->n_tokens || count > s->n_tokens - start)
        return fy_fail(err, "token shard %s: read of tokens [%llu, %llu) past its %llu tokens",
                       s->path, (unsigned long long)start, (unsigned long long)(start + count),
                       (unsigned long long)s->n_tokens);
    const uint8_t *p = s->payload + start * s->token_width;
    if (s->token_width == 2) {
        for (uint64_t i = 0; i < count; i++)
            out[i] = (int32_t)((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8);
    } else {
        for (uint64_t i = 0; i < count; i++) out[i] = (int32_t)get_u32(p + 4 * i);
    }
    return 0;
}
