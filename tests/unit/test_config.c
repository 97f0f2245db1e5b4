/* Model config: built-ins, JSON round trip, defaults, and every refusal
 * naming the offending key. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "core/fsutil.h"
#include "model/config.h"
#include "testutil.h"

static void test_builtins(void) {
    fy_config c;
    fy_err err = {{0}};
    CHECK(fy_config_builtin("tiny", 1000, &c, &err) == 0, "%s", err.msg);
    CHECK(c.vocab_size == 1000 && c.hidden_size == 256 && c.num_hidden_layers == 4, "tiny sizes");
    CHECK(c.q_lora_rank == 128 && c.kv_lora_rank == 64 && c.qk_rope_head_dim == 32, "tiny MLA");
    CHECK(c.n_routed_experts == 8 && c.num_experts_per_tok == 2 && c.n_shared_experts == 1, "tiny MoE");
    CHECK(c.routed_scaling_factor == 1.0f && c.num_nextn_predict_layers == 1, "tiny choices");
    CHECK(c.bos_token_id == -1 && c.eos_token_id == -1, "ids left for the tokenizer");
    CHECK(fy_config_validate(&c, &err) == 0, "%s", err.msg);
    CHECK(fy_cfg_qk_head_dim(&c) == 64, "qk head dim");
    CHECK(!fy_cfg_is_moe_layer(&c, 0) && fy_cfg_is_moe_layer(&c, 1), "first layer dense");

    CHECK(fy_config_builtin("small", 4096, &c, &err) == 0, "%s", err.msg);
    CHECK(c.hidden_size == 512 && c.num_hidden_layers == 8 && c.qk_nope_head_dim == 64 &&
          c.qk_rope_head_dim == 32 && c.v_head_dim == 64 && c.n_routed_experts == 16 &&
          c.moe_intermediate_size == 384 && c.intermediate_size == 1536, "small sizes");

    CHECK(fy_config_builtin("huge", 1000, &c, &err) == -1, "unknown name");
    CHECK(strstr(err.msg, "huge") && strstr(err.msg, "tiny, small"), "lists the names: %s", err.msg);
    CHECK(fy_config_builtin("tiny", 0, &c, &err) == -1 && strstr(err.msg, "vocab_size"),
          "vocab 0: %s", err.msg);
}

static int same(const fy_config *a, const fy_config *b) {
    return memcmp(a, b, sizeof *a) == 0;
}

static void test_round_trip(void) {
    fy_config c, back;
    fy_err err = {{0}};
    const char *names[] = {"tiny", "small"};
    for (int i = 0; i < 2; i++) {
        fy_config_builtin(names[i], 321, &c, &err);
        char *text = fy_config_to_json(&c, NULL);
        CHECK(text != NULL, "to_json");
        memset(&back, 0x5a, sizeof back);
        CHECK(fy_config_parse(text, "rt.json", &back, &err) == 0, "%s", err.msg);
        CHECK(same(&c, &back), "%s round trips", names[i]);
        CHECK(strstr(text, "\"DeepseekV3ForCausalLM\"") && strstr(text, "\"deepseek_v3\"") &&
              strstr(text, "\"float32\"") && strstr(text, "\"ferry\""), "fixed keys:\n%s", text);
        CHECK(strstr(text, "1e-06") != NULL, "floats written in shortest form:\n%s", text);
        free(text);
    }

    /* q_lora_rank 0 is written as null; token ids set; odd floats. */
    fy_config_builtin("tiny", 500, &c, &err);
    c.q_lora_rank = 0;
    c.bos_token_id = 497;
    c.eos_token_id = 498;
    c.routed_scaling_factor = 2.5f;
    c.rope_theta = 123456.789;
    c.initializer_range = 0.0123456789f;
    c.mtp_loss_weight = 0.1f;
    c.norm_topk_prob = 0;
    c.seq_aux = 0;
    c.first_k_dense_replace = 0;
    char *text = fy_config_to_json(&c, "{\"lr\": 0.0003, \"mtp_loss_weight\": 9, \"batch\": [1, 2]}");
    CHECK(text && strstr(text, "\"q_lora_rank\":\tnull"), "q_lora_rank null:\n%s", text ? text : "(null)");
    CHECK(text && strstr(text, "\"lr\"") && strstr(text, "\"batch\""), "extra members merged");
    CHECK(fy_config_parse(text, "rt2.json", &back, &err) == 0, "%s", err.msg);
    CHECK(same(&c, &back), "variant round trips (config's mtp_loss_weight wins over extra)");
    free(text);
    CHECK(fy_config_to_json(&c, "[1]") == NULL, "extra must be an object");
    CHECK(fy_config_to_json(&c, "{bad") == NULL, "extra must parse");

    /* Dense model (no routed experts), hidden not divisible by heads. */
    fy_config_builtin("tiny", 500, &c, &err);
    c.n_routed_experts = 0;
    c.num_experts_per_tok = 0;
    c.hidden_size = 250;
    c.num_attention_heads = 3;
    CHECK(fy_config_validate(&c, &err) == 0, "dense, 250/3: %s", err.msg);
    text = fy_config_to_json(&c, NULL);
    CHECK(fy_config_parse(text, "dense.json", &back, &err) == 0 && same(&c, &back), "%s", err.msg);
    free(text);
}

