"""``localfm tune`` trials as Ray tasks: the tuner stays here, the training jobs go to the cluster.

Why plain tasks and not Ray Tune: the tuner already is a complete SageMaker twin (optuna
ask/tell over an SQLite study that resumes after a kill, the Hyperband and median
pruners, the job naming and outputs). Ray Tune would bring a second search loop and a
second checkpoint/resume format to reconcile with that study. What the cluster adds is
only *where* a trial trains, so each trial is one ``ray.remote`` task of one CPU running
the very :func:`~localfm.experiments.tuning.trial.run_trial` a pool process runs, and the
same seed gives the same values and the same model bytes.

A trial never needs the tuner's disk, so it can run on any node:

- **inputs**: the tuner reads the channels (and the holdout, the resampling spec) once and
  ``ray.put``\\ s them; each node fetches that one object;
- **model**: the task returns the ``model.tar.gz`` bytes; the tuner writes
  ``trials/<n>/model.tar.gz`` atomically before it tells the study;
- **per-epoch values** (pruning): the task reports to :class:`StudyReporter`, a small actor
  pinned to the tuner's node, which alone opens the SQLite study besides the tuner.

A task whose worker dies (killed, node lost) is not retried by Ray (``max_retries=0``): it
comes back as a failed trial with the Ray error, and the tune goes on. When the tuner
itself dies, Ray ends its tasks and the actor with it; a rerun resumes from the study as
without a cluster.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import LocalFMError
from ..experiments.tuning.trial import (
    THREAD_ENV,
    TrialData,
    TrialJob,
    TrialOutcome,
    load_inputs,
    make_pruner,
    run_trial,
    storage,
)
from .cluster import connect, parse_cluster


class StudyReporter:
    """The tune's optuna study, for trials on other nodes: ``report`` and ``should_prune`` by trial id.

    Runs as an actor on the tuner's node, so the SQLite file is only ever opened there.
    Calls run one at a time, in the order each trial made them.
    """

    def __init__(self, storage_url: str, study_name: str, pruner: dict[str, Any]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.load_study(study_name=study_name, storage=storage(storage_url),
                                       pruner=make_pruner(pruner))

    def _trial(self, trial_id: int) -> Any:
        import optuna

        return optuna.trial.Trial(self.study, trial_id)

    def report(self, trial_id: int, value: float, step: int) -> None:
        self._trial(trial_id).report(value, step)

    def should_prune(self, trial_id: int) -> bool:
        return bool(self._trial(trial_id).should_prune())


class RemoteTrial:
    """What a trial task reports through: optuna's ``report``/``should_prune``, forwarded to the actor."""

    def __init__(self, reporter: Any, trial_id: int) -> None:
        self.reporter, self.trial_id = reporter, trial_id

    def report(self, value: float, step: int) -> None:
        import ray

        ray.get(self.reporter.report.remote(self.trial_id, value, step))

    def should_prune(self) -> bool:
        import ray

        return ray.get(self.reporter.should_prune.remote(self.trial_id))


def trial_task(job: TrialJob, data: dict[str, Any], reporter: Any) -> TrialOutcome:
    """The body of one trial task (``data`` arrives resolved from the object store)."""
    pruning = RemoteTrial(reporter, job.trial_id) if reporter is not None and job.pruner is not None else None
    return run_trial(job, data=data, pruning=pruning)


def shared_inputs(data: TrialData) -> dict[str, Any]:
    """Everything a trial reads from disk, read here once: the channels, the holdout protocol,
    and the per-epoch negative sampler of ``_local_resample_negatives`` (a closure over arrays)."""
    out = dict(load_inputs(data))
    if data.resample_features is not None:
        from ..data.negatives import epoch_sampler

        out["epoch_data"] = epoch_sampler(data.resample_features)[0]
    return out


def _died(job: TrialJob, start: float, exc: BaseException) -> TrialOutcome:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return TrialOutcome(job.number, "failed", start=start, end=time.time(),
                        error=f"Ray task of the trial died ({type(exc).__name__}): {first}")


def check_cluster(cluster: str) -> None:
    """``cluster`` as :func:`parse_cluster` reads it, less Ray client (``ray://``) addresses.

    Through a client the Ray driver runs on the head node, not here: the reporter actor
    could not be placed beside the SQLite study, so that combination is refused.
    """
    spec = parse_cluster(cluster)
    if spec.address and spec.address.startswith("ray://"):
        raise LocalFMError(f"cluster {cluster!r}: a tune's driver must run on a cluster node (the study's SQLite "
                           "file stays beside it); run it on a node with auto or host:port, not through ray://",
                           param="cluster")


@contextlib.contextmanager
def cluster_pool(cluster: str, data: TrialData, *, storage_url: str, study_name: str,
                 pruner: dict[str, Any] | None) -> Iterator[Callable[[TrialJob], cf.Future]]:
    """Yield ``submit(job) -> Future[TrialOutcome]`` running each job as a Ray task on ``cluster``.

    The caller bounds how many are in flight (MaxParallelTrainingJobs); each task takes one
    CPU and one thread (the env vars a local pool worker gets), so the cluster's CPUs bound
    them too. A task that dies resolves to a failed outcome, never an exception.
    """
    check_cluster(cluster)
    with connect(cluster) as ray:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        reporter = None
        if pruner is not None:
            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            reporter = ray.remote(num_cpus=0, max_restarts=0, scheduling_strategy=here)(StudyReporter).remote(
                storage_url, study_name, pruner)
        inputs = ray.put(shared_inputs(data))
        task = ray.remote(num_cpus=1, max_retries=0,
                          runtime_env={"env_vars": {k: "1" for k in THREAD_ENV}})(trial_task)

        def submit(job: TrialJob) -> cf.Future:
            start = time.time()
            out: cf.Future = cf.Future()

            def resolved(fut: cf.Future) -> None:
                try:
                    out.set_result(fut.result())
                except Exception as exc:  # noqa: BLE001 - a dead worker is a Failed job, not a dead tune
                    out.set_result(_died(job, start, exc))

            task.remote(job, inputs, reporter).future().add_done_callback(resolved)
            return out

        try:
            yield submit
        finally:
            if reporter is not None:
                ray.kill(reporter)
