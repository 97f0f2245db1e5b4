"""Shared pieces of the `ferry serve` checks (serve_openai.py,
serve_concurrency.py, serve_bad_requests.py, serve_page.py): arguments, a
small trained model, a server under test, plain HTTP requests and SSE
streams, and `ferry generate` to compare against."""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def args(extra=None):
    """--ferry and --work (fy_interop_test appends them); work is made empty.
    extra(parser) may add the script's own arguments."""
    p = argparse.ArgumentParser()
    p.add_argument("--ferry", required=True)
    p.add_argument("--work", required=True)
    if extra:
        extra(p)
    a = p.parse_args()
    a.ferry = os.path.abspath(a.ferry)
    a.work = os.path.abspath(a.work)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    return a


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def log(msg):
    print(msg, flush=True)


def run(cmd, cwd=None, binary=False, timeout=300):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=not binary, timeout=timeout,
                       env=dict(os.environ, FERRY_LOG="warn"))
    if r.returncode != 0:
        out, err = (r.stdout, r.stderr) if not binary else (r.stdout.decode(errors="replace"),
                                                           r.stderr.decode(errors="replace"))
        fail("%s failed (%d): %s%s" % (" ".join(cmd), r.returncode, out[-2000:], err[-2000:]))
    return r


_models = {}


def tiny_model(ferry, work, steps=300, ctx=256):
    """A micro DeepSeek-V3 (tests/cli/micro_fixture.sh: vocab 300, 3 layers,
    context 256) trained for a few hundred steps (about a second) on the
    fixture's generated corpus, so that its greedy text is words rather than
    one repeated token. Made once per (ferry, work, steps); returns the run
    directory (named "run"). ctx other than 256: a copy whose config says
    max_position_embeddings = ctx (training with a long context is slow, and
    RoPE does not care)."""
    key = (ferry, os.path.abspath(work), steps, ctx)
    if key in _models:
        return _models[key]
    if ctx != 256:
        base = tiny_model(ferry, work, steps)
        rd = os.path.join(work, "model%d" % ctx, "run")
        shutil.rmtree(os.path.dirname(rd), ignore_errors=True)
        shutil.copytree(base, rd)
        cfg_path = os.path.join(rd, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["max_position_embeddings"] = ctx
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)
        _models[key] = rd
        return rd
    d = os.path.join(work, "model")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    run(["bash", "-c", 'ferry="$1"; . "$2"', "fixture", ferry, os.path.join(ROOT, "tests/cli/micro_fixture.sh")],
        cwd=d)
    rd = os.path.join(d, "run")
    run([ferry, "train", "-c", "micro.json", "-d", "data", "-o", rd, "--steps", str(steps), "--batch", "4",
         "--seq", "32", "--lr", "0.003", "--eval-every", "0", "--ckpt-every", "0", "--log-every", "1000"], cwd=d)
    _models[key] = rd
    return rd


LISTEN_RE = re.compile(r"ferry serve: listening on http://([^\s:]+|\[[^\]]+\]):(\d+)")


class Server:
    """`ferry serve --model M --port 0 EXTRA...` for a with-block: waits for
    its 'listening' line and GET /health 200; .url (http://host:port/v1),
    .base (http://host:port), .port, .proc, .stderr_text(), .stop()."""

    def __init__(self, ferry, model, extra=(), env=None, start_timeout=60):
        self.cmd = [ferry, "serve", "--model", model, "--port", "0"] + list(extra)
        self.env = dict(os.environ, **(env or {}))
        self.start_timeout = start_timeout
        self.proc = None
        self._err = []
        self._lock = threading.Lock()
        self._port_seen = threading.Event()
        self.port = None
        self.host = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.kill()
        return False

    def _reader(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            with self._lock:
                self._err.append(line)
            m = LISTEN_RE.search(line)
            if m and not self._port_seen.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._port_seen.set()
        self.proc.stderr.close()

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env)
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        deadline = time.time() + self.start_timeout
        while not self._port_seen.wait(0.05):
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                fail("ferry serve did not start (%s): %s" % (" ".join(self.cmd), self.stderr_text()[-3000:]))
        host = "127.0.0.1" if self.host in ("0.0.0.0", "localhost") else self.host
        self.base = "http://%s:%d" % (host, self.port)
        self.url = self.base + "/v1"
        while True:
            try:
                st, _, _ = request(self, "GET", "/health", timeout=5)
                if st == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                fail("ferry serve never answered /health 200: " + self.stderr_text()[-3000:])
            time.sleep(0.05)

    def stderr_text(self):
        with self._lock:
            return "".join(self._err)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and waits up to timeout s; the exit code (None if it
        did not exit: then it is killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._thread.join(5)
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and getattr(self, "_thread", None):
            self._thread.join(5)


def _split(server_or_base):
    base = server_or_base.base if isinstance(server_or_base, Server) else server_or_base
    u = urllib.parse.urlsplit(base)
    return u.hostname, u.port


def _body(body, headers):
    headers = dict(headers or {})
    if body is None:
        return None, headers
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    return body, headers


def request(server_or_base, method, path, body=None, headers=None, timeout=60):
    """One request on a fresh connection: (status, {lower-case header: value}, body bytes)."""
    host, port = _split(server_or_base)
    data, hdrs = _body(body, headers)
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=data, headers=hdrs)
        r = c.getresponse()
        out = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, out
    finally:
        c.close()


