"""A real browser uses the event-stream credentials: Debian's Chromium,
headless, driven over the DevTools protocol (browser.py).

    chromium --GET /page----------------------> batchd --proxied--> upstream_app.py
             --EventSource /v1/sessions/{id}/events--> batchd (same origin)
    test     --POST .../events (admin token)--> batchd

A browser's EventSource cannot send an Authorization header, so its token
comes from ?access_token= or the jwt_cookie cookie. The page comes through
batchd's proxy, so it has batchd's origin and its EventSource sends batchd's
cookies. Every assertion is about what the page's EventSource handlers saw
(evaluated in the page) or what Chromium put on the wire, never about what
batchd says it did (its metrics only tell the tests when it is ready).

EventSource gives up for good after any status but 200; a 200 that ends
brings it back (after retry:), with Last-Event-ID once it has had an event.
"""

import json
import time

import pytest

from browser import require_browser

require_browser()

from browser import Browser  # noqa: E402
from harness import free_port, request, wait_until  # noqa: E402
from redis_proxy import TcpProxy  # noqa: E402
from test_auth import ADMIN, UnreachablePg, auth_conf, keys, mint, owner_of  # noqa: E402,F401 (keys: fixture)
from test_proxy import App  # noqa: E402

# Reconnects come back within 200-400 ms (retry_ms plus jitter), not 2-4 s.
STREAM = "retry_ms = 200\n"


@pytest.fixture
def upstream():
    a = App()
    yield a
    a.stop()


@pytest.fixture
def start(start_batchd, redis, pg, keys, upstream):  # noqa: F811
    """start(port=None) -> a batchd with [auth], owner streams and the page's app."""
    def _start(port=None):
        b = start_batchd(batchd=f"admin_token = {ADMIN}\n", port=port,
                         extra=auth_conf(keys, redis.port, pg, upstream_port=upstream.port, stream=STREAM))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1,
                   what="Redis and PostgreSQL connections")
        return b
    return _start


@pytest.fixture
def browser():
    with Browser() as br:
        yield br


def publish(b, sid, data):
    r = request(b.port, "POST", f"/v1/sessions/{sid}/events", {"Authorization": f"Bearer {ADMIN}"}, data)
    assert r.status == 201, (r.status, r.body)
    return r.json()["id"]


def open_page(br, b):
    br.navigate(f"http://127.0.0.1:{b.port}/page")
    # The page came through batchd's proxy: batchd's origin.
    assert br.evaluate("location.origin") == f"http://127.0.0.1:{b.port}"


def listen(br, name, url):
    br.evaluate(f"listen({json.dumps(name)}, {json.dumps(url)})")


def seen(br, name):
    return br.evaluate(f"seen({json.dumps(name)})")


def wait_open(br, name, opens=1, timeout=20):
    br.wait_for(f"seen({json.dumps(name)}).opens >= {opens}", timeout=timeout, show=f"seen({json.dumps(name)})")


def wait_got(br, name, n, timeout=20):
    br.wait_for(f"seen({json.dumps(name)}).got.length >= {n}", timeout=timeout,
                show=f"seen({json.dumps(name)})")
    return seen(br, name)["got"]


def events_url(sid, token=None):
    return f"/v1/sessions/{sid}/events" + (f"?access_token={token}" if token else "")


# --- a. the token in the query -------------------------------------------------------------------


def test_query_token_owner_receives_events_in_order(start, browser, pg):
    b = start()
    a = owner_of(pg, "s1")
    open_page(browser, b)
    listen(browser, "mine", events_url("s1", mint(None, sub=a)))
    # onopen: batchd answered 200, which it does only once the stream's start is fixed.
    wait_open(browser, "mine")
    sent = ["hello", '{"n": 2, "ok": true}', "two\nlines", "ünïcödé ✓"]
    ids = [publish(b, "s1", d) for d in sent]
    assert len(set(ids)) == len(ids)
    got = wait_got(browser, "mine", len(sent))
    assert got == [[i, d] for i, d in zip(ids, sent)]
    s = seen(browser, "mine")
    assert (s["opens"], s["errors"], s["readyState"]) == (1, 0, 1)


