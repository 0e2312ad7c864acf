"""The promises SSE makes (issue 11), each forced against the real daemon and
a real redis-server: a stream starts at a definite position and gets every
event after it; a retried publish is stored once; a client's queue is bounded
in real bytes, kernel included; replayed entries are validated like live ones;
every "retry:" is jittered; a client over the limit is asked to come back.

Races are made deterministic with a TCP proxy in front of Redis (ConnProxy in
redis_proxy.py) that holds chosen replies or cuts a connection at a chosen
command. Redis itself (XLEN, XRANGE, PTTL) is the evidence of what was
stored."""

import signal
import socket
import subprocess

import pytest

from harness import SAN_ENV, Http, wait_until
from redis_proxy import ConnProxy
from test_events import AUTH, TOKEN, Sse, app, publish, publish_until_received, stream_conf  # noqa: F401

RETRY_MS = 2000  # [stream] retry_ms default


@pytest.fixture
def proxied(start_batchd, redis):
    """batchd whose Redis connections all go through a ConnProxy."""
    made = []

    def _start(stream="", command_timeout_ms=10000):
        proxy = ConnProxy(redis.port)
        made.append(proxy)
        b = start_batchd(batchd=f"admin_token = {TOKEN}\nlog_level = info\n",
                         extra=stream_conf(proxy.port, stream=stream, command_timeout_ms=command_timeout_ms))
        wait_until(lambda: b.metric("batchd_redis_pubsub_up") == 1 and b.metric("batchd_redis_up") == 1,
                   what="redis connections")
        wait_until(lambda: proxy.pubsubs() and len(proxy.commands()) == 2, what="the proxied connections")
        return b, proxy

    yield _start
    for p in made:
        p.close()


def read_until(s, last_id):
    """Ids s receives up to and including last_id."""
    got = []
    while not got or got[-1] != last_id:
        got.append(s.events(1)[0]["id"][0])
    return got


def xids(redis, key):
    return [i.decode() for i, _ in redis.client().xrange(key)]


# --- 1. a stream starts at a definite position ------------------------------------


def test_fresh_channel_publish_before_subscribe_confirmed_is_delivered(proxied, redis):
    """A publish answered 201 after the subscriber got its 200 reaches it,
    though the channel's SUBSCRIBE is not confirmed yet (its reply is held)."""
    b, proxy = proxied()
    for c in proxy.pubsubs():
        c.hold()
    s = Sse(b.port, "fresh")
    assert s.status == 200
    assert "retry" in s.frame()
    wait_until(lambda: any(b"events:session:fresh" in c.sent for c in proxy.pubsubs()), what="the SUBSCRIBE")
    r = publish(b.port, "fresh", "e1")
    assert r.status == 201
    e1 = r.json()["id"]
    assert xids(redis, "events:session:fresh") == [e1]
    for c in proxy.pubsubs():
        c.release()  # the confirmation, then the channel syncs
    sent, got = publish_until_received(b.port, s, "fresh")
    assert [e1] + sent == got  # every event, once, in order
    s.close()


def test_client_arriving_while_channel_resubscribes_gets_the_gap(proxied, redis):
    """A client that connects while the pub/sub connection is down starts
    at the channel's position: an event stored meanwhile reaches it (and the
    clients that were there) once the channel is subscribed again."""
    b, proxy = proxied()
    old = Sse(b.port, "re")
    old.frame()
    publish_until_received(b.port, old, "re")  # the channel is live
    proxy.hold_new = True  # the next pub/sub connection stays in its handshake
    proxy.kill_pubsub()
    wait_until(lambda: b.metric("batchd_redis_pubsub_up") == 0, what="pub/sub down")
    new = Sse(b.port, "re")
    assert new.status == 200
    assert "retry" in new.frame()
    r = publish(b.port, "re", "while down")
    assert r.status == 201
    e1 = r.json()["id"]
    assert xids(redis, "events:session:re")[-1] == e1
    proxy.hold_new = False
    for c in proxy.conns:
        c.release()
    wait_until(lambda: b.metric("batchd_redis_pubsub_up") == 1, what="pub/sub up")
    sent, got = publish_until_received(b.port, new, "re")
    assert [e1] + sent == got
    assert read_until(old, sent[-1]) == [e1] + sent
    new.close()
    old.close()


