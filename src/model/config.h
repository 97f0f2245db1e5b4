/* Model configuration: the Hugging Face DeepseekV3 config.json keys, plus the
 * model-side training constants ferry keeps in the "ferry" object. */
#ifndef FY_CONFIG_H
#define FY_CONFIG_H

#include "core/err.h"

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

/* Serializes to config.json text (HF keys, architectures, model_type, and
 * the "ferry" object). Caller frees. `extra_ferry_json` (may be NULL) is a
 * JSON object text whose members are merged into the "ferry" object (the
 * trainer's settings). */
char *fy_config_to_json(const fy_config *c, const char *extra_ferry_json);

/* Derived sizes */
static inline int fy_cfg_qk_head_dim(const fy_config *c) { return c->qk_nope_head_dim + c->qk_rope_head_dim; }
static inline int fy_cfg_is_moe_layer(const fy_config *c, int layer) {
    return c->n_routed_experts > 0 && layer >= c->first_k_dense_replace;
}

#endif
