/* config.json <-> fy_config, the built-in model sizes, and validation. */
#include "model/config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"

/* ---- defaults and built-in sizes --------------------------------------- */

/* Absent optional keys default as in DeepSeek's configuration_deepseek.py
 * (its None sizes read as 0 = unused, its None groups as 1). */
static void set_parse_defaults(fy_config *c) {
    memset(c, 0, sizeof *c);
    c->intermediate_size = 11008;
    c->moe_intermediate_size = 1407;
    c->q_lora_rank = 1536;
    c->n_routed_experts = 0;
    c->n_shared_experts = 0;
    c->num_experts_per_tok = 0;
    c->n_group = 1;
    c->topk_group = 1;
    c->first_k_dense_replace = 0;
    c->norm_topk_prob = 0;
    c->routed_scaling_factor = 1.0f;
    strcpy(c->scoring_func, "sigmoid");
    strcpy(c->topk_method, "noaux_tc");
    c->rope_theta = 10000.0;
    c->rms_norm_eps = 1e-6f;
    c->num_nextn_predict_layers = 0;
    c->max_position_embeddings = 4096;
    c->tie_word_embeddings = 0;
    c->initializer_range = 0.02f;
    c->aux_loss_alpha = 0.0f;
    c->seq_aux = 1;
    c->bos_token_id = -1;
    c->eos_token_id = -1;
    c->rope_scaling.truncate = 1;
    c->bias_update_speed = 0.001f;
    c->mtp_loss_weight = 0.3f;
}

/* ferry's own small models start from those defaults; routed_scaling_factor
 * stays 1.0: DeepSeek's 2.5 compensates for top-8 of 256 experts, which
 * these are not. fy_config_builtin sets every size. */
static void set_ferry_common(fy_config *c) {
    set_parse_defaults(c);
    c->norm_topk_prob = 1;
    c->max_position_embeddings = 2048;
    c->aux_loss_alpha = 0.0001f;
    strcpy(c->dtype, "float32"); /* ferry's weights; what its writers put by default */
}

int fy_config_builtin(const char *name, int vocab, fy_config *out, fy_err *err) {
    fy_config c;
    set_ferry_common(&c);
    c.vocab_size = vocab;
    if (strcmp(name, "tiny") == 0) {
        c.hidden_size = 256;            c.num_hidden_layers = 4;
        c.num_attention_heads = 4;      c.q_lora_rank = 128;
        c.kv_lora_rank = 64;            c.qk_nope_head_dim = 32;
        c.qk_rope_head_dim = 32;        c.v_head_dim = 32;
        c.n_routed_experts = 8;         c.num_experts_per_tok = 2;
        c.n_shared_experts = 1;         c.moe_intermediate_size = 256;
        c.intermediate_size = 768;      c.first_k_dense_replace = 1;
        c.num_nextn_predict_layers = 1;
    } else if (strcmp(name, "small") == 0) {
        c.hidden_size = 512;            c.num_hidden_layers = 8;
        c.num_attention_heads = 8;      c.q_lora_rank = 256;
        c.kv_lora_rank = 128;           c.qk_nope_head_dim = 64;
        c.qk_rope_head_dim = 32;        c.v_head_dim = 64;
        c.n_routed_experts = 16;        c.num_experts_per_tok = 2;
        c.n_shared_experts = 1;         c.moe_intermediate_size = 384;
        c.intermediate_size = 1536;     c.first_k_dense_replace = 1;
        c.num_nextn_predict_layers = 1;
    } else {
        return fy_fail(err, "unknown built-in config \"%s\" (known: tiny, small)", name);
    }
    if (fy_config_validate(&c, err) != 0) return fy_wrap(err, "built-in config %s", name);
    *out = c;
    return 0;
}

/* ---- validation -------------------------------------------------------- */

static int validate_yarn(const fy_config *c, fy_err *err) {
    const fy_rope_scaling *y = &c->rope_scaling;
    if (!(y->factor >= 1) || !isfinite(y->factor))
        return fy_fail(err, "factor=%g must be >= 1", y->factor);
    if (y->original_max_position_embeddings <= 0)
        return fy_fail(err, "original_max_position_embeddings=%d must be > 0", y->original_max_position_embeddings);
    if (!(y->beta_slow > 0) || !(y->beta_fast >= y->beta_slow) || !isfinite(y->beta_fast))
        return fy_fail(err, "beta_fast=%g, beta_slow=%g: need beta_fast >= beta_slow > 0", y->beta_fast,
                       y->beta_slow);
    if (!(y->mscale >= 0) || !isfinite(y->mscale) || !(y->mscale_all_dim >= 0) || !isfinite(y->mscale_all_dim))
        return fy_fail(err, "mscale=%g, mscale_all_dim=%g must be >= 0", y->mscale, y->mscale_all_dim);
    if (!(y->attention_factor >= 0) || !isfinite(y->attention_factor))
        return fy_fail(err, "attention_factor=%g must be > 0", y->attention_factor);
    if (!(c->rope_theta > 1))
        return fy_fail(err, "rope_theta=%g must be > 1 for YaRN's ramp", c->rope_theta);
    return 0;
}

