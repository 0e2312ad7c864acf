"""Fixtures: real batchd, redis-server and PostgreSQL processes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Batchd, PgServer, RedisServer, config, free_port  # noqa: E402
from harness_cluster import RedisCluster  # noqa: E402


@pytest.fixture
def start_batchd(tmp_path):
    """start_batchd(batchd="key = v\\n", extra="[redis]...", admin=True) -> Batchd.
    Every batchd started is stopped with SIGTERM at the end of the test and
    must exit 0 with a clean sanitizer report."""
    started = []

    def _start(batchd="", extra="", admin=True, env=None, wait=True, text=None, port=None):
        port = port or free_port()
        admin_port = free_port() if admin else None
        b = Batchd(tmp_path / f"batchd{len(started)}", text or config(port, admin_port, batchd, extra),
                   port, admin_port)
        started.append(b)
        return b.start(env=env, wait=wait)

    yield _start
    problems = []
    for b in started:
        try:
            b.assert_clean_exit()
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield r
    r.stop()


@pytest.fixture
def redis(redis_server):
    """The session's redis-server, emptied and with zeroed command stats."""
    if not redis_server.ping():
        redis_server.start()
    c = redis_server.client()
    c.flushall()
    c.config_resetstat()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 6-node Redis Cluster (3 primaries, a replica each) for the session;
    tests take `cluster`, which repairs it first."""
    c = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def cluster(redis_cluster):
    """The session's Redis Cluster, healthy (3 primaries each with a replica
    in sync; a fresh cluster when a test left a node down or a slot half
    migrated), emptied, with zeroed command stats."""
    if not redis_cluster.healthy():
        redis_cluster.renew()
    redis_cluster.flushall()
    redis_cluster.reset_stats()
    return redis_cluster


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    pg = PgServer(tmp_path_factory.mktemp("pg")).init().start().setup_app(demo_sessions=1000)
    yield pg
    pg.stop("immediate")


@pytest.fixture
def pg(pg_server):
    """The session's PostgreSQL with pg_stat_statements reset."""
    pg_server.reset_stats()
    return pg_server
