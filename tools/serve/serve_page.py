"""serve_page: ferry serve's chat page (src/serve/page.html) in headless
Chromium, driven through chromedriver's W3C WebDriver HTTP protocol with
urllib (no selenium).

Loads `/` from `ferry serve` on the micro model, checks that the page pulls
nothing from another host (its HTML names no http(s) URL elsewhere and the
browser's resource timings list only same-origin loads), sets temperature 0
and a small max_tokens in the page's own inputs, types a prompt, sends it
(the Send button, then a second turn with the Enter key), waits (bounded)
until the streamed answer is in the DOM and the stats line shows a
tokens/s number, and compares each answer with what the API streams for the
same request the page sends (POST /v1/chat/completions with the whole
history, stream, include_usage, temperature 0, max_tokens): greedy, so the
text must be equal, and the page's token count must be the usage's.
Exits 77 (skip) without chromium or chromedriver."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Server, args, fail, log, sse_events, stream_text, tiny_model  # noqa: E402

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"   # the W3C web element key
ENTER = "\ue007"                                   # WebDriver's Enter key
MAX_TOKENS = 24
TIMEOUT = 30                                       # seconds for one answer to finish in the page


def find_browser():
    """(chromium, chromedriver) paths or None for each."""
    chromium = None
    for c in ("chromium", "chromium-browser", "google-chrome"):
        chromium = shutil.which(c)
        if chromium:
            break
    driver = shutil.which("chromedriver")
    if not driver and os.path.exists("/usr/lib/chromium/chromedriver"):
        driver = "/usr/lib/chromium/chromedriver"
    return chromium, driver


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class WebDriver:
    """A chromedriver process and one session over its HTTP protocol."""

    def __init__(self, driver, chromium, work):
        self.port = free_port()
        self.log = open(os.path.join(work, "chromedriver.log"), "w")
        # its own process group: chromedriver starts chromium as a child,
        # and close() takes down the whole group whatever state it is in
        self.proc = subprocess.Popen([driver, "--port=%d" % self.port], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.base = "http://127.0.0.1:%d" % self.port
        self.sid = None
        end = time.time() + 20
        while True:
            try:
                if self.call("GET", "/status", timeout=2).get("ready"):
                    break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.time() > end:
                self.close()
                fail("chromedriver did not come up on port %d" % self.port)
            time.sleep(0.1)
        profile = os.path.join(work, "chromium-profile")
        opts = {"binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--user-data-dir=" + profile, "--no-first-run", "--no-default-browser-check",
                         "--disable-extensions", "--disable-background-networking", "--disable-sync",
                         "--window-size=1000,800"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": opts}}}
        self.sid = self.call("POST", "/session", caps, timeout=60)["sessionId"]

    def call(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                out = json.loads(r.read())
        except urllib.error.HTTPError as e:
            fail("WebDriver %s %s: %d %s" % (method, path, e.code, e.read()[:1000]))
        return out.get("value", out) if path != "/status" else out.get("value", {})

    def s(self, method, path, body=None, timeout=30):
        return self.call(method, "/session/%s%s" % (self.sid, path), body, timeout)

    def get(self, url):
        self.s("POST", "/url", {"url": url}, timeout=60)

    def find(self, css):
        r = self.s("POST", "/element", {"using": "css selector", "value": css})
        if not isinstance(r, dict) or ELEMENT not in r:
            fail("WebDriver: no element %s: %r" % (css, r))
        return r[ELEMENT]

    def clear(self, el):
        self.s("POST", "/element/%s/clear" % el, {})

    def type(self, el, text):
        self.s("POST", "/element/%s/value" % el, {"text": text})

    def click(self, el):
        self.s("POST", "/element/%s/click" % el, {})

    def js(self, script, *a):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(a)})

    def close(self):
        if self.sid:
            try:
                self.call("DELETE", "/session/" + self.sid, timeout=10)
            except BaseException:   # noqa: B036 - the group kill below cleans up regardless
                pass
            self.sid = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()


# The last assistant bubble: its answer (the text node before the stats
# div), the stats line, the page state and any error bubbles.
READ_JS = """
const a = document.querySelectorAll('.msg.assistant');
const e = a.length ? a[a.length - 1] : null;
let text = '';
if (e) for (const n of e.childNodes) if (n.nodeType === 3) text += n.nodeValue;
const st = e && e.querySelector('.stats');
return {n: a.length, text: text, stats: st ? st.textContent : null, state: document.body.dataset.state,
        errors: Array.from(document.querySelectorAll('.msg.error')).map((x) => x.textContent),
        updates: window.__updates || []};