/* Parameters at most: 6.5 times DeepSeek-V3's 671e9 (17.6 TB in f32).
 * Anything larger is a typo or a hostile file, and its sizes would
 * overflow the arithmetic that lays the model out. */
#define FY_CFG_MAX_PARAMS ((uint64_t)1 << 42)

/* a * b into *out; 1 when it does not fit in 63 bits. */
static int mul_ovf(int64_t a, int64_t b, int64_t *out) { return __builtin_mul_overflow(a, b, out); }

/* Every matrix dimension params.c computes (products of config sizes) fits
 * an int, and the parameter count, summed without overflow, is at most
 * FY_CFG_MAX_PARAMS. Runs after the sizes were checked positive. */
static int validate_products(const fy_config *c, fy_err *err) {
    const int64_t d = c->hidden_size, H = c->num_attention_heads, dqk = (int64_t)fy_cfg_qk_head_dim(c);
    const int64_t dims[][2] = {
        {2, d}, {H, dqk}, {H, (int64_t)c->qk_nope_head_dim + c->v_head_dim}, {H, c->v_head_dim},
        {1, (int64_t)c->kv_lora_rank + c->qk_rope_head_dim}, {c->moe_intermediate_size, c->n_shared_experts},
    };
    static const char *const what[] = {
        "2 * hidden_size", "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)",
        "num_attention_heads * (qk_nope_head_dim + v_head_dim)", "num_attention_heads * v_head_dim",
        "kv_lora_rank + qk_rope_head_dim", "moe_intermediate_size * n_shared_experts",
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        int64_t v;
        if (mul_ovf(dims[i][0], dims[i][1], &v) || v > INT_MAX)
            return fy_fail(err, "%s = %lld * %lld is over %d: a size this large is not supported", what[i],
                           (long long)dims[i][0], (long long)dims[i][1], INT_MAX);
    }
    /* Per layer: attention, then the larger of a dense and a MoE block (an
     * over-count is fine for a bound); embedding and head once. */
    const int64_t q = c->q_lora_rank, kv = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    const int64_t E = c->n_routed_experts, f = c->moe_intermediate_size;
    const int64_t terms[][3] = {
        {q, d, 1}, {H * dqk, q > 0 ? q : d, 1}, {kv + dr, d, 1}, {H * (c->qk_nope_head_dim + c->v_head_dim), kv, 1},
        {d, H * c->v_head_dim, 1}, {c->intermediate_size, d, 3}, {E, d, 1}, {E, f, 3 * d},
        {f * c->n_shared_experts, d, 3}, {2 * d, d, 1}, {d, 8, 1},
    };
    int64_t layer = 0, total, t;
    for (size_t i = 0; i < sizeof terms / sizeof terms[0]; i++)
        if (mul_ovf(terms[i][0], terms[i][1], &t) || mul_ovf(t, terms[i][2], &t) ||
            __builtin_add_overflow(layer, t, &layer))
            goto too_big;
    if (mul_ovf(layer, (int64_t)c->num_hidden_layers + c->num_nextn_predict_layers, &total) ||
        mul_ovf(2 * d, c->vocab_size, &t) || __builtin_add_overflow(total, t, &total) ||
        (uint64_t)total > FY_CFG_MAX_PARAMS)
        goto too_big;
    return 0;
too_big:
    return fy_fail(err, "the sizes make a model of more than %llu parameters (hidden_size=%d, "
                        "num_hidden_layers=%d, n_routed_experts=%d, vocab_size=%d): not supported",
                   (unsigned long long)FY_CFG_MAX_PARAMS, c->hidden_size, c->num_hidden_layers,
                   c->n_routed_experts, c->vocab_size);
}