static const char *minimal =
    "{\"vocab_size\": 100, \"hidden_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8,"
    " \"qk_rope_head_dim\": 8, \"v_head_dim\": 8}";

static void test_defaults(void) {
    fy_config c;
    fy_err err = {{0}};
    CHECK(fy_config_parse(minimal, "min.json", &c, &err) == 0, "%s", err.msg);
    CHECK(c.intermediate_size == 11008 && c.moe_intermediate_size == 1407, "FFN defaults");
    CHECK(c.q_lora_rank == 1536, "absent q_lora_rank takes the HF default");
    CHECK(c.n_routed_experts == 0 && c.n_shared_experts == 0 && c.num_experts_per_tok == 0, "dense");
    CHECK(c.n_group == 1 && c.topk_group == 1 && c.first_k_dense_replace == 0, "groups");
    CHECK(!c.norm_topk_prob && c.routed_scaling_factor == 1.0f && c.seq_aux, "routing defaults");
    CHECK(strcmp(c.scoring_func, "sigmoid") == 0 && strcmp(c.topk_method, "noaux_tc") == 0, "methods");
    CHECK(c.rope_theta == 10000.0 && c.rms_norm_eps == 1e-6f && c.max_position_embeddings == 4096,
          "rope/norm defaults");
    CHECK(c.num_nextn_predict_layers == 0 && !c.tie_word_embeddings && c.aux_loss_alpha == 0.0f,
          "mtp/tie/aux defaults");
    CHECK(c.initializer_range == 0.02f && c.bos_token_id == -1 && c.eos_token_id == -1, "init/ids");
    CHECK(c.bias_update_speed == 0.001f && c.mtp_loss_weight == 0.3f, "ferry defaults");

    /* DeepSeek-style nulls. */
    const char *nulls =
        "{\"vocab_size\": 100, \"hidden_size\": 64, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 2, \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8,"
        " \"qk_rope_head_dim\": 8, \"v_head_dim\": 8, \"q_lora_rank\": null,"
        " \"n_routed_experts\": null, \"bos_token_id\": 0, \"eos_token_id\": 1,"
        " \"unknown_key\": {\"x\": [1]}, \"ferry\": {\"mtp_loss_weight\": 0.5, \"lr\": 1}}";
    CHECK(fy_config_parse(nulls, "nulls.json", &c, &err) == 0, "%s", err.msg);
    CHECK(c.q_lora_rank == 0 && c.n_routed_experts == 0, "null -> 0");
    CHECK(c.bos_token_id == 0 && c.eos_token_id == 1 && c.mtp_loss_weight == 0.5f, "values read");
}

