#!/usr/bin/env python3
"""transformers + peft peer for bench/train_step.sh: times float32 LoRA
training steps of Hugging Face's DeepseekV3ForCausalLM (what a user of the
ecosystem fine-tunes with) built from the same config, with PyPI peft's
LoraConfig on the same target_modules, on CPU.

Usage: bench_peft.py --config FILE.json --batch B --seq T --threads N
                     --steps S --warmup W --lora-rank R --lora-targets LIST
                     [--seed SEED]

Random init (transformers' own, std initializer_range), random tokens, the
loss transformers computes from labels (next-token cross-entropy; no MTP
head, no aux-free bias update: transformers' DeepseekV3 has neither in
training), AdamW (torch, foreach) on the adapters with the config's ferry
AdamW settings. peft's "experts" target is not given: transformers 5 holds
the routed experts as fused 3-D parameters, which target_modules does not
reach (docs/FINETUNE.md), so the caller passes the nn.Linear targets only.

Prints one JSON line:
{"tokens_per_s": ..., "step_ms": ..., "trainable": ..., "max_rss_mb": ...}
Exit 77 if torch, transformers or peft is unavailable.
"""

import argparse
import json
import resource
import sys
import time

try:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)


def build(config_path):
    """DeepseekV3ForCausalLM from ferry's config.json (an HF config plus a
    "ferry" object transformers ignores)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with open(config_path) as f:
        cfg = json.load(f)
    ferry = cfg.pop("ferry", {}) or {}
    hc = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    hc.use_cache = False
    model = AutoModelForCausalLM.from_config(hc, dtype=torch.float32) \
        if int(transformers.__version__.split(".")[0]) >= 5 else AutoModelForCausalLM.from_config(hc)
    return model, ferry


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, required=True)
    ap.add_argument("--lora-targets", required=True)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    transformers.logging.set_verbosity_error()
    model, f = build(a.config)
    targets = a.lora_targets.split(",")
    if "experts" in targets:
        print("bench_peft: the 'experts' target is not a module in transformers 5", file=sys.stderr)
        return 2
    lc = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0, target_modules=targets)
    model = get_peft_model(model, lc)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=float(f.get("lr") or 1e-3),
                  betas=(float(f.get("beta1") or 0.9), float(f.get("beta2") or 0.95)),
                  eps=float(f.get("eps") or 1e-8), weight_decay=float(f.get("weight_decay") or 0.1))
    try:
        opt = torch.optim.AdamW(trained, foreach=True, **kwargs)
    except TypeError:  # an older torch without the foreach option
        opt = torch.optim.AdamW(trained, **kwargs)
    g = torch.Generator().manual_seed(a.seed + 1)
    tokens = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    step_s = (time.perf_counter() - t0) / max(1, a.steps)
    print(json.dumps({"tokens_per_s": a.batch * a.seq / step_s,
                      "step_ms": step_s * 1e3,
                      "trainable": sum(p.numel() for p in trained),
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
