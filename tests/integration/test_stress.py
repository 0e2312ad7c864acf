"""Many clients at once: 2,000 connections x 50 keep-alive requests each,
every answer checked, then a clean exit under AddressSanitizer (no leaks)."""

import asyncio

CONNS = 2000
REQS = 50


async def client(port, n, results):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    ok = 0
    for _ in range(n):
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        ok += head.startswith(b"HTTP/1.1 200 ") and body == b'{"status":"ok"}\n'
    writer.close()
    await writer.wait_closed()
    results.append(ok)


async def run(port):
    results = []
    # Open in waves so the listen backlog is not the thing under test.
    tasks = []
    for i in range(CONNS):
        tasks.append(asyncio.create_task(client(port, REQS, results)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    done = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [d for d in done if isinstance(d, Exception)]
    return results, errors


def test_2000_connections_50_requests_each(start_batchd):
    b = start_batchd(admin=False, batchd="log_level = info\n")
    results, errors = asyncio.run(run(b.port))
    assert errors == [], errors[:3]
    assert len(results) == CONNS
    assert sum(results) == CONNS * REQS
    assert b.metric("batchd_http_requests_total", method="GET", status="2xx") >= CONNS * REQS
    # start_batchd's teardown then checks exit 0 and no LeakSanitizer report.
