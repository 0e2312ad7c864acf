"""Forward auth (daemon/auth/forward.c over daemon/proxy/subrequest.c): batchd
asks the app's check_url who a cookie belongs to, through the [upstream]
pool. The app is real (auth_app.py, or raw_upstream.py for answers no sane
server sends); so are batchd, redis-server and PostgreSQL. The evidence is
the app's own count and log of the checks it received."""

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import Http, free_port, get, read_answer, request, send_get, wait_until
from raw_upstream import RawUpstream
from test_resource import check_doc, resource_conf

APP = Path(__file__).parent / "auth_app.py"
DOC = "/v1/sessions/s1"


class AuthApp:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["/usr/bin/python3", str(APP), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def post(self, path, doc=None):
        r = request(self.port, "POST", path, {"Content-Type": "application/json"}, json.dumps(doc or {}))
        assert r.status == 200, r
        return r

    def session(self, sid, user=None, **kw):
        self.post("/_test/sessions", {"session": sid, "user": user, **kw})

    def revoke(self, sid):
        self.post("/_test/sessions", {"session": sid, "revoke": True})

    def state(self):
        return get(self.port, "/_test/whoami_calls").json()

    def calls(self):
        return self.state()["calls"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def auth_app():
    a = AuthApp()
    yield a
    a.stop()


def auth_conf(port, auth="", upstream="", pool_size=4):
    return f"""
[upstream]
url = http://127.0.0.1:{port}
pool_size = {pool_size}
timeout_ms = 5000
{upstream}
[auth]
check_url = /api/auth/whoami
check_principal_header = X-Principal
{auth}
"""


@pytest.fixture
def fwd(start_batchd, redis, pg):
    """fwd(app_port, auth="check_cache_ms = 500\\n", upstream="") -> Batchd serving
    [resource sessions] with access = authenticated, checked at app_port."""
    def _start(app_port, auth="", upstream="", access="authenticated", pool_size=4):
        extra = (resource_conf(redis.port, pg, resource=f"access = {access}\n")
                 + auth_conf(app_port, auth, upstream, pool_size))
        b = start_batchd(extra=extra)
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1,
                   what="Redis and PostgreSQL connections")
        return b
    return _start


def read(b, cookie=None, authorization=None, extra=None, path=DOC):
    h = dict(extra or {})
    if cookie is not None:
        h["Cookie"] = cookie
    if authorization is not None:
        h["Authorization"] = authorization
    return get(b.port, path, h)


def assert_unavailable(r):
    assert (r.status, r.json(), r.headers.get("retry-after")) == (503, {"error": "auth_unavailable"}, "1"), r


# --- (a) single flight ---------------------------------------------------------------


async def read_many_while_held(b, app, n, cookie):
    """n reads with one cookie, all in batchd while the app holds the one
    check: sent, then released only once batchd counts n - 1 joined."""
    await asyncio.to_thread(app.post, "/_test/hold")

    conns = await asyncio.gather(*[send_get(b.port, DOC, {"Cookie": cookie}) for _ in range(n)])

    def all_waiting():
        return app.state()["held"] == 1 and b.metric("batchd_auth_check_joined_total") == n - 1
    await asyncio.to_thread(wait_until, all_waiting, 30, 0.05, f"{n} reads waiting on one check")
    await asyncio.to_thread(app.post, "/_test/release")

    return await asyncio.gather(*[read_answer(r, w) for r, w in conns])


def test_1000_concurrent_reads_one_cookie_one_check(fwd, auth_app):
    auth_app.session("sa", "alice")
    b = fwd(auth_app.port)
    results = asyncio.run(read_many_while_held(b, auth_app, 1000, "theme=dark; session=sa"))
    assert len(results) == 1000
    for status, body in results:
        assert status == 200, body
        check_doc(json.loads(body), 1)
    assert auth_app.calls() == 1
    assert b.metric("batchd_auth_checks_total", result="allowed") == 1
    assert b.metric("batchd_auth_check_waiters") == 0 and b.metric("batchd_auth_checks_in_flight") == 0
    # Cached now: more reads ask nobody.
    assert read(b, "theme=dark; session=sa").status == 200
    assert auth_app.calls() == 1


def test_checks_reuse_one_keepalive_connection(fwd, auth_app):
    b = fwd(auth_app.port, auth="check_cache_ms = 0\n")
    conns = auth_app.state()["connections"]
    for i in range(20):
        auth_app.session(f"k{i}", f"user{i}")
        assert read(b, f"session=k{i}").status == 200
    assert read(b, "session=k0").status == 200  # check_cache_ms = 0: asked again
    assert auth_app.calls() == 21
    # The app's own count: one connection each for the 20 POSTs, calls() and
    # this state(), and one for batchd's 21 checks.
    assert auth_app.state()["connections"] - conns == 20 + 1 + 1 + 1
    assert b.metric("batchd_upstream_connects_total") == 1
    assert b.metric("batchd_upstream_subrequests_total", result="answered") == 21


# --- (b) revocation within check_cache_ms ---------------------------------------------------


def test_revoked_cookie_stops_working_within_check_cache_ms(fwd, auth_app):
    auth_app.session("sr", "rita")
    b = fwd(auth_app.port, auth="check_cache_ms = 500\n")
    t0 = time.monotonic()
    assert read(b, "session=sr").status == 200
    auth_app.revoke("sr")
    # Cached: still allowed right after, and the app was not asked.
    assert read(b, "session=sr").status == 200
    assert auth_app.calls() == 1
    wait_until(lambda: read(b, "session=sr").status == 401, timeout=5, interval=0.05,
               what="the revoked cookie to be refused")
    # Not before its verdict expired (put after t0), and asked once more for it.
    assert time.monotonic() - t0 >= 0.5
    assert auth_app.calls() == 2


# --- (c) no credential, unknown credential ------------------------------------------------


def test_no_cookie_is_401_with_www_authenticate(fwd, auth_app):
    b = fwd(auth_app.port)
    r = read(b)
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer"), r
    assert auth_app.calls() == 0


def test_unknown_cookie_is_401_and_the_denial_is_cached(fwd, auth_app):
    b = fwd(auth_app.port, auth="check_cache_ms = 5000\n")
    r = read(b, "session=nobody")
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer"), r
    assert read(b, "session=nobody").status == 401
    assert auth_app.calls() == 1
    assert b.metric("batchd_auth_checks_total", result="denied") == 1
    # Another credential is another check.
    assert read(b, "session=nobody2").status == 401
    assert auth_app.calls() == 2


# --- (d) forbidden and unavailable -------------------------------------------------------


def test_app_403_is_403_and_cached(fwd, auth_app):
    auth_app.session("sf", "frank", status=403)
    b = fwd(auth_app.port, auth="check_cache_ms = 5000\n")
    for _ in range(2):
        r = read(b, "session=sf")
        assert (r.status, r.json()) == (403, {"error": "forbidden"}), r
    assert auth_app.calls() == 1
    assert b.metric("batchd_auth_checks_total", result="forbidden") == 1


@pytest.mark.parametrize("entry", [{"status": 500}, {"status": 302}, {"no_header": True}],
                         ids=["500", "302", "2xx_without_principal"])
def test_unusable_answer_is_503_and_not_cached(fwd, auth_app, entry):
    auth_app.session("su", "ursula", **entry)
    b = fwd(auth_app.port, auth="check_cache_ms = 5000\n")
    assert_unavailable(read(b, "session=su"))
    assert_unavailable(read(b, "session=su"))
    assert auth_app.calls() == 2  # not cached: asked again
    assert b.metric("batchd_auth_checks_total", result="unavailable") == 2
    assert "forward auth checks failing" in b.log()
    # The app recovers: the next check allows, and batchd says so once.
    auth_app.session("su", "ursula")
    assert read(b, "session=su").status == 200
    assert b.log().count("forward auth checks failing") == 1
    assert "forward auth checks answer again" in b.log()


def test_check_timeout_is_503_and_not_cached(fwd, auth_app):
    auth_app.session("st", "tom", delay_ms=3000)
    b = fwd(auth_app.port, auth="check_cache_ms = 5000\ncheck_timeout_ms = 300\n")
    t0 = time.monotonic()
    assert_unavailable(read(b, "session=st"))
    assert time.monotonic() - t0 < 2.5
    assert b.metric("batchd_upstream_subrequests_total", result="timeout") == 1
    auth_app.session("st", "tom")
    assert read(b, "session=st").status == 200  # not cached: asked again, and allowed
    assert auth_app.calls() == 2


def test_app_down_is_503_and_not_cached(fwd):
    b = fwd(free_port(), auth="check_cache_ms = 5000\n")
    assert_unavailable(read(b, "session=x"))
    assert_unavailable(read(b, "session=x"))
    assert b.metric("batchd_upstream_subrequests_total", result="refused") == 2
    assert b.metric("batchd_auth_checks_total", result="unavailable") == 2


def test_pool_full_is_503_at_once(fwd, auth_app):
    """pool_size = 1, max_waiting = 0: while a check holds the one
    connection, a check for another cookie cannot wait and fails at once;
    the held one is answered when released."""
    auth_app.session("p1", "pat")
    auth_app.session("p2", "paula")
    b = fwd(auth_app.port, pool_size=1, upstream="max_waiting = 0\n")
    auth_app.post("/_test/hold")
    with Http(b.port) as held:
        held.send(f"GET {DOC} HTTP/1.1\r\nHost: t\r\nCookie: session=p1\r\n\r\n")
        wait_until(lambda: auth_app.state()["held"] == 1, what="the first check at the app")
        assert_unavailable(read(b, "session=p2"))
        assert b.metric("batchd_upstream_subrequests_total", result="pool_full") == 1
        auth_app.post("/_test/release")
        assert held.read_response().status == 200
    assert read(b, "session=p2").status == 200  # not cached: asked again, now there is room
    assert auth_app.calls() == 2


# --- (e) what the check carries ----------------------------------------------------------


def test_check_carries_exactly_the_clients_cookie_and_authorization(fwd, auth_app):
    auth_app.session("se", "eve")
    b = fwd(auth_app.port)
    cookie = "a=1; session=se; b=\"x y\""
    authz = "Basic ZXZlOnNlY3JldA=="
    r = read(b, cookie, authz, extra={"X-Principal": "admin", "X-Forwarded-For": "10.9.9.9",
                                      "X-Custom": "c", "Forwarded": "for=1.2.3.4"})
    assert r.status == 200, r
    (fields,) = auth_app.state()["log"]
    names = [k.lower() for k, _ in fields]
    assert sorted(names) == ["authorization", "cookie", "host"], fields
    got = {k.lower(): v for k, v in fields}
    assert got["cookie"] == cookie and got["authorization"] == authz
    assert got["host"] == f"127.0.0.1:{auth_app.port}"


def test_client_x_principal_does_not_decide(fwd, auth_app):
    """A client naming itself in X-Principal, with no session the app knows,
    is refused: the check never carries the client's X-Principal."""
    b = fwd(auth_app.port)
    r = read(b, "session=forged", extra={"X-Principal": "admin"})
    assert r.status == 401, r
    (fields,) = auth_app.state()["log"]
    assert "x-principal" not in [k.lower() for k, _ in fields]


def test_proxied_request_carries_the_checked_principal(fwd, auth_app):
    """Through the proxy, forward_principal_header is the check's verdict:
    a client's own X-Principal is dropped, with or without a session."""
    auth_app.session("sp", "pam")
    b = fwd(auth_app.port)
    for cookie, want in (("session=sp", ["pam"]), ("session=unknown", []), (None, [])):
        h = {"X-Principal": "admin"}
        if cookie:
            h["Cookie"] = cookie
        r = get(b.port, "/echo", h)
        assert r.status == 200, r
        got = [v for k, v in r.json()["headers"] if k.lower() == "x-principal"]
        assert got == want, (cookie, r.json()["headers"])
    assert auth_app.calls() == 2  # no check without a cookie


def test_reload_keeps_verdicts_unless_check_url_changes(fwd, auth_app):
    auth_app.session("sl", "lou")
    b = fwd(auth_app.port, auth="check_cache_ms = 60000\n")
    assert read(b, "session=sl").status == 200

    def reload(text):
        n = b.log().count('msg="reloaded"')
        b.conf.write_text(text)
        b.send_signal(signal.SIGHUP)
        wait_until(lambda: b.log().count('msg="reloaded"') > n, what="reload")
    conf = b.conf.read_text()
    reload(conf.replace("check_cache_ms = 60000", "check_cache_ms = 60000\ncheck_timeout_ms = 1500"))
    assert read(b, "session=sl").status == 200
    assert auth_app.calls() == 1  # kept
    reload(conf.replace("check_url = /api/auth/whoami", "check_url = /api/auth/whoami?v=2"))
    assert read(b, "session=sl").status == 200
    assert auth_app.state()["targets"] == ["/api/auth/whoami", "/api/auth/whoami?v=2"]


# --- (f) hostile answers ---------------------------------------------------------------------


def hostile_script(msg, conn):
    """The check's answer by session cookie; every other cookie is "good"."""
    if msg.target != "/api/auth/whoami":
        return None
    cookie = (msg.values("cookie") or [""])[0]
    kind = cookie.partition("session=")[2]
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    answers = {
        "bare_cr": ok + b"X-Principal: alice\rX-Injected: 1\r\n\r\n{}",
        "bare_lf": ok + b"X-Principal: alice\nX-Injected: 1\r\n\r\n{}",
        "obs_fold": ok + b"X-Principal: alice\r\n X-Injected: 1\r\n\r\n{}",
        "nul": ok + b"X-Principal: al\x00ice\r\n\r\n{}",
        "ctl": ok + b"X-Principal: al\x01ice\r\n\r\n{}",
        "latin1": ok + b"X-Principal: j\xf6rg\r\n\r\n{}",
        "long": ok + b"X-Principal: " + b"a" * 300 + b"\r\n\r\n{}",
        "twice": ok + b"X-Principal: alice\r\nX-Principal: mallory\r\n\r\n{}",
        "empty": ok + b"X-Principal:\r\n\r\n{}",
        "huge": b"HTTP/1.1 200 OK\r\nX-Principal: alice\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000000,
        "huge_chunked": (b"HTTP/1.1 200 OK\r\nX-Principal: alice\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + (b"4000\r\n" + b"x" * 0x4000 + b"\r\n") * 5 + b"0\r\n\r\n"),
        "garbage": b"NOT HTTP AT ALL\r\n\r\n",
    }
    return answers.get(kind, b"HTTP/1.1 200 OK\r\nX-Principal: good\r\nContent-Length: 2\r\n\r\n{}")


HOSTILE = ["bare_cr", "bare_lf", "obs_fold", "nul", "ctl", "latin1", "long", "twice", "empty", "huge",
           "huge_chunked", "garbage"]


def test_hostile_answers_are_unavailable_and_batchd_stays_up(fwd):
    up = RawUpstream(hostile_script)
    try:
        b = fwd(up.port, auth="check_cache_ms = 5000\n")
        for kind in HOSTILE:
            r = read(b, f"session={kind}")
            assert r.status == 503, (kind, r)
            assert_unavailable(r)
            assert read(b, "session=fine").status == 200, kind  # and batchd is fine
        assert b.metric("batchd_auth_checks_total", result="unavailable") == len(HOSTILE)
        assert b.metric("batchd_upstream_subrequests_total", result="too_large") == 2
        # Nothing was cached for them: each is asked again.
        n = len(up.messages())
        assert_unavailable(read(b, "session=long"))
        assert len(up.messages()) == n + 1
    finally:
        up.stop()


def test_jwt_and_forward_auth_together(fwd, auth_app, tmp_path):
    """Both configured: a JWT is verified by batchd (no check call); an
    opaque bearer token (not shaped like a JWT) or a cookie goes to the app;
    a JWT-shaped token that fails is 401 invalid_token, not asked about."""
    import jwt as pyjwt
    secret = "fwd-and-jwt-secret-0123456789abcdef"
    (tmp_path / "s").write_text(secret)
    auth_app.session("se", "eve")
    b = fwd(auth_app.port, auth=f"jwt_secret_file = {tmp_path / 's'}\n")
    tok = pyjwt.encode({"sub": "zed", "exp": int(time.time()) + 300}, secret, algorithm="HS256")
    assert read(b, authorization=f"Bearer {tok}").status == 200
    assert auth_app.calls() == 0
    assert read(b, "session=se", authorization="Bearer opaque-api-token").status == 200
    assert auth_app.calls() == 1
    (fields,) = auth_app.state()["log"]
    assert dict((k.lower(), v) for k, v in fields)["authorization"] == "Bearer opaque-api-token"
    r = read(b, "session=se", authorization="Bearer abc.def.ghi")
    assert r.status == 401 and r.json() == {"error": "invalid_token"}
    assert auth_app.calls() == 1


def test_stream_subscriber_is_told_to_retry_when_the_check_cannot_answer(start_batchd, redis, pg):
    """An EventSource gives up for good on any status but 200: a subscriber
    whose forward-auth check finds the app down gets 200, retry:, end; a
    plain read gets 503."""
    from test_events import Sse
    dead = free_port()  # nothing listens: the check cannot be answered
    extra = (resource_conf(redis.port, pg, resource="access = authenticated\n") + auth_conf(dead)
             + "[stream session-events]\npath = /v1/sessions/{id}/events\nkey = events:session:{id}\n"
               "access = authenticated\n")
    b = start_batchd(extra=extra)
    s = Sse(b.port, "s1", query="")
    assert s.status == 401  # no credential at all: refused, as before
    c = Http(b.port, timeout=10)
    c.send("GET /v1/sessions/s1/events HTTP/1.1\r\nHost: t\r\nCookie: session=x\r\n\r\n")
    head = c._read_until(b"\r\n\r\n").decode()
    assert head.startswith("HTTP/1.1 200"), head
    assert b"retry:" in c._read_until(b"\n\n")
    assert c.wait_closed(5)
    assert b.metric("batchd_sse_rejected_total", stream="session-events", reason="auth_unavailable") == 1
    assert_unavailable(read(b, "session=x"))


def test_sigterm_with_a_check_in_flight(fwd, auth_app):
    """A request waiting on a held check when SIGTERM comes is in-flight work:
    the check answers during the grace period and the request gets its 200
    (with Connection: close); batchd then exits 0 with a clean sanitizer
    report (the fixture checks it)."""
    auth_app.session("st", "sam")
    b = fwd(auth_app.port)
    auth_app.post("/_test/hold")
    with Http(b.port) as c:
        c.send(f"GET {DOC} HTTP/1.1\r\nHost: t\r\nCookie: session=st\r\n\r\n")
        wait_until(lambda: auth_app.state()["held"] == 1, what="the check held at the app")
        b.send_signal(signal.SIGTERM)
        wait_until(lambda: "shutting down" in b.log(), what="batchd draining")
        auth_app.post("/_test/release")
        r = c.read_response()
        assert r.status == 200 and r.headers["connection"] == "close", (r, r.body)
        check_doc(json.loads(r.body), 1)
    assert b.proc.wait(30) == 0
    assert auth_app.calls() == 1
