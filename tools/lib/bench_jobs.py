"""tools/lib/bench_jobs.py: how tools/bench measures a row, and the rows.

A row is a job: prepare() starts what it needs, checks one answer and
warms up; once(seconds) is one measured slice. A scenario's jobs are
measured in rounds (full run: 3 rounds of 4 + 3 + 3 s, so every row still
gets 10 s), A B C A B C, and each row shows its best slice. This VM's
speed drifts by ±20-40% over minutes with nothing visible running (no
steal time is reported); interleaving puts the contenders of one scenario
through the same conditions, and interference only ever slows a run down,
so the best slice is the least disturbed one.

    http_job            wrk -t1 -cN -s tools/wrk/bench.lua   (any HTTP server)
    redis_benchmark_job redis-benchmark -c 64                (Redis's own limit)
    pgbench_job         pgbench -M prepared -c 16            (PostgreSQL's own limit)

Every slice: quiesce, reset the backends' counters, run, read them
(bench_env.Env). The scenarios (bench_reads, bench_access, bench_sse)
build their jobs from these and call run_jobs().
"""
import json
import re
import subprocess
from pathlib import Path

from bench_conf import N_SESSIONS, ROOT
from bench_env import Env, NotAvailable, http_get, log
from bench_cluster import ClusterServers
from bench_near import NearServers


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def slice_text(slices):
    return " + ".join(str(x) for x in slices) + " s"


def sample_target(path, item="{id}", sep=",", k=50):
    if "{ids}" in path:
        sep = "/" if sep == "slash" else sep
        return path.replace("{ids}", sep.join(item.replace("{id}", f"s{i}") for i in range(1, k + 1)))
    return path.replace("{id}", "s1")


def rb_parse(out):
    lines = [l for l in out.stdout.splitlines() if l.startswith('"')]
    if out.returncode != 0 or len(lines) < 2:
        raise NotAvailable(f"redis-benchmark failed: {(out.stderr or out.stdout).strip()[:200]}")
    head = [h.strip('"') for h in lines[0].split('","')]
    vals = [v.strip('"') for v in lines[-1].split('","')]
    d = dict(zip(head, vals))
    return {"rps": float(d["rps"]), "p50": float(d["p50_latency_ms"]), "p99": float(d["p99_latency_ms"])}


