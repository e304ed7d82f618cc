"""``localfm tune``: a local twin of SageMaker Automatic Model Tuning, driven by optuna.

The search (Bayesian = TPE, Random, Grid, Hyperband = optuna's HyperbandPruner over
epochs) runs in this process with optuna's ask/tell interface; each proposed
configuration is trained by :func:`localfm.experiments.tuning.trial.run_trial` in a
pool of MaxParallelTrainingJobs worker processes, or, with ``cluster``, as that many
Ray tasks at a time on a Ray cluster (:mod:`localfm.scale.tune`); either way this
process keeps the ask/tell loop and the study.

The study lives in SQLite inside the output folder (``DIR/study.db``), so a tune that
is killed resumes where it stopped: finished jobs are kept and not run again; jobs that
were running at the kill are marked failed-interrupted in the study and re-queued with
the same hyperparameters exactly once; the number of jobs that count (completed,
stopped early, failed) stays MaxNumberOfTrainingJobs. Interrupted attempts are not
training jobs of the tuning job and do not appear in trials.csv.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...data.features import FeatureSpace
from ...errors import LocalFMError
from ...fm.hyperparameters import FM_HYPERPARAMETERS
from ...io.atomic import atomic_write
from ...io.channels import read_channel
from ...progress import progress
from . import holdout as ho
from .config import TuningConfig, format_value
from .outputs import write_outputs
from .trial import (
    TrialData,
    TrialJob,
    TrialOutcome,
    limit_threads,
    restore_env,
    run_trial,
    storage,
)

STUDY_FILE = "study.db"
COUNTED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class TuneInputs:
    train: str
    features: str
    validation: str | None = None
    test: str | None = None


@dataclass
class TuneResult:
    out_dir: Path
    jobs: int  # training jobs that count (rows of trials.csv)
    ran_now: int  # trials this invocation ran
    best: dict[str, Any] | None  # TrainingJobName, FinalObjectiveValue, hyperparameters
    failures: list[str]


def _distributions(config: TuningConfig) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for r in config.ranges:
        if r.kind == "categorical":
            out[r.name] = CategoricalDistribution(list(r.values))
        elif r.kind == "integer":
            out[r.name] = IntDistribution(int(r.min_value), int(r.max_value), log=r.scaling == "Logarithmic")
        elif r.scaling == "ReverseLogarithmic":
            # SageMaker: x = 1 - loguniform on (1 - x); optuna samples u = 1 - x on a log scale
            out[r.name] = FloatDistribution(1.0 - r.max_value, 1.0 - r.min_value, log=True)
        else:
            out[r.name] = FloatDistribution(r.min_value, r.max_value, log=r.scaling == "Logarithmic")
    return out


def tuned_values(config: TuningConfig, params: dict[str, Any]) -> dict[str, Any]:
    """optuna's stored params → hyperparameter values (undoing the reverse-log transform)."""
    out = {}
    for r in config.ranges:
        v = params[r.name]
        out[r.name] = 1.0 - v if r.scaling == "ReverseLogarithmic" else v
    return out


def _sampler(config: TuningConfig, existing: int = 0):  # noqa: ANN202 - optuna sampler
    """The strategy's sampler. ``existing``: trials already in the study (a resume).

    A fresh sampler seeded with RandomSeed would replay the configurations the first
    run already proposed; on a resume the seed is derived from RandomSeed and the
    number of trials so far, so the continuation is reproducible and new.
    """
    import optuna

    seed = config.random_seed
    if seed is not None and existing:
        seed = int(np.random.SeedSequence([seed, existing]).generate_state(1)[0])
    if config.strategy == "Grid":

        class Grid(optuna.samplers.GridSampler):
            """The stock sampler ends the study with ``study.stop()`` once the grid is covered,
            which only works inside ``optimize()``; here ask/tell and the job count end it."""

            def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
                return None

        return Grid({r.name: list(r.values) for r in config.ranges}, seed=seed)
    if config.strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Bayesian and Hyperband: TPE (constant_liar keeps parallel proposals apart)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=config.max_parallel > 1)


def _pruner_spec(config: TuningConfig) -> dict[str, Any] | None:
    if config.strategy == "Hyperband":
        return {"kind": "hyperband", "min_resource": config.min_resource or 1,
                "max_resource": epochs_of(config)}
    if config.early_stopping == "Auto":
        return {"kind": "median"}
    return None


def epochs_of(config: TuningConfig) -> int:
    """Epochs of a Hyperband job: MaxResource, else the static epochs (FM default 1)."""
    if config.max_resource is not None:
        return config.max_resource
    return int(config.static.get("epochs", "1"))


