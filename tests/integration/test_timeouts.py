"""Slowloris and idle guards (daemon/conn.c timers). Each test waits for
batchd to close the socket, an event, and then checks the named reason."""

import time

from harness import Http


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
