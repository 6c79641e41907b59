#!/usr/bin/env python3
"""moto_server with AWS' atomicity and non-blocking long polls: python3 scripts/moto-server.py HOST PORT.

moto's own launcher serves requests on threads, and moto's DynamoDB checks a ConditionExpression and
writes the item without a lock, so two concurrent conditional UpdateItem calls can both succeed (seen
with 16 concurrent claimers: two winners). AWS applies them atomically. Here every request runs under
one lock, which gives moto AWS' atomicity; but a long-polling SQS ReceiveMessage would then hold the
lock (and the whole server) for up to 20 seconds. So a long poll is served as a series of short
receives (WaitTimeSeconds 0) under the lock, with the lock released in between, until messages
arrive or the wait is over: the same answer AWS gives, while other clients are served. (Not on a
server that checks signatures: the rewritten body would not match its signature.)

Two patches keep moto's SQS linear: it reads every queue attribute (counting all messages) on each
message sent, to learn one flag, and it builds two datetimes per visibility check of each message.
Without them a 2,000-message queue took 165 ms per SendMessageBatch and 290 ms per ReceiveMessage.

A third keeps moto's DynamoDB TransactWriteItems linear: for its rollback, moto deep-copies the whole
table once per item of the transaction (100 copies of a 3,000-item table per transaction of 99 tasks:
the server stalled for minutes). Here only the items the transaction touches are copied, and put back
when it is cancelled.

HTC_MOTO_TRACE=FILE appends one line per request (time, seconds, status, action) and one per turn
under the lock ("locked SECONDS ACTION"): where a slow test spends moto's time.
"""
import copy
import io
import json
import os
import sys
import threading
import time

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.dynamodb import models as dynamodb_models
from moto.sqs import models as sqs_models
from werkzeug.serving import run_simple

COUNTS = ("approximate_number_of_messages", "approximate_number_of_messages_delayed", "approximate_number_of_messages_not_visible")
moto_send_message = sqs_models.SQSBackend.send_message
moto_unix_time_millis = sqs_models.unix_time_millis
moto_transact_write_items = dynamodb_models.DynamoDBBackend.transact_write_items


def send_message(self, *args, **kwargs):
    """moto's send_message without counting the queue's messages (they are not used there)."""
    saved = {name: getattr(sqs_models.Queue, name) for name in COUNTS}
    for name in COUNTS:
        setattr(sqs_models.Queue, name, property(lambda queue: 0))
    try:
        return moto_send_message(self, *args, **kwargs)
    finally:
        for name, value in saved.items():
            setattr(sqs_models.Queue, name, value)


def unix_time_millis(dt=None):
    """moto's clock, without the two datetimes when it is asked for now."""
    return time.time() * 1000.0 if dt is None else moto_unix_time_millis(dt)


class NoCopy:
    """Stands for the copy module in moto's DynamoDB backend while a transaction runs: the tables are
    not copied (transact_write_items below copies the items the transaction touches)."""

    @staticmethod
    def deepcopy(value):
        return value


def transact_write_items(self, transact_items):
    """moto's TransactWriteItems, rolled back item by item instead of by copies of whole tables."""
    saved = []
    for entry in transact_items:
        op_type, op = next(iter(entry.items()))
        try:
            table = self.get_table(op["TableName"])
            if op_type == "Put":
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            current = self.get_item(op["TableName"], key)
        except Exception:
            continue  # moto reports it
        saved.append((op["TableName"], key, copy.deepcopy(current.to_json()["Attributes"]) if current else None))
    dynamodb_models.copy = NoCopy
    try:
        return moto_transact_write_items(self, transact_items)
    except Exception:
        for table_name, key, attributes in reversed(saved):
            if attributes is None:
                try:
                    self.delete_item(table_name, key)
                except Exception:
                    pass
            else:
                self.put_item(table_name, attributes)
        raise
    finally:
        dynamodb_models.copy = copy


# Safe only because every request runs under the lock below.
sqs_models.SQSBackend.send_message = send_message
sqs_models.unix_time_millis = unix_time_millis
dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
moto = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
TRACE = os.environ.get("HTC_MOTO_TRACE")
# With signature checks on, a rewritten body would no longer match its signature: long polls then
# hold the server (the tests that use that server poll without waiting).
CHECKS_SIGNATURES = "INITIAL_NO_AUTH_ACTION_COUNT" in os.environ
POLL_SECONDS = 0.05


def call(environ, body):
    """Runs one request through moto under the lock and returns (status, headers, body)."""
    environ = dict(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, headers
        return lambda data: None

    with lock:
        held = time.monotonic()
        chunks = moto(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        if TRACE:
            with open(TRACE, "a") as trace:
                trace.write(f"locked {time.monotonic() - held:.4f} {environ.get('HTTP_X_AMZ_TARGET')}\n")
    return answer["status"], answer["headers"], content


def long_poll(environ, body):
    """A ReceiveMessage (JSON protocol) with WaitTimeSeconds > 0 as short receives."""
    request = json.loads(body or b"{}")
    wait = float(request.get("WaitTimeSeconds", 0) or 0)
    request["WaitTimeSeconds"] = 0
    short = json.dumps(request).encode()
    deadline = time.monotonic() + wait
    while True:
        status, headers, content = call(environ, short)
        if not status.startswith("200") or time.monotonic() >= deadline:
            return status, headers, content
        try:
            if json.loads(content or b"{}").get("Messages"):
                return status, headers, content
        except ValueError:
            return status, headers, content
        time.sleep(POLL_SECONDS)


def app(environ, start_response):
    started = time.monotonic()
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage" and not CHECKS_SIGNATURES:
        status, headers, content = long_poll(environ, body)
    else:
        status, headers, content = call(environ, body)
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(len(content)))]
    start_response(status, headers)
    if TRACE:
        with open(TRACE, "a") as trace:
            target = environ.get("HTTP_X_AMZ_TARGET") or environ.get("REQUEST_METHOD", "") + " " + environ.get("PATH_INFO", "")
            trace.write(f"{time.time():.3f} {time.monotonic() - started:.4f} {status.split()[0]} {target}\n")
    return [content]


run_simple(host, port, app, threaded=True)
