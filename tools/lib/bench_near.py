"""tools/lib/bench_near.py: the near cache's part of tools/bench (issue 14:
documents held in batchd's own memory, kept coherent by Redis client
tracking), and the HTTP cache users would put in front of their app instead.

    hot-single  + batchd /healthz (admin listener), same run: the ceiling a single read is held to
                + batchd-near at 64 and 256 connections (local_cache_bytes = 256 MiB)
                + Varnish (Debian varnishd) caching the FastAPI peer's /n1/sessions/{id}, every request a hit
    hot-batch   + batchd-near, 50 ids
    near-fill   batchd-fill and batchd-fill32 (local_cache_bytes = 16 and 32 MiB) under 50-id batches
                over 64 MiB of distinct documents (Redis holds the 10,000 sessions + copies under more
                ids; 4x and 2x their bounds): full and evicting; VmRSS sampled during every slice;
                + batchd-fill0 (a fresh near-off process): the same load's own memory
    profile     (tools/bench --profile, or --only profile) in bench_profile.py

    NearServers (mixed into bench_jobs.Bench): start_batchd_near, start_batchd_fill, start_varnish
    goals(): the issue's near-cache goals, same run; memory_section(): the RSS table

batchd-near and the fill processes are bench_conf.write_near_conf()'s configs:
the bench's batchd.ini on ports of their own plus local_cache_bytes. A
batchd without the near cache refuses that key at `batchd -t`, and their
rows say "n/a: ..." with batchd's reason. Every scenario but hot-single,
hot-batch, near-fill and profile runs with them stopped: a process
tracking session:* gets an invalidation message for every key the mixed
and cold janitors drop (500k keys/s), work Redis would do on the measured
core.
"""
import http.client
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench_conf import N_SESSIONS, write_near_conf
from bench_env import NotAvailable, children, http_get, log, wait_port
from bench_format import fmt_num

NEAR_BYTES = 256 << 20      # batchd-near's local_cache_bytes
# near-fill's processes and their local_cache_bytes: with a small bound the
# load's own memory (connections, replies in flight: a few MiB, not part
# of the baseline) weighs more against the 10% slack, so two bounds.
FILL = {"batchd-fill": 16 << 20, "batchd-fill32": 32 << 20}
FILL_DOC_BYTES = 64 << 20   # near-fill: distinct document bytes in Redis (4x and 2x the bounds)
# Ids per near-fill request. wrk replays the 4,096 requests bench.lua drew
# at its start: at 50 ids that is ~160k distinct ids of the ~380k a run,
# ~45 MiB with bookkeeping, more than either cache holds, so both evict
# all along (a 64 MiB cache would hold a run's ids whole and evict only
# when the next run starts). More ids a request would grow the load's own
# memory (replies and answers in flight), which is not the cache's.
FILL_K = 50
RSS_SLACK = 1.10            # goal: RSS <= (local_cache_bytes + baseline) x 1.1
# near-fill's near-off process, fresh like the others: its VmRSS growth
# under the same load is the load's own memory (connections, replies in
# flight), which the baseline (before any read) does not hold.
FILL_OFF = "batchd-fill0"
ADMIN = {"batchd": "admin", "batchd-near": "near-admin", "batchd-fill": "fill-admin",
         "batchd-fill32": "fill32-admin", FILL_OFF: "fill0-admin", "batchd-cg": "cg-admin",
         "batchd-cg-near": "cg-near-admin"}
NEAR_USERS = {"hot-single", "hot-batch", "near-fill", "profile"}


# --- reading a process ------------------------------------------------------------------------


def rss(pid):
    """VmRSS of pid in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def metrics(port):
    """batchd's /metrics: "name{labels}" -> value."""
    try:
        status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except OSError:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and status == 200:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metric(ms, name, **labels):
    """The sum of name's series carrying labels; None when there is none."""
    found = [v for k, v in ms.items() if k.partition("{")[0] == name
             and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())]
    return sum(found) if found else None


