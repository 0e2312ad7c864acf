"""Redis Cluster ([redis] cluster = yes) against a real 6-node cluster
(3 primaries, a replica each; harness_cluster.py) and PostgreSQL: reads
spread over the primaries, one MGET per slot with each node's in one flush,
write-backs and tombstones in their key's slot, PURGE, a slot moved under
reads (ASK, then MOVED), a primary killed (its replica promoted) with no
5xx, and SSE on sharded pub/sub. Evidence: each node's INFO commandstats
and keys, pg_stat_statements, what the clients received."""

import json
import subprocess
import threading

import pytest

from harness import Http, get, request, wait_until
from test_events import Sse, data_of
from test_lists import rows, secret_file  # noqa: F401 (fixtures)
from test_resource import BY_IDS, BY_IDS_LIKE

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def cluster_conf(cluster, pg, key="session:{id}", resource="", extra=""):
    return f"""
[redis]
url = redis://{cluster.seeds()}/0
cluster = yes
cluster_refresh_ms = 1000
pool_size = 2
connect_timeout_ms = 500
command_timeout_ms = 1000
ping_interval_ms = 300
[postgres]
conninfo = {pg.conninfo()}
pool_size = 2
[resource sessions]
path = /v1/sessions
key = {key}
ttl = 300
negative_ttl = 30
max_ids = 100
by_ids = {BY_IDS}
{resource}
[stream session-events]
path = /v1/sessions/{{id}}/events
key = events:session:{{id}}
max_len = 1000
ping_interval_ms = 15000
{extra}
"""


@pytest.fixture
def app(start_batchd, cluster, pg):
    def _start(**kw):
        b = start_batchd(batchd=f"admin_token = {TOKEN}\n", extra=cluster_conf(cluster, pg, **kw))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1
                   and b.metric("batchd_redis_cluster_slots_covered") == 16384
                   and b.metric("batchd_redis_cluster_primaries") == 3,
                   what="cluster slot map and connections")
        return b
    return _start


def mgets(cluster):
    return {n.port: s.get("mget", 0) for n, s in ((n, cluster.by_port(n.port).commandstats())
                                                   for n in cluster.primaries())}


def expected(i):
    return {"id": f"s{i}", "title": f"Conversation {i}"}


def shown(doc):
    return doc and {"id": doc["id"], "title": doc["title"]}


def batch(port, ids):
    r = get(port, "/v1/sessions?ids=" + ",".join(ids))
    assert r.status == 200, r
    return [shown(d) for d in r.json()]


def written_back(cluster, n):
    """Waits until the cluster holds n keys: write-backs land after the answer."""
    wait_until(lambda: sum(p.client().dbsize() for p in cluster.primaries()) >= n, what=f"{n} keys written back")


class Readers:
    """n threads reading the same batch until the block ends; every answer
    that is not 200 with the right documents is kept in .bad."""

    def __init__(self, port, n_ids, n=1):
        self.ids = [f"s{i}" for i in range(1, n_ids + 1)]
        self.want = [expected(i) for i in range(1, n_ids + 1)]
        self.port, self.stop, self.bad, self.seen = port, threading.Event(), [], 0
        self.threads = [threading.Thread(target=self.run) for _ in range(n)]

    def run(self):
        while not self.stop.is_set():
            r = get(self.port, "/v1/sessions?ids=" + ",".join(self.ids))
            self.seen += 1
            if r.status != 200 or [shown(d) for d in r.json()] != self.want:
                self.bad.append(r)

    def more(self, k):
        """Waits for k more answers."""
        n0 = self.seen
        wait_until(lambda: self.seen > n0 + k, what=f"{k} more reads")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_documents_spread_over_every_primary_and_batches_are_right(app, cluster, pg):
    b = app()
    ids = [f"s{i}" for i in range(1, 1001)]
    for i in range(0, 1000, 50):
        assert batch(b.port, ids[i:i + 50]) == [expected(j) for j in range(i + 1, i + 51)]
    written_back(cluster, 1000)
    per_node = {n.port: n.client().dbsize() for n in cluster.primaries()}
    # 1,000 documents and their tombstone-free write-backs: every one is on
    # the primary of its slot, and every primary holds a share.
    assert sum(per_node.values()) == 1000, per_node
    assert all(v > 200 for v in per_node.values()), per_node
    for i in (1, 333, 999):
        owner = cluster.node_for_key(f"session:s{i}")
        assert shown(json.loads(owner.client().get(f"session:s{i}"))) == expected(i)
    assert pg.calls(BY_IDS_LIKE) >= 20
    # Warm: the same batches again come from the cluster alone.
    pg.reset_stats()
    cluster.reset_stats()
    for i in range(0, 1000, 50):
        assert batch(b.port, ids[i:i + 50]) == [expected(j) for j in range(i + 1, i + 51)]
    assert pg.calls(BY_IDS_LIKE) == 0
    assert b.metric("batchd_redis_cluster_mget_part_failures_total") == 0


