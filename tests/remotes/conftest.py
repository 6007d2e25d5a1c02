"""Fixtures for the Remote contract: one ``remote`` per backend (file, memory, S3, GCS), each
fresh for the test, built by ``open_remote`` from a URL exactly as replicate builds it (S3 and GCS
endpoints come from the environment that the session fixtures in tests/conftest.py set).

Also a second, short-lived moto server with IAM authentication switched on, for the
wrong-credentials tests (the session server accepts any keys).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replicate.remotes import Remote, open_remote

BACKENDS = ["file", "memory", "s3", "gcs"]
HOST = "127.0.0.1"


def remote_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL with nothing stored under it yet."""
    if kind == "file":
        return f"file://{tmp_path}/store"
    if kind == "memory":
        return f"memory://store-{uuid.uuid4().hex}"
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        _s3_client(endpoint).create_bucket(Bucket=bucket)
        return f"s3://{bucket}/store"  # a fresh bucket
    if kind == "gcs":
        return request.getfixturevalue("gcs_url") + "/store"  # a fresh bucket
    raise AssertionError(kind)


@functools.cache
def _s3_client(endpoint: str) -> Any:
    """One boto3 client per server: a bucket per test costs ~5 ms instead of a new session
    (the session fixture ``s3_url`` builds an S3FileSystem each time)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(params=BACKENDS)
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    """The bare implementation (no retry wrapper: a transient error must show, not be hidden)."""
    return open_remote(remote_url(request.param, request, tmp_path), retries=False)


# --- a moto server that checks credentials -----------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class AuthS3:
    """A moto server with IAM auth on, one user allowed s3:* and a bucket holding key 'k'."""

    endpoint: str
    key_id: str
    secret: str
    bucket: str


@pytest.fixture(scope="module")
def s3_auth():
    """moto's documented switch: after INITIAL_NO_AUTH_ACTION_COUNT unauthenticated requests,
    every request must be signed by an IAM access key that exists (and is allowed)."""
    import boto3

    port = free_port()
    url = f"http://{HOST}:{port}"
    exe = str(Path(sys.executable).with_name("moto_server"))
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")  # create user, key, policy
    proc = subprocess.Popen(
        [exe, "-H", HOST, "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert proc.poll() is None, "moto_server exited"
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.05)
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
        iam.create_user(UserName="replicate")
        key = iam.create_access_key(UserName="replicate")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="replicate", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        bucket = f"auth-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="store/k", Body=b"secret bytes")
        yield AuthS3(url, key["AccessKeyId"], key["SecretAccessKey"], bucket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
