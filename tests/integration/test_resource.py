"""Entity reads (daemon/cache/resource.c, redis_pool.c, pg_pool.c) against a real
redis-server and PostgreSQL. The evidence comes from the servers' own
counters: Redis INFO commandstats and pg_stat_statements."""

import asyncio
import json
import signal
import threading
import time

import pytest

from harness import ROOT, Http, RedisServer, fetch_many_at_once, get, read_answer, request, send_get, wait_until

BY_IDS = ("SELECT s.id, json_build_object('id', s.id, 'title', s.title, 'message_count', "
          "(SELECT count(*) FROM messages m WHERE m.session_id = s.id))::text "
          "FROM sessions s WHERE s.id = ANY($1::text[])")
BY_IDS_LIKE = "%FROM sessions s WHERE s.id = ANY($1::text[])%"


def resource_conf(redis_port, pg, resource="", redis="", postgres="", by_ids=BY_IDS, negative_ttl=30,
                  pg_pool_size=2):
    return f"""
[redis]
url = redis://127.0.0.1:{redis_port}/0
pool_size = 2
connect_timeout_ms = 500
command_timeout_ms = 1000
ping_interval_ms = 500
{redis}
[postgres]
conninfo = {pg.conninfo()}
pool_size = {pg_pool_size}
connect_timeout_ms = 1000
ping_interval_ms = 500
{postgres}
[resource sessions]
path = /v1/sessions
key = session:{{id}}
ttl = 300
negative_ttl = {negative_ttl}
max_ids = 100
by_ids = {by_ids}
{resource}
"""


@pytest.fixture
def app(start_batchd, redis, pg):
    def _start(batchd="admin_token = secret\n", **kw):
        b = start_batchd(batchd=batchd, extra=resource_conf(redis.port, pg, **kw))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1,
                   what="Redis and PostgreSQL connections")
        return b
    return _start


def expected(i):
    return {"id": f"s{i}", "title": f"Conversation {i}"}


def check_doc(doc, i):
    assert doc["id"] == f"s{i}" and doc["title"] == f"Conversation {i}", doc


async def fetch_many(port, paths):
    conns = await asyncio.gather(*[send_get(port, p) for p in paths])
    return await asyncio.gather(*[read_answer(r, w) for r, w in conns])


def test_single_read_miss_then_hit(app, redis, pg):
    b = app()
    r = get(b.port, "/v1/sessions/s7")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    check_doc(r.json(), 7)
    assert r.headers["x-cache"] == "miss"
    assert "cache;dur=" in r.headers["server-timing"] and "db;dur=" in r.headers["server-timing"]
    # (A read before the write-back lands joins the loaded entry: still "miss".)
    wait_until(lambda: redis.client().exists("session:s7"), what="write-back")
    r2 = get(b.port, "/v1/sessions/s7")
    assert r2.headers["x-cache"] == "hit" and "db;dur" not in r2.headers["server-timing"]
    assert r2.body == r.body
    assert json.loads(redis.client().get("session:s7")) == r.json()
    assert 0 < redis.client().ttl("session:s7") <= 300
    assert pg.calls(BY_IDS_LIKE) == 1


def test_400_concurrent_cached_reads_coalesce(app, redis, pg):
    b = app()
    ids = list(range(1, 401))
    # Warm the cache (through batchd, so the documents are its own).
    for k in range(0, 400, 100):
        q = ",".join(f"s{i}" for i in ids[k:k + 100])
        assert get(b.port, f"/v1/sessions?ids={q}").status == 200
    redis.client().config_resetstat()
    results = asyncio.run(fetch_many_at_once(b.port, [f"/v1/sessions/s{i}" for i in ids], b.proc.pid))
    for i, (status, body) in zip(ids, results):
        assert status == 200
        check_doc(json.loads(body), i)
    stats = redis.commandstats()
    assert stats.get("get", 0) == 0
    # 400 reads that arrived together: accepted in one loop iteration, read in
    # the next, so one MGET (max_batch_keys is 1000); a little room for the
    # kernel handing the connections over in more than one wakeup.
    assert 1 <= stats.get("mget", 0) <= 4, stats
    assert b.metric("batchd_cache_results_total", resource="sessions", result="hit") >= 400


