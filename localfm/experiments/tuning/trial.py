"""One training job of a tune, run in a worker process.

Each trial is a plain FM training run (``FactorizationMachine.fit``) on the tune's
training rows, scored on the objective at the end. Workers are separate processes
(the trainer holds the GIL in places) started by the runner, each limited to one
thread, so MaxParallelTrainingJobs trials use that many cores and no more. The data a
trial needs is read once per worker process and reused by its later trials.

With pruning on (Hyperband, or early stopping Auto) the trial reports a value every
epoch to the optuna study in SQLite and stops when the pruner says so, through the
FM's ``on_epoch`` hook. A worker whose tuner was killed stops at the next epoch
instead of writing to a study that has moved on.

On a Ray cluster (:mod:`localfm.scale.tune`) the same :func:`run_trial` runs on any node
without the tuner's disk: it is handed the inputs already loaded (``data``), reports
through ``pruning`` (an object with optuna's ``report``/``should_prune``) instead of
opening the SQLite study, and returns the artifact bytes (``model_path`` None) for the
tuner to write.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data.features import FeatureSpace
from ...data.negatives import epoch_sampler
from ...errors import LocalFMError
from ...fm.model import FactorizationMachine
from ...io.channels import read_channel
from ...progress import set_quiet
from ..metrics import ranking_metrics
from ..protocol import load_protocol, rank_model
from . import holdout as ho

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class TrialData:
    """Where a trial's inputs are; identical for every trial of a tune (the cache key)."""

    train: str
    features: str
    feature_dim: int
    eval_channel: str | None  # --validation or --test, for the cloud objectives
    holdout_dir: str | None  # for the ranking objectives
    resample_features: str | None = None  # features.json for _local_resample_negatives (holdout-aware copy)


@dataclass(frozen=True)
class TrialJob:
    data: TrialData
    storage: str
    study_name: str
    trial_id: int
    number: int
    hyperparameters: dict[str, str]
    seed: int
    objective: str  # MetricName
    fm_metric: str | None  # cloud objective: the localfm.fm.metrics name
    ranking: tuple[str, int] | None  # ranking objective: (metric, K)
    pruner: dict[str, Any] | None  # None: no per-epoch reports
    maximize: bool
    model_path: str | None  # None: return the model.tar.gz bytes in TrialOutcome.artifact
    parent_pid: int | None  # the tuner's pid (a pool worker stops when it is gone); None: not a child


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete, pruned, failed
    value: float | None = None
    start: float = 0.0
    end: float = 0.0
    epochs: int = 0
    error: str | None = None
    intermediate: list[float] = field(default_factory=list)
    artifact: bytes | None = None  # model.tar.gz when the job's model_path is None


_cache: dict[TrialData, dict[str, Any]] = {}


def load_inputs(data: TrialData) -> dict[str, Any]:
    """The arrays every trial of a tune trains and scores on (cached per process)."""
    if data in _cache:
        return _cache[data]

    X, y = read_channel(data.train, need_labels=True, feature_dim=data.feature_dim)
    out: dict[str, Any] = {"X": X, "y": y}
    if data.eval_channel is not None:
        out["X_eval"], out["y_eval"] = read_channel(data.eval_channel, need_labels=True, feature_dim=data.feature_dim)
    if data.holdout_dir is not None:
        h = ho.load_split(data.holdout_dir)
        out["X"], out["y"] = X[h["keep"]], y[h["keep"]]
        out["X_val"], out["y_val"] = h["val_rows"], h["val_labels"]
        space = FeatureSpace.load(data.features)
        out["protocol"] = load_protocol(space, Path(data.holdout_dir) / ho.TRAIN_FILE,
                                        Path(data.holdout_dir) / ho.HELD_OUT_FILE, relevant_min_rating=1.0)
    _cache.clear()  # one tune per worker process: keep only the current inputs
    _cache[data] = out
    return out


def make_pruner(spec: dict[str, Any] | None):  # noqa: ANN201 - optuna pruner
    """The pruner of a tune, rebuilt identically in every process from a plain dict."""
    import optuna

    if spec is None:
        return optuna.pruners.NopPruner()
    if spec["kind"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec["min_resource"], max_resource=spec["max_resource"],
                                              reduction_factor=3)
    # SageMaker's Auto early stopping is a median stopping rule over earlier jobs' curves
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def ranking_value(model: Any, protocol: Any, metric: str, k: int) -> float:
    """The holdout ranking metric of a trained model (no bootstrap: only the mean is needed)."""
    rec = rank_model(model, protocol, k)
    return float(ranking_metrics(rec, protocol.relevant, [k], protocol.n_items, bootstrap=0)[k][metric].value)


