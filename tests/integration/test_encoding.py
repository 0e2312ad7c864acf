"""Compression and conditional reads of batchd's own answers
(daemon/http/encode.c, proto/accept.c, proto/etag.c) against a real
redis-server, PostgreSQL and app server: gzip when the client accepts it
and the answer is at least gzip_min_bytes, Vary: Accept-Encoding on every
such answer, a strong ETag per representation and 304 to a matching
If-None-Match. The evidence is the bytes on the wire (decompressed with
Python's zlib and compared with the identity answer) and batchd's
counters."""

import gzip
import json
import signal
import zlib

import pytest

from harness import Http, get, request, wait_until
from test_events import Sse
from test_lists import A, auth, lists, rows, secret_file  # noqa: F401 (fixtures)
from test_near_cache import local, ready
from test_proxy import App, restore_titles, upstream_conf
from test_resource import resource_conf

GZ = {"Accept-Encoding": "gzip"}
SECRET = {"Authorization": "Bearer secret"}
STREAM = """
[stream session-events]
path = /v1/sessions/{id}/events
key = events:session:{id}
max_len = 100
"""


@pytest.fixture
def enc(start_batchd, redis, pg):
    """enc(batchd="", resource="", extra="") -> Batchd with the sessions resource,
    gzip_min_bytes = 200 unless batchd says otherwise."""
    def _start(batchd="", resource="", extra="", near=False, max_ids=100):
        res = resource + (f"local_cache_bytes = {1 << 20}\n" if near else "")
        conf = resource_conf(redis.port, pg, resource=res).replace("max_ids = 100", f"max_ids = {max_ids}")
        b = start_batchd(batchd="admin_token = secret\n" + ("" if "gzip_min_bytes" in batchd else
                                                            "gzip_min_bytes = 200\n") + batchd,
                         extra=conf + extra)
        return ready(b, tracking=near)
    return _start


def ids(a, b):
    return ",".join(f"s{i}" for i in range(a, b))


def gunzip(r):
    assert r.headers.get("content-encoding") == "gzip", r
    body = gzip.decompress(r.body)
    # One gzip member, nothing after it.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert d.decompress(r.body) == body and d.eof and d.unused_data == b""
    return body


def identity(r):
    assert "content-encoding" not in r.headers, r
    return r.body


