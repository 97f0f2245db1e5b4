/* Whole-model gradient check by finite differences, independent of PyTorch.
 *
 * For each parameter tensor W and a random direction R (normalised), the
 * directional derivative <dL/dW, R> from backward must match
 * (L(W + eps R) - L(W - eps R)) / (2 eps). Perturbing a whole tensor along one
 * direction gives a far better signal-to-noise ratio in float32 than
 * element-wise differences, and still fails if any element's gradient is
 * wrong. Runs several configurations: MoE with MTP and q_lora, plain q_proj,
 * group-limited routing, dense-only, MTP depth 2, sequence length 1, YaRN. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "model/model.h"
#include "testutil.h"

static fy_config small_config(void) {
    fy_config c = fy_test_grad_config(37);
    c.aux_loss_alpha = 0.01f;
    c.seq_aux = 1;
    return c;
}

static double loss_at(fy_model *m, const int32_t *in, const int32_t *lab, int B, int T) {
    fy_loss l;
    fy_err err;
    if (fy_model_forward(m, in, lab, B, T, 0, &l, &err)) {
        fprintf(stderr, "forward: %s\n", err.msg);
        exit(1);
    }
    return l.total;
}

static void check_config(const char *label, fy_config c, int B, int T) {
    fy_err err;
    fy_backend *be;
    if (fy_backend_cpu_create(&be, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    fy_model m;
    if (fy_model_create(&m, &c, be, &err) || fy_model_init_weights(&m, 7, &err)) {
        fprintf(stderr, "%s: %s\n", label, err.msg);
        exit(1);
    }
    int N = B * T;
    int32_t *in = malloc(N * sizeof *in), *lab = malloc(N * sizeof *lab);
    for (int i = 0; i < N; i++) {
        in[i] = (int)(fy_rng_u64(3, 1, i) % c.vocab_size);
        lab[i] = i % 5 == 4 ? FY_IGNORE_INDEX : (int)(fy_rng_u64(3, 2, i) % c.vocab_size);
    }
    /* A non-zero router bias so the selection path with bias is exercised. */
    size_t nb = m.tab.n_buffers;
    float *bias = malloc((nb ? nb : 1) * sizeof *bias);
    for (size_t i = 0; i < nb; i++) bias[i] = 0.05f * fy_rng_normal(11, 0, i);
    if (nb) be->ops->upload(be, fy_at(&m.buffers, 0), bias, nb);

    fy_loss l;
    fy_model_zero_grad(&m);
    if (fy_model_forward(&m, in, lab, B, T, 1, &l, &err) || fy_model_backward(&m, &err)) {
        fprintf(stderr, "%s: %s\n", label, err.msg);
        exit(1);
    }
    size_t P = m.tab.n_params;
    float *w = malloc(P * sizeof *w), *g = malloc(P * sizeof *g), *wp = malloc(P * sizeof *wp);
    be->ops->download(be, w, fy_at(&m.params, 0), P);
    be->ops->download(be, g, fy_at(&m.grads, 0), P);

    int worst_i = -1;
    double worst = 0;
    for (int ti = 0; ti < m.tab.n; ti++) {
        const fy_tensor_info *t = &m.tab.t[ti];
        if (t->is_buffer) continue;
        /* Random unit direction; analytic directional derivative. */
        double nrm = 0, analytic = 0;
        float *R = malloc(t->n * sizeof *R);
        for (size_t j = 0; j < t->n; j++) {
            R[j] = fy_rng_normal(99, ti, j);
            nrm += (double)R[j] * R[j];
        }
        nrm = sqrt(nrm);
        for (size_t j = 0; j < t->n; j++) {
            R[j] = (float)(R[j] / nrm);
            analytic += (double)g[t->off + j] * R[j];
        }
        double eps = 4e-3, numeric; /* smaller eps: float32 forward noise dominates */
        memcpy(wp, w, P * sizeof *w);
        for (size_t j = 0; j < t->n; j++) wp[t->off + j] = w[t->off + j] + (float)eps * R[j];
        be->ops->upload(be, fy_at(&m.params, 0), wp, P);
        double lp = loss_at(&m, in, lab, B, T);
        for (size_t j = 0; j < t->n; j++) wp[t->off + j] = w[t->off + j] - (float)eps * R[j];
        be->ops->upload(be, fy_at(&m.params, 0), wp, P);
        double lm = loss_at(&m, in, lab, B, T);
        numeric = (lp - lm) / (2 * eps);
        /* Absolute floor: float32 loss noise / eps. */
        double e = fabs(numeric - analytic) / fmax(fabs(analytic), 2e-3);
        CHECK(e < 3e-2, "%s: %s: analytic %.6g vs numeric %.6g (rel %.3g)", label, t->name,
              analytic, numeric, e);
        if (e > worst) {
            worst = e;
            worst_i = ti;
        }
        free(R);
    }
    be->ops->upload(be, fy_at(&m.params, 0), w, P);
    printf("%-14s %3d tensors, worst rel err %.2e (%s)\n", label, m.tab.n, worst,
           worst_i >= 0 ? m.tab.t[worst_i].name : "-");
    free(w); free(g); free(wp); free(in); free(lab); free(bias);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

int main(void) {
    fy_config c = small_config();
    check_config("moe+mtp", c, 2, 5);

    fy_config c2 = c;
    c2.q_lora_rank = 0;
    c2.norm_topk_prob = 0;
    c2.routed_scaling_factor = 2.5f;
    check_config("no-qlora", c2, 1, 6);

    fy_config c3 = c;
    c3.n_routed_experts = 8;
    c3.n_group = 4;
    c3.topk_group = 2;
    c3.num_experts_per_tok = 3;
    c3.num_nextn_predict_layers = 2;
    check_config("group+mtp2", c3, 2, 4);

    fy_config c4 = c;
    c4.n_routed_experts = 0;
    c4.num_nextn_predict_layers = 0;
    c4.first_k_dense_replace = c4.num_hidden_layers;
    check_config("dense", c4, 2, 3);

    fy_config c5 = c;
    c5.first_k_dense_replace = 0;
    check_config("seq1", c5, 3, 1);

    /* YaRN: positions past the original context of 4, the ramp inside the
     * 4 pairs, cos/sin and the softmax scale both changed */
    fy_config c6 = c;
    c6.qk_rope_head_dim = 8;
    c6.rope_theta = 100.0;
    fy_rope_scaling y = {.yarn = 1, .factor = 8, .original_max_position_embeddings = 4, .beta_fast = 2,
                         .beta_slow = 0.5, .mscale = 0.8, .mscale_all_dim = 1.0, .truncate = 0};
    c6.rope_scaling = y;
    check_config("yarn", c6, 2, 7);
    return fy_test_finish("test_model_grad");
}
