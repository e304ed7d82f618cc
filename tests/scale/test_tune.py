"""``localfm tune --ray``: trials as Ray tasks on the loopback two-node cluster.

The same seed gives the same jobs (proposals, objective values, model bytes) as the local
pool; a trial needs nothing from the tuner's disk; pruning reports reach the study; a
killed worker is one Failed job; a killed tune resumes on the cluster.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from localfm.cli import main as cli_main
from localfm.errors import LocalFMError
from localfm.experiments.tuning import parse_tuning_config, tune
from localfm.experiments.tuning.trial import TrialData, TrialJob, load_inputs, run_trial
from tests.experiments.test_tuning import body, inputs, read_csv
from tests.experiments.test_tuning_resume import _config, kill_mid_tune_then_resume
from tests.fresh_python import run_python

REPO = Path(__file__).resolve().parents[2]
TIMING = ("TrainingStartTime", "TrainingEndTime", "TrainingElapsedTimeSeconds")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The embedded synthetic MovieLens as implicit feedback (as tests/experiments/test_tuning.py)."""
    out = tmp_path_factory.mktemp("ray-tune") / "data"
    assert cli_main(["--quiet", "prepare", "movielens", "--split", "ua", "--label", "implicit", "--negatives", "4",
                     "--out", str(out)]) == 0
    return out


def _jobs(out: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_csv(out / "trials.csv")]


# ------------------------------------------------------------------ no cluster needed


def test_without_ray_flag_nothing_imports_ray():
    code = ("import sys; import localfm.cli.tune, localfm.experiments.tuning.runner, localfm.scale.tune; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_python(code, env=env, timeout=120)  # the child asserts


def test_bad_cluster_values_fail_before_any_work(data, tmp_path):
    config = parse_tuning_config(body("Random", jobs=1))
    with pytest.raises(LocalFMError, match="ray://") as err:
        tune(config, inputs(data), tmp_path / "client", cluster="ray://10.0.0.1:10001")
    assert err.value.param == "cluster"
    with pytest.raises(LocalFMError, match="local:N"):
        tune(config, inputs(data), tmp_path / "bad", cluster="local:x")
    assert not (tmp_path / "client").exists() and not (tmp_path / "bad").exists()
    # the CLI names the flag
    assert cli_main(["--quiet", "tune", "--train", str(data / "train.protobuf"), "--features",
                     str(data / "features.json"), "--config", str(_config(tmp_path / "t.json")),
                     "--out", str(tmp_path / "cli"), "--ray", "ray://10.0.0.1:10001"]) == 2


class _Recorder:
    """A stand-in for the reporter actor: optuna's report/should_prune, recorded."""

    def __init__(self, prune_at: int) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_at


def test_a_trial_needs_nothing_from_the_tuners_disk(data, tmp_path):
    """Given loaded inputs and a reporter, a trial reads no path, opens no study, writes no file."""
    real = TrialData(train=str(data / "train.protobuf"), features=str(data / "features.json"), feature_dim=700,
                     eval_channel=str(data / "test.protobuf"), holdout_dir=None)
    loaded = dict(load_inputs(real))
    gone = tmp_path / "elsewhere"  # what another node sees of the tuner's disk: nothing
    data_there = TrialData(train=str(gone / "train.protobuf"), features=str(gone / "features.json"), feature_dim=700,
                           eval_channel=str(gone / "test.protobuf"), holdout_dir=None)
    job = TrialJob(data=data_there, storage=f"sqlite:///{gone / 'study.db'}", study_name="job", trial_id=1, number=0,
                   hyperparameters={"feature_dim": "700", "num_factors": "4", "predictor_type": "binary_classifier",
                                    "mini_batch_size": "500", "epochs": "4", "factors_lr": "0.001"},
                   seed=7, objective="test:binary_classification_cross_entropy",
                   fm_metric="binary_classification_cross_entropy", ranking=None,
                   pruner={"kind": "median"}, maximize=False, model_path=None, parent_pid=None)
    rec = _Recorder(prune_at=2)
    res = run_trial(job, data=loaded, pruning=rec)
    assert res.error is None and res.state == "pruned"
    assert [s for _, s in rec.reports] == [1, 2] and res.intermediate == [v for v, _ in rec.reports]
    assert res.artifact[:2] == b"\x1f\x8b"  # the model.tar.gz bytes came back (gzip)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folder of the missing paths

    # the same job writing to a path instead gives those exact bytes
    local = TrialJob(**{**job.__dict__, "pruner": None, "model_path": str(tmp_path / "m" / "model.tar.gz")})
    again = run_trial(local, data=loaded)
    back = run_trial(TrialJob(**{**local.__dict__, "model_path": None}), data=loaded)
    assert again.artifact is None and (tmp_path / "m" / "model.tar.gz").read_bytes() == back.artifact


# ------------------------------------------------------------------ on the loopback cluster


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["test", "ranking"])
def test_same_jobs_and_models_as_the_local_pool(ray_cluster, data, tmp_path, objective):
    """``ranking``: the holdout protocol and the per-epoch negative sampler travel to the tasks too."""
    if objective == "test":
        doc, jobs_n, given = body("Random", jobs=3, parallel=2), 3, inputs(data)
    else:
        doc = body("Random", jobs=2, parallel=2, metric="validation:ndcg@10",
                   static={"_local_resample_negatives": "true"})
        jobs_n, given = 2, inputs(data, test=False)
    here = tune(parse_tuning_config(doc), given, tmp_path / "local" / "job")
    there = tune(parse_tuning_config(doc), given, tmp_path / "ray" / "job", cluster=ray_cluster.address)
    assert not here.failures and not there.failures and there.jobs == there.ran_now == jobs_n
    jobs = _jobs(tmp_path / "ray" / "job")
    assert jobs == _jobs(tmp_path / "local" / "job")  # same proposals, names, objective values
    assert {r["TrainingJobStatus"] for r in jobs} == {"Completed"} and len(jobs) == jobs_n
    for n in range(jobs_n):  # the tuner wrote each returned model: byte for byte the local one
        ray_model = tmp_path / "ray" / "job" / "trials" / str(n) / "model.tar.gz"
        assert ray_model.read_bytes() == (tmp_path / "local" / "job" / "trials" / str(n) / "model.tar.gz").read_bytes()
    assert (tmp_path / "ray" / "job" / "best" / "model.tar.gz").read_bytes() == (
        tmp_path / "local" / "job" / "best" / "model.tar.gz").read_bytes()


