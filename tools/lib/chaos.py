#!/usr/bin/python3
"""tools/lib/chaos.py: the driver behind tools/chaos.

tools/chaos has built batchd (release), started PostgreSQL under .chaos/pg
(tools/lib/common.sh) and loaded conf/demo.sql with 10,000 sessions. This
driver starts redis-server itself (it kills, stops and restarts it, with
or without AOF), a fresh batchd per scenario (each with the settings the
scenario needs), the app server of tests/integration when a scenario
needs one, and runs the load and the faults from one asyncio loop:

    scenario           fault                               load (tools/lib/chaos_load.py clients)
    -----------------  ----------------------------------  -------------------------------------------
    redis-faults       redis-server SIGKILL + restart,     readers checking every body against
                       SIGSTOP / SIGCONT                   PostgreSQL's own answer
    pg-restart         PostgreSQL stopped 3 s, started     90% cached ids, 10% kept out of Redis
    sse-delivery       CLIENT KILL TYPE pubsub x3, link    100 SSE clients, numbered events, publishers
                       cuts with replies withheld x3,      retrying with Idempotency-Key
                       Redis SIGKILL + restart (AOF)
    fresh-channels     none: the race of a new channel     a publish right after each subscriber's 200
    slow-readers       1,000 readers that do not read      48-byte and 1 KiB events, as fast as accepted
    slowloris          15,000 connections trickling bytes  wrk reading cached sessions meanwhile
    sigterm            SIGTERM to batchd                   keep-alive and new-connection readers
    read-your-write    0-2 ms of jitter on every Redis     50 writers (PUT, then GET) and 20 readers
                       command and reply                   through tests/integration/upstream_app.py
    near-coherence     CLIENT KILL TYPE pubsub x3, link    a changer SETting new versions of 200 hot
                       resets x2, batchd SIGSTOP 1 s       documents straight into Redis; readers
                                                           through the near cache (local_cache_bytes),
                                                           every answer's staleness measured

"link" is RedisLink (chaos_load.py), a relay between batchd and Redis that
can withhold replies, reset every connection, or delay traffic.

Each scenario is one row: what batchd promises, what was measured, and
whether the promise held. A scenario that cannot run says why; the run
goes on. The exit status is 0 whenever the run got to the end: this is a
measuring tool, the pass/fail tests are in tools/test.
"""
import asyncio
import json
import resource
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_env import ROOT, Env, Skip, log  # noqa: E402
from driver import driver_args, first_line, machine  # noqa: E402


# --- the run ---------------------------------------------------------------------------------------

def scenarios():
    import chaos_near
    import chaos_reads
    import chaos_streams
    return [
        ("redis-faults", chaos_reads.redis_faults),
        ("pg-restart", chaos_reads.pg_restart),
        ("sse-delivery", chaos_streams.sse_delivery),
        ("fresh-channels", chaos_streams.fresh_channels),
        ("slow-readers", chaos_streams.slow_readers),
        ("slowloris", chaos_streams.slowloris),
        ("sigterm", chaos_reads.sigterm),
        ("read-your-write", chaos_reads.read_your_write),
        ("near-coherence", chaos_near.near_coherence),
    ]


async def run_all(env, only):
    rows = []
    for key, fn in scenarios():
        if only and key not in only:
            continue
        log(f"== {key}")
        t0 = time.monotonic()
        try:
            row = await fn(env)
        except Skip as e:
            row = dict(promise="", measured=f"n/a: {e}", met=None, details={})
        except Exception as e:  # a broken scenario must not stop the others
            (env.run / "logs" / f"{key}.traceback").write_text(traceback.format_exc())
            row = dict(promise="", measured=f"n/a: {type(e).__name__}: {e}", met=None, details={})
        finally:
            # Whatever the scenario left running (batchd, the app) goes.
            for name, p in list(env.procs.list):
                if name != "redis":
                    env.procs.stop(p)
            env.redis_stop()
        row["key"] = key
        row["seconds"] = round(time.monotonic() - t0, 1)
        row["measured"] = " ".join(str(row["measured"]).split()).replace("|", "/")
        log(f"   {key}: {row['measured']}  met: {row['met']}  ({row['seconds']:.0f} s)")
        rows.append(row)
    return rows


