/* The parameter table's layout (model/params.h): the dense params first,
 * the routed experts after n_dense, each tensor 16-aligned and inside its
 * region without overlap; and expert shards (fy_params_build_shard): over
 * 1..5 ranks of a model with 7 experts (uneven shares), every shard has the
 * whole table's dense part at the same offsets, exactly its own experts, the
 * whole table's tensor ids (the init's random streams), and together the
 * shards hold every expert once. A checkpoint loader and the init rely on
 * all of it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/params.h"
#include "testutil.h"

static fy_config config(void) {
    fy_config c;
    fy_err err;
    fy_config_builtin("tiny", 97, &c, &err);
    c.n_routed_experts = 7;
    c.num_experts_per_tok = 2;
    c.n_group = 1;
    c.topk_group = 1;
    c.num_nextn_predict_layers = 1; /* an MoE MTP module: its experts end the block */
    return c;
}

static int expert_of(const char *name, int *layer) {
    int e;
    return sscanf(name, "model.layers.%d.mlp.experts.%d.", layer, &e) == 2 ? e : -1;
}

/* Regions, alignment and no overlap (tensors sorted by offset touch at most). */
static void check_layout(const fy_param_table *t, const char *what) {
    int bad_region = 0, bad_align = 0, overlap = 0, trained = 0;
    size_t end_dense = 0, end_exp = t->n_dense;
    for (int i = 0; i < t->n; i++) {
        const fy_tensor_info *ti = &t->t[i];
        if (ti->is_buffer) continue;
        trained++;
        int li, e = expert_of(ti->name, &li);
        bad_region += (e >= 0) != ti->expert;
        bad_region += ti->expert ? ti->off < t->n_dense || ti->off + ti->n > t->n_params : ti->off + ti->n > t->n_dense;
        bad_align += ti->off % 16 != 0;
        /* registration order is offset order within a region */
        size_t *end = ti->expert ? &end_exp : &end_dense;
        overlap += ti->off < *end;
        *end = ti->off + ti->n;
    }
    CHECK(trained > 0 && bad_region == 0, "%s: %d tensors outside their region", what, bad_region);
    CHECK(bad_align == 0, "%s: %d tensors not 16-aligned", what, bad_align);
    CHECK(overlap == 0, "%s: %d tensors overlap the one before", what, overlap);
    CHECK(end_dense <= t->n_dense && t->n_dense - end_dense < 16, "%s: dense region ends at %zu, n_dense %zu", what,
          end_dense, t->n_dense);
    for (int li = 0; li < t->n_layers; li++) {
        const fy_layer_offs *L = &t->layer[li];
        CHECK(L->span_lo <= L->span_hi && L->span_hi <= t->n_dense, "%s: layer %d dense span", what, li);
        CHECK(L->xspan_lo >= t->n_dense && L->xspan_hi <= t->n_params && (L->moe || L->xspan_lo == L->xspan_hi),
              "%s: layer %d expert span [%zu, %zu)", what, li, L->xspan_lo, L->xspan_hi);
        if (li) CHECK(L->xspan_lo == t->layer[li - 1].xspan_hi, "%s: expert spans of layers %d, %d not adjacent", what,
                      li - 1, li);
    }
    CHECK(t->layer[t->n_layers - 1].xspan_hi == t->n_params, "%s: the last layer's experts do not end the block", what);
}

int main(void) {
    fy_config c = config();
    fy_err err;
    fy_param_table whole;
    CHECK(fy_params_build(&c, &whole, &err) == 0, "%s", err.msg);
    check_layout(&whole, "whole table");
    CHECK(!fy_params_is_shard(&whole) && whole.n == whole.n_all, "the whole table calls itself a shard");
    CHECK(whole.n_dense < whole.n_params, "no expert region");
    for (int i = 0; i < whole.n; i++) CHECK(whole.t[i].id == i, "tensor %d has id %d", i, whole.t[i].id);

    const int E = c.n_routed_experts;
    for (int R = 1; R <= 5; R++) {
        int *held = calloc((size_t)whole.n_layers * E, sizeof *held);
        for (int r = 0; r < R; r++) {
            fy_param_table s;
            char what[64];
            snprintf(what, sizeof what, "shard %d of %d", r, R);
            if (fy_params_build_shard(&c, r, R, &s, &err)) {
                CHECK(0, "%s: %s", what, err.msg);
                continue;
            }
            check_layout(&s, what);
            CHECK(s.exp_lo == E * r / R && s.exp_hi == E * (r + 1) / R, "%s: experts [%d, %d)", what, s.exp_lo, s.exp_hi);
            CHECK(fy_params_is_shard(&s) == (R > 1), "%s: is_shard %d", what, fy_params_is_shard(&s));
            CHECK(s.n_dense == whole.n_dense && s.n_all == whole.n, "%s: dense %zu of %zu, %d tensors of %d", what,
                  s.n_dense, whole.n_dense, s.n_all, whole.n);
            int wrong = 0, foreign = 0;
            for (int i = 0; i < s.n; i++) {
                const fy_tensor_info *a = &s.t[i], *b = fy_params_find(&whole, a->name);
                int li, e = expert_of(a->name, &li);
                if (!b || a->id != b->id || a->n != b->n || a->is_buffer != b->is_buffer) wrong++;
                else if (!a->expert && a->off != b->off) wrong++;
                if (e >= 0 && (e < s.exp_lo || e >= s.exp_hi)) foreign++;
                if (e >= 0 && !strstr(a->name, "up_proj") && !strstr(a->name, "down_proj")) held[li * E + e]++;
            }
            CHECK(wrong == 0, "%s: %d tensors differ from the whole table's (id, size, dense offset)", what, wrong);
            CHECK(foreign == 0, "%s: holds %d tensors of other ranks' experts", what, foreign);
            /* the model's expert addressing: exp_gate + (e - exp_lo) * stride */
            int addr = 0;
            for (int li = 0; li < s.n_layers; li++) {
                const fy_layer_offs *L = &s.layer[li];
                for (int e = s.exp_lo; e < s.exp_hi && L->moe; e++) {
                    char name[96];
                    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.down_proj.weight", li, e);
                    const fy_tensor_info *t = fy_params_find(&s, name);
                    addr += !t || t->off != L->exp_down + (size_t)(e - s.exp_lo) * L->exp_stride;
                }
            }
            CHECK(addr == 0, "%s: %d experts not where exp_down + (e - exp_lo) * stride says", what, addr);
            fy_params_free(&s);
        }
        int once = 1;
        for (int li = 0; li < whole.n_layers; li++)
            for (int e = 0; e < E && whole.layer[li].moe; e++) once &= held[li * E + e] == 1;
        CHECK(once, "%d ranks: some expert is held by none or by several", R);
        free(held);
    }
    fy_param_table bad;
    CHECK(fy_params_build_shard(&c, 3, 3, &bad, &err) != 0, "rank 3 of 3 accepted");
    CHECK(fy_params_build_shard(&c, 0, 8, &bad, &err) != 0 && strstr(err.msg, "routed experts"),
          "7 experts over 8 ranks accepted");
    fy_params_free(&whole);
    return fy_test_finish("test_params");
}