def near_stats(port):
    ms = metrics(port)
    g = lambda n, **kw: metric(ms, n, resource="sessions", **kw)
    return dict(bytes=g("batchd_local_cache_bytes"), entries=g("batchd_local_cache_entries"),
                limit=g("batchd_local_cache_limit_bytes"), evictions=g("batchd_local_cache_evictions_total"),
                hit=g("batchd_local_cache_results_total", result="hit"),
                miss=g("batchd_local_cache_results_total", result="miss"),
                bypass=g("batchd_local_cache_results_total", result="bypass"),
                tracking=metric(ms, "batchd_redis_tracking_up"),
                requests=metric(ms, "batchd_http_requests_total"))


def mib(v):
    return "—" if v is None else f"{v / 1048576:,.1f} MiB"


# --- servers ------------------------------------------------------------------------------------


class NearServers:
    """Env.ensure()'s starters for the near-cache processes and Varnish."""

    near = None        # name -> dict(pid, admin, limit, base_rss, rss_log) of the running process
    near_runs = None   # every such dict, in start order (a process stopped and started again has two)
    profile_rows = None
    callgrind_rows = None
    def start_near(self, name, limit):
        if self.near is None:
            self.near, self.near_runs = {}, []
        conf = write_near_conf(self.run, self.port, name, name, ADMIN[name], limit)
        p = self.start_batchd_with(name, conf, self.port[name], self.port[ADMIN[name]])
        admin = self.port[ADMIN[name]]
        deadline = time.monotonic() + 15
        st = near_stats(admin)
        while limit and st["tracking"] != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
            st = near_stats(admin)
        if limit and (st["tracking"] is None or st["limit"] is None):
            raise NotAvailable(f"{name} took local_cache_bytes but its /metrics has no batchd_redis_tracking_up "
                               "or batchd_local_cache_limit_bytes")
        if limit and st["tracking"] != 1:
            raise NotAvailable(f"{name}: batchd_redis_tracking_up stayed {st['tracking']:g} for 15 s")
        # Baseline: started, tracking, no read yet.
        self.near[name] = dict(name=name, pid=p.pid, admin=admin, limit=limit, base_rss=rss(p.pid), rss_log=[])
        self.near_runs.append(self.near[name])
        log(f"  {name}: pid {p.pid}, baseline VmRSS {mib(self.near[name]['base_rss'])}, "
            f"local_cache_bytes {mib(limit)}")
        return p

    def start_batchd_near(self):
        return self.start_near("batchd-near", NEAR_BYTES)

    def start_batchd_fill(self):
        return self.start_near("batchd-fill", FILL["batchd-fill"])

    def start_batchd_fill32(self):
        return self.start_near("batchd-fill32", FILL["batchd-fill32"])

    def start_batchd_fill0(self):
        return self.start_near(FILL_OFF, 0)

    def start_varnish(self):
        """Debian's varnishd in the foreground under .bench/varnish (its own
        -n work dir, no CLI port, no jail when root), in front of FastAPI
        with 1 worker. Started like the other peers, so it gets their CPU."""
        if not shutil.which("varnishd"):
            raise NotAvailable("varnishd is not installed (Debian package varnish)")
        self.ensure("fastapi1")
        d = self.run / "varnish"
        d.mkdir(exist_ok=True)
        vcl = d / "bench.vcl"
        vcl.write_text(VCL.replace("@PORT@", str(self.port["fastapi1"])))
        argv = ["varnishd", "-F", "-n", str(d / "work"), "-a", f"127.0.0.1:{self.port['varnish']}",
                "-T", "none", "-f", str(vcl), "-s", "malloc,256m"]
        if os.getuid() == 0:
            argv += ["-j", "none"]
        p = self.procs.start("varnish", argv)
        wait_port(self.port["varnish"], p, timeout=30, name="varnishd")
        for c in children(p.pid):
            self.procs.record(c)
        self.varnish_dir = d / "work"
        return p

    def varnish_stats(self):
        out = subprocess.run(["varnishstat", "-n", str(self.varnish_dir), "-1", "-f", "MAIN.cache_hit",
                              "-f", "MAIN.cache_miss", "-f", "MAIN.s_pass", "-f", "MAIN.cache_hitpass",
                              "-f", "MAIN.cache_hitmiss"], capture_output=True, text=True, timeout=10)
        return {l.split()[0].split(".", 1)[1]: int(l.split()[1]) for l in out.stdout.splitlines() if l.strip()}

    def set_fill_cache(self):
        """Redis holds the 10,000 sessions and, under s10001..sN, copies of
        them (each with its own id), FILL_DOC_BYTES in all. Returns N."""
        docs = self.load_docs()
        avg = sum(map(len, docs.values())) / len(docs)
        n = max(N_SESSIONS, int(FILL_DOC_BYTES / avg))
        if self.cache == ("fill", n):
            return n
        self.set_cache("hot")
        ttl = self.cfg["ttl"]

        def extra():
            for i in range(N_SESSIONS + 1, n + 1):
                k = (i - 1) % N_SESSIONS + 1
                yield f"session:s{i}", docs[f"s{k}"].replace(f'"s{k}"', f'"s{i}"', 1)
        self.store(extra(), ttl)
        self.cache = ("fill", n)
        log(f"  near-fill: Redis holds {n:,} documents, {n * avg / 1048576:,.0f} MiB "
            f"({avg:.0f} bytes each on average)")
        return n


