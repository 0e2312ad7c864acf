"""The near cache (issue 14) through races and outages, made deterministic
with proxies in front of Redis: a read's MGET reply held while its key is
invalidated (by a write through batchd or behind its back), the pub/sub
connection killed and its reconnect held, CLIENT TRACKING refused, Redis
restarted while batchd cannot reach it, two processes on one port, answers
still being written while their document goes, large local batches, and
reloads. The rule: once an invalidation reached batchd, or tracking was
lost, nothing read before it is served from the near cache. Helpers:
test_near_cache.py."""

import json
import os
import signal
import socket
import threading

import pytest

from harness import Http, RedisServer, free_port, get, request, stop_process, wait_until
from redis_proxy import ConnProxy, RedisProxy, TcpProxy
from test_auth import auth_conf, bearer, keys, mint  # noqa: F401 (keys: a fixture)
from test_consistency import is_invalidation_of, is_mget_of
from test_lists import A, auth, lists, newest_first, rows, secret_file, walk  # noqa: F401 (fixtures)
from test_near_cache import (NEAR, SAME_KEY, doc, hold_locally, key, local, near, near_conf,  # noqa: F401
                             near_writes, ready, seed, seed_seen, tracked, wait_tracked)
from test_proxy import App, restore_titles, upstream_conf
from test_reload import reload
from test_resource import BY_IDS


def title(port, sid, c=None):
    return (c.request("GET", f"/v1/sessions/{sid}") if c else get(port, f"/v1/sessions/{sid}")).json()["title"]


# --- 5: a reader concurrent with a write through batchd -----------------------------------------


@pytest.fixture
def gated(start_batchd, redis, pg):
    proxy = RedisProxy(redis.port)  # holds released by Events the test sets
    app = App(conninfo=pg.conninfo())
    conf = near_conf(proxy.port, pg, resource="invalidate = /api/sessions/{id}\n")
    b = ready(start_batchd(batchd="admin_token = t\nlog_level = info\n", extra=conf + upstream_conf(app.port)))
    yield b, proxy
    app.stop()
    proxy.close()
    restore_titles(pg)


@pytest.mark.parametrize("attempt", range(2))
def test_a_reader_concurrent_with_a_write_leaves_nothing_stale(gated, redis, attempt):
    """test_consistency's race with the near cache on, each step held until
    the test lets it go: the write's invalidation is held on its way to
    Redis; another reader, arriving meanwhile, finds no local entry (the
    write dropped it) and reads Redis, its MGET reply held. The invalidation
    completes and its message reaches batchd, the write is answered, the
    writer reads the new value, and only then the reader's old value comes
    back: answered to the reader, but not kept. Every read afterwards shows
    the new value, and the near cache settles on it."""
    b, proxy = gated
    sid, k = "s5", b"session:s5"
    k0 = tracked(b)[0]
    with Http(b.port) as c:
        c.request("GET", f"/v1/sessions/{sid}")
        wait_tracked(b, k0 + 1, what="the write-back's invalidation")
        old = local(c, f"/v1/sessions/{sid}").json()["title"]
    inval, reply = threading.Event(), threading.Event()
    proxy.hold_command(is_invalidation_of(k), inval)
    proxy.hold_reply(is_mget_of(k), reply)
    new = f"after-{attempt}"
    seen = {}

    def writer():
        with Http(b.port) as c:
            seen["put"] = c.request("PUT", f"/api/sessions/{sid}?title={new}").status
            seen["writer"] = title(b.port, sid, c)

    def reader():
        seen["reader"] = title(b.port, sid)

    w, rd = threading.Thread(target=writer), threading.Thread(target=reader)
    try:
        w.start()
        wait_until(lambda: any(kind == "command" for kind, _ in proxy.held), what="the invalidation to be sent")
        rd.start()
        wait_until(lambda: len(proxy.held) == 2, what="the reader's MGET (the write dropped the local entry)")
        k0 = tracked(b)[0]
        inval.set()
        wait_tracked(b, k0 + 1, what="the invalidation's message")
        wait_until(lambda: "writer" in seen, what="the writer's read, with the reader's reply still held")
    finally:
        inval.set()
        reply.set()
        w.join(10)
        rd.join(10)
    assert seen["put"] == 200
    assert seen["writer"] == new, f"stale read after the write: {seen}"
    assert seen["reader"] == old  # its MGET ran before the invalidation
    with Http(b.port) as c:
        for _ in range(5):
            assert title(b.port, sid, c) == new, "the reader's old value was kept"
        assert local(c, f"/v1/sessions/{sid}").json()["title"] == new
    # The reader's MGET was made unjoinable by the invalidation's message or
    # by the completed invalidation, whichever batchd saw first: the outcome
    # above is the promise, not which of the two it was.


