"""ferry serve under 32 concurrent clients (ctest serve_concurrency,
docs/SERVING.md): each request's answer (text, finish reason, usage,
logprobs) is the one it gets alone; /metrics counts add up afterwards and
its gauges return to 0; SIGTERM during in-flight streams ends every stream
with [DONE] and the process exits 0 within the grace period."""
import http.client
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

WORDS = ("the king walked near the river, and every shepherd waited before the stone. a lamb sang by the "
         "city, and one servant wept under the king. that stone rested beyond the river, and the lamb").split()
N_CLIENTS = 32


def spec(i):
    """Request i: completions or chat, greedy or seeded, streamed or not,
    prompts of 1 to ~40 words, max_tokens 5 to 60, some stops and logprobs."""
    chat = i % 4 == 3
    text = " ".join(WORDS[(i * 5) % 17:(i * 5) % 17 + 1 + (i * 11) % 40])
    body = {"max_tokens": 5 + (i * 13) % 56, "temperature": 0}
    if i % 2:
        body.update(temperature=0.7 + 0.1 * (i % 5), seed=1000 + i, top_p=0.9 if i % 3 else 1.0)
        if i % 5 == 1:
            body["top_k"] = 5
    if i % 3:
        body["stream"] = True
        if i % 2 == 0:
            body["stream_options"] = {"include_usage": True}
    if i % 5 == 0:
        body["stop"] = [", and", "zz"] if i % 10 else "."
    if i % 7 == 0:
        body.update({"logprobs": True, "top_logprobs": 3} if chat else {"logprobs": 3})
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = text
        path = "/v1/completions"
    return path, body


def answer(srv, path, body):
    """A comparable summary of one request's answer: text, finish reason,
    usage and logprobs (all of it must be the same alone and in a crowd)."""
    chat = "chat" in path
    if body.get("stream"):
        st, chunks, done = C.sse_events(srv, path, body, timeout=90)
        if st != 200 or not done:
            C.fail("%s %r: status %d, [DONE] %s: %r" % (path, body, st, done, chunks[:2]))
        usage = [c["usage"] for c in chunks if c.get("usage")]
        lps = []
        for c in chunks:
            for ch in c.get("choices", []):
                if ch.get("logprobs"):
                    lps.append(ch["logprobs"])
        want_usage = body.get("stream_options", {}).get("include_usage")
        if bool(usage) != bool(want_usage):
            C.fail("%s: usage chunk %s with include_usage %s" % (path, usage, want_usage))
        return {"text": C.stream_text(chunks, chat), "finish": C.stream_finish(chunks),
                "usage": usage[-1] if usage else None, "logprobs": json.dumps(lps, sort_keys=True)}
    st, _, j = C.request_json(srv, "POST", path, body, timeout=90)
    if st != 200:
        C.fail("%s %r: %d %r" % (path, body, st, j))
    ch = j["choices"][0]
    lp = ch.get("logprobs")
    if lp and not chat:   # streamed completions send one token per chunk; compare the lists
        lp = [{k: lp[k][i:i + 1] for k in ("tokens", "token_logprobs", "top_logprobs")} for i in
              range(len(lp["tokens"]))]
    elif lp:
        lp = [{"content": [c]} for c in lp["content"]]
    return {"text": ch["message"]["content"] if chat else ch["text"], "finish": ch["finish_reason"],
            "usage": j["usage"], "logprobs": json.dumps(lp or [], sort_keys=True)}


def same(a, b):
    """Solo and crowd answers agree (a streamed answer without
    include_usage has no usage to compare; completion text_offsets are per
    chunk there, so they are left out of the logprobs above)."""
    keys = ["text", "finish", "logprobs"] + (["usage"] if a["usage"] and b["usage"] else [])
    return [k for k in keys if a[k] != b[k]]


def crowd(srv, specs):
    """All requests at once from N threads (a barrier starts them together)."""
    out = [None] * len(specs)
    errs = []
    bar = threading.Barrier(len(specs))

    def client(i):
        try:
            bar.wait(30)
            out[i] = answer(srv, *specs[i])
        except BaseException as e:   # noqa: BLE001 (SystemExit from C.fail too)
            errs.append("client %d: %r" % (i, e))

    ths = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(specs))]
    for t in ths:
        t.start()
    for t in ths:
        t.join(120)
    if any(t.is_alive() for t in ths):
        C.fail("clients still running after 120 s")
    if errs:
        C.fail("; ".join(errs[:5]))
    return out


def delta(m1, m0, k):
    return m1.get(k, 0) - m0.get(k, 0)