def build_info(build):
    btype = "?"
    try:
        opts = json.loads((Path(build) / "meson-info" / "intro-buildoptions.json").read_text())
        btype = next((o["value"] for o in opts if o["name"] == "buildtype"), "?")
    except (OSError, ValueError):
        pass
    b = Path(build) / "batchd"
    built = datetime.fromtimestamp(b.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") \
        if b.exists() else "?"
    rel = Path(build).resolve()
    rel = rel.relative_to(ROOT) if rel.is_relative_to(ROOT) else rel
    return f"`{rel}/batchd`, meson buildtype {btype}, built {built}"


PROMISE_NOTE = {True: "yes", False: "**no**", None: "—"}

REPRODUCE = """\
```sh
tools/chaos                          # every scenario, about {full} minutes; writes bench/results/chaos.md
tools/chaos --quick                  # shorter runs of every scenario, about 2 minutes: .chaos/chaos-quick.md
tools/chaos --only sse-delivery,slowloris    # some scenarios: .chaos/chaos-partial.md
CHAOS_BUILD_DIR=build-x tools/chaos  # an existing build instead of building build-release/
```

Everything runs on loopback ports from 27301 (`CHAOS_PORT_BASE`), under `.chaos/` (logs in
`.chaos/logs/`, one batchd log per scenario), with its own redis-server and PostgreSQL, and is
stopped at the end. As root it installs the Debian packages it needs. Nothing is pinned to a CPU:
load generators, batchd, Redis and PostgreSQL share the machine's cores."""


def report(env, rows, wall, out):
    cpu, ncpu, mem, kernel = machine()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip() or "?"
    mode = "quick" if env.quick else "full"
    args = (" --quick" if env.quick else "") + (f" --only {env.a.only}" if env.a.only else "")
    L = ["# batchd under faults: tools/chaos", ""]
    bdir = Path(env.a.build).resolve()
    bdir = str(bdir.relative_to(ROOT) if bdir.is_relative_to(ROOT) else bdir)
    prefix = "" if bdir == "build-release" else f"CHAOS_BUILD_DIR={bdir} "
    L.append(f"`{prefix}tools/chaos{args}` ({mode} run) on {when}, whole run {int(wall // 60)} min {int(wall % 60)} s "
             f"(set-up {env.a.setup_seconds:.0f} s).")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    L.append(f"| machine | {cpu}, {ncpu} cores, {mem:.0f} GiB, Linux {kernel} |")
    L.append(f"| git revision | {rev} |")
    L.append(f"| batchd build | {build_info(env.a.build)} |")
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "daemon", "proto", "meson.build"],
                           capture_output=True, text=True).stdout.splitlines()
    if dirty:
        L.append(f"| work tree | {len(dirty)} files under daemon/, proto/ or meson.build had uncommitted changes "
                 "when this was written; a build of the work tree includes them |")
    L.append(f"| redis-server | {first_line(['redis-server', '--version'])} |")
    L.append(f"| PostgreSQL | {first_line([str(env.pg_bin / 'postgres'), '--version'])} |")
    if env.unknown_keys:
        L.append(f"| settings left out | {', '.join(sorted(env.unknown_keys))}: in conf/batchd.ini but unknown "
                 "to this build |")
    L.append("")
    met = [r for r in rows if r["met"] is not None]
    L.append(f"{sum(1 for r in met if r['met'])} of {len(rows)} promises held"
             + (f"; {len(rows) - len(met)} not measured" if len(met) < len(rows) else "") + ".")
    L.append("")
    L.append("| # | scenario | promise | measured | met |")
    L.append("|---:|---|---|---|:---:|")
    for i, r in enumerate(rows, 1):
        L.append(f"| {i} | {r['key']}: {r.get('title', '')} | {r['promise']} | {r['measured']} | "
                 f"{PROMISE_NOTE[r['met']]} |")
    L.append("")
    L.append("## Scenarios")
    L.append("")
    for i, r in enumerate(rows, 1):
        L.append(f"### {i}. {r['key']} ({r['seconds']:.0f} s)")
        L.append("")
        if r.get("how"):
            L.append(r["how"])
            L.append("")
        for k, v in r.get("details", {}).items():
            L.append(f"- {k}: {v}")
        if r.get("details"):
            L.append("")
    L.append("## How to reproduce")
    L.append("")
    L.append(REPRODUCE.format(full=5))
    L.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L))
    doc = {"when": when, "mode": mode, "args": args.strip(), "git": rev, "build": build_info(env.a.build),
           "machine": {"cpu": cpu, "cores": ncpu, "mem_gib": round(mem, 1), "kernel": kernel},
           "wall_seconds": round(wall, 1), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    print("\n".join(L))
    log(f"\nWritten to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
        f"(and {out.with_suffix('.json').name}).")


def main():
    a = driver_args(__doc__).parse_args()

    only = [s for s in a.only.split(",") if s]
    known = [k for k, _ in scenarios()]
    bad = [s for s in only if s not in known]
    if bad:
        log(f"unknown scenario {', '.join(bad)}; choose from {', '.join(known)}")
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def stop(*_):
        log("interrupted: stopping what tools/chaos started")
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    env = Env(a)
    t0 = time.monotonic()
    try:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        rows = asyncio.run(run_all(env, only))
        report(env, rows, time.monotonic() - t0 + a.setup_seconds, Path(a.out))
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        env.redis_stop()
        env.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
