"""Slowloris and idle guards (daemon/http/conn.c timers). Each test waits for
batchd to close the socket, an event, and then checks the named reason."""

import socket
import time

from harness import Http, request, wait_until


def test_header_timeout_closes_partial_request(start_batchd):
    b = start_batchd(batchd="header_timeout_ms = 300\n")
    with Http(b.admin_port) as c:
        t0 = time.monotonic()
        c.send("GET /healthz HTTP/1.1\r\nHo")
        assert c.wait_closed(5)
        assert time.monotonic() - t0 >= 0.25
    assert b.metric("batchd_connections_closed_total", reason="header_timeout") == 1


def test_header_timeout_is_not_reset_by_trickling_bytes(start_batchd):
    b = start_batchd(batchd="header_timeout_ms = 500\n")
    with Http(b.admin_port) as c:
        t0 = time.monotonic()
        closed = False
        for ch in "GET /healthz HTTP/1.1\r\nX-Slow: " + "a" * 100:
            try:
                c.send(ch)
            except OSError:
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - t0 > 3:
                break
        assert closed or c.wait_closed(3)
        assert time.monotonic() - t0 < 2.5, "trickled bytes kept the connection open"
    assert b.metric("batchd_connections_closed_total", reason="header_timeout") == 1


def test_silent_new_connection_times_out(start_batchd):
    b = start_batchd(batchd="header_timeout_ms = 300\n")
    with Http(b.admin_port) as c:
        assert c.wait_closed(5)
    assert b.metric("batchd_connections_closed_total", reason="header_timeout") == 1


def test_idle_keepalive_timeout(start_batchd):
    b = start_batchd(batchd="idle_timeout_ms = 300\n")
    with Http(b.admin_port) as c:
        assert c.request("GET", "/healthz").status == 200
        assert c.wait_closed(5)
    assert b.metric("batchd_connections_closed_total", reason="idle_timeout") == 1


def test_write_timeout_when_the_reader_stops_even_with_pings_queued(start_batchd, redis):
    """An SSE client that stops reading is closed for write_timeout once
    idle_timeout_ms passes with no write finishing, although pings keep
    being queued behind the stuck bytes: queuing is not progress."""
    b = start_batchd(batchd="idle_timeout_ms = 1000\nadmin_token = t\n", extra=f"""
[redis]
url = redis://127.0.0.1:{redis.port}/0
[stream ev]
path = /v1/s/{{id}}/events
key = ev:{{id}}
ping_interval_ms = 100
client_queue_bytes = 33554432
max_event_bytes = 60000
""")
    wait_until(lambda: b.metric("batchd_redis_pubsub_up") == 1 and b.metric("batchd_redis_up") == 1,
               what="redis connections")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", b.port))
    s.sendall(b"GET /v1/s/w1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    wait_until(lambda: b.metric("batchd_sse_channels") == 1, what="subscription")
    # Fill the socket buffers until batchd itself holds a whole event for
    # the client and keeps holding it (an event also sits in batchd's queue
    # for a moment on its way to a socket that still takes bytes).
    def stuck():
        if b.metric("batchd_sse_queued_bytes") < 60000:
            return False
        time.sleep(0.2)
        return b.metric("batchd_sse_queued_bytes") >= 60000
    for _ in range(400):
        r = request(b.port, "POST", "/v1/s/w1/events", {"Authorization": "Bearer t"}, "x" * 60000)
        assert r.status == 201
        if stuck():
            break
    else:
        raise AssertionError("the socket never filled")
    t0 = time.monotonic()
    wait_until(lambda: b.metric("batchd_connections_closed_total", reason="write_timeout") == 1, timeout=10,
               what="write_timeout close")
    assert time.monotonic() - t0 >= 0.5
    assert b.metric("batchd_sse_overflow_disconnects_total") == 0
    s.close()
