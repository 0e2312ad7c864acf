"""tools/lib/chaos_load.py: the asyncio clients behind tools/chaos.

Raw sockets, no HTTP library, so that every failure is seen as what it
was on the wire: a refused connect, an EOF or a reset before any byte of
an answer, an answer cut short, a timeout. Everything here talks to
127.0.0.1 only.

    Http          one keep-alive HTTP/1.1 connection; request() returns a
                  Resp or raises HttpFail(kind)
    SseClient     one SSE stream: the head, then frames as dicts
    publish()     POST an event, retrying with the same Idempotency-Key
    Lat           latency samples and percentiles
"""
import asyncio
import json
import random
import socket
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def sources(n=253):
    """Loopback source addresses 127.0.0.2 ..: more ephemeral ports."""
    return [f"127.0.0.{i}" for i in range(2, 2 + n)]


def percentile(vals, p):
    if not vals:
        return None
    vals = sorted(vals)
    i = min(len(vals) - 1, max(0, int(round(p / 100.0 * len(vals) + 0.5)) - 1))
    return vals[i]


class Lat:
    """Latency samples in seconds; ms figures out."""

    def __init__(self):
        self.v = []

    def add(self, s):
        self.v.append(s)

    def ms(self, p):
        x = percentile(self.v, p)
        return None if x is None else x * 1000.0


class HttpFail(Exception):
    """kind: refused (connect refused), connect (other connect error or
    timeout), eof / reset (closed before any byte of the answer), cut (the
    answer started, then the connection ended), timeout (no whole answer in
    time), bad (not HTTP)."""

    def __init__(self, kind, detail=""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Resp:
    __slots__ = ("status", "headers", "body", "close")

    def __init__(self, status, headers, body, close):
        self.status = status
        self.headers = headers
        self.body = body
        self.close = close


def make_socket(source=None, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


async def open_stream(port, source=None, rcvbuf=None, timeout=5.0):
    """(reader, writer) to 127.0.0.1:port; HttpFail("refused"/"connect")."""
    loop = asyncio.get_running_loop()
    s = make_socket(source, rcvbuf)
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), timeout)
        return await asyncio.open_connection(sock=s, limit=1 << 20)
    except ConnectionRefusedError:
        s.close()
        raise HttpFail("refused")
    except (OSError, asyncio.TimeoutError) as e:
        s.close()
        raise HttpFail("connect", str(e) or type(e).__name__)


def build_request(method, path, headers=None, body=None, host="chaos"):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    h = dict(headers or {})
    if body is not None:
        h.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Stream:
    """What Http and SseClient share: a raw stream to 127.0.0.1 (r, w) and
    the bytes read from it but not used yet (buf). A subclass's _fill()
    reads more into buf and returns False at the end of the stream (or
    raises)."""

    def close(self):
        if self.w is not None:
            try:
                self.w.transport.abort()
            except Exception:
                pass
        self.r = self.w = None

    async def _until(self, sep):
        """The bytes up to `sep` (which is consumed too), or None when the
        stream ends first."""
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(sep)]
                return out
            if not await self._fill():
                return None