def test_a_write_drops_the_entry_at_once_from_every_resource_sharing_its_key(start_batchd, redis, pg):
    """Two near-cached resources keyed session:{id} (as tools/run's
    sessions and my_sessions): a write through batchd invalidates the id
    through the one that names its path. Read-your-write must not wait for
    Redis's message: with the pub/sub connection held (nothing Redis sends
    on it reaches batchd), the read after the write's answer shows the
    write on both resources."""
    proxy = ConnProxy(redis.port)
    app = App(conninfo=pg.conninfo())
    try:
        conf = near_conf(proxy.port, pg, resource="invalidate = /api/sessions/{id}\n") + SAME_KEY
        b = ready(start_batchd(batchd="admin_token = t\nlog_level = info\n", extra=conf + upstream_conf(app.port)))
        k0 = tracked(b)[0]
        with Http(b.port) as c:
            c.request("GET", "/v1/sessions/s31")
            wait_tracked(b, k0 + 1, what="the write-back's invalidation")
            for path in ("/v1/sessions/s31", "/v1/same/s31"):
                local(c, path)
            [sub] = [x for x in proxy.pubsubs()]
            sub.hold()
            try:
                assert c.request("PUT", "/api/sessions/s31?title=rw").status == 200
                got = {path: c.request("GET", path).json()["title"] for path in ("/v1/sessions/s31", "/v1/same/s31")}
            finally:
                sub.release()
            assert got == {"/v1/sessions/s31": "rw", "/v1/same/s31": "rw"}, got
            for path in ("/v1/sessions/s31", "/v1/same/s31"):
                assert local(c, path).json()["title"] == "rw"
    finally:
        app.stop()
        proxy.close()
        restore_titles(pg)


def test_a_fill_overtaken_by_its_invalidation_is_not_kept(start_batchd, redis, pg):
    """A read's MGET reply is held while the key changes behind batchd's
    back and that change's invalidation reaches batchd: the reply (the old
    value) answers its reader, but must not enter the near cache after the
    invalidation that outdated it."""
    proxy = RedisProxy(redis.port)  # holds released by Events the test sets
    try:
        b = ready(start_batchd(batchd="log_level = info\n", extra=near_conf(proxy.port, pg)))
        seed_seen(b, redis, [502], lambda i: "old")
        gate = threading.Event()
        proxy.hold_reply(is_mget_of(key(502).encode()), gate)
        seen = {}
        t = threading.Thread(target=lambda: seen.update(reader=title(b.port, "s502")))
        try:
            t.start()
            wait_until(lambda: len(proxy.held) == 1, what="the MGET to be read by Redis, its reply held")
            k0 = tracked(b)[0]
            redis.client().set(key(502), doc(502, "new"))
            wait_tracked(b, k0 + 1)
        finally:
            gate.set()
            t.join(10)
        assert seen["reader"] == "old"
        with Http(b.port) as c:
            for _ in range(5):
                r = c.request("GET", "/v1/sessions/s502")
                assert r.json()["title"] == "new", f"the overtaken fill was kept: {r}"
            assert local(c, "/v1/sessions/s502").json()["title"] == "new"
    finally:
        proxy.close()


