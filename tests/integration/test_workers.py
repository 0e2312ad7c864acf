"""Several worker processes (daemon/master): `workers = 2` starts a master
that binds the listeners, forks two workers, restarts one that dies, passes
SIGHUP and SIGTERM on; /metrics on any worker reports both."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness
from harness import Http, get, parse_metrics, port_open, wait_until

WORKERS = "workers = 2\n"


def healthz(port):
    """(worker id, pid) of the worker that answered /healthz on a new connection."""
    r = get(port, "/healthz")
    assert r.status == 200, r
    body = r.json()
    return body["worker"], body["pid"]


def worker_pids(port, want=2, tries=400):
    """{worker id: pid}, driving new connections until `want` workers answered."""
    seen = {}
    for _ in range(tries):
        w, pid = healthz(port)
        seen[w] = pid
        if len(seen) == want:
            return seen
    pytest.fail(f"only workers {seen} answered {tries} new connections")


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def per_worker(metrics, name, **labels):
    """{worker: value} of the series of `name` carrying `labels`."""
    out = {}
    for key, v in metrics.items():
        n, _, rest = key.partition("{")
        if n != name or not all(f'{k}="{val}"' in rest for k, val in labels.items()):
            continue
        w = rest.split('worker="', 1)[1].split('"', 1)[0]
        out[w] = out.get(w, 0) + v
    return out


def scrape(b):
    return parse_metrics(get(b.ops_port, "/metrics").body.decode())


def test_both_workers_serve_and_metrics_cover_the_group(start_batchd):
    b = start_batchd(batchd=WORKERS, admin=False)
    pids = worker_pids(b.port)
    assert sorted(pids) == [0, 1]
    assert len(set(pids.values())) == 2 and b.proc.pid not in pids.values()
    assert all(parent_of(p) == b.proc.pid for p in pids.values()), "workers are not the master's children"

    n = 40
    for _ in range(n):
        assert harness.request(b.port, "DELETE", "/nope").status == 404
    # Whichever worker the scrape lands on, it reports both, and the totals
    # are the requests made.
    answered = set()
    for _ in range(30):
        r = get(b.port, "/metrics")
        m = parse_metrics(r.body.decode())
        by_worker = per_worker(m, "batchd_http_requests_total", method="DELETE", status="4xx")
        assert set(by_worker) == {"0", "1"}, by_worker
        assert sum(by_worker.values()) == n, by_worker
        assert m["batchd_workers"] == 2
        assert m['batchd_worker_up{worker="0"}'] == 1 and m['batchd_worker_up{worker="1"}'] == 1
        # Computed gauges are reported for both workers too.
        assert set(per_worker(m, "process_resident_memory_bytes")) == {"0", "1"}
        # One HELP/TYPE block per name.
        text = r.body.decode()
        assert text.count("# TYPE batchd_http_requests_total ") == 1
        answered.add(per_worker(m, "batchd_connections_open", listener="main").get("0", 0) > 0)
        if len(answered) == 2:
            break
    assert len(answered) == 2, "every scrape landed on the same worker"


def test_admin_listener_on_every_worker(start_batchd):
    b = start_batchd(batchd=WORKERS)
    pids = worker_pids(b.admin_port)
    assert sorted(pids) == [0, 1]
    assert get(b.admin_port, "/readyz").status == 200
    m = scrape(b)
    assert set(per_worker(m, "batchd_connections_accepted_total", listener="admin")) == {"0", "1"}


def test_killed_worker_is_replaced_and_the_port_keeps_answering(start_batchd):
    b = start_batchd(batchd=WORKERS, admin=False)
    pids = worker_pids(b.port)
    before = per_worker(scrape(b), "batchd_connections_accepted_total", listener="main")

    failures, answers, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                answers.append(healthz(b.port))
            except Exception as e:  # a refused or dropped connection
                failures.append(repr(e))

    t = threading.Thread(target=hammer)
    t.start()
    try:
        os.kill(pids[0], signal.SIGKILL)
        new = wait_until(lambda: next((p for w, p in answers[-50:] if w == 0 and p != pids[0]), None),
                         timeout=20, what="a new worker 0 to answer")
        n = len(answers)  # and the port goes on answering after it
        wait_until(lambda: len(answers) > n + 20, what="20 more answers")
    finally:
        stop.set()
        t.join(10)
    # The one request in flight on worker 0 when it was killed may be reset
    # (the kernel cannot hand an accepted connection to another process);
    # no connection is refused, and nothing else fails: the master keeps
    # worker 0's socket open, and its replacement answers what queued there.
    assert len(failures) <= 1 and all("Reset" in f or "closed by batchd" in f for f in failures), \
        f"{len(failures)} requests failed while worker 0 restarted: {failures[:3]}"
    assert new != pids[0] and parent_of(new) == b.proc.pid
    assert worker_pids(b.port)[1] == pids[1], "worker 1 was restarted too"
    log = b.log()
    assert f"worker_id=0 worker_pid={pids[0]} signal=SIGKILL" in log
    assert f'msg="worker restarted" worker_id=0 worker_pid={new}' in log

    m = scrape(b)
    assert m['batchd_worker_restarts_total{worker="0"}'] == 1
    assert m['batchd_worker_restarts_total{worker="1"}'] == 0
    # The new worker carries on its slot's counters.
    after = per_worker(m, "batchd_connections_accepted_total", listener="main")
    assert after["0"] >= before["0"] and after["1"] >= before["1"]


def test_restarts_back_off_when_a_worker_keeps_dying(start_batchd):
    b = start_batchd(batchd=WORKERS, admin=False)
    delays = []
    for i in range(3):
        pid = worker_pids(b.port)[1]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: f"worker_pid={pid} signal=SIGKILL" in b.log(), what="the master to see it")
        line = next(x for x in b.log().splitlines() if f"worker_pid={pid} signal=SIGKILL" in x)
        delays.append(int(line.split("delay_ms=")[1].split()[0]))
    assert delays == [100, 200, 400], delays
    # The third restart is 400 ms away.
    wait_until(lambda: scrape(b)['batchd_worker_restarts_total{worker="1"}'] == 3, what="the third restart")


def test_sigterm_drains_both_workers(start_batchd):
    b = start_batchd(batchd=WORKERS)
    worker_pids(b.admin_port)
    # A request in flight on each worker: its body is still arriving.
    held = []
    for _ in range(200):
        c = Http(b.port)
        c.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        held.append(c)
        wait_until(lambda: sum(per_worker(scrape(b), "batchd_connections_open", listener="main").values())
                   == len(held), what="the connection to be seen")
        if len(per_worker(scrape(b), "batchd_connections_open", listener="main")) == 2 and \
                all(v > 0 for v in per_worker(scrape(b), "batchd_connections_open", listener="main").values()):
            break
    open_by_worker = per_worker(scrape(b), "batchd_connections_open", listener="main")
    assert sorted(open_by_worker) == ["0", "1"] and all(v > 0 for v in open_by_worker.values()), open_by_worker

    b.send_signal(signal.SIGTERM)
    wait_until(lambda: b.log().count('msg="shutting down"') == 2, what="both workers to start draining")
    assert get(b.admin_port, "/readyz").status == 503
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", b.port), timeout=2).close()
    time.sleep(0.3)
    assert b.proc.poll() is None, "the master exited with requests in flight"

    for c in held:
        c.send("67890")
        assert c.read_response().status == 404
        c.close()
    assert b.wait(20) == 0
    log = b.log()
    assert log.count('msg="worker stopped"') == 2 and "exit_code=0" in log
    assert 'msg="drained" worker=0' in log and 'msg="drained" worker=1' in log


def test_sighup_reaches_both_workers(start_batchd):
    b = start_batchd(batchd=WORKERS)
    worker_pids(b.admin_port)
    b.conf.write_text(b.conf.read_text().replace("workers = 2", "workers = 3")
                      .replace("log_level = debug", "log_level = info"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: 'msg="workers reloaded"' in b.log(), what="the reload to finish")
    log = b.log()
    assert 'msg="reloaded" worker=0' in log and 'msg="reloaded" worker=1' in log
    assert "[batchd] workers" in log, "the restart-only change was not reported"
    assert scrape(b)["batchd_workers"] == 2
    # A bad file: rejected once, by the master, and both keep running.
    b.conf.write_text(b.conf.read_text() + "\nnonsense line\n")
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload rejected, the running configuration stays" in b.log(), what="the rejection")
    assert sorted(worker_pids(b.admin_port)) == [0, 1]


def test_a_worker_restarted_after_a_reload_runs_the_new_file(start_batchd):
    b = start_batchd(batchd=WORKERS + "max_connections = 100\n", admin=False)
    pids = worker_pids(b.port)
    b.conf.write_text(b.conf.read_text().replace("max_connections = 100", "max_connections = 5"))
    b.send_signal(signal.SIGHUP)
    wait_until(lambda: 'msg="workers reloaded"' in b.log(), what="the reload to finish")
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: 'msg="worker restarted" worker_id=0' in b.log(), what="the restart")
    wait_until(lambda: b.log().count("max_connections=5") >= 1 and
               next((x for x in b.log().splitlines()[::-1] if 'msg="listening" worker=0' in x), "")
               .endswith("max_connections=5"), what="worker 0 to listen with the new limit")


def run_check(tmp_path, value):
    conf = tmp_path / "w.ini"
    conf.write_text(harness.config(harness.free_port(), batchd=f"workers = {value}\n"))
    return subprocess.run([harness.BATCHD, "-t", "-c", str(conf)], capture_output=True, text=True,
                          env={**os.environ, **harness.SAN_ENV})


@pytest.mark.parametrize("value,ok", [("-1", False), ("257", False), ("0", True), ("256", True), ("1", True)])
def test_check_rejects_out_of_range(tmp_path, value, ok):
    r = run_check(tmp_path, value)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    if not ok:
        assert r.returncode == 2 and "workers" in r.stderr


def test_zero_means_one_per_cpu(start_batchd):
    cpus = os.cpu_count()
    b = start_batchd(batchd="workers = 0\n")
    if cpus == 1:
        assert "worker" not in get(b.admin_port, "/healthz").json()
        return
    assert scrape(b)["batchd_workers"] == cpus
    assert sorted(worker_pids(b.admin_port, want=cpus, tries=100 * cpus)) == list(range(cpus))


def test_default_is_one_process_without_a_master(start_batchd):
    b = start_batchd()
    assert get(b.admin_port, "/healthz").json() == {"status": "ok"}
    text = get(b.admin_port, "/metrics").body.decode()
    assert 'worker="' not in text and "batchd_workers" not in text
    assert "master started" not in b.log()


def test_bad_address_fails_in_the_master(start_batchd, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        conf = tmp_path / "w.ini"
        conf.write_text(harness.config(port, batchd=WORKERS))
        r = subprocess.run([harness.BATCHD, "-c", str(conf)], capture_output=True, text=True, timeout=30,
                           env={**os.environ, **harness.SAN_ENV})
        assert r.returncode == 1, r.stderr
        assert 'msg="cannot bind" listener=main' in r.stderr
        assert "worker started" not in r.stderr
    finally:
        taken.close()
    assert not port_open(port)
