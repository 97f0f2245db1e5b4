"""Out: a ferry model exported as a Hugging Face directory loads in
transformers and computes what ferry computes (docs/INTEROP.md).

A tiny model is trained with `ferry train`, exported f32 / bf16 / f16 with
`ferry convert --to hf`, and checked against transformers and safetensors:
- AutoModelForCausalLM and AutoTokenizer load it; the only load warning is
  transformers' report of the MTP layer as unexpected keys (it skips only
  layer 61, DeepSeek-V3's, without a word);
- logits of a batch of 8 prompts equal ferry's (hf_probe) within 1e-4
  relative (f32), and the bf16 directory's within bf16 tolerance of the f32
  model's; ferry reading the bf16 directory agrees with transformers reading
  it within 1e-4;
- 64 greedy ids equal ferry's (decode path) and `ferry generate
  --temperature 0` prints the same text;
- f32 tensors are the checkpoint's bits, bf16/f16 are torch's rounding of
  them (nearest even), shards are cut as huggingface_hub cuts them;
- export -> import -> export is byte-identical; an existing output is refused."""
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_common as c  # noqa: E402


def check_load_warnings(msgs, L, D):
    """Only the report of the MTP layers' keys as unexpected: transformers 5
    prints a LOAD REPORT table of UNEXPECTED keys, transformers 4 "Some
    weights of the model checkpoint ... were not used"."""
    if D == 0:
        if msgs:
            c.fail("transformers warned: %s" % msgs)
        return
    if len(msgs) != 1 or not ("LOAD REPORT" in msgs[0] or "were not used" in msgs[0]):
        c.fail("expected one report of unused keys, got %d messages: %s" % (len(msgs), msgs))
    keys = set(re.findall(r"model\.layers\.\d+\.[A-Za-z0-9_.]*[A-Za-z0-9_]", msgs[0]))
    bad = sorted(k for k in keys if not L <= int(k.split(".")[2]) < L + D)
    rows = [r for r in msgs[0].splitlines() if "|" in r and not r.startswith(("Key", "-"))]
    if bad or not keys or any("UNEXPECTED" not in r for r in rows):
        c.fail("the load report names more than the MTP layers' keys: %s" % (bad or msgs[0]))
    print("load warnings: one report, %d MTP keys (layer %d) unexpected, nothing else" % (len(keys), L))


def check_tensors(ckpt_model, hf32, hfbf, hf16):
    """f32 exact, bf16 and f16 as torch rounds the f32 values."""
    import torch
    from safetensors.torch import load_file
    ref = load_file(ckpt_model)

    def load_dir(d):
        out = {}
        for n in os.listdir(d):
            if n.endswith(".safetensors"):
                out.update(load_file(os.path.join(d, n)))
        return out

    for d, dt in ((hf32, torch.float32), (hfbf, torch.bfloat16), (hf16, torch.float16)):
        got = load_dir(d)
        extra = set(got) - set(ref)
        if not all(".embed_tokens." in k or ".shared_head.head." in k for k in extra) or set(ref) - set(got):
            c.fail("%s: tensor names differ from the checkpoint's: %s" % (d, sorted(extra ^ (set(ref) - set(got)))))
        for k, v in ref.items():
            want = v if k.endswith("e_score_correction_bias") else v.to(dt)
            if got[k].dtype != want.dtype or not torch.equal(got[k].contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)):
                c.fail("%s: tensor %s is not the checkpoint's value rounded to %s" % (d, k, dt))
        for k in extra:
            main = "model.embed_tokens.weight" if ".embed_tokens." in k else "lm_head.weight"
            if not torch.equal(got[k], got[main]):
                c.fail("%s: MTP copy %s differs from %s" % (d, k, main))
    print("tensors: f32 bit-exact, bf16 and f16 equal torch's rounding, MTP copies equal the main ones")


