"""[cors] (daemon/http/cors.c) against the real daemon, Redis, PostgreSQL and the
test app: preflights for batchd's own routes, the headers on its answers (SSE
included), proxied routes left to the app unless proxied = yes, refusals
counted, reload, and the config's rules. The browser's side is in
test_browser_cors.py."""

import signal

import pytest

from harness import Http, get, request, wait_until
from test_config import check
from test_proxy import App, upstream_conf
from test_resource import resource_conf
from test_events import stream_conf

ORIGIN = "https://app.example.com"
OTHER = "https://evil.example.net"


def cors_conf(body="origins = https://app.example.com, http://localhost:3000\n"):
    return "[cors]\n" + body


@pytest.fixture
def app_server():
    a = App()
    yield a
    a.stop()


def start_stack(start_batchd, redis, pg, app, cors, port=None, batchd="admin_token = secret\n"):
    """A batchd with a resource, a stream (retry_ms = 200) and the app as
    [upstream], plus `cors` (a [cors] section, or ""), once its backends are up."""
    extra = (resource_conf(redis.port, pg) + upstream_conf(app.port) + stream_conf_tail() +
             "retry_ms = 200\n" + cors)
    b = start_batchd(batchd=batchd, extra=extra, port=port)
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1,
               what="Redis and PostgreSQL connections")
    return b


@pytest.fixture
def start(start_batchd, redis, pg, app_server):
    def _start(cors=None):
        return start_stack(start_batchd, redis, pg, app_server, cors_conf() if cors is None else cors)
    return _start


def stream_conf_tail():
    # stream_conf() brings its own [redis]; resource_conf already has one.
    conf = stream_conf(0)
    return conf[conf.index("[stream"):]


def vary(r):
    """Every Vary field's values, lower case (an answer may carry several
    fields: Vary: Origin from [cors], Vary: Accept-Encoding from gzip)."""
    return [v.strip().lower() for line in r.raw_head.split("\r\n")
            if line.lower().startswith("vary:") for v in line[5:].split(",")]


def preflight(port, path, method="POST", origin=ORIGIN, headers="content-type"):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return request(port, "OPTIONS", path, h)


def test_preflight_for_batch_is_answered_by_batchd(start, app_server):
    b = start()
    r = preflight(b.port, "/v1/sessions/_batch", headers="content-type, authorization")
    assert r.status == 204, r
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-methods"] == "GET, HEAD, POST"
    assert "content-type" in r.headers["access-control-allow-headers"].lower()
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in vary(r)
    assert "content-length" not in r.headers and r.body == b""
    assert "access-control-allow-credentials" not in r.headers
    assert "OPTIONS /v1/sessions/_batch" not in app_server.stats()["hits"], "the preflight reached the app"
    assert b.metric("batchd_cors_preflights_total", result="allowed") == 1


def test_preflight_refusals_are_403_and_counted(start):
    b = start()
    r = preflight(b.port, "/v1/sessions/_batch", origin=OTHER)
    assert r.status == 403 and r.json() == {"error": "cors_origin_not_allowed"}
    assert "access-control-allow-origin" not in r.headers
    r = preflight(b.port, "/v1/sessions/_batch", origin="null")
    assert r.status == 403 and r.json() == {"error": "cors_origin_not_allowed"}
    # An origin that merely starts or ends like an allowed one.
    r = preflight(b.port, "/v1/sessions/_batch", origin=ORIGIN + ".evil.net")
    assert r.status == 403
    r = preflight(b.port, "/v1/sessions/s1", method="PURGE", headers=None)
    assert r.status == 403 and r.json() == {"error": "cors_method_not_allowed"}
    r = preflight(b.port, "/v1/sessions/_batch", headers="content-type, x-secret-thing")
    assert r.status == 403 and r.json() == {"error": "cors_header_not_allowed"}
    assert b.metric("batchd_cors_preflights_total", result="origin_refused") == 3
    assert b.metric("batchd_cors_preflights_total", result="method_refused") == 1
    assert b.metric("batchd_cors_preflights_total", result="headers_refused") == 1


def test_entity_batch_list_and_errors_carry_the_origin(start):
    b = start()
    h = {"Origin": ORIGIN}
    for r in (get(b.port, "/v1/sessions/s1", h),
              get(b.port, "/v1/sessions?ids=s1,s2", h),
              request(b.port, "POST", "/v1/sessions/_batch", {**h, "Content-Type": "application/json"},
                      '{"ids":["s1","s2"]}'),
              get(b.port, "/v1/sessions/nope-404", h),
              get(b.port, "/v1/sessions?ids=" + ",".join(f"x{i}" for i in range(200)), h)):
        assert r.headers.get("access-control-allow-origin") == ORIGIN, r
        assert "origin" in vary(r)
        assert "ETag" in r.headers["access-control-expose-headers"]
    # The other allowed origin gets its own name back, never the first one's.
    r = get(b.port, "/v1/sessions/s1", {"Origin": "http://localhost:3000"})
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = get(b.port, "/v1/sessions/s1", {"Origin": OTHER})
    assert r.status == 200 and "access-control-allow-origin" not in r.headers
    assert "origin" in vary(r)
    r = get(b.port, "/v1/sessions/s1")
    assert "access-control-allow-origin" not in r.headers
    assert b.metric("batchd_cors_requests_total", result="allowed") == 6
    assert b.metric("batchd_cors_requests_total", result="origin_refused") == 1


def test_event_stream_head_carries_the_origin(start):
    b = start()
    with Http(b.port) as c:
        c.send(f"GET /v1/sessions/s1/events HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\n"
               "Accept: text/event-stream\r\n\r\n".encode())
        head = c._read_until(b"\r\n\r\n").decode().lower()
    assert head.startswith("http/1.1 200")
    assert f"access-control-allow-origin: {ORIGIN}" in head
    assert "content-type: text/event-stream" in head