int fy_config_validate(const fy_config *c, fy_err *err) {
    const struct { const char *key; int v; } positive[] = {
        {"vocab_size", c->vocab_size},
        {"hidden_size", c->hidden_size},
        {"num_hidden_layers", c->num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads},
        {"kv_lora_rank", c->kv_lora_rank},
        {"qk_nope_head_dim", c->qk_nope_head_dim},
        {"qk_rope_head_dim", c->qk_rope_head_dim},
        {"v_head_dim", c->v_head_dim},
        {"max_position_embeddings", c->max_position_embeddings},
    };
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        if (positive[i].v <= 0)
            return fy_fail(err, "%s=%d must be > 0", positive[i].key, positive[i].v);
    if (c->q_lora_rank < 0)
        return fy_fail(err, "q_lora_rank=%d must be >= 0 (0 or null: no query compression)", c->q_lora_rank);
    if (c->qk_rope_head_dim % 2 != 0)
        return fy_fail(err, "qk_rope_head_dim=%d must be even (RoPE rotates pairs)", c->qk_rope_head_dim);
    if (c->n_routed_experts < 0)
        return fy_fail(err, "n_routed_experts=%d must be >= 0", c->n_routed_experts);
    if (c->n_shared_experts < 0)
        return fy_fail(err, "n_shared_experts=%d must be >= 0", c->n_shared_experts);

    const int L = c->num_hidden_layers, N = c->n_routed_experts, K = c->num_experts_per_tok;
    if (c->first_k_dense_replace < 0 || c->first_k_dense_replace > L)
        return fy_fail(err, "first_k_dense_replace=%d must be in [0, num_hidden_layers=%d]",
                       c->first_k_dense_replace, L);
    /* With routed experts, MTP modules (layer index >= L) are MoE layers too,
     * so the routing checks apply even when first_k_dense_replace == L. */
    if (N > 0) {
        if (K < 1)
            return fy_fail(err, "num_experts_per_tok=%d must be >= 1 when n_routed_experts=%d", K, N);
        if (K > N)
            return fy_fail(err, "num_experts_per_tok=%d exceeds n_routed_experts=%d", K, N);
        if (c->moe_intermediate_size <= 0)
            return fy_fail(err, "moe_intermediate_size=%d must be > 0 with routed experts",
                           c->moe_intermediate_size);
        if (c->n_group < 1)
            return fy_fail(err, "n_group=%d must be >= 1", c->n_group);
        if (N % c->n_group != 0)
            return fy_fail(err, "n_group=%d does not divide n_routed_experts=%d", c->n_group, N);
        if (c->topk_group < 1 || c->topk_group > c->n_group)
            return fy_fail(err, "topk_group=%d must be in [1, n_group=%d]", c->topk_group, c->n_group);
        int per_group = N / c->n_group;
        if (c->n_group > 1 && per_group < 2)
            return fy_fail(err, "n_group=%d leaves %d expert per group; group scoring sums the top 2 "
                           "(n_routed_experts=%d)", c->n_group, per_group, N);
        if (c->topk_group * per_group < K)
            return fy_fail(err, "num_experts_per_tok=%d exceeds the %d experts in topk_group=%d "
                           "groups of %d", K, c->topk_group * per_group, c->topk_group, per_group);
        if (!(c->routed_scaling_factor > 0) || !isfinite(c->routed_scaling_factor))
            return fy_fail(err, "routed_scaling_factor=%g must be > 0", c->routed_scaling_factor);
    }
    int dense_layers = N > 0 ? c->first_k_dense_replace : L;
    if (dense_layers > 0 && c->intermediate_size <= 0)
        return fy_fail(err, "intermediate_size=%d must be > 0 (%d dense layer(s))",
                       c->intermediate_size, dense_layers);
    if (strcmp(c->scoring_func, "sigmoid") != 0)
        return fy_fail(err, "scoring_func=\"%s\" is not supported (only \"sigmoid\")", c->scoring_func);
    if (strcmp(c->topk_method, "noaux_tc") != 0)
        return fy_fail(err, "topk_method=\"%s\" is not supported (only \"noaux_tc\")", c->topk_method);
    if (c->tie_word_embeddings)
        return fy_fail(err, "tie_word_embeddings=true is not supported (DeepSeek-V3 has an untied lm_head)");
    if (c->num_nextn_predict_layers < 0 || c->num_nextn_predict_layers > 2)
        return fy_fail(err, "num_nextn_predict_layers=%d must be in [0, 2]", c->num_nextn_predict_layers);
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
        return fy_fail(err, "rms_norm_eps=%g must be > 0", c->rms_norm_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return fy_fail(err, "rope_theta=%g must be > 0", c->rope_theta);
    if (c->rope_scaling.yarn && validate_yarn(c, err) != 0) return fy_wrap(err, "rope_scaling (yarn)");
    if (!(c->aux_loss_alpha >= 0) || !isfinite(c->aux_loss_alpha))
        return fy_fail(err, "aux_loss_alpha=%g must be >= 0", c->aux_loss_alpha);
    if (!(c->initializer_range >= 0) || !isfinite(c->initializer_range))
        return fy_fail(err, "initializer_range=%g must be >= 0", c->initializer_range);
    if (!(c->bias_update_speed >= 0) || !isfinite(c->bias_update_speed))
        return fy_fail(err, "ferry.bias_update_speed=%g must be >= 0", c->bias_update_speed);
    if (!(c->mtp_loss_weight >= 0) || !isfinite(c->mtp_loss_weight))
        return fy_fail(err, "ferry.mtp_loss_weight=%g must be >= 0", c->mtp_loss_weight);
    if (c->bos_token_id < -1 || c->bos_token_id >= c->vocab_size)
        return fy_fail(err, "bos_token_id=%d outside the vocabulary [0, %d)", c->bos_token_id, c->vocab_size);
    if (c->eos_token_id < -1 || c->eos_token_id >= c->vocab_size)
        return fy_fail(err, "eos_token_id=%d outside the vocabulary [0, %d)", c->eos_token_id, c->vocab_size);
    return validate_products(c, err);
}

/* ---- parsing ----------------------------------------------------------- */

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* Each getter leaves *out alone when the key is absent, so callers set the
 * default first. JSON null also means "absent" (DeepSeek's own configs write
 * null for unused sizes); required keys are checked separately. */

/* *v = member key of o, or NULL when absent; fails when it is present but
 * not of the type is_type accepts (want names that type). */
static int member(const cJSON *o, const char *key, cJSON_bool (*is_type)(const cJSON *), const char *want,
                  const cJSON **v, fy_err *err) {
    *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!*v || cJSON_IsNull(*v)) {
        *v = NULL;
        return 0;
    }
    if (!is_type(*v)) return fy_fail(err, "%s must be %s, got %s", key, want, json_type_name(*v));
    return 0;
}

