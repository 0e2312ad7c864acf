"""tools/lib/chaos_streams.py: the SSE and connection scenarios of tools/chaos.

    sse_delivery     100 SSE clients, numbered events from publishers that
                     retry with Idempotency-Key, 3 pub/sub kills, 3 cuts of
                     batchd's Redis connections with replies withheld, and a
                     Redis SIGKILL + restart with AOF (appendfsync always)
    fresh_channels   a publish right after a new channel's first subscriber
                     got its 200
    slow_readers     1,000 SSE clients with a tiny receive buffer that read
                     very slowly or not at all; batchd's peak RSS
    slowloris        15,000 connections trickling header bytes; wrk reads
                     meanwhile

Each returns one row for the report (see chaos.py)."""
import asyncio
import json
import random
import re
import signal
import time

from chaos_env import Skip, metric, tcp_mem_bytes
from chaos_load import (Http, HttpFail, Lat, PubStats, RedisLink, SseClient, build_request, make_socket,
                        publish, sources)
from chaos_reads import counts, fmt_ms, fmt_s, wait_for, wrk

MIB = 1024 * 1024


def events_path(sid):
    return f"/v1/sessions/{sid}/events"


# --- 3. 100 SSE clients, numbered events, pub/sub kills and a Redis restart --------------------------


class Client:
    """One subscriber's view: the seqs of its channel in arrival order."""

    def __init__(self, ch):
        self.ch = ch
        self.seqs = []
        self.last_id = None
        self.got0 = False
        self.reconnects = 0
        self.resets = 0
        self.refused = {}
        self.foreign = 0      # events of another channel
        self.sse = None


async def follow(port, cs, token_of):
    """Reads cs.ch's stream for ever, reconnecting with Last-Event-ID
    after the server's retry: (capped at 3 s) when the stream ends."""
    retry = 0.5
    while True:
        s = SseClient(port, events_path(cs.ch), last_id=cs.last_id)
        cs.sse = s
        try:
            status = await s.open()
        except HttpFail as e:
            cs.refused[e.kind] = cs.refused.get(e.kind, 0) + 1
            await asyncio.sleep(0.2)
            continue
        if status != 200:
            cs.refused[str(status)] = cs.refused.get(str(status), 0) + 1
            s.close()
            await asyncio.sleep(0.5)
            continue
        while True:
            f = await s.frame()
            if f is None:
                break
            if "retry" in f and f["retry"].isdigit():
                retry = min(int(f["retry"]) / 1000.0, 3.0)
            if f.get("event") == "reset":
                cs.resets += 1
            if "id" in f:
                cs.last_id = f["id"]
            if f["data"] is None or f.get("event") not in (None, "seq"):
                continue
            tag, _, seq = f["data"].partition(":")
            if tag != token_of(cs.ch):
                cs.foreign += 1
                continue
            seq = int(seq)
            if seq == 0:
                cs.got0 = True
            else:
                cs.seqs.append(seq)
        s.close()
        cs.reconnects += 1
        await asyncio.sleep(retry * random.uniform(0.5, 1.0))


async def sse_delivery(env):
    n_ch, per_ch = 10, 10
    events = 3000 if env.quick else 10000
    rate = 300.0 if env.quick else 500.0            # publishes per second, all channels
    per_chan = events // n_ch
    env.redis_fresh(aof=True)
    link = RedisLink(env.port["link"], env.port["redis"])
    await link.start()
    try:
        return await sse_delivery_run(env, link, n_ch, per_ch, events, rate, per_chan)
    finally:
        link.close()


