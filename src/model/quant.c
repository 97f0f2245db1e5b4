/* The quantized copy of the decode weights (model/decode.h:
 * fy_model_set_decode_quant) in each format, and its lookup for the batch
 * step's linears (layer.c). Reads the params, never writes them; loading for
 * inference (fy_model_plan_inference) fills the copy from the loader's
 * floats instead, so the params of its matrices are never written at all. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/checksum.h"
#include "model/decode.h"
#include "model/model_impl.h"

/* The slot of the matrix at params offset w, or -1. */
static int slot_of(const fy_model *m, size_t w) {
    const struct fy_decode_quant *dq = &m->dq;
    int lo = 0, hi = dq->n; /* binary search: w_off is sorted */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (dq->w_off[mid] < w) lo = mid + 1;
        else hi = mid;
    }
    return lo < dq->n && dq->w_off[lo] == w ? lo : -1;
}

int fy__dq_lookup(fy_model *m, size_t w, fy_ref *q, fy_ref *s) {
    int i = m->dq.on ? slot_of(m, w) : -1;
    if (i < 0) return 0;
    *q = fy_at(&m->dq.buf, m->dq.q_off[i]);
    *s = fy_at(&m->dq.buf, m->dq.s_off[i]);
    return 1;
}

/* Each format: its names, its bytes per weight (quants) and scales per
 * block, the block its rows must split into, and the op it needs. */
static const struct qfmt {
    fy_quant q;
    const char *name, *alias, *op;
    int bits, scaled, block, wf; /* wf: dequant_rows's FY_WF_ */
} QFMT[] = {
    {FY_QUANT_F32, "f32", NULL, NULL, 32, 0, 1, -1},
    {FY_QUANT_Q8_0, "q8_0", "q8", "linear_q8", 8, 1, FY_Q8_BLOCK, FY_WF_Q8_0},
    {FY_QUANT_Q4_0, "q4_0", "q4", "linear_q4", 4, 1, FY_Q8_BLOCK, FY_WF_Q4_0},
    {FY_QUANT_F16, "f16", NULL, "linear_h16", 16, 0, 2, FY_WF_F16},
    {FY_QUANT_BF16, "bf16", NULL, "linear_h16", 16, 0, 2, FY_WF_BF16},
};
#define N_QFMT (int)(sizeof QFMT / sizeof QFMT[0])

static const struct qfmt *qfmt_of(fy_quant q) {
    for (int i = 0; i < N_QFMT; i++)
        if (QFMT[i].q == q) return &QFMT[i];
    return &QFMT[0];
}

int fy_quant_parse(const char *s, fy_quant *out, fy_err *err) {
    for (int i = 0; i < N_QFMT; i++)
        if (!strcmp(s, QFMT[i].name) || (QFMT[i].alias && !strcmp(s, QFMT[i].alias))) {
            *out = QFMT[i].q;
            return 0;
        }
    return fy_fail(err, "unknown weight format \"%s\" (known: f32, bf16, f16, q8_0, q4_0)", s);
}

const char *fy_quant_name(fy_quant q) { return qfmt_of(q)->name; }

static int qfmt_has_op(const fy_model *m, fy_quant q) {
    switch (q) {
    case FY_QUANT_Q8_0: return OPS->linear_q8 != NULL;
    case FY_QUANT_Q4_0: return OPS->linear_q4 != NULL;
    case FY_QUANT_F16:
    case FY_QUANT_BF16: return OPS->linear_h16 != NULL;
    default: return 1;
    }
}

