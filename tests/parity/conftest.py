"""Fixtures for the parity suite: the real cloud run in the bring-your-own-run layout.

The recorded fixture (../shared/fixtures/cloud/ml100k-fm-binary-30ep) holds the log
and results but not the channels (MovieLens may not be redistributed), so the
adapter here prepares the channels from ../shared/datasets/ml-100k exactly as its
README says and lays everything out as ``localfm parity fixture`` expects a user's own
recording: hyperparameters.json, training-log.txt, metrics file, input/data/{train,test}.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def run_cli(*args: str) -> tuple[int, str, str]:
    """``localfm ARGS`` in-process with stdout/stderr captured (usable in session fixtures)."""
    from localfm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def ml100k_channels(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.protobuf / test.protobuf prepared as the fixture's README describes."""
    out = tmp_path_factory.mktemp("ml100k-ua")
    code, _, err = run_cli(
        "--quiet", "prepare", "movielens", ml100k_dir, "--split", "ua", "--label", "binary:4",
        "--columns", "train", "--drop-unseen", "--order", "file", "--out", out,
    )
    assert code == 0, err
    return out


def make_run_dir(cloud_fixture: Path, channels: Path, dest: Path) -> Path:
    """Copy the recorded run into the documented layout (the adapter users can copy)."""
    from localfm.parity.cloudlog import parse_training_log

    dest.mkdir(parents=True, exist_ok=True)
    log_text = (cloud_fixture / "training-log.txt").read_text(encoding="utf-8")
    (dest / "training-log.txt").write_text(log_text, encoding="utf-8")
    shutil.copyfile(cloud_fixture / "cloud-results.json", dest / "metrics.json")
    given = parse_training_log(log_text).hyperparameters
    (dest / "hyperparameters.json").write_text(json.dumps(given, indent=1), encoding="utf-8")
    for channel in ("train", "test"):
        d = dest / "input" / "data" / channel
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(channels / f"{channel}.protobuf", d / f"{channel}.protobuf")
    return dest


@pytest.fixture(scope="session")
def byo_run(cloud_fixture: Path, ml100k_channels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(cloud_fixture, ml100k_channels, tmp_path_factory.mktemp("byo") / "ml100k-fm-binary-30ep")


@dataclass
class FixtureReport:
    code: int
    stdout: str
    stderr: str
    json_path: Path
    plot_dir: Path


@pytest.fixture(scope="session")
def fixture_report(byo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> FixtureReport:
    """One full ``localfm parity fixture`` run (seed 0, all 30 epochs), shared by several tests."""
    out = tmp_path_factory.mktemp("fixture-report")
    code, stdout, stderr = run_cli(
        "--quiet", "parity", "fixture", byo_run, "--seed", "0",
        "--json", out / "report.json", "--plot", out / "plots",
    )
    return FixtureReport(code, stdout, stderr, out / "report.json", out / "plots")


# ------------------------------------------------------------------ S3 (moto server)
_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback (ThreadedMotoServer in a child process)."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
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


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """(client, bucket) with localfm pointed at the moto server and dummy credentials."""
    import boto3

    monkeypatch.setenv("LOCALFM_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    from localfm.io.uri import s3_client

    client = s3_client()
    bucket = "parity-runs"
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client, bucket