def _fingerprint(config: TuningConfig, inputs: TuneInputs, holdout_fraction: float) -> str:
    doc = asdict(config)
    doc.pop("warnings", None)
    doc["inputs"] = {k: (str(Path(v).resolve()) if v else None) for k, v in asdict(inputs).items()}
    doc["holdout_fraction"] = holdout_fraction
    return json.dumps(doc, sort_keys=True, default=str)


def _job_name(config: TuningConfig, out_dir: Path) -> str:
    if config.job_name:
        return config.job_name
    name = "".join(c if c.isalnum() else "-" for c in out_dir.resolve().name).strip("-")[:32]
    return name or "localfm-tune"


def training_job_name(job: str, index: int, number: int) -> str:
    """SageMaker's ``<tuning job>-<3-digit index>-<8 hex>`` naming, stable across resumes."""
    tag = hashlib.sha1(f"{job}:{number}".encode()).hexdigest()[:8]
    return f"{job}-{index:03d}-{tag}"


def _recover(study: Any, searched: Iterable[str]) -> None:
    """Trials left RUNNING by a killed tune: mark failed-interrupted; re-queue once the ones
    that had all their hyperparameters.

    optuna writes a trial's values one ``suggest`` at a time, so a kill inside ``ask`` leaves a
    RUNNING trial with only some of them. That proposal never reached a worker: it is marked
    interrupted and dropped, not retried (re-queueing it would let the sampler fill the rest
    with new values, which is a new configuration, not a retry).
    """
    from optuna.trial import TrialState

    searched = set(searched)
    st = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # attributes first (a finished trial cannot change): if this very step is killed,
        # the worst case is a fresh proposal instead of the retry, never two retries
        first = not t.user_attrs.get("retried")
        proposed = searched <= set(t.params)
        st.set_trial_user_attr(t._trial_id, "interrupted", True)
        st.set_trial_user_attr(t._trial_id, "retried", True)
        if first and proposed:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
        st.set_trial_state_values(t._trial_id, TrialState.FAIL)


