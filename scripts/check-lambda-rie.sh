#!/usr/bin/env bash
# Checks htc-agent --lambda against a real AWS Lambda Runtime Interface Emulator (not run by make test:
# the emulator must be built from source first):
#   scripts/check-lambda-rie.sh PATH/TO/aws-lambda-rie [BIN_DIR (default .build/debug)]
# 1. The emulator runs apart: a task is cancelled while its function sleeps, three more follow; they
#    must finish and the emulator must not crash (ReserveFailed: AlreadyReserved).
# 2. --lambda-emulator: an invocation times out, the agent restarts its emulator, four tasks follow at
#    concurrency 2 and finish; after SIGTERM neither the emulator nor its runtime is left.
# Building the emulator with Debian's Go (no module proxy): apt-get install golang-go
# golang-github-google-uuid-dev golang-github-jessevdk-go-flags-dev golang-github-sirupsen-logrus-dev
# golang-golang-x-sys-dev; put its source (tag v1.14 … v1.25) in $GOPATH/src/go.amzn.com and go-chi/chi
# (v4.1.2 for v1.14, v1.5.5 for v1.25) in $GOPATH/src/github.com/go-chi/chi, then
#   GOPATH=$GOPATH:/usr/share/gocode GO111MODULE=off go build -o aws-lambda-rie ./cmd/aws-lambda-rie
set -euo pipefail

rie=$(realpath "$1")
bin=$(realpath "${2:-.build/debug}")
runtime=$(realpath "$(dirname "$0")/../IntegrationTests/lambda/bootstrap.py")
dir=$(mktemp -d "${TMPDIR:-/tmp}/htc-rie.XXXXXX")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
fail() { echo "FAILED: $*" >&2; exit 1; }
# until SECONDS WHAT COMMAND…: polls COMMAND every 0.1 s.
until_true() {
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out waiting until $what"
        sleep 0.1
    done
}
grid="sqlite://$dir/grid.db"
htc() { "$bin/htc" "$@" --grid "$grid"; }
submit() { htc submit "$@" | grep -oE '[0-9a-f-]{36}' | head -1; }
finished() { htc status "$1" | grep -qE "^finished +$2\$"; }
terminal() { ! htc status "$1" | grep -qE "^(pending|processing) +[1-9]"; }

# 1. The emulator apart from the agent.
invoke=$(port) api=$(port)
"$rie" --runtime-interface-emulator-address "127.0.0.1:$invoke" --runtime-api-address "127.0.0.1:$api" "$runtime" >"$dir/rie.log" 2>&1 &
rie_pid=$!
pids+=("$rie_pid")
"$bin/htc-agent" --grid "$grid" --lambda "http://127.0.0.1:$invoke" --heartbeat-interval 0.2 --lease-duration 2 \
    --reaper-interval 0 --log-level info >"$dir/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
echo '{"sleep": 4, "name": "slow"}' >"$dir/slow.jsonl"
printf '{"i": %s}\n' 1 2 3 >"$dir/quick.jsonl"
slow=$(submit "$dir/slow.jsonl")
until_true 30 "the slow invocation runs" grep -q "START RequestId" "$dir/rie.log"
htc cancel "$slow" >/dev/null
quick=$(submit "$dir/quick.jsonl")
until_true 60 "the three tasks after the cancel finished" finished "$quick" 3
kill -0 "$rie_pid" 2>/dev/null || fail "the emulator exited: $(tail -5 "$dir/rie.log")"
! grep -q "ReserveFailed" "$dir/rie.log" || fail "the emulator saw two invocations at once"
grep -q "waiting for the abandoned invocation of task ${slow}_0" "$dir/agent.log" || fail "the agent did not say it waited"
kill "$agent"
wait "$agent" || fail "the agent exited with $?"
echo "ok: a cancel in the middle of an invocation; the emulator ran on and the next tasks finished"
kill "$rie_pid"
wait "$rie_pid" || true

# 2. The agent's own emulator.
"$bin/htc-agent" --grid "$grid" --lambda "http://127.0.0.1:$invoke" --lambda-timeout 2 --concurrency 2 \
    --lambda-emulator "exec '$rie' --runtime-interface-emulator-address 127.0.0.1:\$HTC_LAMBDA_PORT --runtime-api-address 127.0.0.1:$api '$runtime'" \
    --heartbeat-interval 0.2 --lease-duration 2 --reaper-interval 0 --log-level info >"$dir/agent2.log" 2>&1 &
agent=$!
pids+=("$agent")
echo '{"sleep": 10, "name": "hung"}' >"$dir/hung.jsonl"
hung=$(submit --max-retries 0 "$dir/hung.jsonl")
printf '{"i": %s}\n' 1 2 3 4 >"$dir/quick.jsonl"
quick=$(submit "$dir/quick.jsonl")
until_true 60 "the four tasks finished" finished "$quick" 4
until_true 60 "the hung task ended" terminal "$hung"
grep -q "restarting the Lambda emulator: the invocation of task ${hung}_0 timed out" "$dir/agent2.log" || fail "no restart"
! grep -q "ReserveFailed" "$dir/agent2.log" || fail "the emulator saw two invocations at once"
kill "$agent"
wait "$agent" || fail "the agent exited with $?"
# The emulator has the runtime API's port in its arguments, its runtime in its environment (the
# bracket keeps grep from finding itself).
left=$(grep -la "127.0.0.1:[${api:0:1}]${api:1}" /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | grep -v "/proc/$$/" || true)
[ -z "$left" ] || fail "processes left behind: $left"
echo "ok: --lambda-emulator restarted after a time-out; the next tasks finished; nothing left after SIGTERM"
