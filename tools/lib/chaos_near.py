"""tools/lib/chaos_near.py: the near-cache coherence scenario of tools/chaos.

    near_coherence   batchd with the near cache on (local_cache_bytes) for
                     the sessions resource; a changer SETs new versions of
                     200 hot documents straight into Redis (behind batchd's
                     back) while readers read them through batchd; faults:
                     CLIENT KILL TYPE pubsub x3, a reset of every Redis
                     connection (RedisLink) x2, SIGSTOP/SIGCONT of batchd
                     for 1 s x1

What is measured is staleness. A read that began at S (its request
written to the socket) and returned version v of an id is stale when a
newer version had been acknowledged by Redis (to the changer) at A < S:
by S - A from the acknowledgement, and by S - max(A, D) beyond delivery,
D being when that version's invalidation had been written into batchd's
socket. The changer writes each version with one `MSET session:<id> <doc>
session:~<i>.<v> 1`: the second key is under the tracked prefix too, so
the invalidation message that names the document also names the version,
and the relay notes when it passed it on. Without the relay (no fault
that needs it) D is taken as A: Redis writes the invalidation with the
reply. All times are CLOCK_MONOTONIC, taken in different processes: A
after the changer has read Redis's reply, S just before a reader writes
its request, D after the relay's write has drained into the kernel; each
error makes staleness smaller, never larger, so a read flagged stale
really was served something older than what batchd had been told of
before it was asked. The promise is about staleness beyond delivery.

The changer and the relay (RedisLink, between batchd and Redis, to reset
every connection) run as processes of their own (this file, with
`changer` / `relay` as first argument), so that neither the readers'
load nor the driver's pauses delay an acknowledgement's time stamp or an
invalidation on its way to batchd. Besides the closed-loop readers (the
next read when the last is answered), a paced reader begins a read every
5 ms whatever became of the earlier ones, so that reads also begin while
batchd is stopped.

Knobs, for looking into a result (a normal run sets none):
CHAOS_NEAR_PLAN=kill,reset,stop,...  the faults, in order; besides the
    three above: freeze (the relay stops passing on what Redis sends on
    batchd's pub/sub connection for CHAOS_NEAR_HOLD seconds, default 3,
    without closing it, then passes it all on: a stalled link, which
    batchd cannot tell from a quiet one before its heartbeat) and blind (a
    reset, then for CHAOS_NEAR_HOLD seconds the relay renames every key in
    the invalidation messages out of the tracked prefix: batchd sees
    tracking confirmed but learns of no change, as if Redis had silently
    forgotten its tracking; what a batchd that mishandles a lost tracker
    would do, so the row must fail). Without reset, freeze or blind in the
    plan, batchd talks to Redis directly.
CHAOS_NEAR_RATE=N  changes a second (default 1500).
CHAOS_NEAR_JITTER_MS=N  the relay delays every piece of a command or a
    reply by 0..N ms (RedisLink's jitter), on every connection alike.

Returns one row for the report (see chaos.py)."""
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

N_HOT = 200           # ids s1..s200
BATCH = 10            # ids per ?ids= read
PAD = "p" * 96        # every document is about 130 bytes
NO_VERSION = 0xFFFFFFFF   # a document without "v": loaded from PostgreSQL (Redis unreachable)
WINDOW_S = 1.0        # "right after a fault": from its start until this long after it ended
HOLD_S = 0.1          # a link reset first withholds Redis's replies this long (as a partition would)


def key_of(i):
    return f"session:s{i + 1}"


def marker_of(i, v):
    """A key under the tracked prefix set with version v of id i (one MSET,
    so one invalidation message names both): the relay learns from it when
    that version's invalidation reached batchd. batchd takes it for the id
    "~i.v", which it never holds."""
    return f"session:~{i}.{v}"


MARK_RE = re.compile(rb"session:~(\d+)\.(\d+)\r\n")


def doc_of(i, v):
    return f'{{"id":"s{i + 1}","v":{v},"pad":"{PAD}"}}'


# --- what is stale -----------------------------------------------------------------------------------