static int get_int(const cJSON *o, const char *key, int *out, fy_err *err) {
    const cJSON *v;
    if (member(o, key, cJSON_IsNumber, "an integer", &v, err)) return -1;
    if (!v) return 0; /* absent: the default stays */
    double d = v->valuedouble;
    if (d != floor(d) || !isfinite(d))
        return fy_fail(err, "%s must be an integer, got %g", key, d);
    if (d < INT_MIN || d > INT_MAX)
        return fy_fail(err, "%s=%.0f is out of range", key, d);
    *out = (int)d;
    return 0;
}

static int get_double(const cJSON *o, const char *key, double *out, fy_err *err) {
    const cJSON *v;
    if (member(o, key, cJSON_IsNumber, "a number", &v, err)) return -1;
    if (!v) return 0; /* absent: the default stays */
    *out = v->valuedouble;
    return 0;
}

static int get_float(const cJSON *o, const char *key, float *out, fy_err *err) {
    double d = *out;
    if (get_double(o, key, &d, err) != 0) return -1;
    if (!isfinite((float)d)) return fy_fail(err, "%s=%g is out of range", key, d);
    *out = (float)d;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int *out, fy_err *err) {
    const cJSON *v;
    if (member(o, key, cJSON_IsBool, "true or false", &v, err)) return -1;
    if (!v) return 0; /* absent: the default stays */
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

static int get_string(const cJSON *o, const char *key, char *out, size_t cap, fy_err *err) {
    const cJSON *v;
    if (member(o, key, cJSON_IsString, "a string", &v, err)) return -1;
    if (!v) return 0; /* absent: the default stays */
    if (strlen(v->valuestring) >= cap)
        return fy_fail(err, "%s=\"%.40s\" is not supported (too long)", key, v->valuestring);
    strcpy(out, v->valuestring);
    return 0;
}

/* ---- the config.json keys ---------------------------------------------- */

/* Every key of transformers' DeepseekV3Config and of DeepSeek's own
 * config.json, and what ferry does with it (docs/DESIGN.md §3.2 shows this
 * table). "refused" keys are read and a value ferry cannot honour fails by
 * name; keys in no row (transformers' generic PreTrainedConfig keys such as
 * id2label or transformers_version) are ignored. */
typedef struct key_use { const char *key, *use; } key_use;
static const key_use key_table[] = {
    {"vocab_size ... v_head_dim (sizes), n_routed_experts, n_shared_experts, num_experts_per_tok,"
     " n_group, topk_group, first_k_dense_replace, norm_topk_prob, routed_scaling_factor,"
     " rms_norm_eps, max_position_embeddings, initializer_range, bos_token_id", "honoured"},
    {"rope_theta", "honoured (rope_parameters.rope_theta wins, as in transformers)"},
    {"rope_scaling / rope_parameters", "honoured for yarn and default; any other type refused"},
    {"num_nextn_predict_layers / num_mtp_layers", "honoured (MTP depth; the DeepSeek name wins)"},
    {"eos_token_id", "honoured; a list keeps its first id"},
    {"dtype / torch_dtype", "kept as a string for writers (dtype wins); weights carry their own type"},
    {"aux_loss_alpha, seq_aux", "honoured (DeepSeek's training keys)"},
    {"quantization_config", "accepted only as fp8 with weight_block_size [128, 128] (fp8_block)"},
    {"hidden_act", "refused unless \"silu\""},
    {"attention_bias", "refused when true (ferry's projections have no bias)"},
    {"attention_dropout", "refused unless 0 (ferry has no dropout)"},
    {"rope_interleave", "refused when false: ferry rotates adjacent pairs (x[2j], x[2j+1]), which is"
     " transformers' interleaved path; false rotates (x[j], x[j+d_r/2])"},
    {"moe_layer_freq", "refused unless 1 (every layer after first_k_dense_replace is MoE)"},
    {"tie_word_embeddings", "refused when true (untied lm_head)"},
    {"topk_method", "refused unless \"noaux_tc\""},
    {"scoring_func", "refused unless \"sigmoid\""},
    {"partial_rotary_factor", "refused unless 1"},
    {"head_dim, qk_head_dim", "derived by transformers; refused when not qk_rope_head_dim and"
     " qk_nope_head_dim + qk_rope_head_dim"},
    {"num_key_value_heads", "ignored: MLA gives every head its own k and v (written = heads)"},
    {"ep_size", "ignored: DeepSeek's expert-parallel deployment size, not model math"},
    {"pretraining_tp", "ignored: tensor-parallel slicing of old Llama code, same math"},
    {"use_cache, pad_token_id, output_router_logits", "ignored: runtime switches"},
    {"architectures, model_type, auto_map, transformers_version", "ignored (written by ferry)"},
};
const char *fy_config_key_table(size_t i, const char **use) {
    if (i >= sizeof key_table / sizeof key_table[0]) return NULL;
    *use = key_table[i].use;
    return key_table[i].key;
}

/* Keys ferry has no field for but must not silently misread. */
static int read_refused(const cJSON *root, const fy_config *c, fy_err *err) {
    char act[32] = "silu";
    if (get_string(root, "hidden_act", act, sizeof act, err) != 0) return -1;
    if (strcmp(act, "silu") != 0)
        return fy_fail(err, "hidden_act=\"%s\" is not supported (only \"silu\")", act);
    int moe_freq = 1, bias = 0, interleave = 1, head_dim = c->qk_rope_head_dim;
    int qk_head_dim = fy_cfg_qk_head_dim(c);
    double dropout = 0, partial = 1;
    if (get_int(root, "moe_layer_freq", &moe_freq, err) || get_bool(root, "attention_bias", &bias, err) ||
        get_bool(root, "rope_interleave", &interleave, err) || get_int(root, "head_dim", &head_dim, err) ||
        get_int(root, "qk_head_dim", &qk_head_dim, err) || get_double(root, "attention_dropout", &dropout, err) ||
        get_double(root, "partial_rotary_factor", &partial, err))
        return -1;
    if (moe_freq != 1) return fy_fail(err, "moe_layer_freq=%d is not supported (only 1)", moe_freq);
    if (bias) return fy_fail(err, "attention_bias=true is not supported (projections have no bias)");
    if (!interleave)
        return fy_fail(err, "rope_interleave=false is not supported (ferry rotates adjacent pairs)");
    if (dropout != 0) return fy_fail(err, "attention_dropout=%g is not supported (only 0)", dropout);
    if (partial != 1) return fy_fail(err, "partial_rotary_factor=%g is not supported (only 1)", partial);
    if (head_dim != c->qk_rope_head_dim)
        return fy_fail(err, "head_dim=%d differs from qk_rope_head_dim=%d", head_dim, c->qk_rope_head_dim);
    if (qk_head_dim != fy_cfg_qk_head_dim(c))
        return fy_fail(err, "qk_head_dim=%d differs from qk_nope_head_dim + qk_rope_head_dim = %d",
                       qk_head_dim, fy_cfg_qk_head_dim(c));
    return 0;
}

/* eos_token_id: an integer, or (transformers) a list whose first id is kept. */
static int read_eos(const cJSON *root, fy_config *c, fy_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!cJSON_IsArray(v)) return get_int(root, "eos_token_id", &c->eos_token_id, err);
    const cJSON *first = cJSON_GetArrayItem(v, 0);
    if (!first) return 0;
    double d = first->valuedouble;
    if (!cJSON_IsNumber(first) || d != floor(d) || d < -1 || d > INT_MAX)
        return fy_fail(err, "eos_token_id[0] must be a token id");
    c->eos_token_id = (int)d;
    return 0;
}

