"""The README's client snippets ("From code"), run as a reader would run them:
the Python ones with Debian's python3-httpx against a live batchd, the
browser one in Chromium on a page of another origin. A snippet is the first
code block after its `<!-- snippet: NAME -->` marker, so the README and
these tests cannot drift apart."""

import json
import os
import re
import socket
import threading

import pytest

from harness import ROOT, wait_until
from test_cors import start_stack
from test_proxy import App
from test_resource import expected

httpx = pytest.importorskip("httpx", reason="python3-httpx is missing (tools/test installs it)")

TOKEN = "secret"


def snippet(name):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- snippet: " + re.escape(name) + r" -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"README.md has no snippet {name}"
    return m.group(1)


def load_python(name, url):
    """The snippet's module namespace, with BATCHD_URL pointing at `url`."""
    old = os.environ.get("BATCHD_URL")
    os.environ["BATCHD_URL"] = url
    try:
        ns = {"__name__": f"readme_{name.replace('-', '_')}"}
        exec(compile(snippet(name), f"README.md:{name}", "exec"), ns)
        return ns
    finally:
        if old is None:
            os.environ.pop("BATCHD_URL", None)
        else:
            os.environ["BATCHD_URL"] = old


@pytest.fixture
def page_app():
    a = App()
    yield a
    a.stop()


@pytest.fixture
def start(start_batchd, redis, pg, page_app):
    def _start(port=None):
        return start_stack(start_batchd, redis, pg, page_app,
                           f"[cors]\norigins = http://127.0.0.1:{page_app.port}\n", port=port,
                           batchd=f"admin_token = {TOKEN}\n")
    return _start


def trim(doc):
    return doc and {k: doc[k] for k in ("id", "title")}


def test_python_reads_batches_and_conditional_reads(start):
    b = start()
    ns = load_python("python-client", f"http://127.0.0.1:{b.port}")
    assert [trim(d) for d in ns["read_sessions"](["s2", "nope", "s1"])] == [expected(2), None, expected(1)]
    with httpx.Client(base_url=f"http://127.0.0.1:{b.port}") as c:
        status, doc, etag = ns["read_session"](c, "s3")
        assert status == 200 and trim(doc) == expected(3) and etag
        assert ns["read_session"](c, "s3", etag) == (304, None, etag)


def test_python_events_resume_across_a_restart(start):
    b1 = start()
    publisher = start()
    url = f"http://127.0.0.1:{b1.port}"
    client = load_python("python-client", url)
    publish = load_python("python-publish", url)["publish"]
    got = []

    def consume():
        for item in client["events"]("/v1/sessions/s9/events"):
            got.append(item)
            if len(got) == 4:
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    # The generator is connected once batchd counts a subscriber.
    wait_until(lambda: b1.metric("batchd_sse_clients") == 1, what="the snippet's stream")
    before = [(publish(url, TOKEN, "s9", "note", f"e{i}"), "note", f"e{i}") for i in (1, 2)]
    wait_until(lambda: len(got) == 2, what="two events")
    b1.assert_clean_exit()
    purl = f"http://127.0.0.1:{publisher.port}"
    missed = [(publish(purl, TOKEN, "s9", "note", "e3"), "note", "e3"),
              (publish(purl, TOKEN, "s9", "other", "two\nlines", key="k-1"), "other", "two\nlines")]
    # A retry with the same Idempotency-Key is the same event, not a new one.
    assert publish(purl, TOKEN, "s9", "other", "two\nlines", key="k-1") == missed[1][0]
    start(port=b1.port)
    t.join(30)
    assert got == before + missed


class Refuser:
    """Answers every request on `port` with 503, like a proxy in front of a
    batchd that is not back yet; counts what it was asked."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.targets = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with c:
                c.settimeout(2)
                try:
                    head = c.recv(65536).decode(errors="replace")
                    self.targets.append(head.split(" ")[1] if " " in head else "")
                    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_browser_subscribe_reopens_after_a_non_200_with_the_last_id(start, page_app, redis):
    from browser import require_browser
    require_browser()
    from browser import Browser
    b1 = start()
    publisher = start()
    publish = load_python("python-publish", f"http://127.0.0.1:{publisher.port}")["publish"]
    url = f"http://127.0.0.1:{b1.port}/v1/sessions/s8/events"
    with Browser() as br:
        br.navigate(f"http://127.0.0.1:{page_app.port}/page")  # another origin than batchd's
        br.evaluate(snippet("browser-subscribe") + "\nwindow.got = []; window.sub = subscribe("
                    f"{json.dumps(url)}, (e) => got.push([e.lastEventId, e.type, e.data]), "
                    "{events: ['note']}); 0")
        wait_until(lambda: b1.metric("batchd_sse_clients") == 1, what="the page's stream")
        before = [[publish(f"http://127.0.0.1:{b1.port}", TOKEN, "s8", ev, d), ev if ev else "message", d]
                  for ev, d in (("note", "n1"), ("", "m2"))]
        br.wait_for("got.length >= 2", timeout=20, show="got")
        assert br.evaluate("got") == before

        # batchd goes; what answers on its port now says 503: EventSource
        # gives up for good, and subscribe() must open a new one.
        b1.assert_clean_exit()
        refuser = Refuser(b1.port)
        try:
            # First EventSource's own reconnect (Last-Event-ID in a header),
            # then subscribe()'s new EventSource, with the id in its URL.
            wait_until(lambda: len(refuser.targets) >= 2, timeout=20, what="the page to meet the 503 twice")
            missed = [[publish(f"http://127.0.0.1:{publisher.port}", TOKEN, "s8", "note", "n3"), "note", "n3"]]
        finally:
            refuser.stop()
        assert "last_event_id" not in refuser.targets[0], refuser.targets
        assert f"last_event_id={before[-1][0]}" in refuser.targets[1], refuser.targets
        start(port=b1.port)
        br.wait_for("got.length >= 3", timeout=40, show="got")
        assert br.evaluate("got") == before + missed
        br.evaluate("sub.close(); 0")