def test_cold_batch_is_one_query_and_fills_cache(app, redis, pg):
    b = app()
    ids = [f"s{i}" for i in range(501, 551)]
    r = get(b.port, "/v1/sessions?ids=" + ",".join(ids))
    assert r.status == 200
    docs = r.json()
    assert [d["id"] for d in docs] == ids
    assert pg.calls(BY_IDS_LIKE) == 1
    c = redis.client()
    for i in ids:
        assert c.get(f"session:{i}") is not None
        assert 0 < c.ttl(f"session:{i}") <= 300
    assert redis.commandstats().get("mget") == 1


def test_order_nulls_duplicates(app):
    b = app()
    r = get(b.port, "/v1/sessions?ids=s3,nope,s1,s3,zzz")
    assert r.status == 200
    d = r.json()
    assert len(d) == 5 and d[1] is None and d[4] is None
    check_doc(d[0], 3)
    check_doc(d[2], 1)
    assert d[3] == d[0]
    # Repeated ids= keys add up, in order; percent-encoding is decoded.
    r = get(b.port, "/v1/sessions?ids=s1&ids=s2%2Cs3")
    assert [x["id"] for x in r.json()] == ["s1", "s2", "s3"]


def test_post_batch(app):
    b = app()
    r = request(b.port, "POST", "/v1/sessions/_batch", {"Content-Type": "application/json"},
                json.dumps({"ids": ["s2", "missing", "s2"]}))
    assert r.status == 200
    d = r.json()
    check_doc(d[0], 2)
    assert d[1] is None and d[2] == d[0]


@pytest.mark.parametrize("path, body, code", [
    ("/v1/sessions/bad%20id", None, "invalid_id"),
    ("/v1/sessions/s%zz", None, "invalid_id"),
    ("/v1/sessions/s%3", None, "invalid_id"),
    ("/v1/sessions/" + "a" * 129, None, "invalid_id"),
    ("/v1/sessions?ids=s1,,s2", None, "invalid_id"),
    ("/v1/sessions?ids=", None, "invalid_id"),
    ("/v1/sessions?ids=s1,s%2F2", None, "invalid_id"),
    ("/v1/sessions?ids=" + ",".join(f"s{i}" for i in range(101)), None, "too_many_ids"),
    ("/v1/sessions", None, "missing_ids"),
    ("/v1/sessions/_batch", "not json", "bad_json"),
    ("/v1/sessions/_batch", '{"ids": "s1"}', "missing_ids"),
    ("/v1/sessions/_batch", '{"ids": [1, 2]}', "invalid_id"),
    ("/v1/sessions/_batch", '{"ids": []}', "missing_ids"),
    ("/v1/sessions/_batch", json.dumps({"ids": [f"s{i}" for i in range(101)]}), "too_many_ids"),
])
def test_bad_ids_400(app, path, body, code):
    b = app()
    r = request(b.port, "POST" if body is not None else "GET", path, body=body)
    assert (r.status, r.json()) == (400, {"error": code})


def test_bad_cached_json_heals(app, redis, pg):
    b = app()
    redis.client().set("session:s9", "{not json")
    r = get(b.port, "/v1/sessions/s9")
    assert r.status == 200 and r.headers["x-cache"] == "miss"
    check_doc(r.json(), 9)
    wait_until(lambda: redis.client().get("session:s9") != b"{not json", what="the bad value overwritten")
    assert json.loads(redis.client().get("session:s9"))["id"] == "s9"
    assert b.metric("batchd_resource_errors_total", kind="invalid_cached") == 1


