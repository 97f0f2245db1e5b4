"""ferry serve through the stock `openai` client (ctest serve_openai,
docs/SERVING.md): /v1/models, completions and chat, streamed and not, usage
(also stream_options.include_usage), stop strings, logprobs, max_tokens,
ignore_eos, seeded sampling, and an API key. Greedy and seeded answers must
equal `ferry generate` on the same model and prompt, byte for byte."""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

import openai  # noqa: E402

PROMPTS = ["the king", "a lamb waited by", "every servant wept.\n", "one stone"]


def eq(what, got, want):
    if got != want:
        C.fail("%s: got %r, want %r" % (what, got, want))


def check(cond, what):
    if not cond:
        C.fail(what)


def client(srv, key="none"):
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=60)


def stream_completion(cl, model, **kw):
    """(text, finish_reason, usage, chunks) of a streamed completion."""
    text, finish, usage, chunks = [], None, None, []
    for ch in cl.completions.create(model=model, stream=True, **kw):
        chunks.append(ch)
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text.append(c.text or "")
            finish = c.finish_reason or finish
    return "".join(text), finish, usage, chunks


def stream_chat(cl, model, **kw):
    text, finish, usage, chunks = [], None, None, []
    for ch in cl.chat.completions.create(model=model, stream=True, **kw):
        chunks.append(ch)
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(text), finish, usage, chunks


def check_models(cl, model):
    ms = cl.models.list().data
    eq("/v1/models ids", [m.id for m in ms], [model])
    eq("/v1/models object", ms[0].object, "model")


