#!/bin/sh
# Runs the given command (the test suite) with a throwaway PostgreSQL server, its URL exported as
# CRAWLER_TEST_POSTGRES_URL; the server and its files are removed when the command ends.
#
# - CRAWLER_TEST_POSTGRES_URL already set: that server is used as it is (each test creates and
#   drops its own database there).
# - Debian's pg_virtualenv (postgresql-common) if installed: works as root and as any user;
#   -t puts the cluster in a temporary directory, so runs side by side do not collide.
# - else initdb/pg_ctl into a temporary directory, listening on a Unix socket only (not as root:
#   the server refuses to run as root).
# - no server binaries: one line says so and the command runs without the URL, so the suite runs
#   its SQLite half only; under CI (CI=true) that is a failure instead.
set -eu

if [ -n "${CRAWLER_TEST_POSTGRES_URL:-}" ]; then
    exec "$@"
fi

# Settings for a scratch server: durability off (its files are deleted afterwards anyway), unless
# CRAWLER_PG_DURABLE=1 (benchmarks: a server configured as in production, fsync on). fsync=on is
# spelled out: pg_virtualenv writes fsync=off into every cluster it creates unless told otherwise.
SCRATCH_GUCS="fsync=off synchronous_commit=off full_page_writes=off max_connections=200"
if [ "${CRAWLER_PG_DURABLE:-}" = "1" ]; then
    SCRATCH_GUCS="fsync=on synchronous_commit=on full_page_writes=on max_connections=200"
fi

pg_bindir() {
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r) \
        "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")"; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

BINDIR=$(pg_bindir) || BINDIR=""
if [ -z "$BINDIR" ]; then
    reason="no PostgreSQL server binaries (initdb, pg_ctl) found"
    if [ "${CI:-}" = "true" ]; then
        echo "with_postgres: $reason; CI needs them (apt-get install postgresql)" >&2
        exit 1
    fi
    echo "PostgreSQL tests skipped: $reason (apt-get install postgresql to run them)" >&2
    exec "$@"
fi
VERSION=$(basename "$(dirname "$BINDIR")")

if command -v pg_virtualenv >/dev/null 2>&1; then
    options=""
    for guc in $SCRATCH_GUCS; do options="$options -o $guc"; done
    # pg_virtualenv exports PGHOST, PGPORT, PGUSER and PGPASSWORD; libpq (and so psycopg) reads
    # the password from PGPASSWORD, so the URL carries none.
    # shellcheck disable=SC2086
    exec pg_virtualenv -t -v "$VERSION" $options sh -c '
        CRAWLER_TEST_POSTGRES_URL="postgresql+psycopg://$PGUSER@$PGHOST:$PGPORT/$PGDATABASE"
        export CRAWLER_TEST_POSTGRES_URL
        exec "$@"' with_postgres "$@" </dev/null
fi

if [ "$(id -u)" = "0" ]; then
    reason="PostgreSQL refuses to run as root and pg_virtualenv (postgresql-common) is missing"
    if [ "${CI:-}" = "true" ]; then
        echo "with_postgres: $reason" >&2
        exit 1
    fi
    echo "PostgreSQL tests skipped: $reason" >&2
    exec "$@"
fi

DIR=$(mktemp -d "${TMPDIR:-/tmp}/crawler-pg.XXXXXX")
cleanup() {
    "$BINDIR/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
"$BINDIR/initdb" -D "$DIR/data" -A trust -U postgres >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
settings="-c listen_addresses= -k $DIR"
for guc in $SCRATCH_GUCS; do settings="$settings -c $guc"; done
"$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o "$settings" start >/dev/null \
    || { cat "$DIR/server.log" >&2; exit 1; }
CRAWLER_TEST_POSTGRES_URL="postgresql+psycopg://postgres@/postgres?host=$DIR"
export CRAWLER_TEST_POSTGRES_URL
status=0
"$@" || status=$?
exit "$status"
