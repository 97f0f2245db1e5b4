/* safetensors: round trips, refusal of every kind of broken file (each an
 * error, never a crash: run under ASan too), atomic replacement, and, when
 * Python has the safetensors package, interoperability both ways. */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/safetensors.h"
#include "core/fsutil.h"
#include "testutil.h"

static const char *g_dir;

static const char *tpath(const char *name) {
    static char buf[4][FY_PATH_MAX];
    static int k;
    char *p = buf[k++ % 4];
    fy_err err;
    fy_path_join(p, FY_PATH_MAX, g_dir, name, &err);
    return p;
}

/* ---- round trip --------------------------------------------------------- */

static const float a_f32[6] = {1, -2, 3.5f, 1e-30f, -0.0f, 6};
static const int32_t b_i32[4] = {-1, 0, 2147483647, -2147483647 - 1};
static const uint16_t c_bf16[4] = {0x3f80, 0xc000, 0x0000, 0x7f80};   /* 1, -2, 0, inf */
static const float d_scalar = 42.25f;
static const uint8_t e_u8[5] = {0, 1, 127, 128, 255};
static const uint16_t f_f16[4] = {0x3c00, 0xc000, 0x0001, 0x7bff};     /* 1, -2, 2^-24, 65504 */
static const float i_src[3] = {1.0f, 1.00390625f, -3.0f};              /* 1+2^-8 rounds to even: 1 */
static float h_ramp[1000];                                             /* element i is i * 0.5 */

static int write_sample(const char *path, int with_bf16, fy_err *err) {
    fy_st_writer *w = fy_st_writer_new();
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s22[2] = {2, 2}, s5[1] = {5}, s03[2] = {0, 3};
    int64_t s1000[1] = {1000}, s3[1] = {3};
    uint16_t i_bf16[3];
    for (int i = 0; i < 1000; i++) h_ramp[i] = (float)i * 0.5f;
    for (int i = 0; i < 3; i++) i_bf16[i] = fy_f32_to_bf16(i_src[i]);
    int rc = 0;
    rc |= fy_st_writer_meta(w, "format", "pt", err);
    rc |= fy_st_writer_meta(w, "step", "999", err);
    rc |= fy_st_writer_meta(w, "step", "1000", err);   /* replaces */
    rc |= fy_st_writer_add(w, "a.f32", FY_ST_F32, 2, s23, a_f32, err);
    rc |= fy_st_writer_add(w, "b.i32", FY_ST_I32, 1, s4, b_i32, err);
    if (with_bf16) rc |= fy_st_writer_add(w, "c.bf16", FY_ST_BF16, 2, s22, c_bf16, err);
    rc |= fy_st_writer_add(w, "d.scalar", FY_ST_F32, 0, NULL, &d_scalar, err);
    rc |= fy_st_writer_add(w, "e.u8", FY_ST_U8, 1, s5, e_u8, err);
    rc |= fy_st_writer_add(w, "f.f16", FY_ST_F16, 1, s4, f_f16, err);
    rc |= fy_st_writer_add(w, "g.empty", FY_ST_F32, 2, s03, NULL, err);
    rc |= fy_st_writer_add(w, "h.ramp", FY_ST_F32, 1, s1000, h_ramp, err);
    if (with_bf16) rc |= fy_st_writer_add(w, "i.as_bf16", FY_ST_BF16, 1, s3, i_bf16, err);
    rc |= fy_st_writer_add(w, "j.\xc3\xbcn\"i\\code", FY_ST_F32, 1, s3, i_src, err);
    if (rc == 0) rc = fy_st_write(w, path, err);
    fy_st_writer_free(w);
    return rc;
}

