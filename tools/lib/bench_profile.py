"""tools/lib/bench_profile.py: the profile scenario of tools/bench (tools/bench
--profile, or --only profile): what a request costs batchd, near cache off
and on (issue 14), counted per request rather than timed.

    perf stat -p      batchd /healthz, batchd and batchd-near on hot single and hot 50-id batch, wrk -c64:
                      task-clock, context switches, syscalls by tracepoint (full speed); instructions and
                      cycles when the CPU exposes a PMU (this VM does not: "not supported")
    perf stat -p      redis-server's task-clock over the same window
    strace -c -f -p   every syscall, counts only (the traced process runs several times slower)
    callgrind         instructions per request: a batchd of each config under valgrind, instrumented
                      around one wrk run per load (callgrind_control -i on/off, -d)

Per request = counts / (requests wrk completed + the 64 in flight), or for
callgrind / the increase of batchd_http_requests_total.
"""
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench_conf import N_SESSIONS, write_near_conf
from bench_env import NotAvailable, http_get, log, wait_port
from bench_jobs import rb_parse
from bench_format import fmt_ms, fmt_num, fmt_rt
from bench_near import ADMIN, NEAR_BYTES, near_stats, warm_all

PROFILE_SECONDS = 5


SYSCALLS = ["read", "write", "writev", "readv", "recvfrom", "sendto", "sendmsg", "recvmsg", "epoll_wait",
            "epoll_pwait", "epoll_ctl", "accept4", "close", "ioctl", "futex", "getrusage", "clock_gettime"]


def perf_events():
    ev = ["task-clock", "context-switches", "cpu-migrations", "instructions", "cycles"]
    tp = Path("/sys/kernel/tracing/events/syscalls")
    if Path("/sys/kernel/tracing/events/raw_syscalls/sys_enter").exists():
        ev.append("raw_syscalls:sys_enter")
    ev += [f"syscalls:sys_enter_{s}" for s in SYSCALLS if (tp / f"sys_enter_{s}").exists()]
    return ev


def parse_perf(path):
    """perf stat -x, output: event -> value (None when not supported)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        f = line.split(",")
        if len(f) < 3 or line.startswith("#"):
            continue
        try:
            out[f[2]] = float(f[0])
        except ValueError:
            out[f[2]] = None
    return out


def parse_strace(path):
    """strace -c's table: syscall -> calls."""
    out = {}
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
            try:
                out[f[-1]] = int(f[3])
            except ValueError:
                pass
    return out


def traced(b, argv, port, lua, conns, seconds):
    """Runs a tracer (perf stat -p, strace -c -p: both stop on SIGINT) around one wrk run; returns wrk's result."""
    t = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    b.procs.record(t.pid)
    time.sleep(0.5)
    try:
        if t.poll() is not None:
            raise NotAvailable(f"{argv[0]} exited at once: {t.stderr.read().strip()[:160]}")
        return b.wrk(port, lua, conns, seconds)
    finally:
        if t.poll() is None:
            t.send_signal(signal.SIGINT)
        try:
            t.wait(20)
        except subprocess.TimeoutExpired:
            t.kill()
            t.wait()


