"""The HTTP front and the proxy under hostile or careless peers: bodiless
answers that claim a length, an app that stalls mid-answer, pipelined
writes and reads, pipelines of large answers that nobody reads, slow
request bodies, forwarding normalisation, and requests racing SIGTERM.
Each test fails on a daemon without the matching fix."""

import hashlib
import signal
import socket
import threading
import time

import pytest

from harness import Http, free_port, get, made_for_the_test, request, wait_until
from test_proxy import App, app_server, upstream_conf, writes  # noqa: F401  (fixtures)


def up(port, pool=4, timeout=2000, extra=""):
    return f"[upstream]\nurl = http://127.0.0.1:{port}\npool_size = {pool}\ntimeout_ms = {timeout}\n{extra}\n"


class ScriptedApp:
    """An app server on a raw socket that answers every request it reads
    (heads only; these tests send no request bodies) with `answer(path)`
    bytes, and counts what it saw."""

    def __init__(self, answer):
        self.answer = answer
        self.port = free_port()
        self.paths = []
        self.conns = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.stop_ev = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:  # closed by close()
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        buf = b""
        s.settimeout(0.2)
        while not self.stop_ev.is_set():
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                self.paths.append(path)
                out = self.answer(path)
                if out:
                    s.sendall(out)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
        s.close()

    def close(self):
        self.stop_ev.set()
        self.sock.close()


@pytest.fixture
def scripted():
    """scripted(answer) -> ScriptedApp, closed after the test."""
    yield from made_for_the_test(ScriptedApp, ScriptedApp.close)


# --- defect 3: bodiless answers with a length; a stalled answer -------------------


@pytest.mark.parametrize("status", [304, 204])
def test_bodiless_answer_with_a_length_is_relayed_at_once(start_batchd, scripted, status):
    reason = {304: "Not Modified", 204: "No Content"}[status]

    def answer(path):
        return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: 5\r\nETag: \"e1\"\r\n"
                f"X-Path: {path}\r\n\r\n").encode()

    app = scripted(answer)
    b = start_batchd(extra=up(app.port, pool=1, timeout=30000))
    with Http(b.port, timeout=3) as c:
        for path in ("/a", "/b", "/c"):  # one pool connection, reused each time
            t0 = time.monotonic()
            r = c.request("GET", path)
            assert (r.status, r.body, r.headers["x-path"]) == (status, b"", path)
            assert time.monotonic() - t0 < 2.5
            if status == 304:
                assert r.headers["content-length"] == "5" and r.headers["etag"] == '"e1"'
            else:
                assert "content-length" not in r.headers
    assert app.conns == 1