def load_acks(path, n_ids):
    """The changer's log: acks[i][v] = when version v of id i was
    acknowledged (acks[i][0], the version set before the run, is 0.0)."""
    acks = [array("d", [0.0]) for _ in range(n_ids)]
    with open(path) as f:
        for line in f:
            i, v, t = line.split()
            i, v = int(i), int(v)
            a = acks[i]
            if v != len(a):
                raise RuntimeError(f"changer log: id {i} version {v} after {len(a) - 1}")
            a.append(float(t))
    return acks


def load_deliveries(path, acks):
    """The relay's log: deliv[i][v] = when the invalidation of version v of
    id i had been written into batchd's socket (0.0: never seen)."""
    deliv = [array("d", bytes(8 * len(a))) for a in acks]
    with open(path) as f:
        for line in f:
            i, v, t = line.split()
            i, v = int(i), int(v)
            if i < len(deliv) and v < len(deliv[i]) and deliv[i][v] == 0.0:
                deliv[i][v] = float(t)
    return deliv


def staleness(acks, deliv, t, idx, v):
    """(raw, beyond delivery) for a read that began at t and returned
    version v of id idx. raw: how long before t the next version had been
    acknowledged (0 when v was still the newest acknowledged before t, or
    is unknown). Beyond delivery: the same from when batchd could know,
    the later of the acknowledgement and its invalidation's arrival in
    batchd's socket, over every newer version acknowledged before t.
    deliv None: no relay, Redis sends the invalidation with the reply. A
    version whose invalidation never arrived (lost with a connection)
    counts from its acknowledgement: batchd must have seen the loss."""
    if v == NO_VERSION:
        return 0.0, 0.0
    a = acks[idx]
    u = v + 1
    if u >= len(a) or a[u] >= t:
        return 0.0, 0.0
    raw = t - a[u]
    if deliv is None:
        return raw, raw
    d = deliv[idx]
    beyond = 0.0
    while u < len(a) and a[u] < t:
        known = max(a[u], d[u]) if d[u] > 0.0 else a[u]
        if t - known > beyond:
            beyond = t - known
        u += 1
    return raw, beyond


class Obs:
    """Every read: when it began, how it was answered, and each (id,
    version) it returned. Arrays, not objects: a run has ~10^6 of them."""

    def __init__(self):
        self.t = array("d")        # per request
        self.kind = array("b")     # 0 single, 1 batch (closed loop); 2 single, 3 batch (paced)
        self.cache = array("b")    # CACHE_CODES index
        self.first = array("I")    # its observations: first .. first[k+1]
        self.idx = array("H")      # per observation
        self.ver = array("I")
        self.errors = {}
        self.unversioned = 0

    def add(self, t, kind, cache, pairs):
        self.t.append(t)
        self.kind.append(kind)
        self.cache.append(cache)
        self.first.append(len(self.idx))
        for i, v in pairs:
            self.idx.append(i)
            self.ver.append(v)
            self.unversioned += v == NO_VERSION

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def stale_each(self, acks, deliv):
        """(raw, beyond delivery) staleness of each request: the largest of
        its documents'."""
        raw = array("d", bytes(8 * len(self.t)))
        beyond = array("d", bytes(8 * len(self.t)))
        n_obs = len(self.idx)
        for k in range(len(self.t)):
            t = self.t[k]
            end = self.first[k + 1] if k + 1 < len(self.t) else n_obs
            w_raw = w_beyond = 0.0
            for j in range(self.first[k], end):
                r, b = staleness(acks, deliv, t, self.idx[j], self.ver[j])
                w_raw = max(w_raw, r)
                w_beyond = max(w_beyond, b)
            raw[k], beyond[k] = w_raw, w_beyond
        return raw, beyond


CACHE_CODES = ["local", "hit", "miss", "other"]
CACHE_OF = {"local": 0, "hit": 1, "miss": 2}


def classify(t, windows):
    """The index of the fault window t falls in, or -1."""
    for n, (_, t0, t1) in enumerate(windows):
        if t0 <= t < t1 + WINDOW_S:
            return n
    return -1


def summarize(obs, stale, sel):
    """Figures over the requests k with sel(k)."""
    ks = [k for k in range(len(obs.t)) if sel(k)]
    vals = [stale[k] for k in ks]
    st = [x for x in vals if x > 0]
    local = sum(1 for k in ks if obs.cache[k] == 0)
    return dict(reads=len(ks), local=local, local_share=local / len(ks) if ks else None, stale=len(st),
                max_ms=max(vals) * 1000 if vals else None, p99_ms=percentile(vals, 99) * 1000 if vals else None,
                stale_p50_ms=percentile(st, 50) * 1000 if st else None)


