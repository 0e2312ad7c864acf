"""The near cache (issue 14): documents kept in batchd's own memory per
resource (local_cache_bytes), coherent through Redis server-assisted
client-side caching: CLIENT TRACKING ... BCAST PREFIX on the pub/sub
connection, invalidations arriving there as __redis__:invalidate messages.

The rule under test: once an invalidation naming a key has reached batchd
(batchd_redis_tracking_keys_total, or _flushes_total for FLUSHALL, says so),
no read is answered from what the near cache held before it; while tracking
is not confirmed the near cache is empty and bypassed. Values are changed
behind batchd's back with a direct Redis client, and the evidence comes
from batchd's counters, Redis's own (INFO commandstats, CLIENT LIST) and a
tracking client of the test's own. Races (made deterministic with proxies
in front of Redis), outages and reloads are in test_near_cache_races.py."""

import json
import socket
import threading
import time

import pytest

from harness import Http, parse_metrics, wait_until
from redis_proxy import _Resp
from test_auth import BY_IDS as AUTH_BY_IDS
from test_auth import BY_IDS_NUM, auth_conf, bearer, keys, mint, owner_of  # noqa: F401 (keys: a fixture)
from test_events import Sse
from test_proxy import App, restore_titles, upstream_conf
from test_resource import BY_IDS, resource_conf

NEAR = 1048576
SECRET = {"Authorization": "Bearer secret"}


def near_conf(redis_port, pg, size=NEAR, resource="", **kw):
    """test_resource's sessions resource, with the near cache on (size > 0)."""
    line = f"local_cache_bytes = {size}\n" if size else ""
    return resource_conf(redis_port, pg, resource=line + resource, **kw)


def ready(b, tracking=True):
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1
               and (not tracking or b.metric("batchd_redis_tracking_up") == 1),
               what="Redis, PostgreSQL" + (" and tracking" if tracking else ""))
    return b


@pytest.fixture
def near(start_batchd, redis, pg):
    """near(size=NEAR, redis_port=None, extra="", tracking=True, max_ids=100, **resource_conf args)
    -> Batchd, ready, with tracking confirmed unless tracking=False."""
    def _start(size=NEAR, redis_port=None, batchd="", extra="", tracking=True, port=None, max_ids=100, **kw):
        conf = near_conf(redis_port or redis.port, pg, size, **kw).replace("max_ids = 100", f"max_ids = {max_ids}")
        b = start_batchd(batchd="admin_token = secret\nlog_level = info\n" + batchd, port=port, extra=conf + extra)
        return ready(b, tracking)
    return _start


def key(i):
    return f"session:s{i}"


def doc(i, title):
    return json.dumps({"id": f"s{i}", "title": title})


def pg_title(i):
    return f"Conversation {i}"


class Ops:
    """A kept-alive connection to batchd's admin listener, for reading /metrics
    often (Batchd.metric connects once per call)."""

    def __init__(self, b):
        self.b = b
        self.c = Http(b.ops_port)

    def metrics(self):
        try:
            r = self.c.request("GET", "/metrics")
        except (OSError, EOFError):
            self.c.close()
            self.c = Http(self.b.ops_port)
            r = self.c.request("GET", "/metrics")
        return parse_metrics(r.body.decode())

    def metric(self, name, **labels):
        return metric_of(self.metrics(), name, **labels)

    def close(self):
        self.c.close()


def metric_of(m, name, **labels):
    """Batchd.metric over an already parsed /metrics."""
    total = 0.0
    for k, v in m.items():
        n, _, rest = k.partition("{")
        if n == name and all(f'{lk}="{lv}"' in rest for lk, lv in labels.items()):
            total += v
    return total


def tracked(b):
    """(keys, flushes) named by the invalidation messages batchd received."""
    m = b.metrics()
    return (metric_of(m, "batchd_redis_tracking_keys_total"), metric_of(m, "batchd_redis_tracking_flushes_total"))


def wait_tracked(b, n_keys, flushes=0, what="the invalidations"):
    """Until batchd has received invalidations naming at least n_keys keys
    and `flushes` flushes (totals)."""
    wait_until(lambda: (lambda t: t[0] >= n_keys and t[1] >= flushes)(tracked(b)), what=what)


def local(c, path, headers=None):
    """Reads path on connection c until the answer comes from the near cache; returns that answer."""
    def attempt():
        r = c.request("GET", path, headers)
        return r if r.headers.get("x-cache") == "local" else None
    return wait_until(attempt, what=f"{path} answered from the near cache")