def test_one_read_per_node_per_flush(app, cluster, pg):
    b = app()
    ids = [f"s{i}" for i in range(1, 51)]
    assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]  # cold: loads, writes back
    written_back(cluster, 50)
    cluster.reset_stats()
    assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    keys = {}
    for i in ids:
        k = f"session:{i}"
        keys.setdefault(cluster.node_for_key(k).port, []).append(k)
    stats = {p.port: cluster.by_port(p.port).commandstats() for p in cluster.primaries()}
    # Redis Cluster refuses an MGET across slots (CROSSSLOT): the flush's
    # keys of a node go in one call of a read-only script allowed to read
    # several slots (Redis 7 allow-cross-slot-keys), one GET a key inside.
    assert {p: s.get("evalsha", 0) for p, s in stats.items()} == {p: 1 for p in keys}, stats
    assert {p: s.get("get", 0) for p, s in stats.items()} == {p: len(k) for p, k in keys.items()}, stats
    assert all(s.get("mget", 0) == 0 for s in stats.values()), stats
    assert b.metric("batchd_redis_cluster_read_script_fallbacks_total") == 0


def test_hash_tagged_keys_take_one_mget_on_one_node(app, cluster, pg):
    b = app(key="{sessions}:{id}")
    ids = [f"s{i}" for i in range(1, 51)]
    assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    written_back(cluster, 50)
    cluster.reset_stats()
    assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    owner = cluster.node_for_key("{sessions}:s1")
    assert mgets(cluster) == {p.port: (1 if p.port == owner.port else 0) for p in cluster.primaries()}


def test_purge_and_tombstones_live_in_the_keys_slot(app, cluster, pg):
    b = app()
    assert batch(b.port, ["s7", "s8"]) == [expected(7), expected(8)]
    written_back(cluster, 2)
    owner = cluster.node_for_key("session:s7")
    assert owner.client().exists("session:s7")
    pg.psql("UPDATE sessions SET title = 'Renamed 7' WHERE id = 's7'")
    try:
        r = request(b.port, "PURGE", "/v1/sessions/s7", AUTH)
        assert r.status == 200, r
        assert not owner.client().exists("session:s7")
        assert owner.client().exists("batchd:inval:{session:s7}")
        assert cluster.keyslot("batchd:inval:{session:s7}") == cluster.keyslot("session:s7")
        assert get(b.port, "/v1/sessions/s7").json()["title"] == "Renamed 7"
    finally:
        pg.psql("UPDATE sessions SET title = 'Conversation 7' WHERE id = 's7'")


