/* safetensors reader and writer (format in safetensors.h). The header is
 * built and parsed with cJSON; the writer's bytes must not change (checkpoint
 * hashes and the check50 baseline depend on them). */
#include "ckpt/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/half.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; ferry assumes a little-endian host"
#endif

/* ---- dtypes ------------------------------------------------------------- */

static const struct { const char *name; size_t size; } dtype_info[FY_ST_NDTYPES] = {
    [FY_ST_F32] = {"F32", 4},   [FY_ST_I32] = {"I32", 4},   [FY_ST_BF16] = {"BF16", 2},
    [FY_ST_F16] = {"F16", 2},   [FY_ST_U8] = {"U8", 1},     [FY_ST_BOOL] = {"BOOL", 1},
    [FY_ST_I8] = {"I8", 1},     [FY_ST_I16] = {"I16", 2},   [FY_ST_U16] = {"U16", 2},
    [FY_ST_U32] = {"U32", 4},   [FY_ST_I64] = {"I64", 8},   [FY_ST_U64] = {"U64", 8},
    [FY_ST_F64] = {"F64", 8},   [FY_ST_F8_E4M3] = {"F8_E4M3", 1},
    [FY_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *fy_st_dtype_name(fy_st_dtype t) {
    return (unsigned)t < FY_ST_NDTYPES ? dtype_info[t].name : "?";
}

size_t fy_st_dtype_size(fy_st_dtype t) {
    return (unsigned)t < FY_ST_NDTYPES ? dtype_info[t].size : 0;
}

int fy_st_dtype_parse(const char *name, fy_st_dtype *out) {
    for (int t = 0; t < FY_ST_NDTYPES; t++)
        if (strcmp(name, dtype_info[t].name) == 0) {
            *out = (fy_st_dtype)t;
            return 0;
        }
    return -1;
}

/* E4M3 "fn" (no infinities; S.1111.111 is NaN): bias 7, subnormals 2^-9. */
float fy_f8e4m3_to_f32(uint8_t b) {
    unsigned exp = (b >> 3) & 0xfu, man = b & 7u;
    float mag;
    if (exp == 15 && man == 7) mag = NAN;
    else if (exp == 0) mag = ldexpf((float)man, -9);
    else mag = ldexpf((float)(man | 8u), (int)exp - 10);
    return (b & 0x80u) ? -mag : mag;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
 * Returns the offset of the first bad byte, or len when all is well. */
static size_t utf8_bad_offset(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xc2 && c <= 0xdf) n = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else return i;
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len) return i;
            unsigned b = s[i + k];
            unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xbf;
            if (b < l || b > h) return i;
        }
        i += n + 1;
    }
    return len;
}

/* ---- writer ------------------------------------------------------------- */

typedef struct st_tensor {
    char *name;
    fy_st_dtype dtype;
    int ndim;
    int64_t shape[FY_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
} st_tensor;

struct fy_st_writer {
    st_tensor *t;
    size_t n, cap;
    char **mkey, **mval;
    size_t nmeta, meta_cap;
    size_t align; /* where the data block starts: a multiple of this (0: 8) */
};

fy_st_writer *fy_st_writer_new(void) {
    return calloc(1, sizeof(fy_st_writer));
}

void fy_st_writer_free(fy_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->t);
    free(w->mkey);
    free(w->mval);
    free(w);
}

static int check_text(const char *s, const char *what, fy_err *err) {
    size_t len = strlen(s);
    size_t bad = utf8_bad_offset((const unsigned char *)s, len);
    if (bad != len) return fy_fail(err, "%s \"%s\" is not valid UTF-8 (byte %zu)", what, s, bad);
    return 0;
}

