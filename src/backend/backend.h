/* The one interface between models and hardware.
 *
 * A backend owns device buffers and runs the ops a DeepSeek-V3 model needs,
 * each with its backward. It knows nothing of models: no layer, no tensor
 * names, only shapes, strides and buffers. Models call only this header.
 *
 * Conventions (every backend implements them identically):
 * - A buffer is an array of 4-byte elements: float32, or int32 where an op
 *   says "int". Sizes and offsets count elements, never bytes.
 * - A tensor argument is an fy_ref (buffer + element offset). Matrices are
 *   row-major; `ld` is the distance in elements between rows.
 * - Ops are queued and may run asynchronously. They return nothing: a failure
 *   (out of device memory, a kernel launch error) is recorded in the backend
 *   and reported by the next fy_be_sync(), like a sticky CUDA error.
 * - "accumulate" arguments: 0 = overwrite the output, 1 = add into it.
 *   Parameter gradients are always accumulated (the trainer zeroes them).
 * - Ops with a reduction over rows (weight grads, scatter-add) are
 *   deterministic: same inputs give bitwise the same outputs on one backend.
 */
#ifndef FY_BACKEND_H
#define FY_BACKEND_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "core/err.h"
#include "core/rng.h"

typedef struct fy_backend fy_backend;

typedef struct fy_buf {
    fy_backend *be;
    size_t n;      /* elements (4 bytes each) */
    void *handle;  /* backend-private: a host pointer on cpu, cl_mem on opencl */
} fy_buf;

typedef struct fy_ref {
    fy_buf *buf;
    size_t off;    /* elements */
} fy_ref;

static inline fy_ref fy_at(fy_buf *b, size_t off) {
    fy_ref r = {b, off};
    return r;
}
static inline fy_ref fy_add(fy_ref r, size_t off) {
    r.off += off;
    return r;
}
#define FY_NULL_REF ((fy_ref){0, 0})

/* Router settings for fy_be_router_*(); they mirror the HF config keys. */
typedef struct fy_router_opts {
    int n_experts;      /* E: n_routed_experts */
    int top_k;          /* K: num_experts_per_tok */
    int n_group;        /* 1 = no group limit */
    int topk_group;     /* groups kept when n_group > 1 */
    int norm_topk_prob; /* divide chosen weights by their sum */
    float scaling;      /* routed_scaling_factor */
} fy_router_opts;

/* RoPE frequencies (the rope op): plain f_j = theta^(-2j/d_r), or YaRN's
 * blend of f_j (extrapolation) and f_j/factor (interpolation) along a linear
 * ramp over the pair index j. Every backend builds its cos/sin table with
 * fy_rope_table, so all of them rotate by the same float values. */
typedef struct fy_rope_params {
    float theta;
    int yarn;            /* 0: plain RoPE; the fields below are then unused */
    double factor;       /* s > 0: interpolation factor */
    double orig_max_pos; /* context length the ramp's bounds are measured at */
    double beta_fast;    /* rotations at which the ramp starts (extrapolation) */
    double beta_slow;    /* rotations at which it ends (interpolation) */
    int truncate;        /* floor/ceil the ramp's bounds to whole pairs */
    double mul;          /* multiplies cos and sin (YaRN's attention_factor) */
} fy_rope_params;

static inline fy_rope_params fy_rope_plain(float theta) {
    fy_rope_params p = {0};
    p.theta = theta;
    p.mul = 1.0;
    return p;
}
/* freq[j] = f_j for j < d_r/2. */
void fy_rope_freqs(const fy_rope_params *rp, int d_r, double *freq);
/* tab[(t*(d_r/2) + j)*2 + {0, 1}] = mul*cos, mul*sin of (pos0+t)*f_j for
 * t < T, computed in double and rounded once. freq: d_r/2 doubles of scratch. */
void fy_rope_table(const fy_rope_params *rp, int T, int pos0, int d_r, float *tab, double *freq);
int fy_rope_params_equal(const fy_rope_params *a, const fy_rope_params *b);

/* A GEMM whose ABFT check failed (the fault ops below): which GEMM of the
 * step, in which phase, its shape and operands, and the column sums that
 * disagreed. */
