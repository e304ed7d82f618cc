"""``python -m benchmarks.scaling`` at smoke size: the harness itself, not speed (issue 12's scaling run).

It starts a loopback cluster of its own (1 node, 1 CPU) like the full-size run does, so it
checks what a full run relies on: the Ray job stores the single process's rows, and the
results file says how the job was laid out (actors, threads per actor).
"""
from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.slow


def test_scaling_smoke_stores_the_single_process_rows(tmp_path):
    pytest.importorskip("ray", reason="the localfm[ray] extra is not installed")
    from benchmarks.scaling import main

    out = tmp_path / "scaling.json"
    assert main(["--smoke", "--modes", "single,ray1", "--jobs", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["identical_rows"] is True
    from localfm.scale.cluster import WORKER_PRELOAD

    assert report["worker_preload"] == os.environ.get("RAY_preload_python_modules", WORKER_PRELOAD)
    ray = [r for r in report["runs"] if r["mode"] == "ray1"]
    assert len(ray) == 1 and ray[0]["threads_per_actor"] == 1 and ray[0]["workers"] == 1
    assert report["ray_overhead"] == pytest.approx(report["median_seconds"]["ray1"] / report["median_seconds"]["single"] - 1)
    assert all(len(r["load_average_1m"]) == 2 for r in report["runs"])


def test_unknown_mode_exits_2_before_measuring(capsys):
    from benchmarks.scaling import main

    with pytest.raises(SystemExit) as info:
        main(["--modes", "single,ray3"])
    assert info.value.code == 2 and "--modes: unknown mode 'ray3'" in capsys.readouterr().err


def test_no_preload_runs_the_cluster_without_it_and_puts_the_callers_setting_back(tmp_path, monkeypatch):
    """``--no-preload`` is the A/B's other arm: the clusters get an empty module list even when the
    caller set one, the results file says so, and the caller's value is back afterwards."""
    pytest.importorskip("ray", reason="the localfm[ray] extra is not installed")
    from benchmarks.scaling import main

    monkeypatch.setenv("RAY_preload_python_modules", "json")
    out = tmp_path / "scaling.json"
    assert main(["--smoke", "--modes", "ray1", "--jobs", "1", "--no-preload", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["worker_preload"] == ""
    assert os.environ["RAY_preload_python_modules"] == "json"
