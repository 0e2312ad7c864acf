#!/usr/bin/python3
"""tools/lib/bench.py: the driver behind tools/bench.

tools/bench has already built batchd, started redis-server and PostgreSQL
(tools/lib/common.sh) and loaded conf/demo.sql with 10,000 sessions. This
script starts the rest, measures every row and writes the table:

    load generators (CPU 0 when pinned)        servers (CPU 1 when pinned)
    -----------------------------------        ---------------------------
    wrk -t1 -c64 -s tools/wrk/bench.lua  --->  batchd ------+--> redis-server
                                         --->  nginx        |--> PostgreSQL
                                         --->  Webdis ------+
                                         --->  FastAPI -----+
                                         --->  Varnish --> FastAPI
                                         --->  batchd-near, batchd-fill* (near cache on)
    redis-benchmark                      --->  redis-server
    pgbench                              --->  PostgreSQL
    sse-load                             --->  batchd SSE, nginx + nchan
    wrk -H "Authorization: Bearer <JWT>" --->  batchd-access (list, owner)
                                         --->  FastAPI /before, /after

The near-cache rows (hot-single, hot-batch), near-fill and profile run
against batchd-near, batchd-fill, batchd-fill32 and batchd-fill0
(bench_near.py): the first batchd's config with local_cache_bytes (256,
16, 32 MiB, and 0 for near-fill's near-off row) on ports
of their own; until batchd knows that key their rows say n/a. They are
stopped before any other scenario (they would take an invalidation
message for every key the mixed and cold janitors drop). hot-single also
measures batchd's own /healthz and Varnish (Debian varnishd in front of
the FastAPI peer, every request a hit) in the same run, so that the
issue's goals are ratios of one run (the report's Goals).

The list and owner scenarios run against a second batchd, "batchd-access"
(same binary, same Redis and PostgreSQL), whose config adds [auth], two
resources over the same owner-bearing documents (access = public and
access = owner) and [list my-sessions]; the first batchd's config, which
every other scenario measures, stays as conf/batchd.ini has it.

Every row is measured the same way: a warm-up run, then Redis
"CONFIG RESETSTAT" and pg_stat_statements_reset(), then the measured run,
then INFO commandstats and pg_stat_statements give the round trips per
request, counted by the backends, not by the system under test.

A row that cannot be measured (a peer that does not start, a batchd
feature that is not built yet) says "n/a: why" and the run goes on. The
exit status is 0 whenever the run got to the end: ratios are reported,
never enforced.

This file is the entry point and the list of scenarios; the rest is in

    bench_conf.py    the dataset's shape, conf/batchd.ini read, configs written
    bench_env.py     servers started on demand, cache states, counters, CPU watch
    bench_jobs.py    a row measured in slices (wrk, redis-benchmark, pgbench)
    bench_reads.py   http, hot-single, hot-batch, mixed, cold-batch, proxy
    bench_near.py    near cache rows, Varnish, near-fill, their goals and memory table
    bench_profile.py profile: perf stat, strace -c and callgrind per request
    bench_access.py  list, owner
    bench_sse.py     sse, and its table
    bench_report.py  bench/results/*.md and .json
    bench_format.py  number formats, and the README's section
    driver.py        what bench.py and chaos.py share
"""
import resource
import signal
import sys
import time
from typing import NamedTuple

import bench_access
import bench_near
import bench_profile
import bench_reads
import bench_sse
from bench_env import NotAvailable, log
from bench_jobs import Bench
from bench_report import report
from driver import driver_args


class Scenario(NamedTuple):
    name: str            # what --only takes
    title: str           # its heading in the report
    explain: str         # the note under the heading (the sse section has its own)
    run: object          # run(bench): measures its rows
    column: tuple = None  # (header, row field): a column the scenario's table adds
    default: bool = True  # part of a run without --only (profile: only with --profile or --only)
    section: object = None  # section(bench, scenario) -> its report lines, instead of the usual table


