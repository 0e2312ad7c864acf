"""tools/lib/driver.py: what the drivers behind tools/bench (bench.py) and
tools/chaos (chaos.py) share: the command line their scripts pass them,
the children they start (Procs), and the machine and program versions
their reports name."""
import argparse
import os
import platform
import signal
import subprocess


def driver_args(doc):
    """The parser of the options tools/bench and tools/chaos pass their
    driver; a driver adds its own before parse_args()."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--run", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--pg-bin", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--pg-port", type=int, required=True)
    ap.add_argument("--port-base", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--setup-seconds", type=float, default=0.0)
    return ap


# --- processes ------------------------------------------------------------------------------


class Procs:
    """Children we start, stopped in reverse order. Their pids also go to a
    file that the exit trap of tools/bench or tools/chaos reads, in case we
    die first."""

    def __init__(self, run):
        self.run = run
        self.list = []
        self.pidfile = run / "pids"

    def start(self, name, argv, cpus=None, env=None, cwd=None, quiet=False):
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        out = open(os.devnull if quiet else self.run / "logs" / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd, start_new_session=True)
        out.close()
        self.list.append((name, p))
        self.record(p.pid)
        return p

    def record(self, pid):
        """pid and start time (field 22 of /proc/PID/stat), so that the next
        run stops this process and never one that reused its pid."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                start = f.read().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return
        with open(self.pidfile, "a") as f:
            f.write(f"{pid} {start}\n")

    def stop(self, p, timeout=15):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.list = [(n, q) for n, q in self.list if q is not p]

    def stop_all(self):
        for _, p in reversed(list(self.list)):
            self.stop(p)


# --- the machine ----------------------------------------------------------------------------


def machine():
    """(CPU model, number of CPUs, memory in GiB, kernel release)."""
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) / 1024 / 1024
    return cpu, os.cpu_count(), mem, platform.release()


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
