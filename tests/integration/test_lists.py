"""Owner-scoped pages ([list NAME], daemon/cache/list.c, list_cache.c) against
a real redis-server, PostgreSQL and app server. The evidence comes from the
servers' own counters: pg_stat_statements for page queries and by_ids,
INFO commandstats for HGET and MGET.

The data: 1,000 sessions of alice interleaved with 1,000 of bob (lst1..lst2000,
odd ones alice's, one second apart, ending an hour before the tests, so that
a session the app creates is the newest), every fifth of each 'archived'."""

import asyncio
import base64
import json
import signal
import threading
import time

import jwt
import pytest

from harness import backends_conf, Http, fetch_many_at_once, get, request, wait_until
from test_proxy import App, upstream_conf

SECRET = "list-test-secret-0123456789abcdef"
A, B = "alice", "bob"
N = 2000

BY_IDS = ("SELECT s.id, json_build_object('id', s.id, 'title', s.title, 'owner_id', s.owner_id, "
          "'status', s.status)::text FROM sessions s WHERE s.id = ANY($1::text[])")
BY_IDS_LIKE = "%FROM sessions s WHERE s.id = ANY($1::text[])%"
# Keyset pagination on (created_at, id), newest first. The cursor text is
# "<created_at UTC>|<id>"; one that does not cast is a data exception (class 22).
PAGE_QUERY = ("SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '|' || id "
              "FROM sessions WHERE owner_id = $1 AND ($2::text IS NULL OR (created_at, id) < "
              "((split_part($2, '|', 1) || 'Z')::timestamptz, split_part($2, '|', 2))) "
              "AND ($4::text IS NULL OR status = $4) ORDER BY created_at DESC, id DESC LIMIT $3")
PAGE_LIKE = "%FROM sessions WHERE owner_id = $1%"


def owner(g):
    return A if g % 2 else B


def status(g):
    return "archived" if (g + 1) // 2 % 5 == 0 else "open"


def newest_first(who, only=None):
    return [f"lst{g}" for g in range(N, 0, -1) if owner(g) == who and (only is None or status(g) == only)]


@pytest.fixture(scope="module")
def rows(pg_server):
    # conf/demo.sql's sessions have no owner (tools/lib/bench_owners.sql adds
    # one the same way): two columns and the keyset index, which the other
    # tests' queries do not read. IF NOT EXISTS: harmless when already there.
    pg_server.psql("ALTER TABLE sessions ADD COLUMN IF NOT EXISTS owner_id text; "
                   "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'open'; "
                   "CREATE INDEX IF NOT EXISTS sessions_owner_created ON sessions (owner_id, created_at DESC, id DESC)")
    pg_server.psql("DELETE FROM sessions WHERE id LIKE 'lst%'")
    pg_server.psql(
        "INSERT INTO sessions (id, user_id, title, created_at, owner_id, status) "
        f"SELECT 'lst' || g, 0, 'Item ' || g, now() - interval '3 hours' + g * interval '1 second', "
        f"CASE WHEN g % 2 = 1 THEN '{A}' ELSE '{B}' END, "
        "CASE WHEN (g + 1) / 2 % 5 = 0 THEN 'archived' ELSE 'open' END "
        f"FROM generate_series(1, {N}) AS g")
    yield
    pg_server.psql("DELETE FROM sessions WHERE id LIKE 'lst%'")


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("jwt") / "jwt.secret"
    p.write_text(SECRET + "\n")
    return p


def token(sub):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def auth(sub):
    return {"Authorization": f"Bearer {token(sub)}"}


LIST_KEYS = {"default_limit": 20, "max_limit": 100, "ttl": 30}


