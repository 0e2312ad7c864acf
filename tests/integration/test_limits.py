"""Request limits and request-smuggling guards (proto/http.c, daemon/http/conn.c).
Each limit answers with its status and a short JSON error, counts the close
reason in /metrics, and closes the connection."""

import pytest

from harness import Http


def reject(port, raw):
    """Sends raw bytes; returns (response, closed_afterwards)."""
    with Http(port) as c:
        c.send(raw)
        r = c.read_response()
        return r, c.wait_closed(5)


@pytest.fixture
def b(start_batchd):
    return start_batchd(batchd="max_body_bytes = 1000\nmax_uri_bytes = 2048\n")


def test_headers_too_large_431(b):
    r, closed = reject(b.admin_port, "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + "a" * 20000 + "\r\n\r\n")
    assert (r.status, r.json(), closed) == (431, {"error": "headers_too_large"}, True)
    assert b.metric("batchd_connections_closed_total", reason="headers_too_large") == 1


def test_too_many_headers_431(b):
    hdrs = "".join(f"X-H{i}: v\r\n" for i in range(150))
    r, closed = reject(b.admin_port, "GET /healthz HTTP/1.1\r\nHost: t\r\n" + hdrs + "\r\n")
    assert (r.status, closed) == (431, True)


def test_uri_too_long_414(b):
    r, closed = reject(b.admin_port, "GET /healthz?" + "q" * 5000 + " HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (r.status, r.json(), closed) == (414, {"error": "uri_too_long"}, True)
    assert b.metric("batchd_connections_closed_total", reason="uri_too_long") == 1


def test_body_too_large_by_length_413_before_body(b):
    # Rejected on the head alone: the 2 MB body is never sent.
    r, closed = reject(b.admin_port, "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
    assert (r.status, r.json(), closed) == (413, {"error": "body_too_large"}, True)


def test_body_too_large_chunked_413(b):
    chunk = "400\r\n" + "x" * 1024 + "\r\n"
    r, closed = reject(b.admin_port, "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3)
    assert (r.status, closed) == (413, True)
    assert b.metric("batchd_connections_closed_total", reason="body_too_large") == 1


@pytest.mark.parametrize("raw", [
    "GARBAGE\r\n\r\n",
    "GET /healthz HTTP/1.1\r\n\r\n",                          # no Host
    "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",    # two Hosts
    "GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",           # a TLS ClientHello
])
def test_malformed_400(b, raw):
    r, closed = reject(b.admin_port, raw)
    assert (r.status, r.json(), closed) == (400, {"error": "bad_request"}, True)


@pytest.mark.parametrize("framing", [
    "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
    "Content-Length: 6\r\nContent-Length: 6\r\n",
    "Content-Length: 6\r\nContent-Length: 7\r\n",
    "Transfer-Encoding: gzip\r\n",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
])
def test_smuggling_is_refused(b, framing):
    # If batchd misread the framing, the smuggled GET would get an answer.
    smuggled = "0\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"
    with Http(b.admin_port) as c:
        c.send("POST /healthz HTTP/1.1\r\nHost: t\r\n" + framing + "\r\n" + smuggled)
        r = c.read_response()
        assert r.status == 400
        assert r.json()["error"] in ("ambiguous_length", "bad_request")
        assert c.wait_closed(5)
        assert c.buf == b"", "a second response leaked out"


def test_http2_prior_knowledge_refused(b):
    r, closed = reject(b.admin_port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert r.status in (400, 505) and closed


def test_max_connections_503(start_batchd):
    b = start_batchd(batchd="max_connections = 3\n")
    held = [Http(b.port) for _ in range(3)]
    try:
        for c in held:  # all three are established and served
            assert c.request("GET", "/nope").status == 404
        with Http(b.port) as extra:
            r = extra.read_response()
            assert r.status == 503
            assert r.json() == {"error": "too_many_connections"}
            assert r.headers["retry-after"] == "1"
            assert extra.wait_closed(5)
        held.pop().close()
        # A slot is free again once batchd has seen the close.
        from harness import wait_until
        wait_until(lambda: b.metric("batchd_connections_open", listener="main") == 2, what="close seen")
        with Http(b.port) as again:
            assert again.request("GET", "/nope").status == 404
    finally:
        for c in held:
            c.close()
    assert b.metric("batchd_connections_rejected_total", listener="main") == 1
    assert b.metric("batchd_connections_closed_total", reason="too_many_connections") == 1
