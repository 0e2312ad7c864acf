"""tools/lib/chaos_env.py: what the tools/chaos scenarios share: ports,
redis-server (started, killed, stopped and restarted here), PostgreSQL
(started by tools/chaos; stopped and started here), one batchd per
scenario with the settings it needs, the app server, PostgreSQL's truth,
and /metrics."""
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver import Procs  # noqa: E402
from chaos_load import Http, HttpFail  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
N_SESSIONS = 10000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Skip(Exception):
    """A scenario cannot run; the message says why."""


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def metric(m, name, **labels):
    """Sum of the series of `name` whose labels include `labels`."""
    total = 0.0
    for key, v in m.items():
        n, _, rest = key.partition("{")
        if n == name and all(f'{k}="{val}"' in rest for k, val in labels.items()):
            total += v
    return total


def by_label(m, name, label):
    """{label value: sum} of the series of `name`, zeros left out."""
    out = {}
    for key, v in m.items():
        n, _, rest = key.partition("{")
        mm = re.search(label + r'="([^"]*)"', rest)
        if n == name and mm and v:
            out[mm.group(1)] = out.get(mm.group(1), 0) + int(v)
    return out


def proc_status(pid, field):
    """A /proc/PID/status field in bytes (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def tcp_mem_bytes():
    """The kernel's TCP buffer memory (pages in /proc/net/sockstat) in bytes."""
    try:
        for line in open("/proc/net/sockstat"):
            if line.startswith("TCP:"):
                f = line.split()
                return int(f[f.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    return None


class Batchd:
    def __init__(self, env, name, proc, conf):
        self.env, self.name, self.proc, self.conf = env, name, proc, conf
        self.pid = proc.pid
        self.port = env.port["batchd"]
        self.admin = env.port["admin"]
        self.log_path = env.run / "logs" / f"{name}.log"

    def status(self, field):
        return proc_status(self.pid, field)

    def alive(self):
        return self.proc.poll() is None

    async def metrics(self):
        h = Http(self.admin)
        try:
            r = await h.request("GET", "/metrics", timeout=5)
            return parse_metrics(r.body.decode())
        finally:
            h.close()

    async def metric(self, name, **labels):
        try:
            return metric(await self.metrics(), name, **labels)
        except HttpFail:
            return None

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Env:
    """Ports, servers and helpers shared by the scenarios."""

    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.run = Path(a.run)
        (self.run / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Procs(self.run)
        base = a.port_base
        self.port = {"redis": a.redis_port, "pg": a.pg_port, "batchd": base + 10, "admin": base + 11,
                     "app": base + 20, "link": base + 5}
        self.token = "chaos-token"
        self.batchd_bin = Path(a.build) / "batchd"
        self.pg_bin = Path(a.pg_bin)
        self.pg_data = self.run / "pg" / "data"
        self.redis_dir = self.run / "redis"
        self.redis_proc = None
        self.redis_aof = False
        self.n_batchd = 0
        self.unknown_keys = set()
        self.by_ids = self.read_by_ids()

    # -- configuration --------------------------------------------------------------------------

    @staticmethod
    def read_by_ids():
        section = None
        for line in (ROOT / "conf" / "batchd.ini").read_text().splitlines():
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]")
            m = re.match(r"^by_ids\s*=\s*(.*)$", s)
            if m and section == "resource sessions":
                if "$1::text[]" not in m.group(1):
                    raise SystemExit("conf/batchd.ini: by_ids does not take $1::text[]; tools/chaos needs to know")
                return m.group(1)
        raise SystemExit("conf/batchd.ini has no [resource sessions] by_ids")

    def write_conf(self, name, overrides, upstream=None):
        """conf/batchd.ini with the chaos ports and `overrides`:
        {"batchd": {"key": "value"}, "stream session-events": {...}, ...}.
        Keys not in the file are added at the end of their section."""
        p = self.port
        ov = {"batchd": {"listen": f"127.0.0.1:{p['batchd']}", "admin_listen": f"127.0.0.1:{p['admin']}",
                         "admin_token": self.token, "log_level": "info", "max_connections": "16000"},
              "redis": {"url": f"redis://127.0.0.1:{p['redis']}/0"},
              "postgres": {"conninfo": f"host=127.0.0.1 port={p['pg']} dbname=app user=app"},
              "stream session-events": {"max_sse_clients": "16000"}}
        for sec, kv in overrides.items():
            ov.setdefault(sec, {}).update({k: str(v) for k, v in kv.items()})
        if upstream:
            ov.setdefault("upstream", {})["url"] = upstream
        out, section, seen = [], None, set()

        def flush(sec):
            for k, v in ov.get(sec, {}).items():
                if (sec, k) not in seen:
                    out.append(f"{k} = {v}")
                    seen.add((sec, k))

        for line in (ROOT / "conf" / "batchd.ini").read_text().splitlines():
            s = line.strip()
            if s.startswith("["):
                if section:
                    flush(section)
                section = s.strip("[]")
            m = re.match(r"^([a-z_]+)\s*=", s)
            if section and m and m.group(1) in ov.get(section, {}):
                line = f"{m.group(1)} = {ov[section][m.group(1)]}"
                seen.add((section, m.group(1)))
            out.append(line)
        if section:
            flush(section)
        present = {l.strip().strip("[]") for l in out if l.strip().startswith("[")}
        for sec in ov:
            if sec not in present:
                out += ["", f"[{sec}]"]
                flush(sec)
        path = self.run / f"{name}.ini"
        path.write_text("\n".join(out) + "\n")
        return path

    # -- batchd ---------------------------------------------------------------------------------

    async def start_batchd(self, overrides=None, upstream=None, name=None):
        self.n_batchd += 1
        name = name or f"batchd-{self.n_batchd}"
        conf = self.write_conf(name, overrides or {}, upstream)
        chk = subprocess.run([str(self.batchd_bin), "-t", "-c", str(conf)], capture_output=True, text=True)
        unknown = re.findall(r":(\d+): \[[^\]]*\] ([a-z_]+): unknown key", chk.stderr)
        if chk.returncode != 0 and unknown:
            # conf/batchd.ini may be newer than the build under test: leave
            # out the settings this batchd does not know, and say so.
            lines = conf.read_text().splitlines()
            for n, key in unknown:
                lines[int(n) - 1] = "; (not known to this build) " + lines[int(n) - 1]
                self.unknown_keys.add(key)
            conf.write_text("\n".join(lines) + "\n")
            chk = subprocess.run([str(self.batchd_bin), "-t", "-c", str(conf)], capture_output=True, text=True)
        if chk.returncode != 0:
            raise Skip("batchd -t rejected the config: " + " / ".join(chk.stderr.strip().splitlines()[:2]))
        proc = self.procs.start(name, [str(self.batchd_bin), "-c", str(conf)])
        b = Batchd(self, name, proc, conf)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Skip(f"batchd exited at start ({proc.returncode}): {b.log_text()[-300:]}")
            try:
                m = await b.metrics()
                if metric(m, "batchd_redis_up") >= 1 and metric(m, "batchd_pg_up") >= 1 \
                        and metric(m, "batchd_redis_pubsub_up") >= 1:
                    return b
            except HttpFail:
                pass
            await asyncio.sleep(0.1)
        raise Skip("batchd did not report Redis, pub/sub and PostgreSQL up within 20 s")

    async def stop_batchd(self, b, timeout=40):
        """SIGTERM, wait; SIGKILL past timeout. Returns the exit status."""
        if b.proc.poll() is None:
            b.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while b.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
        self.procs.stop(b.proc)
        return b.proc.returncode

    # -- redis-server ---------------------------------------------------------------------------

    def redis(self, timeout=5):
        return redis.Redis(host="127.0.0.1", port=self.port["redis"], socket_timeout=timeout,
                           socket_connect_timeout=timeout)

    def redis_fresh(self, aof=False):
        """An empty redis-server: stopped, its directory emptied, started."""
        self.redis_stop()
        shutil.rmtree(self.redis_dir, ignore_errors=True)
        self.redis_dir.mkdir(parents=True)
        self.redis_aof = aof
        self.redis_start()

    def redis_start(self):
        d = self.redis_dir
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port["redis"]), "--dir", str(d),
                "--save", "", "--appendonly", "yes" if self.redis_aof else "no", "--appendfsync", "always",
                "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log"), "--daemonize", "no"]
        self.redis_proc = self.procs.start("redis", argv)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if self.redis(0.5).ping():
                    return
            except redis.RedisError:
                pass
            if self.redis_proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start; see {d / 'redis.log'}")

    def redis_signal(self, sig):
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            os.kill(self.redis_proc.pid, sig)
        if sig == signal.SIGKILL and self.redis_proc is not None:
            self.redis_proc.wait()
            self.procs.stop(self.redis_proc)

    def redis_stop(self):
        if self.redis_proc is not None:
            if self.redis_proc.poll() is None:
                os.kill(self.redis_proc.pid, signal.SIGCONT)
            self.procs.stop(self.redis_proc)
            self.redis_proc = None

    # -- PostgreSQL -----------------------------------------------------------------------------

    def as_pg(self, argv):
        return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + argv

    def pg_ctl(self, *args):
        argv = self.as_pg([str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data)] + list(args))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {(out.stderr or out.stdout).strip()[-300:]}")

    def pg_stop(self):
        self.pg_ctl("-m", "fast", "-w", "stop")

    def pg_start(self):
        self.pg_ctl("-l", str(self.run / "pg" / "postgres.log"), "-w", "-t", "30", "start")

    def psql(self, sql, fields=False):
        argv = ["psql", "-h", "127.0.0.1", "-p", str(self.port["pg"]), "-U", "app", "-d", "app", "-qAtX",
                "-v", "ON_ERROR_STOP=1"] + (["-F", "\t"] if fields else []) + ["-c", sql]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout

    def truth(self, lo=1, hi=N_SESSIONS):
        """{id: document text} for s<lo>..s<hi>, straight from PostgreSQL
        with batchd's own by_ids query: what a correct read returns."""
        q = self.by_ids.replace("$1::text[]", f"ARRAY(SELECT 's' || g FROM generate_series({lo}, {hi}) g)")
        docs = dict(line.split("\t", 1) for line in self.psql(q, fields=True).splitlines() if line)
        if len(docs) != hi - lo + 1:
            raise Skip(f"by_ids returned {len(docs)} of {hi - lo + 1} sessions")
        return docs

    def fill(self, docs, ttl=3600):
        """Puts documents in Redis as batchd would (session:{id}, TTL)."""
        r = self.redis()
        pipe = r.pipeline(transaction=False)
        for i, (k, v) in enumerate(docs.items()):
            pipe.set(f"session:{k}", v, ex=ttl)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()

    # -- other processes ------------------------------------------------------------------------

    def start_app(self):
        """tests/integration/upstream_app.py with its PostgreSQL writes."""
        argv = ["/usr/bin/python3", str(ROOT / "tests" / "integration" / "upstream_app.py"), str(self.port["app"]),
                f"host=127.0.0.1 port={self.port['pg']} dbname=app user=app"]
        p = self.procs.start("upstream-app", argv)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise Skip(f"upstream_app.py exited ({p.returncode}); see .chaos/logs/upstream-app.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port["app"]), timeout=0.5):
                    return p
            except OSError:
                time.sleep(0.1)
        raise Skip("upstream_app.py did not listen within 15 s")
