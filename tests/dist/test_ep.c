/* Expert parallelism under mpirun -np N (tests/cmake/dist.cmake runs N = 2
 * and 3): the gradient the ranks get with the routed experts split over them
 * must equal, within fp32 rounding, the data-parallel gradient of the same
 * global batch, which every rank computes here by itself on a second copy of
 * the model without expert parallelism (one forward and backward per rank's
 * rows, summed in the tree order of the DP reduction).
 *
 * Also checked: each rank's loss and router loads equal the reference; a
 * rank holds only its own experts (its table is a shard of the expected
 * size; each expert starts from the whole model's weights) and an owned
 * expert's gradient is complete without any reduction; rows crossed the
 * network; and the inference forward
 * (no gradient) gives the reference logits. The model has a dense layer, an
 * MoE layer and an MoE MTP module, and 7 routed experts, which split
 * unevenly over 2 and 3 ranks.
 *   test_ep */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/rng.h"
#include "parallel/comm.h"
#include "parallel/ep.h"
#include "model/model.h"

#include "rank_check.h"

static void die(const char *what, const fy_err *err) {
    fprintf(stderr, "rank %d: %s: %s\n", rank_, what, err->msg);
    exit(1);
}

static fy_config config(void) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", 53, &c, &err)) die("config", &err);
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.q_lora_rank = 12;
    c.kv_lora_rank = 10;
    c.qk_nope_head_dim = 8;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 8;
    c.n_routed_experts = 7;
    c.num_experts_per_tok = 2;
    c.n_shared_experts = 1;
    c.moe_intermediate_size = 12;
    c.intermediate_size = 24;
    c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1;
    c.aux_loss_alpha = 0.01f;
    c.seq_aux = 1;
    c.initializer_range = 0.2f;
    return c;
}

static void make(fy_model *m, const fy_config *c, fy_backend *be) {
    fy_err err;
    if (fy_model_create(m, c, be, &err) || fy_model_init_weights(m, 5, &err)) die("model", &err);
}

/* Rows [r*B, (r+1)*B) of the global batch. */
static void batch(int r, int B, int T, int V, int32_t *in, int32_t *lab) {
    for (int i = 0; i < B * T; i++) {
        size_t g = (size_t)r * B * T + i;
        in[i] = (int)(fy_rng_u64(9, 1, g) % V);
        lab[i] = (int)(fy_rng_u64(9, 2, g) % V);
    }
}

static void grads(fy_model *m, const int32_t *in, const int32_t *lab, int B, int T, fy_loss *l, float *g) {
    fy_err err;
    fy_model_zero_grad(m);
    if (fy_model_forward(m, in, lab, B, T, 1, l, &err) || fy_model_backward(m, &err)) die("step", &err);
    m->be->ops->download(m->be, g, fy_at(&m->grads, 0), m->tab.n_params);
    if (fy_be_sync(m->be, &err)) die("sync", &err);
}

