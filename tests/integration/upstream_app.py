"""A small HTTP/1.1 application server for the proxy tests (standard library
plus psycopg2 from Debian). It speaks keep-alive, reads Content-Length and
chunked bodies as they stream, and answers in either framing, so the tests
see what batchd really forwarded.

Run:  python3 upstream_app.py PORT [POSTGRES_CONNINFO]

  GET|POST|PUT /echo        JSON: method, path, query, headers, body length and sha256
  GET /big?size=N&chunked=1 N bytes of a known pattern, chunked or with a length
  POST /upload              body read as it streams; JSON length and sha256
  GET /slow?ms=N            the response head only after N ms
  GET /sse?n=N&gap_ms=M     N SSE events, M ms apart, on a chunked response
  GET /stats                connections accepted, requests served, hits per "METHOD /path",
                            requests dropped unanswered
  PUT /api/sessions/{id}?title=T&empty=1   UPDATE sessions SET title = T; 200 (404 when no
                            row), with an empty body
  POST /api/sessions        body {"id": I, "title": T}: INSERT a session created now, owned by
                            the principal batchd forwards in X-Principal (400 without one); 201
  DELETE /api/sessions/{id} DELETE that session; 200 (404 when no row)
  GET /close                answers with Connection: close
  GET /headers?Name=value   200 with each query parameter as an answer header
  GET /page                 a small HTML page for the browser tests (test_browser.py): its
                            listen(name, url) opens an EventSource and keeps what it sees in
                            streams[name] (got: [lastEventId, data] pairs, opens, errors, states)
  ANY /hangup               reads the request, then closes the connection without answering
  ANY /arm                  answers 200, then drops the next request on this connection
                            unanswered (closes it): the race of an idle close meeting a request
  POST /early?delay_ms=N&empty=1  after N ms (body unread meanwhile), answers in full right
                            after the head (with an empty body), then reads and discards the
                            body, so the connection stays in step for the next request
"""

import asyncio
import hashlib
import json
import sys
from urllib.parse import parse_qs, urlsplit

STATS = {"connections": 0, "requests": 0, "hits": {}, "dropped": 0}
PG = None


def pattern(n):
    """The n bytes GET /big sends; test_proxy.py checks bodies against it."""
    block = bytes(range(256)) * 64
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


async def read_body(reader, headers):
    """Yields the body in pieces as they arrive."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    n = int(headers.get("content-length", "0"))
    while n > 0:
        piece = await reader.read(min(n, 65536))
        if not piece:
            raise ConnectionError("body cut short")
        n -= len(piece)
        yield piece


# What GET /page serves. Served through batchd, the page shares batchd's
# origin, so its EventSource is same-origin and carries batchd's cookies.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>batchd browser test</title></head>
<body><script>
window.streams = {};
window.listen = function (name, url) {
  const s = {got: [], opens: 0, errors: 0, states: []};
  const es = new EventSource(url);
  s.es = es;
  es.onopen = () => { s.opens++; };
  es.onmessage = (e) => { s.got.push([e.lastEventId, e.data]); };
  es.onerror = () => { s.errors++; s.states.push(es.readyState); };
  window.streams[name] = s;
};
window.seen = (name) => {
  const s = window.streams[name];
  return {got: s.got, opens: s.opens, errors: s.errors, states: s.states, readyState: s.es.readyState};
};
</script></body></html>
"""