def counted_trials(study: Any) -> list[Any]:
    """The training jobs of the tuning job: finished trials that were not interrupted."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name in COUNTED and not t.user_attrs.get("interrupted")]


def tune(
    config: TuningConfig,
    inputs: TuneInputs,
    out_dir: str | Path,
    *,
    holdout_fraction: float = 0.1,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    cluster: str | None = None,
) -> TuneResult:
    """Run (or resume) the tuning job; write the outputs; return the best job.

    ``on_trial`` is called in this process after each finished trial (tests use it).
    ``cluster``: ``local:N``, ``auto`` or a Ray address (:func:`localfm.scale.cluster.connect`):
    the trials run as Ray tasks there instead of in local worker processes.
    """
    import optuna

    if cluster is not None:
        from ...scale.tune import check_cluster

        check_cluster(cluster)  # a bad value fails before any work

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LocalFMError(f"{out_dir}: exists and is not a folder")
    space = FeatureSpace.load(inputs.features)
    feature_dim = int(config.static.get("feature_dim", "0"))
    if feature_dim != space.feature_dim:
        raise LocalFMError(
            f"TrainingJobDefinition.StaticHyperParameters.feature_dim: {feature_dim} but {inputs.features} "
            f"has {space.feature_dim} columns"
        )
    objective = config.objective
    eval_channel = inputs.validation or inputs.test
    if not objective.is_ranking and eval_channel is None:
        raise LocalFMError(f"objective {objective.metric_name} is computed on test data: pass validation or test data")
    out_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"
    job = _job_name(config, out_dir)
    store = storage(url)
    try:
        existing = len(optuna.load_study(study_name=job, storage=store).get_trials(deepcopy=False))
    except KeyError:  # a new tuning job
        existing = 0
    study = optuna.create_study(storage=store, study_name=job, load_if_exists=True,
                                direction="maximize" if objective.maximize else "minimize",
                                sampler=_sampler(config, existing))
    fp = _fingerprint(config, inputs, holdout_fraction)
    known = study.user_attrs.get("localfm_fingerprint")
    if known is None:
        study.set_user_attr("localfm_fingerprint", fp)
    elif known != fp:
        raise LocalFMError(f"{out_dir}: holds a tuning job with another tuning.json or other data; "
                           "resume with the same inputs or use a new output folder")

    holdout_dir = None
    if objective.is_ranking:
        holdout_dir = out_dir / "holdout"
        if not (holdout_dir / ho.SPLIT_FILE).is_file():
            X, y = read_channel(inputs.train, need_labels=True, feature_dim=feature_dim)
            h = ho.carve(X, y, space, predictor_type=config.predictor_type, fraction=holdout_fraction,
                         seed=config.random_seed or 0)
            ho.write(h, space, holdout_dir)
            if _may_resample(config):
                ho.write_resample_inputs(h, space, inputs.features, holdout_dir)
    resample = None
    if _may_resample(config):
        resample = holdout_dir / ho.RESAMPLE_DIR / "features.json" if holdout_dir else Path(inputs.features)

    dists = _distributions(config)
    _recover(study, dists)
    pruner = _pruner_spec(config)
    data = TrialData(train=str(Path(inputs.train).resolve()), features=str(Path(inputs.features).resolve()),
                     feature_dim=feature_dim, eval_channel=str(Path(eval_channel).resolve()) if eval_channel else None,
                     holdout_dir=str(holdout_dir.resolve()) if holdout_dir else None,
                     resample_features=str(resample.resolve()) if resample else None)
    static = dict(config.static)
    if config.strategy == "Hyperband":
        static["epochs"] = str(epochs_of(config))
    remaining = config.max_jobs - len(counted_trials(study))
    failures: list[str] = []
    ran = 0
    started = time.time()
    stop = False
    if remaining > 0:
        if cluster is None:
            pool = _local_pool(config.max_parallel)
        else:
            from ...scale.tune import cluster_pool

            pool = cluster_pool(cluster, data, storage_url=url, study_name=job, pruner=pruner)
        with pool as submit:
            running: dict[cf.Future, Any] = {}
            bar = progress(total=remaining, desc="tune", unit="job")
            submitted = 0
            while running or (submitted < remaining and not stop):
                while len(running) < config.max_parallel and submitted < remaining and not stop:
                    trial = study.ask(dists)
                    hps = {**static, **{k: _fmt(v) for k, v in tuned_values(config, trial.params).items()}}
                    spec = TrialJob(
                        data=data, storage=url, study_name=job, trial_id=trial._trial_id, number=trial.number,
                        hyperparameters=hps, seed=config.random_seed or 0, objective=objective.metric_name,
                        fm_metric=None if objective.is_ranking else objective.fm_metric,
                        ranking=objective.ranking if objective.is_ranking else None, pruner=pruner,
                        maximize=objective.maximize,
                        # a Ray task may run on a node without this disk: it returns the bytes
                        model_path=None if cluster else str(_model_path(out_dir, trial.number).resolve()),
                        parent_pid=None if cluster else os.getpid(),
                    )
                    running[submit(spec)] = trial
                    submitted += 1
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    trial = running.pop(fut)
                    res = fut.result()
                    _keep_artifact(res, out_dir)
                    _tell(study, trial, res)
                    ran += 1
                    if res.error:
                        failures.append(f"trial {res.number}: {res.error}")
                    bar.update(1)
                    if on_trial is not None:
                        on_trial(res)
                    if _target_reached(config, res) or (
                            config.max_runtime_seconds and time.time() - started > config.max_runtime_seconds):
                        stop = True
            bar.close()
    counted = counted_trials(study)
    best = write_outputs(config, study, counted, out_dir, job)
    return TuneResult(out_dir=out_dir, jobs=len(counted), ran_now=ran, best=best, failures=failures)


@contextlib.contextmanager
def _local_pool(workers: int) -> Iterator[Callable[[TrialJob], cf.Future]]:
    """``submit(job) -> Future[TrialOutcome]`` over ``workers`` spawned one-thread processes."""
    env = limit_threads()
    ctx = multiprocessing.get_context("spawn")  # no forked SQLite connections or numba state
    try:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            yield lambda spec: pool.submit(run_trial, spec)
    finally:
        restore_env(env)


def _model_path(out_dir: Path, number: int) -> Path:
    return out_dir / "trials" / str(number) / "model.tar.gz"


def _keep_artifact(res: TrialOutcome, out_dir: Path) -> None:
    """A trial that returned its model (a Ray task) has it written here, atomically."""
    if res.artifact is None:
        return
    path = _model_path(out_dir, res.number)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(res.artifact)
    res.artifact = None


def _may_resample(config: TuningConfig) -> bool:
    """Whether any trial trains with ``_local_resample_negatives`` (static or searched)."""
    row = next(hp for hp in FM_HYPERPARAMETERS if hp.name == "_local_resample_negatives")
    values = [config.static.get(row.name, "false")]
    values += [v for r in config.ranges if r.name == row.name for v in r.values]
    return any(row.convert(v) for v in values)


def _fmt(v: Any) -> str:
    return format_value(v)


def _target_reached(config: TuningConfig, res: TrialOutcome) -> bool:
    if config.target_value is None or res.state != "complete" or res.value is None:
        return False
    return res.value >= config.target_value if config.objective.maximize else res.value <= config.target_value


def _tell(study: Any, trial: Any, res: TrialOutcome) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("start", res.start)
    trial.set_user_attr("end", res.end)
    trial.set_user_attr("epochs", res.epochs)
    if res.value is not None:
        trial.set_user_attr("objective", res.value)
    if res.error:
        trial.set_user_attr("error", res.error[:500])
    if res.state == "complete":
        study.tell(trial, res.value)
    elif res.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
