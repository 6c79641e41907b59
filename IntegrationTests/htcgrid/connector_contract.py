#!/usr/bin/env python3
"""HTC-Grid's Python connector against htc-server: the contract of docs/server.md, "HTC-Grid compatibility".

`AWSConnector` (finos/htc-grid source/client/python/api-v0.1/api/connector.py) is not published, so
`Connector` below performs exactly its HTTP calls, encodings and data-plane reads and writes
(../shared/reference/htc-grid-behaviour.md §3.2, §3.3, §10.2), with redis-py as its injected
`redis_custom_connection`. It drives a real htc-server (private API with x-api-key, public API with a
raw Cognito-style IdToken), a real htc-agent invoking a Lambda Runtime Interface Emulator stand-in, and
a real redis-server as the shared data plane.

    connector_contract.py --bin DIR --redis redis://127.0.0.1:PORT

DIR holds htc-server and htc-agent. Exits 0 when every check passed; prints what failed otherwise.
"""
import argparse
import base64
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DEADLINE = 90  # seconds any one wait may take


class ApiException(Exception):
    """What the generated openapi client raises for a non-2xx answer."""

    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Connector:
    """AWSConnector's calls, in external-storage mode (the only working one), with an injected Redis."""

    def __init__(self, base_url, redis_connection, api_key=None, id_token=None):
        self.base_url = base_url
        self.redis = redis_connection
        self.api_key = api_key  # private API (INTRA_VPC): x-api-key
        self.id_token = id_token  # public API: the raw Cognito IdToken in Authorization
        self.pull_interval = 0.05  # dynamodb_results_pull_interval_sec (0.5 in HTC-Grid; shorter to keep the test quick)

    # The data plane (api/in_out_redis.py): plain SET/GET, base64 text values.
    def put_input_from_bytes(self, task_id, data):
        self.redis.set(f"{task_id}-input", data)

    def put_payload_from_bytes(self, session_id, data):
        self.redis.set(f"{session_id}-payload", data)

    def get_output_to_bytes(self, task_id):
        value = self.redis.get(f"{task_id}-output")
        if value is None:
            raise Exception(f"Cache miss for {task_id}")
        return value

    # The REST calls of the generated client: every parameter in the query string.
    def _call(self, method, path, submission_content):
        query = urllib.parse.urlencode({"submission_content": submission_content})
        request = urllib.request.Request(f"{self.base_url}{path}?{query}", method=method, data=b"" if method == "POST" else None)
        request.add_header("Accept", "application/json")
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "OpenAPI-Generator/1.0.0/python")
        if self.api_key is not None:
            request.add_header("x-api-key", self.api_key)
        if self.id_token is not None:
            request.add_header("Authorization", self.id_token)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ApiException(error.code, error.read().decode()) from None

    def generate_user_task_json(self, tasks_list):
        session_id = str(uuid.uuid1())
        task_ids = []
        for i, task in enumerate(tasks_list):
            task_id = f"{session_id}_{i}"
            task_ids.append(task_id)
            self.put_input_from_bytes(task_id, base64.b64encode(json.dumps(task).encode("utf-8")))
        now = int(round(time.time() * 1000))
        return {
            "session_id": session_id,
            "scheduler_data": {"task_timeout_sec": 3600, "retry_count": 5, "tstamp_api_grid_connector_ms": 0, "tstamp_agent_read_from_sqs_ms": 0},
            "stats": {
                "stage1_grid_api_01_task_creation_tstmp": {"label": " ", "tstmp": now},
                "stage1_grid_api_02_task_submission_tstmp": {"label": "upload_data_to_storage", "tstmp": int(round(time.time() * 1000))},
                "stage2_sbmtlmba_01_invocation_tstmp": {"label": "grid_api_2_lambda_ms", "tstmp": 0},
                "stage2_sbmtlmba_02_before_batch_write_tstmp": {"label": "task_construction_ms", "tstmp": 0},
                "stage3_agent_01_task_acquired_sqs_tstmp": {"label": "sqs_queuing_time_ms", "tstmp": 0},
                "stage3_agent_02_task_acquired_ddb_tstmp": {"label": "ddb_task_claiming_time_ms", "tstmp": 0},
                "stage4_agent_01_user_code_finished_tstmp": {"label": "user_code_exec_time_ms", "tstmp": 0},
                "stage4_agent_02_S3_stdout_delivered_tstmp": {"label": "S3_stdout_upload_time_ms", "tstmp": 0},
            },
            "tasks_list": {"tasks": task_ids},
        }

    def submit(self, jobs):
        session_id = jobs["session_id"]
        self.put_payload_from_bytes(session_id, base64.urlsafe_b64encode(json.dumps(jobs).encode("utf-8")))
        return self._call("POST", "/submit", session_id)

    def send(self, tasks_list):
        return self.submit(self.generate_user_task_json(tasks_list))

    def invoke_get_results_lambda(self, session_id_dict):
        return self._call("GET", "/result", base64.urlsafe_b64encode(json.dumps(session_id_dict).encode("utf-8")))

    def get_results(self, submission_response, timeout_sec=0):
        session_id = submission_response["session_id"]
        start = time.time()
        while True:
            response = self.invoke_get_results_lambda({"session_id": session_id})
            if response["metadata"]["tasks_in_response"] == len(submission_response["task_ids"]):
                break
            if timeout_sec > 0 and time.time() - start > timeout_sec:
                break
            time.sleep(self.pull_interval)
        for i, task_id in enumerate(response["finished"]):
            response["finished_OUTPUT"][i] = base64.b64decode(self.get_output_to_bytes(task_id)).decode("utf-8")
        return response

    def cancel_sessions(self, session_ids):
        return self._call("POST", "/cancel", base64.urlsafe_b64encode(json.dumps({"session_ids_to_cancel": session_ids}).encode("utf-8")))