void fy__dq_linear(fy_model *m, int N, int in, int out, fy_ref x, int ldx, fy_ref q, fy_ref s, fy_ref y, int ldy,
                   int accumulate) {
    switch ((fy_quant)m->dq.kind) {
    case FY_QUANT_Q8_0: OPS->linear_q8(m->be, N, in, out, x, ldx, q, s, y, ldy, accumulate); break;
    case FY_QUANT_Q4_0: OPS->linear_q4(m->be, N, in, out, x, ldx, q, s, y, ldy, accumulate); break;
    case FY_QUANT_F16:
        OPS->linear_h16(m->be, FY_H16_F16, N, in, out, x, ldx, q, y, ldy, accumulate);
        break;
    case FY_QUANT_BF16:
        OPS->linear_h16(m->be, FY_H16_BF16, N, in, out, x, ldx, q, y, ldy, accumulate);
        break;
    default: assert(!"fy__dq_linear without a quantized copy");
    }
}

/* One matrix [rows, in] (host floats) into the format: quants to hq (bytes),
 * scales to hs. */
static void qfmt_encode(fy_quant q, const float *w, int rows, int in, void *hq, float *hs) {
    switch (q) {
    case FY_QUANT_Q8_0: fy_q8_quantize(w, rows, in, in, hq, hs); break;
    case FY_QUANT_Q4_0: fy_q4_quantize(w, rows, in, in, hq, hs); break;
    case FY_QUANT_F16: fy_h16_convert(w, (size_t)rows * in, FY_H16_F16, hq); break;
    case FY_QUANT_BF16: fy_h16_convert(w, (size_t)rows * in, FY_H16_BF16, hq); break;
    default: break;
    }
}

void fy_model_free_decode_quant(fy_model *m) {
    struct fy_decode_quant *dq = &m->dq;
    if (dq->buf.handle) fy_be_free(m->be, &dq->buf);
    free(dq->w_off);
    free(dq->q_off);
    free(dq->s_off);
    free(dq->hq);
    free(dq->hs);
    memset(dq, 0, sizeof *dq);
}

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Params offsets of the matrices decode's linears read (router excluded). */
static size_t decode_matrices(const fy_model *m, size_t *out) {
    const fy_config *c = &m->cfg;
    size_t n = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const fy_layer_offs *W = &BT(m)->layer[l];
        const size_t one[] = {W->q_a, W->q_b, W->q, W->kv_a, W->o, W->gate, W->up, W->down,
                              W->sh_gate, W->sh_up, W->sh_down};
        for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
            if (one[i] != FY_NO_TENSOR) out[n++] = one[i];
        if (W->moe)
            for (int e = 0; e < c->n_routed_experts; e++) {
                out[n++] = W->exp_gate + (size_t)e * W->exp_stride;
                out[n++] = W->exp_up + (size_t)e * W->exp_stride;
                out[n++] = W->exp_down + (size_t)e * W->exp_stride;
            }
    }
    out[n++] = BT(m)->head;
    return n;
}

/* The matrix at params offset off, when it is a 2-d tensor of the table. */
static const fy_tensor_info *matrix_at(const fy_model *m, size_t off) {
    for (int j = 0; j < BT(m)->n; j++)
        if (!BT(m)->t[j].is_buffer && BT(m)->t[j].ndim == 2 && BT(m)->t[j].off == off) return &BT(m)->t[j];
    return NULL;
}

/* Lays out the copy in format q (its slots: the decode matrices whose rows
 * split into whole blocks; the rest stay f32), allocates it and the host
 * staging of one matrix; dq->n and dq->kind are set, nothing is encoded. */
