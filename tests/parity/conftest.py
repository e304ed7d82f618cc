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
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_s3_bucket


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
@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """(client, bucket) with localfm pointed at the session's moto server and dummy credentials."""
    bucket = "parity-runs"
    return make_s3_bucket(moto_endpoint, bucket, monkeypatch, tmp_path), bucket
