/* LoRA adapters (docs/DESIGN.md §2 "LoRA" (§2.11), docs/FINETUNE.md): low-rank
 * updates of chosen linears of a frozen base model,
 *
 *   y = W x + (alpha / r) * B (A x),   A [r, in], B [out, r],
 *
 * with A initialised as PEFT does (kaiming-uniform with a = sqrt(5), which
 * is U(-1/sqrt(in), 1/sqrt(in))) and B zero, so a fresh adapter changes
 * nothing. The adapters live in their own flat block (an fy_param_table
 * with PEFT's tensor names, its params and grads), which is what a LoRA
 * run trains, checksums, checkpoints and all-reduces: with adapters on,
 * that block IS m->tab, m->params and m->grads, so the optimizer,
 * checkpoints, guards and data parallelism work on it unchanged, and the
 * frozen base moves to m->lora->base_tab / base_params. The base gets no
 * gradient (its gradient buffer is freed): the backward skips every base
 * weight-gradient GEMM (and the norms' and embedding's gradients), while
 * the input gradients still flow through W.
 *
 * Targets are PEFT's target_modules names: q_a_proj, q_b_proj, q_proj (the
 * query projection when q_lora_rank is 0), kv_a_proj_with_mqa, kv_b_proj,
 * o_proj, gate_proj, up_proj, down_proj (the dense MLPs and the shared
 * experts), and `experts` (every routed expert's gate/up/down, one adapter
 * per expert and kind). Only the main decoder layers get adapters: the MTP
 * modules stay frozen (Hugging Face's model, which PEFT adapts, has none). */
#ifndef FY_LORA_H
#define FY_LORA_H

#include <stdint.h>

#include "model/model.h"

enum {
    FY_LORA_Q_A = 1u << 0,
    FY_LORA_Q_B = 1u << 1,
    FY_LORA_Q = 1u << 2,
    FY_LORA_KV_A = 1u << 3,
    FY_LORA_KV_B = 1u << 4,
    FY_LORA_O = 1u << 5,
    FY_LORA_GATE = 1u << 6,
    FY_LORA_UP = 1u << 7,
    FY_LORA_DOWN = 1u << 8,
    FY_LORA_EXPERTS = 1u << 9,
    FY_LORA_ALL = (1u << 10) - 1,
};

typedef struct fy_lora_config {
    int rank;          /* r >= 1 */
    float alpha;       /* scale = alpha / r (PEFT without rslora) */
    unsigned targets;  /* FY_LORA_* bits */
    float dropout;     /* on the adapter's input in training passes (a forward with
                        * need_grad, its backward), 0 <= p < 1 (fy_model_lora_dropout_key) */
} fy_lora_config;

/* One adapted linear: base weight [out, in] at params offset w; its A at
 * a and B at b in the adapter block. */
typedef struct fy_lora_adapter {
    size_t w, a, b;
    int in, out;
    int id;            /* the base tensor's id (its init stream) */
    int layer, expert; /* its main layer, and its routed expert (-1: not one) */
} fy_lora_adapter;

typedef struct fy_lora {
    fy_lora_config cfg;
    float scale;            /* alpha / r */
    fy_param_table base_tab; /* the frozen base's table and weights (m->tab, */
    fy_buf base_params;      /* m->params before fy_model_set_lora) */
    fy_buf dump;            /* where the frozen norms' weight gradients go */
    fy_lora_adapter *ad;    /* [n_ad], sorted by w */
    int n_ad;
    int max_in;             /* the widest adapter input */
    /* dropout's key (fy_model_lora_dropout_key), and while a routed
     * expert runs, the token of each of its rows (host, set by ffn.c) */
    uint64_t seed;
    int step;
    int64_t row0;
    const int32_t *keys;
    /* the base's decoder linears held in another format (model/lora_qbase.h),
     * NULL: the base is f32 */
    struct fy_lora_qbase *qb;
} fy_lora;

/* Dropout's key for the next forwards and backwards: the mask of adapter
 * input element (token, column) is a function of (seed, step, the base
 * tensor's id, row0 + the token's index in the batch, column) alone, so a
 * resumed run and data-parallel ranks draw what one uninterrupted rank
 * would; row0 is the batch's first token in the whole step (a rank's or a
 * micro-batch's offset). The backward must see the key its forward saw. */