static int plan_copy(fy_model *m, fy_quant q, fy_err *err) {
    const struct qfmt *F = qfmt_of(q);
    const fy_config *c = &m->cfg;
    struct fy_decode_quant *dq = &m->dq;
    size_t cap = (size_t)c->num_hidden_layers * (11 + 3 * (size_t)c->n_routed_experts) + 1;
    size_t *cand = malloc(cap * sizeof *cand);
    dq->w_off = malloc(cap * sizeof *dq->w_off);
    dq->q_off = malloc(cap * sizeof *dq->q_off);
    dq->s_off = malloc(cap * sizeof *dq->s_off);
    if (!cand || !dq->w_off || !dq->q_off || !dq->s_off) goto oom;
    size_t nc = decode_matrices(m, cand);
    qsort(cand, nc, sizeof *cand, cmp_size);
    size_t total = 0, biggest = 0;
    int n = 0;
    for (size_t i = 0; i < nc; i++) {
        const fy_tensor_info *t = matrix_at(m, cand[i]);
        if (!t || t->shape[1] % F->block) continue;
        dq->w_off[n] = t->off;
        dq->q_off[n] = total;
        total += fy_params_round16(t->n * (size_t)F->bits / 32);
        dq->s_off[n] = total;
        if (F->scaled) total += fy_params_round16(t->n / FY_Q8_BLOCK);
        biggest = t->n > biggest ? t->n : biggest;
        n++;
    }
    free(cand);
    cand = NULL;
    /* The embedding, when its rows split into blocks and the backend can
     * read them back (dequant_rows): GGUF's encoding, so its rows are
     * llama.cpp's (emb_encode). */
    const fy_tensor_info *e = matrix_at(m, BT(m)->embed);
    if (e && OPS->dequant_rows && e->shape[1] % F->block == 0) {
        dq->emb = 1;
        dq->emb_q = total;
        total += fy_params_round16(e->n * (size_t)F->bits / 32);
        dq->emb_s = total;
        if (F->scaled) total += fy_params_round16(e->n / FY_Q8_BLOCK);
        biggest = e->n > biggest ? e->n : biggest;
    }
    dq->hq = malloc(biggest ? biggest * (size_t)F->bits / 8 : 1);
    dq->hs = malloc((biggest / FY_Q8_BLOCK + 1) * sizeof *dq->hs);
    if (!dq->hq || !dq->hs) goto oom;
    if (fy_be_alloc(m->be, &dq->buf, total ? total : 1, err)) {
        fy_wrap(err, "%s decode weights (%zu bytes)", F->name, total * 4);
        fy_model_free_decode_quant(m);
        return -1;
    }
    dq->n = n;
    dq->kind = q;
    return 0;
oom:
    free(cand);
    fy_model_free_decode_quant(m);
    return fy_fail(err, "out of memory quantizing the decode weights");
}

/* Encodes rows [row0, row0 + n) of matrix t (host floats w) into slot i of
 * the copy: each format's blocks lie within a row, so the rows' bytes are
 * those of the whole matrix's. Asynchronous (w and the staging must
 * outlive the upload: the caller syncs). */
static void encode_slot(fy_model *m, int i, const fy_tensor_info *t, int row0, int n, const float *w) {
    const struct qfmt *F = qfmt_of((fy_quant)m->dq.kind);
    struct fy_decode_quant *dq = &m->dq;
    size_t in = (size_t)t->shape[1];
    qfmt_encode((fy_quant)dq->kind, w, n, (int)in, dq->hq, dq->hs);
    OPS->upload(m->be, fy_at(&dq->buf, dq->q_off[i] + row0 * in * F->bits / 32), dq->hq, n * in * F->bits / 32);
    if (F->scaled)
        OPS->upload(m->be, fy_at(&dq->buf, dq->s_off[i] + row0 * in / FY_Q8_BLOCK), dq->hs, n * in / FY_Q8_BLOCK);
}

/* Rows [row0, row0 + n) of the embedding (host floats w) into the copy:
 * Q8_0 as GGUF's token_embd (fy_q8_quantize_gguf: half scales, ggml's
 * rounding), Q4_0 as linear_q4's weights (already GGUF's), F16 / BF16
 * rounded to nearest even; so dequant_rows gives llama.cpp's rows of a
 * `ferry convert --to gguf` of the same weights. Asynchronous, as
 * encode_slot. */
