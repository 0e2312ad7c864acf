"""Real servers for the integration tests: batchd, redis-server, PostgreSQL.

Nothing here is mocked. Each helper starts the real program in a temporary
directory on free loopback ports and stops it at the end. batchd runs from
the sanitizer build (BATCHD_BIN, default build-asan/batchd); every batchd
the tests start must exit 0 with no AddressSanitizer, LeakSanitizer or
UBSan report in its log.
"""

import asyncio
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCHD = os.environ.get("BATCHD_BIN", str(ROOT / "build-asan" / "batchd"))
SANITIZER_RE = re.compile(r"(AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer)")

SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    "LSAN_OPTIONS": "exitcode=23",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def made_for_the_test(make, close):
    """A fixture's body: yields a factory that passes its arguments to
    make, then closes whatever it made with close(x) after the test.

        @pytest.fixture
        def things():
            yield from made_for_the_test(Thing, Thing.close)
    """
    made = []

    def _make(*args, **kw):
        x = make(*args, **kw)
        made.append(x)
        return x

    yield _make
    for x in made:
        close(x)


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred() until it is truthy; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# --- HTTP over a raw socket ---------------------------------------------------


class Response:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.header_list = headers
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        self.raw_head = raw_head

    def json(self):
        import json
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class Http:
    """One client connection. Sends raw bytes and parses responses exactly,
    so tests can pipeline, split writes and check framing byte by byte."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.timeout = timeout

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by batchd")
        self.buf += chunk

    def _read_until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep)
        out, self.buf = self.buf[:i], self.buf[i + len(sep):]
        return out

    def _read_n(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head_request=False):
        while True:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            status = int(parts[1])
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
            if status != 100:
                break
        h = {k.lower(): v for k, v in headers}
        body = b""
        if head_request or status in (204, 304):
            pass
        elif "content-length" in h:
            body = self._read_n(int(h["content-length"]))
        elif h.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")
                    break
                body += self._read_n(size)
                self._read_n(2)
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return Response(status, parts[2] if len(parts) > 2 else "", headers, body, head)

    def request(self, method, path, headers=None, body=None, host="batchd"):
        if isinstance(body, str):
            body = body.encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        hdrs = dict(headers or {})
        if body is not None and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return self.read_response(head_request=(method == "HEAD"))

    def wait_closed(self, timeout=10.0):
        """True when batchd closes the connection within timeout (any unread
        response bytes are kept in self.buf)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def get(port, path, headers=None):
    with Http(port) as c:
        return c.request("GET", path, headers)


def request(port, method, path, headers=None, body=None):
    with Http(port) as c:
        return c.request(method, path, headers, body)


# --- batchd ---------------------------------------------------------------------


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        out[name_labels] = float(value)
    return out


