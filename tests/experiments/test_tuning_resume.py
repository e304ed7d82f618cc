"""A tune killed with SIGKILL mid-run and started again loses no training job and repeats none."""
from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localfm.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
JOBS = 5
SEARCHED = {"factors_lr", "linear_wd", "epochs"}


def _config(path: Path) -> Path:
    doc = {
        "HyperParameterTuningJobConfig": {
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "test:binary_classification_accuracy"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": JOBS, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {
                "ContinuousParameterRanges": [
                    {"Name": "factors_lr", "MinValue": "0.0001", "MaxValue": "0.01", "ScalingType": "Logarithmic"},
                    {"Name": "linear_wd", "MinValue": "0.00001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}],
                "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "15", "MaxValue": "30"}],
            },
            "RandomSeed": 5,
        },
        "TrainingJobDefinition": {"StaticHyperParameters": {
            "feature_dim": "700", "num_factors": "8", "predictor_type": "binary_classifier", "mini_batch_size": "100"}},
    }
    path.write_text(json.dumps(doc))
    return path


def _states(db: Path) -> list[tuple[int, str]]:
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return list(con.execute("SELECT number, state FROM trials ORDER BY number"))
    except sqlite3.OperationalError:  # tables not created yet
        return []


def kill_mid_tune_then_resume(tmp_path: Path, *extra: str) -> tuple[list, list, subprocess.CompletedProcess]:
    """Start ``localfm tune`` (plus ``extra`` arguments), SIGKILL it once a job has finished and
    another is running, run the same command again, and check that it lost and repeated nothing.

    Returns (every trial after the rerun, the trials that count as jobs, the rerun). Shared by
    the local pool test here and the Ray one in tests/scale/test_tune.py.
    """
    import optuna

    data = tmp_path / "data"
    assert cli_main(["--quiet", "prepare", "movielens", "--split", "ua", "--label", "binary:4", "--out", str(data)]) == 0
    out = tmp_path / "job"
    cmd = [sys.executable, "-m", "localfm", "--quiet", "tune", "--train", str(data / "train.protobuf"),
           "--features", str(data / "features.json"), "--test", str(data / "test.protobuf"),
           "--config", str(_config(tmp_path / "tuning.json")), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # a Ray fixture's RAY_* settings are in os.environ
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    try:
        while True:
            states = _states(out / "study.db")
            if any(s == "COMPLETE" for _, s in states) and any(s == "RUNNING" for _, s in states):
                break
            assert proc.poll() is None, f"tune ended before the kill: {proc.stderr.read().decode()}"
            assert time.time() < deadline, "no trial completed in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the tuner and its workers (or Ray tasks), mid-run
        proc.wait()
    assert not (out / "trials.csv").exists()  # outputs land only at the end

    storage = f"sqlite:///{out / 'study.db'}"
    before = optuna.load_study(study_name="job", storage=storage).get_trials()
    done_before = {t.number: (t.params, t.value) for t in before if t.state.name == "COMPLETE"}
    running_before = {t.number: t.params for t in before if t.state.name == "RUNNING"}
    assert done_before and running_before
    mtimes = {n: (out / "trials" / str(n) / "model.tar.gz").stat().st_mtime_ns for n in done_before}

    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    after = optuna.load_study(study_name="job", storage=storage).get_trials()
    by_number = {t.number: t for t in after}

    # finished jobs kept as they were, not trained again
    for n, (params, value) in done_before.items():
        assert by_number[n].state.name == "COMPLETE" and by_number[n].params == params and by_number[n].value == value
        assert (out / "trials" / str(n) / "model.tar.gz").stat().st_mtime_ns == mtimes[n]
    # jobs running at the kill: failed-interrupted, each retried exactly once with its own
    # hyperparameters; a proposal killed half-sampled (inside ask) never ran and is not retried
    for n, params in running_before.items():
        assert by_number[n].state.name == "FAIL" and by_number[n].user_attrs["interrupted"] is True
        retries = [t for t in after if t.user_attrs.get("retry_of") == n]
        if set(params) == SEARCHED:
            assert len(retries) == 1 and retries[0].params == params and retries[0].state.name == "COMPLETE"
        else:
            assert retries == []
    counted = [t for t in after if not t.user_attrs.get("interrupted")]
    assert len(counted) == JOBS and all(t.state.name == "COMPLETE" for t in counted)
    assert f"{JOBS} training jobs" in rerun.stdout
    return after, counted, rerun


@pytest.mark.slow
def test_sigkill_mid_tune_then_resume_loses_and_repeats_nothing(tmp_path):
    _, counted, _ = kill_mid_tune_then_resume(tmp_path)
    keys = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(keys)) == JOBS  # no configuration trained twice

    with open(tmp_path / "job" / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == JOBS and len({r["TrainingJobName"] for r in rows}) == JOBS
    csv_keys = {(float(r["factors_lr"]), float(r["linear_wd"]), int(r["epochs"])) for r in rows}
    assert csv_keys == {(t.params["factors_lr"], t.params["linear_wd"], t.params["epochs"]) for t in counted}


def test_recover_retries_whole_proposals_and_drops_half_sampled_ones(tmp_path):
    """A kill inside ``ask`` leaves a RUNNING trial with some values only: it is not retried."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from localfm.experiments.tuning.runner import _recover

    dists = {"factors_lr": FloatDistribution(1e-4, 1e-2, log=True), "epochs": IntDistribution(15, 30)}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="job")
    whole = study.ask(dists)
    half = study.ask()
    half.suggest_float("factors_lr", 1e-4, 1e-2, log=True)
    _recover(study, dists)
    _recover(study, dists)  # a second resume retries nothing again

    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials[:2]] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["interrupted"] for t in trials[:2])
    queued = trials[2:]
    assert len(queued) == 1 and queued[0].state.name == "WAITING"
    assert queued[0].user_attrs["retry_of"] == whole.number and queued[0].system_attrs["fixed_params"] == whole.params
    assert half.number not in {t.user_attrs.get("retry_of") for t in queued}