def selfcheck():
    """The computation above on made-up logs with stale answers injected:
    it must find exactly those, by exactly as much."""
    acks = [array("d", [0.0, 10.0, 11.0, 12.0]), array("d", [0.0])]
    # v1's invalidation reached batchd 0.2 s after its acknowledgement, v2's
    # with it, v3's never (lost with a connection).
    deliv = [array("d", [0.0, 10.2, 11.0, 0.0]), array("d", [0.0])]
    o = Obs()
    o.add(9.5, 0, 0, [(0, 0)])              # began before v1 was acknowledged: fine
    o.add(10.5, 0, 0, [(0, 1)])             # the newest: fine
    o.add(10.1, 0, 0, [(0, 0)])             # v1 acknowledged 0.1 s before, not yet delivered: 0.1 / 0
    o.add(10.3, 0, 0, [(0, 0)])             # ... delivered 0.1 s before it began: 0.3 / 0.1
    o.add(12.5, 1, 0, [(1, 0), (0, 1)])     # a batch: s1's v2 acknowledged and delivered at 11.0: 1.5 / 1.5
    o.add(12.5, 0, 1, [(0, 4)])             # a version not yet acknowledged (in flight): fine
    o.add(12.5, 0, 2, [(0, NO_VERSION)])    # from PostgreSQL: not measured
    o.add(11.0, 0, 0, [(0, 1)])             # v2 acknowledged at exactly its start: not before it
    o.add(12.25, 0, 0, [(0, 2)])            # v3 never delivered: from its acknowledgement, 0.25 / 0.25
    raw, beyond = o.stale_each(acks, deliv)
    got = [(round(x, 6), round(y, 6)) for x, y in zip(raw, beyond)]
    want = [(0.0, 0.0), (0.0, 0.0), (0.1, 0.0), (0.3, 0.1), (1.5, 1.5), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0),
            (0.25, 0.25)]
    if got != want:
        raise RuntimeError(f"staleness self-check: {got}, expected {want}")
    windows = [("x", 10.0, 10.2)]
    inside = summarize(o, beyond, lambda k: classify(o.t[k], windows) >= 0)
    if inside["stale"] != 1 or abs(inside["max_ms"] - 100) > 1e-6 or inside["reads"] != 4:
        raise RuntimeError(f"staleness self-check (windows): {inside}")
    return ("the staleness computation found the 4 stale answers injected into 9 made-up reads, by as much "
            "as injected (0.1 s, 0.3 s, 1.5 s, 0.25 s; 0.1 s, 1.5 s and 0.25 s beyond delivery)")


# --- the changer (a process of its own) ---------------------------------------------------------------


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

    async def cut(self, hold=0.1):
        t0 = time.monotonic()
        await super().cut(hold)
        t1 = time.monotonic()
        self.delivered += [(i, v, t1) for i, v in self.held]
        self.held = []
        self.events.append(("reset", t0, t1, len(self.pubsub)))

    async def _handle(self, cr, cw):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.transport.abort()
            return
        pair = (cw, uw)
        self.pairs.add(pair)

        # drain() returns only once the kernel has taken every byte: then
        # what was written is in batchd's socket.
        cw.transport.set_write_buffer_limits(high=0)
        tail = b""

        async def pump(src, dst, replies):
            nonlocal tail
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    marks = ()
                    if replies and pair in self.pubsub:
                        if self.blind_until > time.monotonic():
                            data = data.replace(b"\r\nsession:", b"\r\nxession:")
                        buf = tail + data
                        marks = [(int(m.group(1)), int(m.group(2)), m.end()) for m in MARK_RE.finditer(buf)]
                        tail = buf[marks[-1][2] if marks else 0:][-40:]
                    if replies:
                        if self.holding:
                            self.withheld += len(data)
                            self.held += [(i, v) for i, v, _ in marks]
                            continue
                        wait = self.frozen_until - time.monotonic()
                        if pair in self.pubsub and wait > 0:
                            await asyncio.sleep(wait)
                    elif b"TRACKING" in data or b"SUBSCRIBE" in data:
                        self.pubsub.add(pair)
                    if self.jitter:
                        await asyncio.sleep(random.uniform(0, self.jitter))
                    dst.write(data)
                    await dst.drain()
                    if marks:
                        t = time.monotonic()
                        self.delivered += [(i, v, t) for i, v, _ in marks]
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                cw.transport.abort()
                uw.transport.abort()
        try:
            await asyncio.gather(pump(cr, uw, False), pump(ur, cw, True))
        finally:
            self.pairs.discard(pair)
            self.pubsub.discard(pair)

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


