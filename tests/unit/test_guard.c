/* Guards (train/guard.h) and fault injection (train/inject.h): spike
 * detection, snapshot round trips, per-tensor state checksums naming the
 * corrupted tensor, FERRY_INJECT parsing, and the chaos backend's ABFT check
 * when it is built. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "model/model.h"
#include "train/guard.h"
#include "train/inject.h"
#include "optim/optim.h"
#include "train/trainer.h"
#include "testutil.h"

static void test_spike(void) {
    fy_guard_opts o;
    fy_guard_opts_default(&o);
    fy_loss_window w;
    CHECK(fy_loss_window_init(&w, 16) == 0, "init");
    char why[256];
    CHECK(!fy_loss_is_spike(&w, &o, 100.0, why, sizeof why), "empty window judges nothing");
    for (int i = 0; i < 20; i++) fy_loss_window_push(&w, 2.0 + 0.05 * ((i * 7) % 5 - 2));
    CHECK(w.n == 16, "window keeps 16, has %d", w.n);
    CHECK(!fy_loss_is_spike(&w, &o, 2.1, why, sizeof why), "noise is not a spike");
    CHECK(!fy_loss_is_spike(&w, &o, 2.5, why, sizeof why), "25%% up is not a spike (ratio 1.3)");
    CHECK(fy_loss_is_spike(&w, &o, 6.0, why, sizeof why), "3x is a spike");
    CHECK(strstr(why, "sigma") != NULL, "reason: %s", why);
    o.spike_ratio = 4.0;
    CHECK(!fy_loss_is_spike(&w, &o, 6.0, why, sizeof why), "ratio threshold respected");
    fy_loss_window_push(&w, NAN);
    CHECK(w.n == 16, "NaN not pushed");
    fy_loss_window_free(&w);
    fy_loss_window w0;
    fy_loss_window_init(&w0, 0);
    CHECK(!fy_loss_is_spike(&w0, &o, 1e9, why, sizeof why), "window 0 disables");
}

static void test_parse(void) {
    fy_inject inj;
    fy_err err;
    CHECK(fy_inject_parse(NULL, &inj, &err) == 0 && inj.n == 0, "unset");
    CHECK(fy_inject_parse("nan_grad:step=30;flip_weight:step=50,tensor=a.b,index=7,bit=30;spike:step=70,repeat=2;"
                          "gemm:step=90;flip_moment:step=3,moment=m",
                          &inj, &err) == 0,
          "parse: %s", err.msg);
    CHECK(inj.n == 5, "n=%d", inj.n);
    CHECK(inj.f[0].kind == FY_INJ_NAN_GRAD && inj.f[0].step == 30 && inj.f[0].repeat == 1, "nan_grad");
    CHECK(inj.f[1].kind == FY_INJ_FLIP_WEIGHT && inj.f[1].index == 7 && inj.f[1].bit == 30 &&
              !strcmp(inj.f[1].tensor, "a.b"),
          "flip_weight");
    CHECK(inj.f[2].kind == FY_INJ_SPIKE && inj.f[2].repeat == 2, "spike");
    CHECK(inj.f[3].kind == FY_INJ_GEMM && inj.f[3].step == 90, "gemm");
    CHECK(inj.f[4].kind == FY_INJ_FLIP_MOMENT && inj.f[4].moment == 'm', "moment");
    CHECK(fy_inject_parse("meteor:step=1", &inj, &err) != 0 && strstr(err.msg, "meteor"), "unknown kind");
    CHECK(fy_inject_parse("spike", &inj, &err) != 0 && strstr(err.msg, "step"), "step required");
    CHECK(fy_inject_parse("spike:step=x", &inj, &err) != 0, "bad number");
    CHECK(fy_inject_parse("flip_weight:step=1,bit=40", &inj, &err) != 0, "bit out of range");
    int32_t lab[8] = {1, 2, 3, -100, 5, 6, 7, 8}, orig[8];
    memcpy(orig, lab, sizeof lab);
    char what[256];
    fy_inject_parse("spike:step=4", &inj, &err);
    CHECK(!fy_inject_batch(&inj, 3, lab, 8, 50, what, sizeof what), "not at step 3");
    CHECK(fy_inject_batch(&inj, 4, lab, 8, 50, what, sizeof what), "at step 4");
    CHECK(lab[3] == -100 && memcmp(lab, orig, sizeof lab) != 0, "labels poisoned, ignore kept");
    CHECK(!fy_inject_batch(&inj, 4, lab, 8, 50, what, sizeof what), "transient: fires once");
}

static void test_state(void) {
    fy_config c;
    fy_err err;
    if (fy_config_builtin("tiny", 37, &c, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    c.hidden_size = 16; c.num_hidden_layers = 2; c.num_attention_heads = 2; c.q_lora_rank = 8;
    c.kv_lora_rank = 8; c.qk_nope_head_dim = 4; c.qk_rope_head_dim = 4; c.v_head_dim = 4;
    c.n_routed_experts = 4; c.num_experts_per_tok = 2; c.moe_intermediate_size = 8;
    c.intermediate_size = 16; c.first_k_dense_replace = 1;
    fy_backend *be;
    fy_model m;
    fy_adamw opt = {0};
    fy_adamw_opts ao = {1e-3f, 1e-4f, 1, 10, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f};
    if (fy_backend_create("cpu", &be, &err) || fy_model_create(&m, &c, be, &err) ||
        fy_model_init_weights(&m, 3, &err) || fy_adamw_create(&opt, &m, &ao, &err)) {
        CHECK(0, "setup: %s", err.msg);
        return;
    }
    /* one real step so the moments are not zero */
    int32_t in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, lab[8] = {2, 3, 4, 5, 6, 7, 8, 9};
    fy_loss l;
    float gn, lr;
    fy_model_zero_grad(&m);
    CHECK(!fy_model_forward(&m, in, lab, 2, 4, 1, &l, &err) && !fy_model_backward(&m, &err) &&
              !fy_adamw_step(&opt, &m, &gn, &lr, &err) && !fy_model_update_bias(&m, &err),
          "step: %s", err.msg);

    fy_state_sums s = {0};
    char where[256];
    CHECK(fy_state_sums_compute(&s, &m, &opt, &err) == 0, "sums");
    CHECK(fy_state_sums_verify(&s, &m, &opt, where, sizeof where, &err) == 0, "unchanged verifies");
    fy_snapshot snap = {0};
    CHECK(fy_snapshot_take(&snap, &m, &opt, 1, &err) == 0, "snapshot");

    fy_inject inj;
    fy_inject_parse("flip_weight:step=1,tensor=model.layers.1.mlp.gate.weight,index=3,bit=22;"
                    "flip_moment:step=2,tensor=model.layers.0.self_attn.o_proj.weight,index=1,bit=30,moment=v;"
                    "flip_moment:step=3,tensor=lm_head.weight,index=0,bit=26,moment=m",
                    &inj, &err);
    CHECK(fy_inject_resolve(&inj, &m, &err) == 0, "resolve: %s", err.msg);
    const char *expect[3] = {"weight model.layers.1.mlp.gate.weight", "adam.v[model.layers.0.self_attn.o_proj.weight]",
                             "adam.m[lm_head.weight]"};
    for (int k = 0; k < 3; k++) {
        char what[256];
        CHECK(fy_inject_state(&inj, k + 1, &m, &opt, what, sizeof what) == 1, "inject %d", k);
        CHECK(fy_state_sums_verify(&s, &m, &opt, where, sizeof where, &err) == 1, "flip %d detected", k);
        CHECK(!strcmp(where, expect[k]), "named %s, expected %s", where, expect[k]);
        CHECK(fy_snapshot_restore(&snap, &m, &opt, &err) == 0, "restore");
        CHECK(fy_state_sums_verify(&s, &m, &opt, where, sizeof where, &err) == 0, "restore is exact (%s)", where);
        CHECK(opt.t == 1, "opt.t restored");
    }
    CHECK(fy_inject_resolve(&(fy_inject){.n = 1, .f = {{.kind = FY_INJ_NAN_GRAD, .step = 1, .bit = 30, .repeat = 1, .moment = 'v', .tensor = "nope"}}}, &m, &err) != 0,
          "unknown tensor rejected");

    /* nan in a gradient is found and named */
    fy_inject_parse("nan_grad:step=5,tensor=model.norm.weight,index=2", &inj, &err);
    CHECK(fy_inject_resolve(&inj, &m, &err) == 0, "resolve nan: %s", err.msg);
    char what[256];
    fy_model_zero_grad(&m);
    CHECK(fy_inject_grad(&inj, 5, &m, what, sizeof what) == 1, "nan injected");
    CHECK(fy_find_nonfinite_grad(&m, where, sizeof where, &err) == 0 && strstr(where, "model.norm.weight[2]"),
          "nan named: %s", where);

    fy_snapshot_free(&snap);
    fy_state_sums_free(&s);
    fy_adamw_free(&opt, be);
    fy_model_free(&m);
    fy_backend_destroy(be);
}

