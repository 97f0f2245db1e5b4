/* Token shard format: round trips at both widths, and every refusal names
 * the file and leaves it untouched. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/shard.h"
#include "testutil.h"

static const char *tmp;

static char *path_of(const char *name) {
    static char buf[8][1024];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 1024, "%s/%s", tmp, name);
    return p;
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Open must fail with a message naming the file and containing `want`, and
 * the file's bytes must be the same afterwards. */
static void expect_refusal(const char *path, int verify, uint32_t expected_vocab,
                           const char *want, const char *what) {
    size_t n0, n1;
    uint8_t *before = slurp(path, &n0);
    fy_shard s;
    fy_err err = {{0}};
    int rc = fy_shard_open(path, &s, verify, expected_vocab, &err);
    CHECK(rc == -1, "%s: open succeeded", what);
    CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", what, err.msg);
    if (want) CHECK(strstr(err.msg, want) != NULL, "%s: message lacks \"%s\": %s", what, want, err.msg);
    CHECK(s.map == NULL, "%s: shard left mapped", what);
    fy_shard_close(&s);
    uint8_t *after = slurp(path, &n1);
    CHECK(n0 == n1 && memcmp(before, after, n0) == 0, "%s: file modified by failed open", what);
    free(before);
    free(after);
}

static void roundtrip(uint32_t vocab, uint64_t n, uint32_t want_width) {
    int32_t *tok = malloc((n ? n : 1) * sizeof *tok);
    for (uint64_t i = 0; i < n; i++) tok[i] = (int32_t)((i * 2654435761u + 7) % vocab);
    if (n > 2) { tok[0] = 0; tok[1] = (int32_t)vocab - 1; }
    char name[64];
    snprintf(name, sizeof name, "rt-%u-%llu.bin", vocab, (unsigned long long)n);
    const char *p = path_of(name);
    fy_err err = {{0}};
    CHECK(fy_shard_write(p, tok, n, vocab, &err) == 0, "write %s: %s", name, err.msg);
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && (uint64_t)sb.st_size == 64 + n * want_width,
          "%s: size %lld", name, (long long)sb.st_size);
    fy_shard s;
    CHECK(fy_shard_open(p, &s, 1, vocab, &err) == 0, "open %s: %s", name, err.msg);
    if (s.map) {
        CHECK(s.token_width == want_width, "%s: width %u", name, s.token_width);
        CHECK(s.vocab_size == vocab && s.n_tokens == n, "%s: header fields", name);
        int bad = 0;
        for (uint64_t i = 0; i < n; i++) bad += fy_shard_token(&s, i) != tok[i];
        CHECK(bad == 0, "%s: %d tokens differ", name, bad);
        if (n >= 10) {
            int32_t out[7];
            CHECK(fy_shard_read(&s, n - 7, 7, out, &err) == 0, "read tail: %s", err.msg);
            CHECK(memcmp(out, tok + n - 7, sizeof out) == 0, "%s: bulk read differs", name);
            CHECK(fy_shard_read(&s, n - 6, 7, out, &err) == -1 && strstr(err.msg, p),
                  "read past end not refused: %s", err.msg);
        }
        /* Header bytes are little-endian at fixed offsets. */
        CHECK(memcmp(s.map, "FERRYTOK", 8) == 0 && s.map[8] == 1 && s.map[12] == want_width &&
                  s.map[20] == 64,
              "%s: header layout", name);
    }
    fy_shard_close(&s);
    fy_shard_close(&s); /* idempotent */
    free(tok);
}

static int dir_has_tmp(void) {
    DIR *d = opendir(tmp);
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp")) found = 1;
    closedir(d);
    return found;
}