VCL = """vcl 4.1;
# tools/bench: Varnish in front of the FastAPI peer (1 worker); every read
# after the warm-up is a hit. Written by tools/lib/bench_near.py.
backend fastapi {
    .host = "127.0.0.1";
    .port = "@PORT@";
}

sub vcl_recv {
    # Nothing may turn a read into a pass: no cookie, no credential.
    unset req.http.Cookie;
    unset req.http.Authorization;
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    return (hash);
}

sub vcl_backend_response {
    unset beresp.http.Set-Cookie;
    set beresp.ttl = 1h;
    set beresp.grace = 0s;
    return (deliver);
}
"""


def before_scenario(b, name):
    """Stops the near-cache processes before a scenario that does not use them."""
    if name not in NEAR_USERS:
        for server in ["batchd-near", *FILL, FILL_OFF]:
            if server in b.started:
                log(f"  stopping {server} (not used by {name})")
                b.stop(server)


# --- rows ---------------------------------------------------------------------------------------


def warm_all(b, port):
    """Reads every session once, 500 ids a request: wrk replays 4,096
    requests drawn at its start, so a single-id warm-up would leave most
    of the 10,000 out of the near cache and the measured slice would load
    them (Varnish is warmed with all 10,000 the same way)."""
    for lo in range(1, N_SESSIONS + 1, 500):
        ids = ",".join(f"s{i}" for i in range(lo, min(lo + 500, N_SESSIONS + 1)))
        status, _, body = http_get(f"http://127.0.0.1:{port}/v1/sessions?ids={ids}")
        if status != 200:
            raise NotAvailable(f"warming the near cache: ?ids= answered {status} {body[:60].decode(errors='replace')}")


