#!/usr/bin/env python3
"""A minimal Lambda runtime (the Runtime API client) for a real aws-lambda-rie, standing in for a worker
image's function and its runtime interface client (awslambdaric): it sleeps the event's "sleep" seconds,
then answers {"echo": EVENT}. Used by scripts/check-lambda-rie.sh."""
import json
import os
import time
import urllib.request

api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as response:
        request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(response.read() or b"{}")
    time.sleep(float(event.get("sleep", 0)))
    body = json.dumps({"echo": event}).encode()
    urllib.request.urlopen(urllib.request.Request(api + request_id + "/response", data=body, method="POST")).read()
