"""A small S3 client for the S3 plugin's tests, on boto3 (a real client, not ours).

    s3.py ls                      list the buckets
    s3.py mb BUCKET               make a bucket
    s3.py list BUCKET [PREFIX]    the keys under PREFIX, one a line, with their sizes
    s3.py put BUCKET KEY FILE     upload FILE as one object
    s3.py get BUCKET KEY FILE     download an object

The endpoint and credentials come from $s3_endpoint, $s3_access_key and $s3_secret_key
(tests/lib/swift.sh sets them).
"""

import os
import sys

import boto3
from botocore.config import Config


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["s3_endpoint"],
        aws_access_key_id=os.environ["s3_access_key"],
        aws_secret_access_key=os.environ["s3_secret_key"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def main(argv):
    c = client()
    cmd = argv[0]
    if cmd == "ls":
        for b in c.list_buckets().get("Buckets", []):
            print(b["Name"])
    elif cmd == "mb":
        c.create_bucket(Bucket=argv[1])
    elif cmd == "list":
        prefix = argv[2] if len(argv) > 2 else ""
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=argv[1], Prefix=prefix):
            for o in page.get("Contents", []):
                print(o["Key"], o["Size"])
    elif cmd == "put":
        with open(argv[3], "rb") as f:
            c.put_object(Bucket=argv[1], Key=argv[2], Body=f.read())
    elif cmd == "get":
        body = c.get_object(Bucket=argv[1], Key=argv[2])["Body"].read()
        with open(argv[3], "wb") as f:
            f.write(body)
    else:
        sys.exit("s3.py: unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