/* Validates a tensor's name, dtype and shape; *nbytes = its data size. */
static int check_tensor(const char *name, fy_st_dtype dtype, int ndim, const int64_t *shape,
                        uint64_t *nbytes, fy_err *err) {
    if (!name || !*name) return fy_fail(err, "safetensors writer: empty tensor name");
    if (strcmp(name, "__metadata__") == 0)
        return fy_fail(err, "safetensors writer: \"__metadata__\" cannot name a tensor");
    if (check_text(name, "tensor name", err) != 0) return -1;
    if ((unsigned)dtype >= FY_ST_NDTYPES)
        return fy_fail(err, "tensor %s: unknown dtype code %d", name, (int)dtype);
    if (ndim < 0 || ndim > FY_ST_MAX_DIMS)
        return fy_fail(err, "tensor %s: ndim=%d outside [0, %d]", name, ndim, FY_ST_MAX_DIMS);
    uint64_t bytes = fy_st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fy_fail(err, "tensor %s: negative dimension %d (%" PRId64 ")", name, i, shape[i]);
        if (__builtin_mul_overflow(bytes, (uint64_t)shape[i], &bytes))
            return fy_fail(err, "tensor %s: size overflows 64 bits", name);
    }
    *nbytes = bytes;
    return 0;
}

int fy_st_writer_add(fy_st_writer *w, const char *name, fy_st_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, fy_err *err) {
    uint64_t bytes = 0;
    if (check_tensor(name, dtype, ndim, shape, &bytes, err) != 0) return -1;
    if (!data && bytes > 0)
        return fy_fail(err, "tensor %s: no data for %" PRIu64 " bytes", name, bytes);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        st_tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return fy_fail(err, "tensor %s: out of memory", name);
        w->t = t;
        w->cap = cap;
    }
    st_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return fy_fail(err, "tensor %s: out of memory", name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = bytes;
    t->data = data;
    w->n++;
    return 0;
}

int fy_st_writer_meta(fy_st_writer *w, const char *key, const char *value, fy_err *err) {
    if (check_text(key, "metadata key", err) != 0 || check_text(value, "metadata value", err) != 0)
        return -1;
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->mkey[i], key) == 0) {
            char *v = strdup(value);
            if (!v) return fy_fail(err, "metadata %s: out of memory", key);
            free(w->mval[i]);
            w->mval[i] = v;
            return 0;
        }
    if (w->nmeta == w->meta_cap) {
        size_t cap = w->meta_cap ? w->meta_cap * 2 : 8;
        char **k = realloc(w->mkey, cap * sizeof *k);
        if (!k) return fy_fail(err, "metadata %s: out of memory", key);
        w->mkey = k;
        char **v = realloc(w->mval, cap * sizeof *v);
        if (!v) return fy_fail(err, "metadata %s: out of memory", key);
        w->mval = v;
        w->meta_cap = cap;
    }
    w->mkey[w->nmeta] = strdup(key);
    w->mval[w->nmeta] = strdup(value);
    if (!w->mkey[w->nmeta] || !w->mval[w->nmeta]) {
        free(w->mkey[w->nmeta]);
        free(w->mval[w->nmeta]);
        return fy_fail(err, "metadata %s: out of memory", key);
    }
    w->nmeta++;
    return 0;
}

static int cmp_name_ptr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int check_unique_names(const fy_st_writer *w, const char *path, fy_err *err) {
    if (w->n < 2) return 0;
    char **names = malloc(w->n * sizeof *names);
    if (!names) return fy_fail(err, "safetensors %s: out of memory", path);
    for (size_t i = 0; i < w->n; i++) names[i] = w->t[i].name;
    qsort(names, w->n, sizeof *names, cmp_name_ptr);
    int rc = 0;
    for (size_t i = 1; i < w->n && rc == 0; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            rc = fy_fail(err, "safetensors %s: duplicate tensor name %s", path, names[i]);
    free(names);
    return rc;
}

/* A JSON number printed as the integer v. cJSON prints numbers from doubles,
 * exactly only below 1e15 (past it "%1.15g" gives "1e+15", past 2^53 digits
 * are lost), so larger values go in as their exact decimal text. */
static cJSON *json_uint(uint64_t v) {
    if (v < 1000000000000000ull) return cJSON_CreateNumber((double)v);
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, v);
    return cJSON_CreateRaw(s);
}

/* Appends v to array a; 0 or -1 (out of memory). */
static int add_uint(cJSON *a, uint64_t v) {
    cJSON *n = json_uint(v);
    if (n && cJSON_AddItemToArray(a, n)) return 0;
    cJSON_Delete(n);
    return -1;
}