def response(status, body=b"", ctype="application/json", extra=None, close=False):
    reason = {200: "OK", 201: "Created", 404: "Not Found", 500: "Internal Server Error"}.get(status, "X")
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
    head += extra or []
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def handle(reader, writer):
    STATS["connections"] += 1
    drop_next = False
    try:
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            method, target, _ = line.decode().rstrip("\r\n").split(" ", 2)
            headers, raw = {}, []
            while True:
                h = (await reader.readuntil(b"\r\n")).decode().rstrip("\r\n")
                if not h:
                    break
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
                raw.append([k.strip(), v.strip()])
            STATS["requests"] += 1
            url = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            hit = f"{method} {url.path}"
            STATS["hits"][hit] = STATS["hits"].get(hit, 0) + 1
            if url.path == "/early":
                await asyncio.sleep(int(q.get("delay_ms", "0")) / 1000)
                writer.write(response(200, b"" if q.get("empty") == "1" else b'{"early":true}'))
                await writer.drain()
                async for _ in read_body(reader, headers):
                    pass
                continue
            sha, length, kept = hashlib.sha256(), 0, []
            async for piece in read_body(reader, headers):
                sha.update(piece)
                length += len(piece)
                if url.path.startswith("/api/"):
                    kept.append(piece)
                if url.path == "/upload":
                    await asyncio.sleep(0)  # consume as it streams
            path = url.path
            if drop_next or path == "/hangup":
                STATS["dropped"] += 1
                return  # closed unanswered (finally)
            if path == "/arm":
                drop_next = True
                writer.write(response(200, b'{"armed":true}'))
            elif path == "/echo":
                body = json.dumps({"method": method, "path": path, "query": url.query, "headers": raw,
                                   "length": length, "sha256": sha.hexdigest()}).encode()
                writer.write(response(200, body))
            elif path == "/upload":
                writer.write(response(200, json.dumps({"length": length, "sha256": sha.hexdigest()}).encode()))
            elif path == "/big":
                n = int(q.get("size", "0"))
                data = pattern(n)
                if q.get("chunked") == "1":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    for i in range(0, n, 100000):
                        part = data[i:i + 100000]
                        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(response(200, data, "application/octet-stream"))
            elif path == "/slow":
                await asyncio.sleep(int(q.get("ms", "1000")) / 1000)
                writer.write(response(200, b'{"slow":true}'))
            elif path == "/sse":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(int(q.get("n", "3"))):
                    ev = f"id: {i}\ndata: tick {i}\n\n".encode()
                    writer.write(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(int(q.get("gap_ms", "200")) / 1000)
                writer.write(b"0\r\n\r\n")
            elif path == "/page" and method == "GET":
                writer.write(response(200, PAGE, "text/html; charset=utf-8"))
            elif path == "/stats":
                writer.write(response(200, json.dumps(STATS).encode()))
            elif path == "/headers":
                writer.write(response(200, b"{}", extra=[f"{k}: {v}" for k, v in q.items()]))
            elif path == "/close":
                writer.write(response(200, b'{"bye":true}', close=True))
                await writer.drain()
                writer.close()
                return
            elif path.startswith("/api/sessions/") and method == "PUT":
                sid = path.rsplit("/", 1)[1]
                new_title = q.get("title", "")
                cur = PG.cursor()
                cur.execute("UPDATE sessions SET title = %s WHERE id = %s", (new_title, sid))
                PG.commit()
                body = b"" if q.get("empty") == "1" else json.dumps({"id": sid}).encode()
                writer.write(response(200 if cur.rowcount else 404, body))
            elif path == "/api/sessions" and method == "POST":
                doc = json.loads(b"".join(kept) or b"{}")
                owner = headers.get("x-principal")
                if not owner:
                    writer.write(response(400, b'{"error":"no principal"}'))
                else:
                    cur = PG.cursor()
                    cur.execute("INSERT INTO sessions (id, user_id, title, owner_id) VALUES (%s, 0, %s, %s)",
                                (doc["id"], doc.get("title", ""), owner))
                    PG.commit()
                    writer.write(response(201, json.dumps({"id": doc["id"]}).encode()))
            elif path.startswith("/api/sessions/") and method == "DELETE":
                cur = PG.cursor()
                cur.execute("DELETE FROM sessions WHERE id = %s", (path.rsplit("/", 1)[1],))
                PG.commit()
                writer.write(response(200 if cur.rowcount else 404, b"{}"))
            else:
                writer.write(response(404, b'{"error":"no such path"}'))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        import psycopg2
        PG = psycopg2.connect(sys.argv[2])
    asyncio.run(main(int(sys.argv[1])))