def test_pipelined_preflight_and_reads_on_one_connection(start):
    BODY = '{"ids":["s1"]}'
    b = start()
    with Http(b.port) as c:
        c.send((f"OPTIONS /v1/sessions/_batch HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\n"
                "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
                f"GET /v1/sessions/s1 HTTP/1.1\r\nHost: x\r\nOrigin: {OTHER}\r\n\r\n"
                f"POST /v1/sessions/_batch HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n{BODY}").encode())
        a, b2, c3 = c.read_response(), c.read_response(), c.read_response()
    assert a.status == 204 and a.headers["access-control-allow-origin"] == ORIGIN
    assert b2.status == 200 and "access-control-allow-origin" not in b2.headers
    assert c3.status == 200 and c3.headers["access-control-allow-origin"] == ORIGIN


def test_proxied_routes_are_left_to_the_app(start, app_server):
    b = start()
    # A preflight for a write the app serves goes to the app (which knows its routes).
    r = preflight(b.port, "/v1/sessions/s1", method="DELETE", headers=None)
    assert app_server.stats()["hits"].get("OPTIONS /v1/sessions/s1") == 1
    assert "access-control-allow-origin" not in r.headers
    r = get(b.port, "/echo", {"Origin": ORIGIN})
    assert r.status == 200 and "access-control-allow-origin" not in r.headers
    assert b.metric("batchd_cors_preflights_total", result="allowed") == 0


def test_proxied_yes_answers_every_preflight_and_replaces_the_apps_headers(start, app_server):
    b = start(cors=cors_conf("origins = https://app.example.com\nproxied = yes\nmethods = GET, POST, DELETE\n"))
    r = preflight(b.port, "/v1/sessions/s1", method="DELETE", headers=None)
    assert r.status == 204 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "OPTIONS /v1/sessions/s1" not in app_server.stats()["hits"]
    # The app's own Access-Control-* answer headers are replaced by batchd's.
    r = get(b.port, "/headers?Access-Control-Allow-Origin=*&X-Kept=1", {"Origin": ORIGIN})
    assert r.status == 200, r
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["x-kept"] == "1"
    assert r.raw_head.lower().count("access-control-allow-origin") == 1
    r = get(b.port, "/headers?Access-Control-Allow-Origin=*", {"Origin": OTHER})
    assert "access-control-allow-origin" not in r.headers


def test_any_origin_and_credentials(start):
    b = start(cors=cors_conf("origins = *\n"))
    r = get(b.port, "/v1/sessions/s1", {"Origin": OTHER})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "origin" not in vary(r)
    b.stop()
    b = start(cors=cors_conf("origins = https://app.example.com\ncredentials = yes\n"))
    r = get(b.port, "/v1/sessions/s1", {"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    r = preflight(b.port, "/v1/sessions/_batch")
    assert r.headers["access-control-allow-credentials"] == "true"


def test_reload_changes_the_policy(start):
    b = start()
    assert get(b.port, "/v1/sessions/s1", {"Origin": OTHER}).headers.get("access-control-allow-origin") is None
    b.conf.write_text(b.conf.read_text().replace("origins = https://app.example.com",
                                                  "origins = https://evil.example.net"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: get(b.port, "/v1/sessions/s1", {"Origin": OTHER}).headers.get(
        "access-control-allow-origin") == OTHER, what="the reloaded [cors] origins")
    assert get(b.port, "/v1/sessions/s1", {"Origin": ORIGIN}).headers.get("access-control-allow-origin") is None


@pytest.mark.parametrize("body,message", [
    ("methods = GET\n", "missing required key origins"),
    ("origins = *\ncredentials = yes\n", "cannot go with credentials"),
    ("origins = https://a.example/path\n", "is not an origin"),
    ("origins = null\n", "is not an origin"),
    ("origins = https://a.example, *\n", "stands alone"),
    ("origins = app.example.com\n", "is not an origin"),
    ("origins = https://a.example:123456\n", "is not an origin"),
    ("origins = https://a.example\nmethods = G(T\n", "not a method or header name"),
    ("origins = https://a.example\nheaders = *\ncredentials = yes\n", "cannot go with credentials"),
    ("origins = https://a.example\nmax_age = 86401\n", "between 0 and 86400"),
])
def test_config_rules(tmp_path, body, message):
    rc, err, _ = check(tmp_path, "[batchd]\nlisten = 127.0.0.1:1\n[cors]\n" + body)
    assert rc == 2 and message in err, err


def test_config_accepts_a_full_section(tmp_path):
    r = check(tmp_path, "[batchd]\nlisten = 127.0.0.1:1\n[cors]\n"
              "origins = https://App.Example.com, http://localhost:3000, http://[::1]:8080\n"
              "methods = GET, POST, PATCH\nheaders = *\nexpose_headers = ETag\nmax_age = 0\nproxied = yes\n")
    assert r[0] == 0, r[1]


def test_not_modified_and_gzip_answers_keep_the_cors_headers(start):
    b = start()
    h = {"Origin": ORIGIN, "Accept-Encoding": "gzip"}
    ids = ",".join(f"s{i}" for i in range(1, 40))
    r = get(b.port, f"/v1/sessions?ids={ids}", h)
    assert r.status == 200 and r.headers.get("content-encoding") == "gzip", r
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert set(vary(r)) >= {"origin", "accept-encoding"}
    r = get(b.port, f"/v1/sessions?ids={ids}", {**h, "If-None-Match": r.headers["etag"]})
    assert r.status == 304 and r.body == b""
    assert r.headers["access-control-allow-origin"] == ORIGIN