typedef struct fy_be_fault {
    int step, gemm_index, trans_a, trans_b, M, N, K, column;
    char phase[16];         /* "forward" or "backward" (fy_be_fault_phase) */
    fy_ref A, B, C;
    double got, want, tol;  /* column sum of C, its expected value, the tolerance */
} fy_be_fault;

/* The vtable every backend fills in. Call through the fy_be_* wrappers. */
typedef struct fy_backend_ops {
    const char *name;
    void (*destroy)(fy_backend *be);
    int (*sync)(fy_backend *be, fy_err *err);

    /* --- memory --- */
    int (*alloc)(fy_backend *be, fy_buf *out, size_t n, fy_err *err); /* zero-filled */
    void (*free)(fy_backend *be, fy_buf *b);
    void (*upload)(fy_backend *be, fy_ref dst, const void *src, size_t n);
    void (*download)(fy_backend *be, void *dst, fy_ref src, size_t n); /* blocking */
    void (*copy)(fy_backend *be, fy_ref dst, fy_ref src, size_t n);
    void (*fill)(fy_backend *be, fy_ref dst, float value, size_t n);

    /* --- elementwise / BLAS-1 --- */
    void (*axpy)(fy_backend *be, size_t n, float alpha, fy_ref x, fy_ref y); /* y += a*x */
    void (*scale)(fy_backend *be, size_t n, float alpha, fy_ref x);          /* x *= a */
    /* Sum of squares of x[0..n), accumulated in double; blocking. */
    double (*sumsq)(fy_backend *be, size_t n, fy_ref x);

    /* Strided 3-D copy: for i<n0, j<n1, k<n2:
     *   dst[i*ds0 + j*ds1 + k] (=|+=) src[i*ss0 + j*ss1 + k]
     * A stride of 0 broadcasts (src) or reduces (dst, with accumulate=1). */
    void (*copy3d)(fy_backend *be, int n0, int n1, int n2,
                   fy_ref dst, size_t ds0, size_t ds1,
                   fy_ref src, size_t ss0, size_t ss1, int accumulate);

    /* --- GEMM (row-major): C = alpha * op(A) @ op(B) + beta * C,
     * op(A) is MxK, op(B) is KxN, C is MxN. trans=1 means the stored
     * matrix is the transpose (A stored KxM, B stored NxK). --- */
    void (*gemm)(fy_backend *be, int trans_a, int trans_b, int M, int N, int K,
                 float alpha, fy_ref A, int lda, fy_ref B, int ldb,
                 float beta, fy_ref C, int ldc);

    /* --- RMSNorm over rows of width D: y = x * w / sqrt(mean(x^2) + eps).
     * Saves rstd[N] = 1/sqrt(mean(x^2)+eps) for the backward. --- */
    void (*rmsnorm_fwd)(fy_backend *be, int N, int D, fy_ref x, int ldx,
                        fy_ref w, float eps, fy_ref y, int ldy, fy_ref rstd);
    /* dx (=|+=) ; dw += (accumulated over rows, deterministically). */
    void (*rmsnorm_bwd)(fy_backend *be, int N, int D, fy_ref x, int ldx,
                        fy_ref w, fy_ref rstd, fy_ref dy, int lddy,
                        fy_ref dx, int lddx, int accumulate_dx, fy_ref dw);

    /* --- RoPE, interleaved pairs, in place. Row n (n < N) holds n_heads
     * vectors of d_r values; vector h starts at x + n*ld + h*head_stride.
     * Position of row n is pos0 + (n % T). Pair j of a vector is
     * (x[2j], x[2j+1]) rotated by angle pos * f_j, and both outputs
     * multiplied by rp->mul (f_j and mul: fy_rope_params, built by
     * fy_rope_table). inverse=1 rotates by -angle: the backward of the
     * forward (the transpose, so mul applies again). --- */
    void (*rope)(fy_backend *be, int N, int T, int pos0, int n_heads, int d_r,
                 fy_ref x, int ld, int head_stride, const fy_rope_params *rp, int inverse);

    /* --- Causal self-attention over B sequences of T tokens, H heads.
     * q, k: [B*T, H, dqk] (row stride H*dqk); v: [B*T, H, dv];
     * out: [B*T, H*dv]; P: [B, H, T, T] softmax probabilities saved for the
     * backward (entries above the diagonal are 0). --- */
    void (*attn_fwd)(fy_backend *be, int B, int T, int H, int dqk, int dv,
                     float scale, fy_ref q, fy_ref k, fy_ref v, fy_ref out, fy_ref P);
    /* Writes (overwrites) grad_q, grad_k, grad_v from dout. */
    void (*attn_bwd)(fy_backend *be, int B, int T, int H, int dqk, int dv,
                     float scale, fy_ref q, fy_ref k, fy_ref v, fy_ref P,
                     fy_ref dout, fy_ref grad_q, fy_ref grad_k, fy_ref grad_v);

    /* --- SwiGLU on rows: h = silu(g) * u, with g, u, h [N, F] and row
     * strides ldg, ldu, ldh. --- */
    void (*swiglu_fwd)(fy_backend *be, int N, int F, fy_ref g, int ldg,
                       fy_ref u, int ldu, fy_ref h, int ldh);
    /* Writes (overwrites) dg, du (same strides as g, u). */
    void (*swiglu_bwd)(fy_backend *be, int N, int F, fy_ref g, int ldg,
                       fy_ref u, int ldu, fy_ref dh, int lddh,
                       fy_ref dg, fy_ref du);

    /* --- DeepSeekMoE router. logits [N, E] (raw W_router x).
     * Writes s = sigmoid(logits) [N, E]; chooses top-K of s + bias[E]
     * (bias may be FY_NULL_REF = zeros), with group limiting when
     * n_group > 1 (group score = sum of its top-2 s+b; the best topk_group
     * groups kept; experts of dropped groups are -inf). Ties go to the lower
     * expert index. Writes idx [N, K] (int, in descending order of s+b) and
     * w [N, K] = chosen s (without bias), divided by their sum when
     * norm_topk_prob, times scaling. --- */
    void (*router_fwd)(fy_backend *be, int N, const fy_router_opts *o,
                       fy_ref logits, fy_ref bias, fy_ref s, fy_ref idx, fy_ref w);
    /* Given dw [N, K] (grad of the loss wrt w), writes dlogits [N, E]
     * (the selection itself has no gradient). accumulate: add into dlogits
     * (the balance loss also contributes). */
    void (*router_bwd)(fy_backend *be, int N, const fy_router_opts *o,
                       fy_ref s, fy_ref idx, fy_ref dw, fy_ref dlogits, int accumulate);

    /* --- Sequence-wise balance loss for B sequences of T tokens:
     * per sequence, f_i = E/(K*T) * #tokens whose idx contains i,
     * P_i = mean_t s_ti / sum_j s_tj; loss = alpha * mean_b sum_i f_i P_i.
     * fwd returns the loss (blocking). bwd adds d(loss)/d(logits) * dloss
     * into dlogits (f is treated as a constant). --- */
    float (*balance_fwd)(fy_backend *be, int B, int T, int E, int K, float alpha,
                         fy_ref s, fy_ref idx);
    void (*balance_bwd)(fy_backend *be, int B, int T, int E, int K, float alpha,
                        float dloss, fy_ref s, fy_ref idx, fy_ref dlogits);

    /* --- Row gather / scatter (experts, embeddings). idx is int.
     * gather: dst[i, :] = src[idx[i], :] * (w ? w[i] : 1), i < n, width D.
     * scatter_add: dst[idx[i], :] += src[i, :] * (w ? w[i] : 1); repeated
     * indices allowed; deterministic (in order of i). --- */
    void (*gather_rows)(fy_backend *be, int n, int D, fy_ref src, int lds,
                        fy_ref idx, fy_ref w, fy_ref dst, int ldd);
    void (*scatter_add_rows)(fy_backend *be, int n, int D, fy_ref src, int lds,
                             fy_ref idx, fy_ref w, fy_ref dst, int ldd);
    /* out[i] (=|+=) dot(a[ia[i], :], b[i, :]) over width D; ia is int. */
    void (*rows_dot)(fy_backend *be, int n, int D, fy_ref a, int lda, fy_ref ia,
                     fy_ref b, int ldb, fy_ref out, int accumulate);

    /* --- Softmax cross-entropy over rows of logits [N, V].
     * targets int [N]; rows whose target == ignore_index give loss 0 and
     * zero gradient. Writes losses[N] (per-row -log p_target) and
     * dlogits = (softmax - onehot) * grad_scale (dlogits may alias logits).
     * Returns the sum of losses over non-ignored rows (blocking). --- */
    double (*xent_fwdbwd)(fy_backend *be, int N, int V, fy_ref logits,
                          fy_ref targets, int ignore_index, float grad_scale,
                          fy_ref losses, fy_ref dlogits);

    /* --- Dropout with a counter-based mask (LoRA's dropout on an adapter's
     * input; its backward is the same call on the gradient): for i < n, j < D
     *   dst[i*ldd + j] (=|+=) src[i*lds + j] * (u < p ? 0 : 1 / (1 - p))
     *   u = fy_rng_uniform(seed, stream, (key0 + (keys ? keys[i] : i)) * D + j)
     * with the scale rounded to float once, 1.0f / (1.0f - p). keys: a host
     * array, read before the call returns. The mask is a function of (seed,
     * stream, row key, j) alone, so a row gets the same mask on every
     * backend, thread count, batch split and rank. 0 <= p < 1. Optional:
     * NULL makes the common layer do it on the host (download, mask,
     * upload). --- */
    void (*dropout)(fy_backend *be, int n, int D, float p, uint64_t seed, uint64_t stream, int64_t key0,
                    const int32_t *keys, fy_ref src, int lds, fy_ref dst, int ldd, int accumulate);

    /* --- AdamW on n elements (decoupled weight decay):
     *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
     *   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
     * t is the 1-based step. g is scaled by grad_scale first (clipping). --- */
    void (*adamw)(fy_backend *be, size_t n, fy_ref p, fy_ref g, fy_ref m, fy_ref v,
                  float lr, float b1, float b2, float eps, float wd, int t,
                  float grad_scale);

    /* --- MLA decode attention of one new token in the latent space, with
     * kv_b_proj absorbed into the query and output sides (docs/DESIGN.md §2), against
     * a cache of S positions shared by all H heads. Head h's query is
     * [q_nope (dn) | q_pe (dr)] at q + h*ldq; wkv_b is kv_b_proj's weight
     * [H*(dn+dv), r], head h's W_kb its rows [h(dn+dv), h(dn+dv)+dn) and
     * W_vb the dv rows after them:
     *   q_lat[h]    = q_nope[h] @ W_kb[h]                            [r]
     *   score[h, s] = scale * (q_lat[h] . ckv[s] + q_pe[h] . kpe[s])
     *   o_lat[h]    = sum_s softmax_s(score[h]) * ckv[s]              [r]
     *   out[h]      = W_vb[h] @ o_lat[h]                              [dv]
     * out: [H*dv] (head h at h*dv); ckv: [S, r] with row stride ld_ckv;
     * kpe: [S, dr] with row stride ld_kpe. One call does the whole
     * attention so a backend can keep each head on one core (or work-group)
     * from query to output. Inference only: no backward. --- */
    void (*mla_decode)(fy_backend *be, int H, int S, int r, int dn, int dr, int dv, float scale,
                       fy_ref q, int ldq, fy_ref wkv_b, fy_ref ckv, int ld_ckv,
                       fy_ref kpe, int ld_kpe, fy_ref out);

    /* --- Q8_0 inference weights (fy_q8_quantize below): y[N, out] (=|+=)
     * x[N, in] @ W^T for W [out, in] held as int8 quants wq (packed four to
     * an element, row-major [out, in/4] elements) and one float scale per
     * 32 consecutive weights of a row, ws [out, in/32]:
     *   W[o, i] = ws[o, i/32] * wq[o, i]
     * Each row of x is first quantized the same way (fy_q8_quantize) and a
     * block's dot product is exact in integers: y[n, o] = sum_b
     * ws[o, b] sx[n, b] sum_{i in b} wq[o, i] xq[n, i] (llama.cpp's Q8_0 x
     * Q8_0). in must be a multiple of 32. Inference only: no backward. --- */
    void (*linear_q8)(fy_backend *be, int N, int in, int out, fy_ref x, int ldx,
                      fy_ref wq, fy_ref ws, fy_ref y, int ldy, int accumulate);

    /* --- Q4_0 inference weights (fy_q4_quantize below): as linear_q8, but
     * W[o, i] = ws[o, i/32] * (n[o, i] - 8) with n a 4-bit code. wq holds
     * each row's blocks in GGUF's Q4_0 order: 16 bytes per block of 32
     * (row-major [out, in/32] blocks, byte (o*in/32 + b)*16 + j of wq, four
     * bytes to an element), the low nibble of byte j weight j of the block,
     * the high nibble weight j + 16. Each row of x is quantized as Q8_0
     * (fy_q8_quantize) and a block's dot product is exact in integers:
     * y[n, o] = sum_b ws[o, b] sx[n, b] sum_{i in b} (n[o, i] - 8) xq[n, i]
     * (llama.cpp's Q4_0 x Q8_0): the bits linear_q8 gives for int8 quants
     * n - 8 and the same scales, on every ISA. in must be a multiple of 32.
     * Inference only: no backward. --- */
    void (*linear_q4)(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref wq, fy_ref ws,
                      fy_ref y, int ldy, int accumulate);

    /* --- 16-bit inference weights: y[N, out] (=|+=) x[N, in] @ W^T, W [out,
     * in] held as IEEE half (fmt FY_H16_F16) or bfloat16 (FY_H16_BF16), two
     * to an element (weight 2k in the low 16 bits of element k of the row's
     * in/2, little-endian: a uint16_t array). x stays f32; each weight is
     * widened exactly (core/half.h) and y[n, o] is linear_rows' dot product
     * of x's row and the widened row, in linear_rows' order: the bits equal
     * linear_rows on the widened matrix, whatever N, the ISA or the thread
     * count. in must be even. Inference only: no backward. --- */
    void (*linear_h16)(fy_backend *be, int fmt, int N, int in, int out, fy_ref x, int ldx, fy_ref w,
                       fy_ref y, int ldy, int accumulate);

    /* --- Batch-invariant linear (serving): y[N, out] (=|+=) x[N, in] @ W^T,
     * W [out, in] with row stride ldw. Row n of y is bitwise the same
     * function of row n of x and of W whatever N is and whatever the other
     * rows hold, so a request's tokens do not depend on the requests that
     * share its batch (docs/SERVING.md). gemm does not promise this: OpenBLAS
     * picks its kernels by shape. Each y[n, o] is one dot product of x's row
     * and W's row in an order fixed by `in` alone. Optional: NULL makes the
     * common layer run it as one M = 1 gemm per row (invariant, slow).
     * Inference only: no backward. --- */
    void (*linear_rows)(fy_backend *be, int N, int in, int out, fy_ref x, int ldx, fy_ref w, int ldw,
                        fy_ref y, int ldy, int accumulate);

    /* --- MLA attention of n query rows against a paged latent cache
     * (serving). Row i is one mla_decode (above): its H heads' query at
     * q + i*ldq, its output [H*dv] at out + i*ldo, attending positions
     * [0, len[i]) of its own sequence, whose position s lives in pool row
     *   blocks[tab[i] + s / bs] * bs + s % bs
     * of ckv [rows, r] and kpe [rows, dr] (dense rows). len, tab and blocks
     * are host int arrays, read before the call returns. Row i's output is
     * bitwise what mla_decode gives for the same query against the same
     * positions laid out contiguously, so rows are independent of each
     * other (batch invariance). Optional: NULL makes the model gather each
     * sequence's positions and call mla_decode. Inference only. --- */
    void (*mla_paged)(fy_backend *be, int n, int H, int r, int dn, int dr, int dv, float scale, fy_ref q,
                      int ldq, fy_ref wkv_b, fy_ref ckv, fy_ref kpe, int bs, const int32_t *blocks,
                      const int32_t *tab, const int32_t *len, fy_ref out, int ldo);

    /* --- Q8_0 SwiGLU of one token (decode), Wg, Wu [F, d] and Wd [d, F] in
     * linear_q8's format (quants *q, scales *s):
     *   g = x Wg^T, u = x Wu^T, h = silu(g) * u      (g, u, h: [F], written)
     *   y (=|+=) h Wd^T                              [d]
     * the same bits as linear_q8, linear_q8, swiglu_fwd, linear_q8 in turn,
     * in one call so that a backend can run it as one parallel pass (decode
     * runs ~3 of these a layer; each op was a fork and a join). d and F
     * multiples of 32. Optional: NULL where a backend lacks it (the model
     * then makes the four calls). Inference only: no backward. --- */
    void (*swiglu_q8)(fy_backend *be, int d, int F, fy_ref x, fy_ref gq, fy_ref gs, fy_ref uq,
                      fy_ref us, fy_ref dq, fy_ref ds, fy_ref g, fy_ref u, fy_ref h, fy_ref y,
                      int accumulate);

    /* --- Memory advice (optional, NULL: none; kept after the required ops):
     * only scattered ranges of b will ever be written (a block of which most
     * is never filled), so memory granted in large units on first touch (the
     * cpu's huge pages) would be mostly waste. Call it before writing b; the
     * contents stay as they are. --- */
    void (*sparse)(fy_backend *be, fy_buf *b);

    /* --- Weights in an inference format back to f32 (optional, NULL: none;
     * kept after the required ops): dst[i, :] = W[r, :] for r = idx[i] (idx
     * int [n]) or r = i (idx FY_NULL_REF), i < n, W [rows, in] in format fmt
     * (FY_WF_*): for FY_WF_Q8_0 / FY_WF_Q4_0 quants wq and scales ws as
     * linear_q8 / linear_q4 hold them, each weight the float product
     * ws[r, b] * q (q the int8 quant, or the 4-bit code - 8); for FY_WF_F16 /
     * FY_WF_BF16 wq as linear_h16's w (ws unused), each weight widened
     * exactly. The same bits on every backend. An idx outside [0, rows)
     * is a sticky error. For an embedding table held quantized and for
     * frozen quantized weights that a training step uses in f32. --- */
    void (*dequant_rows)(fy_backend *be, int fmt, int rows, int in, fy_ref wq, fy_ref ws, int n, fy_ref idx,
                         fy_ref dst, int ldd);

    /* --- Host memory as a buffer (optional, NULL: fy_be_adopt copies it):
     * *out holds the n elements at host without a copy, read-only (no op
     * may write it: weights); release(ctx) runs when *out is freed, and
     * not before. host is 64-byte aligned (fy_be_adopt checks). For
     * weights mapped from a file in their final format. --- */
    int (*adopt)(fy_backend *be, fy_buf *out, const void *host, size_t n, void (*release)(void *ctx), void *ctx,
                 fy_err *err);

    /* --- Fault checking (optional: NULL in a backend that does not check,
     * such as cpu and opencl; chaos:INNER checks). Call through
     * fy_be_fault_*() below. begin_step starts a step: resets the GEMM
     * counter and the recorded fault, sets the fraction of GEMMs
     * ABFT-checked, and arms corruption of GEMM number corrupt_index of the
     * step (-1: none). phase names what runs next, for fault reports. take
     * gives the first fault since begin_step (1) or none (0), and clears it.
     * counts: GEMMs checked and faults found since creation. --- */
    void (*fault_begin_step)(fy_backend *be, int step, double fraction, int corrupt_index);
    void (*fault_phase)(fy_backend *be, const char *phase);
    int (*fault_take)(fy_backend *be, fy_be_fault *f);
    void (*fault_counts)(const fy_backend *be, long *checked, long *faults);
} fy_backend_ops;