def list_conf(redis_port, pg, secret, upstream_port=None, page_query=PAGE_QUERY, lst=None, resource=""):
    keys = "".join(f"{k} = {v}\n" for k, v in {**LIST_KEYS, **(lst or {})}.items())
    return f"""
{backends_conf(redis_port, pg)}{upstream_conf(upstream_port) if upstream_port else ""}
[auth]
jwt_secret_file = {secret}
[resource sessions]
path = /v1/sessions
key = session:{{id}}
ttl = 300
by_ids = {BY_IDS}
access = owner
owner_field = owner_id
invalidate = /api/sessions/{{id}}
{resource}
[list my-sessions]
path = /v1/me/sessions
resource = sessions
page_query = {page_query}
params = status
invalidate = /api/sessions, /api/sessions/{{id}}
{keys}"""


@pytest.fixture
def lists(start_batchd, redis, pg, rows, secret_file):
    apps = []

    def _start(upstream=False, **kw):
        port = None
        if upstream:
            apps.append(App(conninfo=pg.conninfo()))
            port = apps[-1].port
        b = start_batchd(extra=list_conf(redis.port, pg, secret_file, port, **kw))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1,
                   what="Redis and PostgreSQL connections")
        return b
    yield _start
    for a in apps:
        a.stop()


def page(b, who, query=""):
    return get(b.port, "/v1/me/sessions" + query, auth(who))


def walk(b, who, limit, extra=""):
    """Every page of who's list: (ids in order, number of pages)."""
    ids, after, pages = [], None, 0
    while True:
        q = f"?limit={limit}{extra}" + (f"&after={after}" if after else "")
        r = page(b, who, q)
        assert r.status == 200, r
        d = r.json()
        assert len(d["items"]) <= limit
        ids += [x["id"] for x in d["items"]]
        pages += 1
        after = d["next"]
        if after is None:
            return ids, pages
        assert pages < 1000


def cursor(text, version=1):
    return base64.urlsafe_b64encode(bytes([version]) + text.encode()).rstrip(b"=").decode()


# --- walking, caching, and what each page costs ---------------------------------------


def test_walk_1000_with_limit_50_then_again_from_the_cache(lists, redis, pg):
    b = lists()
    ids, pages = walk(b, A, 50)
    assert ids == newest_first(A)  # exactly alice's, each once, in order
    assert pages == 20
    assert pg.calls(PAGE_LIKE) == 20  # one page query per uncached page
    assert pg.calls(BY_IDS_LIKE) >= 1
    assert b.metric("batchd_list_pages_total", source="db") == 20
    stats = redis.commandstats()
    # Per page: one HGET lookup, one MGET of its bodies; the store script's
    # HGET (of the tombstone) and HSET count too (commands run by scripts do).
    assert stats["hget"] == 40 and stats["hset"] == 20 and stats["mget"] == 20
    wait_until(lambda: b.metric("batchd_list_writebacks_total") == 20, what="the 20 pages cached")
    assert redis.client().hlen(f"batchd:list:my-sessions:{A}") == 20
    assert 0 < redis.client().ttl(f"batchd:list:my-sessions:{A}") <= 30
    wait_until(lambda: b.metric("batchd_cache_writebacks_in_flight") == 0, what="bodies cached")

    # Again: page ids from the cache (0 page queries), bodies by MGET (0 by_ids).
    pg.reset_stats()
    redis.client().config_resetstat()
    again, pages = walk(b, A, 50)
    assert again == ids and pages == 20
    assert pg.calls(PAGE_LIKE) == 0
    assert pg.calls(BY_IDS_LIKE) == 0
    stats = redis.commandstats()
    assert stats["hget"] == 20 and stats["mget"] == 20
    assert "evalsha" not in stats and "get" not in stats
    assert b.metric("batchd_list_pages_total", source="cache") == 20
    r = page(b, A, "?limit=50")
    assert r.headers["x-cache"] == "hit" and r.headers["cache-control"] == "private"


