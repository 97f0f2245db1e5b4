/* A LoRA run's frozen base held in a smaller format (model/lora_qbase.h):
 * which matrices, converting them, and widening one back for a pass.
 *
 * Why whole matrices: a pass multiplies by W (forward, y = x W^T) and by W
 * again in the backward (dx = dy W). Widening all of W into one scratch
 * and calling the same gemm, with the same shapes and strides, as the f32
 * path gives its bits exactly; splitting W into row chunks would split the
 * backward's reduction over W's rows (dx = sum of chunk products), which
 * rounds differently. The scratch is the largest held matrix (the head,
 * usually the largest, stays f32, as QLoRA keeps lm_head). The scratch
 * remembers the matrix it holds, so two uses in a row (a layer's forward
 * linear, then its backward) widen once.
 *
 * Why not the backend's quantized linears (linear_q8, as generate uses):
 * they quantize the activations too, which is not the f32 forward on the
 * rounded W, and their backward would not be its gradient; QLoRA likewise
 * widens its 4-bit weights to 16 bits and multiplies in 16 bits. */
#include "model/lora_qbase.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"

struct fy_lora_qbase {
    fy_quant q;
    int fmt;                     /* FY_WF_*: dequant_rows' name of q */
    int n;                       /* held matrices */
    size_t *w_off;               /* [n] their params offsets, sorted */
    size_t *q_off, *s_off;       /* [n] their quants and scales in buf */
    int *rows, *in;              /* [n] their shapes */
    fy_buf buf;                  /* the quants and scales */
    fy_buf scratch;              /* one matrix widened to f32 */
    size_t cached;               /* the matrix scratch holds (SIZE_MAX: none) */
};

/* Bits per weight, whether a scale per 32 follows, the block rows split into. */
static int fmt_of(fy_quant q, int *bits, int *scaled, int *block) {
    switch (q) {
    case FY_QUANT_Q8_0: *bits = 8, *scaled = 1, *block = FY_Q8_BLOCK; return FY_WF_Q8_0;
    case FY_QUANT_Q4_0: *bits = 4, *scaled = 1, *block = FY_Q8_BLOCK; return FY_WF_Q4_0;
    case FY_QUANT_F16: *bits = 16, *scaled = 0, *block = 2; return FY_WF_F16;
    case FY_QUANT_BF16: *bits = 16, *scaled = 0, *block = 2; return FY_WF_BF16;
    default: return -1;
    }
}

/* The held slot of params offset w, or -1 (binary search: w_off is sorted). */
static int slot_of(const struct fy_lora_qbase *qb, size_t w) {
    int lo = 0, hi = qb->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (qb->w_off[mid] < w) lo = mid + 1;
        else hi = mid;
    }
    return lo < qb->n && qb->w_off[lo] == w ? lo : -1;
}

fy_quant fy_model_lora_base_format(const fy_model *m) {
    return m->lora && m->lora->qb ? m->lora->qb->q : FY_QUANT_F32;
}

int fy_model_lora_base_held(const fy_model *m, size_t w) {
    return m->lora && m->lora->qb && slot_of(m->lora->qb, w) >= 0;
}

static void qbase_release(fy_backend *be, struct fy_lora_qbase *qb) {
    if (!qb) return;
    if (qb->buf.handle) fy_be_free(be, &qb->buf);
    if (qb->scratch.handle) fy_be_free(be, &qb->scratch);
    free(qb->w_off);
    free(qb->q_off);
    free(qb->s_off);
    free(qb->rows);
    free(qb->in);
    free(qb);
}

void fy__lora_qbase_free(fy_model *m) {
    if (!m->lora) return;
    qbase_release(m->be, m->lora->qb);
    m->lora->qb = NULL;
}

/* 1 when base tensor t is a decoder linear: a matrix that is neither the
 * embedding, the head nor a router. */
static int decoder_linear(const fy_model *m, const fy_tensor_info *t) {
    const fy_param_table *b = BT(m);
    if (t->is_buffer || t->ndim != 2 || t->off == b->embed || t->off == b->head) return 0;
    for (int li = 0; li < b->n_layers; li++)
        if (b->layer[li].moe && t->off == b->layer[li].router) return 0;
    return 1;
}

static int by_off(const void *a, const void *b) {
    size_t x = (*(const fy_tensor_info *const *)a)->off, y = (*(const fy_tensor_info *const *)b)->off;
    return x < y ? -1 : x > y;
}

/* Lays out the held matrices in offset order (the table lists the routed
 * experts' region last) and allocates buf and the scratch; nothing is
 * encoded yet. */
static int plan(fy_model *m, struct fy_lora_qbase *qb, int bits, int scaled, int block, fy_err *err) {
    const fy_param_table *b = BT(m);
    size_t n = (size_t)b->n, total = 0, biggest = 0;
    const fy_tensor_info **held = malloc(n * sizeof *held);
    qb->w_off = malloc(n * sizeof *qb->w_off);
    qb->q_off = malloc(n * sizeof *qb->q_off);
    qb->s_off = malloc(n * sizeof *qb->s_off);
    qb->rows = malloc(n * sizeof *qb->rows);
    qb->in = malloc(n * sizeof *qb->in);
    if (!held || !qb->w_off || !qb->q_off || !qb->s_off || !qb->rows || !qb->in) {
        free(held);
        return fy_fail(err, "out of memory");
    }
    for (int i = 0; i < b->n; i++)
        if (decoder_linear(m, &b->t[i]) && b->t[i].shape[1] % block == 0) held[qb->n++] = &b->t[i];
    qsort(held, qb->n, sizeof *held, by_off);
    for (int k = 0; k < qb->n; k++) {
        const fy_tensor_info *t = held[k];
        qb->w_off[k] = t->off;
        qb->rows[k] = t->shape[0];
        qb->in[k] = t->shape[1];
        qb->q_off[k] = total;
        total += fy_params_round16(t->n * (size_t)bits / 32);
        qb->s_off[k] = scaled ? total : qb->q_off[k]; /* h16: no scales (dequant_rows ignores ws) */
        if (scaled) total += fy_params_round16(t->n / FY_Q8_BLOCK);
        if (t->n > biggest) biggest = t->n;
    }
    free(held);
    if (!qb->n) return fy_fail(err, "no linear of this model splits into %s blocks", fy_quant_name(qb->q));
    if (fy_be_alloc(m->be, &qb->buf, total, err) || fy_be_alloc(m->be, &qb->scratch, biggest, err))
        return fy_wrap(err, "%s base weights (%zu bytes) and their f32 scratch (%zu bytes)", fy_quant_name(qb->q),
                       total * 4, biggest * 4);
    return 0;
}

