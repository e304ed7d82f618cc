"""A normal (non-editable) install works away from the repository: README command 1 from a wheel.

The wheel is built from a copy of the source tree (so the build leaves no build/ or
egg-info in the checkout), installed with ``--no-deps`` into a fresh venv that borrows
the heavy dependencies from the running interpreter, and ``localfm demo`` runs from a
folder outside the repository with no PYTHONPATH, so only the installed copy can serve it.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a checkout may hold besides the sources; none of it belongs in a build.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv*", ".mxnet-venv", ".pytest_cache",
    ".hypothesis", "localfm-demo", "out", "fuzz-findings",
)


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003 - subprocess.run options
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_install_runs_the_demo_outside_the_repository(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCES)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, "."], cwd=src)
    (wheel,) = wheels.glob("localfm-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    dataset = sorted(p.name for p in (REPO / "data" / "ml-synthetic").iterdir() if p.is_file())
    assert {f"localfm/_data/ml-synthetic/{name}" for name in dataset} <= names
    assert not any(name.startswith("data/") for name in names)  # package data, not a stray top-level folder

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # pip itself comes from the borrowed site-packages; it installs into the venv's prefix.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([python, "-c",
                  "import sysconfig, localfm\n"
                  "from localfm.data.synthetic import default_dataset_path\n"
                  "print(sysconfig.get_paths()['purelib']); print(localfm.__file__); print(default_dataset_path())"],
                 cwd=elsewhere, env=env).stdout.splitlines()
    site = Path(where[0]).resolve()
    assert site.is_relative_to(venv.resolve()), where
    assert Path(where[1]).resolve().is_relative_to(site), f"localfm imported from {where[1]}, not {site}"
    assert Path(where[2]).resolve() == site / "localfm" / "_data" / "ml-synthetic"

    proc = _run([bindir / "localfm", "--quiet", "demo", "--out", "demo", "--epochs", "2", "-k", "5"],
                cwd=elsewhere, env=env)
    out = elsewhere / "demo"
    assert "== recommend" in proc.stdout
    assert (out / "model" / "model.tar.gz").is_file() and (out / "knn-transform" / "users.protobuf.out").is_file()
    with closing(sqlite3.connect(out / "recommendations.sqlite")) as con:
        assert con.execute("SELECT COUNT(DISTINCT user_id), MAX(rank) FROM recommendations").fetchone() == (300, 5)
