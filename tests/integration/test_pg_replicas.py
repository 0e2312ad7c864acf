"""PostgreSQL read replicas ([postgres] replicas, daemon/backend/pg_replicas.c)
against a real primary and a real streaming replica made with
pg_basebackup -R -X stream. Where each read ran is counted by
pg_stat_statements on each server; a replica is made to lag
deterministically with pg_wal_replay_pause() (it keeps receiving WAL and
stops applying it)."""

import signal
import subprocess
import time

import jwt
import pytest

from harness import BATCHD, PgServer, get, request, wait_until

BY_IDS = ("SELECT s.id, json_build_object('id', s.id, 'title', s.title, 'user_id', s.user_id)::text "
          "FROM sessions s WHERE s.id = ANY($1::text[])")
BY_IDS_LIKE = "%FROM sessions s WHERE s.id = ANY($1::text[])%"
PAGE_QUERY = ("SELECT id, id FROM sessions WHERE user_id = $1::bigint AND ($2::text IS NULL OR id < $2) "
              "ORDER BY id DESC LIMIT $3")
PAGE_LIKE = "%FROM sessions WHERE user_id = $1::bigint%"
SECRET = "replica-test-secret-0123456789abcdef"
PING_MS = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    primary = PgServer(tmp_path_factory.mktemp("pgprimary")).init().start().setup_app(demo_sessions=300)
    replica = primary.make_replica(tmp_path_factory.mktemp("pgreplica")).start()
    wait_until(lambda: replica_running(replica), what="the replica")
    yield primary, replica
    for s in (replica, primary):
        try:
            s.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # stopped by a test


@pytest.fixture
def servers(cluster):
    primary, replica = cluster
    if not replica_running(replica):
        replica.start()
    replica.replay_pause(False)
    sync(primary, replica)
    for s in (primary, replica):
        s.reset_stats()
    return primary, replica


def sync(primary, replica):
    """A transaction on the primary, waited for on the replica: its replay
    timestamp is then recent (a standby that has replayed none since it
    started has no replay timestamp, and batchd counts its lag unknown)."""
    mark = str(time.monotonic_ns())
    primary.psql(f"CREATE TABLE IF NOT EXISTS marks (v text); INSERT INTO marks VALUES ('{mark}')")
    wait_until(lambda: replica.psql(f"SELECT count(*) FROM pg_tables WHERE tablename = 'marks'") == "1"
               and replica.psql(f"SELECT count(*) FROM marks WHERE v = '{mark}'") == "1",
               what="the replica to replay a transaction")


def replica_running(replica):
    try:
        replica.psql("SELECT 1", user="postgres")
        return True
    except subprocess.CalledProcessError:
        return False


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "jwt.secret"
    p.write_text(SECRET + "\n")
    return p


def conf(redis_port, primary, replica, secret, max_lag_ms=1000, postgres=""):
    return f"""
[redis]
url = redis://127.0.0.1:{redis_port}/0
pool_size = 2
ping_interval_ms = 300
[postgres]
conninfo = {primary.conninfo()}
replicas = {replica.conninfo()}
pool_size = 2
connect_timeout_ms = 500
ping_interval_ms = {PING_MS}
max_replica_lag_ms = {max_lag_ms}
{postgres}
[auth]
jwt_secret_file = {secret}
[resource sessions]
path = /v1/sessions
key = session:{{id}}
ttl = 300
by_ids = {BY_IDS}
[list by-user]
path = /v1/me/sessions
resource = sessions
page_query = {PAGE_QUERY}
ttl = 30
"""


@pytest.fixture
def start(start_batchd, redis, servers, secret_file):
    primary, replica = servers

    def _start(**kw):
        b = start_batchd(batchd="admin_token = secret\n", extra=conf(redis.port, primary, replica, secret_file, **kw))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1
                   and b.metric("batchd_pg_replica_eligible", replica="0") == 1, what="primary and replica in use")
        return b
    return _start


def read(b, ids):
    r = get(b.port, "/v1/sessions?ids=" + ",".join(ids))
    assert r.status == 200, r
    return r.json()


def purge(b, i):
    r = request(b.port, "PURGE", f"/v1/sessions/{i}", {"Authorization": "Bearer secret"})
    assert r.status == 200, r


def title_on(server, i):
    return server.psql(f"SELECT title FROM sessions WHERE id = '{i}'", user="postgres")


