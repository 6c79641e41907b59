#!/usr/bin/env python3
"""Times HTC-Grid's connector flow against htc-server --htcgrid-compat and echoing htc-agents.

    connector_bench.py --bin DIR --redis redis://127.0.0.1:PORT [--tasks 10000] [--agents 2]

Starts htc-server (private API, x-api-key) and the agents on a SQLite grid whose payloads are in Redis in
HTC-Grid's layout, then runs Connector.send + get_results (as AWSConnector does: one SET per input,
one submit, /result polls, one GET per output) and prints the time of each step as JSON.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from connector_contract import Connector, Process  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=2)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="htc-htcgrid-bench-")
    processes = []
    try:
        url = urllib.parse.urlparse(args.redis)
        data_plane = redis.StrictRedis(host=url.hostname, port=url.port or 6379, db=0)
        payload = f"redis://{url.hostname}:{url.port or 6379}/0?layout=htcgrid"
        grid = f"sqlite://{directory}/grid.db"
        key = uuid.uuid4().hex
        with open(f"{directory}/keys", "w") as keys:
            keys.write(f"bench:{key}\n")
        server = Process([f"{args.bin}/htc-server", "--listen", "127.0.0.1:0", "--grid", grid, "--payload", payload,
                          "--htcgrid-compat", "--api-keys", f"{directory}/keys", "--log-level", "info"])
        processes.append(server)
        port = server.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        for _ in range(args.agents):
            processes.append(Process([f"{args.bin}/htc-agent", "--grid", grid, "--payload", payload,
                                      "--concurrency", "256", "--log-level", "warning"]))
        connector = Connector(f"http://127.0.0.1:{port}/v1", data_plane, api_key=key)
        connector.pull_interval = 0.5  # HTC-Grid's dynamodb_results_pull_interval_sec
        tasks = [{"x": i, "worker_arguments": ["1000", "1", "1"]} for i in range(args.tasks)]
        start = time.perf_counter()
        jobs = connector.generate_user_task_json(tasks)
        stored = time.perf_counter()
        submitted = connector.submit(jobs)
        accepted = time.perf_counter()
        polls = 0
        while connector.invoke_get_results_lambda({"session_id": submitted["session_id"]})["metadata"]["tasks_in_response"] < args.tasks:
            polls += 1
            time.sleep(connector.pull_interval)
        done = time.perf_counter()
        poll_start = time.perf_counter()
        connector.invoke_get_results_lambda({"session_id": submitted["session_id"]})
        poll_time = time.perf_counter() - poll_start
        result = connector.get_results(submitted)
        read = time.perf_counter()
        assert result["finished_OUTPUT"][0] and len(result["finished"]) == args.tasks
        print(json.dumps({
            "tasks": args.tasks, "agents": args.agents,
            "inputs_stored_s": round(stored - start, 3), "submit_call_s": round(accepted - stored, 3),
            "until_all_terminal_s": round(done - accepted, 3), "one_result_poll_s": round(poll_time, 3),
            "outputs_read_s": round(read - done, 3), "end_to_end_s": round(read - start, 3),
            "tasks_per_s": round(args.tasks / (read - start)), "result_polls": polls,
        }))
    finally:
        for process in processes:
            process.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
