/* fsutil and checksum: atomic replacement keeps the old file on every
 * failure path, mkdir -p, path helpers, xxh64 vectors. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checksum.h"
#include "core/fsutil.h"
#include "testutil.h"

static char *read_all(const char *path) {
    char *buf;
    size_t len;
    fy_err err;
    return fy_read_file(path, &buf, &len, &err) == 0 ? buf : NULL;
}

static int content_is(const char *path, const char *want) {
    char *got = read_all(path);
    int ok = got && strcmp(got, want) == 0;
    free(got);
    return ok;
}

/* Entries of dir whose name contains ".tmp." (leftover temporaries). */
static int count_temps(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_atomic_write(const char *dir) {
    char path[FY_PATH_MAX], tmp[FY_PATH_MAX + 32], sub[FY_PATH_MAX];
    fy_err err = {{0}};
    CHECK(fy_path_join(path, sizeof path, dir, "state.json", &err) == 0, "%s", err.msg);

    CHECK(fy_write_file_atomic(path, "first", 5, &err) == 0, "%s", err.msg);
    CHECK(content_is(path, "first"), "new file");
    CHECK(fy_write_file_atomic(path, "second!", 7, &err) == 0, "%s", err.msg);
    CHECK(content_is(path, "second!"), "replaced content");
    CHECK(count_temps(dir) == 0, "no temporaries left after success");

    /* The temporary cannot be created (a directory sits on its name). */
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(mkdir(tmp, 0755) == 0, "mkdir %s", tmp);
    CHECK(fy_write_file_atomic(path, "third", 5, &err) == -1, "write must fail");
    CHECK(strstr(err.msg, "state.json") != NULL, "message names the file: %s", err.msg);
    CHECK(content_is(path, "second!"), "old content kept when the temp cannot be created");
    rmdir(tmp);

    /* The rename fails (the target is a non-empty directory). */
    CHECK(fy_path_join(sub, sizeof sub, dir, "adir", &err) == 0, "%s", err.msg);
    char inner[FY_PATH_MAX];
    CHECK(fy_path_join(inner, sizeof inner, sub, "keep.txt", &err) == 0, "%s", err.msg);
    CHECK(fy_mkdir_p(sub, &err) == 0, "%s", err.msg);
    CHECK(fy_write_file_atomic(inner, "kept", 4, &err) == 0, "%s", err.msg);
    CHECK(fy_write_file_atomic(sub, "x", 1, &err) == -1, "rename over a directory must fail");
    CHECK(strstr(err.msg, "adir") != NULL, "message names the target: %s", err.msg);
    CHECK(content_is(inner, "kept"), "directory contents untouched");
    CHECK(count_temps(dir) == 0, "temporary removed after a failed rename");

    /* Parent directory missing. */
    char nowhere[FY_PATH_MAX];
    CHECK(fy_path_join(nowhere, sizeof nowhere, dir, "no/such/dir/f", &err) == 0, "%s", err.msg);
    CHECK(fy_write_file_atomic(nowhere, "x", 1, &err) == -1, "missing parent must fail");
    CHECK(strstr(err.msg, "no/such/dir/f") != NULL, "message names the path: %s", err.msg);
    CHECK(!fy_file_exists(nowhere), "nothing created");

    /* Streaming form: abort leaves the old file and no temporary. */
    fy_atomic_file a;
    CHECK(fy_atomic_open(&a, path, &err) == 0, "%s", err.msg);
    CHECK(fy_atomic_write(&a, "partial", 7, &err) == 0, "%s", err.msg);
    fy_atomic_abort(&a);
    CHECK(content_is(path, "second!"), "abort keeps the old file");
    CHECK(count_temps(dir) == 0, "abort removes the temporary");

    /* Root bypasses permissions, so the read-only-directory case is only
     * meaningful for other users. */
    if (geteuid() != 0) {
        CHECK(chmod(dir, 0555) == 0, "chmod");
        CHECK(fy_write_file_atomic(path, "ro", 2, &err) == -1, "read-only dir must fail");
        CHECK(chmod(dir, 0755) == 0, "chmod back");
        CHECK(content_is(path, "second!"), "old content kept in a read-only dir");
    }

    /* Empty file, binary data with a NUL. */
    CHECK(fy_write_file_atomic(path, "", 0, &err) == 0, "%s", err.msg);
    char *buf;
    size_t len = 99;
    CHECK(fy_read_file(path, &buf, &len, &err) == 0 && len == 0 && buf[0] == '\0', "empty file");
    free(buf);
    CHECK(fy_write_file_atomic(path, "a\0b", 3, &err) == 0, "%s", err.msg);
    CHECK(fy_read_file(path, &buf, &len, &err) == 0 && len == 3 && memcmp(buf, "a\0b", 4) == 0,
          "binary content and trailing NUL");
    free(buf);
}

static void test_read_errors(const char *dir) {
    char path[FY_PATH_MAX];
    fy_err err = {{0}};
    char *buf = (char *)1;
    size_t len;
    fy_path_join(path, sizeof path, dir, "missing.txt", &err);
    CHECK(fy_read_file(path, &buf, &len, &err) == -1, "missing file");
    CHECK(strstr(err.msg, "missing.txt") != NULL, "names the file: %s", err.msg);
    CHECK(buf == NULL, "buf cleared on failure");
    CHECK(fy_read_file(dir, &buf, &len, &err) == -1, "a directory is not a file");
}

static void test_mkdir_p(const char *dir) {
    char deep[FY_PATH_MAX], file[FY_PATH_MAX], under[FY_PATH_MAX];
    fy_err err = {{0}};
    fy_path_join(deep, sizeof deep, dir, "m/n/o/p", &err);
    CHECK(fy_mkdir_p(deep, &err) == 0, "%s", err.msg);
    struct stat st;
    CHECK(stat(deep, &st) == 0 && S_ISDIR(st.st_mode), "deep directory exists");
    CHECK(fy_mkdir_p(deep, &err) == 0, "existing directory is fine: %s", err.msg);
    strcat(deep, "/");
    CHECK(fy_mkdir_p(deep, &err) == 0, "trailing slash: %s", err.msg);

    fy_path_join(file, sizeof file, dir, "plain", &err);
    CHECK(fy_write_file_atomic(file, "x", 1, &err) == 0, "%s", err.msg);
    fy_path_join(under, sizeof under, file, "sub", &err);
    CHECK(fy_mkdir_p(under, &err) == -1, "a file in the way must fail");
    CHECK(strstr(err.msg, "plain") != NULL, "names the blocking path: %s", err.msg);
    CHECK(fy_file_exists(file) && !fy_file_exists(under), "exists");
}

static void test_paths(void) {
    char out[32];
    fy_err err = {{0}};
    CHECK(fy_path_join(out, sizeof out, "a/b", "c", &err) == 0 && strcmp(out, "a/b/c") == 0, "%s", out);
    CHECK(fy_path_join(out, sizeof out, "a/b/", "c", &err) == 0 && strcmp(out, "a/b/c") == 0, "%s", out);
    CHECK(fy_path_join(out, sizeof out, "", "c", &err) == 0 && strcmp(out, "c") == 0, "%s", out);
    char small[8];
    CHECK(fy_path_join(small, sizeof small, "dirname", "file", &err) == -1, "truncation refused");
    CHECK(strstr(err.msg, "dirname") != NULL, "%s", err.msg);
    CHECK(fy_path_dirname(out, sizeof out, "a/b/c", &err) == 0 && strcmp(out, "a/b") == 0, "%s", out);
    CHECK(fy_path_dirname(out, sizeof out, "c", &err) == 0 && strcmp(out, ".") == 0, "%s", out);
    CHECK(fy_path_dirname(out, sizeof out, "/c", &err) == 0 && strcmp(out, "/") == 0, "%s", out);
}

static void test_checksum(const char *dir) {
    char hex[FY_XXH64_HEX_LEN + 1];
    fy_err err = {{0}};
    CHECK(fy_xxh64("", 0) == 0xef46db3751d8e999ull, "xxh64 of empty input");
    CHECK(fy_xxh64("abc", 3) == 0x44bc2cf5ad770999ull, "xxh64(\"abc\")");
    fy_xxh64_hex(0x00ab00000000000full, hex);
    CHECK(strcmp(hex, "00ab00000000000f") == 0, "hex is 16 lowercase digits: %s", hex);
    uint64_t back;
    CHECK(fy_xxh64_parse_hex(hex, &back) == 0 && back == 0x00ab00000000000full, "parse hex");
    CHECK(fy_xxh64_parse_hex("00AB00000000000F", &back) == 0 && back == 0x00ab00000000000full, "upper");
    CHECK(fy_xxh64_parse_hex("00ab00000000000", &back) == -1, "short refused");
    CHECK(fy_xxh64_parse_hex("00ab00000000000f0", &back) == -1, "long refused");
    CHECK(fy_xxh64_parse_hex("00ab0000000g000f", &back) == -1, "non-hex refused");

    /* File hash streams in 1 MiB chunks: use a file larger than one chunk. */
    size_t n = (3u << 20) + 12345;
    unsigned char *data = malloc(n);
    for (size_t i = 0; i < n; i++) data[i] = (unsigned char)(i * 2654435761u >> 13);
    char path[FY_PATH_MAX];
    fy_path_join(path, sizeof path, dir, "blob.bin", &err);
    CHECK(fy_write_file_atomic(path, data, n, &err) == 0, "%s", err.msg);
    uint64_t h = 0;
    CHECK(fy_xxh64_file(path, &h, &err) == 0, "%s", err.msg);
    CHECK(h == fy_xxh64(data, n), "file hash equals memory hash");
    fy_xxh64_stream *s = fy_xxh64_begin();
    fy_xxh64_update(s, data, 1000);
    fy_xxh64_update(s, data + 1000, n - 1000);
    CHECK(fy_xxh64_end(s) == h, "incremental hash equals one-shot");
    free(data);
    fy_path_join(path, sizeof path, dir, "nope.bin", &err);
    CHECK(fy_xxh64_file(path, &h, &err) == -1 && strstr(err.msg, "nope.bin"), "missing: %s", err.msg);
}

int main(void) {
    const char *dir = fy_test_tmpdir("test_fsutil");
    test_atomic_write(dir);
    test_read_errors(dir);
    test_mkdir_p(dir);
    test_paths();
    test_checksum(dir);
    return fy_test_finish("test_fsutil");
}