def test_negative_cache(app, redis, pg):
    b = app()
    r = get(b.port, "/v1/sessions/ghost")
    assert (r.status, r.json()) == (404, {"error": "not_found"})
    wait_until(lambda: redis.client().exists("session:ghost"), what="negative write-back")
    assert 0 < redis.client().ttl("session:ghost") <= 30
    for _ in range(5):
        r = get(b.port, "/v1/sessions/ghost")
        assert (r.status, r.headers["x-cache"]) == (404, "hit")
    assert pg.calls(BY_IDS_LIKE) == 1
    assert b.metric("batchd_cache_results_total", result="absent") == 5


def test_negative_ttl_zero_disables(app, redis, pg):
    b = app(negative_ttl=0)
    for _ in range(3):
        assert get(b.port, "/v1/sessions/ghost2").status == 404
    assert not redis.client().exists("session:ghost2")
    assert pg.calls(BY_IDS_LIKE) == 3


def test_single_flight_100_concurrent_same_cold_id(app, redis, pg):
    b = app(by_ids=BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.2) WHERE"))
    results = asyncio.run(fetch_many_at_once(b.port, ["/v1/sessions/s42"] * 100, b.proc.pid))
    assert all(s == 200 for s, _ in results)
    assert len({body for _, body in results}) == 1
    assert pg.calls("%pg_sleep(%") == 1
    assert b.metric("batchd_singleflight_joins_total") >= 99


def test_ids_in_flight_gauge(app, redis, pg):
    """The gauge of ids being loaded counts distinct ids, shared by every
    reader, and falls back to 0 when the loads are done."""
    b = app(by_ids=BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.5) WHERE"))
    ids = ",".join(f"s{i}" for i in range(1, 21))
    t = threading.Thread(target=lambda: asyncio.run(fetch_many(b.port, [f"/v1/sessions?ids={ids}"] * 10)))
    t.start()
    wait_until(lambda: b.metric("batchd_batch_ids_in_flight", resource="sessions") == 20, timeout=5,
               what="20 distinct ids loading")
    t.join(10)
    wait_until(lambda: b.metric("batchd_batch_ids_in_flight", resource="sessions") == 0
               and b.metric("batchd_cache_writebacks_in_flight", resource="sessions") == 0, what="loads done")
    assert pg.calls("%pg_sleep(%") == 1


def test_max_batch_keys_splits(app, redis, pg):
    b = app(resource="max_batch_keys = 10\n")
    ids = [f"s{i}" for i in range(601, 626)]
    r = get(b.port, "/v1/sessions?ids=" + ",".join(ids))
    assert [d["id"] for d in r.json()] == ids
    assert redis.commandstats()["mget"] == 3
    assert pg.calls(BY_IDS_LIKE) == 3


def test_purge(app, redis):
    b = app()
    get(b.port, "/v1/sessions/s5")
    wait_until(lambda: redis.client().exists("session:s5"), what="write-back")
    assert request(b.port, "PURGE", "/v1/sessions/s5").status == 401
    assert request(b.port, "PURGE", "/v1/sessions/s5", {"Authorization": "Bearer wrong"}).status == 401
    r = request(b.port, "PURGE", "/v1/sessions/s5", {"Authorization": "Bearer secret"})
    assert (r.status, r.json()) == (200, {"purged": "s5"})
    assert not redis.client().exists("session:s5")
    assert b.metric("batchd_auth_denied_total") == 2


def test_escaped_ids_are_decoded(app, redis, pg):
    b = app()
    r = get(b.port, "/v1/sessions/s%37")
    assert r.status == 200
    check_doc(r.json(), 7)
    wait_until(lambda: redis.client().exists("session:s7"), what="write-back")
    r = request(b.port, "PURGE", "/v1/sessions/s%37", {"Authorization": "Bearer secret"})
    assert (r.status, r.json()) == (200, {"purged": "s7"})
    assert not redis.client().exists("session:s7")


def test_purge_without_token_configured_is_403(app):
    b = app(batchd="")
    r = request(b.port, "PURGE", "/v1/sessions/s5", {"Authorization": "Bearer x"})
    assert (r.status, r.json()) == (403, {"error": "admin_token_not_configured"})


