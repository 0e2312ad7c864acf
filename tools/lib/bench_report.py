"""tools/lib/bench_report.py: the report tools/bench writes once every
scenario has run: bench/results/<out>.md (machine and versions, goals,
one table per scenario, the near cache's memory and profile tables
(bench_near.py), the change from the previous run, the method),
the same rows in <out>.json, and after a full pinned run the README's
benchmark section (bench_format.update_readme).
"""
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import bench_gzip
import bench_near
import bench_sse
from bench_conf import N_SESSIONS, ROOT
from bench_env import log
from bench_format import fmt_num, fmt_ms, fmt_ratio, fmt_rt, row_ratio, sse_value, update_readme
from driver import first_line, machine


def dpkg_version(pkg):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg], capture_output=True, text=True)
    if out.returncode != 0 or "install ok installed" not in out.stdout:
        return None
    return out.stdout.split()[-1]


def os_name():
    for line in open("/etc/os-release"):
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "?"


def versions(b):
    """(name, version) of batchd and every contender and load generator."""
    py = subprocess.run(["/usr/bin/python3", "-c",
                         "import sys,fastapi,uvicorn,uvloop,httptools,redis,asyncpg,starlette,jwt;"
                         "print(sys.version.split()[0],fastapi.__version__,starlette.__version__,"
                         "uvicorn.__version__,uvloop.__version__,httptools.__version__,redis.__version__,"
                         "asyncpg.__version__,jwt.__version__)"], capture_output=True, text=True).stdout.split()
    py += ["?"] * (9 - len(py))
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip() or "?"
    nchan = dpkg_version("libnginx-mod-nchan")
    return [
        ("batchd", f"git {rev} (meson release build)"),
        ("sse-load", f"git {rev}" if b.sse_load.exists() else "not built"),
        ("redis-server", first_line(["redis-server", "--version"])),
        ("PostgreSQL", first_line([str(Path(b.a.pg_bin) / "postgres"), "--version"])),
        ("nginx", first_line(["nginx", "-v"]) + f" (nginx-light {dpkg_version('nginx-light') or '?'})"),
        ("nchan", f"libnginx-mod-nchan {nchan}" if nchan else "not installed"),
        ("Webdis", f"webdis {dpkg_version('webdis') or 'not installed'}"),
        ("wrk", first_line(["wrk", "-v"])),
        ("redis-benchmark", first_line(["redis-benchmark", "--version"])),
        ("pgbench", first_line(["pgbench", "--version"])),
        ("FastAPI stack", f"Python {py[0]}, FastAPI {py[1]}, Starlette {py[2]}, uvicorn {py[3]}, uvloop {py[4]}, "
                          f"httptools {py[5]}, redis-py {py[6]}, asyncpg {py[7]}, PyJWT {py[8]}"),
    ]


def goals(b, only):
    """The issues' goals, each as (text, measured ratio or None, target or
    None (reported, no goal), how, upper (met when ratio <= target))."""
    out = []

    def best(scenario, prefix):
        return max(b.measured(scenario, prefix), key=lambda r: r["rps"], default=None)

    def goal(text, scenario, peer, target):
        r = b.ref(scenario)
        if scenario not in only:
            return
        if r is None or peer is None:
            out.append((text, None, target, "not measured", False))
        else:
            who = "batchd" if r["system"] == "batchd" or scenario == "http" else r["system"]
            out.append((text, r["rps"] / peer["rps"], target, f"{who} {r['rps']:,.0f} / {peer['system']} "
                                                               f"{peer['rps']:,.0f} req/s", False))

    goal("single reads ≥ 2× Webdis", "hot-single", b.find("hot-single", "Webdis"), 2.0)
    goal("single reads ≥ 20× FastAPI", "hot-single", best("hot-single", "FastAPI"), 20.0)
    goal("50-id batches ≥ 0.8× redis-benchmark MGET-50", "hot-batch", b.find("hot-batch", "redis-benchmark"), 0.8)
    goal("50-id batches ≥ 30× FastAPI-MGET", "hot-batch", best("hot-batch", "FastAPI MGET"), 30.0)
    goal("cold batches ≥ 0.8× pgbench ANY-50", "cold-batch", b.find("cold-batch", "pgbench ANY-50"), 0.8)
    goal("/healthz ≥ 0.9× nginx", "http", b.find("http", "nginx"), 0.9)
    goal("owner lists ≥ 10× the fixed FastAPI app (page query + MGET)", "list",
         best("list", "FastAPI after ("), 10.0)
    # The owner check's cost: access = owner ÷ access = public ≥ 0.9.
    goal("owner check costs ≤ 10% (access = owner ÷ access = public)", "owner",
         b.find("owner", "batchd, access = public"), 0.9)
    return out + bench_near.goals(b, only) + bench_gzip.goals(b, only)


