"""[resource] max_ids_in_flight: distinct ids a resource may have queued or
being read at once. Reads past it get 503 resource_busy + Retry-After and
never reach Redis; a held MGET reply (redis_proxy.py) keeps ids in flight
for as long as the test needs."""

import threading

from harness import get, request, wait_until
from redis_proxy import RedisProxy
from test_resource import resource_conf


def test_reads_past_max_ids_in_flight_are_refused_until_the_ids_land(start_batchd, redis, pg):
    proxy = RedisProxy(redis.port)
    try:
        conf = resource_conf(proxy.port, pg, resource="max_ids_in_flight = 3\n")
        b = start_batchd(extra=conf.replace("command_timeout_ms = 1000", "command_timeout_ms = 20000"))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="backends")
        redis.client().config_resetstat()
        proxy.hold_reply(lambda a: a[0].upper() == b"MGET", 5.0)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("first", get(b.port, "/v1/sessions?ids=s1,s2,s3")))
        t.start()
        wait_until(lambda: len(proxy.held) == 1, what="the first MGET to be held")
        assert b.metric("batchd_batch_ids_in_flight", resource="sessions") == 3
        # Three ids are in flight: any read, even of one id, is refused now.
        r = get(b.port, "/v1/sessions/s4")
        assert r.status == 503 and r.json() == {"error": "resource_busy"}, r
        assert r.headers["retry-after"] == "1"
        r = request(b.port, "POST", "/v1/sessions/_batch", {"Content-Type": "application/json"}, '{"ids":["s1"]}')
        assert r.status == 503 and r.json() == {"error": "resource_busy"}, r
        assert b.metric("batchd_resource_busy_total", resource="sessions") == 2
        t.join(20)
        assert out["first"].status == 200, out["first"]
        assert [d["id"] for d in out["first"].json()] == ["s1", "s2", "s3"]
        # The refused reads never reached Redis: one MGET in all.
        assert redis.commandstats().get("mget") == 1
        wait_until(lambda: b.metric("batchd_batch_ids_in_flight", resource="sessions") == 0, what="ids to land")
        r = get(b.port, "/v1/sessions/s4")
        assert r.status == 200 and r.json()["id"] == "s4", r
    finally:
        proxy.close()