def test_async_handlers_fill_the_pipeline(app):
    b = app(batchd="admin_token = x\nmax_pipeline = 4\n")
    with Http(b.port) as c:
        n = 40
        c.send("".join(f"GET /v1/sessions/s{i + 1} HTTP/1.1\r\nHost: t\r\n\r\n" for i in range(n)))
        for i in range(n):
            r = c.read_response()
            check_doc(r.json(), i + 1)
    assert b.metric("batchd_client_read_pauses_total", reason="pipeline") >= 1


def test_slow_query_is_logged(app):
    b = app(batchd="admin_token = x\nslow_ms = 50\n",
            by_ids=BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.1) WHERE"))
    assert get(b.port, "/v1/sessions?ids=s1,s2,s3").status == 200
    wait_until(lambda: "slow postgres query" in b.log(), what="slow log line")
    line = [ln for ln in b.log().splitlines() if "slow postgres query" in ln][0]
    assert "batch=3" in line and "statement=\"SELECT s.id" in line and "duration_ms=" in line


def test_redis_killed_reads_fall_back_then_recover(start_batchd, tmp_path, pg):
    own = RedisServer(tmp_path / "r").start()
    try:
        b = start_batchd(extra=resource_conf(own.port, pg))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="ready")
        assert get(b.port, "/v1/sessions/s11").status == 200
        own.kill()
        for i in range(3):
            r = get(b.port, "/v1/sessions/s11")
            assert r.status == 200 and r.headers["x-cache"] == "miss"
            check_doc(r.json(), 11)
        assert get(b.admin_port, "/readyz").status == 200  # PostgreSQL still answers
        wait_until(lambda: b.metric("batchd_redis_up") == 0, what="redis_up to drop")
        assert "redis down" in b.log()
        own.start()
        t0 = time.monotonic()
        wait_until(lambda: get(b.port, "/v1/sessions/s11").headers["x-cache"] == "hit", timeout=10,
                   what="reads to be cached again")
        assert time.monotonic() - t0 < 2.5, "cache did not come back within 2 s"
        assert b.metric("batchd_cache_degraded_total") >= 1
        assert b.log().count("redis down") == 1
    finally:
        own.stop()


def test_postgres_stopped_hits_served_misses_503(app, pg):
    b = app()
    assert get(b.port, "/v1/sessions/s21").status == 200  # now cached
    pg.stop("fast")
    try:
        assert get(b.port, "/v1/sessions/s21").status == 200
        r = get(b.port, "/v1/sessions/s22")
        assert (r.status, r.json()) == (503, {"error": "db_unavailable"})
        assert r.headers["retry-after"] == "1"
        wait_until(lambda: b.metric("batchd_pg_up") == 0, what="pg_up to drop")
        assert get(b.admin_port, "/readyz").status == 200  # hits can still be served
    finally:
        pg.start()
    t0 = time.monotonic()
    wait_until(lambda: get(b.port, "/v1/sessions/s22").status == 200, timeout=10, what="postgres recovery")
    assert time.monotonic() - t0 < 2.5, "PostgreSQL reads did not recover within 2 s"


def test_readyz_503_when_nothing_can_answer(start_batchd, tmp_path, pg_server):
    own = RedisServer(tmp_path / "r").start()
    b = start_batchd(extra=resource_conf(own.port, pg_server).replace(
        pg_server.conninfo(), "host=127.0.0.1 port=1 dbname=app user=app"))
    own.kill()
    r = wait_until(lambda: (lambda x: x if x.status == 503 else None)(get(b.admin_port, "/readyz")),
                   what="readyz 503")
    assert r.json()["reason"] == "no_backend"


