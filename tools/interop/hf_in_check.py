"""In: Hugging Face DeepseekV3 directories come into ferry (docs/INTEROP.md).

transformers makes a random DeepseekV3ForCausalLM (q_lora, YaRN rope_scaling,
n_group > 1, num_nextn_predict_layers 1, 2 dense + 3 MoE layers, random norms
and router biases) and saves it with save_pretrained in bf16, sharded. A
helper here writes the same weights as DeepSeek's FP8 release format (F8_E4M3
blocks with <name>_scale_inv, from the math), with an MTP layer and DeepSeek's
copies of the embedding and head. ferry imports both:
- logits equal transformers' within 1e-4 relative (for FP8, transformers runs
  the dequantized weights written as f32);
- 64 greedy ids equal, and `ferry generate --temperature 0` prints
  transformers' greedy text;
- export -> import -> export is byte-identical, and the bf16 export carries
  the very bits transformers saved;
- bad input (a shard missing from the index, a tensor of the wrong shape or
  dtype, an unknown architecture, a truncated file, an unknown tensor, an MTP
  copy that differs, an FP8 weight without its scale) is refused with a
  one-line error naming the file and the tensor, leaving no output."""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_common as c  # noqa: E402

BLOCK = [128, 128]  # DeepSeek's FP8 block; the dense MLP (160 wide) has two per row or column, one partial


def make_model(work, tokjson):
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    cfg = DeepseekV3Config(
        vocab_size=300, hidden_size=64, intermediate_size=160, moe_intermediate_size=32, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=4, topk_group=2, first_k_dense_replace=2, norm_topk_prob=True, routed_scaling_factor=2.5,
        max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6, initializer_range=0.1,
        rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        num_nextn_predict_layers=1, tie_word_embeddings=False, bos_token_id=297, eos_token_id=298,
        pad_token_id=299, rope_interleave=True)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():
        for n, p in list(model.named_parameters()) + list(model.named_buffers()):
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif n.endswith("e_score_correction_bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model = model.to(torch.bfloat16)
    out = os.path.join(work, "hf_bf16")
    model.save_pretrained(out, max_shard_size="150KB")
    shutil.copy(tokjson, os.path.join(out, "tokenizer.json"))
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
               "pad_token": "<|pad|>", "add_bos_token": False}, open(os.path.join(out, "tokenizer_config.json"), "w"))
    return out


def load_all(d):
    from safetensors.torch import load_file
    sd = {}
    for n in sorted(os.listdir(d)):
        if n.endswith(".safetensors"):
            sd.update(load_file(os.path.join(d, n)))
    return sd


def quantizable(name, t):
    return t.dim() == 2 and not any(k in name for k in ("embed_tokens", "lm_head", "shared_head.head", "mlp.gate.weight"))