def profile(b):
    """Per request: perf stat (task-clock, context switches, instructions and
    cycles where the CPU exposes them, syscalls by tracepoint: at full speed)
    and strace -c -f (every syscall, counts only: it slows the process
    several times) for batchd and batchd-near, hot single and hot 50-id
    batch, and batchd's /healthz (the ceiling), wrk -c64 for PROFILE_SECONDS
    s each; redis-server's task-clock per request alongside."""
    b.set_cache("hot")
    b.profile_rows = []
    events = perf_events()
    redis_pid = int((b.run / "redis" / "redis.pid").read_text().split()[0])
    d = b.run / "profile"
    d.mkdir(exist_ok=True)
    single = ["path=/v1/sessions/{id}", f"hot=1-{N_SESSIONS}"]
    batch = ["path=/v1/sessions?ids={ids}", "k=50", f"hot=1-{N_SESSIONS}"]
    # (server, row label, load, port, wrk arguments, file tag); /healthz is the ceiling of a single read.
    runs = [("batchd", "batchd /healthz (admin listener)", "healthz", "admin", ["path=/healthz"], "healthz")]
    for server, label in (("batchd", "batchd (near cache off)"), ("batchd-near", "batchd, near cache")):
        runs += [(server, label, "hot single", server, single, f"{server}-single"),
                 (server, label, "hot 50-id batch", server, batch, f"{server}-batch")]
    for server, label, load, port_name, lua, tag in runs:
        row = dict(system=label, load=load, na=None)
        b.profile_rows.append(row)
        try:
            if not shutil.which("perf") or not shutil.which("strace"):
                raise NotAvailable("perf or strace is not installed (Debian linux-perf, strace)")
            p = b.ensure(server)
            port = b.port[port_name]
            if load != "healthz":
                warm_all(b, port)
            b.wrk(port, lua, 64, b.warm)
            pf, rf, sf = d / f"perf-{tag}.csv", d / f"perf-redis-{tag}.csv", d / f"strace-{tag}.txt"
            # redis-server is measured by a second perf alongside.
            rp = subprocess.Popen(["perf", "stat", "-x,", "-o", str(rf), "-e", "task-clock", "-p",
                                   str(redis_pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            b.procs.record(rp.pid)
            try:
                res = traced(b, ["perf", "stat", "-x,", "-o", str(pf), "-e", ",".join(events), "-p", str(p.pid)],
                             port, lua, 64, PROFILE_SECONDS)
            finally:
                rp.send_signal(signal.SIGINT)
                rp.wait(20)
            n = res["requests"] + 64
            perf = parse_perf(pf)
            redis_ms = parse_perf(rf).get("task-clock")
            sres = traced(b, ["strace", "-c", "-f", "-qq", "-o", str(sf), "-p", str(p.pid)], port, lua, 64,
                          PROFILE_SECONDS)
            sn = sres["requests"] + 64
            row.update(rps=res["rps"], n=n, perf=perf, strace={k: v / sn for k, v in parse_strace(sf).items()},
                       strace_rps=sres["rps"], redis_us=None if redis_ms is None else redis_ms * 1000 / n)
            log(f"  profile {label}, {load}: {res['rps']:,.0f} req/s under perf, "
                f"task-clock {per(perf, 'task-clock', n, 1000):.2f} µs/req, "
                f"syscalls {per(perf, 'raw_syscalls:sys_enter', n) or 0:.2f}/req; "
                f"{sres['rps']:,.0f} req/s under strace")
        except NotAvailable as e:
            row["na"] = " ".join(str(e).split())
            log(f"  profile {label}, {load}: n/a: {row['na']}")
    b.profile_rows.append(redis_benchmark_profile(b, d, events, redis_pid))
    b.callgrind_rows = callgrind_profile(b, d, [("hot single", single), ("hot 50-id batch", batch)])


def redis_benchmark_profile(b, d, events, redis_pid, n=100000):
    """redis-server's own cost of a redis-benchmark MGET-50 request (perf
    stat -p on it): with everything on one core, the req/s a core gives
    redis-benchmark is 1 / that, the same measure as batchd's
    (task-clock + redis-server's) per request."""
    row = dict(system="redis-benchmark MGET-50 (redis-server's own CPU)", load="hot 50-id batch", na=None)
    try:
        b.fill_rb_keys()
        rf = d / "perf-redis-benchmark.csv"
        base = b.gen(["redis-benchmark", "-h", "127.0.0.1", "-p", str(b.port["redis"]), "-c", "64", "-r",
                      str(N_SESSIONS), "--csv"])
        mget = ["MGET"] + ["rb:__rand_int__"] * 50
        argv = base + ["-n", str(n)] + mget
        subprocess.run(base + ["-n", "20000"] + mget, capture_output=True, timeout=120)   # warm-up
        t = subprocess.Popen(["perf", "stat", "-x,", "-o", str(rf), "-e", ",".join(events), "-p", str(redis_pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        b.procs.record(t.pid)
        time.sleep(0.5)
        try:
            res = rb_parse(subprocess.run(argv, capture_output=True, text=True, timeout=300))
        finally:
            t.send_signal(signal.SIGINT)
            t.wait(20)
        row.update(rps=res["rps"], n=n, perf=parse_perf(rf), redis_us=None)
        log(f"  profile {row['system']}: {res['rps']:,.0f} req/s, redis-server task-clock "
            f"{per(row['perf'], 'task-clock', n, 1000):.2f} µs/req")
    except (NotAvailable, OSError, subprocess.TimeoutExpired) as e:
        row["na"] = " ".join(str(e).split())
    return row


def callgrind_profile(b, d, loads):
    """Instructions per request, which this VM's perf cannot count (no PMU):
    a batchd of each config (near cache off, and 256 MiB) started under
    valgrind --tool=callgrind with instrumentation off, warmed, then
    instrumented around one wrk -c64 run per load (callgrind_control -i
    on/off, -d dumps the window). Requests: batchd_http_requests_total
    before and after. Valgrind runs batchd ~50x slower, so many more
    requests share a loop iteration than at full speed: per-iteration
    costs (epoll, flushes, timers) are divided by more requests than in
    the perf rows."""
    rows = []
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        return [dict(system="callgrind", load="", na="valgrind is not installed (Debian valgrind)")]
    for name, label, limit in (("batchd-cg", "batchd (near cache off)", 0), ("batchd-cg-near", "batchd, near cache",
                                                                            NEAR_BYTES)):
        p = None
        try:
            conf = write_near_conf(b.run, b.port, name, name, ADMIN[name], limit)
            out = d / f"callgrind.{name}"
            p = b.procs.start(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                     f"--callgrind-out-file={out}", str(b.batchd_bin), "-c", str(conf)])
            wait_port(b.port[name], p, timeout=120, name=f"{name} (valgrind)")
            admin = b.port[ADMIN[name]]
            wait_port(admin, p, timeout=60, name=f"{name} admin")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = near_stats(admin)
                if http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200 and (not limit or st["tracking"] == 1):
                    break
                time.sleep(0.5)
            else:
                raise NotAvailable(f"{name} under valgrind: not ready (or no tracking) within 60 s")
            runs = [(label, load, lua, b.port[name]) for load, lua in loads]
            if not limit:
                runs.insert(0, ("batchd /healthz (admin listener)", "healthz", ["path=/healthz"], admin))
            for system, load, lua, port in runs:
                row = dict(system=system, load=load, na=None)
                rows.append(row)
                if load != "healthz":
                    warm_all(b, port)
                b.wrk(port, lua, 64, 2)
                subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60)
                r0 = near_stats(admin)["requests"]
                subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True, timeout=60)
                res = b.wrk(port, lua, 64, PROFILE_SECONDS)
                time.sleep(1)   # the requests in flight when wrk stopped
                subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], capture_output=True, timeout=60)
                r1 = near_stats(admin)["requests"]
                before = set(d.glob(f"callgrind.{name}*"))
                subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=120)
                dumps = sorted(set(d.glob(f"callgrind.{name}*")) - before, key=lambda f: f.stat().st_mtime)
                ir = None
                for line in (dumps[-1].read_text(errors="replace").splitlines() if dumps else []):
                    if line.startswith(("summary:", "totals:")):
                        ir = int(line.split()[1])
                n = (r1 or 0) - (r0 or 0) - 1   # less the one /metrics scrape inside the window
                if n < res["requests"]:        # a listener the counter leaves out: wrk's count
                    n = res["requests"] + 64
                if ir is None or n <= 0:
                    row["na"] = f"no callgrind dump or no requests counted (dumps {len(dumps)}, requests {n})"
                else:
                    row.update(ir=ir / n, n=n, rps=res["rps"])
                    log(f"  callgrind {system}, {load}: {ir / n:,.0f} instructions/request over {n:,.0f} requests "
                        f"({res['rps']:,.0f} req/s under valgrind)")
        except (NotAvailable, OSError, subprocess.TimeoutExpired) as e:
            rows.append(dict(system=label, load="all", na=" ".join(str(e).split())))
            log(f"  callgrind {label}: n/a: {e}")
        finally:
            if p is not None:
                b.procs.stop(p)
    return rows


