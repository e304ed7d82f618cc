"""Shared test fixtures.

Real team material lives in ../shared (read-only; never copied into the repo).
Tests that need it use the ``shared_dir`` / ``ml100k_dir`` fixtures, which skip
cleanly with a reason when it is absent.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"team material not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def ml100k_dir(shared_dir: Path) -> Path:
    path = shared_dir / "datasets" / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"MovieLens 100k not found at {path}")
    return path


@pytest.fixture(scope="session")
def sagemaker_fixtures(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "sagemaker"
    if not path.is_dir():
        pytest.skip(f"SageMaker fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def cloud_fixture(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "cloud" / "ml100k-fm-binary-30ep"
    if not (path / "training-log.txt").is_file():
        pytest.skip(f"cloud fixture not found at {path}")
    return path


@pytest.fixture
def cli(capsys):
    """Run ``localfm ARGS`` in-process; returns (exit_code, stdout, stderr)."""
    from localfm.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# A real S3 API for the s3:// tests: ThreadedMotoServer on loopback, in a child process
# so its in-memory object store does not count against the test process's memory.
_MOTO_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # run until the fixture closes our stdin
server.stop()
"""

S3_TEST_SECRET = "s3cr3t-never-shown"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (one per test session)."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            pytest.fail(f"moto server did not start (got {line!r})")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_s3_bucket(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """Point localfm (and boto3) at ``endpoint`` with dummy credentials; return a client with ``bucket``."""
    import boto3

    monkeypatch.setenv("LOCALFM_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Never read the developer's real AWS config or reach instance metadata.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # boto3's default session caches resolved credentials for the process; start fresh
    # so each test sees exactly the environment it set.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    from localfm.io.uri import s3_client

    client = s3_client()
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


@pytest.fixture
def new_s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """``new_s3_bucket(name)`` → a boto3 client with ``bucket`` created on the session's moto server.

    localfm is pointed at that server with dummy credentials (see :func:`make_s3_bucket`).
    """

    def bucket(name: str):  # noqa: ANN202
        return make_s3_bucket(moto_endpoint, name, monkeypatch, tmp_path)

    return bucket