class Emulator(http.server.ThreadingHTTPServer):
    """The Lambda Runtime Interface Emulator's invoke protocol, with a handler chosen by the event."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), EmulatorHandler)
        self.release = threading.Event()  # lets "block" invocations return
        self.lock = threading.Lock()
        self.events = []


class EmulatorHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        if not re.fullmatch(r"/2015-03-31/functions/[^/]+/invocations", self.path):
            self.send_error(404)
            return
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.events.append(event)
        headers = {}
        if event.get("fail"):
            body = json.dumps({"errorMessage": f"cannot price {event['x']}", "errorType": "ValueError", "stackTrace": []})
            headers["X-Amz-Function-Error"] = "Unhandled"
        else:
            if event.get("block"):
                self.server.release.wait(DEADLINE)
            body = json.dumps(event["x"] * event["x"])  # a Python handler returning x*x
        data = body.encode()
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass  # the agent gave up on a cancelled task and closed the connection


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CognitoPool:
    """Signs IdTokens as a Cognito user pool does (RS256, kid, iss, aud = app client id)."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "pool-key-1"
        self.issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_TESTPOOL"
        self.client_id = "testappclientid"

    def jwks(self):
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": b64url(n), "e": b64url(e)}]}

    def id_token(self, username, lifetime=3600):
        now = int(time.time())
        header = {"kid": self.kid, "alg": "RS256"}
        claims = {"sub": str(uuid.uuid4()), "aud": self.client_id, "iss": self.issuer, "token_use": "id",
                  "cognito:username": username, "auth_time": now, "iat": now, "exp": now + lifetime}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)


class Process:
    """A child whose stderr is drained; `wait_for` finds a log line."""

    def __init__(self, arguments, env=None):
        self.arguments = arguments
        self.process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.changed = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern):
        deadline = time.time() + DEADLINE
        with self.changed:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line)
                    if match:
                        return match
                if self.process.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"{os.path.basename(self.arguments[0])} never logged {pattern!r}:\n" + "\n".join(self.lines[-30:]))
                self.changed.wait(0.5)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        return self.process.returncode


