#!/usr/bin/env python3
"""ferry's tokenizer against Hugging Face `tokenizers` on tokenizer.json files
with the pre-tokenizers and normalizers DeepSeek-V3-family models use.

  tok_hf_pretok.py --test-tokenizer TEST_TOKENIZER --ferry FERRY --work DIR

Builds, with the `tokenizers` library itself, byte-level BPE tokenizers
trained on a generated multilingual text:
  dsv3      DeepSeek-V3's pre-tokenizer (Sequence of three regex Splits and
            ByteLevel without regex), no normalizer, its two special tokens,
            non-special added tokens, a TemplateProcessing post-processor;
  dsv3_nfc  the same with an NFC normalizer (and a Sequence[NFC] variant),
            an added token given decomposed (matched after normalization);
  digits    Digits(individual_digits) + ByteLevel with its regex;
  behave    Split with the other delimiter behaviours (MergedWithNext,
            MergedWithPrevious + invert, Contiguous, Removed), literal
            patterns, Digits runs, ByteLevel(add_prefix_space);
  ignore    dsv3 with model.ignore_merges and a vocabulary word no merge
            reaches;
  gpt2      ferry's own layout (ByteLevel with the GPT-2 regex).
For each, test_tokenizer --encode-cases loads the file with ferry, encodes
many strings (CJK, kana, hangul, accents composed and decomposed, emoji,
RTL scripts, digit runs of every length, whitespace runs, CR/LF, tabs,
added tokens inside text) with and without FY_ENC_SPECIAL, decodes, and
saves the tokenizer again. Checked: ids equal the library's, decoding
equals the library's decode and gives the (normalized) text back, the
saved file keeps normalizer / pre_tokenizer / post_processor / decoder /
added-token flags and encodes identically when the library loads it, and
fy_tokenizer_pre_name is "deepseek-v3" / "gpt-2" / null as it should be.
Also: `ferry tokenizer encode --text` on some strings, and a text over 1 MB
(which ferry encodes in parallel chunks for gpt2 and the DeepSeek-V3 chain).
Exit 0 on agreement, 1 on a difference, 77 when `tokenizers` is missing.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import unicodedata

try:
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
except Exception as e:  # noqa: BLE001
    print(f"SKIP: Hugging Face tokenizers is not importable ({e})")
    sys.exit(77)

# DeepSeek-V3's pre-tokenizer regexes as its tokenizer.json has them
# (llama.cpp: llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM).
DSV3_RE = [
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
BOS, EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
ADDED = ["<think>", "</think>", "<tool_call>"]
DECOMPOSED = "\u03b4\u03bf\u03ba\u03b9\u03bc\u03b7\u0301"  # "δοκιμή" with a combining acute

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3
    + list("0123456789") * 2
    + list("一二三四五六七八九十中文字符汉语日本語のはがをにへ東京カタカナヲン한국어안녕하세요")
    + ["é", "e\u0301", "ñ", "n\u0303", "Å", "A\u030a", "ö", "o\u0308", "ﬁ", "ǅ", "ß", "ç", "c\u0327"]
    + ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "∑", "€", "£", "©", "™"]
    + list("مرحبا بالعالم") + list("שלום עולם") + list("Привет мир") + list("Γειά σου")
    + [" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2009", "\u0085", "\x0b", "\x0c"]
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["。", "，", "、", "「", "」", "！", "？", "…", "—", "’", "“"]
    + ["٣", "٤", "३", "Ⅻ", "½", "²", "①"]
)
WORDS = ("the quick brown fox jumps over the lazy dog don't it's we're I'll "
         "naïve café résumé coöperate Zürich São Paulo 東京都 北京市 ひらがな カタカナ "
         "서울 نص عربي עברית данные δεδομένα 2024 3.14159 1,000,000 0x1F user@example.com "
         "def f(x): return x**2  # comment\n\tif (a && b) { c(); }\n").split(" ")


def corpus(rng, n):
    out = []
    for _ in range(n):
        if rng.random() < 0.6:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))))
        else:
            out.append("".join(rng.choice(POOL) for _ in range(rng.randint(5, 60))))
    return out


def cases(rng):
    s = [
        "", "a", " ", "  ", "\n", "\r\n", "\t\t", "Hello, world!", "Hello  world", "x \n y", "a\n\n\nb",
        "trailing spaces   ", "   leading", "tab\tsep\tvalues\n", "line1\r\nline2\rline3\n",
        "caf\u00e9 cafe\u0301 CAFE\u0301", "A\u030angstr\u00f6m \u212bngstr\u00f6m", "\ufb01 ligature",
        "中文测试：你好，世界！", "日本語のテキストとカタカナ", "한국어 텍스트", "مرحبا بالعالم 123",
        "שלום עולם", "emoji 😀👍🏽👨‍👩‍👧🇯🇵", "math ∑x² ≤ ½", "x=1;y=22;z=333;w=4444",
        "don't I'M we'LL", "__init__ self.x->y", "$100.00 and 50%", "((()))[[]]{{}}",
        f"{BOS}Hello{EOS}", f"a{BOS}b", f"<think>reason</think>answer", f"x <think> y",
        f"{DECOMPOSED} and \u03b4\u03bf\u03ba\u03b9\u03bc\u03ae", "<tool_call>{\"a\": 1}</tool_call>",
        "<｜begin▁of▁sentence", "<think", "</think>>", "\u00a0\u00a0nbsp", "\u3000全角スペース",
        "\u0085next line", "\x0bvt\x0cff", "a zyzzyva", " zyzzyva zyzzyva.", "zyzzyva",
    ]
    for k in range(1, 16):  # digit runs of every length, alone and in text
        d = "".join(str((i * 7 + k) % 10) for i in range(k))
        s += [d, f"a{d}b", f" {d} ", f"{d}.{d}", f"٣{d}३"]
    for k in range(1, 9):  # whitespace runs
        for w in (" ", "\t", "\n", "\r\n", "\u00a0"):
            s += [w * k, f"a{w * k}b", f"a{w * k}", f"{w * k}!"]
    specials = [BOS, EOS] + ADDED + [DECOMPOSED]
    for _ in range(500):
        t = "".join(rng.choice(POOL) for _ in range(rng.randint(1, 40)))
        if rng.random() < 0.25:
            i = rng.randint(0, len(t))
            t = t[:i] + rng.choice(specials) + t[i:]
        s.append(t)
    return s


def train(pre, normalizer, rng, text, vocab=1200):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             special_tokens=[BOS, EOS], show_progress=False)
    tok.train_from_iterator(text, tr)
    tok.add_tokens([AddedToken(a, special=False) for a in ADDED])
    tok.add_tokens([AddedToken(DECOMPOSED, special=False, normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def dsv3_pre():
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), "isolated", invert=False) for r in DSV3_RE]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def build_all(work, rng):
    text = corpus(rng, 3000)
    out = {}

    def save(name, tok, edit=None):
        path = os.path.join(work, f"{name}.json")
        tok.save(path)
        if edit:
            d = json.load(open(path, encoding="utf-8"))
            edit(d)
            json.dump(d, open(path, "w", encoding="utf-8"), ensure_ascii=False, indent=2)
        out[name] = path

    save("dsv3", train(dsv3_pre(), None, rng, text))

    def hub_edit(d):  # as DeepSeek-V3's hub file: empty normalizer Sequence, specials normalized
        d["normalizer"] = {"type": "Sequence", "normalizers": []}
        for a in d["added_tokens"]:
            a["normalized"] = True
    save("dsv3_hub", train(dsv3_pre(), None, rng, text), hub_edit)
    save("dsv3_nfc", train(dsv3_pre(), normalizers.NFC(), rng, text))
    save("dsv3_nfcseq", train(dsv3_pre(), normalizers.Sequence([normalizers.NFC()]), rng, text))
    save("digits", train(pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]), None, rng, text))
    save("behave", train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("[,;:]"), "merged_with_next"),
        pre_tokenizers.Split(Regex("\\p{L}+"), "merged_with_previous", invert=True),
        pre_tokenizers.Split(" ", "contiguous"),
        pre_tokenizers.Split("|", "removed"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)]), normalizers.NFC(), rng, text))

    def ignore_edit(d):
        m = d["model"]
        last = m["merges"].pop()
        last = last if isinstance(last, str) else " ".join(last)
        merged = last.replace(" ", "")
        tid = m["vocab"].pop(merged)
        assert not any(merged in (x if isinstance(x, list) else x.split(" ")) for x in m["merges"])
        m["vocab"]["Ġzyzzyva"] = tid
        m["ignore_merges"] = True
    save("ignore", train(dsv3_pre(), None, rng, text), ignore_edit)

    def gpt2_edit(d):  # ferry's own layout: a lone ByteLevel with its regex
        d["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True}
        d["post_processor"] = None
    save("gpt2", train(pre_tokenizers.ByteLevel(add_prefix_space=False), None, rng, text), gpt2_edit)
    return out


WANT_NAME = {"dsv3": "deepseek-v3", "dsv3_hub": "deepseek-v3", "ignore": "deepseek-v3", "gpt2": "gpt-2"}


def contains_added(s, tok):
    norm = tok.normalizer.normalize_str(s) if tok.normalizer else s
    contents = [a.content for a in tok.get_added_tokens_decoder().values()]
    return any(c in s or c in norm or unicodedata.normalize("NFC", c) in norm for c in contents)


def check_one(name, path, strings, test_tok, work, ferry):
    errs = []
    hf = Tokenizer.from_file(path)
    cases_f = os.path.join(work, f"{name}.cases.json")
    out_f = os.path.join(work, f"{name}.out.json")
    saved = os.path.join(work, f"{name}.saved.json")
    json.dump(strings, open(cases_f, "w", encoding="utf-8"), ensure_ascii=False)
    r = subprocess.run([test_tok, "--encode-cases", path, cases_f, out_f, saved],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return [f"{name}: test_tokenizer --encode-cases failed: {r.stderr.strip()}"]
    got = json.load(open(out_f, encoding="utf-8"))
    if got["pre_name"] != WANT_NAME.get(name):
        errs.append(f"{name}: pre_name {got['pre_name']!r}, want {WANT_NAME.get(name)!r}")
    hf2 = Tokenizer.from_file(saved)
    orig, back = json.load(open(path, encoding="utf-8")), json.load(open(saved, encoding="utf-8"))
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if orig.get(key) != back.get(key):
            errs.append(f"{name}: saved {key} differs: {back.get(key)} vs {orig.get(key)}")
    flags = lambda d: {a["id"]: (a["content"], a["special"], a["normalized"]) for a in d["added_tokens"]}  # noqa: E731
    if flags(orig) != flags(back):
        errs.append(f"{name}: saved added_tokens differ")
    n_plain = 0
    for i, s in enumerate(strings):
        want = hf.encode(s, add_special_tokens=False).ids
        if got["special"][i] != want:
            errs.append(f"{name}: FY_ENC_SPECIAL ids of {s!r}: ferry {got['special'][i]} hf {want}")
        if hf2.encode(s, add_special_tokens=False).ids != want:
            errs.append(f"{name}: the file ferry saved encodes {s!r} differently in tokenizers")
        dec = bytes.fromhex(got["decoded"][i]).decode("utf-8", errors="replace")
        if dec != hf.decode(want, skip_special_tokens=False):
            errs.append(f"{name}: decode of {s!r}: ferry {dec!r} hf {hf.decode(want, skip_special_tokens=False)!r}")
        if not contains_added(s, hf):
            n_plain += 1
            if got["plain"][i] != want:
                errs.append(f"{name}: plain ids of {s!r}: ferry {got['plain'][i]} hf {want}")
            norm = hf.normalizer.normalize_str(s) if hf.normalizer else s
            if name != "behave" and dec != norm:
                errs.append(f"{name}: decode(encode({s!r})) = {dec!r}")
    if ferry:  # the command line gives the same ids
        for s in [x for x in strings if x and not contains_added(x, hf)][:25]:
            r = subprocess.run([ferry, "tokenizer", "encode", "-t", path, "--text", s], capture_output=True)
            ids = [int(x) for x in r.stdout.split()]
            if r.returncode != 0 or ids != hf.encode(s, add_special_tokens=False).ids:
                errs.append(f"{name}: ferry tokenizer encode --text {s!r}: {ids} {r.stderr[-200:]!r}")
    print(f"{name}: {len(strings)} strings ({n_plain} without added tokens), "
          f"{sum(len(x) for x in got['special'])} ids, pre_name {got['pre_name']}: "
          f"{'OK' if not errs else f'{len(errs)} differences'}")
    return errs


def check_big(files, rng, test_tok, work):
    """A text over 1 MB: ferry encodes it in parallel chunks (ferry's own and
    DeepSeek-V3's pre-tokenizers) or serially; the ids must still be HF's."""
    text = "\n".join(corpus(rng, 4000))
    while len(text.encode()) < (1 << 20) + 100000:
        text += "\n" + text
    path = os.path.join(work, "big.txt")
    open(path, "w", encoding="utf-8", newline="").write(text)
    errs = []
    for name in ("gpt2", "dsv3", "dsv3_nfc", "digits"):
        ids_f = os.path.join(work, f"{name}.big.ids")
        r = subprocess.run([test_tok, "--encode", files[name], path, ids_f], capture_output=True, text=True)
        got = [int(x) for x in open(ids_f).read().split()] if r.returncode == 0 else None
        want = Tokenizer.from_file(files[name]).encode(text, add_special_tokens=False).ids
        ok = got == want
        print(f"{name}: {len(text.encode())} bytes -> {len(want)} ids: {'OK' if ok else 'DIFFERENT'}")
        if not ok:
            i = next((k for k, (x, y) in enumerate(zip(got or [], want)) if x != y), None)
            errs.append(f"{name}: big text ids differ (first at {i}; {r.stderr.strip()})")
    return errs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test-tokenizer", required=True)
    ap.add_argument("--ferry")
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = random.Random(20261205)
    files = build_all(a.work, rng)
    strings = cases(rng)
    errs = []
    for name, path in files.items():
        errs += check_one(name, path, strings, a.test_tokenizer, a.work, a.ferry)
    errs += check_big(files, rng, a.test_tokenizer, a.work)
    for e in errs[:40]:
        print("DIFF", e)
    if errs:
        print(f"FAIL: {len(errs)} differences")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
