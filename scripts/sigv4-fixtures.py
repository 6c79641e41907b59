#!/usr/bin/env python3
"""Writes Tests/GridAWSTests/Fixtures/sigv4.json: SigV4 cases for the GridAWS signer.

Two kinds of case:
- "suite": requests of the AWS Signature Version 4 test suite (aws-sig-v4-test-suite, 2015-08-30) with
  the signatures AWS published; for the ASCII ones the script checks that botocore agrees.
- "botocore": requests shaped like the grid's own (SQS and DynamoDB JSON, S3 objects with odd keys,
  multipart and DeleteObjects queries, session tokens) signed by botocore.

Run: python3 scripts/sigv4-fixtures.py (needs botocore; moto[server] brings it).
"""
import hashlib
import json
import os
from unittest import mock

import botocore.auth
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SUITE_KEY = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_DATE = "20150830T123600Z"

# name, method, path (raw, as in the .req file), query, extra headers, body, published signature
SUITE = [
    ("get-vanilla", "GET", "/", [], [], "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "GET", "/", [("Param2", "value2"), ("Param1", "value1")], [], "",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-utf8-query", "GET", "/", [("\u1234", "bar")], [], "",
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-utf8", "GET", "/\u1234", [], [], "", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-header-value-trim", "GET", "/", [], [("My-Header1", " value1"), ("My-Header2", ' "a   b   c"')], "",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("post-vanilla", "POST", "/", [], [], "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-vanilla-query", "POST", "/", [("Param1", "value1")], [], "",
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-header-key-sort", "POST", "/", [], [("My-Header1", "value1")], "",
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("post-x-www-form-urlencoded", "POST", "/", [], [("Content-Type", "application/x-www-form-urlencoded")], "Param1=value1",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
]


class FixedClock:
    def __init__(self, stamp):
        import datetime
        self.value = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")

    def __call__(self):
        return self.value


def quote(text, safe):
    from urllib.parse import quote as q
    return q(text, safe=safe)


def botocore_sign(service, region, method, host, path, query, headers, body, key, secret, token, stamp):
    """Signs with botocore; `path` is the path as sent (encoded)."""
    url = f"https://{host}{path}"
    if query:
        url += "?" + "&".join(f"{quote(k, '-_.~')}={quote(v, '-_.~')}" for k, v in query)
    request = AWSRequest(method=method, url=url, data=body.encode() if isinstance(body, str) else body)
    request.headers["Host"] = host
    for name, value in headers:
        request.headers[name] = value
    auth_class = S3SigV4Auth if service == "s3" else SigV4Auth
    auth = auth_class(Credentials(key, secret, token), service, region)
    with mock.patch.object(botocore.auth, "get_current_datetime", FixedClock(stamp)):
        auth.add_auth(request)
        authorization = request.headers["Authorization"]
        # The canonical request as signed: without the authorization header added by signing.
        del request.headers["Authorization"]
        canonical = auth.canonical_request(request)
    return authorization, canonical


def suite_cases():
    cases = []
    for name, method, path, query, headers, body, signature in SUITE:
        signed_names = sorted({"host", "x-amz-date"} | {h.lower() for h, _ in headers})
        authorization = (f"AWS4-HMAC-SHA256 Credential={SUITE_KEY[0]}/20150830/us-east-1/service/aws4_request, "
                         f"SignedHeaders={';'.join(signed_names)}, Signature={signature}")
        if path.isascii() and all(k.isascii() for k, _ in query):
            checked, _ = botocore_sign("service", "us-east-1", method, "example.amazonaws.com", path, query, headers, body,
                                       *SUITE_KEY, None, SUITE_DATE)
            assert checked == authorization, f"botocore disagrees with the published {name}: {checked}"
        cases.append({
            "name": f"suite/{name}", "service": "service", "region": "us-east-1", "method": method, "host": "example.amazonaws.com",
            "path": path, "query": [list(p) for p in query], "headers": [list(h) for h in headers], "body": body,
            "accessKeyId": SUITE_KEY[0], "secretAccessKey": SUITE_KEY[1], "sessionToken": None, "date": SUITE_DATE,
            "authorization": authorization, "canonicalRequest": None,
        })
    return cases


def grid_cases():
    key, secret = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    token = "IQoJb3JpZ2luX2VjEHQaCXVzLWVhc3QtMSJHMEUCIQD+example/token=="
    send = json.dumps({"QueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/grid__0",
                       "Entries": [{"Id": "t0", "MessageBody": "{\"task_id\":\"s_0\",\"priority\":0}"}]}, separators=(",", ":"))
    update = json.dumps({"TableName": "grid", "Key": {"pk": {"S": "t#s_1"}}, "UpdateExpression": "SET #s0 = :s0",
                         "ConditionExpression": "attribute_exists(pk) AND #c_st = :c_pending"}, separators=(",", ":"))
    delete = "<Delete><Quiet>true</Quiet><Object><Key>p/a b+c-input</Key></Object></Delete>"
    specs = [
        # name, service, region, method, host, path as sent, query, headers, body, token, date
        ("sqs-send-message-batch", "sqs", "eu-west-1", "POST", "sqs.eu-west-1.amazonaws.com", "/", [],
         [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "AmazonSQS.SendMessageBatch")], send, None, "20261126T010203Z"),
        ("dynamodb-update-item-session-token", "dynamodb", "us-west-2", "POST", "dynamodb.us-west-2.amazonaws.com", "/", [],
         [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "DynamoDB_20120810.UpdateItem")], update, token, "20261231T235959Z"),
        ("s3-put-odd-key-virtual-host", "s3", "us-east-1", "PUT", "grid-bucket.s3.amazonaws.com",
         "/" + quote("payloads/s:1_2 ü+&=-input", "/-_.~"), [],
         [("Content-Type", "application/octet-stream"), ("x-amz-server-side-encryption", "aws:kms"),
          ("x-amz-server-side-encryption-aws-kms-key-id", "arn:aws:kms:us-east-1:123456789012:key/abcd")], "payload \x00 bytes", None,
         "20260102T030405Z"),
        ("s3-get-path-style-port", "s3", "eu-central-1", "GET", "127.0.0.1:4566", "/bucket/" + quote("x/y z-output", "/-_.~"), [], [], "",
         None, "20260102T030405Z"),
        ("s3-upload-part-query", "s3", "us-east-1", "PUT", "bucket.s3.amazonaws.com", "/big-input",
         [("partNumber", "2"), ("uploadId", "VXBsb2FkIElEIGZvciBlbHZpbmc=.~/+")], [], "part two", token, "20260102T030405Z"),
        ("s3-delete-objects-empty-value", "s3", "us-east-1", "POST", "bucket.s3.amazonaws.com", "/", [("delete", "")],
         [("Content-Type", "application/xml"), ("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")], delete, None, "20260102T030405Z"),
    ]
    cases = []
    for name, service, region, method, host, path, query, headers, body, tok, stamp in specs:
        all_headers = list(headers)
        if service == "s3":
            all_headers.append(("X-Amz-Content-SHA256", hashlib.sha256(body.encode()).hexdigest()))
        authorization, canonical = botocore_sign(service, region, method, host, path, query, all_headers, body, key, secret, tok, stamp)
        cases.append({
            "name": f"botocore/{name}", "service": service, "region": region, "method": method, "host": host, "path": path,
            "query": [list(p) for p in query], "headers": [list(h) for h in all_headers], "body": body, "accessKeyId": key,
            "secretAccessKey": secret, "sessionToken": tok, "date": stamp, "authorization": authorization, "canonicalRequest": canonical,
        })
    return cases


def main():
    out = os.path.join(os.path.dirname(__file__), "..", "Tests", "GridAWSTests", "Fixtures", "sigv4.json")
    with open(out, "w") as f:
        json.dump({"generatedBy": "scripts/sigv4-fixtures.py", "botocore": botocore.__version__,
                   "cases": suite_cases() + grid_cases()}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
