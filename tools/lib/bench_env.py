"""tools/lib/bench_env.py: the environment tools/bench measures in. Env
starts the servers the first time a row needs them, puts Redis in the
cache state a scenario wants, reads the backends' counters, and watches
the CPU that processes outside the bench use meanwhile. bench_jobs.py
measures rows on top of it.

    Env.ensure(name) --> batchd, batchd-access     (bench_conf.py's configs)
                         nginx-origin, nginx-proxy, nginx-nchan, Webdis,
                         FastAPI with 1 and 2 workers (tools/peers/)
                         batchd-near, batchd-fill(32), Varnish   (bench_near.NearServers)
    Env.set_cache()  --> redis-server   hot, mixed, cold, owned (+ a janitor
                                        that keeps the misses misses)
    Env.read_counters() <-- INFO commandstats, pg_stat_statements

redis-server and PostgreSQL are tools/bench's (tools/lib/common.sh).
"""
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import redis

from bench_conf import (N_SESSIONS, OWNED_IDS, OWNED_KEY, OWNER, PAGE_QUERY, ROOT, owned_missing, read_conf,
                        template, write_access_conf, write_batchd_conf, write_workers_conf)
from driver import Procs


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


def http_get(url, headers=None, timeout=10.0, method="GET", data=None):
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


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


# --- the environment --------------------------------------------------------------------------


