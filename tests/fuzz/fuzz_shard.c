/* Fuzz target: a token shard (io/shard.c): fy_shard_open's header checks
 * (magic, checksum, version, width, sizes, rows and mask), the payload
 * verification, and reads. The header checksum is an XXH64 a mutation
 * almost never matches, so the input is opened twice: as it is, and with
 * its header and payload checksums recomputed (bytes 32-48), which lets
 * the fuzzer reach every check behind them. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "fuzz_common.h"
#include "io/shard.h"

static uint64_t rd32(const uint8_t *p) { return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24; }

static void wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The checksums as shard.h lays them out, for the header's version. */
static void fix_checksums(uint8_t *b, size_t n) {
    wr64(b + 32, XXH64(b + 64, n - 64, 0));
    if (rd32(b + 8) == FY_SHARD_VERSION_ROWS) {
        uint8_t h[56];
        memcpy(h, b, 40);
        memcpy(h + 40, b + 48, 16);
        wr64(b + 40, XXH64(h, sizeof h, 0));
    } else {
        wr64(b + 40, XXH64(b, 40, 0));
    }
}

static void open_and_read(const char *path, uint32_t expect_vocab) {
    fy_shard s;
    fy_err err;
    memset(&s, 0, sizeof s);
    if (fy_shard_open(path, &s, 1, expect_vocab, &err) == 0) {
        int32_t buf[64];
        uint64_t k = s.n_tokens < 64 ? s.n_tokens : 64;
        fy_shard_read(&s, 0, k, buf, &err);
        fy_shard_read(&s, s.n_tokens - k, k, buf, &err);
        fy_shard_read(&s, s.n_tokens, 1, buf, &err);  /* past the end: refused */
        uint64_t trained = 0;
        for (uint64_t i = 0; i < s.n_tokens; i++) trained += fy_shard_trained(&s, i) + (fy_shard_token(&s, i) < 0);
        (void)trained;
        fy_shard_close(&s);
    }
    fy_shard_close(&s);
    /* the same file without the payload check, as the trainer opens it */
    if (fy_shard_open(path, &s, 0, 0, &err) == 0) fy_shard_verify(&s, &err);
    fy_shard_close(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[4096];
    open_and_read(fz_write("train-00000.bin", data, size, path), 0);
    if (size >= 64) {
        uint8_t *b = malloc(size);
        if (!b) abort();
        memcpy(b, data, size);
        fix_checksums(b, size);
        open_and_read(fz_write("train-00000.bin", b, size, path), (uint32_t)rd32(b + 16));
        free(b);
    }
    return 0;
}
