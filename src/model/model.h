/* A DeepSeek-V3 model on a backend: weights, gradients, activations, and the
 * explicit forward and backward passes (docs/DESIGN.md §2).
 *
 * A training step is:
 *   fy_model_zero_grad(m);
 *   fy_model_forward(m, inputs, labels, B, T, 1, &loss, err);  (saves activations)
 *   fy_model_backward(m, err);                                 (accumulates grads)
 *   ... optimizer ...
 *   fy_model_update_bias(m);                                   (aux-loss-free balancing)
 *
 * The loss heads (cross-entropy and its gradient) run fused inside the forward
 * when grads are wanted, so the [tokens x vocab] gradient never has to be kept
 * for every head; backward starts from the heads' input gradients. */
#ifndef FY_MODEL_H
#define FY_MODEL_H

#include <stdint.h>

#include "backend/backend.h"
#include "core/err.h"
#include "model/config.h"
#include "model/params.h"

#define FY_IGNORE_INDEX (-100)
#define FY_MAX_MTP 2

/* Saved activations of one decoder layer for one (B, T); see model_impl.h. */
typedef struct fy_layer_acts fy_layer_acts;

typedef struct fy_loss {
    double total;           /* main + lambda/D * sum mtp + balance */
    double main;            /* mean cross-entropy of the main head */
    double mtp[FY_MAX_MTP]; /* mean cross-entropy of MTP module k+1 */
    double balance;         /* sequence-wise balance loss (all MoE layers) */
    int n_main;             /* non-ignored targets of the main head */
} fy_loss;

typedef struct fy_model {
    fy_config cfg;
    fy_backend *be;
    fy_param_table tab;
    fy_buf params, grads, buffers;

    /* Activation workspace for the current (B, T); grown on demand. The
     * layout is private to src/model (model_impl.h, workspace.c). */
    int B, T;
    fy_buf acts;
    fy_layer_acts *layer_acts;      /* [n_layers] */
    struct fy_model_ws *ws;
    fy_ref logits;                  /* main head [B*T, V] of the last forward */
    int has_grad_heads;             /* forward ran with need_grad */

    /* Expert loads since the last bias update: [n_layers][E] tokens routed. */
    int64_t *loads;

    /* Expert parallelism (size 1: off); see fy_model_set_expert_parallel. */
    struct fy_expert_parallel {
        int rank, size;
        /* Rank r sends send[sdispl[p] .. +scounts[p]) to rank p, which
         * receives it at recv[rdispl[r] ..] (bytes; fy_comm_alltoallv). */
        int (*alltoallv)(void *ctx, const void *send, const size_t *scounts, const size_t *sdispl,
                         void *recv, const size_t *rcounts, const size_t *rdispl, fy_err *err);
        void *ctx;
    } ep;

    /* Quantized copy of the decode weights (fy_model_set_decode_quant in
     * model/decode.h): n matrices, the one at params offset w_off[i] held
     * at q_off[i] (quants) and s_off[i] (scales) in buf, sorted by w_off.
     * `on` and `rows` while fy_model_batch_step runs: every linear of the
     * step is batch-invariant (linear_q8 from the copy for any row count,
     * else the backend's linear_rows), never gemm; training sets neither.
     * `infer`: loaded for inference (fy_model_plan_inference), the params
     * hold only what a batch step reads in f32. hq, hs: host staging.
     * emb: the token embedding is in the copy too, at emb_q / emb_s (as
     * GGUF quantizes token_embd; batch steps gather its rows with
     * dequant_rows), and after an inference load not in the params. */
    struct fy_decode_quant {
        int kind, n, on, rows, infer, emb;
        size_t emb_q, emb_s;
        fy_buf buf;
        size_t *w_off, *q_off, *s_off;
        uint8_t *hq;
        float *hs;
    } dq;

    /* LoRA adapters (model/lora.h, fy_model_set_lora); NULL: off, and
     * every pass is what it is without them. */
    struct fy_lora *lora;

    /* Called by fy_model_backward as gradients become final; see
     * fy_model_set_grad_ready. */
    int (*grad_ready)(void *ctx, size_t lo, size_t hi, int first, fy_err *err);
    void *grad_ready_ctx;
} fy_model;

typedef struct fy_expert_parallel fy_expert_parallel;

/* Builds the parameter table and allocates params/grads/buffers (zeroed). */
int fy_model_create(fy_model *m, const fy_config *cfg, fy_backend *be, fy_err *err);
void fy_model_free(fy_model *m);

/* Seeded normal init (std = initializer_range; output projections scaled by
 * 1/sqrt(2 L)); norms = 1; router bias = 0. Identical on every backend. */