def test_bob_never_sees_alices_items(lists):
    b = lists()
    ids, _ = walk(b, B, 100)
    assert ids == newest_first(B)
    assert not set(ids) & set(newest_first(A))
    # Nobody's: an empty list, not an error.
    r = page(b, "carol")
    assert (r.status, r.json()) == (200, {"items": [], "next": None})


def test_page_query_ignoring_the_owner_is_caught_by_the_resource(lists):
    """Defence in depth: a page_query that forgets its WHERE owner_id = $1
    still shows only the principal's documents (the resource has
    access = owner); the others are left out and counted."""
    leaky = PAGE_QUERY.replace("owner_id = $1", "($1::text IS NOT NULL AND id LIKE 'lst%')")
    b = lists(page_query=leaky)
    d = page(b, A, "?limit=10").json()
    assert [x["id"] for x in d["items"]] == [i for i in [f"lst{g}" for g in range(N, N - 10, -1)] if owner(int(i[3:])) == A]
    assert len(d["items"]) == 5 and d["next"] is not None
    assert b.metric("batchd_list_items_dropped_total", reason="not_owner") == 5


def test_anonymous_and_bad_tokens_are_401(lists, pg):
    b = lists()
    r = get(b.port, "/v1/me/sessions")
    assert (r.status, r.json()) == (401, {"error": "unauthorized"})
    assert r.headers["www-authenticate"] == "Bearer"
    r = get(b.port, "/v1/me/sessions", {"Authorization": "Bearer not.a.token"})
    assert (r.status, r.json()) == (401, {"error": "invalid_token"})
    forged = jwt.encode({"sub": A, "exp": int(time.time()) + 60}, "another-secret-of-enough-length!", algorithm="HS256")
    assert get(b.port, "/v1/me/sessions", {"Authorization": f"Bearer {forged}"}).status == 401
    assert pg.calls(PAGE_LIKE) == 0


# --- input -----------------------------------------------------------------------------


@pytest.mark.parametrize("after", [
    "not*base64",
    "AWFiYw==",                             # padded
    cursor("2027-01-01T00:00:01.000000|lst1", version=2),
    cursor("a\nb"),                         # a control byte
    cursor("x" * 600),                      # longer than max_cursor_bytes (512)
    "AWF",                                  # non-canonical spelling
    "",
    cursor("no timestamp|lst1"),            # well-formed, but the query's cast fails: class 22
    cursor("2027-99-99T00:00:00|lst1"),
])
def test_bad_cursor_is_400(lists, after):
    b = lists()
    r = page(b, A, f"?after={after}")
    assert (r.status, r.json()) == (400, {"error": "invalid_cursor"})
    assert b.metric("batchd_list_errors_total", kind="query_failed") == 0
    assert b.metric("batchd_list_requests_total", result="invalid") == 1


def test_limits(lists):
    b = lists()
    for bad in ["0", "-1", "abc", "", "1.5", "+3", "%20"]:
        r = page(b, A, f"?limit={bad}")
        assert (r.status, r.json()) == (400, {"error": "invalid_limit"}), bad
    assert len(page(b, A).json()["items"]) == 20  # default_limit
    for big in ["101", "100000", "99999999999999999999999"]:
        d = page(b, A, f"?limit={big}").json()  # capped at max_limit, not refused
        assert [x["id"] for x in d["items"]] == newest_first(A)[:100]
    assert [x["id"] for x in page(b, A, "?limit=007").json()["items"]] == newest_first(A)[:7]


def test_params_filter(lists, pg):
    b = lists()
    ids, pages = walk(b, A, 30, "&status=archived&unknown=ignored")
    assert ids == newest_first(A, "archived") and len(ids) == 200 and pages == 7
    assert page(b, A, "?status=open&limit=3").json()["items"][0]["status"] == "open"
    for bad in ["a%20b", "", "x" * 129, "%zz"]:
        r = page(b, A, f"?status={bad}")
        assert (r.status, r.json()) == (400, {"error": "invalid_param"}), bad


# --- single flight, bounds -----------------------------------------------------------