/* quantization_config: only DeepSeek's block fp8 (the importer dequantizes). */
static int read_quant(const cJSON *root, fy_config *c, fy_err *err) {
    const cJSON *q;
    if (member(root, "quantization_config", cJSON_IsObject, "an object", &q, err)) return -1;
    if (!q) return 0;
    char method[32] = "";
    if (get_string(q, "quant_method", method, sizeof method, err)) return fy_wrap(err, "quantization_config");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
    const cJSON *b0 = cJSON_GetArrayItem(bs, 0), *b1 = cJSON_GetArrayItem(bs, 1);
    if (strcmp(method, "fp8") != 0 || !cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 ||
        !cJSON_IsNumber(b0) || !cJSON_IsNumber(b1) || b0->valuedouble != 128 || b1->valuedouble != 128)
        return fy_fail(err, "quantization_config is not supported (only quant_method \"fp8\" with "
                            "weight_block_size [128, 128])");
    c->fp8_block[0] = c->fp8_block[1] = 128;
    return 0;
}

/* The YaRN members of a rope_scaling / rope_parameters object. */
static int read_yarn(const cJSON *o, fy_config *c, fy_err *err) {
    static const char *const known[] = {"type", "rope_type", "rope_theta", "factor",
        "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
        "attention_factor", "truncate", "partial_rotary_factor"};
    for (const cJSON *m = o->child; m; m = m->next) {
        size_t i = 0;
        while (i < sizeof known / sizeof known[0] && strcmp(known[i], m->string) != 0) i++;
        if (i == sizeof known / sizeof known[0]) return fy_fail(err, "%s is not a YaRN key", m->string);
    }
    fy_rope_scaling *y = &c->rope_scaling;
    y->yarn = 1;
    y->factor = 0;
    y->original_max_position_embeddings = c->max_position_embeddings;
    const cJSON *af = cJSON_GetObjectItemCaseSensitive(o, "attention_factor");
    if (get_double(o, "factor", &y->factor, err) || get_int(o, "original_max_position_embeddings",
        &y->original_max_position_embeddings, err) || get_double(o, "beta_fast", &y->beta_fast, err) ||
        get_double(o, "beta_slow", &y->beta_slow, err) || get_double(o, "mscale", &y->mscale, err) ||
        get_double(o, "mscale_all_dim", &y->mscale_all_dim, err) ||
        get_double(o, "attention_factor", &y->attention_factor, err) || get_bool(o, "truncate", &y->truncate, err))
        return -1;
    if (af && !cJSON_IsNull(af) && !(y->attention_factor > 0))
        return fy_fail(err, "attention_factor=%g must be > 0", y->attention_factor);
    /* transformers: a missing factor is the ratio of the context lengths,
     * beta_fast/beta_slow fall back to 32/1 when absent or 0 */
    if (y->factor == 0 && y->original_max_position_embeddings > 0)
        y->factor = (double)c->max_position_embeddings / y->original_max_position_embeddings;
    if (y->beta_fast == 0) y->beta_fast = 32;
    if (y->beta_slow == 0) y->beta_slow = 1;
    return 0;
}