int fy_model_init_weights(fy_model *m, uint64_t seed, fy_err *err);

/* inputs, labels: host int32 [B*T]; labels may be NULL (no loss: logits
 * only). Token ids must be in [0, vocab); labels also FY_IGNORE_INDEX.
 * need_grad saves what backward needs and runs the loss heads' backward. */
int fy_model_forward(fy_model *m, const int32_t *inputs, const int32_t *labels,
                     int B, int T, int need_grad, fy_loss *loss, fy_err *err);
/* Accumulates d(total loss)/d(params) into m->grads. Needs a forward with
 * need_grad on the same batch just before. */
int fy_model_backward(fy_model *m, fy_err *err);
void fy_model_zero_grad(fy_model *m);

/* Main-head logits of the last forward: [B*T, V] on the device. */
static inline fy_ref fy_model_logits(fy_model *m) { return m->logits; }

/* Router decisions of MoE layer `layer` in the last forward: idx (int) and
 * weights w, both [B*T, K] in descending order of s + bias. Host copies. */
int fy_model_router_choice(fy_model *m, int layer, int32_t *idx, float *w, fy_err *err);

/* The latent KV of layer `layer` from the last forward (docs/DESIGN.md §2: what
 * inference caches): c_kv after kv_a_layernorm, [B*T, r_kv] with row stride
 * *ld_ckv, and k_pe after RoPE, [B*T, d_r] with row stride *ld_kpe. */
int fy_model_latent_kv(fy_model *m, int layer, fy_ref *ckv, int *ld_ckv, fy_ref *kpe, int *ld_kpe,
                       fy_err *err);

/* A saved activation of layer `layer` from the last forward with need_grad
 * (what the backward reads): "ln1" and "ln2" (the normed inputs of attention
 * and FFN, [B*T, d]), "q" ([B*T, H*(d_n+d_r)], RoPE applied) and "att" (the
 * attention output before o_proj, [B*T, H*d_v]). *n gets its element count.
 * For fault injection and debugging. */
int fy_model_activation(fy_model *m, int layer, const char *name, fy_ref *out, size_t *n, fy_err *err);

/* Expert parallelism (docs/DESIGN.md §6): the routed experts of every MoE layer are
 * split over ep->size ranks in contiguous ranges (rank p owns experts
 * [E*p/size, E*(p+1)/size)). Each rank routes its own tokens, sends every
 * expert's rows to the expert's owner with ep->alltoallv, the owner runs the
 * expert on the rows of all ranks, and the outputs travel back to be combined
 * (forward); the backward sends the output gradients to the owners and the
 * input gradients back. A rank holds the weights, gradients (and, through
 * its optimizer, the moments) of its own experts only: the parameter table
 * becomes the rank's shard (fy_params_build_shard), whose block agrees with
 * every other rank's on [0, n_dense) and holds this rank's experts after it.
 * The weights are reallocated (zero), so call this before initialising or
 * loading them. An expert's gradient is then complete on its owner (it ran
 * the rows of all ranks); the dense part still needs the data-parallel sum.
 * All ranks must run every forward and backward together. size <= 1 turns
 * it off (the whole table again). Decoding (model/decode.h) needs the whole
 * model and refuses a shard. */
int fy_model_set_expert_parallel(fy_model *m, const fy_expert_parallel *ep, fy_err *err);
/* Gradient bucketing: fy_model_backward calls fn(ctx, lo, hi, first) each
 * time the gradients of params [lo, hi) are final, so they can travel while
 * the rest of the backward runs: the heads, final norm and MTP modules first,
 * then each decoder layer from the last (its dense params, then its routed
 * experts), the embedding last; first is 1 on the first range of a
 * backward; the ranges cover the params block once. The gradients in a range
 * no longer change during that backward. fn NULL: off. An error from fn
 * fails the backward. */
void fy_model_set_grad_ready(fy_model *m, int (*fn)(void *ctx, size_t lo, size_t hi, int first, fy_err *err),
                             void *ctx);

/* The routed experts rank p owns: [*lo, *hi). */
void fy_model_expert_range(const fy_model *m, int p, int *lo, int *hi);

/* b_i += gamma * sign(mean_load - load_i) per MoE layer, from the loads
 * counted by the forwards since the last call; then resets the counts.
 * With LoRA adapters on (a frozen base) only the reset. */
int fy_model_update_bias(fy_model *m, fy_err *err);

/* The rope op's parameters for a config: plain RoPE, or YaRN's frequencies
 * with attention_factor on cos/sin (docs/DESIGN.md §2). */
fy_rope_params fy_model_rope_params(const fy_config *c);

#endif