def test_reads_and_pages_go_to_the_replica(start, servers):
    primary, replica = servers
    b = start()
    docs = read(b, [f"s{i}" for i in range(1, 21)])
    assert [d["id"] for d in docs] == [f"s{i}" for i in range(1, 21)]
    assert replica.calls(BY_IDS_LIKE) == 1
    assert primary.calls(BY_IDS_LIKE) == 0
    who = primary.psql("SELECT user_id FROM sessions WHERE id = 's1'")
    tok = jwt.encode({"sub": who, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    r = get(b.port, "/v1/me/sessions?limit=5", {"Authorization": f"Bearer {tok}"})
    assert r.status == 200, r
    items = r.json()["items"]
    assert items and all(d["user_id"] == int(who) for d in items)
    assert replica.calls(PAGE_LIKE) == 1
    assert primary.calls(PAGE_LIKE) == 0
    assert b.metric("batchd_pg_reads_total", target="replica") >= 2
    assert b.metric("batchd_pg_reads_total", target="primary") == 0
    assert 0 <= b.metric("batchd_pg_replica_lag_seconds", replica="0") < 1


def test_write_is_read_back_fresh_while_the_replica_lags(start, servers):
    """Replay paused: the replica keeps its old row, but the bound is high
    enough that it stays eligible. The id invalidated through batchd reads the
    primary; an id nobody wrote still reads the replica."""
    primary, replica = servers
    b = start(max_lag_ms=600000)
    assert read(b, ["s7"])[0]["title"] == "Conversation 7"  # cached from the replica
    replica.replay_pause(True)
    try:
        primary.psql("UPDATE sessions SET title = 'edited 7' WHERE id = 's7'")
        wait_until(replica.holds_unreplayed_wal, what="the update received, not applied")
        assert title_on(replica, "s7") == "Conversation 7"
        wait_until(lambda: b.metric("batchd_pg_replica_lag_seconds", replica="0") > 0, what="the lag to show")
        assert b.metric("batchd_pg_replica_eligible", replica="0") == 1
        purge(b, "s7")
        replica.reset_stats()
        primary.reset_stats()
        assert read(b, ["s7"])[0]["title"] == "edited 7"
        assert primary.calls(BY_IDS_LIKE) == 1 and replica.calls(BY_IDS_LIKE) == 0
        assert b.metric("batchd_pg_primary_reads_total", reason="recent_write") == 1
        # Only the batch naming the written id: another still reads the replica.
        assert read(b, ["s8"])[0]["title"] == "Conversation 8"
        assert replica.calls(BY_IDS_LIKE) == 1
    finally:
        replica.replay_pause(False)


def test_replica_too_far_behind_gets_no_reads(start, servers):
    primary, replica = servers
    b = start(max_lag_ms=300)
    replica.replay_pause(True)
    try:
        primary.psql("UPDATE sessions SET title = title WHERE id = 's9'")
        wait_until(lambda: b.metric("batchd_pg_replica_eligible", replica="0") == 0, what="the replica set aside")
        assert b.metric("batchd_pg_replica_lag_seconds", replica="0") >= 0.3
        assert read(b, ["s10", "s11"])[0]["id"] == "s10"
        assert primary.calls(BY_IDS_LIKE) == 1 and replica.calls(BY_IDS_LIKE) == 0
        assert b.metric("batchd_pg_primary_reads_total", reason="no_replica") == 1
        assert "too_far_behind" in b.log()
    finally:
        replica.replay_pause(False)
    wait_until(lambda: b.metric("batchd_pg_replica_eligible", replica="0") == 1, what="the replica back")
    read(b, ["s12"])
    assert replica.calls(BY_IDS_LIKE) == 1


def test_stopped_replica_sends_reads_to_the_primary(start, servers):
    primary, replica = servers
    b = start()
    read(b, ["s20"])
    assert replica.calls(BY_IDS_LIKE) == 1
    t0 = time.monotonic()
    replica.stop()
    wait_until(lambda: b.metric("batchd_pg_replica_eligible", replica="0") == 0, what="the replica to go")
    detected = time.monotonic() - t0
    for i in range(21, 31):
        assert read(b, [f"s{i}"])[0]["id"] == f"s{i}"
    assert primary.calls(BY_IDS_LIKE) == 10
    assert b.metric("batchd_pg_replica_up", replica="0") == 0
    assert "postgres replica down" in b.log()
    replica.start()
    wait_until(lambda: b.metric("batchd_pg_replica_eligible", replica="0") == 1, timeout=20, what="the replica back")
    replica.reset_stats()
    read(b, ["s31"])
    assert replica.calls(BY_IDS_LIKE) == 1
    print(f"stopped replica set aside after {detected * 1000:.0f} ms")


def test_replica_dying_under_a_read_falls_back(start, servers):
    """Reads on their way to a replica whose connections die are sent to
    the primary, never answered 5xx: the replica is killed while batchd is
    frozen with reads queued for it."""
    primary, replica = servers
    b = start()
    read(b, ["s40"])
    b.send_signal(signal.SIGSTOP)  # SIGSTOP: reads pile up in the socket
    try:
        replica.stop("immediate")
    finally:
        b.send_signal(signal.SIGCONT)
    results = [get(b.port, f"/v1/sessions/s{i}").status for i in range(41, 46)]
    assert results == [200] * 5
    assert primary.calls(BY_IDS_LIKE) >= 1


def test_config_checks(tmp_path):
    binary = BATCHD
    cases = {
        "replicas = host=a;;host=b": "an empty conninfo",
        "replicas = host=a password='x": "never closed",
        "replicas = host=a; port=1 password=hunter2 nosuchkey=1": "nosuchkey",
        "max_replica_lag_ms = 5": "between 10",
    }
    for line, want in cases.items():
        p = tmp_path / "c.ini"
        p.write_text(f"[batchd]\n[postgres]\nconninfo = dbname=x\n{line}\n")
        r = subprocess.run([binary, "-t", "-c", str(p)], capture_output=True, text=True)
        assert r.returncode == 2, (line, r.stderr)
        assert want in r.stderr, (line, r.stderr)
        assert "hunter2" not in r.stderr
    p.write_text("[batchd]\n[postgres]\nconninfo = dbname=x\nreplicas = host=a port=5433; postgresql://u@b:5434/app\n")
    assert subprocess.run([binary, "-t", "-c", str(p)], capture_output=True).returncode == 0
