/* Inference with a latent KV cache (docs/DESIGN.md §2): per layer and position the
 * cache holds only c_kv (after kv_a_layernorm, r_kv floats) and the roped
 * k_pe (d_r floats), instead of 2*H*head_dim. Every token (prompt or
 * generated) runs through the batch step, which absorbs W_kvb into the
 * query (q_lat = W_kb^T q_nope) and the output (o = W_vb o_lat), so attention
 * runs in the latent space. MTP modules are not used. */
#ifndef FY_DECODE_H
#define FY_DECODE_H

#include <stdint.h>

#include "model/lora.h"
#include "model/model.h"

/* Weights a batch step (and so prefill and decode) multiplies by:
 * FY_QUANT_F32 (the params themselves) or a copy in another format of every
 * matrix a linear of the main layers and the head reads:
 *   Q8_0   int8 with one scale per 32 (backend.h linear_q8), 3.6x fewer bytes
 *   Q4_0   4-bit codes with one scale per 32 (linear_q4), 7.1x fewer
 *   F16, BF16  IEEE half / bfloat16 (linear_h16), 2x fewer
 * and of the token embedding (held as GGUF holds token_embd, its rows read
 * back by dequant_rows). The router and W_kvb (absorbed per head) stay f32,
 * as llama.cpp keeps ffn_gate_inp. The whole-sequence forward (training,
 * fy_model_forward) never uses the copy. */
typedef enum { FY_QUANT_F32 = 0, FY_QUANT_Q8_0 = 1, FY_QUANT_Q4_0 = 2, FY_QUANT_F16 = 3, FY_QUANT_BF16 = 4 } fy_quant;

/* "f32", "q8_0" (also "q8"), "q4_0" (also "q4"), "f16", "bf16"; anything
 * else is an error naming them. */
int fy_quant_parse(const char *s, fy_quant *out, fy_err *err);
const char *fy_quant_name(fy_quant q);

/* Makes (or drops, for FY_QUANT_F32) the quantized copy from the current
 * params; call it after loading them: the copy does not follow later
 * changes (training). Costs the copy's memory (Q8_0 ~0.28 x the params).
 * Fails, naming the op, when the backend lacks the format's kernel. */
int fy_model_set_decode_quant(fy_model *m, fy_quant q, fy_err *err);
void fy_model_free_decode_quant(fy_model *m);

/* Loading for inference only, in weights q, without ever holding what it
 * does not read (docs/PERFORMANCE.md, "Cold start and memory"): call
 * fy_model_plan_inference on a fresh model (it allocates the copy), then
 * hand it every tensor with fy_model_load_rows (ckpt/checkpoint.h's
 * fy_ckpt_load_weights does). A matrix of the copy is quantized straight
 * from the loader's floats and its params are never written (untouched
 * memory: nothing resident); an MTP module's tensors are not loaded at all;
 * every tensor loaded is checked finite (the error names it). The model
 * then runs batch steps only: not fy_model_forward or backward, and
 * fy_model_set_decode_quant to another format fails. */
int fy_model_plan_inference(fy_model *m, fy_quant q, fy_err *err);
/* Rows [row0, row0 + n_rows) of tensor t of the table (a vector is one
 * row) from w (host floats, read before this returns: it may be a file's
 * mapping): uploaded into params or buffers, or, after
 * fy_model_plan_inference, as said there. Synchronous. A loader giving a
 * tensor in pieces of rows never holds the whole of it. */
int fy_model_load_rows(fy_model *m, const fy_tensor_info *t, int row0, int n_rows, const float *w, fy_err *err);
/* The copy as a file holds it ("weights images": ferry convert --weights,
 * ckpt/checkpoint.h), so a later load maps it instead of encoding it; in
 * f32 the image is the params block (a batch step reads the params).
 * After fy_model_plan_inference: fy_model_image_covers says whether the
 * copy holds t (the image replaces it; the other tensors a batch step
 * reads stay f32 and load with fy_model_load_rows), and
 * fy_model_image_layout is a hash of where the copy puts every matrix (the
 * format, offsets and size, and a version of what the bytes mean: an image
 * made by a build that lays the copy out or encodes it differently is
 * refused). fy_model_image_bytes: a malloc'd host copy
 * of the copy, after loading. fy_model_image_check: fails, saying why,
 * unless an image of len bytes with that layout fits the plan.
 * fy_model_image_adopt: the copy becomes the len bytes at `bytes` (checked;
 * without a copy where the backend can read host memory in place;
 * release(ctx) when the model no longer needs them: on failure ctx stays
 * the caller's). fy_model_image_put: bytes [off, off + len) of a checked
 * image copied into the model's own memory instead (off and len multiples
 * of 4; synchronous), for a loader that copies it piece by piece. The
 * image's values are not checked finite: the checksums of the file that
 * carries them stand for the checks made when it was written. */
int fy_model_image_covers(const fy_model *m, const fy_tensor_info *t);
uint64_t fy_model_image_layout(const fy_model *m);
int fy_model_image_bytes(fy_model *m, void **out, size_t *len, fy_err *err);
int fy_model_image_check(const fy_model *m, size_t len, uint64_t layout, fy_err *err);
int fy_model_image_adopt(fy_model *m, const void *bytes, size_t len, uint64_t layout, void (*release)(void *ctx),
                         void *ctx, fy_err *err);
int fy_model_image_put(fy_model *m, size_t off, const void *bytes, size_t len, fy_err *err);
/* After the last fy_model_load_rows: frees what loading needed. */
void fy_model_load_finish(fy_model *m);
/* After fy_model_plan_inference: 0 when a batch step never reads t (the
 * loader need not read it either), and 0 when t's f32 values are not in
 * the params (only in the copy, or nowhere); 1 otherwise, and always
 * without the plan. */
