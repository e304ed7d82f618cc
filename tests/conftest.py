"""Shared test fixtures.

Real team material lives in ../shared (read-only; never copied into the repo).
Tests that need it use the ``shared_dir`` / ``ml100k_dir`` fixtures, which skip
cleanly with a reason when it is absent.
"""
from __future__ import annotations

import os
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