/* Adds name: {"dtype":..., "shape":[...], "data_offsets":[off, off + nbytes]}. */
static int add_tensor_json(cJSON *root, const st_tensor *t, uint64_t off) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToObject(root, t->name, o)) {
        cJSON_Delete(o);
        return -1;
    }
    cJSON *shape = NULL, *offs = NULL;
    if (!cJSON_AddStringToObject(o, "dtype", fy_st_dtype_name(t->dtype)) ||
        !(shape = cJSON_AddArrayToObject(o, "shape")) ||
        !(offs = cJSON_AddArrayToObject(o, "data_offsets")))
        return -1;
    for (int d = 0; d < t->ndim; d++)
        if (add_uint(shape, (uint64_t)t->shape[d])) return -1;
    return add_uint(offs, off) || add_uint(offs, off + t->nbytes) ? -1 : 0;
}

void fy_st_writer_align(fy_st_writer *w, size_t align) { w->align = align; }

/* The header: "__metadata__" first (when there is any), then the tensors
 * in insertion order, no whitespace, then spaces (valid JSON whitespace) so
 * 8 + its length is a multiple of 8 (or of the writer's alignment) and
 * every tensor's data is 8-byte aligned in the mapping. NULL when out of
 * memory; *len excludes the NUL. */
static char *build_header(const fy_st_writer *w, size_t *len) {
    cJSON *root = cJSON_CreateObject();
    int bad = !root;
    if (!bad && w->nmeta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        bad = !meta;
        for (size_t i = 0; i < w->nmeta && !bad; i++)
            bad = !cJSON_AddStringToObject(meta, w->mkey[i], w->mval[i]);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n && !bad; i++) {
        bad = add_tensor_json(root, &w->t[i], off);
        off += w->t[i].nbytes;
    }
    char *text = bad ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return NULL;
    size_t al = w->align > 8 ? w->align : 8, n = strlen(text), padded = (n + 8 + al - 1) / al * al - 8;
    char *p = realloc(text, padded + 1);
    if (!p) {
        free(text);
        return NULL;
    }
    memset(p + n, ' ', padded - n);
    p[padded] = '\0';
    *len = padded;
    return p;
}

