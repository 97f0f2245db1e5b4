#!/usr/bin/env python3
"""Checks ferry's tokenizer against Hugging Face `tokenizers`.

  tok_hf_check.py TOKENIZER_JSON TEXT_FILE IDS_FILE [--special]
      Loads TOKENIZER_JSON with tokenizers.Tokenizer.from_file, encodes
      TEXT_FILE (UTF-8) and compares with the ids ferry produced (IDS_FILE:
      one decimal id per line; a .bin file is raw little-endian int32), then
      decodes the ids with HF and compares with the text. Without --special,
      special-token strings in the text are plain text (ferry's default); with
      it, HF's default matching of added tokens is used (ferry's
      FY_ENC_SPECIAL).

  tok_hf_check.py --drive TEST_TOKENIZER_BIN WORKDIR
      The ctest `tokenizer_hf_agreement`: runs the C side
      (test_tokenizer --train-and-encode WORKDIR: trains on a generated text,
      saves tokenizer.json, encodes) and checks
        1. ids of the generated text (Unicode, digits, punctuation, runs of
           spaces, newlines), and decoding;
        2. special-token strings parsed as HF does;
        3. HF's decode of the ids of arbitrary bytes == ferry's lossy decode
           == Python's bytes.decode(errors="replace");
        4. pre-tokenization and ids of random text drawn from many scripts,
           spaces, controls, marks, emoji;
        5. a tokenizer trained by HF itself (byte tokens at HF's ids, merges
           as pairs and as legacy "a b" strings) loaded and used by ferry.

Exit status: 0 agree, 1 disagree, 77 (with "SKIP: ...") when `tokenizers`
cannot be imported.
"""
import json
import os
import random
import struct
import subprocess
import sys
import unicodedata

try:
    from tokenizers import Tokenizer
except Exception as e:  # noqa: BLE001
    print(f"SKIP: Hugging Face tokenizers is not importable ({e})")
    sys.exit(77)


def read_ids(path):
    if path.endswith(".bin"):
        data = open(path, "rb").read()
        return list(struct.unpack(f"<{len(data) // 4}i", data))
    with open(path) as f:
        return [int(line) for line in f if line.strip()]


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def describe(tok, ids, i):
    lo = max(0, i - 5)
    return " ".join(f"{t}:{tok.id_to_token(t)!r}" for t in ids[lo:i + 6])


def check(tokenizer_json, text_file, ids_file, special=False, label=""):
    label = label or os.path.basename(text_file)
    tok = Tokenizer.from_file(tokenizer_json)
    raw = open(text_file, "rb").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        print(f"FAIL {label}: {text_file} is not valid UTF-8 ({e}); HF can only encode strings")
        return False
    if hasattr(tok, "encode_special_tokens"):
        tok.encode_special_tokens = not special
    elif not special and any(t.content in text for t in tok.get_added_tokens_decoder().values()):
        print(f"SKIP-PART {label}: this tokenizers version always parses special tokens")
        return True
    hf = tok.encode(text, add_special_tokens=False).ids
    ferry = read_ids(ids_file)
    ok = True
    if hf != ferry:
        i = first_diff(hf, ferry)
        print(f"FAIL {label}: ids differ at {i} (ferry {len(ferry)} ids, HF {len(hf)})")
        print(f"  ferry: {describe(tok, ferry, i)}")
        print(f"  HF:    {describe(tok, hf, i)}")
        ok = False
    dec = tok.decode(ferry, skip_special_tokens=False)
    if dec != text:
        i = first_diff(dec, text)
        print(f"FAIL {label}: HF decode of ferry's ids differs from the text at char {i}: "
              f"{dec[max(0, i - 20):i + 20]!r} vs {text[max(0, i - 20):i + 20]!r}")
        ok = False
    if ok:
        print(f"ok   {label}: {len(ferry)} ids agree with HF, decode round trips")
    return ok


# ---- driver -------------------------------------------------------------

def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


# Blocks assigned long ago (PCRE2 and Oniguruma may carry different Unicode
# versions; code points assigned after PCRE2's version classify differently).
OLD_RANGES = [
    (0x0000, 0x007F), (0x0080, 0x00FF), (0x0100, 0x024F), (0x0250, 0x02FF), (0x0300, 0x036F),
    (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0530, 0x058F), (0x0590, 0x05FF), (0x0600, 0x06FF),
    (0x0900, 0x097F), (0x0980, 0x09FF), (0x0E00, 0x0E7F), (0x10A0, 0x10FF), (0x1100, 0x11FF),
    (0x1680, 0x169F), (0x1800, 0x18AF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F),
    (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF),
    (0x2460, 0x24FF), (0x2500, 0x257F), (0x3000, 0x303F), (0x3040, 0x309F), (0x30A0, 0x30FF),
    (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0xFB00, 0xFB4F), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF),
    (0x1D400, 0x1D7FF), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x20000, 0x2A6D6),
]


