"""tools/lib/chaos_reads.py: the entity-read scenarios of tools/chaos.

    redis_faults     redis-server SIGKILLed and restarted, SIGSTOPped and
                     continued, under readers that check every body
    pg_restart       PostgreSQL stopped and started under a 90/10 hit/miss load
    sigterm          SIGTERM to batchd under keep-alive and fresh-connection readers
    read_your_write  50 writers (PUT through batchd to the app, then GET) and
                     20 readers on the same ids

Each returns one row for the report (see chaos.py)."""
import asyncio
import contextlib
import json
import random
import re
import signal
import time

from chaos_env import ROOT, Skip, by_label, metric
from chaos_load import Http, HttpFail, Lat, RedisLink


def fmt_s(x):
    return "—" if x is None else f"{x:.2f} s"


def fmt_ms(x):
    return "—" if x is None else (f"{x:.1f} ms" if x < 100 else f"{x:.0f} ms")


def counts(d):
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


class Truth:
    """PostgreSQL's answer for each id; a body is right when it is that
    document (byte for byte, or the same JSON value)."""

    def __init__(self, docs):
        self.raw = {k: v.encode() for k, v in docs.items()}
        self.parsed = {}

    def right(self, sid, body):
        want = self.raw.get(sid)
        if want is None:
            return False
        if body == want:
            return True
        if sid not in self.parsed:
            self.parsed[sid] = json.loads(want)
        try:
            return json.loads(body) == self.parsed[sid]
        except ValueError:
            return False


def one_path(sid):
    return f"/v1/sessions/{sid}"


async def reader(port, stop, pick, on, timeout=10.0, path=one_path):
    """GETs path(pick()) on one keep-alive connection until stop;
    on(sid, resp or None, HttpFail or None, sent_at, fresh) for each."""
    h = Http(port)
    while not stop.is_set():
        sid = pick()
        t = time.monotonic()
        try:
            r = await h.request("GET", path(sid), timeout=timeout)
            on(sid, r, None, t, h.fresh)
        except HttpFail as e:
            on(sid, None, e, t, h.fresh)
            if e.kind in ("refused", "connect"):
                await asyncio.sleep(0.01)
    h.close()


@contextlib.asynccontextmanager
async def readers(port, n, pick, on):
    """n reader()s on port for as long as the `async with` block runs; they
    are stopped and awaited when it ends, however it ends."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(reader(port, stop, pick, on)) for _ in range(n)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wrk(port, seconds, conns=16, args=("path=/v1/sessions/{id}", "hot=1-10000")):
    """wrk -t1 with tools/wrk/bench.lua: its BENCH_RESULT line as a dict."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s",
            str(ROOT / "tools" / "wrk" / "bench.lua"), f"http://127.0.0.1:{port}", "--"] + list(args)
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), seconds + 30)
    m = re.search(rb"^BENCH_RESULT (\{.*\})$", out, re.M)
    if not m:
        raise Skip(f"wrk printed no result: {(err or out).decode(errors='replace').strip()[:200]}")
    res = json.loads(m.group(1))
    res["errors_total"] = sum(res["errors"].values())
    return res