def test_publish_right_after_the_200_on_fresh_channels(app, redis):
    """What users do: open a stream on a new id, publish once it is open."""
    b = app()
    lost = []
    for i in range(20):
        s = Sse(b.port, f"new{i}")
        s.frame()
        e = publish(b.port, f"new{i}", "first").json()["id"]
        last = publish(b.port, f"new{i}", "second").json()["id"]
        got = read_until(s, last)
        if got != [e, last]:
            lost.append((i, got))
        s.close()
    assert lost == []


# --- 2. a retried publish is stored once ---------------------------------------------


def test_publish_outcome_unknown_and_idempotent_retry(proxied, redis, start_batchd):
    b, proxy = proxied()
    key = "events:session:idem"
    s = Sse(b.port, "idem")
    s.frame()
    publish_until_received(b.port, s, "idem")  # live, and the script is loaded
    before = redis.client().xlen(key)
    hdrs = dict(AUTH, **{"Idempotency-Key": "order-7f3a.1"})

    # The script runs, then the connection drops before its reply.
    proxy.cut_after(b"EVALSHA")
    r = publish(b.port, "idem", "pay", headers=hdrs)
    assert proxy.cut.is_set()
    assert r.status in (502, 504), r
    assert r.json() == {"error": "publish_outcome_unknown"}
    assert "retry-after" not in r.headers
    wait_until(lambda: redis.client().xlen(key) == before + 1, what="the event stored")
    stored = xids(redis, key)[-1]

    # The client retries with the same key: the first id, nothing stored.
    for c in proxy.commands():
        c.cut_on = None
    r = publish(b.port, "idem", "pay", headers=hdrs)
    while r.status == 503:  # not sent: the pool is reconnecting
        r = publish(b.port, "idem", "pay", headers=hdrs)
    assert (r.status, r.json()) == (201, {"id": stored})
    assert r.headers["idempotent-replayed"] == "true"
    assert redis.client().xlen(key) == before + 1
    ttl = redis.client().pttl(f"batchd:idem:{{{key}}}:order-7f3a.1")
    assert 0 < ttl <= 300000  # idempotency_window_ms
    nxt = publish(b.port, "idem", "next").json()["id"]
    assert read_until(s, nxt) == [stored, nxt]  # the subscriber got it once
    assert b.metric("batchd_sse_publish_errors_total", outcome="unknown") == 1
    assert b.metric("batchd_sse_publish_replays_total") == 1

    # Another batchd process on the same Redis knows the key too.
    other = start_batchd(batchd=f"admin_token = {TOKEN}\n", extra=stream_conf(redis.port))
    wait_until(lambda: other.metric("batchd_redis_up") == 1, what="redis")
    r = publish(other.port, "idem", "pay", headers=dict(AUTH, **{"Idempotency-Key": '"order-7f3a.1"'}))
    assert (r.status, r.json()["id"]) == (201, stored)

    # The key with another event is an error, not a silent loss.
    r = publish(b.port, "idem", "other data", headers=hdrs)
    assert (r.status, r.json()) == (422, {"error": "idempotency_key_reused"})
    for bad in ("", "two words", "k" * 129, "a/b"):
        r = publish(b.port, "idem", "x", headers=dict(AUTH, **{"Idempotency-Key": bad}))
        assert (r.status, r.json()) == (400, {"error": "invalid_idempotency_key"}), bad
    assert redis.client().xlen(key) == before + 2

    # Nothing can carry the script: not sent, safe to retry.
    proxy.close()
    wait_until(lambda: b.metric("batchd_redis_up") == 0, what="redis down")
    r = publish(b.port, "idem", "x", headers=hdrs)
    assert (r.status, r.json(), r.headers.get("retry-after")) == (503, {"error": "redis_unavailable"}, "1")
    assert redis.client().xlen(key) == before + 2
    s.close()


# --- 4 and 5. a client's queue in real bytes, kernel included ---------------------------------


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])


def slow_clients(port, sid, n):
    out = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        out.append(s)
    return out


