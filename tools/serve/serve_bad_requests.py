"""Bad requests against ferry serve (ctest serve_bad_requests,
docs/SERVING.md "Errors"): each gets the documented status and OpenAI's
error shape {"error": {"message", "type", "code"}}; a client that hangs up
mid-stream frees its slot; a slowloris connection is dropped after
--timeout while others are served; idle connections up to the limit do not
wedge it; and afterwards the server still answers correctly, alive."""
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

KEY = "sk-bad-requests-key"
AUTH = {"Authorization": "Bearer " + KEY}


def expect(srv, method, path, body, status, type_=None, code=None, headers=AUTH, what=""):
    st, h, b = C.request(srv, method, path, body, headers=headers, timeout=30)
    label = "%s %s %s" % (method, path, what or (repr(body)[:80] if body is not None else ""))
    if st != status:
        C.fail("%s: status %d, want %d: %r" % (label, st, status, b[:300]))
    try:
        j = json.loads(b)
    except ValueError:
        C.fail("%s: %d body is not JSON: %r" % (label, st, b[:300]))
    e = j.get("error") if isinstance(j, dict) else None
    if not isinstance(e, dict) or not all(k in e for k in ("message", "type", "code")) or not e["message"]:
        C.fail("%s: not OpenAI's error shape: %r" % (label, j))
    if type_ and e["type"] != type_:
        C.fail("%s: type %r, want %r" % (label, e["type"], type_))
    if code is not None and e["code"] != code:
        C.fail("%s: code %r, want %r" % (label, e["code"], code))
    return h, e


def good(srv, n=6):
    st, _, j = C.request_json(srv, "POST", "/v1/completions",
                              {"prompt": "the king", "max_tokens": n, "temperature": 0}, headers=AUTH)
    if st != 200 or j["usage"]["completion_tokens"] != n:
        C.fail("a good request after the bad ones: %d %r" % (st, j))
    return j["choices"][0]["text"]