class Http(Stream):
    """One client connection, reconnected on demand. request() sends one
    request and reads its whole answer (Content-Length, chunked, or to EOF);
    after an answer with Connection: close, or any failure, the next
    request opens a new connection."""

    def __init__(self, port, source=None):
        self.port = port
        self.source = source
        self.r = self.w = None
        self.buf = bytearray()
        self.got = 0
        self.fresh = False   # the connection was opened for this request

    async def connect(self, timeout=5.0):
        self.r, self.w = await open_stream(self.port, self.source, timeout=timeout)
        self.buf = bytearray()
        self.fresh = True

    async def _fill(self):
        try:
            chunk = await self.r.read(65536)
        except (ConnectionResetError, BrokenPipeError):
            raise HttpFail("reset" if not self.got else "cut")
        except OSError as e:
            raise HttpFail("reset" if not self.got else "cut", str(e))
        if not chunk:
            raise HttpFail("eof" if not self.got else "cut")
        self.got += len(chunk)
        self.buf += chunk
        return True

    async def _n(self, n):
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def _read(self, head_only=False):
        while True:
            head = await self._until(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise HttpFail("bad", lines[0][:80])
            status = int(parts[1])
            headers = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
            if status != 100:
                break
        close = headers.get("connection", "").lower() == "close"
        if head_only or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = await self._n(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await self._until(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self._until(b"\r\n"):
                        pass
                    break
                body += await self._n(size)
                await self._n(2)
            body = bytes(body)
        else:
            try:
                while True:
                    await self._fill()
            except HttpFail:
                pass
            body, self.buf = bytes(self.buf), bytearray()
            close = True
        return Resp(status, headers, body, close)

    async def request(self, method, path, headers=None, body=None, timeout=10.0):
        """Resp, or HttpFail; the connection is dropped after a failure."""
        data = build_request(method, path, headers, body)
        try:
            return await asyncio.wait_for(self._exchange(data, method == "HEAD", timeout), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise HttpFail("timeout")
        except HttpFail:
            self.close()
            raise

    async def _exchange(self, data, head_only, timeout):
        self.fresh = False
        if self.w is not None and (self.r.at_eof() or self.w.is_closing()):
            self.close()      # closed by the server while idle: as HTTP clients do, do not reuse it
        if self.w is None:
            await self.connect(timeout=min(timeout, 5.0))
        self.got = 0
        try:
            self.w.write(data)
        except (ConnectionError, OSError, RuntimeError):
            raise HttpFail("reset")
        resp = await self._read(head_only)
        if resp.close:
            self.close()
        return resp


# --- SSE -----------------------------------------------------------------------------------


class SseClient(Stream):
    """One SSE stream over a raw socket. open() sends the GET and reads the
    answer's head; frame() returns the next frame as a dict (id, event,
    data, retry, comment) or None at EOF."""

    def __init__(self, port, path, last_id=None, source=None, rcvbuf=None):
        self.port, self.path, self.last_id = port, path, last_id
        self.source, self.rcvbuf = source, rcvbuf
        self.r = self.w = None
        self.buf = bytearray()
        self.status = None
        self.headers = {}

    async def open(self, timeout=10.0):
        self.r, self.w = await open_stream(self.port, self.source, self.rcvbuf, timeout=timeout)
        h = {"Accept": "text/event-stream"}
        if self.last_id:
            h["Last-Event-ID"] = self.last_id
        self.w.write(build_request("GET", self.path, h))
        try:
            head = await asyncio.wait_for(self._until(b"\r\n\r\n"), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise HttpFail("timeout")
        if head is None:
            self.close()
            raise HttpFail("eof")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        return self.status

    async def _fill(self):
        try:
            chunk = await self.r.read(65536)
        except OSError:
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def frame(self):
        raw = await self._until(b"\n\n")
        if raw is None:
            return None
        f = {"data": None}
        data = []
        for line in raw.decode("utf-8", "replace").split("\n"):
            if line.startswith(":"):
                f["comment"] = line[1:].strip()
                continue
            k, _, v = line.partition(":")
            if v.startswith(" "):
                v = v[1:]
            if k == "data":
                data.append(v)
            else:
                f[k] = v
        if data:
            f["data"] = "\n".join(data)
        return f


# --- publishing ----------------------------------------------------------------------------


class PubStats:
    def __init__(self):
        self.acked = 0          # publishes answered 201
        self.attempts = 0       # POSTs sent
        self.retries = 0        # POSTs that repeated an earlier one's Idempotency-Key
        self.failed = {}        # failure kind (503, eof, timeout, ...) -> count
        self.gave_up = 0        # events never answered 201 within the deadline
        self.lat = Lat()

    def fail(self, kind):
        self.failed[kind] = self.failed.get(kind, 0) + 1

    def merge(self, o):
        self.acked += o.acked
        self.attempts += o.attempts
        self.retries += o.retries
        self.gave_up += o.gave_up
        for k, v in o.failed.items():
            self.failed[k] = self.failed.get(k, 0) + v
        self.lat.v += o.lat.v


async def publish(http, path, data, token, key=None, stats=None, give_up_s=60.0, timeout=5.0):
    """POSTs one event until it is answered 201, retrying failures (503 with
    its Retry-After, capped at 1 s; connection errors and timeouts after
    100-300 ms) with the same Idempotency-Key. Returns the stream id, or
    None when it gave up."""
    stats = stats or PubStats()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    if key:
        headers["Idempotency-Key"] = key
    body = data.encode() if isinstance(data, str) else data
    end = time.monotonic() + give_up_s
    first = True
    while True:
        stats.attempts += 1
        if not first:
            stats.retries += 1
        first = False
        t = time.monotonic()
        wait = random.uniform(0.1, 0.3)
        try:
            r = await http.request("POST", path, headers, body, timeout=timeout)
            if r.status == 201:
                stats.acked += 1
                stats.lat.add(time.monotonic() - t)
                try:
                    return json.loads(r.body)["id"]
                except (ValueError, KeyError, TypeError):
                    return "?"
            stats.fail(str(r.status))
            if r.status < 500 and r.status != 429:
                stats.gave_up += 1       # a 4xx will not change on retry
                return None
            ra = r.headers.get("retry-after", "")
            if ra.isdigit():
                wait = min(float(ra), 1.0) * random.uniform(0.5, 1.0)
        except HttpFail as e:
            stats.fail(e.kind)
        if time.monotonic() + wait > end:
            stats.gave_up += 1
            return None
        await asyncio.sleep(wait)


# --- a cuttable link to Redis --------------------------------------------------------------------


class RedisLink:
    """A TCP relay between batchd and redis-server that can cut every
    connection the way a network fault would, at the worst moment for a
    write: cut(hold) stops relaying Redis's replies, lets batchd's commands
    through for `hold` seconds (Redis runs them), then resets both sides.
    The commands sent meanwhile ran but batchd never sees their replies.
    With jitter_ms, every piece of a command or a reply waits 0..jitter_ms
    before it is passed on (in order on its connection, not across
    connections), as on a busy network: commands and replies on different
    connections overtake each other."""

    def __init__(self, port, target, jitter_ms=0.0):
        self.port, self.target = port, target
        self.jitter = jitter_ms / 1000.0
        self.server = None
        self.pairs = set()
        self.holding = False
        self.cuts = 0
        self.withheld = 0     # reply bytes dropped by cuts

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    # Hooks a subclass may replace (chaos_near_load.NearLink does).
    def _opened(self, pair):
        """A client connection and its Redis connection are paired."""

    async def _chunk(self, pair, data, replies):
        """What to pass on of a piece read (None: nothing). replies: it
        comes from Redis. A cut withholds replies."""
        if replies and self.holding:
            self.withheld += len(data)
            return None
        return data

    def _passed(self, pair, replies):
        """The piece last returned by _chunk is in the other side's socket."""

    def _closed(self, pair):
        """The pair is gone."""

    async def _handle(self, cr, cw):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.transport.abort()
            return
        pair = (cw, uw)
        self.pairs.add(pair)
        self._opened(pair)

        async def pump(src, dst, replies):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    data = await self._chunk(pair, data, replies)
                    if data is None:
                        continue
                    if self.jitter:
                        await asyncio.sleep(random.uniform(0, self.jitter))
                    dst.write(data)
                    await dst.drain()
                    self._passed(pair, replies)
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                cw.transport.abort()
                uw.transport.abort()
        try:
            await asyncio.gather(pump(cr, uw, False), pump(ur, cw, True))
        finally:
            self.pairs.discard(pair)
            self._closed(pair)

    async def cut(self, hold=0.1):
        self.holding = True
        try:
            await asyncio.sleep(hold)
            for cw, uw in list(self.pairs):
                cw.transport.abort()
                uw.transport.abort()
            self.cuts += 1
        finally:
            self.holding = False

    def close(self):
        if self.server is not None:
            self.server.close()
        for cw, uw in list(self.pairs):
            cw.transport.abort()
            uw.transport.abort()