/* Q8_0 (the GGUF block format with a float scale): each block of 32
 * consecutive weights of a row gets scale d = max|w| / 127 and quants
 * q = round-half-to-even(w * (1/d)), so |q| <= 127 and |w - d q| <= d / 2
 * (d = 0, q = 0 for an all-zero block). w is [rows, in] with row stride ldw,
 * in a multiple of 32; q gets rows * in bytes, s rows * in/32 floats.
 * Host memory: models quantize once, then upload q and s. */
#define FY_Q8_BLOCK 32

/* The dropout op's factor for element (row key k, column j) of rows of
 * width D: 0 (dropped) or scale = 1.0f / (1.0f - p); rkey is
 * fy_rng_key(seed, stream), so u is fy_rng_uniform(seed, stream, k*D + j).
 * Every implementation uses this, so all give the same bits. */
static inline float fy_dropout_factor(uint64_t rkey, uint64_t k, int D, int j, float p, float scale) {
    float u = (float)(fy_rng_mix(rkey ^ (k * (uint64_t)D + (uint64_t)j)) >> 40) * (1.0f / 16777216.0f);
    return u < p ? 0.0f : scale;
}
/* One row of the dropout op on host memory: d[j] (+)= s[j] * factor(k, j).
 * The cpu kernel and the host fallback both run it. */