def fmt_ms(x):
    if x is None:
        return "—"
    return f"{x:.0f} ms" if x >= 100 else f"{x:.1f} ms" if x >= 1 else f"{x:.2f} ms"


def pct(x):
    return "—" if x is None else f"{100 * x:.0f}%"


def by_source(m):
    """{source: count} of batchd_local_cache_invalidations_total."""
    out = {}
    for key, v in m.items():
        mm = re.match(r'batchd_local_cache_invalidations_total\{(?:.*,)?source="([^"]*)"', key)
        if mm:
            out[mm.group(1)] = out.get(mm.group(1), 0) + int(v)
    return out


FAULTS = ("kill", "reset", "stop", "freeze", "blind")
FAULT_NAMES = {"kill": ("pub/sub kill", "pub/sub kills"), "reset": ("link reset", "link resets"),
               "stop": ("SIGSTOP of 1 s", "SIGSTOPs of 1 s"),
               "freeze": ("pub/sub stall of {s:g} s", "pub/sub stalls of {s:g} s"),
               "blind": ("reset followed by {s:g} s of invalidations naming nothing",
                         "resets followed by {s:g} s of invalidations naming nothing")}


NEAR_METRICS = [("tracking lost", "batchd_redis_tracking_lost_total", {}),
                ("bypassed lookups", "batchd_local_cache_results_total", {"result": "bypass"}),
                ("local hits", "batchd_local_cache_results_total", {"result": "hit"}),
                ("local misses", "batchd_local_cache_results_total", {"result": "miss"}),
                ("restarts", "batchd_local_cache_restarts_total", {}),
                ("tracking keys", "batchd_redis_tracking_keys_total", {}),
                ("degraded reads", "batchd_cache_degraded_total", {})]


