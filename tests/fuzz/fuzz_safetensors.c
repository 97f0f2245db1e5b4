/* Fuzz target: a safetensors file (ckpt/safetensors.c): the header length,
 * the JSON header, the tensor table and its checks (dtypes, shapes,
 * offsets, overlaps, metadata), then every float tensor read as f32, whole
 * and as a range, as the loaders do. fy_st_open maps a path, so the input
 * is written to the scratch directory first. */
#include <stdlib.h>

#include "ckpt/safetensors.h"
#include "fuzz_common.h"

static void read_back(const fy_st_file *f, const fy_st_entry *e) {
    fy_err err;
    if (e->numel > (1u << 16)) return;
    float *dst = malloc((e->numel ? e->numel : 1) * sizeof *dst);
    if (!dst) abort();
    fy_st_read_f32(f, e->name, dst, (size_t)e->numel, &err);
    if (e->numel > 1) fy_st_read_f32_range(f, e->name, (size_t)e->numel, 1, (size_t)e->numel - 1, dst, &err);
    fy_st_read_f32(f, e->name, dst, (size_t)e->numel + 1, &err);  /* a wrong count: refused */
    free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[4096];
    fz_write("model.safetensors", data, size, path);
    fy_st_file *f = NULL;
    fy_err err;
    if (fy_st_open(path, &f, &err) == 0) {
        for (size_t i = 0; i < fy_st_count(f); i++) {
            const fy_st_entry *e = fy_st_entry_at(f, i);
            if (fy_st_find(f, e->name) != e) abort();  /* the index must find every entry */
            read_back(f, e);
        }
        for (size_t i = 0; i < fy_st_meta_count(f); i++) {
            const char *k, *v;
            fy_st_meta_at(f, i, &k, &v);
            if (fy_st_meta(f, k) == NULL) abort();
        }
        fy_st_find(f, "model.embed_tokens.weight");
    }
    fy_st_close(f);
    return 0;
}
