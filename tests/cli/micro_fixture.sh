# Shared fixture of the CLI and scale-out tests: a small generated corpus,
# its tokenizer and shards in ./data, and micro.json, a micro DeepSeek-V3.
# Sourced with $ferry set, in the test's work directory.
awk 'BEGIN { srand(7);
  split("the a one every that", det); split("shepherd king river city servant stone lamb", noun);
  split("walked spoke rested waited sang wept", verb); split("by near beyond under before", prep);
  for (i = 0; i < 3000; i++) {
    printf "%s %s %s %s the %s", det[int(rand()*5)+1], noun[int(rand()*7)+1], verb[int(rand()*6)+1],
           prep[int(rand()*5)+1], noun[int(rand()*7)+1];
    printf (rand() < 0.3) ? ".\n" : ", and ";
  } }' > corpus.txt
$ferry tokenizer train --vocab-size 300 -o tok.json corpus.txt >/dev/null || { echo "tokenizer failed"; exit 1; }
$ferry data prepare corpus.txt --tokenizer tok.json --out data >/dev/null || { echo "data prepare failed"; exit 1; }
cp tok.json data/tokenizer.json

# A micro DeepSeek-V3: 3 layers (layer 0 dense, 1-2 MoE) + 1 MTP.
cat > micro.json <<'JSON'
{"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 300,
 "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 3,
 "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 32, "kv_lora_rank": 16,
 "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 4,
 "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
 "first_k_dense_replace": 1, "moe_layer_freq": 1, "norm_topk_prob": true, "routed_scaling_factor": 1,
 "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu", "rope_theta": 10000,
 "rope_scaling": null, "attention_bias": false, "rms_norm_eps": 1e-06, "num_nextn_predict_layers": 1,
 "max_position_embeddings": 256, "tie_word_embeddings": false, "initializer_range": 0.02,
 "aux_loss_alpha": 0.0001, "seq_aux": true, "torch_dtype": "float32",
 "ferry": {"lr": 0.01, "min_lr": 0.001, "warmup_steps": 5}}
JSON