static inline void fy_dropout_row(uint64_t rkey, uint64_t k, int D, float p, float scale, const float *s, float *d,
                                  int accumulate) {
    for (int j = 0; j < D; j++) {
        float v = s[j] * fy_dropout_factor(rkey, k, D, j, p, scale);
        d[j] = accumulate ? d[j] + v : v;
    }
}
void fy_q8_quantize(const float *w, int rows, int in, int ldw, int8_t *q, float *s);
/* Q8_0 exactly as GGUF stores it (ggml's quantize_row_q8_0_ref): d =
 * max|w| / 127 rounded to IEEE half (s keeps the half's value as a float),
 * quants roundf(w * (1/d)) (half away from zero) with 1/d from the
 * unrounded d. Not fy_q8_quantize's bits (float scale, half to even): for
 * weights that must equal llama.cpp's, as a token embedding that
 * dequant_rows reads back (model/decode.h) and the GGUF export. */
void fy_q8_quantize_gguf(const float *w, int rows, int in, int ldw, int8_t *q, float *s);
/* Q4_0 as GGUF stores it (ggml's quantize_row_q4_0_ref): per block of 32,
 * d = m / -8 with m the element of largest magnitude (the first such),
 * rounded to IEEE half (the scale s keeps the half's value as a float, so
 * a GGUF export of these weights holds exactly them), codes min(15,
 * (int)(w * (1/d) + 8.5)) with 1/d from the unrounded d, as ggml does.
 * q gets rows * in / 2 bytes in linear_q4's order, s rows * in/32 floats. */
