"""The near cache applies every invalidation that reached batchd before it
answers a read: one read in the same loop iteration as the read (answers
from the near cache wait for the end of the iteration), a backlog larger
than one read of the pub/sub socket (it is drained first), and an
invalidation of an id whose load is on its way (later readers do not join
that load). Made deterministic by stopping batchd (SIGSTOP) while the read
and the change's invalidation message land in its socket buffers, then
letting it run (SIGCONT), or by holding an MGET reply."""

import json
import os
import signal
import socket

import threading

import pytest

from harness import get, stop_process, wait_until
from redis_proxy import RedisProxy
from test_resource import resource_conf


def read_answer(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    headers = {l.split(b":")[0].decode().lower(): l.split(b":", 1)[1].strip().decode()
               for l in head.split(b"\r\n")[1:]}
    return int(head.split()[1]), headers, json.loads(body)


@pytest.fixture
def near(start_batchd, redis, pg):
    b = start_batchd(batchd="admin_token = secret\n",
                     extra=resource_conf(redis.port, pg, resource="local_cache_bytes = 1048576\n"))
    wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking")
    return b


def warm_local(b, sid):
    wait_until(lambda: get(b.port, f"/v1/sessions/{sid}").headers.get("x-cache") == "local",
               what=f"{sid} served from the near cache")


@pytest.mark.parametrize("read_first", [True, False], ids=["read-then-change", "change-then-read"])
def test_an_invalidation_read_in_the_same_iteration_is_applied_first(near, redis, read_first):
    b = near
    r = redis.client()
    sid = "s7"
    warm_local(b, sid)
    restarts0 = b.metric("batchd_local_cache_restarts_total")
    for round_ in range(10):
        title = f"changed-{read_first}-{round_}"
        s = socket.create_connection(("127.0.0.1", b.port))
        keys0 = b.metric("batchd_redis_tracking_keys_total")
        stop_process(b.proc.pid)
        try:
            req = f"GET /v1/sessions/{sid} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            if read_first:
                s.sendall(req)
            # Redis writes the invalidation to batchd's pub/sub socket before
            # it answers SET, so both are in batchd's buffers from here on.
            r.set(f"session:{sid}", json.dumps({"id": sid, "title": title}))
            if not read_first:
                s.sendall(req)
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        status, headers, doc = read_answer(s)
        s.close()
        assert status == 200 and doc["title"] == title, (round_, headers, doc)
        assert headers.get("x-cache") != "local"
        assert b.metric("batchd_redis_tracking_keys_total") > keys0
        # Back in the near cache for the next round.
        warm_local(b, sid)
    print(f"NEAR-ITERATION read_first={read_first}: restarted reads "
          f"{b.metric('batchd_local_cache_restarts_total') - restarts0:.0f} of 10")


def test_a_backlog_of_invalidations_is_read_whole_before_a_local_answer(near, redis):
    """hiredis reads 16 KiB per readable event: thousands of invalidations
    waiting in batchd's socket span many reads. A read arriving behind them
    must not be answered from an entry one of them drops."""
    b = near
    r = redis.client()
    sid = "s8"
    for n_other in (100, 1000, 4000):
        warm_local(b, sid)
        title = f"changed-behind-{n_other}"
        s = socket.create_connection(("127.0.0.1", b.port))
        stop_process(b.proc.pid)
        try:
            pipe = r.pipeline(transaction=False)
            for i in range(n_other):  # each names a key of its own: ~40 bytes of message each
                pipe.set(f"session:other-{n_other}-{i}", "{}")
            pipe.execute()
            r.set(f"session:{sid}", json.dumps({"id": sid, "title": title}))
            s.sendall(f"GET /v1/sessions/{sid} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        status, headers, doc = read_answer(s)
        s.close()
        assert status == 200 and doc["title"] == title, (n_other, headers, doc)


def test_a_reader_after_an_invalidation_does_not_join_a_load_from_before_it(start_batchd, redis, pg):
    """Reader A's MGET of s41 is held on its way back (it read the old
    value); the key changes behind batchd's back and the invalidation
    arrives; reader B, arriving after it, must not join A's load."""
    proxy = RedisProxy(redis.port)
    try:
        # A hold of 3 s (under a command timeout of 10 s): the steps below
        # fit in it even on a loaded machine.
        conf = resource_conf(proxy.port, pg, resource="local_cache_bytes = 1048576\n")
        b = start_batchd(batchd="admin_token = secret\n",
                         extra=conf.replace("command_timeout_ms = 1000", "command_timeout_ms = 10000"))
        wait_until(lambda: b.metric("batchd_redis_tracking_up") == 1, what="tracking")
        r = redis.client()
        key = "session:s41"
        r.set(key, json.dumps({"id": "s41", "title": "old"}))
        proxy.hold_reply(lambda a: a[0].upper() == b"MGET" and key.encode() in a[1:], 3.0)
        seen = {}
        a = threading.Thread(target=lambda: seen.update(a=get(b.port, "/v1/sessions/s41").json()["title"]))
        a.start()
        wait_until(lambda: proxy.held, what="A's MGET on its way")
        assert b.metric("batchd_batch_ids_in_flight") >= 1
        keys0 = b.metric("batchd_redis_tracking_keys_total")
        r.set(key, json.dumps({"id": "s41", "title": "new"}))
        wait_until(lambda: b.metric("batchd_redis_tracking_keys_total") > keys0, what="the invalidation")
        seen["b"] = get(b.port, "/v1/sessions/s41").json()["title"]
        a.join()
        assert seen["b"] == "new", seen
        assert seen["a"] == "old", seen  # A asked before the change: the old value is its answer
        # And the old value was not kept: every later read is new.
        for _ in range(5):
            assert get(b.port, "/v1/sessions/s41").json()["title"] == "new"
    finally:
        proxy.close()

