/* Model configuration: the Hugging Face DeepseekV3 config.json keys, plus the
 * model-side training constants ferry keeps in the "ferry" object. */
#ifndef FY_CONFIG_H
#define FY_CONFIG_H

#include <stddef.h>

#include "core/err.h"

/* RoPE scaling: DeepSeek's "rope_scaling": {"type": "yarn", ...} or
 * transformers 5's "rope_parameters": {"rope_type": "yarn", ...}. Values as
 * read (0 = key absent where noted); docs/DESIGN.md §2.2 has the math. */
typedef struct fy_rope_scaling {
    int yarn;                       /* 0: plain RoPE (null, or rope_type "default") */
    double factor;                  /* s >= 1 */
    int original_max_position_embeddings;
    double beta_fast, beta_slow;    /* ramp bounds in rotations (32 and 1 when absent) */
    double mscale, mscale_all_dim;  /* 0 = absent */
    double attention_factor;        /* 0 = absent: derived from factor and the mscales */
    int truncate;                   /* bool, true when absent */
} fy_rope_scaling;

typedef struct fy_config {
    /* HF DeepseekV3 keys */
    int vocab_size;
    int hidden_size;              /* d */
    int intermediate_size;        /* dense SwiGLU width */
    int moe_intermediate_size;    /* width of one routed/shared expert */
    int num_hidden_layers;        /* L */
    int num_attention_heads;      /* H */
    int q_lora_rank;              /* 0 when the JSON has null: plain q_proj */
    int kv_lora_rank;
    int qk_nope_head_dim;
    int qk_rope_head_dim;
    int v_head_dim;
    int n_routed_experts;         /* 0 = all layers dense */
    int n_shared_experts;
    int num_experts_per_tok;
    int n_group;
    int topk_group;
    int first_k_dense_replace;
    int norm_topk_prob;           /* bool */
    float routed_scaling_factor;
    char scoring_func[16];        /* only "sigmoid" */
    char topk_method[16];         /* only "noaux_tc" */
    double rope_theta;
    float rms_norm_eps;
    int num_nextn_predict_layers; /* MTP depth D: 0, 1 or 2 */
    int max_position_embeddings;
    int tie_word_embeddings;      /* must be false */
    float initializer_range;      /* init std */
    float aux_loss_alpha;         /* sequence-wise balance loss weight */
    int seq_aux;                  /* bool: apply the balance loss */
    int bos_token_id, eos_token_id;
    fy_rope_scaling rope_scaling;
    char dtype[16];               /* "dtype" / "torch_dtype" as read ("" when absent), e.g. "bfloat16" */
    int fp8_block[2];             /* quantization_config: fp8 weight_block_size, {0, 0} = none */
    /* "ferry" object */
    float bias_update_speed;      /* gamma of aux-loss-free balancing */
    float mtp_loss_weight;        /* lambda */
} fy_config;

/* "tiny" or "small" (docs/DESIGN.md §2.1); vocab_size is set to `vocab`. */
int fy_config_builtin(const char *name, int vocab, fy_config *out, fy_err *err);

/* Parses config.json text; missing optional keys take HF defaults; unknown
 * keys are ignored. Validates (fy_config_validate). `where` names the source
 * (a path) in error messages. */
int fy_config_parse(const char *json_text, const char *where, fy_config *out, fy_err *err);
int fy_config_load(const char *path, fy_config *out, fy_err *err);

/* Checks sizes and choices; the message names the offending key. */
int fy_config_validate(const fy_config *c, fy_err *err);

typedef struct fy_config_json_opts {
    const char *extra_ferry_json; /* JSON object text merged into "ferry" (may be NULL) */
    const char *dtype;            /* "dtype" and "torch_dtype"; "float32" when NULL */
    int no_ferry;                 /* leave the "ferry" object out */
} fy_config_json_opts;

/* Serializes to config.json text: every DeepseekV3Config key (float keys as
 * JSON floats, "1.0" not "1"), rope_scaling in DeepSeek's spelling (null
 * without), architectures, model_type, and the "ferry" object, whose
 * members extra_ferry_json extends (the trainer's settings; the config's own
 * members win). quantization_config is never written (ferry's weights are
 * not fp8). Caller frees; NULL when out of memory or extra is not an object. */
char *fy_config_to_json_opts(const fy_config *c, const fy_config_json_opts *o);
char *fy_config_to_json(const fy_config *c, const char *extra_ferry_json);

/* The table of config.json keys and what ferry does with each (documentation
 * and tests): row i's key(s), with *use; NULL past the last row. */
const char *fy_config_key_table(size_t i, const char **use);

/* YaRN's multiplier of cos and sin (1 without scaling) and the attention
 * softmax scale qk_head_dim^-0.5 * mscale(factor, mscale_all_dim)^2, as
 * transformers' _compute_yarn_parameters and DeepseekV3Attention. */
double fy_cfg_rope_attention_factor(const fy_config *c);
float fy_cfg_softmax_scale(const fy_config *c);

/* Derived sizes */
static inline int fy_cfg_qk_head_dim(const fy_config *c) { return c->qk_nope_head_dim + c->qk_rope_head_dim; }
static inline int fy_cfg_is_moe_layer(const fy_config *c, int layer) {
    return c->n_routed_experts > 0 && layer >= c->first_k_dense_replace;
}

#endif
