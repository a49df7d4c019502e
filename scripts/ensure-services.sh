#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the test-suite needs are reachable.
#
# For each server: use it if it answers; else start it if it is installed but
# stopped; else install it with apt-get (only when running as root), configure
# the fresh install for the suite, and start it; else stop with a message that
# says exactly what is missing. It never changes an existing server's config,
# passwords or roles; the only thing it may add to an existing server is the
# empty database `test` when that is missing.
#
# Addresses: PostgreSQL 127.0.0.1:5432 (database `test`, user `postgres`, no
# password), Redis 127.0.0.1:6379.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_HOST=127.0.0.1 REDIS_PORT=6379
PY=${PYTHON:-python3}
installed_pg_here=0

say() { echo "services: $*"; }
fail() { echo "services: ERROR: $*" >&2; exit 1; }

port_open() {  # host port -> exit 0 if a TCP connect succeeds
    "$PY" - "$1" "$2" <<'PYEOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PYEOF
}

wait_port() {  # host port seconds
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$1" "$2" && return 0
        sleep 0.1
    done
    return 1
}

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
    say "installing $* with apt-get ..."
    if [ -z "${_apt_updated:-}" ]; then
        apt-get update -qq
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_version_dir() { ls /etc/postgresql 2>/dev/null | sort -V | tail -1; }

start_pg() {
    local ver
    ver=$(pg_version_dir)
    if [ -n "$ver" ] && command -v pg_ctlcluster >/dev/null 2>&1; then
        say "starting PostgreSQL $ver (cluster main) ..."
        pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
        return 0
    fi
    return 1
}

trust_loopback_for_fresh_install() {
    # Only for a server this script installed itself: the suite connects as
    # postgres over 127.0.0.1 without a password.
    local ver hba
    ver=$(pg_version_dir)
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    [ -f "$hba" ] || return 0
    say "configuring the new PostgreSQL $ver for local tests (trust on 127.0.0.1/::1)"
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
}

ensure_pg() {
    if port_open $PG_HOST $PG_PORT; then
        say "PostgreSQL is up on $PG_HOST:$PG_PORT"
    else
        if ! start_pg; then
            if can_apt; then
                apt_install postgresql
                installed_pg_here=1
                start_pg || fail "PostgreSQL was installed but its cluster could not be started (see /var/log/postgresql)."
            else
                fail "PostgreSQL is not running on $PG_HOST:$PG_PORT and is not installed. Install it (Debian/Ubuntu: sudo apt-get install postgresql), start it, and make sure user 'postgres' can connect over 127.0.0.1 without a password; or point RESYNC_TEST_PG_URL at a server you have."
            fi
        fi
        wait_port $PG_HOST $PG_PORT 30 || fail "PostgreSQL did not start listening on $PG_HOST:$PG_PORT within 30s."
        [ "$installed_pg_here" = 1 ] && trust_loopback_for_fresh_install
        say "PostgreSQL is up on $PG_HOST:$PG_PORT"
    fi
    ensure_test_database
}

ensure_test_database() {
    if ! command -v psql >/dev/null 2>&1; then
        say "psql not found; assuming database 'test' exists"
        return 0
    fi
    local psql_cmd=(psql -h $PG_HOST -p $PG_PORT -U postgres -d postgres -tAq -w)
    if ! "${psql_cmd[@]}" -c 'select 1' >/dev/null 2>&1; then
        fail "PostgreSQL on $PG_HOST:$PG_PORT refuses user 'postgres' without a password. Allow it for 127.0.0.1 in pg_hba.conf (trust) or set RESYNC_TEST_PG_URL to a URL with credentials."
    fi
    if [ "$("${psql_cmd[@]}" -c "select 1 from pg_database where datname = 'test'")" != 1 ]; then
        say "creating the empty database 'test'"
        "${psql_cmd[@]}" -c 'create database test'
    fi
}

start_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        say "starting redis-server on $REDIS_HOST:$REDIS_PORT ..."
        local dir=/var/lib/redis log=/var/log/redis/ci.log
        if [ ! -w /var/lib/redis ] || [ ! -d /var/log/redis ]; then
            dir=$(mktemp -d) log="$dir/redis.log"
        fi
        redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save "" \
            --appendonly no --dir "$dir" --logfile "$log"
        return 0
    fi
    return 1
}

ensure_redis() {
    if port_open $REDIS_HOST $REDIS_PORT; then
        say "Redis is up on $REDIS_HOST:$REDIS_PORT"
        return 0
    fi
    if ! start_redis; then
        if can_apt; then
            apt_install redis-server
            start_redis || fail "redis-server was installed but could not be started."
        else
            fail "Redis is not running on $REDIS_HOST:$REDIS_PORT and redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server) and start it, or point RESYNC_TEST_REDIS_URL at a server you have."
        fi
    fi
    wait_port $REDIS_HOST $REDIS_PORT 15 || fail "Redis did not start listening on $REDIS_HOST:$REDIS_PORT within 15s."
    say "Redis is up on $REDIS_HOST:$REDIS_PORT"
}

# Tools the suite itself uses for throwaway servers (initdb/pg_ctl, redis-server, pgbouncer):
ensure_tools() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # PgBouncer tests start their own pgbouncer (Debian puts it in /usr/sbin).
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    # Sentinel tests start their own redis-sentinel; Cluster tests use redis-cli --cluster.
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    if [ ${#missing[@]} -gt 0 ]; then
        if can_apt; then
            apt_install "${missing[@]}"
        else
            fail "the test-suite starts throwaway servers and needs: ${missing[*]}. Install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})."
        fi
    fi
}

case "${1:-all}" in
    pg) ensure_pg ;;
    redis) ensure_redis ;;
    tools) ensure_tools ;;
    all) ensure_pg; ensure_redis; ensure_tools ;;
    *) fail "usage: $0 [all|pg|redis|tools]" ;;
esac
