/* safetensors files (the Hugging Face format): an 8-byte little-endian
 * header length, a JSON header {name: {dtype, shape, data_offsets}, and an
 * optional "__metadata__" of strings}, then the raw little-endian data.
 *
 * The writer streams (header, then each tensor straight from its memory)
 * into a temporary file that is fsync'd and renamed,
 * so a crash never leaves a partial file under the final name. The reader
 * maps the file and validates the whole header before handing out any
 * tensor, so a truncated or corrupted file is an error naming the file, the
 * tensor and the problem, never a crash. */
#ifndef FY_SAFETENSORS_H
#define FY_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/half.h"

#include "core/err.h"

typedef enum fy_st_dtype {
    FY_ST_F32, FY_ST_I32, FY_ST_BF16, FY_ST_F16, FY_ST_U8,
    /* read (and written) as opaque bytes; ferry computes in the ones above */
    FY_ST_BOOL, FY_ST_I8, FY_ST_I16, FY_ST_U16, FY_ST_U32, FY_ST_I64,
    FY_ST_U64, FY_ST_F64, FY_ST_F8_E4M3, FY_ST_F8_E5M2,
    FY_ST_NDTYPES
} fy_st_dtype;

#define FY_ST_MAX_DIMS 8
#define FY_ST_MAX_HEADER 100000000u   /* as the reference implementation */

const char *fy_st_dtype_name(fy_st_dtype t);     /* "F32", "BF16", ... */
size_t fy_st_dtype_size(fy_st_dtype t);          /* bytes per element */
int fy_st_dtype_parse(const char *name, fy_st_dtype *out);  /* -1 if unknown */

/* ---- writing ------------------------------------------------------------ */

typedef struct fy_st_writer fy_st_writer;

fy_st_writer *fy_st_writer_new(void);            /* NULL when out of memory */
void fy_st_writer_free(fy_st_writer *w);

/* Adds a tensor whose bytes are at `data` (host memory, little-endian,
 * contiguous). The name and shape are copied; the data is read only by
 * fy_st_write, so it must stay valid until then. ndim 0 is a scalar. */
int fy_st_writer_add(fy_st_writer *w, const char *name, fy_st_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, fy_err *err);

/* Adds (or replaces) a "__metadata__" string entry; both strings copied. */
int fy_st_writer_meta(fy_st_writer *w, const char *key, const char *value, fy_err *err);

/* The data block (and so the first tensor) starts at a multiple of align
 * bytes in the file, a power of two from 8 (the default) up, by padding the
 * header: a file mapped at a page boundary then holds the first tensor
 * aligned for wide vector loads. */
void fy_st_writer_align(fy_st_writer *w, size_t align);
/* Writes all tensors in insertion order to `path` atomically (temporary,
 * fsync, rename, directory fsync). The header is padded with spaces so the
 * data block starts 8-byte aligned. Duplicate names are refused here. */
int fy_st_write(fy_st_writer *w, const char *path, fy_err *err);

/* ---- reading ------------------------------------------------------------ */

typedef struct fy_st_entry {
    const char *name;
    fy_st_dtype dtype;
    int ndim;
    int64_t shape[FY_ST_MAX_DIMS];
    uint64_t numel;
    const void *data;      /* into the read-only mapping; 8-byte aligned in
                              files ferry writes, maybe not in others */
    size_t nbytes;
    uint64_t file_offset;  /* where the data starts in the file */
} fy_st_entry;

typedef struct fy_st_file fy_st_file;

int fy_st_open(const char *path, fy_st_file **out, fy_err *err);
void fy_st_close(fy_st_file *f);                  /* NULL is fine */

const char *fy_st_path(const fy_st_file *f);
size_t fy_st_count(const fy_st_file *f);
/* Entries in header order, i < fy_st_count(f). */
const fy_st_entry *fy_st_entry_at(const fy_st_file *f, size_t i);
/* NULL when absent (binary search: fine for tens of thousands of tensors). */
const fy_st_entry *fy_st_find(const fy_st_file *f, const char *name);

/* A loader's two pieces of advice about elements [first, first + count) of
 * e in the mapping (a failure changes nothing): fy_st_prefault maps them
 * into this process at once, from the page cache or the disk, where
 * reading them would take a page fault per 64 KB; fy_st_release drops
 * them from this process's resident memory once copied out (the page
 * cache keeps them; a later read maps them again: also the neighbours'
 * elements on the first and last page), so a load never holds a file's
 * weights and their copy at once. */
void fy_st_prefault(const fy_st_file *f, const fy_st_entry *e, size_t first, size_t count);
void fy_st_release(const fy_st_file *f, const fy_st_entry *e, size_t first, size_t count);

/* "__metadata__" entries: value of `key` or NULL; and iteration. */
const char *fy_st_meta(const fy_st_file *f, const char *key);
size_t fy_st_meta_count(const fy_st_file *f);
void fy_st_meta_at(const fy_st_file *f, size_t i, const char **key, const char **value);

/* Copies tensor `name` into dst as f32 (F32 as is, BF16/F16 widened),
 * checking it exists, has a float dtype and exactly expected_numel elements;
 * errors name the file and the tensor. */
int fy_st_read_f32(const fy_st_file *f, const char *name, float *dst, size_t expected_numel,
                   fy_err *err);
/* The same for elements [first, first + count) only (row-major order): one
 * row of a table without a copy of the rest. */
int fy_st_read_f32_range(const fy_st_file *f, const char *name, size_t expected_numel, size_t first,
                         size_t count, float *dst, fy_err *err);

/* Scalar conversions used above (bf16/f16: core/half.h, included here). */
float fy_f8e4m3_to_f32(uint8_t b);  /* F8_E4M3 (the "fn" variant torch calls float8_e4m3fn) */

#endif
