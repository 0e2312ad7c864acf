"""Ops endpoints (daemon/http/ops.c) and the counters behind /metrics."""

from harness import Http, get, parse_metrics


def test_healthz_readyz(start_batchd):
    b = start_batchd()
    assert get(b.admin_port, "/healthz").json() == {"status": "ok"}
    r = get(b.admin_port, "/readyz")
    assert (r.status, r.json()) == (200, {"status": "ready"})


def test_ops_live_on_admin_listener_only(start_batchd):
    b = start_batchd()
    assert get(b.port, "/healthz").status == 404
    assert get(b.admin_port, "/healthz").status == 200


def test_metrics_is_prometheus_text(start_batchd):
    b = start_batchd()
    r = get(b.admin_port, "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    for family in ["batchd_connections_open", "batchd_connections_closed_total",
                   "batchd_http_requests_total", "batchd_http_request_duration_seconds",
                   "batchd_client_bytes_total", "process_resident_memory_bytes"]:
        assert f"# TYPE {family} " in text, family
    m = parse_metrics(text)
    assert m['batchd_build_info{version="0.1.0"}'] == 1
    # Histogram buckets are cumulative and end at +Inf == _count.
    buckets = [v for k, v in m.items() if k.startswith("batchd_http_request_duration_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert buckets[-1] == m["batchd_http_request_duration_seconds_count"]


def test_counters_move(start_batchd):
    b = start_batchd(admin=False)
    before = b.metrics()
    with Http(b.port) as c:
        for _ in range(7):
            assert c.request("GET", "/healthz").status == 200
        for _ in range(3):
            assert c.request("GET", "/nope").status == 404
        assert c.request("POST", "/healthz", body="x").status == 405
        after = b.metrics()  # includes this scrape's own request? no: scraped on another connection
    ok = 'batchd_http_requests_total{method="GET",status="2xx"}'
    nf = 'batchd_http_requests_total{method="GET",status="4xx"}'
    post = 'batchd_http_requests_total{method="POST",status="4xx"}'
    # +7 healthz, +1 for the first /metrics scrape answered in between
    assert after[ok] - before[ok] == 8
    assert after[nf] - before[nf] == 3
    assert after[post] - before[post] == 1
    assert after["batchd_http_request_duration_seconds_count"] - before["batchd_http_request_duration_seconds_count"] == 12
    assert after['batchd_client_bytes_total{direction="in"}'] > before['batchd_client_bytes_total{direction="in"}']
    assert after['batchd_client_bytes_total{direction="out"}'] > before['batchd_client_bytes_total{direction="out"}']


def test_open_connections_gauge(start_batchd):
    b = start_batchd()
    conns = [Http(b.port) for _ in range(5)]
    try:
        for c in conns:
            assert c.request("GET", "/x").status == 404
        assert b.metric("batchd_connections_open", listener="main") == 5
    finally:
        for c in conns:
            c.close()
