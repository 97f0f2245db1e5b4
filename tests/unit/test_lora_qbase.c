/* A LoRA base held quantized (model/lora_qbase.h): for each format (q8_0,
 * q4_0, f16, bf16), two LoRA steps (forward, backward, AdamW on the
 * adapters, with dropout) on a base held in that format give bit for bit
 * the losses, adapter gradients and updated adapters of the plain f32 LoRA
 * path on the same base rounded on the host (each held matrix encoded with
 * the format's encoder, decoded here, uploaded as f32). Also: which
 * matrices are held (decoder linears; not the head, embedding or routers),
 * that the held run differs from the unrounded base's (the rounding is
 * real), and the refusals (merge, a second conversion, f32 as a no-op). */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/half.h"
#include "core/rng.h"
#include "model/lora.h"
#include "model/lora_qbase.h"
#include "model/model.h"
#include "testutil.h"

enum { B = 2, T = 6, N = B * T, STEPS = 2 };

static void die(const char *what, fy_err *err) {
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(1);
}

/* Every linear's input a multiple of 32, so that all of them can be held. */
static fy_config qb_config(void) {
    fy_config c = fy_test_grad_config(37);
    c.hidden_size = 64;
    c.num_attention_heads = 2;
    c.q_lora_rank = 32;
    c.kv_lora_rank = 32;
    c.qk_nope_head_dim = 16;
    c.qk_rope_head_dim = 16;
    c.v_head_dim = 16;
    c.n_routed_experts = 4;
    c.moe_intermediate_size = 32;
    c.intermediate_size = 64;
    return c;
}

/* The host's reading of matrix w [rows, in] encoded in format q, in place. */
static void round_host(fy_quant q, float *w, int rows, int in) {
    size_t n = (size_t)rows * in;
    void *code = malloc(n * 2);
    float *s = malloc((n / 32 + 1) * sizeof *s);
    if (q == FY_QUANT_Q8_0) {
        int8_t *c = code;
        fy_q8_quantize(w, rows, in, in, c, s);
        for (size_t i = 0; i < n; i++) w[i] = s[i / 32] * (float)c[i];
    } else if (q == FY_QUANT_Q4_0) {
        uint8_t *c = code;
        fy_q4_quantize(w, rows, in, in, c, s);
        for (size_t i = 0; i < n; i++) { /* GGUF's block: weight t in byte t%16, the high nibble for t >= 16 */
            size_t b = i / 32, t = i % 32;
            int byte = c[b * 16 + t % 16];
            w[i] = s[b] * (float)((t < 16 ? byte & 15 : byte >> 4) - 8);
        }
    } else {
        uint16_t *h = code;
        int fmt = q == FY_QUANT_BF16 ? FY_H16_BF16 : FY_H16_F16;
        fy_h16_convert(w, n, fmt, h);
        for (size_t i = 0; i < n; i++) w[i] = fmt == FY_H16_BF16 ? fy_bf16_to_f32(h[i]) : fy_f16_to_f32(h[i]);
    }
    free(code);
    free(s);
}

typedef struct trace {
    double loss[STEPS];
    float *grads[STEPS], *params; /* the adapters' gradients of each step, their values after the last */
    size_t P;
} trace;

/* held: the base held in q; rounded: the f32 base rounded through q on the
 * host (the reference); neither: the plain f32 base. Records into tr. */