async def pages_at_once(port, paths, headers, pid):
    """Every request is in batchd's socket buffers before it runs again."""
    return await fetch_many_at_once(port, paths, pid, headers)


def test_identical_page_queries_run_once(lists, pg):
    b = lists(page_query=PAGE_QUERY.replace("FROM sessions WHERE", "FROM sessions, pg_sleep(0.6) WHERE"),
              lst={"ttl": 0})
    seen = []
    watch = threading.Thread(target=lambda: seen.append(wait_until(
        lambda: b.metric("batchd_list_waiters", list="my-sessions") == 40, timeout=10, interval=0.01,
        what="40 requests waiting on one page") or True))
    watch.start()
    results = asyncio.run(pages_at_once(b.port, ["/v1/me/sessions?limit=25"] * 40, auth(A), b.proc.pid))
    watch.join()
    assert seen == [True]  # all 40 were counted as waiting while the query slept
    assert b.metric("batchd_list_waiters", list="my-sessions") == 0
    assert all(s == 200 for s, _ in results)
    assert len({body for _, body in results}) == 1
    assert [x["id"] for x in json.loads(results[0][1])["items"]] == newest_first(A)[:25]
    assert pg.calls("%pg_sleep(%") == 1
    assert b.metric("batchd_list_singleflight_joins_total") == 39
    # Another principal, limit or filter is another page.
    results = asyncio.run(pages_at_once(
        b.port, ["/v1/me/sessions?limit=25", "/v1/me/sessions?limit=26", "/v1/me/sessions?limit=25&status=open"],
        auth(A), b.proc.pid))
    assert all(s == 200 for s, _ in results)
    assert pg.calls("%pg_sleep(%") == 4


def test_pages_arriving_together_share_one_mget(lists, redis, pg):
    """Ten different cached pages asked for at once: ten HGETs, and their
    bodies, 55 ids, in one MGET (the resource's coalesced read), not ten."""
    b = lists()
    for n in range(1, 11):
        assert page(b, A, f"?limit={n}").status == 200
    wait_until(lambda: b.metric("batchd_list_writebacks_total") == 10
               and b.metric("batchd_cache_writebacks_in_flight") == 0, what="pages and bodies cached")
    redis.client().config_resetstat()
    pg.reset_stats()
    results = asyncio.run(pages_at_once(b.port, [f"/v1/me/sessions?limit={n}" for n in range(1, 11)],
                                        auth(A), b.proc.pid))
    for n, (status, body) in zip(range(1, 11), results):
        assert status == 200 and [x["id"] for x in json.loads(body)["items"]] == newest_first(A)[:n]
    stats = redis.commandstats()
    assert stats["hget"] == 10
    # The HGET replies come back on the pool's two connections: at most a
    # few loop iterations, so a few MGETs at most, never one per page.
    assert 1 <= stats["mget"] <= 3, stats
    assert pg.calls(PAGE_LIKE) == 0 and pg.calls(BY_IDS_LIKE) == 0


def test_max_pages_in_flight_503(lists, pg):
    b = lists(page_query=PAGE_QUERY.replace("FROM sessions WHERE", "FROM sessions, pg_sleep(0.5) WHERE"),
              lst={"ttl": 0, "max_pages_in_flight": 1})
    results = asyncio.run(pages_at_once(b.port, ["/v1/me/sessions?limit=5", "/v1/me/sessions?limit=6"],
                                        auth(A), b.proc.pid))
    assert sorted(s for s, _ in results) == [200, 503]
    assert {"error": "list_busy"} in [json.loads(body) for _, body in results]
    assert b.metric("batchd_list_busy_total") == 1


# --- writes through the proxy -------------------------------------------------------------


def newest_titles(b, who, n=3):
    return [(x["id"], x["title"]) for x in page(b, who, f"?limit={n}").json()["items"]]


