/* Fuzz target: the GGUF read-back (interop/gguf_verify.c, fy_gguf_verify),
 * which `ferry convert --to gguf` runs on the file it just wrote: header,
 * every key's framing (strings, arrays, scalar types), the architecture
 * key, the tensor infos against the plan, the data by checksum and the
 * file size. The reader checks the file against the writer's plan, so the
 * harness first reads the input leniently itself and makes the plan the
 * input claims (counts, names, dims, types, offsets, checksums of the
 * bytes there): otherwise every mutation would stop at the header. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "interop/gguf_impl.h"

typedef struct cur {
    const uint8_t *p;
    size_t n, at;
    int bad;
} cur;

static uint64_t take(cur *c, int bytes) {
    uint64_t v = 0;
    if (c->bad || c->n - c->at < (size_t)bytes) return c->bad = 1, 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)c->p[c->at + i] << (8 * i);
    c->at += (size_t)bytes;
    return v;
}

static const uint8_t *take_str(cur *c, uint64_t *len) {
    *len = take(c, 8);
    if (c->bad || *len > c->n - c->at) return c->bad = 1, NULL;
    const uint8_t *s = c->p + c->at;
    c->at += (size_t)*len;
    return s;
}

static void skip_value(cur *c, uint32_t type) {
    static const int sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    uint64_t len;
    if (type == FY_GV_STR) {
        take_str(c, &len);
    } else if (type == FY_GV_ARR) {
        uint32_t et = (uint32_t)take(c, 4);
        uint64_t n = take(c, 8);
        if (et == FY_GV_ARR || et > FY_GV_F64) c->bad = 1;
        for (uint64_t i = 0; i < n && !c->bad; i++) skip_value(c, et);
    } else if (type > FY_GV_F64 || !sz[type]) {
        c->bad = 1;
    } else {
        take(c, sz[type]);
    }
}

/* The plan the input describes, as far as it can be read. */
static void make_plan(const uint8_t *data, size_t size, fy_gguf_plan *p, uint64_t *n_kv) {
    cur c = {data, size, 0, 0};
    memset(p, 0, sizeof *p);
    take(&c, 8);
    uint64_t nt = take(&c, 8);
    *n_kv = take(&c, 8);
    if (c.bad || nt > 4096) return;
    p->n = p->cap = (int)nt;
    if (!(p->t = calloc(nt ? nt : 1, sizeof *p->t))) abort();
    for (uint64_t k = 0; k < *n_kv && !c.bad; k++) {
        uint64_t len;
        take_str(&c, &len);
        skip_value(&c, (uint32_t)take(&c, 4));
    }
    for (int k = 0; k < p->n && !c.bad; k++) {
        fy_gguf_tensor *t = &p->t[k];
        uint64_t len;
        const uint8_t *s = take_str(&c, &len);
        if (s && len < sizeof t->name) memcpy(t->name, s, (size_t)len);
        t->n_dims = (int)take(&c, 4);
        for (int d = 0; d < t->n_dims && d < 4 && !c.bad; d++) {
            uint64_t v = take(&c, 8);
            if (d < 3) t->ne[d] = v;
        }
        t->type = (fy_gguf_type)take(&c, 4);
        t->data_off = take(&c, 8);
    }
    uint64_t start = ((uint64_t)c.at + FY_GGUF_ALIGN - 1) / FY_GGUF_ALIGN * FY_GGUF_ALIGN;
    if (c.bad || start > size) return;
    p->data_bytes = size - start;
    for (int k = 0; k < p->n; k++) {
        fy_gguf_tensor *t = &p->t[k];
        uint64_t end = k + 1 < p->n && p->t[k + 1].data_off > t->data_off ? p->t[k + 1].data_off : p->data_bytes;
        t->bytes = end > t->data_off ? end - t->data_off : 0;
        t->sum = FY_GGUF_FNV_INIT;
        if (t->data_off <= p->data_bytes && t->bytes <= p->data_bytes - t->data_off)
            t->sum = fy_gguf_fnv(t->sum, data + start + t->data_off, (size_t)t->bytes);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[4096];
    fy_gguf_plan p;
    uint64_t n_kv = 0;
    fy_err err;
    make_plan(data, size, &p, &n_kv);
    fz_write("model.gguf", data, size, path);
    fy_gguf_verify(path, "model.gguf", &p, n_kv, &err);
    free(p.t);
    return 0;
}
