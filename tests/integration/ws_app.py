"""An app server with a WebSocket endpoint (RFC 6455, standard library only)
and a raw Upgrade protocol, for test_websocket.py. HTTP/1.1 keep-alive for
everything else. Also the frame helpers the tests use on raw sockets.

Run:  python3 ws_app.py PORT

  GET /ws  (Upgrade: websocket)  handshake, then every text or binary message
           is echoed (pings answered, a close answered and the socket closed).
           ?stall_ms=N   read nothing for N ms after the 101 (backpressure)
           ?greet=1      the 101 and a text message "hello" in one write
           ?refuse=S     answer S (426, 400, 200...) with a small body instead
  GET /raw (Upgrade: echo-raw)   101, then the bytes are echoed as they come; at
           the client's EOF the app writes "bye\\n" and closes.
  GET /force101                  101 Upgrade: websocket whatever was asked
  GET /101body                   101 with Content-Length: 5 and 5 bytes
  GET /101wrong                  101 Upgrade: h2c
  GET /seen                      JSON: every request head the app read, in order
                                 ([method, target, [[name, value]...]]), and the bytes
                                 each tunnel received, by tunnel number
  anything else                  200 JSON: method, target, headers
"""

import base64
import hashlib
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SEEN = {"heads": [], "tunnels": []}
LOCK = threading.Lock()


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def encode_frame(opcode, payload, mask=False, fin=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x11\x22\x33\x44"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_exact(f, n):
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def read_frame(f):
    """(fin, opcode, payload) from a file-like reader; masks are undone."""
    b0, b1 = read_exact(f, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(f, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(f, 8))[0]
    key = read_exact(f, 4) if b1 & 0x80 else None
    data = read_exact(f, n)
    if key:
        k = (key * (n // 4 + 1))[:n]
        data = (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""
    return bool(b0 & 0x80), b0 & 0x0F, data


class Handler(socketserver.StreamRequestHandler):
    rbufsize = 65536

    def answer(self, status, body, extra=""):
        self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)

    def handle(self):
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = []
            while True:
                h = self.rfile.readline().decode("latin-1")
                if h in ("\r\n", "\n", ""):
                    break
                k, _, v = h.partition(":")
                headers.append([k.strip(), v.strip()])
            hd = {k.lower(): v for k, v in headers}
            body = read_exact(self.rfile, int(hd["content-length"])) if "content-length" in hd else b""
            with LOCK:
                SEEN["heads"].append([method, target, headers])
            url = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            upgrade = hd.get("upgrade", "").lower()
            if url.path == "/seen":
                with LOCK:
                    out = json.dumps({"heads": SEEN["heads"],
                                      "tunnels": [base64.b64encode(t).decode() for t in SEEN["tunnels"]]})
                self.answer(200, out.encode(), "Content-Type: application/json\r\n")
            elif url.path == "/ws" and upgrade == "websocket" and "refuse" not in q:
                return self.websocket(hd, q)
            elif url.path == "/ws" and "refuse" in q:
                self.answer(int(q["refuse"]), b"no upgrade for you", "Connection: close\r\n")
                return
            elif url.path == "/raw" and upgrade == "echo-raw":
                return self.raw()
            elif url.path == "/force101":
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                                 b"after-101")
                return self.tunnel_record()
            elif url.path == "/101body":
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Content-Length: 5\r\n\r\nhello")
                return self.tunnel_record()
            elif url.path == "/101wrong":
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
                return self.tunnel_record()
            else:
                out = json.dumps({"method": method, "target": target, "headers": headers,
                                  "body": len(body)}).encode()
                self.answer(200, out, "Content-Type: application/json\r\n")

    def tunnel_record(self):
        """Keeps what arrives after a switch, until EOF."""
        with LOCK:
            idx = len(SEEN["tunnels"])
            SEEN["tunnels"].append(b"")
        while True:
            try:
                data = self.rfile.read1(65536)  # bytes already buffered first
            except OSError:
                return
            if not data:
                return
            with LOCK:
                SEEN["tunnels"][idx] += data

    def websocket(self, hd, q):
        head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(hd['sec-websocket-key'])}\r\n\r\n").encode()
        if q.get("greet"):
            head += encode_frame(0x1, b"hello")
        self.wfile.write(head)
        if q.get("stall_ms"):
            time.sleep(int(q["stall_ms"]) / 1000)
        with LOCK:
            idx = len(SEEN["tunnels"])
            SEEN["tunnels"].append(b"")
        parts, first_op = [], None
        while True:
            try:
                fin, op, data = read_frame(self.rfile)
            except (EOFError, OSError, ValueError):
                return
            with LOCK:
                SEEN["tunnels"][idx] += data[:64]
            if op == 0x8:  # close: answer it and go
                self.wfile.write(encode_frame(0x8, data[:2]))
                return
            if op == 0x9:
                self.wfile.write(encode_frame(0xA, data))
                continue
            if op in (0x1, 0x2):
                first_op, parts = op, [data]
            elif op == 0x0:
                parts.append(data)
            if fin and first_op is not None:
                self.wfile.write(encode_frame(first_op, b"".join(parts)))
                first_op, parts = None, []

    def raw(self):
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo-raw\r\nConnection: Upgrade\r\n\r\n")
        with LOCK:
            idx = len(SEEN["tunnels"])
            SEEN["tunnels"].append(b"")
        while True:
            data = self.rfile.read1(65536)  # bytes already buffered first
            if not data:
                break
            with LOCK:
                SEEN["tunnels"][idx] += data
            self.request.sendall(data)
        self.request.sendall(b"bye\n")
        self.request.shutdown(socket.SHUT_WR)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    port = int(sys.argv[1])
    srv = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