int main(void) {
    tmp = fy_test_tmpdir("test_shard");
    fy_err err = {{0}};

    roundtrip(1000, 5000, 2);
    roundtrip(65536, 3000, 2);
    roundtrip(65537, 3000, 4);
    roundtrip(129280, 200000, 4); /* DeepSeek-V3 vocab; > one write chunk */
    roundtrip(50, 0, 2);          /* empty shard */
    CHECK(!dir_has_tmp(), "temp file left behind");

    /* A reference shard to damage. */
    enum { N = 1000 };
    int32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (i * 31) % 4096;
    char good[1024];
    snprintf(good, sizeof good, "%s", path_of("good.bin"));
    CHECK(fy_shard_write(good, tok, N, 4096, &err) == 0, "write good: %s", err.msg);
    size_t gn;
    uint8_t *gb = slurp(good, &gn);
    CHECK(gn == 64 + 2 * N, "good size %zu", gn);

    /* Rewrite replaces atomically. */
    tok[5] = 7;
    CHECK(fy_shard_write(good, tok, N, 4096, &err) == 0, "rewrite: %s", err.msg);
    fy_shard s;
    CHECK(fy_shard_open(good, &s, 1, 0, &err) == 0 && fy_shard_token(&s, 5) == 7, "rewrite read");
    fy_shard_close(&s);
    tok[5] = (5 * 31) % 4096;
    spit(good, gb, gn);

    /* Bad magic. */
    {
        const char *p = path_of("magic.bin");
        uint8_t *b = malloc(gn);
        memcpy(b, gb, gn);
        memcpy(b, "GGUF\0\0\0\0", 8);
        spit(p, b, gn);
        expect_refusal(p, 0, 0, "not a ferry token shard", "bad magic");
        const char *txt = path_of("text.bin");
        spit(txt, (const uint8_t *)"hello", 5);
        expect_refusal(txt, 0, 0, "not a ferry token shard", "short text file");
        spit(txt, (const uint8_t *)"", 0);
        expect_refusal(txt, 0, 0, NULL, "empty file");
        free(b);
    }

    /* Truncations, inside the header and inside the payload. */
    {
        size_t cuts[] = {4, 8, 20, 40, 63, 64, 65, gn / 2, gn - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            char name[64];
            snprintf(name, sizeof name, "cut-%zu.bin", cuts[i]);
            const char *p = path_of(name);
            spit(p, gb, cuts[i]);
            char what[64];
            snprintf(what, sizeof what, "truncated at %zu", cuts[i]);
            expect_refusal(p, 0, 0, "truncated", what);
            if (cuts[i] >= 64) {
                char want[64];
                snprintf(want, sizeof want, "%zu bytes, expected %zu", cuts[i], gn);
                expect_refusal(p, 1, 0, want, what);
            }
        }
        /* Extra bytes at the end are refused too. */
        const char *p = path_of("long.bin");
        uint8_t *b = malloc(gn + 3);
        memcpy(b, gb, gn);
        memset(b + gn, 0, 3);
        spit(p, b, gn + 3);
        expect_refusal(p, 0, 0, "does not match header", "trailing bytes");
        free(b);
    }

    /* A flipped payload byte: only a verifying open can see it. */
    {
        const char *p = path_of("flip-payload.bin");
        uint8_t *b = malloc(gn);
        memcpy(b, gb, gn);
        b[64 + 777] ^= 0x01;
        spit(p, b, gn);
        CHECK(fy_shard_open(p, &s, 0, 0, &err) == 0, "unverified open of flipped payload: %s",
              err.msg);
        CHECK(s.map && fy_shard_verify(&s, &err) == -1 && strstr(err.msg, p) &&
                  strstr(err.msg, "payload checksum"),
              "verify after open: %s", err.msg);
        fy_shard_close(&s);
        expect_refusal(p, 1, 0, "payload checksum mismatch", "flipped payload byte");
        free(b);
    }

    /* Flipped header bytes: vocab, token count, width, version, stored checksums. */
    {
        int offs[] = {8, 12, 16, 21, 24, 30, 33, 41, 47};
        for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
            char name[64];
            snprintf(name, sizeof name, "flip-hdr-%d.bin", offs[i]);
            const char *p = path_of(name);
            uint8_t *b = malloc(gn);
            memcpy(b, gb, gn);
            b[offs[i]] ^= 0x10;
            spit(p, b, gn);
            char what[64];
            snprintf(what, sizeof what, "flipped header byte %d", offs[i]);
            expect_refusal(p, 0, 0, "header checksum mismatch", what);
            free(b);
        }
    }

    /* Vocab mismatch against the model. */
    {
        const char *p = path_of("v4096.bin");
        CHECK(fy_shard_write(p, tok, N, 4096, &err) == 0, "write: %s", err.msg);
        expect_refusal(p, 1, 8192, "shard vocab 4096 != model vocab 8192", "vocab mismatch");
        CHECK(fy_shard_open(p, &s, 1, 4096, &err) == 0, "matching vocab: %s", err.msg);
        fy_shard_close(&s);
    }

    /* Writer refusals: nothing lands on disk. */
    {
        const char *p = path_of("refused.bin");
        int32_t t[5] = {1, 2, 3, 100, 4};
        CHECK(fy_shard_write(p, t, 5, 100, &err) == -1 && strstr(err.msg, p) &&
                  strstr(err.msg, "index 3"),
              "token == vocab not refused: %s", err.msg);
        t[3] = -1;
        CHECK(fy_shard_write(p, t, 5, 100, &err) == -1 && strstr(err.msg, "index 3"),
              "negative token not refused: %s", err.msg);
        CHECK(fy_shard_write(p, t, 5, 0, &err) == -1 && strstr(err.msg, p), "vocab 0: %s", err.msg);
        CHECK(access(p, F_OK) != 0, "refused write created the file");
        /* A refused write over an existing shard leaves it intact. */
        CHECK(fy_shard_write(good, t, 5, 100, &err) == -1, "refused overwrite");
        size_t n2;
        uint8_t *b2 = slurp(good, &n2);
        CHECK(n2 == gn && memcmp(b2, gb, gn) == 0, "refused write modified existing shard");
        free(b2);
        CHECK(fy_shard_write(path_of("no/such/dir/x.bin"), t, 2, 100, &err) == -1 &&
                  strstr(err.msg, "x.bin"),
              "write to missing dir: %s", err.msg);
    }

    /* Missing file. */
    CHECK(fy_shard_open(path_of("missing.bin"), &s, 1, 0, &err) == -1 &&
              strstr(err.msg, "missing.bin"),
          "missing file: %s", err.msg);
    CHECK(!dir_has_tmp(), "temp file left behind");

    free(gb);
    return fy_test_finish("test_shard");
}