def fp8_quantize(w):
    """DeepSeek's block format: q = w / s in e4m3 per block, s = amax / 448; returns q, s (= scale_inv) and q * s."""
    import torch
    w = w.float()
    R, C = w.shape
    br, bc = BLOCK
    s = torch.ones((R + br - 1) // br, (C + bc - 1) // bc)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            amax = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc].abs().max()
            if amax > 0:
                s[i, j] = amax / 448.0
    full = s.repeat_interleave(br, 0)[:R].repeat_interleave(bc, 1)[:, :C]
    q = (w / full).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, s, q.float() * full


def make_fp8(work, src):
    """The FP8 directory (one model.safetensors, an MTP layer with DeepSeek's
    copies) and, for transformers, the same model dequantized in f32."""
    import torch
    from safetensors.torch import save_file
    sd = load_all(src)
    cfg = json.load(open(os.path.join(src, "config.json")))
    L = cfg["num_hidden_layers"]
    g = torch.Generator().manual_seed(1)
    d = cfg["hidden_size"]
    for k, v in list(sd.items()):   # MTP layer L: layer L-1's tensors plus its own
        if k.startswith("model.layers.%d." % (L - 1)):
            sd[k.replace("model.layers.%d." % (L - 1), "model.layers.%d." % L)] = v.clone()
    for n, shape in (("enorm.weight", [d]), ("hnorm.weight", [d]), ("shared_head.norm.weight", [d]), ("eh_proj.weight", [d, 2 * d])):
        sd["model.layers.%d.%s" % (L, n)] = ((1 if "norm" in n else 0) + 0.1 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    sd["model.layers.%d.embed_tokens.weight" % L] = sd["model.embed_tokens.weight"].clone()
    sd["model.layers.%d.shared_head.head.weight" % L] = sd["lm_head.weight"].clone()
    fp8, deq = {}, {}
    for k, v in sd.items():
        if quantizable(k, v):
            q, s, dq = fp8_quantize(v)
            fp8[k], fp8[k + "_scale_inv"] = q, s
            deq[k] = dq
        else:
            fp8[k] = v
            deq[k] = v.float()
    out, ref = os.path.join(work, "hf_fp8"), os.path.join(work, "hf_fp8_dequant")
    for dd in (out, ref):
        os.makedirs(dd)
        for n in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(os.path.join(src, n), dd)
    qc = dict(cfg, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                        "weight_block_size": BLOCK})
    json.dump(qc, open(os.path.join(out, "config.json"), "w"), indent=2)
    save_file(fp8, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(dict(cfg, dtype="float32"), open(os.path.join(ref, "config.json"), "w"), indent=2)
    save_file({k: v for k, v in deq.items() if not k.startswith("model.layers.%d." % L)},
              os.path.join(ref, "model.safetensors"), metadata={"format": "pt"})
    return out, ref, sum(1 for k in fp8 if k.endswith("_scale_inv"))


# DeepSeek-V3's pre-tokenizer regexes as its tokenizer.json has them, and its specials
DSV3_RE = [
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
DS_BOS, DS_EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"


def dsv3_tokenizer_dir(a, w, bf, lines, prompt):
    """bf with a DeepSeek-V3-style tokenizer (Sequence of Splits +
    ByteLevel(use_regex false), fullwidth specials) trained by `tokenizers`,
    and an eos that the model's greedy continuation of `prompt` reaches (a
    token it emits after 8 others), named in tokenizer_config.json: ferry must
    encode like `tokenizers`, take eos from tokenizer_config.json and stop
    there. Returns the directory, the tokenizer and the eos id."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), "isolated") for r in DSV3_RE]
                                               + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=[DS_BOS, DS_EOS], show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if tk.get_vocab_size() > 300:
        c.fail("dsv3 tokenizer: %d tokens" % tk.get_vocab_size())
    model, _, _ = c.load_hf(bf, torch.float32)
    ids = tk.encode(prompt, add_special_tokens=False).ids
    hg = c.hf_greedy(model, ids, 64)
    k = next((i for i in range(8, 64) if hg[i] not in hg[:i] and hg[i] > 1), None)
    if k is None:
        c.fail("dsv3 tokenizer: no greedy token to use as eos")
    d = os.path.join(w, "hf_bf16_dsv3tok")
    shutil.copytree(bf, d)
    tk.save(os.path.join(d, "tokenizer.json"))
    eos = tk.id_to_token(hg[k])
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": {"content": DS_BOS}, "eos_token": eos},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    for n in ("config.json", "generation_config.json"):
        j = json.load(open(os.path.join(d, n)))
        j.update(bos_token_id=0, eos_token_id=1)   # tokenizer_config.json's names win
        json.dump(j, open(os.path.join(d, n), "w"))
    r = c.run([a.ferry, "generate", "--model", d, "--prompt", prompt, "-n", "64", "--temperature", "0"], binary=True)
    dec = c._byte_decoder()
    want = (prompt.encode() + b"".join(bytes(dec[ch] for ch in tk.id_to_token(t)) for t in hg[:k] if t > 1)
            ).decode("utf-8", "replace").encode() + b"\n"
    if r.stdout != want:
        c.fail("dsv3 tokenizer: ferry generate printed %r, expected %r (stop at %r, greedy token %d)" % (r.stdout, want, eos, k))
    print("dsv3-style tokenizer: ferry encodes the prompt as tokenizers does and stops at tokenizer_config's eos (token %d)" % k)
    return d


def compare(a, name, ferry_dir, hf_dir, ids, work, greedy):
    import torch
    model, tok, _ = c.load_hf(hf_dir, torch.float32)
    hl = c.hf_logits(model, ids)
    fl, fg = c.probe(a, ferry_dir, ids, work, name, greedy=64 if greedy else 0)
    e = c.rel_err(fl, hl)
    print("%s: max relative logits error ferry vs transformers %.3g (B=%d, T=%d)" % (name, e, len(ids), len(ids[0])))
    if not e <= 1e-4:
        c.fail("%s: logits differ by %.3g > 1e-4" % (name, e))
    if greedy:
        hg = c.hf_greedy(model, ids[0], 64)
        if hg != fg:
            c.fail("%s: greedy ids differ\n hf    %s\n ferry %s" % (name, hg, fg))
        diff = c.generate_matches(a, tok, ferry_dir, ids[0], hg)
        if diff:
            c.fail("%s: %s" % (name, diff))
        print("%s: 64 greedy ids identical; ferry generate --temperature 0 prints transformers' text" % name)
    return e


def round_trip(a, w, src, name, dtype):
    """import -> export -> import -> export: the two exports byte-identical."""
    run1, e1, run2, e2 = (os.path.join(w, name + s) for s in ("_run1", "_exp1", "_run2", "_exp2"))
    r = c.run([a.ferry, "convert", "--from", "hf", src, "--out", run1])
    c.run([a.ferry, "convert", "--model", run1, "--to", "hf", "--dtype", dtype, "--out", e1])
    c.run([a.ferry, "convert", "--from", "hf", e1, "--out", run2])
    c.run([a.ferry, "convert", "--model", run2, "--to", "hf", "--dtype", dtype, "--out", e2])
    diff = c.files_identical(e1, e2)
    if diff:
        c.fail("%s: export -> import -> export not byte-identical: %s" % (name, diff))
    print("%s: export -> import -> export byte-identical" % name)
    return r, e1


def expect_refused(a, w, name, src, must):
    out = os.path.join(w, "bad_out_" + name)
    r = c.run([a.ferry, "convert", "--from", "hf", src, "--out", out], ok=False)
    errs = [l for l in r.stderr.splitlines() if not l.startswith("[warn]")]
    msg = errs[0] if len(errs) == 1 else r.stderr
    if r.returncode == 0 or len(errs) != 1 or not all(m in msg for m in must):
        c.fail("bad input %s: expected a one-line error naming %s, got rc %d: %r" % (name, must, r.returncode, r.stderr))
    if os.path.exists(out):
        c.fail("bad input %s: %s was left behind" % (name, out))
    print("refused %-16s %s" % (name + ":", msg))


def bad_inputs(a, w, bf, fp8):
    import torch
    from safetensors.torch import load_file, save_file
    idx = json.load(open(os.path.join(bf, "model.safetensors.index.json")))
    name = "model.layers.2.post_attention_layernorm.weight"
    shard = idx["weight_map"][name]

    def variant(tag, base=bf):
        d = os.path.join(w, "bad_" + tag)
        shutil.copytree(base, d)
        return d

    d = variant("missing_shard")
    os.remove(os.path.join(d, shard))
    expect_refused(a, w, "missing_shard", d, [shard, "model.safetensors.index.json"])
    for tag, val, must in (("shape", lambda t: torch.cat([t, t[:1]]), ["shape"]),
                           ("dtype", lambda t: t.to(torch.int32), ["dtype I32"])):
        d = variant(tag)
        sd = load_file(os.path.join(d, shard))
        sd[name] = val(sd[name])
        save_file(sd, os.path.join(d, shard), metadata={"format": "pt"})
        expect_refused(a, w, tag, d, [shard, name] + must)
    d = variant("arch")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    expect_refused(a, w, "arch", d, ["config.json", "LlamaForCausalLM"])
    d = variant("truncated")
    p = os.path.join(d, shard)
    os.truncate(p, os.path.getsize(p) // 2)
    expect_refused(a, w, "truncated", d, [shard])
    d = variant("unknown")
    sd = load_file(os.path.join(d, shard))
    sd["model.layers.0.mlp.bogus.weight"] = torch.zeros(4, dtype=torch.bfloat16)
    save_file(sd, os.path.join(d, shard), metadata={"format": "pt"})
    ix = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    ix["weight_map"]["model.layers.0.mlp.bogus.weight"] = shard
    json.dump(ix, open(os.path.join(d, "model.safetensors.index.json"), "w"))
    expect_refused(a, w, "unknown_tensor", d, [shard, "model.layers.0.mlp.bogus.weight"])
    L = json.load(open(os.path.join(fp8, "config.json")))["num_hidden_layers"]
    for tag, edit, must in (
            ("mtp_copy", lambda sd: sd.__setitem__("model.layers.%d.embed_tokens.weight" % L,
                                                   sd["model.embed_tokens.weight"] * 2), ["model.layers.%d.embed_tokens.weight" % L]),
            ("fp8_scale", lambda sd: sd.pop("model.layers.0.self_attn.o_proj.weight_scale_inv"),
             ["model.layers.0.self_attn.o_proj.weight_scale_inv", "model.safetensors"])):
        d = variant(tag, fp8)
        sd = load_file(os.path.join(d, "model.safetensors"))
        edit(sd)
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        expect_refused(a, w, tag, d, must)
    c.no_temp_left(w)


def main():
    a = c.args()
    w = a.work
    c.fixture(a.ferry, w)
    bf = make_model(w, os.path.join(w, "tok.json"))
    shards = [n for n in os.listdir(bf) if n.startswith("model-")]
    if len(shards) < 2 or not os.path.exists(os.path.join(bf, "model.safetensors.index.json")):
        c.fail("save_pretrained did not shard: %s" % os.listdir(bf))
    fp8, fp8_ref, n_fp8 = make_fp8(w, bf)
    print("made: transformers' bf16 directory in %d shards; the FP8 directory with %d block-scaled weights" % (len(shards), n_fp8))
    import torch
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(bf)
    lines = [l for l in open(os.path.join(w, "corpus.txt")).read().split("\n") if len(l) > 60]
    T = 20
    ids = [tok(lines[i * 41])["input_ids"][:T] for i in range(8)]
    compare(a, "bf16", bf, bf, ids, w, greedy=True)
    dsv3 = dsv3_tokenizer_dir(a, w, bf, lines, lines[5])
    compare(a, "fp8", fp8, fp8_ref, ids, w, greedy=True)

    r, e1 = round_trip(a, w, bf, "bf16", "bf16")
    if "without MTP" not in r.stderr:
        c.fail("importing transformers' directory (no MTP tensors) did not say it drops MTP: %r" % r.stderr)
    print("bf16: the import says: %s" % r.stderr.strip().splitlines()[-2 if len(r.stderr.strip().splitlines()) > 1 else 0])
    a_sd, b_sd = load_all(bf), load_all(e1)
    if set(a_sd) != set(b_sd) or any(not torch.equal(a_sd[k].view(torch.int16), b_sd[k].to(a_sd[k].dtype).view(torch.int16)) for k in a_sd):
        c.fail("the bf16 export does not carry transformers' bits")
    print("bf16: the export holds exactly transformers' tensors and bits")
    m0, _, _ = c.load_hf(bf, torch.float32)
    m1, _, msgs = c.load_hf(e1, torch.float32)   # ferry's config.json: YaRN in DeepSeek's spelling, no MTP left
    if msgs:
        c.fail("transformers warned loading ferry's export of a model without MTP: %s" % msgs)
    e = c.rel_err(c.hf_logits(m1, ids), c.hf_logits(m0, ids))
    if e != 0:
        c.fail("transformers computes differently from ferry's re-export (config.json): %.3g" % e)
    print("bf16: transformers loads ferry's re-export with no warning and computes the same logits bit for bit")
    _, t1 = round_trip(a, w, dsv3, "dsv3-tokenizer", "bf16")
    tc = json.load(open(os.path.join(t1, "tokenizer_config.json")))
    if tc["bos_token"] != DS_BOS or tc["eos_token"] != json.load(open(os.path.join(dsv3, "tokenizer_config.json")))["eos_token"]:
        c.fail("dsv3-tokenizer: the export names bos/eos %r/%r" % (tc["bos_token"], tc["eos_token"]))
    _, x1 = round_trip(a, w, fp8, "fp8", "f32")
    xs = load_all(x1)
    L = json.load(open(os.path.join(bf, "config.json")))["num_hidden_layers"]
    if "model.layers.%d.eh_proj.weight" % L not in xs or "model.layers.%d.embed_tokens.weight" % L not in xs:
        c.fail("fp8: the MTP layer did not survive import and export")
    bad_inputs(a, w, bf, fp8)
    print("PASS")


if __name__ == "__main__":
    main()
