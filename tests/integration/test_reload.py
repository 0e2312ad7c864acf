"""SIGHUP reloads: a replaced configuration is freed as soon as nothing
points into it any more (it used to be kept until exit, one per reload).
The evidence is batchd_configs_in_memory, counted where configs are
allocated and freed; ASan's leak check at exit covers the rest."""

import signal
import threading

from harness import wait_until
from redis_proxy import RedisProxy
from test_events import AUTH, TOKEN, publish, stream_conf  # noqa: F401


def reload(b, n_before):
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: b.log().count("msg=\"reloaded\"") > n_before, what=f"reload {n_before + 1}")


def test_each_reload_frees_the_config_it_replaced(start_batchd, redis):
    b = start_batchd(batchd=f"admin_token = {TOKEN}\n", extra=stream_conf(redis.port))
    assert b.metric("batchd_configs_in_memory") == 1
    for i in range(5):
        # A setting that reloads in place, so every reload builds a new config.
        b.conf.write_text(b.conf.read_text().replace(f"max_len = {1000 + i}", f"max_len = {1001 + i}"))
        reload(b, i)
    assert b.metric("batchd_configs_in_memory") == 1
    # The stream runs with the last one.
    assert publish(b.port, "r1", "after reloads").status == 201
    assert redis.client().xinfo_stream("events:session:r1")["length"] == 1


def test_a_publish_in_flight_keeps_its_config_until_answered(start_batchd, redis):
    proxy = RedisProxy(redis.port)
    try:
        b = start_batchd(batchd=f"admin_token = {TOKEN}\n", extra=stream_conf(proxy.port, command_timeout_ms=20000))
        wait_until(lambda: b.metric("batchd_redis_up") == 1, what="redis")
        assert publish(b.port, "p1", "first").status == 201  # the script is loaded
        proxy.hold_reply(lambda a: a[0].upper() == b"EVALSHA", 6.0)
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", publish(b.port, "p1", "held")))
        t.start()
        wait_until(lambda: len(proxy.held) == 1, what="the publish to reach Redis")
        b.conf.write_text(b.conf.read_text().replace("max_len = 1000", "max_len = 2000"))
        reload(b, 0)
        # The running config and the one the held publish started with.
        assert b.metric("batchd_configs_in_memory") == 2
        t.join(20)
        assert out["r"].status == 201, out["r"]
        wait_until(lambda: b.metric("batchd_configs_in_memory") == 1, what="the old config to be freed")
    finally:
        proxy.close()


def test_a_removed_stream_keeps_its_config_and_a_re_added_one_drops_it(start_batchd, redis):
    b = start_batchd(batchd=f"admin_token = {TOKEN}\n", extra=stream_conf(redis.port))
    conf = b.conf.read_text()
    start = conf.index("[stream session-events]")
    end = conf.index("\n[", start + 1) if "\n[" in conf[start + 1:] else len(conf)
    b.conf.write_text(conf[:start] + conf[end:])
    reload(b, 0)
    assert publish(b.port, "x", "gone").status == 404
    # The removed stream's clients may still be connected: its config stays.
    assert b.metric("batchd_configs_in_memory") == 2
    b.conf.write_text(conf)
    reload(b, 1)
    # Back under the same name: it moves to the running config, the old ones go.
    assert b.metric("batchd_configs_in_memory") == 1
    assert publish(b.port, "x", "back").status == 201