static void emb_encode(fy_model *m, int row0, int n, const float *w) {
    const struct qfmt *F = qfmt_of((fy_quant)m->dq.kind);
    struct fy_decode_quant *dq = &m->dq;
    size_t in = (size_t)m->cfg.hidden_size;
    if (dq->kind == FY_QUANT_Q8_0) fy_q8_quantize_gguf(w, n, (int)in, (int)in, (int8_t *)dq->hq, dq->hs);
    else qfmt_encode((fy_quant)dq->kind, w, n, (int)in, dq->hq, dq->hs);
    OPS->upload(m->be, fy_at(&dq->buf, dq->emb_q + row0 * in * F->bits / 32), dq->hq, n * in * F->bits / 32);
    if (F->scaled)
        OPS->upload(m->be, fy_at(&dq->buf, dq->emb_s + row0 * in / FY_Q8_BLOCK), dq->hs, n * in / FY_Q8_BLOCK);
}

void fy__dq_embed(fy_model *m, int n, fy_ref idx, fy_ref dst) {
    const fy_config *c = &m->cfg;
    if (m->dq.on && m->dq.emb)
        OPS->dequant_rows(m->be, qfmt_of((fy_quant)m->dq.kind)->wf, c->vocab_size, c->hidden_size,
                          fy_at(&m->dq.buf, m->dq.emb_q), fy_at(&m->dq.buf, m->dq.emb_s), n, idx, dst, c->hidden_size);
    else
        OPS->gather_rows(m->be, n, c->hidden_size, PW(m, BT(m)->embed), c->hidden_size, idx, FY_NULL_REF, dst,
                         c->hidden_size);
}

static int check_format(const fy_model *m, fy_quant q, fy_err *err) {
    if (fy_params_is_shard(BT(m)))
        return fy_fail(err, "decode weights need every routed expert; this model holds an expert-parallel shard");
    if (!qfmt_has_op(m, q))
        return fy_fail(err, "backend %s has no %s kernel (%s): use --weights f32", OPS->name, qfmt_of(q)->name,
                       qfmt_of(q)->op);
    return 0;
}

int fy_model_set_decode_quant(fy_model *m, fy_quant q, fy_err *err) {
    if (m->dq.infer) { /* the params of the quantized matrices were never loaded */
        fy_quant had = m->dq.n || m->dq.emb ? (fy_quant)m->dq.kind : FY_QUANT_F32;
        if (q == had) return 0;
        return fy_fail(err, "the model was loaded for %s weights only; %s needs a fresh load", fy_quant_name(had),
                       fy_quant_name(q));
    }
    fy_model_free_decode_quant(m);
    if (q == FY_QUANT_F32) return 0;
    if (check_format(m, q, err) || plan_copy(m, q, err)) return -1;
    const fy_tensor_info *e = matrix_at(m, BT(m)->embed);
    size_t biggest = m->dq.emb ? e->n : 1;
    for (int i = 0; i < m->dq.n; i++)
        if (matrix_at(m, m->dq.w_off[i])->n > biggest) biggest = matrix_at(m, m->dq.w_off[i])->n;
    float *host = malloc(biggest * sizeof *host);
    if (!host) {
        fy_model_free_decode_quant(m);
        return fy_fail(err, "out of memory quantizing the decode weights");
    }
    for (int i = 0; i < m->dq.n; i++) {
        const fy_tensor_info *t = matrix_at(m, m->dq.w_off[i]);
        OPS->download(m->be, host, PW(m, t->off), t->n);
        encode_slot(m, i, t, 0, t->shape[0], host);
    }
    if (m->dq.emb) { /* the staging holds a whole matrix: the sync below frees neither early */
        OPS->download(m->be, host, PW(m, e->off), e->n);
        emb_encode(m, 0, e->shape[0], host);
    }
    free(host);
    if (fy_be_sync(m->be, err)) {
        fy_model_free_decode_quant(m);
        return fy_wrap(err, "quantizing the decode weights");
    }
    fy_model_load_finish(m);
    return 0;
}

/* ---- loading for inference ---- */

