"""tools/lib/bench_cluster.py: Redis Cluster's part of tools/bench (issue 15).

    hot-batch   + batchd-cluster: the bench's batchd.ini with [redis] cluster = yes
                  over a 3-primary Redis Cluster holding the same 10,000 documents
                  (a flush: one read-only script call a node, a GET a key inside)
    cold-batch  + batchd-cluster, the cluster emptied every 2 ms by a janitor per node

    ClusterServers (mixed into bench_jobs.Bench): start_redis_cluster, start_batchd_cluster,
    set_cluster_cache(); redis_commands() and reset_counters() add the cluster's
    nodes, so a cluster row's "Redis cmds/req" is the sum over its primaries.

The cluster is 3 primaries and no replicas (replicas would take CPU the
single-Redis rows do not pay for), cluster-enabled redis-server processes
on ports from 21000 whose bus ports (+10000) are free and below the
ephemeral range, made a cluster with
`redis-cli --cluster create`. Pinned (the default), they share the servers'
CPU with everything else, like the single Redis.
"""
import socket
import subprocess
import time

import redis

from bench_conf import N_SESSIONS, batchd_conf_lines, conf_lines
from bench_env import NotAvailable, http_get, log

PRIMARIES = 3


def bindable(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def write_cluster_conf(run, port, seeds):
    """batchd.ini on batchd-cluster's ports with [redis] url = the seeds and
    cluster = yes; nothing else differs."""
    out = []
    for section, key, _, line in conf_lines(batchd_conf_lines(port)):
        if section == "batchd" and key == "listen":
            line = f"listen = 127.0.0.1:{port['batchd-cluster']}"
        elif section == "batchd" and key == "admin_listen":
            line = f"admin_listen = 127.0.0.1:{port['cluster-admin']}"
        elif section == "redis" and key == "url":
            line = f"url = redis://{seeds}/0"
        elif section == "redis" and key == "cluster":
            continue
        out.append(line)
        if line.strip() == "[redis]":
            out.append("cluster = yes")
    path = run / "batchd-cluster.ini"
    path.write_text("\n".join(out) + "\n")
    return path


class ClusterServers:
    """Env.ensure()'s starters for the cluster and its batchd."""

    cluster_nodes = None    # [redis.Redis] of the primaries, once started
    cluster_cache = None
    cluster_janitors = ()

    def cluster_ports(self):
        self.port.update({"batchd-cluster": self.base + 80, "cluster-admin": self.base + 81})

    @staticmethod
    def free_node_ports():
        """PRIMARIES ports whose bus ports (+10000) are free too, with the bus
        ports below Linux's ephemeral range (32768+), where an outgoing
        connection could take one between our check and the bind."""
        ports, p = [], 21000
        while len(ports) < PRIMARIES and p + 10000 < 32768:
            if all(bindable(x) for x in (p, p + 10000)):
                ports.append(p)
            p += 1
        if len(ports) < PRIMARIES:
            raise NotAvailable("no free port pairs (port, port + 10000) for the cluster below 22768")
        return ports

    def start_redis_cluster(self):
        self.cluster_ports()
        ports = self.free_node_ports()
        procs = []
        for p in ports:
            d = self.run / "cluster" / str(p)
            d.mkdir(parents=True, exist_ok=True)
            procs.append(self.procs.start(f"redis-cluster-{p}", [
                "redis-server", "--bind", "127.0.0.1", "--port", str(p), "--dir", str(d), "--save", "",
                "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--logfile", str(d / "redis.log")]))
        nodes = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
        deadline = time.monotonic() + 20
        for c in nodes:
            while True:
                try:
                    c.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise NotAvailable("the cluster's redis-server processes did not start")
                    time.sleep(0.1)
        out = subprocess.run(["redis-cli", "--cluster", "create"] + [f"127.0.0.1:{p}" for p in ports] +
                             ["--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise NotAvailable(f"redis-cli --cluster create failed: {(out.stderr or out.stdout)[-200:]}")
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in nodes):
            if time.monotonic() > deadline + 20:
                raise NotAvailable("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        self.cluster_nodes = nodes  # counted from now on (redis_commands)
        self.cluster_seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
        log(f"  redis-cluster: {PRIMARIES} primaries on {self.cluster_seeds}")
        return procs[0]

    def start_batchd_cluster(self):
        self.ensure("redis-cluster")
        conf = write_cluster_conf(self.run, self.port, self.cluster_seeds)
        p = self.start_batchd_with("batchd-cluster", conf, self.port["batchd-cluster"], self.port["cluster-admin"])
        # That it is this process, on the cluster, with the whole slot map.
        deadline = time.monotonic() + 15
        while True:
            if p.poll() is not None:
                raise NotAvailable(f"batchd-cluster exited (status {p.returncode}); see .bench/logs")
            status, _, body = http_get(f"http://127.0.0.1:{self.port['cluster-admin']}/metrics")
            text = body.decode(errors="replace") if status == 200 else ""
            if "\nbatchd_redis_cluster_slots_covered 16384" in text and "\nbatchd_redis_up 1" in text:
                return p
            if time.monotonic() > deadline:
                raise NotAvailable("batchd-cluster's /metrics never showed 16384 slots covered and Redis up")
            time.sleep(0.1)

    def cluster_owner(self):
        """slot -> the primary's client."""
        owner = {}
        for start, end, primary, *_ in self.cluster_nodes[0].execute_command("CLUSTER", "SLOTS"):
            port = int(primary[1])
            c = next(c for c in self.cluster_nodes if c.connection_pool.connection_kwargs["port"] == port)
            for s in range(start, end + 1):
                owner[s] = c
        return owner

    def set_cluster_cache(self, state):
        """hot: the 10,000 sessions on their primaries. cold: empty, and a
        janitor per primary (FLUSHALL ASYNC every 2 ms, on the load
        generators' CPU) keeps it so."""
        self.ensure("redis-cluster")
        if self.cluster_cache == state:
            return
        for j in self.cluster_janitors:
            self.procs.stop(j)
        self.cluster_janitors = ()
        for c in self.cluster_nodes:
            c.flushall()
        if state == "hot":
            owner = self.cluster_owner()
            docs = self.load_docs()
            pipes = {id(c): c.pipeline(transaction=False) for c in self.cluster_nodes}
            if self.keyslot("session:s1") != int(self.cluster_nodes[0].execute_command("CLUSTER", "KEYSLOT",
                                                                                          "session:s1")):
                raise NotAvailable("bench_cluster.keyslot disagrees with CLUSTER KEYSLOT")
            for i in range(1, N_SESSIONS + 1):
                key = f"session:s{i}"
                c = owner[self.keyslot(key)]
                pipes[id(c)].set(key, docs[f"s{i}"], ex=self.cfg["ttl"])
            for p in pipes.values():
                p.execute()
        else:
            self.cluster_janitors = tuple(
                self.procs.start(f"janitor-cluster-{k}", self.gen(
                    ["redis-cli", "-p", str(c.connection_pool.connection_kwargs["port"]), "-r", "-1", "-i",
                     str(self.JANITOR_INTERVAL), "FLUSHALL", "ASYNC"]), quiet=True)
                for k, c in enumerate(self.cluster_nodes))
        self.cluster_cache = state

    @staticmethod
    def keyslot(key):
        """Redis Cluster's slot of key (CRC16/XMODEM of the hash tag or key, mod 16384)."""
        s = key.find("{")
        if s >= 0:
            e = key.find("}", s + 1)
            if e > s + 1:
                key = key[s + 1:e]
        crc = 0
        for ch in key.encode():
            crc ^= ch << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        return crc & 16383

    def redis_commands(self):
        out = super().redis_commands()
        for c in self.cluster_nodes or ():
            for name, st in c.info("commandstats").items():
                cmd = name.replace("cmdstat_", "").lower()
                if cmd.split("|")[0] not in self.IGNORED_CMDS | {"cluster", "ssubscribe", "sunsubscribe"}:
                    out[cmd] = out.get(cmd, 0) + int(st.get("calls", 0)) + int(st.get("rejected_calls", 0))
        return out

    def reset_counters(self):
        super().reset_counters()
        for c in self.cluster_nodes or ():
            c.config_resetstat()


def batch_job(b, scenario, state):
    """batchd-cluster's 50-id batch row of a scenario, its cluster in state."""
    lua = ["path=/v1/sessions?ids={ids}", "k=50", f"hot=1-{N_SESSIONS}"]
    b.cluster_ports()
    return b.http_job(scenario, "batchd, 3-primary Redis Cluster", "batchd-cluster", "batchd-cluster",
                      b.port["batchd-cluster"], lua, ids=50, pre=lambda: b.set_cluster_cache(state),
                      note="one read script a node a flush")