def test_query_retried_on_another_connection(app, pg):
    b = app(by_ids=BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(1) WHERE"))
    wait_until(lambda: b.metric("batchd_pg_pool_connections", state="ready") == 2, what="both connections")
    with Http(b.port) as c:
        c.send("GET /v1/sessions/s31 HTTP/1.1\r\nHost: t\r\n\r\n")
        # Kill the backend running the query while it sleeps.
        running = ("FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1)%' "
                   "AND state = 'active' AND pid <> pg_backend_pid()")
        wait_until(lambda: pg.psql("SELECT count(*) " + running) == "1", what="the query to be running")
        assert pg.psql("SELECT count(pg_terminate_backend(pid)) " + running) == "1"
        r = c.read_response()
    assert r.status == 200
    check_doc(r.json(), 31)
    assert b.metric("batchd_pg_retries_total") == 1


def test_failed_prepare_is_retried_once_the_table_exists(app, pg):
    """batchd starts before the migration that creates by_ids' table: the
    PREPARE fails on the connection, and it is sent again when the table
    exists instead of every read failing on that connection for good."""
    pg.psql("DROP TABLE IF EXISTS late_sessions")
    b = app(pg_pool_size=1, by_ids="SELECT id, json_build_object('id', id, 'title', title)::text "
                                   "FROM late_sessions WHERE id = ANY($1::text[])")
    wait_until(lambda: "cannot prepare statement" in b.log(), what="the PREPARE at connect to fail")
    for _ in range(2):  # the PREPARE sent before this read fails again: still an answer
        r = get(b.port, "/v1/sessions/l1")
        assert (r.status, r.json()) == (500, {"error": "query_failed"})
    pg.psql("CREATE TABLE late_sessions (id text PRIMARY KEY, title text NOT NULL)")
    pg.psql("INSERT INTO late_sessions VALUES ('l1', 'Late 1')")
    r = get(b.port, "/v1/sessions/l1")
    assert (r.status, r.json()) == (200, {"id": "l1", "title": "Late 1"})
    # Same connection throughout, and the failed reads were not retried.
    assert b.metric("batchd_pg_connects_total") == 1
    assert b.metric("batchd_pg_retries_total") == 0
    assert b.metric("batchd_pg_errors_total", kind="query") == 2
    pg.psql("DROP TABLE late_sessions")


def test_redis_reply_timeout_breaks_connection(app, redis):
    b = app()
    assert get(b.port, "/v1/sessions/s12").status == 200
    wait_until(lambda: redis.client().exists("session:s12"), what="write-back")
    # CLIENT PAUSE stalls every client past command_timeout_ms (1000).
    redis.client().execute_command("CLIENT", "PAUSE", "1500", "ALL")
    r = get(b.port, "/v1/sessions/s12")
    assert r.status == 200 and r.headers["x-cache"] == "miss"  # answered from PostgreSQL
    assert b.metric("batchd_redis_errors_total", kind="timeout") >= 1
    wait_until(lambda: get(b.port, "/v1/sessions/s12").headers.get("x-cache") == "hit", what="cache back")


def test_demo_config_by_ids(start_batchd, redis, pg):
    """The demo's by_ids (conf/batchd.ini) counts messages and finds the last one."""
    text = (ROOT / "conf" / "batchd.ini").read_text()
    by_ids = [ln for ln in text.splitlines() if ln.startswith("by_ids = ")][0][len("by_ids = "):]
    b = start_batchd(extra=resource_conf(redis.port, pg, by_ids=by_ids))
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="ready")
    d = get(b.port, "/v1/sessions/s5").json()
    n = int(pg.psql("SELECT count(*) FROM messages WHERE session_id = 's5'"))
    assert d["id"] == "s5" and d["message_count"] == n
    last = pg.psql("SELECT to_json(max(created_at))::text FROM messages WHERE session_id = 's5'")
    assert json.dumps(d["last_message_at"]) == last


def test_shutdown_with_reads_in_flight(app):
    b = app(by_ids=BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.3) WHERE"))
    with Http(b.port) as c:
        c.send("GET /v1/sessions/s77 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: b.metric("batchd_pg_queries_total") == 1, what="query sent")
        b.send_signal(signal.SIGTERM)
        r = c.read_response()
        assert r.status == 200 and r.headers["connection"] == "close"
    assert b.wait(15) == 0