/* 1 when t is the token embedding and the copy holds it. */
static int is_emb(const fy_model *m, const fy_tensor_info *t) {
    return m->dq.emb && !t->is_buffer && t->off == BT(m)->embed;
}

/* 1 when only an MTP module reads t (a batch step runs the main layers). */
static int mtp_only(const fy_model *m, const fy_tensor_info *t) {
    for (int li = m->cfg.num_hidden_layers; li < BT(m)->n_layers; li++) {
        const fy_layer_offs *W = &BT(m)->layer[li];
        if (t->is_buffer ? t->off == W->bias
                         : (t->off >= W->span_lo && t->off < W->span_hi) ||
                               (t->off >= W->xspan_lo && t->off < W->xspan_hi))
            return 1;
    }
    return 0;
}

int fy_model_plan_inference(fy_model *m, fy_quant q, fy_err *err) {
    fy_model_free_decode_quant(m);
    if (q != FY_QUANT_F32 && (check_format(m, q, err) || plan_copy(m, q, err))) return -1;
    m->dq.infer = 1;
    if (m->grads.handle) fy_be_free(m->be, &m->grads); /* no backward will run */
    /* With a copy, the params get only the norms, the router and W_kvb
     * (and the embedding where the copy has no room for it), scattered
     * among the matrices' unwritten ranges. */
    if (m->dq.n && OPS->sparse) OPS->sparse(m->be, &m->params);
    return 0;
}

/* 1 when t is a tensor of the base table that an inference load routes
 * (mtp_only, the copy): with LoRA adapters on, m->tab is the adapters' own
 * table, whose offsets are into their block and may equal a base matrix's
 * (the first adapter and the embedding both sit at 0): those load plainly. */
static int routed(const fy_model *m) { return m->dq.infer && !m->lora; }

int fy_model_needs_tensor(const fy_model *m, const fy_tensor_info *t) { return !routed(m) || !mtp_only(m, t); }

int fy_model_holds_f32(const fy_model *m, const fy_tensor_info *t) {
    if (!routed(m)) return 1;
    return !mtp_only(m, t) && (t->is_buffer || (slot_of(m, t->off) < 0 && !is_emb(m, t)));
}

size_t fy_model_tensor_bytes(const fy_model *m, const fy_tensor_info *t) {
    const struct qfmt *F = qfmt_of(m->dq.n || m->dq.emb ? (fy_quant)m->dq.kind : FY_QUANT_F32);
    size_t bytes = fy_model_holds_f32(m, t) ? t->n * sizeof(float) : 0;
    if (!m->lora && !t->is_buffer && (slot_of(m, t->off) >= 0 || is_emb(m, t)))
        bytes += t->n * (size_t)F->bits / 8 + (F->scaled ? t->n / FY_Q8_BLOCK * sizeof(float) : 0);
    return bytes;
}

int fy_model_embed_rows(fy_model *m, const int32_t *ids, int n, float *out, fy_err *err) {
    const fy_config *c = &m->cfg;
    fy_buf tmp = {0};
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return fy_fail(err, "embedding row %d is outside the vocabulary [0, %d)", ids[i], c->vocab_size);
    if (n < 1) return 0;
    if (fy_be_alloc(m->be, &tmp, (size_t)n * (c->hidden_size + 1), err)) return fy_wrap(err, "embedding rows");
    fy_ref idx = fy_at(&tmp, 0), dst = fy_at(&tmp, (size_t)n);
    OPS->upload(m->be, idx, ids, (size_t)n);
    m->dq.on = m->dq.n > 0 || m->dq.emb; /* what a batch step reads */
    fy__dq_embed(m, n, idx, dst);
    m->dq.on = 0;
    OPS->download(m->be, out, dst, (size_t)n * c->hidden_size);
    int rc = fy_be_sync(m->be, err);
    fy_be_free(m->be, &tmp);
    return rc;
}

