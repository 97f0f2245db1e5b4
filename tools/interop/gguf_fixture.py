"""The trained tiny model the GGUF checks export (gguf_check.py,
gguf_llamacpp.py): a generated corpus, ferry's tokenizer and data, and a
short training run of a DeepSeek-V3 with 3 layers + 1 MTP module, q_lora,
n_group 2 and a k_b head split (qk_nope_head_dim 16) whose rows are not
whole 32-blocks. Standard library only (plus safetensors for the weights)."""
import json
import os
import random
import shutil
import subprocess
import sys

TINY = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 300,
    "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 3,
    "num_attention_heads": 2, "num_key_value_heads": 2, "q_lora_rank": 32, "kv_lora_rank": 32,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 8,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu", "rope_theta": 10000.0,
    "rope_scaling": None, "attention_bias": False, "rms_norm_eps": 1e-06, "num_nextn_predict_layers": 1,
    "max_position_embeddings": 256, "tie_word_embeddings": False, "initializer_range": 0.02,
    "aux_loss_alpha": 0.0001, "seq_aux": True, "torch_dtype": "float32",
    "ferry": {"lr": 0.003, "min_lr": 0.0003, "warmup_steps": 5},
}


# The same with DeepSeek-style YaRN (mscale == mscale_all_dim, as llama.cpp
# requires): max_position_embeddings 256 from an original 64.
YARN = dict(TINY, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707})

# The other branches: plain q_proj (q_lora_rank null), one expert group, no
# MTP, unnormalised top-k weights, two dense layers.
PLAIN = dict(TINY, q_lora_rank=None, n_group=1, topk_group=1, num_nextn_predict_layers=0, norm_topk_prob=False,
             routed_scaling_factor=1.0, first_k_dense_replace=2, num_hidden_layers=4)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def corpus_text():
    rnd = random.Random(7)
    det, noun = "the a one every that".split(), "shepherd king river city servant stone lamb".split()
    verb, prep = "walked spoke rested waited sang wept".split(), "by near beyond under before".split()
    out = []
    for _ in range(3000):
        out.append(f"{rnd.choice(det)} {rnd.choice(noun)} {rnd.choice(verb)} {rnd.choice(prep)} the {rnd.choice(noun)}")
        out.append(".\n" if rnd.random() < 0.3 else ", and ")
    return "".join(out)


def make_run(ferry, work, config=TINY, steps=150, name="run"):
    """A trained tiny run in work/name (tokenizer, data, train)."""
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "corpus.txt"), "w") as f:
        f.write(corpus_text())
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(config, f)
    steps_cmds = [
        [ferry, "tokenizer", "train", "--vocab-size", str(config["vocab_size"]), "-o", "tok.json", "corpus.txt"],
        [ferry, "data", "prepare", "corpus.txt", "--tokenizer", "tok.json", "--out", "data"],
        [ferry, "train", "--data", "data", "--config", name + ".json", "--steps", str(steps), "--batch", "8",
         "--seq", "64", "--eval-every", "0", "--ckpt-every", "0", "--out", name],
    ]
    if os.path.exists(os.path.join(work, "data", "tokenizer.json")):
        steps_cmds = steps_cmds[2:]       # a second run on the same data
    for cmd in steps_cmds:
        if cmd[1] == "train":
            shutil.copy(os.path.join(work, "tok.json"), os.path.join(work, "data", "tokenizer.json"))
        r = run(cmd, cwd=work)
        if r.returncode:
            sys.exit(f"FAIL: {' '.join(cmd)}: {r.stderr.strip()}")
    return os.path.join(work, name)


def ferry_weights(run_dir):
    from safetensors.numpy import load_file
    latest = open(os.path.join(run_dir, "checkpoints", "LATEST")).read().strip()
    return load_file(os.path.join(run_dir, "checkpoints", latest, "model.safetensors"))


# ---- a run with chosen weights (edge values for the encoders) -------------

_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5, _M = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5, (1 << 64) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc, v):
    return (_rotl((acc + v * _P2) & _M, 31) * _P1) & _M


def xxh64(data, seed=0):
    """xxHash64 (the checksum ferry's checkpoint MANIFEST.json records)."""
    import struct
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed, (seed - _P1) & _M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _round(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for k in range(4):
            h = ((h ^ _round(0, v[k])) * _P1 + _P4) & _M
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, struct.unpack_from("<Q", data, i)[0]), 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ (struct.unpack_from("<I", data, i)[0] * _P1 & _M), 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ (data[i] * _P5 & _M), 11) * _P1) & _M
        i += 1
    h = ((h ^ (h >> 33)) * _P2) & _M
    h = ((h ^ (h >> 29)) * _P3) & _M
    return h ^ (h >> 32)


def rewrite_weights(run_dir, new_dir, change):
    """A copy of run_dir whose latest checkpoint holds change(weights) (a
    dict name -> float32 array, edited in place), its MANIFEST.json entry
    for model.safetensors updated (bytes, xxh64)."""
    from safetensors.numpy import save_file
    shutil.copytree(run_dir, new_dir)
    latest = open(os.path.join(new_dir, "checkpoints", "LATEST")).read().strip()
    ck = os.path.join(new_dir, "checkpoints", latest)
    w = dict(ferry_weights(new_dir))
    change(w)
    path = os.path.join(ck, "model.safetensors")
    save_file(w, path)
    data = open(path, "rb").read()
    man = json.load(open(os.path.join(ck, "MANIFEST.json")))
    entry = man["files"]["model.safetensors"]
    entry.pop("tensors", None)
    entry["bytes"], entry["xxh64"] = len(data), f"{xxh64(data):016x}"
    with open(os.path.join(ck, "MANIFEST.json"), "w") as f:
        json.dump(man, f, indent=1)
    return new_dir


def edge_rows(d):
    """Rows of d values (blocks of 32) at the encoders' edges."""
    import numpy as np
    def row(vals):
        r = np.zeros(d, np.float32)
        r[:len(vals)] = vals
        return r
    t = 2.0 ** -24  # the smallest f16 subnormal
    return [
        # f16: the largest half, the tie to 65536 (inf), beyond; subnormals and their ties
        row([65504, 65519.99, 65520, 70000, -70000, t, t / 2, 3 * t / 4, 1.5 * t, 2.5 * t, 1e-10, -t / 2,
             6.1e-5, 2.0 ** -14 * (1 + 2.0 ** -11), 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, -(1 + 2.0 ** -11)]),
        row([]),                                                        # all-zero blocks: scale 0
        row([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 63.5,     # q8_0 ties (d = 1): away from 0
             0.5 - 2.0 ** -25, -(0.5 - 2.0 ** -25), 2.5 - 2.0 ** -22]),  # just below a tie: roundf, not floor(x+0.5)
        row([-8, 0.5, -0.5, 1.5, 7.5, -7.5, 7.0, 8.0, -3.5, 3.5]),     # q4_0 (d = 1): ties and the clipped +8
        row([-3, 3, 1, -1, 2.9999, -0.001]),                          # equal magnitudes: the first one is max
        np.linspace(-1e-6, 1e-6, d, dtype=np.float32),                # scales that are f16 subnormals
        np.linspace(-5e5, 3e5, d, dtype=np.float32),                  # large scales
    ]



def edge_run(run_dir, new_dir):
    """run_dir's copy with edge_rows as the embedding's first rows."""
    def change(w):
        e = w["model.embed_tokens.weight"]
        for i, r in enumerate(edge_rows(e.shape[1])):
            e[i] = r
    return rewrite_weights(run_dir, new_dir, change)
