/* The masked loss of fine-tuning (docs/FINETUNE.md): labels the loader sets
 * to FY_IGNORE_INDEX (prompt and padding) give zero gradient, through the
 * whole model (MoE, MTP, q_lora):
 *   - the logits' gradient rows at ignored positions are exactly 0;
 *   - changing the inputs after the last trained position (the padding)
 *     leaves every parameter gradient bit-identical, but the routed
 *     experts' (see same_grads), and the embedding rows of tokens that
 *     occur only there get exactly 0;
 *   - changing the ignored labels' values (what the loader drops) changes
 *     nothing, while changing one trained label does change the gradient. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/model.h"
#include "model/model_impl.h"
#include "testutil.h"

#define B 2
#define T 12
/* Per row: tokens [0, PROMPT) are the prompt, [PROMPT, LAST] the reply
 * (trained: the labels at positions PROMPT-1 .. LAST-1), after LAST padding. */
#define PROMPT 4
#define LAST 7

static fy_config config(int mtp) {
    fy_config c = fy_test_grad_config(40);
    c.num_nextn_predict_layers = mtp;
    /* The sequence-wise balance loss looks at every position's routing,
     * padding included (docs/FINETUNE.md, limits): off here. */
    c.aux_loss_alpha = 0;
    return c;
}

/* Tokens 0..29 in the example, 30..39 only in the padding. */
static void batch(int32_t *in, int32_t *lab, uint64_t pad_seed) {
    for (int i = 0; i < B * T; i++)
        in[i] = i % T <= LAST ? (int)(fy_rng_u64(1, 1, i) % 30) : 30 + (int)(fy_rng_u64(pad_seed, 2, i) % 10);
    /* As the loader gives them: the next token where it is trained. */
    for (int i = 0; i < B * T; i++) lab[i] = i % T >= PROMPT - 1 && i % T < LAST ? in[i + 1] : FY_IGNORE_INDEX;
}

/* g1 and g2 bit-identical, except a routed expert's weights, which agree
 * to 1e-6 of the tensor's largest gradient: padding tokens are routed too,
 * so an expert's dW = dH^T X sums over a different set of rows, and the
 * rows the padding adds contribute exact zeros; but the GEMM (OpenBLAS)
 * groups its K sum by the row count, so with another count the same
 * nonzero terms can be added in another order (seen: 4e-9 of 0.07 with
 * OpenBLAS's AVX2 kernels, bit-identical with its AVX-512 ones). */
static int same_grads(const fy_model *m, const float *g1, const float *g2, int mtp) {
    int ok = 1;
    for (int t = 0; t < m->tab.n; t++) {
        const fy_tensor_info *ti = &m->tab.t[t];
        if (ti->is_buffer) continue;
        if (!strstr(ti->name, ".mlp.experts.")) {
            if (memcmp(g1 + ti->off, g2 + ti->off, ti->n * sizeof *g1))
                ok = 0, fprintf(stderr, "  mtp %d: %s: gradient changed with the padding\n", mtp, ti->name);
            continue;
        }
        float dmax = 0, gmax = 0;
        for (size_t k = ti->off; k < ti->off + ti->n; k++) {
            float d = fabsf(g1[k] - g2[k]), a = fabsf(g1[k]);
            dmax = d > dmax ? d : dmax, gmax = a > gmax ? a : gmax;
        }
        if (!(dmax <= 1e-6f * gmax))
            ok = 0, fprintf(stderr, "  mtp %d: %s: changed by %g (largest %g)\n", mtp, ti->name, dmax, gmax);
    }
    return ok;
}

/* Forward + backward; the gradients (and the main head's dlogits) out. */
static void grads(fy_model *m, const int32_t *in, const int32_t *lab, float *g, float *dlogits) {
    fy_err err;
    fy_loss l;
    fy_model_zero_grad(m);
    if (fy_model_forward(m, in, lab, B, T, 1, &l, &err) || fy_model_backward(m, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    m->be->ops->download(m->be, g, fy_at(&m->grads, 0), m->tab.n_params);
    if (dlogits) m->be->ops->download(m->be, dlogits, m->ws->dlogits, (size_t)B * T * m->cfg.vocab_size);
}

static void run(int mtp) {
    fy_config c = config(mtp);
    fy_backend *be;
    fy_model m;
    fy_err err;
    if (fy_backend_cpu_create(&be, &err) || fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 5, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    size_t P = m.tab.n_params, NV = (size_t)B * T * c.vocab_size;
    float *g1 = malloc(P * sizeof *g1), *g2 = malloc(P * sizeof *g2), *dl = malloc(NV * sizeof *dl);
    int32_t in[B * T], lab[B * T], in2[B * T], lab2[B * T];
    batch(in, lab, 3);
    /* MTP reuses the dlogits buffer for its own head: read it without. */
    grads(&m, in, lab, g1, mtp ? NULL : dl);
    if (!mtp) {
        int zero_ok = 1, live = 0;
        for (int i = 0; i < B * T; i++) {
            int any = 0;
            for (int v = 0; v < c.vocab_size; v++) any |= dl[(size_t)i * c.vocab_size + v] != 0.0f;
            if (lab[i] == FY_IGNORE_INDEX) zero_ok &= !any;
            else live += any;
        }
        CHECK(zero_ok, "dlogits rows at ignored positions are not all exactly 0");
        CHECK(live == B * (LAST - PROMPT + 1), "%d trained rows with a gradient", live);
    }
    /* Other padding tokens: the same gradients. */
    batch(in2, lab2, 99);
    CHECK(memcmp(in, in2, sizeof in) != 0, "the padding differs");
    grads(&m, in2, lab2, g2, NULL);
    CHECK(same_grads(&m, g1, g2, mtp), "mtp %d: gradients changed with the padding tokens", mtp);
    int emb_zero = 1;
    for (size_t k = m.tab.embed + 30 * (size_t)c.hidden_size; k < m.tab.embed + 40 * (size_t)c.hidden_size; k++)
        emb_zero &= g1[k] == 0.0f;
    CHECK(emb_zero, "mtp %d: embedding rows of padding-only tokens have a gradient", mtp);
    /* A trained label changed: the gradient must change (the test can fail). */
    memcpy(lab2, lab, sizeof lab);
    lab2[PROMPT] = (lab2[PROMPT] + 1) % 30;
    grads(&m, in, lab2, g2, NULL);
    CHECK(memcmp(g1, g2, P * sizeof *g1) != 0, "mtp %d: a trained label did not matter", mtp);
    free(g1);
    free(g2);
    free(dl);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

int main(void) {
    run(0);
    run(1);
    return fy_test_finish("test_masked_loss");
}
