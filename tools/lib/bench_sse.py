"""tools/lib/bench_sse.py: the sse scenario of tools/bench and its table.

    tools/sse-load (CPU 0 when pinned) --> batchd      GET /v1/sessions/{id}/events
      clients from 127.0.0.2-254           nginx + nchan
      publishes through the server's own POST, checks every delivery

Two tests per server: fan-out (15,000 clients on one channel, one
publish) and sustained (5,000 clients on 50 channels, 1,000 publishes/s).
sse-load's JSON summary goes to Bench.sse as is, and section() turns it
into the report's table.
"""
import json
import re
import signal
import socket
import subprocess

from bench_conf import ROOT
from bench_env import NotAvailable, children, log
from bench_format import fmt_ms, fmt_num, sse_value


def streams(port):
    """Whether GET .../events answers 200 text/event-stream (anything
    else, e.g. batchd's 404 or its proxy answering for it, is not SSE)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"GET /v1/sessions/s1/events HTTP/1.1\r\nHost: bench\r\n"
                      b"Accept: text/event-stream\r\n\r\n")
            s.settimeout(3)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError as e:
        return f"GET /v1/sessions/s1/events: {e}"
    first = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if not re.match(r"HTTP/1\.\d 200", first) or b"text/event-stream" not in head.lower():
        return f"GET /v1/sessions/s1/events answered \"{first}\", not an event stream"
    return None


def run_bounded(b, argv, seconds):
    """Runs a tool; past its time it gets SIGINT (sse-load then prints
    its summary so far), then SIGKILL. Returns (stdout + stderr, status)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b.procs.record(p.pid)
    try:
        out, _ = p.communicate(timeout=seconds)
        return out, p.returncode
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        return out, "killed"


def sse(b):
    """sse-load against batchd and nginx + nchan. sse-load publishes
    through the server's own POST and checks each delivery's id against
    the id the publish answered (batchd's {"id": ...}). nchan answers a
    publish in its own format and numbers events its own way, so against
    nchan sse-load can count events and time them but not match ids:
    those rows say so."""
    tests = [
        ("fan-out", dict(clients=15000, channels=1, events=1, rate=1)),
        # --events is per channel, --rate is publishes/s in total.
        ("sustained", dict(clients=5000, channels=50, events=1000 * b.dur // 50, rate=1000)),
    ]
    targets = [("batchd", "batchd", b.port["batchd"]), ("nginx + nchan (1 worker)", "nchan", b.port["nchan"])]
    b.set_cache("hot")
    for label, server, port in targets:
        for test, t in tests:
            row = dict(system=label, test=test, **t, na=None, result=None, note="")
            b.sse.append(row)
            try:
                if not b.sse_load.exists():
                    raise NotAvailable(f"tools/sse-load is not built ({b.sse_load.relative_to(ROOT)} missing)")
                proc = b.ensure(server)
                why = streams(port)
                if why:
                    raise NotAvailable(why)
                pid = proc.pid if server == "batchd" else (children(proc.pid) or [proc.pid])[0]
                argv = [str(b.sse_load), "--url", f"http://127.0.0.1:{port}/v1/sessions/{{id}}/events",
                        "--clients", str(t["clients"]), "--channels", str(t["channels"]),
                        "--sources", "127.0.0.2-127.0.0.254", "--events", str(t["events"]),
                        "--rate", str(t["rate"]), "--payload", "256", "--token", b.cfg["token"],
                        "--pid", str(pid), "--timeout", "30", "--json"]
                if server == "nchan":
                    argv += ["--event-type", ""]
                    row["note"] = "ids not verifiable (nchan's own event ids and publish answer)"
                b.reset_counters()
                b.watch.start()
                text, status = run_bounded(b, b.gen(argv), 90 if test == "fan-out" else b.dur + 60)
                row["other_cpu"] = b.watch.stop()
                (b.run / "logs" / f"sse-{server}-{test}.log").write_text(text)
                m = re.search(r"^\{.*\}\s*$", text, re.M)
                if not m:
                    raise NotAvailable(f"sse-load exited {status} without a JSON summary: {text.strip()[-160:]}")
                row["result"] = json.loads(m.group(0))
                row["redis"] = b.read_counters()[0]
                if status == "killed":
                    row["note"] = "; ".join(x for x in (row["note"], "sse-load overran its time and was "
                                                        "interrupted") if x)
                log(f"  SSE {label} {test}: {json.dumps(row['result'])}")
            except (NotAvailable, json.JSONDecodeError) as e:
                row["na"] = " ".join(str(e).split()).replace("|", "/")
                log(f"  SSE {label} {test}: n/a: {row['na']}")


def section(b, title):
    """The report's sse section (markdown lines): one row per test, then
    sse-load's summaries as printed."""
    L = [f"### sse: {title}", "",
         "`tools/sse-load` (one process, CPU 0 when pinned) opens the clients from source addresses "
         "127.0.0.2–254, publishes through the server's own publish endpoint and checks every delivery. "
         "Fan-out: 15,000 clients on one channel, one publish. Sustained: 5,000 clients on 50 channels, "
         f"1,000 publishes/s for {b.dur} s. RSS/client is the server's resident memory growth per "
         "connected client (fan-out only).", "",
         "| system | test | clients connected | deliveries received / expected | missing | dup | "
         "deliveries/s | p50 ms | p99 ms | max ms | server RSS/client | others' CPU | note |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in b.sse:
        if s["na"]:
            L.append(f"| {s['system']} | {s['test']} | n/a: {s['na']} | | | | | | | | | | |")
            continue
        res = s["result"]
        g = lambda *n: sse_value(res, *n)
        exp = g("deliveries_expected", "expected")
        recv = g("deliveries_received", "received")
        note = s["note"]
        if not exp:
            # Nothing verifiable: show the events that arrived, as such.
            recv = g("events_received")
            exp = s["clients"] * s["events"]   # --events is per channel
            note = "; ".join(x for x in (note, "received = events that arrived, unverified") if x)
        if g("pass") is False and s["system"] == "batchd":
            note = "; ".join(x for x in (note, "sse-load check failed (see its summary below)") if x)
        rss = g("rss_per_client") if s["test"] == "fan-out" else None
        L.append(f"| {s['system']} | {s['test']} | {fmt_num(g('connected', 'clients_connected'))} | "
                 f"{fmt_num(recv)} / {fmt_num(exp)} | {fmt_num(g('missing'))} | "
                 f"{fmt_num(g('duplicates'))} | {fmt_num(g('deliveries_per_s'))} | "
                 f"{fmt_ms(g('latency_ms_p50', 'p50_ms'))} | {fmt_ms(g('latency_ms_p99', 'p99_ms'))} | "
                 f"{fmt_ms(g('latency_ms_max', 'max_ms'))} | "
                 f"{'—' if rss is None else f'{rss / 1024:.1f} KiB'} | {s.get('other_cpu', 0):.0%} | {note} |")
    L.append("")
    raw = [s for s in b.sse if s["result"]]
    if raw:
        L += ["<details><summary>sse-load summaries as printed</summary>", ""]
        L += [f"- {s['system']}, {s['test']}: `{json.dumps(s['result'], sort_keys=True)}`" for s in raw]
        L += ["", "</details>", ""]
    return L
