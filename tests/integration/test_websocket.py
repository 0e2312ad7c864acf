"""WebSocket and Upgrade pass-through (daemon/proxy/tunnel.c) against a real
app server with a WebSocket endpoint written here (ws_app.py) and the
websocket-client library (python3-websocket) as the browser would be:
the handshake, echoes both ways, backpressure on a large message, early
bytes, refusals, the limits, shutdown, and the requests that must never
become a tunnel."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import free_port, get, wait_until
from ws_app import encode_frame, read_frame

websocket = pytest.importorskip("websocket", reason="python3-websocket is missing")

APP = Path(__file__).parent / "ws_app.py"


class App:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["/usr/bin/python3", str(APP), str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def seen(self):
        return get(self.port, "/seen").json()

    def paths(self):
        return [t for _, t, _ in self.seen()["heads"]]

    def head_for(self, path):
        for m, t, h in self.seen()["heads"]:
            if t.startswith(path):
                return m, {k.lower(): v for k, v in h}
        raise AssertionError(f"the app never saw {path}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def app():
    a = App()
    yield a
    a.stop()


def conf(port, extra=""):
    return f"[upstream]\nurl = http://127.0.0.1:{port}\npool_size = 4\ntimeout_ms = 5000\n{extra}\n"


def ws_connect(b, path="/ws", **kw):
    return websocket.create_connection(f"ws://127.0.0.1:{b.port}{path}", timeout=20, **kw)


class Raw:
    """A client socket that reads heads and bytes as batchd sends them."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.s.makefile("rb")

    def head(self):
        status = self.f.readline().decode()
        headers = {}
        while True:
            line = self.f.readline().decode()
            if line in ("\r\n", ""):
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(status.split()[1]), headers

    def answer(self):
        status, h = self.head()
        body = self.f.read(int(h.get("content-length", 0)))
        return status, h, body

    def eof(self):
        return self.f.read(1) == b""

    def close(self):
        self.f.close()
        self.s.close()


def upgrade_request(path, proto="websocket", extra=""):
    key = "" if proto != "websocket" else "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    return (f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Upgrade\r\nUpgrade: {proto}\r\n{key}"
            f"{extra}\r\n").encode()


def test_echo_both_ways_and_a_large_message_with_backpressure(start_batchd, app):
    b = start_batchd(extra=conf(app.port, "tunnel_buffer_bytes = 65536"))
    # The app reads nothing for 1 s after the 101, so the 8 MB fill the
    # queue toward it; the client then reads nothing for 1 s, so the echo
    # fills the queue toward the client.
    ws = ws_connect(b, "/ws?stall_ms=1000")
    assert b.metric("batchd_tunnels_active") == 1
    big = os.urandom(8 * 1024 * 1024)
    ws.send_binary(big)
    time.sleep(1.0)
    op, data = ws.recv_data()
    assert op == websocket.ABNF.OPCODE_BINARY and data == big
    ws.send("héllo ✓")
    assert ws.recv() == "héllo ✓"
    ws.send_binary(b"\x00\x01\xff")
    assert ws.recv() == b"\x00\x01\xff"
    assert b.metric("batchd_tunnel_pauses_total", side="client") > 0
    assert b.metric("batchd_tunnel_pauses_total", side="app") > 0
    assert b.metric("batchd_tunnel_bytes_total", direction="client_to_app") >= len(big) + 14
    assert b.metric("batchd_tunnel_bytes_total", direction="app_to_client") >= len(big) + 14
    assert b.metric("batchd_tunnels_total", result="switched") == 1
    # The upgrade went on a connection of its own, outside the pool.
    assert b.metric("batchd_upstream_connections", state="upgrade") == 1
    ws.close()
    wait_until(lambda: b.metric("batchd_tunnels_active") == 0, what="the tunnel to close")
    assert (b.metric("batchd_tunnel_closes_total", reason="client_closed") +
            b.metric("batchd_tunnel_closes_total", reason="app_closed")) == 1
    assert b.metric("batchd_connections_closed_total", reason="tunnel_closed") == 1
    assert b.metric("batchd_upstream_connections", state="upgrade") == 0