static void test_round_trip(void) {
    const char *path = tpath("sample.safetensors");
    fy_err err = {{0}};
    CHECK(write_sample(path, 1, &err) == 0, "%s", err.msg);
    fy_st_file *f = NULL;
    CHECK(fy_st_open(path, &f, &err) == 0, "%s", err.msg);
    if (!f) return;
    CHECK(fy_st_count(f) == 10, "count %zu", fy_st_count(f));
    const char *order[10] = {"a.f32", "b.i32", "c.bf16", "d.scalar", "e.u8", "f.f16", "g.empty",
                             "h.ramp", "i.as_bf16", "j.\xc3\xbcn\"i\\code"};
    for (size_t i = 0; i < 10 && i < fy_st_count(f); i++)
        CHECK(strcmp(fy_st_entry_at(f, i)->name, order[i]) == 0, "order %zu: %s", i, fy_st_entry_at(f, i)->name);
    CHECK(fy_st_entry_at(f, 10) == NULL, "past the end");

    const fy_st_entry *e = fy_st_find(f, "a.f32");
    CHECK(e && e->dtype == FY_ST_F32 && e->ndim == 2 && e->shape[0] == 2 && e->shape[1] == 3 &&
          e->numel == 6 && e->nbytes == 24 && memcmp(e->data, a_f32, 24) == 0, "a.f32");
    CHECK(e && e->file_offset % 8 == 0 && (uintptr_t)e->data % 8 == 0, "data block 8-byte aligned");
    e = fy_st_find(f, "b.i32");
    CHECK(e && e->dtype == FY_ST_I32 && e->ndim == 1 && memcmp(e->data, b_i32, 16) == 0, "b.i32");
    e = fy_st_find(f, "c.bf16");
    CHECK(e && e->dtype == FY_ST_BF16 && e->ndim == 2 && memcmp(e->data, c_bf16, 8) == 0, "c.bf16");
    e = fy_st_find(f, "d.scalar");
    CHECK(e && e->ndim == 0 && e->numel == 1 && e->nbytes == 4 && memcmp(e->data, &d_scalar, 4) == 0,
          "0-d tensor");
    e = fy_st_find(f, "e.u8");
    CHECK(e && e->dtype == FY_ST_U8 && memcmp(e->data, e_u8, 5) == 0, "u8");
    e = fy_st_find(f, "g.empty");
    CHECK(e && e->numel == 0 && e->nbytes == 0 && e->shape[0] == 0 && e->shape[1] == 3, "empty");
    e = fy_st_find(f, "j.\xc3\xbcn\"i\\code");
    CHECK(e && memcmp(e->data, i_src, 12) == 0, "name with UTF-8, quote and backslash");
    CHECK(fy_st_find(f, "nope") == NULL && fy_st_find(f, "a.f3") == NULL, "absent names");

    float h[1000], c[4], ff[4], ib[3], s;
    CHECK(fy_st_read_f32(f, "h.ramp", h, 1000, &err) == 0, "%s", err.msg);
    int ramp_ok = 1;
    for (int i = 0; i < 1000; i++) ramp_ok &= h[i] == i * 0.5f;
    CHECK(ramp_ok, "ramp tensor content");
    CHECK(fy_st_read_f32(f, "c.bf16", c, 4, &err) == 0 && c[0] == 1 && c[1] == -2 && c[2] == 0 &&
          c[3] > 3e38f, "bf16 -> f32: %s", err.msg);
    CHECK(fy_st_read_f32(f, "f.f16", ff, 4, &err) == 0 && ff[0] == 1 && ff[1] == -2 &&
          ff[2] == 5.9604644775390625e-8f && ff[3] == 65504.0f, "f16 -> f32: %s", err.msg);
    CHECK(fy_st_read_f32(f, "i.as_bf16", ib, 3, &err) == 0 && ib[0] == 1 && ib[1] == 1 && ib[2] == -3,
          "f32 written as bf16 (round to even): %g %g %g", ib[0], ib[1], ib[2]);
    CHECK(fy_st_read_f32(f, "d.scalar", &s, 1, &err) == 0 && s == 42.25f, "scalar");
    float part[7];
    CHECK(fy_st_read_f32_range(f, "h.ramp", 1000, 993, 7, part, &err) == 0 && part[0] == 993 * 0.5f &&
          part[6] == 999 * 0.5f, "f32 range [993, 1000): %s", err.msg);
    CHECK(fy_st_read_f32_range(f, "c.bf16", 4, 1, 2, part, &err) == 0 && part[0] == -2 && part[1] == 0,
          "bf16 range [1, 3): %s", err.msg);
    CHECK(fy_st_read_f32_range(f, "h.ramp", 1000, 995, 6, part, &err) == -1 && strstr(err.msg, "[995, 1001)"),
          "a range past the end accepted: %s", err.msg);

    CHECK(fy_st_read_f32(f, "a.f32", h, 5, &err) == -1 && strstr(err.msg, "a.f32") &&
          strstr(err.msg, "sample.safetensors"), "numel mismatch names tensor and file: %s", err.msg);
    CHECK(fy_st_read_f32(f, "b.i32", h, 4, &err) == -1 && strstr(err.msg, "b.i32") && strstr(err.msg, "I32"),
          "dtype mismatch: %s", err.msg);
    CHECK(fy_st_read_f32(f, "zzz", h, 4, &err) == -1 && strstr(err.msg, "zzz"), "missing: %s", err.msg);

    CHECK(fy_st_meta(f, "format") && strcmp(fy_st_meta(f, "format"), "pt") == 0, "meta format");
    CHECK(fy_st_meta(f, "step") && strcmp(fy_st_meta(f, "step"), "1000") == 0, "meta replaced");
    CHECK(fy_st_meta(f, "none") == NULL && fy_st_meta_count(f) == 2, "meta count");
    const char *k, *v;
    fy_st_meta_at(f, 1, &k, &v);
    CHECK(k && v && strcmp(k, "step") == 0 && strcmp(v, "1000") == 0, "meta_at");
    CHECK(strcmp(fy_st_path(f), path) == 0, "path");
    fy_st_close(f);

    /* No tensors at all. */
    fy_st_writer *w = fy_st_writer_new();
    CHECK(fy_st_write(w, tpath("empty.safetensors"), &err) == 0, "%s", err.msg);
    fy_st_writer_free(w);
    CHECK(fy_st_open(tpath("empty.safetensors"), &f, &err) == 0 && fy_st_count(f) == 0 &&
          fy_st_meta_count(f) == 0, "empty file: %s", err.msg);
    fy_st_close(f);
}

