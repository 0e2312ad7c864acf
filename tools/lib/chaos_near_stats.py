"""tools/lib/chaos_near_stats.py: what the near-coherence scenario
(chaos_near.py) measures with: the documents and markers the changer
writes, the logs of acknowledgements and deliveries, staleness per read,
the observations of the readers, their summaries, and the self-check that
runs on made-up logs with stale answers injected (it must find exactly
those)."""
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_load import Http, HttpFail, RedisLink, percentile  # noqa: E402

N_HOT = 200           # ids s1..s200
BATCH = 10            # ids per ?ids= read
PAD = "p" * 96        # every document is about 130 bytes
NO_VERSION = 0xFFFFFFFF   # a document without "v": loaded from PostgreSQL (Redis unreachable)
WINDOW_S = 1.0        # "right after a fault": from its start until this long after it ended
HOLD_S = 0.1          # a link reset first withholds Redis's replies this long (as a partition would)


def key_of(i):
    return f"session:s{i + 1}"


def marker_of(i, v):
    """A key under the tracked prefix set with version v of id i (one MSET,
    so one invalidation message names both): the relay learns from it when
    that version's invalidation reached batchd. batchd takes it for the id
    "~i.v", which it never holds."""
    return f"session:~{i}.{v}"


MARK_RE = re.compile(rb"session:~(\d+)\.(\d+)\r\n")


def doc_of(i, v):
    return f'{{"id":"s{i + 1}","v":{v},"pad":"{PAD}"}}'


# --- what is stale -----------------------------------------------------------------------------------


def load_acks(path, n_ids):
    """The changer's log: acks[i][v] = when version v of id i was
    acknowledged (acks[i][0], the version set before the run, is 0.0)."""
    acks = [array("d", [0.0]) for _ in range(n_ids)]
    with open(path) as f:
        for line in f:
            i, v, t = line.split()
            i, v = int(i), int(v)
            a = acks[i]
            if v != len(a):
                raise RuntimeError(f"changer log: id {i} version {v} after {len(a) - 1}")
            a.append(float(t))
    return acks


def load_deliveries(path, acks):
    """The relay's log: deliv[i][v] = when the invalidation of version v of
    id i had been written into batchd's socket (0.0: never seen)."""
    deliv = [array("d", bytes(8 * len(a))) for a in acks]
    with open(path) as f:
        for line in f:
            i, v, t = line.split()
            i, v = int(i), int(v)
            if i < len(deliv) and v < len(deliv[i]) and deliv[i][v] == 0.0:
                deliv[i][v] = float(t)
    return deliv


def staleness(acks, deliv, t, idx, v):
    """(raw, beyond delivery) for a read that began at t and returned
    version v of id idx. raw: how long before t the next version had been
    acknowledged (0 when v was still the newest acknowledged before t, or
    is unknown). Beyond delivery: the same from when batchd could know,
    the later of the acknowledgement and its invalidation's arrival in
    batchd's socket, over every newer version acknowledged before t.
    deliv None: no relay, Redis sends the invalidation with the reply. A
    version whose invalidation never arrived (lost with a connection)
    counts from its acknowledgement: batchd must have seen the loss."""
    if v == NO_VERSION:
        return 0.0, 0.0
    a = acks[idx]
    u = v + 1
    if u >= len(a) or a[u] >= t:
        return 0.0, 0.0
    raw = t - a[u]
    if deliv is None:
        return raw, raw
    d = deliv[idx]
    beyond = 0.0
    while u < len(a) and a[u] < t:
        known = max(a[u], d[u]) if d[u] > 0.0 else a[u]
        if t - known > beyond:
            beyond = t - known
        u += 1
    return raw, beyond