async def sse_delivery_run(env, link, n_ch, per_ch, events, rate, per_chan):
    b = await env.start_batchd({"stream session-events": {"max_len": str(per_chan * 3)},
                                "redis": {"url": f"redis://127.0.0.1:{env.port['link']}/0"}})
    run = f"{int(time.time()) % 100000}"
    chans = [f"chaos-{run}-{i}" for i in range(n_ch)]
    tag = {ch: str(i) for i, ch in enumerate(chans)}
    clients = [Client(ch) for ch in chans for _ in range(per_ch)]
    followers = [asyncio.create_task(follow(b.port, c, tag.get)) for c in clients]
    stats = PubStats()
    acked = {ch: set() for ch in chans}
    faults = []
    try:
        # Every channel live: publish a seq 0 until all its clients have one.
        pub = Http(b.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(c.got0 for c in clients):
            for ch in chans:
                if not all(c.got0 for c in clients if c.ch == ch):
                    await publish(pub, events_path(ch) + "?event=seq", f"{tag[ch]}:0", env.token, give_up_s=5)
            await wait_for(lambda: all(c.got0 for c in clients), 0.5)
        pub.close()
        if not all(c.got0 for c in clients):
            raise Skip(f"{sum(not c.got0 for c in clients)} of {len(clients)} clients never received an event "
                       "before the run started")

        duration = events / rate
        t_start = time.monotonic()

        async def publisher(ch):
            h = Http(b.port)
            for seq in range(1, per_chan + 1):
                delay = t_start + (seq - 1) * n_ch / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sid = await publish(h, events_path(ch) + "?event=seq", f"{tag[ch]}:{seq}", env.token,
                                    key=f"chaos-{run}-{ch}-{seq}", stats=stats, give_up_s=60)
                if sid is not None:
                    acked[ch].add(seq)
            h.close()

        async def chaos():
            for frac, what in ((0.15, "kill"), (0.25, "cut"), (0.35, "kill"), (0.45, "cut"), (0.55, "kill"),
                               (0.65, "cut")):
                await asyncio.sleep(max(0.0, t_start + frac * duration - time.monotonic()))
                if what == "kill":
                    n = await asyncio.to_thread(
                        lambda: env.redis().execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
                    faults.append(f"CLIENT KILL TYPE pubsub at {frac:.0%}: {n} killed")
                else:
                    before = sum(stats.failed.values())
                    await link.cut(0.1)
                    await asyncio.sleep(0.3)
                    faults.append(f"link cut at {frac:.0%}: replies withheld 100 ms, then every connection "
                                  f"reset ({sum(stats.failed.values()) - before} publishes failed and were retried)")
                print(f"   {faults[-1]}", flush=True)
            await asyncio.sleep(max(0.0, t_start + 0.8 * duration - time.monotonic()))
            env.redis_signal(signal.SIGKILL)
            t = time.monotonic()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(env.redis_start)         # the same AOF: every acknowledged XADD is there
            faults.append(f"redis-server SIGKILL at 80%, restarted from its AOF {time.monotonic() - t:.1f} s later")
            print(f"   {faults[-1]}", flush=True)

        await asyncio.gather(chaos(), *[publisher(ch) for ch in chans])
        t_pub = time.monotonic() - t_start

        def complete():
            return all(acked[c.ch] <= set(c.seqs) for c in clients)
        # Wait for the stragglers: until every client has every acknowledged
        # event, or nothing new arrived for 10 s (at most 30 s).
        last, still, end = -1, time.monotonic(), time.monotonic() + 30
        while not complete() and time.monotonic() < end and time.monotonic() - still < 10:
            n = sum(len(c.seqs) for c in clients)
            if n != last:
                last, still = n, time.monotonic()
            await asyncio.sleep(0.1)
    finally:
        for t in followers:
            t.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for c in clients:
            if c.sse:
                c.sse.close()
    m = await b.metrics()
    await env.stop_batchd(b)

    lost = dup = ooo = extra = 0
    worst = (-1, "")
    for c in clients:
        got = set(c.seqs)
        miss = len(acked[c.ch] - got)
        lost += miss
        dup += len(c.seqs) - len(got)
        extra += len(got - acked[c.ch])
        seen, top = set(), 0
        for s in c.seqs:
            if s not in seen:
                ooo += s < top
                seen.add(s)
                top = max(top, s)
        worst = max(worst, (miss, c.ch))
    stored_dup = stored = 0
    r = env.redis()
    for ch in chans:
        by_seq = {}
        for _, fields in r.xrange(f"events:session:{ch}"):
            d = fields.get(b"data", b"").decode(errors="replace")
            by_seq[d] = by_seq.get(d, 0) + 1
        stored += sum(by_seq.values())
        stored_dup += sum(v - 1 for k, v in by_seq.items() if v > 1 and not k.endswith(":0"))
    env.redis_stop()
    n_acked = sum(len(v) for v in acked.values())
    expected = sum(len(acked[c.ch]) for c in clients)
    received = sum(len(c.seqs) for c in clients)
    met = lost == 0 and dup == 0 and ooo == 0 and stats.gave_up == 0
    return dict(
        title=f"100 SSE clients, {events:,} numbered events, 3 pub/sub kills, 3 link cuts and a Redis restart (AOF)",
        promise="0 lost, 0 duplicated, 0 out of order (publishers retry with Idempotency-Key)",
        measured=(f"{lost:,} lost, {dup:,} duplicated, {ooo:,} out of order in {received:,} of {expected:,} "
                  f"deliveries; {stored_dup} events stored twice; {n_acked:,} of {events:,} publishes "
                  f"acknowledged after {stats.retries:,} retries"),
        met=met,
        how=(f"{len(clients)} SSE clients on {n_ch} channels ({per_ch} each; every channel is live before the "
             f"run: each client got a warm-up event). {n_ch} publishers, one per channel, POST events "
             f"1..{per_chan} in order at {rate:.0f}/s in all, data `<channel>:<seq>`; a publish that fails "
             "(503, EOF, reset, 5 s timeout) is retried with the same `Idempotency-Key` until it is answered "
             "201 (given up after 60 s). batchd reaches Redis through a relay (`RedisLink` in "
             "tools/lib/chaos_load.py). At 15%, 35% and 55% of the run Redis gets `CLIENT KILL TYPE pubsub`; "
             "at 25%, 45% and 65% the relay stops passing Redis's replies for 100 ms, then resets every "
             "connection: publishes sent meanwhile were stored, but batchd never got their replies (the "
             "\"outcome unknown\" case a retry must not duplicate); at 80% redis-server (`appendonly yes`, "
             "`appendfsync always`) is SIGKILLed and started again from its AOF 1 s later. A client whose "
             "stream ends reconnects with `Last-Event-ID` after the server's `retry:`. Each client checks the "
             "seqs it got against those acknowledged; the Streams are read back with XRANGE to count events "
             "stored twice."),
        details={
            "faults": "; ".join(faults) or "none",
            "publishing": f"{n_acked:,} acknowledged in {t_pub:.1f} s, {stats.attempts:,} POSTs, {stats.retries:,} "
                          f"retries, failures {counts(stats.failed)}, {stats.gave_up} given up; p50 "
                          f"{fmt_ms(stats.lat.ms(50))}, p99 {fmt_ms(stats.lat.ms(99))}",
            "deliveries": f"{received:,} of {expected:,} expected; lost {lost:,} (worst client {worst[0]:,} on "
                          f"{worst[1]}), duplicated {dup:,}, out of order {ooo:,}, delivered but never "
                          f"acknowledged {extra:,}, other channels' events {sum(c.foreign for c in clients)}",
            "Streams (XRANGE)": f"{stored:,} entries, {stored_dup} events stored more than once",
            "clients": f"{sum(c.reconnects for c in clients)} reconnects, {sum(c.resets for c in clients)} resets, "
                       f"failed (re)connects {counts({k: v for c in clients for k, v in c.refused.items()})}",
            "batchd counters": f"resyncs {metric(m, 'batchd_sse_resyncs_total'):.0f}, replayed "
                               f"{metric(m, 'batchd_sse_replayed_total'):.0f}, publish errors "
                               f"{metric(m, 'batchd_sse_publish_errors_total'):.0f}",
        })


# --- 4. A publish right after a fresh channel's first 200 --------------------------------------------


class Answer(asyncio.Protocol):
    """A publisher connection: the POST goes out from the subscriber's
    data_received, so no await lies between the 200 and the publish."""

    def __init__(self):
        self.tr = None
        self.buf = b""
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        self.buf += data
        head, sep, body = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: *(\d+)", head, re.I)
        if sep and m and len(body) >= int(m.group(1)) and not self.done.done():
            status = int(head.split(b" ", 2)[1])
            try:
                sid = json.loads(body[:int(m.group(1))]).get("id") if status == 201 else None
            except ValueError:
                sid = None
            self.done.set_result((status, sid))

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result((None, None))


class FreshSub(asyncio.Protocol):
    """A new channel's first subscriber: on its 200 head it sends the
    publish at once, then watches for that event."""

    def __init__(self, pub, post, data):
        self.pub, self.post, self.data = pub, post, data
        self.buf = b""
        self.head = None
        self.t = None
        self.got = asyncio.get_running_loop().create_future()
        self.head_seen = asyncio.get_running_loop().create_future()

    def data_received(self, chunk):
        self.buf += chunk
        if self.head is None:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head = int(head.split(b" ", 2)[1])
            self.head_seen.set_result(self.head)
            self.buf = rest
            if self.head != 200:
                self.got.done() or self.got.set_result(None)
                return
            self.pub.tr.write(self.post)
            self.t = time.monotonic()
        while b"\n\n" in self.buf:
            frame, _, self.buf = self.buf.partition(b"\n\n")
            fields = dict(ln.split(b": ", 1) for ln in frame.split(b"\n") if b": " in ln)
            if fields.get(b"data") == self.data and not self.got.done():
                self.got.set_result((time.monotonic(), fields.get(b"id", b"").decode()))

    def connection_lost(self, exc):
        if not self.got.done():
            self.got.set_result(None)


async def fresh_channels(env):
    n = 100
    rounds = 1 if env.quick else 3
    env.redis_fresh(aof=False)
    b = await env.start_batchd()
    loop = asyncio.get_running_loop()
    run = f"{int(time.time()) % 100000}"
    res = {}
    lat = Lat()
    per_round = []
    for rnd in range(rounds):
        async def one(i):
            ch = f"fresh-{run}-{rnd}-{i}"
            data = f"fresh {i}".encode()
            post = build_request("POST", events_path(ch), {"Authorization": f"Bearer {env.token}"}, data)
            try:
                _, pub = await loop.create_connection(Answer, "127.0.0.1", b.port)
                tr, sub = await loop.create_connection(lambda: FreshSub(pub, post, data), "127.0.0.1", b.port)
            except OSError as e:
                return f"connect {type(e).__name__}"
            try:
                tr.write(build_request("GET", events_path(ch), {"Accept": "text/event-stream"}))
                try:
                    head = await asyncio.wait_for(asyncio.shield(sub.head_seen), 10)
                except asyncio.TimeoutError:
                    return "subscribe not answered"
                if head != 200:
                    return f"subscribe {head}"
                try:
                    status, sid = await asyncio.wait_for(asyncio.shield(pub.done), 10)
                except asyncio.TimeoutError:
                    return "publish not answered"
                if status != 201:
                    return f"publish {status}"
                try:
                    got = await asyncio.wait_for(asyncio.shield(sub.got), 5)
                except asyncio.TimeoutError:
                    return "lost"
                if got is None:
                    return "lost (stream closed)"
                lat.add(got[0] - sub.t)
                return "received" if got[1] == sid else "received, other id"
            finally:
                tr.abort()
                pub.tr.abort()

        out = await asyncio.gather(*(one(i) for i in range(n)))
        c = {}
        for o in out:
            c[o] = c.get(o, 0) + 1
            res[o] = res.get(o, 0) + 1
        per_round.append(c)
        print(f"   round {rnd + 1}: {counts(c)}", flush=True)
    await env.stop_batchd(b)
    lost = sum(v for k, v in res.items() if k.startswith("lost"))
    other = sum(v for k, v in res.items() if not k.startswith("lost") and not k.startswith("received"))
    total = n * rounds
    return dict(
        title="100 fresh channels, a publish right after the subscriber's 200",
        promise="0 lost: a subscriber's stream starts at a definite position",
        measured=(f"{lost} lost of {total - other} events published to a channel right after its first subscriber "
                  f"got 200 ({rounds} round{'s' * (rounds > 1)} of {n} channels at once)"
                  + (f"; {other} not run" if other else "")),
        met=lost == 0 and other == 0,
        how=(f"{n} channels never used before, at once: each gets one subscriber (no `Last-Event-ID`); the moment "
             "its `200` head arrives (in the same socket callback, no await in between) one event is published "
             "on a connection opened beforehand, and the subscriber waits up to 5 s for it."),
        details={
            "outcomes": counts(res),
            "rounds": "; ".join(counts(c) for c in per_round),
            "publish → receipt": f"p50 {fmt_ms(lat.ms(50))}, p99 {fmt_ms(lat.ms(99))}",
        })


# --- 5. 1,000 slow readers ----------------------------------------------------------------------------


async def slow_readers(env):
    n, cqb, rcvbuf = 1000, 65536, 2048
    cap_s = 12 if env.quick else 25
    bound = n * cqb + 32 * MIB
    runs = []
    for size in (48, 1024):
        runs.append(await slow_run(env, n, cqb, rcvbuf, size, cap_s))
    met = all(r["hwm"] is not None and r["hwm"] <= bound for r in runs)
    mib = lambda x: "—" if x is None else f"{x / MIB:.1f} MiB"
    return dict(
        title="1,000 slow readers, 48-byte and 1 KiB events",
        promise=f"batchd RSS ≤ clients × client_queue_bytes + 32 MiB = {n:,} × {cqb // 1024} KiB + 32 MiB "
                f"= {bound / MIB:.1f} MiB",
        measured="; ".join(f"{r['size']} B events: peak RSS {mib(r['hwm'])} ({r['overflowed']:,} of {n:,} "
                           f"clients dropped for overflow after {r['published']:,} events; kernel TCP buffers "
                           f"+{mib(r['tcp'])})" for r in runs)
                 + f"; bound {bound / MIB:.1f} MiB",
        met=met,
        how=(f"A fresh batchd per event size with `client_queue_bytes = {cqb}`. {n:,} SSE clients on one channel "
             f"with `SO_RCVBUF` {rcvbuf} (set before connect): half never read, half read 256 bytes a second. "
             "Events of that size are published over 32 connections as fast as they are answered until every "
             f"client was dropped for overflow or {cap_s} s passed. Peak RSS is `VmHWM` from "
             "/proc/<pid>/status (since batchd started, so it includes its baseline); kernel TCP memory is "
             "from /proc/net/sockstat (the sockets' buffers, counted in no process's RSS)."),
        details={f"{r['size']} B events": (
            f"RSS at start {mib(r['rss0'])}, with {n:,} clients {mib(r['rss1'])}, peak (VmHWM) {mib(r['hwm'])}, "
            f"after they left {mib(r['rss_end'])}; batchd's counted queues peaked at {mib(r['queued'])}; kernel "
            f"TCP memory +{mib(r['tcp'])} at peak; {r['published']:,} events published in {r['pub_s']:.1f} s "
            f"({r['pub_fail']} failed), {r['overflowed']:,} overflow disconnects, {r['connected']:,} clients "
            f"connected") for r in runs})


async def slow_run(env, n, cqb, rcvbuf, size, cap_s):
    env.redis_fresh(aof=False)
    b = await env.start_batchd({"stream session-events": {"client_queue_bytes": str(cqb)}})
    loop = asyncio.get_running_loop()
    ch = f"slow-{size}-{int(time.time()) % 100000}"
    req = f"GET {events_path(ch)} HTTP/1.1\r\nHost: chaos\r\nAccept: text/event-stream\r\n\r\n".encode()
    srcs = sources()
    socks = []
    rss0 = b.status("VmRSS")
    tcp0 = tcp_mem_bytes() or 0
    out = dict(size=size, rss0=rss0, rss1=None, hwm=None, rss_end=None, queued=0, tcp=0, published=0,
               pub_fail=0, pub_s=0.0, overflowed=0, connected=0)
    sem = asyncio.Semaphore(200)

    async def conn(i):
        async with sem:
            s = make_socket(srcs[i % len(srcs)], rcvbuf)
            try:
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", b.port)), 5)
                await loop.sock_sendall(s, req)
                socks.append(s)
            except (OSError, asyncio.TimeoutError):
                s.close()
    try:
        await asyncio.gather(*(conn(i) for i in range(n)))
        for _ in range(200):
            if (await b.metric("batchd_sse_clients") or 0) >= len(socks):
                break
            await asyncio.sleep(0.1)
        out["connected"] = int(await b.metric("batchd_sse_clients") or 0)
        out["rss1"] = b.status("VmRSS")
        stop = asyncio.Event()

        async def sipper():
            """Half the clients read 256 bytes a second."""
            while not stop.is_set():
                for s in socks[::2]:
                    try:
                        s.recv(256)
                    except (BlockingIOError, OSError):
                        pass
                await asyncio.sleep(1.0)

        async def sampler():
            while not stop.is_set():
                t = tcp_mem_bytes()
                if t is not None:
                    out["tcp"] = max(out["tcp"], t - tcp0)
                try:
                    m = await b.metrics()
                except HttpFail:
                    m = {}
                if m:
                    out["queued"] = max(out["queued"], metric(m, "batchd_sse_queued_bytes"))
                    out["overflowed"] = int(metric(m, "batchd_sse_overflow_disconnects_total"))
                await asyncio.sleep(0.25)

        payload = ("x" * size)
        stats = PubStats()

        async def publisher(k):
            h = Http(b.port)
            while not stop.is_set():
                sid = await publish(h, events_path(ch), payload, env.token, stats=stats, give_up_s=2)
                if sid is None:
                    await asyncio.sleep(0.05)
            h.close()
        t0 = time.monotonic()
        bg = [asyncio.create_task(sipper()), asyncio.create_task(sampler())]
        pubs = [asyncio.create_task(publisher(k)) for k in range(32)]
        while time.monotonic() - t0 < cap_s and out["overflowed"] < out["connected"]:
            await asyncio.sleep(0.25)
        stop.set()
        await asyncio.gather(*pubs, *bg, return_exceptions=True)
        out["pub_s"] = time.monotonic() - t0
        out["published"] = stats.acked
        out["pub_fail"] = sum(stats.failed.values())
        await asyncio.sleep(0.5)
        m = await b.metrics()
        out["overflowed"] = int(metric(m, "batchd_sse_overflow_disconnects_total"))
        out["hwm"] = b.status("VmHWM")
    finally:
        for s in socks:
            s.close()
    await asyncio.sleep(2.0)
    out["rss_end"] = b.status("VmRSS")
    await env.stop_batchd(b)
    print(f"   {size} B: peak RSS {(out['hwm'] or 0) / MIB:.1f} MiB, {out['overflowed']} overflowed, "
          f"{out['published']} events", flush=True)
    return out


# --- 6. Slowloris ------------------------------------------------------------------------------------


class Loris(asyncio.Protocol):
    """One slowloris connection: a request line at once, then one header
    byte every ~3 s until the server closes it."""

    def __init__(self, st):
        self.st = st
        self.t0 = None
        self.tr = None
        self.answered = False
        self.next = 0.0

    def connection_made(self, tr):
        self.tr = tr
        self.t0 = time.monotonic()
        tr.write(b"GET /v1/sessions/s1 HTTP/1.1\r\nHost: chaos\r\nX-Slow: ")
        self.next = self.t0 + random.uniform(1.0, 3.0)
        self.st["open"].add(self)

    def data_received(self, data):
        if not self.answered:
            self.answered = True
            m = re.match(rb"HTTP/1\.1 (\d+)", data)
            k = m.group(1).decode() if m else "data"
            self.st["answers"][k] = self.st["answers"].get(k, 0) + 1

    def connection_lost(self, exc):
        self.st["open"].discard(self)
        if not self.st["ours"]:
            self.st["life"].append(time.monotonic() - self.t0)


async def slowloris(env):
    n, timeout_ms = 15000, 10000
    attack_s = 15 if env.quick else 30
    p99_limit = 100.0
    env.redis_fresh(aof=False)
    env.fill(env.truth(1, 10000))
    b = await env.start_batchd({"batchd": {"header_timeout_ms": str(timeout_ms), "max_connections": "16000"}})
    loop = asyncio.get_running_loop()
    st = dict(open=set(), life=[], answers={}, ours=False, connect_fail={}, opened=0, peak=0)
    srcs = sources()
    base = await wrk(b.port, 5)
    print(f"   baseline: p50 {base['p50_us'] / 1000:.2f} ms, p99 {base['p99_us'] / 1000:.2f} ms", flush=True)
    sem = asyncio.Semaphore(500)
    attacking, done = asyncio.Event(), asyncio.Event()
    attacking.set()
    pending = set()

    async def open_one():
        async with sem:
            s = make_socket(srcs[st["opened"] % len(srcs)])
            st["opened"] += 1
            try:
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", b.port)), 5)
                await loop.create_connection(lambda: Loris(st), sock=s)
            except (OSError, asyncio.TimeoutError) as e:
                s.close()
                k = type(e).__name__
                st["connect_fail"][k] = st["connect_fail"].get(k, 0) + 1

    async def keep_up():
        """Holds n connections open while attacking: the server's closes are refilled."""
        while attacking.is_set():
            for _ in range(min(n - len(st["open"]) - len(pending), 500)):
                t = asyncio.ensure_future(open_one())
                pending.add(t)
                t.add_done_callback(pending.discard)
            await asyncio.sleep(0.05)

    async def trickle():
        while not done.is_set():
            now = time.monotonic()
            for c in list(st["open"]):
                if c.next <= now:
                    c.tr.write(b"x")
                    c.next = now + random.uniform(2.5, 3.5)
            await asyncio.sleep(0.25)

    async def watch():
        while not done.is_set():
            st["peak"] = max(st["peak"], int(await b.metric("batchd_connections_open") or 0))
            await asyncio.sleep(0.5)

    t0 = time.monotonic()
    bg = [asyncio.create_task(keep_up()), asyncio.create_task(trickle()), asyncio.create_task(watch())]
    try:
        await wait_for(lambda: len(st["open"]) >= n, 30.0, 0.1)
        ramp = time.monotonic() - t0
        print(f"   {len(st['open']):,} slowloris connections open after {ramp:.1f} s", flush=True)
        under = await wrk(b.port, attack_s)
        attacking.clear()
        await asyncio.gather(*list(pending), return_exceptions=True)
        # The last ones must be closed by the server within header_timeout_ms.
        await wait_for(lambda: not st["open"], timeout_ms / 1000 + 3, 0.1)
        left = len(st["open"])
    finally:
        attacking.clear()
        for t in list(pending):
            t.cancel()
        st["ours"] = True
        for c in list(st["open"]):
            c.tr.abort()
        done.set()
        await asyncio.gather(*bg, return_exceptions=True)
    m = await b.metrics()
    await env.stop_batchd(b)
    life = sorted(st["life"])
    tmo = timeout_ms / 1000
    late = sum(1 for x in life if x > tmo + 1.0)
    early = sum(1 for x in life if x < tmo - 0.5)
    pct = lambda p: life[min(len(life) - 1, int(p / 100 * len(life)))] if life else None
    p99 = under["p99_us"] / 1000
    met = under["errors_total"] == 0 and p99 <= p99_limit and late == 0 and left == 0 and len(life) > 0
    return dict(
        title="15,000 slowloris connections",
        promise=f"normal reads keep being served (no errors, p99 ≤ {p99_limit:.0f} ms); each slowloris connection "
                f"is closed at header_timeout_ms ({timeout_ms / 1000:.0f} s)",
        measured=(f"reads during the attack: {under['requests']:,} in {attack_s} s, {under['errors_total']} errors, "
                  f"p99 {p99:.1f} ms (before: {base['p99_us'] / 1000:.1f} ms); {len(life):,} slowloris "
                  f"connections closed after {fmt_s(pct(50))} (p50) to {fmt_s(life[-1] if life else None)} (max), "
                  f"{late} later than {tmo + 1:.0f} s, {left} still open"),
        met=met,
        how=(f"batchd with `header_timeout_ms = {timeout_ms}` and `max_connections = 16000`. {n:,} connections from "
             "127.0.0.2–254 send a request line and the start of a header, then one more byte every 2.5–3.5 s; "
             f"each one batchd closes is opened again, so {n:,} stay open for the attack. Meanwhile `wrk -t1 -c16` "
             f"reads cached sessions for {attack_s} s (and 5 s before the attack, for comparison). A connection's "
             "lifetime runs from its first byte to the server's close."),
        details={
            "normal reads before": f"{base['requests']:,} in 5 s, p50 {base['p50_us'] / 1000:.2f} ms, p99 "
                                   f"{base['p99_us'] / 1000:.2f} ms, errors {base['errors_total']}",
            "normal reads during": f"{under['requests']:,} in {attack_s} s, p50 {under['p50_us'] / 1000:.2f} ms, "
                                   f"p99 {p99:.2f} ms, max {under['max_us'] / 1000:.1f} ms, errors "
                                   f"{counts({k: v for k, v in under['errors'].items() if v})}",
            "slowloris": f"{st['opened']:,} opened ({ramp:.1f} s to the first {n:,}), {len(life):,} closed by batchd, "
                         f"lifetimes p50 {fmt_s(pct(50))}, p99 {fmt_s(pct(99))}, "
                         f"max {fmt_s(life[-1] if life else None)}; "
                         f"{early} closed before {tmo - 0.5:.1f} s; answers before the close "
                         f"{counts(st['answers'])}; connect failures {counts(st['connect_fail'])}",
            "batchd": f"open connections peaked at {st['peak']:,}; closed for header_timeout "
                      f"{metric(m, 'batchd_connections_closed_total', reason='header_timeout'):.0f}, rejected "
                      f"(max_connections) {metric(m, 'batchd_connections_rejected_total'):.0f}",
        })

