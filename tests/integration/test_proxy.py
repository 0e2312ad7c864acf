"""The reverse proxy (daemon/proxy/: proxy.c, pool.c) against a real app server
(upstream_app.py), invalidation on write with the race guard, SIGHUP reload
and drain with proxied requests in flight."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import Http, free_port, get, request, wait_until
from test_resource import BY_IDS, resource_conf
from upstream_app import pattern  # what GET /big sends

APP = Path(__file__).parent / "upstream_app.py"


class App:
    def __init__(self, port=None, conninfo=None):
        self.port = port or free_port()
        args = [sys.executable if sys.executable.startswith("/usr/bin/") else "/usr/bin/python3",
                str(APP), str(self.port)] + ([conninfo] if conninfo else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stats(self):
        return get(self.port, "/stats").json()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def app_server():
    a = App()
    yield a
    a.stop()


def upstream_conf(port, extra=""):
    return f"[upstream]\nurl = http://127.0.0.1:{port}\npool_size = 4\ntimeout_ms = 2000\n{extra}\n"


def test_get_and_post_keep_path_query_headers(start_batchd, app_server):
    # The test client is 127.0.0.1: trusted here, so earlier hops' values stand.
    b = start_batchd(extra=upstream_conf(app_server.port, "trusted_proxies = 127.0.0.0/8"))
    r = get(b.port, "/echo?a=1&b=%20x", {"X-Custom": "v1", "X-Forwarded-For": "10.0.0.1"})
    assert r.status == 200 and r.headers["via"].endswith("1.1 batchd")
    e = r.json()
    h = {k.lower(): v for k, v in e["headers"]}
    assert (e["method"], e["path"], e["query"]) == ("GET", "/echo", "a=1&b=%20x")
    assert h["x-custom"] == "v1"
    assert h["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http" and h["via"] == "1.1 batchd"
    assert h["x-forwarded-host"] == "batchd"
    r = request(b.port, "POST", "/echo?q=2", {"Content-Type": "text/plain"}, "hello body")
    e = r.json()
    assert (e["method"], e["query"], e["length"]) == ("POST", "q=2", 10)
    assert e["sha256"] == hashlib.sha256(b"hello body").hexdigest()


def test_hop_by_hop_headers_are_dropped(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    r = get(b.port, "/echo", {"Connection": "keep-alive, X-Secret", "X-Secret": "s", "Keep-Alive": "timeout=5",
                              "TE": "trailers", "Proxy-Connection": "x", "Upgrade": "websocket"})
    names = {k.lower() for k, _ in r.json()["headers"]}
    assert not names & {"connection", "x-secret", "keep-alive", "te", "proxy-connection", "upgrade"}


def test_5mb_bodies_both_ways_length_and_chunked(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port, "buffer_bytes = 65536"))
    data = os.urandom(5 * 1024 * 1024)
    with Http(b.port, timeout=60) as c:
        r = c.request("POST", "/upload", body=data)
        assert r.json() == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        # Chunked upload: the proxy re-frames the pieces it reads.
        c.send("POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(data), 300_000):
            part = data[i:i + 300_000]
            c.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        c.send("0\r\n\r\n")
        assert c.read_response().json()["sha256"] == hashlib.sha256(data).hexdigest()
        n = 5 * 1024 * 1024
        r = c.request("GET", f"/big?size={n}")
        assert r.headers["content-length"] == str(n) and r.body == pattern(n)
        r = c.request("GET", f"/big?size={n}&chunked=1")
        assert r.headers["transfer-encoding"] == "chunked" and r.body == pattern(n)


def test_chunked_upstream_to_http10_client_is_close_delimited(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    with Http(b.port) as c:
        c.send("GET /big?size=1000&chunked=1 HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert "transfer-encoding" not in r.headers and r.body == pattern(1000)


def test_upstream_keepalive_is_reused(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    for _ in range(3):
        with Http(b.port) as c:
            for _ in range(20):
                assert c.request("GET", "/echo").status == 200
    # 60 requests over 3 client connections, one connection to the app
    # (the app's own count includes this stats request's connection).
    st = app_server.stats()
    assert st["requests"] >= 60
    assert st["connections"] - 1 == 1, st
    assert b.metric("batchd_upstream_connects_total") == 1


def test_502_when_upstream_down(start_batchd):
    b = start_batchd(extra=upstream_conf(free_port()))
    r = get(b.port, "/anything")
    assert (r.status, r.json()) == (502, {"error": "upstream_unavailable"})
    assert b.metric("batchd_upstream_errors_total", kind="refused") == 1


def test_502_at_connect_timeout_when_the_app_never_accepts(start_batchd):
    """An app whose accept queue is full drops the SYNs, so the connect
    hangs: it fails at connect_timeout_ms, not at the request's timeout_ms."""
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    app.listen(0)
    port = app.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # fills the accept queue
    b = start_batchd(extra=upstream_conf(port, "connect_timeout_ms = 300").replace("timeout_ms = 2000",
                                                                                   "timeout_ms = 20000"))
    t0 = time.monotonic()
    r = get(b.port, "/anything")
    assert (r.status, r.json()) == (502, {"error": "upstream_unavailable"})
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert b.metric("batchd_upstream_errors_total", kind="connect_timeout") == 1
    filler.close()
    app.close()


