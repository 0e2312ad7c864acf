"""A raw TCP app server for the smuggling tests (standard library only).

It runs in the test's process, one thread per connection, and keeps EVERY
byte batchd sent on each connection (`received`: one bytearray per
connection, appended as bytes arrive), so a test can tell exactly what went
over the wire, not what a lenient server made of it.

Each connection's bytes go through a strict HTTP/1.1 request parser
(RFC 9112, nothing lenient): CRLF line ends only, no obs-fold, no control
characters in field values, field names that are tokens, exactly one Host,
at most one framing header (one Content-Length of digits, or one
Transfer-Encoding that is exactly "chunked"), chunked bodies with their CRLFs
where they belong. A parse error is recorded on the connection, which is
then answered no more (its write side is shut, so batchd sees the app end the
connection) while its bytes are still recorded.

Two ways to answer each parsed request:

  * parse mode (no script): 200 with Content-Length and a JSON body naming
    the connection, the method, the target, the header fields and the body;
  * script mode: script[target] (or script(msg, conn) when script is a
    callable) gives the exact bytes to write: bytes (one write), a list of
    bytes (one write each), HOLD (keep the connection open, answer nothing),
    CLOSE (close without answering) or None (the parse-mode answer).
"""

import json
import re
import socket
import threading
import time

HOLD = object()
CLOSE = object()

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class StrictError(Exception):
    """The bytes are not a valid HTTP/1.1 message."""


class Incomplete(Exception):
    """More bytes are needed."""


def read_line(buf, pos):
    """The line starting at pos without its CRLF, and where the next starts.
    A bare CR or a bare LF is an error (RFC 9112 2.2 lets a recipient take
    a bare LF; this one does not: batchd writes CRLF)."""
    j = buf.find(b"\n", pos)
    if j < 0:
        cr = buf.find(b"\r", pos)
        if cr >= 0 and cr != len(buf) - 1:
            raise StrictError(f"bare CR at byte {cr}")
        raise Incomplete()
    line = bytes(buf[pos:j])
    if not line.endswith(b"\r"):
        raise StrictError(f"bare LF at byte {j}: {bytes(buf[max(pos, j - 40):j + 1])!r}")
    line = line[:-1]
    if b"\r" in line:
        raise StrictError(f"bare CR in line {line[:80]!r}")
    return line, j + 1


def is_token(b):
    return len(b) > 0 and all(c in TCHAR for c in b)


def check_field_value(name, value):
    for c in value:
        if (c < 0x20 and c != 0x09) or c == 0x7F:
            raise StrictError(f"control byte 0x{c:02x} in the value of {name!r}")


def read_fields(buf, pos):
    """Field lines up to the empty line: ([(name, value)], next position)."""
    fields = []
    while True:
        line, pos = read_line(buf, pos)
        if line == b"":
            return fields, pos
        if line[:1] in (b" ", b"\t"):
            raise StrictError(f"line starts with whitespace (obs-fold): {line[:80]!r}")
        name, sep, value = line.partition(b":")
        if not sep:
            raise StrictError(f"field line without a colon: {line[:80]!r}")
        if not is_token(name):
            raise StrictError(f"field name is not a token: {name[:80]!r}")
        value = value.strip(b" \t")
        check_field_value(name, value)
        fields.append((name.decode("latin-1"), value.decode("latin-1")))


def field_values(fields, name):
    return [v for n, v in fields if n.lower() == name]


CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"((?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"(?:[^\"\\\r\n]|\\[^\r\n])*\"))?)*)")


def read_chunked(buf, pos):
    """A chunked body from pos: (body, trailer fields, [chunk extensions], next position)."""
    body = bytearray()
    exts = []
    while True:
        line, pos = read_line(buf, pos)
        m = CHUNK_LINE.fullmatch(line)
        if not m:
            raise StrictError(f"bad chunk-size line: {line[:80]!r}")
        size = int(m.group(1), 16)
        if m.group(2):
            exts.append(m.group(2).decode("latin-1"))
        if size == 0:
            trailers, pos = read_fields(buf, pos)
            return bytes(body), trailers, exts, pos
        if len(buf) < pos + size + 2:
            raise Incomplete()
        body += buf[pos:pos + size]
        if buf[pos + size:pos + size + 2] != b"\r\n":
            raise StrictError(f"chunk data not followed by CRLF: {bytes(buf[pos + size:pos + size + 2])!r}")
        pos += size + 2


def read_framed_body(buf, pos, fields, what):
    """The body framed by `fields` (a request's, or a response's that may
    have one): (body, framing, trailers, exts, next position). framing is
    "length", "chunked" or None."""
    cl = field_values(fields, "content-length")
    te = field_values(fields, "transfer-encoding")
    if cl and te:
        raise StrictError(f"{what} has both Content-Length and Transfer-Encoding")
    if len(cl) > 1:
        raise StrictError(f"{what} has {len(cl)} Content-Length fields: {cl}")
    if len(te) > 1:
        raise StrictError(f"{what} has {len(te)} Transfer-Encoding fields: {te}")
    if te:
        if te[0].lower() != "chunked":
            raise StrictError(f"{what} has Transfer-Encoding {te[0]!r} (only 'chunked' is written by batchd)")
        body, trailers, exts, pos = read_chunked(buf, pos)
        return body, "chunked", trailers, exts, pos
    if cl:
        if not re.fullmatch(r"[0-9]{1,15}", cl[0]):
            raise StrictError(f"{what} has Content-Length {cl[0]!r}")
        n = int(cl[0])
        if len(buf) < pos + n:
            raise Incomplete()
        return bytes(buf[pos:pos + n]), "length", [], [], pos + n
    return b"", None, [], [], pos


class Message:
    """One request as the upstream parsed it."""

    def __init__(self, conn, seq, method, target, version, headers, body, framing, trailers, exts, raw):
        self.conn = conn            # index of the upstream connection
        self.seq = seq              # arrival order over all connections
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers      # [(name, value)] as received
        self.body = body
        self.framing = framing      # "length", "chunked" or None
        self.trailers = trailers
        self.chunk_exts = exts
        self.raw = raw              # the message's exact bytes

    def values(self, name):
        return field_values(self.headers, name.lower())

    def __repr__(self):
        return (f"<Message conn={self.conn} {self.method} {self.target} framing={self.framing} "
                f"body={self.body[:60]!r} headers={self.headers}>")


REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/1\.[01])")


def parse_request(buf, pos, conn=0, seq=0):
    """One request from buf[pos:]: (Message, next position). Raises
    Incomplete or StrictError."""
    line, p = read_line(buf, pos)
    m = REQUEST_LINE.fullmatch(line)
    if not m:
        raise StrictError(f"bad request line: {line[:120]!r}")
    method, target, version = (g.decode("latin-1") for g in m.groups())
    fields, p = read_fields(buf, p)
    hosts = field_values(fields, "host")
    if len(hosts) != 1:
        raise StrictError(f"{method} {target}: {len(hosts)} Host fields (HTTP/1.1 needs exactly one)")
    body, framing, trailers, exts, p = read_framed_body(buf, p, fields, f"{method} {target}")
    return Message(conn, seq, method, target, version, fields, body, framing, trailers, exts,
                   bytes(buf[pos:p])), p