int fy_st_write(fy_st_writer *w, const char *path, fy_err *err) {
    if (check_unique_names(w, path, err) != 0) return -1;
    size_t hlen = 0;
    char *hdr = build_header(w, &hlen);
    if (!hdr) return fy_fail(err, "safetensors %s: out of memory building the header", path);
    if (hlen > FY_ST_MAX_HEADER) {
        free(hdr);
        return fy_fail(err, "safetensors %s: header of %zu bytes exceeds the %u-byte limit",
                       path, hlen, FY_ST_MAX_HEADER);
    }
    fy_atomic_file a;
    if (fy_atomic_open(&a, path, err) != 0) {
        free(hdr);
        return -1;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int rc = fy_atomic_write(&a, len8, 8, err);
    if (rc == 0) rc = fy_atomic_write(&a, hdr, hlen, err);
    for (size_t i = 0; i < w->n && rc == 0; i++) {
        rc = fy_atomic_write(&a, w->t[i].data, w->t[i].nbytes, err);
        if (rc != 0) fy_wrap(err, "safetensors %s: tensor %s", path, w->t[i].name);
    }
    free(hdr);
    if (rc != 0) {
        fy_atomic_abort(&a);
        return -1;
    }
    return fy_atomic_commit(&a, err);
}

/* ---- reader ------------------------------------------------------------- */

struct fy_st_file {
    char *path;
    void *map;
    size_t map_len;
    cJSON *root;              /* entry names and metadata point into it */
    fy_st_entry *e;
    size_t n;
    const fy_st_entry **by_name;   /* e sorted by name, for fy_st_find */
    const cJSON *meta;        /* the "__metadata__" object or NULL */
};

void fy_st_close(fy_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    cJSON_Delete(f->root);
    free(f->e);
    free((void *)f->by_name);
    free(f->path);
    free(f);
}

const char *fy_st_path(const fy_st_file *f) { return f->path; }
size_t fy_st_count(const fy_st_file *f) { return f->n; }
const fy_st_entry *fy_st_entry_at(const fy_st_file *f, size_t i) {
    return i < f->n ? &f->e[i] : NULL;
}

/* A JSON number that is a whole number in [0, 2^53] (exact in a double). */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

/* Fills e from the header entry `v`; data_len is the size of the data
 * block. Errors name the tensor (the caller adds the file). */
static int parse_entry(const cJSON *v, uint64_t data_len, fy_st_entry *e, fy_err *err) {
    const char *name = v->string;
    if (!cJSON_IsObject(v)) return fy_fail(err, "tensor %s: entry is not a JSON object", name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(v, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(v, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(v, "data_offsets");
    if (!cJSON_IsString(dt)) return fy_fail(err, "tensor %s: missing or non-string dtype", name);
    if (fy_st_dtype_parse(dt->valuestring, &e->dtype) != 0)
        return fy_fail(err, "tensor %s: unknown dtype \"%s\"", name, dt->valuestring);
    if (!cJSON_IsArray(sh)) return fy_fail(err, "tensor %s: missing or non-array shape", name);
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > FY_ST_MAX_DIMS)
        return fy_fail(err, "tensor %s: %d dimensions (at most %d supported)", name, ndim, FY_ST_MAX_DIMS);
    e->ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *x = sh->child; x; x = x->next, d++) {
        uint64_t dim;
        if (json_u64(x, &dim) != 0) {
            if (cJSON_IsNumber(x))
                return fy_fail(err, "tensor %s: shape[%d]=%g is not a non-negative integer",
                               name, d, x->valuedouble);
            return fy_fail(err, "tensor %s: shape[%d] is not a number", name, d);
        }
        e->shape[d] = (int64_t)dim;
        if (__builtin_mul_overflow(numel, dim, &numel))
            return fy_fail(err, "tensor %s: element count overflows 64 bits", name);
    }
    e->numel = numel;
    uint64_t b, end, want;
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || json_u64(of->child, &b) != 0 ||
        json_u64(of->child->next, &end) != 0)
        return fy_fail(err, "tensor %s: data_offsets must be two non-negative integers [begin, end]", name);
    if (end < b)
        return fy_fail(err, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] end before begin",
                       name, b, end);
    if (end > data_len)
        return fy_fail(err, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] run past the %" PRIu64
                       "-byte data block (file truncated?)", name, b, end, data_len);
    if (__builtin_mul_overflow(numel, (uint64_t)fy_st_dtype_size(e->dtype), &want))
        return fy_fail(err, "tensor %s: byte size overflows 64 bits", name);
    if (end - b != want)
        return fy_fail(err, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                       " bytes but %s shape needs %" PRIu64, name, b, end, end - b,
                       fy_st_dtype_name(e->dtype), want);
    e->name = name;
    e->nbytes = (size_t)(end - b);
    e->file_offset = b;   /* relative for now; open() adds the data start */
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const fy_st_entry *const *)a)->name, (*(const fy_st_entry *const *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    uint64_t x = (*(const fy_st_entry *const *)a)->file_offset;
    uint64_t y = (*(const fy_st_entry *const *)b)->file_offset;
    return x < y ? -1 : x > y;
}

static int check_metadata(const cJSON *m, fy_err *err) {
    if (!cJSON_IsObject(m)) return fy_fail(err, "__metadata__ is not a JSON object");
    for (const cJSON *x = m->child; x; x = x->next)
        if (!cJSON_IsString(x)) return fy_fail(err, "__metadata__ key %s: value is not a string", x->string);
    return 0;
}

/* Builds the name index and refuses duplicate names and overlapping data. */
static int index_entries(fy_st_file *f, fy_err *err) {
    size_t n = f->n ? f->n : 1;
    f->by_name = malloc(n * sizeof *f->by_name);
    const fy_st_entry **by_off = malloc(n * sizeof *by_off);
    if (!f->by_name || !by_off) {
        free(by_off);
        return fy_fail(err, "out of memory indexing %zu tensors", f->n);
    }
    for (size_t i = 0; i < f->n; i++) f->by_name[i] = by_off[i] = &f->e[i];
    qsort(f->by_name, f->n, sizeof *f->by_name, cmp_by_name);
    qsort(by_off, f->n, sizeof *by_off, cmp_by_offset);
    int rc = 0;
    for (size_t i = 1; i < f->n && rc == 0; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            rc = fy_fail(err, "duplicate tensor name %s", f->by_name[i]->name);
    /* Empty tensors own no bytes and cannot overlap anything. */
    const fy_st_entry *prev = NULL;
    for (size_t i = 0; i < f->n && rc == 0; i++) {
        const fy_st_entry *e = by_off[i];
        if (e->nbytes == 0) continue;
        if (prev && e->file_offset < prev->file_offset + prev->nbytes)
            rc = fy_fail(err, "tensors %s and %s overlap (data_offsets %" PRIu64 " < %" PRIu64 ")",
                         prev->name, e->name, e->file_offset, prev->file_offset + prev->nbytes);
        prev = e;
    }
    free(by_off);
    return rc;
}

/* Validates the mapped file and fills f; errors lack the file name. */
static int parse_file(fy_st_file *f, fy_err *err) {
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)p[i] << (8 * i);
    uint64_t avail = f->map_len - 8;
    if (hlen > FY_ST_MAX_HEADER)
        return fy_fail(err, "header length %" PRIu64 " exceeds the %u-byte limit", hlen, FY_ST_MAX_HEADER);
    if (hlen > avail)
        return fy_fail(err, "header length %" PRIu64 " exceeds the %" PRIu64
                       " bytes after the length field (file truncated?)", hlen, avail);
    const unsigned char *h = p + 8;
    size_t bad = utf8_bad_offset(h, (size_t)hlen);
    if (bad != hlen) return fy_fail(err, "header is not valid UTF-8 at byte %zu", (size_t)(8 + bad));
    if (memchr(h, 0, (size_t)hlen))
        return fy_fail(err, "header contains a NUL byte at byte %zu",
                       (size_t)(8 + ((const unsigned char *)memchr(h, 0, (size_t)hlen) - h)));
    char *text = malloc((size_t)hlen + 1);
    if (!text) return fy_fail(err, "out of memory for a %" PRIu64 "-byte header", hlen);
    memcpy(text, h, (size_t)hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    f->root = cJSON_ParseWithOpts(text, &end, 1);
    size_t err_at = end ? (size_t)(end - text) : 0;
    free(text);
    if (!f->root) return fy_fail(err, "header is not valid JSON (near byte %zu)", 8 + err_at);
    if (!cJSON_IsObject(f->root)) return fy_fail(err, "header is not a JSON object");

    uint64_t data_start = 8 + hlen, data_len = f->map_len - data_start;
    size_t count = 0;
    for (const cJSON *v = f->root->child; v; v = v->next) count++;
    f->e = calloc(count ? count : 1, sizeof *f->e);
    if (!f->e) return fy_fail(err, "out of memory for %zu tensors", count);
    for (const cJSON *v = f->root->child; v; v = v->next) {
        if (strcmp(v->string, "__metadata__") == 0) {
            if (f->meta) return fy_fail(err, "duplicate __metadata__");
            if (check_metadata(v, err) != 0) return -1;
            f->meta = v;
            continue;
        }
        fy_st_entry *e = &f->e[f->n];
        if (parse_entry(v, data_len, e, err) != 0) return -1;
        f->n++;
    }
    if (index_entries(f, err) != 0) return -1;
    for (size_t i = 0; i < f->n; i++) {
        f->e[i].data = p + data_start + f->e[i].file_offset;
        f->e[i].file_offset += data_start;
    }
    return 0;
}

int fy_st_open(const char *path, fy_st_file **out, fy_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO: refused below, not waited on */
    if (fd < 0) return fy_fail(err, "safetensors %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fy_fail(err, "safetensors %s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fy_fail(err, "safetensors %s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return fy_fail(err, "safetensors %s: file is %lld bytes, shorter than the 8-byte header length",
                       path, (long long)st.st_size);
    }
    fy_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        close(fd);
        return fy_fail(err, "safetensors %s: out of memory", path);
    }
    f->map_len = (size_t)st.st_size;
    f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        fy_st_close(f);
        return fy_fail(err, "safetensors %s: cannot map %lld bytes: %s", path, (long long)st.st_size,
                       strerror(e));
    }
    if (parse_file(f, err) != 0) {
        fy_st_close(f);
        return fy_wrap(err, "safetensors %s", path);
    }
    *out = f;
    return 0;
}

