#!/usr/bin/env bash
# Runs a command with two throw-away moto servers (AWS SQS, DynamoDB, S3 and IAM emulated)
# on 127.0.0.1 and free ports:
#   scripts/with-moto.sh CMD ARGS…
# Exports for the command:
#   HTC_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT       moto accepting any signature (moto's default)
#   HTC_TEST_AWS_AUTH_ENDPOINT=http://127.0.0.1:PORT2 moto checking signatures and IAM policies
#   HTC_TEST_AWS_AUTH_KEY_ID / HTC_TEST_AWS_AUTH_SECRET the keys of an IAM user created there
# and always stops both servers and removes their directory afterwards, whatever the outcome.
set -euo pipefail

python3 -c 'import moto.moto_server.werkzeug_app, boto3' 2>/dev/null || { echo "moto[server] is not installed; run scripts/install-deps.sh" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/htc-moto.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
port=$(free_port)
auth_port=$(free_port)
while [ "$auth_port" = "$port" ]; do auth_port=$(free_port); done

# One request at a time in moto, long polls served as short receives: see scripts/moto-server.py.
python3 "$here/moto-server.py" 127.0.0.1 "$port" >"$dir/moto.log" 2>&1 &
pid=$!
# Signature checking starts after the three IAM calls below that create the test user.
INITIAL_NO_AUTH_ACTION_COUNT=3 python3 "$here/moto-server.py" 127.0.0.1 "$auth_port" >"$dir/moto-auth.log" 2>&1 &
auth_pid=$!
cleanup() {
    kill "$pid" "$auth_pid" 2>/dev/null || true
    wait "$pid" "$auth_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

wait_ready() {
    local p=$1 server_pid=$2 log=$3
    for _ in $(seq 1 200); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$p/moto-api/', timeout=1)" >/dev/null 2>&1 && return 0
        kill -0 "$server_pid" 2>/dev/null || { echo "moto_server did not start:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "moto_server on port $p did not answer in 20 s:" >&2
    cat "$log" >&2
    exit 1
}
wait_ready "$port" "$pid" "$dir/moto.log"
wait_ready "$auth_port" "$auth_pid" "$dir/moto-auth.log"

# An IAM user allowed everything, through moto's IAM API (the three unauthenticated calls).
keys=$(AWS_ACCESS_KEY_ID=bootstrap AWS_SECRET_ACCESS_KEY=bootstrap python3 - "$auth_port" <<'PY'
import json, sys
import boto3
iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
iam.create_user(UserName="htc-grid-test")
iam.put_user_policy(UserName="htc-grid-test", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="htc-grid-test")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
PY
)
export HTC_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
export HTC_TEST_AWS_AUTH_ENDPOINT="http://127.0.0.1:$auth_port"
export HTC_TEST_AWS_AUTH_KEY_ID="${keys%% *}"
export HTC_TEST_AWS_AUTH_SECRET="${keys#* }"
echo "moto_server on $HTC_TEST_AWS_ENDPOINT (pid $pid), with signature checks on $HTC_TEST_AWS_AUTH_ENDPOINT (pid $auth_pid)" >&2
"$@"