def _intermediate(job: TrialJob, metrics: dict[str, float], predictor_type: str) -> float:
    """The per-epoch value the pruner compares, oriented like the study's objective."""
    if job.fm_metric is not None:
        return float(metrics[f"validation:{job.fm_metric}"])
    # ranking objective (maximised): negative holdout loss, larger = better
    key = "binary_classification_cross_entropy" if predictor_type == "binary_classifier" else "rmse"
    return -float(metrics[f"validation:{key}"])


def run_trial(job: TrialJob, *, data: dict[str, Any] | None = None, pruning: Any = None) -> TrialOutcome:
    """Train, score and save one trial; never raises (failures come back as an outcome).

    ``data``: the :func:`load_inputs` dict, when the caller has it (else read from the
    job's paths). ``pruning``: where per-epoch values go when the job has a pruner, an
    object with ``report(value, step)`` and ``should_prune()`` (else the job's SQLite study).
    """
    set_quiet(True)  # one bar for the tune (in the tuner process), none per trial
    start = time.time()
    outcome = TrialOutcome(job.number, "failed", start=start)
    try:
        _run(job, outcome, data, pruning)
    except LocalFMError as exc:
        outcome.state, outcome.error = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - a crashing trial is a Failed job, not a crashed tune
        outcome.state = "failed"
        outcome.error = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3).splitlines()[-2].strip()}"
    outcome.end = time.time()
    return outcome


def _run(job: TrialJob, outcome: TrialOutcome, data: dict[str, Any] | None, pruning: Any) -> None:
    model = FactorizationMachine(seed=job.seed, **job.hyperparameters)
    hp = model.check_params()  # a bad combination fails before any data is read
    if data is None:
        data = load_inputs(job.data)
    ptype = hp["predictor_type"]
    trial = None
    if job.pruner is not None and pruning is not None:
        trial = pruning
    elif job.pruner is not None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=job.study_name, storage=storage(job.storage),
                                  pruner=make_pruner(job.pruner))
        trial = optuna.trial.Trial(study, job.trial_id)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        outcome.epochs = epoch + 1
        if job.parent_pid is not None and os.getppid() != job.parent_pid:  # the tuner is gone: stop without touching the study
            os._exit(3)
        if trial is None:
            return False
        value = _intermediate(job, metrics, ptype)
        outcome.intermediate.append(value)
        trial.report(value, epoch + 1)
        if epoch + 1 < hp["epochs"] and trial.should_prune():  # the last epoch completes the job
            outcome.state = "pruned"
            return True
        return False

    epoch_data = None
    if hp["_local_resample_negatives"]:
        if job.data.resample_features is None:
            raise LocalFMError("hyperparameter '_local_resample_negatives': no prepared implicit-feedback folder")
        if "epoch_data" not in data:
            data["epoch_data"] = epoch_sampler(job.data.resample_features)[0]
        epoch_data = data["epoch_data"]
    X_val = y_val = None
    if trial is not None:
        X_val, y_val = (data["X_eval"], data["y_eval"]) if job.fm_metric else (data["X_val"], data["y_val"])
    model.fit(data["X"], data["y"], X_val=X_val, y_val=y_val, epoch_data=epoch_data, on_epoch=on_epoch)
    if job.fm_metric is not None:
        value = model.score(data["X_eval"], data["y_eval"])[job.fm_metric]
    else:
        metric, k = job.ranking  # type: ignore[misc]
        value = ranking_value(model, data["protocol"], metric, k)
    if not np.isfinite(value):
        raise LocalFMError(f"objective {job.objective} is not finite ({value!r}): the training diverged")
    if job.model_path is None:
        with tempfile.TemporaryDirectory(prefix="localfm-trial") as tmp:  # save()'s exact bytes
            model.save(Path(tmp) / "model.tar.gz")
            outcome.artifact = (Path(tmp) / "model.tar.gz").read_bytes()
    else:
        Path(job.model_path).parent.mkdir(parents=True, exist_ok=True)
        model.save(job.model_path)
    outcome.value = float(value)
    if outcome.state != "pruned":
        outcome.state = "complete"


def storage(url: str):  # noqa: ANN201 - optuna RDBStorage
    """SQLite storage that waits for the other processes' writes instead of failing."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def limit_threads() -> dict[str, str | None]:
    """Set one-thread env vars (inherited by worker processes); returns what to restore."""
    old = {k: os.environ.get(k) for k in THREAD_ENV}
    for k in THREAD_ENV:
        os.environ[k] = "1"
    return old


def restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