def test_a_read_sent_while_tracking_was_down_is_not_kept_once_it_is_back(start_batchd, redis, pg):
    """Tracking is lost (CLIENT KILL TYPE pubsub) and its return held (the
    SUBSCRIBE to __redis__:invalidate held on its way to Redis). A read
    made meanwhile bypasses the near cache, its MGET reply (the old value)
    held; the key changes (no invalidation can reach batchd for it);
    tracking comes back; only then the old value arrives: answered, but
    not kept, since it was read while tracking was down."""
    proxy = RedisProxy(redis.port)  # holds released by Events the test sets
    try:
        b = ready(start_batchd(batchd="log_level = info\n", extra=near_conf(proxy.port, pg)))
        seed_seen(b, redis, [503], lambda i: "old")
        back, reply = threading.Event(), threading.Event()
        proxy.hold_command(lambda a: a[0].upper() == b"SUBSCRIBE" and a[1:] == [b"__redis__:invalidate"], back)
        proxy.hold_reply(is_mget_of(key(503).encode()), reply)
        seen = {}
        t = threading.Thread(target=lambda: seen.update(reader=title(b.port, "s503")))
        try:
            assert redis.client().client_kill_filter(_type="pubsub") >= 1
            wait_until(lambda: b.metric("batchd_redis_tracking_up") == 0, what="tracking lost")
            wait_until(lambda: len(proxy.held) == 1, what="the SUBSCRIBE to invalidations, held")
            t.start()
            wait_until(lambda: len(proxy.held) == 2, what="the read's MGET, its reply held")
            redis.client().set(key(503), doc(503, "new"))
            back.set()
            wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, timeout=20, what="tracking back")
        finally:
            back.set()
            reply.set()
            t.join(10)
        assert seen["reader"] == "old"
        with Http(b.port) as c:
            for _ in range(5):
                r = c.request("GET", "/v1/sessions/s503")
                assert r.json()["title"] == "new", f"a read from while tracking was down was kept: {r}"
            assert local(c, "/v1/sessions/s503").json()["title"] == "new"
    finally:
        proxy.close()