const fy_st_entry *fy_st_find(const fy_st_file *f, const char *name) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const fy_st_entry *e = f->by_name[mid];
        int c = strcmp(e->name, name);
        if (c == 0) return e;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* The pages holding elements [first, first + count) of e: [*lo, *hi);
 * `inner`: only those wholly inside them. 0 when none. */
static int pages_of(const fy_st_file *f, const fy_st_entry *e, size_t first, size_t count, int inner, char **lo,
                    char **hi) {
    size_t es = fy_st_dtype_size(e->dtype);
    if (!f->map || !count || first > e->numel || count > e->numel - first) return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)e->data + first * es, b = a + count * es;
    uintptr_t end = ((uintptr_t)f->map + f->map_len + page - 1) / page * page; /* the mapping's last page */
    a = inner ? (a + page - 1) / page * page : a / page * page;
    b = inner ? b / page * page : (b + page - 1) / page * page;
    if (b > end) b = end;
    if (b <= a) return 0;
    *lo = (char *)a, *hi = (char *)b;
    return 1;
}

void fy_st_prefault(const fy_st_file *f, const fy_st_entry *e, size_t first, size_t count) {
    char *lo, *hi;
    if (!pages_of(f, e, first, count, 0, &lo, &hi)) return;
#ifdef MADV_POPULATE_READ
    if (madvise(lo, (size_t)(hi - lo), MADV_POPULATE_READ) == 0) return;
#endif
    madvise(lo, (size_t)(hi - lo), MADV_WILLNEED); /* older kernels: read ahead at least */
}

