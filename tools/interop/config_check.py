#!/usr/bin/env python3
"""config.json between ferry and transformers' DeepseekV3Config.

  1. A config written by ferry (config_echo: ferry's reader then writer)
     loads in transformers (DeepseekV3Config and AutoConfig); every key of the
     written file has the same value there, every float key is a JSON float,
     and every field DeepseekV3Config declares is written.
  2. A config saved by transformers (rope_parameters yarn, dtype) reads in
     ferry to the same values.
  3. For each, the numbers ferry derives (RoPE inverse frequencies, YaRN's
     cos/sin multiplier, the attention softmax scale) equal transformers'
     (_compute_yarn_parameters, DeepseekV3Attention.scaling).
  4. Keys ferry cannot honour are refused by name.

usage: config_check.py --echo CONFIG_ECHO --ferry FERRY --work DIR
"""
import argparse
import json
import math
import os
import subprocess
import sys

try:
    import torch
    import transformers
    from transformers import AutoConfig, DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention
except ImportError as e:  # pragma: no cover
    print(f"SKIP: transformers not importable ({e})")
    sys.exit(77)

FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("FAIL", what)


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def echo(tool, src_path, out_dir):
    """ferry's reader + writer: returns (written config dict, derived dict)."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = os.path.join(out_dir, "config.json")
    der = os.path.join(out_dir, "derived.json")
    r = subprocess.run([tool, src_path, cfg, der], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"config_echo failed on {src_path}: {r.stderr.strip()}")
    with open(cfg) as f, open(der) as g:
        return json.load(f), json.load(g)


def float_fields():
    """DeepseekV3Config's fields whose type is exactly float."""
    hints = DeepseekV3Config.__annotations__
    return {k for k, t in hints.items() if t is float or t == "float"}


def tf_dtype_name(cfg):
    d = getattr(cfg, "dtype", None)
    return str(d).replace("torch.", "") if d is not None else None


def compare_keys(written, cfg, where, only=None):
    """Every key ferry wrote (of `only`, when given: the keys of the file
    transformers saved) has the same value in the transformers config."""
    # rope_theta: transformers 5 keeps it in rope_parameters (checked below)
    skip = {"architectures", "model_type", "rope_scaling", "rope_theta", "dtype", "torch_dtype", "ferry"}
    for k, v in written.items():
        if k in skip or (only is not None and k not in only):
            continue
        check(hasattr(cfg, k), f"{where}: transformers has no attribute {k}")
        if hasattr(cfg, k):
            tv = getattr(cfg, k)
            check(tv == v and type(tv) is type(v) or (isinstance(v, float) and tv == v),
                  f"{where}: {k}: ferry wrote {v!r}, transformers has {tv!r}")
    check(tf_dtype_name(cfg) == written["dtype"], f"{where}: dtype {tf_dtype_name(cfg)} vs {written['dtype']}")
    check(written["dtype"] == written["torch_dtype"], f"{where}: dtype and torch_dtype differ")
    for k in float_fields():
        if k in written and written[k] is not None:
            check(isinstance(written[k], float), f"{where}: float key {k} written as {written[k]!r}")
    rs = written.get("rope_scaling")
    rp = cfg.rope_parameters
    if rs is None:
        check(rp.get("rope_type", "default") == "default", f"{where}: rope_scaling null but {rp}")
    else:
        check(rp.get("rope_type") == "yarn", f"{where}: rope_type {rp.get('rope_type')}")
        for k, v in rs.items():
            if k == "type":
                continue
            check(isinstance(v, (float, bool)) or k == "original_max_position_embeddings",
                  f"{where}: rope_scaling.{k} written as {v!r}")
            tv = rp.get(k)
            if k in ("beta_fast", "beta_slow") and tv is None:
                tv = {"beta_fast": 32.0, "beta_slow": 1.0}[k]  # transformers' `or 32` / `or 1`
            check(tv == v, f"{where}: rope_scaling.{k}: ferry {v!r}, transformers {rp.get(k)!r}")
    check(rp.get("rope_theta") == written["rope_theta"], f"{where}: rope_theta {rp.get('rope_theta')}")


def compare_derived(derived, cfg, where):
    """ferry's RoPE frequencies, cos/sin factor, softmax scale vs transformers'."""
    rtype = cfg.rope_parameters.get("rope_type", "default")
    inv_freq, att = ROPE_INIT_FUNCTIONS[rtype](cfg) if rtype != "default" else \
        (1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, cfg.qk_rope_head_dim, 2).float()
                                                        / cfg.qk_rope_head_dim)), 1.0)
    if rtype == "default":
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding
        inv_freq, att = DeepseekV3RotaryEmbedding.compute_default_rope_parameters(cfg)
    tf = inv_freq.double().tolist()
    fe = derived["inv_freq"]
    check(len(tf) == len(fe), f"{where}: {len(fe)} frequencies vs transformers' {len(tf)}")
    worst = max((abs(a - b) / b for a, b in zip(fe, tf)), default=0)
    check(worst < 2e-6, f"{where}: inverse frequencies differ, worst relative {worst:.3g}")
    check(close(derived["attention_factor"], float(att), 1e-12),
          f"{where}: attention_factor ferry {derived['attention_factor']} transformers {att}")
    with torch.device("meta"):
        scaling = DeepseekV3Attention(cfg, 0).scaling
    check(close(derived["softmax_scale"], scaling, 1e-6),
          f"{where}: softmax scale ferry {derived['softmax_scale']} transformers {scaling}")
    print(f"{where}: {len(fe)} frequencies (worst rel {worst:.2g}), attention_factor {att:.6g}, "
          f"scale {scaling:.6g}: ok")


