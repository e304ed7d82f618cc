"""Cluster spelling, the no-Ray-unless-asked rule, and input checks that run before any cluster."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from tests.recommend.recommend_fakes import make_space, random_weights

from localfm.errors import LocalFMError
from localfm.recommend.vectors import repackage
from localfm.scale import ClusterSpec, parse_cluster, recommend_on_cluster
from tests.fresh_python import run_python

REPO = Path(__file__).resolve().parents[2]


def test_parse_cluster_spellings():
    assert parse_cluster("local:3") == ClusterSpec("local", cpus=3)
    assert parse_cluster("auto") == ClusterSpec("auto", address="auto")
    assert parse_cluster("10.0.0.5:6379") == ClusterSpec("address", address="10.0.0.5:6379")
    assert parse_cluster("ray://head.example:10001") == ClusterSpec("address", address="ray://head.example:10001")
    for bad in ("local:0", "local:x", "local", "", "head", "http://x:1/y"):
        with pytest.raises(LocalFMError, match="^cluster: expected|^cluster: local:N"):
            parse_cluster(bad)


def test_importing_localfm_does_not_import_ray():
    code = ("import sys, localfm, localfm.recommend, localfm.recommend.recommend, localfm.scale, localfm.scale.topx, "
            "localfm.cli, localfm.cli.recommend; print('ray' in sys.modules, 'ray.data' in sys.modules)")
    assert run_python(code, timeout=120).split() == ["False", "False"]


@pytest.fixture(scope="module")
def rep():
    space = make_space(30, 40, su=2, si=2, seed=3)
    return repackage(random_weights(space.feature_dim, 4, seed=3), space)


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "wide"}, "^layout: expected one of flat, nested"),
    ({"layout": "nested", "target": "postgresql://u@h/db"}, "nested layout writes a directory"),
    ({"target": "r.csv"}, "^target r.csv: expected"),
    ({"batch_size": 0}, "^batch_size: expected a positive integer"),
    ({"precision": "fp8"}, "^precision: expected one of"),
    ({"shard_users": -1}, "^shard_users: expected a positive integer"),
    ({"max_retries": -1}, "^max_retries: expected an integer >= 0"),
    ({"workers": 0, "cluster": "local:x"}, "^cluster: expected local:N"),
    ({"k": 0}, "^k: expected a positive integer"),
    ({"device": "cuda"}, "^device: actors rank on their CPUs; 'cuda' is for the single process"),
    ({"device": " CUDA:1"}, "^device: actors rank on their CPUs; 'cuda:1' is for the single process"),
    ({"device": "gpu"}, "^device: expected cpu, cuda, cuda:N or mps, got 'gpu'"),
])
def test_bad_input_fails_before_any_cluster(rep, tmp_path, kwargs, message):
    args = {"k": 3, "target": str(tmp_path / "r.parquet"), "cluster": "local:1", **kwargs}
    with pytest.raises(LocalFMError, match=message):
        recommend_on_cluster(rep, **args)
    assert not (tmp_path / "r.parquet").exists()


def test_resume_refuses_a_staged_job_with_other_inputs(rep, tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    (work / "manifest.json").write_text(json.dumps({"version": 1, "fingerprint": "0" * 64, "done": [], "parts": {}}))
    with pytest.raises(LocalFMError, match="different inputs or settings; rerun without resume"):
        recommend_on_cluster(rep, k=3, target=str(tmp_path / "r.parquet"), cluster="local:1", work_dir=work,
                             resume=True)
    assert json.loads((work / "manifest.json").read_text())["fingerprint"] == "0" * 64


def test_seen_shape_is_checked(rep, tmp_path):
    import scipy.sparse as sp

    with pytest.raises(LocalFMError, match=r"^seen: shape \(2, 2\), expected \(30, 40\)"):
        recommend_on_cluster(rep, k=3, target=str(tmp_path / "r.parquet"), cluster="local:1",
                             seen=sp.csr_matrix(np.zeros((2, 2))))


def test_sqlite_is_for_small_jobs(rep, tmp_path, monkeypatch):
    import localfm.scale.topx as scale_topx

    monkeypatch.setattr(scale_topx, "SQLITE_MAX_ROWS", 30 * 3 - 1)
    with pytest.raises(LocalFMError, match="SQLite is for small jobs .* makes up to 90"):
        recommend_on_cluster(rep, k=3, target=str(tmp_path / "r.sqlite"), cluster="local:1")
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.slow
def test_local_cluster_leaves_nothing_in_ray_default_dirs(tmp_path):
    """``local:N`` keeps Ray's sessions and auth token in its own temp dir and removes it."""
    home = tmp_path / "home"
    home.mkdir()
    tmp_ray_before = os.path.exists("/tmp/ray")
    code = (
        "import os, json\n"
        "from localfm.scale.cluster import connect\n"
        "with connect('local:1') as ray:\n"
        "    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42\n"
        "    inside = os.environ['RAY_TMPDIR']\n"
        "    import sys\n"
        "    probe = ray.remote(lambda: [m in sys.modules for m in ('ray.data', 'localfm.recommend._heapscan')])\n"
        "    print(json.dumps({'dir': inside, 'existed': os.path.isdir(inside), 'preloaded': ray.get(probe.remote())}))\n"
        "print(json.dumps({'after': os.environ.get('RAY_TMPDIR'),\n"
        "                  'preload_after': os.environ.get('RAY_preload_python_modules')}))\n"
    )
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("RAY_TMPDIR", None)
    lines = [json.loads(line) for line in run_python(code, env=env).splitlines() if line.startswith("{")]
    assert lines[0]["existed"] and lines[0]["dir"].startswith("/tmp/lfr")
    assert not os.path.exists(lines[0]["dir"])  # removed on exit
    assert lines[1]["after"] is None and lines[1]["preload_after"] is None  # environment restored
    # The workers imported Ray Data and the ranking engine before taking work (WORKER_PRELOAD):
    # the probe itself imports neither.
    assert lines[0]["preloaded"] == [True, True]
    assert not (home / ".ray").exists()  # no auth token in ~/.ray
    if not tmp_ray_before:
        assert not os.path.exists("/tmp/ray")