def near_job(b, scenario, system, kind, server, lua, conns=64, ids=1, note="", sample_rss=False):
    """A wrk row against a near-cache batchd: every session read once
    first (warm_all), then after the warm-up an answer must say X-Cache:
    local (else the note says what it said); each slice notes the share of
    ids the near cache answered (its own counters)."""
    port = b.port[server]
    j = b.http_job(scenario, system, kind, server, port, lua, conns=conns, ids=ids, note=note)
    prepare, once = j["prepare"], j["once"]
    opts = dict(a.split("=", 1) for a in lua)
    probe = opts["path"].replace("{ids}", ",".join(f"s{i}" for i in range(1, 51))).replace("{id}", "s1")

    def prepare2():
        b.ensure(server)
        if not sample_rss:
            warm_all(b, port)
        prepare()
        http_get(f"http://127.0.0.1:{port}{probe}")
        status, hdrs, _ = http_get(f"http://127.0.0.1:{port}{probe}")
        xc = {k.lower(): v for k, v in hdrs.items()}.get("x-cache")
        if status == 200 and xc != "local" and not sample_rss:
            j["note"] = "; ".join(x for x in (j["note"], f"after the warm-up answers say X-Cache: {xc}, not local")
                                  if x)

    def once2(seconds):
        near = b.near[server]
        s0 = near_stats(near["admin"])
        sampler = RssSampler(near["pid"], near["admin"]) if sample_rss else None
        try:
            res = once(seconds)
        finally:
            if sampler:
                sampler.stop()
        s1 = near_stats(near["admin"])
        looked = sum((s1[k] or 0) - (s0[k] or 0) for k in ("hit", "miss", "bypass"))
        notes = [res.get("note", "")]
        if looked:
            notes.append(f"near cache answered {((s1['hit'] or 0) - (s0['hit'] or 0)) / looked:.1%} of ids")
        if sampler:
            res["rss"] = sampler.result(s0, s1)
            near["rss_log"].append(dict(when=f"{scenario} slice", **res["rss"]))
            notes.append(f"VmRSS max {mib(res['rss']['rss_max'])}" + (
                f", cache {mib(res['rss']['bytes_max'])}, {res['rss']['evictions']:,.0f} evictions"
                if near["limit"] else ""))
        res["note"] = "; ".join(n for n in notes if n)
        return res

    j["prepare"], j["once"] = prepare2, once2
    return j


class RssSampler:
    """VmRSS every 100 ms and the near cache's gauges every 500 ms (admin:
    None, no gauges) while a slice runs."""

    def __init__(self, pid, admin=None):
        self.pid, self.admin = pid, admin
        self.rss, self.bytes = [], []
        self.done = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        n = 0
        while not self.done.wait(0.1):
            r = rss(self.pid)
            if r:
                self.rss.append(r)
            n += 1
            if n % 5 == 0 and self.admin:
                v = near_stats(self.admin)["bytes"]
                if v is not None:
                    self.bytes.append(v)

    def stop(self):
        self.done.set()
        self.t.join()

    def result(self, s0, s1):
        return dict(rss_max=max(self.rss, default=None), rss_end=rss(self.pid),
                    bytes_max=max(self.bytes + [s1["bytes"] or 0]), bytes_end=s1["bytes"],
                    entries=s1["entries"], evictions=(s1["evictions"] or 0) - (s0["evictions"] or 0))


def record_rss(b, server, when):
    """The near-cache process's VmRSS and gauges now, for the memory section."""
    near = (b.near or {}).get(server)
    if not near or isinstance(b.started.get(server), NotAvailable):
        return
    st = near_stats(near["admin"])
    near["rss_log"].append(dict(when=when, rss_max=rss(near["pid"]), rss_end=rss(near["pid"]),
                                bytes_max=st["bytes"], bytes_end=st["bytes"], entries=st["entries"],
                                evictions=st["evictions"]))


def warm_varnish(b):
    """Every /n1/sessions/{id} through Varnish once (8 keep-alive
    connections), then the same again: all 10,000 must be hits."""
    def worker(ids):
        c = http.client.HTTPConnection("127.0.0.1", b.port["varnish"], timeout=10)
        hits = 0
        for i in ids:
            c.request("GET", f"/n1/sessions/s{i}")
            r = c.getresponse()
            r.read()
            hits += len((r.getheader("X-Varnish") or "").split()) == 2
        c.close()
        return hits
    parts = [range(k, N_SESSIONS + 1, 8) for k in range(1, 9)]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(worker, parts))
        hits = sum(ex.map(worker, parts))
    if hits < N_SESSIONS:
        raise NotAvailable(f"Varnish: {N_SESSIONS - hits} of {N_SESSIONS} second reads were not hits")