def seed(redis, ids, title):
    """Puts documents straight into Redis (so no read fills from PostgreSQL,
    and no write-back names a key); returns how many keys that changed."""
    c = redis.client()
    for i in ids:
        c.set(key(i), doc(i, title(i)))
    return len(ids)

def seed_seen(b, redis, ids, title):
    """seed(), then wait until batchd has received the invalidations the
    writes caused (they would drop what a test then reads locally).
    Returns the key count reached, for a test that waits for more."""
    n = tracked(b)[0] + len(ids)
    seed(redis, ids, title)
    wait_tracked(b, n)
    return n


def hold_locally(c, ids):
    """Reads s<i> for each id on connection c until each is held locally."""
    for i in ids:
        local(c, f"/v1/sessions/s{i}")


def percentile(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- basics ------------------------------------------------------------------------------


def test_second_read_is_local_and_tracking_is_bcast_on_the_pubsub_connection(near, redis, pg):
    """A document read from Redis enters the near cache: the next read is
    X-Cache: local with no Server-Timing, and asks neither Redis nor
    PostgreSQL. Redis lists one tracking connection, in BCAST mode,
    subscribed, redirecting to itself."""
    b = near()
    seed_seen(b, redis, [1], lambda i: "from redis")
    with Http(b.port) as c:
        r = c.request("GET", "/v1/sessions/s1")
        assert (r.status, r.headers["x-cache"], r.json()["title"]) == (200, "hit", "from redis")
        mget = redis.commandstats()["mget"]
        r2 = c.request("GET", "/v1/sessions/s1")
    assert (r2.status, r2.headers["x-cache"], r2.body) == (200, "local", r.body)
    assert "server-timing" not in r2.headers
    assert redis.commandstats()["mget"] == mget
    assert pg.calls("%FROM sessions s WHERE s.id = ANY($1::text[])%") == 0
    assert b.metric("batchd_local_cache_results_total", resource="sessions", result="hit") == 1
    assert b.metric("batchd_local_cache_entries", resource="sessions") == 1
    assert b.metric("batchd_local_cache_limit_bytes", resource="sessions") == NEAR
    assert 0 < b.metric("batchd_local_cache_bytes", resource="sessions") <= NEAR
    tracking = [c for c in redis.client().client_list() if "t" in c["flags"]]
    assert len(tracking) == 1, tracking
    t = tracking[0]
    assert "B" in t["flags"] and "P" in t["flags"] and t["redir"] == t["id"], t


def test_a_document_filled_from_postgresql_is_local_once_written_back(near, redis, pg):
    """A miss goes to PostgreSQL as before; the write-back's own invalidation
    arrives, and reads settle on local answers with PostgreSQL's document."""
    b = near()
    with Http(b.port) as c:
        r = c.request("GET", "/v1/sessions/s2")
        assert (r.status, r.headers["x-cache"], r.json()["title"]) == (200, "miss", pg_title(2))
        r2 = local(c, "/v1/sessions/s2")
    assert r2.json() == r.json()
    assert pg.calls("%FROM sessions s WHERE s.id = ANY($1::text[])%") == 1


# --- 1: changes behind batchd's back -------------------------------------------------------

IDS = list(range(101, 121))
CHANGES = 1000
LAG_CHANGES = 1000


def kind_of(k, held):
    """The change made at step k; DEL and expiry only where Redis holds a
    value of its own (else the read after could not tell old from new)."""
    if k % 250 == 249:
        return "flushall"
    kind = {3: "del", 7: "expire"}.get(k % 10, "set")
    return kind if kind == "set" or held.startswith("v") else "set"


def change(r, state, k, i, kind):
    """Makes change k to id i directly in Redis, and keeps `state` (what
    Redis holds for each id: a title, or None) in step. Returns once the
    change is done (an expiry: once the key is gone)."""
    if kind == "set":
        r.set(key(i), doc(i, f"v{k}"))
        state[i] = f"v{k}"
    elif kind == "del":
        assert r.delete(key(i)) == 1
        state[i] = None
    elif kind == "expire":
        assert r.pexpire(key(i), 1)
        wait_until(lambda: not r.exists(key(i)), interval=0.001, what="the expiry")
        state[i] = None
    else:
        r.flushall()
        for j in state:
            state[j] = None


class Observer:
    """A tracking client of the test's own, in batchd's mode (BCAST, the
    same prefix, RESP2, redirected to itself): Redis broadcasts it the same
    invalidation messages as batchd. sync() returns the keys and flushes
    they named up to now (a PING's answer comes after every message sent
    before it), so the test need not predict how Redis groups changes
    into messages (a PEXPIRE and its expiry in one event loop iteration
    make one key, a write-back adds one)."""

    def __init__(self, port, prefix):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.resp, self.pending = _Resp(), []
        self.keys = self.flushes = 0
        cid = self._call("CLIENT", "ID")
        assert self._call("CLIENT", "TRACKING", "on", "REDIRECT", cid, "BCAST", "PREFIX", prefix) == b"OK"
        self.sock.sendall(self._cmd("SUBSCRIBE", "__redis__:invalidate"))
        self._until(lambda v: v[:1] == [b"subscribe"])

    @staticmethod
    def _cmd(*args):
        args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    def _call(self, *args):
        self.sock.sendall(self._cmd(*args))
        return self._until(lambda v: True)

    def _until(self, last):
        """Counts the messages read until a value other than a message for
        which last(value) holds; what came after it is kept for next time."""
        while True:
            while self.pending:
                v = self.pending.pop(0)
                if isinstance(v, list) and v[:2] == [b"message", b"__redis__:invalidate"]:
                    if v[2] is None:
                        self.flushes += 1
                    else:
                        self.keys += len(v[2])
                elif last(v):
                    return v
            self.pending = [v for _, v in self.resp.feed(self.sock.recv(65536))]

    def sync(self):
        self.sock.sendall(self._cmd("PING"))
        self._until(lambda v: isinstance(v, list) and v[:1] == [b"pong"])
        return self.keys, self.flushes

    def close(self):
        self.sock.close()


def test_changes_behind_batchds_back_are_never_served_once_invalidated(near, redis, pg):
    """1,000 changes made directly in Redis (SET, DEL, PEXPIRE then expiry,
    FLUSHALL) to ids held in the near cache: once batchd's tracking counters
    show it received every invalidation Redis broadcast up to the change
    (counted by a tracking client of the test's own), the very next read
    shows the change (the document from PostgreSQL where the key is gone).
    Then 1,000 more, each read in a tight loop from its acknowledgement until
    it shows (the lag, printed as NEAR-LAG): once shown it never reverts.
    In the end batchd counted exactly the keys and flushes Redis sent."""
    b = near()
    r = redis.client()
    ops = Ops(b)
    obs = Observer(redis.port, "session:")
    m = ops.metrics()
    base = (metric_of(m, "batchd_redis_tracking_keys_total"), metric_of(m, "batchd_redis_tracking_flushes_total"))
    state = {i: f"v-seed-{i}" for i in IDS}
    seed(redis, IDS, lambda i: state[i])

    def counted():
        m = ops.metrics()
        return (metric_of(m, "batchd_redis_tracking_keys_total") - base[0],
                metric_of(m, "batchd_redis_tracking_flushes_total") - base[1])

    def arrived():
        """Until batchd has received every invalidation sent so far."""
        keys, flushes = obs.sync()
        wait_until(lambda: (lambda n: n[0] >= keys and n[1] >= flushes)(counted()), interval=0.001,
                   what=f"batchd to receive the {keys} keys and {flushes} flushes Redis sent")

    def step(k, c, lag=None):
        i = IDS[(k * 7) % len(IDS)]
        old = state[i] or pg_title(i)
        kind = kind_of(k, old)
        change(r, state, k, i, kind)
        t0 = time.perf_counter()
        new = state[i] or pg_title(i)
        path = f"/v1/sessions/s{i}"
        if lag is None:
            arrived()
            got = c.request("GET", path).json()["title"]
            assert got == new, f"change {k} ({kind} s{i}): read {got!r} after its invalidation arrived, not {new!r}"
        else:
            while True:
                got = c.request("GET", path).json()["title"]
                if got == new:
                    lag.setdefault(kind, []).append(time.perf_counter() - t0)
                    break
                assert got == old, f"change {k} ({kind} s{i}): read {got!r}, neither {old!r} nor {new!r}"
                assert time.perf_counter() - t0 < 10, f"change {k} ({kind} s{i}) not shown after 10 s"
            got = c.request("GET", path).json()["title"]
            assert got == new, f"change {k} ({kind} s{i}): {new!r} shown, then {got!r} again"
        state[i] = new  # read from PostgreSQL where the key was gone, and written back

    try:
        with Http(b.port) as c:
            arrived()
            for i in IDS:
                local(c, f"/v1/sessions/s{i}")
            for k in range(CHANGES):
                step(k, c)
            lag = {}
            for k in range(CHANGES, CHANGES + LAG_CHANGES):
                step(k, c, lag)
            arrived()
            for i in IDS:
                assert c.request("GET", f"/v1/sessions/s{i}").json()["title"] == (state[i] or pg_title(i))
            wait_until(lambda: r.exists(*[key(i) for i in IDS]) == len(IDS), what="the last write-backs done")
            arrived()
            t0 = time.perf_counter()
            for _ in range(200):
                c.request("GET", f"/v1/sessions/s{IDS[0]}")
            rtt = (time.perf_counter() - t0) / 200
        sent = obs.sync()
        m = ops.metrics()
    finally:
        obs.close()
        ops.close()
    assert counted() == sent
    assert sent[1] == (CHANGES + LAG_CHANGES) // 250
    assert metric_of(m, "batchd_local_cache_invalidations_total", resource="sessions", source="redis") > 0
    assert metric_of(m, "batchd_local_cache_invalidations_total", resource="sessions", source="flush") > 0
    assert metric_of(m, "batchd_local_cache_results_total", resource="sessions", result="hit") > 0
    every = [x for xs in lag.values() for x in xs]
    ms = lambda x: f"{x * 1000:.3f}ms"  # noqa: E731
    print(f"\nNEAR-LAG changes={len(every)} p50={ms(percentile(every, 0.5))} p99={ms(percentile(every, 0.99))} "
          f"max={ms(max(every))} (one read's round trip {ms(rtt)}; from the change's acknowledgement to the "
          f"end of the first read showing it)")
    for kind, xs in sorted(lag.items()):
        print(f"NEAR-LAG kind={kind} n={len(xs)} p50={ms(percentile(xs, 0.5))} p99={ms(percentile(xs, 0.99))} "
              f"max={ms(max(xs))}")


def test_an_absent_marker_is_dropped_when_the_key_appears(near, redis, pg):
    """A 404 held in the near cache (an absent marker) is invalidated like a
    document: the key set behind batchd's back is served once its
    invalidation arrived."""
    b = near()
    k0 = tracked(b)[0]
    with Http(b.port) as c:
        assert c.request("GET", "/v1/sessions/ghost").status == 404
        wait_tracked(b, k0 + 1, what="the absent marker's write-back, invalidated")
        r = local(c, "/v1/sessions/ghost")
        assert (r.status, r.json()) == (404, {"error": "not_found"})
        k0 = tracked(b)[0]
        redis.client().set("session:ghost", json.dumps({"id": "ghost", "title": "appeared"}))
        wait_tracked(b, k0 + 1)
        r = c.request("GET", "/v1/sessions/ghost")
    assert (r.status, r.json()["title"]) == (200, "appeared")


# --- 3: hot reads send no MGET ----------------------------------------------------------------


def test_hot_reads_send_no_mget(near, redis):
    """Warm, then 40 rounds of single, ?ids= and _batch reads of the same ten
    ids: every answer is local, Redis counts no new MGET, and the near
    cache counts one hit per id looked up. Duplicates are local too; an
    answer with one id not held is not local."""
    b = near()
    ids = list(range(301, 311))
    seed_seen(b, redis, ids, lambda i: f"hot {i}")
    q = ",".join(f"s{i}" for i in ids)
    body = json.dumps({"ids": [f"s{i}" for i in ids]})
    with Http(b.port) as c:
        hold_locally(c, ids)
        mget = redis.commandstats()["mget"]
        hits = b.metric("batchd_local_cache_results_total", resource="sessions", result="hit")
        for _ in range(40):
            for i in ids:
                r = c.request("GET", f"/v1/sessions/s{i}")
                assert (r.headers["x-cache"], r.json()["title"]) == ("local", f"hot {i}"), r
            r = c.request("GET", f"/v1/sessions?ids={q}")
            assert r.headers["x-cache"] == "local" and "server-timing" not in r.headers
            assert [d["title"] for d in r.json()] == [f"hot {i}" for i in ids]
            r = c.request("POST", "/v1/sessions/_batch", {"Content-Type": "application/json"}, body)
            assert r.headers["x-cache"] == "local" and len(r.json()) == len(ids)
        assert redis.commandstats()["mget"] == mget
        assert b.metric("batchd_local_cache_results_total", resource="sessions",
                        result="hit") == hits + 40 * 3 * len(ids)
        r = c.request("GET", f"/v1/sessions?ids=s{ids[1]},s{ids[0]},s{ids[1]}")
        assert r.headers["x-cache"] == "local" and [d["title"] for d in r.json()] == [f"hot {ids[1]}", f"hot {ids[0]}",
                                                                                      f"hot {ids[1]}"]
        assert redis.commandstats()["mget"] == mget
        r = c.request("GET", f"/v1/sessions?ids=s{ids[0]},s{ids[-1] + 1}")
        assert r.status == 200 and r.headers["x-cache"] in ("hit", "miss"), r


# --- 4: bounded in bytes -----------------------------------------------------------------------

PADDED = BY_IDS.replace("'message_count', ",
                        "'pad', repeat('x', CASE WHEN s.id = 's999' THEN 9000 ELSE 3000 END), 'message_count', ")


def test_bytes_never_exceed_the_bound_under_ten_times_its_size(near, redis, pg):
    """local_cache_bytes = 131072, and 440 distinct documents of about 3 KB
    (ten times that) read three times over: sampled all along, the near
    cache's bytes never exceed the bound, it evicts, and it still holds
    and serves documents. A 9 KB document (more than 1/16 of the bound) is
    never kept."""
    bound = 131072
    b = near(size=bound, by_ids=PADDED)
    ids = range(1, 441)
    samples, stop = [], threading.Event()

    def sampler():
        ops = Ops(b)
        while not stop.is_set():
            m = ops.metrics()
            samples.append((metric_of(m, "batchd_local_cache_bytes", resource="sessions"),
                            metric_of(m, "batchd_local_cache_entries", resource="sessions")))
        ops.close()

    t = threading.Thread(target=sampler)
    t.start()
    try:
        with Http(b.port) as c:
            for _ in range(3):
                for i in ids:
                    r = c.request("GET", f"/v1/sessions/s{i}")
                    assert r.status == 200 and len(r.body) > 3000
            r = local(c, "/v1/sessions/s440")
            assert r.json()["id"] == "s440"
            for _ in range(5):
                r = c.request("GET", "/v1/sessions/s999")
                assert r.status == 200 and len(r.body) > 9000 and r.headers["x-cache"] != "local"
    finally:
        stop.set()
        t.join()
    m = b.metrics()
    samples.append((metric_of(m, "batchd_local_cache_bytes", resource="sessions"),
                    metric_of(m, "batchd_local_cache_entries", resource="sessions")))
    assert len(samples) > 20
    assert max(s[0] for s in samples) <= bound, max(samples)
    assert samples[-1][0] > 0 and samples[-1][1] > 0
    # Each entry holds a document of over 3 KB: no more fit than the bound allows.
    assert max(s[1] for s in samples) <= bound // 3000
    assert metric_of(m, "batchd_local_cache_evictions_total", resource="sessions") > 0
    assert metric_of(m, "batchd_local_cache_limit_bytes", resource="sessions") == bound


# --- 6: PURGE ---------------------------------------------------------------------------------


def test_purge_drops_the_local_entry_at_once(near, redis, pg):
    """The row changes in PostgreSQL only (no invalidation from Redis); a
    PURGE through batchd drops the local entry at once: the next read is
    not local and shows the new row."""
    b = near()
    seed_seen(b, redis, [61], pg_title)  # not filled from PostgreSQL: no write-back's invalidation to come
    try:
        with Http(b.port) as c:
            assert local(c, "/v1/sessions/s61").json()["title"] == pg_title(61)
            pg.psql("UPDATE sessions SET title = 'purged' WHERE id = 's61'")
            assert c.request("GET", "/v1/sessions/s61").headers["x-cache"] == "local"  # still held
            writes = b.metric("batchd_local_cache_invalidations_total", resource="sessions", source="write")
            r = c.request("PURGE", "/v1/sessions/s61", SECRET)
            assert (r.status, r.json()) == (200, {"purged": "s61"})
            r = c.request("GET", "/v1/sessions/s61")
            assert (r.headers["x-cache"], r.json()["title"]) == ("miss", "purged")
        assert b.metric("batchd_local_cache_invalidations_total", resource="sessions",
                        source="write") == writes + 1
    finally:
        pg.psql("UPDATE sessions SET title = 'Conversation 61' WHERE id = 's61'")


# --- 5: read-your-write through batchd ---------------------------------------------------------


@pytest.fixture
def near_writes(start_batchd, redis, pg):
    """near_writes(redis_port=None, by_ids=BY_IDS) -> Batchd with the near cache on, an
    app that writes to PostgreSQL, and invalidate = /api/sessions/{id}."""
    a = App(conninfo=pg.conninfo())

    def _start(redis_port=None, by_ids=BY_IDS):
        conf = near_conf(redis_port or redis.port, pg, by_ids=by_ids, resource="invalidate = /api/sessions/{id}\n")
        b = start_batchd(batchd="admin_token = t\nlog_level = info\n", extra=conf + upstream_conf(a.port))
        return ready(b)

    yield _start
    a.stop()
    restore_titles(pg)


def test_read_your_write_on_the_same_and_another_connection(near_writes, pg):
    """30 writes through the proxy to ids held locally: the read after
    each, on the writer's connection and on another, shows the write. The
    write dropped the local entry itself (source="write"), once per write."""
    b = near_writes()
    writes = b.metric("batchd_local_cache_invalidations_total", resource="sessions", source="write")
    with Http(b.port) as w, Http(b.port) as other:
        for n in range(30):
            sid = f"s{71 + n % 5}"
            local(other, f"/v1/sessions/{sid}")
            assert w.request("PUT", f"/api/sessions/{sid}?title=w{n}").status == 200
            assert w.request("GET", f"/v1/sessions/{sid}").json()["title"] == f"w{n}"
            assert other.request("GET", f"/v1/sessions/{sid}").json()["title"] == f"w{n}"
    assert b.metric("batchd_local_cache_invalidations_total", resource="sessions", source="write") == writes + 30


# --- 11: access = owner -------------------------------------------------------------------------


@pytest.mark.parametrize("by_ids", [AUTH_BY_IDS, BY_IDS_NUM], ids=["text_owner", "number_owner"])
def test_owner_reads_locally_and_another_principal_gets_404(start_batchd, redis, pg, keys, by_ids):
    """access = owner with the near cache on: the owner's document comes
    from the near cache (X-Cache: local); another principal gets the same
    404 as for a missing id, with no X-Cache or Server-Timing, also while
    the document is held locally, and null in a batch. The owner field as
    text and as a number."""
    b = ready(start_batchd(batchd="admin_token = a\nlog_level = info\n",
                           extra=auth_conf(keys, redis.port, pg, by_ids=by_ids,
                                           resource=f"local_cache_bytes = {NEAR}\n")))
    a_id, b_id = owner_of(pg, "s1"), owner_of(pg, "s2")
    assert a_id != b_id
    ta, tb = bearer(mint(None, sub=a_id)), bearer(mint(None, sub=b_id))
    k0 = tracked(b)[0]
    with Http(b.port) as c:
        for path, who in [("/v1/sessions/s1", ta), ("/v1/sessions/s2", tb), ("/v1/sessions/nope", tb)]:
            c.request("GET", path, who)
        wait_tracked(b, k0 + 3, what="the write-backs' invalidations")  # or they drop what is held below
        r = local(c, "/v1/sessions/s1", ta)
        assert str(r.json()["owner_id"]) == a_id
        local(c, "/v1/sessions/s2", tb)
        not_owner = b.metric("batchd_resource_not_owner_total", resource="sessions")
        for _ in range(3):
            theirs = c.request("GET", "/v1/sessions/s1", tb)
            missing = c.request("GET", "/v1/sessions/nope", tb)
            assert theirs.status == missing.status == 404 and theirs.body == missing.body
            for h in ("x-cache", "server-timing"):
                assert h not in theirs.headers and h not in missing.headers
            assert c.request("GET", "/v1/sessions/s1", ta).headers["x-cache"] == "local"  # still held
            r = c.request("GET", "/v1/sessions?ids=s2,s1,nope", tb)
            docs = r.json()
            assert docs[0]["id"] == "s2" and docs[1] is None and docs[2] is None
            r = c.request("GET", "/v1/sessions?ids=s1,s2", ta)
            assert r.json()[0]["id"] == "s1" and r.json()[1] is None
        assert b.metric("batchd_resource_not_owner_total", resource="sessions") == not_owner + 9


def test_stream_owner_checks_read_the_near_cache_and_follow_a_change(start_batchd, redis, pg, keys):
    """The owner checks of a stream (owners_publish = yes, owner_resource
    near-cached) are internal reads through the near cache: a publish
    counts a local hit. The document's owner changed behind batchd's
    back, once the invalidation arrived the checks follow the new owner,
    for publishing and for subscribing."""
    b = ready(start_batchd(batchd="admin_token = a\nlog_level = info\n",
                           extra=auth_conf(keys, redis.port, pg, stream="owners_publish = yes\n",
                                           resource=f"local_cache_bytes = {NEAR}\n")))
    a_id, b_id = owner_of(pg, "s12"), owner_of(pg, "s13")
    ta, tb = bearer(mint(None, sub=a_id)), bearer(mint(None, sub=b_id))
    k0 = tracked(b)[0]
    redis.client().set(key(12), json.dumps({"id": "s12", "title": "t", "owner_id": a_id}))
    wait_tracked(b, k0 + 1)
    with Http(b.port) as c:
        local(c, "/v1/sessions/s12", ta)
        hits = b.metric("batchd_local_cache_results_total", resource="sessions", result="hit")
        assert c.request("POST", "/v1/sessions/s12/events", ta, "mine").status == 201
        assert b.metric("batchd_local_cache_results_total", resource="sessions", result="hit") == hits + 1
        assert c.request("POST", "/v1/sessions/s12/events", tb, "not mine").status == 404
        k0 = tracked(b)[0]
        redis.client().set(key(12), json.dumps({"id": "s12", "title": "t", "owner_id": b_id}))
        wait_tracked(b, k0 + 1)
        assert c.request("POST", "/v1/sessions/s12/events", ta, "no longer mine").status == 404
        assert c.request("POST", "/v1/sessions/s12/events", tb, "mine now").status == 201
    assert Sse(b.port, "s12", query=f"?access_token={ta['Authorization'][7:]}").status == 404
    s = Sse(b.port, "s12", query=f"?access_token={tb['Authorization'][7:]}")
    assert s.status == 200
    s.c.close()


# --- resources sharing key prefixes --------------------------------------------------------------

# A second resource on the very keys of the first (test_near_cache_races too).
SAME_KEY = f"""
[resource same]
path = /v1/same
key = session:{{id}}
ttl = 300
by_ids = {BY_IDS}
local_cache_bytes = {NEAR}
"""
SAME_PREFIX = SAME_KEY + f"""[resource arch]
path = /v1/arch
key = session:arch:{{id}}:v1
ttl = 300
by_ids = {BY_IDS}
local_cache_bytes = {NEAR}
"""


def test_resources_with_the_same_or_nested_key_prefix_are_all_kept_coherent(near, redis):
    """Three near-cached resources keyed session:{id}, session:{id} again,
    and session:arch:{id}:v1 (inside the first prefix, with a suffix).
    Redis refuses overlapping prefixes from one connection, yet tracking is
    confirmed (near waits for it), and each change reaches the entries of
    every resource the key belongs to, and only those."""
    b = near(extra=SAME_PREFIX)
    r = redis.client()
    k0 = tracked(b)[0]
    r.set(key(81), doc(81, "one"))
    r.set("session:arch:s81:v1", doc(81, "arch one"))
    wait_tracked(b, k0 + 2)
    with Http(b.port) as c:
        for path, title in [("/v1/sessions/s81", "one"), ("/v1/same/s81", "one"), ("/v1/arch/s81", "arch one")]:
            assert local(c, path).json()["title"] == title
        k0 = tracked(b)[0]
        r.set(key(81), doc(81, "two"))
        wait_tracked(b, k0 + 1)
        for path in ("/v1/sessions/s81", "/v1/same/s81"):
            assert c.request("GET", path).json()["title"] == "two", path
        assert c.request("GET", "/v1/arch/s81").headers["x-cache"] == "local"
        local(c, "/v1/sessions/s81")
        k0 = tracked(b)[0]
        r.set("session:arch:s81:v1", doc(81, "arch two"))
        r.set("session:arch:s81:v2", doc(81, "not arch's key"))
        wait_tracked(b, k0 + 2)
        assert c.request("GET", "/v1/arch/s81").json()["title"] == "arch two"
        for path in ("/v1/sessions/s81", "/v1/same/s81"):
            assert local(c, path).json()["title"] == "two"
        assert local(c, "/v1/arch/s81").json()["title"] == "arch two"
