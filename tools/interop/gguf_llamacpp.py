#!/usr/bin/env python3
"""ferry's GGUF export run by llama.cpp itself (docs/INTEROP.md, "Out: GGUF
for llama.cpp").

Trains the tiny model of gguf_fixture.py, exports it as f32, f16, bf16,
q8_0 and q4_0, and for a few prompts compares the greedy token ids of
`ferry generate --temperature 0 --print-ids` with those of llama_ids
(tools/llamacpp/llama_ids.c, compiled here against the libllama that
tools/llamacpp/check.sh built in CACHE_DIR): the prompt's ids (llama.cpp's gpt2 tokenizer on
ferry's vocabulary and merges) and N new tokens, llama.cpp's KV cache f32,
flash attention off.

Asserted: every file loads and generates; the prompt ids are equal for
every type; f32 and f16 give the same N tokens as ferry for every prompt
(f16 rounds the weights, so a near tie could in principle flip a token; the
tiny model's margins are wide enough, and a flip is reported with its
position). bf16, q8_0 and q4_0 may differ: their weights differ from
ferry's by the format's rounding (and llama.cpp's quantized matmuls round
activations to 8 bits), so a near tie may flip. For them the agreement
(tokens equal before the first difference) is reported, and the first
difference must be a near tie: llama.cpp's top-2 logit gap there below
NEAR_TIE times the median gap of the run (a layout error gives confident
wrong tokens, not near ties). The corpus picks nouns and verbs uniformly,
so after "the" several tokens are near-tied by construction.

For q4_0 also `ferry generate --weights q4_0`, whose Q4_0 weights are the
GGUF's bits (backend.c fy_q4_quantize writes both), against llama.cpp on
the q4_0 file: agreement reported, a difference again a near tie.

Also: the tiny model with chosen edge values in its embedding
(gguf_fixture.edge_rows), exported f32 and f16/bf16/q8_0/q4_0; every
tensor of the latter must equal, byte for byte, what ggml itself
(ggml_quantize_chunk in the libggml-base just built, through ctypes) makes
of the f32 file's same tensor.

And a LoRA run fine-tuned from the tiny model (`--lora-targets all`): its
f32 GGUF is the merged model, and llama.cpp's greedy ids on it equal
`ferry generate --model LORA_RUN` (which merges the adapters at load).

And the adapter itself: a LoRA run on the targets llama.cpp's deepseek2
graph adapts (o_proj, gate/up/down_proj, experts), written by `ferry convert
--to gguf-lora` and loaded by llama.cpp (llama_adapter_lora_init) over the
tiny model's f32 GGUF: greedy ids equal to ferry's for the run on every
prompt, and different from the base's on at least one (the adapter acts);
the run with attention targets is refused by --to gguf-lora.

Skips (exit 77) with a line when CACHE_DIR holds no such build.

Usage: gguf_llamacpp.py --llamacpp CACHE_DIR [--n 64] --ferry PATH --work DIR
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_fixture import PLAIN, YARN, edge_run, make_run, run  # noqa: E402

PROMPTS = ["the king", "a shepherd spoke by the river", "every servant waited near the city, and the lamb"]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
EXACT = {"f32", "f16"}
SAME_WEIGHTS = {"q4_0"}  # `ferry generate --weights T` holds this GGUF's weight bits
NEAR_TIE = 0.15


def parse_ids(text, who):
    lines = {l.split(":", 1)[0]: [float(x) for x in l.split(":", 1)[1].split()]
             for l in text.splitlines() if l.startswith(("prompt:", "ids:", "gaps:"))}
    if "prompt" not in lines or "ids" not in lines:
        raise RuntimeError(f"{who}: no 'prompt:'/'ids:' lines in {text!r}")
    return [int(x) for x in lines["prompt"]], [int(x) for x in lines["ids"]], lines.get("gaps", [])


def agree(a, b):
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


GGML_IDS = {"f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}


def check_ggml_bytes(cache, ferry, work, run_dir, problems):
    """ferry's encodings against ggml's own quantizer, tensor by tensor."""
    import ctypes

    import numpy as np
    from gguf import GGUFReader
    lib = ctypes.CDLL(os.path.join(cache, "build", "bin", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    edge = edge_run(run_dir, os.path.join(work, "edge"))
    paths = {}
    for t in ["f32"] + list(GGML_IDS):
        paths[t] = os.path.join(work, f"edge-{t}.gguf")
        r = run([ferry, "convert", "--model", edge, "--to", "gguf", "--out", paths[t], "--type", t])
        if r.returncode:
            return problems.append(f"edge: convert --type {t}: {r.stderr.strip()}")
    src = {x.name: np.ascontiguousarray(np.asarray(x.data, dtype=np.float32)) for x in GGUFReader(paths["f32"]).tensors}
    for t, gid in GGML_IDS.items():
        n_same = n_checked = 0
        for x in GGUFReader(paths[t]).tensors:
            if x.tensor_type.name == "F32":
                continue
            f = src[x.name]
            n_per_row = int(x.shape[0])
            rows = f.size // n_per_row
            ours = np.asarray(x.data).view(np.uint8).ravel()
            ref = np.zeros(ours.size, np.uint8)
            got = lib.ggml_quantize_chunk(int(x.tensor_type), f.ctypes.data, ref.ctypes.data, 0, rows, n_per_row, None)
            n_checked += 1
            if got == ours.size and np.array_equal(ours, ref):
                n_same += 1
            else:
                problems.append(f"edge {t}: {x.name} ({x.tensor_type.name}): {int(np.sum(ours != ref))} bytes differ "
                                f"from ggml_quantize_chunk")
        print(f"  ggml_quantize_chunk: {t}: {n_same}/{n_checked} tensors byte-identical (edge values in token_embd)")


def build_llama_ids(cache, work):
    """Compiles tools/llamacpp/llama_ids.c against the build check.sh left
    in cache (build/bin/libllama.so, build/source.txt naming the unpacked
    sdist); None when there is none."""
    lib = os.path.join(cache, "build", "bin")
    try:
        name = open(os.path.join(cache, "build", "source.txt")).read().strip()
    except OSError:
        return None
    src = os.path.join(cache, name, "vendor", "llama.cpp")
    if not os.path.exists(os.path.join(lib, "libllama.so")) or not os.path.exists(os.path.join(src, "include", "llama.h")):
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(work, "llama_ids")
    r = run([os.environ.get("CC", "cc"), "-O2", "-std=c11", "-o", out,
             os.path.join(here, "..", "llamacpp", "llama_ids.c"), "-I" + os.path.join(src, "include"),
             "-I" + os.path.join(src, "ggml", "include"), "-L" + lib, "-lllama", "-lggml", "-lggml-base",
             "-Wl,-rpath," + lib])
    if r.returncode:
        sys.exit(f"FAIL: compiling llama_ids against {src}: {r.stderr.strip()[-500:]}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llamacpp", required=True, help="cache dir of tools/llamacpp/check.sh")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--ferry", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    ferry = os.path.abspath(a.ferry)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work, exist_ok=True)
    llama_ids = build_llama_ids(a.llamacpp, a.work)
    if not llama_ids:
        print(f"SKIP: no llama.cpp build at {a.llamacpp} (run tools/llamacpp/check.sh once to build it, "
              "or configure with -DFERRY_LLAMACPP_DIR=DIR)")
        return 77
    runs = [("tiny", make_run(ferry, a.work, steps=300), TYPES),
            ("yarn", make_run(ferry, a.work, config=YARN, steps=300, name="yarn"), ["f32", "f16"]),
            ("plain", make_run(ferry, a.work, config=PLAIN, steps=300, name="plain"), ["f32"])]
    # A LoRA run on the first: its GGUF is the merged model (docs/FINETUNE.md),
    # and `ferry generate --model LORA_RUN` merges at load the same way.
    lora = os.path.join(a.work, "lora")
    r = run([ferry, "train", "--init-from", runs[0][1], "--data", "data", "--steps", "60", "--batch", "8", "--seq", "64",
             "--lr", "3e-2", "--eval-every", "0", "--ckpt-every", "0", "--lora-rank", "4", "--lora-targets", "all",
             "--out", lora], cwd=a.work)
    if r.returncode:
        sys.exit(f"FAIL: the LoRA run: {r.stderr.strip()[-500:]}")
    runs.append(("lora", lora, ["f32"]))
    problems = []
    check_ggml_bytes(a.llamacpp, ferry, a.work, runs[0][1], problems)
    for model, run_dir, types in runs:
        print(f"== {model}: {os.path.basename(run_dir)}")
        compare(ferry, llama_ids, a, model, run_dir, types, problems)
    print("== LoRA adapter GGUF (--to gguf-lora) over tiny-f32.gguf")
    check_adapter(ferry, llama_ids, a, runs[0][1], lora, problems)
    if problems:
        for p in problems:
            print("FAIL:", p)
        return 1
    print("PASS: llama.cpp loads every export and agrees with ferry (f32 and f16 exactly; YaRN; plain q_proj, no MTP; "
          "a LoRA run merged; a LoRA adapter GGUF)")
    return 0


def greedy(ferry, llama_ids, a, run_dir, gguf, adapter, p):
    """(ferry's new ids for run_dir, llama.cpp's for gguf [+ adapter]) or a problem string."""
    rf = run([ferry, "generate", "--model", run_dir, "--prompt", p, "--temperature", "0", "-n", str(a.n), "--print-ids"])
    rl = run([llama_ids, gguf, p, str(a.n), "f32"] + ([adapter] if adapter else []))
    if rf.returncode or rl.returncode:
        return f"ferry rc {rf.returncode} {rf.stderr.strip()[-200:]}; llama.cpp rc {rl.returncode} {rl.stderr.strip()[-300:]}"
    return parse_ids(rf.stdout, "ferry")[1], parse_ids(rl.stdout, "llama_ids")[1]


def check_adapter(ferry, llama_ids, a, base_run, all_run, problems):
    base = os.path.join(a.work, "tiny-f32.gguf")
    refused = run([ferry, "convert", "--model", all_run, "--to", "gguf-lora", "--out", os.path.join(a.work, "all.gguf")])
    if refused.returncode == 0 or "ignored" not in refused.stderr:
        problems.append(f"--to gguf-lora of a run with q/kv adapters: rc {refused.returncode} {refused.stderr.strip()}")
    run_dir, adapter = os.path.join(a.work, "lora-ffn"), os.path.join(a.work, "lora-ffn.gguf")
    r = run([ferry, "train", "--init-from", base_run, "--data", "data", "--steps", "60", "--batch", "8", "--seq", "64",
             "--lr", "3e-2", "--eval-every", "0", "--ckpt-every", "0", "--lora-rank", "4", "--lora-alpha", "16",
             "--lora-targets", "o_proj,gate_proj,up_proj,down_proj,experts", "--out", run_dir], cwd=a.work)
    if r.returncode:
        problems.append(f"the o_proj/MLP/experts LoRA run: {r.stderr.strip()[-500:]}")
        return
    r = run([ferry, "convert", "--model", run_dir, "--to", "gguf-lora", "--out", adapter])
    if r.returncode:
        problems.append(f"--to gguf-lora: {r.stderr.strip()}")
        return
    moved = 0
    for p in PROMPTS:
        got, plain = greedy(ferry, llama_ids, a, run_dir, base, adapter, p), greedy(ferry, llama_ids, a, base_run, base, None, p)
        if isinstance(got, str) or isinstance(plain, str):
            problems.append(f"adapter {p!r}: {got if isinstance(got, str) else plain}")
            continue
        (fi, li), (_, bi) = got, plain
        moved += li != bi
        print(f"  prompt {p!r}: llama.cpp + adapter {agree(fi, li)}/{len(fi)} tokens equal to ferry's LoRA run; "
              f"{'differs from' if li != bi else 'same as'} the base's")
        if fi != li:
            problems.append(f"adapter {p!r}: llama.cpp with the adapter differs from ferry's LoRA run at token {agree(fi, li)}")
    if not moved:
        problems.append("the adapter changes no prompt's greedy ids in llama.cpp: the check would not see it ignored")


def first_difference(ours, li, gaps):
    """(tokens equal before the first difference, a text naming it, whether
    it is a near tie in llama.cpp: its top-2 gap below NEAR_TIE x the
    run's median; True when there is none)."""
    k = agree(ours, li)
    if ours == li:
        return k, "", True
    if k >= len(gaps):
        return k, "", False
    median = sorted(gaps)[len(gaps) // 2]
    return k, (f" (first difference at {k}: ferry {ours[k:k+1]}, llama.cpp {li[k:k+1]}; llama.cpp's top-2 logit "
               f"gap there {gaps[k]:.3f}, median gap {median:.3f})"), gaps[k] < NEAR_TIE * median


def compare(ferry, llama_ids, a, model, run_dir, types, problems):
    for t in types:
        path = os.path.join(a.work, f"{model}-{t}.gguf")
        r = run([ferry, "convert", "--model", run_dir, "--to", "gguf", "--out", path, "--type", t])
        if r.returncode:
            problems.append(f"{model}: convert --type {t}: {r.stderr.strip()}")
            continue
        agreed, total = 0, 0
        same_w = {"agreed": 0, "identical": 0, "prompts": 0}
        for p in PROMPTS:
            rf = run([ferry, "generate", "--model", run_dir, "--prompt", p, "--temperature", "0", "-n", str(a.n),
                      "--print-ids"])
            t0 = time.time()
            rl = run([llama_ids, path, p, str(a.n), "f32"])
            dt = time.time() - t0
            if rf.returncode or rl.returncode:
                problems.append(f"{model} {t} {p!r}: ferry rc {rf.returncode} {rf.stderr.strip()[-200:]}; "
                                f"llama.cpp rc {rl.returncode} {rl.stderr.strip()[-300:]}")
                continue
            fp, fi, _ = parse_ids(rf.stdout, "ferry")
            lp, li, gaps = parse_ids(rl.stdout, "llama_ids")
            k, tie, near = first_difference(fi, li, gaps)
            agreed, total = agreed + k, total + len(fi)
            print(f"  {t:5s} prompt {p!r}: prompt ids {'equal' if fp == lp else 'DIFFER'}, "
                  f"{k}/{len(fi)} tokens agree{tie} [llama.cpp {dt:.2f} s]")
            if fp != lp:
                problems.append(f"{model} {t} {p!r}: prompt ids differ: ferry {fp}, llama.cpp {lp}")
            if t in EXACT and fi != li:
                problems.append(f"{model} {t} {p!r}: greedy ids differ at token {k}")
            elif not near:
                problems.append(f"{model} {t} {p!r}: the first difference (token {k}) is no near tie in llama.cpp")
            if t in SAME_WEIGHTS:
                same_weights(ferry, a, run_dir, t, p, li, gaps, same_w, problems)
        print(f"  {t}: {agreed}/{total} tokens agree before the first difference, "
              f"{os.path.getsize(path)} bytes")
        if same_w["prompts"]:
            print(f"  {t}: ferry --weights {t}: {same_w['agreed']}/{a.n * same_w['prompts']} tokens agree with "
                  f"llama.cpp before the first difference, {same_w['identical']}/{same_w['prompts']} prompts identical")


def same_weights(ferry, a, run_dir, t, p, li, gaps, tally, problems):
    """`ferry generate --weights t`, whose weights are this GGUF's bits,
    against llama.cpp's ids li: only the activations' rounding differs
    (llama.cpp's Q8_0 input blocks carry a half scale, ferry's a float;
    its other ops run in their own order), so a difference must be a near
    tie."""
    rq = run([ferry, "generate", "--model", run_dir, "--prompt", p, "--temperature", "0", "-n", str(a.n),
              "--print-ids", "--weights", t])
    if rq.returncode:
        return problems.append(f"--weights {t} {p!r}: ferry rc {rq.returncode} {rq.stderr.strip()[-200:]}")
    qi = parse_ids(rq.stdout, "ferry --weights")[1]
    k, tie, near = first_difference(qi, li, gaps)
    tally["agreed"] += k
    tally["identical"] += qi == li
    tally["prompts"] += 1
    print(f"  {t:5s} prompt {p!r}: ferry --weights {t}: {k}/{len(qi)} tokens agree{tie}")
    if not near:
        problems.append(f"--weights {t} {p!r}: the first difference from llama.cpp (token {k}) is no near tie")


if __name__ == "__main__":
    sys.exit(main())