def test_put_and_post_through_the_proxy_show_on_the_next_page(lists, redis, pg):
    b = lists(upstream=True)
    first = newest_first(A)[0]
    before = newest_titles(b, A)
    assert before[0] == (first, f"Item {first[3:]}")
    wait_until(lambda: redis.client().hlen(f"batchd:list:my-sessions:{A}") == 1, what="the page cached")
    assert page(b, A, "?limit=3").headers["x-cache"] == "hit"
    calls = pg.calls(PAGE_LIKE)

    r = request(b.port, "PUT", f"/api/sessions/{first}?title=Renamed", auth(A))
    assert r.status == 200
    assert newest_titles(b, A)[0] == (first, "Renamed")
    assert pg.calls(PAGE_LIKE) == calls + 1  # the page was dropped, not only the document

    r = request(b.port, "POST", "/api/sessions", {**auth(A), "Content-Type": "application/json"},
                json.dumps({"id": "lstnew", "title": "Brand new"}))
    assert r.status == 201
    after = newest_titles(b, A)
    assert after[0] == ("lstnew", "Brand new") and after[1] == (first, "Renamed")
    assert pg.calls(PAGE_LIKE) == calls + 2
    assert b.metric("batchd_list_invalidations_total") == 2
    # The resource's count is its own: the PUT's one document, not the lists' drops.
    assert b.metric("batchd_invalidations_total") == 1
    # bob's pages were not touched by alice's writes.
    assert "lstnew" not in [x["id"] for x in page(b, B, "?limit=5").json()["items"]]

    r = request(b.port, "DELETE", "/api/sessions/lstnew", auth(A))
    assert r.status == 200
    assert newest_titles(b, A)[0] == (first, "Renamed")
    pg.psql(f"UPDATE sessions SET title = 'Item {first[3:]}' WHERE id = '{first}'")


def test_write_without_a_principal_drops_nothing(lists, redis, pg):
    b = lists(upstream=True)
    page(b, A, "?limit=4")
    wait_until(lambda: redis.client().hlen(f"batchd:list:my-sessions:{A}") == 1, what="the page cached")
    first = newest_first(A)[0]
    r = request(b.port, "PUT", f"/api/sessions/{first}?title=Item%20{first[3:]}")  # anonymous: the app decides
    assert r.status == 200
    assert redis.client().hlen(f"batchd:list:my-sessions:{A}") == 1
    assert b.metric("batchd_list_invalidations_total") == 0


def write_during_page_query(c, pg, write_port, new_id):
    """Sends alice's ?limit=2 on c and, while its page query (pg_sleep(1))
    runs, creates session new_id through the proxy at write_port."""
    hdr = "".join(f"{k}: {v}\r\n" for k, v in auth(A).items())
    c.send(f"GET /v1/me/sessions?limit=2 HTTP/1.1\r\nHost: t\r\n{hdr}\r\n")
    running = ("FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1)%' "
               "AND state = 'active' AND pid <> pg_backend_pid()")
    wait_until(lambda: pg.psql("SELECT count(*) " + running) == "1", what="the page query to run")
    r = request(write_port, "POST", "/api/sessions", {**auth(A), "Content-Type": "application/json"},
                json.dumps({"id": new_id, "title": "Race"}))
    assert r.status == 201