def test_an_answer_that_stalls_mid_body_times_out(start_batchd, scripted):
    def answer(path):
        if path == "/stall":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    app = scripted(answer)
    b = start_batchd(extra=up(app.port, pool=1, timeout=400))
    with Http(b.port, timeout=5) as c:
        c.send("GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        c._read_until(b"\r\n\r\n")
        t0 = time.monotonic()
        assert c.wait_closed(5), "the stalled answer was never cut off"
        assert time.monotonic() - t0 < 3
        assert c.buf == b"0123456789"  # what the app sent, and then the cut
    assert b.metric("batchd_upstream_errors_total", kind="timeout") == 1
    # The pool connection was freed: the next request gets a new one.
    assert get(b.port, "/ok").body == b"ok"


# --- defect 4: a read pipelined behind a write sees the write ---------------------


def test_pipelined_read_after_write_sees_the_write(writes, pg):
    b = writes()
    for i in range(5):
        assert get(b.port, "/v1/sessions/s6").status == 200  # cached before the write
        with Http(b.port) as c:
            c.send(f"PUT /api/sessions/s6?title=piped{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                   f"GET /v1/sessions/s6 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
            r = c.read_response()
            assert r.status == 200 and r.json()["title"] == f"piped{i}", f"try {i}: {r.body!r}"
    assert b.metric("batchd_pipeline_deferred_total") >= 5


# --- defect 5: pipelined answers are bounded in bytes --------------------------------


def test_pipelined_large_answers_nobody_reads_stay_bounded(start_batchd, redis, pg):
    """256 pipelined 1000-id batches (~70 KB each, 17 MB in all) from a client
    that reads nothing. The kernel's socket buffers take a few MB on
    loopback; past them, a request is started only while the answers held
    for the client are within write_queue_bytes."""
    from test_resource import resource_conf
    conf = resource_conf(redis.port, pg).replace("max_ids = 100\n", "max_ids = 1000\n")
    b = start_batchd(batchd="write_queue_bytes = 65536\nmax_pipeline = 256\n", extra=conf)
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="backends")
    ids = ",".join(f"s{i}" for i in range(1, 1001))
    assert len(get(b.port, "/v1/sessions?ids=" + ids).body) > 60000
    wait_until(lambda: redis.client().exists(*[f"session:s{i}" for i in range(1, 1001)]) == 1000,
               what="the write-back")

    def batches_run():
        return b.metric("batchd_cache_results_total", resource="sessions", result="hit") / 1000

    s = socket.socket()
    s.connect(("127.0.0.1", b.port))
    s.sendall(f"GET /v1/sessions?ids={ids} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 256)
    wait_until(lambda: b.metric("batchd_client_read_pauses_total", reason="write_queue") >= 1,
               what="the client's answers to pass write_queue_bytes")
    time.sleep(0.5)  # room for a daemon that runs them all to do so
    started = batches_run()
    assert started < 128, f"{started} of 256 pipelined batches ran with nobody reading"
    # Reading now gets all of them, whole and in order.
    c = Http.__new__(Http)
    c.sock, c.buf, c.timeout = s, b"", 10
    s.settimeout(10)
    for _ in range(256):
        r = c.read_response()
        assert r.status == 200 and len(r.json()) == 1000
    s.close()
    assert batches_run() == 256


# --- defect 6: slow request bodies do not hold the pool ---------------------------


def test_slow_small_bodies_do_not_hold_the_pool(start_batchd, app_server):
    b = start_batchd(extra=up(app_server.port, pool=2, timeout=5000))
    body = b"x" * 1000
    slow = [Http(b.port) for _ in range(3)]
    for c in slow:
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body[:10])
    wait_until(lambda: b.metric("batchd_upstream_buffered_bodies_total") == 3, what="bodies buffered")
    for _ in range(4):  # the pool is free for everyone else meanwhile
        t0 = time.monotonic()
        assert get(b.port, "/echo").status == 200
        assert time.monotonic() - t0 < 1.5
    assert "POST /upload" not in app_server.stats()["hits"]
    for c in slow:
        c.send(body[10:])
        r = c.read_response()
        assert r.json() == {"length": 1000, "sha256": hashlib.sha256(body).hexdigest()}
        c.close()
    assert app_server.stats()["hits"]["POST /upload"] == 3


# --- defect 8: forwarding normalisation -----------------------------------------------


def echo_headers(port, raw):
    with Http(port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == 200, r
    e = r.json()
    return e, {k.lower(): v for k, v in e["headers"]}, [k.lower() for k, _ in e["headers"]]


def test_http10_without_host_and_connection_host_get_a_host(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    _, h, names = echo_headers(b.port, "GET /echo HTTP/1.0\r\n\r\n")
    assert names.count("host") == 1 and h["host"] == f"127.0.0.1:{app_server.port}"
    _, h, names = echo_headers(b.port, "GET /echo HTTP/1.1\r\nHost: app.example\r\nConnection: host\r\n\r\n")
    assert names.count("host") == 1 and h["host"] == "app.example"


def test_absolute_form_authority_becomes_host(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    e, h, names = echo_headers(b.port, "GET http://app.example:8080/echo?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (e["path"], e["query"]) == ("/echo", "x=1")
    assert names.count("host") == 1 and h["host"] == "app.example:8080"


@pytest.mark.parametrize("line", ["TRACE /echo HTTP/1.1", "CONNECT app.example:443 HTTP/1.1"])
def test_trace_and_connect_are_refused(start_batchd, app_server, line):
    b = start_batchd(extra=upstream_conf(app_server.port))
    with Http(b.port) as c:
        c.send(f"{line}\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.json()) == (405, {"error": "method_not_allowed"})
        assert "GET" in r.headers["allow"] and "TRACE" not in r.headers["allow"]
        assert c.wait_closed(5)
    assert set(app_server.stats()["hits"]) <= {"GET /stats"}
    assert b.metric("batchd_connections_closed_total", reason="method_not_allowed") == 1


@pytest.mark.parametrize("target", [b"/echo\tx", b"/echo\x80", b"/caf\xc3\xa9", b"/echo?a=\x7f"])
def test_raw_tab_and_high_bytes_in_the_target_are_400(start_batchd, app_server, target):
    b = start_batchd(extra=upstream_conf(app_server.port))
    with Http(b.port) as c:
        c.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.json()) == (400, {"error": "bad_request"})
    assert set(app_server.stats()["hits"]) <= {"GET /stats"}


@pytest.mark.parametrize("setting,passed", [("", False), ("underscores_in_headers = yes", True)])
def test_header_names_with_underscores(start_batchd, app_server, setting, passed):
    b = start_batchd(extra=upstream_conf(app_server.port, setting))
    _, h, _ = echo_headers(b.port, "GET /echo HTTP/1.1\r\nHost: x\r\nX_User: mallory\r\nX-User: alice\r\n\r\n")
    assert h["x-user"] == "alice"
    assert ("x_user" in h) == passed
    assert b.metric("batchd_upstream_headers_dropped_total", reason="underscore") == (0 if passed else 1)


def test_forwarded_headers_from_an_untrusted_peer_are_replaced(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port, "trusted_proxies = 10.0.0.0/8, ::1"))
    _, h, names = echo_headers(b.port, "GET /echo HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\n"
                                       "X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"
                                       "Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n")
    assert h["x-forwarded-for"] == "127.0.0.1" and names.count("x-forwarded-for") == 1
    assert h["x-forwarded-proto"] == "http" and h["x-forwarded-host"] == "app.example"
    assert "forwarded" not in h
    assert b.metric("batchd_upstream_headers_dropped_total", reason="untrusted_forwarded") == 5


def test_forwarded_headers_from_a_trusted_proxy_are_kept_in_order(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port, "trusted_proxies = 127.0.0.1"))
    _, h, names = echo_headers(b.port, "GET /echo HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 1.1.1.1\r\n"
                                       "X-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example\r\n"
                                       "X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n")
    assert h["x-forwarded-for"] == "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"
    assert names.count("x-forwarded-for") == 1
    assert h["x-forwarded-proto"] == "https" and h["x-forwarded-host"] == "www.example"


def test_connection_cannot_remove_what_batchd_sets(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    _, h, _ = echo_headers(b.port, "GET /echo HTTP/1.1\r\nHost: x\r\n"
                                   "Connection: x-forwarded-for, via, x-forwarded-proto, host\r\n\r\n")
    assert h["x-forwarded-for"] == "127.0.0.1" and h["via"] == "1.1 batchd"
    assert h["x-forwarded-proto"] == "http" and h["host"] == "x"


# --- defect 9: a request racing SIGTERM is answered ------------------------------------


def test_requests_racing_sigterm_on_idle_connections_are_answered(start_batchd):
    """A request sent to an idle keep-alive connection just as the drain
    begins (here: once /readyz already says 503) is answered, with
    Connection: close, instead of meeting EOF."""
    b = start_batchd()  # drain_idle_ms = 1000 by default
    conns = [Http(b.port, timeout=5) for _ in range(16)]
    for c in conns:
        assert c.request("GET", "/nothing").status == 404  # now idle, kept alive
    b.send_signal(signal.SIGTERM)
    wait_until(lambda: get(b.admin_port, "/readyz").status == 503, what="the drain to begin")
    for c in conns:
        c.send("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    for i, c in enumerate(conns):
        try:
            r = c.read_response()
        except (EOFError, ConnectionResetError) as e:
            pytest.fail(f"connection {i}: {e!r} instead of an answer")
        assert r.status == 404 and r.headers["connection"] == "close"
        assert c.wait_closed(5)
        c.close()
    assert b.wait(15) == 0


# --- transfer codings batchd cannot carry ------------------------------------------------


def test_transfer_codings_other_than_chunked_are_refused(start_batchd, scripted):
    """batchd decodes chunks and relays the decoded bytes: a "gzip, chunked"
    body would lose its gzip on the way. A request gets 400, an answer 502."""
    def answer(path):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n")

    app = scripted(answer)
    b = start_batchd(extra=up(app.port))
    with Http(b.port) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.json()) == (400, {"error": "ambiguous_length"})
    assert app.paths == []
    r = get(b.port, "/y")
    assert (r.status, r.json()) == (502, {"error": "bad_upstream_response"})
    assert app.paths == ["/y"]