def wait_until(what, condition):
    deadline = time.time() + DEADLINE
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_api_error(call, status, text):
    try:
        call()
    except ApiException as error:
        expect(error.status == status, f"expected HTTP {status}, got {error.status}: {error.body}")
        expect(text in error.body, f"expected {text!r} in the error body {error.body!r}")
        return error
    raise AssertionError(f"expected HTTP {status}, the call succeeded")


def check_result_shape(result, finished, cancelled, failed):
    """Every field the connector and its callers read, with the types the generated client checks."""
    for name in ["finished", "finished_OUTPUT", "cancelled", "cancelled_OUTPUT", "failed", "failed_OUTPUT", "metadata"]:
        expect(name in result, f"result lacks {name}: {result}")
    expect(type(result["metadata"]["tasks_in_response"]) is int, f"tasks_in_response is not an int: {result['metadata']}")
    expect(sorted(result["finished"]) == sorted(finished), f"finished {result['finished']} != {finished}")
    expect(sorted(result["cancelled"]) == sorted(cancelled), f"cancelled {result['cancelled']} != {cancelled}")
    expect(sorted(result["failed"]) == sorted(failed), f"failed {result['failed']} != {failed}")
    for state in ["cancelled", "failed"]:
        expect(result[f"{state}_OUTPUT"] == ["read_from_dataplane"] * len(result[state]), f"{state}_OUTPUT: {result[f'{state}_OUTPUT']}")
    expect(result["metadata"]["tasks_in_response"] == len(finished) + len(cancelled) + len(failed), f"metadata: {result['metadata']}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="htc-htcgrid-")
    processes = []
    emulator = Emulator()
    threading.Thread(target=emulator.serve_forever, daemon=True).start()
    try:
        redis_url = urllib.parse.urlparse(args.redis)
        data_plane = redis.StrictRedis(host=redis_url.hostname, port=redis_url.port or 6379, db=0)
        payload_url = f"redis://{redis_url.hostname}:{redis_url.port or 6379}/0?layout=htcgrid"
        grid = f"sqlite://{directory}/grid.db"
        api_key = uuid.uuid4().hex
        with open(f"{directory}/keys", "w") as keys:
            keys.write(f"acme:{api_key}\n")
        pool = CognitoPool()
        with open(f"{directory}/jwks.json", "w") as jwks:
            json.dump(pool.jwks(), jwks)

        def server(*auth):
            process = Process([f"{args.bin}/htc-server", "--listen", "127.0.0.1:0", "--grid", grid, "--payload", payload_url,
                               "--htcgrid-compat", "--htcgrid-base-path", "/v1", "--log-level", "info", *auth])
            processes.append(process)
            port = process.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
            return f"http://127.0.0.1:{port}/v1"

        private_url = server("--auth", "api-key", "--api-keys", f"{directory}/keys")
        public_url = server("--auth", "jwt", "--jwks", f"{directory}/jwks.json", "--jwt-issuer", pool.issuer,
                            "--jwt-audience", pool.client_id, "--jwt-tenant-claim", "cognito:username")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            metrics_port = probe.getsockname()[1]
        agent = Process([f"{args.bin}/htc-agent", "--grid", grid, "--payload", payload_url,
                         "--metrics-listen", f"127.0.0.1:{metrics_port}",
                         "--lambda", f"http://127.0.0.1:{emulator.server_address[1]}", "--concurrency", "2",
                         "--heartbeat-interval", "0.2", "--lease-duration", "5", "--retry-delay", "0.05", "--log-level", "warning"])
        processes.append(agent)

        private = Connector(private_url, data_plane, api_key=api_key)
        public = Connector(public_url, data_plane, id_token=pool.id_token("alice"))

        # 1. Submit through the private API, wait as get_results does, read every output from the data plane.
        tasks = [{"x": i} for i in range(12)]
        jobs = private.generate_user_task_json(tasks)
        submitted = private.submit(jobs)
        expect(set(submitted) == {"session_id", "task_ids"}, f"submit answered {submitted}")
        session = submitted["session_id"]
        expect(submitted["task_ids"] == [f"{session}_{i}" for i in range(12)], f"task_ids {submitted['task_ids']}")
        result = private.get_results(submitted, timeout_sec=DEADLINE)
        check_result_shape(result, submitted["task_ids"], [], [])
        outputs = dict(zip(result["finished"], result["finished_OUTPUT"]))
        for i, task_id in enumerate(submitted["task_ids"]):
            expect(outputs[task_id] == str(i * i), f"{task_id}: output {outputs[task_id]!r}, expected {i * i}")
        expect(sorted(event["x"] for event in emulator.events) == list(range(12)), f"the function saw {emulator.events}")
        print(f"ok: {len(tasks)} tasks submitted, finished and read back through the private API")

        # 2. A function error fails the task (HTC-Grid stored the error as a finished output): retried
        #    retry_count (5) times, then failed, with no output in the data plane.
        failing = private.send([{"x": 7, "fail": True}])
        result = private.get_results(failing, timeout_sec=DEADLINE)
        check_result_shape(result, [], [], failing["task_ids"])
        expect(data_plane.get(f"{failing['task_ids'][0]}-output") is None, "a failed task left an output")
        attempts = sum(1 for event in emulator.events if event.get("fail"))
        expect(attempts == 6, f"the failing function ran {attempts} times; expected 1 + retry_count (5)")
        print("ok: a Lambda function error is a failed task after retry_count retries")

        def scrape(url):
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read().decode()

        def sample(text, name):
            match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
            expect(match is not None, f"{name} is not in the metrics:\n{text}")
            return float(match.group(1))

        # 3. Cancel: two tasks processing (the agent leases two at a time), of which one runs in the
        #    emulator and one waits for it (an emulator runs one invocation at a time), one pending.
        blocked = private.send([{"x": i, "block": True} for i in range(3)])
        server_metrics_url = private_url.removesuffix("/v1") + "/metrics"
        wait_until("one task runs and two are processing",
                   lambda: sum(1 for event in emulator.events if event.get("block")) == 1
                   and sample(scrape(server_metrics_url), 'htc_tasks{state="processing"}') == 2)
        counts = private.cancel_sessions([blocked["session_id"]])
        expected = {blocked["session_id"]: {"cancelled_pending": 1, "cancelled_processing": 2, "total_cancelled_tasks": 3}}
        expect(counts == expected, f"cancel answered {counts}, expected {expected}")
        result = private.get_results(blocked, timeout_sec=DEADLINE)
        check_result_shape(result, [], blocked["task_ids"], [])
        # The cancelled invocation still runs in the emulator: the task that waited for it never reached it.
        expect(sum(1 for event in emulator.events if event.get("block")) == 1, "a second invocation reached the busy emulator")
        emulator.release.set()
        again = private.cancel_sessions([blocked["session_id"]])
        expect(again[blocked["session_id"]]["total_cancelled_tasks"] == 0, f"a second cancel answered {again}")
        print("ok: cancel counters and cancelled results")

        # 4. The public API with a raw IdToken; tenants do not see each other's sessions.
        mine = public.send([{"x": 20}, {"x": 21}])
        result = public.get_results(mine, timeout_sec=DEADLINE)
        check_result_shape(result, mine["task_ids"], [], [])
        expect(sorted(result["finished_OUTPUT"]) == ["400", "441"], f"outputs {result['finished_OUTPUT']}")
        foreign = public.invoke_get_results_lambda({"session_id": session})
        check_result_shape(foreign, [], [], [])
        print("ok: the public API with a raw Cognito IdToken in Authorization")

        # 5. Authentication and errors, as the connector sees them (ApiException with the status).
        expect_api_error(lambda: Connector(private_url, data_plane, api_key="wrong").invoke_get_results_lambda({"session_id": session}), 401, "not valid")
        expect_api_error(lambda: Connector(private_url, data_plane).send([{"x": 1}]), 401, "API key")
        expect_api_error(lambda: Connector(public_url, data_plane, id_token="Bearer " + pool.id_token("bob", lifetime=-600)).send([{"x": 1}]), 401, "expired")
        expect_api_error(lambda: Connector(public_url, data_plane).invoke_get_results_lambda({"session_id": session}), 401, "token")
        missing = str(uuid.uuid1())
        error = expect_api_error(lambda: private._call("POST", "/submit", missing), 543, f"{missing}-payload")
        expect("{" not in error.body, f"the 543 body is not plain text: {error.body}")
        expect_api_error(lambda: private._call("GET", "/result", "not base64!"), 542, "base64")
        expect_api_error(lambda: private._call("POST", "/cancel", base64.urlsafe_b64encode(b'{"sessions": []}').decode()), 542, "session_ids_to_cancel")
        # The same submission sent again (a timeout, a restarted server) gets the same answer; another
        # tenant's submit of that session id is refused exactly as for an unknown id, so it learns nothing.
        again = private.submit(jobs)
        expect(again["task_ids"] == submitted["task_ids"], f"a submission sent again answered {again['task_ids']}")
        foreign = expect_api_error(lambda: public.submit(jobs), 543, f"no submission under {jobs['session_id']}-payload")
        unknown = expect_api_error(lambda: public._call("POST", "/submit", missing), 543, f"{missing}-payload")
        expect(foreign.body.replace(jobs["session_id"], "S") == unknown.body.replace(missing, "S"), f"{foreign.body} != {unknown.body}")
        print("ok: 401 for bad credentials, 543 and 542 with plain-text bodies, a submission sent again")

        # 6. The data plane holds exactly HTC-Grid's keys and encodings.
        expect(json.loads(base64.b64decode(data_plane.get(f"{session}_3-input"))) == {"x": 3}, "the input key changed")
        expect(base64.b64decode(data_plane.get(f"{session}_3-output")).decode() == "9", "the output is not base64(text)")
        expect(json.loads(base64.urlsafe_b64decode(data_plane.get(f"{session}-payload")))["session_id"] == session, "the payload changed")

        # 7. Metrics: the agent's run outcomes, the servers' submissions and the tasks by state.
        agent_metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        for outcome, count in [("finished", 14), ("failed", 1), ("retried", 5), ("discarded", 2)]:
            value = sample(agent_metrics, f'htc_task_outcomes_total{{outcome="{outcome}"}}')
            expect(value == count, f"the agent counted {value} {outcome} runs, expected {count}")
        expect(sample(agent_metrics, 'htc_task_retries_total{cause="failure"}') == 5, "retries after failures")
        server_metrics = scrape(server_metrics_url)
        expect(sample(server_metrics, "htc_tasks_submitted_total") == 16, "the private server's submissions")
        for state, count in [("finished", 14), ("failed", 1), ("cancelled", 3), ("pending", 0), ("processing", 0)]:
            expect(sample(server_metrics, f'htc_tasks{{state="{state}"}}') == count, f"htc_tasks{{state={state}}}")
        print("ok: metrics of the agent (run outcomes, retries) and of the server (submissions, tasks by state)")

        for process in processes:
            status = process.stop()
            expect(status == 0, f"{os.path.basename(process.arguments[0])} exited with {status}:\n" + "\n".join(process.lines[-20:]))
        print("ok: htc-server and htc-agent stopped cleanly")
        return 0
    except AssertionError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        for process in processes:
            print(f"--- {' '.join(process.arguments[:1])} log tail:\n" + "\n".join(process.lines[-15:]), file=sys.stderr)
        return 1
    finally:
        emulator.release.set()
        for process in processes:
            if process.process.poll() is None:
                process.process.kill()
        emulator.shutdown()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
