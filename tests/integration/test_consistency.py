"""Read-your-write through batchd while other clients read the same ids,
made deterministic with a proxy in front of Redis (redis_proxy.py) that
holds the invalidation on its way to Redis and another reader's MGET reply
on its way back. The rule under test: once the invalidation of an id has
completed (and so the write's answer was relayed), no reader arriving later
is answered from anything read before it completed."""

import threading

import pytest

from harness import Http, get, wait_until
from redis_proxy import RedisProxy
from test_proxy import App, restore_titles, upstream_conf
from test_resource import resource_conf


@pytest.fixture
def proxied(start_batchd, redis, pg):
    proxy = RedisProxy(redis.port)
    app = App(conninfo=pg.conninfo())
    conf = resource_conf(proxy.port, pg, resource="invalidate = /api/sessions/{id}\n")
    b = start_batchd(batchd="admin_token = t\n", extra=conf + upstream_conf(app.port))
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="backends")
    yield b, proxy
    app.stop()
    proxy.close()
    restore_titles(pg)


def is_invalidation_of(key):
    # EVALSHA sha 2 <key> batchd:inval:{<key>} <now> <ttl>
    return lambda a: a[0].upper() == b"EVALSHA" and len(a) == 7 and a[3] == key


def is_mget_of(key):
    return lambda a: a[0].upper() == b"MGET" and key in a[1:]


@pytest.mark.parametrize("attempt", range(3))
def test_a_read_after_the_write_never_joins_a_read_from_before_it(proxied, redis, attempt):
    b, proxy = proxied
    sid, key = "s5", b"session:s5"
    assert get(b.port, f"/v1/sessions/{sid}").status == 200
    wait_until(lambda: redis.client().exists(key.decode()) == 1, what="the write-back")
    proxy.hold_command(is_invalidation_of(key), 0.3)
    proxy.hold_reply(is_mget_of(key), 0.6)
    new = f"after-{attempt}"
    seen = {}

    def writer():
        with Http(b.port) as c:
            assert c.request("PUT", f"/api/sessions/{sid}?title={new}").status == 200
            seen["writer"] = c.request("GET", f"/v1/sessions/{sid}").json()["title"]

    def reader():
        seen["reader"] = get(b.port, f"/v1/sessions/{sid}").json()["title"]

    w = threading.Thread(target=writer)
    w.start()
    # The invalidation is on its way (held); now another client reads: its
    # MGET runs before the DEL, and its reply is held past the invalidation.
    wait_until(lambda: any(k == "command" for k, _ in proxy.held), what="the invalidation to be sent")
    r = threading.Thread(target=reader)
    r.start()
    wait_until(lambda: len(proxy.held) == 2, what="the reader's MGET")
    w.join(10)
    r.join(10)
    # The reader was concurrent with the write: either value is allowed.
    # The writer asked after its write was answered: only the new one is.
    assert seen["writer"] == new, f"stale read after the write: {seen}"
    assert seen["reader"] in (new, f"Conversation {sid[1:]}", f"after-{attempt - 1}")
    assert b.metric("batchd_invalidation_unjoined_total", resource="sessions") == 1
