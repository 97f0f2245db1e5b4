#!/usr/bin/env python3
"""PyTorch peer for bench/generate.sh: KV-cached greedy generation with the
oracle model (ds3.py) in float32 on CPU. The cache is the plain one a PyTorch
implementation keeps (k and v per layer and head, as Hugging Face's
DeepseekV3 does), not MLA's latent cache.

    bench_generate_torch.py --config FILE.json --prompt 64 --new 128 --threads N
prints {"prefill_tok_s": ..., "decode_tok_s": ...}
"""
import argparse
import json
import math
import os
import sys
import time

try:
    import torch
except ImportError:
    print("SKIP: torch is not installed")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds3  # noqa: E402


def attention_step(cfg, params, p, x, pos, cache):
    """MLA for x [n, d] at positions pos..pos+n-1, appending k/v to cache."""
    n = x.shape[0]
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    eps = cfg.rms_norm_eps
    if cfg.q_lora_rank is not None:
        q = ds3.linear(ds3.rms_norm(ds3.linear(x, params[p + "q_a_proj.weight"]),
                                    params[p + "q_a_layernorm.weight"], eps), params[p + "q_b_proj.weight"])
    else:
        q = ds3.linear(x, params[p + "q_proj.weight"])
    q = q.view(n, H, dn + dr).transpose(0, 1)                       # [H, n, dn+dr]
    kv_a = ds3.linear(x, params[p + "kv_a_proj_with_mqa.weight"])
    c_kv = ds3.rms_norm(kv_a[:, :cfg.kv_lora_rank], params[p + "kv_a_layernorm.weight"], eps)
    kv = ds3.linear(c_kv, params[p + "kv_b_proj.weight"]).view(n, H, dn + dv).transpose(0, 1)
    cos, sin = cache["cos"][pos:pos + n], cache["sin"][pos:pos + n]
    q = torch.cat((q[..., :dn], ds3.apply_rope(q[..., dn:], cos, sin)), -1)
    k_pe = ds3.apply_rope(kv_a[:, cfg.kv_lora_rank:], cos, sin).unsqueeze(0).expand(H, n, dr)
    k = torch.cat((kv[..., :dn], k_pe), -1)
    K = cache.setdefault(p + "k", [])
    V = cache.setdefault(p + "v", [])
    K.append(k)
    V.append(kv[..., dn:])
    k_all, v_all = torch.cat(K, 1), torch.cat(V, 1)                 # [H, S, .]
    if len(K) > 1:  # keep one tensor per layer, as a preallocated cache would
        K[:], V[:] = [k_all], [v_all]
    scores = (q @ k_all.transpose(-1, -2)) / math.sqrt(dn + dr)      # [H, n, S]
    S = k_all.shape[1]
    future = torch.ones(n, S, dtype=torch.bool).triu(S - n + 1)
    o = torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v_all
    return ds3.linear(o.transpose(0, 1).reshape(n, H * dv), params[p + "o_proj.weight"])


def forward_tokens(cfg, params, buffers, ids, pos, cache):
    """Logits of the last of ids (a list), run at positions pos.. with the cache."""
    eps = cfg.rms_norm_eps
    h = params["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = h + attention_step(cfg, params, p + "self_attn.",
                               ds3.rms_norm(h, params[p + "input_layernorm.weight"], eps), pos, cache)
        x = ds3.rms_norm(h, params[p + "post_attention_layernorm.weight"], eps)
        if cfg.is_moe_layer(i):
            y, _ = ds3.moe(cfg, params, p + "mlp.", x, buffers[ds3.bias_name(i)])
        else:
            y = ds3.swiglu(params, p + "mlp.", x)
        h = h + y
    h = ds3.rms_norm(h[-1:], params["model.norm.weight"], eps)
    return ds3.linear(h, params["lm_head.weight"])[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1,
                    help="prefill+decode this many times (fresh cache each), keep the best")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = ds3.Config.load(a.config)
    params, buffers = ds3.init_params(cfg, seed=0, std=0.02, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (a.prompt,), generator=g).tolist()
    cos, sin = ds3.rope_tables(a.prompt + a.new, cfg.qk_rope_head_dim, cfg.rope_theta, torch.float32)
    best_p = best_d = 0.0
    with torch.no_grad():
        for _ in range(a.reps):
            cache = {"cos": cos, "sin": sin}
            t0 = time.perf_counter()
            logits = forward_tokens(cfg, params, buffers, prompt, 0, cache)
            t1 = time.perf_counter()
            pos = a.prompt
            for _ in range(a.new):
                nxt = int(torch.argmax(logits))
                logits = forward_tokens(cfg, params, buffers, [nxt], pos, cache)
                pos += 1
            t2 = time.perf_counter()
            best_p = max(best_p, a.prompt / (t1 - t0))
            best_d = max(best_d, a.new / (t2 - t1) if a.new else 0.0)
    print(json.dumps({"prefill_tok_s": best_p, "decode_tok_s": best_d}))


if __name__ == "__main__":
    main()
