"""Error translation at the I/O boundary, for failures the loopback servers cannot produce
(throttling, 5xx, GCS 401/403, write conflicts): real exception types of botocore, s3fs, gcsfs
and aiohttp, chained as those libraries chain them."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from gcsfs.retry import HttpError
from s3fs.errors import translate_boto_error

from replicate.errors import (
    RemoteAuthError,
    RemoteError,
    RemoteExists,
    RemoteNotFound,
    RemoteUnavailable,
)
from replicate.remotes.fsspec_remote import check_upload, translate

URL = "s3://my-bucket/store"


def s3_error(code: str, status: int, **extra: str) -> BaseException:
    """What s3fs raises for a botocore ClientError: its translation, caused by the original."""
    err = ClientError(
        {
            "Error": {"Code": code, "Message": code, **extra},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )
    translated = translate_boto_error(err)
    if translated is not err:
        translated.__cause__ = err
    return translated


@pytest.mark.parametrize(
    "code,status,expected",
    [
        ("NoSuchBucket", 404, RemoteNotFound),
        ("NoSuchKey", 404, RemoteNotFound),
        ("AccessDenied", 403, RemoteAuthError),
        ("InvalidAccessKeyId", 403, RemoteAuthError),
        ("SignatureDoesNotMatch", 403, RemoteAuthError),
        ("ExpiredToken", 400, RemoteAuthError),
        ("SlowDown", 503, RemoteUnavailable),
        ("ServiceUnavailable", 503, RemoteUnavailable),
        ("InternalError", 500, RemoteUnavailable),
        ("RequestTimeout", 400, RemoteUnavailable),
        ("ConditionalRequestConflict", 409, RemoteUnavailable),  # concurrent conditional writes
        ("SomethingNew", 502, RemoteUnavailable),
        ("InvalidArgument", 400, RemoteError),
    ],
)
def test_s3_errors(code: str, status: int, expected: type[RemoteError]) -> None:
    err = translate(s3_error(code, status), URL, "write k")
    assert type(err) is expected, err
    assert URL in str(err)


def test_s3_missing_bucket_names_the_bucket() -> None:
    err = translate(s3_error("NoSuchBucket", 404), URL, "read k")
    assert isinstance(err, RemoteNotFound) and "'my-bucket'" in str(err)


def test_s3_create_only_conflict() -> None:
    err = s3_error("PreconditionFailed", 412, Condition="If-None-Match")
    assert isinstance(err, FileExistsError)
    assert type(translate(err, URL, "write k")) is RemoteExists
    # without the Condition field (other S3 implementations): still "exists"
    assert type(translate(s3_error("PreconditionFailed", 412), URL, "write k")) is RemoteExists


def test_s3_connection_errors() -> None:
    e = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert type(translate(e, URL, "read k")) is RemoteUnavailable
    assert type(translate(ConnectionRefusedError(111, "refused"), URL, "read k")) is (
        RemoteUnavailable
    )


@pytest.mark.parametrize(
    "error,expected",
    [
        (HttpError({"code": 401, "message": "Invalid Credentials"}), RemoteAuthError),
        (OSError("Forbidden: https://storage.googleapis.com/b/x\nno access"), RemoteAuthError),
        (HttpError({"code": 429, "message": "rate"}), RemoteUnavailable),
        (HttpError({"code": 500, "message": "oops"}), RemoteUnavailable),
        (HttpError({"code": 503, "message": "busy"}), RemoteUnavailable),
        (FileNotFoundError("b/x"), RemoteNotFound),
        (FileExistsError("b/x"), RemoteExists),  # gcsfs: any 412
        (HttpError({"code": 416, "message": ""}), RemoteError),
    ],
)
def test_gcs_errors(error: BaseException, expected: type[RemoteError]) -> None:
    err = translate(error, "gs://b/store", "read x")
    assert type(err) is expected, err


def test_aiohttp_connection_error_in_a_chain() -> None:
    import aiohttp

    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as inner:
            raise aiohttp.ClientOSError(111, "cannot connect") from inner
    except aiohttp.ClientError as e:
        assert type(translate(e, "gs://b", "list")) is RemoteUnavailable


def test_remote_errors_pass_through() -> None:
    e = RemoteExists("already")
    assert translate(e, URL, "x") is e


def test_other_errors_are_remote_errors_with_the_cause() -> None:
    err = translate(ValueError("strange"), URL, "read k")
    assert type(err) is RemoteError
    assert "read k" in str(err) and "strange" in str(err)


def test_check_upload() -> None:
    data = random.Random(1).randbytes(1000)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert check_upload({"size": "1000", "md5Hash": md5}, data) == ""
    assert check_upload({"size": "1000"}, data) == ""  # no hash reported: size only
    assert "999" in check_upload({"size": "999", "md5Hash": md5}, data)
    assert "MD5" in check_upload({"size": "1000", "md5Hash": md5}, data[:-1] + b"\r")
