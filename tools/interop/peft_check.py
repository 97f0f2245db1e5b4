"""LoRA out: a ferry LoRA run exported with `ferry convert --to peft` loads
with PyPI peft onto transformers' model of its base (the base exported with
`ferry convert --to hf`) and computes what ferry computes (docs/FINETUNE.md).

A micro base is trained, a LoRA run on it (the attention targets, the ones
PEFT on transformers 5 loads as trained) is fine-tuned with `--init-from`,
and:
- PeftModel.from_pretrained(base, adapter) holds one lora_A/lora_B pair per
  adapted linear, with ferry's shapes;
- its logits of a batch equal ferry's for the LoRA run (its adapters merged
  into its base by `ferry convert --to hf`, run by ferry's forward through
  hf_probe) within 1e-4 relative, and differ
  from the base's by far more (the adapters matter);
- adapter_config.json says r, lora_alpha and the targets;
- the merged export (`--to hf` of the LoRA run) gives transformers the
  greedy text `ferry generate --model LORA_RUN` gives;
- a run adapting MLP projections is refused by --to peft (see FINETUNE.md)."""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_common as c  # noqa: E402

TOL = 1e-4


def rel(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def main():
    a = c.args()
    w = a.work
    c.fixture(a.ferry, w)
    T = ["--data", "data", "--batch", "4", "--seq", "32", "--eval-every", "0", "--seed", "3"]
    c.run([a.ferry, "train", "--config", "micro.json", *T, "--steps", "4", "--out", "base"], cwd=w)
    attn = "q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj"
    c.run([a.ferry, "train", "--init-from", "base", *T, "--steps", "6", "--lr", "3e-2", "--lora-rank", "4",
           "--lora-alpha", "8", "--lora-targets", attn, "--out", "lora"], cwd=w)
    c.run([a.ferry, "convert", "--model", "base", "--to", "hf", "--dtype", "f32", "--out", "hf_base"], cwd=w)
    c.run([a.ferry, "convert", "--model", "lora", "--to", "peft", "--out", "peft"], cwd=w)
    # ferry's adapted model: the run's adapters merged into its base by ferry
    # (convert reads a LoRA run so), run by ferry's forward (hf_probe)
    c.run([a.ferry, "convert", "--model", "lora", "--to", "hf", "--dtype", "f32", "--out", "hf_merged"], cwd=w)

    cfg = json.load(open(os.path.join(w, "peft", "adapter_config.json")))
    if cfg["r"] != 4 or cfg["lora_alpha"] != 8 or sorted(cfg["target_modules"]) != sorted(attn.split(",")):
        c.fail("adapter_config.json: %s" % cfg)

    import torch
    from peft import PeftModel
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=(4, 12)).tolist()
    ferry_lg, _ = c.probe(a, os.path.join(w, "hf_merged"), ids, w, "lora")
    model, _, _ = c.load_hf(os.path.join(w, "hf_base"), torch.float32)
    base_lg = c.hf_logits(model, ids)
    pm = PeftModel.from_pretrained(model, os.path.join(w, "peft"))
    pm.eval()
    pairs = [n for n, _ in pm.named_parameters() if "lora_A" in n]
    L = json.load(open(os.path.join(w, "base", "config.json")))["num_hidden_layers"]
    if len(pairs) != 5 * L:
        c.fail("peft holds %d lora_A tensors, expected %d (5 targets x %d layers): %s" % (len(pairs), 5 * L, L, pairs))
    peft_lg = c.hf_logits(pm, ids)
    e, d = rel(ferry_lg, peft_lg), rel(base_lg, peft_lg)
    print("peft vs ferry logits: rel %.3e (tol %g); the base's differ by %.3e" % (e, TOL, d))
    if not e <= TOL:
        c.fail("peft's logits differ from ferry's: %.3e" % e)
    if not d > 100 * TOL:
        c.fail("the adapters barely change the logits (%.3e): the check would not see a wrong adapter" % d)

    # The merged export: transformers' greedy text on it equals `ferry
    # generate --temperature 0 --model lora` (the run, its adapters merged
    # into the recorded base at load).
    from transformers import AutoTokenizer
    merged, _, _ = c.load_hf(os.path.join(w, "hf_merged"), torch.float32)
    tok = AutoTokenizer.from_pretrained(os.path.join(w, "hf_merged"))
    prompt = tok.encode("the king walked by the river", add_special_tokens=False)
    hg = c.hf_greedy(merged, prompt, 24)
    diff = c.generate_matches(a, tok, "lora", prompt, hg, cwd=w)
    if diff:
        c.fail("merged export, greedy: %s" % diff)
    print("merged export: transformers' 24 greedy tokens = ferry generate --model lora: %r" % tok.decode(hg))

    c.run([a.ferry, "train", "--init-from", "base", *T, "--steps", "2", "--lora-rank", "4",
           "--lora-targets", "q_a_proj,gate_proj", "--out", "lora_mlp"], cwd=w)
    r = c.run([a.ferry, "convert", "--model", "lora_mlp", "--to", "peft", "--out", "peft_mlp"], cwd=w, ok=False)
    if r.returncode == 0 or "MLP projections" not in r.stderr:
        c.fail("--to peft of a run adapting gate_proj was not refused: %s" % r.stderr)
    print("PASS")


if __name__ == "__main__":
    main()