def varnish_job(b):
    port = b.port["varnish"]
    lua = ["path=/n1/sessions/{id}", f"hot=1-{N_SESSIONS}"]

    def hit(status, headers, body):
        h = {k.lower(): v for k, v in headers.items()}
        if status != 200:
            return f"Varnish answered {status} {body[:60].decode(errors='replace')}"
        if len(h.get("x-varnish", "").split()) != 2:
            return f"Varnish did not answer from its cache (X-Varnish: {h.get('x-varnish')}, Age: {h.get('age')})"
        return None

    j = b.http_job("hot-single", "Varnish in front of FastAPI (1 worker), all hits", "peer", "varnish", port, lua,
                   check=hit, pre=lambda: warm_varnish(b),
                   note="Debian varnishd, default thread pools, `beresp.ttl = 1h`, cookies stripped")
    once = j["once"]

    def once2(seconds):
        v0 = b.varnish_stats()
        res = once(seconds)
        v1 = b.varnish_stats()
        d = {k: v1.get(k, 0) - v0.get(k, 0) for k in v1}
        looked = d.get("cache_hit", 0) + d.get("cache_miss", 0) + d.get("s_pass", 0)
        if looked:
            res["note"] = "; ".join(x for x in (res.get("note", ""), f"varnishstat: {d.get('cache_hit', 0) / looked:.2%}"
                                                f" hits ({d.get('cache_miss', 0)} misses, {d.get('s_pass', 0)} passes)")
                                    if x)
            if d.get("cache_miss", 0) + d.get("s_pass", 0) > 0.001 * looked:
                raise NotAvailable(f"Varnish missed or passed {d.get('cache_miss', 0) + d.get('s_pass', 0)} of "
                                   f"{looked} requests: not an all-hits row")
        return res

    j["once"] = once2
    return j


def hot_single_jobs(b, lua):
    """The rows hot-single adds (bench_reads.hot_single keeps its own first)."""
    p = b.port
    return [
        near_job(b, "hot-single", "batchd, near cache", "batchd-near", "batchd-near", lua),
        near_job(b, "hot-single", "batchd, near cache, 256 connections", "batchd-near-c256", "batchd-near", lua,
                 conns=256),
        b.http_job("hot-single", "batchd /healthz (admin listener)", "batchd-healthz", "batchd", p["admin"],
                   ["path=/healthz"], note="the ceiling of a single read: same binary, same run"),
    ]


def hot_batch_jobs(b, lua):
    return [near_job(b, "hot-batch", "batchd, near cache", "batchd-near", "batchd-near", lua, ids=50)]


def near_fill(b):
    """The fill processes (16 and 32 MiB near caches) under random 50-id
    batches (FILL_K) over N ids, 64 MiB of documents: each cache fills in the
    warm-up and evicts from then on. Next to them, batchd (near cache off)
    on the same load, its VmRSS sampled too."""
    n = b.set_fill_cache()
    lua = ["path=/v1/sessions?ids={ids}", f"k={FILL_K}", f"hot=1-{n}"]

    def fill_job(server, limit):
        j = near_job(b, "near-fill", f"batchd, near cache {mib(limit)}", "batchd-near", server, lua, ids=FILL_K,
                     sample_rss=True)
        prepare = j["prepare"]

        def prepare2():
            prepare()
            near = b.near[server]
            for _ in range(10):
                st = near_stats(near["admin"])
                if (st["bytes"] or 0) >= 0.9 * limit and (st["evictions"] or 0) > 0:
                    break
                b.wrk(b.port[server], lua, 64, 2)
            else:
                j["note"] = f"near cache not full after 20 s: {mib(st['bytes'])}, {st['evictions'] or 0:g} evictions"
            log(f"    {server} after the warm-up: cache {mib(st['bytes'])} in {st['entries'] or 0:,.0f} entries, "
                f"{st['evictions'] or 0:,.0f} evictions, VmRSS {mib(rss(near['pid']))}")
        j["prepare"] = prepare2
        return j

    # A fresh near-off batchd on the same load: what serving it costs in
    # memory without a near cache (connections, buffers, replies in flight).
    off = near_job(b, "near-fill", "batchd (near cache off)", "batchd", FILL_OFF, lua, ids=FILL_K, sample_rss=True)
    b.run_jobs([off] + [fill_job(server, limit) for server, limit in FILL.items()])
    for server in [FILL_OFF, *FILL]:
        record_rss(b, server, "after near-fill")