# --- b. the token in the cookie ------------------------------------------------------------------


def test_cookie_token_owner_receives_events(start, browser, pg):
    b = start()
    a = owner_of(pg, "s3")
    open_page(browser, b)
    # Without the cookie the same URL is refused...
    listen(browser, "before", events_url("s3"))
    browser.wait_for("seen('before').readyState == 2", timeout=20, show="seen('before')")
    # ...with it (set by the page, as an app's login would), the stream opens.
    browser.evaluate(f"document.cookie = 'batchd_token={mint(None, sub=a)}; path=/'")
    listen(browser, "cookie", events_url("s3"))
    wait_open(browser, "cookie")
    ids = [publish(b, "s3", d) for d in ("first", "second")]
    assert wait_got(browser, "cookie", 2) == [[ids[0], "first"], [ids[1], "second"]]
    assert seen(browser, "before")["got"] == []


# --- c. refused: someone else's stream, no credential -------------------------------------------


def test_others_stream_and_anonymous_fail_in_the_browser(start, browser, pg):
    b = start()
    a, owner_b = owner_of(pg, "s1"), owner_of(pg, "s2")
    assert a != owner_b
    open_page(browser, b)
    ta, tb = mint(None, sub=a), mint(None, sub=owner_b)
    listen(browser, "theirs", events_url("s2", ta))
    listen(browser, "anon", events_url("s2"))
    for name in ("theirs", "anon"):
        browser.wait_for(f"seen('{name}').readyState == 2", timeout=20, show=f"seen('{name}')")
    # The answers the browser got: 404 (existence does not leak) and 401.
    status = "fetch({}, {{headers: {{Accept: 'text/event-stream'}}}}).then(r => r.status)"
    assert browser.evaluate(status.format(json.dumps(events_url("s2", ta)))) == 404
    assert browser.evaluate(status.format(json.dumps(events_url("s2")))) == 401
    # B's own subscription, in the same page, shows that an event was sent;
    # the refused ones saw nothing and did not come back.
    listen(browser, "owner", events_url("s2", tb))
    wait_open(browser, "owner")
    eid = publish(b, "s2", "for B only")
    assert wait_got(browser, "owner", 1) == [[eid, "for B only"]]
    for name in ("theirs", "anon"):
        s = seen(browser, name)
        assert (s["got"], s["opens"], s["errors"], s["states"], s["readyState"]) == ([], 0, 1, [2], 2), name


# --- d. batchd goes away; the browser comes back with Last-Event-ID --------------------------------