def test_503_when_the_pool_is_busy_and_max_waiting_queued(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port, "max_waiting = 1").replace("pool_size = 4",
                                                                                    "pool_size = 1"))
    got = {}
    slow = threading.Thread(target=lambda: got.setdefault("a", get(b.port, "/slow?ms=1500")))
    slow.start()
    wait_until(lambda: b.metric("batchd_upstream_connections", state="busy") == 1, what="pool busy")
    waiting = threading.Thread(target=lambda: got.setdefault("b", get(b.port, "/echo")))
    waiting.start()
    wait_until(lambda: b.metric("batchd_upstream_waiting") == 1, what="one waiting")
    r = get(b.port, "/echo")
    assert (r.status, r.json(), r.headers["retry-after"]) == (503, {"error": "upstream_busy"}, "1")
    assert b.metric("batchd_upstream_errors_total", kind="pool_full") == 1
    slow.join(10)
    waiting.join(10)
    assert got["a"].status == 200 and got["b"].status == 200  # the waiter was served, not dropped


def test_504_on_timeout(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port).replace("timeout_ms = 2000", "timeout_ms = 300"))
    t0 = time.monotonic()
    r = get(b.port, "/slow?ms=3000")
    assert (r.status, r.json()) == (504, {"error": "upstream_timeout"})
    assert time.monotonic() - t0 < 2.5
    assert b.metric("batchd_upstream_errors_total", kind="timeout") == 1
    assert get(b.port, "/echo").status == 200  # the pool recovers