/* ABFT on chaos:cpu: every transpose combination and beta, no false alarm
 * on large random products; one corrupted element is found. */
static void test_abft(void) {
    fy_backend *be;
    fy_err err;
    if (fy_backend_create("chaos:cpu", &be, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    CHECK(fy_be_fault_checks(be) && !strcmp(be->ops->name, "chaos:cpu"), "chaos backend, name %s", be->ops->name);
    const int M = 37, N = 29, K = 301;
    fy_buf a, b, cc;
    be->ops->alloc(be, &a, (size_t)M * K, &err);
    be->ops->alloc(be, &b, (size_t)K * N, &err);
    be->ops->alloc(be, &cc, (size_t)M * N, &err);
    float *h = malloc(sizeof(float) * (size_t)K * (M > N ? M : N));
    uint64_t x = 99;
    for (size_t i = 0; i < (size_t)K * (M > N ? M : N); i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        h[i] = (float)((double)(x >> 11) * 0x1.0p-53 * 200.0 - 100.0);
    }
    be->ops->upload(be, fy_at(&a, 0), h, (size_t)M * K);
    be->ops->upload(be, fy_at(&b, 0), h + 7, (size_t)K * N);
    be->ops->upload(be, fy_at(&cc, 0), h + 3, (size_t)M * N);
    fy_be_fault f;
    int step = 1;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bi = 0; bi < 2; bi++) {
                fy_be_fault_begin_step(be, step++, 1.0, -1);
                be->ops->gemm(be, ta, tb, M, N, K, 0.7f, fy_at(&a, 0), ta ? M : K, fy_at(&b, 0), tb ? K : N,
                              bi ? 0.5f : 0.0f, fy_at(&cc, 0), N);
                CHECK(!fy_be_fault_take(be, &f), "false alarm ta=%d tb=%d beta=%d: %g vs %g tol %g", ta, tb,
                      bi, f.got, f.want, f.tol);
                fy_be_fault_begin_step(be, step++, 1.0, 0);
                be->ops->gemm(be, ta, tb, M, N, K, 0.7f, fy_at(&a, 0), ta ? M : K, fy_at(&b, 0), tb ? K : N,
                              bi ? 0.5f : 0.0f, fy_at(&cc, 0), N);
                CHECK(fy_be_fault_take(be, &f) && f.column == N / 2 && f.gemm_index == 0,
                      "corruption missed ta=%d tb=%d beta=%d", ta, tb, bi);
            }
    long checked, faults;
    fy_be_fault_counts(be, &checked, &faults);
    CHECK(checked == 16 && faults == 8, "checked %ld, faults %ld", checked, faults);
    fy_be_fault_begin_step(be, 100, 0.0, -1);
    be->ops->gemm(be, 0, 0, M, N, K, 1.0f, fy_at(&a, 0), K, fy_at(&b, 0), N, 0.0f, fy_at(&cc, 0), N);
    fy_be_fault_counts(be, &checked, &faults);
    CHECK(checked == 16, "fraction 0 checks nothing");
    CHECK(fy_be_sync(be, &err) == 0, "sync: %s", err.msg);
    free(h);
    be->ops->free(be, &a);
    be->ops->free(be, &b);
    be->ops->free(be, &cc);
    fy_backend_destroy(be);
    CHECK(!fy_backend_create("cpu", &be, &err), "cpu: %s", err.msg);
    CHECK(!fy_be_fault_checks(be) && !fy_be_fault_begin_step(be, 1, 1.0, 0) && !fy_be_fault_take(be, &f),
          "cpu checks nothing");
    fy_backend_destroy(be);
    CHECK(fy_backend_create("chaos:chaos:cpu", &be, &err) != 0, "chaos cannot wrap chaos");
}

/* Guard settings: defaults (guards on, ABFT off) and the config.json round
 * trip a resumed run relies on. */
static void test_opts(void) {
    fy_train_opts o, back;
    fy_err err;
    fy_train_opts_default(&o);
    CHECK(o.guard.nonfinite && o.guard.spike_window > 0 && o.guard.weight_checksum && o.guard.abft_fraction == 0.02 && o.guard.recompute_every == 0,
          "defaults");
    o.guard.spike_z = 4.5;
    o.guard.snapshot_every = 7;
    o.guard.abft_fraction = 0.25;
    o.guard.weight_checksum = 0;
    char *js = fy_train_opts_to_json(&o), text[4096];
    snprintf(text, sizeof text, "{\"ferry\": %s}", js);
    free(js);
    fy_train_opts_default(&back);
    CHECK(fy_train_opts_from_json(text, "t", &back, &err) == 0, "parse: %s", err.msg);
    CHECK(back.guard.spike_z == 4.5 && back.guard.snapshot_every == 7 && back.guard.abft_fraction == 0.25 &&
              back.guard.weight_checksum == 0 && back.guard.max_failures == o.guard.max_failures,
          "round trip");
    CHECK(fy_train_opts_from_json("{\"ferry\": {\"abft_fraction\": 2}}", "t", &back, &err) != 0 &&
              strstr(err.msg, "abft_fraction"),
          "range checked: %s", err.msg);
}

int main(void) {
    test_opts();
    test_abft();
    test_spike();
    test_parse();
    test_state();
    return fy_test_finish("test_guard");
}