/* The writer's exact bytes: checkpoint hashes depend on them. No spaces,
 * "__metadata__" first, dtype/shape/data_offsets in that order, integers
 * exact even past 1e15, padding with spaces to a multiple of 8. */
static void test_header_bytes(void) {
    const char *path = tpath("exact.safetensors");
    fy_err err = {{0}};
    fy_st_writer *w = fy_st_writer_new();
    int64_t s23[2] = {2, 3}, huge[2] = {0, 1000000000000007LL};
    int rc = fy_st_writer_meta(w, "k", "v\"x\\", &err);
    rc |= fy_st_writer_add(w, "a", FY_ST_F32, 2, s23, a_f32, &err);
    rc |= fy_st_writer_add(w, "e", FY_ST_BF16, 2, huge, NULL, &err);
    rc |= fy_st_writer_add(w, "s", FY_ST_F32, 0, NULL, &d_scalar, &err);
    if (rc == 0) rc = fy_st_write(w, path, &err);
    fy_st_writer_free(w);
    CHECK(rc == 0, "%s", err.msg);
    const char *want = "{\"__metadata__\":{\"k\":\"v\\\"x\\\\\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,1000000000000007],\"data_offsets\":[24,24]},"
                       "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[24,28]}}";
    size_t wl = strlen(want), padded = (wl + 7) / 8 * 8;
    char *got;
    size_t len;
    CHECK(fy_read_file(path, &got, &len, &err) == 0, "%s", err.msg);
    if (!got) return;
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && len >= 8; i++) hlen |= (uint64_t)(unsigned char)got[i] << (8 * i);
    CHECK(len == 8 + padded + 28 && hlen == padded, "sizes: file %zu, header %llu, want %zu", len,
          (unsigned long long)hlen, padded);
    CHECK(len >= 8 + wl && memcmp(got + 8, want, wl) == 0, "header text: %.*s", (int)(len > 8 ? len - 8 : 0),
          got + 8);
    int spaces = 1;
    for (size_t i = 8 + wl; i < 8 + padded && i < len; i++) spaces &= got[i] == ' ';
    CHECK(spaces, "padding is spaces");
    free(got);
}