def test_upstream_sse_arrives_event_by_event(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    with Http(b.port) as c:
        c.send("GET /sse?n=4&gap_ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
        head = c._read_until(b"\r\n\r\n").decode()
        assert "text/event-stream" in head and "chunked" in head.lower()
        stamps = [time.monotonic()]
        got = c.buf  # bytes that came with the head
        while got.count(b"\n\n") < 4:
            chunk = c.sock.recv(65536)
            assert chunk
            got += chunk
            stamps.append(time.monotonic())
        # The events arrived as they were sent, 300 ms apart, not all at the end.
        assert len(stamps) >= 3
        assert stamps[-1] - stamps[0] >= 0.6


@pytest.mark.parametrize("empty", [False, True], ids=["with_body", "empty_body"])
def test_early_answer_while_body_still_arriving(start_batchd, app_server, empty):
    """/early answers right after the head and reads the body afterwards. The
    answer must reach the client while most of its body is still unsent,
    also when it has no body piece to carry the head."""
    b = start_batchd(extra=upstream_conf(app_server.port))
    total, first = 2_000_000, 100_000
    with Http(b.port, timeout=5) as c:
        c.send(f"POST /early?empty={int(empty)} HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n".encode()
               + b"x" * first)
        # Nothing more is sent until the answer is in: a late answer times out here.
        r = c.read_response()
        assert (r.status, r.body) == (200, b"" if empty else b'{"early":true}')
        c.send(b"y" * (total - first))
        # The rest of the body was read and dropped: the connection is in step.
        e = c.request("POST", "/echo", body="after")
        assert (e.status, e.json()["length"]) == (200, 5)
        assert c.request("GET", "/echo").status == 200
    assert app_server.stats()["hits"]["POST /early"] == 1
    # The pool holds nothing busy and still serves.
    wait_until(lambda: b.metric("batchd_upstream_connections", state="busy") == 0, what="pool idle")
    assert get(b.port, "/echo").status == 200


def send_body_until_paused(b, c, total):
    """Sends `total` body bytes on c from a thread; returns once batchd has
    stopped reading the client because the app's side is full."""
    sent = {}

    def sender():
        try:
            c.sock.sendall(b"z" * total)
            sent["ok"] = True
        except OSError as e:
            sent["error"] = e

    t = threading.Thread(target=sender)
    t.start()
    wait_until(lambda: b.metric("batchd_upstream_pauses_total", side="client_body") >= 1, what="client paused")
    return t, sent


def test_early_answer_while_client_body_is_paused(start_batchd, app_server):
    """The app answers early without reading the body, after batchd stopped
    reading the client because the app's side was full. Once the answer is
    complete the rest of the body is read and dropped: the client must be
    read again, or it never finishes sending and the connection stalls."""
    b = start_batchd(extra=upstream_conf(app_server.port, "buffer_bytes = 65536"))
    total = 16 * 1024 * 1024
    with Http(b.port, timeout=10) as c:
        c.send(f"POST /early?delay_ms=700 HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n")
        t, sent = send_body_until_paused(b, c, total)
        r = c.read_response()
        assert (r.status, r.json()) == (200, {"early": True})
        t.join(15)
        assert sent == {"ok": True}
        assert c.request("GET", "/echo").status == 200
    wait_until(lambda: b.metric("batchd_upstream_connections", state="busy") == 0, what="pool idle")


def test_timeout_while_client_body_is_paused(start_batchd, app_server):
    """The app neither reads the body nor answers in time: the 504 goes out
    once the body is in, so batchd must read the paused client again."""
    b = start_batchd(extra=upstream_conf(app_server.port, "buffer_bytes = 65536")
                     .replace("timeout_ms = 2000", "timeout_ms = 1000"))
    total = 16 * 1024 * 1024
    with Http(b.port, timeout=10) as c:
        c.send(f"POST /early?delay_ms=3000 HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n")
        t, sent = send_body_until_paused(b, c, total)
        r = c.read_response()
        assert (r.status, r.json()) == (504, {"error": "upstream_timeout"})
        t.join(15)
        assert sent == {"ok": True}
        assert c.request("GET", "/echo").status == 200


def test_no_retry_when_a_new_connection_closes_unanswered(start_batchd, app_server):
    """/hangup reads the request and closes without an answer. The app may
    have acted on it: a POST is sent once and answered 502. So is a GET on
    a brand-new connection, where a close cannot be an idle timeout."""
    b = start_batchd(extra=upstream_conf(app_server.port))
    r = request(b.port, "POST", "/hangup")
    assert (r.status, r.json()) == (502, {"error": "upstream_unavailable"})
    assert app_server.stats()["hits"]["POST /hangup"] == 1
    r = get(b.port, "/hangup")
    assert (r.status, r.json()) == (502, {"error": "upstream_unavailable"})
    assert app_server.stats()["hits"]["GET /hangup"] == 1
    assert b.metric("batchd_upstream_retries_total") == 0
    assert b.metric("batchd_upstream_errors_total", kind="reset") == 2


def test_retry_on_reused_connection_only_when_idempotent(start_batchd, app_server):
    """/arm makes the app drop the next request on its connection unanswered,
    as if it closed the idle connection just as batchd picked it."""
    b = start_batchd(extra=upstream_conf(app_server.port))
    with Http(b.port) as c:
        assert c.request("GET", "/arm").status == 200
        assert c.request("GET", "/echo").status == 200  # sent again on a new connection
        st = app_server.stats()
        assert (st["hits"]["GET /echo"], st["dropped"]) == (2, 1)
        assert b.metric("batchd_upstream_retries_total") == 1
        assert c.request("GET", "/arm").status == 200
        r = c.request("POST", "/echo")
        assert (r.status, r.json()) == (502, {"error": "upstream_unavailable"})
    st = app_server.stats()
    assert (st["hits"]["POST /echo"], st["dropped"]) == (1, 2)
    assert b.metric("batchd_upstream_retries_total") == 1
    assert get(b.port, "/echo").status == 200


@pytest.fixture
def writes(start_batchd, redis, pg):
    """batchd with a sessions resource and an app that writes to PostgreSQL."""
    a = App(conninfo=pg.conninfo())

    def _start(by_ids=BY_IDS, batchd="admin_token = t\n"):
        conf = resource_conf(redis.port, pg, by_ids=by_ids, resource="invalidate = /api/sessions/{id}\n")
        b = start_batchd(batchd=batchd, extra=conf + upstream_conf(a.port))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="backends")
        return b

    yield _start
    a.stop()
    restore_titles(pg)


def restore_titles(pg):
    """The demo data is shared by the session: put back what the writes changed."""
    pg.psql("UPDATE sessions SET title = 'Conversation ' || substr(id, 2) "
            "WHERE title <> 'Conversation ' || substr(id, 2)")


def title(port, sid):
    return get(port, f"/v1/sessions/{sid}").json()["title"]


def test_write_then_read_200_times_with_concurrent_reads(writes, pg):
    b = writes()
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                for i in range(1, 11):
                    assert get(b.port, f"/v1/sessions/s{i}").status == 200
            except Exception as e:  # noqa: BLE001
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            sid = f"s{1 + i % 10}"
            assert request(b.port, "PUT", f"/api/sessions/{sid}?title=v{i}").status == 200
            assert title(b.port, sid) == f"v{i}", f"write {i} not visible"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert b.metric("batchd_invalidations_total") == 200


def test_invalidating_write_with_empty_answer(writes, pg):
    """The parser stops at the answer's head while the invalidation runs. A
    head with no body after it is the whole answer: resuming must finish it
    without waiting for more bytes from the app (none will come)."""
    b = writes()
    assert title(b.port, "s7") == "Conversation 7"  # cached
    with Http(b.port, timeout=5) as c:
        r = c.request("PUT", "/api/sessions/s7?title=empty-answer&empty=1")
        assert (r.status, r.body) == (200, b"")
        assert c.request("GET", "/v1/sessions/s7").json()["title"] == "empty-answer"
    assert b.metric("batchd_invalidations_total") == 1


def test_race_guard_in_process(writes, redis, pg):
    slow = BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.6) WHERE")
    b = writes(by_ids=slow)
    pg.psql("UPDATE sessions SET title = 'old' WHERE id = 's900'")
    result = {}
    t = threading.Thread(target=lambda: result.update(r=get(b.port, "/v1/sessions/s900")))
    t.start()
    wait_until(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
                               "AND state = 'active' AND pid <> pg_backend_pid()") == "1", what="slow fill")
    assert request(b.port, "PUT", "/api/sessions/s900?title=new").status == 200
    t.join()
    assert result["r"].json()["title"] == "old"  # read before the write: it may see the old row
    # ... but the old row must not have been cached.
    cached = redis.client().get("session:s900")
    assert cached is None or json.loads(cached)["title"] == "new"
    assert title(b.port, "s900") == "new"


