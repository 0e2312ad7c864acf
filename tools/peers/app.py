"""FastAPI peer for tools/bench: the same reads batchd serves, written the
way a Python team would write them, twice.

    /n1/sessions/{id}         GET the key; on a miss one query, then SET
    /n1/sessions?ids=a,b      the N+1 way: the above, id after id
    /batched/sessions/{id}    same as /n1 for one id
    /batched/sessions?ids=    one MGET, one query for all misses, one
                              pipelined burst of SETs
    /healthz                  {"status":"ok"}

and a page of one owner's sessions, {"items":[...],"next":cursor|null},
twice: the principal is the "sub" of an HS256 JWT in
"Authorization: Bearer", verified with python3-jwt against the secret
batchd verifies it with (BENCH_JWT_SECRET_FILE); no valid token is 401.

    /before/me/sessions?limit=50&after=
        the way such apps did it before the fix: SCAN the whole keyspace
        for owned:session:* (COUNT 1000), MGET every key found (1,000 at
        a time), parse each document, keep the principal's, sort by
        (created_at, id) descending, slice after the cursor.
    /after/me/sessions?limit=50&after=
        after the fix: one keyset page query (batchd's page_query text,
        BENCH_PAGE_QUERY: $1 principal, $2 cursor or NULL, $3 limit + 1),
        then the batched read above of that page's ids (one MGET, one
        by_ids query for the misses, SETs back).

The documents of both list routes carry owner_id: they live under their
own keys (BENCH_OWNED_KEY, owned:session:{id}) and come from their own
query (BENCH_OWNED_BY_IDS, the by_ids below with owner_id added), so the
documents of the routes above stay as they were.

Same Redis keys (session:{id}), TTL and query text as batchd (the query
comes from the bench's batchd config through BENCH_BY_IDS), so every
contender reads and writes the same cache. Documents are passed through as
the JSON text Redis or PostgreSQL returned, not parsed and re-encoded: that
is the fastest a FastAPI app can do it, so the comparison flatters the peer,
not batchd.

A failed cache write never fails the read (tools/bench runs its cold rows
with a Redis that refuses writes).

Run (Debian's python3-* packages, so /usr/bin/python3):
    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 \
    BENCH_PG_DSN=postgresql://app@127.0.0.1:5432/app \
    BENCH_BY_IDS="SELECT ... WHERE s.id = ANY($1::text[])" \
    BENCH_OWNED_BY_IDS="..." BENCH_PAGE_QUERY="SELECT id, ... LIMIT $3" \
    BENCH_JWT_SECRET_FILE=.bench/jwt.secret \
    /usr/bin/python3 -m uvicorn app:app --app-dir tools/peers \
        --loop uvloop --http httptools --workers 1 --port 8000
"""
import json
import os
import re

import asyncpg
import jwt
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://app@127.0.0.1:5432/app")
BY_IDS = os.environ["BENCH_BY_IDS"]
TTL = int(os.environ.get("BENCH_TTL", "3600"))
PG_POOL = int(os.environ.get("BENCH_PG_POOL", "10"))
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_IDS = 1000
# The list routes; unset, they answer 503.
OWNED_BY_IDS = os.environ.get("BENCH_OWNED_BY_IDS", "")
OWNED_KEY = os.environ.get("BENCH_OWNED_KEY", "owned:session:{id}")
PAGE_QUERY = os.environ.get("BENCH_PAGE_QUERY", "")
JWT_SECRET_FILE = os.environ.get("BENCH_JWT_SECRET_FILE", "")
SCAN_COUNT = int(os.environ.get("BENCH_SCAN_COUNT", "1000"))
DEFAULT_LIMIT, MAX_LIMIT, MAX_CURSOR = 20, 200, 512

app = FastAPI()
state = {}


@app.on_event("startup")
async def startup():
    state["redis"] = aioredis.Redis.from_url(REDIS_URL)
    state["pg"] = await asyncpg.create_pool(PG_DSN, min_size=PG_POOL, max_size=PG_POOL)
    if JWT_SECRET_FILE:
        with open(JWT_SECRET_FILE, "rb") as f:
            secret = f.read()
        # As batchd reads it: one trailing newline is the editor's.
        secret = secret[:-1] if secret.endswith(b"\n") else secret
        state["jwt_secret"] = secret[:-1] if secret.endswith(b"\r") else secret


@app.on_event("shutdown")
async def shutdown():
    await state["pg"].close()
    await state["redis"].close()


def key(i):
    return "session:" + i


def owned_key(i):
    return OWNED_KEY.replace("{id}", i)


def json_response(body, status=200):
    return Response(content=body, status_code=status, media_type="application/json")


def parse_ids(ids):
    out = [i for i in ids.split(",") if i] if ids else []
    if not out or len(out) > MAX_IDS or not all(ID_RE.match(i) for i in out):
        return None
    return out


async def set_quietly(r, k, v):
    try:
        await r.set(k, v, ex=TTL)
    except aioredis.RedisError:
        pass


async def load_one(i):
    """One id the N+1 way: GET, and on a miss one query and one SET."""
    r = state["redis"]
    doc = await r.get(key(i))
    if doc is not None:
        return doc.decode()
    rows = await state["pg"].fetch(BY_IDS, [i])
    if not rows:
        return None
    doc = rows[0][1]
    await set_quietly(r, key(i), doc)
    return doc


