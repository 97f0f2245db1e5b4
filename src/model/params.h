/* The parameter table: every tensor of a DeepSeek-V3 model with its Hugging
 * Face name, shape and place in one flat buffer.
 *
 * All trainable parameters live in one flat float buffer (and their
 * gradients and AdamW moments in buffers of the same layout), as in llm.c:
 * one allocation, one optimizer call per tensor, one all-reduce, one
 * checksum. Non-trainable buffers (the router's e_score_correction_bias)
 * live in a second, smaller flat buffer. Each tensor starts on a 16-element
 * boundary so SIMD loads are aligned. */
#ifndef FY_PARAMS_H
#define FY_PARAMS_H

#include <stddef.h>
#include <string.h>

#include "core/err.h"
#include "model/config.h"

#define FY_NO_TENSOR ((size_t)-1)

/* n rounded up to the 16-element boundary every tensor (and workspace
 * slice) starts on. */
static inline size_t fy_params_round16(size_t n) { return (n + 15) & ~(size_t)15; }

typedef struct fy_tensor_info {
    char name[96];
    int ndim;
    int shape[2];      /* [out, in] for matrices */
    size_t off;        /* elements, into params or buffers */
    size_t n;
    int decay;         /* AdamW weight decay applies */
    int is_buffer;     /* lives in the buffers block, not trained */
    int expert;        /* a routed expert's (in the expert region, after n_dense) */
    int id;            /* its index in the whole model's table (the init's random stream) */
} fy_tensor_info;

/* Offsets of one decoder layer's tensors (FY_NO_TENSOR when absent).
 * Routed experts of one kind are stored one after another: the gate_proj of
 * expert e (held: exp_lo <= e < exp_hi of the table) starts at
 * exp_gate + (e - exp_lo) * exp_stride (exp_stride is f * d rounded up to
 * the 16-element alignment, not f * d). */
typedef struct fy_layer_offs {
    size_t attn_norm, q_a, q_a_norm, q_b, q, kv_a, kv_a_norm, kv_b, o;
    size_t ffn_norm;
    size_t gate, up, down;                 /* dense SwiGLU */
    size_t router, bias;                   /* bias: offset in buffers */
    size_t exp_gate, exp_up, exp_down;     /* routed experts */
    size_t exp_stride;                     /* elements from one expert to the next */
    size_t sh_gate, sh_up, sh_down;        /* shared experts */
    size_t enorm, hnorm, eh_proj, head_norm; /* MTP modules only */
    int moe;
    size_t span_lo, span_hi;               /* its params but the routed experts: [span_lo, span_hi) */
    size_t xspan_lo, xspan_hi;             /* its routed experts (empty for a dense layer) */
} fy_layer_offs;

/* The params block is [0, n_dense): every tensor but the routed experts,
 * in registration order (embedding, layers, final norm, head), then
 * [n_dense, n_params): the routed experts, layer by layer. Expert
 * parallelism (fy_params_build_shard) keeps only a rank's own experts, so
 * the ranks' blocks agree on [0, n_dense) and differ after it. */
typedef struct fy_param_table {
    fy_tensor_info *t;
    int n;
    int n_all;         /* tensors of the whole model (n < n_all: an expert shard) */
    int exp_lo, exp_hi; /* the routed experts held: [exp_lo, exp_hi) of every MoE layer */
    size_t n_dense;    /* elements before the routed experts */
    size_t n_params;   /* elements in the params block (padded) */
    size_t n_buffers;  /* elements in the buffers block */
    int n_layers;      /* L + D: main layers then MTP modules */
    fy_layer_offs *layer;
    size_t embed, final_norm, head;
} fy_param_table;

int fy_params_build(const fy_config *c, fy_param_table *out, fy_err *err);
/* The table of expert-parallel rank `rank` of `size`: only the routed
 * experts [E*rank/size, E*(rank+1)/size) of each MoE layer. */
int fy_params_build_shard(const fy_config *c, int rank, int size, fy_param_table *out, fy_err *err);
/* 1 when t holds only some of the routed experts. */
static inline int fy_params_is_shard(const fy_param_table *t) { return t->n < t->n_all; }
/* 1 when name is a routed expert's tensor (one a shard may lack). */
static inline int fy_params_is_expert_name(const char *name) { return strstr(name, ".mlp.experts.") != NULL; }
void fy_params_free(fy_param_table *t);
const fy_tensor_info *fy_params_find(const fy_param_table *t, const char *name);
/* Number of trainable scalars (without padding). */
size_t fy_params_count(const fy_param_table *t);

#endif