def goal_met(ratio, target, upper):
    if ratio is None or target is None:
        return "—"
    return "yes" if (ratio <= target if upper else ratio >= target) else "**no**"


def goal_target(target, upper):
    return "—" if target is None else f"{'≤' if upper else '≥'} {target:g}×"


def compare_previous(b):
    """Each row against the previous run written to the same file (same
    mode, same CPU placement): the bench's own reproducibility check.
    Returns (markdown lines, one-line summary or None)."""
    prev_path = Path(b.a.out).with_suffix(".json")
    try:
        prev = json.loads(prev_path.read_text())
    except (OSError, ValueError):
        return [], None
    if prev.get("placement") != b.a.cpu or prev.get("mode", "").split(" ")[0] != ("quick" if b.quick else "full"):
        return [], None
    old = {(r["scenario"], r["system"], r["conns"]): r for r in prev.get("rows", []) if not r.get("na")}
    diffs = []
    for r in b.rows:
        o = old.get((r["scenario"], r["system"], r["conns"]))
        if o and not r["na"] and o.get("rps"):
            diffs.append((r["rps"] / o["rps"] - 1, r, o))
    for s in b.sse:
        o = next((x for x in prev.get("sse", []) if x["system"] == s["system"] and x["test"] == s["test"]
                  and x.get("result")), None)
        if o and s.get("result"):
            now = sse_value(s["result"], "latency_ms_p50")
            then = sse_value(o["result"], "latency_ms_p50")
            if now and then:
                diffs.append((now / then - 1, dict(scenario="sse", system=f"{s['system']} {s['test']} (p50 latency)",
                                                   other_cpu=s.get("other_cpu", 0)),
                              dict(other_cpu=o.get("other_cpu", 0))))
    if not diffs:
        return [], None
    within = sum(1 for d, _, _ in diffs if abs(d) <= 0.15)
    repro = (f"Reproducibility: {within} of {len(diffs)} rows within ±15% of the previous run of the same "
             f"mode and CPU placement ({prev.get('when', '?')}; req/s, SSE: p50 latency).")
    L = [f"## Change from the previous run ({prev.get('when', '?')})", "",
         f"{within} of {len(diffs)} rows within ±15% of the previous run of the same mode and CPU placement "
         "(req/s; SSE: p50 latency). Largest changes first:", "",
         "| scenario | system | change | others' CPU now / then |", "|---|---|---:|---:|"]
    for d, r, o in sorted(diffs, key=lambda x: -abs(x[0]))[:12]:
        L.append(f"| {r['scenario']} | {r['system']} | {d:+.0%} | {r.get('other_cpu', 0):.0%} / "
                 f"{o.get('other_cpu', 0):.0%} |")
    L.append("")
    return L, repro