def check_greedy(a, cl, srv, run, model):
    """Completions, streamed and not, against ferry generate --temperature 0."""
    n = 24
    for p in PROMPTS:
        want = C.ferry_generate(a.ferry, run, p, n)
        ids = C.ferry_generate(a.ferry, run, p, n, ids=True)
        r = cl.completions.create(model=model, prompt=p, max_tokens=n, temperature=0)
        eq("greedy completion of %r vs ferry generate" % p, r.choices[0].text, want)
        eq("completion_tokens of %r" % p, r.usage.completion_tokens, len(ids))
        eq("finish_reason of %r" % p, r.choices[0].finish_reason, "length" if len(ids) == n else "stop")
        st, _, tj = C.request_json(srv, "POST", "/tokenize", {"content": p})
        eq("prompt_tokens of %r" % p, r.usage.prompt_tokens, len(tj["tokens"]))
        eq("total_tokens", r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        text, finish, usage, chunks = stream_completion(cl, model, prompt=p, max_tokens=n, temperature=0,
                                                        stream_options={"include_usage": True})
        eq("streamed greedy completion of %r" % p, text, want)
        eq("streamed finish_reason", finish, r.choices[0].finish_reason)
        check(usage is not None, "include_usage gave no usage chunk")
        eq("streamed usage", (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
           (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens))
        eq("usage chunk's choices", chunks[-1].choices, [])
        check(all(c.usage is None for c in chunks[:-1]), "usage before the last chunk")
        check(len(chunks) >= 3, "a 24-token stream came in %d chunks" % len(chunks))
        # without include_usage: no usage anywhere
        _, _, usage2, _ = stream_completion(cl, model, prompt=p, max_tokens=4, temperature=0)
        check(usage2 is None, "usage sent without stream_options.include_usage")
    # prompt as token ids answers as the text did
    st, _, tj = C.request_json(srv, "POST", "/tokenize", {"content": PROMPTS[0]})
    r = cl.completions.create(model=model, prompt=tj["tokens"], max_tokens=n, temperature=0)
    eq("prompt as token ids", r.choices[0].text, C.ferry_generate(a.ferry, run, PROMPTS[0], n))
    C.log("ok: greedy completions (streamed and not) equal ferry generate; usage adds up")


def check_chat(a, cl, srv, model):
    """Chat, streamed and not, equals a completion of the rendered prompt."""
    msgs = [{"role": "system", "content": "the shepherd"}, {"role": "user", "content": "the king walked"}]
    st, _, t = C.request_json(srv, "POST", "/apply-template", {"messages": msgs})
    eq("/apply-template status", st, 200)
    st, _, tj = C.request_json(srv, "POST", "/tokenize", {"content": t["prompt"], "parse_special": True})
    r = cl.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0)
    m = r.choices[0].message
    eq("chat role", m.role, "assistant")
    eq("chat object", r.object, "chat.completion")
    check(r.id.startswith("chatcmpl-"), "chat id %r" % r.id)
    want = cl.completions.create(model=model, prompt=tj["tokens"], max_tokens=20, temperature=0)
    eq("chat answer vs completion of the rendered prompt", m.content, want.choices[0].text)
    eq("chat usage", (r.usage.prompt_tokens, r.usage.completion_tokens),
       (len(tj["tokens"]), want.usage.completion_tokens))
    check(m.content, "empty chat answer")
    text, finish, usage, chunks = stream_chat(cl, model, messages=msgs, max_tokens=20, temperature=0,
                                              stream_options={"include_usage": True})
    eq("streamed chat", text, m.content)
    eq("streamed chat finish", finish, r.choices[0].finish_reason)
    eq("streamed chat first delta role", chunks[0].choices[0].delta.role, "assistant")
    eq("streamed chat object", chunks[0].object, "chat.completion.chunk")
    eq("streamed chat usage", usage.completion_tokens, r.usage.completion_tokens)
    # content as text parts
    parts = [{"role": "user", "content": [{"type": "text", "text": "the king"}, {"type": "text", "text": "walked"}]}]
    r2 = cl.chat.completions.create(model=model, messages=parts, max_tokens=8, temperature=0)
    r3 = cl.chat.completions.create(model=model, messages=[{"role": "user", "content": "the king\nwalked"}],
                                    max_tokens=8, temperature=0)
    eq("content parts joined by newline", r2.choices[0].message.content, r3.choices[0].message.content)
    C.log("ok: chat (streamed and not) equals a completion of its rendered prompt")


def check_stop(a, cl, run, model):
    p, n = PROMPTS[0], 40
    full = C.ferry_generate(a.ferry, run, p, n)
    words = [w for w in full.replace(",", " ").split() if len(w) > 3]
    check(len(words) >= 2, "greedy text too short for a stop test: %r" % full)
    w1 = words[1]
    want = full[:full.index(w1)]
    for stop in (w1, [w1], ["zzzz", w1, "qqqq"]):
        r = cl.completions.create(model=model, prompt=p, max_tokens=n, temperature=0, stop=stop)
        eq("stop=%r text" % (stop,), r.choices[0].text, want)
        eq("stop=%r finish_reason" % (stop,), r.choices[0].finish_reason, "stop")
        text, finish, _, _ = stream_completion(cl, model, prompt=p, max_tokens=n, temperature=0, stop=stop)
        eq("streamed stop=%r text" % (stop,), text, want)
        eq("streamed stop=%r finish" % (stop,), finish, "stop")
    eq("ferry generate --stop", C.ferry_generate(a.ferry, run, p, n, stop=[w1]), want)
    # two stops: the earlier one in the text wins
    w2 = words[0]
    r = cl.completions.create(model=model, prompt=p, max_tokens=n, temperature=0, stop=[w1, w2])
    eq("earliest of two stops", r.choices[0].text, full[:min(full.index(w1), full.index(w2))])
    # chat with a stop
    msgs = [{"role": "user", "content": "the king"}]
    full_c = cl.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0)
    ct = full_c.choices[0].message.content
    cw = [w for w in ct.replace(",", " ").split() if len(w) > 3]
    check(cw, "chat answer too short for a stop test: %r" % ct)
    r = cl.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0, stop=cw[0])
    eq("chat stop text", r.choices[0].message.content, ct[:ct.index(cw[0])])
    eq("chat stop finish", r.choices[0].finish_reason, "stop")
    C.log("ok: stop strings (string and list, streamed and not, chat) cut the text before the stop")


def check_logprob_list(what, chosen, tops, greedy):
    """chosen: the token's logprob; tops: [(token, logprob)] as sent."""
    check(chosen <= 0 and math.isfinite(chosen), "%s: logprob %r" % (what, chosen))
    lps = [lp for _, lp in tops]
    check(all(lp <= 0 for lp in lps), "%s: a top logprob > 0: %r" % (what, lps))
    check(lps == sorted(lps, reverse=True), "%s: top_logprobs not sorted: %r" % (what, lps))
    check(sum(math.exp(lp) for lp in lps) <= 1 + 1e-4, "%s: top probabilities sum over 1" % what)
    if greedy:
        check(abs(chosen - lps[0]) <= 1e-6, "%s: greedy token's logprob %r is not the top one %r" % (what, chosen, lps[0]))
    else:
        check(chosen <= lps[0] + 1e-6, "%s: chosen logprob %r above the top one %r" % (what, chosen, lps[0]))


