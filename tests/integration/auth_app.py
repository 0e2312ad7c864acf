"""An app server with cookie sessions, for the forward auth tests
(test_forward_auth.py). Standard library only; HTTP/1.1 with keep-alive.

Run:  python3 auth_app.py PORT

  GET /api/auth/whoami      the check batchd sends: "Cookie: session=<value>" is looked up in
                            the session table; 200 + "X-Principal: <user>", or 401 (unknown),
                            or what the entry says (status, delay_ms, no_header). Every call
                            is counted and its header fields logged. While held, calls wait
                            for the release.
  GET /echo                 JSON: the request's header fields (what a proxied request carried)
  POST /_test/sessions      JSON {"session": S, "user": U, "status": 200, "delay_ms": 0,
                            "no_header": false} adds or replaces S; {"session": S, "revoke": true}
                            removes it
  POST /_test/hold          whoami calls from now on wait ...
  POST /_test/release       ... until this
  GET /_test/whoami_calls   JSON: calls, held (waiting now), log (header fields of each call),
                            targets (the request target of each call), connections (accepted)
"""

import asyncio
import json
import sys

SESSIONS = {}
STATE = {"calls": 0, "held": 0, "log": [], "targets": [], "connections": 0}
GATE = {"event": None}  # an asyncio.Event while held


def response(status, body=b"", extra=None):
    reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
              500: "Internal Server Error"}.get(status, "X")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += extra or []
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def session_of(cookie):
    for part in cookie.split(";"):
        k, _, v = part.strip().partition("=")
        if k == "session":
            return v
    return None


async def whoami(target, headers):
    STATE["calls"] += 1
    STATE["log"].append(headers)
    STATE["targets"].append(target)
    if GATE["event"] is not None:
        STATE["held"] += 1
        await GATE["event"].wait()
        STATE["held"] -= 1
    h = {k.lower(): v for k, v in headers}
    entry = SESSIONS.get(session_of(h.get("cookie", "")))
    if entry is None:
        return response(401, b'{"error":"unauthorized"}')
    if entry.get("delay_ms"):
        await asyncio.sleep(entry["delay_ms"] / 1000)
    status = entry.get("status", 200)
    extra = [] if entry.get("no_header") or status != 200 else [f"X-Principal: {entry['user']}"]
    return response(status, json.dumps({"user": entry.get("user")}).encode(), extra)


async def handle(reader, writer):
    STATE["connections"] += 1
    try:
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            method, target, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            headers = []
            while True:
                h = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
                if not h:
                    break
                k, _, v = h.partition(":")
                headers.append([k.strip(), v.strip()])
            n = int({k.lower(): v for k, v in headers}.get("content-length", "0"))
            body = await reader.readexactly(n) if n else b""
            path = target.split("?", 1)[0]
            if path == "/api/auth/whoami":
                out = await whoami(target, headers)
            elif path == "/echo":
                out = response(200, json.dumps({"method": method, "path": target, "headers": headers}).encode())
            elif path == "/_test/sessions" and method == "POST":
                e = json.loads(body)
                if e.get("revoke"):
                    SESSIONS.pop(e["session"], None)
                else:
                    SESSIONS[e["session"]] = e
                out = response(200, b"{}")
            elif path == "/_test/hold" and method == "POST":
                GATE["event"] = asyncio.Event()
                out = response(200, b"{}")
            elif path == "/_test/release" and method == "POST":
                if GATE["event"] is not None:
                    GATE["event"].set()
                GATE["event"] = None
                out = response(200, b"{}")
            elif path == "/_test/whoami_calls":
                out = response(200, json.dumps(STATE).encode())
            else:
                out = response(404, b'{"error":"no such path"}')
            writer.write(out)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