def scenario_table(b, sc):
    """The markdown table of a wrk/redis-benchmark/pgbench scenario's rows."""
    extra = sc.column
    L = [f"### {sc.name}: {sc.title}", "", sc.explain, "",
         "| system | conns | req/s | p50 ms | p99 ms | Redis cmds/req | PG queries/req | PG rows/req "
         + (f"| {extra[0]} " if extra else "") + "| batchd ÷ row | others' CPU | note |",
         "|---|" + "---:|" * (10 if extra else 9) + "---|"]
    for r in [r for r in b.rows if r["scenario"] == sc.name]:
        ref = b.ref(sc.name, r.get("vs"))
        name = r["system"] + (" *(machine limit)*" if r["kind"] == "limit" else "")
        if r["na"]:
            L.append(f"| {name} | {r['conns']} | n/a: {r['na']} | | | | | | | | |" + (" |" if extra else ""))
            continue
        ratio = "—"
        note = r["note"]
        if ref is not None and r is not ref:
            ratio = fmt_ratio(row_ratio(ref, r))
            if r["ids"] != ref["ids"]:
                note = "; ".join(x for x in [note, f"{r['rps'] * r['ids']:,.0f} ids/s; ratio in ids/s"] if x)
        L.append(f"| {name} | {r['conns']} | {fmt_num(r['rps'])} | {fmt_ms(r['p50'])} | "
                 f"{fmt_ms(r['p99'])} | {fmt_rt(r['redis'])} | {fmt_rt(r['pg'])} | "
                 f"{fmt_rt(r.get('pg_rows'))} | "
                 + (f"{fmt_rt(r.get(extra[1]))} | " if extra else "") + f"{ratio} | "
                 f"{r.get('other_cpu', 0):.0%} | {note} |")
    L.append("")
    return L


