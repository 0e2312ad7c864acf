"""A session that exists is never answered as missing, whatever the order
in which an invalidation, a read from before it and a read from after it
finish. Made deterministic with a proxy in front of Redis (redis_proxy.py).

The race: read A's MGET of s<N> is on its way when s<N> is invalidated, so
A's entry leaves the table (nobody may join it); read B then loads s<N>
afresh from PostgreSQL, and its entry stays in the table while its
write-back is on its way to Redis. When A's MGET comes back as a miss, A
queries PostgreSQL with a new chunk. B's chunk is freed by then, and the
allocator hands its address to A's chunk: an entry that remembered its
(freed) chunk's address as its owner then looked like a member of A's
chunk, the row PostgreSQL returned for s<N> went to it (already resolved,
so it was dropped as a duplicate), and A's own entry, given no row, was
answered "not found".

The allocator reuses a freed chunk of the same size at once (glibc's
tcache); under AddressSanitizer only without its quarantine, so this test
turns the quarantine off for its batchd."""

import threading

import pytest

from harness import Http, SAN_ENV, get, request, wait_until
from redis_proxy import RedisProxy
from test_resource import resource_conf

ROUNDS = 8


@pytest.fixture
def proxied(start_batchd, redis, pg):
    proxy = RedisProxy(redis.port)
    conf = resource_conf(proxy.port, pg)
    env = {"ASAN_OPTIONS": SAN_ENV["ASAN_OPTIONS"] + ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0"}
    b = start_batchd(batchd="admin_token = t\n", extra=conf, env=env)
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="backends")
    yield b, proxy
    proxy.close()


def is_mget_of(key):
    return lambda a: a[0].upper() == b"MGET" and key in a[1:]


def is_writeback_of(key):
    # EVALSHA sha 2 <key> batchd:inval:{<key>} <start> <document> <ttl>
    return lambda a: a[0].upper() == b"EVALSHA" and len(a) == 8 and a[3] == key


def test_a_read_that_raced_an_invalidation_still_finds_the_row(proxied, redis):
    b, proxy = proxied
    answers = []
    for i in range(ROUNDS):
        sid, others = f"s{200 + 3 * i}", [f"s{201 + 3 * i}", f"s{202 + 3 * i}"]
        key = f"session:{sid}".encode()
        # The other two ids are cached, so read A's MGET asks for three keys
        # and only s<N> goes on to PostgreSQL: A's MGET chunk is of another
        # size than a one-id by_ids chunk, so the allocator gives A's by_ids
        # chunk the one B freed, not the one A's MGET just freed.
        assert get(b.port, "/v1/sessions?ids=" + ",".join(others)).status == 200
        wait_until(lambda: all(redis.client().exists(f"session:{o}") for o in others), what="the write-back")
        proxy.hold_reply(is_mget_of(key), 0.4)
        proxy.hold_reply(is_writeback_of(key), 0.8)
        seen = {}

        def reader_a():
            seen["a"] = get(b.port, f"/v1/sessions?ids={sid},{','.join(others)}")

        a = threading.Thread(target=reader_a)
        a.start()
        wait_until(lambda: len(proxy.held) == 2 * i + 1, what="read A's MGET")
        # s<N> is invalidated while A's MGET is on its way: A's entry leaves
        # the table.
        assert request(b.port, "PURGE", f"/v1/sessions/{sid}", {"Authorization": "Bearer t"}).status == 200
        # Read B loads s<N> afresh; its entry stays in the table until its
        # write-back (held) is acknowledged, past A's MGET reply.
        with Http(b.port) as c:
            rb = c.request("GET", f"/v1/sessions/{sid}")
            assert rb.status == 200, rb
            wait_until(lambda: len(proxy.held) == 2 * i + 2, what="read B's write-back")
            a.join(10)
        # The next round starts with no reply held.
        wait_until(lambda: b.metric("batchd_cache_writebacks_in_flight") == 0, what="B's write-back")
        answers.append((sid, seen["a"].status, seen["a"].json()))
    wrong = [(sid, st, body) for sid, st, body in answers if st != 200 or body[0] is None]
    assert not wrong, f"{len(wrong)} of {ROUNDS} reads answered an existing session as missing: {wrong}"
    assert all(body[0]["id"] == sid for sid, _, body in answers)
