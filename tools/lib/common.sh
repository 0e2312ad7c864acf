# Shared helpers for tools/run, tools/test and tools/bench. Source it.
#
# need_packages PKG...   installs missing Debian packages when run as root,
#                        otherwise prints the exact apt-get line and exits 1.
# pg_bin                 directory of PostgreSQL's server binaries.
# as_pg CMD...           runs CMD as the postgres user when we are root
#                        (initdb and postgres refuse to run as root).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Build and run-time dependencies (Debian 12 names).
BUILD_PKGS="build-essential pkg-config meson ninja-build libuv1-dev libhiredis-dev libpq-dev libinih-dev libjansson-dev libjwt-dev libssl-dev zlib1g-dev node-llhttp"
SERVER_PKGS="redis-server redis-tools postgresql postgresql-contrib curl openssl"
# tools/package (the Debian package) and tests/integration/test_package.py.
PACKAGE_PKGS="debhelper dpkg-dev fakeroot lintian libcmocka-dev zlib1g-dev groff-base man-db"
TEST_PKGS="libcmocka-dev python3-pytest python3-redis python3-psycopg2 python3-jwt python3-cryptography python3-httpx systemd chromium python3-websocket"

log() { printf '%s\n' "$*" >&2; }

need_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "Missing Debian packages. Install them with:"
        log "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    log "Installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/batchd-apt.log 2>&1; then
        tail -20 /tmp/batchd-apt.log >&2
        log "apt-get install failed"
        exit 1
    fi
    # Debian starts redis-server/postgresql/nginx/varnish services on install
    # where an init system runs; ours are private instances, so stop those if any.
    for svc in redis-server postgresql nginx varnish varnishncsa; do
        if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
    done
}

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] || { log "PostgreSQL server binaries not found"; exit 1; }
    printf '%s\n' "$d"
}

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# meson_build DIR [meson options...]: configure once, then build.
meson_build() {
    local dir=$1; shift
    if [ ! -f "$ROOT/$dir/build.ninja" ]; then
        meson setup "$ROOT/$dir" "$ROOT" "$@" >/dev/null
    else
        meson configure "$ROOT/$dir" "$@" >/dev/null
    fi
    ninja -C "$ROOT/$dir" >/dev/null
}

# start_redis DIR PORT: a throwaway redis-server on 127.0.0.1, no persistence.
start_redis() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "redis-server did not start; see $dir/redis.log"
    return 1
}

stop_redis() {
    local dir=$1
    [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
}

# start_pg DIR PORT: a throwaway PostgreSQL cluster on 127.0.0.1 with
# pg_stat_statements, a role and database "app" (trust auth, loopback only).
start_pg() {
    local dir=$1 port=$2 bin
    bin=$(pg_bin)
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; return 1; }
        cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    fi
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 start >/dev/null \
        || { tail -20 "$dir/postgres.log" >&2; return 1; }
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt -c "SELECT 1 FROM pg_roles WHERE rolname = 'app'" | grep -q 1 \
        || as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE app OWNER app" >/dev/null
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d app -q -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
}

stop_pg() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] && as_pg "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}
