"""FastAPI peer for tools/bench: the same reads batchd serves, written the
way a Python team would write them, twice.

    /n1/sessions/{id}         GET the key; on a miss one query, then SET
    /n1/sessions?ids=a,b      the N+1 way: the above, id after id
    /batched/sessions/{id}    same as /n1 for one id
    /batched/sessions?ids=    one MGET, one query for all misses, one
                              pipelined burst of SETs
    /healthz                  {"status":"ok"}

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
    /usr/bin/python3 -m uvicorn app:app --app-dir tools/peers \
        --loop uvloop --http httptools --workers 1 --port 8000
"""
import os
import re

import asyncpg
import redis.asyncio as aioredis
from fastapi import FastAPI, Response

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://app@127.0.0.1:5432/app")
BY_IDS = os.environ["BENCH_BY_IDS"]
TTL = int(os.environ.get("BENCH_TTL", "3600"))
PG_POOL = int(os.environ.get("BENCH_PG_POOL", "10"))
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_IDS = 1000

app = FastAPI()
state = {}


@app.on_event("startup")
async def startup():
    state["redis"] = aioredis.Redis.from_url(REDIS_URL)
    state["pg"] = await asyncpg.create_pool(PG_DSN, min_size=PG_POOL, max_size=PG_POOL)


@app.on_event("shutdown")
async def shutdown():
    await state["pg"].close()
    await state["redis"].close()


def key(i):
    return "session:" + i


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


async def load_many(ids):
    """The batched way: one MGET, one query for the misses, one pipeline."""
    r = state["redis"]
    cached = await r.mget([key(i) for i in ids])
    docs = {}
    misses = []
    for i, v in zip(ids, cached):
        if v is None:
            misses.append(i)
        else:
            docs[i] = v.decode()
    if misses:
        rows = await state["pg"].fetch(BY_IDS, list(dict.fromkeys(misses)))
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


NOT_FOUND = '{"error":"not_found"}'
BAD_IDS = '{"error":"bad_ids"}'


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