def test_race_guard_across_processes(start_batchd, redis, pg):
    """Process 1's slow fill overlaps a write invalidated by process 2: the
    tombstone keeps process 1 from caching the old row."""
    a = App(conninfo=pg.conninfo())
    try:
        slow = BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.6) WHERE")
        res = "invalidate = /api/sessions/{id}\n"
        b1 = start_batchd(extra=resource_conf(redis.port, pg, by_ids=slow, resource=res) + upstream_conf(a.port))
        b2 = start_batchd(extra=resource_conf(redis.port, pg, resource=res) + upstream_conf(a.port))
        for b in (b1, b2):
            wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="ready")
        pg.psql("UPDATE sessions SET title = 'old' WHERE id = 's901'")
        t = threading.Thread(target=lambda: get(b1.port, "/v1/sessions/s901"))
        t.start()
        wait_until(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
                                   "AND state = 'active' AND pid <> pg_backend_pid()") == "1", what="slow fill")
        assert request(b2.port, "PUT", "/api/sessions/s901?title=new").status == 200
        assert redis.client().exists("batchd:inval:{session:s901}")
        t.join()
        # The answer can come before the write-back's reply: wait for that
        # reply, so the check below sees what the script did (and the entry,
        # joinable until then, is gone from process 1's table).
        wait_until(lambda: b1.metric("batchd_cache_writebacks_in_flight") == 0, what="the write-back's reply")
        cached = redis.client().get("session:s901")
        assert cached is None, f"process 1 cached the old row: {cached}"
        assert title(b1.port, "s901") == "new"
    finally:
        a.stop()
        restore_titles(pg)


