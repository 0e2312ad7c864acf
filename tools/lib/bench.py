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
    redis-benchmark                      --->  redis-server
    pgbench                              --->  PostgreSQL
    sse-load                             --->  batchd SSE, nginx + nchan
    wrk -H "Authorization: Bearer <JWT>" --->  batchd-access (list, owner)
                                         --->  FastAPI /before, /after

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
"""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import secrets
import statistics
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import jwt
import redis

from bench_format import fmt_ms, fmt_num, fmt_ratio, fmt_rt, row_ratio, sse_value, update_readme
from driver import Procs, driver_args, first_line, machine

ROOT = Path(__file__).resolve().parents[2]
N_SESSIONS = 10000
SCENARIOS = ["http", "hot-single", "hot-batch", "mixed", "cold-batch", "proxy", "sse", "list", "owner"]
# The list and owner scenarios (tools/lib/bench_owners.sql): u1 owns every
# 10th session, 1,000 in all, read in pages of 50 through its token.
OWNER = "u1"
OWNED_IDS = [f"s{i}" for i in range(10, N_SESSIONS + 1, 10)]
PAGE = 50
PAGES = len(OWNED_IDS) // PAGE
# Documents with owner_id, for the resources and routes that check it,
# under their own keys so that conf/batchd.ini's documents stay as they are.
OWNED_KEY = "owned:session:{id}"
# batchd's [list my-sessions] page_query, and the FastAPI /after route's.
PAGE_QUERY = ("SELECT id, created_at::text || ' ' || id FROM sessions WHERE owner_id = $1 AND ($2::text IS NULL "
              "OR (created_at::text || ' ' || id) < $2) ORDER BY created_at DESC, id DESC LIMIT $3")
TITLES = {
    "http": "HTTP ceiling: a small fixed JSON answer",
    "hot-single": "Hot single-id read (all 10,000 sessions cached, random ids)",
    "hot-batch": "Hot 50-id batch (all cached, 50 random ids per request)",
    "mixed": "Mixed 50-id batch: 90% of ids cached, 10% misses",
    "cold-batch": "Cold 50-id batch: every id misses Redis, PostgreSQL answers, write-back follows",
    "proxy": "Proxied request to a fixed upstream (nginx return 200)",
    "sse": "SSE fan-out and sustained delivery",
    "list": "A page of 50 of one owner's sessions (1,000 of 10,000), JWT-authenticated",
    "owner": "Hot single read of an owned document: access = public against access = owner",
}
# Per-row note printed under each scenario's table.
EXPLAIN = {
    "http": "batchd's `/healthz` on its admin listener against nginx `return 200` with the same body.",
    "hot-single": "batchd `GET /v1/sessions/{id}`; Webdis `GET /GET/session:{id}`; FastAPI `GET /n1/sessions/{id}` "
                  "(one GET, a query only on a miss); redis-benchmark `GET` of the same documents, no pipelining.",
    "hot-batch": "batchd `GET /v1/sessions?ids=` (50 ids); Webdis `/MGET/...`; FastAPI N+1 (50 GETs in turn) and "
                 "batched (one MGET); redis-benchmark `MGET` of 50 keys.",
    "mixed": "Each id is drawn from s1..s9000 (cached) with p=0.9 and from s9001..s10000 (never cached) with "
             "p=0.1, so about 5 of every request's 50 ids miss; a janitor keeps them out of Redis (see method).",
    "cold-batch": "Redis starts empty and a janitor empties it every 2 ms, so (nearly) every id misses, is loaded "
                  "from PostgreSQL and written back (see method). pgbench runs batchd's query text with the ids as "
                  "an `ARRAY[...]` of parameters, prepared, 16 clients.",
    "proxy": "batchd `[upstream]` and nginx `proxy_pass` (keep-alive pool of 64) in front of the same origin, "
             "the HTTP-ceiling nginx; the origin's own row is the ceiling.",
    "list": "`GET .../me/sessions?limit=50[&after=cursor]` with `Authorization: Bearer` (HS256, sub = u1; every "
            "contender verifies it). batchd: `[list my-sessions]` over `[resource my_sessions]` (access = owner), "
            "page ids cached for `ttl = 30` s. FastAPI *before*: SCAN of the whole keyspace (COUNT 1000), MGET of "
            "every owned:session:* key, parse, filter, sort, slice. FastAPI *after*: batchd's page_query, then one "
            "MGET of the page (+ by_ids for misses). *first page*: the same page over and over (the hot case); "
            "*20 pages*: each request one of u1's 20 pages at random. \"SQL page queries/req\" counts the "
            "page_query in pg_stat_statements (1 per uncached page, 0 per cached one); PG queries/req counts "
            "by_ids. A walk row's ratio is against batchd's walk row.",
    "owner": "`GET /v1/{pub,own}/sessions/{id}` over the 1,000 documents u1 owns (all cached, random ids, the "
             "same token on every request), from two resources on the same keys and documents that differ only "
             "in `access = public` / `access = owner` (owner_field = owner_id), in one batchd. The rows run in "
             "alternation, A B A B ..., and each shows its median slice; \"batchd ÷ row\" on the public row is "
             "owner ÷ public (the owner check's cost is 1 minus it).",
}
# A column some scenarios add to their table: (header, row field).
EXTRA_COLUMN = {"list": ("SQL page queries/req", "pg_page")}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class NotAvailable(Exception):
    """A row cannot be measured; the message is the reason shown in the table."""


# --- processes ------------------------------------------------------------------------------


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def wait_port(port, proc, timeout=20.0, name="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NotAvailable(f"{name} exited at start (status {proc.returncode}); see .bench/logs")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise NotAvailable(f"{name} did not listen on :{port} within {timeout:.0f} s")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_table():
    """pid -> (ppid, own cpu ticks, cpu ticks of reaped children)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]))
    return out


def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]   # all but idle and iowait


class CpuWatch:
    """How much CPU processes outside the bench used while a row ran: the
    machine is shared, and a busy neighbour explains a slow row. It is the
    machine's busy time less ours (the descendants of this driver, of
    redis-server and of the postmaster, with the children they reaped) and
    less kernel threads (mostly our own network load in softirq)."""

    def __init__(self, roots):
        self.roots = roots

    def sample(self):
        busy = busy_ticks()
        table = proc_table()
        kids = {}
        for pid, (ppid, _, _) in table.items():
            kids.setdefault(ppid, []).append(pid)

        def tree(roots):
            seen, todo = set(), [r for r in roots if r in table]
            while todo:
                pid = todo.pop()
                if pid not in seen:
                    seen.add(pid)
                    todo += kids.get(pid, [])
            return seen
        ours = {pid: table[pid][1] + table[pid][2] for pid in tree(self.roots)}
        kernel = {pid: table[pid][1] for pid in tree([2])}
        return busy, ours, kernel

    def start(self):
        self.t0, self.s0 = time.monotonic(), self.sample()

    def stop(self):
        """Share of one CPU used by other processes since start()."""
        busy1, ours1, kern1 = self.sample()
        busy0, ours0, kern0 = self.s0
        mine = sum(t - ours0.get(pid, 0) for pid, t in ours1.items())
        mine += sum(t - kern0.get(pid, 0) for pid, t in kern1.items())
        other = max(0, busy1 - busy0 - mine)
        return other / CLK_TCK / max(time.monotonic() - self.t0, 1e-3)


def http_get(url, headers=None, timeout=10.0, method="GET", data=None):
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def dpkg_version(pkg):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg], capture_output=True, text=True)
    if out.returncode != 0 or "install ok installed" not in out.stdout:
        return None
    return out.stdout.split()[-1]


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


# --- the bench --------------------------------------------------------------------------------