void fy_q4_quantize(const float *w, int rows, int in, int ldw, uint8_t *q, float *s);
/* 16-bit weight formats of linear_h16. */
enum { FY_H16_F16 = 0, FY_H16_BF16 = 1 };
/* Weight formats of dequant_rows: the two 16-bit ones, Q8_0 and Q4_0. */
enum { FY_WF_F16 = FY_H16_F16, FY_WF_BF16 = FY_H16_BF16, FY_WF_Q8_0 = 2, FY_WF_Q4_0 = 3 };
/* n floats to fmt (round to nearest even, core/half.h). */
void fy_h16_convert(const float *w, size_t n, int fmt, uint16_t *out);

struct fy_backend {
    /* What callers call: the common argument checks of backend_check.c,
     * which record a sticky error for a bad call and otherwise pass it on
     * to impl_ops. Ops that have no common check are impl_ops' own. */
    const fy_backend_ops *ops;
    void *impl;                /* backend-private state */
    char err_msg[512];         /* first sticky error since the last sync */
    int failed;
    const fy_backend_ops *impl_ops; /* the backend's own ops: arguments already checked */
    fy_backend_ops checked;         /* the table ops points to */
};

/* --- Creating backends --- */
/* Options fixed when a backend is created. A zeroed struct (or NULL) gives
 * the defaults; each field concerns one backend and the others ignore it.
 * The library reads no environment: the CLI fills these (src/cli/env.c). */