def test_sighup_changes_ttl_without_dropping_connections(start_batchd, redis, pg):
    b = start_batchd(batchd="admin_token = t\n", extra=resource_conf(redis.port, pg))
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="ready")
    held = Http(b.port)
    assert held.request("GET", "/v1/sessions/s950").status == 200
    wait_until(lambda: redis.client().exists("session:s950"), what="write-back")
    assert 250 < redis.client().ttl("session:s950") <= 300
    assert b.metric("batchd_connections_open", listener="main") == 1
    b.conf.write_text(b.conf.read_text().replace("ttl = 300", "ttl = 60"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "msg=\"reloaded\"" in b.log(), what="reload")
    assert held.request("GET", "/v1/sessions/s951").status == 200  # same connection
    wait_until(lambda: redis.client().exists("session:s951"), what="write-back")
    assert redis.client().ttl("session:s951") <= 60
    # A broken file is refused; the running config stays.
    good = b.conf.read_text()
    b.conf.write_text(good + "\n[batchd]\nbogus = 1\n")
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload rejected" in b.log(), what="rejection")
    assert held.request("GET", "/v1/sessions/s952").status == 200
    wait_until(lambda: redis.client().exists("session:s952"), what="write-back")
    assert redis.client().ttl("session:s952") <= 60
    # The one client connection lived through both reloads.
    assert b.metric("batchd_connections_open", listener="main") == 1
    held.close()
    b.conf.write_text(good)


def test_sighup_restart_only_settings_are_kept(start_batchd, redis, pg):
    b = start_batchd(extra=resource_conf(redis.port, pg))
    wait_until(lambda: b.metric("batchd_redis_up") == 1, what="ready")
    b.conf.write_text(b.conf.read_text().replace("pool_size = 2", "pool_size = 3", 1))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "msg=\"reloaded\"" in b.log(), what="reload")
    assert "needs restart" in b.log() and "[redis] pool_size" in b.log()
    assert b.metric("batchd_redis_pool_connections", state="ready") == 2


def test_sigterm_with_slow_proxied_request(start_batchd, app_server):
    b = start_batchd(extra=upstream_conf(app_server.port))
    with Http(b.port) as c:
        c.send("GET /slow?ms=800 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: app_server.stats()["requests"] >= 1, what="request upstream")
        b.send_signal(signal.SIGTERM)
        wait_until(lambda: get(b.admin_port, "/readyz").status == 503, what="readyz 503")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", b.port), timeout=2).close()
        r = c.read_response()
        assert r.status == 200 and r.headers["connection"] == "close"
    assert b.wait(15) == 0
