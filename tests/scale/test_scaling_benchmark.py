"""``python -m benchmarks.scaling`` at smoke size: the harness itself, not speed (issue 12's scaling run).

It starts a loopback cluster of its own (1 node, 1 CPU) like the full-size run does, so it
checks what a full run relies on: the Ray job stores the single process's rows, and the
results file says how the job was laid out (actors, threads per actor).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.fresh_python import run_python

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_scaling_smoke_stores_the_single_process_rows(tmp_path):
    """In a child process: the benchmark starts and stops its own Ray, which must not meet the
    session's loopback cluster (``ray_cluster``) that another test of this worker may hold."""
    pytest.importorskip("ray", reason="the localfm[ray] extra is not installed")
    out = tmp_path / "scaling.json"
    run_python("import sys\nfrom benchmarks.scaling import main\nsys.exit(main(sys.argv[1:]))",
               "--smoke", "--modes", "single,ray1", "--jobs", "1", "--out", str(out),
               env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
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


def test_no_preload_runs_the_cluster_without_it_and_puts_the_callers_setting_back(tmp_path):
    """``--no-preload`` is the A/B's other arm: the clusters get an empty module list even when the
    caller set one, the results file says so, and the caller's value is back afterwards. In a child
    process, as the smoke test above."""
    pytest.importorskip("ray", reason="the localfm[ray] extra is not installed")
    code = ("import json, os, sys\n"
            "from benchmarks.scaling import main\n"
            "code = main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, 'after': os.environ.get('RAY_preload_python_modules')}))\n")
    out = tmp_path / "scaling.json"
    child = run_python(code, "--smoke", "--modes", "ray1", "--jobs", "1", "--no-preload", "--out", str(out),
                       env={**os.environ, "PYTHONPATH": str(REPO), "RAY_preload_python_modules": "json"},
                       timeout=600)
    assert json.loads(child.splitlines()[-1]) == {"code": 0, "after": "json"}
    assert json.loads(out.read_text())["worker_preload"] == ""
