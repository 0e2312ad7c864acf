"""Configuration checking (daemon/config.c): `batchd -t` and start-up errors
name the file, line, key and rule, and exit 2 before binding anything."""

import subprocess

import pytest

from harness import BATCHD, ROOT, SAN_ENV


def check(tmp_path, text):
    p = tmp_path / "t.ini"
    p.write_text(text)
    r = subprocess.run([BATCHD, "-t", "-c", str(p)], capture_output=True, text=True,
                       env={**SAN_ENV, "PATH": "/usr/bin:/bin"})
    return r.returncode, r.stderr, str(p)


def test_example_config_is_valid(tmp_path):
    r = subprocess.run([BATCHD, "-t", "-c", str(ROOT / "conf" / "batchd.ini")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "is valid" in r.stdout


def test_minimal_config_only_batchd(tmp_path):
    rc, err, _ = check(tmp_path, "[batchd]\n")
    assert rc == 0, err


@pytest.mark.parametrize("text, line, needle", [
    ("[batchd]\nlisten = 127.0.0.1:8080\nbogus = 1\n", 3, "[batchd] bogus: unknown key"),
    ("[batchd]\nslow_ms = 5\nslow_ms = 6\n", 3, "[batchd] slow_ms: duplicate key"),
    ("[batchd]\nmax_connections = 0\n", 2, "[batchd] max_connections = 0: must be between 1 and 1000000"),
    ("[batchd]\nmax_connections = lots\n", 2, "must be a whole number"),
    ("[batchd]\nlisten = 127.0.0.1\n", 2, "[batchd] listen = 127.0.0.1: must be host:port"),
    ("[batchd]\nlisten = 127.0.0.1:99999\n", 2, "port must be a number from 1 to 65535"),
    ("[batchd]\nlisten = no.such.host.invalid:80\n", 2, "cannot resolve host"),
    ("[batchd]\nlog_level = loud\n", 2, "must be one of debug, info, warn, error"),
    ("[batchd]\nreuseport = maybe\n", 2, "must be yes or no"),
    ("[batchd]\n[batchd]\n", 2, "[batchd]: duplicate section (first at line 1)"),
    ("[batchd]\n[cache]\nx = 1\n", 2, "[cache]: unknown section"),
    ("listen = 1\n[batchd]\n", 1, "key outside any section"),
    ("[batchd]\njust words\n", 2, "expected \"key = value\""),
    ("[redis]\nurl = redis://h:1/0\n", 2, "[batchd]: required section is missing"),
    ("[batchd]\n[redis]\nurl = http://x\n", 3, "[redis] url = http://x: must be redis://"),
    ("[batchd]\n[redis]\npool_size = 0\n", 3, "must be between 1 and 256"),
    ("[batchd]\n[postgres]\npool_size = 2\n", 2, "[postgres]: missing required key conninfo"),
    ("[batchd]\n[upstream]\nurl = https://x\n", 3, "https upstreams are not supported"),
    ("[batchd]\n[postgres]\nconninfo = x\n[resource]\npath = /a\n", 4, "needs a name"),
    ("[batchd]\n[postgres]\nconninfo = x\n[resource s]\npath = /a/{id}\nkey = k:{id}\nby_ids = select $1\n", 5,
     "must be a plain path"),
    ("[batchd]\n[postgres]\nconninfo = x\n[resource s]\npath = /a\nkey = k\nby_ids = select $1\n", 6,
     "must contain {id}"),
    ("[batchd]\n[postgres]\nconninfo = x\n[resource s]\npath = /a\nkey = k:{id}\nby_ids = select 1\n", 7,
     "must use $1"),
    ("[batchd]\n[resource s]\npath = /a\nkey = k:{id}\nby_ids = select $1\n", 2,
     "[resource s]: needs a [postgres] section"),
    ("[batchd]\n[stream e]\npath = /e/{id}/events\nkey = e:{id}\n", 2, "[stream e]: needs a [redis] section"),
    ("[batchd]\n[redis]\n[stream e]\npath = /e/events\nkey = e:{id}\n", 4, "must contain {id}"),
    ("[batchd]\nlisten = 127.0.0.1:7000\nadmin_listen = 127.0.0.1:7000\n", 1, "admin_listen: must differ from listen"),
    ("[batchd]\nmax_uri_bytes = 20000\n", 1, "max_uri_bytes: must not exceed max_header_bytes"),
    ("[batchd]\n[redis]\nurl = redis://a:1,b:2/0\n", 2, "several hosts are a cluster's seed nodes; set cluster = yes"),
    ("[batchd]\n[redis]\nurl = redis://a:1,b:2/3\ncluster = yes\n", 2, "a Redis Cluster has only database 0"),
    ("[batchd]\n[redis]\nurl = redis://a:1,,b:2/0\ncluster = yes\n", 3, "has an empty host between commas"),
    ("[batchd]\n[redis]\nurl = redis://a:1,b:x/0\ncluster = yes\n", 3, "port must be a number"),
    ("[batchd]\n[redis]\ncluster = perhaps\n", 3, "must be yes or no"),
])
def test_config_errors_name_file_line_key_rule(tmp_path, text, line, needle):
    rc, err, path = check(tmp_path, text)
    assert rc == 2, err
    assert f"{path}:{line}: " in err, err
    assert needle in err, err


def test_all_errors_are_reported_at_once(tmp_path):
    rc, err, path = check(tmp_path, "[batchd]\nmax_connections = 0\nslow_ms = x\nwhat = 1\n")
    assert rc == 2
    assert [ln.split(":")[1] for ln in err.splitlines() if ln.startswith(path)] == ["2", "3", "4"]


def test_secrets_are_not_echoed(tmp_path):
    rc, err, _ = check(tmp_path, "[batchd]\n[postgres]\nconninfo = password=hunter2\nconninfo = password=hunter2\n")
    assert rc == 2 and "hunter2" not in err


def test_missing_file(tmp_path):
    r = subprocess.run([BATCHD, "-t", "-c", str(tmp_path / "none.ini")], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot open" in r.stderr


def test_bad_config_binds_nothing(tmp_path):
    """The port is taken: a batchd that bound before checking its config
    would fail with "cannot bind" (exit 1), not with the config error."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = tmp_path / "b.ini"
        p.write_text(f"[batchd]\nlisten = 127.0.0.1:{s.getsockname()[1]}\nmax_pipeline = 0\n")
        r = subprocess.run([BATCHD, "-c", str(p)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "max_pipeline" in r.stderr and "cannot bind" not in r.stderr


def test_port_in_use_fails_to_start(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = tmp_path / "c.ini"
        p.write_text(f"[batchd]\nlisten = 127.0.0.1:{port}\n")
        r = subprocess.run([BATCHD, "-c", str(p)], capture_output=True, text=True, timeout=10,
                           env={**SAN_ENV, "PATH": "/usr/bin:/bin"})
        assert r.returncode == 1
        assert "cannot bind" in r.stderr and "Address already in use" in r.stderr


def test_command_line(tmp_path):
    assert subprocess.run([BATCHD, "--version"], capture_output=True, text=True).stdout.startswith("batchd ")
    h = subprocess.run([BATCHD, "-h"], capture_output=True, text=True)
    assert h.returncode == 0 and "-t" in h.stdout
    assert subprocess.run([BATCHD], capture_output=True).returncode == 2
    assert subprocess.run([BATCHD, "-c", "x", "extra"], capture_output=True).returncode == 2


PG = "[postgres]\nconninfo = host=/tmp dbname=x\n"
RES = "[resource s]\npath = /v1/s\nkey = s:{id}\nby_ids = SELECT $1\n"
AUTH = "[auth]\njwt_secret_file = /dev/null\n"


@pytest.mark.parametrize("text, needle", [
    ("[batchd]\n" + PG + RES + "access = owner\n", "[resource s] access: owner needs an [auth] section"),
    ("[batchd]\n" + PG + AUTH + RES + "access = owner\n", "[resource s] owner_field: required with access = owner"),
    ("[batchd]\n" + PG + AUTH + RES + "access = everyone\n", "must be public, authenticated or owner"),
    ("[batchd]\n[auth]\n", "[auth]: set jwt_secret_file or jwt_public_keys"),
    ("[batchd]\n[auth]\ncheck_url = /whoami\n", "[auth] check_url: needs an [upstream] section"),
    ("[batchd]\n[upstream]\nurl = http://127.0.0.1:9\n[auth]\ncheck_url = whoami\n", "must be a path on [upstream]"),
    ("[batchd]\n" + AUTH + "forward_principal_header = X Principal\n", "must be a header name"),
    ("[batchd]\n" + AUTH + "jwt_cookie = a;b\n", "[auth] jwt_cookie: must be a cookie name"),
    ("[batchd]\n[redis]\n" + AUTH + "[stream e]\npath = /e/{id}\nkey = e:{id}\naccess = owner\n",
     "[stream e] owner_resource: access = owner needs the name of a [resource]"),
    ("[batchd]\n[redis]\n" + PG + AUTH + RES + "[stream e]\npath = /e/{id}\nkey = e:{id}\naccess = owner\nowner_resource = s\n",
     "[stream e] owner_resource: [resource s] has no owner_field"),
    ("[batchd]\n[redis]\n[stream e]\npath = /e/{id}\nkey = e:{id}\nowners_publish = yes\n",
     "[stream e] owners_publish: needs access = owner"),
    ("[batchd]\n" + PG + RES + "[list l]\npath = /me\nresource = s\npage_query = SELECT $1, $2, $3\nttl = 0\n",
     "[list l]: needs an [auth] section"),
    ("[batchd]\n" + PG + AUTH + "[list l]\npath = /me\nresource = nope\npage_query = SELECT $1, $2, $3\nttl = 0\n",
     "[list l] resource: no [resource nope]"),
    ("[batchd]\n" + PG + AUTH + RES + "[list l]\npath = /me\nresource = s\npage_query = SELECT $1\nttl = 0\n",
     "must use $1 (the principal), $2 (the cursor"),
    ("[batchd]\n" + PG + AUTH + RES + "[list l]\npath = /me\nresource = s\npage_query = SELECT $1, $2, $3\nttl = 0\nparams = after\n",
     "must be letters, digits or '_', and not limit, after or access_token"),
    ("[batchd]\n" + PG + AUTH + RES + "[list l]\npath = /me\nresource = s\npage_query = SELECT $1, $2, $3\n",
     "[list l] ttl: caching pages needs a [redis] section"),
    ("[batchd]\n" + PG + AUTH + RES + "[list l]\npath = /v1/s\nresource = s\npage_query = SELECT $1, $2, $3\nttl = 0\n",
     "[list l] path: /v1/s is already used by [resource s]"),
    ("[batchd]\n[redis]\n" + PG + RES.replace("key = s:{id}", "key = s:{id}:{id}") + "local_cache_bytes = 65536\n",
     "[resource s] local_cache_bytes needs a key with exactly one {id}"),
    ("[batchd]\n" + PG + RES + "local_cache_bytes = 65536\n",
     "[resource s] local_cache_bytes: the near cache needs a [redis] section"),
    ("[batchd]\n[redis]\n" + PG + RES + "local_cache_bytes = 65535\n",
     "[resource s] local_cache_bytes: 0 (off) or at least 65536"),
    ("[batchd]\n[redis]\n" + PG + RES + "local_cache_bytes = 1099511627777\n",
     "local_cache_bytes = 1099511627777: must be between 0 and 1099511627776"),
])
def test_access_and_list_rules(tmp_path, text, needle):
    rc, err, _ = check(tmp_path, text)
    assert rc == 2 and needle in err, err


def test_local_cache_bytes_off_needs_no_redis_and_any_key(tmp_path):
    """The near cache's rules apply only when it is on: 0 (the default)
    takes a key with two {id} and no [redis]; the largest size is valid."""
    rc, err, _ = check(tmp_path, "[batchd]\n" + PG + RES.replace("key = s:{id}", "key = s:{id}:{id}")
                       + "local_cache_bytes = 0\n")
    assert rc == 0, err
    rc, err, _ = check(tmp_path, "[batchd]\n[redis]\n" + PG + RES + "local_cache_bytes = 1099511627776\n")
    assert rc == 0, err