class Bench:
    def __init__(self, a):
        self.a = a
        self.run = Path(a.run)
        (self.run / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.run)
        self.quick = a.quick
        self.dur = 3 if a.quick else 10
        self.warm = 1 if a.quick else 2
        # Measured slices per row, taken in rounds across the scenario's rows
        # (wrk takes whole seconds): 4 + 3 + 3 = 10 s in a full run.
        self.slices = [3] if a.quick else [4, 3, 3]
        self.rounds = len(self.slices)
        self.slice_text = " + ".join(str(x) for x in self.slices) + " s"
        self.base = a.port_base
        self.port = {
            "redis": a.redis_port, "pg": a.pg_port,
            "batchd": self.base + 10, "admin": self.base + 11,
            "batchd-access": self.base + 12, "access-admin": self.base + 13,
            "origin": self.base + 20, "nginx-proxy": self.base + 21, "nchan": self.base + 22,
            "webdis": self.base + 30, "fastapi1": self.base + 40, "fastapi2": self.base + 41,
        }
        # CPU placement. Measured both ways on the 2-core VM this was written
        # on (quick runs, quiet machine): unpinned, batchd gained on /healthz
        # (100k vs 75k req/s: wrk and batchd ping-pong on one core) and hot
        # batches (+25%: batchd and Redis on different cores), and pgbench
        # ANY-50 more than doubled (its 16 backends spread over both cores),
        # so every ratio depended on what the scheduler happened to co-locate.
        # Pinned, each contender's server and backends get the same single
        # core and the load generator the other one, so ratios compare like
        # with like; --cpu shared is there for whole-machine numbers.
        self.pinned = a.cpu == "pinned"
        self.gen_cpus = "0" if self.pinned else None      # load generators
        self.wide_cpus = "0,1" if self.pinned else None   # FastAPI with 2 workers
        self.batchd_bin = Path(a.build) / "batchd"
        self.sse_load = Path(a.build) / "tools" / "sse-load"
        self.rows = []
        self.sse = []
        self.repro = None
        self.started = {}
        self.r = redis.Redis(host="127.0.0.1", port=a.redis_port)
        self.cache = None          # "hot", "mixed", "cold", "owned": what Redis holds now
        self.janitor = None
        self.rb_keys = False
        self.docs = None
        self.owned_docs = None
        self.owner_order = None
        self.cfg = self.read_conf()
        # The HS256 secret batchd-access and the FastAPI list routes verify
        # tokens with (no trailing newline, so no reader can disagree about
        # it), and u1's token, which wrk sends with -H.
        self.jwt_secret_file = self.run / "jwt.secret"
        self.jwt_secret_file.write_text(secrets.token_hex(32))
        os.chmod(self.jwt_secret_file, 0o600)
        self.token = jwt.encode({"sub": OWNER, "iat": int(time.time()), "exp": int(time.time()) + 86400},
                                self.jwt_secret_file.read_text(), algorithm="HS256")
        self.auth = {"Authorization": f"Bearer {self.token}"}
        roots = [os.getpid()]
        for f in (self.run / "redis" / "redis.pid", self.run / "pg" / "data" / "postmaster.pid"):
            try:
                roots.append(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        self.watch = CpuWatch(roots)

    # -- configuration ---------------------------------------------------------------------

    def read_conf(self):
        """by_ids, key, admin_token and friends from conf/batchd.ini."""
        conf = {}
        section = None
        for line in (ROOT / "conf" / "batchd.ini").read_text().splitlines():
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]")
                continue
            m = re.match(r"^([a-z_]+)\s*=\s*(.*)$", s)
            if m:
                conf[(section, m.group(1))] = m.group(2)
        by_ids = conf[("resource sessions", "by_ids")]
        if "$1::text[]" not in by_ids:
            raise SystemExit("conf/batchd.ini: by_ids does not take $1::text[]; tools/bench needs to know")
        # The same documents with owner_id, for the list and owner
        # scenarios; None when by_ids does not build them the way this
        # expects (those scenarios then say so).
        anchor = "json_build_object('id', s.id, "
        owned = by_ids.replace(anchor, anchor + "'owner_id', s.owner_id, ") if by_ids.count(anchor) == 1 else None
        return {
            "by_ids": by_ids,
            "owned_by_ids": owned,
            "token": conf.get(("batchd", "admin_token"), "change-me"),
            "ttl": int(conf.get(("resource sessions", "ttl"), "3600")),
        }

    def write_batchd_conf(self):
        """conf/batchd.ini with the bench's ports, as tools/run does, plus an
        [upstream] to the origin and room for 15k SSE clients. 16,000
        connections leave batchd about 4,000 of its 20,000 descriptors."""
        p = self.port
        out = []
        section = None
        has_upstream = False
        for line in (ROOT / "conf" / "batchd.ini").read_text().splitlines():
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]")
                has_upstream |= section == "upstream"
            key = re.match(r"^([a-z_]+)\s*=", s)
            key = key.group(1) if key else None
            if section == "batchd" and key == "listen":
                line = f"listen = 127.0.0.1:{p['batchd']}"
            elif section == "batchd" and key == "admin_listen":
                line = f"admin_listen = 127.0.0.1:{p['admin']}"
            elif section == "batchd" and key == "max_connections":
                line = "max_connections = 16000"
            elif section == "batchd" and key == "log_level":
                line = "log_level = warn"
            elif section == "redis" and key == "url":
                line = f"url = redis://127.0.0.1:{p['redis']}/0"
            elif section == "postgres" and key == "conninfo":
                line = f"conninfo = host=127.0.0.1 port={p['pg']} dbname=app user=app"
            elif section == "upstream" and key == "url":
                line = f"url = http://127.0.0.1:{p['origin']}"
            elif section and section.startswith("stream") and key == "max_sse_clients":
                line = "max_sse_clients = 16000"
            out.append(line)
        if not has_upstream:
            out += ["", "[upstream]", f"url = http://127.0.0.1:{p['origin']}"]
        path = self.run / "batchd.ini"
        path.write_text("\n".join(out) + "\n")
        return path

    def write_access_conf(self):
        """The second batchd's config, for the list and owner scenarios: the
        bench's [batchd], [redis] and [postgres] on ports of its own, no
        [upstream] (a path batchd does not serve answers 404, not the
        origin's 200), and the sections these scenarios measure."""
        if self.cfg["owned_by_ids"] is None:
            raise NotAvailable("conf/batchd.ini's by_ids has no json_build_object('id', s.id, ...) to add "
                               "owner_id to; tools/lib/bench.py read_conf() needs to learn its new form")
        p = self.port
        out = []
        keep = False
        for line in self.write_batchd_conf().read_text().splitlines():
            s = line.strip()
            if s.startswith("["):
                keep = s.strip("[]") in ("batchd", "redis", "postgres")
            if not keep:
                continue
            if re.match(r"^listen\s*=", s):
                line = f"listen = 127.0.0.1:{p['batchd-access']}"
            elif re.match(r"^admin_listen\s*=", s):
                line = f"admin_listen = 127.0.0.1:{p['access-admin']}"
            out.append(line)
        owned = self.cfg["owned_by_ids"]
        out += ["",
                "[auth]",
                f"jwt_secret_file = {self.jwt_secret_file}",
                "principal_claim = sub",
                "",
                "; The same documents (with owner_id) under the same keys, twice: the owner",
                "; scenario's two rows differ only in access.",
                "[resource public_sessions]",
                "path = /v1/pub/sessions",
                f"key = {OWNED_KEY}",
                f"ttl = {self.cfg['ttl']}",
                f"by_ids = {owned}",
                "access = public",
                "",
                "[resource my_sessions]",
                "path = /v1/own/sessions",
                f"key = {OWNED_KEY}",
                f"ttl = {self.cfg['ttl']}",
                f"by_ids = {owned}",
                "access = owner",
                "owner_field = owner_id",
                "",
                "[list my-sessions]",
                "path = /v1/me/sessions",
                "resource = my_sessions",
                f"page_query = {PAGE_QUERY}",
                "ttl = 30",
                "max_limit = 200",
                ""]
        path = self.run / "batchd-access.ini"
        path.write_text("\n".join(out))
        return path

    def template(self, name, dest, **values):
        text = (ROOT / "tools" / "peers" / name).read_text()
        for k, v in values.items():
            text = text.replace(f"@{k}@", str(v))
        left = re.findall(r"^[^#\n]*(@[A-Z_]+@)", text, re.M)
        assert not left, f"{name}: unfilled {left}"
        dest.write_text(text)
        return dest

    # -- servers ---------------------------------------------------------------------------

    def ensure(self, name):
        """Starts a server the first time a row needs it. Raises NotAvailable
        (remembered, so every row that needs it says why)."""
        if name in self.started:
            if isinstance(self.started[name], NotAvailable):
                raise self.started[name]
            return self.started[name]
        try:
            self.started[name] = getattr(self, "start_" + name.replace("-", "_"))()
        except NotAvailable as e:
            self.started[name] = e
            log(f"  {name}: n/a: {e}")
            raise
        return self.started[name]

    def start_batchd(self):
        return self.start_batchd_with("batchd", self.write_batchd_conf(), self.port["batchd"], self.port["admin"])

    def start_batchd_access(self):
        return self.start_batchd_with("batchd-access", self.write_access_conf(), self.port["batchd-access"],
                                      self.port["access-admin"])

    def start_batchd_with(self, name, conf, port, admin):
        chk = subprocess.run([str(self.batchd_bin), "-t", "-c", str(conf)], capture_output=True, text=True)
        if chk.returncode != 0:
            why = (chk.stderr.strip().splitlines() or ["?"])[-1]
            raise NotAvailable(f"batchd -t rejected the bench config {conf.name}: {why}")
        p = self.procs.start(name, [str(self.batchd_bin), "-c", str(conf)])
        wait_port(port, p, name=name)
        wait_port(admin, p, name=f"{name} admin")
        for _ in range(100):
            if http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200:
                return p
            time.sleep(0.1)
        raise NotAvailable(f"{name} /readyz did not turn 200")

    def start_nginx(self, name, conf_name, port, **values):
        d = self.run / name
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "tmp", 0o777)
        conf = self.template(conf_name, d / "nginx.conf", DIR=d, PORT=port, **values)
        test = subprocess.run(["nginx", "-t", "-q", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                              capture_output=True, text=True)
        if test.returncode != 0:
            raise NotAvailable(f"nginx -t: {(test.stderr.strip().splitlines() or ['?'])[-1]}")
        p = self.procs.start(name, ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"),
                                    "-g", "daemon off;"])
        wait_port(port, p, name=name)
        for c in children(p.pid):
            self.procs.record(c)
        return p

    def start_origin(self):
        return self.start_nginx("nginx-origin", "nginx-origin.conf", self.port["origin"])

    def start_nginx_proxy(self):
        self.ensure("origin")
        return self.start_nginx("nginx-proxy", "nginx-proxy.conf", self.port["nginx-proxy"],
                                ORIGIN_PORT=self.port["origin"])

    def start_nchan(self):
        module = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
        if not module.exists():
            raise NotAvailable("libnginx-mod-nchan is not installed")
        return self.start_nginx("nginx-nchan", "nginx-nchan.conf", self.port["nchan"], NCHAN_MODULE=module)

    def start_webdis(self):
        d = self.run / "webdis"
        d.mkdir(exist_ok=True)
        conf = self.template("webdis.json", d / "webdis.json", DIR=d, PORT=self.port["webdis"],
                             REDIS_PORT=self.port["redis"])
        p = self.procs.start("webdis", ["webdis", str(conf)], cwd=str(d))
        wait_port(self.port["webdis"], p, name="webdis")
        return p

    def start_fastapi(self, workers):
        port = self.port[f"fastapi{workers}"]
        env = dict(os.environ,
                   BENCH_REDIS_URL=f"redis://127.0.0.1:{self.port['redis']}/0",
                   BENCH_PG_DSN=f"postgresql://app@127.0.0.1:{self.port['pg']}/app",
                   BENCH_BY_IDS=self.cfg["by_ids"], BENCH_TTL=str(self.cfg["ttl"]),
                   BENCH_OWNED_BY_IDS=self.cfg["owned_by_ids"] or "", BENCH_OWNED_KEY=OWNED_KEY,
                   BENCH_PAGE_QUERY=PAGE_QUERY, BENCH_JWT_SECRET_FILE=str(self.jwt_secret_file))
        env.pop("PYTHONPATH", None)
        argv = ["/usr/bin/python3", "-m", "uvicorn", "app:app", "--app-dir", str(ROOT / "tools" / "peers"),
                "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        p = self.procs.start(f"fastapi-{workers}w", argv, cpus=self.wide_cpus if workers > 1 else None, env=env)
        wait_port(port, p, timeout=30, name=f"FastAPI ({workers} workers)")
        # Every worker must be up and connected before we measure.
        deadline = time.monotonic() + 30
        ok = 0
        while time.monotonic() < deadline and ok < 20 * workers:
            try:
                ok += http_get(f"http://127.0.0.1:{port}/n1/sessions/s1", timeout=5)[0] == 200
            except OSError:
                time.sleep(0.2)
        if ok < 20 * workers:
            raise NotAvailable(f"FastAPI ({workers} workers) does not answer /n1/sessions/s1")
        for c in children(p.pid):
            self.procs.record(c)
        return p

    def start_fastapi1(self):
        return self.start_fastapi(1)

    def start_fastapi2(self):
        return self.start_fastapi(2)

    # -- cache state -----------------------------------------------------------------------

    def load_docs(self):
        """Every session's document, as by_ids returns it, straight from
        PostgreSQL: the cache is filled with exactly what batchd would write."""
        if self.docs is None:
            q = self.cfg["by_ids"].replace(
                "$1::text[]", f"ARRAY(SELECT 's' || g FROM generate_series(1, {N_SESSIONS}) g)")
            out = self.psql(q, user="app", fields=True)
            self.docs = dict(line.split("\t", 1) for line in out.splitlines() if line)
            if len(self.docs) != N_SESSIONS:
                raise SystemExit(f"expected {N_SESSIONS} sessions, by_ids returned {len(self.docs)}")
        return self.docs

    def load_owned_docs(self):
        """Every session's document with owner_id, as the owner-bearing
        by_ids returns it."""
        if self.owned_docs is None:
            q = self.cfg["owned_by_ids"].replace(
                "$1::text[]", f"ARRAY(SELECT 's' || g FROM generate_series(1, {N_SESSIONS}) g)")
            out = self.psql(q, user="app", fields=True)
            self.owned_docs = dict(line.split("\t", 1) for line in out.splitlines() if line)
            if len(self.owned_docs) != N_SESSIONS:
                raise SystemExit(f"expected {N_SESSIONS} sessions, the owned by_ids returned {len(self.owned_docs)}")
        return self.owned_docs

    def owner_page_order(self):
        """u1's session ids in page order, as page_query walks them."""
        if self.owner_order is None:
            out = self.psql(f"SELECT id FROM sessions WHERE owner_id = '{OWNER}' ORDER BY created_at DESC, id DESC",
                            user="app")
            self.owner_order = out.split()
            if sorted(self.owner_order) != sorted(OWNED_IDS):
                raise SystemExit(f"{OWNER} owns {len(self.owner_order)} sessions, not the {len(OWNED_IDS)} "
                                 "tools/lib/bench_owners.sql gives it; was it loaded?")
        return self.owner_order

    def fill(self, lo, hi, ttl=True):
        docs = self.load_docs()
        pipe = self.r.pipeline(transaction=False)
        for i in range(lo, hi + 1):
            pipe.set(f"session:s{i}", docs[f"s{i}"], ex=self.cfg["ttl"] if ttl else None)
            if i % 1000 == 0:
                pipe.execute()
        pipe.execute()

    JANITOR_INTERVAL = 0.002  # seconds between the janitor's deletes

    def set_cache(self, state):
        """hot: every session cached. mixed: s1..s9000 cached, s9001..s10000
        kept out. cold: nothing cached. owned: hot, and every session's
        owner-bearing document cached under OWNED_KEY too (20,000 keys: what
        the FastAPI /before route SCANs).

        Contenders write back what they load, so on 10,000 sessions a cold
        50-id batch at a few thousand requests per second would have cached
        everything within a second. A janitor, redis-cli repeating one
        command every 2 ms on the load generators' CPU, keeps the misses
        misses: FLUSHALL ASYNC for cold, UNLINK of the 1,000 cold keys for
        mixed. Write-backs are real (Redis stores them) and live about a
        millisecond, so a few per cent of the would-be misses hit; the
        "PG rows/req" column shows what is left."""
        if self.cache == state:
            return
        if self.janitor is not None:
            self.procs.stop(self.janitor)
            self.janitor = None
        self.r.flushall()
        if state in ("hot", "owned"):
            self.fill(1, N_SESSIONS)
        if state == "owned":
            pipe = self.r.pipeline(transaction=False)
            for i, doc in self.load_owned_docs().items():
                pipe.set(OWNED_KEY.replace("{id}", i), doc, ex=self.cfg["ttl"])
            pipe.execute()
        elif state == "mixed":
            self.fill(1, 9000)
        if state in ("mixed", "cold"):
            cmd = (["FLUSHALL", "ASYNC"] if state == "cold" else
                   ["UNLINK"] + [f"session:s{i}" for i in range(9001, N_SESSIONS + 1)])
            self.janitor = self.procs.start(
                f"janitor-{state}", self.gen(["redis-cli", "-p", str(self.port["redis"]), "-r", "-1",
                                              "-i", str(self.JANITOR_INTERVAL)] + cmd), quiet=True)
        self.cache = state
        self.rb_keys = False

    def fill_rb_keys(self):
        """redis-benchmark's __rand_int__ is 12 digits: rb:000000000000 ..
        rb:000000009999 hold the same 10,000 documents."""
        if self.rb_keys:
            return
        docs = self.load_docs()
        pipe = self.r.pipeline(transaction=False)
        for i in range(N_SESSIONS):
            pipe.set(f"rb:{i:012d}", docs[f"s{i + 1}"])
        pipe.execute()
        self.rb_keys = True

    # -- counters --------------------------------------------------------------------------

    # Not the contenders' reads and writes: our own bookkeeping, health
    # checks (PING, batchd's SUBSCRIBE probe) and the janitor's commands
    # (none of the contenders sends UNLINK or FLUSHALL).
    IGNORED_CMDS = {"info", "config", "ping", "flushall", "flushdb", "client", "hello", "select", "auth",
                    "command", "dbsize", "memory", "slowlog", "latency", "unlink",
                    "subscribe", "unsubscribe", "psubscribe", "punsubscribe"}

    def psql(self, sql, user="postgres", fields=False):
        argv = ["psql", "-h", "127.0.0.1", "-p", str(self.port["pg"]), "-U", user, "-d", "app", "-qAtX",
                "-v", "ON_ERROR_STOP=1"]
        if fields:
            argv += ["-F", "\t"]
        out = subprocess.run(argv + ["-c", sql], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout

    def redis_total(self):
        return sum(int(st.get("calls", 0)) + int(st.get("rejected_calls", 0))
                   for name, st in self.r.info("commandstats").items()
                   if name.replace("cmdstat_", "").lower().split("|")[0] not in self.IGNORED_CMDS)

    def quiesce(self, limit=30.0):
        """Waits until Redis has seen no new command (PINGs aside) for
        250 ms, so the requests a load generator left in flight are done
        before the counters are reset or read."""
        last = self.redis_total()
        now = time.monotonic()
        stable, end = now, now + limit
        while now < end:
            time.sleep(0.1)
            now = time.monotonic()
            cur = self.redis_total()
            if cur != last:
                last, stable = cur, now
            elif now - stable >= 0.25:
                return

    def reset_counters(self):
        self.r.config_resetstat()
        self.psql("SELECT pg_stat_statements_reset()")

    def read_counters(self):
        redis_calls = 0
        detail = {}
        for name, st in self.r.info("commandstats").items():
            cmd = name.replace("cmdstat_", "").lower()
            if cmd.split("|")[0] in self.IGNORED_CMDS:
                continue
            n = int(st.get("calls", 0)) + int(st.get("rejected_calls", 0))
            redis_calls += n
            detail[cmd] = n
        # The read query in whatever form (batchd's prepared by_ids,
        # asyncpg's, pgbench's): all of them read "FROM sessions s".
        pg = self.psql("SELECT coalesce(sum(calls), 0), coalesce(sum(rows), 0) FROM pg_stat_statements "
                       "WHERE query LIKE '%FROM sessions s %'", fields=True).split()
        detail["pg_rows"] = int(pg[1]) if len(pg) > 1 else 0
        # The list scenario's page_query (batchd's or FastAPI /after's).
        page = self.psql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                         "WHERE query LIKE '%FROM sessions WHERE owner_id = $1%'").split()
        detail["pg_page"] = int(page[0]) if page else 0
        return redis_calls, int(pg[0]) if pg else 0, detail

    # -- load generators -------------------------------------------------------------------

    def gen(self, argv):
        return (["taskset", "-c", self.gen_cpus] if self.gen_cpus else []) + argv

    def wrk(self, port, args, conns, seconds, headers=None):
        hdr = [x for k, v in (headers or {}).items() for x in ("-H", f"{k}: {v}")]
        argv = self.gen(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"] + hdr +
                        ["-s", str(ROOT / "tools" / "wrk" / "bench.lua"), f"http://127.0.0.1:{port}", "--"] + args)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        m = re.search(r"^BENCH_RESULT (\{.*\})$", out.stdout, re.M)
        if not m:
            raise NotAvailable(f"wrk printed no result: {(out.stderr or out.stdout).strip()[:200]}")
        res = json.loads(m.group(1))
        res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
        return res

    # -- rows ------------------------------------------------------------------------------

    def add(self, scenario, system, kind, **kw):
        row = dict(scenario=scenario, system=system, kind=kind, conns=kw.pop("conns", 64), rps=None,
                   p50=None, p99=None, redis=None, pg=None, na=None, note="", ids=kw.pop("ids", 1))
        row.update(kw)
        if row["na"]:
            row["na"] = " ".join(str(row["na"]).split()).replace("|", "/")[:300]
        self.rows.append(row)
        if row["na"]:
            log(f"  {system:<40} n/a: {row['na']}")
        else:
            log(f"  {system:<40} {row['rps']:>10.0f} req/s  p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms"
                f"  redis/req {row['redis']:.3f}  pg/req {row['pg']:.3f}  other CPU {row.get('other_cpu', 0):.0%}"
                f"  {row['note']}")
        return row

    @staticmethod
    def sample_target(path, item="{id}", sep=",", k=50):
        if "{ids}" in path:
            sep = "/" if sep == "slash" else sep
            return path.replace("{ids}", sep.join(item.replace("{id}", f"s{i}") for i in range(1, k + 1)))
        return path.replace("{id}", "s1")

    # -- jobs ------------------------------------------------------------------------------------
    #
    # A row is a job: prepare() starts what it needs, checks one answer and
    # warms up; once(seconds) is one measured slice. A scenario's jobs are
    # measured in rounds (full run: 2 rounds of 5 s, so every row still
    # gets 10 s), A B C A B C, and each row shows its best slice. This VM's
    # speed drifts by ±20-40% over minutes with nothing visible running
    # (no steal time is reported); interleaving puts the contenders of one
    # scenario through the same conditions, and interference only ever
    # slows a run down, so the best slice is the least disturbed one.

    def job(self, scenario, system, kind, prepare, once, conns=64, ids=1, note="", vs=None):
        """vs: the system name of the batchd row this row's ratio is taken
        against (default: the scenario's first "batchd" row)."""
        return dict(scenario=scenario, system=system, kind=kind, prepare=prepare, once=once, conns=conns,
                    ids=ids, note=note, slices=[], na=None, vs=vs)

    def run_jobs(self, jobs, slices=None, pick="best"):
        """slices: the measured slices' lengths (default: the run's).
        pick: "best" shows each row's fastest slice; "median" its median
        one (for a comparison of two rows of the same server, where drift
        is what the alternation cancels and the best slice would reward
        the luckier row)."""
        slices = slices or self.slices
        slice_text = " + ".join(str(x) for x in slices) + " s"
        for j in jobs:
            try:
                j["prepare"]()
            except NotAvailable as e:
                j["na"] = str(e)
        for seconds in slices:
            for j in jobs:
                if j["na"]:
                    continue
                try:
                    j["slices"].append(j["once"](seconds))
                    r = j["slices"][-1]
                    log(f"    {j['system']:<40} {r['rps']:>10.0f} req/s  (slice {len(j['slices'])}, "
                        f"others' CPU {r['other_cpu']:.0%})")
                except NotAvailable as e:
                    j["na"] = str(e)
        for j in jobs:
            meta = dict(conns=j["conns"], ids=j["ids"], vs=j["vs"])
            if j["na"]:
                self.add(j["scenario"], j["system"], j["kind"], na=j["na"], **meta)
                continue
            if pick == "median":
                ranked = sorted(j["slices"], key=lambda r: r["rps"])
                best = ranked[(len(ranked) - 1) // 2]
            else:
                best = max(j["slices"], key=lambda r: r["rps"])
            notes = [n for n in (j["note"], best.get("note", "")) if n]
            if len(j["slices"]) > 1:
                rest = [f"{r['rps']:,.0f}" for r in j["slices"] if r is not best]
                notes.append(f"{'median' if pick == 'median' else 'best'} of {slice_text} "
                             f"(others: {', '.join(rest)})")
            self.add(j["scenario"], j["system"], j["kind"], rps=best["rps"], p50=best["p50"], p99=best["p99"],
                     redis=best["redis"], pg=best["pg"], pg_rows=best.get("pg_rows"),
                     pg_page=best.get("pg_page"), other_cpu=best["other_cpu"],
                     requests=best["requests"], redis_detail=best.get("detail"), note="; ".join(notes),
                     slices=[r["rps"] for r in j["slices"]], **meta)

    def http_job(self, scenario, system, kind, server, port, lua, conns=64, ids=1, check=None, note="",
                 headers=None, pre=None, vs=None):
        """A wrk row: start what it needs, check one answer, warm up; slices
        of wrk -t1 -cN against random ids. headers go on every request
        (wrk -H); pre() runs once the servers are up and may raise
        NotAvailable (it may also write the targets= file lua names)."""
        def prepare():
            for srv in ([server] if isinstance(server, str) else server):
                self.ensure(srv)
            if pre:
                pre()
            opts = dict(a.split("=", 1) for a in lua)
            if "targets" in opts:
                target = Path(opts["targets"]).read_text().split("\n", 1)[0]
            else:
                target = self.sample_target(opts["path"], opts.get("item", "{id}"), opts.get("sep", ","),
                                            int(opts.get("k", 50)))
            status, hdrs, body = http_get(f"http://127.0.0.1:{port}{target}", headers=headers)
            if check:
                why = check(status, hdrs, body)
                if why:
                    raise NotAvailable(why)
            elif status != 200:
                raise NotAvailable(f"GET {target[:60]} answered {status} {body[:60].decode(errors='replace')}")
            self.wrk(port, lua, conns, self.warm, headers)

        def once(seconds):
            self.quiesce()
            self.reset_counters()
            self.watch.start()
            res = self.wrk(port, lua, conns, seconds, headers)
            other = self.watch.stop()
            self.quiesce()
            redis_calls, pg_calls, detail = self.read_counters()
            n = res["requests"]
            if n == 0:
                raise NotAvailable("no request completed")
            errs = res["errors"]
            if errs["status"] > 0.05 * n:
                raise NotAvailable(f"{errs['status']} of {n} answers were not 2xx/3xx")
            # wrk is a closed loop: when it stops, each connection has one
            # request in flight, which the server still carries out.
            served = n + conns
            notes = []
            scripts = sum(v for k, v in detail.items() if k in ("evalsha", "eval", "fcall"))
            if scripts:
                notes.append(f"{scripts / served:.3g} script calls/req; the commands they run are counted too")
            bad = sum(errs.values())
            if bad:
                notes.append(f"{bad} errors ({', '.join(f'{k} {v}' for k, v in errs.items() if v)})")
            return dict(rps=res["rps"], p50=res["p50_us"] / 1000, p99=res["p99_us"] / 1000,
                        redis=redis_calls / served, pg=pg_calls / served, pg_rows=detail["pg_rows"] / served,
                        pg_page=detail["pg_page"] / served, other_cpu=other, requests=n, detail=detail,
                        note="; ".join(notes))

        return self.job(scenario, system, kind, prepare, once, conns=conns, ids=ids, note=note, vs=vs)

    def redis_benchmark_job(self, scenario, system, cmd, ids):
        """redis-benchmark, 64 clients, one thread, no pipelining. It has no
        duration option: the warm-up measures the rate and a slice asks for
        rate x seconds requests."""
        base = self.gen(["redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port["redis"]), "-c", "64",
                         "-r", str(N_SESSIONS), "--csv"])
        rate = {}

        def prepare():
            self.fill_rb_keys()
            warm = self.rb_parse(subprocess.run(base + ["-n", "20000"] + cmd, capture_output=True, text=True,
                                                timeout=120))
            rate["rps"] = warm["rps"]

        def once(seconds):
            n = max(20000, int(rate["rps"] * seconds))
            self.quiesce()
            self.reset_counters()
            self.watch.start()
            res = self.rb_parse(subprocess.run(base + ["-n", str(n)] + cmd, capture_output=True, text=True,
                                               timeout=seconds * 5 + 60))
            res["other_cpu"] = self.watch.stop()
            redis_calls, pg_calls, _ = self.read_counters()
            res.update(redis=redis_calls / n, pg=pg_calls / n, requests=n)
            return res

        return self.job(scenario, system, "limit", prepare, once, ids=ids)

    @staticmethod
    def rb_parse(out):
        lines = [l for l in out.stdout.splitlines() if l.startswith('"')]
        if out.returncode != 0 or len(lines) < 2:
            raise NotAvailable(f"redis-benchmark failed: {(out.stderr or out.stdout).strip()[:200]}")
        head = [h.strip('"') for h in lines[0].split('","')]
        vals = [v.strip('"') for v in lines[-1].split('","')]
        d = dict(zip(head, vals))
        return {"rps": float(d["rps"]), "p50": float(d["p50_latency_ms"]), "p99": float(d["p99_latency_ms"])}

    def pgbench_job(self, scenario, system, k):
        """pgbench, 16 clients, one thread, prepared. The script is batchd's
        by_ids with $1::text[] replaced by ARRAY['s' || :i1, ...]::text[]:
        pgbench cannot build a text[] variable, so the ids go as k text
        parameters and PostgreSQL builds the array (k concatenations, next
        to k index lookups and k message counts)."""
        d = self.run / "pgbench"
        script = d / f"any{k}.sql"
        base = self.gen(["pgbench", "-h", "127.0.0.1", "-p", str(self.port["pg"]), "-U", "app", "-n",
                         "-M", "prepared", "-c", "16", "-j", "1", "-f", str(script)])
        logfile = self.run / "logs" / f"pgbench-{k}.log"

        def prepare():
            d.mkdir(exist_ok=True)
            arr = "ARRAY[" + ", ".join(f"'s' || :i{j}" for j in range(1, k + 1)) + "]::text[]"
            script.write_text("".join(f"\\set i{j} random(1, {N_SESSIONS})\n" for j in range(1, k + 1)) +
                              self.cfg["by_ids"].replace("$1::text[]", arr) + "\n")
            w = subprocess.run(base + ["-T", str(self.warm), "app"], capture_output=True, text=True, timeout=120)
            logfile.write_text(w.stdout + w.stderr)
            if w.returncode != 0:
                raise NotAvailable(f"pgbench failed: {w.stderr.strip()[:200]}")

        def once(seconds):
            for f in d.glob("log*"):
                f.unlink()
            self.reset_counters()
            self.watch.start()
            out = subprocess.run(base + ["-T", str(seconds), "-l", "--log-prefix", str(d / "log"), "app"],
                                 capture_output=True, text=True, timeout=seconds + 120)
            other = self.watch.stop()
            with open(logfile, "a") as f:
                f.write(out.stdout + out.stderr)
            m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
            if out.returncode != 0 or not m:
                raise NotAvailable(f"pgbench failed: {out.stderr.strip()[:200]}")
            redis_calls, pg_calls, detail = self.read_counters()
            lat = sorted(int(line.split()[2]) for f in d.glob("log*") for line in f.read_text().splitlines()
                         if len(line.split()) >= 3)
            n = max(len(lat), 1)
            return dict(rps=float(m.group(1)), p50=percentile(lat, 50) / 1000, p99=percentile(lat, 99) / 1000,
                        redis=redis_calls / n, pg=pg_calls / n, pg_rows=detail["pg_rows"] / n, other_cpu=other,
                        requests=len(lat))

        return self.job(scenario, system, "limit", prepare, once, conns=16, ids=k)

    # -- scenarios ---------------------------------------------------------------------------

    def sc_http(self):
        p = self.port
        self.run_jobs([
            self.http_job("http", "batchd /healthz (admin listener)", "batchd", "batchd", p["admin"],
                          ["path=/healthz"]),
            self.http_job("http", "nginx return 200 (1 worker)", "limit", "origin", p["origin"], ["path=/healthz"]),
        ])

    def sc_hot_single(self):
        self.set_cache("hot")
        p = self.port
        lua = ["path=/v1/sessions/{id}", f"hot=1-{N_SESSIONS}"]
        jobs = [
            self.http_job("hot-single", "batchd", "batchd", "batchd", p["batchd"], lua),
            self.http_job("hot-single", "batchd, 256 connections", "batchd-c256", "batchd", p["batchd"], lua,
                          conns=256, note="coalescing row"),
            self.http_job("hot-single", "Webdis GET (1 thread)", "peer", "webdis", p["webdis"],
                          ["path=/GET/session:{id}", f"hot=1-{N_SESSIONS}"]),
        ]
        for w in (1, 2):
            jobs.append(self.http_job("hot-single", f"FastAPI, {w} worker{'s' * (w > 1)}", "peer", f"fastapi{w}",
                                      p[f"fastapi{w}"], ["path=/n1/sessions/{id}", f"hot=1-{N_SESSIONS}"]))
        jobs.append(self.redis_benchmark_job("hot-single", "redis-benchmark GET", ["GET", "rb:__rand_int__"], 1))
        self.run_jobs(jobs)

    def batch_jobs(self, scenario, lua_ids, extra=()):
        p = self.port
        lua = ["path=/v1/sessions?ids={ids}", "k=50"] + lua_ids
        jobs = [self.http_job(scenario, "batchd", "batchd", "batchd", p["batchd"], lua, ids=50)]
        if "c256" in extra:
            jobs.append(self.http_job(scenario, "batchd, 256 connections", "batchd-c256", "batchd", p["batchd"],
                                      lua, conns=256, ids=50, note="coalescing row"))
        if "webdis" in extra:
            jobs.append(self.http_job(scenario, "Webdis MGET (1 thread)", "peer", "webdis", p["webdis"],
                                      ["path=/MGET/{ids}", "item=session:{id}", "sep=slash", "k=50"] + lua_ids,
                                      ids=50))
        for style, label in (("n1", "N+1"), ("batched", "MGET + one query")):
            for w in (1, 2):
                jobs.append(self.http_job(scenario, f"FastAPI {label}, {w} worker{'s' * (w > 1)}", "peer",
                                          f"fastapi{w}", p[f"fastapi{w}"],
                                          [f"path=/{style}/sessions?ids={{ids}}", "k=50"] + lua_ids, ids=50))
        return jobs

    def sc_hot_batch(self):
        self.set_cache("hot")
        jobs = self.batch_jobs("hot-batch", [f"hot=1-{N_SESSIONS}"], extra=("c256", "webdis"))
        jobs.append(self.redis_benchmark_job("hot-batch", "redis-benchmark MGET-50",
                                             ["MGET"] + ["rb:__rand_int__"] * 50, 50))
        self.run_jobs(jobs)

    def sc_mixed(self):
        self.set_cache("mixed")
        self.run_jobs(self.batch_jobs("mixed", ["hot=1-9000", f"cold=9001-{N_SESSIONS}", "miss=0.1"]))
        self.set_cache("hot")

    def sc_cold_batch(self):
        self.set_cache("cold")
        jobs = self.batch_jobs("cold-batch", [f"hot=1-{N_SESSIONS}"])
        jobs.append(self.pgbench_job("cold-batch", "pgbench ANY-50 (16 clients)", 50))
        jobs.append(self.pgbench_job("cold-batch", "pgbench by-id (16 clients)", 1))
        self.run_jobs(jobs)
        self.set_cache("hot")

    def sc_proxy(self):
        p = self.port

        def from_origin(status, headers, body):
            if status == 200 and headers.get("X-Bench-Origin") == "1":
                return None
            return (f"batchd does not proxy yet (GET /api/ping answered {status} "
                    f"{body[:40].decode(errors='replace')})")

        self.run_jobs([
            self.http_job("proxy", "batchd [upstream]", "batchd", ["origin", "batchd"], p["batchd"],
                          ["path=/api/ping"], check=from_origin),
            self.http_job("proxy", "nginx proxy_pass (1 worker)", "peer", "nginx-proxy", p["nginx-proxy"],
                          ["path=/api/ping"], check=from_origin),
            self.http_job("proxy", "origin direct (nginx return 200)", "limit", "origin", p["origin"],
                          ["path=/api/ping"]),
        ])

    # -- lists and access ------------------------------------------------------------------------
    #
    # Both run against batchd-access (write_access_conf) with u1's token on
    # every request. Until batchd serves lists and checks owners, its rows
    # say so (n/a) and the FastAPI rows are measured all the same.

    BEFORE_CONNS = 8   # the /before route takes tens of ms a request: 64 would queue for seconds

    def walk_pages(self, port, path, who):
        """Follows "next" from the first page of u1's sessions and checks that
        the pages hold u1's 1,000 ids in page_query's order, 50 a page, every
        document u1's. Returns the 20 page targets. who names the server in
        the reasons (NotAvailable) it gives."""
        expect = self.owner_page_order()
        got, targets, after = [], [], None
        for _ in range(PAGES + 1):
            t = f"{path}?limit={PAGE}" + ("" if after is None else "&after=" + urllib.parse.quote(after, safe=""))
            status, _, body = http_get(f"http://127.0.0.1:{port}{t}", headers=self.auth)
            text = " ".join(body[:100].decode(errors="replace").split())
            if status == 404 and who == "batchd":
                raise NotAvailable(f"batchd does not serve lists yet (404 for GET {path}: {text})")
            if status != 200:
                raise NotAvailable(f"{who}: GET {t[:80]} answered {status} {text}")
            try:
                doc = json.loads(body)
                after = doc["next"]
                ids = [it["id"] for it in doc["items"]]
                owners = {it.get("owner_id") for it in doc["items"]}
            except (ValueError, KeyError, TypeError) as e:
                raise NotAvailable(f"{who}: GET {t[:80]} answered no {{items, next}} page ({e!r}): {text}")
            if owners - {OWNER}:
                raise NotAvailable(f"{who}: page {len(targets) + 1} holds documents owned by "
                                   f"{sorted(map(str, owners - {OWNER}))[:3]}")
            targets.append(t)
            got += ids
            if after is None:
                break
        if got != expect or len(targets) != PAGES:
            i = next((k for k, (x, y) in enumerate(zip(got, expect)) if x != y), min(len(got), len(expect)))
            raise NotAvailable(f"{who}: {len(targets)} pages of {PAGE} hold {len(got)} ids; page_query gives "
                               f"{len(expect)} in {PAGES} pages; first difference at #{i + 1}: "
                               f"{got[i] if i < len(got) else 'none'} for {expect[i] if i < len(expect) else 'none'}")
        return targets

    def access_ready(self):
        """Why the list and owner scenarios cannot run at all, or None."""
        if self.cfg["owned_by_ids"] is None:
            return ("conf/batchd.ini's by_ids has no json_build_object('id', s.id, ...) to add owner_id to; "
                    "read_conf() in tools/lib/bench.py needs to learn its new form")
        return None

    def sc_list(self):
        p = self.port
        why = self.access_ready()
        tdir = self.run / "targets"
        tdir.mkdir(exist_ok=True)

        def list_job(system, kind, server, path, walk, conns=64, vs=None, note=""):
            port = p[server]
            f = tdir / (re.sub(r"[^a-z0-9]+", "-", system.lower()).strip("-") + ".txt")
            who = "batchd" if server.startswith("batchd") else system.split(" (")[0]

            def pre():
                if why:
                    raise NotAvailable(why)
                pages = self.walk_pages(port, path, who)
                f.write_text("\n".join(pages if walk else pages[:1]) + "\n")
            return self.http_job("list", system, kind, server, port, [f"targets={f}"], conns=conns,
                                 headers=self.auth, pre=pre, vs=vs, note=note)

        walk = f"{PAGES} pages at random"
        jobs = [
            list_job("batchd, first page (cached)", "batchd", "batchd-access", "/v1/me/sessions", False),
            list_job(f"batchd, {walk}", "batchd-walk", "batchd-access", "/v1/me/sessions", True),
            list_job("FastAPI before (SCAN + MGET), 1 worker", "peer", "fastapi1", "/before/me/sessions", False,
                     conns=self.BEFORE_CONNS),
            list_job("FastAPI after (page query + MGET), 1 worker", "peer", "fastapi1", "/after/me/sessions", False),
            list_job("FastAPI after (page query + MGET), 2 workers", "peer", "fastapi2", "/after/me/sessions",
                     False),
            list_job(f"FastAPI after, {walk}, 1 worker", "peer", "fastapi1", "/after/me/sessions", True,
                     vs=f"batchd, {walk}"),
        ]
        if not why:
            self.set_cache("owned")
        self.run_jobs(jobs)
        # What the fix alone gained, whether or not batchd's rows ran.
        before = self.find("list", "FastAPI before")
        for r in self.rows:
            if before and r["scenario"] == "list" and r["system"].startswith("FastAPI after") and not r["na"]:
                r["note"] = "; ".join(x for x in (f"{r['rps'] / before['rps']:,.0f}× FastAPI before", r["note"]) if x)

    def sc_owner(self):
        port = self.port["batchd-access"]
        why = self.access_ready()
        tdir = self.run / "targets"
        tdir.mkdir(exist_ok=True)
        files = {}
        for name, path in (("public", "/v1/pub/sessions/"), ("owner", "/v1/own/sessions/")):
            files[name] = tdir / f"owner-{name}.txt"
            files[name].write_text("".join(f"{path}{i}\n" for i in OWNED_IDS))

        def owned_doc(status, headers, body):
            text = " ".join(body[:100].decode(errors="replace").split())
            if status != 200:
                return f"GET of a document u1 owns answered {status} {text}"
            try:
                owner = json.loads(body).get("owner_id")
            except (ValueError, AttributeError):
                owner = "(not a JSON object)"
            return None if owner == OWNER else f"the document's owner_id is {owner!r}, not {OWNER!r}: {text}"

        def pre_public():
            if why:
                raise NotAvailable(why)

        def pre_owner():
            """access = owner must be enforced, or the row measures nothing."""
            pre_public()
            base = f"http://127.0.0.1:{port}/v1/own/sessions/"
            anon = http_get(base + OWNED_IDS[0])[0]
            other = http_get(base + "s1", headers=self.auth)[0]   # s1 belongs to u3
            if (anon, other) != (401, 404):
                raise NotAvailable(f"batchd does not enforce access = owner yet (without a token a document "
                                   f"answered {anon}, another owner's document to u1 {other}; expected 401 and 404)")

        jobs = [
            self.http_job("owner", "batchd, access = public", "batchd-public", "batchd-access", port,
                          [f"targets={files['public']}"], headers=self.auth, check=owned_doc, pre=pre_public),
            self.http_job("owner", "batchd, access = owner", "batchd", "batchd-access", port,
                          [f"targets={files['owner']}"], headers=self.auth, check=owned_doc, pre=pre_owner),
        ]
        if not why:
            self.set_cache("owned")
        # A B A B ...: more, shorter slices than elsewhere, and the median.
        self.run_jobs(jobs, slices=[2] * 3 if self.quick else [3] * 5, pick="median")

    # -- SSE -----------------------------------------------------------------------------------

    def sse_streams(self, port):
        """Whether GET .../events answers 200 text/event-stream (anything
        else, e.g. batchd's 404 or its proxy answering for it, is not SSE)."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET /v1/sessions/s1/events HTTP/1.1\r\nHost: bench\r\n"
                          b"Accept: text/event-stream\r\n\r\n")
                s.settimeout(3)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 8192:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    head += chunk
        except OSError as e:
            return f"GET /v1/sessions/s1/events: {e}"
        first = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if not re.match(r"HTTP/1\.\d 200", first) or b"text/event-stream" not in head.lower():
            return f"GET /v1/sessions/s1/events answered \"{first}\", not an event stream"
        return None

    def sc_sse(self):
        """sse-load against batchd and nginx + nchan. sse-load publishes
        through the server's own POST and checks each delivery's id against
        the id the publish answered (batchd's {"id": ...}). nchan answers a
        publish in its own format and numbers events its own way, so against
        nchan sse-load can count events and time them but not match ids:
        those rows say so."""
        tests = [
            ("fan-out", dict(clients=15000, channels=1, events=1, rate=1)),
            # --events is per channel, --rate is publishes/s in total.
            ("sustained", dict(clients=5000, channels=50, events=1000 * self.dur // 50, rate=1000)),
        ]
        targets = [("batchd", "batchd", self.port["batchd"]), ("nginx + nchan (1 worker)", "nchan", self.port["nchan"])]
        self.set_cache("hot")
        for label, server, port in targets:
            for test, t in tests:
                row = dict(system=label, test=test, **t, na=None, result=None, note="")
                self.sse.append(row)
                try:
                    if not self.sse_load.exists():
                        raise NotAvailable(f"tools/sse-load is not built ({self.sse_load.relative_to(ROOT)} missing)")
                    proc = self.ensure(server)
                    why = self.sse_streams(port)
                    if why:
                        raise NotAvailable(why)
                    pid = proc.pid if server == "batchd" else (children(proc.pid) or [proc.pid])[0]
                    argv = [str(self.sse_load), "--url", f"http://127.0.0.1:{port}/v1/sessions/{{id}}/events",
                            "--clients", str(t["clients"]), "--channels", str(t["channels"]),
                            "--sources", "127.0.0.2-127.0.0.254", "--events", str(t["events"]),
                            "--rate", str(t["rate"]), "--payload", "256", "--token", self.cfg["token"],
                            "--pid", str(pid), "--timeout", "30", "--json"]
                    if server == "nchan":
                        argv += ["--event-type", ""]
                        row["note"] = "ids not verifiable (nchan's own event ids and publish answer)"
                    self.reset_counters()
                    self.watch.start()
                    text, status = self.run_bounded(self.gen(argv), 90 if test == "fan-out" else self.dur + 60)
                    row["other_cpu"] = self.watch.stop()
                    (self.run / "logs" / f"sse-{server}-{test}.log").write_text(text)
                    m = re.search(r"^\{.*\}\s*$", text, re.M)
                    if not m:
                        raise NotAvailable(f"sse-load exited {status} without a JSON summary: {text.strip()[-160:]}")
                    row["result"] = json.loads(m.group(0))
                    row["redis"] = self.read_counters()[0]
                    if status == "killed":
                        row["note"] = "; ".join(x for x in (row["note"], "sse-load overran its time and was "
                                                            "interrupted") if x)
                    log(f"  SSE {label} {test}: {json.dumps(row['result'])}")
                except (NotAvailable, json.JSONDecodeError) as e:
                    row["na"] = " ".join(str(e).split()).replace("|", "/")
                    log(f"  SSE {label} {test}: n/a: {row['na']}")

    def run_bounded(self, argv, seconds):
        """Runs a tool; past its time it gets SIGINT (sse-load then prints
        its summary so far), then SIGKILL. Returns (stdout + stderr, status)."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.record(p.pid)
        try:
            out, _ = p.communicate(timeout=seconds)
            return out, p.returncode
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)
            try:
                out, _ = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            return out, "killed"

    # -- run -------------------------------------------------------------------------------------

    def main(self):
        only = self.a.only.split(",") if self.a.only else SCENARIOS
        bad = [s for s in only if s not in SCENARIOS]
        if bad:
            raise SystemExit(f"unknown scenario {bad}; choose from {', '.join(SCENARIOS)}")
        t0 = time.monotonic()
        self.timing = {}
        try:
            self.ensure("batchd")
        except NotAvailable:
            pass
        for sc in SCENARIOS:
            if sc not in only:
                continue
            t = time.monotonic()
            log(f"== {sc}: {TITLES[sc]}")
            getattr(self, "sc_" + sc.replace("-", "_"))()
            self.timing[sc] = time.monotonic() - t
            log(f"   ({self.timing[sc]:.0f} s)")
        self.wall = time.monotonic() - t0 + self.a.setup_seconds
        self.only = only
        self.stop_servers()
        return self.report()

    def stop_servers(self):
        self.procs.stop_all()

    # -- report --------------------------------------------------------------------------------

    def machine(self):
        cpu, ncpu, mem, kernel = machine()
        osname = "?"
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
        py = subprocess.run(["/usr/bin/python3", "-c",
                             "import sys,fastapi,uvicorn,uvloop,httptools,redis,asyncpg,starlette,jwt;"
                             "print(sys.version.split()[0],fastapi.__version__,starlette.__version__,"
                             "uvicorn.__version__,uvloop.__version__,httptools.__version__,redis.__version__,"
                             "asyncpg.__version__,jwt.__version__)"], capture_output=True, text=True).stdout.split()
        py += ["?"] * (9 - len(py))
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip() or "?"
        nchan = dpkg_version("libnginx-mod-nchan")
        versions = [
            ("batchd", f"git {rev} (meson release build)"),
            ("sse-load", f"git {rev}" if self.sse_load.exists() else "not built"),
            ("redis-server", first_line(["redis-server", "--version"])),
            ("PostgreSQL", first_line([str(Path(self.a.pg_bin) / "postgres"), "--version"])),
            ("nginx", first_line(["nginx", "-v"]) + f" (nginx-light {dpkg_version('nginx-light') or '?'})"),
            ("nchan", f"libnginx-mod-nchan {nchan}" if nchan else "not installed"),
            ("Webdis", f"webdis {dpkg_version('webdis') or 'not installed'}"),
            ("wrk", first_line(["wrk", "-v"])),
            ("redis-benchmark", first_line(["redis-benchmark", "--version"])),
            ("pgbench", first_line(["pgbench", "--version"])),
            ("FastAPI stack", f"Python {py[0]}, FastAPI {py[1]}, Starlette {py[2]}, uvicorn {py[3]}, uvloop {py[4]}, "
                              f"httptools {py[5]}, redis-py {py[6]}, asyncpg {py[7]}, PyJWT {py[8]}"),
        ]
        return cpu, ncpu, kernel, osname, mem, versions

    def ref(self, scenario, system=None):
        """The batchd row a row of the scenario is compared with: the one
        named system, or the first "batchd" row."""
        for r in self.rows:
            if r["scenario"] == scenario and not r["na"] and (
                    r["system"] == system if system else r["kind"] == "batchd"):
                return r
        return None

    def find(self, scenario, prefix):
        for r in self.rows:
            if r["scenario"] == scenario and r["system"].startswith(prefix) and not r["na"]:
                return r
        return None

    def goals(self):
        """The issue's goals, each as (text, measured ratio or None, target, how)."""
        out = []

        def best(scenario, prefix):
            rs = [r for r in self.rows if r["scenario"] == scenario and r["system"].startswith(prefix) and not r["na"]]
            return max(rs, key=lambda r: r["rps"]) if rs else None

        def goal(text, scenario, peer, target):
            b = self.ref(scenario)
            if scenario not in self.only:
                return
            if b is None or peer is None:
                out.append((text, None, target, "not measured"))
            else:
                who = "batchd" if b["system"] == "batchd" or scenario == "http" else b["system"]
                out.append((text, b["rps"] / peer["rps"], target, f"{who} {b['rps']:,.0f} / {peer['system']} "
                                                                   f"{peer['rps']:,.0f} req/s"))

        goal("single reads ≥ 2× Webdis", "hot-single", self.find("hot-single", "Webdis"), 2.0)
        goal("single reads ≥ 20× FastAPI", "hot-single", best("hot-single", "FastAPI"), 20.0)
        goal("50-id batches ≥ 0.8× redis-benchmark MGET-50", "hot-batch",
             self.find("hot-batch", "redis-benchmark"), 0.8)
        goal("50-id batches ≥ 30× FastAPI-MGET", "hot-batch", best("hot-batch", "FastAPI MGET"), 30.0)
        goal("cold batches ≥ 0.8× pgbench ANY-50", "cold-batch", self.find("cold-batch", "pgbench ANY-50"), 0.8)
        goal("/healthz ≥ 0.9× nginx", "http", self.find("http", "nginx"), 0.9)
        goal("owner lists ≥ 10× the fixed FastAPI app (page query + MGET)", "list",
             best("list", "FastAPI after ("), 10.0)
        # The owner check's cost: access = owner ÷ access = public ≥ 0.9.
        goal("owner check costs ≤ 10% (access = owner ÷ access = public)", "owner",
             self.find("owner", "batchd, access = public"), 0.9)
        return out

    fmt_num = staticmethod(fmt_num)
    fmt_ms = staticmethod(fmt_ms)
    fmt_ratio = staticmethod(fmt_ratio)
    fmt_rt = staticmethod(fmt_rt)
    sse_value = staticmethod(sse_value)

    def compare_previous(self):
        """Each row against the previous run written to the same file (same
        mode, same CPU placement): the bench's own reproducibility check."""
        prev_path = Path(self.a.out).with_suffix(".json")
        try:
            prev = json.loads(prev_path.read_text())
        except (OSError, ValueError):
            return []
        if prev.get("placement") != self.a.cpu or prev.get("mode", "").split(" ")[0] != ("quick" if self.quick else "full"):
            return []
        old = {(r["scenario"], r["system"], r["conns"]): r for r in prev.get("rows", []) if not r.get("na")}
        diffs = []
        for r in self.rows:
            o = old.get((r["scenario"], r["system"], r["conns"]))
            if o and not r["na"] and o.get("rps"):
                diffs.append((r["rps"] / o["rps"] - 1, r, o))
        for s in self.sse:
            o = next((x for x in prev.get("sse", []) if x["system"] == s["system"] and x["test"] == s["test"]
                      and x.get("result")), None)
            if o and s.get("result"):
                a = self.sse_value(s["result"], "latency_ms_p50")
                b = self.sse_value(o["result"], "latency_ms_p50")
                if a and b:
                    diffs.append((a / b - 1, dict(scenario="sse", system=f"{s['system']} {s['test']} (p50 latency)",
                                                  other_cpu=s.get("other_cpu", 0)),
                                  dict(other_cpu=o.get("other_cpu", 0))))
        if not diffs:
            return []
        within = sum(1 for d, _, _ in diffs if abs(d) <= 0.15)
        self.repro = (f"Reproducibility: {within} of {len(diffs)} rows within ±15% of the previous run of the same "
                      f"mode and CPU placement ({prev.get('when', '?')}; req/s, SSE: p50 latency).")
        L = [f"## Change from the previous run ({prev.get('when', '?')})", "",
             f"{within} of {len(diffs)} rows within ±15% of the previous run of the same mode and CPU placement "
             "(req/s; SSE: p50 latency). Largest changes first:", "",
             "| scenario | system | change | others' CPU now / then |", "|---|---|---:|---:|"]
        for d, r, o in sorted(diffs, key=lambda x: -abs(x[0]))[:12]:
            L.append(f"| {r['scenario']} | {r['system']} | {d:+.0%} | {r.get('other_cpu', 0):.0%} / "
                     f"{o.get('other_cpu', 0):.0%} |")
        L.append("")
        return L

    def report(self):
        cpu, ncpu, kernel, osname, mem, versions = self.machine()
        self.when = datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        others = [r["other_cpu"] for r in self.rows if r.get("other_cpu") is not None]
        others += [s["other_cpu"] for s in self.sse if s.get("other_cpu") is not None]
        mode = ("quick (3 s per row after 1 s of warm-up)" if self.quick else
                f"full (10 s per row, as the best of {self.rounds} interleaved slices, {self.slice_text}, "
                f"after 2 s of warm-up)")
        if self.a.only:
            mode += f", only {', '.join(self.only)}"
        placement = ("load generators (wrk, redis-benchmark, pgbench, sse-load) pinned to CPU 0; every server and "
                     "its backends (batchd, redis-server, PostgreSQL, nginx, Webdis, FastAPI with 1 worker) pinned "
                     "to CPU 1; FastAPI with 2 workers may use both CPUs (so it shares CPU 0 with wrk)"
                     if self.pinned else "nothing pinned: load generators, servers and backends share both CPUs")
        L = []
        L.append("# batchd benchmark")
        L.append("")
        L.append(f"`tools/bench{' --quick' if self.quick else ''}{' --only ' + self.a.only if self.a.only else ''}"
                 f"{' --cpu shared' if not self.pinned else ''}` on "
                 f"{self.when}: {mode}; "
                 f"whole run {int(self.wall // 60)} min {int(self.wall % 60)} s (set-up {self.a.setup_seconds:.0f} s, "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in self.timing.items()) + ")."
                 + (f" Processes outside the bench used {sum(others) / len(others):.0%} of a core on average "
                    f"during the measured runs (most {max(others):.0%})." if others else ""))
        L.append("")
        L.append("## Machine")
        L.append("")
        L.append("| | |")
        L.append("|---|---|")
        L.append(f"| CPU | {cpu}, {ncpu} cores |")
        L.append(f"| Memory | {mem:.0f} GiB |")
        L.append(f"| Kernel | Linux {kernel} |")
        L.append(f"| OS | {osname} |")
        L.append(f"| CPU placement | {placement} |")
        for name, v in versions:
            L.append(f"| {name} | {v} |")
        L.append("")

        goals = self.goals()
        if goals:
            L.append("## Goals")
            L.append("")
            L.append("| goal | measured | target | met | from |")
            L.append("|---|---:|---:|:---:|---|")
            for text, ratio, target, how in goals:
                met = "—" if ratio is None else ("yes" if ratio >= target else "**no**")
                L.append(f"| {text} | {self.fmt_ratio(ratio)} | {target:g}× | {met} | {how} |")
            scored = [(r / t, text, r, t) for text, r, t, _ in goals if r is not None]
            if scored:
                frac, text, r, t = min(scored)
                verdict = "short of" if frac < 1 else "above"
                L.append("")
                L.append(f"Largest gap: **{text}**: measured {self.fmt_ratio(r)}, {frac:.0%} of the goal "
                         f"({verdict} it).")
            L.append("")

        L.append("## Results")
        L.append("")
        L.append("req/s and latency from wrk (`-t1`, 64 connections unless the row says otherwise; "
                 "p50/p99 from its latency distribution), redis-benchmark (64 clients) or pgbench (16 clients). "
                 "Redis cmds/req and PG queries/req are counted by Redis (`INFO commandstats`) and PostgreSQL (`pg_stat_statements`), divided by the requests served (for wrk rows: those it completed plus the one left in flight on each "
                 "connection when it stopped, which the server still carries out). "
                 "PG rows/req is the rows those queries returned: the ids each request had to load from PostgreSQL. "
                 "\"batchd ÷ row\" is batchd's req/s in that scenario divided by the row's. \"others' CPU\" is "
                 "the CPU that processes outside the bench used during the row, in % of one core (the machine "
                 "is shared; a row with a busy neighbour is not comparable).")
        L.append("")
        for sc in SCENARIOS:
            if sc not in self.only or sc == "sse":
                continue
            L.append(f"### {sc}: {TITLES[sc]}")
            L.append("")
            L.append(EXPLAIN[sc])
            L.append("")
            extra = EXTRA_COLUMN.get(sc)
            L.append("| system | conns | req/s | p50 ms | p99 ms | Redis cmds/req | PG queries/req | PG rows/req "
                     + (f"| {extra[0]} " if extra else "") + "| batchd ÷ row | others' CPU | note |")
            L.append("|---|" + "---:|" * (10 if extra else 9) + "---|")
            for r in [r for r in self.rows if r["scenario"] == sc]:
                b = self.ref(sc, r.get("vs"))
                name = r["system"] + (" *(machine limit)*" if r["kind"] == "limit" else "")
                if r["na"]:
                    L.append(f"| {name} | {r['conns']} | n/a: {r['na']} | | | | | | | | |" + (" |" if extra else ""))
                    continue
                ratio = "—"
                note = r["note"]
                if b is not None and r is not b:
                    ratio = self.fmt_ratio(row_ratio(b, r))
                    if r["ids"] != b["ids"]:
                        note = "; ".join(x for x in [note, f"{r['rps'] * r['ids']:,.0f} ids/s; ratio in ids/s"] if x)
                L.append(f"| {name} | {r['conns']} | {self.fmt_num(r['rps'])} | {self.fmt_ms(r['p50'])} | "
                         f"{self.fmt_ms(r['p99'])} | {self.fmt_rt(r['redis'])} | {self.fmt_rt(r['pg'])} | "
                         f"{self.fmt_rt(r.get('pg_rows'))} | "
                         + (f"{self.fmt_rt(r.get(extra[1]))} | " if extra else "") + f"{ratio} | "
                         f"{r.get('other_cpu', 0):.0%} | {note} |")
            L.append("")
        coal = [r for r in self.rows if r["kind"] in ("batchd", "batchd-c256") and not r["na"]
                and r["scenario"] in ("hot-single", "hot-batch")]
        if coal:
            L.append("**Coalescing** (Redis commands per 1,000 requests, from `INFO commandstats`): " + "; ".join(
                f"{r['scenario']} at {r['conns']} connections: {r['redis'] * 1000:,.0f}" for r in coal) + ".")
            L.append("")

        if "sse" in self.only:
            L.append(f"### sse: {TITLES['sse']}")
            L.append("")
            L.append("`tools/sse-load` (one process, CPU 0 when pinned) opens the clients from source addresses "
                     "127.0.0.2–254, publishes through the server's own publish endpoint and checks every delivery. "
                     "Fan-out: 15,000 clients on one channel, one publish. Sustained: 5,000 clients on 50 channels, "
                     f"1,000 publishes/s for {self.dur} s. RSS/client is the server's resident memory growth per "
                     "connected client (fan-out only).")
            L.append("")
            L.append("| system | test | clients connected | deliveries received / expected | missing | dup | "
                     "deliveries/s | p50 ms | p99 ms | max ms | server RSS/client | others' CPU | note |")
            L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for s in self.sse:
                if s["na"]:
                    L.append(f"| {s['system']} | {s['test']} | n/a: {s['na']} | | | | | | | | | | |")
                    continue
                res = s["result"]
                g = lambda *n: self.sse_value(res, *n)
                exp = g("deliveries_expected", "expected")
                recv = g("deliveries_received", "received")
                note = s["note"]
                if not exp:
                    # Nothing verifiable: show the events that arrived, as such.
                    recv = g("events_received")
                    exp = s["clients"] * s["events"]   # --events is per channel
                    note = "; ".join(x for x in (note, "received = events that arrived, unverified") if x)
                if g("pass") is False and s["system"] == "batchd":
                    note = "; ".join(x for x in (note, "sse-load check failed (see its summary below)") if x)
                rss = g("rss_per_client") if s["test"] == "fan-out" else None
                L.append(f"| {s['system']} | {s['test']} | {self.fmt_num(g('connected', 'clients_connected'))} | "
                         f"{self.fmt_num(recv)} / {self.fmt_num(exp)} | {self.fmt_num(g('missing'))} | "
                         f"{self.fmt_num(g('duplicates'))} | {self.fmt_num(g('deliveries_per_s'))} | "
                         f"{self.fmt_ms(g('latency_ms_p50', 'p50_ms'))} | {self.fmt_ms(g('latency_ms_p99', 'p99_ms'))} | "
                         f"{self.fmt_ms(g('latency_ms_max', 'max_ms'))} | "
                         f"{'—' if rss is None else f'{rss / 1024:.1f} KiB'} | {s.get('other_cpu', 0):.0%} | {note} |")
            L.append("")
            raw = [s for s in self.sse if s["result"]]
            if raw:
                L.append("<details><summary>sse-load summaries as printed</summary>")
                L.append("")
                for s in raw:
                    L.append(f"- {s['system']}, {s['test']}: `{json.dumps(s['result'], sort_keys=True)}`")
                L.append("")
                L.append("</details>")
                L.append("")

        L.extend(self.compare_previous())
        L.append("## Method")
        L.append("")
        L.extend(METHOD.format(dur=self.dur, warm=self.warm, n=N_SESSIONS, slicing=(
            "" if self.rounds == 1 else
            f", as {self.rounds} slices ({self.slice_text}) taken in rounds across the scenario's rows (A B C A B C) "
            "with the best slice shown: this VM's speed drifts by tens of per cent over minutes with nothing "
            "visible running, interleaving gives a scenario's contenders the same conditions, and interference "
            "only slows a run down")).strip().splitlines())
        L.append("")
        text = "\n".join(L)
        out = Path(self.a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        doc = {"mode": mode, "placement": self.a.cpu, "when": self.when,
               "machine": {"cpu": cpu, "cores": ncpu, "kernel": kernel},
               "goals": [dict(text=t, ratio=r, target=g, how=h) for t, r, g, h in goals],
               "repro": self.repro,
               "rows": self.rows, "sse": self.sse}
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
        print(text)
        log(f"\nWritten to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
            f"(and {out.with_suffix('.json').name}).")
        if not self.quick and not self.a.only and self.pinned and out.name == "latest.md":
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


def main():
    ap = driver_args(__doc__)
    ap.add_argument("--cpu", choices=["pinned", "shared"], default="pinned")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    def stop(*_):
        log("interrupted: stopping what the bench started")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    b = Bench(a)
    try:
        return b.main()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        b.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
