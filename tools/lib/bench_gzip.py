"""tools/lib/bench_gzip.py: what gzip costs and saves on hot 50-id batches.

    hot-batch   batchd, gzip: the first batchd's row again with wrk sending
                Accept-Encoding: gzip (the same process, measured in the
                same rounds as the plain row)

Both rows (plain and gzip) also report the bytes wrk read per answer
(head and body, as on the wire) and batchd's CPU seconds per 1,000
answers, from /proc/<pid>/stat (utime + stime) read before and after each
slice; the goals table gets their ratios.
"""
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
GZIP = "batchd, gzip (Accept-Encoding: gzip)"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def with_cost(b, job, server):
    """Wraps a wrk job so that each slice also measures bytes per answer and
    the server's CPU seconds per 1,000 answers."""
    once = job["once"]

    def measured(seconds):
        pid = b.ensure(server).pid
        t0 = cpu_seconds(pid)
        res = once(seconds)
        cpu = cpu_seconds(pid) - t0
        n = res["requests"]
        res["bytes_per_answer"] = res["bytes"] / n
        res["cpu_per_1k"] = cpu / n * 1000
        res["note"] = "; ".join(x for x in [res.get("note", ""),
                                            f"{res['bytes_per_answer']:,.0f} B/answer on the wire, "
                                            f"batchd CPU {res['cpu_per_1k']:.3f} s per 1,000 answers"] if x)
        return res

    job["once"] = measured
    return job


def hot_batch_jobs(b, plain, lua):
    """The plain batchd row (measured for cost too) and its gzip twin."""
    gz = b.http_job("hot-batch", GZIP, "batchd", "batchd", b.port["batchd"], lua, ids=50,
                    headers={"Accept-Encoding": "gzip"}, vs="batchd",
                    check=lambda status, hdrs, body: None if status == 200 and hdrs.get("Content-Encoding") == "gzip"
                    else f"no gzip answer ({status}, Content-Encoding {hdrs.get('Content-Encoding')})")
    return [with_cost(b, plain, "batchd"), with_cost(b, gz, "batchd")]


def goals(b, only):
    if "hot-batch" not in only:
        return []
    plain, gz = b.ref("hot-batch", "batchd"), next(iter(b.measured("hot-batch", GZIP)), None)
    if plain is None or gz is None or "cpu_per_1k" not in plain or "cpu_per_1k" not in gz:
        why = "no gzip row" if gz is None else "no plain row" if plain is None else "no cost figures"
        return [("gzip: hot 50-id batches, " + what, None, None, why, False)
                for what in ("bytes per answer ÷ identity", "batchd CPU per answer ÷ identity", "req/s ÷ identity")]
    return [
        ("gzip: hot 50-id batches, bytes per answer ÷ identity", gz["bytes_per_answer"] / plain["bytes_per_answer"],
         None, f"{gz['bytes_per_answer']:,.0f} / {plain['bytes_per_answer']:,.0f} B (head included)", False),
        ("gzip: hot 50-id batches, batchd CPU per answer ÷ identity", gz["cpu_per_1k"] / plain["cpu_per_1k"], None,
         f"{gz['cpu_per_1k']:.3f} / {plain['cpu_per_1k']:.3f} s per 1,000 answers", False),
        ("gzip: hot 50-id batches, req/s ÷ identity", gz["rps"] / plain["rps"], None,
         f"{gz['rps']:,.0f} / {plain['rps']:,.0f} req/s (best slices)", False),
    ]