SCENARIOS = [
    Scenario("http", "HTTP ceiling: a small fixed JSON answer",
             "batchd's `/healthz` on its admin listener against nginx `return 200` with the same body.",
             bench_reads.http),
    Scenario("hot-single", "Hot single-id read (all 10,000 sessions cached, random ids)",
             "batchd `GET /v1/sessions/{id}`, near cache off (batchd) and on (batchd, near cache: "
             "`local_cache_bytes = 256 MiB`, a process of its own); batchd's own `/healthz` (admin listener, the "
             "ceiling); Webdis `GET /GET/session:{id}`; FastAPI `GET /n1/sessions/{id}` "
             "(one GET, a query only on a miss); Varnish (Debian varnishd, default settings, `beresp.ttl = 1h`, "
             "cookies stripped) in front of FastAPI 1 worker's `/n1/sessions/{id}`, warmed with all 10,000 and "
             "checked all hits with varnishstat; redis-benchmark `GET` of the same documents, no pipelining.",
             bench_reads.hot_single),
    Scenario("hot-batch", "Hot 50-id batch (all cached, 50 random ids per request)",
             "batchd `GET /v1/sessions?ids=` (50 ids), near cache off and on; Webdis `/MGET/...`; FastAPI N+1 "
             "(50 GETs in turn) and batched (one MGET); redis-benchmark `MGET` of 50 keys; batchd on a 3-primary "
             "Redis Cluster (`cluster = yes`, no replicas, the same documents; a flush reads each node's keys with one read-only script call).",
             bench_reads.hot_batch),
    Scenario("near-fill", "Near caches full and evicting: 50-id batches over 64 MiB of distinct documents",
             "batchd with `local_cache_bytes` = 16 MiB (batchd-fill) and 32 MiB (batchd-fill32), and a fresh "
             "batchd with it off (batchd-fill0, for the load's own memory), under random 50-id batches over "
             "s1..sN, where Redis holds the 10,000 sessions and "
             "copies of them under s10001..sN, 64 MiB of documents (4× and 2× the bounds; wrk replays 4,096 "
             "requests, ~160k distinct ids a run, more than either cache holds): each near cache fills during the "
             "warm-up and evicts from then on. VmRSS is sampled every 100 ms during each slice (see Near cache: "
             "memory).", bench_near.near_fill),
    Scenario("mixed", "Mixed 50-id batch: 90% of ids cached, 10% misses",
             "Each id is drawn from s1..s9000 (cached) with p=0.9 and from s9001..s10000 (never cached) with "
             "p=0.1, so about 5 of every request's 50 ids miss; a janitor keeps them out of Redis (see method).",
             bench_reads.mixed),
    Scenario("cold-batch", "Cold 50-id batch: every id misses Redis, PostgreSQL answers, write-back follows",
             "Redis starts empty and a janitor empties it every 2 ms, so (nearly) every id misses, is loaded "
             "from PostgreSQL and written back (see method). pgbench runs batchd's query text with the ids as "
             "an `ARRAY[...]` of parameters, prepared, 16 clients. batchd on a 3-primary Redis Cluster: a janitor "
             "per primary empties it the same way; write-backs go one script per slot.",
             bench_reads.cold_batch),
    Scenario("proxy", "Proxied request to a fixed upstream (nginx return 200)",
             "batchd `[upstream]` and nginx `proxy_pass` (keep-alive pool of 64) in front of the same origin, "
             "the HTTP-ceiling nginx; the origin's own row is the ceiling.",
             bench_reads.proxy),
    Scenario("sse", "SSE fan-out and sustained delivery", "", bench_sse.sse),
    Scenario("list", "A page of 50 of one owner's sessions (1,000 of 10,000), JWT-authenticated",
             "`GET .../me/sessions?limit=50[&after=cursor]` with `Authorization: Bearer` (HS256, sub = u1; every "
             "contender verifies it). batchd: `[list my-sessions]` over `[resource my_sessions]` (access = owner), "
             "page ids cached for `ttl = 30` s. FastAPI *before*: SCAN of the whole keyspace (COUNT 1000), MGET of "
             "every owned:session:* key, parse, filter, sort, slice. FastAPI *after*: batchd's page_query, then one "
             "MGET of the page (+ by_ids for misses). *first page*: the same page over and over (the hot case); "
             "*20 pages*: each request one of u1's 20 pages at random. \"SQL page queries/req\" counts the "
             "page_query in pg_stat_statements (1 per uncached page, 0 per cached one); PG queries/req counts "
             "by_ids. A walk row's ratio is against batchd's walk row.",
             bench_access.lists, column=("SQL page queries/req", "pg_page")),
    Scenario("owner", "Hot single read of an owned document: access = public against access = owner",
             "`GET /v1/{pub,own}/sessions/{id}` over the 1,000 documents u1 owns (all cached, random ids, the "
             "same token on every request), from two resources on the same keys and documents that differ only "
             "in `access = public` / `access = owner` (owner_field = owner_id), in one batchd. The rows run in "
             "alternation, A B A B ..., and each shows its median slice; \"batchd ÷ row\" on the public row is "
             "owner ÷ public (the owner check's cost is 1 minus it).",
             bench_access.owner),
    Scenario("profile", "Per request: perf stat, strace -c and callgrind, near cache off and on",
             f"batchd (/healthz, hot single, hot 50-id batch) and batchd-near (hot single, hot 50-id batch) under wrk "
             f"-t1 -c64, {bench_profile.PROFILE_SECONDS} s each with `perf stat -p` (task-clock, context switches, "
             "instructions and cycles where the VM exposes a PMU, syscalls counted by tracepoint: at full speed) and "
             f"redis-server's task-clock alongside, then {bench_profile.PROFILE_SECONDS} s with `strace -c -f -p` "
             "(counts only); divided by the requests wrk completed plus the 64 in flight. redis-benchmark MGET-50 "
             "(100,000 requests) with `perf stat` on redis-server. Instructions per request from callgrind (a batchd "
             "of each config under valgrind, instrumented around one wrk run per load).",
             bench_profile.profile, default=False, section=bench_profile.profile_section),
]
NAMES = [sc.name for sc in SCENARIOS]
DEFAULT = [sc.name for sc in SCENARIOS if sc.default]


