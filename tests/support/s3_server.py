"""A real S3-protocol server on loopback for tests: moto's standalone server,
started as its own process, spoken to over HTTP by boto3."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import requests

# With IAM enforced, moto lets this many requests through unsigned: enough to set up the users below.
SETUP_ACTIONS = 6

ACCESS_KEY = "AKIAPLUGBOARDTEST"
SECRET_KEY = "plugboard-s3-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto_server in its own process. With `enforce_auth`, it checks
    signatures and IAM policies like AWS: `self.reader` may use S3,
    `self.stranger` has valid keys and no permission."""

    def __init__(self, *, enforce_auth: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.enforce_auth = enforce_auth
        self.reader: tuple[str, str] = (ACCESS_KEY, SECRET_KEY)
        self.stranger: tuple[str, str] | None = None

    def start(self) -> S3Server:
        moto_server = Path(sys.executable).with_name("moto_server")
        env = dict(os.environ)
        if self.enforce_auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_ACTIONS)
        self.process = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        if self.enforce_auth:
            self._create_users()
        return self

    def _create_users(self) -> None:
        import json

        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="reader")
        document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        policy = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps(document))
        iam.attach_user_policy(UserName="reader", PolicyArn=policy["Policy"]["Arn"])
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        self.reader = (key["AccessKeyId"], key["SecretAccessKey"])
        iam.create_user(UserName="stranger")
        key = iam.create_access_key(UserName="stranger")["AccessKey"]
        self.stranger = (key["AccessKeyId"], key["SecretAccessKey"])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)

    def client(self, *, max_pool_connections: int = 10):
        """A boto3 client with the reader's keys, keeping up to `max_pool_connections` connections open."""
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.reader[0],
            aws_secret_access_key=self.reader[1],
            config=Config(max_pool_connections=max_pool_connections),
        )

    def put_files(self, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        for name, data in files.items():
            client.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{name}" if prefix else name, Body=data)