async def near_coherence(env):
    from chaos_env import Skip, metric
    check = selfcheck()
    rate = float(os.environ.get("CHAOS_NEAR_RATE") or 1500)
    gap, warm, tail = (2.5, 1.5, 2.0) if env.quick else (4.0, 3.0, 3.0)
    n_single, n_batch, pace = 48, 16, 0.005
    plan = ["kill", "reset", "stop", "kill", "reset", "kill"]
    if os.environ.get("CHAOS_NEAR_PLAN"):
        plan = os.environ["CHAOS_NEAR_PLAN"].split(",")
        if not plan or any(k not in FAULTS for k in plan):
            raise Skip(f"CHAOS_NEAR_PLAN: a comma-separated list of {', '.join(FAULTS)}")
    hold_s = float(os.environ.get("CHAOS_NEAR_HOLD") or 3.0)
    jitter_ms = float(os.environ.get("CHAOS_NEAR_JITTER_MS") or 0.0)
    # The relay only when a fault needs it: without it, batchd talks to Redis directly.
    via_link = jitter_ms > 0 or any(k in plan for k in ("reset", "freeze", "blind"))
    env.redis_fresh(aof=False)
    r = env.redis()
    pipe = r.pipeline(transaction=False)
    for i in range(N_HOT):
        pipe.set(key_of(i), doc_of(i, 0))
    pipe.execute()
    me = str(Path(__file__).resolve())
    status = env.run / "near-relay.json"
    acks_path = env.run / "near-changes.txt"
    for p in (status, acks_path):
        p.unlink(missing_ok=True)
    relay = None
    if via_link:
        relay = env.procs.start("near-relay", ["/usr/bin/python3", me, "relay", str(env.port["link"]),
                                               str(env.port["redis"]), str(status), str(hold_s),
                                               str(jitter_ms)])
    deadline = time.monotonic() + 10
    while relay is not None:
        try:
            socket.create_connection(("127.0.0.1", env.port["link"]), timeout=0.5).close()
            break
        except OSError:
            if relay.poll() is not None or time.monotonic() > deadline:
                raise Skip("the relay (RedisLink) did not listen; see .chaos/logs/near-relay.log")
            await asyncio.sleep(0.05)
    b = await env.start_batchd({"redis": {"url": f"redis://127.0.0.1:{env.port['link' if via_link else 'redis']}/0"},
                                "resource sessions": {"local_cache_bytes": str(64 << 20)}})
    deadline = time.monotonic() + 10
    while (await b.metric("batchd_redis_tracking_up")) != 1:
        if time.monotonic() > deadline:
            raise Skip("batchd's Redis tracking did not come up within 10 s (batchd_redis_tracking_up)")
        await asyncio.sleep(0.05)
    m0 = await b.metrics()

    seconds = warm + gap * len(plan) + tail + hold_s * (plan.count("freeze") + plan.count("blind"))
    changer = env.procs.start("near-changer", ["/usr/bin/python3", me, "changer", str(env.port["redis"]),
                                               str(N_HOT), str(rate), str(seconds + 30), str(acks_path), "7"])
    obs = Obs()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(reader(b.port, stop, obs, 0, random.Random(100 + k))) for k in range(n_single)]
    tasks += [asyncio.create_task(reader(b.port, stop, obs, 1, random.Random(200 + k))) for k in range(n_batch)]
    tasks.append(asyncio.create_task(paced(b.port, stop, obs, random.Random(300), pace)))
    faults = []      # (kind, start, end); a reset's times come from the relay afterwards
    backlogs = []    # what was waiting for batchd when it was continued
    upstream_port = env.port["link" if via_link else "redis"]
    killed = []
    t_load = time.monotonic()
    try:
        await asyncio.sleep(warm)
        for kind in plan:
            t0 = time.monotonic()
            if kind == "kill":
                killed.append(await asyncio.to_thread(r.execute_command, "CLIENT", "KILL", "TYPE", "pubsub"))
                faults.append([kind, t0, time.monotonic()])
            elif kind == "reset":
                relay.send_signal(signal.SIGUSR1)
                faults.append([kind, t0, t0 + HOLD_S])       # replaced by the relay's own times
            elif kind == "freeze":
                relay.send_signal(signal.SIGUSR2)
                faults.append([kind, t0, t0 + hold_s])
            elif kind == "blind":
                relay.send_signal(signal.SIGHUP)
                faults.append([kind, t0, t0 + HOLD_S + hold_s])
            else:
                os.kill(b.pid, signal.SIGSTOP)
                try:
                    # kill() returns before a process on another core has stopped.
                    while proc_state(b.pid) not in ("T", "t") and time.monotonic() < t0 + 2:
                        await asyncio.sleep(0.001)
                    await asyncio.sleep(1.0)
                    backlogs.append(await asyncio.to_thread(backlog, b.pid, upstream_port, r))
                finally:
                    os.kill(b.pid, signal.SIGCONT)
                faults.append([kind, t0, time.monotonic()])
            print(f"   {kind} at +{t0 - t_load:.1f} s", flush=True)
            # The next fault comes `gap` after this one is over.
            await asyncio.sleep(max(0.0, faults[-1][2] - time.monotonic()) + gap)
        await asyncio.sleep(tail - gap if tail > gap else 0)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        t_end = time.monotonic()
        alive = b.alive()
        m1 = await b.metrics() if alive else {}     # before the relay goes (and tracking with it)
        for p in (changer, relay):
            if p is not None:
                p.send_signal(signal.SIGTERM)
        for p in (changer, relay):
            if p is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(p.wait), 30)
            except asyncio.TimeoutError:
                p.kill()
    await env.stop_batchd(b)
    if not acks_path.exists():
        raise Skip("the changer wrote no log; see .chaos/logs/near-changer.log")
    acks = load_acks(acks_path, N_HOT)
    n_changes = sum(len(a) - 1 for a in acks)
    rl = json.loads(status.read_text()) if status.exists() else {}
    resets = [e for e in rl.get("events", []) if e[0] == "reset"]
    n_reset = 0
    for f in faults:
        if f[0] == "reset" and n_reset < len(resets):
            f[1], f[2] = resets[n_reset][1], resets[n_reset][2]
            n_reset += 1
    windows = [tuple(f) for f in faults]

    deliv_path = Path(str(status) + ".deliv")
    deliv = load_deliveries(deliv_path, acks) if via_link and deliv_path.exists() else None
    n_deliv = sum(1 for d in deliv for x in d if x > 0) if deliv else 0
    raw, stale = obs.stale_each(acks, deliv)
    where = [classify(t, windows) for t in obs.t]
    raw_out = summarize(obs, raw, lambda k: where[k] < 0)
    raw_in = summarize(obs, raw, lambda k: where[k] >= 0)
    allr = summarize(obs, stale, lambda k: True)
    out = summarize(obs, stale, lambda k: where[k] < 0)
    inw = summarize(obs, stale, lambda k: where[k] >= 0)
    paced_out = summarize(obs, stale, lambda k: where[k] < 0 and obs.kind[k] >= 2)
    paced_in = summarize(obs, stale, lambda k: where[k] >= 0 and obs.kind[k] >= 2)
    per = []
    for n, (kind, t0, t1) in enumerate(windows):
        s = summarize(obs, stale, lambda k, n=n: where[k] == n)
        # How long the near cache was out of use: the longest stretch
        # between reads (by when they began) answered X-Cache: local.
        loc = sorted(obs.t[k] for k in range(len(obs.t)) if where[k] == n and obs.cache[k] == 0)
        gap_ms = max((b_ - a_ for a_, b_ in zip(loc, loc[1:])), default=None)
        s.update(kind=kind, at=t0 - t_load, dur=t1 - t0, gap_ms=None if gap_ms is None else gap_ms * 1000)
        per.append(s)
    by_kind = {}
    for kind in dict.fromkeys(f[0] for f in windows):
        by_kind[kind] = summarize(obs, stale, lambda k, kind=kind: where[k] >= 0 and windows[where[k]][0] == kind)
    # The worst stale reads, to see what they were.
    worst = sorted(range(len(stale)), key=lambda k: -stale[k])[:5]
    worst_txt = []
    for k in worst:
        if stale[k] <= 0:
            break
        w = where[k]
        ctx = f"{windows[w][0]} +{(obs.t[k] - windows[w][1]) * 1000:.0f} ms" if w >= 0 else "outside faults"
        worst_txt.append(f"{fmt_ms(stale[k] * 1000)} (from the acknowledgement {fmt_ms(raw[k] * 1000)}; "
                         f"{('single', 'batch')[obs.kind[k] & 1]}"
                         f"{', paced' if obs.kind[k] >= 2 else ''}, "
                         f"X-Cache {CACHE_CODES[obs.cache[k]]}, {ctx})")
    # Stale reads during each fault and second by second after it, until
    # the next one: they must not go on (or grow) once it is over.
    tails = []
    for n, (kind, t0, t1) in enumerate(windows):
        until = windows[n + 1][1] if n + 1 < len(windows) else t_end
        ks = [k for k in range(len(obs.t)) if t0 <= obs.t[k] < until and stale[k] > 0]
        if not ks:
            continue
        buckets = {}
        for k in ks:
            b_ = -1 if obs.t[k] < t1 else int(obs.t[k] - t1)
            n_, mx = buckets.get(b_, (0, 0.0))
            buckets[b_] = (n_ + 1, max(mx, stale[k]))
        tails.append(f"{kind}#{n + 1}: " + ", ".join(
            f"{'during' if b_ < 0 else f'+{b_}–{b_ + 1} s'} {c} (max {fmt_ms(mx * 1000)})"
            for b_, (c, mx) in sorted(buckets.items())))

    def stale_by_cache(sel):
        c = {}
        for k in range(len(stale)):
            if stale[k] > 0 and sel(k):
                name = CACHE_CODES[obs.cache[k]]
                n_, mx = c.get(name, (0, 0.0))
                c[name] = (n_ + 1, max(mx, stale[k]))
        return ", ".join(f"{name} {n_:,} (max {fmt_ms(mx * 1000)})" for name, (n_, mx) in c.items()) or "none"

    def delta(name, **labels):
        return metric(m1, name, **labels) - metric(m0, name, **labels)

    inval0 = by_source(m0)
    inval1 = by_source(m1)
    inval = {k: v - inval0.get(k, 0) for k, v in inval1.items() if v - inval0.get(k, 0)}
    errors = sum(obs.errors.values())
    # Beyond delivery a coherent near cache is never stale; what is allowed
    # is scheduling noise on a loaded machine. Within a fault the same
    # bound: an invalidation that never came counts from its
    # acknowledgement, so the time batchd takes to see the connection go is
    # in it too (measured: ~1 ms).
    lim_out_max, lim_out_p99, lim_fault_max, min_local = 50.0, 5.0, 50.0, 0.5
    met = (alive and allr["reads"] > 0 and out["max_ms"] is not None and out["max_ms"] <= lim_out_max
           and out["p99_ms"] <= lim_out_p99 and (inw["max_ms"] or 0) <= lim_fault_max
           and allr["local_share"] >= min_local)
    fault_txt = ", ".join(f"{plan.count(k)} {FAULT_NAMES[k][plan.count(k) > 1].format(s=hold_s)}"
                          for k in FAULTS if k in plan)
    which = ", ".join(f"{v['stale']:,} after {FAULT_NAMES[k][plan.count(k) > 1].format(s=hold_s)} (max {fmt_ms(v['max_ms'])})"
                      for k, v in by_kind.items() if v["stale"])

    def line(s):
        return (f"{s['reads']:,} reads, {s['stale']:,} stale, max {fmt_ms(s['max_ms'])}, "
                f"p99 {fmt_ms(s['p99_ms'])}, local {pct(s['local_share'])}")
    return dict(
        title="near cache coherence: documents changed behind batchd's back, tracking lost",
        promise=(f"a read never returns a version older than one Redis acknowledged before it began, beyond "
                 f"the arrival of its invalidation in batchd's socket: by ≤ {lim_out_max:.0f} ms (p99 ≤ "
                 f"{lim_out_p99:.0f} ms) outside faults, ≤ {lim_fault_max:.0f} ms within {WINDOW_S:.0f} s of a "
                 f"pub/sub kill, link reset or SIGSTOP; X-Cache: local ≥ {min_local:.0%}"),
        measured=(f"{allr['reads']:,} reads over {n_changes:,} changes and {fault_txt}: outside faults "
                  f"{out['stale']:,} stale (max {fmt_ms(out['max_ms'])}, p99 {fmt_ms(out['p99_ms'])}); within "
                  f"{WINDOW_S:.0f} s of a fault {inw['stale']:,} stale" + (f": {which}" if which else "") + "; local "
                  f"{pct(allr['local_share'])}; {errors} failed reads" + ("" if alive else "; batchd died")),
        met=met,
        how=(f"s1..s{N_HOT} hold `{{\"id\":…,\"v\":n,…}}` in Redis; batchd has `local_cache_bytes = 64 MiB` on "
             f"the sessions resource" + (" and reaches Redis through a relay (`RedisLink`, a process of its own)"
                                         if via_link else "") +
             f". A changer (a process of its own) writes version n+1 of a random one of them straight into Redis, "
             f"one at a time, about {rate:,.0f} a second, with `MSET session:<id> <doc> session:~<i>.<n> 1` (the "
             f"second key, also under the tracked prefix, marks which version an invalidation message is for), "
             f"noting when each was acknowledged. {n_single} keep-alive connections read one id "
             f"(`/v1/sessions/{{id}}`) and {n_batch} read {BATCH} (`?ids=`) as fast as answered, and a paced reader "
             f"starts one read every {pace * 1000:g} ms (alternately one id and {BATCH}) on an idle connection ({int(1.5 / pace)} opened first) or a "
             f"new one whatever became of the earlier ones, so reads also begin while batchd is stopped; each "
             f"notes when its request was written and which versions came back. After {warm:g} s, every {gap:g} s "
             f"a fault: `CLIENT KILL TYPE pubsub`, a reset of every connection through the relay (Redis's replies "
             f"withheld {HOLD_S * 1000:.0f} ms first, as in a partition), or batchd SIGSTOPped for 1 s and "
             f"continued. A read that began at S and returned version v is stale when a newer version was "
             f"acknowledged at A < S; by S − A from the acknowledgement, and by S − max(A, D) beyond delivery, "
             f"D being when the relay had written that version's invalidation into batchd's socket (for "
             f"invalidations withheld by a reset, the reset; for one that never came, A). The promise is about "
             f"the latter. S is taken just before the request is written, A just after Redis's reply is read and "
             f"D after the relay's write has drained, so every error makes staleness smaller, never larger. "
             f"\"Within a fault\" is from its start until {WINDOW_S:.0f} s after it ended. Self-check: {check}."),
        details={
            "reads": f"{allr['reads']:,} answered ({sum(1 for x in obs.kind if x & 1):,} of them `?ids=` of {BATCH}; "
                     f"{sum(1 for x in obs.kind if x >= 2):,} paced); "
                     f"X-Cache " + ", ".join(f"{c} {sum(1 for x in obs.cache if x == n):,}"
                                             for n, c in enumerate(CACHE_CODES)) +
                     f"; {obs.unversioned:,} documents from PostgreSQL (Redis out of reach; not measured); "
                     f"failed: " + (", ".join(f"{k} {v:,}" for k, v in obs.errors.items()) or "none"),
            "changes": f"{n_changes:,} acknowledged in {t_end - t_load:.0f} s "
                       f"({n_changes / max(t_end - t_load, 1e-9):,.0f}/s)",
            "overall": line(allr),
            "outside faults": line(out),
            "from the acknowledgement (delivery time included)": f"outside faults {line(raw_out)}; within 1 s of a "
                                                                 f"fault {line(raw_in)}",
            "paced reads only": f"outside faults {line(paced_out)}; within 1 s of a fault {line(paced_in)}",
            "within 1 s of a fault": line(inw),
            "by fault kind": "; ".join(f"{k}: {line(v)}" for k, v in by_kind.items()),
            "each fault": "; ".join(f"{p['kind']} at +{p['at']:.1f} s ({p['dur'] * 1000:.0f} ms): {p['reads']:,} "
                                    f"reads, {p['stale']} stale, max {fmt_ms(p['max_ms'])}, no local answer for "
                                    f"{fmt_ms(p['gap_ms'])}" for p in per),
            "stale reads by X-Cache": "outside faults " + stale_by_cache(lambda k: where[k] < 0)
                                      + "; within 1 s of a fault " + stale_by_cache(lambda k: where[k] >= 0),
            "worst stale reads": "; ".join(worst_txt) or "none",
            "stale reads during and after each fault (until the next)": "; ".join(tails) or "none",
            "pub/sub kills": f"CLIENT KILL closed {', '.join(str(x) for x in killed) or 'no'} connection(s)",
            "when batchd was continued": "; ".join(
                f"{q:,} bytes in batchd's receive buffers from {'the relay' if via_link else 'Redis'}, "
                f"{'?' if o is None else f'{o:,}'} bytes in Redis's pub/sub output buffers" for q, o in backlogs)
                or "not stopped",
            "relay": (f"{rl.get('cuts', '?')} resets, {rl.get('withheld', 0):,} reply bytes withheld; "
                      f"invalidations of {n_deliv:,} of the {n_changes:,} changes seen reaching batchd; its loop "
                      f"late by p99 {fmt_ms(rl.get('lag_p99_ms'))}, max {fmt_ms(rl.get('lag_max_ms'))}")
                     if via_link else "not used: batchd reached Redis directly",
            "batchd counters (during the load)": ", ".join(f"{label} {delta(name, **lb):,.0f}"
                                                           for label, name, lb in NEAR_METRICS)
                                                 + f"; tracking up at the end {metric(m1, 'batchd_redis_tracking_up'):.0f}",
            "near-cache invalidations by source": ", ".join(f"{k} {v:,}" for k, v in
                                                            sorted(inval.items(), key=lambda kv: -kv[1])) or "none",
        })


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "changer":
        changer_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6],
                     int(sys.argv[7]))
    elif what == "relay":
        relay_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), float(sys.argv[6]))
    elif what == "selfcheck":
        print(selfcheck())
    else:
        sys.exit(__doc__)