def run(b, only, setup_seconds):
    """Measures the scenarios named in only, in SCENARIOS' order, stops the
    servers and writes the report; returns the exit status."""
    bad = [s for s in only if s not in NAMES]
    if bad:
        raise SystemExit(f"unknown scenario {bad}; choose from {', '.join(NAMES)}")
    t0 = time.monotonic()
    timing = {}
    try:
        b.ensure("batchd")
    except NotAvailable:
        pass
    for sc in SCENARIOS:
        if sc.name not in only:
            continue
        t = time.monotonic()
        bench_near.before_scenario(b, sc.name)
        log(f"== {sc.name}: {sc.title}")
        sc.run(b)
        timing[sc.name] = time.monotonic() - t
        log(f"   ({timing[sc.name]:.0f} s)")
    wall = time.monotonic() - t0 + setup_seconds
    b.stop_servers()
    return report(b, SCENARIOS, only, timing, wall)


def main():
    ap = driver_args(__doc__)
    ap.add_argument("--cpu", choices=["pinned", "shared"], default="pinned")
    ap.add_argument("--profile", action="store_true", help="add the profile scenario")
    ap.add_argument("--rounds", type=int, default=None, help="measured slices per row (default 3; --quick 1)")
    a = ap.parse_args()
    only = a.only.split(",") if a.only else list(DEFAULT)
    if a.profile and "profile" not in only:
        only.append("profile")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    def stop(*_):
        log("interrupted: stopping what the bench started")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    b = Bench(a)
    try:
        return run(b, only, a.setup_seconds)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        b.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