def check_statuses(srv, model):
    inv = "invalid_request_error"
    cp, ch = "/v1/completions", "/v1/chat/completions"
    # malformed JSON, not an object, wrong types and ranges
    for body in ("{", '{"prompt": "x",}', "[1, 2]", '"text"', "", "\xff\xfe", '{"prompt": "the", "max_tokens": 3'):
        expect(srv, "POST", cp, body, 400, inv, what="malformed %r" % body)
    expect(srv, "POST", ch, "{not json", 400, inv)
    bad = [{"prompt": 5}, {"prompt": {"a": 1}}, {"prompt": [1.5]}, {"prompt": [-1]}, {"prompt": [10 ** 9]},
           {"prompt": "x", "max_tokens": "5"}, {"prompt": "x", "max_tokens": 2.5}, {"prompt": "x", "max_tokens": 0},
           {"prompt": "x", "max_tokens": -3}, {"prompt": "x", "max_tokens": 10 ** 12},
           {"prompt": "x", "max_tokens": 1e300}, {"prompt": "x", "temperature": "hot"},
           {"prompt": "x", "temperature": -1}, {"prompt": "x", "temperature": 3}, {"prompt": "x", "top_p": 0},
           {"prompt": "x", "top_p": 1.5}, {"prompt": "x", "top_k": -1}, {"prompt": "x", "seed": "s"},
           {"prompt": "x", "stop": 5}, {"prompt": "x", "stop": ["a", 1]}, {"prompt": "x", "stop": ["a"] * 5},
           {"prompt": "x", "stream": "yes"}, {"prompt": "x", "stream_options": 1}, {"prompt": "x", "n": 2},
           {"prompt": "x", "n": 0}, {"prompt": "x", "echo": True}, {"prompt": "x", "logprobs": 21},
           {"prompt": "x", "logprobs": -1}, {"prompt": "x", "ignore_eos": "yes"}, {"prompt": "x", "model": 7},
           {}, {"prompt": None}]
    for body in bad:
        expect(srv, "POST", cp, body, 400, inv)
    chat_bad = [{}, {"messages": []}, {"messages": "hi"}, {"messages": [{"role": "user"}]},
                {"messages": [{"content": "x"}]}, {"messages": [{"role": "wizard", "content": "x"}]},
                {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                {"messages": [{"role": "user", "content": 5}]},
                {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3},
                {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
                {"messages": [{"role": "user", "content": "x"}], "n": 2}]
    for body in chat_bad:
        expect(srv, "POST", ch, body, 400, inv)
    # over the context (256): prompt + max_tokens, a prompt alone, max_tokens alone
    long_prompt = " ".join(["the king walked near the river"] * 60)
    _, e = expect(srv, "POST", cp, {"prompt": long_prompt, "max_tokens": 4}, 400, "exceed_context_size_error",
                  "context_length_exceeded")
    if "256" not in e["message"]:
        C.fail("the context error does not give the context size: %r" % e["message"])
    expect(srv, "POST", cp, {"prompt": "the king", "max_tokens": 255}, 400, "exceed_context_size_error",
           "context_length_exceeded")
    expect(srv, "POST", ch, {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}, 400,
           "exceed_context_size_error", "context_length_exceeded")
    expect(srv, "POST", cp, {"prompt": "x", "max_tokens": 300}, 400, inv)   # max_tokens alone over the context
    # 413: declared and chunked
    big = b'{"prompt": "' + b"a" * (10 << 20) + b'"}'
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big))
    st, b = raw_exchange(srv, head, [big[i:i + 65536] for i in range(0, len(big), 65536)])
    if st != 413 or json.loads(b)["error"]["code"] != "request_too_large":
        C.fail("10 MB body: %s %r" % (st, b[:300]))
    check_chunked_413(srv)
    # routes, methods, models
    expect(srv, "GET", "/v1/nothing", None, 404, inv, "not_found")
    expect(srv, "POST", "/v2/completions", {"prompt": "x"}, 404, inv, "not_found")
    expect(srv, "GET", cp, None, 405, inv, "method_not_allowed")
    expect(srv, "DELETE", "/v1/models", None, 405, inv, "method_not_allowed")
    expect(srv, "POST", cp, {"prompt": "x", "model": "gpt-4"}, 404, inv, "model_not_found")
    expect(srv, "POST", ch, {"messages": [{"role": "user", "content": "x"}], "model": model + "x"}, 404, inv,
           "model_not_found")
    # keys
    for hdrs in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer " + KEY + "x"},
                 {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        h, _ = expect(srv, "POST", cp, {"prompt": "x"}, 401, "authentication_error", "invalid_api_key",
                      headers=hdrs, what="auth %r" % hdrs)
        if "bearer" not in h.get("www-authenticate", "").lower():
            C.fail("401 without WWW-Authenticate: Bearer")
    expect(srv, "GET", "/v1/models", None, 401, "authentication_error", headers={})
    expect(srv, "GET", "/metrics", None, 401, "authentication_error", headers={})
    st, _, _ = C.request(srv, "GET", "/health")
    if st != 200:
        C.fail("/health needs no key, got %d" % st)
    # /tokenize and /detokenize
    expect(srv, "POST", "/tokenize", "{", 400, inv)
    expect(srv, "POST", "/detokenize", {"tokens": ["a"]}, 400, inv)
    C.log("ok: malformed JSON, wrong fields, n=2, context, 413, 404, 405, 401: documented statuses and shape")


def raw_exchange(srv, head, pieces):
    """Sends head then the pieces (stopping when the server has closed:
    it may answer early) and reads the answer: (status, body bytes)."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    try:
        s.sendall(head)
        for p in pieces:
            s.sendall(p)
    except OSError:
        pass
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            hdr, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                cl = [int(x.split(b":")[1]) for x in hdr.split(b"\r\n") if x.lower().startswith(b"content-length:")]
                if cl and len(rest) >= cl[0]:
                    break
    except OSError:
        pass
    s.close()
    if not data.startswith(b"HTTP/1.1 "):
        return None, data
    return int(data[9:12]), data.partition(b"\r\n\r\n")[2]


def check_chunked_413(srv):
    """A chunked body (no Content-Length) that grows over --max-body."""
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"a" * 65536
    st, b = raw_exchange(srv, head, [b"%x\r\n" % len(piece) + piece + b"\r\n"] * 40 + [b"0\r\n\r\n"])
    if st != 413 or json.loads(b)["error"]["code"] != "request_too_large":
        C.fail("chunked body over --max-body: %s %r" % (st, b[:300]))


def slow_stream_disconnect(srv):
    """Starts a long stream, reads a few chunks, hangs up; the slot must be
    free again soon (busy slots back to 0, a cancelled request counted)."""
    m0 = C.metrics(srv, AUTH)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    body = json.dumps({"prompt": "the king", "max_tokens": 4000, "ignore_eos": True, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: ") < 3:
        d = s.recv(4096)
        if not d:
            C.fail("stream ended early: %r" % got[:300])
        got += d
    s.close()
    t = time.time()
    C.wait_for(lambda: C.metrics(srv, AUTH)["ferry_busy_slots"] == 0, 5, "the slot of a disconnected client freed")
    m1 = C.metrics(srv, AUTH)
    if m1['ferry_requests_finished_total{outcome="cancelled"}'] != m0['ferry_requests_finished_total{outcome="cancelled"}'] + 1:
        C.fail("a disconnected stream is not counted as cancelled")
    if m1["ferry_generated_tokens_total"] - m0["ferry_generated_tokens_total"] >= 4000:
        C.fail("the disconnected stream ran to its end")
    t1 = time.time()
    good(srv)
    if time.time() - t1 > 5:
        C.fail("a request after the disconnect took %.1f s" % (time.time() - t1))
    C.log("ok: a client hanging up mid-stream frees its slot (%.2f s), the next request is served" %
          (time.time() - t))


def whole_disconnect(srv):
    """The same for a non-streamed request: hang up while it generates."""
    m0 = C.metrics(srv, AUTH)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    body = json.dumps({"prompt": "the king", "max_tokens": 4000, "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    C.wait_for(lambda: C.metrics(srv, AUTH)["ferry_busy_slots"] == 1, 5, "the request running")
    s.close()
    C.wait_for(lambda: C.metrics(srv, AUTH)["ferry_busy_slots"] == 0, 5, "the slot of a hung-up client freed")
    m1 = C.metrics(srv, AUTH)
    if m1["ferry_generated_tokens_total"] - m0["ferry_generated_tokens_total"] >= 4000:
        C.fail("the abandoned request ran to its end")
    C.log("ok: a client hanging up during a non-streamed request frees its slot")


def slowloris(srv, timeout_s):
    """Partial headers, a byte now and then: dropped after --timeout while
    other requests are served."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    t0 = time.time()
    closed_at = None
    served = 0
    while time.time() - t0 < timeout_s + 6:
        try:
            s.sendall(b"X-a: b\r\n")
            s.settimeout(0.3)
            d = s.recv(1)
            if d == b"" or d:
                closed_at = time.time() - t0
                break
        except socket.timeout:
            pass
        except OSError:
            closed_at = time.time() - t0
            break
        t1 = time.time()
        good(srv, 3)
        served += 1
        if time.time() - t1 > 3:
            C.fail("a request took %.1f s beside a slowloris connection" % (time.time() - t1))
        time.sleep(0.2)
    s.close()
    if closed_at is None:
        C.fail("a slowloris connection is still open %g s after --timeout %g" % (timeout_s + 6, timeout_s))
    if closed_at < timeout_s - 0.5:
        C.fail("the slowloris connection closed after %.1f s, before --timeout %g" % (closed_at, timeout_s))
    if served < 3:
        C.fail("only %d requests served beside the slowloris connection" % served)
    C.log("ok: slowloris connection dropped after %.1f s (--timeout %g); %d requests served meanwhile" %
          (closed_at, timeout_s, served))


def idle_connections(srv, limit, timeout_s):
    """limit - 2 idle connections (nothing sent): requests still go through;
    a few more over the limit do not wedge the server; the idle ones are
    dropped after --timeout."""
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(limit - 2)]
    t0 = time.time()
    good(srv, 3)
    if time.time() - t0 > 5:
        C.fail("a request took %.1f s beside %d idle connections" % (time.time() - t0, len(socks)))
    extra = []
    for _ in range(4):
        try:
            extra.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        except OSError:
            pass
    # the idle connections are dropped after --timeout: each sees EOF (or a reset)
    dropped = 0
    for s in socks:
        s.settimeout(max(0.1, timeout_s + 3 - (time.time() - t0)))
        try:
            if s.recv(100) == b"":
                dropped += 1
        except socket.timeout:
            pass
        except OSError:
            dropped += 1
    if dropped != len(socks):
        C.fail("%d of %d idle connections dropped within --timeout %g + 3 s" % (dropped, len(socks), timeout_s))
    for s in socks + extra:
        s.close()
    t1 = time.time()
    good(srv, 3)
    if time.time() - t1 > 5:
        C.fail("a request took %.1f s after the idle connections" % (time.time() - t1))
    C.log("ok: %d idle connections (+4 over --max-connections %d): requests served; idle ones dropped after "
          "--timeout" % (len(socks), limit))


