"""Who is asking (daemon/auth/): JWTs verified by batchd (HS256, RS256 with
key rotation by kid, ES256), access = authenticated | owner on resources and
streams, the principal forwarded to the app, tokens from a cookie and (SSE)
?access_token=. Real redis-server, PostgreSQL and app server; tokens minted
with Debian's python3-jwt."""

import base64
import hashlib
import hmac
import json
import signal
import subprocess
import time

import jwt
import pytest

from harness import backends_conf, get, request, wait_until
from test_events import Sse
from test_proxy import App, upstream_conf

SECRET = "hs256-test-secret-0123456789abcdef"
ISS = "https://auth.test"
AUD = "batchd"
ADMIN = "admin-s3cret"

# Documents carry their owner: sessions.user_id, as text.
BY_IDS = ("SELECT s.id, json_build_object('id', s.id, 'title', s.title, 'owner_id', s.user_id::text)::text "
          "FROM sessions s WHERE s.id = ANY($1::text[])")
BY_IDS_NUM = ("SELECT s.id, json_build_object('id', s.id, 'owner_id', s.user_id)::text "
              "FROM sessions s WHERE s.id = ANY($1::text[])")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    (d / "jwt.secret").write_text(SECRET + "\n")
    for name, args in [("rsa-a", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("rsa-b", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("rsa-other", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ec-a", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])]:
        subprocess.run(["openssl", "genpkey", *args, "-out", str(d / f"{name}.key")], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", str(d / f"{name}.key"), "-pubout", "-out",
                        str(d / f"{name}.pem")], check=True, capture_output=True)
    return d


def mint(keys, sub="920", alg="HS256", kid=None, key=None, exp=300, **claims):
    now = int(time.time())
    body = {"sub": sub, "iss": ISS, "aud": AUD, "iat": now, **claims}
    if exp is not None:
        body["exp"] = now + exp
    body = {k: v for k, v in body.items() if v is not None}
    if key is None:
        key = SECRET if alg == "HS256" else (keys / f"{kid or 'rsa-a'}.key").read_text()
    headers = {"kid": kid} if kid else None
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def owner_of(pg, sid):
    return pg.psql(f"SELECT user_id FROM sessions WHERE id = '{sid}'").strip()


def auth_conf(keys, redis_port, pg, upstream_port=None, auth="", resource="", stream="",
              by_ids=BY_IDS, public_keys="rsa-a.pem, rsa-b.pem, ec-a.pem", secret=True):
    pub = ", ".join(str(keys / k.strip()) for k in public_keys.split(",") if k.strip())
    return f"""
{backends_conf(redis_port, pg)}{upstream_conf(upstream_port) if upstream_port else ""}
[auth]
{f"jwt_secret_file = {keys / 'jwt.secret'}" if secret else ""}
jwt_public_keys = {pub}
jwt_issuer = {ISS}
jwt_audience = {AUD}
leeway_s = 5
jwt_cookie = batchd_token
{auth}
[resource sessions]
path = /v1/sessions
key = session:{{id}}
ttl = 300
by_ids = {by_ids}
access = owner
owner_field = owner_id
{resource}
[resource any_sessions]
path = /v1/any
key = session:{{id}}
ttl = 300
by_ids = {by_ids}
access = authenticated
[stream session-events]
path = /v1/sessions/{{id}}/events
key = events:session:{{id}}
access = owner
owner_resource = sessions
{stream}
"""


@pytest.fixture
def app(start_batchd, redis, pg, keys):
    def _start(**kw):
        b = start_batchd(batchd=f"admin_token = {ADMIN}\n", extra=auth_conf(keys, redis.port, pg, **kw))
        wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1,
                   what="Redis and PostgreSQL connections")
        return b
    return _start


# --- who may read what ---------------------------------------------------------------------------


def test_anonymous_is_401_with_bearer_challenge(app):
    b = app()
    for path in ["/v1/sessions/s1", "/v1/sessions?ids=s1,s2", "/v1/any/s1"]:
        r = get(b.port, path)
        assert r.status == 401 and r.json() == {"error": "unauthorized"}, path
        assert r.headers["www-authenticate"] == "Bearer"
    r = request(b.port, "POST", "/v1/sessions/_batch", {"Content-Type": "application/json"}, '{"ids":["s1"]}')
    assert r.status == 401
    assert b.metric("batchd_auth_requests_total", result="missing_credential") == 4


def test_owner_reads_own_document_and_not_anothers(app, pg, redis):
    b = app()
    a_id, b_id = owner_of(pg, "s1"), owner_of(pg, "s2")
    assert a_id != b_id
    ta, tb = mint(None, sub=a_id), mint(None, sub=b_id)
    r = get(b.port, "/v1/sessions/s1", bearer(ta))
    assert r.status == 200 and r.json()["owner_id"] == a_id
    # B asks for A's document: the same 404 as for an id that does not exist.
    theirs = get(b.port, "/v1/sessions/s1", bearer(tb))
    missing = get(b.port, "/v1/sessions/nope", bearer(tb))
    assert theirs.status == missing.status == 404
    assert theirs.body == missing.body
    # Nor does whether it was cached: no X-Cache or Server-Timing on either.
    for h in ("x-cache", "server-timing"):
        assert h not in theirs.headers and h not in missing.headers
    # In a batch: null where the document is someone else's, in order.
    r = get(b.port, "/v1/sessions?ids=s2,s1,nope", bearer(tb))
    assert r.status == 200
    docs = r.json()
    assert docs[0]["id"] == "s2" and docs[1] is None and docs[2] is None
    r = request(b.port, "POST", "/v1/sessions/_batch", {**bearer(ta), "Content-Type": "application/json"},
                '{"ids":["s1","s2"]}')
    assert r.json()[0]["id"] == "s1" and r.json()[1] is None
    # Cached once, shared by both readers: one key, written by the first read.
    assert json.loads(redis.client().get("session:s1"))["owner_id"] == a_id
    assert b.metric("batchd_resource_not_owner_total", resource="sessions") == 3


def test_numeric_owner_field_matches_the_principals_text(app, pg):
    b = app(by_ids=BY_IDS_NUM)
    owner = owner_of(pg, "s3")
    assert get(b.port, "/v1/sessions/s3", bearer(mint(None, sub=owner))).status == 200
    assert get(b.port, "/v1/sessions/s3", bearer(mint(None, sub=owner + "0"))).status == 404


def test_authenticated_resource_serves_any_principal(app):
    b = app()
    r = get(b.port, "/v1/any/s1", bearer(mint(None, sub="someone-else")))
    assert r.status == 200 and r.json()["id"] == "s1"


# --- tokens --------------------------------------------------------------------------------------


def test_rs256_by_kid_es256_and_no_kid(app, keys, pg):
    b = app()
    owner = owner_of(pg, "s4")
    for tok in [mint(keys, sub=owner, alg="RS256", kid="rsa-a"),
                mint(keys, sub=owner, alg="RS256", kid="rsa-b"),
                mint(keys, sub=owner, alg="RS256", key=(keys / "rsa-b.key").read_text()),  # no kid
                mint(keys, sub=owner, alg="ES256", kid="ec-a")]:
        r = get(b.port, "/v1/sessions/s4", bearer(tok))
        assert r.status == 200, (r.status, r.body, jwt.get_unverified_header(tok))


def alg_confusion_token(keys, sub):
    """HS256 'signed' with the RSA public key's PEM text as the HMAC secret."""
    def b64(x):
        return base64.urlsafe_b64encode(x).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-a"}).encode())
    body = b64(json.dumps({"sub": sub, "iss": ISS, "aud": AUD, "exp": int(time.time()) + 300}).encode())
    sig = hmac.new((keys / "rsa-a.pem").read_bytes(), head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + b64(sig)).decode()


@pytest.mark.parametrize("case,reason", [
    ("expired", "expired"),
    ("not_yet", "not_yet_valid"),
    ("wrong_aud", "bad_audience"),
    ("wrong_iss", "bad_issuer"),
    ("wrong_rsa_key", "bad_signature"),
    ("wrong_secret", "bad_signature"),
    ("unknown_kid", "unknown_key"),
    # An HS256 token is checked against the HS256 secret only, whatever its kid says.
    ("alg_confusion", "bad_signature"),
    ("alg_none", "bad_algorithm"),
    ("garbage", "malformed"),
])
def test_bad_tokens_are_401_invalid_token(app, keys, pg, case, reason):
    b = app()
    owner = owner_of(pg, "s5")
    tok = {
        "expired": lambda: mint(keys, sub=owner, exp=-60),
        "not_yet": lambda: mint(keys, sub=owner, nbf=int(time.time()) + 600),
        "wrong_aud": lambda: mint(keys, sub=owner, aud="someone-else"),
        "wrong_iss": lambda: mint(keys, sub=owner, iss="https://evil.test"),
        "wrong_rsa_key": lambda: mint(keys, sub=owner, alg="RS256", kid="rsa-a",
                                      key=(keys / "rsa-other.key").read_text()),
        "wrong_secret": lambda: mint(keys, sub=owner, key="not-the-secret-0123456789abcdef"),
        "unknown_kid": lambda: mint(keys, sub=owner, alg="RS256", kid="rsa-zzz",
                                    key=(keys / "rsa-a.key").read_text()),
        "alg_confusion": lambda: alg_confusion_token(keys, owner),
        "alg_none": lambda: jwt.encode({"sub": owner, "iss": ISS, "aud": AUD}, None, algorithm="none"),
        "garbage": lambda: "abc.def.ghi",
    }[case]()
    r = get(b.port, "/v1/sessions/s5", bearer(tok))
    assert r.status == 401 and r.json() == {"error": "invalid_token"}, (case, r.status, r.body)
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert b.metric("batchd_auth_jwt_rejected_total", reason=reason) == 1, b.metrics()
    # Tokens never reach the log.
    assert tok not in b.log()


def test_hs256_keyed_with_the_rsa_public_key_is_refused(app, keys, pg):
    """The classic confusion: with only RSA keys configured, an HS256 token
    whose HMAC secret is a configured public key's PEM text."""
    b = app(secret=False)
    owner = owner_of(pg, "s5")
    assert get(b.port, "/v1/sessions/s5", bearer(mint(keys, sub=owner, alg="RS256", kid="rsa-a"))).status == 200
    r = get(b.port, "/v1/sessions/s5", bearer(alg_confusion_token(keys, owner)))
    assert r.status == 401 and r.json() == {"error": "invalid_token"}
    assert b.metric("batchd_auth_jwt_rejected_total", reason="bad_algorithm") == 1


def test_expiry_within_leeway_is_accepted(app, pg):
    b = app()
    owner = owner_of(pg, "s6")
    assert get(b.port, "/v1/sessions/s6", bearer(mint(None, sub=owner, exp=-2))).status == 200


def test_a_verified_token_is_cached_until_it_expires(app, pg):
    b = app()
    owner = owner_of(pg, "s7")
    tok = mint(None, sub=owner, exp=3)
    for _ in range(5):
        assert get(b.port, "/v1/sessions/s7", bearer(tok)).status == 200
    assert b.metric("batchd_auth_verifications_total", method="jwt") == 1
    # Past exp + leeway (5 s) it is verified again, and refused.
    wait_until(lambda: get(b.port, "/v1/sessions/s7", bearer(tok)).status == 401, timeout=15,
               interval=0.5, what="the token to expire")
    assert b.metric("batchd_auth_jwt_rejected_total", reason="expired") >= 1


def test_keep_alive_connection_remembers_its_token(app, pg):
    """The second and later requests of a connection with the same token
    need neither verification nor a cache lookup; another connection finds
    the verdict in the cache; a different token on the same connection is
    verified on its own."""
    from harness import Http
    b = app()
    owner = owner_of(pg, "s14")
    tok = mint(None, sub=owner)
    c = Http(b.port)
    for _ in range(5):
        assert c.request("GET", "/v1/sessions/s14", bearer(tok)).status == 200
    assert b.metric("batchd_auth_verifications_total", method="jwt") == 1
    assert b.metric("batchd_auth_connection_memo_hits_total") == 4
    assert b.metric("batchd_auth_cache_lookups_total", cache="jwt", result="miss") == 1
    assert get(b.port, "/v1/sessions/s14", bearer(tok)).status == 200  # a new connection
    assert b.metric("batchd_auth_cache_lookups_total", cache="jwt", result="hit") == 1
    assert c.request("GET", "/v1/sessions/s14", bearer(mint(None, sub="nobody"))).status == 404
    assert b.metric("batchd_auth_verifications_total", method="jwt") == 2
    assert c.request("GET", "/v1/sessions/s14", bearer("abc.def.ghi")).status == 401


def test_token_from_cookie(app, pg):
    b = app()
    owner = owner_of(pg, "s8")
    r = get(b.port, "/v1/sessions/s8", {"Cookie": f"other=1; batchd_token={mint(None, sub=owner)}"})
    assert r.status == 200
    # ?access_token= is for event streams only.
    r = get(b.port, f"/v1/sessions/s8?access_token={mint(None, sub=owner)}")
    assert r.status == 401


def test_reload_rotates_keys_and_forgets_verified_tokens(app, keys, pg):
    b = app()
    owner = owner_of(pg, "s9")
    tok = mint(keys, sub=owner, alg="RS256", kid="rsa-a")
    assert get(b.port, "/v1/sessions/s9", bearer(tok)).status == 200
    conf = b.conf.read_text()
    b.conf.write_text(conf.replace(f"{keys / 'rsa-a.pem'}, ", ""))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: get(b.port, "/v1/sessions/s9", bearer(tok)).status == 401, what="rsa-a retired")
    assert get(b.port, "/v1/sessions/s9", bearer(mint(keys, sub=owner, alg="RS256", kid="rsa-b"))).status == 200
    # A key file that cannot be read rejects the reload; the running keys stay.
    b.conf.write_text(conf.replace("rsa-b.pem", "missing.pem"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "missing.pem" in b.log(), what="the reload rejected")
    assert get(b.port, "/v1/sessions/s9", bearer(mint(keys, sub=owner, alg="RS256", kid="rsa-b"))).status == 200


def test_bad_key_file_fails_the_config_check(start_batchd, keys, tmp_path):
    from harness import BATCHD, config, free_port
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    conf = tmp_path / "b.ini"
    conf.write_text(config(free_port(), None, "", f"[upstream]\nurl = http://127.0.0.1:9\n"
                           f"[auth]\njwt_public_keys = {tmp_path / 'bad.pem'}\n"))
    p = subprocess.run([BATCHD, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 2 and "bad.pem" in p.stderr, p.stderr


# --- streams ---------------------------------------------------------------------------------------


def test_stream_owner_subscribes_others_refused(app, pg):
    b = app()
    a_id, b_id = owner_of(pg, "s10"), owner_of(pg, "s11")
    ta = mint(None, sub=a_id)
    s = Sse(b.port, "s10", query=f"?access_token={ta}")  # EventSource cannot send headers
    assert s.status == 200
    other = Sse(b.port, "s11", query=f"?access_token={ta}")
    assert other.status == 404
    anon = Sse(b.port, "s10")
    assert anon.status == 401
    bad = Sse(b.port, "s10", query="?access_token=abc.def.ghi")
    assert bad.status == 401
    # What the owner subscribed to arrives (published with the admin token).
    r = request(b.port, "POST", "/v1/sessions/s10/events", {"Authorization": f"Bearer {ADMIN}"}, "hello")
    assert r.status in (200, 201, 202), (r.status, r.body)
    f = s.frame()
    while "data" not in f:
        f = s.frame()
    assert f["data"] == ["hello"]
    assert b.metric("batchd_sse_not_owner_total", stream="session-events") == 1
    assert b_id  # B's own stream is B's: checked through the same coalesced read


class UnreachablePg:
    """A PostgreSQL nothing listens for."""

    def __init__(self, port):
        self.port = port

    def conninfo(self):
        return f"host=127.0.0.1 port={self.port} dbname=app user=app"


def test_stream_owner_lookup_unavailable_is_a_retry_not_a_final_status(start_batchd, keys):
    """No Redis, no PostgreSQL (a batchd just started listens before its
    backends are up): the owner cannot be looked up. A subscriber gets a
    200 holding a jittered retry: and the end of the stream, since any
    other status is final for EventSource; a publisher gets the 503."""
    from harness import free_port
    b = start_batchd(batchd=f"admin_token = {ADMIN}\n",
                     extra=auth_conf(keys, free_port(), UnreachablePg(free_port()), stream="owners_publish = yes\n"))
    tok = mint(None, sub="920")
    s = Sse(b.port, "s1", query=f"?access_token={tok}")
    assert s.status == 200 and s.headers["content-type"] == "text/event-stream"
    assert 2000 <= int(s.frame()["retry"][0]) <= 4000
    assert s.c.wait_closed(5)
    assert s.c.buf == b""  # nothing after the retry:
    assert b.metric("batchd_sse_rejected_total", stream="session-events", reason="owner_unavailable") == 1
    r = request(b.port, "POST", "/v1/sessions/s1/events", bearer(tok), "x")
    assert r.status == 503 and r.headers["retry-after"] == "1"
    # Who is asking is still checked first: no credential is a 401.
    assert Sse(b.port, "s1").status == 401


def test_owners_publish(app, pg):
    b = app(stream="owners_publish = yes\n")
    a_id = owner_of(pg, "s12")
    ta, tb = mint(None, sub=a_id), mint(None, sub=a_id + "x")
    r = request(b.port, "POST", "/v1/sessions/s12/events", bearer(ta), "mine")
    assert r.status in (200, 201, 202), (r.status, r.body)
    assert request(b.port, "POST", "/v1/sessions/s12/events", bearer(tb), "not mine").status == 404
    assert request(b.port, "POST", "/v1/sessions/s12/events", {}, "anon").status == 401
    assert request(b.port, "POST", "/v1/sessions/s12/events",
                   {"Authorization": f"Bearer {ADMIN}"}, "admin").status in (200, 201, 202)


def test_publish_stays_admin_only_without_owners_publish(app, pg):
    b = app()
    ta = mint(None, sub=owner_of(pg, "s13"))
    assert request(b.port, "POST", "/v1/sessions/s13/events", bearer(ta), "x").status == 401


# --- the principal and the app -----------------------------------------------------------------------


@pytest.fixture
def upstream():
    a = App()
    yield a
    a.stop()


def echoed(r):
    return {k.lower(): v for k, v in r.json()["headers"]}


def test_client_principal_header_never_reaches_the_app(app, upstream):
    b = app(upstream_port=upstream.port)
    # Anonymous, claiming to be someone: the claim is removed.
    h = echoed(get(b.port, "/echo", {"X-Principal": "admin", "x-principal": "root"}))
    assert "x-principal" not in h
    # With a valid token: the verified principal, once, whatever the client sent.
    r = get(b.port, "/echo", {**bearer(mint(None, sub="alice")), "X-Principal": "admin"})
    hs = [v for k, v in r.json()["headers"] if k.lower() == "x-principal"]
    assert hs == ["alice"]
    # A bad token is the app's business: forwarded as is, with no principal.
    r = get(b.port, "/echo", bearer("abc.def.ghi"))
    assert r.status == 200 and "x-principal" not in echoed(r)
    # Proxied writes carry it too (the head waits for the identity).
    r = request(b.port, "POST", "/echo", {**bearer(mint(None, sub="bob")), "X-Principal": "x"}, "body")
    assert [v for k, v in r.json()["headers"] if k.lower() == "x-principal"] == ["bob"]
    assert r.json()["length"] == 4


def test_pipelined_requests_with_different_tokens_on_one_connection(app, pg):
    """The connection remembers the last token it proved: requests pipelined
    in one write, A's token, then B's, then A's again, each get their own
    principal's answer, in order (the memo never lends A's identity to B)."""
    from harness import Http
    b = app()
    a_id, b_id = owner_of(pg, "s15"), owner_of(pg, "s16")
    ta, tb = mint(None, sub=a_id), mint(None, sub=b_id)
    reqs = [("s15", ta), ("s15", tb), ("s16", tb), ("s16", ta), ("s15", ta), ("s15", "abc.def.ghi")]
    c = Http(b.port)
    c.send("".join(f"GET /v1/sessions/{sid} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"
                   for sid, t in reqs))
    got = [c.read_response().status for _ in reqs]
    assert got == [200, 404, 200, 404, 200, 401]


def test_access_token_never_reaches_the_log(start_batchd, keys, redis, pg):
    """Even at log_level = debug, with good and bad tokens on a stream."""
    b = start_batchd(batchd=f"admin_token = {ADMIN}\nlog_level = debug\n",
                     extra=auth_conf(keys, redis.port, pg))
    wait_until(lambda: b.metric("batchd_redis_up") == 1 and b.metric("batchd_pg_up") == 1, what="backends")
    good, bad = mint(None, sub=owner_of(pg, "s17")), mint(None, sub="x", exp=-600)
    assert Sse(b.port, "s17", query=f"?access_token={good}").status == 200
    assert Sse(b.port, "s17", query=f"?access_token={bad}").status == 401
    assert get(b.port, "/v1/sessions/s17", bearer(bad)).status == 401
    log = b.log()
    assert "level=debug" in log
    for t in (good, bad):
        for part in t.split("."):
            assert part not in log


def test_verdict_cache_is_bounded_and_tokens_too(app, pg):
    """check_cache_entries bounds the verified-token cache: a third token
    evicts the oldest, which is then verified again (counted); a token over
    max_token_bytes is refused as malformed."""
    b = app(auth="check_cache_entries = 2\nmax_token_bytes = 600\n")
    owner = owner_of(pg, "s18")
    toks = [mint(None, sub=owner, n=i) for i in range(3)]
    for t in toks:  # a new connection each: no per-connection memo
        assert get(b.port, "/v1/sessions/s18", bearer(t)).status == 200
    assert b.metric("batchd_auth_cache_entries", cache="jwt") == 2
    assert b.metric("batchd_auth_cache_evictions_total", cache="jwt") == 1
    assert get(b.port, "/v1/sessions/s18", bearer(toks[2])).status == 200  # still cached
    assert b.metric("batchd_auth_verifications_total", method="jwt") == 3
    assert get(b.port, "/v1/sessions/s18", bearer(toks[0])).status == 200  # evicted: verified again
    assert b.metric("batchd_auth_verifications_total", method="jwt") == 4
    big = mint(None, sub=owner, pad="x" * 700)
    r = get(b.port, "/v1/sessions/s18", bearer(big))
    assert r.status == 401 and r.json() == {"error": "invalid_token"}
    assert b.metric("batchd_auth_jwt_rejected_total", reason="malformed") == 1
