/* config.json <-> fy_config, the built-in model sizes, and validation. */
#include "model/config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
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
    return 0;
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
    /* YaRN and other RoPE scalings change the attention math; reading such a
     * config without them would give silently wrong logits, so refuse. */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return fy_fail(err, "rope_scaling is set, but ferry does not implement RoPE scaling yet "
                            "(use a config with \"rope_scaling\": null)");

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
        {"num_nextn_predict_layers", &c->num_nextn_predict_layers},
        {"max_position_embeddings", &c->max_position_embeddings},
        {"bos_token_id", &c->bos_token_id},
        {"eos_token_id", &c->eos_token_id},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (get_int(root, ints[i].key, ints[i].p, err) != 0) return -1;

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

    /* Keys ferry has no field for but must not silently misread. */
    char act[32] = "silu";
    if (get_string(root, "hidden_act", act, sizeof act, err) != 0) return -1;
    if (strcmp(act, "silu") != 0)
        return fy_fail(err, "hidden_act=\"%s\" is not supported (only \"silu\")", act);
    int moe_freq = 1;
    if (get_int(root, "moe_layer_freq", &moe_freq, err) != 0) return -1;
    if (moe_freq != 1)
        return fy_fail(err, "moe_layer_freq=%d is not supported (only 1)", moe_freq);

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
    if (fy_read_file(path, &text, &len, err) != 0) return -1;
    if (strlen(text) != len) {
        free(text);
        return fy_fail(err, "config %s: contains a NUL byte at offset %zu", path, strlen(text));
    }
    int rc = fy_config_parse(text, path, out, err);
    free(text);
    return rc;
}

/* ---- serialization ----------------------------------------------------- */

/* The double whose shortest decimal form reads back as f: JSON then shows
 * 1e-06, not the float's exact binary value 9.9999999747524271e-07. */
static double float_for_json(float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static cJSON *add_float(cJSON *o, const char *key, float f) {
    return cJSON_AddNumberToObject(o, key, float_for_json(f));
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

char *fy_config_to_json(const fy_config *c, const char *extra_ferry_json) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const char *arch = "DeepseekV3ForCausalLM";
    cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddStringToObject(o, "model_type", "deepseek_v3");
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(o, "moe_intermediate_size", c->moe_intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->num_attention_heads);
    /* MLA has no grouped KV; HF still reads this key. */
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->num_attention_heads);
    add_int_or_null(o, "q_lora_rank", c->q_lora_rank, 0);
    cJSON_AddNumberToObject(o, "kv_lora_rank", c->kv_lora_rank);
    cJSON_AddNumberToObject(o, "qk_nope_head_dim", c->qk_nope_head_dim);
    cJSON_AddNumberToObject(o, "qk_rope_head_dim", c->qk_rope_head_dim);
    cJSON_AddNumberToObject(o, "v_head_dim", c->v_head_dim);
    cJSON_AddNumberToObject(o, "n_routed_experts", c->n_routed_experts);
    cJSON_AddNumberToObject(o, "n_shared_experts", c->n_shared_experts);
    cJSON_AddNumberToObject(o, "num_experts_per_tok", c->num_experts_per_tok);
    cJSON_AddNumberToObject(o, "n_group", c->n_group);
    cJSON_AddNumberToObject(o, "topk_group", c->topk_group);
    cJSON_AddNumberToObject(o, "first_k_dense_replace", c->first_k_dense_replace);
    cJSON_AddNumberToObject(o, "moe_layer_freq", 1);
    cJSON_AddBoolToObject(o, "norm_topk_prob", c->norm_topk_prob);
    add_float(o, "routed_scaling_factor", c->routed_scaling_factor);
    cJSON_AddStringToObject(o, "scoring_func", c->scoring_func);
    cJSON_AddStringToObject(o, "topk_method", c->topk_method);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    cJSON_AddNullToObject(o, "rope_scaling");
    cJSON_AddBoolToObject(o, "attention_bias", 0);
    add_float(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddNumberToObject(o, "num_nextn_predict_layers", c->num_nextn_predict_layers);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    add_float(o, "initializer_range", c->initializer_range);
    add_float(o, "aux_loss_alpha", c->aux_loss_alpha);
    cJSON_AddBoolToObject(o, "seq_aux", c->seq_aux);
    add_int_or_null(o, "bos_token_id", c->bos_token_id, -1);
    add_int_or_null(o, "eos_token_id", c->eos_token_id, -1);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");

    cJSON *ferry = cJSON_AddObjectToObject(o, "ferry");
    char *text = NULL;
    if (ferry) {
        add_float(ferry, "bias_update_speed", c->bias_update_speed);
        add_float(ferry, "mtp_loss_weight", c->mtp_loss_weight);
        if (!extra_ferry_json || merge_extra(ferry, extra_ferry_json) == 0) text = cJSON_Print(o);
    }
    cJSON_Delete(o);
    return text;
}
