"""tools/lib/bench_conf.py: what tools/bench measures with, before anything
runs: the dataset's shape (conf/demo.sql's sessions, the owner that
tools/lib/bench_owners.sql gives every 10th of them), the settings read
from conf/batchd.ini, and the config files written for the two batchd
processes and for the peers (tools/peers/ templates).

    conf/batchd.ini --read_conf()----------> by_ids, ttl, admin token
                    --batchd_conf_lines()--> .bench/batchd.ini          (every scenario but list, owner)
                                         |-> .bench/batchd-access.ini   (list, owner: [auth], access, [list])
                                         |-> .bench/batchd-near.ini     (hot-*, profile: + local_cache_bytes
                                         |                               = 256 MiB on [resource sessions])
                                         \-> .bench/batchd-fill*.ini    (near-fill: local_cache_bytes = 16, 32 MiB, 0)
    tools/peers/*   --template()---------> .bench/<peer>/...

Nothing here starts a process or talks to a server (bench_env.py does).
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "batchd.ini"
N_SESSIONS = 10000
# The list and owner scenarios (tools/lib/bench_owners.sql): u1 owns every
# 10th session, 1,000 in all, read in pages of 50 through its token.
OWNER = "u1"
OWNED_IDS = [f"s{i}" for i in range(10, N_SESSIONS + 1, 10)]
PAGE = 50
PAGES = len(OWNED_IDS) // PAGE
# Documents with owner_id, for the resources and routes that check it,
# under their own keys so that conf/batchd.ini's documents stay as they are.
OWNED_KEY = "owned:session:{id}"
# batchd's [list my-sessions] page_query, and the FastAPI /after route's.
PAGE_QUERY = ("SELECT id, created_at::text || ' ' || id FROM sessions WHERE owner_id = $1 AND ($2::text IS NULL "
              "OR (created_at::text || ' ' || id) < $2) ORDER BY created_at DESC, id DESC LIMIT $3")


def conf_lines(lines):
    """(section, key, value, line) for each line of an INI file; key and
    value are None on lines that set nothing (sections, comments)."""
    section = None
    for line in lines:
        s = line.strip()
        if s.startswith("["):
            section = s.strip("[]")
        m = re.match(r"^([a-z_]+)\s*=\s*(.*)$", s)
        yield section, m and m.group(1), m and m.group(2), line


def read_conf():
    """by_ids, key, admin_token and friends from conf/batchd.ini."""
    conf = {(section, key): value for section, key, value, _ in conf_lines(CONF.read_text().splitlines()) if key}
    by_ids = conf[("resource sessions", "by_ids")]
    if "$1::text[]" not in by_ids:
        raise SystemExit("conf/batchd.ini: by_ids does not take $1::text[]; tools/bench needs to know")
    # The same documents with owner_id, for the list and owner
    # scenarios; None when by_ids does not build them the way this
    # expects (those scenarios then say so: owned_missing()).
    anchor = "json_build_object('id', s.id, "
    owned = by_ids.replace(anchor, anchor + "'owner_id', s.owner_id, ") if by_ids.count(anchor) == 1 else None
    return {
        "by_ids": by_ids,
        "owned_by_ids": owned,
        "token": conf.get(("batchd", "admin_token"), "change-me"),
        "ttl": int(conf.get(("resource sessions", "ttl"), "3600")),
    }


def owned_missing(cfg):
    """Why the list and owner scenarios cannot run at all, or None."""
    if cfg["owned_by_ids"] is None:
        return ("conf/batchd.ini's by_ids has no json_build_object('id', s.id, ...) to add owner_id to; "
                "read_conf() in tools/lib/bench_conf.py needs to learn its new form")
    return None


def batchd_conf_lines(port):
    """conf/batchd.ini with the bench's ports (port: name -> number), as
    tools/run does, plus an [upstream] to the origin, room for 15k SSE
    clients and the near cache off. 16,000 connections leave batchd about 4,000 of its 20,000
    descriptors."""
    sets = {
        ("batchd", "listen"): f"127.0.0.1:{port['batchd']}",
        ("batchd", "admin_listen"): f"127.0.0.1:{port['admin']}",
        ("batchd", "max_connections"): "16000",
        ("batchd", "log_level"): "warn",
        ("redis", "url"): f"redis://127.0.0.1:{port['redis']}/0",
        ("postgres", "conninfo"): f"host=127.0.0.1 port={port['pg']} dbname=app user=app",
        ("upstream", "url"): f"http://127.0.0.1:{port['origin']}",
        # The near cache off, whatever conf/batchd.ini says (not added
        # where it does not say: a batchd without it refuses the key).
        ("resource sessions", "local_cache_bytes"): "0",
    }
    out = []
    has_upstream = False
    for section, key, _, line in conf_lines(CONF.read_text().splitlines()):
        has_upstream |= section == "upstream"
        if (section, key) in sets:
            line = f"{key} = {sets[(section, key)]}"
        elif section and section.startswith("stream") and key == "max_sse_clients":
            line = "max_sse_clients = 16000"
        out.append(line)
    if not has_upstream:
        out += ["", "[upstream]", f"url = http://127.0.0.1:{port['origin']}"]
    return out


def write_batchd_conf(run, port):
    path = run / "batchd.ini"
    path.write_text("\n".join(batchd_conf_lines(port)) + "\n")
    return path


def write_near_conf(run, port, name, listen, admin, local_cache_bytes):
    """The first batchd's config on ports of its own (port[listen],
    port[admin]) with local_cache_bytes on [resource sessions]: the
    near-cache processes (tools/lib/bench_near.py). Same [upstream] and
    streams, so the only difference from batchd.ini is the near cache.
    local_cache_bytes 0 is only written over a line that sets it."""
    out = []
    lines = list(conf_lines(batchd_conf_lines(port)))
    has_key = any(section == "resource sessions" and key == "local_cache_bytes" for section, key, _, _ in lines)
    setting = f"local_cache_bytes = {local_cache_bytes}"
    for section, key, _, line in lines:
        if section == "batchd" and key == "listen":
            line = f"listen = 127.0.0.1:{port[listen]}"
        elif section == "batchd" and key == "admin_listen":
            line = f"admin_listen = 127.0.0.1:{port[admin]}"
        elif section == "resource sessions" and key == "local_cache_bytes":
            line = setting
        out.append(line)
        if line.strip() == "[resource sessions]" and not has_key and local_cache_bytes:
            out.append(setting)
    if setting not in out and (local_cache_bytes or has_key):
        raise SystemExit("conf/batchd.ini has no [resource sessions]; tools/lib/bench_conf.py needs to know")
    path = run / f"{name}.ini"
    path.write_text("\n".join(out) + "\n")
    return path


def write_workers_conf(run, port, name, admin, workers):
    """The first batchd's config on ports of its own with `workers` worker
    processes (the batchd-w2 row)."""
    path = write_near_conf(run, port, name, name, admin, 0)
    lines = [l for l in path.read_text().splitlines() if not re.match(r"^\s*workers\s*=", l)]
    i = lines.index("[batchd]")
    lines.insert(i + 1, f"workers = {workers}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_access_conf(run, port, cfg, jwt_secret_file):
    """The second batchd's config, for the list and owner scenarios: the
    bench's [batchd], [redis] and [postgres] on ports of its own, no
    [upstream] (a path batchd does not serve answers 404, not the
    origin's 200), and the sections these scenarios measure. Needs
    cfg["owned_by_ids"] (see owned_missing())."""
    out = []
    for section, key, _, line in conf_lines(batchd_conf_lines(port)):
        if section not in ("batchd", "redis", "postgres"):
            continue
        if key == "listen":
            line = f"listen = 127.0.0.1:{port['batchd-access']}"
        elif key == "admin_listen":
            line = f"admin_listen = 127.0.0.1:{port['access-admin']}"
        out.append(line)
    owned = cfg["owned_by_ids"]
    out += ["",
            "[auth]",
            f"jwt_secret_file = {jwt_secret_file}",
            "principal_claim = sub",
            "",
            "; The same documents (with owner_id) under the same keys, twice: the owner",
            "; scenario's two rows differ only in access.",
            "[resource public_sessions]",
            "path = /v1/pub/sessions",
            f"key = {OWNED_KEY}",
            f"ttl = {cfg['ttl']}",
            f"by_ids = {owned}",
            "access = public",
            "",
            "[resource my_sessions]",
            "path = /v1/own/sessions",
            f"key = {OWNED_KEY}",
            f"ttl = {cfg['ttl']}",
            f"by_ids = {owned}",
            "access = owner",
            "owner_field = owner_id",
            "",
            "[list my-sessions]",
            "path = /v1/me/sessions",
            "resource = my_sessions",
            f"page_query = {PAGE_QUERY}",
            "ttl = 30",
            "max_limit = 200",
            ""]
    path = run / "batchd-access.ini"
    path.write_text("\n".join(out))
    return path


def template(name, dest, **values):
    """tools/peers/NAME with its @KEY@ placeholders filled in, written to dest."""
    text = (ROOT / "tools" / "peers" / name).read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"^[^#\n]*(@[A-Z_]+@)", text, re.M)
    assert not left, f"{name}: unfilled {left}"
    dest.write_text(text)
    return dest