/* Slot k's matrix (host floats w) into buf in the format. */
static void encode(fy_model *m, struct fy_lora_qbase *qb, int k, const float *w, void *hq, float *hs, int bits,
                   int scaled) {
    size_t n = (size_t)qb->rows[k] * qb->in[k];
    switch (qb->q) {
    case FY_QUANT_Q8_0: fy_q8_quantize(w, qb->rows[k], qb->in[k], qb->in[k], hq, hs); break;
    case FY_QUANT_Q4_0: fy_q4_quantize(w, qb->rows[k], qb->in[k], qb->in[k], hq, hs); break;
    default: fy_h16_convert(w, n, qb->fmt, hq); break;
    }
    OPS->upload(m->be, fy_at(&qb->buf, qb->q_off[k]), hq, n * (size_t)bits / 32);
    if (scaled) OPS->upload(m->be, fy_at(&qb->buf, qb->s_off[k]), hs, n / FY_Q8_BLOCK);
}

/* Encodes every held matrix and moves the rest of the base into a fresh
 * params block whose held ranges are never written (the backend's sparse
 * advice: on cpu they never become resident), then frees the old block. */
static int convert(fy_model *m, struct fy_lora_qbase *qb, int bits, int scaled, fy_buf *fresh, fy_err *err) {
    fy_lora *L = m->lora;
    size_t biggest = qb->scratch.n;
    float *host = malloc(biggest * sizeof *host);
    void *hq = malloc(biggest * (size_t)bits / 8 + 1);
    float *hs = malloc((biggest / FY_Q8_BLOCK + 1) * sizeof *hs);
    int rc = 0;
    if (!host || !hq || !hs) rc = fy_fail(err, "out of memory quantizing the LoRA base");
    if (!rc && fy_be_alloc(m->be, fresh, L->base_params.n, err)) rc = -1;
    if (!rc && OPS->sparse) OPS->sparse(m->be, fresh);
    for (int i = 0; !rc && i < L->base_tab.n; i++) {
        const fy_tensor_info *t = &L->base_tab.t[i];
        if (t->is_buffer) continue;
        int k = slot_of(qb, t->off);
        if (k < 0) {
            OPS->copy(m->be, fy_at(fresh, t->off), fy_at(&L->base_params, t->off), t->n);
            continue;
        }
        OPS->download(m->be, host, fy_at(&L->base_params, t->off), t->n);
        encode(m, qb, k, host, hq, hs, bits, scaled);
        rc = fy_be_sync(m->be, err); /* the staging is reused for the next matrix */
    }
    if (!rc) rc = fy_be_sync(m->be, err);
    free(host);
    free(hq);
    free(hs);
    return rc;
}

int fy_model_lora_quantize_base(fy_model *m, fy_quant q, fy_err *err) {
    fy_lora *L = m->lora;
    if (q == FY_QUANT_F32) return 0;
    if (!L) return fy_fail(err, "a quantized base needs LoRA adapters on");
    if (L->qb) return fy_fail(err, "the LoRA base is already held as %s", fy_quant_name(L->qb->q));
    if (!OPS->dequant_rows)
        return fy_fail(err, "backend %s has no dequant_rows: use --base-weights f32", OPS->name);
    int bits, scaled, block;
    struct fy_lora_qbase *qb = calloc(1, sizeof *qb);
    if (!qb) return fy_fail(err, "out of memory");
    qb->q = q;
    qb->cached = SIZE_MAX;
    qb->fmt = fmt_of(q, &bits, &scaled, &block);
    fy_buf fresh = {0};
    if (qb->fmt < 0 || plan(m, qb, bits, scaled, block, err) || convert(m, qb, bits, scaled, &fresh, err)) {
        if (qb->fmt < 0) fy_fail(err, "unknown base weight format %d", (int)q);
        if (fresh.handle) fy_be_free(m->be, &fresh);
        qbase_release(m->be, qb);
        return fy_wrap(err, "holding the LoRA base as %s", fy_quant_name(q));
    }
    fy_be_free(m->be, &L->base_params);
    L->base_params = fresh;
    L->qb = qb;
    return 0;
}

fy_ref fy__lora_base_w(fy_model *m, size_t w) {
    struct fy_lora_qbase *qb = m->lora ? m->lora->qb : NULL;
    int k = qb ? slot_of(qb, w) : -1;
    if (k < 0) return PW(m, w);
    if (qb->cached != w) {
        OPS->dequant_rows(m->be, qb->fmt, qb->rows[k], qb->in[k], fy_at(&qb->buf, qb->q_off[k]),
                          fy_at(&qb->buf, qb->s_off[k]), qb->rows[k], FY_NULL_REF, fy_at(&qb->scratch, 0),
                          qb->in[k]);
        qb->cached = w;
    }
    return fy_at(&qb->scratch, 0);
}
