/* Weights images (ckpt/checkpoint.h): a model saved in the format it runs
 * in, and loaded by mapping it. The copy's bytes are the backend's own
 * (model/quant.c lays them out), so loading one is a few page mappings
 * where loading f32 weights for --weights FMT reads, checks and encodes
 * every weight: the time-to-first-token of a fresh `ferry generate`. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt/checkpoint.h"
#include "ckpt/ckpt_impl.h"
#include "ckpt/safetensors.h"
#include "core/checksum.h"
#include "core/fsutil.h"

#define IMAGE_TENSOR "ferry.weights_image"

int fy_ckpt_image_of(const char *name, fy_quant *q) {
    static const char pre[] = "model.", suf[] = ".safetensors";
    size_t n = strlen(name), lp = sizeof pre - 1, ls = sizeof suf - 1;
    char fmt[16];
    fy_err e;
    if (n <= lp + ls || n - lp - ls >= sizeof fmt || strncmp(name, pre, lp) || strcmp(name + n - ls, suf)) return 0;
    memcpy(fmt, name + lp, n - lp - ls);
    fmt[n - lp - ls] = '\0';
    /* the canonical name only ("q8_0", not its alias "q8"): one file name per format */
    if (fy_quant_parse(fmt, q, &e) || strcmp(fmt, fy_quant_name(*q))) return 0;
    return 1;
}

int fy_ckpt_image_format(const char *ckpt_dir, fy_quant *q, fy_err *err) {
    fy_ckpt_manifest man;
    if (fy_ckpt_read_manifest(ckpt_dir, &man, err)) return -1;
    int image = 0;
    for (int i = 0; i < man.n_files; i++) {
        if (!strcmp(man.files[i].name, FY_CKPT_MODEL)) return 0;
        if (fy_ckpt_image_of(man.files[i].name, q)) image++;
    }
    if (image > 1) return fy_fail(err, "checkpoint %s: %s lists more than one weights image", ckpt_dir, FY_CKPT_MANIFEST);
    return image;
}

/* ---- save ---- */

static void image_name(fy_quant q, char out[64]) { snprintf(out, 64, "model.%s.safetensors", fy_quant_name(q)); }

int fy_ckpt_image_save(const char *run_dir, int step, fy_model *m, fy_err *err) {
    const fy_param_table *tab = &m->tab;
    fy_quant q = (fy_quant)m->dq.kind;
    void *bytes = NULL;
    size_t len = 0;
    float **host = calloc(tab->n ? tab->n : 1, sizeof *host);
    fy_st_writer *w = fy_st_writer_new();
    int rc = host && w ? 0 : fy_fail(err, "out of memory");
    if (rc == 0) rc = fy_model_image_bytes(m, &bytes, &len, err);
    int64_t shape = (int64_t)len;
    if (rc == 0) {
        fy_st_writer_align(w, 64); /* the copy is read in place by 64-byte vector loads */
        rc = fy_st_writer_add(w, IMAGE_TENSOR, FY_ST_U8, 1, &shape, bytes, err);
    }
    for (int i = 0; i < tab->n && rc == 0; i++) {
        const fy_tensor_info *t = &tab->t[i];
        if (!fy_model_needs_tensor(m, t) || fy_model_image_covers(m, t)) continue;
        if (!(host[i] = malloc((t->n ? t->n : 1) * sizeof(float)))) {
            rc = fy_fail(err, "out of memory");
            break;
        }
        m->be->ops->download(m->be, host[i], fy_at(t->is_buffer ? &m->buffers : &m->params, t->off), t->n);
        int64_t sh[2] = {t->shape[0], t->shape[1]};
        rc = fy_be_take_error(m->be, err) || fy_st_writer_add(w, t->name, FY_ST_F32, t->ndim, sh, host[i], err);
    }
    char sv[32], lay[FY_XXH64_HEX_LEN + 1], name[64];
    snprintf(sv, sizeof sv, "%d", step);
    fy_xxh64_hex(fy_model_image_layout(m), lay);
    image_name(q, name);
    if (rc == 0) rc = fy_st_writer_meta(w, "format", "pt", err) || fy_st_writer_meta(w, "ferry_weights", fy_quant_name(q), err) ||
                      fy_st_writer_meta(w, "ferry_layout", lay, err) || fy_st_writer_meta(w, "ferry_step", sv, err);
    fy_ckpt_snapshot s = {.tab = tab, .step = step, .trainer_state = "{}", .image = w, .image_name = name};
    if (rc == 0) rc = fy_ckpt_save_snapshot(run_dir, &s, 1, NULL, 0, err);
    for (int i = 0; host && i < tab->n; i++) free(host[i]);
    free(host);
    free(bytes);
    fy_st_writer_free(w);
    return rc;
}