def check_shards(ckpt_model, hfbf, max_size):
    """The shard cut equals huggingface_hub's for the same tensors in the same order."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors import safe_open
    import torch
    with open(ckpt_model, "rb") as f:
        hdr = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    order = sorted((k for k in hdr if k != "__metadata__"), key=lambda k: hdr[k]["data_offsets"][0])
    idx = json.load(open(os.path.join(hfbf, "model.safetensors.index.json")))
    names = order + sorted(k for k in idx["weight_map"] if k not in hdr)
    sd = {}
    for n in names:
        f = idx["weight_map"][n]
        with safe_open(os.path.join(hfbf, f), "pt") as s:
            sd[n] = s.get_tensor(n)
    if list(sd) != names:
        c.fail("state dict order")
    split = split_torch_state_dict_into_shards(sd, max_shard_size=max_size, filename_pattern="model{suffix}.safetensors")
    if split.tensor_to_filename != idx["weight_map"]:
        c.fail("shards differ from huggingface_hub's split")
    if split.metadata["total_size"] != idx["metadata"]["total_size"]:
        c.fail("total_size %s != %s" % (idx["metadata"]["total_size"], split.metadata["total_size"]))
    files = sorted(n for n in os.listdir(hfbf) if n.endswith(".safetensors"))
    if files != sorted(split.filename_to_tensors):
        c.fail("shard files %s != %s" % (files, sorted(split.filename_to_tensors)))
    print("shards: %d files, the cut and total_size equal huggingface_hub's" % len(files))


def main():
    a = c.args()
    import torch
    w = a.work
    c.fixture(a.ferry, w)
    c.run([a.ferry, "train", "--data", "data", "--config", "micro.json", "--steps", "30", "--batch", "4", "--seq", "32",
           "--eval-every", "0", "--out", "run"], cwd=w)
    hf32, hfbf, hf16 = (os.path.join(w, n) for n in ("hf32", "hfbf", "hf16"))
    c.run([a.ferry, "convert", "--model", "run", "--to", "hf", "--dtype", "f32", "--out", hf32], cwd=w)
    c.run([a.ferry, "convert", "--model", "run", "--to", "hf", "--out", hfbf, "--max-shard-size", "100KB"], cwd=w)
    c.run([a.ferry, "convert", "--model", "run", "--to", "hf", "--dtype", "f16", "--out", hf16], cwd=w)
    cfg = json.load(open(os.path.join(hf32, "config.json")))
    L, D = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
    if "ferry" in cfg or cfg.get("dtype") != "float32" or cfg.get("torch_dtype") != "float32":
        c.fail("config.json: a ferry object or the wrong dtype keys: %s" % cfg)
    ckpt = os.path.join(w, "run/checkpoints", open(os.path.join(w, "run/checkpoints/LATEST")).read().strip())
    check_tensors(os.path.join(ckpt, "model.safetensors"), hf32, hfbf, hf16)
    check_shards(os.path.join(ckpt, "model.safetensors"), hfbf, 100000)

    model, tok, msgs = c.load_hf(hf32, torch.float32)
    check_load_warnings(msgs, L, D)
    if (tok.bos_token, tok.eos_token, tok.pad_token) != ("<|bos|>", "<|eos|>", "<|pad|>"):
        c.fail("tokenizer specials %s %s %s" % (tok.bos_token, tok.eos_token, tok.pad_token))
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    if chat != "user: hi<|eos|>assistant: ":
        c.fail("chat template renders %r" % chat)

    lines = [l for l in open(os.path.join(w, "corpus.txt")).read().split("\n") if len(l) > 60]
    T = 24
    ids = [tok(lines[i * 37])["input_ids"][:T] for i in range(8)]
    if any(len(r) < T for r in ids):
        c.fail("prompts shorter than %d tokens" % T)
    fl, fg = c.probe(a, os.path.join(w, "run"), ids, w, "run", greedy=64)
    hl = c.hf_logits(model, ids)
    e32 = c.rel_err(fl, hl)
    print("f32 export: max relative logits error vs ferry %.3g (B=8, T=%d)" % (e32, T))
    if not e32 <= 1e-4:
        c.fail("f32 logits differ: %.3g > 1e-4" % e32)
    hg = c.hf_greedy(model, ids[0], 64)
    if hg != fg:
        c.fail("greedy ids differ:\n hf    %s\n ferry %s" % (hg, fg))
    print("greedy: 64 ids identical (transformers, ferry's decode path)")
    for d in ("run", hf32):
        diff = c.generate_matches(a, tok, d, ids[0], hg, cwd=w)
        if diff:
            c.fail("--model %s: %s" % (d, diff))
    print("ferry generate --temperature 0 (run and HF directory): same text as transformers")

    mbf, _, _ = c.load_hf(hfbf, torch.float32)
    hbl = c.hf_logits(mbf, ids)
    # bf16 weights (8 bits of mantissa) move the logits by ~0.1%; a position
    # where the rounding flips a near-tied MoE routing choice moves more, so
    # the bound is on the whole batch's relative L2 error and the median
    # position, and the largest position's error is printed.
    ebf, l2 = c.rel_err(hbl, fl), float(np.linalg.norm(hbl - fl) / np.linalg.norm(fl))
    med = float(np.median(np.abs(hbl - fl).max(-1) / np.abs(fl).max(-1)))
    fbl, _ = c.probe(a, hfbf, ids, w, "hfbf")
    ebf2 = c.rel_err(fbl, hbl)
    print("bf16 export vs the f32 model: relative L2 %.3g, median position %.3g, worst position %.3g; "
          "ferry vs transformers on the bf16 directory %.3g" % (l2, med, ebf, ebf2))
    if not (l2 <= 2e-2 and med <= 1e-2):
        c.fail("bf16 logits too far from f32: L2 %.3g, median %.3g" % (l2, med))
    if not ebf2 <= 1e-4:
        c.fail("ferry and transformers disagree on the bf16 directory: %.3g" % ebf2)

    c.run([a.ferry, "convert", "--from", "hf", hf32, "--out", "back"], cwd=w)
    c.run([a.ferry, "convert", "--model", "back", "--to", "hf", "--dtype", "f32", "--out", "hf32b"], cwd=w)
    d = c.files_identical(hf32, os.path.join(w, "hf32b"))
    if d:
        c.fail("export -> import -> export: " + d)
    print("export -> import -> export: byte-identical")
    before = open(os.path.join(hf32, "config.json"), "rb").read()
    r = c.run([a.ferry, "convert", "--model", "run", "--to", "hf", "--out", hf32], cwd=w, ok=False)
    if r.returncode == 0 or "already exists" not in r.stderr or open(os.path.join(hf32, "config.json"), "rb").read() != before:
        c.fail("an existing output was not refused: %s" % r.stderr)
    c.no_temp_left(w)
    print("PASS")


if __name__ == "__main__":
    main()