def big_doc(i, n=3000):
    return json.dumps({"id": f"s{i}", "title": f"Big {i} " + "lorem ipsum " * (n // 12)})


def head_of(r):
    """The head, but for what changes between two reads (the time, where the documents came from)."""
    return {k: v for k, v in r.headers.items() if k not in ("date", "x-cache", "server-timing")}


# --- gzip ---------------------------------------------------------------------------------


def test_gzip_decompresses_to_the_identity_bytes(enc, redis):
    b = enc()
    redis.client().set("session:s7", big_doc(7))
    with Http(b.port) as c:
        for path, method, body in [(f"/v1/sessions?ids={ids(1, 40)}", "GET", None),
                                   ("/v1/sessions/_batch", "POST", json.dumps({"ids": [f"s{i}" for i in range(1, 40)]})),
                                   ("/v1/sessions/s7", "GET", None)]:
            plain = c.request(method, path, None, body)
            z = c.request(method, path, GZ, body)
            assert plain.status == z.status == 200
            assert gunzip(z) == identity(plain)
            assert len(z.body) < len(plain.body) / 2
            assert plain.headers["vary"] == z.headers["vary"] == "Accept-Encoding"
            assert int(z.headers["content-length"]) == len(z.body)
    assert b.metric("batchd_http_gzip_answers_total") == 3
    assert b.metric("batchd_http_gzip_bytes_out_total") < b.metric("batchd_http_gzip_bytes_in_total") / 2


def test_a_1000_id_batch(enc):
    b = enc(max_ids=1000)
    body = json.dumps({"ids": [f"s{i % 1000 + 1}" for i in range(1000)]})
    plain = request(b.port, "POST", "/v1/sessions/_batch", None, body)
    z = request(b.port, "POST", "/v1/sessions/_batch", GZ, body)
    assert plain.status == 200 and len(plain.json()) == 1000 and None not in plain.json()
    assert gunzip(z) == plain.body and len(z.body) < len(plain.body) / 4


def test_below_threshold_and_not_accepted_are_not_compressed(enc):
    b = enc()
    one = get(b.port, "/v1/sessions/s1", GZ)  # ~70 bytes < 200
    assert one.status == 200 and "content-encoding" not in one.headers
    assert one.headers["vary"] == "Accept-Encoding"
    assert b.metric("batchd_http_gzip_skipped_total", reason="below_min_bytes") == 1
    path = f"/v1/sessions?ids={ids(1, 30)}"
    for h in [None, {"Accept-Encoding": "gzip;q=0"}, {"Accept-Encoding": "identity"},
              {"Accept-Encoding": "br, deflate"}, {"Accept-Encoding": ""},
              {"Accept-Encoding": "*;q=1, gzip;q=0"}, {"Accept-Encoding": "gzip;q=0.5, identity;q=1"},
              {"Accept-Encoding": "gzip;q=2"}, {"Accept-Encoding": "gzip;q=0.0000"}]:
        r = get(b.port, path, h)
        assert r.status == 200 and "content-encoding" not in r.headers, (h, r)
        assert r.headers["vary"] == "Accept-Encoding"
    assert b.metric("batchd_http_gzip_answers_total") == 0
    assert b.metric("batchd_http_gzip_skipped_total", reason="not_accepted") == 9


@pytest.mark.parametrize("value", ["gzip", "GZIP", "x-gzip", "*", "br;q=1.0, gzip;q=0.8, *;q=0.1",
                                   " deflate , Gzip ; Q=0.001 ", "identity;q=0.5, gzip",
                                   "gzip;q=1.000", "foo;bar, gzip;level=9"])
def test_accepted_spellings(enc, value):
    b = enc()
    r = get(b.port, f"/v1/sessions?ids={ids(1, 30)}", {"Accept-Encoding": value})
    assert r.headers.get("content-encoding") == "gzip", value


def test_two_accept_encoding_lines(enc):
    b = enc()
    with Http(b.port) as c:
        c.send(f"GET /v1/sessions?ids={ids(1, 30)} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: br\r\n"
               "Accept-Encoding: gzip\r\n\r\n")
        assert c.read_response().headers.get("content-encoding") == "gzip"


def test_hostile_accept_encoding_and_if_none_match(enc):
    b = enc()
    path = f"/v1/sessions?ids={ids(1, 30)}"
    plain = get(b.port, path).body
    for v in ["," * 8000, ";" * 8000, "gzip;" + "q=" * 4000, "gzip;q=" + "9" * 8000, "\t" * 8000,
              "gzip;q=0." + "0" * 8000 + "1", "\xe9\xff gzip" * 100]:
        r = get(b.port, path, {"Accept-Encoding": v, "If-None-Match": v})
        assert r.status == 200
        assert (gunzip(r) if "content-encoding" in r.headers else r.body) == plain
    for v in ['"' * 8000, 'W/' * 4000, '"a"' * 3000, 'W/"' + "x" * 8000, '"a" "b"', "**", ", ,", '"\xe9"x']:
        r = get(b.port, path, {"If-None-Match": v})
        assert r.status == 200 and r.body == plain, v
    assert b.metric("batchd_http_not_modified_total") == 0


def test_head_sends_the_get_headers(enc):
    b = enc()
    path = f"/v1/sessions?ids={ids(1, 30)}"
    with Http(b.port) as c:
        for h in [None, GZ]:
            g = c.request("GET", path, h)
            hd = c.request("HEAD", path, h)
            assert hd.status == 200 and hd.body == b""
            assert head_of(hd) == head_of(g), (hd.headers, g.headers)
            assert int(hd.headers["content-length"]) == len(g.body)
        assert c.request("GET", path, GZ).body == g.body  # the connection is still in step


def test_pipelined_answers_with_mixed_encodings(enc, redis):
    b = enc()
    redis.client().set("session:s3", big_doc(3))
    reqs = [(f"/v1/sessions?ids={ids(1, 30)}", "gzip"), (f"/v1/sessions?ids={ids(1, 30)}", None),
            ("/v1/sessions/s3", "gzip"), ("/v1/sessions/s3", "gzip;q=0"), ("/v1/sessions/nope", "gzip"),
            (f"/v1/sessions?ids={ids(5, 50)}", "GZIP"), ("/v1/sessions/s3", None)]
    want = [get(b.port, p).body for p, _ in reqs]
    with Http(b.port) as c:
        c.send("".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n" + (f"Accept-Encoding: {e}\r\n" if e else "") + "\r\n"
                       for p, e in reqs))
        for (p, e), w in zip(reqs, want):
            r = c.read_response()
            if p.endswith("nope"):
                assert r.status == 404 and "content-encoding" not in r.headers and "etag" not in r.headers
                assert "vary" not in r.headers
                continue
            compressed = e is not None and e.lower() == "gzip"
            assert (gunzip(r) if compressed else identity(r)) == w, (p, e)


def test_near_cache_answers_are_compressed_whole(enc, redis):
    """Local answers are iovecs over held entries (large documents) and copied
    runs (small ones): deflated piece by piece, they must still be the
    identity answer exactly."""
    b = enc(near=True)
    c0 = redis.client()
    for i in (2, 4, 6):
        c0.set(f"session:s{i}", big_doc(i, 2500 + i))
    path = f"/v1/sessions?ids={ids(1, 9)},s4,nope,s2"
    with Http(b.port) as c:
        plain = local(c, path)
        z = local(c, path, GZ)
        assert gunzip(z) == plain.body
        single = local(c, "/v1/sessions/s4", GZ)
        assert gunzip(single) == big_doc(4, 2504).encode()
        assert gunzip(c.request("GET", path, GZ)) == plain.body  # again: the stream was reset
    assert b.metric("batchd_http_gzip_answers_total") >= 3


# --- ETags and 304 ------------------------------------------------------------------------


def test_etag_stable_changes_with_the_document_and_differs_per_representation(enc, redis):
    b = enc()
    path = f"/v1/sessions?ids={ids(1, 30)}"
    with Http(b.port) as c:
        a1, a2 = c.request("GET", path), c.request("GET", path)
        assert a1.headers["etag"] == a2.headers["etag"] and a1.headers["etag"].startswith('"')
        z = c.request("GET", path, GZ)
        assert z.headers["etag"] != a1.headers["etag"] and z.headers["etag"].endswith('-gz1"')
        assert c.request("GET", path, GZ).headers["etag"] == z.headers["etag"]
        # Behind batchd's back (no near cache: the next read sees it).
        redis.client().set("session:s5", json.dumps({"id": "s5", "title": "changed"}))
        a3 = c.request("GET", path)
        assert b'"changed"' in a3.body and a3.headers["etag"] != a1.headers["etag"]
        # Back to the very bytes it had: the same tag again.
        start = a1.body.index(b'{"id" : "s5"')
        redis.client().set("session:s5", a1.body[start:a1.body.index(b"}", start) + 1])
        r = c.request("GET", path)
        assert r.body == a1.body and r.headers["etag"] == a1.headers["etag"]


def test_etag_changes_after_purge_and_a_write_through_the_proxy(start_batchd, redis, pg):
    app = App(conninfo=pg.conninfo())
    try:
        b = start_batchd(batchd="admin_token = secret\ngzip_min_bytes = 0\n",
                         extra=resource_conf(redis.port, pg, resource="invalidate = /api/sessions/{id}\n")
                         + upstream_conf(app.port))
        ready(b, tracking=False)
        with Http(b.port) as c:
            t1 = c.request("GET", "/v1/sessions/s9").headers["etag"]
            assert c.request("GET", "/v1/sessions/s9").headers["etag"] == t1
            # PURGE: loaded again from PostgreSQL, the same document, the same tag.
            assert c.request("PURGE", "/v1/sessions/s9", SECRET).status in (200, 204)
            r = c.request("GET", "/v1/sessions/s9")
            assert r.headers["x-cache"] == "miss" and r.headers["etag"] == t1
            # Changed in PostgreSQL, then PURGE: a new tag.
            pg.psql("UPDATE sessions SET title = 'purged title' WHERE id = 's9'")
            c.request("PURGE", "/v1/sessions/s9", SECRET)
            r = c.request("GET", "/v1/sessions/s9")
            assert r.json()["title"] == "purged title" and r.headers["etag"] != t1
            t2 = r.headers["etag"]
            # A write through the proxy invalidates: a new tag at once.
            w = c.request("PUT", "/api/sessions/s9?title=proxied", None, b"")
            assert w.status == 200 and "etag" not in w.headers and "vary" not in w.headers
            r = c.request("GET", "/v1/sessions/s9", {"If-None-Match": t2})
            assert r.status == 200 and r.json()["title"] == "proxied" and r.headers["etag"] not in (t1, t2)
    finally:
        app.stop()
        restore_titles(pg)


def test_if_none_match_304(enc):
    b = enc()
    path = f"/v1/sessions?ids={ids(1, 30)}"
    with Http(b.port) as c:
        r = c.request("GET", path)
        t, tz = r.headers["etag"], c.request("GET", path, GZ).headers["etag"]
        for inm, h in [(t, None), ("*", None), (f'"nope", {t}', None), (f"W/{t}", None),
                       (f' "x" ,W/"y",  {t}  ', None), (tz, GZ), (f"W/{tz}", GZ), ("*", GZ)]:
            n = c.request("GET", path, {**(h or {}), "If-None-Match": inm})
            assert n.status == 304, (inm, n)
            assert n.body == b"" and "content-length" not in n.headers and "content-type" not in n.headers
            assert "content-encoding" not in n.headers
            assert n.headers["etag"] == (tz if h else t) and n.headers["vary"] == "Accept-Encoding"
            hd = c.request("HEAD", path, {**(h or {}), "If-None-Match": inm})
            assert hd.status == 304 and head_of(hd).keys() == head_of(n).keys()
        # The identity tag does not validate the gzip answer, nor the reverse.
        assert c.request("GET", path, {**GZ, "If-None-Match": t}).status == 200
        assert c.request("GET", path, {"If-None-Match": tz}).status == 200
        assert c.request("GET", path, {"If-None-Match": t[:-2] + '"'}).status == 200
        assert c.request("GET", path, {"If-None-Match": t.strip('"')}).status == 200  # unquoted: not a tag
        # Two If-None-Match lines are one list.
        c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nIf-None-Match: {t}\r\n\r\n")
        assert c.read_response().status == 304
        # The connection goes on after 304s.
        assert c.request("GET", path).body == r.body
    assert b.metric("batchd_http_not_modified_total") == 17
    assert b.metric("batchd_http_requests_total", method="GET", status="3xx") == 9


def test_single_and_post_batch_304(enc):
    b = enc()
    with Http(b.port) as c:
        t = c.request("GET", "/v1/sessions/s2").headers["etag"]
        assert c.request("GET", "/v1/sessions/s2", {"If-None-Match": t}).status == 304
        body = json.dumps({"ids": ["s1", "s2", "zz"]})
        p = c.request("POST", "/v1/sessions/_batch", None, body)
        assert p.headers["etag"] == c.request("GET", "/v1/sessions?ids=s1,s2,zz").headers["etag"]
        assert c.request("POST", "/v1/sessions/_batch", {"If-None-Match": p.headers["etag"]}, body).status == 304


def test_near_and_redis_answers_share_tags(enc, redis):
    b = enc(near=True)
    redis.client().set("session:s4", big_doc(4))
    path = f"/v1/sessions?ids={ids(1, 9)},nope"
    with Http(b.port) as c:
        first = c.request("GET", path)
        assert first.headers["x-cache"] != "local"
        loc = local(c, path)
        assert loc.body == first.body and loc.headers["etag"] == first.headers["etag"]
        z1 = local(c, path, GZ)
        assert gunzip(z1) == first.body
        assert c.request("GET", path, {"If-None-Match": first.headers["etag"]}).status == 304
        one = local(c, "/v1/sessions/s4")
        assert c.request("GET", "/v1/sessions/s4", {"If-None-Match": one.headers["etag"]}).status == 304
        # Changed behind batchd's back: the near cache drops it, the tag moves.
        redis.client().set("session:s4", big_doc(4, 4000))
        wait_until(lambda: c.request("GET", "/v1/sessions/s4", {"If-None-Match": one.headers["etag"]}).status == 200,
                   what="the invalidation")
        assert gunzip(c.request("GET", "/v1/sessions/s4", GZ)) == big_doc(4, 4000).encode()


def test_lists_are_compressed_and_tagged(lists):
    b = lists()
    h = auth(A)
    with Http(b.port) as c:
        plain = c.request("GET", "/v1/me/sessions?limit=50", h)
        z = c.request("GET", "/v1/me/sessions?limit=50", {**h, **GZ})
        assert plain.status == 200 and len(plain.json()["items"]) == 50
        assert gunzip(z) == plain.body
        assert plain.headers["vary"] == "Accept-Encoding" and plain.headers["cache-control"] == "private"
        assert z.headers["etag"] != plain.headers["etag"]
        n = c.request("GET", "/v1/me/sessions?limit=50", {**h, "If-None-Match": plain.headers["etag"]})
        assert n.status == 304 and n.body == b""
        other = c.request("GET", "/v1/me/sessions?limit=49", h)
        assert other.headers["etag"] != plain.headers["etag"]
        # Unauthenticated: an error, neither coded nor tagged.
        e = c.request("GET", "/v1/me/sessions", GZ)
        assert e.status == 401 and "etag" not in e.headers and "content-encoding" not in e.headers


def test_no_gzip_or_etag_on_errors_sse_ops_and_proxied_answers(enc, redis, pg):
    app = App(conninfo=pg.conninfo())
    try:
        b = enc(batchd="gzip_min_bytes = 0\n", extra=STREAM + upstream_conf(app.port))
        h = {**GZ, "If-None-Match": "*"}
        for path in ["/v1/sessions/nope", "/v1/sessions?ids=a,,b", "/echo", "/big"]:
            r = get(b.port, path, h)
            assert r.status in (200, 400, 404), (path, r)
            assert not {"etag", "vary", "content-encoding"} & set(r.headers), (path, r.headers)
        assert get(b.port, "/big", GZ).body == get(b.port, "/big").body
        m = get(b.ops_port, "/metrics", h)
        assert m.status == 200 and "content-encoding" not in m.headers and "etag" not in m.headers
        s = Sse(b.port, "s1", query="")
        assert s.status == 200 and not {"etag", "vary", "content-encoding"} & set(s.headers)
        s.c.close()
    finally:
        app.stop()


def test_switched_off(enc):
    b = enc(batchd="gzip = no\netag = no\n")
    r = get(b.port, f"/v1/sessions?ids={ids(1, 30)}", {**GZ, "If-None-Match": "*"})
    assert r.status == 200 and not {"etag", "vary", "content-encoding"} & set(r.headers)
    b2 = enc(batchd="etag = no\ngzip_level = 6\n")
    r = get(b2.port, f"/v1/sessions?ids={ids(1, 30)}", {**GZ, "If-None-Match": "*"})
    assert r.status == 200 and "etag" not in r.headers and gunzip(r)
    b3 = enc(batchd="gzip = no\n")
    r = get(b3.port, f"/v1/sessions?ids={ids(1, 30)}", GZ)
    assert "vary" not in r.headers and "content-encoding" not in r.headers and r.headers["etag"]


def test_reload_changes_level_and_tag(enc, tmp_path):
    b = enc()
    path = f"/v1/sessions?ids={ids(1, 60)}"
    z1 = get(b.port, path, GZ)
    assert z1.headers["etag"].endswith('-gz1"')
    b.conf.write_text(b.conf.read_text().replace("gzip_min_bytes = 200\n",
                                                               "gzip_min_bytes = 200\ngzip_level = 9\n"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: get(b.port, path, GZ).headers["etag"].endswith('-gz9"'), what="the reload")
    z9 = get(b.port, path, GZ)
    assert gunzip(z9) == gunzip(z1)
