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
every connection) run as processes of their own (chaos_near_load.py, with
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
from chaos_near_stats import *  # noqa: E402,F401,F403
from chaos_near_load import *  # noqa: E402,F401,F403


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
    me = str(Path(__file__).resolve().with_name("chaos_near_load.py"))
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
    if what == "selfcheck":
        print(selfcheck())
    else:
        sys.exit(__doc__)