def unread(local_port, remote_port):
    """Bytes received and not yet read on the loopback TCP socket from
    local_port to remote_port (/proc/net/tcp's rx_queue)."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (local_port, remote_port):
                return int(fields[4].split(":")[1], 16)
    return 0


def test_an_invalidation_read_in_the_same_loop_iteration_as_a_read_comes_first(near, redis):
    """batchd is stopped (SIGSTOP, until it is) while a read arrives on a
    kept-alive connection and then, the key changed, its invalidation
    arrives on the pub/sub connection: woken, batchd reads both sockets in
    one loop iteration, the read first. Local answers wait for the end of the
    iteration, so the read is not answered from the entry the invalidation
    dropped: it shows the change."""
    b = near()
    ids = range(511, 516)
    seed_seen(b, redis, ids, lambda i: "old")
    tracking = [c for c in redis.client().client_list() if "t" in c["flags"]]
    assert len(tracking) == 1
    pubsub = int(tracking[0]["addr"].rsplit(":", 1)[1])  # batchd's end of it
    with Http(b.port) as c:
        for i in ids:
            local(c, f"/v1/sessions/s{i}")
            stop_process(b.proc.pid)  # stopped, not just signalled: see harness
            try:
                c.send(f"GET /v1/sessions/s{i} HTTP/1.1\r\nHost: t\r\n\r\n")
                redis.client().set(key(i), doc(i, "new"))
                wait_until(lambda: unread(pubsub, redis.port) > 0, what="the invalidation in batchd's socket")
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            r = c.read_response()
            assert r.json()["title"] == "new", f"answered from an entry invalidated in the same iteration: {r}"


def test_a_postgresql_load_overtaken_by_a_write_is_not_kept(near_writes, pg):
    """test_proxy's race guard with the near cache on: a load of the old row
    is still in PostgreSQL (pg_sleep) when a write through batchd commits
    and invalidates the id. The load answers its reader (who asked
    before), but neither Redis nor the near cache keeps it: every read
    afterwards shows the write."""
    b = near_writes(by_ids=BY_IDS.replace("FROM sessions s WHERE", "FROM sessions s, pg_sleep(0.6) WHERE"))
    pg.psql("UPDATE sessions SET title = 'old' WHERE id = 's902'")
    seen = {}
    t = threading.Thread(target=lambda: seen.update(reader=title(b.port, "s902")))
    t.start()
    wait_until(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
                               "AND state = 'active' AND pid <> pg_backend_pid()") == "1", what="the slow load")
    assert request(b.port, "PUT", "/api/sessions/s902?title=new").status == 200
    t.join(10)
    assert seen["reader"] == "old"
    with Http(b.port) as c:
        for _ in range(3):
            assert title(b.port, "s902", c) == "new"
        assert local(c, "/v1/sessions/s902").json()["title"] == "new"


# --- 2: the pub/sub connection killed ------------------------------------------------------------


def test_client_kill_pubsub_then_a_change_is_not_served_stale(near, redis):
    """CLIENT KILL TYPE pubsub, then changes: the next reads show them (no
    invalidation can come for them; the near cache is emptied as tracking
    is lost). Tracking comes back, and reads fill the near cache again."""
    b = near()
    ids = range(201, 211)
    seed_seen(b, redis, ids, lambda i: "before")
    with Http(b.port) as c:
        hold_locally(c, ids)
        assert b.metric("batchd_local_cache_entries", resource="sessions") == len(ids)
        lost = b.metric("batchd_redis_tracking_lost_total")
        dropped = b.metric("batchd_local_cache_invalidations_total", resource="sessions", source="tracking")
        assert redis.client().client_kill_filter(_type="pubsub") >= 1
        seed(redis, ids, lambda i: "after")
        for i in ids:
            r = c.request("GET", f"/v1/sessions/s{i}")
            assert r.json()["title"] == "after" and r.headers["x-cache"] != "local", (i, r)
        wait_until(lambda: b.metric("batchd_redis_tracking_lost_total") == lost + 1, what="tracking lost")
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, timeout=20, what="tracking back")
        assert b.metric("batchd_local_cache_invalidations_total", resource="sessions",
                        source="tracking") == dropped + len(ids)
        for i in ids:
            assert local(c, f"/v1/sessions/s{i}").json()["title"] == "after"




def test_while_tracking_is_down_reads_bypass_the_near_cache(start_batchd, redis, pg):
    """The pub/sub connection is killed and its reconnect held in its
    handshake (a proxy holds what Redis answers on new connections): for
    as long as tracking is not confirmed (batchd_redis_tracking_up 0) the
    near cache is empty, every id looked up is a bypass answered from
    Redis, and a change made meanwhile (no invalidation can come) is seen
    at once. Once the handshake goes through, reads are local again."""
    proxy = ConnProxy(redis.port)
    try:
        b = ready(start_batchd(batchd="log_level = info\n", extra=near_conf(proxy.port, pg)))
        ids = range(211, 221)
        seed_seen(b, redis, ids, lambda i: "before")
        with Http(b.port) as c:
            hold_locally(c, ids)
            dropped = b.metric("batchd_local_cache_invalidations_total", resource="sessions", source="tracking")
            proxy.hold_new = True
            assert redis.client().client_kill_filter(_type="pubsub") >= 1
            wait_until(lambda: b.metric("batchd_redis_tracking_up") == 0, what="tracking down")
            assert b.metric("batchd_local_cache_entries", resource="sessions") == 0
            assert b.metric("batchd_local_cache_invalidations_total", resource="sessions",
                            source="tracking") == dropped + len(ids)
            bypass = b.metric("batchd_local_cache_results_total", resource="sessions", result="bypass")
            for n in range(3):
                seed(redis, ids, lambda i: f"during {n}")
                for i in ids:
                    r = c.request("GET", f"/v1/sessions/s{i}")
                    assert (r.headers["x-cache"], r.json()["title"]) == ("hit", f"during {n}"), r
            assert b.metric("batchd_redis_tracking_up") == 0  # still held: the reads above were all bypasses
            assert b.metric("batchd_local_cache_results_total", resource="sessions",
                            result="bypass") == bypass + 3 * len(ids)
            assert b.metric("batchd_local_cache_entries", resource="sessions") == 0
            proxy.hold_new = False
            for conn in list(proxy.conns):
                if conn.held:
                    conn.release()
            wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, timeout=20, what="tracking back")
            for i in ids:
                assert local(c, f"/v1/sessions/s{i}").json()["title"] == "during 2"
    finally:
        proxy.close()


# --- 7: tracking refused ---------------------------------------------------------------------------


def test_tracking_refused_reads_are_answered_and_never_local(start_batchd, tmp_path, pg):
    """A Redis whose default user may not run CLIENT TRACKING (ACL): batchd
    asks, is refused (Redis's ACL LOG shows it), and keeps answering
    correctly through MGET: tracking_up stays 0, every id looked up is a
    bypass, nothing is held, and a change is seen by the very next read."""
    own = RedisServer(tmp_path / "r").start()
    try:
        own.client().execute_command("ACL", "SETUSER", "default", "-client|tracking")
        b = ready(start_batchd(batchd="log_level = info\n", extra=near_conf(own.port, pg)), tracking=False)
        wait_until(lambda: any(b"client|tracking" in e for e in own.client().execute_command("ACL", "LOG")),
                   what="CLIENT TRACKING to be asked for and refused")
        ids = range(231, 236)
        with Http(b.port) as c:
            for n in range(4):
                seed(own, ids, lambda i: f"v{n}")
                for i in ids:
                    for _ in range(2):
                        r = c.request("GET", f"/v1/sessions/s{i}")
                        assert (r.status, r.headers["x-cache"], r.json()["title"]) == (200, "hit", f"v{n}"), r
        assert b.metric("batchd_redis_tracking_up") == 0
        assert b.metric("batchd_redis_tracking_refused_total") >= 1
        assert b.metric("batchd_local_cache_results_total", resource="sessions", result="bypass") == 4 * 5 * 2
        assert b.metric("batchd_local_cache_results_total", resource="sessions", result="hit") == 0
        assert b.metric("batchd_local_cache_entries", resource="sessions") == 0
    finally:
        own.stop()


# --- 8: Redis restarted --------------------------------------------------------------------------------


def test_redis_restart_empties_the_near_cache_and_a_change_meanwhile_is_seen(start_batchd, tmp_path, pg):
    """Redis restarts (SHUTDOWN SAVE, start) while batchd cannot reach it (a
    proxy in between is closed), and a document changes meanwhile (in
    PostgreSQL and in Redis). Losing tracking emptied the near cache
    (source="tracking"); reads while Redis is away bypass it (answered from
    PostgreSQL); once Redis and tracking are back the changed document is
    served, then held locally again."""
    own = RedisServer(tmp_path / "r").start()
    proxy = TcpProxy(own.port)
    try:
        b = ready(start_batchd(batchd="log_level = info\n", extra=near_conf(proxy.port, pg)))
        ids = range(241, 246)
        seed_seen(b, own, ids, lambda i: "one")
        with Http(b.port) as c:
            hold_locally(c, ids)
        dropped = b.metric("batchd_local_cache_invalidations_total", resource="sessions", source="tracking")
        lost = b.metric("batchd_redis_tracking_lost_total")
        proxy.close()
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 0, what="tracking lost")
        assert b.metric("batchd_redis_tracking_lost_total") == lost + 1
        assert b.metric("batchd_local_cache_entries", resource="sessions") == 0
        assert b.metric("batchd_local_cache_invalidations_total", resource="sessions",
                        source="tracking") == dropped + len(ids)
        with Http(b.port) as c:
            for i in ids:
                r = c.request("GET", f"/v1/sessions/s{i}")
                assert (r.status, r.headers["x-cache"], r.json()["title"]) == (200, "miss", f"Conversation {i}"), r
        own.shutdown_save()
        own.start()
        assert json.loads(own.client().get(key(241)))["title"] == "one"  # back from its RDB
        # The change, as an app makes it: the row, then the cached document.
        pg.psql("UPDATE sessions SET title = 'two' WHERE id IN ('s241','s242','s243','s244','s245')")
        seed(own, ids, lambda i: "two")
        assert b.metric("batchd_redis_tracking_up") == 0
        proxy = TcpProxy(own.port, port=proxy.port)
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, timeout=20, what="tracking back")
        with Http(b.port) as c:
            for i in ids:
                r = c.request("GET", f"/v1/sessions/s{i}")
                assert r.json()["title"] == "two", (r, own.client().get(key(i)))
            for i in ids:
                assert local(c, f"/v1/sessions/s{i}").json()["title"] == "two"
    finally:
        proxy.close()
        own.stop()
        restore_titles(pg)


# --- 10: two processes on one port ---------------------------------------------------------------------


def test_two_processes_sharing_a_port_each_stay_coherent(near, redis):
    """Two batchd processes on one port (reuseport = yes), each with its own
    near cache and admin port: warmed over many connections until both
    hold the ids and answer locally, changed behind their backs, and once
    both have received the invalidations, reads over many fresh
    connections (reaching both) never return the old value."""
    port = free_port()
    procs = [near(batchd="reuseport = yes\n", port=port) for _ in range(2)]
    ids = [f"s{i}" for i in range(251, 261)]
    path = "/v1/sessions?ids=" + ",".join(ids)
    k0 = [tracked(b)[0] for b in procs]
    seed(redis, range(251, 261), lambda i: "old")
    for b, k in zip(procs, k0):
        wait_tracked(b, k + len(ids))

    def answered_locally():
        return all(b.metric("batchd_local_cache_results_total", resource="sessions", result="hit") > 0
                   and b.metric("batchd_local_cache_entries", resource="sessions") == len(ids) for b in procs)

    def warm():
        for _ in range(10):
            assert [d["title"] for d in get(port, path).json()] == ["old"] * len(ids)
        return answered_locally()

    wait_until(warm, what="both processes to answer from their near caches")
    k0 = [tracked(b)[0] for b in procs]
    seed(redis, range(251, 261), lambda i: "new")
    for b, k in zip(procs, k0):
        wait_tracked(b, k + len(ids))
    looked = [b.metric("batchd_local_cache_results_total", resource="sessions") for b in procs]
    for _ in range(100):
        r = get(port, path)
        assert [d["title"] for d in r.json()] == ["new"] * len(ids), r
    assert all(b.metric("batchd_local_cache_results_total", resource="sessions") > n for b, n in zip(procs, looked))


# --- answers gathered from held documents --------------------------------------------------------


@pytest.mark.parametrize("n", [400, 600], ids=["iovecs", "over_1000_parts"])
def test_large_batches_answered_locally_are_exact(near, redis, n):
    """A batch of n ids, all held (one missing: an absent marker; one
    twice), answered locally: the JSON array is exactly the documents in
    request order with null for the missing one, both when the answer's
    parts fit one writev (2n + 2 <= 1000) and when they are copied into
    one buffer."""
    b = near(max_ids=n)
    ids = list(range(1, n - 1))
    seen = seed_seen(b, redis, ids, lambda i: f"batch {i}")
    asked = [f"s{i}" for i in ids] + ["nope", "s1"]
    want = [{"id": f"s{i}", "title": f"batch {i}"} for i in ids] + [None, {"id": "s1", "title": "batch 1"}]
    body = json.dumps({"ids": asked})
    exact = ("[" + ",".join([doc(i, f"batch {i}") for i in ids] + ["null", doc(1, "batch 1")]) + "]").encode()
    with Http(b.port) as c:
        def ask():
            return c.request("POST", "/v1/sessions/_batch", {"Content-Type": "application/json"}, body)
        assert ask().json() == want
        wait_tracked(b, seen + 1, what="the absent marker's write-back, invalidated")
        wait_until(lambda: ask().headers["x-cache"] == "local", what="the whole batch held")
        for _ in range(3):
            r = ask()
            assert r.headers["x-cache"] == "local" and r.body == exact, r


# --- answers still being written hold their documents ----------------------------------------------


class SlowReader(Http):
    """A client connection with a small receive buffer: what batchd answers
    stays queued in batchd until the test reads it."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.timeout = 10


def test_answers_being_written_keep_their_documents_through_a_drop_and_a_reload(start_batchd, redis, pg):
    """Local answers point at the near cache's documents until written. A
    client that does not read has 120 pipelined answers of a 60 KB
    document coming (more than the kernel's buffers hold): batchd's write
    queue fills and its reading pauses. Meanwhile the document is
    invalidated behind batchd's back, and a reload turns the near cache
    off (freeing it). Every answer then arrives whole: the old document
    (from the near cache) up to some point, the new one after, and the
    requests sent after the reload get the new one; batchd exits with a
    clean sanitizer report (nothing used after being freed)."""
    b = ready(start_batchd(batchd="log_level = info\n", extra=near_conf(redis.port, pg)))
    big = {t: json.dumps({"id": "s71", "title": t, "pad": t[0] * 60000}) for t in ("old", "new")}
    k0 = tracked(b)[0]
    redis.client().set(key(71), big["old"])
    wait_tracked(b, k0 + 1)
    with Http(b.port) as c:
        local(c, "/v1/sessions/s71")
    slow = SlowReader(b.port)
    try:
        slow.send("GET /v1/sessions/s71 HTTP/1.1\r\nHost: t\r\n\r\n" * 120)
        wait_until(lambda: b.metric("batchd_client_read_pauses_total", reason="write_queue") >= 1,
                   what="the answers to queue up in batchd")
        k0 = tracked(b)[0]
        redis.client().set(key(71), big["new"])
        wait_tracked(b, k0 + 1)
        b.conf.write_text(b.conf.read_text().replace(f"local_cache_bytes = {NEAR}\n", ""))
        reload(b, 0)
        assert b.metric("batchd_local_cache_limit_bytes", resource="sessions") == 0
        slow.send("GET /v1/sessions/s71 HTTP/1.1\r\nHost: t\r\n\r\n" * 5)
        got = [slow.read_response() for _ in range(125)]
    finally:
        slow.close()
    assert all(r.status == 200 for r in got)
    bodies = [r.body.decode() for r in got]
    n_old = bodies.count(big["old"])
    assert n_old >= 5 and bodies == [big["old"]] * n_old + [big["new"]] * (125 - n_old)
    assert [r.headers["x-cache"] for r in got[:n_old]] == ["local"] * n_old


# --- 9: reload -----------------------------------------------------------------------------------


def test_reload_turns_the_near_cache_on_resizes_follows_the_key_and_off(near, redis):
    """SIGHUP reloads: off -> on (tracking confirmed, reads become local),
    a smaller size (within it, still coherent), a new key (tracking follows the new
    prefix: a change to the new key is invalidated), a refused reload (a
    key with two {id}: the near cache goes on), and on -> off."""
    b = near(size=0, tracking=False)
    ids = range(91, 96)
    r = redis.client()
    seed(redis, ids, lambda i: "one")
    conf = b.conf.read_text()
    with Http(b.port) as c:
        for _ in range(3):
            for i in ids:
                assert c.request("GET", f"/v1/sessions/s{i}").headers["x-cache"] == "hit"
        assert b.metric("batchd_local_cache_entries", resource="sessions") == 0

        on = conf.replace("[resource sessions]\n", "[resource sessions]\nlocal_cache_bytes = 262144\n")
        b.conf.write_text(on)
        reload(b, 0)
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking")
        for i in ids:
            assert local(c, f"/v1/sessions/s{i}").json()["title"] == "one"
        assert b.metric("batchd_local_cache_limit_bytes", resource="sessions") == 262144
        k0 = tracked(b)[0]
        r.set(key(91), doc(91, "two"))
        wait_tracked(b, k0 + 1)
        assert c.request("GET", "/v1/sessions/s91").json()["title"] == "two"

        b.conf.write_text(on.replace("262144", "65536"))
        reload(b, 1)
        assert b.metric("batchd_local_cache_limit_bytes", resource="sessions") == 65536
        assert b.metric("batchd_local_cache_bytes", resource="sessions") <= 65536
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking")
        assert local(c, "/v1/sessions/s92").json()["title"] == "one"
        assert c.request("GET", "/v1/sessions/s91").json()["title"] == "two"

        moved = on.replace("262144", "524288").replace("key = session:{id}", "key = sess2:{id}")
        for i in ids:
            r.set(f"sess2:s{i}", doc(i, "moved"))
        b.conf.write_text(moved)
        reload(b, 2)
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking")
        assert local(c, "/v1/sessions/s93").json()["title"] == "moved"
        k0 = tracked(b)[0]
        r.set("sess2:s93", doc(93, "moved again"))
        wait_tracked(b, k0 + 1, what="the invalidation of a key under the new prefix")
        assert c.request("GET", "/v1/sessions/s93").json()["title"] == "moved again"
        local(c, "/v1/sessions/s93")

        b.conf.write_text(moved.replace("key = sess2:{id}", "key = sess2:{id}:{id}"))
        b.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in b.log(), what="the reload to be refused")
        assert "local_cache_bytes needs a key with exactly one {id}" in b.log()
        r2 = c.request("GET", "/v1/sessions/s93")
        assert (r2.headers["x-cache"], r2.json()["title"]) == ("local", "moved again")

        b.conf.write_text(moved.replace("local_cache_bytes = 524288\n", ""))
        reload(b, 3)
        assert b.metric("batchd_local_cache_entries", resource="sessions") == 0
        for _ in range(3):
            for i in ids:
                r2 = c.request("GET", f"/v1/sessions/s{i}")
                assert r2.headers["x-cache"] == "hit" and r2.json()["title"].startswith("moved"), r2
        r.set("sess2:s94", doc(94, "off"))
        assert c.request("GET", "/v1/sessions/s94").json()["title"] == "off"
        assert b.metric("batchd_local_cache_entries", resource="sessions") == 0


