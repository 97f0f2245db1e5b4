/* Internals of the GGUF writer shared by gguf.c (plan and write),
 * gguf_keys.c (the key/value section) and gguf_verify.c (read back). */
#ifndef FY_INTEROP_GGUF_IMPL_H
#define FY_INTEROP_GGUF_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "core/strbuf.h"
#include "interop/gguf.h"

#define FY_GGUF_ALIGN 32
#define FY_GGUF_VERSION 3

/* GGUF metadata value types. */
enum {
    FY_GV_U8 = 0, FY_GV_I8, FY_GV_U16, FY_GV_I16, FY_GV_U32, FY_GV_I32, FY_GV_F32, FY_GV_BOOL,
    FY_GV_STR, FY_GV_ARR, FY_GV_U64, FY_GV_I64, FY_GV_F64
};

/* Where a GGUF tensor's f32 values come from in the host model. */
typedef enum {
    FY_GS_COPY,   /* params (or buffers) [off, off + n) as they are */
    FY_GS_STACK,  /* ne[2] experts, each ne[0]*ne[1] values, `stride` apart */
    FY_GS_KB,     /* kv_b_proj rows :d_n of each head, transposed: [H, r, d_n] */
    FY_GS_VB      /* kv_b_proj rows d_n: of each head: [H, d_v, r] */
} fy_gguf_src;

typedef struct fy_gguf_tensor {
    char name[96];
    int n_dims;
    uint64_t ne[3];      /* ggml order: ne[0] innermost (PyTorch shape reversed) */
    fy_gguf_type type;
    fy_gguf_src src;
    int from_buffers;    /* off is into h->buffers */
    size_t off, stride;
    int dn, dv;          /* FY_GS_KB / FY_GS_VB head split */
    uint64_t data_off;   /* from the start of the data section */
    uint64_t bytes;
    uint64_t sum;        /* FNV-1a of the bytes written */
} fy_gguf_tensor;

typedef struct fy_gguf_plan {
    fy_gguf_tensor *t;
    int n, cap;
    int n_fallback;      /* matrices stored F16 since their rows are not whole blocks */
    int mtp;             /* MTP modules written as blk.N.nextn.* */
    uint64_t data_bytes; /* the data section, padded */
} fy_gguf_plan;

/* The key/value section for plan p (n_kv keys) appended to b. */
int fy_gguf_write_keys(const fy_host_model *h, const fy_gguf_plan *p, fy_gguf_type type, fy_strbuf *b,
                       uint64_t *n_kv, fy_err *err);

/* What fy_gguf_write writes: the tensors' f32 sources (params, and
 * buffers for tensors with from_buffers) and the key/value section, written
 * by keys (n_kv keys appended to b). */
typedef struct fy_gguf_values {
    const float *params, *buffers;
    int (*keys)(const void *ctx, const fy_gguf_plan *p, fy_strbuf *b, uint64_t *n_kv, fy_err *err);
    const void *keys_ctx;
} fy_gguf_values;

/* A zeroed tensor appended to p (NULL and err when out of memory); earlier
 * pointers into p->t may move. */
fy_gguf_tensor *fy_gguf_plan_add(fy_gguf_plan *p, fy_err *err);

/* Data offsets and sizes of plan p's tensors (their ne and type set). */
void fy_gguf_plan_offsets(fy_gguf_plan *p);

/* Writes p to out_path through a temporary name: header, keys, tensor
 * infos, data (each tensor gathered and encoded in its type), read back by
 * fy_gguf_verify before the rename. */
int fy_gguf_write(const char *out_path, fy_gguf_plan *p, const fy_gguf_values *v, fy_err *err);

/* The key/value section of a LoRA adapter (general.type "adapter",
 * adapter.type "lora", adapter.lora.alpha) for fy_gguf_write. */
int fy_gguf_write_adapter_keys(const void *alpha, const fy_gguf_plan *p, fy_strbuf *b, uint64_t *n_kv, fy_err *err);

uint64_t fy_gguf_fnv(uint64_t h, const uint8_t *p, size_t n);
#define FY_GGUF_FNV_INIT 0xcbf29ce484222325ull

/* Reads the file at path (written from plan p with n_kv keys) and checks
 * the header, every key's framing, the architecture, each tensor's name,
 * dims, type, offset and bytes (by checksum), and the file size. */
int fy_gguf_verify(const char *path, const char *shown, const fy_gguf_plan *p, uint64_t n_kv, fy_err *err);

#endif