def test_small_events_bounded_in_real_bytes(app, redis):
    """30 clients that never read; once their kernel buffers are full,
    48-byte events published one at a time: batchd's memory grows by no
    more than clients x client_queue_bytes (plus a fixed allowance), because
    each queued event is counted with its bookkeeping and a client's small
    frames leave in one buffer per write, not one write request each."""
    qbytes, n = 262144, 30
    # AddressSanitizer's quarantine would count freed memory as growth.
    env = {"ASAN_OPTIONS": SAN_ENV["ASAN_OPTIONS"] + ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0"}
    b = app(stream=f"client_queue_bytes = {qbytes}\n", env=env)
    slow = slow_clients(b.port, "small", n)
    wait_until(lambda: b.metric("batchd_sse_clients") == n, what="the clients")
    before = rss_kib(b.proc.pid)
    peer = slow[0].getsockname()[1]

    # Fill what the kernel takes for them, 100 KB at a time, until it takes
    # no more (or batchd holds 64 KiB each, kernel included, as it counts).
    r = redis.client()
    seq, prev = 0, -1

    def full():
        return (b.metric("batchd_sse_queued_bytes") >= n * 65536
                or b.metric("batchd_sse_overflow_disconnects_total") > 0)

    while True:
        p = r.pipeline(transaction=False)
        for _ in range(25):
            seq += 1
            p.publish("events:session:small", f"1-{seq}\n\n" + "f" * 4000)
        p.execute()
        wait_until(lambda: b.metric("batchd_sse_delivered_total") >= n * seq or full(), what="the burst")
        sendq = batchd_socket_mem(b.port, peer)[0]
        if full() or sendq == prev:
            break
        prev = sendq

    pub = Http(b.port)
    sent = 0
    while b.metric("batchd_sse_overflow_disconnects_total") < n and sent < 20000:
        for _ in range(100):
            assert pub.request("POST", "/v1/sessions/small/events", AUTH, "e" * 40).status == 201
        sent += 100
    assert b.metric("batchd_sse_overflow_disconnects_total") == n
    grown = (rss_kib(b.proc.pid, "VmHWM") - before) * 1024
    assert grown <= n * qbytes + 8 * 1024 * 1024, (grown, seq, sent)
    pub.close()
    for s in slow:
        s.close()


def test_frames_queued_behind_a_slow_write_arrive_whole_and_in_order(app):
    """Small and large frames that waited behind a write the reader did not
    take leave gathered (small ones copied into one buffer, large ones by
    reference, several writes when they are many): the reader, once it
    reads, gets every one, whole, in order."""
    b = app(stream="client_queue_bytes = 2097152\nmax_event_bytes = 8192\n")
    (raw,) = slow_clients(b.port, "gather", 1)
    wait_until(lambda: b.metric("batchd_sse_clients") == 1, what="the client")
    pub = Http(b.port)
    sizes = [40 if i % 3 else 5000 for i in range(400)]  # ~700 KB, runs of small frames between large
    ids = []
    for i, n in enumerate(sizes):
        r = pub.request("POST", "/v1/sessions/gather/events", AUTH, f"{i:04d}" + "g" * (n - 4))
        ids.append(r.json()["id"])
    assert b.metric("batchd_sse_queued_bytes") > 256 * 1024  # most of it waited in batchd
    raw.settimeout(15)
    data = b""
    while f"id: {ids[-1]}\n".encode() not in data or not data.endswith(b"\n\n"):
        chunk = raw.recv(65536)
        assert chunk, (len(data), b.log()[-2000:])
        data += chunk
    frames = [f for f in data.split(b"\r\n\r\n", 1)[1].decode().split("\n\n") if f.startswith("id:")]
    assert [f.split("\n")[0][4:] for f in frames] == ids
    assert [f.split("\n")[1][6:] for f in frames] == [f"{i:04d}" + "g" * (n - 4) for i, n in enumerate(sizes)]
    assert b.metric("batchd_sse_overflow_disconnects_total") == 0
    pub.close()
    raw.close()


def batchd_socket_mem(port, peer_port):
    """(Send-Q, SO_SNDBUF) of batchd's side of the connection from peer_port."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} and dport = :{peer_port} )"],
                         capture_output=True, text=True, check=True).stdout.split()
    skmem = next(w for w in out if w.startswith("skmem:"))
    fields = dict((f.rstrip("0123456789"), int(f[len(f.rstrip("0123456789")):]))
                  for f in skmem[len("skmem:("):-1].split(","))
    return int(out[1]), fields["tb"]


def test_kernel_send_buffer_capped_and_counted(app):
    """A reader that never reads is dropped once its queue, with what the
    kernel holds unsent, passes client_queue_bytes, and its socket's send
    buffer stays at socket_send_buffer_bytes (64 KiB by default; the kernel
    doubles it)."""
    qbytes, sndbuf = 65536, 65536
    b = app(stream=f"client_queue_bytes = {qbytes}\n")
    (s,) = slow_clients(b.port, "k", 1)
    wait_until(lambda: b.metric("batchd_sse_clients") == 1, what="the client")
    peer = s.getsockname()[1]
    pub = Http(b.port)
    published, worst = 0, (0, 0)
    while b.metric("batchd_sse_overflow_disconnects_total") == 0 and published < 4000:
        assert pub.request("POST", "/v1/sessions/k/events", AUTH, "k" * 1000).status == 201
        published += 1
        if published % 8 == 0 and b.metric("batchd_sse_clients") == 1:
            sendq, tb = batchd_socket_mem(b.port, peer)
            worst = max(worst, (sendq, tb))
    # Queued by batchd + unsent in the kernel <= the bound; the rest is in
    # the reader's own receive buffer.
    assert published * 1000 <= qbytes + 64 * 1024, published
    assert worst[1] <= 2 * sndbuf, worst
    assert b.metric("batchd_connections_closed_total", reason="sse_queue_overflow") == 1
    pub.close()
    s.close()


# --- 6. replayed entries are checked like live ones --------------------------------------


def test_replay_drops_entries_that_would_forge_fields(app, redis):
    b = app()
    key = "events:session:forge"
    r = redis.client()
    start = publish(b.port, "forge", "ok 0").json()["id"]
    first = publish(b.port, "forge", "ok 1").json()["id"]
    r.xadd(key, {"event": "x\nid: 424242-0\nretry: 1", "data": "forged"})
    r.xadd(key, {"event": "note", "data": b"\xff\xfe"})  # not UTF-8
    last = publish(b.port, "forge", "ok 2").json()["id"]
    s = Sse(b.port, "forge", last_id=start)
    raw = b""
    while f"id: {last}\n".encode() not in raw:
        raw += s.c._read_until(b"\n\n") + b"\n\n"
    lines = raw.decode(errors="replace").split("\n")
    assert [ln for ln in lines if ln.startswith("id:")] == [f"id: {first}", f"id: {last}"], raw
    assert [ln for ln in lines if ln.startswith("retry:")] == [lines[0]], raw  # batchd's own only
    assert b.metric("batchd_sse_invalid_events_total", source="history") == 2
    # The live path applies the same rules.
    r.publish(key, "99999999999999-0\nx\rretry: 1\ndata")
    nxt = publish(b.port, "forge", "ok 3").json()["id"]
    assert s.events(1)[0]["id"] == [nxt]
    assert b.metric("batchd_sse_invalid_events_total", source="live") == 1
    s.close()


# --- 7 and 8. every retry: is jittered, and over the limit means "come back" ---------------------


def test_drain_retry_is_jittered(app):
    b = app()
    clients = [Sse(b.port, "bye") for _ in range(12)]
    for c in clients:
        c.frame()
    wait_until(lambda: b.metric("batchd_sse_clients") == 12, what="clients")
    b.send_signal(signal.SIGTERM)
    retries = []
    for c in clients:
        f = c.frame()
        while "retry" not in f:
            f = c.frame()
        retries.append(int(f["retry"][0]))
        assert c.c.wait_closed(5)
    assert all(RETRY_MS <= v <= 2 * RETRY_MS for v in retries), retries
    assert len(set(retries)) > 1, retries
    assert b.wait(15) == 0


def test_over_max_sse_clients_answers_come_back_later(app):
    b = app(stream="max_sse_clients = 2\n")
    held = [Sse(b.port, f"h{i}") for i in range(2)]
    retries = []
    for _ in range(5):
        s = Sse(b.port, "more")
        assert s.status == 200 and s.headers["content-type"] == "text/event-stream"
        first = s.frame()
        retries.append(int(first["retry"][0]))
        f = s.frame()
        assert f["event"] == ["overloaded"] and "id" not in f
        assert s.c.wait_closed(5)
        s.close()
    assert all(RETRY_MS <= v <= 2 * RETRY_MS for v in retries), retries
    assert len(set(retries)) > 1, retries
    assert b.metric("batchd_sse_rejected_total", reason="max_sse_clients") == 5
    wait_until(lambda: b.metric("batchd_connections_closed_total", reason="sse_overloaded") == 5,
               what="the closes counted")
    assert b.metric("batchd_sse_clients") == 2
    for h in held:
        h.close()