static void test_writer_refusals(void) {
    fy_err err = {{0}};
    fy_st_writer *w = fy_st_writer_new();
    float x[4] = {0};
    int64_t neg[1] = {-1}, s4[1] = {4}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(fy_st_writer_add(w, "neg", FY_ST_F32, 1, neg, x, &err) == -1 && strstr(err.msg, "neg"),
          "negative dim: %s", err.msg);
    CHECK(fy_st_writer_add(w, "nine", FY_ST_F32, 9, s9, x, &err) == -1 && strstr(err.msg, "nine"),
          "too many dims: %s", err.msg);
    CHECK(fy_st_writer_add(w, "__metadata__", FY_ST_F32, 1, s4, x, &err) == -1, "reserved name");
    CHECK(fy_st_writer_add(w, "", FY_ST_F32, 1, s4, x, &err) == -1, "empty name");
    CHECK(fy_st_writer_add(w, "bad\xff", FY_ST_F32, 1, s4, x, &err) == -1, "invalid UTF-8 name");
    CHECK(fy_st_writer_add(w, "nodata", FY_ST_F32, 1, s4, NULL, &err) == -1 && strstr(err.msg, "nodata"),
          "NULL data: %s", err.msg);
    CHECK(fy_st_writer_add(w, "dup", FY_ST_F32, 1, s4, x, &err) == 0, "%s", err.msg);
    CHECK(fy_st_writer_add(w, "other", FY_ST_F32, 1, s4, x, &err) == 0, "%s", err.msg);
    CHECK(fy_st_writer_add(w, "dup", FY_ST_F32, 1, s4, x, &err) == 0, "%s", err.msg);
    CHECK(fy_st_write(w, tpath("dup.safetensors"), &err) == -1 && strstr(err.msg, "duplicate") &&
          strstr(err.msg, "dup"), "duplicate names: %s", err.msg);
    CHECK(!fy_file_exists(tpath("dup.safetensors")), "nothing written");
    fy_st_writer_free(w);
}

/* ---- refusals of broken files ------------------------------------------- */

static void write_bytes(const char *path, const void *p, size_t n) {
    fy_err err;
    if (fy_write_file_atomic(path, p, n, &err) != 0) fprintf(stderr, "setup: %s\n", err.msg);
}

/* Writes an 8-byte length (hlen, or the header's length when hlen < 0),
 * the header and `data_len` bytes of data. */
static void write_crafted(const char *path, const char *header, long long hlen, size_t data_len) {
    size_t h = strlen(header);
    unsigned char *buf = calloc(1, 8 + h + data_len);
    uint64_t L = hlen < 0 ? h : (uint64_t)hlen;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(L >> (8 * i));
    memcpy(buf + 8, header, h);
    write_bytes(path, buf, 8 + h + data_len);
    free(buf);
}

static void expect_open_fails(const char *label, const char *path, const char *want1, const char *want2) {
    fy_st_file *f = (fy_st_file *)1;
    fy_err err = {{0}};
    int rc = fy_st_open(path, &f, &err);
    CHECK(rc == -1, "%s: must be refused", label);
    CHECK(f == NULL, "%s: no handle on failure", label);
    if (rc == 0) fy_st_close(f);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    CHECK(strstr(err.msg, base) != NULL, "%s: names the file: %s", label, err.msg);
    CHECK(!want1 || strstr(err.msg, want1), "%s: message has \"%s\": %s", label, want1, err.msg);
    CHECK(!want2 || strstr(err.msg, want2), "%s: message has \"%s\": %s", label, want2, err.msg);
}

