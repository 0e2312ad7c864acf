"""A browser's WebSocket through batchd's Upgrade pass-through (daemon/proxy/
tunnel.c): Debian's Chromium over the DevTools protocol (browser.py), the
WebSocket app of test_websocket.py (ws_app.py) behind batchd as [upstream].

    chromium --GET / (a page from the app, through batchd)
             --new WebSocket(ws://batchd/ws)--> batchd --101, then bytes--> ws_app.py (echo)

What counts is what the page's own WebSocket handlers saw (the echoes, in
order and intact) and what the app received; batchd's metrics only say the
tunnel was made and closed.
"""


import pytest

from browser import require_browser

require_browser()

from browser import Browser  # noqa: E402
from harness import wait_until  # noqa: E402
from test_websocket import App, conf  # noqa: E402

# The page's side: open, send a text and a 2 MiB binary message, keep what
# comes back (text as is, binary as its length and a checksum).
PAGE_JS = """
window.ws_log = {opened: false, got: [], closed: null, error: false};
(() => {
  const ws = new WebSocket(%(url)s);
  ws.binaryType = "arraybuffer";
  const big = new Uint8Array(2 * 1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) & 255;
  ws.onopen = () => {
    ws_log.opened = true;
    ws.send("hello \u00fcber batchd");
    ws.send(big);
    ws.send("last");
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") { ws_log.got.push(e.data); }
    else {
      const b = new Uint8Array(e.data);
      let sum = 0;
      for (let i = 0; i < b.length; i++) sum = (sum + b[i] * (i %% 251 + 1)) %% 1000000007;
      ws_log.got.push({bytes: b.length, sum: sum});
    }
    if (ws_log.got.length === 3) ws.close(1000, "done");
  };
  ws.onerror = () => { ws_log.error = true; };
  ws.onclose = (e) => { ws_log.closed = {code: e.code, clean: e.wasClean}; };
})();
0
"""


def checksum(data):
    s = 0
    for i, b in enumerate(data):
        s = (s + b * (i % 251 + 1)) % 1000000007
    return s


@pytest.fixture
def app():
    a = App()
    yield a
    a.stop()


def test_browser_websocket_echoes_through_batchd(start_batchd, app):
    b = start_batchd(extra=conf(app.port, "tunnel_buffer_bytes = 65536"))
    with Browser() as br:
        br.navigate(f"http://127.0.0.1:{b.port}/page-from-the-app")
        br.evaluate(PAGE_JS % {"url": repr(f"ws://127.0.0.1:{b.port}/ws")})
        br.wait_for("ws_log.closed !== null", timeout=30, show="ws_log")
        log = br.evaluate("ws_log")
    big = bytes((i * 7 + 3) & 255 for i in range(2 * 1024 * 1024))
    assert log["opened"] and not log["error"], log
    assert log["got"] == ["hello über batchd", {"bytes": len(big), "sum": checksum(big)}, "last"], log
    assert log["closed"] == {"code": 1000, "clean": True}, log
    # The app got the browser's request through batchd, as an upgrade.
    m, h = app.head_for("/ws")
    assert m == "GET" and h["upgrade"].lower() == "websocket" and "upgrade" in h["connection"].lower()
    assert h.get("origin") == f"http://127.0.0.1:{b.port}"
    assert b.metric("batchd_tunnels_total", result="switched") == 1
    wait_until(lambda: b.metric("batchd_tunnels_active") == 0, what="the tunnel to close")
    assert b.metric("batchd_tunnel_bytes_total", direction="client_to_app") > len(big)
    assert b.metric("batchd_tunnel_bytes_total", direction="app_to_client") > len(big)