def request_json(server_or_base, method, path, body=None, headers=None, timeout=60):
    """request() whose body is JSON: (status, headers, parsed body)."""
    st, h, b = request(server_or_base, method, path, body, headers, timeout)
    try:
        return st, h, json.loads(b)
    except ValueError:
        fail("%s %s: %d with a body that is not JSON: %r" % (method, path, st, b[:500]))


def sse_events(server_or_base, path, body, headers=None, timeout=60):
    """A streamed request read to its end: (status, chunks, done) where
    chunks are the parsed `data: {...}` events in order and done says
    whether `data: [DONE]` ended the stream (nothing may follow it). A
    non-200 answer gives (status, [parsed error body], False)."""
    host, port = _split(server_or_base)
    data, hdrs = _body(body, headers)
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("POST", path, body=data, headers=hdrs)
        r = c.getresponse()
        if r.status != 200:
            raw = r.read()
            try:
                return r.status, [json.loads(raw)], False
            except ValueError:
                return r.status, [raw], False
        ctype = r.getheader("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            fail("%s: streamed answer has Content-Type %r" % (path, ctype))
        return (200,) + parse_sse(r.read())
    finally:
        c.close()


def parse_sse(raw):
    """(chunks, done) of an SSE body (bytes)."""
    chunks, done = [], False
    for ev in raw.decode().split("\n\n"):
        ev = ev.strip("\n")
        if not ev:
            continue
        if done:
            fail("SSE data after [DONE]: %r" % ev[:200])
        if not ev.startswith("data: "):
            if ev.startswith(":"):
                continue   # an SSE comment (keep-alive)
            fail("SSE event is not 'data: ...': %r" % ev[:200])
        payload = ev[len("data: "):]
        if payload == "[DONE]":
            done = True
        else:
            chunks.append(json.loads(payload))
    return chunks, done


def stream_text(chunks, chat=False):
    """The concatenated text of a stream's chunks."""
    out = []
    for c in chunks:
        for ch in c.get("choices", []):
            if chat:
                out.append(ch.get("delta", {}).get("content") or "")
            else:
                out.append(ch.get("text") or "")
    return "".join(out)


def stream_finish(chunks):
    fr = [ch["finish_reason"] for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")]
    return fr[-1] if fr else None


def ferry_generate(ferry, model, prompt, n, temperature=0, seed=None, stop=(), extra=(), ids=False):
    """`ferry generate` of prompt: the continuation's text (bytes decoded as
    UTF-8, the prompt cut off) or with ids=True the list of new token ids."""
    cmd = [ferry, "generate", "--model", model, "--prompt", prompt, "-n", str(n), "--temperature", str(temperature)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    for s in stop:
        cmd += ["--stop", s]
    cmd += list(extra)
    if ids:
        out = run(cmd + ["--print-ids"]).stdout
        for line in out.splitlines():
            if line.startswith("ids:"):
                return [int(x) for x in line[4:].split()]
        fail("ferry generate --print-ids printed no 'ids:' line: %r" % out)
    out = run(cmd, binary=True).stdout
    p = prompt.encode()
    if not out.startswith(p) or not out.endswith(b"\n"):
        fail("ferry generate output does not start with the prompt and end with a newline: %r" % out[:300])
    return out[len(p):-1].decode("utf-8", errors="replace")


def metrics(server_or_base, headers=None):
    """GET /metrics parsed: {'name{labels}': float} (the sample lines)."""
    st, _, b = request(server_or_base, "GET", "/metrics", headers=headers)
    if st != 200:
        fail("GET /metrics: %d %r" % (st, b[:300]))
    out = {}
    for line in b.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, val = line.rpartition(" ")
        out[name] = float(val)
    return out


def wait_for(pred, timeout, what):
    """Polls pred() every 50 ms until it is true; fails after timeout s."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    fail("timed out after %g s waiting for %s" % (timeout, what))