def parse_answer(msg):
    body = json.dumps({"conn": msg.conn, "seq": msg.seq, "method": msg.method, "path": msg.target,
                       "headers": msg.headers, "body": msg.body.decode("latin-1")}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


class Conn:
    def __init__(self, index, sock):
        self.index = index
        self.sock = sock
        self.raw = bytearray()      # every byte received, in order
        self.parsed_upto = 0        # bytes consumed by complete messages
        self.messages = []
        self.error = None           # the strict parser's complaint, if any
        self.eof = False            # batchd closed (or reset) its side
        self.held = False
        self.answers_off = False

    def __repr__(self):
        return (f"<Conn {self.index} bytes={len(self.raw)} messages={[m.target for m in self.messages]} "
                f"error={self.error!r} eof={self.eof} held={self.held}>")


class RawUpstream:
    """Listens on 127.0.0.1:<free port>; see the module docstring."""

    def __init__(self, script=None):
        self.script = script
        self.lock = threading.Condition()
        self.conns = []
        self.seq = 0
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.closing = False
        self.threads = []
        t = threading.Thread(target=self._accept, name="raw-upstream-accept", daemon=True)
        t.start()
        self.threads.append(t)

    # --- what was received -------------------------------------------------

    @property
    def received(self):
        """One bytearray per connection, in accept order."""
        with self.lock:
            return [c.raw for c in self.conns]

    def messages(self):
        """Every complete message, in arrival order."""
        with self.lock:
            return sorted((m for c in self.conns for m in c.messages), key=lambda m: m.seq)

    def targets(self):
        return [m.target for m in self.messages()]

    def wait(self, pred, timeout=5.0, what="upstream condition"):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {self.conns}")
                self.lock.wait(left)

    def wait_all_closed(self, timeout=5.0):
        """Until batchd has closed every connection (each one's bytes are all in)."""
        self.wait(lambda: all(c.eof for c in self.conns), timeout, "batchd to close every upstream connection")

    # --- serving ----------------------------------------------------------------

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                if self.closing:
                    s.close()
                    return
                c = Conn(len(self.conns), s)
                self.conns.append(c)
                self.lock.notify_all()
            t = threading.Thread(target=self._serve, args=(c,), name=f"raw-upstream-{c.index}", daemon=True)
            t.start()
            self.threads.append(t)

    def _answer_for(self, msg, c):
        if self.script is None:
            return None
        if callable(self.script):
            return self.script(msg, c)
        return self.script.get(msg.target)

    def _send(self, c, data):
        try:
            c.sock.sendall(data)
        except OSError:
            pass

    def _serve(self, c):
        s = c.sock
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            to_send = []
            with self.lock:
                if not data:
                    c.eof = True
                    self.lock.notify_all()
                    break
                c.raw += data
                while c.error is None:
                    try:
                        msg, end = parse_request(c.raw, c.parsed_upto, c.index, self.seq)
                    except Incomplete:
                        break
                    except StrictError as e:
                        c.error = str(e)
                        to_send.append(("shut", None))
                        break
                    self.seq += 1
                    c.parsed_upto = end
                    c.messages.append(msg)
                    if c.held or c.answers_off:
                        continue
                    ans = self._answer_for(msg, c)
                    if ans is None:
                        to_send.append(("data", parse_answer(msg)))
                    elif ans is HOLD:
                        c.held = True
                    elif ans is CLOSE:
                        c.answers_off = True
                        to_send.append(("close", None))
                    elif isinstance(ans, (bytes, bytearray)):
                        to_send.append(("data", bytes(ans)))
                    else:
                        to_send.extend(("data", bytes(a)) for a in ans)
                self.lock.notify_all()
            for kind, payload in to_send:
                if kind == "data":
                    self._send(c, payload)
                elif kind == "shut":
                    try:
                        s.shutdown(socket.SHUT_WR)  # no answer: batchd sees the app end it
                    except OSError:
                        pass
                elif kind == "close":
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        try:
            s.close()
        except OSError:
            pass

    def stop(self):
        with self.lock:
            self.closing = True
            conns = list(self.conns)
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


if __name__ == "__main__":  # for poking at by hand: prints the port, answers in parse mode
    up = RawUpstream()
    print(up.port, flush=True)
    try:
        while True:
            time.sleep(1)
            for i, raw in enumerate(up.received):
                print(i, bytes(raw)[-200:])
    except KeyboardInterrupt:
        up.stop()