class Bench(ClusterServers, NearServers, Env):
    """The environment (with the near-cache processes and Varnish:
    bench_near.NearServers), the rows measured in it (rows: one dict a row;
    sse: one a test of the sse scenario) and the jobs that measure them."""

    def __init__(self, a):
        super().__init__(a)
        self.quick = a.quick
        self.dur = 3 if a.quick else 10
        self.warm = 1 if a.quick else 2
        # Measured slices per row, taken in rounds across the scenario's rows
        # (wrk takes whole seconds): 4 + 3 + 3 = 10 s in a full run.
        self.slices = [3] if a.quick else [4, 3, 3]
        rounds = getattr(a, "rounds", None)
        if rounds:
            # --rounds N: N slices (the first of 4 s in a full run): on a busy
            # machine more rounds give each row more chances of a quiet slice.
            self.slices = [3] * rounds if a.quick else [4] + [3] * (rounds - 1)
        self.dur = sum(self.slices)
        self.rounds = len(self.slices)
        self.slice_text = slice_text(self.slices)
        self.rows = []
        self.sse = []

    # -- rows ------------------------------------------------------------------------------

    def add(self, scenario, system, kind, **kw):
        row = dict(scenario=scenario, system=system, kind=kind, conns=kw.pop("conns", 64), rps=None,
                   p50=None, p99=None, redis=None, pg=None, na=None, note="", ids=kw.pop("ids", 1))
        row.update(kw)
        if row["na"]:
            row["na"] = " ".join(str(row["na"]).split()).replace("|", "/")[:300]
        self.rows.append(row)
        if row["na"]:
            log(f"  {system:<40} n/a: {row['na']}")
        else:
            log(f"  {system:<40} {row['rps']:>10.0f} req/s  p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms"
                f"  redis/req {row['redis']:.3f}  pg/req {row['pg']:.3f}  other CPU {row.get('other_cpu', 0):.0%}"
                f"  {row['note']}")
        return row

    def ref(self, scenario, system=None):
        """The batchd row a row of the scenario is compared with: the one
        named system, or the first "batchd" row."""
        for r in self.rows:
            if r["scenario"] == scenario and not r["na"] and (
                    r["system"] == system if system else r["kind"] == "batchd"):
                return r
        return None

    def measured(self, scenario, prefix):
        """The scenario's measured rows whose system starts with prefix."""
        return [r for r in self.rows if r["scenario"] == scenario and r["system"].startswith(prefix) and not r["na"]]

    def find(self, scenario, prefix):
        return next(iter(self.measured(scenario, prefix)), None)

    # -- jobs ------------------------------------------------------------------------------

    def job(self, scenario, system, kind, prepare, once, conns=64, ids=1, note="", vs=None):
        """vs: the system name of the batchd row this row's ratio is taken
        against (default: the scenario's first "batchd" row)."""
        return dict(scenario=scenario, system=system, kind=kind, prepare=prepare, once=once, conns=conns,
                    ids=ids, note=note, slices=[], na=None, vs=vs)

    def run_jobs(self, jobs, slices=None, pick="best"):
        """slices: the measured slices' lengths (default: the run's).
        pick: "best" shows each row's fastest slice; "median" its median
        one (for a comparison of two rows of the same server, where drift
        is what the alternation cancels and the best slice would reward
        the luckier row)."""
        slices = slices or self.slices
        for j in jobs:
            try:
                j["prepare"]()
            except NotAvailable as e:
                j["na"] = str(e)
        for seconds in slices:
            for j in jobs:
                if j["na"]:
                    continue
                try:
                    j["slices"].append(j["once"](seconds))
                    r = j["slices"][-1]
                    log(f"    {j['system']:<40} {r['rps']:>10.0f} req/s  (slice {len(j['slices'])}, "
                        f"others' CPU {r['other_cpu']:.0%})")
                except NotAvailable as e:
                    j["na"] = str(e)
        for j in jobs:
            meta = dict(conns=j["conns"], ids=j["ids"], vs=j["vs"])
            if j["na"]:
                self.add(j["scenario"], j["system"], j["kind"], na=j["na"], **meta)
                continue
            if pick == "median":
                ranked = sorted(j["slices"], key=lambda r: r["rps"])
                best = ranked[(len(ranked) - 1) // 2]
            else:
                best = max(j["slices"], key=lambda r: r["rps"])
            notes = [n for n in (j["note"], best.get("note", "")) if n]
            cost = {k: best[k] for k in ("bytes_per_answer", "cpu_per_1k") if k in best}  # bench_gzip
            if len(j["slices"]) > 1:
                rest = [f"{r['rps']:,.0f}" for r in j["slices"] if r is not best]
                notes.append(f"{'median' if pick == 'median' else 'best'} of {slice_text(slices)} "
                             f"(others: {', '.join(rest)})")
            self.add(j["scenario"], j["system"], j["kind"], rps=best["rps"], p50=best["p50"], p99=best["p99"],
                     redis=best["redis"], pg=best["pg"], pg_rows=best.get("pg_rows"),
                     pg_page=best.get("pg_page"), other_cpu=best["other_cpu"],
                     requests=best["requests"], redis_detail=best.get("detail"), note="; ".join(notes),
                     slices=[r["rps"] for r in j["slices"]], **cost, **meta)

    def wrk(self, port, args, conns, seconds, headers=None):
        hdr = [x for k, v in (headers or {}).items() for x in ("-H", f"{k}: {v}")]
        argv = self.gen(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"] + hdr +
                        ["-s", str(ROOT / "tools" / "wrk" / "bench.lua"), f"http://127.0.0.1:{port}", "--"] + args)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        m = re.search(r"^BENCH_RESULT (\{.*\})$", out.stdout, re.M)
        if not m:
            raise NotAvailable(f"wrk printed no result: {(out.stderr or out.stdout).strip()[:200]}")
        res = json.loads(m.group(1))
        res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
        return res

    def http_job(self, scenario, system, kind, server, port, lua, conns=64, ids=1, check=None, note="",
                 headers=None, pre=None, vs=None):
        """A wrk row: start what it needs, check one answer, warm up; slices
        of wrk -t1 -cN against random ids. headers go on every request
        (wrk -H); pre() runs once the servers are up and may raise
        NotAvailable (it may also write the targets= file lua names)."""
        def prepare():
            for srv in ([server] if isinstance(server, str) else server):
                self.ensure(srv)
            if pre:
                pre()
            opts = dict(a.split("=", 1) for a in lua)
            if "targets" in opts:
                target = Path(opts["targets"]).read_text().split("\n", 1)[0]
            else:
                target = sample_target(opts["path"], opts.get("item", "{id}"), opts.get("sep", ","),
                                       int(opts.get("k", 50)))
            status, hdrs, body = http_get(f"http://127.0.0.1:{port}{target}", headers=headers)
            if check:
                why = check(status, hdrs, body)
                if why:
                    raise NotAvailable(why)
            elif status != 200:
                raise NotAvailable(f"GET {target[:60]} answered {status} {body[:60].decode(errors='replace')}")
            self.wrk(port, lua, conns, self.warm, headers)

        def once(seconds):
            self.quiesce()
            self.reset_counters()
            self.watch.start()
            res = self.wrk(port, lua, conns, seconds, headers)
            other = self.watch.stop()
            self.quiesce()
            redis_calls, pg_calls, detail = self.read_counters()
            n = res["requests"]
            if n == 0:
                raise NotAvailable("no request completed")
            errs = res["errors"]
            if errs["status"] > 0.05 * n:
                raise NotAvailable(f"{errs['status']} of {n} answers were not 2xx/3xx")
            # wrk is a closed loop: when it stops, each connection has one
            # request in flight, which the server still carries out.
            served = n + conns
            notes = []
            scripts = sum(v for k, v in detail.items() if k in ("evalsha", "eval", "fcall"))
            if scripts:
                notes.append(f"{scripts / served:.3g} script calls/req; the commands they run are counted too")
            bad = sum(errs.values())
            if bad:
                notes.append(f"{bad} errors ({', '.join(f'{k} {v}' for k, v in errs.items() if v)})")
            return dict(rps=res["rps"], p50=res["p50_us"] / 1000, p99=res["p99_us"] / 1000,
                        redis=redis_calls / served, pg=pg_calls / served, pg_rows=detail["pg_rows"] / served,
                        pg_page=detail["pg_page"] / served, other_cpu=other, requests=n, detail=detail,
                        bytes=res["bytes"], note="; ".join(notes))

        return self.job(scenario, system, kind, prepare, once, conns=conns, ids=ids, note=note, vs=vs)

    def redis_benchmark_job(self, scenario, system, cmd, ids):
        """redis-benchmark, 64 clients, one thread, no pipelining. It has no
        duration option: the warm-up measures the rate and a slice asks for
        rate x seconds requests."""
        base = self.gen(["redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port["redis"]), "-c", "64",
                         "-r", str(N_SESSIONS), "--csv"])
        rate = {}

        def prepare():
            self.fill_rb_keys()
            warm = rb_parse(subprocess.run(base + ["-n", "20000"] + cmd, capture_output=True, text=True,
                                           timeout=120))
            rate["rps"] = warm["rps"]

        def once(seconds):
            n = max(20000, int(rate["rps"] * seconds))
            self.quiesce()
            self.reset_counters()
            self.watch.start()
            res = rb_parse(subprocess.run(base + ["-n", str(n)] + cmd, capture_output=True, text=True,
                                          timeout=seconds * 5 + 60))
            res["other_cpu"] = self.watch.stop()
            redis_calls, pg_calls, _ = self.read_counters()
            res.update(redis=redis_calls / n, pg=pg_calls / n, requests=n)
            return res

        return self.job(scenario, system, "limit", prepare, once, ids=ids)

    def pgbench_job(self, scenario, system, k):
        """pgbench, 16 clients, one thread, prepared. The script is batchd's
        by_ids with $1::text[] replaced by ARRAY['s' || :i1, ...]::text[]:
        pgbench cannot build a text[] variable, so the ids go as k text
        parameters and PostgreSQL builds the array (k concatenations, next
        to k index lookups and k message counts)."""
        d = self.run / "pgbench"
        script = d / f"any{k}.sql"
        base = self.gen(["pgbench", "-h", "127.0.0.1", "-p", str(self.port["pg"]), "-U", "app", "-n",
                         "-M", "prepared", "-c", "16", "-j", "1", "-f", str(script)])
        logfile = self.run / "logs" / f"pgbench-{k}.log"

        def prepare():
            d.mkdir(exist_ok=True)
            arr = "ARRAY[" + ", ".join(f"'s' || :i{j}" for j in range(1, k + 1)) + "]::text[]"
            script.write_text("".join(f"\\set i{j} random(1, {N_SESSIONS})\n" for j in range(1, k + 1)) +
                              self.cfg["by_ids"].replace("$1::text[]", arr) + "\n")
            w = subprocess.run(base + ["-T", str(self.warm), "app"], capture_output=True, text=True, timeout=120)
            logfile.write_text(w.stdout + w.stderr)
            if w.returncode != 0:
                raise NotAvailable(f"pgbench failed: {w.stderr.strip()[:200]}")

        def once(seconds):
            for f in d.glob("log*"):
                f.unlink()
            self.reset_counters()
            self.watch.start()
            out = subprocess.run(base + ["-T", str(seconds), "-l", "--log-prefix", str(d / "log"), "app"],
                                 capture_output=True, text=True, timeout=seconds + 120)
            other = self.watch.stop()
            with open(logfile, "a") as f:
                f.write(out.stdout + out.stderr)
            m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
            if out.returncode != 0 or not m:
                raise NotAvailable(f"pgbench failed: {out.stderr.strip()[:200]}")
            redis_calls, pg_calls, detail = self.read_counters()
            lat = sorted(int(line.split()[2]) for f in d.glob("log*") for line in f.read_text().splitlines()
                         if len(line.split()) >= 3)
            n = max(len(lat), 1)
            return dict(rps=float(m.group(1)), p50=percentile(lat, 50) / 1000, p99=percentile(lat, 99) / 1000,
                        redis=redis_calls / n, pg=pg_calls / n, pg_rows=detail["pg_rows"] / n, other_cpu=other,
                        requests=len(lat))

        return self.job(scenario, system, "limit", prepare, once, conns=16, ids=k)
