"""SIGTERM/SIGINT drain (daemon/app.c, daemon/server.c): stop accepting,
/readyz 503, in-flight requests finish, exit 0."""

import signal
import socket

import pytest

from harness import Http, get, port_open, wait_until


def test_sigterm_lets_slow_request_finish(start_batchd):
    b = start_batchd()
    idle = Http(b.port)
    assert idle.request("GET", "/x").status == 404
    slow = Http(b.port)
    # A request in flight: its body is still arriving when SIGTERM lands.
    slow.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
    wait_until(lambda: b.metric("batchd_connections_open", listener="main") == 2, what="both connections seen")
    b.send_signal(signal.SIGTERM)

    r = wait_until(lambda: (lambda x: x if x.status == 503 else None)(get(b.admin_port, "/readyz")),
                   what="/readyz to turn 503")
    assert r.json() == {"status": "not_ready", "reason": "shutting_down"}
    assert idle.wait_closed(5), "idle keep-alive connection was not closed"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", b.port), timeout=2).close()
    assert b.proc.poll() is None, "exited with a request in flight"

    slow.send("67890")
    r = slow.read_response()
    assert r.status == 404
    assert r.headers["connection"] == "close"
    assert slow.wait_closed(5)
    assert b.wait(15) == 0
    assert "shutting down" in b.log() and "drained" in b.log()


def test_sigint_drains_too(start_batchd):
    b = start_batchd()
    b.send_signal(signal.SIGINT)
    assert b.wait(15) == 0


def sigterm_with_a_stuck_request(start_batchd, grace_ms, body_sent):
    """batchd with one request stuck in its body (100 bytes announced,
    body_sent sent), told to stop once the connection is seen; -> (b, the
    stuck client, kept open by the caller)."""
    b = start_batchd(batchd=f"shutdown_grace_ms = {grace_ms}\nheader_timeout_ms = 60000\n")
    stuck = Http(b.port)
    stuck.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + body_sent)
    wait_until(lambda: b.metric("batchd_connections_open", listener="main") == 1, what="connection seen")
    b.send_signal(signal.SIGTERM)
    return b, stuck


def test_grace_expiry_forces_close(start_batchd):
    b, stuck = sigterm_with_a_stuck_request(start_batchd, 300, "only part")
    assert b.wait(15) == 0
    assert stuck.wait_closed(5)
    assert "shutdown grace expired" in b.log() and "forced_connections=1" in b.log()
    assert "reason=shutdown_forced" in b.log()


def test_second_sigterm_exits_at_once(start_batchd):
    b, stuck = sigterm_with_a_stuck_request(start_batchd, 60000, "")
    wait_until(lambda: "shutting down" in b.log(), what="drain to start")
    b.send_signal(signal.SIGTERM)
    assert b.wait(10) == 0
    assert "second stop signal" in b.log()
    assert not port_open(b.admin_port)


def test_forced_close_is_named_after_a_drain_began(start_batchd):
    """A connection told to close after its in-flight request (the drain)
    but cut off at the grace deadline is logged and counted as forced."""
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    app.listen()
    b = start_batchd(batchd="shutdown_grace_ms = 300\n",
                     extra=f"[upstream]\nurl = http://127.0.0.1:{app.getsockname()[1]}\ntimeout_ms = 60000\n")
    c = Http(b.port)
    c.send("GET /never-answered HTTP/1.1\r\nHost: t\r\n\r\n")
    app.settimeout(10)
    upstream_conn, _ = app.accept()  # the request is with the "app", which never answers
    b.send_signal(signal.SIGTERM)
    assert b.wait(15) == 0
    assert "reason=shutdown_forced" in b.log() and "reason=shutdown " not in b.log()
    upstream_conn.close()
    app.close()
    c.close()
