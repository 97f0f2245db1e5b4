/* serve/verify: a model captured on cpu and on chaos:cpu (the same kernels)
 * agrees exactly; perturbed (fy_backend_opts.perturb, FERRY_PERTURB in the
 * CLI) the comparison fails and names a
 * gradient tensor; the error measure handles all-zero tensors, a zero
 * reference with a non-zero answer, and NaN (always a failure); captures of
 * different shapes are refused; the greedy check finds the first
 * differing position. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "serve/verify.h"
#include "testutil.h"

static fy_config small_config(int V) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", V, &c, &err)) exit(1);
    c.hidden_size = 40; c.num_hidden_layers = 3; c.num_attention_heads = 3;
    c.q_lora_rank = 20; c.kv_lora_rank = 18; c.qk_nope_head_dim = 10; c.qk_rope_head_dim = 6;
    c.v_head_dim = 9; c.moe_intermediate_size = 14; c.intermediate_size = 30;
    c.n_routed_experts = 6; c.num_experts_per_tok = 2; c.n_shared_experts = 1; c.first_k_dense_replace = 1;
    c.num_nextn_predict_layers = 1;
    c.initializer_range = 0.2f;
    return c;
}

/* The options backends are created with (the perturbation under test). */
static fy_backend_opts g_opts;

/* Model with seeded weights on `spec`, captured on in. */
static int capture(const char *spec, const fy_config *c, const fy_verify_input *in, fy_verify_capture *out,
                   fy_param_table *tab_copy_n, fy_err *err) {
    fy_backend *be;
    fy_model m;
    if (fy_backend_create_opts(spec, &g_opts, &be, err)) return -1;
    int rc = fy_model_create(&m, c, be, err) || fy_model_init_weights(&m, 5, err) ||
             fy_verify_capture_run(&m, in, out, err);
    if (!rc && tab_copy_n) rc = fy_params_build(c, tab_copy_n, err);
    fy_model_free(&m);
    fy_backend_destroy(be);
    return rc ? -1 : 0;
}

static void models(void) {
    const int V = 61, B = 2, T = 12;
    fy_config c = small_config(V);
    int32_t in[B * T], lab[B * T], prompt[4] = {3, 14, 15, 9};
    for (int i = 0; i < B * T; i++) {
        in[i] = (i * 17 + 5) % V;
        lab[i] = i % 7 == 3 ? FY_IGNORE_INDEX : (i * 29 + 1) % V;
    }
    fy_verify_input vin = {B, T, in, lab, prompt, 4, 10};
    fy_verify_capture ref, got;
    fy_param_table tab;
    fy_verify_tol tol = {1e-4, 1e-3};
    fy_verify_report r;
    fy_err err;
    g_opts.perturb = NULL;
    CHECK(capture("cpu", &c, &vin, &ref, &tab, &err) == 0, "cpu capture: %s", err.msg);
    CHECK(ref.n_greedy == 10 && ref.n_route == (size_t)B * T * 2 * 2, "capture sizes %d %zu", ref.n_greedy,
          ref.n_route);
    CHECK(capture("chaos:cpu", &c, &vin, &got, NULL, &err) == 0, "chaos capture: %s", err.msg);
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0, "compare: %s", err.msg);
    CHECK(r.pass && r.logits.max_abs == 0 && r.grads[0].d.rel == 0 && r.greedy_first_diff < 0 && !r.route_diff,
          "cpu vs chaos:cpu not identical: %s", r.reason);
    CHECK(r.n_grads > 10 && r.n_losses == 4, "n_grads %d, n_losses %d (total, main, balance, mtp1)", r.n_grads,
          r.n_losses);
    fy_verify_report_free(&r);
    fy_verify_capture_free(&got);

    g_opts.perturb = "rmsnorm:1e-3";
    CHECK(capture("chaos:cpu", &c, &vin, &got, NULL, &err) == 0, "perturbed capture: %s", err.msg);
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0, "compare: %s", err.msg);
    CHECK(!r.pass && r.n_grads_over > 0 && strstr(r.reason, "gradient of ") &&
              strstr(r.reason, tab.t[r.grads[0].tensor].name),
          "perturbed run passes or names no tensor: %s", r.reason);
    CHECK(r.logits.rel > 5e-4, "rmsnorm x (1+1e-3) moved the logits by only %g", r.logits.rel);
    fy_verify_report_free(&r);
    fy_verify_capture_free(&got);

    g_opts.perturb = "gemm:1e-3";
    fy_backend *be = NULL;
    CHECK(fy_backend_create_opts("chaos:cpu", &g_opts, &be, &err) != 0 && strstr(err.msg, "FERRY_PERTURB"),
          "an unknown perturbation is accepted");
    g_opts.perturb = NULL;
    /* The perturbation belongs to chaos only. */
    CHECK(capture("cpu", &c, &vin, &got, NULL, &err) == 0, "cpu capture: %s", err.msg);
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0 && r.pass, "cpu vs cpu: %s", r.reason);
    fy_verify_report_free(&r);

    /* Greedy: the first differing position; shapes must match. */
    got.greedy[6] ^= 1;
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0 && !r.pass && r.greedy_first_diff == 6 &&
              strstr(r.reason, "position 6"),
          "greedy difference at 6 reported as %d: %s", r.greedy_first_diff, r.reason);
    fy_verify_report_free(&r);
    got.greedy[6] ^= 1;
    /* A NaN in one gradient tensor is the worst tensor, whatever its size. */
    const fy_tensor_info *t = &tab.t[tab.n / 2];
    got.grads[t->off] = NAN;
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0 && !r.pass && isnan(r.grads[0].d.rel) &&
              r.grads[0].tensor == tab.n / 2 && strstr(r.reason, t->name),
          "NaN gradient not reported first: %s", r.reason);
    fy_verify_report_free(&r);
    got.grads[t->off] = ref.grads[t->off];
    /* A reference of zeros: an exact zero passes, anything else fails. */
    memset(ref.grads + t->off, 0, t->n * sizeof(float));
    memset(got.grads + t->off, 0, t->n * sizeof(float));
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0 && r.pass, "zero vs zero: %s", r.reason);
    fy_verify_report_free(&r);
    got.grads[t->off] = 1e-20f;
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) == 0 && !r.pass && isinf(r.grads[0].d.rel),
          "zero reference vs non-zero passes: %s", r.reason);
    fy_verify_report_free(&r);
    got.n_greedy--;
    CHECK(fy_verify_compare(&tab, &ref, &got, &tol, &r, &err) != 0, "captures of different shapes compared");
    got.n_greedy++;
    fy_verify_capture_free(&got);
    fy_verify_capture_free(&ref);
    fy_params_free(&tab);
}

int main(void) {
    models();
    return fy_test_finish("test_verify");
}
