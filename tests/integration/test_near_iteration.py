"""The near cache applies every invalidation that reached batchd before it
answers a read, also one read in the same loop iteration as the read:
answers from the near cache wait for the end of the iteration. Made
deterministic by stopping batchd (SIGSTOP) while the read and the change's
invalidation message both land in its socket buffers, in either order,
then letting it run (SIGCONT): the answer must show the change."""

import json
import os
import signal
import socket

import pytest

from harness import get, stop_process, wait_until
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