void fy_model_lora_dropout_key(fy_model *m, uint64_t seed, int step, int64_t row0);

/* "q_a_proj,kv_b_proj,experts" -> bits; "all" is every target. */
int fy_lora_parse_targets(const char *list, unsigned *out, fy_err *err);
/* The bits as a comma-separated list of names into buf. */
void fy_lora_targets_string(unsigned targets, char *buf, size_t cap);

/* Freezes the base and adds adapters (zero, until fy_model_lora_init) on
 * every target the model has; an error if none matches, if the config is
 * out of range, or if adapters are already on. Afterwards m->tab (PEFT's
 * names, no buffers), m->params and m->grads are the adapter block; the
 * base is m->lora->base_tab and base_params, its router bias stays in
 * m->buffers. Load the base first. On a whole base the block has no expert
 * region (n_dense == n_params); on an expert shard (expert parallel: attach
 * the experts first) it is a shard as the base is (fy_lora_table): the
 * routed experts' adapters of this rank's experts only, after n_dense. */
int fy_model_set_lora(fy_model *m, const fy_lora_config *cfg, fy_err *err);
/* PEFT's init: A kaiming-uniform (a = sqrt(5)) from a counter-based stream
 * keyed by the base tensor's id, B zero. Identical on every backend. */
int fy_model_lora_init(fy_model *m, uint64_t seed, fy_err *err);
/* Folds the adapters into the base, W += (alpha/r) B A for each (what
 * PEFT's merge_and_unload does), and removes them: the model is a plain,
 * trainable one again (m->tab the base's, gradients zero), whose forward
 * gives the adapted model's evaluation logits within rounding; inference
 * needs this. */
int fy_model_lora_merge(fy_model *m, fy_err *err);
/* ---- Unmerged adapters (serving: docs/SERVING.md, "LoRA adapters") ----
 *
 * An adapter held beside the base instead of folded into it, so that one
 * base (and its quantized copy) serves many adapters at once: a batch step
 * (model/decode.h) gives each row its own item's adapter, adding
 *   y_row += s * ((x_row A^T) B^T)
 * after the base linear with the batch-invariant kernels (lora_ops.c), so a
 * row's bits do not depend on the other rows or their adapters. kv_b_proj
 * is absorbed into attention (its weight is read per head, not through a
 * linear): an adapter on it carries its own merged f32 copy of each
 * layer's kv_b_proj, W + s B A, computed as fy_model_lora_merge does. */
typedef struct fy_lora_unmerged {
    fy_lora_config cfg;
    float scale;              /* alpha / r */
    fy_lora_adapter *ad;      /* [n_ad], sorted by w (base offsets); a, b index params */
    int n_ad;
    int max_in, max_out;      /* the widest adapter input and output */
    fy_param_table tab;       /* PEFT's names of A and B (as fy_model_set_lora's) */
    fy_buf params;            /* the A and B matrices, f32 */
    size_t base_n_params;     /* the base it was made on: its params count */
    fy_buf kvb;               /* merged kv_b_proj copies, back to back */
    size_t *kvb_off;          /* [n_layers]: layer l's copy in kvb, or SIZE_MAX (none) */
} fy_lora_unmerged;

/* Takes the adapters off a model that has them (fy_model_set_lora, then
 * loaded), without folding them in: *out gets them, and the model is the
 * plain base again (as after fy_model_lora_merge, but unchanged). */
int fy_model_lora_detach(fy_model *m, fy_lora_unmerged **out, fy_err *err);
void fy_lora_unmerged_free(fy_backend *be, fy_lora_unmerged *u);

/* The adapter table (no buffers, no adapters list) of expert-parallel rank
 * `rank` of `size` (size 1: the whole model's, fy_model_set_lora's layout):
 * the adapters of every tensor but the routed experts, in the base table's
 * order, then those of the rank's routed experts (from n_dense); tensor ids
 * index the whole table (n_all tensors). */
int fy_lora_table(const fy_config *c, const fy_lora_config *lc, int rank, int size, fy_param_table *out,
                  fy_err *err);

/* The PEFT name of base weight `weight` ("model.layers.3.mlp.up_proj.weight")'s
 * adapter matrix (which 'A' or 'B') into buf. */
void fy_lora_name(const char *weight, char which, char *buf, size_t cap);

#endif
