"""systemd integration (daemon/notify.c, systemd/batchd.service): the
sd_notify datagrams a real batchd sends to $NOTIFY_SOCKET, and the unit file
as systemd itself reads it.

The tests play systemd's part: they bind an AF_UNIX datagram socket and
read what batchd sends there."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import harness
from harness import ROOT, Http, port_open, wait_until

# The unit as meson fills it in (systemd/batchd.service.in) for the build
# under test, whose prefix is the default /usr/local.
UNIT = Path(harness.BATCHD).resolve().parent / "batchd.service"


class Receiver:
    """The systemd side of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, address, env_value):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.env_value = env_value
        self.seen = []

    @classmethod
    def at_path(cls, directory):
        path = str(Path(directory) / "notify.sock")
        if len(path.encode()) >= 108:   # sun_path
            pytest.fail(f"socket path too long for AF_UNIX: {path}")
        return cls(path, path)

    @classmethod
    def abstract(cls):
        name = f"batchd-test-{uuid.uuid4().hex}"
        return cls("\0" + name, "@" + name)

    def env(self, **extra):
        return {"NOTIFY_SOCKET": self.env_value, **extra}

    def recv(self, timeout):
        """The next datagram as {key: value}, or None after timeout seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        fields = {}
        for line in data.decode().split("\n"):
            k, sep, v = line.partition("=")
            assert sep, f"not an assignment: {line!r} in {data!r}"
            fields[k] = v
        self.seen.append(fields)
        return fields

    def wait_for(self, key, timeout=20.0):
        """Reads datagrams until one sets key; fails the test after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {key}= datagram within {timeout}s; got {self.seen}")
            m = self.recv(left)
            if m is not None and key in m:
                return m

    def collect(self, seconds):
        """Every datagram that arrives within the next `seconds`."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            m = self.recv(left)
            if m is not None:
                out.append(m)
        return out

    def close(self):
        self.sock.close()


@pytest.fixture
def receiver(tmp_path):
    r = Receiver.at_path(tmp_path)
    yield r
    r.close()


def test_ready_after_listeners_then_stopping_before_exit(start_batchd, receiver):
    b = start_batchd(env=receiver.env(), wait=False)
    ready = receiver.wait_for("READY")
    assert ready["READY"] == "1"
    assert ready.get("STATUS"), f"READY=1 without a STATUS line: {ready}"
    # READY=1 promises the listeners are up: both must accept at once.
    assert port_open(b.port) and port_open(b.admin_port), "READY=1 sent before the listeners opened"

    # A request in flight holds the drain open, so "before exit" is observable.
    slow = Http(b.port)
    slow.send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
    wait_until(lambda: b.metric("batchd_connections_open", listener="main") == 1, what="connection seen")
    b.send_signal(signal.SIGTERM)
    stopping = receiver.wait_for("STOPPING", timeout=10)
    assert stopping["STOPPING"] == "1"
    assert b.proc.poll() is None, "STOPPING=1 only arrived after batchd exited"

    slow.send("67890")
    assert slow.read_response().status == 404
    assert b.wait(15) == 0
    late = receiver.collect(0.2)
    assert not any("READY" in m for m in late), f"READY=1 after STOPPING=1: {late}"


def test_reload_is_bracketed_by_reloading_and_ready(start_batchd, receiver):
    b = start_batchd(env=receiver.env(), wait=False)
    receiver.wait_for("READY")
    b.conf.write_text(b.conf.read_text().replace("log_level = debug", "log_level = info"))
    b.send_signal(signal.SIGHUP)
    reloading = receiver.wait_for("RELOADING")
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert receiver.wait_for("READY")["READY"] == "1"
    # A rejected file still ends the reload with READY=1 (the old config runs).
    b.conf.write_text(b.conf.read_text() + "\nnonsense line\n")
    b.send_signal(signal.SIGHUP)
    receiver.wait_for("RELOADING")
    receiver.wait_for("READY")
    assert "reload rejected" in b.log()


def test_watchdog_pings_every_half_timeout(start_batchd, receiver):
    b = start_batchd(env=receiver.env(WATCHDOG_USEC="200000"), wait=False)
    receiver.wait_for("READY")
    got = receiver.collect(1.5)
    pings = [m for m in got if m.get("WATCHDOG") == "1"]
    # Every 100 ms: ~15 in 1.5 s; 3 leaves room for a slow sanitizer build.
    assert len(pings) >= 3, f"{len(pings)} WATCHDOG=1 in 1.5 s: {got}"
    assert "systemd watchdog on" in b.log() and "interval_ms=100" in b.log()
    assert b.metric("batchd_notify_errors_total") == 0


def test_watchdog_for_another_pid_stays_silent(start_batchd, receiver):
    # WATCHDOG_PID names another process (this test runner): batchd must not ping.
    b = start_batchd(env=receiver.env(WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid())),
                     wait=False)
    receiver.wait_for("READY")
    got = receiver.collect(1.5)
    assert not [m for m in got if "WATCHDOG" in m], f"pinged for pid {os.getpid()}: {got}"
    assert "systemd watchdog is for another process" in b.log()


def test_watchdog_for_own_pid_pings(start_batchd, receiver, tmp_path, monkeypatch):
    # WATCHDOG_PID equal to batchd's own pid, as systemd sets it: a shell
    # that execs batchd knows that pid as $$.
    wrapper = tmp_path / "batchd-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\nWATCHDOG_PID=$$ exec "{harness.BATCHD}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(harness, "BATCHD", str(wrapper))
    b = start_batchd(env=receiver.env(WATCHDOG_USEC="200000"), wait=False)
    receiver.wait_for("READY")
    got = receiver.collect(1.5)
    assert len([m for m in got if m.get("WATCHDOG") == "1"]) >= 3, got
    assert f"pid={b.proc.pid}" in b.log()


def test_abstract_socket_name(start_batchd):
    r = Receiver.abstract()
    try:
        b = start_batchd(env=r.env(WATCHDOG_USEC="200000"), wait=False)
        assert r.wait_for("READY")["READY"] == "1"
        assert r.wait_for("WATCHDOG", timeout=5)["WATCHDOG"] == "1"
        b.send_signal(signal.SIGTERM)
        assert r.wait_for("STOPPING", timeout=10)["STOPPING"] == "1"
        assert b.wait(15) == 0
    finally:
        r.close()


def test_unreachable_socket_is_counted_logged_once_and_not_fatal(start_batchd, tmp_path):
    # Nobody listens at this path: every message fails, batchd keeps serving.
    b = start_batchd(env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock"), "WATCHDOG_USEC": "20000"})
    assert harness.get(b.ops_port, "/healthz").status == 200
    # READY=1 plus a WATCHDOG=1 every 10 ms.
    wait_until(lambda: b.metric("batchd_notify_errors_total") >= 10, timeout=10,
               what="notify errors to be counted")
    warnings = [line for line in b.log().splitlines() if 'msg="systemd notify failed"' in line]
    assert len(warnings) == 1, f"expected one warning, got {len(warnings)}:\n" + "\n".join(warnings[:5])
    assert "level=warn" in warnings[0]


def test_without_notify_socket_errors_metric_is_zero(start_batchd):
    env = {"NOTIFY_SOCKET": ""}   # as when run from a shell
    b = start_batchd(env=env)
    assert b.metric("batchd_notify_errors_total") == 0
    assert "batchd_notify_errors_total" in harness.get(b.ops_port, "/metrics").body.decode()
    assert "systemd" not in b.log()


# --- the unit file -----------------------------------------------------------------


def unit_settings(text):
    """[(section, key, value)] from a unit file (no line continuations used)."""
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.append((section, k.strip(), v.strip()))
    return out


def test_unit_declares_notify_watchdog_reload_and_hardening():
    s = {(sec, k): v for sec, k, v in unit_settings(UNIT.read_text())}
    want = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        # The master of several workers passes SIGTERM on (daemon/master).
        "KillMode": "mixed",
        "ExecStartPre": "/usr/local/bin/batchd -t -c /etc/batchd/batchd.ini",
        "ExecStart": "/usr/local/bin/batchd -c /etc/batchd/batchd.ini",
        "LimitNOFILE": "65536",
        # A static user: the config is root:batchd 0640 (tests/integration/test_install.py).
        "User": "batchd",
        "Group": "batchd",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        # AF_UNIX is what NOTIFY_SOCKET needs.
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in want.items():
        assert s.get(("Service", key)) == value, f"[Service] {key}={s.get(('Service', key))!r}, want {value!r}"


def meson_build_dir():
    d = Path(harness.BATCHD).resolve().parent
    return d if (d / "meson-private").is_dir() else None


def test_meson_install_puts_files_where_the_unit_looks(tmp_path):
    """A real `meson install` into a DESTDIR: the binary, the live config and
    the unit land where systemd/batchd.service expects them, and installing
    again keeps an edited config."""
    build = meson_build_dir()
    if build is None or not shutil.which("meson"):
        pytest.skip(f"BATCHD_BIN={harness.BATCHD} is not in a meson build directory")
    dest = tmp_path / "root"

    def install():
        r = subprocess.run(["meson", "install", "-C", str(build), "--destdir", str(dest), "--no-rebuild"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    install()
    s = {k: v for sec, k, v in unit_settings(UNIT.read_text()) if sec == "Service"}
    binary, _, args = s["ExecStart"].partition(" ")
    conf = args.split()[-1]
    assert (dest / binary.lstrip("/")).is_file(), f"{binary} not installed"
    live = dest / conf.lstrip("/")
    assert live.is_file(), f"{conf} not installed"
    units = list(dest.rglob("batchd.service"))
    assert len(units) == 1
    unit_dir = "/" + str(units[0].parent.relative_to(dest))
    if shutil.which("systemd-analyze"):
        paths = subprocess.run(["systemd-analyze", "unit-paths"], capture_output=True, text=True).stdout.split()
        if paths:
            assert unit_dir in paths, f"meson installs the unit to {unit_dir}, not a systemd unit path: {paths}"
    docs = next(v for sec, k, v in unit_settings(UNIT.read_text()) if k == "Documentation").split()
    doc = next(d for d in docs if d.startswith("file://"))
    assert (dest / doc[len("file://"):].lstrip("/")).is_file(), f"{doc} not installed"
    for page in ("man8/batchd.8", "man5/batchd.ini.5"):
        assert (dest / "usr/local/share/man" / page).is_file(), f"{page} not installed"

    live.write_text(live.read_text().replace("admin_token = change-me", "admin_token = kept"))
    install()
    assert "admin_token = kept" in live.read_text()
    assert (dest / "usr/local/share/doc/batchd/batchd.ini.example").is_file()


def analyze_verify(unit_path):
    # --man=no: Documentation= names man pages the build has not installed
    # (tests/integration/test_install.py checks them on a meson install).
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_path)], capture_output=True,
                          text=True, timeout=60)


def test_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    # A trivially valid unit first: if even that fails, verify cannot run here.
    probe = tmp_path / "batchd-probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    r = analyze_verify(probe)
    if r.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run in this environment: {(r.stderr or r.stdout).strip()[:500]}")

    # The real unit, with its paths pointed at the built binary and a test
    # config (verify checks that ExecStart programs exist and are executable).
    conf = tmp_path / "batchd.ini"
    conf.write_text(harness.config(harness.free_port()))
    text = UNIT.read_text()
    assert "/usr/local/bin/batchd" in text and "/etc/batchd/batchd.ini" in text
    text = text.replace("/usr/local/bin/batchd", str(Path(harness.BATCHD).resolve()))
    text = text.replace("/etc/batchd/batchd.ini", str(conf))
    unit = tmp_path / "batchd.service"
    unit.write_text(text)
    r = analyze_verify(unit)
    out = (r.stdout + r.stderr).strip()
    mine = [line for line in out.splitlines() if "batchd" in line]
    assert r.returncode == 0 and not mine, f"systemd-analyze verify failed ({r.returncode}):\n{out}"

    # ExecStartPre is the config check; it must pass on a valid config.
    pre = next(v for sec, k, v in unit_settings(text) if k == "ExecStartPre")
    c = subprocess.run(pre.split(), capture_output=True, text=True, env={**os.environ, **harness.SAN_ENV})
    assert c.returncode == 0, c.stdout + c.stderr


    # And the check above can fail: verify reports a bad value (exit 0, a
    # message naming the unit), which this test's filter catches.
    bad = tmp_path / "bad" / "batchd.service"
    bad.parent.mkdir()
    bad.write_text(re.sub(r"(?m)^Type=notify$", "Type=notfy", text))
    out = analyze_verify(bad)
    assert any("batchd" in line and "notfy" in line for line in (out.stdout + out.stderr).splitlines()), \
        f"verify did not report Type=notfy: {out.stdout + out.stderr}"


# --- several workers (daemon/master) ---------------------------------------------


class CredReceiver(Receiver):
    """A Receiver that also records each datagram's sender pid (SO_PASSCRED),
    as systemd checks it against NotifyAccess=main."""

    def __init__(self, address, env_value):
        super().__init__(address, env_value)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.senders = []

    def recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = next(int.from_bytes(d[:4], "little") for lvl, typ, d in anc
                   if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS)
        fields = dict(line.partition("=")[::2] for line in data.decode().split("\n"))
        fields["_pid"] = pid
        self.seen.append(fields)
        self.senders.append(pid)
        return fields


def test_workers_master_speaks_for_the_group(start_batchd, tmp_path):
    r = CredReceiver(str(tmp_path / "n.sock"), str(tmp_path / "n.sock"))
    try:
        b = start_batchd(batchd="workers = 2\n", env=r.env(WATCHDOG_USEC="200000"), wait=False)
        ready = r.wait_for("READY")
        # READY=1 once both workers listen.
        assert b.log().count('msg="listening" worker=') == 2, b.log()
        assert port_open(b.port) and port_open(b.admin_port)
        # Pings come from the master, relayed when both workers pinged.
        got = r.collect(1.5)
        assert len([m for m in got if m.get("WATCHDOG") == "1"]) >= 3, got
        b.send_signal(signal.SIGHUP)
        r.wait_for("RELOADING")
        r.wait_for("READY")
        log = b.log()
        assert 'msg="reloaded" worker=0' in log and 'msg="reloaded" worker=1' in log, \
            "READY=1 before both workers reloaded"
        b.send_signal(signal.SIGTERM)
        assert r.wait_for("STOPPING", timeout=10)["STOPPING"] == "1"
        assert b.wait(20) == 0
        assert set(r.senders) == {b.proc.pid}, f"datagrams from {set(r.senders)}, master is {b.proc.pid}"
        assert ready["READY"] == "1"
    finally:
        r.close()