def test_pipelined_purge_then_read_on_one_connection_is_fresh(app, cluster, pg):
    """PURGE and GET of the same id pipelined on one connection: the read
    runs after the invalidation (its script on the key's node) and sees the
    new row, for ids on every primary."""
    b = app()
    ids = ["s11", "s12", "s13", "s14", "s15", "s16"]
    assert batch(b.port, ids) == [expected(int(i[1:])) for i in ids]
    written_back(cluster, len(ids))
    assert len({cluster.node_for_key(f"session:{i}").port for i in ids}) == 3
    pg.psql("UPDATE sessions SET title = 'Fresh ' || id WHERE id IN ('s11','s12','s13','s14','s15','s16')")
    try:
        with Http(b.port) as c:
            c.send("".join(f"PURGE /v1/sessions/{i} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                           f"GET /v1/sessions/{i} HTTP/1.1\r\nHost: t\r\n\r\n" for i in ids))
            for i in ids:
                assert c.read_response().status == 200
                r = c.read_response()
                assert (r.status, r.json()["title"]) == (200, f"Fresh {i}"), r
    finally:
        pg.psql("UPDATE sessions SET title = 'Conversation ' || substr(id, 2) "
                "WHERE id IN ('s11','s12','s13','s14','s15','s16')")


def test_a_slot_moved_during_reads_gives_no_wrong_answer(app, cluster, pg):
    b = app()
    ids = [f"s{i}" for i in range(1, 101)]
    assert batch(b.port, ids) == [expected(i) for i in range(1, 101)]
    written_back(cluster, 100)
    key = "session:s5"
    slot = cluster.keyslot(key)
    src = cluster.node_for_key(key)
    dst = next(p for p in cluster.primaries() if p.port != src.port)
    with Readers(b.port, 100) as rd:
        cluster.begin_migration(slot, dst)
        rd.more(3)  # reads while the slot is marked moving, its keys still on src
        cluster.move_keys(slot)
        rd.more(3)  # reads while s5 is on dst and the slot still src's: ASK
        cluster.finish_migration(slot)
        wait_until(lambda: b.metric("batchd_redis_cluster_map_changes_total") >= 1, what="new slot map")
        rd.more(5)
    assert not rd.bad, rd.bad[:3]
    assert dst.client().exists(key)
    # While s5 was on dst and its slot still src's, src's read script met a
    # key it no longer serves: those keys went again a slot at a time (ASK).
    assert b.metric("batchd_redis_cluster_read_script_fallbacks_total") >= 1
    cluster.reset_stats()
    assert shown(get(b.port, "/v1/sessions/s5").json()) == expected(5)
    assert cluster.by_port(dst.port).commandstats().get("mget", 0) + \
        cluster.by_port(dst.port).commandstats().get("get", 0) >= 1


def test_ask_and_moved_are_followed_for_a_slot_half_moved_then_moved(app, cluster, pg):
    b = app()
    assert batch(b.port, ["s9"]) == [expected(9)]
    written_back(cluster, 1)
    key = "session:s9"
    slot = cluster.keyslot(key)
    src = cluster.node_for_key(key)
    dst = next(p for p in cluster.primaries() if p.port != src.port)
    cluster.begin_migration(slot, dst)
    assert cluster.move_keys(slot) >= 1  # s9 is on dst now; src answers ASK for it
    pg.reset_stats()
    cluster.reset_stats()
    assert batch(b.port, ["s9"]) == [expected(9)]
    assert b.metric("batchd_redis_cluster_redirects_total", kind="ask") == 1
    assert cluster.by_port(dst.port).commandstats().get("asking", 0) == 1
    assert pg.calls(BY_IDS_LIKE) == 0  # found on dst after ASKING, not reloaded
    cluster.finish_migration(slot)
    moved0 = b.metric("batchd_redis_cluster_redirects_total", kind="moved")
    assert batch(b.port, ["s9"]) == [expected(9)]
    # Either the map was renewed first or the read met MOVED and was resent.
    wait_until(lambda: b.metric("batchd_redis_cluster_map_changes_total") >= 1, what="the new map")
    assert b.metric("batchd_redis_cluster_redirects_total", kind="moved") - moved0 <= 1
    assert pg.calls(BY_IDS_LIKE) == 0


def test_a_killed_primary_gives_no_5xx_and_the_cache_comes_back(app, cluster, pg):
    b = app()
    ids = [f"s{i}" for i in range(1, 51)]
    assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    victim = cluster.node_for_key("session:s1")
    with Readers(b.port, 50) as rd:
        cluster.kill_primary(victim)
        promoted = cluster.wait_failover(victim)
        wait_until(lambda: b.metric("batchd_redis_cluster_primaries") == 3 and
                   b.metric("batchd_redis_node_up", node=f"127.0.0.1:{promoted.port}") == 1,
                   timeout=20, what="batchd on the promoted replica")
        rd.more(5)
    assert not rd.bad, rd.bad[:3]
    pg.reset_stats()
    cluster.by_port(promoted.port).client().config_resetstat()
    for _ in range(3):
        assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    # Served by the cluster again, the promoted replica included: once what
    # the replica had not received yet is written back, no PostgreSQL read.
    assert cluster.by_port(promoted.port).commandstats().get("evalsha", 0) >= 1
    written_back(cluster, 50)
    pg.reset_stats()
    assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    assert pg.calls(BY_IDS_LIKE) == 0


# --- SSE on sharded pub/sub --------------------------------------------------------------


def publish(port, sid, data):
    return request(port, "POST", f"/v1/sessions/{sid}/events", AUTH, data)


def sids_on_three_nodes(cluster):
    out, ports = [], set()
    for i in range(1, 200):
        sid = f"c{i}"
        p = cluster.node_for_key(f"events:session:{sid}").port
        if p not in ports:
            ports.add(p)
            out.append(sid)
        if len(out) == 3:
            return out
    raise AssertionError("no three channels on three nodes")


def test_sse_on_three_nodes_resume_and_no_loss_when_a_pubsub_connection_dies(app, cluster):
    b = app()
    sids = sids_on_three_nodes(cluster)
    subs = {sid: Sse(b.port, sid) for sid in sids}
    try:
        wait_until(lambda: b.metric("batchd_sse_channels") == 3, what="three channels")
        first = {}
        for sid in sids:
            r = publish(b.port, sid, f"{sid}-1")
            assert r.status == 201, r
            f = subs[sid].events(1)[0]
            assert data_of(f) == f"{sid}-1"
            first[sid] = f["id"][0]
        # Each Stream and its shard channel live on the channel's node.
        for sid in sids:
            node = cluster.node_for_key(f"events:session:{sid}")
            assert node.client().xlen(f"events:session:{sid}") == 1
            assert cluster.by_port(node.port).commandstats().get("spublish", 0) >= 1
        # One node's pub/sub connection killed: its channel refills from the Stream.
        victim = cluster.node_for_key(f"events:session:{sids[0]}")
        killed = victim.client().client_kill_filter(_type="pubsub")
        assert killed >= 1
        for k in range(2, 6):
            for sid in sids:
                assert publish(b.port, sid, f"{sid}-{k}").status == 201
        for sid in sids:
            got = [data_of(f) for f in subs[sid].events(4)]
            assert got == [f"{sid}-{k}" for k in range(2, 6)], (sid, got)
        # The victim's channel was refilled from its Stream (the others stayed).
        assert b.metric("batchd_sse_resyncs_total", stream="session-events") >= 1
        # Resume: a new client with Last-Event-ID gets what followed.
        again = Sse(b.port, sids[1], last_id=first[sids[1]])
        try:
            assert [data_of(f) for f in again.events(4)] == [f"{sids[1]}-{k}" for k in range(2, 6)]
        finally:
            again.close()
    finally:
        for s in subs.values():
            s.close()


# --- the near cache over a cluster ---------------------------------------------------------


def local_read(c, path):
    return wait_until(lambda: (lambda r: r if r.headers.get("x-cache") == "local" else None)(
        c.request("GET", path)), what=f"{path} held locally")


def test_near_cache_is_kept_coherent_by_every_primary(app, cluster, pg):
    b = app(resource="local_cache_bytes = 1048576\n")
    wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking on every primary")
    sids = []
    for i in range(1, 100):
        port = cluster.node_for_key(f"session:s{i}").port
        if port not in [p for p, _ in sids]:
            sids.append((port, i))
    assert len(sids) == 3
    with Http(b.port) as c:
        for _, i in sids:
            assert shown(local_read(c, f"/v1/sessions/s{i}").json()) == expected(i)
        # A change behind batchd's back, on each node: the next read is fresh.
        for port, i in sids:
            n = b.metric("batchd_redis_tracking_keys_total")
            cluster.by_port(port).client().set(f"session:s{i}", json.dumps({"id": f"s{i}", "title": f"changed {i}"}))
            wait_until(lambda: b.metric("batchd_redis_tracking_keys_total") > n, what="the invalidation")
            r = c.request("GET", f"/v1/sessions/s{i}")
            assert (r.headers["x-cache"], r.json()["title"]) == ("hit", f"changed {i}"), r
        # A primary lost: tracking is down (near cache bypassed) until every primary confirms it again.
        victim = cluster.by_port(sids[0][0])
        cluster.kill_primary(victim)
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 0, what="tracking down")
        r = c.request("GET", f"/v1/sessions/s{sids[1][1]}")
        assert r.status == 200 and r.headers["x-cache"] != "local", r
        cluster.wait_failover(victim)
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, timeout=20, what="tracking up again")
        i = sids[0][1]
        r = local_read(c, f"/v1/sessions/s{i}")
        assert r.json()["title"] in (f"changed {i}", f"Conversation {i}")


