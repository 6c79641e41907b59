#!/usr/bin/env python3
"""Parses every Terraform file of a directory and checks that what it creates is what the grid uses.

    scripts/check-terraform.py deployment/terraform

Every `.tf` file must parse (python-hcl2). Then the queues, the DynamoDB table and the IAM policy are
compared with the AWS backends: queue names (`<prefix>__<priority>`, `<prefix>__dlq`), the queue
attributes the backend passes to CreateQueue (SQS refuses CreateQueue on an existing queue whose
attributes differ), the table's key, attribute types, indexes and time-to-live attribute, and the IAM
actions: every action the backends call at run time must be granted, and nothing else.

The grid's side is read from the backends' Swift sources (Sources/Backends/AWS) when they are in the
tree. Until the AWS backends are merged it falls back to LAYOUT below, copied from branch `aws`
(docs/backends.md and Sources/Backends/AWS at commit a3f8129) and says so.
"""

import glob
import os
import re
import sys

import hcl2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AWS_SOURCES = os.path.join(ROOT, "Sources", "Backends", "AWS")

LAYOUT = {
    "queue_name": "{prefix}__{priority}",
    "dead_letter_name": "{prefix}__dlq",
    "message_retention_seconds": 1209600,
    "max_receive_count": 1000,
    "hash_key": "pk",
    "range_key": "sk",
    "attributes": {"pk": "S", "sk": "S"},
    "indexes": {},
    "ttl_attribute": "expires_at",
    "billing_mode": "PAY_PER_REQUEST",
    "sqs_calls": {"ChangeMessageVisibilityBatch", "CreateQueue", "DeleteMessageBatch", "GetQueueAttributes", "GetQueueUrl",
                  "ListQueues", "ReceiveMessage", "SendMessageBatch"},
    "dynamodb_calls": {"BatchGetItem", "BatchWriteItem", "DeleteItem", "GetItem", "PutItem", "Query", "UpdateItem"},
    "s3_calls": {"AbortMultipartUpload", "CompleteMultipartUpload", "CreateMultipartUpload", "DeleteObjects", "GetObject",
                 "PutObject", "UploadPart"},
}

# API calls made only by `htc aws init`, which Terraform replaces: the run-time role needs none of them.
SETUP_ONLY = {"CreateTable", "DescribeTable", "UpdateTable", "UpdateTimeToLive", "CreateBucket"}

# The IAM action that authorises each API call (batch calls are authorised by the single action).
IAM_ACTION = {
    "TransactWriteItems": ("dynamodb:PutItem", "dynamodb:UpdateItem"),
    "ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility", "CreateQueue": "sqs:CreateQueue",
    "DeleteMessageBatch": "sqs:DeleteMessage", "GetQueueAttributes": "sqs:GetQueueAttributes",
    "GetQueueUrl": "sqs:GetQueueUrl", "ListQueues": "sqs:ListQueues", "ReceiveMessage": "sqs:ReceiveMessage",
    "SendMessageBatch": "sqs:SendMessage",
    "AbortMultipartUpload": "s3:AbortMultipartUpload", "CompleteMultipartUpload": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject", "DeleteObjects": "s3:DeleteObject", "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject", "UploadPart": "s3:PutObject",
    # IAM has no action for a transaction: each of its parts is authorised as the single-item call
    # (the state store's transactions hold an Update and Puts).
    "TransactWriteItems": ("dynamodb:UpdateItem", "dynamodb:PutItem"),
}
# Granted on purpose although no call names it: S3 answers 404 (not 403) for a missing key only with it.
EXTRA_ALLOWED = {"s3:ListBucket", "kms:Decrypt", "kms:GenerateDataKey"}

failures = []


def fail(message):
    failures.append(message)