static void run(fy_backend *be, fy_quant q, int held, int rounded, trace *tr) {
    fy_config c = qb_config();
    fy_model m;
    fy_err err;
    if (fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 7, &err)) die("create", &err);
    fy_lora_config lc = {.rank = 3, .alpha = 6, .targets = FY_LORA_ALL, .dropout = 0.1f};
    if (rounded) { /* which matrices: those a held base holds (asked of a held twin) */
        fy_model twin;
        if (fy_model_create(&twin, &c, be, &err) || fy_model_set_lora(&twin, &lc, &err) ||
            fy_model_lora_quantize_base(&twin, q, &err))
            die("twin", &err);
        float *w = malloc(m.params.n * sizeof *w);
        be->ops->download(be, w, fy_at(&m.params, 0), m.params.n);
        for (int i = 0; i < m.tab.n; i++) {
            const fy_tensor_info *t = &m.tab.t[i];
            if (!t->is_buffer && fy_model_lora_base_held(&twin, t->off))
                round_host(q, w + t->off, t->shape[0], t->shape[1]);
        }
        be->ops->upload(be, fy_at(&m.params, 0), w, m.params.n);
        free(w);
        fy_model_free(&twin);
    }
    if (fy_model_set_lora(&m, &lc, &err) || (held && fy_model_lora_quantize_base(&m, q, &err)) ||
        fy_model_lora_init(&m, 5, &err))
        die("lora", &err);
    /* B random, so that A gets a gradient from the first step */
    size_t P = m.tab.n_params;
    float *p = malloc(P * sizeof *p);
    be->ops->download(be, p, fy_at(&m.params, 0), P);
    for (int i = 0; i < m.tab.n; i++)
        if (strstr(m.tab.t[i].name, ".lora_B."))
            for (size_t j = 0; j < m.tab.t[i].n; j++) p[m.tab.t[i].off + j] = 0.3f * fy_rng_normal(17, i, j);
    be->ops->upload(be, fy_at(&m.params, 0), p, P);
    fy_buf mom = {0}, var = {0};
    if (fy_be_alloc(be, &mom, P, &err) || fy_be_alloc(be, &var, P, &err)) die("moments", &err);
    int32_t in[N], lab[N];
    tr->P = P;
    for (int s = 0; s < STEPS; s++) {
        for (int i = 0; i < N; i++) {
            in[i] = (int)(fy_rng_u64(3 + s, 1, i) % c.vocab_size);
            lab[i] = (int)(fy_rng_u64(3 + s, 2, i) % c.vocab_size);
        }
        fy_loss l;
        fy_model_lora_dropout_key(&m, 21, s, 0);
        fy_model_zero_grad(&m);
        if (fy_model_forward(&m, in, lab, B, T, 1, &l, &err) || fy_model_backward(&m, &err)) die("step", &err);
        tr->loss[s] = l.total;
        tr->grads[s] = malloc(P * sizeof *p);
        be->ops->download(be, tr->grads[s], fy_at(&m.grads, 0), P);
        be->ops->adamw(be, P, fy_at(&m.params, 0), fy_at(&m.grads, 0), fy_at(&mom, 0), fy_at(&var, 0), 1e-2f, 0.9f,
                       0.999f, 1e-8f, 0.01f, s + 1, 1.0f);
    }
    tr->params = p;
    be->ops->download(be, p, fy_at(&m.params, 0), P);
    if (held) {
        CHECK(fy_model_lora_base_format(&m) == q, "%s: the base's format", fy_quant_name(q));
        const fy_param_table *bt = &m.lora->base_tab;
        const fy_tensor_info *head = fy_params_find(bt, "lm_head.weight");
        const fy_tensor_info *emb = fy_params_find(bt, "model.embed_tokens.weight");
        const fy_tensor_info *rt = fy_params_find(bt, "model.layers.1.mlp.gate.weight");
        const fy_tensor_info *up = fy_params_find(bt, "model.layers.1.mlp.experts.3.up_proj.weight");
        const fy_tensor_info *kvb = fy_params_find(bt, "model.layers.0.self_attn.kv_b_proj.weight");
        const fy_tensor_info *eh = fy_params_find(bt, "model.layers.2.eh_proj.weight");
        CHECK(head && emb && rt && up && kvb && eh, "%s: the tensors looked for exist", fy_quant_name(q));
        if (head && emb && rt && up && kvb && eh)
            CHECK(!fy_model_lora_base_held(&m, head->off) && !fy_model_lora_base_held(&m, emb->off) &&
                      !fy_model_lora_base_held(&m, rt->off) && fy_model_lora_base_held(&m, up->off) &&
                      fy_model_lora_base_held(&m, kvb->off) && fy_model_lora_base_held(&m, eh->off),
                  "%s: the decoder linears are held, the head, embedding and router are not", fy_quant_name(q));
        CHECK(fy_model_lora_quantize_base(&m, q, &err) != 0 && strstr(err.msg, "already"),
              "%s: a second conversion refused: %s", fy_quant_name(q), err.msg);
        CHECK(fy_model_lora_merge(&m, &err) != 0 && strstr(err.msg, "quantized") && m.lora,
              "%s: merge onto a held base refused: %s", fy_quant_name(q), err.msg);
    }
    fy_be_free(be, &mom);
    fy_be_free(be, &var);
    fy_model_free(&m);
}

static void trace_free(trace *t) {
    for (int s = 0; s < STEPS; s++) free(t->grads[s]);
    free(t->params);
}

static int same(const trace *a, const trace *b) {
    int ok = a->P == b->P && !memcmp(a->params, b->params, a->P * sizeof(float));
    for (int s = 0; ok && s < STEPS; s++)
        ok = a->loss[s] == b->loss[s] && !memcmp(a->grads[s], b->grads[s], a->P * sizeof(float));
    return ok;
}

int main(void) {
    fy_backend *be;
    fy_err err;
    if (fy_backend_cpu_create(&be, &err)) die("cpu", &err);
    trace plain;
    run(be, FY_QUANT_F32, 0, 0, &plain);
    const fy_quant qs[] = {FY_QUANT_Q8_0, FY_QUANT_Q4_0, FY_QUANT_F16, FY_QUANT_BF16};
    for (int i = 0; i < 4; i++) {
        trace held, ref;
        run(be, qs[i], 1, 0, &held);
        run(be, qs[i], 0, 1, &ref);
        CHECK(same(&held, &ref), "%s: the held base's losses, adapter gradients and updates equal the f32 path's on "
                                 "the rounded base bit for bit (loss %.9g vs %.9g)",
              fy_quant_name(qs[i]), held.loss[STEPS - 1], ref.loss[STEPS - 1]);
        CHECK(!same(&held, &plain), "%s: the held base trains differently from the unrounded one",
              fy_quant_name(qs[i]));
        trace_free(&held);
        trace_free(&ref);
    }
    trace_free(&plain);
    /* f32 is no conversion at all; without adapters there is nothing to hold */
    fy_config c = qb_config();
    fy_model m;
    if (fy_model_create(&m, &c, be, &err)) die("create", &err);
    CHECK(fy_model_lora_quantize_base(&m, FY_QUANT_F32, &err) == 0, "f32: nothing to do");
    CHECK(fy_model_lora_quantize_base(&m, FY_QUANT_Q8_0, &err) != 0 && strstr(err.msg, "adapters"),
          "q8_0 without adapters refused: %s", err.msg);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return fy_test_finish("test_lora_qbase");
}
