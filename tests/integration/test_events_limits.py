"""The two buffers a channel fills while it catches up from its Redis Stream
have byte limits of their own (issue 12), and passing either loses no event:

* sync_held_bytes: live events that arrive while the channel reads its gap
  are held until the read is done. Past the limit they are dropped and the
  channel reads that range from the Stream again before it goes live.
* sync_gap_bytes: what the gap read holds. Past the limit, what was read so
  far is passed on and the read goes on.

Both are forced against the real daemon and redis-server, with a proxy in
front of Redis that holds replies (the sync's reads, or the pub/sub
handshake) until the test lets them go. Each test checks what a user would:
every client gets every event once, in order, and the limit's counter moved."""

import pytest  # noqa: F401

from harness import wait_until
from test_events import Sse, publish, publish_until_received
from test_events_promises import proxied, read_until  # noqa: F401

# XADD and PUBLISH in one script, as batchd's own publish does: used while
# batchd's command connections are held, when a POST would wait for them.
PUBLISH_LUA = ("local id = redis.call('XADD', KEYS[1], '*', 'event', '', 'data', ARGV[1]) "
               "redis.call('PUBLISH', KEYS[1], id .. '\\n\\n' .. ARGV[1]) return id")


def test_live_events_held_past_the_limit_are_read_again(proxied, redis):  # noqa: F811
    b, proxy = proxied(stream="sync_held_bytes = 4096\n")
    key = "events:session:held"
    s = Sse(b.port, "held")
    s.frame()  # retry
    before, _ = publish_until_received(b.port, s, "held")  # the channel is live
    # The gap read of the next sync will be sent but its reply held.
    held = proxy.commands()
    marks = [len(c.sent) for c in held]
    for c in held:
        c.hold()
    proxy.kill_pubsub()
    wait_until(lambda: any(b"XRANGE" in c.sent[m:] for c, m in zip(held, marks)), what="the gap read")
    # A client resuming meanwhile waits for the channel, then replays.
    late = Sse(b.port, "held", last_id=before[-1])
    late.frame()  # retry
    # Published after the gap read ran: these arrive live, while the channel
    # still waits for that read, and pass 4 KiB (60 x ~300 bytes).
    r = redis.client()
    ids = [r.eval(PUBLISH_LUA, 1, key, f"{i:03d}" + "h" * 200).decode() for i in range(60)]
    wait_until(lambda: b.metric("batchd_sse_sync_held_overflows_total") >= 1, what="the held events overflow")
    for c in held:
        c.release()
    after = publish(b.port, "held", "after").json()["id"]
    want = ids + [after]
    assert read_until(s, after) == want  # every event once, in order
    assert read_until(late, after) == want
    assert b.metric("batchd_sse_sync_held_overflows_total", stream="session-events") >= 1
    assert b.metric("batchd_sse_overflow_disconnects_total") == 0
    assert "sse channel held events over sync_held_bytes" in b.log()
    s.close()
    late.close()


def test_gap_read_past_the_limit_is_passed_on_in_parts(proxied, redis):  # noqa: F811
    b, proxy = proxied(stream="sync_gap_bytes = 4096\n")
    s = Sse(b.port, "gap")
    s.frame()  # retry
    publish_until_received(b.port, s, "gap")  # the channel is live
    resyncs = b.metric("batchd_sse_resyncs_total")
    # The pub/sub connection drops and the next one stays in its handshake:
    # what is published meanwhile is only in the Stream, a gap of ~18 KiB.
    proxy.hold_new = True
    proxy.kill_pubsub()
    wait_until(lambda: b.metric("batchd_redis_pubsub_up") == 0, what="pub/sub down")
    ids = [publish(b.port, "gap", f"{i:03d}" + "g" * 200).json()["id"] for i in range(60)]
    proxy.hold_new = False
    for c in proxy.conns:
        c.release()
    wait_until(lambda: b.metric("batchd_redis_pubsub_up") == 1, what="pub/sub up")
    after = publish(b.port, "gap", "after").json()["id"]
    assert read_until(s, after) == ids + [after]  # every event once, in order
    assert b.metric("batchd_sse_sync_gap_flushes_total", stream="session-events") >= 1
    # One gap filled, however many parts it went out in.
    assert b.metric("batchd_sse_resyncs_total") == resyncs + 1
    assert "sse channel gap read over sync_gap_bytes" in b.log()
    s.close()
