"""tools/lib/chaos_near_load.py: the processes and readers of the
near-coherence scenario (chaos_near.py): the changer (versions written
straight into Redis, each acknowledgement timed), the relay (RedisLink
between batchd and Redis, noting when each invalidation reaches batchd,
resetting or stalling on command), and the closed-loop and paced readers.
The changer and the relay run as processes of their own:
`chaos_near_load.py changer ...` / `relay ...` (see chaos_near.py's
docstring for why)."""
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_load import Http, HttpFail, RedisLink, percentile  # noqa: E402
from chaos_near_stats import *  # noqa: E402,F401,F403

def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def changer_main(port, n_ids, rate, seconds, out, seed):
    """SETs version n+1 of a random hot id, one at a time (each
    acknowledged before the next is sent), about `rate` a second, for
    `seconds` or until SIGTERM; then writes "id version ack_time" lines."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rnd = random.Random(seed)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ver = [0] * n_ids
    log_i, log_v, log_t = array("H"), array("I"), array("d")
    errors = 0
    step = 1.0 / rate
    t_end = time.monotonic() + seconds
    due = time.monotonic()
    while not stop and time.monotonic() < t_end:
        i = rnd.randrange(n_ids)
        v = ver[i] + 1
        s.sendall(resp("MSET", key_of(i), doc_of(i, v), marker_of(i, v), "1"))
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                raise SystemExit("changer: Redis closed the connection")
            got += chunk
        t = time.monotonic()
        if got != b"+OK\r\n":
            errors += 1
            continue
        ver[i] = v
        log_i.append(i)
        log_v.append(v)
        log_t.append(t)
        due += step
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.2:
            due = now          # far behind (descheduled): do not make up for it in a burst
    with open(out + ".tmp", "w") as f:
        for i, v, t in zip(log_i, log_v, log_t):
            f.write(f"{i} {v} {t!r}\n")
    os.replace(out + ".tmp", out)
    print(json.dumps(dict(changes=len(log_t), errors=errors)), flush=True)


# --- the relay (a process of its own) ------------------------------------------------------------------


class NearLink(RedisLink):
    """RedisLink that also knows batchd's pub/sub connection (the one that
    sends CLIENT TRACKING or SUBSCRIBE), notes when each changer marker
    (marker_of) on it was written into batchd's socket, and can stall what
    Redis sends on it (freeze) without closing it."""

    def __init__(self, port, target, jitter_ms=0.0):
        super().__init__(port, target, jitter_ms)
        self.frozen_until = 0.0
        self.blind_until = 0.0
        self.pubsub = set()
        self.events = []          # (what, start, end, pub/sub connections)
        self.delivered = []       # (i, v, monotonic time in batchd's socket)
        self.held = []            # markers withheld by a cut: their news is the reset
        self.tails = {}           # per pair: the end of what Redis sent, for a marker cut in two
        self.marks = {}           # per pair: markers in the piece on its way to batchd

    async def cut(self, hold=0.1):
        t0 = time.monotonic()
        await super().cut(hold)
        t1 = time.monotonic()
        self.delivered += [(i, v, t1) for i, v in self.held]
        self.held = []
        self.events.append(("reset", t0, t1, len(self.pubsub)))

    def _opened(self, pair):
        # drain() returns only once the kernel has taken every byte: then
        # what was written is in batchd's socket.
        pair[0].transport.set_write_buffer_limits(high=0)
        self.tails[pair] = b""

    async def _chunk(self, pair, data, replies):
        marks = ()
        if replies and pair in self.pubsub:
            if self.blind_until > time.monotonic():
                data = data.replace(b"\r\nsession:", b"\r\nxession:")
            buf = self.tails[pair] + data
            marks = [(int(m.group(1)), int(m.group(2)), m.end()) for m in MARK_RE.finditer(buf)]
            self.tails[pair] = buf[marks[-1][2] if marks else 0:][-40:]
        if replies:
            if self.holding:
                self.withheld += len(data)
                self.held += [(i, v) for i, v, _ in marks]
                return None
            wait = self.frozen_until - time.monotonic()
            if pair in self.pubsub and wait > 0:
                await asyncio.sleep(wait)
        elif b"TRACKING" in data or b"SUBSCRIBE" in data:
            self.pubsub.add(pair)
        if replies:  # only Redis's side carries markers
            self.marks[pair] = marks
        return data

    def _passed(self, pair, replies):
        marks = self.marks.pop(pair, ()) if replies else ()
        if marks:
            t = time.monotonic()
            self.delivered += [(i, v, t) for i, v, _ in marks]

    def _closed(self, pair):
        self.pubsub.discard(pair)
        self.tails.pop(pair, None)
        self.marks.pop(pair, None)

    def freeze(self, seconds):
        t0 = time.monotonic()
        self.frozen_until = t0 + seconds
        self.events.append(("freeze", t0, t0 + seconds, len(self.pubsub)))

    async def blind(self, seconds):
        """A reset, then for `seconds` every key in what Redis sends on the
        pub/sub connection is renamed out of the tracked prefix (same
        length, so the stream stays well formed): batchd reconnects, sees
        tracking confirmed, and gets invalidations that name nothing it
        holds, as if Redis had silently forgotten its tracking."""
        t0 = time.monotonic()
        self.blind_until = t0 + HOLD_S + seconds
        await super().cut(HOLD_S)
        self.held = []
        self.events.append(("blind", t0, self.blind_until, len(self.pubsub)))


async def relay_async(port, target, status, hold_s, jitter_ms):
    link = NearLink(port, target, jitter_ms)
    await link.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks = set()

    def run(coro):
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    loop.add_signal_handler(signal.SIGUSR1, lambda: run(link.cut(HOLD_S)))
    loop.add_signal_handler(signal.SIGUSR2, lambda: link.freeze(hold_s))
    loop.add_signal_handler(signal.SIGHUP, lambda: run(link.blind(hold_s)))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # How late this process's loop runs (a relay late to pass an
    # invalidation on makes batchd late to apply it).
    lags = array("d")
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.002)
        lags.append(time.monotonic() - t - 0.002)
    await asyncio.gather(*tasks, return_exceptions=True)
    link.close()
    doc = dict(events=link.events, cuts=link.cuts, withheld=link.withheld, delivered=len(link.delivered),
               lag_p99_ms=(percentile(lags, 99) or 0) * 1000, lag_max_ms=max(lags, default=0) * 1000)
    with open(status + ".deliv", "w") as f:
        for i, v, t in link.delivered:
            f.write(f"{i} {v} {t!r}\n")
    Path(status).write_text(json.dumps(doc))


def relay_main(port, target, status, hold_s, jitter_ms):
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(relay_async(port, target, status, hold_s, jitter_ms))


# --- the readers ------------------------------------------------------------------------------------


class TimedHttp(Http):
    """Http whose `sent` is the monotonic time taken just before the
    request is written (the read's start)."""

    sent = 0.0

    async def _exchange(self, data, head_only, timeout):
        self.fresh = False
        if self.w is not None and (self.r.at_eof() or self.w.is_closing()):
            self.close()
        if self.w is None:
            await self.connect(timeout=min(timeout, 5.0))
        self.got = 0
        self.sent = time.monotonic()
        try:
            self.w.write(data)
        except (ConnectionError, OSError, RuntimeError):
            raise HttpFail("reset")
        resp_ = await self._read(head_only)
        if resp_.close:
            self.close()
        return resp_


DOC_RE = re.compile(rb'\{"id":"s(\d+)","v":(\d+),')


def versions(body, ids):
    """[(index, version)] of the documents of an answer for `ids` (in
    order), or None when it is not one document per id."""
    found = DOC_RE.findall(body)
    if len(found) == len(ids) and all(int(s) - 1 == i for (s, _), i in zip(found, ids)):
        return [(i, int(v)) for (_, v), i in zip(found, ids)]
    # Some came from PostgreSQL (no "v"): Redis was out of reach.
    try:
        docs = json.loads(body)
    except ValueError:
        return None
    if len(ids) == 1:
        docs = [docs]
    if not isinstance(docs, list) or len(docs) != len(ids):
        return None
    out = []
    for d, i in zip(docs, ids):
        if not isinstance(d, dict) or d.get("id") != f"s{i + 1}":
            return None
        out.append((i, int(d["v"]) if "v" in d else NO_VERSION))
    return out


async def reader(port, stop, obs, batch, rnd):
    """Closed loop: one keep-alive connection, the next read as soon as
    the last was answered."""
    h = TimedHttp(port)
    while not stop.is_set():
        if not await read_once(h, obs, batch, rnd, batch):
            h.close()
            await asyncio.sleep(0.01)
    h.close()


async def read_once(h, obs, batch, rnd, kind):
    """One read on h; False when h is no longer usable."""
    ids = rnd.sample(range(N_HOT), BATCH) if batch else [rnd.randrange(N_HOT)]
    path = ("/v1/sessions?ids=" + ",".join(f"s{i + 1}" for i in ids)) if batch else f"/v1/sessions/s{ids[0] + 1}"
    try:
        r = await h.request("GET", path, timeout=10)
    except HttpFail as e:
        obs.error(e.kind)
        return False
    if r.status != 200:
        obs.error(str(r.status))
        return h.w is not None
    pairs = versions(r.body, ids)
    if pairs is None:
        obs.error("wrong body")
    else:
        obs.add(h.sent, kind, CACHE_OF.get(r.headers.get("x-cache", ""), 3), pairs)
    return h.w is not None


async def paced(port, stop, obs, rnd, every):
    """Open loop: a read every `every` seconds whatever happens to the
    earlier ones, each on an idle keep-alive connection or a new one. While
    batchd is stopped these keep beginning, so reads that begin late in a
    stop are measured too (the closed-loop readers all began theirs just as
    it stopped). Connections for 1.5 s of reads are opened first, so that
    those begun during a stop are on connections batchd already watches:
    it reads them all in its first loop iteration after it is continued
    (a new connection is read an iteration after it is accepted)."""
    idle, running = [], set()

    async def opened():
        h = TimedHttp(port)
        try:
            await h.connect()
            idle.append(h)
        except HttpFail as e:
            obs.error(e.kind)
    await asyncio.gather(*(opened() for _ in range(int(1.5 / every))))

    async def one(batch):
        h = idle.pop() if idle else TimedHttp(port)
        if await read_once(h, obs, batch, rnd, 2 + batch):
            idle.append(h)
        else:
            h.close()
    due = time.monotonic()
    n = 0
    while not stop.is_set():
        due += every
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if len(running) < 2000:
            t = asyncio.create_task(one(n % 2))
            running.add(t)
            t.add_done_callback(running.discard)
            n += 1
    await asyncio.gather(*running, return_exceptions=True)
    for h in idle:
        h.close()


# --- the scenario -------------------------------------------------------------------------------------


def backlog(pid, port, r):
    """(bytes waiting in the receive buffers of pid's connections to port,
    output buffer bytes Redis holds for its pub/sub clients)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "dst", f"127.0.0.1:{port}"],
                         capture_output=True, text=True).stdout
    recvq = sum(int(ln.split()[0]) for ln in out.splitlines() if f"pid={pid}," in ln)
    try:
        omem = sum(int(c.get("omem", 0)) for c in r.client_list(_type="pubsub"))
    except Exception:
        omem = None
    return recvq, omem


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "changer":
        changer_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6],
                     int(sys.argv[7]))
    elif what == "relay":
        relay_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6]))
    else:
        sys.exit(__doc__)
