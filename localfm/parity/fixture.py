"""Whole parity pipelines: a recorded run folder, or a training run, against localfm.

:func:`compare_fixture` is what ``localfm parity fixture DIR`` does and
:func:`compare_training_run` what ``localfm parity training`` does; the CLI only parses
flags, calls these and renders the comparisons (:mod:`.report`). Living here, the
pipelines are usable from Python and notebooks, and tested without a subprocess.

The order of work is chosen so bad input fails before the slow part: tolerances and
the folder layout are checked before the local training run, which takes minutes.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LocalFMError
from ..io.artifacts import load_fm
from ..knn.model import KNN
from ..knn.transform import transform_file
from . import layout
from .cloudlog import TrainingMetrics, read_knn, read_predictions, read_training_log
from .compare import (
    Comparison,
    ModelTolerances,
    PredictionTolerances,
    TrainingTolerances,
    compare_channels,
    compare_hyperparameters,
    compare_knn,
    compare_models,
    compare_predictions,
    compare_recorded_scores,
    compare_training,
)
from .local import (
    LocalRun,
    channel_bytes,
    fm_defaults,
    load_model,
    local_hyperparameters,
    predictions_from_model,
    read_input,
    train_local,
)


@dataclass
class LocalTraining:
    """How to run the local side: the hyperparameters the cloud was given, then ``overrides``.

    ``use_given=False`` replaces the cloud's given set by ``overrides`` (a
    hyperparameters.json the user supplied is the whole configuration, as in SageMaker).
    ``epochs`` truncates the run for a quick check: only those epochs are compared and
    test metrics are skipped.
    """

    overrides: Mapping[str, str] = field(default_factory=dict)
    use_given: bool = True
    seed: int = 0
    epochs: int | None = None

    def check(self) -> None:
        if self.epochs is not None and self.epochs < 1:  # before the local run it truncates
            raise LocalFMError(f"epochs: expected an integer >= 1, got {self.epochs}", param="epochs")

    def run(self, train: str, test: str | None, given: Mapping[str, str]) -> LocalRun:
        hp = local_hyperparameters(given if self.use_given else {}, self.overrides, epochs=self.epochs)
        return train_local(train, test if self.epochs is None else None, hp, seed=self.seed)


@dataclass
class FixtureTolerances:
    """Tolerances of :func:`compare_fixture` beyond the training ones (see ``localfm parity fixture --help``)."""

    training: TrainingTolerances = field(default_factory=TrainingTolerances)
    recorded: float = 0.05
    retrained: float = 0.1
    min_rank_corr_retrained: float = 0.98
    min_ks_pvalue: float = 0.01


@dataclass
class FixtureResult:
    """The comparisons, plus notes about inputs that were present but could not be compared."""

    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)


def limit_epochs(metrics: TrainingMetrics, epochs: int | None, *, drop_test: bool = True) -> None:
    """Keep only the first ``epochs`` epochs of ``metrics`` (in place); test metrics come after
    the full run and are not comparable to a truncated one."""
    if epochs is None:
        return
    metrics.epochs = {e: v for e, v in metrics.epochs.items() if e < epochs}
    if drop_test:
        metrics.test = {}


def merged_cloud_training(log: str | None, metrics: str | None) -> TrainingMetrics:
    """The cloud side from a training log and/or a metrics JSON: the log first, the JSON filling gaps."""
    if not log and not metrics:
        raise LocalFMError("log, metrics: expected at least one cloud training record", param="log")
    cloud = read_training_log(log or metrics)
    if log and metrics:
        extra = read_training_log(metrics)
        for e, row in extra.epochs.items():
            for k, v in row.items():
                cloud.epochs.setdefault(e, {}).setdefault(k, v)
        for k, v in extra.test.items():
            cloud.test.setdefault(k, v)
        if not cloud.hyperparameters:
            cloud.hyperparameters = extra.hyperparameters
    return cloud


def channel_comparison(cloud: TrainingMetrics, run: LocalRun, train: str, test: str | None) -> Comparison:
    """Channel sizes and record counts the cloud log reports vs the local channels."""
    local: dict[str, tuple[int, int]] = {}
    nb = channel_bytes(train)
    if nb is not None:
        local["train"] = (nb, run.train_rows)
    if test and run.X_test is not None:
        nb = channel_bytes(test)
        if nb is not None:
            local["test"] = (nb, int(run.X_test.shape[0]))
    return compare_channels(cloud, local, int(run.model.hp_["mini_batch_size"]))


def compare_training_run(
    *,
    cloud_log: str | None = None,
    cloud_metrics: str | None = None,
    local_metrics: str | None = None,
    train: str | None = None,
    test: str | None = None,
    local: LocalTraining | None = None,
    tolerances: TrainingTolerances | None = None,
) -> list[Comparison]:
    """Cloud training log / metrics vs a local run: read (``local_metrics``) or trained here (``train``)."""
    local = local or LocalTraining()
    local.check()
    if bool(local_metrics) == bool(train):
        raise LocalFMError("local_metrics, train: expected exactly one (a finished run, or a channel to train on)",
                           param="local_metrics")
    cloud = merged_cloud_training(cloud_log, cloud_metrics)
    comparisons = []
    if local_metrics:
        mine = read_training_log(local_metrics)
        limit_epochs(mine, local.epochs, drop_test=False)
    else:
        assert train is not None
        run = local.run(train, test, cloud.hyperparameters)
        mine = run.metrics
        if cloud.channels:
            comparisons.append(channel_comparison(cloud, run, train, test))
    limit_epochs(cloud, local.epochs)
    return [*comparisons, compare_training(cloud, mine, tolerances or TrainingTolerances())]


def knn_comparisons(model_path: Path, pairs: list[tuple[Path, Path]]) -> list[Comparison]:
    """The cloud k-NN model answering the cloud's queries locally, vs the cloud's answers.

    Same index, same queries: an exact index must give the same neighbours, so the
    default k-NN tolerances apply unchanged.
    """
    model = KNN.load(str(model_path))
    metric = str(model.metadata().get("index_metric", "L2"))
    out = []
    with tempfile.TemporaryDirectory(prefix="localfm-parity-knn-") as tmp:
        for src, cloud_out in pairs:
            dest, _ = transform_file(model, src, tmp, accept="application/jsonlines; verbose=true")
            mine = read_knn(str(dest))
            mine.source = f"cloud k-NN model, local inference on {src.name}"
            out.append(compare_knn(read_knn(str(cloud_out)), mine, index_metric=metric))
    return out


def compare_fixture(
    run_dir: str | Path,
    *,
    train: str | None = None,
    test: str | None = None,
    local_metrics: str | None = None,
    local: LocalTraining | None = None,
    tolerances: FixtureTolerances | None = None,
) -> FixtureResult:
    """Train locally as the recorded run in ``run_dir`` did and compare everything the folder holds.

    Layout: :mod:`.layout`. ``train`` / ``test`` override the folder's channels;
    ``local_metrics`` compares a finished local run instead of training. Stages:
    container defaults, channels, per-epoch training metrics, the recorded cloud
    scores vs the retrained model, each batch-transform output (with the cloud
    model when present: the strict check of localfm's inference; else the
    retrained one, loosely), cloud vs retrained model pair scores, k-NN outputs.
    """
    local = local or LocalTraining()
    tol = tolerances or FixtureTolerances()
    local.check()
    lay = layout.scan(run_dir)
    cloud = layout.cloud_training(lay)
    given = layout.given_hyperparameters(lay, cloud)
    comparisons: list[Comparison] = []
    notes: list[str] = []
    if cloud.defaults:
        comparisons.append(compare_hyperparameters(cloud, fm_defaults()))
    train = train or (str(lay.train) if lay.train else None)
    test = test or (str(lay.test) if lay.test else None)
    run = None
    with contextlib.ExitStack() as stack:
        if local_metrics:
            mine = read_training_log(local_metrics)
            limit_epochs(mine, local.epochs, drop_test=False)
        else:
            if not train and lay.prepare is not None:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="localfm-parity-prepare-")))
                p_train, p_test = layout.run_prepare(lay, tmp)
                train, test = str(p_train), test or (str(p_test) if p_test else None)
            if not train:
                raise LocalFMError(
                    f"{lay.root}: no training channel (input/data/train/, train.protobuf, prepare.json); "
                    "give a train/test channel or a finished run's local metrics", param="train"
                )
            run = local.run(train, test, given)
            mine = run.metrics
        if run is not None and cloud.channels:
            comparisons.append(channel_comparison(cloud, run, train, test))
    limit_epochs(cloud, local.epochs)
    comparisons.append(compare_training(cloud, mine, tol.training))

    # A truncated (epochs=N) local model is not comparable to the cloud's final one.
    full = run if (run is not None and local.epochs is None) else None
    rec = layout.recorded(lay)
    if rec is not None and full is not None and full.X_test is not None:
        scores = full.model.predict(full.X_test)
        comparisons.append(compare_recorded_scores(rec, scores, tol_row=tol.recorded, min_ks_pvalue=tol.min_ks_pvalue))
    cloud_model = load_model(str(lay.model)) if lay.model is not None else None
    for src, out in lay.transforms:
        cloud_pred = read_predictions(str(out))
        if cloud_model is not None:
            # Same model, same input: the strict check of localfm's inference.
            X = read_input(str(src), feature_dim=cloud_model.V_.shape[0])
            local_pred = predictions_from_model(cloud_model, X, source=f"cloud model, local inference on {src.name}")
            comparisons.append(compare_predictions(cloud_pred, local_pred))
        elif full is not None:
            X = read_input(str(src), feature_dim=full.model.V_.shape[0])
            local_pred = predictions_from_model(full.model, X, source=f"local retrained model on {src.name}")
            ptol = PredictionTolerances(score=tol.retrained, label_band=tol.retrained / 2)
            comparisons.append(compare_predictions(cloud_pred, local_pred, ptol))
    if cloud_model is not None and full is not None:
        comparisons.append(
            compare_models(cloud_model.weights_, full.model.weights_,
                           ModelTolerances(score=tol.retrained, min_rank_corr=tol.min_rank_corr_retrained),
                           cloud_name=str(lay.model), local_name="local retrained model")
        )
    if lay.knn_transforms:
        if lay.knn_model is None:
            notes.append(f"{lay.root / 'knn'} has outputs but no model.tar.gz; k-NN not compared")
        else:
            comparisons.extend(knn_comparisons(lay.knn_model, lay.knn_transforms))
    notes.extend(f"{missing} not found; its cloud output is not compared" for missing in lay.missing_inputs)
    return FixtureResult(comparisons, notes)


def compare_model_files(cloud: str, local: str, tolerances: ModelTolerances | None = None, **kwargs: Any) -> Comparison:
    """Two FM artifacts (paths or ``s3://``): shapes and sampled pair scores (:func:`compare_models`)."""
    return compare_models(load_fm(cloud), load_fm(local), tolerances or ModelTolerances(), cloud_name=cloud,
                          local_name=local, **kwargs)