def queue_full(a, run):
    """--slots 1 --queue 1: a third long request at once gets 503 server_busy
    with Retry-After; the two others are answered whole."""
    with C.Server(a.ferry, run, ["--api-key", KEY, "--slots", "1", "--queue", "1"]) as srv:
        body = {"prompt": "the king", "max_tokens": 8000, "ignore_eos": True, "temperature": 0}
        res = []

        def go():
            res.append(C.request(srv, "POST", "/v1/completions", body, headers=AUTH, timeout=60))

        ths = [threading.Thread(target=go, daemon=True) for _ in range(2)]
        ths[0].start()   # one at a time: two at once could both be waiting for a moment
        C.wait_for(lambda: C.metrics(srv, AUTH)["ferry_busy_slots"] == 1, 10, "one running")
        ths[1].start()
        C.wait_for(lambda: C.metrics(srv, AUTH)["ferry_queue_depth"] == 1, 10, "one queued")
        h, e = expect(srv, "POST", "/v1/completions", body, 503, "unavailable_error", "server_busy")
        if h.get("retry-after") != "1":
            C.fail("503 server_busy without Retry-After: 1")
        for t in ths:
            t.join(60)
        if sorted(r[0] for r in res) != [200, 200]:
            C.fail("the running and the queued request: %r" % [r[0] for r in res])
        if srv.stop() != 0:
            C.fail("exit code after SIGTERM: %s" % srv.stderr_text()[-2000:])
    C.log("ok: a full queue answers 503 server_busy with Retry-After")


