"""A page on another origin reads batchd with CORS, in a real browser (Debian's
Chromium over the DevTools protocol, browser.py).

    chromium --GET /page--> upstream_app.py (origin http://127.0.0.1:APP)
             --fetch / EventSource--> batchd (http://127.0.0.1:BATCHD: another origin)

Only the browser decides whether a page may read a cross-origin answer, so
every assertion is about what the page's own code got: the JSON a fetch
resolved to, the TypeError it was refused with, what its EventSource saw,
and which preflights Chromium sent (its Network events).
"""

import json

import pytest

from browser import require_browser

require_browser()

from browser import Browser  # noqa: E402
from harness import request  # noqa: E402
from test_cors import start_stack  # noqa: E402
from test_proxy import App  # noqa: E402
from test_resource import expected  # noqa: E402

TOKEN = "secret"


@pytest.fixture
def page_app():
    a = App()
    yield a
    a.stop()


@pytest.fixture
def start(start_batchd, redis, pg, page_app):
    """start(cors_origin) -> a batchd whose [cors] lets the page's origin in
    (or, with None, has no [cors] section)."""
    def _start(origin, port=None):
        return start_stack(start_batchd, redis, pg, page_app,
                           f"[cors]\norigins = {origin}\n" if origin else "", port=port,
                           batchd=f"admin_token = {TOKEN}\n")
    return _start


@pytest.fixture
def browser(page_app):
    with Browser() as br:
        br.send("Network.enable")
        br.navigate(f"http://127.0.0.1:{page_app.port}/page")
        yield br


def page_origin(app):
    return f"http://127.0.0.1:{app.port}"


def fetch_batch(br, b, ids):
    """POST _batch from the page: JSON body, so the browser preflights it."""
    js = (f"fetch('http://127.0.0.1:{b.port}/v1/sessions/_batch', {{method: 'POST', "
          f"headers: {{'Content-Type': 'application/json'}}, body: JSON.stringify({{ids: {json.dumps(ids)}}})}})"
          ".then(async r => ({status: r.status, body: await r.json(), xcache: r.headers.get('X-Cache'),"
          " server: r.headers.get('Server')}))"
          ".catch(e => ({error: String(e)}))")
    return br.evaluate(js)


def trim(doc):
    return doc and {k: doc[k] for k in ("id", "title")}


def preflights(br, b):
    """OPTIONS requests Chromium sent to batchd (CORS preflights)."""
    return [e for e in br.events if e["method"] == "Network.requestWillBeSent"
            and e["params"]["request"]["method"] == "OPTIONS"
            and e["params"]["request"]["url"].startswith(f"http://127.0.0.1:{b.port}/")]


def test_cross_origin_page_reads_a_batch(start, browser, page_app):
    b = start(page_origin(page_app))
    assert browser.evaluate("location.origin") == page_origin(page_app)
    got = fetch_batch(browser, b, ["s1", "nope", "s2"])
    assert got.get("status") == 200, got
    assert [trim(d) for d in got["body"]] == [expected(1), None, expected(2)]
    # X-Cache is readable only because batchd exposes it; Server is not exposed.
    assert got["xcache"] in ("hit", "miss") and got["server"] is None
    assert b.metric("batchd_cors_preflights_total", result="allowed") >= 1
    # A plain GET needs no preflight and reads the same way.
    r = browser.evaluate(f"fetch('http://127.0.0.1:{b.port}/v1/sessions?ids=s3').then(r => r.json())")
    assert [trim(d) for d in r] == [expected(3)]


def test_page_on_an_origin_not_listed_cannot_read(start, browser, page_app):
    b = start("https://somewhere.else.example")
    got = fetch_batch(browser, b, ["s1"])
    assert "TypeError" in got.get("error", ""), got
    assert b.metric("batchd_cors_preflights_total", result="origin_refused") >= 1
    # A GET (no preflight) reaches batchd, which answers; the browser hides the answer.
    r = browser.evaluate(f"fetch('http://127.0.0.1:{b.port}/v1/sessions/s1').then(r => 'read')"
                         ".catch(e => String(e))")
    assert "TypeError" in r
    assert b.metric("batchd_cors_requests_total", result="origin_refused") >= 1


def test_without_cors_section_the_preflight_fails(start, browser, page_app):
    b = start(None)
    got = fetch_batch(browser, b, ["s1"])
    assert "TypeError" in got.get("error", ""), got
    assert len(preflights(browser, b)) >= 1


def publish(b, sid, data):
    r = request(b.port, "POST", f"/v1/sessions/{sid}/events", {"Authorization": f"Bearer {TOKEN}"}, data)
    assert r.status == 201, r
    return r.json()["id"]


def test_cross_origin_eventsource_gets_events_and_resumes_after_restart(start, browser, page_app):
    b1 = start(page_origin(page_app))
    publisher = start(page_origin(page_app))
    url = f"http://127.0.0.1:{b1.port}/v1/sessions/s7/events"
    browser.evaluate(f"listen('x', {json.dumps(url)})")
    browser.wait_for("seen('x').opens >= 1", timeout=20, show="seen('x')")
    before = [[publish(b1, "s7", d), d] for d in ("e1", "e2")]
    browser.wait_for("seen('x').got.length >= 2", timeout=20, show="seen('x')")
    assert browser.evaluate("seen('x').got") == before

    b1.assert_clean_exit()
    browser.wait_for("seen('x').errors >= 1 && seen('x').readyState == 0", timeout=20, show="seen('x')")
    missed = [[publish(publisher, "s7", d), d] for d in ("e3", "e4")]
    start(page_origin(page_app), port=b1.port)
    browser.wait_for("seen('x').got.length >= 4", timeout=30, show="seen('x')")
    assert browser.evaluate("seen('x').got") == before + missed
    # The reconnect carried Last-Event-ID across origins (no preflight needed
    # or the preflight allowed it): what Chromium put on the wire.
    ids = {e["params"]["requestId"] for e in browser.events
           if e["method"] == "Network.requestWillBeSent" and e["params"]["request"]["url"] == url}
    lei = [{k.lower(): v for k, v in e["params"]["headers"].items()}.get("last-event-id")
           for e in browser.events
           if e["method"] == "Network.requestWillBeSentExtraInfo" and e["params"]["requestId"] in ids]
    assert before[-1][0] in lei, lei


def test_cross_origin_eventsource_from_an_origin_not_listed_closes(start, browser, page_app):
    b = start("https://somewhere.else.example")
    url = f"http://127.0.0.1:{b.port}/v1/sessions/s7/events"
    browser.evaluate(f"listen('x', {json.dumps(url)})")
    # A CORS failure is fatal for EventSource: CLOSED (2), no reconnect.
    browser.wait_for("seen('x').errors >= 1 && seen('x').readyState == 2", timeout=20, show="seen('x')")
    assert browser.evaluate("seen('x').opens") == 0
    publish(b, "s7", "never seen")
    assert browser.evaluate("seen('x').got") == []
