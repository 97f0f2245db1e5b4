"""ferry serve with several unmerged LoRA adapters (ctest serve_lora,
docs/SERVING.md "LoRA adapters"): two adapters trained briefly on a micro
base, served as `--lora one=DIR1 --lora DIR2` beside the base; /v1/models
lists the base and both (parent, root), concurrent requests for the base and
each adapter (greedy and seeded, streamed and not) each equal `ferry
generate` of that model alone (--lora DIR for an adapter), the answer names
the model asked for, an unknown name is 404; the same with --weights q8_0
(the quantized base shared by the adapters)."""
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

import openai  # noqa: E402

PROMPTS = ["the king", "a lamb waited by", "every servant wept.\n", "one stone"]
N = 20


def check(cond, what):
    if not cond:
        C.fail(what)


def train_adapter(a, base, out, seed, extra):
    data = os.path.join(os.path.dirname(base), "data")
    C.run([a.ferry, "train", "--init-from", base, "-d", data, "-o", out, "--steps", "30", "--batch", "4", "--seq",
           "32", "--lr", "3e-2", "--seed", str(seed), "--eval-every", "0", "--ckpt-every", "0", "--log-every",
           "1000", "--lora-rank", "4"] + extra)
    return out


def solo(a, base, lora, prompt, weights, seed=None):
    """`ferry generate` alone: the text the server must give."""
    extra = ["--weights", weights] + (["--lora", lora] if lora else [])
    if seed is None:
        return C.ferry_generate(a.ferry, base, prompt, N, extra=extra)
    return C.ferry_generate(a.ferry, base, prompt, N, temperature=0.8, seed=seed, extra=extra)


def ask(srv, model, prompt, seed, stream):
    cl = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=120)
    kw = dict(model=model, prompt=prompt, max_tokens=N)
    kw.update(temperature=0) if seed is None else kw.update(temperature=0.8, seed=seed)
    if stream:
        text, names = [], set()
        for ch in cl.completions.create(stream=True, **kw):
            names.add(ch.model)
            text.extend(c.text or "" for c in ch.choices)
        return "".join(text), names
    r = cl.completions.create(**kw)
    return r.choices[0].text, {r.model}


def serve_and_compare(a, base, models, weights):
    """models: {name: adapter dir or None (the base)}; all requests at once."""
    jobs = []
    for i, p in enumerate(PROMPTS):
        for name in models:
            jobs.append((name, p, None, i % 2 == 1))
    for name in models:
        jobs.append((name, PROMPTS[0], 7, False))
    want = {j: solo(a, base, models[j[0]], j[1], weights, j[2]) for j in jobs}
    for p in PROMPTS:   # the adapters must change something, else equality proves little
        texts = [want[(name, p, None, PROMPTS.index(p) % 2 == 1)] for name in models]
        if len(set(texts)) == len(texts):
            break
    else:
        C.fail("no prompt where base and adapters all answer differently: %r" % want)
    flags = ["--slots", "8", "--weights", weights]
    for name, d in models.items():
        if d:
            flags += ["--lora", d if os.path.basename(d) == name else "%s=%s" % (name, d)]
    got, errors = {}, []

    def worker(j):
        try:
            got[j] = ask(srv, *j)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append("%r: %r" % (j, e))

    with C.Server(a.ferry, base, flags) as srv:
        cl = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=60)
        ms = cl.models.list().data
        base_id = os.path.basename(base)
        check([m.id for m in ms] == list(models), "/v1/models ids %r, want %r" % ([m.id for m in ms], list(models)))
        for m in ms:
            extra = m.model_extra or {}
            if m.id == base_id:
                check(extra.get("parent", 1) is None, "the base's parent: %r" % extra)
            else:
                check(extra.get("parent") == base_id and extra.get("root") == models[m.id],
                      "adapter %s: parent/root %r" % (m.id, extra))
        threads = [threading.Thread(target=worker, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(not errors, "requests failed: %s" % errors)
        for j in jobs:
            text, names = got[j]
            check(text == want[j], "%s (%s) %r seed %s: served %r, ferry generate alone %r" %
                  (j[0], weights, j[1], j[2], text, want[j]))
            check(names == {j[0]}, "%s: the answer names model %r" % (j[0], names))
        try:
            cl.completions.create(model="nope", prompt="the king", max_tokens=2)
            C.fail("an unknown model name was served")
        except openai.NotFoundError as e:
            check("nope" in str(e) and "one" in str(e), "404 message: %s" % e)
        check(srv.alive(), "server died")
        check(srv.stop() == 0, "exit code after SIGTERM")
    C.log("ok (%s): %d concurrent requests over %d models equal ferry generate alone" % (weights, len(jobs),
                                                                                        len(models)))


def refusals(a, base, l1):
    """ferry serve exits 1 with the reason, before serving anything."""
    other = os.path.join(os.path.dirname(base), "narrow")
    with open(os.path.join(os.path.dirname(base), "micro.json")) as f:
        cfg = f.read().replace('"kv_lora_rank": 16', '"kv_lora_rank": 8')
    with open(other + ".json", "w") as f:
        f.write(cfg)
    data = os.path.join(os.path.dirname(base), "data")
    C.run([a.ferry, "train", "-c", other + ".json", "-d", data, "-o", other, "--steps", "1", "--batch", "2", "--seq",
           "16", "--eval-every", "0", "--ckpt-every", "0"])
    cases = [(["--lora", "one=" + l1, "--lora", "one=" + l1], "given twice"),
             (["--lora", "%s=%s" % (os.path.basename(base), l1)], "is the base model's"),
             (["--lora", l1], "expected [24, 4]")]
    for extra, want in cases:
        model = other if want.startswith("expected") else base
        r = subprocess.run([a.ferry, "serve", "--model", model, "--port", "0"] + extra, capture_output=True, text=True,
                           timeout=60)
        check(r.returncode == 1 and want in r.stderr, "serve %s: rc %d, stderr %r (want %r)" %
              (" ".join(extra), r.returncode, r.stderr[-500:], want))
    C.log("ok: a name given twice, the base's name and an adapter of other shapes are refused")


def main():
    a = C.args()
    base = C.tiny_model(a.ferry, a.work)
    l1 = train_adapter(a, base, os.path.join(a.work, "lora1"), 5, [])
    l2 = train_adapter(a, base, os.path.join(a.work, "adapter2"), 9,
                       ["--lora-alpha", "8", "--lora-targets", "q_a_proj,kv_b_proj,o_proj,experts"])
    models = {os.path.basename(base): None, "one": l1, "adapter2": l2}
    serve_and_compare(a, base, models, "f32")
    serve_and_compare(a, base, models, "q8_0")
    refusals(a, base, l1)
    print("PASS")


if __name__ == "__main__":
    main()
