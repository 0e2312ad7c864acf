"""tools/lib/bench_access.py: the list and owner scenarios of tools/bench.

Both run against batchd-access (bench_conf.write_access_conf), the second
batchd, with u1's token on every request:

    list   GET /v1/me/sessions?limit=50[&after=]  batchd [list my-sessions]
           GET /before/me/sessions                FastAPI: SCAN + MGET of everything
           GET /after/me/sessions                 FastAPI: page query + MGET
    owner  GET /v1/pub/sessions/{id}              batchd, access = public
           GET /v1/own/sessions/{id}              batchd, access = owner

Until batchd serves lists and checks owners, its rows say so (n/a) and
the FastAPI rows are measured all the same.
"""
import json
import re
import urllib.parse

from bench_conf import OWNED_IDS, OWNER, PAGE, PAGES, owned_missing
from bench_env import NotAvailable, http_get

BEFORE_CONNS = 8   # the /before route takes tens of ms a request: 64 would queue for seconds


def walk_pages(b, port, path, who):
    """Follows "next" from the first page of u1's sessions and checks that
    the pages hold u1's 1,000 ids in page_query's order, 50 a page, every
    document u1's. Returns the 20 page targets. who names the server in
    the reasons (NotAvailable) it gives."""
    expect = b.owner_page_order()
    got, targets, after = [], [], None
    for _ in range(PAGES + 1):
        t = f"{path}?limit={PAGE}" + ("" if after is None else "&after=" + urllib.parse.quote(after, safe=""))
        status, _, body = http_get(f"http://127.0.0.1:{port}{t}", headers=b.auth)
        text = " ".join(body[:100].decode(errors="replace").split())
        if status == 404 and who == "batchd":
            raise NotAvailable(f"batchd does not serve lists yet (404 for GET {path}: {text})")
        if status != 200:
            raise NotAvailable(f"{who}: GET {t[:80]} answered {status} {text}")
        try:
            doc = json.loads(body)
            after = doc["next"]
            ids = [it["id"] for it in doc["items"]]
            owners = {it.get("owner_id") for it in doc["items"]}
        except (ValueError, KeyError, TypeError) as e:
            raise NotAvailable(f"{who}: GET {t[:80]} answered no {{items, next}} page ({e!r}): {text}")
        if owners - {OWNER}:
            raise NotAvailable(f"{who}: page {len(targets) + 1} holds documents owned by "
                               f"{sorted(map(str, owners - {OWNER}))[:3]}")
        targets.append(t)
        got += ids
        if after is None:
            break
    if got != expect or len(targets) != PAGES:
        i = next((k for k, (x, y) in enumerate(zip(got, expect)) if x != y), min(len(got), len(expect)))
        raise NotAvailable(f"{who}: {len(targets)} pages of {PAGE} hold {len(got)} ids; page_query gives "
                           f"{len(expect)} in {PAGES} pages; first difference at #{i + 1}: "
                           f"{got[i] if i < len(got) else 'none'} for {expect[i] if i < len(expect) else 'none'}")
    return targets


def targets_dir(b):
    """Where the targets= files for tools/wrk/bench.lua go."""
    tdir = b.run / "targets"
    tdir.mkdir(exist_ok=True)
    return tdir


def lists(b):
    p = b.port
    why = owned_missing(b.cfg)
    tdir = targets_dir(b)

    def list_job(system, kind, server, path, walk, conns=64, vs=None, note=""):
        port = p[server]
        f = tdir / (re.sub(r"[^a-z0-9]+", "-", system.lower()).strip("-") + ".txt")
        who = "batchd" if server.startswith("batchd") else system.split(" (")[0]

        def pre():
            if why:
                raise NotAvailable(why)
            pages = walk_pages(b, port, path, who)
            f.write_text("\n".join(pages if walk else pages[:1]) + "\n")
        return b.http_job("list", system, kind, server, port, [f"targets={f}"], conns=conns, headers=b.auth,
                          pre=pre, vs=vs, note=note)

    walk = f"{PAGES} pages at random"
    jobs = [
        list_job("batchd, first page (cached)", "batchd", "batchd-access", "/v1/me/sessions", False),
        list_job(f"batchd, {walk}", "batchd-walk", "batchd-access", "/v1/me/sessions", True),
        list_job("FastAPI before (SCAN + MGET), 1 worker", "peer", "fastapi1", "/before/me/sessions", False,
                 conns=BEFORE_CONNS),
        list_job("FastAPI after (page query + MGET), 1 worker", "peer", "fastapi1", "/after/me/sessions", False),
        list_job("FastAPI after (page query + MGET), 2 workers", "peer", "fastapi2", "/after/me/sessions", False),
        list_job(f"FastAPI after, {walk}, 1 worker", "peer", "fastapi1", "/after/me/sessions", True,
                 vs=f"batchd, {walk}"),
    ]
    if not why:
        b.set_cache("owned")
    b.run_jobs(jobs)
    # What the fix alone gained, whether or not batchd's rows ran.
    before = b.find("list", "FastAPI before")
    if before:
        for r in b.measured("list", "FastAPI after"):
            r["note"] = "; ".join(x for x in (f"{r['rps'] / before['rps']:,.0f}× FastAPI before", r["note"]) if x)


def owner(b):
    port = b.port["batchd-access"]
    why = owned_missing(b.cfg)
    tdir = targets_dir(b)
    files = {}
    for name, path in (("public", "/v1/pub/sessions/"), ("owner", "/v1/own/sessions/")):
        files[name] = tdir / f"owner-{name}.txt"
        files[name].write_text("".join(f"{path}{i}\n" for i in OWNED_IDS))

    def owned_doc(status, headers, body):
        text = " ".join(body[:100].decode(errors="replace").split())
        if status != 200:
            return f"GET of a document u1 owns answered {status} {text}"
        try:
            owner_id = json.loads(body).get("owner_id")
        except (ValueError, AttributeError):
            owner_id = "(not a JSON object)"
        return None if owner_id == OWNER else f"the document's owner_id is {owner_id!r}, not {OWNER!r}: {text}"

    def pre_public():
        if why:
            raise NotAvailable(why)

    def pre_owner():
        """access = owner must be enforced, or the row measures nothing."""
        pre_public()
        base = f"http://127.0.0.1:{port}/v1/own/sessions/"
        anon = http_get(base + OWNED_IDS[0])[0]
        other = http_get(base + "s1", headers=b.auth)[0]   # s1 belongs to u3
        if (anon, other) != (401, 404):
            raise NotAvailable(f"batchd does not enforce access = owner yet (without a token a document "
                               f"answered {anon}, another owner's document to u1 {other}; expected 401 and 404)")

    jobs = [
        b.http_job("owner", "batchd, access = public", "batchd-public", "batchd-access", port,
                   [f"targets={files['public']}"], headers=b.auth, check=owned_doc, pre=pre_public),
        b.http_job("owner", "batchd, access = owner", "batchd", "batchd-access", port,
                   [f"targets={files['owner']}"], headers=b.auth, check=owned_doc, pre=pre_owner),
    ]
    if not why:
        b.set_cache("owned")
    # A B A B ...: more, shorter slices than elsewhere, and the median.
    b.run_jobs(jobs, slices=[2] * 3 if b.quick else [3] * 5, pick="median")