def check_logprobs(a, cl, model):
    p, n = PROMPTS[1], 16
    r = cl.completions.create(model=model, prompt=p, max_tokens=n, temperature=0, logprobs=5)
    lp = r.choices[0].logprobs
    eq("completion logprobs lengths", (len(lp.tokens), len(lp.token_logprobs), len(lp.top_logprobs),
                                       len(lp.text_offset)), (n,) * 4)
    eq("tokens joined", "".join(lp.tokens), r.choices[0].text)
    eq("text_offset", lp.text_offset, [len("".join(lp.tokens[:i]).encode()) for i in range(n)])
    for i in range(n):
        tops = sorted(lp.top_logprobs[i].items(), key=lambda kv: -kv[1])
        check(len(tops) <= 5 and len(tops) >= 4, "top_logprobs[%d] has %d entries" % (i, len(tops)))
        check_logprob_list("completion token %d" % i, lp.token_logprobs[i], tops, True)
        check(lp.top_logprobs[i].get(lp.tokens[i]) == lp.token_logprobs[i],
              "greedy token %d (%r) not among its top_logprobs with its logprob" % (i, lp.tokens[i]))
    # logprobs=0: token logprobs, top entries null
    r0 = cl.completions.create(model=model, prompt=p, max_tokens=4, temperature=0, logprobs=0)
    eq("logprobs=0 top entries", r0.choices[0].logprobs.top_logprobs, [None] * 4)
    eq("logprobs=0 token logprobs", r0.choices[0].logprobs.token_logprobs, lp.token_logprobs[:4])
    # chat: logprobs + top_logprobs, greedy and sampled
    msgs = [{"role": "user", "content": "the lamb"}]
    for temp, seed in ((0, None), (1.0, 11)):
        kw = {"seed": seed} if seed is not None else {}
        r = cl.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=temp, logprobs=True,
                                       top_logprobs=20, **kw)
        content = r.choices[0].logprobs.content
        eq("chat logprobs count", len(content), r.usage.completion_tokens)
        eq("chat tokens joined", "".join(c.token for c in content), r.choices[0].message.content)
        for i, c in enumerate(content):
            eq("chat bytes of token %d" % i, bytes(c.bytes).decode(errors="replace"), c.token)
            eq("chat top_logprobs count", len(c.top_logprobs), 20)
            check_logprob_list("chat token %d (T=%g)" % (i, temp), c.logprob,
                               [(t.token, t.logprob) for t in c.top_logprobs], temp == 0)
            same = [t.logprob for t in c.top_logprobs if t.bytes == c.bytes]
            if temp == 0 or same:
                check(same and same[0] == c.logprob, "chat token %d: its logprob differs in top_logprobs" % i)
        # streamed logprobs are the same
        got = []
        for ch in cl.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=temp,
                                             logprobs=True, top_logprobs=20, stream=True, **kw):
            for c in ch.choices:
                if c.logprobs and c.logprobs.content:
                    got += [(x.token, x.logprob) for x in c.logprobs.content]
        eq("streamed chat logprobs", got, [(c.token, c.logprob) for c in content])
    C.log("ok: logprobs (completions and chat, streamed and not) are log-softmax-consistent")


def check_lengths_seeds(a, cl, run, model):
    p = PROMPTS[2]
    for mt in (1, 7):
        r = cl.completions.create(model=model, prompt=p, max_tokens=mt, temperature=0)
        eq("max_tokens=%d finish" % mt, r.choices[0].finish_reason, "length")
        eq("max_tokens=%d completion_tokens" % mt, r.usage.completion_tokens, mt)
    texts = set()
    for seed in (5, 6):
        r1 = cl.completions.create(model=model, prompt=p, max_tokens=30, temperature=0.9, top_p=0.95, seed=seed)
        r2 = cl.completions.create(model=model, prompt=p, max_tokens=30, temperature=0.9, top_p=0.95, seed=seed)
        eq("seed %d repeated" % seed, r2.choices[0].text, r1.choices[0].text)
        text, _, _, _ = stream_completion(cl, model, prompt=p, max_tokens=30, temperature=0.9, top_p=0.95, seed=seed)
        eq("seed %d streamed" % seed, text, r1.choices[0].text)
        want = C.ferry_generate(a.ferry, run, p, 30, temperature=0.9, seed=seed, extra=["--top-p", "0.95"])
        eq("seed %d vs ferry generate" % seed, r1.choices[0].text, want)
        texts.add(r1.choices[0].text)
    check(len(texts) == 2, "seeds 5 and 6 gave the same 30 tokens: %r" % texts)
    r = cl.completions.create(model=model, prompt=p, max_tokens=30, temperature=1, seed=4,
                               extra_body={"top_k": 3})
    eq("top_k vs ferry generate", r.choices[0].text,
       C.ferry_generate(a.ferry, run, p, 30, temperature=1, seed=4, extra=["--top-k", "3"]))
    C.log("ok: max_tokens ends with 'length'; seeded sampling repeats and equals ferry generate")