def text(value):
    """A python-hcl2 string without its quotes (it keeps them on literals)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def source(name):
    with open(os.path.join(AWS_SOURCES, name), encoding="utf-8") as handle:
        return handle.read()


def one(pattern, content, what):
    match = re.search(pattern, content)
    if not match:
        sys.exit(f"check-terraform: cannot find {what} in Sources/Backends/AWS ({pattern}); update this script")
    return match


def layout_from_sources():
    """The grid's names, read from the AWS backends' sources."""
    sqs = source("SQSTaskQueue.swift")
    table = source("DynamoDBStateStore+Table.swift")
    state = source("DynamoDBStateStore.swift")
    s3 = source("S3PayloadStore.swift")
    swift_template = lambda s: s.replace(r"\(prefix)", "{prefix}").replace(r"\(priority)", "{priority}")
    queue = one(r'func queueName\(prefix: String, priority: Int\) -> String \{ "([^"]+)" \}', sqs, "queueName")
    dead = one(r'func deadLetterQueueName\(prefix: String\) -> String \{ "([^"]+)" \}', sqs, "deadLetterQueueName")
    definitions = one(r'attributeDefinitions: JSON = \.array\(\s*\[(.*?)\]\.map', table, "attributeDefinitions").group(1)
    item = source("DynamoDBItem.swift")
    # Index names the table code takes from DynamoDBItem's constants.
    for constant, value in re.findall(r'static let (\w+) = "(\w+)"', item):
        table = table.replace(f".string(DynamoDBItem.{constant})", f'"{value}"')
    table_key = one(r'"KeySchema": \[\["AttributeName": "(\w+)", "KeyType": "HASH"\], \["AttributeName": "(\w+)", "KeyType": "RANGE"\]\],\s*'
                    r'(?:"GlobalSecondaryIndexes"|\])', table, "the table's key")
    return {
        "queue_name": swift_template(queue.group(1)),
        "dead_letter_name": swift_template(dead.group(1)),
        "message_retention_seconds": int(one(r'"MessageRetentionPeriod": "(\d+)"', sqs, "MessageRetentionPeriod").group(1)),
        "max_receive_count": int(one(r"maxReceiveCount: Int = (\d+)", sqs, "the default maxReceiveCount").group(1)),
        "hash_key": table_key.group(1),
        "range_key": table_key.group(2),
        "attributes": dict(re.findall(r'\("(\w+)", "([SNB])"\)', definitions)),
        "indexes": {name: (hash_key, range_key) for name, hash_key, range_key in re.findall(
            r'"IndexName": "(\w+)",\s*"KeySchema": \[\["AttributeName": "(\w+)", "KeyType": "HASH"\], '
            r'\["AttributeName": "(\w+)", "KeyType": "RANGE"\]\]', table)},
        "ttl_attribute": one(r'timeToLiveAttribute = "(\w+)"', table, "timeToLiveAttribute").group(1),
        "billing_mode": one(r'"BillingMode": "(\w+)"', table, "BillingMode").group(1),
        "sqs_calls": set(re.findall(r'"AmazonSQS", "(\w+)"', sqs)),
        "dynamodb_calls": set(re.findall(r'call\(\s*"(\w+)"', state)) | (set(re.findall(r'"DynamoDB_20120810", "(\w+)"', state + table))),
        "s3_calls": set(re.findall(r'send\(\s*"(\w+)"', s3)),
    }


def blocks(documents, kind, type_name):
    """(name, body) of every `kind "type_name" "name" {}` block."""
    found = []
    for document in documents:
        for entry in document.get(kind, []):
            for key, named in entry.items():
                if text(key) == type_name:
                    for name, body in named.items():
                        found.append((text(name), body))
    return found


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "deployment", "terraform")
    files = sorted(glob.glob(os.path.join(directory, "*.tf")))
    if not files:
        sys.exit(f"check-terraform: no .tf files in {directory}")
    documents = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                documents.append(hcl2.load(handle))
        except Exception as error:  # python-hcl2 raises lark's exceptions
            sys.exit(f"check-terraform: {path} does not parse: {error}")
    print(f"  parsed {len(files)} files: {', '.join(os.path.basename(f) for f in files)}")

    if os.path.isdir(AWS_SOURCES):
        grid = layout_from_sources()
        print("  grid layout read from Sources/Backends/AWS")
    else:
        grid = LAYOUT
        print("  Sources/Backends/AWS is not in this tree: checking against the layout of branch aws (LAYOUT in this script)")

    variables = {}
    for document in documents:
        for entry in document.get("variable", []):
            for name, body in entry.items():
                variables[text(name)] = body
    locals_ = {}
    for document in documents:
        for entry in document.get("locals", []):
            locals_.update(entry)

    def resolve(value):
        """A literal, or the default of the variable / the value of the local it names."""
        value = text(value)
        if isinstance(value, str):
            match = re.fullmatch(r"\$\{(var|local)\.(\w+)\}", value)
            if match:
                scope, name = match.groups()
                return resolve(variables[name].get("default") if scope == "var" else locals_[name])
        return value

    def expand(template, prefix, priority):
        return template.replace("{prefix}", prefix).replace("{priority}", priority)

    # Queues.
    queues = dict(blocks(documents, "resource", "aws_sqs_queue"))
    names = {label: text(body.get("name")) for label, body in queues.items()}
    tf_template = lambda name: name.replace("${var.prefix}", "{prefix}").replace("${each.key}", "{priority}").replace("${each.value}", "{priority}")
    priority_queues = [label for label, body in queues.items() if "redrive_policy" in body]
    dead_letters = [label for label, body in queues.items() if "redrive_policy" not in body]
    if len(priority_queues) != 1 or len(dead_letters) != 1:
        fail(f"expected one per-priority queue resource (with a redrive policy) and one dead-letter queue, found {sorted(queues)}")
    for label in priority_queues:
        made = expand(tf_template(names[label]), "grid", "7")
        wanted = expand(grid["queue_name"], "grid", "7")
        if made != wanted:
            fail(f"aws_sqs_queue.{label} is named {names[label]}: the grid looks for {grid['queue_name']}")
        redrive = text(queues[label]["redrive_policy"])
        count = re.search(r"maxReceiveCount\s*=\s*([\w.]+)", redrive)
        count = count and (int(count.group(1)) if count.group(1).isdigit() else resolve("${" + count.group(1) + "}"))
        if count != grid["max_receive_count"]:
            fail(f"aws_sqs_queue.{label}: maxReceiveCount must be {grid['max_receive_count']} (the sqs:// default), found {redrive}")
        if "deadLetterTargetArn" not in redrive or f"aws_sqs_queue.{dead_letters[0] if dead_letters else '?'}.arn" not in redrive:
            fail(f"aws_sqs_queue.{label}: the redrive policy must target the dead-letter queue")
    for label in dead_letters:
        made = expand(tf_template(names[label]), "grid", "7")
        if made != expand(grid["dead_letter_name"], "grid", "7"):
            fail(f"aws_sqs_queue.{label} is named {names[label]}: the grid's dead-letter queue is {grid['dead_letter_name']}")
    for label, body in queues.items():
        retention = resolve(body.get("message_retention_seconds"))
        if retention != grid["message_retention_seconds"]:
            fail(f"aws_sqs_queue.{label}: message_retention_seconds is {retention}; the backend creates queues with "
                 f"{grid['message_retention_seconds']} and SQS refuses CreateQueue when they differ")
        for attribute in ("visibility_timeout_seconds", "delay_seconds", "fifo_queue", "receive_wait_time_seconds"):
            if attribute in body:
                fail(f"aws_sqs_queue.{label}: {attribute} is set; the backend does not pass it to CreateQueue, leave the default")

    # Table.
    tables = blocks(documents, "resource", "aws_dynamodb_table")
    if len(tables) != 1:
        fail(f"expected one aws_dynamodb_table, found {len(tables)}")
    for label, body in tables:
        if resolve(body.get("name")) != resolve("${var.prefix}"):
            fail(f"aws_dynamodb_table.{label}: the table must be named after the prefix, as `htc aws init` names it")
        if text(body.get("hash_key")) != grid["hash_key"] or text(body.get("range_key")) != grid["range_key"]:
            fail(f"aws_dynamodb_table.{label}: the key must be {grid['hash_key']} (hash) and {grid['range_key']} (range)")
        if text(body.get("billing_mode")) != grid["billing_mode"]:
            fail(f"aws_dynamodb_table.{label}: billing_mode must be {grid['billing_mode']}")
        attributes = {text(a["name"]): text(a["type"]) for a in body.get("attribute", [])}
        if attributes != grid["attributes"]:
            fail(f"aws_dynamodb_table.{label}: attributes {attributes}, the grid's are {grid['attributes']}")
        indexes = {}
        for index in body.get("global_secondary_index", []):
            indexes[text(index["name"])] = (text(index.get("hash_key")), text(index.get("range_key")))
            if text(index.get("projection_type")) != "ALL":
                fail(f"aws_dynamodb_table.{label}: index {text(index['name'])} must project ALL attributes")
        if indexes != grid["indexes"]:
            fail(f"aws_dynamodb_table.{label}: indexes {indexes}, the grid's are {grid['indexes']}")
        ttl = body.get("ttl", [{}])
        ttl = ttl[0] if isinstance(ttl, list) else ttl
        if text(ttl.get("attribute_name")) != grid["ttl_attribute"] or ttl.get("enabled") is not True:
            fail(f"aws_dynamodb_table.{label}: time to live must be enabled on {grid['ttl_attribute']}")

    # Bucket: encrypted, with a lifecycle rule.
    if not blocks(documents, "resource", "aws_s3_bucket_server_side_encryption_configuration"):
        fail("the payload bucket has no aws_s3_bucket_server_side_encryption_configuration")
    if not blocks(documents, "resource", "aws_s3_bucket_lifecycle_configuration"):
        fail("the payload bucket has no aws_s3_bucket_lifecycle_configuration")

    # IAM: what the backends call, nothing more.
    runtime_calls = (grid["sqs_calls"] | grid["dynamodb_calls"] | grid["s3_calls"]) - SETUP_ONLY
    needed = set()
    for call in runtime_calls:
        action = IAM_ACTION.get(call, f"dynamodb:{call}" if call in grid["dynamodb_calls"] else f"?:{call}")
        needed.update(action if isinstance(action, tuple) else (action,))
    unknown = sorted(a for a in needed if a.startswith("?:"))
    if unknown:
        fail(f"no IAM action known for the API calls {unknown}: add them to IAM_ACTION in this script")
    granted = set()
    for _, body in blocks(documents, "data", "aws_iam_policy_document"):
        statements = list(body.get("statement", []))
        for dynamic in body.get("dynamic", []):
            for _, inner in dynamic.items():
                statements.extend(inner.get("content", []))
        for statement in statements:
            if any(text(p.get("type")) == "Federated" for p in statement.get("principals", [])):
                continue  # the trust policy
            granted.update(text(a) for a in statement.get("actions", []))
    if not granted:
        fail("no IAM policy document grants anything")
    wildcards = sorted(a for a in granted if "*" in a)
    if wildcards:
        fail(f"the role's policy grants wildcard actions {wildcards}")
    missing = sorted(needed - granted)
    if missing:
        fail(f"the role's policy lacks {missing}, which the backends call")
    extra = sorted(granted - needed - EXTRA_ALLOWED)
    if extra:
        fail(f"the role's policy grants {extra}, which the backends never call (least privilege)")

    if failures:
        for message in failures:
            print(f"check-terraform: {message}", file=sys.stderr)
        sys.exit(1)
    print(f"  queues, table ({len(grid['indexes'])} indexes, TTL {grid['ttl_attribute']}), bucket and "
          f"{len(granted)} IAM actions match the grid")


if __name__ == "__main__":
    main()