def _forwarded(capsys, tag: str, seconds: float = 60.0) -> tuple[str, str]:
    """What the driver printed (stdout, stderr) until ``tag``, forwarded by Ray from a worker, shows up."""
    deadline = time.monotonic() + seconds
    out = err = ""
    while time.monotonic() < deadline:
        o, e = capsys.readouterr()
        out, err = out + o, err + e
        if tag in out or tag in err:
            return out, err
        time.sleep(0.1)
    pytest.fail(f"Ray did not forward {tag!r} to the driver within {seconds:.0f} s")


def test_worker_output_is_forwarded_to_stderr_while_localfm_holds_the_cluster(ray_cluster, capsys):
    """Ray prints a worker's stdout lines (and notices like "(raylet) Task ... submit failed") on
    the driver's stdout, where localfm's commands write their JSON summaries: a CI run's
    ``recommend --ray`` summary once began with such a notice. Inside :func:`connect` they go to
    stderr; outside it, Ray's own routing is back."""
    import ray

    from localfm.scale.cluster import connect

    @ray.remote(num_cpus=0)
    def say(tag: str) -> str:
        print(tag, flush=True)
        return tag

    with connect(ray_cluster.address):
        ray.get(say.remote("marker-inside-connect"))
        out, err = _forwarded(capsys, "marker-inside-connect")
    assert "marker-inside-connect" in err and "marker-inside-connect" not in out
    ray.get(say.remote("marker-after-connect"))
    out, err = _forwarded(capsys, "marker-after-connect")
    assert "marker-after-connect" in out