@pytest.mark.slow
def test_hyperband_reports_reach_the_study_from_the_cluster(ray_cluster, data, tmp_path):
    import optuna

    # One job at a time: Hyperband's decisions then do not depend on which of two running jobs
    # reports first (with 2 in parallel, whether any job is stopped varied from run to run).
    doc = body("Hyperband", jobs=6, parallel=1, metric="test:binary_classification_cross_entropy",
               ranges={"ContinuousParameterRanges": [
                   {"Name": "factors_lr", "MinValue": "0.00001", "MaxValue": "0.01", "ScalingType": "Logarithmic"},
                   {"Name": "linear_lr", "MinValue": "0.00001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}]},
               StrategyConfig={"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}})
    res = tune(parse_tuning_config(doc), inputs(data), tmp_path / "hb", cluster=ray_cluster.address)
    assert not res.failures and res.jobs == 6
    study = optuna.load_study(study_name="hb", storage=f"sqlite:///{tmp_path / 'hb' / 'study.db'}")
    trials = study.get_trials()
    # every job's per-epoch values are in the tuner's study, and Hyperband stopped some early
    assert all(t.intermediate_values for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete and all(sorted(t.intermediate_values) == list(range(1, 10)) for t in complete)
    stopped = [t for t in trials if t.state.name == "PRUNED"]
    assert stopped and all(len(t.intermediate_values) < 9 for t in stopped)
    assert {r["TrainingJobStatus"] for r in read_csv(tmp_path / "hb" / "trials.csv")} == {"Completed", "Stopped"}


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _trial_workers() -> list[int]:
    """This test session's Ray workers running a trial task right now (their title says so)."""
    found = []
    for pid in _children(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::trial_task"):
            found.append(pid)
    return found


@pytest.mark.slow
def test_killed_trial_worker_is_a_failed_job_and_the_tune_goes_on(ray_cluster, data, tmp_path):
    import optuna

    doc = body("Random", jobs=3, parallel=2, ranges={
        "ContinuousParameterRanges": [
            {"Name": "factors_lr", "MinValue": "0.0001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}],
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "20", "MaxValue": "30"}]})
    killed: list[int] = []
    finished = threading.Event()

    def killer() -> None:
        while not finished.is_set() and not killed:
            for pid in _trial_workers():
                os.kill(pid, signal.SIGKILL)  # a worker process this test's cluster started
                killed.append(pid)
                break
            time.sleep(0.2)

    watch = threading.Thread(target=killer, daemon=True)
    watch.start()
    try:
        res = tune(parse_tuning_config(doc), inputs(data), tmp_path / "job", cluster=ray_cluster.address)
    finally:
        finished.set()
        watch.join()
    assert killed, "no trial task was seen running"
    assert res.jobs == res.ran_now == 3 and len(res.failures) == 1
    assert "Ray task of the trial died" in res.failures[0]
    rows = read_csv(tmp_path / "job" / "trials.csv")
    assert sorted(r["TrainingJobStatus"] for r in rows) == ["Completed", "Completed", "Failed"]
    study = optuna.load_study(study_name="job", storage=f"sqlite:///{tmp_path / 'job' / 'study.db'}")
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 1 and "died" in failed[0].user_attrs["error"]
    assert not (tmp_path / "job" / "trials" / str(failed[0].number) / "model.tar.gz").exists()
    done = [t.number for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert all((tmp_path / "job" / "trials" / str(n) / "model.tar.gz").is_file() for n in done)


@pytest.mark.slow
def test_sigkill_mid_tune_on_the_cluster_then_resume(ray_cluster, tmp_path):
    """The tuner (the Ray driver) killed mid-run; the same command again finishes the job on the cluster."""
    _, counted, _ = kill_mid_tune_then_resume(tmp_path, "--ray", ray_cluster.address)
    out = tmp_path / "job"
    assert all((out / "trials" / str(t.number) / "model.tar.gz").is_file() for t in counted)
    assert len(read_csv(out / "trials.csv")) == 5