/* Parses tiny's JSON with `overrides` (a JSON object; a null member deletes
 * the key) and expects a refusal whose message has "tiny.json" and every
 * string in `want` (NULL-terminated). */
static void expect_refused(const char *overrides, const char *want1, const char *want2) {
    fy_config c;
    fy_err err = {{0}};
    fy_config_builtin("tiny", 1000, &c, &err);
    char *text = fy_config_to_json(&c, NULL);
    cJSON *root = cJSON_Parse(text), *ov = cJSON_Parse(overrides);
    free(text);
    if (!root || !ov) {
        CHECK(0, "bad test overrides %s", overrides);
        return;
    }
    for (cJSON *m = ov->child; m; m = m->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, m->string);
        if (!cJSON_IsNull(m)) cJSON_AddItemToObject(root, m->string, cJSON_Duplicate(m, 1));
    }
    text = cJSON_Print(root);
    int rc = fy_config_parse(text, "tiny.json", &c, &err);
    CHECK(rc == -1, "%s must be refused", overrides);
    if (rc == -1) {
        CHECK(strstr(err.msg, "tiny.json") != NULL, "%s: names the source: %s", overrides, err.msg);
        CHECK(strstr(err.msg, want1) != NULL, "%s: message names %s: %s", overrides, want1, err.msg);
        CHECK(!want2 || strstr(err.msg, want2) != NULL, "%s: message has %s: %s", overrides, want2, err.msg);
    }
    free(text);
    cJSON_Delete(root);
    cJSON_Delete(ov);
}

/* Each override of the tiny config that must be refused, and up to two
 * strings the message must contain. */