/* ---- load ---- */

static void close_file(void *f) { fy_st_close(f); }

/* Bytes [off, off + len) of the image read, a byte per cache line, on the
 * threads. A model whose weights fit in the last-level cache keeps them
 * there from forward to forward; mapped, its first forward would fetch
 * them from memory instead: tiny's first prefill ran 11.5k against 12.8k
 * tok/s with this read (q4_0, medians of 21 fresh processes, 2026-12-07),
 * its time-to-first-token the same either way (the read is the fetch,
 * earlier and on both threads). Larger models gain nothing: the caller
 * reads only what fits. */
static void warm(const fy_st_entry *img, size_t off, size_t len) {
    const volatile unsigned char *p = (const unsigned char *)img->data + off;
    const long lines = (long)(len / 64);
    unsigned sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (len >= ((size_t)1 << 20))
    for (long i = 0; i < lines; i++) sum += p[(size_t)i * 64];
    (void)sum;
}

/* The k-th range of the image that a batch step reads, advancing *k: the
 * whole copy, or, in an f32 image (the params block), each tensor of the
 * table it needs, not the MTP modules' (resident memory for nothing).
 * 0 past the last. */
static int next_range(const fy_model *m, const fy_st_entry *img, int *k, size_t *off, size_t *len) {
    const fy_param_table *tab = &m->tab;
    if (m->dq.kind != FY_QUANT_F32) {
        *off = 0, *len = img->nbytes;
        return (*k)++ == 0;
    }
    for (; *k < tab->n; (*k)++) {
        const fy_tensor_info *t = &tab->t[*k];
        if (t->is_buffer || !fy_model_needs_tensor(m, t)) continue;
        *off = t->off * sizeof(float), *len = t->n * sizeof(float);
        (*k)++;
        return 1;
    }
    return 0;
}

/* The image in place: its ranges mapped at once, not a page fault per
 * 64 KB in the first forward (as llama.cpp's MAP_POPULATE), read into the
 * caches when they fit in warm_max, and adopted; on success the model
 * holds f. */
static int map_image(fy_model *m, fy_st_file *f, const fy_st_entry *img, uint64_t layout, size_t warm_max,
                     fy_err *err) {
    size_t off, len, used = 0;
    for (int k = 0; next_range(m, img, &k, &off, &len);) used += len;
    for (int k = 0; next_range(m, img, &k, &off, &len);) {
        fy_st_prefault(f, img, off, len);
        if (used <= warm_max) warm(img, off, len);
    }
    return fy_model_image_adopt(m, img->data, img->nbytes, layout, close_file, f, err);
}

/* --no-mmap: bytes [off, off + len) of the image copied into the model's
 * memory 4 MB at a time, each piece's pages of the mapping dropped once
 * copied (fy_st_release), so the image is never resident twice. */
static int copy_range(fy_model *m, const fy_st_file *f, const fy_st_entry *img, size_t off, size_t len, fy_err *err) {
    const size_t piece = (size_t)4 << 20;
    for (size_t o = off; o < off + len; o += piece) {
        size_t n = off + len - o < piece ? off + len - o : piece;
        fy_st_prefault(f, img, o, n);
        int rc = fy_model_image_put(m, o, (const unsigned char *)img->data + o, n, err);
        fy_st_release(f, img, o, n);
        if (rc) return -1;
    }
    return 0;
}