def test_page_loading_during_a_write_is_not_cached(lists, redis, pg):
    """The race guard in one process: a page query that started before the
    write committed answers its request but is not cached, and a request
    after the write's answer does not join it."""
    slow = PAGE_QUERY.replace("FROM sessions WHERE", "FROM sessions, pg_sleep(1) WHERE")
    b = lists(upstream=True, page_query=slow)
    with Http(b.port) as c:
        write_during_page_query(c, pg, b.port, "lstrace")
        # After the write's answer: a fresh query, which sees the new row.
        # (Started 250 ms or more after the invalidation, or its page would
        # not be cached either: hosts' clocks may be that far apart.)
        time.sleep(0.3)
        assert [x["id"] for x in page(b, A, "?limit=2").json()["items"]][0] == "lstrace"
        old = c.read_response()
    assert old.status == 200 and "lstrace" not in [x["id"] for x in old.json()["items"]]
    assert pg.calls("%pg_sleep(%") == 2
    wait_until(lambda: b.metric("batchd_list_writebacks_total") == 1, what="the fresh page cached")
    assert b.metric("batchd_list_writebacks_skipped_total") == 1
    cached = page(b, A, "?limit=2")
    assert cached.headers["x-cache"] == "hit" and cached.json()["items"][0]["id"] == "lstrace"
    pg.psql("DELETE FROM sessions WHERE id = 'lstrace'")


def test_store_landing_after_another_process_invalidated_is_skipped(lists, redis, pg):
    """The race guard across processes: batchd 1 loads a page slowly; the write
    goes through batchd 2, whose invalidation leaves a tombstone in the hash.
    batchd 1's store arrives after it and is refused by the script."""
    slow = PAGE_QUERY.replace("FROM sessions WHERE", "FROM sessions, pg_sleep(1) WHERE")
    b1 = lists(page_query=slow)
    b2 = lists(upstream=True)
    with Http(b1.port) as c:
        write_during_page_query(c, pg, b2.port, "lstrace2")
        assert c.read_response().status == 200
    wait_until(lambda: b1.metric("batchd_list_writebacks_skipped_total") == 1, what="the store refused")
    assert b1.metric("batchd_list_writebacks_total") == 0
    assert redis.client().hkeys(f"batchd:list:my-sessions:{A}") == [b"!inval"]
    assert page(b1, A, "?limit=2").json()["items"][0]["id"] == "lstrace2"
    pg.psql("DELETE FROM sessions WHERE id = 'lstrace2'")


# --- the cache's contents ------------------------------------------------------------------


def test_cached_page_expires_and_bad_values_heal(lists, redis, pg):
    b = lists(lst={"ttl": 1})
    page(b, A, "?limit=3")
    key = f"batchd:list:my-sessions:{A}"
    wait_until(lambda: redis.client().hlen(key) == 1, what="the page cached")
    [field] = redis.client().hkeys(key)
    # A value written past batchd is a miss, counted, and rewritten.
    redis.client().hset(key, field, "1 99999999999999 ~ 1 not an id")
    d = page(b, A, "?limit=3").json()
    assert [x["id"] for x in d["items"]] == newest_first(A)[:3]
    assert b.metric("batchd_list_errors_total", kind="invalid_cached") == 1
    wait_until(lambda: redis.client().hget(key, field).startswith(b"1 ") and
               redis.client().hget(key, field).endswith(" ".join(newest_first(A)[:3]).encode()),
               what="the value rewritten")
    # The page's own expiry counts, whatever the hash's: 1 s.
    calls = pg.calls(PAGE_LIKE)
    assert page(b, A, "?limit=3").headers["x-cache"] == "hit"
    redis.client().pexpire(key, 60000)
    time.sleep(1.1)
    assert redis.client().hlen(key) == 1
    assert page(b, A, "?limit=3").headers["x-cache"] == "miss"
    assert pg.calls(PAGE_LIKE) == calls + 1


def test_max_cached_pages_empties_the_hash(lists, redis):
    b = lists(lst={"max_cached_pages": 3})
    key = f"batchd:list:my-sessions:{A}"
    for n in range(1, 5):
        page(b, A, f"?limit={n}")
        wait_until(lambda: b.metric("batchd_list_writebacks_total") == n, what="page cached")
    assert redis.client().hlen(key) == 1
    assert b.metric("batchd_list_cache_resets_total") == 1