def test_reload_to_another_owner_field_forgets_who_owned_what(start_batchd, redis, pg, keys):
    """Who may see a held document is noted when it enters the near cache;
    a reload to another owner_field empties the near cache, so a document
    held for its old owner is not shown to them any more, and is shown to
    the new one."""
    b = ready(start_batchd(batchd="admin_token = a\nlog_level = info\n",
                           extra=auth_conf(keys, redis.port, pg, resource=f"local_cache_bytes = {NEAR}\n")))
    ta, tb = bearer(mint(None, sub="7001")), bearer(mint(None, sub="7002"))
    k0 = tracked(b)[0]
    redis.client().set(key(14), json.dumps({"id": "s14", "owner_id": "7001", "editor_id": "7002"}))
    wait_tracked(b, k0 + 1)
    with Http(b.port) as c:
        local(c, "/v1/sessions/s14", ta)
        assert c.request("GET", "/v1/sessions/s14", tb).status == 404
        b.conf.write_text(b.conf.read_text().replace("owner_field = owner_id", "owner_field = editor_id"))
        reload(b, 0)
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking")
        assert c.request("GET", "/v1/sessions/s14", ta).status == 404
        assert local(c, "/v1/sessions/s14", tb).json()["editor_id"] == "7002"
        assert c.request("GET", "/v1/sessions/s14", ta).status == 404