def test_browser_resumes_with_last_event_id_after_restart(start, browser, pg):
    """batchd restarts on the same port while events are published (through a
    second batchd on the same Redis): the browser reconnects by itself, sends
    Last-Event-ID, and gets the missed events once, then live ones. The new
    batchd listens a few ms before its backends answer; a reconnect landing
    then is turned away and comes back (test e makes that moment last)."""
    b1 = start()
    publisher = start()
    a = owner_of(pg, "s4")
    url = events_url("s4", mint(None, sub=a))
    open_page(browser, b1)
    browser.send("Network.enable")
    listen(browser, "mine", url)
    wait_open(browser, "mine")
    before = [(publish(b1, "s4", d), d) for d in ("e1", "e2")]
    assert wait_got(browser, "mine", 2) == [list(e) for e in before]

    # SIGTERM: batchd tells the stream to retry and ends it, then exits.
    b1.assert_clean_exit()
    browser.wait_for("seen('mine').errors >= 1 && seen('mine').readyState == 0", timeout=20,
                     show="seen('mine')")
    # Published while nothing listens on the browser's port.
    missed = [(publish(publisher, "s4", d), d) for d in ("e3", "e4")]

    b2 = start(port=b1.port)
    got = wait_got(browser, "mine", 4, timeout=30)
    assert got == [list(e) for e in before + missed]

    # A fresh EventSource (no Last-Event-ID) starts at the end: what the
    # resumed one got from history came from its Last-Event-ID.
    listen(browser, "fresh", url)
    wait_open(browser, "fresh")
    live = (publish(b2, "s4", "e5"), "e5")
    wait_got(browser, "mine", 5)
    assert seen(browser, "mine")["got"] == [list(e) for e in before + missed + [live]]
    assert wait_got(browser, "fresh", 1) == [list(live)]

    # What Chromium itself put on the wire (requestWillBeSentExtraInfo: only
    # requests that reached a server; the refused connects have none): the
    # first request had no Last-Event-ID; every reconnect, to the draining
    # batchd (turned away with "retry:") and to the new one, carried e2's id;
    # "fresh" (the last) had none.
    ours = {e["params"]["requestId"] for e in browser.events
            if e["method"] == "Network.requestWillBeSent" and e["params"]["request"]["url"].endswith(url)}
    lei = [{k.lower(): v for k, v in e["params"]["headers"].items()}.get("last-event-id")
           for e in browser.events
           if e["method"] == "Network.requestWillBeSentExtraInfo" and e["params"]["requestId"] in ours]
    assert len(lei) >= 3 and lei[0] is None and lei[-1] is None, lei
    assert lei[1:-1] == [before[-1][0]] * (len(lei) - 2), lei


# --- e. batchd is up before its backends ------------------------------------------------------------


def test_browser_comes_back_while_the_owner_cannot_be_looked_up(start_batchd, keys, redis, pg, upstream,  # noqa: F811
                                                               browser):
    """A batchd listens before Redis and PostgreSQL answer it (just after a
    restart, say). A browser subscribing then must not be told a final
    no: it is turned away with a 200 "retry:" and comes back until the
    owner can be looked up, then gets every event published after its 200."""
    rport, pport = free_port(), free_port()
    b = start_batchd(batchd=f"admin_token = {ADMIN}\n",
                     extra=auth_conf(keys, rport, UnreachablePg(pport), upstream_port=upstream.port, stream=STREAM))
    a = owner_of(pg, "s5")
    open_page(browser, b)
    listen(browser, "mine", events_url("s5", mint(None, sub=a)))
    # Each visit: onopen (the 200), then the end of the stream, an error and
    # readyState 0 (CONNECTING): the browser will be back. A 503 would be 2.
    browser.wait_for("seen('mine').errors >= 3", timeout=20, show="seen('mine')")
    s = seen(browser, "mine")
    assert 2 not in s["states"] and s["got"] == [] and s["opens"] >= 2, s
    # The backends come up where batchd was told they are.
    proxies = [TcpProxy(redis.port, port=rport), TcpProxy(pg.port, port=pport)]
    try:
        # Publish until the browser has one: then it is subscribed for real.
        warm, deadline = [], time.monotonic() + 45
        while not browser.evaluate("seen('mine').got.length"):
            assert time.monotonic() < deadline, seen(browser, "mine")
            data = f"warm-{len(warm)}"
            r = request(b.port, "POST", "/v1/sessions/s5/events", {"Authorization": f"Bearer {ADMIN}"}, data)
            if r.status == 201:
                warm.append([r.json()["id"], data])
            time.sleep(0.3)
        after = [[publish(b, "s5", d), d] for d in ("after-1", "after-2")]
        browser.wait_for("seen('mine').got.at(-1)[1] == 'after-2'", timeout=20, show="seen('mine')")
        got = seen(browser, "mine")["got"]
        # It started at a definite position: every event after it, once, in order.
        assert got[0] in warm, (got, warm)
        assert got == warm[warm.index(got[0]):] + after
        assert seen(browser, "mine")["readyState"] == 1
    finally:
        for p in proxies:
            p.close()