class Obs:
    """Every read: when it began, how it was answered, and each (id,
    version) it returned. Arrays, not objects: a run has ~10^6 of them."""

    def __init__(self):
        self.t = array("d")        # per request
        self.kind = array("b")     # 0 single, 1 batch (closed loop); 2 single, 3 batch (paced)
        self.cache = array("b")    # CACHE_CODES index
        self.first = array("I")    # its observations: first .. first[k+1]
        self.idx = array("H")      # per observation
        self.ver = array("I")
        self.errors = {}
        self.unversioned = 0

    def add(self, t, kind, cache, pairs):
        self.t.append(t)
        self.kind.append(kind)
        self.cache.append(cache)
        self.first.append(len(self.idx))
        for i, v in pairs:
            self.idx.append(i)
            self.ver.append(v)
            self.unversioned += v == NO_VERSION

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def stale_each(self, acks, deliv):
        """(raw, beyond delivery) staleness of each request: the largest of
        its documents'."""
        raw = array("d", bytes(8 * len(self.t)))
        beyond = array("d", bytes(8 * len(self.t)))
        n_obs = len(self.idx)
        for k in range(len(self.t)):
            t = self.t[k]
            end = self.first[k + 1] if k + 1 < len(self.t) else n_obs
            w_raw = w_beyond = 0.0
            for j in range(self.first[k], end):
                r, b = staleness(acks, deliv, t, self.idx[j], self.ver[j])
                w_raw = max(w_raw, r)
                w_beyond = max(w_beyond, b)
            raw[k], beyond[k] = w_raw, w_beyond
        return raw, beyond


CACHE_CODES = ["local", "hit", "miss", "other"]
CACHE_OF = {"local": 0, "hit": 1, "miss": 2}


def classify(t, windows):
    """The index of the fault window t falls in, or -1."""
    for n, (_, t0, t1) in enumerate(windows):
        if t0 <= t < t1 + WINDOW_S:
            return n
    return -1


def summarize(obs, stale, sel):
    """Figures over the requests k with sel(k)."""
    ks = [k for k in range(len(obs.t)) if sel(k)]
    vals = [stale[k] for k in ks]
    st = [x for x in vals if x > 0]
    local = sum(1 for k in ks if obs.cache[k] == 0)
    return dict(reads=len(ks), local=local, local_share=local / len(ks) if ks else None, stale=len(st),
                max_ms=max(vals) * 1000 if vals else None, p99_ms=percentile(vals, 99) * 1000 if vals else None,
                stale_p50_ms=percentile(st, 50) * 1000 if st else None)


def selfcheck():
    """The computation above on made-up logs with stale answers injected:
    it must find exactly those, by exactly as much."""
    acks = [array("d", [0.0, 10.0, 11.0, 12.0]), array("d", [0.0])]
    # v1's invalidation reached batchd 0.2 s after its acknowledgement, v2's
    # with it, v3's never (lost with a connection).
    deliv = [array("d", [0.0, 10.2, 11.0, 0.0]), array("d", [0.0])]
    o = Obs()
    o.add(9.5, 0, 0, [(0, 0)])              # began before v1 was acknowledged: fine
    o.add(10.5, 0, 0, [(0, 1)])             # the newest: fine
    o.add(10.1, 0, 0, [(0, 0)])             # v1 acknowledged 0.1 s before, not yet delivered: 0.1 / 0
    o.add(10.3, 0, 0, [(0, 0)])             # ... delivered 0.1 s before it began: 0.3 / 0.1
    o.add(12.5, 1, 0, [(1, 0), (0, 1)])     # a batch: s1's v2 acknowledged and delivered at 11.0: 1.5 / 1.5
    o.add(12.5, 0, 1, [(0, 4)])             # a version not yet acknowledged (in flight): fine
    o.add(12.5, 0, 2, [(0, NO_VERSION)])    # from PostgreSQL: not measured
    o.add(11.0, 0, 0, [(0, 1)])             # v2 acknowledged at exactly its start: not before it
    o.add(12.25, 0, 0, [(0, 2)])            # v3 never delivered: from its acknowledgement, 0.25 / 0.25
    raw, beyond = o.stale_each(acks, deliv)
    got = [(round(x, 6), round(y, 6)) for x, y in zip(raw, beyond)]
    want = [(0.0, 0.0), (0.0, 0.0), (0.1, 0.0), (0.3, 0.1), (1.5, 1.5), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0),
            (0.25, 0.25)]
    if got != want:
        raise RuntimeError(f"staleness self-check: {got}, expected {want}")
    windows = [("x", 10.0, 10.2)]
    inside = summarize(o, beyond, lambda k: classify(o.t[k], windows) >= 0)
    if inside["stale"] != 1 or abs(inside["max_ms"] - 100) > 1e-6 or inside["reads"] != 4:
        raise RuntimeError(f"staleness self-check (windows): {inside}")
    return ("the staleness computation found the 4 stale answers injected into 9 made-up reads, by as much "
            "as injected (0.1 s, 0.3 s, 1.5 s, 0.25 s; 0.1 s, 1.5 s and 0.25 s beyond delivery)")


# --- the changer (a process of its own) ---------------------------------------------------------------
