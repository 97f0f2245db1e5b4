"""Shared pieces of the Hugging Face interop checks (hf_out_check.py,
hf_in_check.py): arguments, running ferry and its probe, transformers'
load warnings, logits and greedy comparisons."""
import argparse
import logging
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--probe", required=True)
    p.add_argument("--ferry", required=True)
    p.add_argument("--work", required=True)
    a = p.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    return a


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def run(cmd, cwd=None, ok=True, binary=False):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=not binary, env=dict(os.environ, FERRY_LOG="warn"))
    if ok and r.returncode != 0:
        fail("%s failed (%d): %s%s" % (" ".join(cmd), r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    return r


def fixture(ferry, work):
    """Corpus, tokenizer (tok.json), data shards and micro.json, as the CLI tests make them."""
    run(["bash", "-c", 'ferry="$1"; . "$2"', "fixture", ferry, os.path.join(ROOT, "tests/cli/micro_fixture.sh")], cwd=work)


class LoadLog(logging.Handler):
    """Every warning transformers logs or raises while loading."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.msgs = []

    def emit(self, record):
        self.msgs.append(record.getMessage())


def load_hf(path, dtype):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    transformers.logging.set_verbosity_warning()
    h = LoadLog()
    lg = transformers.logging.get_logger("transformers")
    lg.addHandler(h)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        # transformers 5 says dtype=, 4 says torch_dtype=
        kw = {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
        tok = AutoTokenizer.from_pretrained(path)
    lg.removeHandler(h)
    model.eval()
    msgs = h.msgs + [str(x.message) for x in w]
    return model, tok, msgs


def probe(a, model_dir, ids, work, name, greedy=0):
    """ferry's logits [B, T, V] for the id rows and, with greedy, its greedy
    continuation of row 0 by the decode path."""
    ids_path = os.path.join(work, name + ".ids")
    with open(ids_path, "w") as f:
        for row in ids:
            f.write(" ".join(str(int(x)) for x in row) + "\n")
    out = os.path.join(work, name + ".logits")
    cmd = [a.probe, model_dir, ids_path, out]
    if greedy:
        cmd += [str(greedy), os.path.join(work, name + ".greedy")]
    run(cmd)
    lg = np.fromfile(out, dtype=np.float32)
    B, T = len(ids), len(ids[0])
    lg = lg.reshape(B, T, -1)
    g = None
    if greedy:
        g = [int(x) for x in open(os.path.join(work, name + ".greedy")).read().split()]
    return lg, g


def hf_logits(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def hf_greedy(model, prompt, n):
    """n greedy ids by full forwards (no cache, no stopping)."""
    import torch
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            lg = model(torch.tensor([seq], dtype=torch.long)).logits[0, -1].float()
            seq.append(int(torch.argmax(lg)))
    return seq[len(prompt):]


def _byte_decoder():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(u): b for b, u in zip(bs, cs)}


def token_bytes(tok, ids):
    """The raw bytes of byte-level BPE ids (GPT-2's byte-to-unicode undone),
    which is what `ferry generate` prints, valid UTF-8 or not."""
    dec = _byte_decoder()
    out = b""
    for t in tok.convert_ids_to_tokens(ids):
        out += bytes(dec[ch] for ch in t) if all(ch in dec for ch in t) else t.encode()
    return out


def generate_matches(a, tok, model_dir, prompt_ids, greedy_ids, cwd=None):
    """`ferry generate --temperature 0` prints the prompt and the greedy
    continuation's bytes up to <|eos|> (invalid UTF-8 replaced); returns
    None or what differs."""
    prompt = tok.decode(prompt_ids)
    r = run([a.ferry, "generate", "--model", model_dir, "--prompt", prompt, "-n", str(len(greedy_ids)),
             "--temperature", "0"], cwd=cwd, binary=True)
    eos = tok.convert_tokens_to_ids("<|eos|>")
    gen = greedy_ids[:greedy_ids.index(eos)] if eos in greedy_ids else greedy_ids
    special = set(tok.all_special_ids)   # ferry generate leaves control tokens out of its text
    raw = prompt.encode() + token_bytes(tok, [t for t in gen if t not in special])
    # ferry generate writes UTF-8: each invalid sequence as U+FFFD, as
    # Python's "replace" does (docs/RELIABILITY.md, hostile input)
    want = raw.decode("utf-8", "replace").encode() + b"\n"
    return None if r.stdout == want else "ferry generate printed %r, transformers' greedy bytes are %r" % (r.stdout, want)


def rel_err(a, b):
    """max over positions of max|a - b| / max|b| (one position's logits)."""
    d = np.abs(a - b).max(axis=-1)
    s = np.abs(b).max(axis=-1)
    return float((d / s).max())


def files_identical(d1, d2):
    n1, n2 = sorted(os.listdir(d1)), sorted(os.listdir(d2))
    if n1 != n2:
        return "files differ: %s vs %s" % (n1, n2)
    for n in n1:
        if open(os.path.join(d1, n), "rb").read() != open(os.path.join(d2, n), "rb").read():
            return "%s differs" % n
    return None


def no_temp_left(parent):
    left = [n for n in os.listdir(parent) if ".tmp" in n]
    if left:
        fail("temporary files left in %s: %s" % (parent, left))