/* The model's weights must be finite (a NaN spreads through every later
 * token): a float is NaN or Inf exactly when its exponent bits are all set,
 * so the largest exponent field says it. Chunks of 64 Ki floats on the
 * threads (a cold load reads every weight here), each in 16 lanes, which
 * GCC's -O2 vectorizer takes where a single running maximum it does not. */
static uint32_t top_exponent(const float *w, size_t n) {
    uint32_t lane[16] = {0}, top = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            uint32_t b;
            memcpy(&b, &w[i + j], sizeof b);
            b &= 0x7f800000u;
            lane[j] = b > lane[j] ? b : lane[j];
        }
    for (int j = 0; j < 16; j++) top = lane[j] > top ? lane[j] : top;
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, &w[i], sizeof b);
        b &= 0x7f800000u;
        top = b > top ? b : top;
    }
    return top;
}

static int check_finite(const fy_tensor_info *t, const float *w, size_t n, fy_err *err) {
    uint32_t top = 0;
    const long nc = (long)((n + 65535) / 65536);
#pragma omp parallel for schedule(static) reduction(max : top) if (nc > 1)
    for (long c = 0; c < nc; c++) {
        const size_t lo = (size_t)c * 65536, len = n - lo < 65536 ? n - lo : 65536;
        const uint32_t ct = top_exponent(w + lo, len);
        top = ct > top ? ct : top;
    }
    if (top != 0x7f800000u) return 0;
    return fy_fail(err, "the model's weights hold non-finite values (NaN or Inf; first in %s): "
                        "a diverged or corrupted model, refusing to run it", t->name);
}

/* ---- the copy as a file's image (ferry convert --weights) ----
 * In f32 the image is the params block itself (every matrix and vector at
 * its table offset; an MTP module's ranges stay zero): a batch step reads
 * the params where a format has no copy. */

/* Goes into every layout hash: raise it when what a format's bytes mean
 * changes (an encoder's rounding, a kernel's byte order) without moving any
 * offset, so images of the old meaning are refused, not misread. */
#define IMAGE_ENCODING 1

/* The buffer an image replaces: the copy, or the params for f32. */
static fy_buf *image_buf(fy_model *m) { return m->dq.kind == FY_QUANT_F32 ? &m->params : &m->dq.buf; }

int fy_model_image_covers(const fy_model *m, const fy_tensor_info *t) {
    if (!routed(m)) return 0;
    if (m->dq.kind == FY_QUANT_F32) return !t->is_buffer;
    return is_emb(m, t) || (!t->is_buffer && slot_of(m, t->off) >= 0);
}

uint64_t fy_model_image_layout(const fy_model *m) {
    const struct fy_decode_quant *dq = &m->dq;
    fy_xxh64_stream *h = fy_xxh64_begin();
    if (!h) return 0;
    if (dq->kind == FY_QUANT_F32) { /* the table: every tensor's offset and size */
        uint64_t head[3] = {IMAGE_ENCODING, FY_QUANT_F32, m->tab.n_params};
        fy_xxh64_update(h, head, sizeof head);
        for (int i = 0; i < m->tab.n; i++) {
            uint64_t t[3] = {m->tab.t[i].off, m->tab.t[i].n, (uint64_t)m->tab.t[i].is_buffer};
            fy_xxh64_update(h, t, sizeof t);
        }
        return fy_xxh64_end(h);
    }
    uint64_t head[7] = {IMAGE_ENCODING, (uint64_t)dq->kind, (uint64_t)dq->n, (uint64_t)dq->emb,
                        dq->emb_q,      dq->emb_s,          dq->buf.n};
    fy_xxh64_update(h, head, sizeof head);
    for (int i = 0; i < dq->n; i++) {
        uint64_t slot[3] = {dq->w_off[i], dq->q_off[i], dq->s_off[i]};
        fy_xxh64_update(h, slot, sizeof slot);
    }
    return fy_xxh64_end(h);
}