enum { FY_CPU_Q8_BEST = 0, FY_CPU_Q8_PORTABLE = 1, FY_CPU_Q8_AVX2 = 2 };
enum { FY_OPENCL_GEMM_AUTO = 0, FY_OPENCL_GEMM_TILED = 1, FY_OPENCL_GEMM_REG = 2 };
typedef struct fy_backend_opts {
    /* chaos: "OP:EPS" with OP rmsnorm, swiglu or attn and |EPS| < 1: every
     * forward output of OP is multiplied by (1 + EPS), a deliberately wrong
     * kernel that `ferry verify` must catch. NULL or "" (default): none. A
     * malformed value fails the creation. */
    const char *perturb;
    /* cpu: the Q8_0 kernel of linear_q8 / swiglu_q8. FY_CPU_Q8_BEST
     * (default): the best this CPU runs; FY_CPU_Q8_PORTABLE: the portable
     * one (and the scalar input quantizer); FY_CPU_Q8_AVX2: AVX2 where the
     * CPU has it, else the best. All give the same bits. */
    int cpu_q8;
    /* cpu: linear_rows / linear_h16 with at least this many x rows take the
     * many-row kernel (cpu_gemm.c) where the CPU has AVX2 or AVX-512. 0
     * (default): the count measured for the CPU's kernel family; < 0:
     * never. All give the same bits (a knob for tests and benchmarks). */
    int cpu_gemm_rows;
    /* opencl: the GEMM kernel family. FY_OPENCL_GEMM_AUTO (default):
     * register-blocked on CPU devices, tiled with local memory otherwise;
     * FY_OPENCL_GEMM_TILED / FY_OPENCL_GEMM_REG force one. */
    int opencl_gemm;
} fy_backend_opts;