def random_unicode_text(seed, n_chars):
    rng = random.Random(seed)
    pool = [c for lo, hi in OLD_RANGES for c in range(lo, hi + 1)
            if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    common = [" ", " ", " ", "\n", "a", "the", " of", "'s", "'", "1", "23", ".", ",", "\t", "  "]
    out = []
    while len(out) < n_chars:
        r = rng.random()
        if r < 0.6:
            out.append(chr(rng.choice(pool)))
        else:
            out.append(rng.choice(common))
    return "".join(out)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL: {' '.join(cmd)} exited {r.returncode}\n{r.stdout}{r.stderr}")
        return False
    return True


def check_pretok(binary, work, text_file, label):
    from tokenizers import pre_tokenizers
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    out = os.path.join(work, "pieces.txt")
    if not run([binary, "--pretok", text_file, out]):
        return False
    ferry = [bytes.fromhex(line.strip()) for line in open(out) if line.strip()]
    text = open(text_file, "rb").read().decode("utf-8")
    hf = [bytes(u2b[ch] for ch in p) for p, _ in pt.pre_tokenize_str(text)]
    if ferry != hf:
        i = first_diff(ferry, hf)
        print(f"FAIL {label}: pre-tokenization differs at piece {i}: ferry {ferry[i:i + 3]} "
              f"HF {hf[i:i + 3]}")
        return False
    print(f"ok   {label}: {len(hf)} pre-tokenizer pieces agree with HF")
    return True


def drive(binary, work):
    os.makedirs(work, exist_ok=True)
    if not run([binary, "--train-and-encode", work]):
        return 1
    J = lambda *p: os.path.join(work, *p)  # noqa: E731
    ok = True
    tj = J("tokenizer.json")

    # 1, 2: trained by ferry
    ok &= check_pretok(binary, work, J("text.txt"), "generated text (pieces)")
    ok &= check(tj, J("text.txt"), J("ids.txt"), label="generated text")
    ok &= check(tj, J("special.txt"), J("special_ids.txt"), special=True, label="special tokens")

    # 3: arbitrary bytes; HF can decode ferry's ids (lossily)
    tok = Tokenizer.from_file(tj)
    rids = read_ids(J("random_ids.txt"))
    want = open(J("random.bin"), "rb").read().decode("utf-8", errors="replace")
    hf_dec = tok.decode(rids, skip_special_tokens=False)
    ferry_dec = open(J("random_lossy.txt"), "rb").read().decode("utf-8")
    if hf_dec == want == ferry_dec:
        print(f"ok   random bytes: HF decode of {len(rids)} ids == ferry lossy decode == Python's")
    else:
        print(f"FAIL random bytes: HF decode {hf_dec == want}, ferry lossy decode {ferry_dec == want}")
        ok = False

    # 4: random text over many scripts
    with open(J("unicode.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(random_unicode_text(7, 60000))
    ok &= check_pretok(binary, work, J("unicode.txt"), "random Unicode (pieces)")
    if run([binary, "--encode", tj, J("unicode.txt"), J("unicode_ids.txt")]):
        ok &= check(tj, J("unicode.txt"), J("unicode_ids.txt"), label="random Unicode")
    else:
        ok = False

    # 5: a tokenizer trained by HF, used by ferry
    from tokenizers import decoders, models, pre_tokenizers, trainers
    ht = Tokenizer(models.BPE())
    ht.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ht.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=900, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    ht.train([J("text.txt")], tr)
    ht.save(J("hf_tokenizer.json"))
    d = json.load(open(J("hf_tokenizer.json"), encoding="utf-8"))
    merges = d["model"]["merges"]
    d["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in merges]
    with open(J("hf_legacy.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, ensure_ascii=False)
    for name in ("hf_tokenizer.json", "hf_legacy.json"):
        for text in ("text.txt", "unicode.txt"):
            out = J(name + "." + text + ".ids")
            if run([binary, "--encode", J(name), J(text), out]):
                ok &= check(J(name), J(text), out, label=f"HF-trained {name} on {text}")
            else:
                ok = False
    print("tokenizer_hf_agreement:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv):
    if len(argv) == 4 and argv[1] == "--drive":
        return drive(argv[2], argv[3])
    args = [a for a in argv[1:] if a != "--special"]
    if len(args) != 3:
        print(__doc__)
        return 2
    return 0 if check(*args, special="--special" in argv) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