def check_ignore_eos(a, cl, run, model):
    """A seeded sample that ends at the end-of-sequence token; with
    ignore_eos the same tokens go on through it to max_tokens."""
    p, n = PROMPTS[0], 100
    for seed in range(60):
        kw = dict(model=model, prompt=p, max_tokens=n, temperature=2, seed=seed, logprobs=1)
        r = cl.completions.create(**kw)
        if r.choices[0].finish_reason != "stop":
            continue
        k = r.usage.completion_tokens
        check(k < n, "finish 'stop' with all %d tokens" % n)
        r2 = cl.completions.create(extra_body={"ignore_eos": True}, **kw)
        eq("ignore_eos finish_reason", r2.choices[0].finish_reason, "length")
        eq("ignore_eos completion_tokens", r2.usage.completion_tokens, n)
        lp1, lp2 = r.choices[0].logprobs, r2.choices[0].logprobs
        eq("ignore_eos token count", len(lp2.tokens), n)
        eq("ignore_eos: the tokens before the eos", lp2.tokens[:k], lp1.tokens)
        eq("ignore_eos: their logprobs", lp2.token_logprobs[:k], lp1.token_logprobs)
        check("eos" in lp2.tokens[k] or "end" in lp2.tokens[k],
              "ignore_eos: token %d is %r, not the end-of-sequence token" % (k, lp2.tokens[k]))
        eq("ignore_eos = ferry generate --ignore-eos", r2.choices[0].text,
           C.ferry_generate(a.ferry, run, p, n, temperature=2, seed=seed, extra=["--ignore-eos"]))
        # streamed, and in chat
        text, finish, usage, _ = stream_completion(cl, extra_body={"ignore_eos": True},
                                                   stream_options={"include_usage": True}, **kw)
        eq("streamed ignore_eos", (text, finish, usage.completion_tokens), (r2.choices[0].text, "length", n))
        rc = cl.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=9,
                                        temperature=0, extra_body={"ignore_eos": True})
        eq("chat ignore_eos", (rc.choices[0].finish_reason, rc.usage.completion_tokens), ("length", 9))
        C.log("ok: ignore_eos (seed %d: eos at token %d) runs to max_tokens" % (seed, k))
        return
    C.fail("no seed of 60 ended at the end-of-sequence token (cannot test ignore_eos)")


def check_api_key(a, run, model):
    key = "sk-test-0123456789"
    with C.Server(a.ferry, run, ["--api-key", key]) as srv:
        for bad in ("wrong", key + "x", key[:-1]):
            try:
                client(srv, bad).completions.create(model=model, prompt="the", max_tokens=2)
                C.fail("key %r accepted" % bad)
            except openai.AuthenticationError as e:
                eq("401 status", e.status_code, 401)
        r = client(srv, key).completions.create(model=model, prompt="the king", max_tokens=5, temperature=0)
        eq("right key", r.usage.completion_tokens, 5)
        eq("models with key", [m.id for m in client(srv, key).models.list().data], [model])
        check(srv.alive(), "server died")
        eq("exit code after SIGTERM", srv.stop(), 0)
    C.log("ok: --api-key: a wrong key is AuthenticationError (401), the right one works")


def main():
    a = C.args()
    run = C.tiny_model(a.ferry, a.work)
    model = os.path.basename(run)
    with C.Server(a.ferry, run, ["--slots", "4"]) as srv:
        cl = client(srv)
        check_models(cl, model)
        check_greedy(a, cl, srv, run, model)
        check_chat(a, cl, srv, model)
        check_stop(a, cl, run, model)
        check_logprobs(a, cl, model)
        check_lengths_seeds(a, cl, run, model)
        check_ignore_eos(a, cl, run, model)
        check(srv.alive(), "server died")
        eq("exit code after SIGTERM", srv.stop(), 0)
    check_api_key(a, run, model)
    print("PASS")


if __name__ == "__main__":
    main()