/* spec: "cpu", "chaos", "chaos:INNER", "opencl", "opencl:P:D". Unknown or
 * unavailable backends are an error naming what is available (this version
 * has no CUDA backend: "cuda" is such an error). opts may be NULL. */
int fy_backend_create_opts(const char *spec, const fy_backend_opts *opts, fy_backend **out, fy_err *err);
/* fy_backend_create_opts with the default options. */
int fy_backend_create(const char *spec, fy_backend **out, fy_err *err);
void fy_backend_destroy(fy_backend *be);
/* fy_backend_create("cpu", ...). */
int fy_backend_cpu_create(fy_backend **out, fy_err *err);
/* For backend implementations: the backend of spec without the common
 * checks (be->ops is its own table). chaos wraps such an inner backend and
 * calls its ops after the checks ran on the wrapper. */
int fy_backend_create_unchecked(const char *spec, const fy_backend_opts *opts, fy_backend **out,
                                fy_err *err);
/* For backend implementations: whether r can serve `need` elements from
 * its offset; if not, records a sticky error "NAME op: arg is a null
 * buffer" or "... out of bounds ..." (NAME the backend's) and returns 0. */
int fy_be_ref_ok(fy_backend *be, fy_ref r, size_t need, const char *op, const char *arg);
/* Writes the devices this build can use to out, one line each, as
 * "SPEC  description (memory, compute units)" with SPEC a string that
 * fy_backend_create() accepts. Backends whose runtime is missing are listed
 * with the reason. For `ferry devices`. */