/* rope_scaling (DeepSeek) or rope_parameters (transformers 5); like
 * transformers, a non-empty rope_scaling wins, and its rope_theta wins over
 * the top-level one. */
static int read_rope(const cJSON *root, fy_config *c, fy_err *err) {
    const cJSON *rs, *rp;
    if (member(root, "rope_scaling", cJSON_IsObject, "an object or null", &rs, err) ||
        member(root, "rope_parameters", cJSON_IsObject, "an object or null", &rp, err))
        return -1;
    const char *key = rs && rs->child ? "rope_scaling" : "rope_parameters";
    const cJSON *o = rs && rs->child ? rs : rp;
    if (!o) return 0;
    char type[32] = "default";
    double partial = 1;
    if (get_string(o, "type", type, sizeof type, err) || get_string(o, "rope_type", type, sizeof type, err) ||
        get_double(o, "rope_theta", &c->rope_theta, err) || get_double(o, "partial_rotary_factor", &partial, err))
        return fy_wrap(err, "in %s", key);
    if (partial != 1) return fy_fail(err, "%s.partial_rotary_factor=%g is not supported (only 1)", key, partial);
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "yarn") != 0)
        return fy_fail(err, "%s type \"%s\" is not supported (only \"yarn\" or \"default\")", key, type);
    if (read_yarn(o, c, err) != 0) return fy_wrap(err, "in %s", key);
    return 0;
}

static const char *const required_keys[] = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
};

static int read_fields(const cJSON *root, fy_config *c, fy_err *err) {
    for (size_t i = 0; i < sizeof required_keys / sizeof required_keys[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, required_keys[i]);
        if (!v || cJSON_IsNull(v)) return fy_fail(err, "missing required key %s", required_keys[i]);
    }
    /* q_lora_rank: null means "no query compression", not "default". */
    const cJSON *ql = cJSON_GetObjectItemCaseSensitive(root, "q_lora_rank");
    if (ql && cJSON_IsNull(ql)) c->q_lora_rank = 0;

    const struct { const char *key; int *p; } ints[] = {
        {"vocab_size", &c->vocab_size},
        {"hidden_size", &c->hidden_size},
        {"intermediate_size", &c->intermediate_size},
        {"moe_intermediate_size", &c->moe_intermediate_size},
        {"num_hidden_layers", &c->num_hidden_layers},
        {"num_attention_heads", &c->num_attention_heads},
        {"q_lora_rank", &c->q_lora_rank},
        {"kv_lora_rank", &c->kv_lora_rank},
        {"qk_nope_head_dim", &c->qk_nope_head_dim},
        {"qk_rope_head_dim", &c->qk_rope_head_dim},
        {"v_head_dim", &c->v_head_dim},
        {"n_routed_experts", &c->n_routed_experts},
        {"n_shared_experts", &c->n_shared_experts},
        {"num_experts_per_tok", &c->num_experts_per_tok},
        {"n_group", &c->n_group},
        {"topk_group", &c->topk_group},
        {"first_k_dense_replace", &c->first_k_dense_replace},
        {"num_mtp_layers", &c->num_nextn_predict_layers},
        {"num_nextn_predict_layers", &c->num_nextn_predict_layers},
        {"max_position_embeddings", &c->max_position_embeddings},
        {"bos_token_id", &c->bos_token_id},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (get_int(root, ints[i].key, ints[i].p, err) != 0) return -1;
    if (read_eos(root, c, err) != 0) return -1;

    const struct { const char *key; float *p; } floats[] = {
        {"routed_scaling_factor", &c->routed_scaling_factor},
        {"rms_norm_eps", &c->rms_norm_eps},
        {"initializer_range", &c->initializer_range},
        {"aux_loss_alpha", &c->aux_loss_alpha},
    };
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        if (get_float(root, floats[i].key, floats[i].p, err) != 0) return -1;
    if (get_double(root, "rope_theta", &c->rope_theta, err) != 0) return -1;

    if (get_bool(root, "norm_topk_prob", &c->norm_topk_prob, err) != 0 ||
        get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings, err) != 0 ||
        get_bool(root, "seq_aux", &c->seq_aux, err) != 0)
        return -1;
    if (get_string(root, "scoring_func", c->scoring_func, sizeof c->scoring_func, err) != 0 ||
        get_string(root, "topk_method", c->topk_method, sizeof c->topk_method, err) != 0)
        return -1;

    if (read_refused(root, c, err) != 0 || read_rope(root, c, err) != 0 || read_quant(root, c, err) != 0)
        return -1;
    /* transformers 5 writes "dtype", older files "torch_dtype"; dtype wins */
    if (get_string(root, "torch_dtype", c->dtype, sizeof c->dtype, err) != 0 ||
        get_string(root, "dtype", c->dtype, sizeof c->dtype, err) != 0)
        return -1;

    const cJSON *ferry = cJSON_GetObjectItemCaseSensitive(root, "ferry");
    if (ferry && !cJSON_IsNull(ferry)) {
        if (!cJSON_IsObject(ferry))
            return fy_fail(err, "ferry must be an object, got %s", json_type_name(ferry));
        if (get_float(ferry, "bias_update_speed", &c->bias_update_speed, err) != 0 ||
            get_float(ferry, "mtp_loss_weight", &c->mtp_loss_weight, err) != 0)
            return fy_wrap(err, "in the ferry object");
    }
    return 0;
}