async def wait_for(pred, timeout, step=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return False


# --- 1. Redis SIGKILL and SIGSTOP -------------------------------------------------------------------


async def redis_faults(env):
    n_ids, conns = 2000, 32
    kills, stops = (2, 1) if env.quick else (5, 3)
    env.redis_fresh(aof=False)
    truth = Truth(env.truth(1, n_ids))
    b = await env.start_batchd()
    st = dict(n=0, ok=0, wrong=0, hit=0, miss=0, errors={}, since=None, first_hit=None)
    wrong_examples = []

    def on(sid, r, err, t, fresh):
        st["n"] += 1
        if err is not None:
            st["errors"][err.kind] = st["errors"].get(err.kind, 0) + 1
            return
        if r.status != 200:
            st["errors"][str(r.status)] = st["errors"].get(str(r.status), 0) + 1
            return
        if not truth.right(sid, r.body):
            st["wrong"] += 1
            if len(wrong_examples) < 3:
                wrong_examples.append(f"{sid}: {r.body[:80]!r}")
            return
        st["ok"] += 1
        if r.headers.get("x-cache") == "hit":
            st["hit"] += 1
            if st["since"] is not None and st["first_hit"] is None and t >= st["since"]:
                st["first_hit"] = time.monotonic()
        else:
            st["miss"] += 1

    faults = []
    async with readers(b.port, conns, lambda: f"s{random.randint(1, n_ids)}", on):
        await asyncio.sleep(2.0)
        plan = ["SIGKILL"] * kills + ["SIGSTOP"] * stops
        random.Random(11).shuffle(plan)
        for kind in plan:
            await asyncio.sleep(1.5)
            n0, e0 = st["n"], sum(st["errors"].values())
            t0 = time.monotonic()
            if kind == "SIGKILL":
                env.redis_signal(signal.SIGKILL)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(env.redis_start)      # empty: no persistence
            else:
                env.redis_signal(signal.SIGSTOP)
                await asyncio.sleep(3.0)                     # longer than command_timeout_ms (2 s)
                env.redis_signal(signal.SIGCONT)
            back = time.monotonic()
            st["since"], st["first_hit"] = back, None
            await wait_for(lambda: st["first_hit"] is not None, 20.0)
            rec = None if st["first_hit"] is None else st["first_hit"] - back
            faults.append(dict(kind=kind, down_s=round(back - t0, 2), recovery_s=rec,
                               requests=st["n"] - n0, errors=sum(st["errors"].values()) - e0))
            st["since"] = None
            log_fault = f"{kind}: Redis back after {back - t0:.1f} s, first cache hit {fmt_s(rec)} later"
            print("   " + log_fault, flush=True)
        await asyncio.sleep(1.0)
    m = await b.metrics()
    await env.stop_batchd(b)
    errors = sum(st["errors"].values())
    recs = [f["recovery_s"] for f in faults]
    worst = None if None in recs or not recs else max(recs)
    kills_r = [f["recovery_s"] for f in faults if f["kind"] == "SIGKILL"]
    stops_r = [f["recovery_s"] for f in faults if f["kind"] == "SIGSTOP"]
    met = errors == 0 and st["wrong"] == 0
    def rng(v):
        if not v:
            return "—"
        if any(x is None for x in v):
            return "not back within 20 s"
        lo, hi = f"{min(v):.2f}", f"{max(v):.2f}"
        return f"{lo} s" if lo == hi else f"{lo}–{hi} s"
    return dict(
        title="Redis SIGKILL (restart) and SIGSTOP/SIGCONT under reads",
        promise="no errors, no wrong bodies; the cache comes back by itself",
        measured=(f"{st['n']:,} reads over {kills} kills + {stops} stops: {errors} errors, {st['wrong']} wrong "
                  f"bodies; cache back (first hit) after kill {rng(kills_r)}, after stop {rng(stops_r)}"),
        met=met,
        how=(f"{conns} keep-alive connections read random ids of s1..s{n_ids} (`GET /v1/sessions/{{id}}`) "
             "and compare every body with PostgreSQL's answer to batchd's own `by_ids` query. Each fault "
             "comes after 1.5 s of steady reads: SIGKILL, 1 s down, redis-server started again empty (no "
             "persistence); or SIGSTOP for 3 s (past `command_timeout_ms`, 2 s), then SIGCONT. Recovery is "
             "the time from Redis being back until the first `X-Cache: hit`."),
        details={
            "reads": f"{st['n']:,} ({st['hit']:,} hits, {st['miss']:,} misses or degraded reads, all checked)",
            "errors": f"{errors} ({counts(st['errors'])})",
            "wrong bodies": f"{st['wrong']}" + (f" (e.g. {'; '.join(wrong_examples)})" if wrong_examples else ""),
            "faults": "; ".join(f"{f['kind']} ({f['down_s']:.1f} s down): recovery {fmt_s(f['recovery_s'])}, "
                                f"{f['requests']:,} reads, {f['errors']} errors" for f in faults),
            "worst recovery": fmt_s(worst),
            "batchd counters": f"degraded reads {metric(m, 'batchd_cache_degraded_total'):.0f}, Redis "
                               f"connects {metric(m, 'batchd_redis_connects_total'):.0f}, Redis errors "
                               f"{metric(m, 'batchd_redis_errors_total'):.0f}",
        })


# --- 2. PostgreSQL restart --------------------------------------------------------------------------


async def pg_restart(env):
    hot_hi, conns = 9000, 32
    restarts = 1 if env.quick else 2
    down_s = 3.0
    env.redis_fresh(aof=False)
    docs = env.truth(1, 10000)
    truth = Truth(docs)
    env.fill({k: docs[k] for k in (f"s{i}" for i in range(1, hot_hi + 1))})
    # A janitor keeps s9001..s10000 out of Redis, so 10% of reads miss.
    env.procs.start("janitor", ["redis-cli", "-p", str(env.port["redis"]), "-r", "-1", "-i", "0.005", "UNLINK"]
                    + [f"session:s{i}" for i in range(hot_hi + 1, 10001)], quiet=True)
    b = await env.start_batchd()
    st = dict(hot=0, hot_ok=0, hot_not_cached=0, hot_fail={}, cold=0, cold_ok=0, cold_503_ra=0,
              cold_503_no_ra=0, cold_other={}, wrong=0, out_503=0, outage=None, since=None, first_ok=None)
    lat_503 = Lat()

    def on(sid, r, err, t, fresh):
        hot = int(sid[1:]) <= hot_hi
        in_outage = st["outage"] is not None
        if hot:
            st["hot"] += 1
            if err is None and r.status == 200 and truth.right(sid, r.body):
                st["hot_ok"] += 1
                st["hot_not_cached"] += r.headers.get("x-cache") != "hit"
                return
            k = err.kind if err else (f"{r.status}" if r.status != 200 else "wrong body")
            st["hot_fail"][k] = st["hot_fail"].get(k, 0) + 1
            st["wrong"] += k == "wrong body"
            return
        st["cold"] += 1
        if err is None and r.status == 200:
            if truth.right(sid, r.body):
                st["cold_ok"] += 1
                if st["since"] is not None and st["first_ok"] is None and t >= st["since"]:
                    st["first_ok"] = time.monotonic()
            else:
                st["wrong"] += 1
                st["cold_other"]["wrong body"] = st["cold_other"].get("wrong body", 0) + 1
        elif err is None and r.status == 503:
            lat_503.add(time.monotonic() - t)
            if "retry-after" in r.headers:
                st["cold_503_ra"] += 1
            else:
                st["cold_503_no_ra"] += 1
            st["out_503"] += not in_outage
        else:
            k = err.kind if err else str(r.status)
            st["cold_other"][k] = st["cold_other"].get(k, 0) + 1

    def pick():
        if random.random() < 0.9:
            return f"s{random.randint(1, hot_hi)}"
        return f"s{random.randint(hot_hi + 1, 10000)}"

    rounds = []
    async with readers(b.port, conns, pick, on):
        await asyncio.sleep(2.0)
        for _ in range(restarts):
            h0, hf0 = st["hot"], sum(st["hot_fail"].values())
            c503 = st["cold_503_ra"] + st["cold_503_no_ra"]
            st["outage"] = t0 = time.monotonic()
            await asyncio.to_thread(env.pg_stop)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(env.pg_start)
            up = time.monotonic()
            st["since"], st["first_ok"] = up, None
            await wait_for(lambda: st["first_ok"] is not None, 20.0)
            rec = None if st["first_ok"] is None else st["first_ok"] - up
            st["outage"] = st["since"] = None
            rounds.append(dict(down=up - t0, recovery=rec, hot=st["hot"] - h0,
                               hot_fail=sum(st["hot_fail"].values()) - hf0,
                               misses_503=st["cold_503_ra"] + st["cold_503_no_ra"] - c503))
            print(f"   PostgreSQL down {up - t0:.1f} s; first miss served {fmt_s(rec)} after it was back", flush=True)
            await asyncio.sleep(2.0)
    m = await b.metrics()
    await env.stop_batchd(b)
    failed_hits = sum(st["hot_fail"].values())
    n503 = st["cold_503_ra"] + st["cold_503_no_ra"]
    cold_err = sum(st["cold_other"].values())
    met = failed_hits == 0 and st["cold_503_no_ra"] == 0 and cold_err == 0 and n503 > 0
    recs = [r["recovery"] for r in rounds]
    return dict(
        title="PostgreSQL restart under a 90/10 hit/miss load",
        promise="hits keep being served; misses get 503 with Retry-After during the outage",
        measured=(f"{failed_hits} failed hits of {st['hot']:,}; {n503:,} misses answered 503 during "
                  f"{restarts} outage{'s' * (restarts > 1)} ({st['cold_503_ra']:,} with Retry-After), "
                  f"{cold_err} other miss errors; misses served again "
                  + ", ".join(fmt_s(r) for r in recs) + " after PostgreSQL was back"),
        met=met,
        how=(f"s1..s{hot_hi} are cached before the run; a janitor (`redis-cli -r -1 -i 0.005 UNLINK`) keeps "
             f"s{hot_hi + 1}..s10000 out of Redis. {conns} keep-alive connections read one id each, 90% from the "
             f"cached range. PostgreSQL is stopped (`pg_ctl -m fast stop`), kept down {down_s:.0f} s and "
             "started again. A failed hit is a cached id answered with anything but 200 and the right body."),
        details={
            "hits (cached ids)": f"{st['hot']:,} reads, {st['hot_ok']:,} right, failed: {counts(st['hot_fail'])}"
                                 f"; {st['hot_not_cached']:,} answered right but not from the cache",
            "misses": f"{st['cold']:,} reads: {st['cold_ok']:,} served, {st['cold_503_ra']:,} 503 with Retry-After, "
                      f"{st['cold_503_no_ra']:,} 503 without, other: {counts(st['cold_other'])}; "
                      f"503 p50 {fmt_ms(lat_503.ms(50))}, p99 {fmt_ms(lat_503.ms(99))}; "
                      f"{st['out_503']} 503s outside the outages",
            "outages": "; ".join(f"down {r['down']:.1f} s: {r['hot']:,} hit reads, {r['hot_fail']} failed, "
                                 f"{r['misses_503']:,} misses got 503, served again after {fmt_s(r['recovery'])}"
                                 for r in rounds),
            "batchd counters": f"PostgreSQL errors {metric(m, 'batchd_pg_errors_total'):.0f}, connects "
                               f"{metric(m, 'batchd_pg_connects_total'):.0f}, retries "
                               f"{metric(m, 'batchd_pg_retries_total'):.0f}",
        })


# --- 7. SIGTERM under load --------------------------------------------------------------------------


async def sigterm(env):
    rounds = 1 if env.quick else 3
    keepalive, fresh_conns = 48, 16
    env.redis_fresh(aof=False)
    docs = env.truth(1, 2000)
    truth = Truth(docs)
    env.fill({k: docs[k] for k in (f"s{i}" for i in range(1, 1001))})   # s1001..s2000 load from PostgreSQL
    tot = dict(answered=0, wrong=0, refused=0, eof_reused=0, eof_fresh=0, cut=0, timeout=0, other={},
               status={}, closes=0, eofs=[])
    per_round = []
    env.start_app()
    big = 1 << 20
    block = bytes(range(256)) * 64
    big_body = (block * (big // len(block) + 1))[:big]
    for rnd in range(rounds):
        b = await env.start_batchd({"batchd": {"shutdown_grace_ms": "10000"}},
                                   upstream=f"http://127.0.0.1:{env.port['app']}")
        c = dict(answered=0, wrong=0, refused=0, eof_reused=0, eof_fresh=0, cut=0, timeout=0, other={},
                 status={}, closes=0, after=0)
        eofs = tot["eofs"]
        term = {"t": None}

        def on(sid, r, err, t, fresh, kind="busy keep-alive", c=c, term=term, eofs=eofs):
            if err is None:
                c["answered"] += 1
                c["status"][r.status] = c["status"].get(r.status, 0) + 1
                c["closes"] += r.close
                if r.status == 200 and not (truth.right(sid, r.body) if sid not in ("slow", "big") else
                                            r.body == (big_body if sid == "big" else b'{"slow":true}')):
                    c["wrong"] += 1
                if term["t"] is not None:
                    c["after"] += 1
            elif err.kind == "refused":
                c["refused"] += 1
            elif err.kind in ("eof", "reset"):
                c["eof_fresh" if fresh else "eof_reused"] += 1
                when = "before SIGTERM" if term["t"] is None else f"sent {t - term['t']:+.3f} s after SIGTERM"
                eofs.append(f"{err.kind} on a {'new' if fresh else kind} connection, {when}")
            elif err.kind in ("cut", "timeout"):
                c[err.kind] += 1
            else:
                c["other"][err.kind] = c["other"].get(err.kind, 0) + 1

        async def one_shot(stop, on=on):
            """A new connection for every request."""
            while not stop.is_set():
                h = Http(b.port)
                sid = f"s{random.randint(1, 2000)}"
                t = time.monotonic()
                try:
                    r = await h.request("GET", f"/v1/sessions/{sid}", {"Connection": "close"}, timeout=10)
                    on(sid, r, None, t, True)
                except HttpFail as e:
                    on(sid, None, e, t, True)
                    if e.kind == "refused":
                        await asyncio.sleep(0.01)
                h.close()

        async def proxied(stop, what, on=on):
            """Answers that take a while through the app: in flight at the SIGTERM."""
            h = Http(b.port)
            path = "/slow?ms=300" if what == "slow" else f"/big?size={big}&chunked=1"
            while not stop.is_set():
                t = time.monotonic()
                try:
                    on(what, await h.request("GET", path, timeout=10), None, t, h.fresh, f"{what} keep-alive")
                except HttpFail as e:
                    on(what, None, e, t, h.fresh, f"{what} keep-alive")
                    if e.kind == "refused":
                        await asyncio.sleep(0.01)
            h.close()

        async def idle(stop, on=on):
            """A keep-alive connection that sits idle 0-1.5 s between requests."""
            h = Http(b.port)
            while not stop.is_set():
                sid = f"s{random.randint(1, 2000)}"
                gap = random.uniform(0, 1.5)
                await asyncio.sleep(gap)
                kind = f"keep-alive idle {gap:.2f} s"
                t = time.monotonic()
                try:
                    on(sid, await h.request("GET", f"/v1/sessions/{sid}", timeout=10), None, t, h.fresh, kind)
                except HttpFail as e:
                    on(sid, None, e, t, h.fresh, kind)
            h.close()

        stop = asyncio.Event()
        pick = lambda: f"s{random.randint(1, 2000)}"
        tasks = [asyncio.create_task(reader(b.port, stop, pick, on)) for _ in range(keepalive)]
        tasks += [asyncio.create_task(idle(stop)) for _ in range(16)]
        tasks += [asyncio.create_task(one_shot(stop)) for _ in range(fresh_conns)]
        tasks += [asyncio.create_task(proxied(stop, "slow")) for _ in range(8)]
        tasks += [asyncio.create_task(proxied(stop, "big")) for _ in range(4)]
        await asyncio.sleep(2.0 + random.random())
        term["t"] = t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: b.proc.poll() is not None, 20.0, 0.005)
        exited = time.monotonic() - t0 if b.proc.poll() is not None else None
        await asyncio.sleep(1.6)     # past every idle reader's next request
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        rc = await env.stop_batchd(b)
        c.update(rc=rc, exit_s=exited)
        per_round.append(c)
        for k in ("answered", "wrong", "refused", "eof_reused", "eof_fresh", "cut", "timeout", "closes"):
            tot[k] += c[k]
        for k, v in c["other"].items():
            tot["other"][k] = tot["other"].get(k, 0) + v
        for k, v in c["status"].items():
            tot["status"][k] = tot["status"].get(k, 0) + v
        print(f"   round {rnd + 1}: exit {rc} after {fmt_s(exited)}; answered {c['answered']:,} "
              f"({c['after']:,} after SIGTERM), refused {c['refused']:,}, EOF/RST without an answer "
              f"{c['eof_reused'] + c['eof_fresh']}, cut {c['cut']}", flush=True)
    eof = tot["eof_reused"] + tot["eof_fresh"]
    bad_rc = [c["rc"] for c in per_round if c["rc"] != 0]
    other = sum(tot["other"].values())
    met = tot["cut"] == 0 and tot["wrong"] == 0 and eof == 0 and tot["timeout"] == 0 and not bad_rc and other == 0
    return dict(
        title="SIGTERM under load",
        promise="every answer is whole; requests racing the SIGTERM are answered or refused cleanly",
        measured=(f"{rounds} SIGTERM{'s' * (rounds > 1)}: {tot['answered']:,} answers, {tot['cut']} cut, "
                  f"{tot['wrong']} wrong; {eof} EOF/RST without an answer ({tot['eof_reused']} on a keep-alive "
                  f"connection, {tot['eof_fresh']} on a new one); {tot['refused']:,} connects refused; exit "
                  + ", ".join(f"{c['rc']} in {fmt_s(c['exit_s'])}" for c in per_round)),
        met=met,
        how=(f"{keepalive} keep-alive connections and {fresh_conns} one-request connections read s1..s2000 "
             "(half cached, half loaded from PostgreSQL) as fast as answered, 16 keep-alive connections "
             "read one id after 0–1.5 s idle each time (`drain_idle_ms` is 1 s), and 12 more keep-alive "
             "connections ask the app behind batchd (`tests/integration/upstream_app.py`) for answers that "
             "take a while: 8 for `/slow?ms=300`, 4 for 1 MiB chunked bodies, checked byte for byte. After "
             "2–3 s batchd gets "
             "SIGTERM and the readers go on until 1.6 s after it exited (a reader drops a connection "
             "answered with `Connection: close` and opens a new one). Each request either got a whole "
             "answer (checked), was refused at connect, or met EOF/RST before any byte of an answer, or "
             "after part of one (cut)."),
        details={
            "answers": f"{tot['answered']:,} (status {counts({str(k): v for k, v in tot['status'].items()})}; "
                       f"{tot['closes']:,} with Connection: close), {tot['wrong']} wrong bodies",
            "cut answers": str(tot["cut"]),
            "EOF/RST before any byte": f"{eof} ({tot['eof_reused']} on reused keep-alive connections, "
                                       f"{tot['eof_fresh']} on new connections)"
                                       + (": " + "; ".join(tot["eofs"][:10]) if tot["eofs"] else ""),
            "timeouts / other": f"{tot['timeout']} / {counts(tot['other'])}",
            "rounds": "; ".join(f"exit {c['rc']} {fmt_s(c['exit_s'])} after SIGTERM, {c['after']:,} answered "
                                f"after it" for c in per_round),
        })


# --- 8. Read-your-write through the app -------------------------------------------------------------


async def read_your_write(env):
    n_writers, n_readers = 50, 20
    seconds = 10 if env.quick else 30
    ids = [f"s{i}" for i in range(101, 101 + n_writers)]
    env.redis_fresh(aof=False)
    env.start_app()
    link = RedisLink(env.port["link"], env.port["redis"], jitter_ms=2.0)
    await link.start()
    try:
        return await read_your_write_run(env, n_writers, n_readers, seconds, ids)
    finally:
        link.close()


async def read_your_write_run(env, n_writers, n_readers, seconds, ids):
    b = await env.start_batchd({"redis": {"url": f"redis://127.0.0.1:{env.port['link']}/0"}},
                               upstream=f"http://127.0.0.1:{env.port['app']}")
    run = f"{int(time.time()) % 100000}"
    st = dict(puts=0, put_fail={}, gets=0, fresh=0, stale=0, stale_hit=0, stale_prev=0, get_fail={},
              reads=0, read_fail={})
    stale_examples = []
    put_lat, get_lat = Lat(), Lat()
    stop = asyncio.Event()

    async def writer(k, sid):
        h = Http(b.port)
        n = 0
        prev = None
        while not stop.is_set():
            title = f"chaos-{run}-w{k}-{n}"
            t = time.monotonic()
            try:
                r = await h.request("PUT", f"/api/sessions/{sid}?title={title}&empty=1", timeout=10)
            except HttpFail as e:
                st["put_fail"][e.kind] = st["put_fail"].get(e.kind, 0) + 1
                await asyncio.sleep(0.05)
                continue
            if r.status != 200:
                st["put_fail"][str(r.status)] = st["put_fail"].get(str(r.status), 0) + 1
                await asyncio.sleep(0.05)
                continue
            put_lat.add(time.monotonic() - t)
            st["puts"] += 1
            t = time.monotonic()
            try:
                g = await h.request("GET", f"/v1/sessions/{sid}", timeout=10)
            except HttpFail as e:
                st["get_fail"][e.kind] = st["get_fail"].get(e.kind, 0) + 1
                continue
            get_lat.add(time.monotonic() - t)
            st["gets"] += 1
            try:
                got = json.loads(g.body).get("title") if g.status == 200 else None
            except (ValueError, AttributeError):
                got = None
            if g.status != 200 or got is None:
                st["get_fail"][str(g.status)] = st["get_fail"].get(str(g.status), 0) + 1
            elif got == title:
                st["fresh"] += 1
            else:
                st["stale"] += 1
                st["stale_hit"] += g.headers.get("x-cache") == "hit"
                st["stale_prev"] += got == prev
                if len(stale_examples) < 3:
                    stale_examples.append(f"{sid} wrote {title}, read {got} (X-Cache: {g.headers.get('x-cache')})")
            prev = title
            n += 1
            # Think time: the next write of this id comes after its new value
            # was read back and cached again (batchd skips write-backs that
            # start within 250 ms of an invalidation), so every write
            # invalidates a cached entry that readers are hitting.
            await asyncio.sleep(random.uniform(0.3, 0.7))
        h.close()

    # The readers are wrk (C, so batchd rather than this Python loop is the
    # busy side): 10 connections read one id at a time, 10 read 50 random
    # ids of the 50 in one request (one MGET holding most of them), so a
    # read of each id is nearly always on its way when an invalidation runs.
    lo, hi = 101, 100 + n_writers
    tasks = [asyncio.create_task(writer(k, sid)) for k, sid in enumerate(ids)]
    rd = [asyncio.create_task(wrk(b.port, seconds, n_readers // 2, ("path=/v1/sessions/{id}", f"hot={lo}-{hi}"))),
          asyncio.create_task(wrk(b.port, seconds, n_readers - n_readers // 2,
                                  ("path=/v1/sessions?ids={ids}", f"k={n_writers}", f"hot={lo}-{hi}")))]
    try:
        wr = await asyncio.gather(*rd)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    st["reads"] = sum(w["requests"] for w in wr)
    names = {"status": "answers with status ≥ 400", "connect": "connect errors", "read": "read errors",
             "write": "write errors", "timeout": "timeouts"}
    st["read_fail"] = {names.get(k, k): sum(w["errors"][k] for w in wr) for k in wr[0]["errors"]
                       if sum(w["errors"][k] for w in wr)}
    m = await b.metrics()
    await env.stop_batchd(b)
    if st["puts"] == 0:
        raise Skip(f"no PUT through batchd was answered 200 ({counts(st['put_fail'])})")
    wfails = sum(st["put_fail"].values()) + sum(st["get_fail"].values())
    rfails = sum(st["read_fail"].values())
    return dict(
        title="50 writers and 20 readers through the app",
        promise="a writer's GET after its PUT reads its own write (0 stale)",
        measured=(f"{st['stale']} stale of {st['gets']:,} GETs after a PUT ({st['stale_hit']} of them "
                  f"X-Cache: hit), {wfails} writer errors; {st['reads']:,} concurrent reads, "
                  + (f"{rfails} of them failed ({counts(st['read_fail'])}; batchd counted "
                     f"{metric(m, 'batchd_http_requests_total', status='4xx'):.0f} 4xx and "
                     f"{metric(m, 'batchd_http_requests_total', status='5xx'):.0f} 5xx answers)"
                     if rfails else "none failed")),
        met=st["stale"] == 0 and st["gets"] > 0,
        how=(f"`tests/integration/upstream_app.py` is the `[upstream]` (its `PUT /api/sessions/{{id}}` updates "
             f"the title in PostgreSQL); batchd invalidates `session:{{id}}` on it. Each of {n_writers} writers owns "
             f"one id (s101..s150) and, for {seconds} s, PUTs a new title through batchd, then GETs "
             f"`/v1/sessions/{{id}}` on the same connection (the title must be the one it just wrote), then "
             "waits 0.3–0.7 s, so each write meets a cached entry that readers are hitting. Meanwhile "
             f"{n_readers} reader connections (`wrk -t1`, as fast as answered) read the same ids: "
             f"{n_readers // 2} one random id per request, {n_readers - n_readers // 2} {n_writers} random ids of "
             "them per request, so loads race the invalidations. batchd reaches Redis through a relay that delays each "
             "piece of a command or reply by 0–2 ms (`RedisLink` in tools/lib/chaos_load.py), as a busy network "
             "would: commands and replies on different pool connections overtake each other, which is what "
             "opens the race (on loopback alone it is too narrow to hit)."),
        details={
            "writes": f"{st['puts']:,} PUTs answered 200 (p50 {fmt_ms(put_lat.ms(50))}, p99 {fmt_ms(put_lat.ms(99))}); "
                      f"failures {counts(st['put_fail'])}",
            "writer GETs": f"{st['gets']:,}: {st['fresh']:,} read their write, {st['stale']} stale "
                           f"({st['stale_prev']} the writer's previous title, {st['stale_hit']} X-Cache: hit); "
                           f"failures {counts(st['get_fail'])}; p50 {fmt_ms(get_lat.ms(50))}",
            "stale examples": "; ".join(stale_examples) or "none",
            "reader GETs": f"{st['reads']:,}, failures {counts(st['read_fail'])}",
            "connections closed by batchd": counts(by_label(m, "batchd_connections_closed_total", "reason")),
            "cache results": counts(by_label(m, "batchd_cache_results_total", "result")),
            "batchd counters": f"4xx answers {metric(m, 'batchd_http_requests_total', status='4xx'):.0f}, "
                               f"5xx answers {metric(m, 'batchd_http_requests_total', status='5xx'):.0f}, "
                               f"invalidations {metric(m, 'batchd_invalidations_total'):.0f}, invalidation "
                               f"errors {metric(m, 'batchd_invalidation_errors_total'):.0f}, reads kept from "
                               f"joining an older one {metric(m, 'batchd_invalidation_unjoined_total'):.0f}, "
                               f"single-flight joins {metric(m, 'batchd_singleflight_joins_total'):.0f}",
        })
