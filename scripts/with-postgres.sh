#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL cluster on 127.0.0.1 and a free port:
#   scripts/with-postgres.sh CMD ARGS…
# Exports HTC_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres for the command, and always
# stops the server and removes its directory afterwards, whatever the command's outcome.
# The cluster lives in a temporary directory (initdb + pg_ctl, trust authentication on 127.0.0.1
# only). PostgreSQL refuses to run as root: under root (CI) the server runs as Debian's `postgres`
# user through runuser; anyone else runs it as themselves.
# HTC_POSTGRES_OPTIONS adds server settings, e.g. "-c synchronous_commit=off"; by default the
# server keeps PostgreSQL's durable defaults (fsync on, synchronous commits), as a benchmark should.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb); run scripts/install-deps.sh" >&2
    exit 1
fi
dir=$(mktemp -d /tmp/htc-postgres.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
as_server=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "user postgres does not exist; reinstall Debian's postgresql package" >&2; exit 1; }
    chown postgres: "$dir"
    as_server=(runuser -u postgres --)
fi
cleanup() {
    "${as_server[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"${as_server[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    echo "initdb failed:" >&2; cat "$dir/initdb.log" >&2; exit 1
}
# shellcheck disable=SC2086 # HTC_POSTGRES_OPTIONS is a list of server options
"${as_server[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 ${HTC_POSTGRES_OPTIONS:-}" start >/dev/null || {
    echo "PostgreSQL did not start:" >&2; cat "$dir/server.log" >&2; exit 1
}
export HTC_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on $HTC_TEST_POSTGRES (data in $dir)" >&2
"$@"