/* The image's ranges copied into the model's memory; f stays the caller's. */
static int copy_image(fy_model *m, const fy_st_file *f, const fy_st_entry *img, uint64_t layout, fy_err *err) {
    size_t off, len;
    if (fy_model_image_check(m, img->nbytes, layout, err)) return -1;
    for (int k = 0; next_range(m, img, &k, &off, &len);)
        if (copy_range(m, f, img, off, len, err)) return -1;
    return 0;
}

/* The image entry of f, checked against m's plan: its format and layout. */
static int check_image(const fy_st_file *f, const char *dir, const char *file, const fy_model *m,
                       const fy_st_entry **out, uint64_t *layout, fy_err *err) {
    const char *fmt = fy_st_meta(f, "ferry_weights"), *lay = fy_st_meta(f, "ferry_layout");
    const fy_st_entry *e = fy_st_find(f, IMAGE_TENSOR);
    if (!fmt || strcmp(fmt, fy_quant_name((fy_quant)m->dq.kind)))
        return fy_fail(err, "checkpoint %s: %s: metadata \"ferry_weights\" is %s%s%s, not %s", dir, file,
                       fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "", fy_quant_name((fy_quant)m->dq.kind));
    if (!lay || fy_xxh64_parse_hex(lay, layout))
        return fy_fail(err, "checkpoint %s: %s: metadata \"ferry_layout\" missing or not 16 hex digits", dir, file);
    if (!e || e->dtype != FY_ST_U8 || e->ndim != 1)
        return fy_fail(err, "checkpoint %s: %s: tensor %s missing or not a U8 vector", dir, file, IMAGE_TENSOR);
    *out = e;
    return 0;
}

int fy_ckpt_image_load(const char *ckpt_dir, fy_model *m, const fy_ckpt_image_opts *o, fy_err *err) {
    const fy_param_table *tab = &m->tab;
    char path[FY_PATH_MAX], file[64];
    image_name((fy_quant)m->dq.kind, file);
    fy_st_file *f = NULL;
    if (fy_path_join(path, sizeof path, ckpt_dir, file, err) || fy_st_open(path, &f, err)) return -1;
    const fy_st_entry *img = NULL;
    uint64_t layout = 0;
    size_t expected = 1, biggest = 1;
    int rc = check_image(f, ckpt_dir, file, m, &img, &layout, err);
    for (int i = 0; i < tab->n && rc == 0; i++) {
        const fy_tensor_info *t = &tab->t[i];
        const fy_st_entry *e;
        if (!fy_model_needs_tensor(m, t) || fy_model_image_covers(m, t)) continue;
        rc = fy__ckpt_check_tensor(f, ckpt_dir, file, t, "", &e, err);
        expected++;
        biggest = t->n > biggest ? t->n : biggest;
    }
    if (rc == 0 && fy_st_count(f) != expected)
        rc = fy_fail(err, "checkpoint %s: %s: %zu tensors, expected %zu (the image and the f32 tensors a batch step "
                          "reads)", ckpt_dir, file, fy_st_count(f), expected);
    float *staging = rc ? NULL : malloc(biggest * sizeof *staging);
    if (rc == 0 && !staging) rc = fy_fail(err, "out of memory");
    for (int i = 0; i < tab->n && rc == 0; i++) {
        const fy_tensor_info *t = &tab->t[i];
        if (!fy_model_needs_tensor(m, t) || fy_model_image_covers(m, t)) continue;
        rc = fy__ckpt_load_model_tensor(m, f, fy_st_find(f, t->name), t, staging, err);
        if (rc) fy_wrap(err, "checkpoint %s: loading %s", ckpt_dir, t->name);
    }
    free(staging);
    fy_model_load_finish(m);
    if (rc == 0) {
        rc = o->in_place ? map_image(m, f, img, layout, o->warm_max, err) : copy_image(m, f, img, layout, err);
        if (rc == 0 && o->in_place) return 0; /* the model holds f now */
        if (rc) fy_wrap(err, "checkpoint %s: %s", ckpt_dir, file);
    }
    fy_st_close(f);
    return rc;
}