/* Line and column (1-based) of byte `off` in text, for parse errors. */
static void line_col(const char *text, size_t off, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && text[i]; i++) {
        if (text[i] == '\n') { (*line)++; *col = 1; }
        else (*col)++;
    }
}

int fy_config_parse(const char *json_text, const char *where, fy_config *out, fy_err *err) {
    if (!where) where = "<text>";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json_text, &end, 1);
    if (!root) {
        size_t off = end && end >= json_text ? (size_t)(end - json_text) : 0;
        int line, col;
        line_col(json_text, off, &line, &col);
        return fy_fail(err, "config %s: malformed JSON near byte %zu (line %d, column %d)",
                       where, off, line, col);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fy_fail(err, "config %s: top level must be a JSON object", where);
    }
    fy_config c;
    set_parse_defaults(&c);
    int rc = read_fields(root, &c, err);
    cJSON_Delete(root);
    if (rc != 0 || fy_config_validate(&c, err) != 0) return fy_wrap(err, "config %s", where);
    *out = c;
    return 0;
}

int fy_config_load(const char *path, fy_config *out, fy_err *err) {
    char *text;
    size_t len;
    /* A config is a few kB: a huge file is not one (and not read whole). */
    if (fy_read_file_max(path, (size_t)64 << 20, &text, &len, err) != 0) return -1;
    size_t nul = strlen(text);
    if (nul != len) {
        free(text);
        return fy_fail(err, "config %s: contains a NUL byte at offset %zu", path, nul);
    }
    int rc = fy_config_parse(text, path, out, err);
    free(text);
    return rc;
}

/* ---- serialization ----------------------------------------------------- */

/* The shortest decimal text that reads back as d, always with a '.' or an
 * exponent: transformers 5 refuses 1 for a float field, so 1.0 is written. */
static void float_text(double d, int is_float, char *buf, size_t cap) {
    if (d == floor(d) && fabs(d) < 1e15) { /* 50000.0, not 5e+04 */
        snprintf(buf, cap, "%.1f", d);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, d);
        if (is_float ? strtof(buf, NULL) == (float)d : strtod(buf, NULL) == d) break;
    }
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", cap - strlen(buf) - 1);
}

static cJSON *add_real(cJSON *o, const char *key, double d) {
    char buf[40];
    float_text(d, 0, buf, sizeof buf);
    return cJSON_AddRawToObject(o, key, buf);
}

/* A float as the shortest text that reads back as it: 1e-06, not the
 * float's exact binary value 9.9999999747524271e-07. */
static cJSON *add_float(cJSON *o, const char *key, float f) {
    char buf[40];
    float_text(f, 1, buf, sizeof buf);
    return cJSON_AddRawToObject(o, key, buf);
}

static cJSON *add_int_or_null(cJSON *o, const char *key, int v, int null_value) {
    return v == null_value ? cJSON_AddNullToObject(o, key) : cJSON_AddNumberToObject(o, key, v);
}

/* Moves the members of the JSON object text `extra` into `ferry`; members
 * ferry already has (the config's own values) win. */
static int merge_extra(cJSON *ferry, const char *extra) {
    cJSON *x = cJSON_Parse(extra);
    if (!x || !cJSON_IsObject(x)) {
        cJSON_Delete(x);
        return -1;
    }
    while (x->child) {
        cJSON *m = cJSON_DetachItemViaPointer(x, x->child);
        if (m->string && !cJSON_GetObjectItemCaseSensitive(ferry, m->string))
            cJSON_AddItemToObject(ferry, m->string, m);
        else
            cJSON_Delete(m);
    }
    cJSON_Delete(x);
    return 0;
}

/* rope_scaling in DeepSeek's hub spelling; null without scaling. */
static void add_rope_scaling(cJSON *o, const fy_rope_scaling *y) {
    if (!y->yarn) {
        cJSON_AddNullToObject(o, "rope_scaling");
        return;
    }
    cJSON *r = cJSON_AddObjectToObject(o, "rope_scaling");
    if (!r) return;
    cJSON_AddStringToObject(r, "type", "yarn");
    add_real(r, "factor", y->factor);
    cJSON_AddNumberToObject(r, "original_max_position_embeddings", y->original_max_position_embeddings);
    add_real(r, "beta_fast", y->beta_fast);
    add_real(r, "beta_slow", y->beta_slow);
    if (y->mscale != 0) add_real(r, "mscale", y->mscale);
    if (y->mscale_all_dim != 0) add_real(r, "mscale_all_dim", y->mscale_all_dim);
    if (y->attention_factor != 0) add_real(r, "attention_factor", y->attention_factor);
    if (!y->truncate) cJSON_AddFalseToObject(r, "truncate");
}