static const struct refusal {
    const char *overrides, *want1, *want2;
} refusals[] = {
    /* sizes */
    {"{\"vocab_size\": 0}", "vocab_size", NULL},
    {"{\"hidden_size\": -1}", "hidden_size", NULL},
    {"{\"num_hidden_layers\": 0}", "num_hidden_layers", NULL},
    {"{\"num_attention_heads\": 0}", "num_attention_heads", NULL},
    {"{\"kv_lora_rank\": 0}", "kv_lora_rank", NULL},
    {"{\"qk_nope_head_dim\": 0}", "qk_nope_head_dim", NULL},
    {"{\"qk_rope_head_dim\": 0}", "qk_rope_head_dim", NULL},
    {"{\"v_head_dim\": -3}", "v_head_dim", NULL},
    {"{\"q_lora_rank\": -1}", "q_lora_rank", NULL},
    {"{\"qk_rope_head_dim\": 31}", "qk_rope_head_dim", "even"},
    {"{\"max_position_embeddings\": 0}", "max_position_embeddings", NULL},
    /* missing required keys (null member deletes) */
    {"{\"kv_lora_rank\": null}", "kv_lora_rank", "missing"},
    {"{\"vocab_size\": null}", "vocab_size", "missing"},
    /* routing */
    {"{\"num_experts_per_tok\": 9}", "num_experts_per_tok=9 exceeds n_routed_experts=8", NULL},
    {"{\"num_experts_per_tok\": 0}", "num_experts_per_tok", NULL},
    {"{\"moe_intermediate_size\": 0}", "moe_intermediate_size", NULL},
    {"{\"n_routed_experts\": -2}", "n_routed_experts", NULL},
    {"{\"n_shared_experts\": -1}", "n_shared_experts", NULL},
    {"{\"n_group\": 3}", "n_group", "divide"},
    {"{\"n_group\": 0}", "n_group", NULL},
    {"{\"n_group\": 8, \"topk_group\": 4}", "n_group", NULL},   /* 1 expert/group */
    {"{\"n_group\": 4, \"topk_group\": 5}", "topk_group", NULL},
    {"{\"n_group\": 4, \"topk_group\": 0}", "topk_group", NULL},
    {"{\"n_group\": 4, \"topk_group\": 1, \"num_experts_per_tok\": 3}",
     "num_experts_per_tok", "topk_group"},
    {"{\"routed_scaling_factor\": 0}", "routed_scaling_factor", NULL},
    {"{\"first_k_dense_replace\": 5}", "first_k_dense_replace", NULL},
    {"{\"first_k_dense_replace\": -1}", "first_k_dense_replace", NULL},
    {"{\"intermediate_size\": 0}", "intermediate_size", NULL},
    {"{\"scoring_func\": \"softmax\"}", "scoring_func", "sigmoid"},
    {"{\"topk_method\": \"greedy\"}", "topk_method", "noaux_tc"},
    {"{\"tie_word_embeddings\": true}", "tie_word_embeddings", NULL},
    {"{\"num_nextn_predict_layers\": 3}", "num_nextn_predict_layers", NULL},
    {"{\"rms_norm_eps\": 0}", "rms_norm_eps", NULL},
    {"{\"rope_theta\": -1}", "rope_theta", NULL},
    {"{\"aux_loss_alpha\": -0.5}", "aux_loss_alpha", NULL},
    {"{\"bos_token_id\": 1000}", "bos_token_id", NULL},
    {"{\"eos_token_id\": -2}", "eos_token_id", NULL},
    {"{\"hidden_act\": \"gelu\"}", "hidden_act", NULL},
    {"{\"moe_layer_freq\": 2}", "moe_layer_freq", NULL},
    /* keys ferry cannot honour, refused by name */
    {"{\"attention_bias\": true}", "attention_bias", NULL},
    {"{\"rope_interleave\": false}", "rope_interleave", NULL},
    {"{\"attention_dropout\": 0.1}", "attention_dropout", NULL},
    {"{\"tie_word_embeddings\": true}", "tie_word_embeddings", NULL},
    {"{\"topk_method\": \"greedy\"}", "topk_method", NULL},
    {"{\"scoring_func\": \"softmax\"}", "scoring_func", NULL},
    {"{\"partial_rotary_factor\": 0.5}", "partial_rotary_factor", NULL},
    {"{\"head_dim\": 64}", "head_dim", NULL},
    {"{\"qk_head_dim\": 63}", "qk_head_dim", NULL},
    {"{\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [64, 64]}}",
     "quantization_config", NULL},
    {"{\"quantization_config\": {\"quant_method\": \"gptq\"}}", "quantization_config", NULL},
    {"{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", "rope_scaling", "linear"},
    {"{\"rope_parameters\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}}", "rope_parameters", "dynamic"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 0.5}}", "rope_scaling", "factor"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": 0.5}}", "beta_fast", NULL},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"attention_factor\": 0}}",
     "attention_factor", NULL},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"low_freq_factor\": 1}}",
     "low_freq_factor", NULL},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"truncate\": 1}}", "truncate", NULL},
    {"{\"rope_scaling\": 4}", "rope_scaling", NULL},
    {"{\"dtype\": 16}", "dtype", NULL},
    /* wrong JSON types */
    {"{\"hidden_size\": \"256\"}", "hidden_size", "integer"},
    {"{\"hidden_size\": 256.5}", "hidden_size", "integer"},
    {"{\"num_hidden_layers\": 1e12}", "num_hidden_layers", NULL},
    {"{\"norm_topk_prob\": 1}", "norm_topk_prob", NULL},
    {"{\"rope_theta\": \"1e4\"}", "rope_theta", NULL},
    {"{\"rms_norm_eps\": [1]}", "rms_norm_eps", NULL},
    {"{\"scoring_func\": 5}", "scoring_func", NULL},
    {"{\"scoring_func\": \"a-very-long-scoring-name\"}", "scoring_func", NULL},
    {"{\"routed_scaling_factor\": 1e300}", "routed_scaling_factor", NULL},
    {"{\"ferry\": {\"bias_update_speed\": \"fast\"}}", "bias_update_speed", NULL},
    {"{\"ferry\": {\"mtp_loss_weight\": -1}}", "mtp_loss_weight", NULL},
    {"{\"ferry\": 3}", "ferry", NULL},
};

