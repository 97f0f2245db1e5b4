#!/usr/bin/env python3
"""GGUF export checked with the `gguf` package (docs/INTEROP.md, "Out: GGUF
for llama.cpp").

Trains a tiny DeepSeek-V3 with ferry (3 layers + 1 MTP module, q_lora,
n_group 2, a head split whose k_b rows are not whole 32-blocks), exports it
with `ferry convert --to gguf` as f32, f16, bf16, q8_0 and q4_0, and reads
each file with gguf.GGUFReader:
  - every key, its GGUF value type and value, against values worked out
    here from the run's config.json and tokenizer.json (no other key);
  - every tensor name, shape and type, against a mapping written here from
    llama.cpp's deepseek2 layout (kv_b_proj split per head into attn_k_b,
    transposed, and attn_v_b; experts stacked; e_score_correction_bias as
    exp_probs_b; MTP as blk.N.nextn.*);
  - the bytes: f32 equal to ferry's weights, f16/bf16 equal to numpy's
    round-to-nearest-even, q8_0/q4_0 equal to gguf.quants.quantize of the
    same f32 weights, and gguf.quants.dequantize within the format's
    precision of ferry's weights.
Bad input: an existing target and a directory that is no run are refused
with one line on stderr and nothing written.

Usage: gguf_check.py --ferry PATH --work DIR
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from gguf_fixture import PLAIN, YARN, edge_run, ferry_weights, make_run

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT
    from safetensors.numpy import load_file
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0}
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def expected_tensors(cfg, w):
    """GGUF name -> (numpy array in PyTorch order, is_matrix), from HF names."""
    L, D = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
    H, dn, dv, r = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    E = cfg["n_routed_experts"]
    out = {"token_embd.weight": (w["model.embed_tokens.weight"], True),
           "output_norm.weight": (w["model.norm.weight"], False),
           "output.weight": (w["lm_head.weight"], True)}
    for i in range(L + D):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        simple = {"attn_norm.weight": "input_layernorm.weight",
                  "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
                  "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
                  "attn_output.weight": "self_attn.o_proj.weight",
                  "ffn_norm.weight": "post_attention_layernorm.weight"}
        if cfg["q_lora_rank"]:
            simple.update({"attn_q_a.weight": "self_attn.q_a_proj.weight",
                           "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
                           "attn_q_b.weight": "self_attn.q_b_proj.weight"})
        else:
            simple["attn_q.weight"] = "self_attn.q_proj.weight"
        if i < cfg["first_k_dense_replace"]:
            simple.update({"ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                           "ffn_down.weight": "mlp.down_proj.weight"})
        else:
            simple.update({"ffn_gate_inp.weight": "mlp.gate.weight",
                           "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
                           "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
                           "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
                           "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight"})
            for k in ("gate", "up", "down"):
                out[b + f"ffn_{k}_exps.weight"] = (
                    np.stack([w[p + f"mlp.experts.{e}.{k}_proj.weight"] for e in range(E)]), True)
        if i >= L:
            simple.update({"nextn.eh_proj.weight": "eh_proj.weight", "nextn.enorm.weight": "enorm.weight",
                           "nextn.hnorm.weight": "hnorm.weight",
                           "nextn.shared_head_norm.weight": "shared_head.norm.weight"})
        for g, h in simple.items():
            a = w[p + h]
            out[b + g] = (a, a.ndim >= 2 and g != "ffn_gate_inp.weight")
        kv_b = w[p + "self_attn.kv_b_proj.weight"].reshape(H, dn + dv, r)
        out[b + "attn_k_b.weight"] = (np.ascontiguousarray(kv_b[:, :dn, :].transpose(0, 2, 1)), True)
        out[b + "attn_v_b.weight"] = (np.ascontiguousarray(kv_b[:, dn:, :]), True)
    return out


def expected_keys(cfg, tok, ftype):
    """key -> (value type, value) from config.json and tokenizer.json."""
    a = "deepseek2."
    L, D = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
    U, F, B, S = VT.UINT32, VT.FLOAT32, VT.BOOL, VT.STRING
    k = {
        "general.architecture": (S, "deepseek2"), "general.name": (S, "ferry"),
        "general.file_type": (U, FILE_TYPE[ftype]), "general.quantization_version": (U, 2),
        "general.alignment": (U, 32),
        a + "vocab_size": (U, cfg["vocab_size"]), a + "context_length": (U, cfg["max_position_embeddings"]),
        a + "embedding_length": (U, cfg["hidden_size"]), a + "block_count": (U, L + D),
        a + "feed_forward_length": (U, cfg["intermediate_size"]),
        a + "leading_dense_block_count": (U, cfg["first_k_dense_replace"]),
        a + "attention.head_count": (U, cfg["num_attention_heads"]), a + "attention.head_count_kv": (U, 1),
        a + "attention.key_length": (U, cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]),
        a + "attention.value_length": (U, cfg["kv_lora_rank"]),
        a + "attention.key_length_mla": (U, cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]),
        a + "attention.value_length_mla": (U, cfg["v_head_dim"]),
        a + "attention.q_lora_rank": (U, cfg["q_lora_rank"] or 0),
        a + "attention.kv_lora_rank": (U, cfg["kv_lora_rank"]),
        a + "attention.layer_norm_rms_epsilon": (F, cfg["rms_norm_eps"]),
        a + "rope.dimension_count": (U, cfg["qk_rope_head_dim"]), a + "rope.freq_base": (F, cfg["rope_theta"]),
        a + "expert_feed_forward_length": (U, cfg["moe_intermediate_size"]),
        a + "expert_shared_count": (U, cfg["n_shared_experts"]),
        a + "expert_count": (U, cfg["n_routed_experts"]), a + "expert_used_count": (U, cfg["num_experts_per_tok"]),
        a + "expert_weights_scale": (F, cfg["routed_scaling_factor"]),
        a + "expert_weights_norm": (B, cfg["norm_topk_prob"]), a + "expert_gating_func": (U, 2),
    }
    if D:
        k[a + "nextn_predict_layers"] = (U, D)
    rs = cfg.get("rope_scaling")
    if rs:
        k.update({a + "rope.scaling.type": (S, "yarn"), a + "rope.scaling.factor": (F, rs["factor"]),
                  a + "rope.scaling.original_context_length": (U, rs["original_max_position_embeddings"]),
                  a + "rope.scaling.yarn_beta_fast": (F, rs.get("beta_fast", 32.0)),
                  a + "rope.scaling.yarn_beta_slow": (F, rs.get("beta_slow", 1.0)),
                  # llama.cpp divides by 0.1 (its converter's convention)
                  a + "rope.scaling.yarn_log_multiplier": (F, np.float32(0.1 * rs["mscale_all_dim"]))})
    else:
        k[a + "rope.scaling.yarn_log_multiplier"] = (F, 0.0)
    if cfg["n_group"] > 1:
        k[a + "expert_group_count"] = (U, cfg["n_group"])
        k[a + "expert_group_used_count"] = (U, cfg["topk_group"])
    m = tok["model"]
    vocab = dict(m["vocab"])
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    tokens = [None] * len(vocab)
    for s, i in vocab.items():
        tokens[i] = s
    special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    merges = [x if isinstance(x, str) else " ".join(x) for x in m["merges"]]
    k.update({
        "tokenizer.ggml.model": (S, "gpt2"), "tokenizer.ggml.pre": (S, "gpt-2"),
        "tokenizer.ggml.tokens": (VT.ARRAY, (S, tokens)),
        "tokenizer.ggml.token_type": (VT.ARRAY, (VT.INT32, [3 if i in special else 1 for i in range(len(tokens))])),
        "tokenizer.ggml.merges": (VT.ARRAY, (S, merges)),
        "tokenizer.ggml.bos_token_id": (U, vocab["<|bos|>"]), "tokenizer.ggml.eos_token_id": (U, vocab["<|eos|>"]),
        "tokenizer.ggml.padding_token_id": (U, vocab["<|pad|>"]),
        "tokenizer.ggml.add_bos_token": (B, False), "tokenizer.ggml.add_eos_token": (B, False),
    })
    return k


def field_value(f):
    if f.types[0] == VT.ARRAY:
        return (f.types[1], list(f.contents()))
    return f.contents()


def check_keys(path, reader, want):
    got = {name: f for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    for name in sorted(set(want) - set(got)):
        fail(f"{path}: key {name} missing")
    for name in sorted(set(got) - set(want)):
        fail(f"{path}: unexpected key {name}")
    for name in sorted(set(want) & set(got)):
        vt, val = want[name]
        f = got[name]
        if f.types[0] != vt:
            fail(f"{path}: key {name} has type {f.types[0].name}, llama.cpp reads {vt.name}")
            continue
        gv = field_value(f)
        if vt == VT.FLOAT32:
            ok = np.float32(gv) == np.float32(val)
        elif vt == VT.ARRAY:
            ok = gv[0] == val[0] and list(gv[1]) == list(val[1])
        else:
            ok = gv == val
        if not ok:
            shown = gv if vt != VT.ARRAY else f"{gv[0].name}[{len(gv[1])}]"
            fail(f"{path}: key {name} = {shown!r}, expected {val if vt != VT.ARRAY else len(val[1])!r}")


def block_error_ok(x, raw, deq, qt):
    """|x - deq| within what each block's stored f16 scale d16 allows:
    half a step (q4_0: a whole step at the clipped +8 end) plus the scale's
    own rounding (|q| <= 127, resp. 8, times |d - d16|, d the exact scale;
    a d below f16's range is stored as 0)."""
    per = 34 if qt == QT.Q8_0 else 18
    d16 = np.abs(np.asarray(raw).view(np.uint8).reshape(-1, per)[:, :2].copy().view(np.float16).astype(np.float64))
    xb = x.reshape(-1, 32).astype(np.float64)
    db = deq.reshape(-1, 32).astype(np.float64)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    d = amax / 127 if qt == QT.Q8_0 else amax / 8
    qmax = 127 if qt == QT.Q8_0 else 8
    bound = (0.5 if qt == QT.Q8_0 else 1.0) * d16 + qmax * np.abs(d - d16) + 1e-12 * amax
    err = np.abs(xb - db).max(axis=1, keepdims=True)
    return bool(np.all(err <= bound * (1 + 1e-6))), float(np.max(err - bound))


def check_tensors(path, reader, want, ftype):
    qt_mat = TYPES[ftype]
    got = {t.name: t for t in reader.tensors}
    for name in sorted(set(want) - set(got)):
        fail(f"{path}: tensor {name} missing")
    for name in sorted(set(got) - set(want)):
        fail(f"{path}: unexpected tensor {name}")
    n_fallback = 0
    for name in sorted(set(want) & set(got)):
        x, is_mat = want[name]
        x = x.astype(np.float32)
        t = got[name]
        qt = qt_mat if is_mat else QT.F32
        if qt in (QT.Q8_0, QT.Q4_0) and x.shape[-1] % 32:
            qt, n_fallback = QT.F16, n_fallback + 1     # as llama.cpp's converter
        shape = [int(s) for s in t.shape]
        if shape != list(reversed(x.shape)) or t.tensor_type != qt:
            fail(f"{path}: {name}: {t.tensor_type.name} {shape}, expected {qt.name} {list(reversed(x.shape))}")
            continue
        raw = np.asarray(t.data)
        if qt == QT.F32:
            if not np.array_equal(raw.reshape(x.shape), x):
                fail(f"{path}: {name}: f32 values differ from ferry's")
            continue
        ref = gguf.quants.quantize(x, qt)
        if raw.tobytes() != np.asarray(ref).tobytes():
            nd = int(np.sum(raw.view(np.uint8).ravel() != np.asarray(ref).view(np.uint8).ravel()))
            fail(f"{path}: {name}: {qt.name} bytes differ from gguf.quants.quantize in {nd} bytes")
        deq = gguf.quants.dequantize(raw, qt).reshape(x.shape)
        if qt in (QT.F16, QT.BF16):
            tol = 2.0 ** -11 if qt == QT.F16 else 2.0 ** -8
            big = np.abs(x) >= 65520 if qt == QT.F16 else np.zeros(x.shape, bool)   # F16 overflows to inf
            if not np.all(np.isinf(deq[big]) & (np.sign(deq[big]) == np.sign(x[big]))):
                fail(f"{path}: {name}: F16 of a value beyond 65504 is not infinity")
            if not np.all(np.abs(deq - x)[~big] <= (np.abs(x) * tol + (2.0 ** -25 if qt == QT.F16 else 0))[~big]):
                fail(f"{path}: {name}: {qt.name} values beyond half an ulp of ferry's")
        else:
            ok, worst = block_error_ok(x, raw, deq, qt)
            if not ok:
                fail(f"{path}: {name}: {qt.name} dequantized values beyond the block bound by {worst:g}")
    return n_fallback


def check_bad_input(ferry, work, run_dir):
    target = os.path.join(work, "exists.gguf")
    with open(target, "w") as f:
        f.write("keep me")
    r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", target, "--type", "q8_0"])
    lines = r.stderr.strip().splitlines()
    if r.returncode == 0 or len(lines) != 1 or "exists" not in lines[0] or open(target).read() != "keep me":
        fail(f"existing target: rc {r.returncode}, stderr {r.stderr!r}")
    else:
        print(f"  ok: existing target refused: {lines[0]}")
    notrun = os.path.join(work, "notrun")
    os.makedirs(notrun, exist_ok=True)
    out = os.path.join(work, "notrun.gguf")
    r = run([ferry, "convert", "--model", notrun, "--to", "gguf", "--out", out])
    lines = r.stderr.strip().splitlines()
    if r.returncode == 0 or len(lines) != 1 or os.path.exists(out):
        fail(f"not a run: rc {r.returncode}, stderr {r.stderr!r}, output exists {os.path.exists(out)}")
    else:
        print(f"  ok: not a run refused: {lines[0]}")
    r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", out, "--type", "q5_k"])
    if r.returncode == 0 or os.path.exists(out) or "--type" not in r.stderr:
        fail(f"unknown --type: rc {r.returncode}, stderr {r.stderr!r}")
    else:
        print(f"  ok: unknown type refused: {r.stderr.strip()}")


def check_edges(ferry, work, run_dir):
    """The encoders at their edges: rows of chosen values put into the
    embedding of a copy of the run, exported as f16, bf16, q8_0 and q4_0."""
    edge = edge_run(run_dir, os.path.join(work, "edge"))
    cfg = json.load(open(os.path.join(edge, "config.json")))
    want = expected_tensors(cfg, ferry_weights(edge))
    for ftype in ("f16", "bf16", "q8_0", "q4_0"):
        path = os.path.join(work, f"edge-{ftype}.gguf")
        r = run([ferry, "convert", "--model", edge, "--to", "gguf", "--out", path, "--type", ftype])
        if r.returncode:
            fail(f"convert edge {ftype}: {r.stderr.strip()}")
            continue
        n = len(failures)
        check_tensors(path, gguf.GGUFReader(path), want, ftype)
        print(f"  edge values {ftype}: {'as gguf.quants' if len(failures) == n else 'DIFFER'}")


def check_plain(ferry, work):
    """q_proj without LoRA, one group (no group keys), no MTP (no nextn)."""
    run_dir = make_run(ferry, work, config=PLAIN, steps=20, name="plain")
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    tok = json.load(open(os.path.join(run_dir, "tokenizer.json")))
    want = expected_tensors(cfg, ferry_weights(run_dir))
    for ftype in ("f32", "q8_0"):
        path = os.path.join(work, f"plain-{ftype}.gguf")
        r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", path, "--type", ftype])
        if r.returncode:
            fail(f"convert plain {ftype}: {r.stderr.strip()}")
            continue
        reader = gguf.GGUFReader(path)
        check_keys(path, reader, expected_keys(cfg, tok, ftype))
        check_tensors(path, reader, want, ftype)
        print(f"  plain {ftype}: {len(reader.fields)} keys, {len(reader.tensors)} tensors")


def check_yarn(ferry, work):
    """A YaRN model: the rope.scaling keys; a YaRN llama.cpp computes
    differently (mscale != mscale_all_dim) is refused."""
    run_dir = make_run(ferry, work, config=YARN, steps=20, name="yarn")
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    tok = json.load(open(os.path.join(run_dir, "tokenizer.json")))
    path = os.path.join(work, "yarn-f32.gguf")
    r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", path, "--type", "f32"])
    if r.returncode:
        return fail(f"convert yarn: {r.stderr.strip()}")
    reader = gguf.GGUFReader(path)
    check_keys(path, reader, expected_keys(cfg, tok, "f32"))
    check_tensors(path, reader, expected_tensors(cfg, ferry_weights(run_dir)), "f32")
    print(f"  yarn f32: {len(reader.fields)} keys (rope.scaling.*), {len(reader.tensors)} tensors")
    bad = dict(YARN, rope_scaling=dict(YARN["rope_scaling"], mscale=1.0))
    run_dir = make_run(ferry, work, config=bad, steps=2, name="yarn_bad")
    out = os.path.join(work, "yarn-bad.gguf")
    r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", out])
    lines = r.stderr.strip().splitlines()
    if r.returncode == 0 or len(lines) != 1 or "mscale" not in lines[0] or os.path.exists(out):
        fail(f"yarn with mscale != mscale_all_dim: rc {r.returncode}, stderr {r.stderr!r}")
    else:
        print(f"  ok: {lines[0]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ferry", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    ferry = os.path.abspath(a.ferry)
    shutil.rmtree(a.work, ignore_errors=True)
    run_dir = make_run(ferry, a.work)
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    tok = json.load(open(os.path.join(run_dir, "tokenizer.json")))
    want_t = expected_tensors(cfg, ferry_weights(run_dir))
    for ftype in TYPES:
        path = os.path.join(a.work, f"tiny-{ftype}.gguf")
        r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", path, "--type", ftype])
        if r.returncode:
            fail(f"convert --type {ftype}: {r.stderr.strip()}")
            continue
        reader = gguf.GGUFReader(path)
        if reader.alignment != 32:
            fail(f"{path}: alignment {reader.alignment}")
        check_keys(path, reader, expected_keys(cfg, tok, ftype))
        nf = check_tensors(path, reader, want_t, ftype)
        print(f"  {ftype}: {len(reader.fields)} keys, {len(reader.tensors)} tensors, {os.path.getsize(path)} bytes"
              + (f", {nf} matrices F16 (rows not whole blocks)" if nf else ""))
    check_edges(ferry, a.work, run_dir)
    check_yarn(ferry, a.work)
    check_plain(ferry, a.work)
    left = [p for p in glob.glob(os.path.join(a.work, "*.tmp.*"))]
    if left:
        fail(f"temporary files left: {left}")
    check_bad_input(ferry, a.work, run_dir)
    if failures:
        print(f"FAILED: {len(failures)} problem(s)")
        return 1
    print("PASS: GGUF keys, tensors and values as llama.cpp's deepseek2 reads them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
