"""A real browser for the integration tests: Debian's Chromium, headless,
driven over the DevTools protocol (standard library + python3-websocket).

    test --HTTP GET /json/list--> chromium --remote-debugging-port
         --WebSocket (CDP)-----> the page target: Page.navigate, Runtime.evaluate

    with Browser() as b:
        b.navigate("http://127.0.0.1:8080/page")
        b.evaluate("1 + 1")                      # 2 (by value; promises awaited)
        b.wait_for("window.got.length == 2", timeout=10)

Chromium picks its own debugging port (--remote-debugging-port=0) and writes
it to DevToolsActivePort in the profile, so no port is guessed. Every wait has
a timeout; a failure carries the tail of Chromium's stderr. close() kills the
whole process group (the wrapper script, browser, zygote, renderers) and
removes the profile. CDP events (Network.enable and the like) are kept in
.events for the test to read.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

try:
    import websocket
except ImportError:  # require() reports it as a skip
    websocket = None

CHROMIUM = "/usr/bin/chromium"


def require_browser():
    """Skips the calling test module (or test) when Chromium or
    python3-websocket is missing: reported as skipped, never passed.
    tools/test installs both when run as root."""
    import pytest
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; tools/test installs it)",
                    allow_module_level=True)
    if websocket is None:
        pytest.skip("python3-websocket is missing (apt-get install python3-websocket; tools/test installs it)",
                    allow_module_level=True)


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, timeout=30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="batchd-chromium-")
        self.stderr_path = os.path.join(self.profile, "stderr.log")
        self.ws = None
        self.next_id = 0
        self.events = []
        self._stderr = open(self.stderr_path, "wb")
        # A session of its own, so close() can kill the wrapper script and
        # every process Chromium forks. --no-sandbox: CI runs as root.
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--metrics-recording-only", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            start_new_session=True)
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    # --- start-up ------------------------------------------------------------------

    def _connect(self):
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        target = None
        while target is None:
            if self.proc.poll() is not None:
                self._fail(f"chromium exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self._fail("chromium did not offer a page target")
            try:
                with open(port_file) as f:
                    port = int(f.readline())
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = json.load(r)
                target = next((t for t in targets if t.get("type") == "page"), None)
            except (OSError, ValueError):
                pass  # not written or not listening yet
            if target is None:
                time.sleep(0.1)
        # suppress_origin: Chromium refuses DevTools WebSockets that carry an
        # Origin unless started with --remote-allow-origins.
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True)

    def _fail(self, what):
        raise BrowserError(f"{what}; chromium stderr (tail):\n{self.stderr_tail()}")

    def stderr_tail(self, n=4000):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    # --- the protocol ---------------------------------------------------------------

    def send(self, method, timeout=None, **params):
        """One CDP command; returns its result. Events that arrive meanwhile
        are appended to self.events."""
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no answer to {method} in time")
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue  # the deadline check above fails it
            except (websocket.WebSocketException, OSError) as e:
                self._fail(f"DevTools connection lost during {method}: {e!r}")
            if msg.get("id") == mid:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expr, timeout=None):
        """The value of a JavaScript expression in the page (promises are
        awaited); a thrown exception raises BrowserError."""
        r = self.send("Runtime.evaluate", timeout=timeout, expression=expr, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"{expr!r} threw: {d.get('exception', {}).get('description') or d.get('text')}")
        return r["result"].get("value")

    def wait_for(self, expr, timeout=10.0, interval=0.05, show=None):
        """Polls expr until it is truthy and returns its value. On timeout the
        error shows the value of `show` (a JavaScript expression), if given."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.evaluate(expr)
            if v:
                return v
            if time.monotonic() > deadline:
                seen = f"; {show} = {self.evaluate(show)!r}" if show else ""
                raise BrowserError(f"timed out after {timeout}s waiting for {expr!r}{seen}")
            time.sleep(interval)

    def navigate(self, url, timeout=None):
        """Loads url and waits until the document has loaded."""
        r = self.send("Page.navigate", url=url)
        if r.get("errorText"):
            raise BrowserError(f"navigating to {url}: {r['errorText']}")
        js = json.dumps(url)
        self.wait_for(f"location.href == {js} && document.readyState == 'complete'",
                      timeout=timeout or self.timeout, show="[location.href, document.readyState]")

    # --- shutdown --------------------------------------------------------------------

    def close(self):
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:
                pass
            self.ws = None
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
        # Children that outlived the wrapper stay in the group: make sure.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
