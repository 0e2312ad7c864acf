"""HTTP/1.1 connection behaviour (daemon/http/conn.c): keep-alive, pipelining,
framing, HEAD, Expect, half-close and backpressure, against the real daemon."""

import socket

from harness import Http, wait_until


def test_keepalive_reuses_one_connection(start_batchd):
    b = start_batchd()
    accepted = b.metric("batchd_connections_accepted_total", listener="admin")
    with Http(b.admin_port) as c:
        for _ in range(20):
            r = c.request("GET", "/healthz")
            assert r.status == 200
            assert r.json() == {"status": "ok"}
            assert r.headers["content-length"] == str(len(r.body))
            assert r.headers["date"].endswith("GMT")
            assert "connection" not in r.headers
    # 20 requests, one connection (the metrics scrape is the second).
    assert b.metric("batchd_connections_accepted_total", listener="admin") == accepted + 2


def test_pipelined_requests_answered_in_order(start_batchd):
    b = start_batchd(admin=False)
    paths = ["/healthz", "/missing", "/readyz", "/nope/x", "/healthz"] * 4
    with Http(b.port) as c:
        c.send("".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n" for p in paths))
        statuses = [c.read_response().status for _ in paths]
    assert statuses == [200, 404, 200, 404, 200] * 4


def test_300_pipelined_requests_in_one_write(start_batchd):
    b = start_batchd(batchd="max_pipeline = 4\n")
    n = 300
    with Http(b.admin_port) as c:
        c.send("".join(f"GET /healthz?n={i} HTTP/1.1\r\nHost: t\r\n\r\n" for i in range(n)))
        got = [c.read_response().status for _ in range(n)]
    assert got == [200] * n
    # (Handlers here answer at once, so the pipeline never fills; the pause at
    # max_pipeline is exercised with asynchronous reads in test_resource.py.)


def test_head_has_length_but_no_body(start_batchd):
    b = start_batchd()
    with Http(b.admin_port) as c:
        get = c.request("GET", "/healthz")
        head = c.request("HEAD", "/healthz")
        assert head.status == 200
        assert head.headers["content-length"] == str(len(get.body))
        assert head.body == b""
        # No stray body bytes: the next response parses cleanly.
        assert c.request("GET", "/readyz").status == 200


def test_chunked_request_body_is_consumed(start_batchd):
    b = start_batchd()
    with Http(b.admin_port) as c:
        c.send("POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 405
        assert r.headers["allow"] == "GET, HEAD"
        assert r.json() == {"error": "method_not_allowed"}
        assert c.request("GET", "/healthz").status == 200


def test_connection_close_is_honoured(start_batchd):
    b = start_batchd()
    with Http(b.admin_port) as c:
        r = c.request("GET", "/healthz", {"Connection": "close"})
        assert r.status == 200
        assert r.headers["connection"] == "close"
        assert c.wait_closed(5)
    assert b.metric("batchd_connections_closed_total", reason="connection_close") >= 1


def test_http10_keepalive_rules(start_batchd):
    b = start_batchd()
    with Http(b.admin_port) as c:
        c.send("GET /healthz HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert c.wait_closed(5)
    with Http(b.admin_port) as c:
        c.send("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.headers["connection"] == "keep-alive"
        c.send("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.read_response().status == 200


def test_expect_100_continue(start_batchd):
    b = start_batchd()
    with Http(b.admin_port) as c:
        c.send("POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c._read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        c.send("hello")
        assert c.read_response().status == 405


def test_half_close_still_gets_answers(start_batchd):
    b = start_batchd()
    with Http(b.admin_port) as c:
        c.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
        c.sock.shutdown(socket.SHUT_WR)
        assert [c.read_response().status for _ in range(3)] == [200, 200, 200]
        assert c.wait_closed(5)


def test_client_that_does_not_read_stops_being_read(start_batchd):
    # /metrics answers are several KiB; 3000 of them pipelined overflow the
    # socket buffers, so batchd must stop reading rather than queue them all.
    b = start_batchd(batchd="write_queue_bytes = 4096\nmax_pipeline = 1024\n", admin=False)
    n = 3000
    with Http(b.port, timeout=30) as c:
        c.send("".join(f"GET /metrics?i={i} HTTP/1.1\r\nHost: t\r\n\r\n" for i in range(n)))
        wait_until(lambda: b.metric("batchd_client_read_pauses_total", reason="write_queue") >= 1,
                   what="batchd to pause reading a client that does not read")
        # Paused means not answered ahead: far fewer than n were handled.
        assert b.metric("batchd_http_requests_total", method="GET") < n / 2
        # Now read everything: all answers arrive, in order, none lost.
        assert all(c.read_response().status == 200 for _ in range(n))


def test_every_response_has_date_and_length(start_batchd):
    b = start_batchd()
    for path in ["/healthz", "/readyz", "/metrics", "/nope"]:
        with Http(b.admin_port) as c:
            r = c.request("GET", path)
            assert "date" in r.headers and "content-length" in r.headers, path
            assert int(r.headers["content-length"]) == len(r.body)