class Batchd:
    """A batchd process with a config file written from `sections` (INI)."""

    def __init__(self, workdir, config, port, admin_port=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.admin_port = admin_port
        self.conf = self.dir / "batchd.ini"
        self.conf.write_text(config)
        self.log_path = self.dir / "batchd.log"
        self.proc = None
        self.returncode = None

    @property
    def ops_port(self):
        return self.admin_port or self.port

    def start(self, env=None, wait=True):
        e = dict(os.environ)
        e.update(SAN_ENV)
        e.update(env or {})
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BATCHD, "-c", str(self.conf)], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=e)
        if wait:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.ops_port),
                       timeout=20, what="batchd to listen")
            if self.proc.poll() is not None:
                raise RuntimeError(f"batchd exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30):
        self.returncode = self.proc.wait(timeout=timeout)
        self.logf.close()
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None or self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sanitizer_report(self):
        m = SANITIZER_RE.search(self.log())
        return self.log()[max(0, m.start() - 200):m.start() + 3000] if m else None

    def assert_clean_exit(self):
        rc = self.stop()
        report = self.sanitizer_report()
        assert report is None, f"sanitizer report:\n{report}"
        assert rc == 0, f"batchd exited {rc}; log tail:\n{self.log()[-3000:]}"

    def metrics(self):
        return parse_metrics(get(self.ops_port, "/metrics").body.decode())

    def metric(self, name, **labels):
        """Sum of the series of `name` whose labels include `labels`."""
        total = 0.0
        for key, v in self.metrics().items():
            n, _, rest = key.partition("{")
            if n != name:
                continue
            if all(f'{k}="{val}"' in rest for k, val in labels.items()):
                total += v
        return total


def config(port, admin_port=None, batchd="", extra=""):
    text = f"[batchd]\nlisten = 127.0.0.1:{port}\n"
    if "log_level" not in batchd:
        text += "log_level = debug\n"
    if admin_port:
        text += f"admin_listen = 127.0.0.1:{admin_port}\n"
    text += batchd
    text += "\n" + extra
    return text


# --- redis-server ------------------------------------------------------------------


class RedisServer:
    def __init__(self, workdir, port=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.ping(), timeout=10, what="redis-server")
        return self

    def ping(self):
        try:
            return self.client().ping()
        except Exception:
            return False

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def shutdown_save(self):
        """SHUTDOWN SAVE: the data is back after start() (same dir)."""
        try:
            self.client().shutdown(save=True)
        except Exception:
            pass  # the connection drops as the server exits
        self.proc.wait(10)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def commandstats(self):
        """{"mget": calls, ...} from INFO commandstats."""
        info = self.client().info("commandstats")
        return {k[len("cmdstat_"):]: v["calls"] for k, v in info.items()}


# --- PostgreSQL -------------------------------------------------------------------------


def pg_bindir():
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not dirs:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return dirs[-1]


class PgServer:
    """A throwaway cluster with pg_stat_statements, role and database "app".
    As root, initdb and postgres run as the postgres user."""

    def __init__(self, workdir, port=None):
        self.dir = Path(workdir)
        self.port = port or free_port()
        self.bin = pg_bindir()
        self.root = os.geteuid() == 0

    def _as_pg(self, args, **kw):
        if self.root:
            args = ["runuser", "-u", "postgres", "--"] + args
        return subprocess.run(args, check=True, capture_output=True, **kw)

    def init(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            # Every directory above must be searchable by postgres.
            p = self.dir.parent
            while p != p.parent:
                st = p.stat()
                if not st.st_mode & 0o001:
                    os.chmod(p, st.st_mode | 0o001)
                p = p.parent
        self._as_pg([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                     "--auth=trust", "-E", "UTF8", "--locale=C"])
        with open(self.dir / "data" / "postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.dir}'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
""")
        return self

    def start(self):
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                     str(self.dir / "postgres.log"), "-w", "-t", "30", "start"])
        return self

    def stop(self, mode="fast"):
        self._as_pg([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop"])

    def psql(self, sql, db="app", user="app"):
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", db,
                            "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                           check=True, capture_output=True, text=True)
        return r.stdout.strip()

    def setup_app(self, demo_sessions=200):
        self.psql("CREATE ROLE app LOGIN SUPERUSER", db="postgres", user="postgres")
        self.psql("CREATE DATABASE app OWNER app", db="postgres", user="postgres")
        self.psql("CREATE EXTENSION pg_stat_statements", user="postgres")
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "app", "-d", "app",
                        "-qX", "-v", f"n_sessions={demo_sessions}", "-f", str(ROOT / "conf" / "demo.sql")],
                       check=True, capture_output=True)
        return self

    def conninfo(self):
        return f"host=127.0.0.1 port={self.port} dbname=app user=app"

    def calls(self, pattern):
        """Executions of statements matching the SQL LIKE pattern, from pg_stat_statements."""
        v = self.psql(f"SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '{pattern}'")
        return int(v)

    def reset_stats(self):
        self.psql("SELECT pg_stat_statements_reset()")

    def make_replica(self, workdir, port=None):
        """A streaming replica of this (running) server: pg_basebackup -R -X stream
        into workdir, its own port and socket directory, hot_standby on. Returns
        it as a PgServer, not started. pg_stat_statements there counts what ran
        there (the extension came over with the base backup)."""
        r = PgServer(workdir, port)
        r.dir.mkdir(parents=True, exist_ok=True)
        if r.root:
            pw = pwd.getpwnam("postgres")
            os.chown(r.dir, pw.pw_uid, pw.pw_gid)
        r._as_pg([str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-D", str(r.dir / "data"), "-R", "-X", "stream", "-c", "fast"])
        with open(r.dir / "data" / "postgresql.conf", "a") as f:
            f.write(f"""
port = {r.port}
unix_socket_directories = '{r.dir}'
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
""")
        return r

    def replay_pause(self, pause=True):
        """A standby: stop (or resume) applying WAL; it keeps receiving it."""
        self.psql("SELECT pg_wal_replay_pause()" if pause else "SELECT pg_wal_replay_resume()", user="postgres")

    def holds_unreplayed_wal(self):
        """A standby: has it received WAL it has not applied (replay paused)?"""
        return self.psql("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()", user="postgres") == "t"


# --- many clients at once ------------------------------------------------------------------


async def read_answer(reader, writer):
    """One HTTP answer with a Content-Length from an asyncio stream: (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0].split(b":")[1])
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split(b" ")[1]), body


async def send_get(port, path, headers=None):
    """Connects and writes one GET; returns (reader, writer) for read_answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n{head}\r\n".encode())
    await writer.drain()
    return reader, writer


def stop_process(pid):
    """SIGSTOP, then wait until the process is stopped: kill() returns
    before a process running on another core has stopped, and what a test
    sends meanwhile could still be read."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T",
               interval=0.001, what=f"process {pid} stopped")


async def fetch_many_at_once(port, paths, pid, headers=None):
    """Every request is in batchd's socket buffers before batchd runs again:
    it is stopped (SIGSTOP) while the clients connect (the kernel completes the
    handshakes into the listen backlog) and write, then continued. So all the
    reads reach it in the same loop iterations, whatever the machine's load."""
    stop_process(pid)
    try:
        conns = await asyncio.gather(*[send_get(port, p, headers) for p in paths])
    finally:
        os.kill(pid, signal.SIGCONT)
    return await asyncio.gather(*[read_answer(r, w) for r, w in conns])


def backends_conf(redis_port, pg, pool_size=2):
    """[redis] and [postgres] sections for a test's batchd."""
    return (f"[redis]\nurl = redis://127.0.0.1:{redis_port}/0\npool_size = {pool_size}\nping_interval_ms = 300\n"
            f"[postgres]\nconninfo = {pg.conninfo()}\npool_size = {pool_size}\n")
