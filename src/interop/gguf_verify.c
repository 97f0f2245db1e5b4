/* Reads a GGUF file just written back (gguf_impl.h fy_gguf_verify): the
 * header, every key's framing, the architecture key, each tensor info
 * against the plan, the data by checksum and the file's size. Errors name
 * the file and the key or tensor. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "interop/gguf_impl.h"

typedef struct rd {
    FILE *f;
    const char *shown;
    fy_err *err;
    int failed;
} rd;

static uint64_t get(rd *r, int bytes, const char *what) {
    uint8_t b[8];
    uint64_t v = 0;
    if (r->failed) return 0;
    if (fread(b, 1, (size_t)bytes, r->f) != (size_t)bytes) {
        r->failed = 1;
        fy_fail(r->err, "%s: reading back: truncated at %s", r->shown, what);
        return 0;
    }
    for (int i = 0; i < bytes; i++) v |= (uint64_t)b[i] << (8 * i);
    return v;
}

/* A string into buf (cap bytes, NUL-terminated); longer ones are skipped
 * (buf gets ""). */
static void get_str(rd *r, char *buf, size_t cap, const char *what) {
    uint64_t n = get(r, 8, what);
    buf[0] = '\0';
    if (r->failed) return;
    if (n < cap) {
        if (fread(buf, 1, (size_t)n, r->f) != n) r->failed = 1, fy_fail(r->err, "%s: truncated at %s", r->shown, what);
        buf[r->failed ? 0 : n] = '\0';
    } else if (n > (uint64_t)LONG_MAX || fseek(r->f, (long)n, SEEK_CUR)) {  /* (long)n < 0 would seek back */
        r->failed = 1, fy_fail(r->err, "%s: cannot skip %s", r->shown, what);
    }
}

static int scalar_size(uint32_t t) {
    static const int sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < sizeof sz / sizeof sz[0] ? sz[t] : -1;
}

static void skip_value(rd *r, uint32_t type, const char *key) {
    char tmp[8];
    if (type == FY_GV_STR) return get_str(r, tmp, 1, key);
    if (type == FY_GV_ARR) {
        uint32_t et = (uint32_t)get(r, 4, key);
        uint64_t n = get(r, 8, key);
        if (et == FY_GV_ARR || scalar_size(et) < 0) r->failed = 1, fy_fail(r->err, "%s: key %s: bad array type %u", r->shown, key, et);
        for (uint64_t i = 0; i < n && !r->failed; i++)
            if (et == FY_GV_STR) get_str(r, tmp, 1, key);
            else get(r, scalar_size(et), key);
        return;
    }
    if (scalar_size(type) <= 0) {
        r->failed = 1, fy_fail(r->err, "%s: key %s: bad value type %u", r->shown, key, type);
        return;
    }
    get(r, scalar_size(type), key);
}

static int check_keys(rd *r, uint64_t n_kv) {
    char key[256], arch[64] = "";
    for (uint64_t k = 0; k < n_kv && !r->failed; k++) {
        get_str(r, key, sizeof key, "a key name");
        uint32_t type = (uint32_t)get(r, 4, key);
        if (!strcmp(key, "general.architecture") && type == FY_GV_STR) get_str(r, arch, sizeof arch, key);
        else skip_value(r, type, key);
    }
    if (!r->failed && strcmp(arch, "deepseek2"))
        return fy_fail(r->err, "%s: reading back: general.architecture is '%s'", r->shown, arch);
    return r->failed ? -1 : 0;
}

static int check_infos(rd *r, const fy_gguf_plan *p) {
    char name[128];
    for (int k = 0; k < p->n && !r->failed; k++) {
        const fy_gguf_tensor *t = &p->t[k];
        get_str(r, name, sizeof name, "a tensor name");
        int nd = (int)get(r, 4, t->name);
        int ok = !strcmp(name, t->name) && nd == t->n_dims;
        for (int d = 0; d < nd && d < 3 && !r->failed; d++) ok &= get(r, 8, t->name) == t->ne[d];
        ok &= get(r, 4, t->name) == (uint64_t)t->type;
        ok &= get(r, 8, t->name) == t->data_off;
        if (!r->failed && !ok) return fy_fail(r->err, "%s: reading back: tensor info %d is not %s as written", r->shown, k, t->name);
    }
    return r->failed ? -1 : 0;
}

static int check_data(rd *r, const fy_gguf_plan *p, uint64_t start) {
    uint8_t *buf = malloc(1 << 20);
    if (!buf) return fy_fail(r->err, "out of memory reading back %s", r->shown);
    int rc = 0;
    for (int k = 0; k < p->n && !rc; k++) {
        const fy_gguf_tensor *t = &p->t[k];
        uint64_t h = FY_GGUF_FNV_INIT, left = t->bytes;
        if (fseeko(r->f, (off_t)(start + t->data_off), SEEK_SET)) rc = fy_fail(r->err, "%s: cannot seek to %s", r->shown, t->name);
        while (!rc && left) {
            size_t n = left < (1 << 20) ? (size_t)left : (1 << 20);
            if (fread(buf, 1, n, r->f) != n) rc = fy_fail(r->err, "%s: reading back: %s is truncated", r->shown, t->name);
            h = fy_gguf_fnv(h, buf, n), left -= n;
        }
        if (!rc && h != t->sum) rc = fy_fail(r->err, "%s: reading back: the bytes of %s differ from those written", r->shown, t->name);
    }
    free(buf);
    return rc;
}

int fy_gguf_verify(const char *path, const char *shown, const fy_gguf_plan *p, uint64_t n_kv, fy_err *err) {
    rd r = {fopen(path, "rb"), shown, err, 0};
    if (!r.f) return fy_fail(err, "%s: cannot open it to read back", shown);
    int rc = -1;
    uint32_t magic = (uint32_t)get(&r, 4, "the magic");
    uint32_t version = (uint32_t)get(&r, 4, "the version");
    uint64_t nt = get(&r, 8, "the tensor count"), nk = get(&r, 8, "the key count");
    if (r.failed) goto done;
    if (magic != 0x46554747u || version != FY_GGUF_VERSION || nt != (uint64_t)p->n || nk != n_kv) {
        fy_fail(err, "%s: reading back: header is not GGUF v3 with %d tensors and %llu keys", shown, p->n,
                (unsigned long long)n_kv);
        goto done;
    }
    if (check_keys(&r, n_kv) || check_infos(&r, p)) goto done;
    long pos = ftell(r.f);
    uint64_t start = ((uint64_t)pos + FY_GGUF_ALIGN - 1) / FY_GGUF_ALIGN * FY_GGUF_ALIGN;
    if (check_data(&r, p, start)) goto done;
    if (fseeko(r.f, 0, SEEK_END) || (uint64_t)ftello(r.f) != start + p->data_bytes) {
        fy_fail(err, "%s: reading back: file size %lld, expected %llu", shown, (long long)ftello(r.f),
                (unsigned long long)(start + p->data_bytes));
        goto done;
    }
    rc = 0;
done:
    fclose(r.f);
    return rc;
}
