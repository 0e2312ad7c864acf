"""max_pending: the Redis and PostgreSQL pools refuse new work while that many
commands or queries wait for their replies, and the client hears it by name:
503 {"error":"backend_busy"} with Retry-After (daemon/backend/pool.c).

The pending lists are filled deterministically: Redis replies are held in a
proxy (redis_proxy.py) until the test releases them, PostgreSQL queries wait
behind a table lock the test holds. The evidence that a refused request
never reached its backend comes from the servers' own counters (INFO
commandstats, pg_stat_statements) once everything has been released."""

import subprocess
import threading

import pytest

from harness import get, request, wait_until
from redis_proxy import RedisProxy
from test_resource import BY_IDS, BY_IDS_LIKE

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class GatedProxy(RedisProxy):
    """Holds the first reply matching `pred`, and with it every later reply
    on that connection, until release()."""

    def __init__(self, redis_port):
        super().__init__(redis_port)
        self.gate = threading.Event()

    def hold_until_release(self, pred):
        self.hold_reply(pred, 1)

    def release(self):
        self.gate.set()

    def _match(self, rules, args, kind):
        if super()._match(rules, args, kind):
            self.gate.wait(60)
        return 0


def assert_busy(resp):
    assert resp.status == 503, resp
    assert resp.json() == {"error": "backend_busy"}
    assert resp.headers.get("retry-after") == "1"


def conf(pg, postgres="", redis=""):
    """One resource on one-connection pools that never ping (a ping would
    be one more command pending); `redis` adds a [redis] section and a stream."""
    text = f"""
[resource sessions]
path = /v1/sessions
key = session:{{id}}
by_ids = {BY_IDS}
[postgres]
conninfo = {pg.conninfo()}
ping_interval_ms = 3600000
pool_size = 1
{postgres}
"""
    if redis:
        text += f"""
[redis]
pool_size = 1
ping_interval_ms = 3600000
{redis}
[stream session-events]
path = /v1/sessions/{{id}}/events
key = events:session:{{id}}
"""
    return text


def start_reader(port, path, results):
    t = threading.Thread(target=lambda: results.append(get(port, path)))
    t.start()
    return t


@pytest.fixture
def redis_busy(start_batchd, redis, pg):
    proxy = GatedProxy(redis.port)
    redis_conf = f"url = redis://127.0.0.1:{proxy.port}/0\ncommand_timeout_ms = 60000\nmax_pending = 3\n"
    b = start_batchd(batchd=f"admin_token = {TOKEN}\n", extra=conf(pg, redis=redis_conf))
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_redis_pubsub_up") == 1
               and b.metric("batchd_pg_up") == 1, what="backends")
    yield b, proxy
    proxy.release()
    proxy.close()


def test_redis_max_pending_answers_backend_busy_and_recovers(redis_busy, redis, pg):
    b, proxy = redis_busy
    r = redis.client()
    for i in (1, 2, 3):  # cached, so these reads never touch PostgreSQL
        r.set(f"session:s{i}", f'{{"id":"s{i}"}}')
    redis.client().config_resetstat()
    proxy.hold_until_release(lambda a: a[0].upper() == b"MGET" and b"session:s1" in a[1:])
    held = []
    threads = []
    for i in (1, 2, 3):
        threads.append(start_reader(b.port, f"/v1/sessions/s{i}", held))
        wait_until(lambda: b.metric("batchd_redis_pending_replies") == i, what=f"{i} MGETs pending")

    # Three replies awaited, max_pending = 3: reads and publishes are refused.
    assert_busy(get(b.port, "/v1/sessions/s4"))
    assert_busy(get(b.port, "/v1/sessions?ids=s4,s5"))
    assert_busy(request(b.port, "POST", "/v1/sessions/s4/events", AUTH, "hello"))
    assert b.metric("batchd_backend_rejected_total", backend="redis", reason="busy") == 3
    assert b.metric("batchd_resource_errors_total", resource="sessions", kind="backend_busy") == 3
    assert not held, "a held read was answered before its reply"

    proxy.release()
    for t in threads:
        t.join(10)
    assert sorted(x.status for x in held) == [200, 200, 200]
    wait_until(lambda: b.metric("batchd_redis_pending_replies") == 0, what="the queue to drain")

    # Everything works again: a miss loads and caches, a publish stores.
    assert get(b.port, "/v1/sessions/s4").status == 200
    assert request(b.port, "POST", "/v1/sessions/s4/events", AUTH, "hello").status == 201
    wait_until(lambda: r.exists("session:s4") == 1, what="the write-back of s4")
    assert b.metric("batchd_backend_rejected_total", backend="redis", reason="busy") == 3

    # Redis's own counters: the refused MGETs and the refused publish never ran.
    stats = redis.commandstats()
    assert stats.get("mget") == 4  # s1, s2, s3 held, then s4
    assert stats.get("xadd") == 1
    assert r.xlen("events:session:s4") == 1
    assert pg.calls(BY_IDS_LIKE) == 1  # s4 only: a refused read is not sent to PostgreSQL instead
    log = b.log()
    assert log.count('msg="redis busy"') == 1
    assert 'msg="redis no longer busy"' in log


class TableLock:
    """A psql session holding ACCESS EXCLUSIVE on a table until release()."""

    def __init__(self, pg, table):
        self.pg = pg
        self.proc = subprocess.Popen(
            ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "app", "-d", "app", "-qAtX"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdin.write(f"BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n")
        self.proc.stdin.flush()
        wait_until(lambda: pg.psql(f"SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass "
                                   "AND mode = 'AccessExclusiveLock' AND granted") == "1",
                   what="the table lock")

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("COMMIT;\n")
            self.proc.stdin.close()
            self.proc.wait(10)


def test_postgres_max_pending_answers_backend_busy_and_recovers(start_batchd, pg):
    b = start_batchd(extra=conf(pg, postgres="query_timeout_ms = 60000\nmax_pending = 2\n"))
    wait_until(lambda: b.metric("batchd_pg_up") == 1, what="postgres")
    lock = TableLock(pg, "sessions")
    try:
        pg.reset_stats()
        held = []
        threads = []
        for i in (1, 2):
            threads.append(start_reader(b.port, f"/v1/sessions/s{i}", held))
            wait_until(lambda: b.metric("batchd_pg_pending_queries") == i, what=f"{i} queries pending")

        assert_busy(get(b.port, "/v1/sessions/s3"))
        assert_busy(get(b.port, "/v1/sessions?ids=s3,s4"))
        assert b.metric("batchd_backend_rejected_total", backend="postgres", reason="busy") == 2
        assert b.metric("batchd_resource_errors_total", resource="sessions", kind="backend_busy") == 3
        assert not held
    finally:
        lock.release()
    for t in threads:
        t.join(10)
    assert sorted(x.status for x in held) == [200, 200]
    wait_until(lambda: b.metric("batchd_pg_pending_queries") == 0, what="the queue to drain")
    assert get(b.port, "/v1/sessions/s3").status == 200
    # PostgreSQL's own count: s1, s2 (held), then s3; the refused ones never ran.
    assert pg.calls(BY_IDS_LIKE) == 3
    assert b.metric("batchd_backend_rejected_total", backend="postgres", reason="busy") == 2
    assert b.log().count('msg="postgres busy"') == 1