int fy_backend_list_devices(FILE *out, fy_err *err);

/* Records a sticky error (first one wins); for backend implementations. */
void fy_be_set_error(fy_backend *be, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The end of a backend's sync: moves the sticky error, if any, into err and
 * clears it; 0 when there was none, else -1. */
int fy_be_take_error(fy_backend *be, fy_err *err);

/* --- Thin wrappers, so model code reads as math. --- */
static inline int fy_be_sync(fy_backend *be, fy_err *err) { return be->ops->sync(be, err); }
static inline int fy_be_alloc(fy_backend *be, fy_buf *out, size_t n, fy_err *err) {
    return be->ops->alloc(be, out, n, err);
}
static inline void fy_be_free(fy_backend *be, fy_buf *b) { be->ops->free(be, b); }
/* *out = the n elements (4 bytes each) at host, read-only: the backend's
 * adopt where it has one and host is 64-byte aligned (no copy; release(ctx)
 * when *out is freed), else a fresh buffer with host copied in (release(ctx)
 * once the copy is done). On failure nothing is released: ctx is still the
 * caller's. */
int fy_be_adopt(fy_backend *be, fy_buf *out, const void *host, size_t n, void (*release)(void *ctx), void *ctx,
                fy_err *err);

/* --- Fault checking (the optional fault ops; backend.c). A backend without
 * them checks nothing: begin_step returns 0, take finds no fault. --- */
/* 1 when be checks GEMMs (ABFT) and can corrupt one on request. */
int fy_be_fault_checks(const fy_backend *be);
/* Starts a step (see fault_begin_step); returns fy_be_fault_checks(be). */
int fy_be_fault_begin_step(fy_backend *be, int step, double fraction, int corrupt_index);
void fy_be_fault_phase(fy_backend *be, const char *phase);
/* 1 and the first fault since fy_be_fault_begin_step, if any; clears it. */
int fy_be_fault_take(fy_backend *be, fy_be_fault *f);
/* GEMMs checked and faults found since creation (0 and 0 without checks). */
void fy_be_fault_counts(const fy_backend *be, long *checked, long *faults);

#endif
