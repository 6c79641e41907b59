#!/usr/bin/env python3
"""A stand-in for the AWS Lambda Runtime Interface Emulator (aws-lambda-rie) with its rules.

It serves POST /2015-03-31/functions/<name>/invocations on 127.0.0.1:<port>, one invocation at a time.
Like aws-lambda-rie v1.14 to v1.25, it does not notice that a client closed its connection: the function
runs to its end. A second invocation arriving while one runs makes it crash like the real emulator
(which logs "ReserveFailed: AlreadyReserved", panics on a nil dereference and exits with status 2).

The "function" reads the event, a JSON object:
  {"sleep": S}  sleeps S seconds first;
  {"exit": N}   makes the emulator exit with status N in the middle of the invocation (a crash of its own);
  {"x": X}      answers X * X; otherwise the answer is {"echo": EVENT}.

Every start, invocation, end and crash is appended to --log as one line ("start PID", "invoke PID EVENT",
"end PID", "crash PID ..."), so a test can see what the emulator went through.
Usage: fake_rie.py --port P (0: any free port, printed as "listening on PORT") --log FILE
"""
import argparse
import http.server
import json
import os
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=int(os.environ.get("HTC_LAMBDA_PORT", "8080")))
parser.add_argument("--log", required=True)
arguments = parser.parse_args()

busy = threading.Lock()
log_lock = threading.Lock()


def record(line):
    with log_lock, open(arguments.log, "a") as log:
        log.write(f"{line}\n")


class Emulator(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        parts = self.path.split("/")
        if len(parts) != 5 or parts[1:3] != ["2015-03-31", "functions"] or parts[4] != "invocations":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not busy.acquire(blocking=False):
            # What aws-lambda-rie does when a second invocation arrives while one runs.
            record(f"crash {os.getpid()} ReserveFailed: AlreadyReserved")
            sys.stderr.write("[INFO] (rapid) ReserveFailed: AlreadyReserved\n")
            sys.stderr.write("panic: runtime error: invalid memory address or nil pointer dereference\n")
            sys.stderr.flush()
            os._exit(2)
        try:
            event = json.loads(body or b"{}")
            record(f"invoke {os.getpid()} {json.dumps(event, sort_keys=True)}")
            time.sleep(float(event.get("sleep", 0)))
            if "exit" in event:
                record(f"exit {os.getpid()} {event['exit']}")
                os._exit(int(event["exit"]))
            answer = json.dumps(event["x"] * event["x"] if "x" in event else {"echo": event}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                self.wfile.flush()
            except OSError:
                pass  # the client left; the invocation ran anyway
            record(f"end {os.getpid()}")
        finally:
            busy.release()

    def log_message(self, format, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", arguments.port), Emulator)
server.daemon_threads = True
record(f"start {os.getpid()}")
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
