"""A real Redis Cluster for the integration tests: 6 redis-server processes
(3 primaries, a replica each) made a cluster by `redis-cli --cluster create`.

    RedisCluster(dir).start()
        node 127.0.0.1:p   ... 6 processes, bus ports p + 10000, nodes.conf in dir/<p>/
    seeds()                    "127.0.0.1:p1,127.0.0.1:p2,..." for batchd's [redis] url
    node_for_key(k)            the primary serving k now
    begin_migration / move_keys / finish_migration, or migrate_slot: a slot
                               moved by hand, so a test can see ASK, then MOVED
    kill_primary + wait_failover, restart: a primary lost and its replica promoted

Roles change (failover), so primaries() and replicas() ask the live nodes
each time; a ClusterNode is one process slot (its port and directory) for
the whole run, alive or killed.
"""

import random
import socket
import subprocess
import time
from pathlib import Path

from harness import wait_until

HOST = "127.0.0.1"
NODE_TIMEOUT_MS = 1000


def _bindable(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def ephemeral_low():
    """The first port of Linux's ephemeral range (free_port() and every
    outgoing connection take ports from it)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_cluster_ports(n, base=None):
    """n ports where both the port and its bus port (+10000) are free, all
    below the ephemeral range: a node's peers keep dialling a dead node's
    ports, and a port free_port() hands to a test's proxy or batchd must
    never be one of those. Scans up from base (random in 20000..21500
    when None)."""
    limit = ephemeral_low()
    port = base or random.randrange(20000, 21500)
    ports = []
    while len(ports) < n:
        if port + 10000 >= limit:
            raise RuntimeError(f"no free cluster ports with bus ports below {limit}")
        if _bindable(port) and _bindable(port + 10000):
            ports.append(port)
        port += 1
    return ports


class ClusterNode:
    def __init__(self, workdir, port):
        self.port = port
        self.dir = Path(workdir) / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.id = None  # CLUSTER MYID, once the node runs

    def __repr__(self):
        return f"<ClusterNode {self.port} {self.role() if self.alive() else 'down'}>"

    @property
    def addr(self):
        return f"{HOST}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        """Starts (or restarts) the process; nodes.conf keeps its identity."""
        self.kill()  # never lose a live process (it would outlive the tests)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--logfile", str(self.dir / "redis.log"),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             # A primary would wait 5 s for more replicas before a diskless
             # full sync: replicas (new or rejoining) would lag that long.
             "--repl-diskless-sync-delay", "0",
             # Redis 7.0 leaves a replica out of CLUSTER SLOTS while its
             # replication offset is 0, which on an idle primary lasts until
             # the first replication ping (every 10 s by default).
             "--repl-ping-replica-period", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, timeout=10, what=f"redis-server on {self.port}")
        self.id = self.client().execute_command("CLUSTER", "MYID").decode()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def client(self):
        import redis
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)

    def ping(self):
        try:
            return self.client().ping()
        except Exception:
            return False

    def cmd(self, *args):
        return self.client().execute_command(*args)

    def role(self):
        """"master" or "slave", as ROLE says."""
        return self.cmd("ROLE")[0].decode()

    def info(self, section):
        return self.client().info(section)

    def cluster_info(self):
        text = self.cmd("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)

    def slots(self):
        """This node's view: sorted [(start, end, primary port, [replica ports])]."""
        out = []
        for e in self.cmd("CLUSTER", "SLOTS"):
            out.append((int(e[0]), int(e[1]), int(e[2][1]), sorted(int(r[1]) for r in e[3:])))
        return sorted(out)

    def commandstats(self):
        """{"mget": calls, ...} from INFO commandstats."""
        info = self.info("commandstats")
        return {k[len("cmdstat_"):]: v["calls"] for k, v in info.items()}


class RedisCluster:
    N_NODES = 6

    def __init__(self, workdir, base_port=None):
        self.dir = Path(workdir)
        self.base_port = base_port
        self.nodes = []
        self.create_seconds = None  # (redis-cli --cluster create, then the wait until healthy)
        self._migrating = {}  # slot -> (source node, destination node)
        self._killed = {}  # killed primary -> (its slots, its replicas)
        self._runs = 0  # clusters started; each in its own dir/run<n>/

    # --- lifecycle ------------------------------------------------------------------

    def start(self, timeout=30):
        ports = free_cluster_ports(self.N_NODES, self.base_port)
        self._runs += 1
        self.nodes = [ClusterNode(self.dir / f"run{self._runs}", p) for p in ports]
        for n in self.nodes:
            n.start()
        t0 = time.monotonic()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[n.addr for n in self.nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout)
        t1 = time.monotonic()
        self.wait_healthy(timeout=timeout)
        self.create_seconds = (t1 - t0, time.monotonic() - t1)
        return self

    def stop(self):
        for n in self.nodes:
            n.kill()

    def renew(self):
        """Stops every node and starts a fresh cluster (new ports, empty
        directories): for a test that left this one broken."""
        self.stop()
        self._migrating.clear()
        self._killed.clear()
        return self.start()

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def seeds(self):
        return ",".join(n.addr for n in self.nodes)

    def by_port(self, port):
        return next(n for n in self.nodes if n.port == port)

    def primaries(self):
        return [n for n in self.live() if n.role() == "master"]

    def replicas(self):
        return [n for n in self.live() if n.role() == "slave"]

    # --- state ----------------------------------------------------------------------

    def _agreed_slots(self):
        """The slot map every live node reports, or None while they differ,
        a node is not ok, or a slot is uncovered."""
        views = []
        for n in self.live():
            try:
                if n.cluster_info().get("cluster_state") != "ok":
                    return None
                views.append(n.slots())
            except Exception:
                return None
        if not views or any(v != views[0] for v in views):
            return None
        if sum(e - s + 1 for s, e, _, _ in views[0]) != 16384:
            return None
        return views[0]

    def healthy(self):
        """All 6 nodes up, the cluster ok and agreed, 3 primaries each with
        one replica in sync, no slot half migrated."""
        if len(self.live()) != self.N_NODES:
            return False
        view = self._agreed_slots()
        if view is None:
            return False
        prim = {p: r for _, _, p, r in view}
        if len(prim) != 3 or any(len(r) != 1 for r in prim.values()):
            return False
        for n in self.live():
            if n.role() == "slave" and n.info("replication").get("master_link_status") != "up":
                return False
            if "[" in n.cmd("CLUSTER", "NODES").decode():  # [slot->-id] / [slot-<-id]
                return False
        return True

    def wait_healthy(self, timeout=30):
        wait_until(self.healthy, timeout=timeout, interval=0.05, what="a healthy cluster")

    def wait_agreed(self, timeout=15):
        return wait_until(self._agreed_slots, timeout=timeout, interval=0.05,
                          what="every node ok and agreeing on slots")

    def keyslot(self, key):
        return int(self.live()[0].cmd("CLUSTER", "KEYSLOT", key))

    def owner(self, slot):
        """The primary owning slot, in a live node's view."""
        for s, e, port, _ in self.live()[0].slots():
            if s <= slot <= e:
                return self.by_port(port)
        raise LookupError(f"slot {slot} is not covered")

    def node_for_key(self, key):
        return self.owner(self.keyslot(key))

    def slots_of(self, node):
        """The ranges [(start, end)] node owns."""
        return [(s, e) for s, e, port, _ in self.live()[0].slots() if port == node.port]

    # --- data and stats -------------------------------------------------------------

    def commandstats(self):
        """{port: {"mget": calls, ...}} over the live nodes (a replica counts
        the writes it applies)."""
        return {n.port: n.commandstats() for n in self.live()}

    def reset_stats(self):
        for n in self.live():
            n.cmd("CONFIG", "RESETSTAT")

    def flushall(self):
        for n in self.primaries():
            n.cmd("FLUSHALL")

    # --- failover -------------------------------------------------------------------

    def kill_primary(self, node):
        """SIGKILLs a primary (its replicas will take over, see wait_failover)."""
        assert node.role() == "master", f"{node} is not a primary"
        reps = [self.by_port(p) for _, _, port, rs in node.slots() if port == node.port for p in rs]
        self._killed[node] = (self.slots_of(node), list(dict.fromkeys(reps)))
        node.kill()

    def wait_failover(self, old, timeout=20):
        """Waits until a replica of the killed primary `old` is a primary
        owning all its slots, and the live nodes agree, ok. Returns it."""
        slots, reps = self._killed[old]

        def promoted():
            view = self._agreed_slots()
            if view is None:
                return None
            for r in reps:
                if r.alive() and r.role() == "master":
                    owned = [(s, e) for s, e, port, _ in view if port == r.port]
                    if all(any(s <= a and b <= e for s, e in owned) for a, b in slots):
                        return r
            return None

        return wait_until(promoted, timeout=timeout, interval=0.05,
                          what=f"a replica of {old.port} taking over")

    def restart(self, node, timeout=20):
        """Starts a killed node again; once the cluster sees it, a former
        primary whose slots went to its replica rejoins as a replica."""
        assert not node.alive()
        node.start()
        self._killed.pop(node, None)

        def rejoined():
            if node.role() != "slave":
                return False
            if node.info("replication").get("master_link_status") != "up":
                return False
            return self._agreed_slots() is not None

        wait_until(rejoined, timeout=timeout, interval=0.05, what=f"{node.port} rejoining as a replica")
        return node

    # --- slot migration ---------------------------------------------------------------

    def begin_migration(self, slot, dst):
        """Marks slot IMPORTING on dst and MIGRATING on its owner: the owner
        answers ASK for keys it no longer holds from now on."""
        src = self.owner(slot)
        assert src is not dst, f"slot {slot} is on {dst.port} already"
        dst.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", src.id)
        src.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.id)
        self._migrating[slot] = (src, dst)
        return src

    def move_keys(self, slot, n=None):
        """MIGRATEs up to n (all when None) of the slot's keys still on the
        source to the destination. Returns how many moved."""
        src, dst = self._migrating[slot]
        moved = 0
        while n is None or moved < n:
            batch = 100 if n is None else min(100, n - moved)
            keys = src.cmd("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            src.cmd("MIGRATE", HOST, dst.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        return moved

    def finish_migration(self, slot):
        """Moves what is left, then assigns the slot to the destination on
        every primary (destination first, then source, as Redis advises) and
        waits until all live nodes agree."""
        src, dst = self._migrating[slot]
        self.move_keys(slot)
        order = [dst, src] + [p for p in self.primaries() if p not in (dst, src)]
        for p in order:
            p.cmd("CLUSTER", "SETSLOT", slot, "NODE", dst.id)
        del self._migrating[slot]
        self.wait_agreed()
        wait_until(lambda: self.owner(slot) is dst, timeout=10, what=f"slot {slot} on {dst.port}")

    def migrate_slot(self, slot, dst):
        """Moves one slot with its keys to the primary dst."""
        self.begin_migration(slot, dst)
        self.finish_migration(slot)