def report(b, scenarios, only, timing, wall):
    """Writes the report of the scenarios (bench.py's registry) that ran
    (only, their names), prints it, and returns the exit status."""
    cpu, ncpu, mem, kernel = machine()
    when = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    others = [r["other_cpu"] for r in b.rows if r.get("other_cpu") is not None]
    others += [s["other_cpu"] for s in b.sse if s.get("other_cpu") is not None]
    mode = (("quick" if b.quick else "full") + f" ({b.dur} s per row"
            + (f", as the best of {b.rounds} interleaved slices, {b.slice_text}," if b.rounds > 1 else "")
            + f" after {b.warm} s of warm-up)")
    if b.a.only or b.a.profile:
        mode += f", only {', '.join(only)}"
    placement = ("load generators (wrk, redis-benchmark, pgbench, sse-load) pinned to CPU 0; every server and "
                 "its backends (batchd, redis-server, PostgreSQL, nginx, Webdis, FastAPI with 1 worker) pinned "
                 "to CPU 1; FastAPI with 2 workers may use both CPUs (so it shares CPU 0 with wrk)"
                 if b.pinned else "nothing pinned: load generators, servers and backends share both CPUs")
    L = ["# batchd benchmark", "",
         f"`tools/bench{' --quick' if b.quick else ''}{' --only ' + b.a.only if b.a.only else ''}"
         f"{' --profile' if b.a.profile else ''}{f' --rounds {b.a.rounds}' if b.a.rounds else ''}"
         f"{' --cpu shared' if not b.pinned else ''}` on "
         f"{when}: {mode}; "
         f"whole run {int(wall // 60)} min {int(wall % 60)} s (set-up {b.a.setup_seconds:.0f} s, "
         + ", ".join(f"{k} {v:.0f} s" for k, v in timing.items()) + ")."
         + (f" Processes outside the bench used {sum(others) / len(others):.0%} of a core on average "
            f"during the measured runs (most {max(others):.0%})." if others else ""),
         "",
         "## Machine", "",
         "| | |", "|---|---|",
         f"| CPU | {cpu}, {ncpu} cores |",
         f"| Memory | {mem:.0f} GiB |",
         f"| Kernel | Linux {kernel} |",
         f"| OS | {os_name()} |",
         f"| CPU placement | {placement} |"]
    L += [f"| {name} | {v} |" for name, v in versions(b)]
    L.append("")

    gs = goals(b, only)
    if gs:
        L += ["## Goals", "", "| goal | measured | target | met | from |", "|---|---:|---:|:---:|---|"]
        for text, ratio, target, how, upper in gs:
            L.append(f"| {text} | {fmt_ratio(ratio)} | {goal_target(target, upper)} | "
                     f"{goal_met(ratio, target, upper)} | {how} |")
        scored = [((t / r if up else r / t), text, r, t) for text, r, t, _, up in gs
                  if r is not None and t is not None]
        if scored:
            frac, text, r, t = min(scored)
            verdict = "short of" if frac < 1 else "above"
            L += ["", f"Largest gap: **{text}**: measured {fmt_ratio(r)}, {frac:.0%} of the goal ({verdict} it)."]
        L.append("")

    L += ["## Results", "",
          "req/s and latency from wrk (`-t1`, 64 connections unless the row says otherwise; "
          "p50/p99 from its latency distribution), redis-benchmark (64 clients) or pgbench (16 clients). "
          "Redis cmds/req and PG queries/req are counted by Redis (`INFO commandstats`) and PostgreSQL (`pg_stat_statements`), divided by the requests served (for wrk rows: those it completed plus the one left in flight on each "
          "connection when it stopped, which the server still carries out). "
          "PG rows/req is the rows those queries returned: the ids each request had to load from PostgreSQL. "
          "\"batchd ÷ row\" is batchd's req/s in that scenario divided by the row's. \"others' CPU\" is "
          "the CPU that processes outside the bench used during the row, in % of one core (the machine "
          "is shared; a row with a busy neighbour is not comparable).", ""]
    for sc in scenarios:
        if sc.name in only and sc.name != "sse":
            L += sc.section(b, sc) if sc.section else scenario_table(b, sc)
    L += bench_near.memory_section(b)
    coal = [r for r in b.rows if r["kind"] in ("batchd", "batchd-c256") and not r["na"]
            and r["scenario"] in ("hot-single", "hot-batch")]
    if coal:
        L += ["**Coalescing** (Redis commands per 1,000 requests, from `INFO commandstats`): " + "; ".join(
            f"{r['scenario']} at {r['conns']} connections: {r['redis'] * 1000:,.0f}" for r in coal) + ".", ""]
    if "sse" in only:
        L += bench_sse.section(b, next(sc.title for sc in scenarios if sc.name == "sse"))

    changes, repro = compare_previous(b)
    L += changes
    L += ["## Method", ""]
    L += METHOD.format(dur=b.dur, warm=b.warm, n=N_SESSIONS, slicing=(
        "" if b.rounds == 1 else
        f", as {b.rounds} slices ({b.slice_text}) taken in rounds across the scenario's rows (A B C A B C) "
        "with the best slice shown: this VM's speed drifts by tens of per cent over minutes with nothing "
        "visible running, interleaving gives a scenario's contenders the same conditions, and interference "
        "only slows a run down")).strip().splitlines()
    if any(n in only for n in bench_near.NEAR_USERS):
        L += bench_near.METHOD.strip().splitlines()
    L.append("")
    text = "\n".join(L)
    out = Path(b.a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    doc = {"mode": mode, "placement": b.a.cpu, "when": when,
           "machine": {"cpu": cpu, "cores": ncpu, "kernel": kernel},
           "goals": [dict(text=t, ratio=r, target=g, how=h, upper=u) for t, r, g, h, u in gs],
           "profile": b.profile_rows, "callgrind": b.callgrind_rows, "near": b.near_runs,
           "repro": repro,
           "rows": b.rows, "sse": b.sse}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    print(text)
    log(f"\nWritten to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
        f"(and {out.with_suffix('.json').name}).")
    if not b.quick and not b.a.only and b.pinned and out.name == "latest.md":
        if update_readme(ROOT / "README.md", doc):
            log("README.md: benchmark section rewritten from this run.")
    return 0


METHOD = """
- **Dataset**: `conf/demo.sql` with {n:,} sessions (s1..s{n}, 0–9 messages each). Every contender reads the key
  `session:{{id}}` and, on a miss, runs the same SQL text, batchd's `by_ids` from `conf/batchd.ini`
  (a session plus its message count and last message time); FastAPI passes it to asyncpg as is, pgbench as
  `ANY(ARRAY['s' || :i1, ...]::text[])` (pgbench has no text-array variables).
- **Runs**: each row gets {warm} s of warm-up with the same load, then {dur} s measured{slicing}. HTTP rows use
  `wrk -t1 -c64` (and `-c256` for the coalescing rows) with `tools/wrk/bench.lua`, which draws 4,096 random
  requests at start and replays them, so the Lua cost per request is nil and the same for every contender;
  its `done()` hook prints p50/p99 from wrk's latency distribution.
- **Peers**: nginx-light with one worker; Webdis with one thread (`"threads": 1`; it ships with 2);
  FastAPI + uvicorn (`--loop uvloop --http httptools`) with 1 and 2 workers, redis.asyncio and an asyncpg
  pool of 10 per worker, returning the cached JSON text as is (no parse/re-encode), which is the fastest
  such an app can be; the N+1 routes await one GET per id and one query per miss, the batched routes do one
  MGET and one `= ANY` query for the misses. uvicorn's workers share one listening socket, so how wrk's 64
  connections split between the 2 workers varies from run to run, and so does that row. batchd runs as
  configured in `conf/batchd.ini` (Redis and PostgreSQL pools of 4), ports and connection limits aside.
- **Machine limits**: redis-benchmark (`-c 64`, no pipelining, random keys holding the same documents),
  pgbench (`-M prepared -c 16 -j 1`, random ids).
- **Cold and missing ids stay cold**: the contenders write back what they load, so on 10,000 sessions a
  cold 50-id batch at a few thousand requests per second would have cached everything within a second and
  "cold" would have meant the first second only. During the cold rows a janitor (`redis-cli -r -1 -i 0.002`,
  on the load generators' CPU) sends `FLUSHALL ASYNC` every 2 ms; during the mixed rows (s1..s9000 cached)
  it sends `UNLINK` of the 1,000 cold keys every 2 ms. Write-backs are real and stored, and live about a
  millisecond: a few per cent of the would-be misses hit, which "PG rows/req" shows (ideal: 50 cold, 5 mixed;
  batchd is lower still because requests in flight together share one load). The janitor's commands are
  left out of the Redis column.
- **Round trips** are counted by the backends for the measured run only (`CONFIG RESETSTAT` and
  `pg_stat_statements_reset()` after the warm-up): Redis commands other than health checks (PING, batchd's
  SUBSCRIBE probe), the bench's own (INFO, CONFIG) and the janitor's; and calls of statements reading
  `FROM sessions`. Pipelined commands count one each, and so does each command a script (batchd's
  write-back) runs inside Redis, so for script rows the Redis column is work done, not round trips (the
  note gives the script calls per request).
- **CPU placement**: with 2 cores shared by the load generator, the server under test and its backends,
  the default (`--cpu pinned`) gives the load generator CPU 0 and everything it measures CPU 1, so a
  result is per server core and wrk never steals from the server. `--cpu shared` leaves the scheduler
  to it.
- **Lists and access** (scenarios list, owner): `tools/lib/bench_owners.sql` adds `owner_id` to the sessions
  (every 10th, s10..s10000, is u1's: 1,000 sessions interleaved in time with 9,000 of 45 other owners) and an
  index `(owner_id, created_at DESC, id DESC)`. A second batchd, same binary, Redis and PostgreSQL, runs
  `.bench/batchd-access.ini`: `[auth] jwt_secret_file` (a random HS256 secret under `.bench/`), two resources
  over the same documents and keys (`owned:session:{{id}}`, by_ids with `owner_id` added) at `/v1/pub/sessions`
  (access = public) and `/v1/own/sessions` (access = owner), and `[list my-sessions]` at `/v1/me/sessions`
  (ttl = 30, max_limit = 200) with the page_query the FastAPI /after route runs too. wrk sends u1's token with
  `-H "Authorization: Bearer ..."`; FastAPI verifies it with PyJWT. Before a list row is measured its
  contender's 20 pages are walked through `next` and must hold u1's 1,000 ids in page_query's order; an owner
  row needs 401 without a token and 404 for another owner's document. The FastAPI /before row runs with 8
  connections: each request reads all 20,000 keys of the keyspace (SCAN, MGET of the owned ones, parse).
- **Not measured here**: TLS, HTTP/2, anything across a real network.
"""