static void test_refusals(void) {
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
        expect_refused(refusals[i].overrides, refusals[i].want1, refusals[i].want2);
}

static void test_bad_json(const char *dir) {
    fy_config c;
    fy_err err = {{0}};
    CHECK(fy_config_parse("{\"vocab_size\": 10,\n  \"hidden\" 3}", "tiny.json", &c, &err) == -1, "bad JSON");
    CHECK(strstr(err.msg, "tiny.json") && strstr(err.msg, "line 2"), "source and position: %s", err.msg);
    CHECK(fy_config_parse("", "empty.json", &c, &err) == -1 && strstr(err.msg, "empty.json"), "%s", err.msg);
    CHECK(fy_config_parse("[1, 2]", "arr.json", &c, &err) == -1 && strstr(err.msg, "object"), "%s", err.msg);
    CHECK(fy_config_parse("{} trailing", "trail.json", &c, &err) == -1, "trailing garbage");

    char path[FY_PATH_MAX];
    fy_path_join(path, sizeof path, dir, "config.json", &err);
    fy_config t;
    fy_config_builtin("small", 777, &t, &err);
    char *text = fy_config_to_json(&t, NULL);
    CHECK(fy_write_file_atomic(path, text, strlen(text), &err) == 0, "%s", err.msg);
    free(text);
    CHECK(fy_config_load(path, &c, &err) == 0 && same(&c, &t), "load: %s", err.msg);
    fy_path_join(path, sizeof path, dir, "absent.json", &err);
    CHECK(fy_config_load(path, &c, &err) == -1 && strstr(err.msg, "absent.json"), "%s", err.msg);
}