int fy_model_needs_tensor(const fy_model *m, const fy_tensor_info *t);
int fy_model_holds_f32(const fy_model *m, const fy_tensor_info *t);
/* The bytes the model holds for t: its f32 values (fy_model_holds_f32) plus
 * its share of the quantized copy (quants and float scales). */
size_t fy_model_tensor_bytes(const fy_model *m, const fy_tensor_info *t);
/* The f32 rows ids[0..n) of the token embedding as a batch step reads them
 * (dequantized from the copy where it holds the embedding) to out[n, d]
 * (host). */
int fy_model_embed_rows(fy_model *m, const int32_t *ids, int n, float *out, fy_err *err);


/* ---- Serving: a paged latent-KV pool shared by many sequences, and one
 * forward over the new tokens of all of them (docs/SERVING.md). ----
 *
 * The pool holds n_blocks blocks of `block` positions for every main layer
 * (c_kv and k_pe as in fy_kv_cache). A sequence owns a list of blocks, so
 * short and long requests share one allocation without fragmenting it. */
typedef struct fy_kv_pool {
    int n_layers, block, n_blocks;
    fy_buf buf;          /* every layer's c_kv rows, then its k_pe rows */
    fy_ref *ckv, *kpe;   /* per layer: [n_blocks*block, r_kv], [n_blocks*block, d_r] */
    int32_t *free_ids;   /* stack of free block ids */
    int n_free;
    fy_buf lora_tmp;     /* batch steps' scratch for unmerged adapters, grown on demand */
} fy_kv_pool;

/* n_positions: rounded up to whole blocks; block: positions per block. */
int fy_kv_pool_create(fy_kv_pool *p, fy_model *m, int n_positions, int block, fy_err *err);
void fy_kv_pool_free(fy_kv_pool *p, fy_model *m);
static inline int fy_kv_pool_free_positions(const fy_kv_pool *p) { return p->n_free * p->block; }

/* One sequence's blocks; zero-initialise, then fy_kv_seq_reserve. */
typedef struct fy_kv_seq {
    int len;            /* positions filled */
    int n_blocks;       /* blocks held: room for n_blocks * pool->block positions */
    int cap_blocks;     /* allocated length of blocks[] */
    int32_t *blocks;
} fy_kv_seq;

/* Grows s to room for `positions` (<= max_position_embeddings) from the
 * pool; fails, leaving s and the pool as they were, when the pool lacks
 * the blocks. */
int fy_kv_seq_reserve(fy_kv_pool *p, fy_kv_seq *s, int positions, fy_err *err);
/* Gives s's blocks back to the pool and frees s (zeroed: reusable). */
void fy_kv_seq_release(fy_kv_pool *p, fy_kv_seq *s);

/* One sequence's share of a batch step: its next n tokens, at positions
 * seq->len .. seq->len + n - 1. */
typedef struct fy_batch_item {
    fy_kv_seq *seq;
    const int32_t *tokens;  /* host, n ids in [0, vocab) */
    int n;                  /* >= 1: one to decode, more for (a chunk of) a prompt */
    int want_logits;        /* 1: the logits after its last token are wanted */
    /* NULL: the bare base; else an unmerged adapter (model/lora.h) made on
     * this base, added to every adapted linear of this item's rows */
    const fy_lora_unmerged *lora;
} fy_batch_item;

/* Runs the tokens of all items through the main layers as one batch: each
 * linear is one fy__linear over all rows (the Q8_0 copy when set, else the
 * backend's linear_rows), attention is per row against its own sequence's
 * cache (mla_paged), and each item's latent KV is appended to its sequence
 * (seq->len += n; the sequence must have room). The logits of the j-th item
 * that wants them go to logits + j*V (host). A row's bits depend on its own
 * sequence alone: not on the other items, their number, or how a prompt was
 * cut into chunks (tested: tests/unit/test_batch.c). Items may carry
 * different unmerged adapters (or none): a row's bits are those of its own
 * adapter alone, whatever the other rows' are (tests/unit/test_lora_serve.c).
 * MTP modules unused. */
int fy_model_batch_step(fy_model *m, fy_kv_pool *p, const fy_batch_item *items, int n_items, float *logits,
                        fy_err *err);


/* ---- One sequence ---- */

/* One sequence's generation: a thin wrapper over a one-sequence fy_kv_pool
 * and fy_model_batch_step (below), so that a token generated here has the
 * bits it gets in any batch of `ferry serve`. Setting len back (to 0, or to
 * a shorter prefix) rewinds the cache. */
typedef struct fy_kv_cache {
    int cap, len;       /* positions allocated / filled */
    fy_kv_pool pool;    /* one block of cap positions */
    fy_kv_seq seq;
} fy_kv_cache;

/* cap: the most positions this cache will hold (<= max_position_embeddings). */
int fy_kv_cache_create(fy_kv_cache *c, fy_model *m, int cap, fy_err *err);
void fy_kv_cache_free(fy_kv_cache *c, fy_model *m);

/* Runs the prompt tokens[0..n) as one batch step from position 0 (len = n)
 * and writes the last position's logits to logits[V] (host). */
int fy_model_prefill(fy_model *m, fy_kv_cache *c, const int32_t *tokens, int n, float *logits,
                     fy_err *err);

/* Appends one token at position c->len and writes its logits[V] (host). */
int fy_model_decode(fy_model *m, fy_kv_cache *c, int32_t token, float *logits, fy_err *err);

#endif