static void crafted(const char *label, const char *header, long long hlen, size_t data_len,
                    const char *want1, const char *want2) {
    const char *path = tpath("crafted.safetensors");
    write_crafted(path, header, hlen, data_len);
    expect_open_fails(label, path, want1, want2);
}

#define T(name, rest) "\"" name "\":{" rest "}"

static void test_broken_files(void) {
    /* A well-formed base to make sure the crafting itself is right. */
    const char *path = tpath("crafted.safetensors");
    write_crafted(path, "{" T("w.ok", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}", -1, 8);
    fy_st_file *f = NULL;
    fy_err err = {{0}};
    CHECK(fy_st_open(path, &f, &err) == 0, "crafted base opens: %s", err.msg);
    fy_st_close(f);

    crafted("header longer than file", "{}", 1000, 0, "header length 1000", NULL);
    crafted("header length absurd", "{}", 200000000, 0, "limit", NULL);
    crafted("header length 2^63", "{}", (long long)1 << 62, 0, "header length", NULL);
    crafted("bad JSON", "{\"w.x\": {\"dtype\": ", -1, 0, "JSON", NULL);
    crafted("empty header", "", -1, 0, "JSON", NULL);
    crafted("not an object", "[1,2]", -1, 0, "object", NULL);
    crafted("invalid UTF-8", "{\"w.\xff\":{}}", -1, 0, "UTF-8", NULL);
    crafted("overlong UTF-8", "{\"w.\xc0\xaf\":{}}", -1, 0, "UTF-8", NULL);
    crafted("surrogate UTF-8", "{\"w.\xed\xa0\x80\":{}}", -1, 0, "UTF-8", NULL);
    crafted("trailing garbage", "{} x", -1, 0, "JSON", NULL);
    crafted("entry not object", "{\"w.num\": 3}", -1, 0, "w.num", NULL);
    crafted("offsets past data", "{" T("w.far", "\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]") "}",
            -1, 8, "w.far", "data block");
    crafted("offsets begin past data",
            "{" T("w.far2", "\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[64,64]") "}", -1, 8, "w.far2", NULL);
    crafted("overlap",
            "{" T("w.one", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") ","
                T("w.two", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]") "}",
            -1, 12, "overlap", "w.one");
    crafted("identical ranges",
            "{" T("w.one", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") ","
                T("w.same", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}",
            -1, 8, "overlap", "w.same");
    crafted("size mismatch", "{" T("w.size", "\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]") "}",
            -1, 8, "w.size", "12");
    crafted("dtype size mismatch", "{" T("w.bf", "\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,8]") "}",
            -1, 8, "w.bf", NULL);
    crafted("unknown dtype", "{" T("w.dt", "\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]") "}",
            -1, 16, "w.dt", "F128");
    crafted("dtype not string", "{" T("w.dt2", "\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]") "}",
            -1, 4, "w.dt2", "dtype");
    crafted("negative shape", "{" T("w.neg", "\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]") "}",
            -1, 0, "w.neg", "shape");
    crafted("fractional shape", "{" T("w.frac", "\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]") "}",
            -1, 4, "w.frac", "shape");
    crafted("string shape", "{" T("w.str", "\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]") "}",
            -1, 8, "w.str", "shape");
    crafted("shape not array", "{" T("w.sh", "\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]") "}",
            -1, 8, "w.sh", "shape");
    crafted("huge shape overflow",
            "{" T("w.huge", "\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]") "}",
            -1, 8, "w.huge", NULL);
    crafted("too many dims", "{" T("w.dims", "\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]") "}",
            -1, 1, "w.dims", NULL);
    crafted("end before begin", "{" T("w.rev", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]") "}",
            -1, 8, "w.rev", NULL);
    crafted("one offset", "{" T("w.off1", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]") "}",
            -1, 8, "w.off1", "data_offsets");
    crafted("negative offset", "{" T("w.offn", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]") "}",
            -1, 8, "w.offn", "data_offsets");
    crafted("missing offsets", "{" T("w.nooff", "\"dtype\":\"F32\",\"shape\":[1]") "}", -1, 8, "w.nooff", NULL);
    crafted("duplicate name",
            "{" T("w.dup", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]") ","
                T("w.dup", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]") "}",
            -1, 8, "duplicate", "w.dup");
    crafted("metadata not strings", "{\"__metadata__\":{\"k\":1}}", -1, 0, "__metadata__", "k");
    crafted("metadata not object", "{\"__metadata__\":[]}", -1, 0, "__metadata__", NULL);
    crafted("NUL in header", "{}", 3, 1, "NUL", NULL);   /* length counts the 0 after "{}" */

    const char *tiny = tpath("tiny.safetensors");
    write_bytes(tiny, "abc", 3);
    expect_open_fails("3-byte file", tiny, "8-byte", NULL);
    write_bytes(tiny, "", 0);
    expect_open_fails("empty file", tiny, NULL, NULL);
    expect_open_fails("missing file", tpath("missing.safetensors"), NULL, NULL);
    expect_open_fails("directory", g_dir, NULL, NULL);
}