/* YaRN and the other HF keys, in both spellings; the written floats. */
static void test_yarn(void) {
    fy_config c, back;
    fy_err err = {{0}};
    char buf[1024];
    /* DeepSeek's hub spelling (DeepSeek-V3's own values) */
    snprintf(buf, sizeof buf, "%.*s, \"rope_theta\": 10000, \"max_position_embeddings\": 163840,"
             " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 1.0,"
             " \"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"},"
             " \"torch_dtype\": \"bfloat16\", \"eos_token_id\": [1, 2], \"ep_size\": 1, \"pretraining_tp\": 1,"
             " \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\","
             " \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]}}",
             (int)strlen(minimal) - 1, minimal);
    CHECK(fy_config_parse(buf, "hub.json", &c, &err) == 0, "%s", err.msg);
    const fy_rope_scaling *y = &c.rope_scaling;
    CHECK(y->yarn && y->factor == 40 && y->original_max_position_embeddings == 4096 && y->beta_fast == 32 &&
          y->beta_slow == 1 && y->mscale == 1 && y->mscale_all_dim == 1 && y->attention_factor == 0 &&
          y->truncate, "hub yarn read");
    CHECK(strcmp(c.dtype, "bfloat16") == 0 && c.eos_token_id == 1, "torch_dtype, eos list");
    CHECK(c.fp8_block[0] == 128 && c.fp8_block[1] == 128, "fp8 blocks");
    /* mscale == mscale_all_dim: cos/sin unscaled, softmax scale times m^2 */
    double m = 0.1 * log(40.0) + 1;
    CHECK(fy_cfg_rope_attention_factor(&c) == 1.0, "attention_factor 1");
    CHECK(fabsf(fy_cfg_softmax_scale(&c) - (float)(m * m / sqrt(16.0))) < 1e-7f, "softmax scale");

    /* transformers 5's spelling: rope_parameters with its own rope_theta */
    snprintf(buf, sizeof buf, "%.*s, \"rope_theta\": 1.0, \"max_position_embeddings\": 512,"
             " \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 50000.0, \"factor\": 4.0,"
             " \"original_max_position_embeddings\": 128, \"mscale\": 0.707, \"mscale_all_dim\": 1.0,"
             " \"truncate\": false, \"beta_fast\": null}, \"dtype\": \"float16\", \"torch_dtype\": \"float32\"}",
             (int)strlen(minimal) - 1, minimal);
    CHECK(fy_config_parse(buf, "tf5.json", &c, &err) == 0, "%s", err.msg);
    CHECK(c.rope_theta == 50000 && y->factor == 4 && y->original_max_position_embeddings == 128 &&
          y->beta_fast == 32 && y->mscale == 0.707 && !y->truncate, "rope_parameters yarn read");
    CHECK(strcmp(c.dtype, "float16") == 0, "dtype wins over torch_dtype");
    double af = (0.1 * 0.707 * log(4.0) + 1) / (0.1 * log(4.0) + 1);
    CHECK(fabs(fy_cfg_rope_attention_factor(&c) - af) < 1e-12, "attention_factor from the mscales");

    /* written back: DeepSeek's spelling, floats as floats, dtype twice */
    fy_config_json_opts o = {NULL, "bfloat16", 1};
    char *text = fy_config_to_json_opts(&c, &o);
    CHECK(text && strstr(text, "\"type\":\t\"yarn\"") && strstr(text, "\"factor\":\t4.0") &&
          strstr(text, "\"beta_slow\":\t1.0") && strstr(text, "\"truncate\":\tfalse") &&
          strstr(text, "\"rope_theta\":\t50000.0") && strstr(text, "\"routed_scaling_factor\":\t1.0") &&
          strstr(text, "\"dtype\":\t\"bfloat16\"") && strstr(text, "\"torch_dtype\":\t\"bfloat16\"") &&
          !strstr(text, "\"ferry\"") && !strstr(text, "quantization_config"), "written:\n%s", text ? text : "");
    CHECK(fy_config_parse(text, "back.json", &back, &err) == 0, "%s", err.msg);
    strcpy(c.dtype, "bfloat16");
    CHECK(same(&c, &back), "yarn round trips");
    free(text);

    /* rope_parameters "default" only moves rope_theta; factor absent is
     * max_position_embeddings / original_max_position_embeddings */
    snprintf(buf, sizeof buf, "%.*s, \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 777.0}}",
             (int)strlen(minimal) - 1, minimal);
    CHECK(fy_config_parse(buf, "def.json", &c, &err) == 0 && !c.rope_scaling.yarn && c.rope_theta == 777,
          "default rope_parameters: %s", err.msg);
    CHECK(fy_cfg_softmax_scale(&c) == 1.0f / sqrtf(16.0f) && fy_cfg_rope_attention_factor(&c) == 1.0, "plain");
    snprintf(buf, sizeof buf, "%.*s, \"max_position_embeddings\": 1000, \"rope_scaling\": {\"type\": \"yarn\","
             " \"original_max_position_embeddings\": 250, \"mscale\": 1}}", (int)strlen(minimal) - 1, minimal);
    CHECK(fy_config_parse(buf, "nofactor.json", &c, &err) == 0 && c.rope_scaling.factor == 4, "%s", err.msg);
    CHECK(fabs(fy_cfg_rope_attention_factor(&c) - (0.1 * log(4.0) + 1)) < 1e-12, "mscale alone: paper's");
    CHECK(fy_config_key_table(0, &(const char *){0}) != NULL, "key table");
}

int main(void) {
    test_builtins();
    test_yarn();
    test_round_trip();
    test_defaults();
    test_refusals();
    test_bad_json(fy_test_tmpdir("test_config"));
    return fy_test_finish("test_config");
}