# --- goals and memory -----------------------------------------------------------------------


def goals(b, only):
    """(text, ratio, target, how, upper): the issue's near-cache goals,
    each from rows of one run; target None: reported, no goal; upper: the
    ratio must stay at or below target."""
    out = []

    def row(scenario, system):
        return next((r for r in b.rows if r["scenario"] == scenario and r["system"] == system), None)

    def ratio(text, scenario, num, den, target):
        if scenario not in only:
            return
        a, c = row(scenario, num), row(scenario, den)
        missing = [f"{s}: n/a ({r['na'][:160]})" if r else f"{s}: no row" for s, r in ((num, a), (den, c))
                   if r is None or r["na"]]
        if missing:
            out.append((text, None, target, "; ".join(missing), False))
            return
        how = f"{num} {a['rps']:,.0f} / {den} {c['rps']:,.0f} req/s (best slices)"
        # Round by round (slice i of each row was taken in the same round):
        # drift between rounds cancels out of these.
        pairs = [x / y for x, y in zip(a.get("slices") or [], c.get("slices") or []) if y]
        if len(pairs) > 1:
            med = sorted(pairs)[(len(pairs) - 1) // 2]
            how += f"; per round {', '.join(f'{x:.2f}' for x in pairs)} (median {med:.2f}×)"
        out.append((text, a["rps"] / c["rps"], target, how, False))

    ratio("near cache: hot single reads ≥ 0.9× batchd's own /healthz", "hot-single", "batchd, near cache",
          "batchd /healthz (admin listener)", 0.9)
    ratio("near cache off: hot single reads ÷ /healthz (0.82× when issue 14 was filed)", "hot-single", "batchd",
          "batchd /healthz (admin listener)", None)
    ratio("near cache: hot 50-id batches ≥ 1.5× redis-benchmark MGET-50", "hot-batch", "batchd, near cache",
          "redis-benchmark MGET-50", 1.5)
    ratio("near cache: hot 50-id batches ≥ 10× FastAPI MGET route, 2 workers", "hot-batch", "batchd, near cache",
          "FastAPI MGET + one query, 2 workers", 10.0)
    ratio("near cache off: hot 50-id batches ÷ FastAPI MGET route, 2 workers (3.6× when filed)", "hot-batch",
          "batchd", "FastAPI MGET + one query, 2 workers", None)
    varnish = "Varnish in front of FastAPI (1 worker), all hits"
    ratio("near cache: hot single reads ÷ Varnish (all hits)", "hot-single", "batchd, near cache", varnish, None)
    ratio("near cache off: hot single reads ÷ Varnish (2.6× by hand when filed)", "hot-single", "batchd", varnish,
          None)
    if "near-fill" in only:
        o = mem_figures(b, FILL_OFF)
        load = None if o is None else o["rss_max"] - o["base"]
        for server, limit in FILL.items():
            text = (f"near-fill: RSS ≤ (local_cache_bytes + baseline) + 10%, {mib(limit)} near cache full and "
                    "evicting")
            m = mem_figures(b, server)
            if m is None:
                why = b.started.get(server)
                why = str(why) if isinstance(why, Exception) else "not measured"
                out.append((text, None, RSS_SLACK, f"{server}: n/a ({why[:160]})", True))
                continue
            net = ("" if load is None else
                   f"; the same load grows a near-off batchd by {mib(load)}: net of it the cache's "
                   f"{mib(m['bytes_max'])} cost {mib(m['rss_max'] - m['base'] - load)} of RSS")
            out.append((text, m["rss_max"] / (m["limit"] + m["base"]), RSS_SLACK,
                        f"VmRSS max {mib(m['rss_max'])} / ({mib(m['limit'])} + baseline {mib(m['base'])}); "
                        f"cache {mib(m['bytes_max'])}, {m['evictions']:,.0f} evictions{net}", True))
    return out


def mem_figures(b, server):
    near = (b.near or {}).get(server)
    if not near or not near["rss_log"]:
        return None
    log_ = near["rss_log"]
    return dict(base=near["base_rss"], limit=near["limit"], rss_max=max(x["rss_max"] or 0 for x in log_),
                bytes_max=max(x["bytes_max"] or 0 for x in log_), evictions=sum(
                    x["evictions"] or 0 for x in log_ if x["when"].endswith("slice")))


def memory_section(b):
    """The near-cache processes' memory: baseline (started, tracking, no
    read), then after each hot scenario's rows and during each near-fill slice."""
    rows = [(near["name"], near, x) for near in (b.near_runs or []) for x in near["rss_log"]]
    if not rows:
        return []
    L = ["### Near cache: memory", "",
         "VmRSS from `/proc/<pid>/status`; baseline: right after start, once tracking is up, before any read. "
         "Cache bytes: the `batchd_local_cache_bytes` gauge (bookkeeping included). Bound: "
         f"(local_cache_bytes + baseline) × {RSS_SLACK:g}. A near-fill slice shows the largest VmRSS and gauge "
         "sampled during it (every 100 and 500 ms).", "",
         "| process | when | local_cache_bytes | baseline RSS | RSS | cache bytes (max) | entries | evictions | "
         "RSS − baseline | RSS ÷ (limit + baseline) | within bound |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for name, near, x in rows:
        r = x["rss_max"] or 0
        if not near["limit"]:
            L.append(f"| {name} (near cache off) | {x['when']} | 0 | {mib(near['base_rss'])} | {mib(r)} | — | — | "
                     f"— | {mib(r - near['base_rss'])} | — | — |")
            continue
        q = r / (near["limit"] + near["base_rss"])
        L.append(f"| {name} | {x['when']} | {mib(near['limit'])} | {mib(near['base_rss'])} | {mib(r)} | "
                 f"{mib(x['bytes_max'])} | {fmt_num(x['entries'])} | {fmt_num(x['evictions'])} | "
                 f"{mib(r - near['base_rss'])} | {q:.3f} | {'yes' if q <= RSS_SLACK else '**no**'} |")
    if FILL_OFF in (b.near or {}):
        L += ["", f"{FILL_OFF}'s RSS − baseline is what the near-fill load itself costs without a near cache "
              "(64 connections' buffers, replies and answers in flight): memory a near-cache process holds on the "
              "same load besides its cache, which the baseline (before any read) does not include."]
    L.append("")
    return L


METHOD = """
- **Near cache** (issue 14): the near-cache rows run against batchd-near, a second process of the same binary
  with the first batchd's config plus `local_cache_bytes = 268435456` on `[resource sessions]` (the first
  batchd keeps it at 0), on ports of its own and the same Redis; before its rows every session is read once
  (500 ids a request) and an answer must say `X-Cache: local`; each slice notes the share of ids its own
  counters (`batchd_local_cache_results_total`) say it answered. hot-single measures batchd's `/healthz` (admin
  listener) and Varnish in the same interleaved rounds, hot-batch keeps redis-benchmark MGET-50 and FastAPI MGET
  with 2 workers, so the Goals' near-cache ratios come from one run. Varnish: Debian's `varnishd -F` under
  `.bench/varnish` (own `-n` work dir, `-j none`, `-s malloc,256m`, default thread pools), pinned like the other
  peers, in front of FastAPI 1 worker's `/n1/sessions/{id}` with `beresp.ttl = 1h` and cookies stripped; all
  10,000 ids are read through it twice before its row (the second time every answer must be a hit: two ids in
  `X-Varnish`) and `varnishstat` must count no miss or pass during a slice. RSS: `VmRSS` from
  `/proc/<pid>/status`, the baseline right after start once tracking is up; the near-cache processes are
  stopped before any other scenario. Profile (`--profile`, tools/lib/bench_profile.py): `perf stat -p` and then
  `strace -c -f -p` around wrk runs of their own, per request = counts / (requests completed + the 64 in
  flight); redis-benchmark MGET-50 with `perf stat -p` on redis-server; instructions from callgrind (this VM's
  perf has no hardware counters), a batchd of each config under valgrind instrumented around one wrk run.
"""