void fy_st_release(const fy_st_file *f, const fy_st_entry *e, size_t first, size_t count) {
    char *lo, *hi;
    /* Only the pages wholly inside: one shared with a neighbour would be
     * mapped again when the neighbour is read, and a page mapped again was
     * seen to cost more resident memory than it saved (large folios). */
    if (pages_of(f, e, first, count, 1, &lo, &hi)) madvise(lo, (size_t)(hi - lo), MADV_DONTNEED);
}

const char *fy_st_meta(const fy_st_file *f, const char *key) {
    if (!f->meta) return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(f->meta, key);
    return v ? v->valuestring : NULL;
}

size_t fy_st_meta_count(const fy_st_file *f) {
    return f->meta ? (size_t)cJSON_GetArraySize(f->meta) : 0;
}

void fy_st_meta_at(const fy_st_file *f, size_t i, const char **key, const char **value) {
    const cJSON *v = f->meta ? f->meta->child : NULL;
    while (v && i--) v = v->next;
    *key = v ? v->string : NULL;
    *value = v ? v->valuestring : NULL;
}

int fy_st_read_f32_range(const fy_st_file *f, const char *name, size_t expected_numel, size_t first,
                         size_t count, float *dst, fy_err *err) {
    const fy_st_entry *e = fy_st_find(f, name);
    if (!e) return fy_fail(err, "safetensors %s: tensor %s not found", f->path, name);
    if (e->numel != expected_numel)
        return fy_fail(err, "safetensors %s: tensor %s has %" PRIu64 " elements, expected %zu",
                       f->path, name, e->numel, expected_numel);
    if (first > expected_numel || count > expected_numel - first)
        return fy_fail(err, "safetensors %s: elements [%zu, %zu) of tensor %s (%zu elements) asked for",
                       f->path, first, first + count, name, expected_numel);
    const unsigned char *src = e->data;
    switch (e->dtype) {
    case FY_ST_F32:
        memcpy(dst, src + 4 * first, 4 * count);   /* memcpy: the data may be unaligned */
        return 0;
    case FY_ST_BF16:
    case FY_ST_F16:
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * (first + i), 2);
            dst[i] = e->dtype == FY_ST_BF16 ? fy_bf16_to_f32(h) : fy_f16_to_f32(h);
        }
        return 0;
    default:
        return fy_fail(err, "safetensors %s: tensor %s has dtype %s, expected F32, BF16 or F16",
                       f->path, name, fy_st_dtype_name(e->dtype));
    }
}

int fy_st_read_f32(const fy_st_file *f, const char *name, float *dst, size_t expected_numel,
                   fy_err *err) {
    return fy_st_read_f32_range(f, name, expected_numel, 0, expected_numel, dst, err);
}