class Env:
    def __init__(self, a):
        self.a = a
        self.run = Path(a.run)
        (self.run / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.run)
        self.base = a.port_base
        self.port = {
            "redis": a.redis_port, "pg": a.pg_port,
            "batchd": self.base + 10, "admin": self.base + 11,
            "batchd-access": self.base + 12, "access-admin": self.base + 13,
            "batchd-near": self.base + 14, "near-admin": self.base + 15,
            "batchd-fill": self.base + 16, "fill-admin": self.base + 17,
            "batchd-fill32": self.base + 18, "fill32-admin": self.base + 19,
            "origin": self.base + 20, "nginx-proxy": self.base + 21, "nchan": self.base + 22,
            "webdis": self.base + 30, "fastapi1": self.base + 40, "fastapi2": self.base + 41,
            "varnish": self.base + 50, "batchd-fill0": self.base + 60, "fill0-admin": self.base + 61,
            "batchd-cg": self.base + 62, "cg-admin": self.base + 63,
            "batchd-cg-near": self.base + 64, "cg-near-admin": self.base + 65,
            "batchd-w2": self.base + 66, "w2-admin": self.base + 67,
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
        self.started = {}
        self.r = redis.Redis(host="127.0.0.1", port=a.redis_port)
        self.cache = None          # "hot", "mixed", "cold", "owned": what Redis holds now
        self.janitor = None
        self.rb_keys = False
        self.docs = None
        self.owned_docs = None
        self.owner_order = None
        self.cfg = read_conf()
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

    def gen(self, argv):
        """argv on the load generators' CPU."""
        return (["taskset", "-c", self.gen_cpus] if self.gen_cpus else []) + argv

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

    def stop(self, name):
        """Stops a server ensure() started; the next ensure() starts it again."""
        p = self.started.pop(name, None)
        if p is not None and not isinstance(p, NotAvailable):
            self.procs.stop(p)

    def start_batchd(self):
        return self.start_batchd_with("batchd", write_batchd_conf(self.run, self.port), self.port["batchd"],
                                      self.port["admin"])

    def start_batchd_w2(self):
        """The first batchd's config with workers = 2 (a master and two
        worker processes on the same ports), on ports of its own. Like
        FastAPI with 2 workers, it gets both CPUs when pinned; compare it
        with the one-process rows under --cpu shared."""
        conf = write_workers_conf(self.run, self.port, "batchd-w2", "w2-admin", 2)
        return self.start_batchd_with("batchd-w2", conf, self.port["batchd-w2"], self.port["w2-admin"],
                                      cpus=self.wide_cpus)

    def start_batchd_access(self):
        why = owned_missing(self.cfg)
        if why:
            raise NotAvailable(why)
        conf = write_access_conf(self.run, self.port, self.cfg, self.jwt_secret_file)
        return self.start_batchd_with("batchd-access", conf, self.port["batchd-access"], self.port["access-admin"])

    def start_batchd_with(self, name, conf, port, admin, cpus=None):
        chk = subprocess.run([str(self.batchd_bin), "-t", "-c", str(conf)], capture_output=True, text=True)
        if chk.returncode != 0:
            # The first line naming a key says why; the last is only
            # "configuration file ... is invalid".
            lines = chk.stderr.strip().splitlines() or ["?"]
            why = next((l for l in lines if "is invalid" not in l), lines[-1])
            why = why.replace(str(conf), conf.name)
            raise NotAvailable(f"batchd -t rejected the bench config {conf.name}: {why}")
        p = self.procs.start(name, [str(self.batchd_bin), "-c", str(conf)], cpus=cpus)
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
        conf = template(conf_name, d / "nginx.conf", DIR=d, PORT=port, **values)
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
        conf = template("webdis.json", d / "webdis.json", DIR=d, PORT=self.port["webdis"],
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

    def all_docs(self, by_ids, what):
        """Every session's document as by_ids returns it, straight from
        PostgreSQL: the cache is filled with exactly what batchd would
        write. what names the query in the error."""
        q = by_ids.replace("$1::text[]", f"ARRAY(SELECT 's' || g FROM generate_series(1, {N_SESSIONS}) g)")
        out = self.psql(q, user="app", fields=True)
        docs = dict(line.split("\t", 1) for line in out.splitlines() if line)
        if len(docs) != N_SESSIONS:
            raise SystemExit(f"expected {N_SESSIONS} sessions, {what} returned {len(docs)}")
        return docs

    def load_docs(self):
        if self.docs is None:
            self.docs = self.all_docs(self.cfg["by_ids"], "by_ids")
        return self.docs

    def load_owned_docs(self):
        """The documents with owner_id, as the owner-bearing by_ids returns them."""
        if self.owned_docs is None:
            self.owned_docs = self.all_docs(self.cfg["owned_by_ids"], "the owned by_ids")
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

    def store(self, items, ttl):
        """SETs each (key, document), pipelined 1,000 at a time; ttl None: no expiry."""
        pipe = self.r.pipeline(transaction=False)
        for n, (key, doc) in enumerate(items, 1):
            pipe.set(key, doc, ex=ttl)
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()

    def fill(self, lo, hi):
        docs = self.load_docs()
        self.store(((f"session:s{i}", docs[f"s{i}"]) for i in range(lo, hi + 1)), self.cfg["ttl"])

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
            self.store(((OWNED_KEY.replace("{id}", i), doc) for i, doc in self.load_owned_docs().items()),
                       self.cfg["ttl"])
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
        self.store(((f"rb:{i:012d}", docs[f"s{i + 1}"]) for i in range(N_SESSIONS)), None)
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

    def redis_commands(self):
        """Calls (and rejected calls) per Redis command since the last
        reset, IGNORED_CMDS left out."""
        out = {}
        for name, st in self.r.info("commandstats").items():
            cmd = name.replace("cmdstat_", "").lower()
            if cmd.split("|")[0] not in self.IGNORED_CMDS:
                out[cmd] = int(st.get("calls", 0)) + int(st.get("rejected_calls", 0))
        return out

    def quiesce(self, limit=30.0):
        """Waits until Redis has seen no new command (PINGs aside) for
        250 ms, so the requests a load generator left in flight are done
        before the counters are reset or read."""
        last = sum(self.redis_commands().values())
        now = time.monotonic()
        stable, end = now, now + limit
        while now < end:
            time.sleep(0.1)
            now = time.monotonic()
            cur = sum(self.redis_commands().values())
            if cur != last:
                last, stable = cur, now
            elif now - stable >= 0.25:
                return

    def reset_counters(self):
        self.r.config_resetstat()
        self.psql("SELECT pg_stat_statements_reset()")

    def read_counters(self):
        """(Redis commands, by_ids queries, detail): detail has the calls
        per Redis command, "pg_rows" (rows by_ids returned) and "pg_page"
        (page_query calls)."""
        detail = self.redis_commands()
        redis_calls = sum(detail.values())
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

    def stop_servers(self):
        self.procs.stop_all()