"""

# Records every length the newest assistant bubble's answer takes while it
# streams, to see that the answer arrives in pieces, not at once.
WATCH_JS = """
window.__updates = [];
new MutationObserver(() => {
  const a = document.querySelectorAll('.msg.assistant');
  if (!a.length) return;
  const e = a[a.length - 1];
  let t = '';
  for (const n of e.childNodes) if (n.nodeType === 3) t += n.nodeValue;
  const u = window.__updates;
  if (!u.length || u[u.length - 1] !== t.length) u.push(t.length);
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
"""

STATS_RE = re.compile(r"^(\d+) tokens, first after (\d+\.\d+) s, (\d+\.\d+) tokens/s$")


def check_no_external(html, host, port):
    """The page names no http(s) or protocol-relative URL of another host
    and loads nothing by src/href, CSS url() or @import (it is one file)."""
    own = {"%s:%d" % (h, port) for h in (host, "127.0.0.1", "localhost")}
    for m in re.finditer(r"(?i)\bhttps?://([^/\s\"'<>]+)|[\"'(=]\s*//([A-Za-z0-9\-]+\.[^/\s\"'<>]+)", html):
        if (m.group(1) or m.group(2)) not in own:
            fail("page names an external resource: %r" % html[max(0, m.start() - 40):m.end() + 40])
    for m in re.finditer(r"(?i)<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=|url\(|@import", html):
        fail("page loads a resource: %r" % html[m.start():m.start() + 120])


def api_answer(srv, history):
    body = {"messages": history, "stream": True, "stream_options": {"include_usage": True},
            "temperature": 0, "max_tokens": MAX_TOKENS}
    st, chunks, done = sse_events(srv, "/v1/chat/completions", body)
    if st != 200 or not done:
        fail("API stream: status %d, done %s, %r" % (st, done, chunks[:2]))
    usage = [c["usage"] for c in chunks if c.get("usage")]
    if len(usage) != 1:
        fail("API stream has %d usage chunks" % len(usage))
    return stream_text(chunks, chat=True), usage[0]["completion_tokens"]


def turn(wd, srv, history, prompt, by_enter):
    """Sends prompt from the page and checks its answer against the API's."""
    box = wd.find("#prompt")
    wd.js(WATCH_JS)
    if by_enter:
        wd.type(box, prompt + ENTER)
    else:
        wd.type(box, prompt)
        wd.click(wd.find("#send"))
    end = time.time() + TIMEOUT
    while True:
        r = wd.js(READ_JS)
        if r["errors"]:
            fail("the page shows an error: %r" % r["errors"])
        if r["state"] == "done" and r["n"] == len(history) // 2 + 1 and r["stats"]:
            break
        if time.time() > end:
            fail("no finished answer in the page after %d s: %r" % (TIMEOUT, r))
        time.sleep(0.05)
    m = STATS_RE.match(r["stats"])
    if not m:
        fail("stats line does not show a tokens/s number: %r" % r["stats"])
    history.append({"role": "user", "content": prompt})
    want, ntok = api_answer(srv, history)
    history.append({"role": "assistant", "content": want})
    log("page answer %r (%s; %d updates while streaming)" % (r["text"], r["stats"], len(r["updates"])))
    if not want:
        fail("the API's answer to %r is empty: nothing to compare" % prompt)
    if r["text"] != want:
        fail("page answer %r != API answer %r" % (r["text"], want))
    if int(m.group(1)) != ntok:
        fail("page counts %s tokens, the API's usage says %d" % (m.group(1), ntok))
    if float(m.group(3)) <= 0 and ntok > 1:
        fail("tokens/s is not positive: %r" % r["stats"])
    if len([u for u in r["updates"] if u > 0]) < 1:
        fail("the answer never appeared while streaming (updates %r)" % r["updates"])


def main():
    chromium, driver = find_browser()
    if not chromium or not driver:
        print("SKIP: serve_page needs chromium and chromedriver (Debian: chromium chromium-driver; "
              "scripts/deps.sh --test installs them); found chromium=%s chromedriver=%s" % (chromium, driver))
        sys.exit(77)
    a = args()
    t0 = time.time()
    model = tiny_model(a.ferry, a.work)
    log("model trained in %.1f s" % (time.time() - t0))
    with Server(a.ferry, model, ["--slots", "2"]) as srv:
        wd = WebDriver(driver, chromium, a.work)
        try:
            log("chromium session up at %.1f s" % (time.time() - t0))
            wd.get(srv.base + "/")
            html = wd.js("return document.documentElement.outerHTML;")
            check_no_external(html, srv.host, srv.port)
            if not wd.js("return !!document.getElementById('prompt') && document.body.dataset.state === 'idle';"):
                fail("the page has no #prompt or is not idle after loading")
            res = wd.js("return performance.getEntriesByType('resource').map((e) => e.name);")
            for u in res:
                if not u.startswith(srv.base + "/"):
                    fail("the page loaded %r from another origin" % u)
            for el, v in (("#temperature", "0"), ("#max_tokens", str(MAX_TOKENS))):
                e = wd.find(el)
                wd.clear(e)
                wd.type(e, v)
            history = []
            turn(wd, srv, history, "the king walked", by_enter=False)
            turn(wd, srv, history, "a shepherd spoke", by_enter=True)
            if not srv.alive():
                fail("ferry serve died: " + srv.stderr_text()[-2000:])
        finally:
            wd.close()
    log("OK: the chat page streams the API's greedy answers (%.1f s)" % (time.time() - t0))


if __name__ == "__main__":
    main()