static void test_truncation(void) {
    const char *full = tpath("full.safetensors"), *cut = tpath("cut.safetensors");
    fy_err err = {{0}};
    CHECK(write_sample(full, 1, &err) == 0, "%s", err.msg);
    char *buf;
    size_t len;
    CHECK(fy_read_file(full, &buf, &len, &err) == 0, "%s", err.msg);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)buf[i] << (8 * i);
    size_t cuts[] = {0, 1, 7, 8, 9, 15, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1,
                     8 + hlen + 24, (8 + hlen + len) / 2, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(cut, buf, cuts[i]);
        char label[64];
        snprintf(label, sizeof label, "truncated to %zu of %zu bytes", cuts[i], len);
        expect_open_fails(label, cut, NULL, NULL);
    }
    free(buf);
}

/* Random byte flips in the header: open either succeeds (and every entry
 * lies inside the file) or fails cleanly. ASan checks the rest. */
static void test_corruption_fuzz(void) {
    const char *full = tpath("full.safetensors"), *bad = tpath("fuzz.safetensors");
    fy_err err = {{0}};
    char *orig;
    size_t len;
    if (fy_read_file(full, &orig, &len, &err) != 0) return;
    char *buf = malloc(len);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)orig[i] << (8 * i);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int opened = 0, refused = 0, inside = 1;
    const char charset[] = "{}[]\",:0123456789-.eE \xff\x80" "F32I";
    for (int it = 0; it < 400; it++) {
        memcpy(buf, orig, len);
        int flips = 1 + it % 3;
        for (int k = 0; k < flips; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)((rng >> 33) % (8 + hlen));
            buf[at] = charset[(rng >> 13) % (sizeof charset - 1)];
        }
        write_bytes(bad, buf, len);
        fy_st_file *f = NULL;
        if (fy_st_open(bad, &f, &err) == 0) {
            opened++;
            for (size_t i = 0; i < fy_st_count(f); i++) {
                const fy_st_entry *e = fy_st_entry_at(f, i);
                inside &= e->file_offset + e->nbytes <= len;
                volatile unsigned char sum = 0;
                for (size_t b = 0; b < e->nbytes; b++) sum += ((const unsigned char *)e->data)[b];
                (void)sum;
            }
            fy_st_close(f);
        } else {
            refused++;
        }
    }
    CHECK(inside, "every accepted entry lies inside the file");
    CHECK(refused > 0, "fuzz refused some (%d opened, %d refused)", opened, refused);
    free(buf);
    free(orig);
}