def test_a_first_subscriber_gets_an_event_published_at_once_on_each_node(app, cluster):
    """A channel's first subscriber: the answer's head is out, the SSUBSCRIBE
    may not be confirmed yet; an event published right then is not lost."""
    b = app()
    for sid in sids_on_three_nodes(cluster):
        s = Sse(b.port, sid)
        try:
            r = publish(b.port, sid, f"first {sid}")
            assert r.status == 201, r
            f = s.events(1)[0]
            assert (f["id"][0], data_of(f)) == (r.json()["id"], f"first {sid}")
        finally:
            s.close()


def test_sse_channel_follows_its_slot_to_another_node(app, cluster):
    b = app()
    sid = "m1"
    key = f"events:session:{sid}"
    sub = Sse(b.port, sid)
    try:
        wait_until(lambda: b.metric("batchd_sse_channels") == 1, what="the channel")
        assert publish(b.port, sid, "before").status == 201
        assert data_of(sub.events(1)[0]) == "before"
        slot = cluster.keyslot(key)
        src = cluster.node_for_key(key)
        dst = next(p for p in cluster.primaries() if p.port != src.port)
        cluster.migrate_slot(slot, dst)
        # Published at once, while batchd may still be on the old node (Redis
        # unsubscribes the shard channel there; batchd moves it): from the Stream.
        for k in range(3):
            r = publish(b.port, sid, f"after-{k}")
            assert r.status == 201, r
        wait_until(lambda: cluster.by_port(dst.port).commandstats().get("ssubscribe", 0) >= 1,
                   what="the channel subscribed on its new node")
        for k in range(3, 5):
            assert publish(b.port, sid, f"after-{k}").status == 201
        assert [data_of(f) for f in sub.events(5)] == [f"after-{k}" for k in range(5)]
        assert dst.client().xlen(key) == 6
    finally:
        sub.close()


