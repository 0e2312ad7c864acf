"""The Redis Cluster harness itself (harness_cluster.py): the shape of the
cluster it starts, where keys live, a slot moved by hand (ASK while half
moved, MOVED after), and a primary killed and replaced by its replica.
batchd's own cluster tests rely on all of it."""

import time

import pytest
import redis

from harness_cluster import ephemeral_low, free_cluster_ports


def redirect(node, *cmd, asking=False):
    """The (kind, slot, port) of the redirection node answers to cmd, or None."""
    c = node.client()
    try:
        if asking:
            p = c.pipeline(transaction=False)
            p.execute_command("ASKING")
            p.execute_command(*cmd)
            p.execute()
        else:
            c.execute_command(*cmd)
        return None
    except redis.exceptions.ResponseError as e:  # "MOVED 3999 127.0.0.1:6381"
        kind, slot, addr = str(e).split()
        assert kind in ("MOVED", "ASK"), str(e)
        return kind, int(slot), int(addr.rsplit(":", 1)[1])


def test_three_primaries_each_with_a_replica(cluster):
    prim, reps = cluster.primaries(), cluster.replicas()
    assert len(prim) == 3 and len(reps) == 3
    masters = sorted(r.info("replication")["master_port"] for r in reps)
    assert masters == sorted(p.port for p in prim)
    view = cluster.live()[0].slots()
    assert sum(e - s + 1 for s, e, _, _ in view) == 16384
    assert all(len(r) == 1 for _, _, _, r in view)
    assert all(n.port + 10000 <= 65535 for n in cluster.nodes)
    seeds = cluster.seeds().split(",")
    assert len(seeds) == 6 and all(s.startswith("127.0.0.1:") for s in seeds)
    assert len({n.id for n in cluster.nodes}) == 6


def test_keys_spread_and_other_nodes_redirect(cluster):
    keys = [f"item:{i}" for i in range(300)]
    for k in keys:
        cluster.node_for_key(k).client().set(k, k)
    per_node = {p.port: p.client().dbsize() for p in cluster.primaries()}
    assert sum(per_node.values()) == 300
    assert all(n > 50 for n in per_node.values()), per_node
    k = keys[0]
    owner, slot = cluster.node_for_key(k), cluster.keyslot(k)
    other = next(p for p in cluster.primaries() if p is not owner)
    assert redirect(other, "GET", k) == ("MOVED", slot, owner.port)
    stats = cluster.commandstats()
    # Replicas count the SETs they apply too.
    assert sum(stats[p.port].get("set", 0) for p in cluster.primaries()) == 300
    assert sum(stats[r.port].get("set", 0) for r in cluster.replicas()) == 300
    assert stats[owner.port]["set"] == per_node[owner.port]
    cluster.reset_stats()
    assert all("set" not in s for s in cluster.commandstats().values())


def test_migrate_slot_moves_keys_and_the_old_owner_says_moved(cluster):
    k = "{user1000}.following"
    slot = cluster.keyslot(k)
    src = cluster.node_for_key(k)
    src.client().set(k, "v")
    src.client().set("{user1000}.followers", "w")
    dst = next(p for p in cluster.primaries() if p is not src)
    cluster.migrate_slot(slot, dst)
    assert cluster.node_for_key(k) is dst
    assert dst.client().mget(k, "{user1000}.followers") == [b"v", b"w"]
    assert src.client().dbsize() == 0
    assert redirect(src, "GET", k) == ("MOVED", slot, dst.port)
    # Every live node, replicas too, has learnt it.
    assert all((s, e) for n in cluster.live() for s, e, port, _ in n.slots()
               if s <= slot <= e and port == dst.port)


def test_half_migrated_slot_answers_ask_for_moved_keys(cluster):
    a, b = "{tag}a", "{tag}b"
    slot = cluster.keyslot(a)
    src = cluster.node_for_key(a)
    src.client().mset({a: "1", b: "2"})
    dst = next(p for p in cluster.primaries() if p is not src)
    assert cluster.begin_migration(slot, dst) is src
    assert cluster.move_keys(slot, 1) == 1
    (kept,) = src.cmd("CLUSTER", "GETKEYSINSLOT", slot, 10)
    kept = kept.decode()
    moved = b if kept == a else a
    assert src.client().get(kept) is not None
    assert redirect(src, "GET", moved) == ("ASK", slot, dst.port)
    assert redirect(dst, "GET", moved) == ("MOVED", slot, src.port)  # not without ASKING
    assert redirect(dst, "GET", moved, asking=True) is None
    assert not cluster.healthy()  # half migrated: the fixture would renew
    cluster.finish_migration(slot)
    assert dst.client().mget(a, b) == [b"1", b"2"]
    assert redirect(src, "GET", kept) == ("MOVED", slot, dst.port)
    assert cluster.healthy()


def test_kill_primary_promotes_its_replica_and_the_old_one_rejoins(cluster):
    k = "failover:key"
    old = cluster.node_for_key(k)
    old.client().set(k, "kept")
    assert old.cmd("WAIT", 1, 2000) == 1  # on the replica before the kill
    slots = cluster.slots_of(old)
    t0 = time.monotonic()
    cluster.kill_primary(old)
    new = cluster.wait_failover(old)
    took = time.monotonic() - t0
    assert new.role() == "master" and new is not old
    assert cluster.slots_of(new) == slots
    assert cluster.node_for_key(k) is new
    assert new.client().get(k) == b"kept"
    assert took < 10, f"failover took {took:.1f} s"
    assert not cluster.healthy()
    cluster.restart(old)
    assert old.role() == "slave"
    assert old.info("replication")["master_port"] == new.port
    cluster.wait_healthy(timeout=10)


def test_renew_replaces_a_broken_cluster(cluster):
    # What the `cluster` fixture does when a test left a primary dead.
    victim = cluster.primaries()[0]
    cluster.kill_primary(victim)
    assert not cluster.healthy()
    cluster.renew()
    assert cluster.healthy()
    assert victim not in cluster.nodes and all(n.alive() for n in cluster.nodes)
    assert len(cluster.primaries()) == 3 and cluster.live()[0].client().dbsize() == 0


def test_free_cluster_ports_stay_below_the_ephemeral_range():
    low = ephemeral_low()
    ports = free_cluster_ports(6, base=21000)
    assert ports == sorted(set(ports)) and ports[0] >= 21000
    # Neither a node's port nor its bus port can be one free_port() hands out.
    assert all(p + 10000 < low for p in ports)
    with pytest.raises(RuntimeError):
        free_cluster_ports(6, base=low - 10003)