def declared_fields_written(written):
    names = set(DeepseekV3Config.__annotations__) - {"num_mtp_layers", "rope_parameters"}
    missing = sorted(k for k in names if k not in written)
    check(not missing, f"DeepseekV3Config fields ferry does not write: {missing}")
    check("num_nextn_predict_layers" in written, "num_nextn_predict_layers (num_mtp_layers) not written")
    check("rope_scaling" in written, "rope_scaling (rope_parameters) not written")


SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
             num_hidden_layers=3, num_attention_heads=2, q_lora_rank=24, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=16, v_head_dim=8, n_routed_experts=4,
             n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
             first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=1.0,
             max_position_embeddings=256, bos_token_id=0, eos_token_id=1, rope_theta=10000,
             num_nextn_predict_layers=1, rms_norm_eps=1e-6, initializer_range=0.02)


def hub_style(rope_scaling):
    d = dict(SMALL)
    d.update(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
             rope_scaling=rope_scaling, torch_dtype="bfloat16", hidden_act="silu",
             moe_layer_freq=1, ep_size=1, topk_method="noaux_tc", scoring_func="sigmoid",
             aux_loss_alpha=0.001, seq_aux=True, attention_bias=False, attention_dropout=0.0,
             tie_word_embeddings=False, use_cache=True, pretraining_tp=1)
    return d


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def ferry_written(a, name, src):
    """Step 1 and 3 for a hub-style input."""
    written, derived = echo(a.echo, write_json(os.path.join(a.work, name, "in.json"), src),
                            os.path.join(a.work, name, "ferry"))
    out_dir = os.path.join(a.work, name, "ferry")
    cfg = DeepseekV3Config.from_pretrained(out_dir)
    auto = AutoConfig.from_pretrained(out_dir)
    check(type(auto).__name__ == "DeepseekV3Config", f"{name}: AutoConfig gave {type(auto).__name__}")
    compare_keys(written, cfg, f"{name} (ferry-written)")
    compare_derived(derived, cfg, f"{name} (ferry-written)")
    return written


def transformers_saved(a, name, **kw):
    """Step 2 and 3: transformers saves, ferry reads."""
    d = os.path.join(a.work, name, "tf")
    DeepseekV3Config(**kw).save_pretrained(d)
    written, derived = echo(a.echo, os.path.join(d, "config.json"), os.path.join(a.work, name, "ferry"))
    cfg = DeepseekV3Config.from_pretrained(d)
    with open(os.path.join(d, "config.json")) as f:
        saved = json.load(f)
    compare_keys(written, cfg, f"{name} (transformers-saved)", only=set(saved))
    compare_derived(derived, cfg, f"{name} (transformers-saved)")


def refusals(a):
    cases = [("rope_interleave", False), ("attention_bias", True), ("hidden_act", "gelu"),
             ("moe_layer_freq", 2), ("tie_word_embeddings", True),
             ("rope_scaling", {"type": "linear", "factor": 2.0}),
             ("quantization_config", {"quant_method": "fp8", "weight_block_size": [64, 64]})]
    for key, val in cases:
        src = hub_style(None)
        src[key] = val
        p = write_json(os.path.join(a.work, "refuse", key + ".json"), src)
        r = subprocess.run([a.echo, p, p + ".out", p + ".der"], capture_output=True, text=True)
        check(r.returncode != 0 and key in r.stderr, f"{key}={val!r} not refused by name: {r.stderr.strip()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--echo", required=True)
    ap.add_argument("--ferry")
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    transformers.logging.set_verbosity_error()
    print("transformers", transformers.__version__)

    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32,
            "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 1.0}
    w = ferry_written(a, "yarn", hub_style(yarn))
    declared_fields_written(w)
    ferry_written(a, "plain", hub_style(None))
    # DeepSeek-V3's own values (mscale == mscale_all_dim: cos/sin unscaled,
    # softmax scale times mscale^2), its fp8 quantization_config accepted
    v3 = hub_style({"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                    "original_max_position_embeddings": 4096, "type": "yarn"})
    v3.update(hidden_size=7168, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
              qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=163840,
              n_routed_experts=256, n_group=8, topk_group=4, num_experts_per_tok=8,
              routed_scaling_factor=2.5, vocab_size=129280,
              quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                   "weight_block_size": [128, 128]})
    ferry_written(a, "v3", v3)
    # transformers 5's spelling, not truncated, attention_factor given
    tf_kw = {k: v for k, v in SMALL.items() if k != "rope_theta"}
    transformers_saved(a, "tf_yarn", dtype="bfloat16", num_key_value_heads=2, **tf_kw, rope_parameters={
        "rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False})
    transformers_saved(a, "tf_yarn_af", dtype="float32", num_key_value_heads=2, **tf_kw, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 32,
        "attention_factor": 0.8})
    transformers_saved(a, "tf_default", dtype="float16", num_key_value_heads=2, **tf_kw,
                       rope_parameters={"rope_type": "default", "rope_theta": 20000.0})
    refusals(a)
    if FAILS:
        print(f"{len(FAILS)} check(s) failed")
        return 1
    print("config_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