# --- internal reads: list pages ---------------------------------------------------------------------


def test_list_pages_take_documents_from_the_near_cache_and_follow_changes(lists, redis, pg):
    """A [list]'s pages are filled with its resource's documents through
    the near cache: walking alice's list twice, the second walk's
    documents are local hits and Redis counts no MGET of bodies; a document
    changed behind batchd's back shows in the page once its invalidation
    arrived."""
    b = lists(resource=f"local_cache_bytes = {NEAR}\n")
    ready(b)
    want = newest_first(A)
    ids, _ = walk(b, A, 100)
    assert ids == want
    wait_until(lambda: b.metric("batchd_cache_writebacks_in_flight") == 0
               and b.metric("batchd_list_writebacks_total") == 10, what="pages and bodies cached")
    ids, _ = walk(b, A, 100)  # the bodies from Redis, into the near cache
    hits = b.metric("batchd_local_cache_results_total", resource="sessions", result="hit")
    mget = redis.commandstats().get("mget", 0)
    ids, _ = walk(b, A, 100)
    assert ids == want
    assert b.metric("batchd_local_cache_results_total", resource="sessions", result="hit") == hits + len(want)
    assert redis.commandstats().get("mget", 0) == mget
    k0 = tracked(b)[0]
    first = json.loads(redis.client().get(f"session:{want[0]}"))
    redis.client().set(f"session:{want[0]}", json.dumps({**first, "title": "changed"}))
    wait_tracked(b, k0 + 1)
    r = get(b.port, "/v1/me/sessions?limit=5", auth(A))
    assert r.json()["items"][0] == {**first, "title": "changed"}
