"""The local side of a parity run: train or predict with localfm on the cloud's inputs.

Parity means "same data, same hyperparameters, same semantics", so the local run
takes the hyperparameters the cloud job was *given* (the log's "provided
configuration" line or ``hyperparameters.json``) and lets localfm's defaults stand in
for the container's; a separate check compares those defaults with the container's
``default-conf.json`` as printed in the log.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..io.channels import channel_bytes, read_channel  # noqa: F401 - parity/fixture.py imports channel_bytes from here
from .cloudlog import TrainingMetrics, parse_metrics_json


@dataclass
class LocalRun:
    """A finished local training run: its metrics and the trained estimator."""

    metrics: TrainingMetrics
    model: Any  # localfm.fm.FactorizationMachine
    X_test: Any
    y_test: np.ndarray | None
    train_rows: int = 0


def local_hyperparameters(
    cloud_given: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    *,
    epochs: int | None = None,
) -> dict[str, str]:
    """The hyperparameters for the local run: the cloud's given ones, then overrides.

    ``epochs`` truncates training for quick checks (the comparison is then limited to
    those epochs by the caller).
    """
    hp = {str(k): str(v) for k, v in cloud_given.items()}
    hp.update({str(k): str(v) for k, v in (overrides or {}).items()})
    if epochs is not None:
        hp["epochs"] = str(epochs)
    if not hp:
        raise LocalFMError(
            "overrides: none given, and the cloud log has no 'Merging with provided configuration' "
            "line to take the local run's hyperparameters from", param="overrides"
        )
    return hp


def train_local(
    train: str | Sequence[Any],
    test: str | Sequence[Any] | None,
    hyperparameters: Mapping[str, str],
    *,
    seed: int | None = 0,
) -> LocalRun:
    """Train localfm's FM on a channel (path/URI, or an ``(X, y)`` pair) and collect its metrics."""
    from ..fm.model import FactorizationMachine

    model = FactorizationMachine(seed=seed, **dict(hyperparameters))
    feature_dim = model.check_params()["feature_dim"]  # validates before any reading
    X, y = _channel(train, feature_dim)
    X_test = y_test = None
    if test is not None:
        X_test, y_test = _channel(test, feature_dim)
    model.fit(X, y, X_test, y_test)
    doc = model.history_.as_dict()
    metrics = parse_metrics_json(doc, source=f"local (seed {seed})")
    metrics.hyperparameters = dict(hyperparameters)
    return LocalRun(metrics=metrics, model=model, X_test=X_test, y_test=y_test, train_rows=int(X.shape[0]))


def _channel(src: str | Sequence[Any], feature_dim: int) -> tuple[Any, np.ndarray]:
    if isinstance(src, (tuple, list)):
        X, y = src
        return X, np.asarray(y, dtype=np.float32)
    X, y = read_channel(str(src), need_labels=True, feature_dim=feature_dim)
    assert y is not None
    return X, y


def read_input(uri: str, feature_dim: int | None = None) -> Any:
    """Rows of a batch-transform input file (RecordIO-protobuf), labels not needed."""
    X, _ = read_channel(str(uri), need_labels=False, feature_dim=feature_dim)
    return X


def predictions_from_model(model: Any, X: Any, *, source: str):  # noqa: ANN201 - Predictions
    """What batch transform returns for ``X``: score (+ predicted_label for binary)."""
    from .cloudlog import Predictions

    scores = np.asarray(model.predict(X), dtype=np.float64)
    binary = model.hp_["predictor_type"] == "binary_classifier"
    labels = [1.0 if s >= 0.5 else 0.0 for s in scores] if binary else None
    fields = ["score", "predicted_label"] if binary else ["score"]
    return Predictions(source=source, scores=scores.tolist(), labels=labels, fields=fields)


def load_model(uri: str, predictor_type: str | None = None) -> Any:
    """A FactorizationMachine from any SageMaker FM artifact (``s3://`` ok)."""
    from ..fm.model import FactorizationMachine

    return FactorizationMachine.load(uri, predictor_type=predictor_type)


def fm_defaults() -> dict[str, Any]:
    """localfm's default FM hyperparameters, by SageMaker name (for the defaults check)."""
    from ..fm.hyperparameters import FM_HYPERPARAMETERS

    return {hp.name: hp.default for hp in FM_HYPERPARAMETERS if hp.default is not None}
