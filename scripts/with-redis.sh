#!/usr/bin/env bash
# Runs a command with a throw-away redis-server on 127.0.0.1 and a free port:
#   scripts/with-redis.sh CMD ARGS…
# Exports HTC_TEST_REDIS=redis://127.0.0.1:PORT for the command, and always stops the server and
# removes its directory afterwards, whatever the command's outcome. No persistence (--save '',
# --appendonly no): tests own their data through per-case key prefixes.
set -euo pipefail

command -v redis-server >/dev/null || { echo "redis-server is not installed; run scripts/install-deps.sh" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/htc-redis.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no \
    --logfile "$dir/redis.log" &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "redis-server did not start:" >&2; cat "$dir/redis.log" >&2; exit 1; }
    sleep 0.05
done
export HTC_TEST_REDIS="redis://127.0.0.1:$port"
echo "redis-server on $HTC_TEST_REDIS (pid $pid)" >&2
"$@"