/* ---- atomicity ---------------------------------------------------------- */

static int count_temps(void) {
    DIR *d = opendir(g_dir);
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_atomic_replace(void) {
    const char *path = tpath("model.safetensors");
    fy_err err = {{0}};
    CHECK(write_sample(path, 1, &err) == 0, "%s", err.msg);
    char *before;
    size_t before_len;
    CHECK(fy_read_file(path, &before, &before_len, &err) == 0, "%s", err.msg);

    fy_st_writer *w = fy_st_writer_new();
    float one = 1;
    int64_t s1[1] = {1};
    fy_st_writer_add(w, "first", FY_ST_F32, 1, s1, &one, &err);
    char *after;
    size_t after_len;

    /* Parent directory missing: nothing created, message names the path. */
    const char *nowhere = tpath("no/such/dir/model.safetensors");
    CHECK(fy_st_write(w, nowhere, &err) == -1 && strstr(err.msg, "no/such/dir"), "%s", err.msg);

    /* Target is a directory: the rename fails after the data was written. */
    const char *dirpath = tpath("adir.safetensors");
    fy_mkdir_p(dirpath, &err);
    char keep[FY_PATH_MAX];
    fy_path_join(keep, sizeof keep, dirpath, "keep", &err);
    write_bytes(keep, "k", 1);
    fy_st_writer_free(w);
    w = fy_st_writer_new();
    fy_st_writer_add(w, "first", FY_ST_F32, 1, s1, &one, &err);
    CHECK(fy_st_write(w, dirpath, &err) == -1, "rename over a directory must fail");
    CHECK(count_temps() == 0, "temporary removed after a failed rename");

    if (geteuid() != 0) {   /* root ignores directory permissions */
        chmod(g_dir, 0555);
        CHECK(fy_st_write(w, path, &err) == -1, "read-only directory must fail");
        chmod(g_dir, 0755);
    }
    CHECK(fy_read_file(path, &after, &after_len, &err) == 0 && after_len == before_len &&
          memcmp(before, after, before_len) == 0, "old file still byte-identical");
    free(after);

    /* And a successful write does replace it. */
    CHECK(fy_st_write(w, path, &err) == 0, "%s", err.msg);
    fy_st_file *f = NULL;
    CHECK(fy_st_open(path, &f, &err) == 0 && fy_st_count(f) == 1, "replaced: %s", err.msg);
    fy_st_close(f);
    fy_st_writer_free(w);
    free(before);
}

/* ---- interoperability (only when Python has safetensors) ---------------- */

static const char *py_check =
    "import sys, numpy as np\n"
    "from safetensors.numpy import load_file, save_file\n"
    "from safetensors import safe_open\n"
    "d = load_file(sys.argv[1])\n"
    "assert d['a.f32'].dtype == np.float32 and d['a.f32'].shape == (2, 3)\n"
    "assert d['a.f32'].ravel().tolist() == [1, -2, 3.5, np.float32(1e-30), 0, 6]\n"
    "assert d['b.i32'].tolist() == [-1, 0, 2147483647, -2147483648]\n"
    "assert d['d.scalar'].shape == () and float(d['d.scalar']) == 42.25\n"
    "assert d['e.u8'].dtype == np.uint8 and d['e.u8'].tolist() == [0, 1, 127, 128, 255]\n"
    "assert d['f.f16'].dtype == np.float16 and d['f.f16'].tolist()[:2] == [1, -2]\n"
    "assert d['g.empty'].shape == (0, 3)\n"
    "assert d['h.ramp'].tolist() == [i * 0.5 for i in range(1000)]\n"
    "with safe_open(sys.argv[1], 'np') as f:\n"
    "    assert f.metadata() == {'format': 'pt', 'step': '1000'}, f.metadata()\n"
    "save_file({'x': np.arange(6, dtype=np.float32).reshape(2, 3),\n"
    "           'y': np.array([7, -8], dtype=np.int32),\n"
    "           'z': np.array(2.5, dtype=np.float32),\n"
    "           'h': np.array([0.5, -1], dtype=np.float16)}, sys.argv[2], metadata={'who': 'py'})\n";

static void test_python_interop(void) {
    const char *py = getenv("FERRY_PYTHON");
    if (!py) py = "/usr/bin/python3";
    char cmd[3 * FY_PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import safetensors.numpy' >/dev/null 2>&1", py);
    if (system(cmd) != 0) return;   /* optional: no safetensors package */

    fy_err err = {{0}};
    const char *c_file = tpath("from_c.safetensors"), *py_file = tpath("from_py.safetensors");
    const char *script = tpath("check.py");
    CHECK(write_sample(c_file, 0, &err) == 0, "%s", err.msg);   /* numpy has no bf16 */
    write_bytes(script, py_check, strlen(py_check));
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s'", py, script, c_file, py_file);
    CHECK(system(cmd) == 0, "Python safetensors loads ferry's file and writes one");

    fy_st_file *f = NULL;
    CHECK(fy_st_open(py_file, &f, &err) == 0, "ferry opens Python's file: %s", err.msg);
    if (!f) return;
    float x[6], z, h[2];
    const fy_st_entry *y = fy_st_find(f, "y");
    CHECK(fy_st_read_f32(f, "x", x, 6, &err) == 0 && x[0] == 0 && x[5] == 5, "x: %s", err.msg);
    CHECK(fy_st_find(f, "x")->ndim == 2 && fy_st_find(f, "x")->shape[1] == 3, "x shape");
    CHECK(y && y->dtype == FY_ST_I32 && ((const int32_t *)y->data)[1] == -8, "y");
    CHECK(fy_st_read_f32(f, "z", &z, 1, &err) == 0 && z == 2.5f && fy_st_find(f, "z")->ndim == 0, "z");
    CHECK(fy_st_read_f32(f, "h", h, 2, &err) == 0 && h[0] == 0.5f && h[1] == -1, "h");
    CHECK(fy_st_meta(f, "who") && strcmp(fy_st_meta(f, "who"), "py") == 0, "metadata");
    fy_st_close(f);
    printf("python interop checked with %s\n", py);
}

static void test_conversions(void) {
    CHECK(fy_f32_to_bf16(1.0f) == 0x3f80, "bf16 1");
    CHECK(fy_f32_to_bf16(1.00390625f) == 0x3f80, "tie rounds to even (down)");
    CHECK(fy_f32_to_bf16(1.01171875f) == 0x3f82, "tie rounds to even (up)");
    CHECK(fy_f32_to_bf16(-0.0f) == 0x8000, "-0");
    float nan = fy_bf16_to_f32(fy_f32_to_bf16(__builtin_nanf("")));
    CHECK(nan != nan, "NaN stays NaN");
    CHECK(fy_f16_to_f32(0x7c00) > 1e38f && fy_f16_to_f32(0xfc00) < -1e38f, "f16 inf");
    CHECK(fy_f16_to_f32(0x8000) == 0 && fy_f16_to_f32(0x3555) == 0.333251953125f, "f16 values");
    fy_st_dtype t;
    CHECK(fy_st_dtype_parse("BF16", &t) == 0 && t == FY_ST_BF16 && fy_st_dtype_size(t) == 2, "parse");
    CHECK(fy_st_dtype_parse("bf16", &t) == -1, "dtype names are case-sensitive");
}

int main(void) {
    g_dir = fy_test_tmpdir("test_safetensors");
    test_conversions();
    test_round_trip();
    test_header_bytes();
    test_writer_refusals();
    test_broken_files();
    test_truncation();
    test_corruption_fuzz();
    test_atomic_replace();
    test_python_interop();
    return fy_test_finish("test_safetensors");
}