int main(void) {
    fy_err err;
    fy_comm *comm;
    if (fy_comm_init(getenv("OMPI_COMM_WORLD_SIZE") != NULL, 60, &comm, &err)) die("comm", &err);
    int R = fy_comm_size(comm);
    rank_ = fy_comm_rank(comm);
    fy_backend *be;
    if (fy_backend_cpu_create(&be, &err)) die("backend", &err);
    fy_config c = config();
    fy_model ref, ep;
    make(&ref, &c, be);
    make(&ep, &c, be);
    if (fy_ep_attach(comm, &ep, &err)) die("attach", &err);
    const int B = 2, T = 12, N = B * T, E = c.n_routed_experts;
    const size_t n = ref.tab.n_params, nl = (size_t)ref.tab.n_layers * (E + 1);
    int32_t *in = malloc(N * sizeof *in), *lab = malloc(N * sizeof *lab);
    float *g_ep = malloc(n * sizeof(float)), **g_ref = malloc(R * sizeof *g_ref);
    float *g_sum = malloc(n * sizeof(float));
    int64_t *loads_ref = calloc(nl, sizeof *loads_ref);

    /* The reference: every rank's rows through the model without EP. */
    fy_loss l_ref = {0}, l;
    for (int r = 0; r < R; r++) {
        g_ref[r] = malloc(n * sizeof(float));
        batch(r, B, T, c.vocab_size, in, lab);
        grads(&ref, in, lab, B, T, &l, g_ref[r]);
        if (r == rank_) {
            l_ref = l;
            memcpy(loads_ref, ref.loads, nl * sizeof *loads_ref);
        }
        memset(ref.loads, 0, nl * sizeof *ref.loads);
    }
    fy_tree_sum((const float *const *)g_ref, R, n, g_sum);

    /* Expert parallel: this rank's rows, the experts split over the ranks. */
    uint64_t bytes0 = fy_comm_bytes_sent(comm);
    batch(rank_, B, T, c.vocab_size, in, lab);
    if (fy_model_init_weights(&ep, 5, &err)) die("init", &err); /* attaching reallocated the shard */
    grads(&ep, in, lab, B, T, &l, g_ep);
    CHECK(fabs(l.total - l_ref.total) <= 1e-5 * fabs(l_ref.total), "loss %.9g, reference %.9g", l.total,
          l_ref.total);
    CHECK(fabs(l.balance - l_ref.balance) <= 1e-5 * fabs(l_ref.balance) + 1e-9, "balance loss %.9g vs %.9g",
          l.balance, l_ref.balance);
    CHECK(!memcmp(ep.loads, loads_ref, nl * sizeof *loads_ref), "router loads differ from the reference");
    if (R > 1) CHECK(fy_comm_bytes_sent(comm) > bytes0, "no expert rows crossed the network");

    /* The rank holds its own experts only: the table is a shard whose dense
     * part is laid out as the whole model's, and each expert it holds has
     * the whole model's initial weights. */
    int lo, hi, missing = 0, foreign = 0, moe_layers = 0;
    fy_model_expert_range(&ep, rank_, &lo, &hi);
    CHECK(hi > lo, "rank %d owns no experts", rank_);
    CHECK(ep.tab.n_dense == ref.tab.n_dense, "dense part %zu floats, whole model %zu", ep.tab.n_dense, ref.tab.n_dense);
    for (int li = 0; li < ref.tab.n_layers; li++) moe_layers += ref.tab.layer[li].moe;
    const size_t per_expert = 3 * ((((size_t)c.moe_intermediate_size * c.hidden_size + 15) / 16) * 16);
    CHECK(ep.tab.n_params == ref.tab.n_dense + (size_t)moe_layers * (hi - lo) * per_expert,
          "rank %d holds %zu floats, expected the dense %zu + %d layers x %d experts", rank_, ep.tab.n_params,
          ref.tab.n_dense, moe_layers, hi - lo);
    if (R > 1) CHECK(ep.tab.n_params < ref.tab.n_params, "the shard is not smaller than the whole model");
    float *p_ref = malloc(ref.tab.n_params * sizeof *p_ref), *p_ep = malloc(ep.tab.n_params * sizeof *p_ep);
    be->ops->download(be, p_ref, fy_at(&ref.params, 0), ref.tab.n_params);
    be->ops->download(be, p_ep, fy_at(&ep.params, 0), ep.tab.n_params);
    if (fy_be_sync(be, &err)) die("sync", &err);
    double gmax = 0, dmax = 0;
    size_t worst = 0;
    int wrong_init = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g_sum[i]));
    for (int i = 0; i < ref.tab.n; i++) {
        const fy_tensor_info *t = &ref.tab.t[i], *u = fy_params_find(&ep.tab, t->name);
        int e = -1, li = -1;
        if (sscanf(t->name, "model.layers.%d.mlp.experts.%d.", &li, &e) != 2) e = -1;
        if (e >= 0 && (e < lo || e >= hi)) {
            foreign += u != NULL;
            continue;
        }
        if (!u) {
            missing++;
            continue;
        }
        if (t->is_buffer) continue;
        wrong_init += memcmp(p_ref + t->off, p_ep + u->off, t->n * sizeof(float)) != 0;
        /* An owned expert's gradient is complete here (it ran every rank's
         * rows): compare it now; the dense part after the sum below. */
        if (e >= 0)
            for (size_t j = 0; j < t->n; j++) {
                double dd = fabs((double)g_ep[u->off + j] - g_sum[t->off + j]);
                if (dd > dmax) dmax = dd, worst = t->off + j;
            }
    }
    CHECK(foreign == 0, "rank %d holds %d tensors of other ranks' experts", rank_, foreign);
    CHECK(missing == 0, "rank %d lacks %d of its tensors", rank_, missing);
    CHECK(wrong_init == 0, "%d tensors start from other weights than the whole model's", wrong_init);
    free(p_ref);
    free(p_ep);

    /* The data-parallel sum of the dense part gives its whole gradient. */
    const size_t nd = ref.tab.n_dense;
    if (fy_comm_allreduce_f32(comm, g_ep, nd, &err)) die("all-reduce", &err);
    for (size_t i = 0; i < nd; i++) {
        double dd = fabs((double)g_ep[i] - g_sum[i]);
        if (dd > dmax) dmax = dd, worst = i;
    }
    CHECK(gmax > 0, "zero reference gradient");
    CHECK(dmax <= 1e-5 * gmax, "gradient differs from data parallel by %.3g at %zu (max |g| %.3g)", dmax, worst,
          gmax);

    /* Inference forward (no gradient): the same logits. */
    fy_loss li_ref, li_ep;
    if (fy_model_forward(&ref, in, NULL, B, T, 0, &li_ref, &err)) die("forward", &err);
    if (fy_model_forward(&ep, in, NULL, B, T, 0, &li_ep, &err)) die("forward", &err);
    size_t nv = (size_t)N * c.vocab_size;
    float *a = malloc(nv * sizeof *a), *b = malloc(nv * sizeof *b);
    be->ops->download(be, a, fy_model_logits(&ref), nv);
    be->ops->download(be, b, fy_model_logits(&ep), nv);
    if (fy_be_sync(be, &err)) die("sync", &err);
    double lmax = 0, ldiff = 0;
    for (size_t i = 0; i < nv; i++) lmax = fmax(lmax, fabs(a[i])), ldiff = fmax(ldiff, fabs(a[i] - b[i]));
    CHECK(ldiff <= 1e-5 * lmax, "logits differ by %.3g (max %.3g)", ldiff, lmax);

    /* More ranks than experts is refused with a reason. */
    fy_model few;
    fy_config c2 = c;
    c2.n_routed_experts = 1;
    c2.num_experts_per_tok = 1;
    make(&few, &c2, be);
    if (R > 1) {
        int rc = fy_ep_attach(comm, &few, &err);
        CHECK(rc != 0 && strstr(err.msg, "routed experts"), "1 expert over %d ranks accepted (%s)", R,
              rc ? err.msg : "");
    }
    fy_model_free(&few);

    free(a); free(b);
    for (int r = 0; r < R; r++) free(g_ref[r]);
    free(g_ref); free(g_ep); free(g_sum); free(in); free(lab); free(loads_ref);
    fy_model_free(&ref);
    fy_model_free(&ep);
    fy_backend_destroy(be);
    int bad = fail;
    {
        int64_t f = fail;
        if (fy_comm_allreduce_i64(comm, &f, 1, &err)) die("all-reduce", &err);
        bad = (int)f;
    }
    printf("rank %d: expert parallel over %d ranks: %d passed, %d failed\n", rank_, R, pass, fail);
    fy_comm_finalize(comm);
    return bad ? 1 : 0;
}