def main():
    a = C.args()
    run = C.tiny_model(a.ferry, a.work)
    model = os.path.basename(run)
    long_run = C.tiny_model(a.ferry, a.work, ctx=8192)
    with C.Server(a.ferry, run, ["--api-key", KEY, "--max-body", str(1 << 20), "--slots", "2"]) as srv:
        want = good(srv)
        check_statuses(srv, model)
        if good(srv) != want or not srv.alive():
            C.fail("the server answers differently after the bad requests")
        st, _, j = C.request_json(srv, "GET", "/health")
        if st != 200 or j != {"status": "ok"}:
            C.fail("/health after the bad requests: %d %r" % (st, j))
        if srv.stop() != 0:
            C.fail("exit code after SIGTERM: %s" % srv.stderr_text()[-2000:])
    timeout_s, limit = 2, 24
    with C.Server(a.ferry, long_run, ["--api-key", KEY, "--slots", "2", "--timeout", str(timeout_s),
                                      "--max-connections", str(limit)]) as srv:
        want = good(srv)
        slow_stream_disconnect(srv)
        whole_disconnect(srv)
        slowloris(srv, timeout_s)
        idle_connections(srv, limit, timeout_s)
        C.wait_for(lambda: C.metrics(srv, AUTH)["ferry_busy_slots"] == 0, 5, "busy slots back to 0")
        if good(srv) != want or not srv.alive():
            C.fail("the server answers differently after the hang-ups")
        if srv.stop() != 0:
            C.fail("exit code after SIGTERM: %s" % srv.stderr_text()[-2000:])
    queue_full(a, long_run)
    print("PASS")


if __name__ == "__main__":
    main()