def per(perf, event, n, scale=1.0):
    v = perf.get(event)
    return None if v is None else v * scale / n


def profile_section(b, sc):
    rows = b.profile_rows or []
    L = [f"### {sc.name}: {sc.title}", "", sc.explain, ""]
    if not rows:
        return L + ["Not run.", ""]
    L += ["| system | load | req/s under perf | task-clock µs/req | redis-server µs/req | ctx switches/req | "
          "instructions/req | cycles/req | syscalls/req (perf) | by syscall, per request (perf tracepoints) |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["na"]:
            L.append(f"| {r['system']} | {r['load']} | n/a: {r['na']} | | | | | | | |")
            continue
        p, n = r["perf"], r["n"]
        hw = lambda e: ("not supported" if e in p and p[e] is None else fmt_num(per(p, e, n)))
        calls = sorted(((e.split("sys_enter_")[1], v / n) for e, v in p.items()
                        if e.startswith("syscalls:") and v), key=lambda x: -x[1])
        L.append(f"| {r['system']} | {r['load']} | {fmt_num(r['rps'])} | {fmt_ms(per(p, 'task-clock', n, 1000))} | "
                 f"{fmt_ms(r.get('redis_us'))} | {fmt_rt(per(p, 'context-switches', n))} | {hw('instructions')} | "
                 f"{hw('cycles')} | {fmt_rt(per(p, 'raw_syscalls:sys_enter', n))} | "
                 + ", ".join(f"{k} {fmt_rt(v)}" for k, v in calls if v >= 0.001) + " |")
    L += ["", "strace -c -f (every syscall; the traced process runs several times slower, so more requests "
          "share each loop iteration than at full speed: compare rows with each other, not with perf's):", "",
          "| system | load | req/s under strace | syscalls/req | by syscall, per request |", "|---|---|---:|---:|---|"]
    for r in rows:
        if not r["na"] and r.get("strace"):
            s = sorted(r["strace"].items(), key=lambda x: -x[1])
            L.append(f"| {r['system']} | {r['load']} | {fmt_num(r['strace_rps'])} | {fmt_rt(sum(r['strace'].values()))} | "
                     + ", ".join(f"{k} {fmt_rt(v)}" for k, v in s if v >= 0.001) + " |")
    L += cpu_ratios(b)
    if b.callgrind_rows:
        L += ["", "Instructions per request (this VM has no PMU, so perf cannot count them): callgrind, a batchd of "
              "each config under `valgrind --tool=callgrind`, instrumented only during one wrk -c64 run per load, "
              "divided by `batchd_http_requests_total`'s increase. Under valgrind batchd runs ~50× slower, so more "
              "requests share each loop iteration than at full speed (per-iteration work is spread thinner).", "",
              "| system | load | instructions/req | requests counted | req/s under valgrind |", "|---|---|---:|---:|---:|"]
        for r in b.callgrind_rows:
            L.append(f"| {r['system']} | {r['load']} | n/a: {r['na']} | | |" if r["na"] else
                     f"| {r['system']} | {r['load']} | {fmt_num(r['ir'])} | {fmt_num(r['n'])} | {fmt_num(r['rps'])} |")
    L.append("")
    return L


def cpu_ratios(b):
    """The issue's throughput goals as CPU time per request (perf task-clock,
    batchd's plus redis-server's: with one core for both, a core's req/s is
    1 / that): less disturbed by other tenants than req/s, though not immune
    (their cache and memory traffic, and steal, lengthen task-clock too)."""
    def us(system, load):
        r = next((r for r in b.profile_rows or [] if r["system"] == system and r["load"] == load and not r["na"]),
                 None)
        if r is None:
            return None
        return per(r["perf"], "task-clock", r["n"], 1000) + (r.get("redis_us") or 0)

    def ir(system, load):
        r = next((r for r in b.callgrind_rows or [] if r["system"] == system and r["load"] == load and not r["na"]),
                 None)
        return r and r["ir"]

    out = []
    for text, a, c, goal in (
            ("hot single, near cache ÷ /healthz", ("batchd /healthz (admin listener)", "healthz"),
             ("batchd, near cache", "hot single"), "≥ 0.9×"),
            ("hot single, near cache off ÷ /healthz", ("batchd /healthz (admin listener)", "healthz"),
             ("batchd (near cache off)", "hot single"), "—"),
            ("hot 50-id batch, near cache ÷ redis-benchmark MGET-50",
             ("redis-benchmark MGET-50 (redis-server's own CPU)", "hot 50-id batch"),
             ("batchd, near cache", "hot 50-id batch"), "≥ 1.5×"),
            ("hot 50-id batch, near cache off ÷ redis-benchmark MGET-50",
             ("redis-benchmark MGET-50 (redis-server's own CPU)", "hot 50-id batch"),
             ("batchd (near cache off)", "hot 50-id batch"), "≥ 0.8×")):
        x, y = us(*a), us(*c)
        i, j = ir(*a), ir(*c)
        out.append(f"| {text} | {'—' if not (x and y) else f'{x / y:.2f}×'} | "
                   f"{'—' if not (x and y) else f'{x:.1f} / {y:.1f} µs'} | "
                   f"{'—' if not (i and j) else f'{i / j:.2f}× ({i:,.0f} / {j:,.0f})'} | {goal} |")
    return ["", "The goals in CPU per request (req/s one core gives, as a ratio: the other side's µs/req ÷ this "
            "side's; batchd's µs include redis-server's for its requests, redis-benchmark's are redis-server's "
            "own; callgrind's instructions where both sides are batchd):", "",
            "| ratio | CPU time | µs/req (other / this) | instructions (callgrind) | goal |", "|---|---:|---:|---:|---|"] + out