int fy_model_image_bytes(fy_model *m, void **out, size_t *len, fy_err *err) {
    fy_buf *b = image_buf(m);
    *out = NULL;
    *len = 0;
    if (m->dq.kind != FY_QUANT_F32 && !m->dq.n && !m->dq.emb)
        return fy_fail(err, "the model holds no copy of its matrices in %s", fy_quant_name((fy_quant)m->dq.kind));
    float *h = malloc((b->n ? b->n : 1) * sizeof *h);
    if (!h) return fy_fail(err, "out of memory copying the %s weights", fy_quant_name((fy_quant)m->dq.kind));
    OPS->download(m->be, h, fy_at(b, 0), b->n);
    if (fy_be_take_error(m->be, err)) {
        free(h);
        return -1;
    }
    *out = h;
    *len = b->n * sizeof *h;
    return 0;
}

int fy_model_image_check(const fy_model *m, size_t len, uint64_t layout, fy_err *err) {
    const fy_buf *dst = m->dq.kind == FY_QUANT_F32 ? &m->params : &m->dq.buf;
    const char *q = fy_quant_name((fy_quant)m->dq.kind);
    if (!routed(m) || (m->dq.kind != FY_QUANT_F32 && !m->dq.n && !m->dq.emb))
        return fy_fail(err, "a weights image needs a model planned for inference in its format");
    if (len != dst->n * sizeof(float) || layout != fy_model_image_layout(m))
        return fy_fail(err, "the %s weights image (%zu bytes, layout %016llx) is laid out for another config or "
                            "ferry version (this one expects %zu bytes, layout %016llx): convert again from the f32 "
                            "checkpoint",
                       q, len, (unsigned long long)layout, dst->n * sizeof(float),
                       (unsigned long long)fy_model_image_layout(m));
    return 0;
}

int fy_model_image_adopt(fy_model *m, const void *bytes, size_t len, uint64_t layout, void (*release)(void *ctx),
                         void *ctx, fy_err *err) {
    fy_buf *dst = image_buf(m), b;
    if (fy_model_image_check(m, len, layout, err)) return -1;
    if (fy_be_adopt(m->be, &b, bytes, dst->n, release, ctx, err))
        return fy_wrap(err, "%s weights image", fy_quant_name((fy_quant)m->dq.kind));
    fy_be_free(m->be, dst); /* planned, never written: nothing resident */
    *dst = b;
    return 0;
}

int fy_model_image_put(fy_model *m, size_t off, const void *bytes, size_t len, fy_err *err) {
    fy_buf *dst = image_buf(m);
    assert(off % sizeof(float) == 0 && len % sizeof(float) == 0);
    OPS->upload(m->be, fy_at(dst, off / sizeof(float)), bytes, len / sizeof(float));
    return fy_be_sync(m->be, err); /* bytes (a file's mapping) must outlive the copy */
}

void fy_model_load_finish(fy_model *m) {
    free(m->dq.hq);
    free(m->dq.hs);
    m->dq.hq = NULL;
    m->dq.hs = NULL;
}

int fy_model_load_rows(fy_model *m, const fy_tensor_info *t, int row0, int n_rows, const float *w, fy_err *err) {
    size_t row = t->ndim == 2 ? (size_t)t->shape[1] : t->n, n = (size_t)n_rows * row;
    if (routed(m)) {
        if (mtp_only(m, t)) return 0;
        if (check_finite(t, w, n, err)) return -1;
        if (is_emb(m, t)) {
            emb_encode(m, row0, n_rows, w);
            return fy_be_sync(m->be, err);
        }
        int i = t->is_buffer ? -1 : slot_of(m, t->off);
        if (i >= 0) {
            encode_slot(m, i, t, row0, n_rows, w);
            return fy_be_sync(m->be, err);
        }
    }
    OPS->upload(m->be, fy_at(t->is_buffer ? &m->buffers : &m->params, t->off + (size_t)row0 * row), w, n);
    return fy_be_sync(m->be, err); /* the source (a file's mapping, staging) must outlive the copy */
}