def test_bytes_sent_before_the_101_arrive_and_headers_are_forwarded(start_batchd, app):
    b = start_batchd(extra=conf(app.port))
    c = Raw(b.port)
    # The first frame rides in the same write as the handshake request.
    c.s.sendall(upgrade_request("/ws?greet=1") + encode_frame(0x1, b"early bird", mask=True))
    status, h = c.head()
    assert status == 101 and h["upgrade"] == "websocket" and h["connection"] == "Upgrade"
    assert "sec-websocket-accept" in h and "content-length" not in h and "transfer-encoding" not in h
    # The app's greeting came in the same write as its 101, then the echo.
    assert read_frame(c.f) == (True, 0x1, b"hello")
    assert read_frame(c.f) == (True, 0x1, b"early bird")
    c.close()
    m, hd = app.head_for("/ws?greet=1")
    assert m == "GET" and hd["connection"] == "Upgrade" and hd["upgrade"] == "websocket"
    assert hd["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ==" and hd["x-forwarded-for"] == "127.0.0.1"
    assert hd["via"] == "1.1 batchd" and "keep-alive" not in hd


def test_raw_protocol_half_close_and_no_pipelining_after_the_upgrade(start_batchd, app):
    b = start_batchd(extra=conf(app.port))
    c = Raw(b.port)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    c.s.sendall(upgrade_request("/raw", "echo-raw") + smuggled)
    status, h = c.head()
    assert status == 101 and h["upgrade"] == "echo-raw"
    # What followed the upgrade request is the tunnel's, not a request.
    assert c.f.read(len(smuggled)) == smuggled
    c.s.sendall(b"more bytes")
    assert c.f.read(10) == b"more bytes"
    c.s.shutdown(socket.SHUT_WR)  # the app still answers after our FIN
    assert c.f.read() == b"bye\n"
    c.close()
    assert "/smuggled" not in app.paths()
    wait_until(lambda: b.metric("batchd_tunnels_active") == 0, what="the tunnel to close")
    assert b.metric("batchd_tunnel_closes_total", reason="client_closed") == 1


@pytest.mark.parametrize("refuse", [426, 200])
def test_a_refused_upgrade_is_relayed_and_the_connection_closes(start_batchd, app, refuse):
    b = start_batchd(extra=conf(app.port))
    c = Raw(b.port)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    c.s.sendall(upgrade_request(f"/ws?refuse={refuse}") + smuggled)
    status, h, body = c.answer()
    assert (status, body) == (refuse, b"no upgrade for you")
    assert h["connection"] == "close" and "upgrade" not in h
    assert c.eof()  # the bytes after the refused upgrade were never read as a request
    c.close()
    assert "/smuggled" not in app.paths()
    assert b.metric("batchd_tunnels_total", result="refused") == 1
    assert b.metric("batchd_connections_closed_total", reason="upgrade_refused") == 1
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        ws_connect(b, "/ws?refuse=400")
    assert e.value.status_code == 400
    assert b.metric("batchd_tunnels_active") == 0


def test_idle_tunnel_is_closed_with_its_reason(start_batchd, app):
    b = start_batchd(extra=conf(app.port, "tunnel_idle_timeout_ms = 400"))
    ws = ws_connect(b)
    for i in range(8):  # traffic every 100 ms keeps it open past the timeout
        ws.send(f"m{i}")
        assert ws.recv() == f"m{i}"
        time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
    assert 0.15 < time.monotonic() - t0 < 3  # 400 ms from the last echo, 100 ms ago
    assert b.metric("batchd_tunnel_closes_total", reason="idle_timeout") == 1
    assert b.metric("batchd_tunnels_active") == 0


def test_max_tunnels_and_the_pool_stays_free(start_batchd, app):
    b = start_batchd(extra=conf(app.port, "max_tunnels = 1").replace("pool_size = 4", "pool_size = 1"))
    ws = ws_connect(b)
    c = Raw(b.port)
    c.s.sendall(upgrade_request("/ws"))
    status, h, body = c.answer()
    assert (status, json.loads(body)) == (503, {"error": "too_many_tunnels"})
    assert h["retry-after"] == "1" and h["connection"] == "close"
    c.close()
    assert b.metric("batchd_tunnels_total", result="rejected") == 1
    # A tunnel holds no pool connection: plain requests still go through.
    for _ in range(3):
        assert get(b.port, "/plain").status == 200
    ws.send("still here")
    assert ws.recv() == "still here"
    ws.close()
    wait_until(lambda: b.metric("batchd_tunnels_active") == 0, what="the tunnel to close")
    ws = ws_connect(b)  # the place is free again
    ws.close()


def test_websocket_off_strips_the_upgrade(start_batchd, app):
    b = start_batchd(extra=conf(app.port, "websocket = no"))
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        ws_connect(b)
    assert e.value.status_code == 200
    _, hd = app.head_for("/ws")
    assert "upgrade" not in hd and "connection" not in hd
    assert b.metric("batchd_tunnels_total", result="stripped") == 1
    assert b.metric("batchd_tunnels_total", result="switched") == 0


def test_reload_turns_websocket_off_without_touching_an_open_tunnel(start_batchd, app):
    b = start_batchd(extra=conf(app.port, "max_tunnels = 4"))
    open_ws = ws_connect(b)
    open_ws.send("before")
    assert open_ws.recv() == "before"
    b.conf.write_text(b.conf.read_text().replace("max_tunnels = 4", "max_tunnels = 4\nwebsocket = no"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "msg=\"reloaded\"" in b.log(), what="the reload")

    def stripped():
        try:
            ws_connect(b).close()
            return False
        except websocket.WebSocketBadStatusException as e:
            return e.status_code == 200
    wait_until(stripped, what="new upgrades to be stripped")
    # The tunnel made before the reload goes on under the settings it started with.
    open_ws.send("after")
    assert open_ws.recv() == "after"
    open_ws.close()
    assert b.metric("batchd_tunnels_total", result="switched") == 1
    assert b.metric("batchd_tunnels_total", result="stripped") >= 1


def test_requests_that_must_not_become_tunnels(start_batchd, app):
    b = start_batchd(extra=conf(app.port))
    up = "Connection: Upgrade\r\nUpgrade: websocket\r\n"
    stripped = [
        # A body: its bytes would be both body and tunnel.
        f"POST /h1 HTTP/1.1\r\nHost: t\r\n{up}Content-Length: 5\r\n\r\nhello",
        f"GET /h2 HTTP/1.1\r\nHost: t\r\n{up}Content-Length: 0\r\n\r\n",
        f"GET /h3 HTTP/1.1\r\nHost: t\r\n{up}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        # HTTP/2 over cleartext: never.
        "GET /h4 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        "HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        f"PUT /h5 HTTP/1.1\r\nHost: t\r\n{up}\r\n",
        f"GET /h6 HTTP/1.0\r\n{up}\r\n",
    ]
    c = Raw(b.port)
    for i, req in enumerate(stripped):
        c.s.sendall(req.encode())
        status, h, body = c.answer()
        assert status == 200 and "upgrade" not in h, req
        if i == len(stripped) - 1:  # HTTP/1.0 without keep-alive: the last one
            break
    c.close()
    for i in range(1, 7):
        _, hd = app.head_for(f"/h{i}")
        assert not {"upgrade", "connection", "http2-settings"} & set(hd), (i, hd)
    assert b.metric("batchd_tunnels_total", result="stripped") == 6
    # Ambiguous framing is refused before anything else.
    c = Raw(b.port)
    c.s.sendall(f"GET /h7 HTTP/1.1\r\nHost: t\r\n{up}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    assert c.answer()[0] == 400 and c.eof()
    c.close()
    # A 101 the request did not ask for, a 101 with a body, a 101 to a
    # protocol not offered: 502, the app's connection dropped, nothing of
    # what it sent after the 101 reaches the client.
    c = Raw(b.port)
    c.s.sendall(b"GET /force101 HTTP/1.1\r\nHost: t\r\n\r\n")
    status, h, body = c.answer()
    assert (status, json.loads(body)) == (502, {"error": "bad_upstream_response"})
    c.s.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")  # still plain HTTP, fresh app connection
    status, h, body = c.answer()
    assert status == 200 and json.loads(body)["target"] == "/after"
    c.close()
    for path in ("/101body", "/101wrong"):
        c = Raw(b.port)
        c.s.sendall(upgrade_request(path) + b"tunnel bytes?")
        status, h, body = c.answer()
        assert (status, json.loads(body)) == (502, {"error": "bad_upstream_response"}), path
        assert h["connection"] == "close" and c.eof()
        c.close()
    assert b.metric("batchd_tunnels_total", result="failed") == 2
    assert b.metric("batchd_tunnels_total", result="switched") == 0
    # The app's side of each bogus switch was closed, and no client byte got there.
    wait_until(lambda: all(t == "" for t in app.seen()["tunnels"]) and len(app.seen()["tunnels"]) == 3,
               what="the app's bogus switches to end empty")


def test_sigterm_closes_open_tunnels_at_the_grace_deadline(start_batchd, app):
    b = start_batchd("shutdown_grace_ms = 1500\n", extra=conf(app.port))
    ws = ws_connect(b)
    ws.send("before")
    assert ws.recv() == "before"
    t0 = time.monotonic()
    b.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ws.send("during the drain")  # the tunnel works until the deadline
    assert ws.recv() == "during the drain"
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        ws.recv()
    assert 1.2 < time.monotonic() - t0 < 5
    assert b.wait(10) == 0
    log = b.log()
    assert "tunnel closed" in log and "reason=shutdown" in log
