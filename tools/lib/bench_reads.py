"""tools/lib/bench_reads.py: the scenarios that measure the first batchd
(conf/batchd.ini's, bench_conf.write_batchd_conf) with wrk against its
peers and the machine's limits: http, hot-single, hot-batch, mixed,
cold-batch and proxy. Each takes the Bench (bench_jobs.py), builds its
jobs and runs them; bench.py lists them.

    http        batchd /healthz            nginx return 200
    hot-*       batchd, 64 and 256 conns   Webdis, FastAPI (1 and 2 workers), redis-benchmark
                batchd workers=2 (a master and 2 worker processes, batchd-w2)
                + bench_gzip's row: batchd, gzip (hot-batch: Accept-Encoding: gzip, bytes and CPU per answer)
                + bench_near's rows: batchd-near (near cache on; 64 and 256 conns single, 64 batch),
                batchd /healthz (hot-single: its ceiling, same run), Varnish in front of FastAPI (hot-single)
    mixed/cold  batchd                     FastAPI N+1 and MGET, pgbench (cold)
    proxy       batchd [upstream]          nginx proxy_pass, the origin itself
"""
import bench_cluster
import bench_gzip
import bench_near
from bench_conf import N_SESSIONS


def http(b):
    p = b.port
    b.run_jobs([
        b.http_job("http", "batchd /healthz (admin listener)", "batchd", "batchd", p["admin"], ["path=/healthz"]),
        b.http_job("http", "nginx return 200 (1 worker)", "limit", "origin", p["origin"], ["path=/healthz"]),
    ])


def hot_single(b):
    b.set_cache("hot")
    p = b.port
    lua = ["path=/v1/sessions/{id}", f"hot=1-{N_SESSIONS}"]
    jobs = [
        b.http_job("hot-single", "batchd", "batchd", "batchd", p["batchd"], lua),
        b.http_job("hot-single", "batchd, 256 connections", "batchd-c256", "batchd", p["batchd"], lua,
                   conns=256, note="coalescing row"),
        b.http_job("hot-single", "batchd workers=2", "batchd-w2", "batchd-w2", p["batchd-w2"], lua,
                   note="2 worker processes; compare under --cpu shared"),
    ] + bench_near.hot_single_jobs(b, lua) + [
        b.http_job("hot-single", "Webdis GET (1 thread)", "peer", "webdis", p["webdis"],
                   ["path=/GET/session:{id}", f"hot=1-{N_SESSIONS}"]),
    ]
    for w in (1, 2):
        jobs.append(b.http_job("hot-single", f"FastAPI, {w} worker{'s' * (w > 1)}", "peer", f"fastapi{w}",
                               p[f"fastapi{w}"], ["path=/n1/sessions/{id}", f"hot=1-{N_SESSIONS}"]))
    jobs.append(bench_near.varnish_job(b))
    jobs.append(b.redis_benchmark_job("hot-single", "redis-benchmark GET", ["GET", "rb:__rand_int__"], 1))
    b.run_jobs(jobs)
    bench_near.record_rss(b, "batchd-near", "after hot-single")


def batch_jobs(b, scenario, lua_ids, extra=()):
    """The 50-id batch rows every batch scenario has (batchd, FastAPI N+1 and
    MGET with 1 and 2 workers), plus extra: "c256" (batchd at 256
    connections), "webdis"."""
    p = b.port
    lua = ["path=/v1/sessions?ids={ids}", "k=50"] + lua_ids
    jobs = [b.http_job(scenario, "batchd", "batchd", "batchd", p["batchd"], lua, ids=50)]
    if "w2" in extra:
        jobs.append(b.http_job(scenario, "batchd workers=2", "batchd-w2", "batchd-w2", p["batchd-w2"], lua, ids=50,
                               note="2 worker processes; compare under --cpu shared"))
    if "c256" in extra:
        jobs.append(b.http_job(scenario, "batchd, 256 connections", "batchd-c256", "batchd", p["batchd"],
                               lua, conns=256, ids=50, note="coalescing row"))
    if "webdis" in extra:
        jobs.append(b.http_job(scenario, "Webdis MGET (1 thread)", "peer", "webdis", p["webdis"],
                               ["path=/MGET/{ids}", "item=session:{id}", "sep=slash", "k=50"] + lua_ids, ids=50))
    for style, label in (("n1", "N+1"), ("batched", "MGET + one query")):
        for w in (1, 2):
            jobs.append(b.http_job(scenario, f"FastAPI {label}, {w} worker{'s' * (w > 1)}", "peer",
                                   f"fastapi{w}", p[f"fastapi{w}"],
                                   [f"path=/{style}/sessions?ids={{ids}}", "k=50"] + lua_ids, ids=50))
    return jobs


def hot_batch(b):
    b.set_cache("hot")
    jobs = batch_jobs(b, "hot-batch", [f"hot=1-{N_SESSIONS}"], extra=("c256", "webdis", "w2"))
    jobs[0:1] = bench_gzip.hot_batch_jobs(b, jobs[0], ["path=/v1/sessions?ids={ids}", "k=50", f"hot=1-{N_SESSIONS}"])
    jobs[2:2] = bench_near.hot_batch_jobs(b, ["path=/v1/sessions?ids={ids}", "k=50", f"hot=1-{N_SESSIONS}"])
    jobs.insert(2, bench_cluster.batch_job(b, "hot-batch", "hot"))
    jobs.append(b.redis_benchmark_job("hot-batch", "redis-benchmark MGET-50", ["MGET"] + ["rb:__rand_int__"] * 50, 50))
    b.run_jobs(jobs)
    b.stop("batchd-w2")  # the later scenarios measure the one-process batchd only
    bench_near.record_rss(b, "batchd-near", "after hot-batch")


def mixed(b):
    b.set_cache("mixed")
    b.run_jobs(batch_jobs(b, "mixed", ["hot=1-9000", f"cold=9001-{N_SESSIONS}", "miss=0.1"]))
    b.set_cache("hot")


def cold_batch(b):
    b.set_cache("cold")
    jobs = batch_jobs(b, "cold-batch", [f"hot=1-{N_SESSIONS}"])
    jobs.insert(1, bench_cluster.batch_job(b, "cold-batch", "cold"))
    jobs.append(b.pgbench_job("cold-batch", "pgbench ANY-50 (16 clients)", 50))
    jobs.append(b.pgbench_job("cold-batch", "pgbench by-id (16 clients)", 1))
    b.run_jobs(jobs)
    b.set_cache("hot")
    if b.cluster_nodes:
        b.set_cluster_cache("hot")


def proxy(b):
    p = b.port

    def from_origin(status, headers, body):
        if status == 200 and headers.get("X-Bench-Origin") == "1":
            return None
        return f"batchd does not proxy yet (GET /api/ping answered {status} {body[:40].decode(errors='replace')})"

    b.run_jobs([
        b.http_job("proxy", "batchd [upstream]", "batchd", ["origin", "batchd"], p["batchd"], ["path=/api/ping"],
                   check=from_origin),
        b.http_job("proxy", "nginx proxy_pass (1 worker)", "peer", "nginx-proxy", p["nginx-proxy"],
                   ["path=/api/ping"], check=from_origin),
        b.http_job("proxy", "origin direct (nginx return 200)", "limit", "origin", p["origin"], ["path=/api/ping"]),
    ])