def test_reload_changes_the_page_query(lists, redis, pg):
    b = lists()
    assert [x["id"] for x in page(b, A, "?limit=2").json()["items"]] == newest_first(A)[:2]
    wait_until(lambda: b.metric("batchd_list_writebacks_total") == 1, what="the page cached")
    oldest_first = PAGE_QUERY.replace("(created_at, id) <", "(created_at, id) >").replace(
        "created_at DESC, id DESC", "created_at, id")
    b.conf.write_text(b.conf.read_text().replace(PAGE_QUERY, oldest_first))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in b.log(), what="the reload")
    # Another query: another page (its field has the query's hash), not the cached one.
    r = page(b, A, "?limit=2")
    assert r.headers["x-cache"] == "miss"
    assert [x["id"] for x in r.json()["items"]] == newest_first(A)[::-1][:2]
    ids, _ = walk(b, A, 100)
    assert ids == newest_first(A)[::-1]


# --- failures --------------------------------------------------------------------------------


def test_query_error_is_500_with_no_details(lists, pg):
    b = lists(page_query=PAGE_QUERY.replace("owner_id = $1", "no_such_column = $1"))
    r = page(b, A)
    assert (r.status, r.json()) == (500, {"error": "query_failed"})
    assert b"no_such_column" not in r.body
    assert b.metric("batchd_list_errors_total", kind="query_failed") == 1
    assert b.metric("batchd_list_requests_total", result="error") == 1
    # With a cursor it is still the query's fault, not the cursor's: not class 22.
    r = page(b, A, "?after=" + cursor("2027-01-01T00:00:00|lst1"))
    assert (r.status, r.json()) == (500, {"error": "query_failed"})


def test_postgres_down_cached_pages_served_others_503(lists, redis, pg):
    b = lists()
    d = page(b, A, "?limit=5").json()
    wait_until(lambda: b.metric("batchd_list_writebacks_total") == 1
               and b.metric("batchd_cache_writebacks_in_flight") == 0, what="page and bodies cached")
    pg.stop("fast")
    try:
        assert page(b, A, "?limit=5").json() == d  # ids and bodies from Redis
        r = page(b, A, "?limit=6")
        assert (r.status, r.json()) == (503, {"error": "db_unavailable"})
        assert r.headers["retry-after"] == "1"
        assert b.metric("batchd_list_requests_total", result="unavailable") == 1
    finally:
        pg.start()
    wait_until(lambda: page(b, A, "?limit=6").status == 200, timeout=10, what="PostgreSQL back")


def test_redis_down_pages_come_from_postgres(start_batchd, tmp_path, pg, rows, secret_file):
    from harness import RedisServer
    own = RedisServer(tmp_path / "r").start()
    try:
        b = start_batchd(extra=list_conf(own.port, pg, secret_file))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="ready")
        assert [x["id"] for x in page(b, A, "?limit=3").json()["items"]] == newest_first(A)[:3]
        own.kill()
        wait_until(lambda: b.metric("batchd_redis_up") == 0, what="redis_up to drop")
        r = page(b, A, "?limit=4")
        assert r.status == 200 and [x["id"] for x in r.json()["items"]] == newest_first(A)[:4]
        assert b.metric("batchd_list_cache_degraded_total") >= 1
    finally:
        own.stop()


def test_shutdown_with_a_page_in_flight(lists, pg):
    b = lists(page_query=PAGE_QUERY.replace("FROM sessions WHERE", "FROM sessions, pg_sleep(0.3) WHERE"))
    with Http(b.port) as c:
        hdr = "".join(f"{k}: {v}\r\n" for k, v in auth(A).items())
        c.send(f"GET /v1/me/sessions?limit=3 HTTP/1.1\r\nHost: t\r\n{hdr}\r\n")
        wait_until(lambda: b.metric("batchd_list_pages_in_flight") == 1, what="the page loading")
        b.send_signal(signal.SIGTERM)
        r = c.read_response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert [x["id"] for x in r.json()["items"]] == newest_first(A)[:3]
    assert b.wait(15) == 0