async def load_many(ids, key=key, by_ids=BY_IDS):
    """The batched way: one MGET, one query for the misses, one pipeline."""
    r = state["redis"]
    if not ids:
        return []
    cached = await r.mget([key(i) for i in ids])
    docs = {}
    misses = []
    for i, v in zip(ids, cached):
        if v is None:
            misses.append(i)
        else:
            docs[i] = v.decode()
    if misses:
        rows = await state["pg"].fetch(by_ids, list(dict.fromkeys(misses)))
        if rows:
            pipe = r.pipeline(transaction=False)
            for rid, doc in rows:
                docs[rid] = doc
                pipe.set(key(rid), doc, ex=TTL)
            try:
                await pipe.execute(raise_on_error=False)
            except aioredis.RedisError:
                pass
    return [docs.get(i) for i in ids]


def array_body(docs):
    return "[" + ",".join("null" if d is None else d for d in docs) + "]"


def page_body(docs, cursor):
    return '{"items":[' + ",".join(docs) + '],"next":' + json.dumps(cursor) + "}"


NOT_FOUND = '{"error":"not_found"}'
BAD_IDS = '{"error":"bad_ids"}'
BAD_PAGE = '{"error":"bad_request"}'
UNAUTHORIZED = '{"error":"unauthorized"}'
NOT_CONFIGURED = '{"error":"list routes not configured"}'


def principal(request):
    """The token's sub, or None when there is no valid token."""
    h = request.headers.get("authorization", "")
    if not h.startswith("Bearer "):
        return None
    try:
        claims = jwt.decode(h[7:], state["jwt_secret"], algorithms=["HS256"], leeway=30,
                            options={"require": ["exp", "sub"]})
    except jwt.InvalidTokenError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and sub else None


def page_args(limit, after):
    """(limit, cursor or None), or None for a bad request."""
    if limit is None or limit == "":
        n = DEFAULT_LIMIT
    elif limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT:
        n = int(limit)
    else:
        return None
    if after is not None and len(after) > MAX_CURSOR:
        return None
    return n, after or None


def list_guard(request, limit, after):
    """(principal, limit, cursor), or the error answer."""
    if not (PAGE_QUERY and OWNED_BY_IDS and "jwt_secret" in state):
        return json_response(NOT_CONFIGURED, 503)
    who = principal(request)
    if who is None:
        resp = json_response(UNAUTHORIZED, 401)
        resp.headers["WWW-Authenticate"] = "Bearer"
        return resp
    args = page_args(limit, after)
    if args is None:
        return json_response(BAD_PAGE, 400)
    return (who,) + args


@app.get("/healthz")
async def healthz():
    return json_response('{"status":"ok"}')


@app.get("/n1/sessions/{sid}")
@app.get("/batched/sessions/{sid}")
async def one(sid: str):
    if not ID_RE.match(sid):
        return json_response(BAD_IDS, 400)
    doc = await load_one(sid)
    return json_response(doc, 200) if doc is not None else json_response(NOT_FOUND, 404)


@app.get("/n1/sessions")
async def many_n1(ids: str = ""):
    parsed = parse_ids(ids)
    if parsed is None:
        return json_response(BAD_IDS, 400)
    docs = [await load_one(i) for i in parsed]
    return json_response(array_body(docs))


@app.get("/batched/sessions")
async def many_batched(ids: str = ""):
    parsed = parse_ids(ids)
    if parsed is None:
        return json_response(BAD_IDS, 400)
    return json_response(array_body(await load_many(parsed)))


@app.get("/before/me/sessions")
async def list_before(request: Request, limit: str = None, after: str = None):
    """Before the fix: the whole keyspace, every time."""
    g = list_guard(request, limit, after)
    if isinstance(g, Response):
        return g
    who, n, cursor = g
    r = state["redis"]
    keys = []
    scan = 0
    while True:
        scan, found = await r.scan(scan, match=owned_key("*"), count=SCAN_COUNT)
        keys += found
        if scan == 0:
            break
    keys = list(dict.fromkeys(keys))   # SCAN may return a key twice
    mine = []
    for i in range(0, len(keys), 1000):
        for raw in await r.mget(keys[i:i + 1000]):
            if raw is None:
                continue
            doc = json.loads(raw)
            if doc.get("owner_id") == who:
                mine.append((f"{doc['created_at']} {doc['id']}", raw))
    mine.sort(reverse=True)
    if cursor is not None:
        mine = [m for m in mine if m[0] < cursor]
    page = mine[:n]
    nxt = page[-1][0] if len(mine) > n else None
    return json_response(page_body([raw.decode() for _, raw in page], nxt))


@app.get("/after/me/sessions")
async def list_after(request: Request, limit: str = None, after: str = None):
    """After the fix: one keyset query for the page's ids, one batched read."""
    g = list_guard(request, limit, after)
    if isinstance(g, Response):
        return g
    who, n, cursor = g
    rows = await state["pg"].fetch(PAGE_QUERY, who, cursor, n + 1)
    nxt = rows[n - 1][1] if len(rows) > n else None
    docs = await load_many([row[0] for row in rows[:n]], owned_key, OWNED_BY_IDS)
    return json_response(page_body([d for d in docs if d is not None], nxt))