def test_redis_cli_reshard_under_reads_gives_no_wrong_answer(app, cluster, pg):
    """redis-cli --cluster reshard moves 200 slots (keys included) from one
    primary to another while three readers keep asking for 100 ids."""
    b = app()
    ids = [f"s{i}" for i in range(1, 101)]
    assert batch(b.port, ids) == [expected(i) for i in range(1, 101)]
    written_back(cluster, 100)
    prim = cluster.primaries()
    src, dst = prim[0], prim[1]
    with Readers(b.port, 100, n=3) as rd:
        out = subprocess.run(["redis-cli", "--cluster", "reshard", src.addr, "--cluster-from", src.id,
                              "--cluster-to", dst.id, "--cluster-slots", "200", "--cluster-yes",
                              "--cluster-pipeline", "10"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-500:]
        cluster.wait_agreed()
        wait_until(lambda: b.metric("batchd_redis_cluster_map_changes_total") >= 1, what="the new map")
        rd.more(10)
    assert not rd.bad, rd.bad[:3]
    assert rd.seen > 20


# --- lists over a cluster ------------------------------------------------------------------------


def test_list_pages_and_their_cache_on_a_cluster(start_batchd, cluster, pg, rows, secret_file):
    import test_lists as tl
    conf = tl.list_conf(0, pg, secret_file).replace(
        "url = redis://127.0.0.1:0/0", f"url = redis://{cluster.seeds()}/0\ncluster = yes")
    b = start_batchd(extra=conf)
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_redis_cluster_slots_covered") == 16384,
               what="the cluster")
    pg.reset_stats()
    ids, pages = tl.walk(b, tl.A, 50)
    assert ids == tl.newest_first(tl.A) and pages == 20
    first = pg.calls(tl.PAGE_LIKE)
    assert first == 20
    again, _ = tl.walk(b, tl.A, 50)
    assert again == ids
    assert pg.calls(tl.PAGE_LIKE) == first  # every page from its hash on the principal's node
    hgets = sum(n.commandstats().get("hget", 0) for n in cluster.primaries())
    assert hgets >= 40
    # bob never sees alice's
    bob, _ = tl.walk(b, tl.B, 100)
    assert bob == tl.newest_first(tl.B)


# --- the three together: workers, a cluster, a reload ---------------------------------------------


def test_two_workers_on_a_cluster_serve_and_reload(start_batchd, cluster, pg):
    """Each worker keeps its own pools to every primary; both read through
    the cluster, and a SIGHUP reload (a new cluster_refresh_ms) keeps them
    serving."""
    import signal

    from test_workers import per_worker, scrape, worker_pids
    b = start_batchd(batchd=f"admin_token = {TOKEN}\nworkers = 2\n", extra=cluster_conf(cluster, pg))
    pids = worker_pids(b.ops_port)
    wait_until(lambda: set(per_worker(scrape(b), "batchd_redis_cluster_slots_covered").values()) == {16384}
               and len(per_worker(scrape(b), "batchd_redis_cluster_slots_covered")) == 2,
               what="both workers on the slot map")
    ids = [f"s{i}" for i in range(1, 51)]
    for _ in range(20):  # new connections: the kernel spreads them over both workers
        assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    reads = per_worker(scrape(b), "batchd_http_requests_total")
    assert len(reads) == 2 and all(v > 0 for v in reads.values()), reads
    conf = b.conf.read_text()
    assert "cluster_refresh_ms = 1000" in conf
    b.conf.write_text(conf.replace("cluster_refresh_ms = 1000", "cluster_refresh_ms = 2000"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: 'msg="workers reloaded"' in b.log(), what="both workers reloaded")
    log = b.log()
    assert 'msg="reloaded" worker=0' in log and 'msg="reloaded" worker=1' in log
    for _ in range(10):
        assert batch(b.port, ids) == [expected(i) for i in range(1, 51)]
    assert worker_pids(b.ops_port) == pids  # reloaded in place, not restarted