def check_metrics(srv, m0, specs, solo, n_rounds):
    """After n_rounds of every spec: the counters moved by the sums of the answers' usage."""
    m1 = C.metrics(srv)
    for k, v in m1.items():
        if v < 0:
            C.fail("/metrics %s is %g" % (k, v))
    n = len(specs) * n_rounds
    # every non-streamed or include_usage answer tells its usage; the others: take the solo run's
    usage = [s["usage"] for s in solo]
    if any(u is None for u in usage):
        C.fail("solo runs lack usage")
    prompt = sum(u["prompt_tokens"] for u in usage) * n_rounds
    gen = sum(u["completion_tokens"] for u in usage) * n_rounds
    # an end-of-sequence token ends 'stop' without a stop string: sampled, not counted as a token
    n_eos = sum(1 for s, (_, b) in zip(solo, specs) if s["finish"] == "stop" and not b.get("stop")) * n_rounds
    want = {"ferry_requests_total": n, 'ferry_requests_finished_total{outcome="done"}': n,
            'ferry_requests_finished_total{outcome="cancelled"}': 0,
            'ferry_requests_finished_total{outcome="failed"}': 0,
            "ferry_prompt_tokens_total": prompt, "ferry_generated_tokens_total": gen,
            "ferry_time_to_first_token_seconds_count": n}
    for k, v in want.items():
        if delta(m1, m0, k) != v:
            C.fail("/metrics %s moved by %g, the answers say %g" % (k, delta(m1, m0, k), v))
    itl = delta(m1, m0, "ferry_inter_token_latency_seconds_count")
    if itl != gen + n_eos - n:
        C.fail("inter-token latency count moved by %g; %d tokens (+%d eos) in %d requests make %d" %
               (itl, gen, n_eos, n, gen + n_eos - n))
    for h in ("ferry_time_to_first_token_seconds", "ferry_inter_token_latency_seconds"):
        bks = sorted((float(k.split('le="')[1].rstrip('"}')), v) for k, v in m1.items()
                     if k.startswith(h + "_bucket") and "+Inf" not in k)
        inf = m1[h + '_bucket{le="+Inf"}']
        if [v for _, v in bks] != sorted(v for _, v in bks) or (bks and bks[-1][1] > inf):
            C.fail("%s buckets are not cumulative: %r +Inf %g" % (h, bks, inf))
        if inf != m1[h + "_count"] or m1[h + "_sum"] <= 0:
            C.fail("%s: +Inf bucket %g, _count %g, _sum %g" % (h, inf, m1[h + "_count"], m1[h + "_sum"]))
    steps = delta(m1, m0, "ferry_batch_steps_total")
    C.log("metrics: %d requests, %d prompt + %d generated tokens in %d steps" % (n, prompt, gen, steps))
    return m1


def gauges_zero(srv):
    m = C.metrics(srv)
    return all(m[k] == 0 for k in ("ferry_queue_depth", "ferry_busy_slots", "ferry_kv_cache_tokens_used"))


def check_crowd(a, run):
    specs = [spec(i) for i in range(N_CLIENTS)]
    with C.Server(a.ferry, run, ["--slots", "8"]) as srv:
        m0 = C.metrics(srv)
        t = time.time()
        solo = [answer(srv, p, b) for p, b in specs]
        C.log("solo runs: %.2f s" % (time.time() - t))
        finishes = {s["finish"] for s in solo}
        if finishes != {"stop", "length"}:
            C.fail("the specs should end both by stop and by length: %s" % finishes)
        extra = 0
        for i, s in enumerate(solo):
            p, b = specs[i]
            if b.get("stream"):
                # the same request not streamed: the same text, and the usage a stream may not send
                ns = answer(srv, p, dict(b, stream=False, stream_options=None))
                extra += 1
                if (ns["text"], ns["finish"]) != (s["text"], s["finish"]) or (s["usage"] and s["usage"] != ns["usage"]):
                    C.fail("request %d streamed %r, not streamed %r" % (i, s, ns))
                s["usage"] = ns["usage"]
        m_solo = C.metrics(srv)
        if delta(m_solo, m0, "ferry_requests_total") != N_CLIENTS + extra:
            C.fail("requests_total moved by %g for %d requests" % (delta(m_solo, m0, "ferry_requests_total"),
                                                                  N_CLIENTS + extra))
        for rnd in range(2):
            t = time.time()
            got = crowd(srv, specs)
            C.log("32 concurrent clients, round %d: %.2f s" % (rnd + 1, time.time() - t))
            for i, (s, g) in enumerate(zip(solo, got)):
                diff = same(s, g)
                if diff:
                    C.fail("request %d %r: %s differ in the crowd: solo %r, crowd %r" %
                           (i, specs[i], diff, {k: s[k] for k in diff}, {k: g[k] for k in diff}))
        C.wait_for(lambda: gauges_zero(srv), 5, "queue depth, busy slots and KV in use back to 0")
        m1 = check_metrics(srv, m_solo, specs, solo, 2)
        gen = delta(m1, m_solo, "ferry_generated_tokens_total")
        if delta(m1, m_solo, "ferry_batch_steps_total") >= gen:
            C.fail("no batching: %g steps for %g tokens" % (delta(m1, m_solo, "ferry_batch_steps_total"), gen))
        if not srv.alive():
            C.fail("server died")
        rc = srv.stop(timeout=20)
        if rc != 0:
            C.fail("exit code %r after SIGTERM: %s" % (rc, srv.stderr_text()[-2000:]))
    C.log("ok: 32 concurrent clients (x2) get their solo answers; /metrics adds up; gauges back to 0")


