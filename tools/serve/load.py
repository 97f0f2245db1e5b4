"""A load driver for OpenAI-style completion servers (`ferry serve`,
llama-server): STREAMS concurrent clients, each sending its share of
REQUESTS streamed POST /v1/completions one after another (a fixed prompt
set, max_tokens TOKENS, temperature 0, ignore_eos so that every stream
generates exactly TOKENS tokens), timing each token's SSE chunk as it
arrives. Prints one JSON line:

  {"streams", "tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms",
   "itl_p99_ms", "requests", "tokens", "wall_s"}

tok_s is all generated tokens over the wall time from the first request
sent to the last stream ended; ttft is request sent -> first token chunk;
itl the gaps between a request's consecutive token chunks. Every request
must end with [DONE] and report (usage, or failing that its chunk count)
exactly TOKENS tokens, or the driver fails (exit 1) saying which.
Standard library only, so any python3 runs it (bench/serve.sh).

  python3 tools/serve/load.py --url http://127.0.0.1:8080 --streams 16 --tokens 64
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "In the beginning",
    "And the LORD said unto Moses,",
    "Blessed are the meek: for they shall inherit",
    "The LORD is my shepherd; I shall not want. He maketh me to lie down",
    "And it came to pass in those days, that there went out a decree",
    "Then said Jesus unto them,",
    "For God so loved the world, that he gave",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
]


def pct(xs, p):
    """Nearest-rank percentile of xs (p in 0..100); 0 for none."""
    if not xs:
        return 0.0
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


class Failure(Exception):
    pass


def one_request(host, port, body, headers, timeout):
    """Sends one streamed completion; (ttft_s, [gaps_s], tokens)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        c.request("POST", "/v1/completions", body=body, headers=headers)
        r = c.getresponse()
        if r.status != 200:
            raise Failure("HTTP %d: %r" % (r.status, r.read()[:500]))
        stamps, usage, done, chunks = [], None, False, 0
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue   # blank separators, SSE comments
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            now = time.perf_counter()
            j = json.loads(data)
            if "error" in j:
                raise Failure("error in stream: %r" % j["error"])
            if j.get("usage"):
                usage = j["usage"].get("completion_tokens")
            for ch in j.get("choices") or []:
                # a token's chunk; the closing chunk carries finish_reason and no text
                if ch.get("text") or ch.get("finish_reason") is None:
                    stamps.append(now)
                    chunks += 1
        if not done:
            raise Failure("stream ended without data: [DONE]")
        if not stamps:
            raise Failure("no token chunks")
        tokens = usage if usage is not None else chunks
        return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:])], tokens
    finally:
        c.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--streams", type=int, default=1, help="concurrent clients")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens of every request (all generated)")
    p.add_argument("--requests", type=int, default=0, help="requests in all (default 2 x streams, at least 4); "
                   "rounded up to a multiple of streams so that every client sends as many")
    p.add_argument("--model", default=None, help="the request's model field (default none)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    p.add_argument("--no-warmup", action="store_true", help="skip the one unmeasured request sent first")
    a = p.parse_args()
    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port or 80
    per = -(-max(a.requests or max(2 * a.streams, 4), 1) // a.streams)
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = "Bearer " + a.api_key

    def body(i, n):
        b = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": n, "temperature": 0, "stream": True,
             "ignore_eos": True, "stream_options": {"include_usage": True}}
        if a.model:
            b["model"] = a.model
        return json.dumps(b)

    if not a.no_warmup:
        try:
            one_request(host, port, body(0, 4), headers, a.timeout)
        except (Failure, OSError, ValueError) as e:
            sys.exit("load.py: warm-up request to %s failed: %s" % (a.url, e))

    ttft, itl, tokens, errors = [], [], [], []
    lock = threading.Lock()
    start = threading.Barrier(a.streams + 1)

    def client(k):
        start.wait()
        for r in range(per):
            i = k * per + r
            try:
                t, gaps, n = one_request(host, port, body(i, a.tokens), headers, a.timeout)
            except (Failure, OSError, ValueError) as e:
                with lock:
                    errors.append("request %d: %s" % (i, e))
                return
            with lock:
                ttft.append(t)
                itl.extend(gaps)
                tokens.append(n)
                if n != a.tokens:
                    errors.append("request %d: %d tokens generated, %d asked (does the server honour ignore_eos?)"
                                  % (i, n, a.tokens))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(a.streams)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit("load.py: %d of %d requests failed against %s; first: %s"
                 % (len(errors), per * a.streams, a.url, errors[0]))
    total = sum(tokens)
    print(json.dumps({"streams": a.streams, "tok_s": round(total / wall, 1),
                      "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 2), "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 2),
                      "itl_p50_ms": round(pct(itl, 50) * 1e3, 2), "itl_p99_ms": round(pct(itl, 99) * 1e3, 2),
                      "requests": len(tokens), "tokens": total, "wall_s": round(wall, 3)}))


if __name__ == "__main__":
    main()
