#!/usr/bin/env python3
"""moto_server, single-threaded: python3 scripts/moto-server.py HOST PORT.

moto's own launcher serves requests on threads, and moto's DynamoDB checks a ConditionExpression and
writes the item without a lock, so two concurrent conditional UpdateItem calls can both succeed (seen
with 16 concurrent claimers: two winners). AWS applies them atomically. One thread serialises the
requests and gives moto AWS' atomicity; it also means a long-polling ReceiveMessage holds the server,
so the tests poll without waiting.
"""
import os
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple(host, port, DomainDispatcherApplication(create_backend_app), threaded=False)