class Stream(threading.Thread):
    """A streamed completion read incrementally: .first is set at the first
    token chunk; .chunks, .done, .error at the end."""

    def __init__(self, srv, body):
        super().__init__(daemon=True)
        self.srv, self.body = srv, body
        self.first = threading.Event()
        self.chunks, self.done, self.error, self.status = [], False, None, None

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=60)
            c.request("POST", "/v1/completions", body=json.dumps(self.body),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            self.status = r.status
            buf = []
            while True:
                line = r.readline()   # de-chunked
                if not line:
                    break
                buf.append(line)
                if line.startswith(b"data: {"):
                    self.first.set()
            self.chunks, self.done = C.parse_sse(b"".join(buf))
            c.close()
        except BaseException as e:   # noqa: BLE001
            self.error = repr(e)
        self.first.set()


def check_sigterm(a, run, grace, n_streams, slots, max_tokens, full):
    """n_streams greedy streams (ignore_eos, max_tokens) on slots slots;
    SIGTERM once the running ones have sent a token. full: the solo text
    of such a stream (every stream's text must be a prefix of it, or all of
    it). Returns how many streams were cut."""
    body = {"prompt": "the king", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with C.Server(a.ferry, run, ["--slots", str(slots), "--grace", str(grace)]) as srv:
        ss = [Stream(srv, body) for _ in range(n_streams)]
        for s in ss:
            s.start()
        # every request submitted (a connection still in the listen backlog would be refused: the
        # server stops accepting), and the running ones have sent a token
        C.wait_for(lambda: C.metrics(srv)["ferry_requests_total"] >= n_streams, 30, "all streams submitted")
        C.wait_for(lambda: sum(s.first.is_set() for s in ss) >= min(slots, n_streams), 30, "the first tokens")
        running = sum(not s.done for s in ss)
        t = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            rc = srv.proc.wait(grace + 15)
        except Exception:   # noqa: BLE001
            C.fail("ferry serve still running %g s after SIGTERM (grace %g)" % (grace + 15, grace))
        took = time.time() - t
        for s in ss:
            s.join(30)
        if rc != 0:
            C.fail("exit code %d after SIGTERM: %s" % (rc, srv.stderr_text()[-2000:]))
        cut = 0
        for i, s in enumerate(ss):
            if s.error or s.status != 200 or not s.done:
                C.fail("stream %d: status %s, [DONE] %s, error %s, %d chunks, the last %r; server: %s" %
                       (i, s.status, s.done, s.error, len(s.chunks), s.chunks[-1:], srv.stderr_text()[-1500:]))
            text, fin = C.stream_text(s.chunks), C.stream_finish(s.chunks)
            usage = [c["usage"] for c in s.chunks if c.get("usage")]
            if fin != "length" or not usage:
                C.fail("stream %d: finish %r, usage %r" % (i, fin, usage))
            if not full.startswith(text):
                C.fail("stream %d: its text is not a prefix of the solo text" % i)
            if usage[0]["completion_tokens"] < max_tokens:
                cut += 1
            elif text != full:
                C.fail("stream %d: all %d tokens but not the solo text" % (i, max_tokens))
        C.log("SIGTERM (grace %g s) with %d of %d streams running: exit 0 after %.2f s, %d cut" %
              (grace, running, n_streams, took, cut))
        return cut, took


def main():
    a = C.args()
    run = C.tiny_model(a.ferry, a.work)
    check_crowd(a, run)
    # long streams need a longer context than the micro model's 256
    long_run = C.tiny_model(a.ferry, a.work, ctx=4096)
    body = {"prompt": "the king", "max_tokens": 3000, "temperature": 0, "ignore_eos": True}
    with C.Server(a.ferry, long_run) as srv:
        st, _, j = C.request_json(srv, "POST", "/v1/completions", body)
        full = j["choices"][0]["text"]
        if j["usage"]["completion_tokens"] != 3000 or not full:
            C.fail("solo ignore_eos stream: %r" % j["usage"])
    # grace long enough: every stream completes, and exit does not wait for the whole grace
    cut, took = check_sigterm(a, long_run, 60, 6, 4, 3000, full)
    if cut:
        C.fail("%d streams cut within a 60 s grace" % cut)
    if took > 30:
        C.fail("exit took %.1f s: the server waited for the grace period with nothing running" % took)
    # grace 0.2 s: running and queued streams are cut, still end with [DONE]
    cut, _ = check_sigterm(a, long_run, 0.2, 6, 4, 3000, full)
    if cut == 0:
        C.fail("no stream was cut by SIGTERM with a 0.2 s grace (6 streams of 3000 tokens on 4 slots)")
    print("PASS")


if __name__ == "__main__":
    main()
