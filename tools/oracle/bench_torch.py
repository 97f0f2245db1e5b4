#!/usr/bin/env python3
"""PyTorch peer for `ferry bench train`: times float32 training steps of the
oracle model (forward + backward + AdamW + aux-free bias update) on CPU.

Usage: bench_torch.py --config FILE.json --batch B --seq T --threads N
                      --steps S --warmup W [--seed SEED] [--lora-rank R]
                      [--lora-targets LIST]

--lora-rank R: the oracle's LoRA (ds3.LoraParams, PEFT's math) of rank R,
alpha 2R, on every target (or PEFT target_modules LIST), the base frozen,
AdamW on the adapters only.

Random init (std 0.02), random tokens. Prints one JSON line:
{"tokens_per_s": ..., "step_ms": ..., "flops_per_token": null, "max_rss_mb": ...}
AdamW settings come from the config's "ferry" object when present.
Exit 77 if torch is unavailable.
"""

import argparse
import json
import math
import os
import resource
import sys
import time

try:
    import torch
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds3  # noqa: E402


def make_adamw(cfg, params):
    f = cfg.ferry
    kwargs = dict(lr=float(f.get("lr") or 1e-3),
                  betas=(float(f.get("beta1") or 0.9), float(f.get("beta2") or 0.95)),
                  eps=float(f.get("eps") or 1e-8))
    groups = ds3.adamw_param_groups(params, float(f.get("weight_decay") or 0.1))
    try:
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    except TypeError:  # an older torch without the foreach option
        return torch.optim.AdamW(groups, **kwargs)


def lora(cfg, params, r, targets):
    """The base frozen, adapters of rank r on every target (A as PEFT inits it,
    B zero): (LoraParams for the forward, the adapters by name for AdamW)."""
    for p in params.values():
        p.requires_grad_(False)
    adapters, leaves = {}, {}
    for w in ds3.lora_targeted(cfg, targets):
        out_f, in_f = params[w].shape
        bound = 1.0 / math.sqrt(in_f)
        a = torch.empty(r, in_f).uniform_(-bound, bound).requires_grad_(True)
        b = torch.zeros(out_f, r).requires_grad_(True)
        leaves[ds3.lora_name(w, "A")], leaves[ds3.lora_name(w, "B")] = a, b
        adapters[w] = (a, b)
    return ds3.LoraParams(params, adapters, 2.0), leaves


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lora-targets", default=",".join(ds3.LORA_TARGETS))
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    cfg = ds3.Config.load(a.config)
    params, buffers = ds3.init_params(cfg, seed=a.seed, std=0.02, dtype=torch.float32)
    trained = params
    if a.lora_rank > 0:
        params, trained = lora(cfg, params, a.lora_rank, tuple(a.lora_targets.split(",")))
    opt = make_adamw(cfg, trained)
    g = torch.Generator().manual_seed(a.seed + 1)
    tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), generator=g)
    input_ids, labels = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        out = ds3.forward(cfg, params, buffers, input_ids, labels)
        out.loss.backward()
        ds3.fill_missing_grads(trained)
        opt.step()
        with torch.no_grad():
            for i, r in out.routers.items():
                buffers[ds3.bias_name(i)] = ds3.bias_update(cfg, buffers[ds3.bias_name(i)], r.idx)

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    elapsed = time.perf_counter() - t0
    step_s = elapsed / max(1, a.steps)
    print(json.dumps({"tokens_per_s": a.batch * a.seq / step_s,
                      "step_ms": step_s * 1e3,
                      "flops_per_token": None,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