static void add_sizes(cJSON *o, const fy_config *c) {
    const struct { const char *key; int v; } ints[] = {
        {"vocab_size", c->vocab_size},
        {"hidden_size", c->hidden_size},
        {"intermediate_size", c->intermediate_size},
        {"moe_intermediate_size", c->moe_intermediate_size},
        {"num_hidden_layers", c->num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads},
        {"num_key_value_heads", c->num_attention_heads}, /* MLA has no grouped KV */
        {"kv_lora_rank", c->kv_lora_rank},
        {"qk_nope_head_dim", c->qk_nope_head_dim},
        {"qk_rope_head_dim", c->qk_rope_head_dim},
        {"v_head_dim", c->v_head_dim},
        {"n_routed_experts", c->n_routed_experts},
        {"n_shared_experts", c->n_shared_experts},
        {"num_experts_per_tok", c->num_experts_per_tok},
        {"n_group", c->n_group},
        {"topk_group", c->topk_group},
        {"first_k_dense_replace", c->first_k_dense_replace},
        {"moe_layer_freq", 1},
        {"ep_size", 1},
        {"num_nextn_predict_layers", c->num_nextn_predict_layers},
        {"max_position_embeddings", c->max_position_embeddings},
        {"pretraining_tp", 1},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (strcmp(ints[i].key, "kv_lora_rank") == 0) add_int_or_null(o, "q_lora_rank", c->q_lora_rank, 0);
        cJSON_AddNumberToObject(o, ints[i].key, ints[i].v);
    }
}

static void add_hf_keys(cJSON *o, const fy_config *c, const char *dtype) {
    const char *arch = "DeepseekV3ForCausalLM";
    cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddStringToObject(o, "model_type", "deepseek_v3");
    add_sizes(o, c);
    cJSON_AddBoolToObject(o, "norm_topk_prob", c->norm_topk_prob);
    add_float(o, "routed_scaling_factor", c->routed_scaling_factor);
    cJSON_AddStringToObject(o, "scoring_func", c->scoring_func);
    cJSON_AddStringToObject(o, "topk_method", c->topk_method);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    add_real(o, "rope_theta", c->rope_theta);
    add_rope_scaling(o, &c->rope_scaling);
    cJSON_AddTrueToObject(o, "rope_interleave");
    cJSON_AddFalseToObject(o, "attention_bias");
    add_real(o, "attention_dropout", 0.0);
    add_float(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    add_float(o, "initializer_range", c->initializer_range);
    add_float(o, "aux_loss_alpha", c->aux_loss_alpha);
    cJSON_AddBoolToObject(o, "seq_aux", c->seq_aux);
    cJSON_AddFalseToObject(o, "output_router_logits");
    cJSON_AddTrueToObject(o, "use_cache");
    cJSON_AddNullToObject(o, "pad_token_id");
    add_int_or_null(o, "bos_token_id", c->bos_token_id, -1);
    add_int_or_null(o, "eos_token_id", c->eos_token_id, -1);
    cJSON_AddStringToObject(o, "dtype", dtype);
    cJSON_AddStringToObject(o, "torch_dtype", dtype);
}

char *fy_config_to_json_opts(const fy_config *c, const fy_config_json_opts *opts) {
    fy_config_json_opts none = {0};
    if (!opts) opts = &none;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    add_hf_keys(o, c, opts->dtype ? opts->dtype : "float32");
    char *text = NULL;
    if (opts->no_ferry) {
        text = cJSON_Print(o);
    } else {
        cJSON *ferry = cJSON_AddObjectToObject(o, "ferry");
        if (ferry) {
            add_float(ferry, "bias_update_speed", c->bias_update_speed);
            add_float(ferry, "mtp_loss_weight", c->mtp_loss_weight);
            if (!opts->extra_ferry_json || merge_extra(ferry, opts->extra_ferry_json) == 0) text = cJSON_Print(o);
        }
    }
    cJSON_Delete(o);
    return text;
}

char *fy_config_to_json(const fy_config *c, const char *extra_ferry_json) {
    fy_config_json_opts o = {extra_ferry_json, NULL, 0};
    return fy_config_to_json_opts(c, &o);
}

/* ---- YaRN's derived scalars ---------------------------------------------- */

/* transformers' yarn_get_mscale: 0.1 * m * ln(s) + 1, or 1 when s <= 1. */
static double yarn_mscale(double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * log(s) + 1.0; }

double fy_cfg_rope_attention_factor(const fy_config *c) {
    const fy_rope_scaling *y = &c->rope_scaling;
    if (!y->yarn) return 1.0;
    if (y->attention_factor != 0) return y->attention_factor;
    if (y->mscale != 0 && y->mscale_all_dim != 0)
        return yarn_mscale(y->factor, y->mscale) / yarn_mscale(y->factor, y->mscale_all_dim);
    return yarn_mscale(y->factor, 1.0);
}

float fy_cfg_softmax_scale(const fy_config *c) {
    float base = 1.0f / sqrtf((float)fy_cfg_qk_head_dim(c));
    const fy_rope_scaling *y = &c->rope_scaling;
    if (!y->yarn || y->mscale_all_dim == 0) return base;
    double m = yarn_mscale(y->factor, y->mscale_all_dim);
    return (float)(1.0 / sqrt((double)fy_cfg_qk_head_dim(c)) * m * m);
}
