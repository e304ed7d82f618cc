"""SageMaker FM metric accumulation and log lines.

The cloud accumulates each epoch's training metrics over all of the epoch's batches,
on the outputs of each batch's forward pass (before that batch's update), and counts
the padded rows of the last partial batch too: in the reference job the epoch
accuracies are exact multiples of 1/90,600 = 1/(453 x 200), not of 1/90,570 (see
docs/fm.md). Test metrics are over the real test rows only (multiples of 1/9,428).

Binary: ``binary_classification_accuracy`` (threshold 0.5 on the sigmoid),
``binary_classification_cross_entropy`` (mean log loss), ``binary_f_1.000`` (F1 of
the positive class from the epoch's pooled counts). Regressor: ``rmse``, ``mse``,
``absolute_loss`` pooled over samples.

Log lines copy the container's text byte for byte after the ``[date INFO thread]``
prefix so the same parser reads cloud and local logs.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

BINARY_METRICS = ("binary_classification_accuracy", "binary_classification_cross_entropy", "binary_f_1.000")
REGRESSOR_METRICS = ("rmse", "mse", "absolute_loss")
_KIND = {
    "binary_classification_accuracy": "score",
    "binary_classification_cross_entropy": "loss",
    "binary_f_1.000": "score",
    "rmse": "loss",
    "mse": "loss",
    "absolute_loss": "loss",
}


def metric_names(predictor_type: str) -> tuple[str, ...]:
    return BINARY_METRICS if predictor_type == "binary_classifier" else REGRESSOR_METRICS


@dataclass
class MetricAccumulator:
    """Pooled sums over an epoch (or a test pass); float64 so 10^7 rows stay exact."""

    predictor_type: str
    n: int = 0
    correct: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    loss_sum: float = 0.0
    sq_sum: float = 0.0
    abs_sum: float = 0.0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add one batch. ``scores`` are raw FM outputs (logits for binary).

        Called on a whole epoch's scores (10^7+ rows), so it holds one float64 array of
        that length, worked on in place, rather than float64 copies of scores and labels
        plus temporaries (4 of them at once: 32 bytes a row, ~720 MB at 22.5M rows). The
        values and their summation are the same as with the copies, so the sums are too.
        """
        scores = np.asarray(scores)
        labels = np.asarray(labels)
        self.n += int(scores.shape[0])
        if self.predictor_type == "binary_classifier":
            pred = scores >= 0.0  # sigmoid(s) >= 0.5 (a float32 compares as its exact float64 value)
            pos = labels > 0.5
            self.correct += int(np.count_nonzero(pred == pos))
            self.tp += int(np.count_nonzero(pred & pos))
            self.fp += int(np.count_nonzero(pred & ~pos))
            self.fn += int(np.count_nonzero(~pred & pos))
            del pred
            # log(1 + e^-s) for positives, log(1 + e^s) for negatives, overflow-safe
            z = np.array(scores, dtype=np.float64)
            np.negative(z, out=z, where=pos)
            np.logaddexp(0.0, z, out=z)
            self.loss_sum += float(np.sum(z))
        else:
            d = np.array(scores, dtype=np.float64)
            d -= labels
            self.sq_sum += float(np.dot(d, d))
            np.abs(d, out=d)
            self.abs_sum += float(np.sum(d))

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return {}
        if self.predictor_type == "binary_classifier":
            denom = 2 * self.tp + self.fp + self.fn
            return {
                "binary_classification_accuracy": self.correct / self.n,
                "binary_classification_cross_entropy": self.loss_sum / self.n,
                "binary_f_1.000": (2 * self.tp / denom) if denom else 0.0,
            }
        mse = self.sq_sum / self.n
        return {"rmse": math.sqrt(mse), "mse": mse, "absolute_loss": self.abs_sum / self.n}


@dataclass
class TrainingLog:
    """Prints SageMaker-format log lines and keeps the same numbers for ``metrics.json``."""

    predictor_type: str
    epochs: int
    emit: bool = True
    host: str = "algo-1"
    lines: list[str] = field(default_factory=list)
    train_metrics_per_epoch: list[dict[str, float]] = field(default_factory=list)
    validation_metrics_per_epoch: list[dict[str, float]] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)
    throughput_per_epoch: list[float] = field(default_factory=list)

    def _line(self, text: str) -> None:
        stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime())
        line = f"[{stamp} INFO {threading.get_ident()}] {text}"
        self.lines.append(line)
        if self.emit:
            try:
                print(line, flush=True)
            except BrokenPipeError:
                # A closed pipe (`| head`) must not abort training before the model is saved.
                self.emit = False

    def _metric_lines(self, where: str, values: dict[str, float]) -> None:
        for name in metric_names(self.predictor_type):
            if name in values:
                self._line(f"#quality_metric: host={self.host}, {where} {name} <{_KIND[name]}>={values[name]!r}")

    def batch(self, epoch: int, batch: int, values: dict[str, float]) -> None:
        self._metric_lines(f"epoch={epoch}, batch={batch} train", values)

    def epoch(self, epoch: int, values: dict[str, float], records: int, seconds: float) -> None:
        self.train_metrics_per_epoch.append({"epoch": epoch, **values})
        self._metric_lines(f"epoch={epoch}, train", values)
        if epoch == self.epochs - 1:
            self._metric_lines("train", values)
        self._line(f"#progress_metric: host={self.host}, completed {100.0 * (epoch + 1) / self.epochs!r} % of epochs")
        rate = records / seconds if seconds > 0 else float("inf")
        self.throughput_per_epoch.append(rate)
        self._line(f"#throughput_metric: host={self.host}, train throughput={rate!r} records/second")

    def validation(self, epoch: int, values: dict[str, float]) -> None:
        """Local-only validation metrics (early stopping); same shape as a train line."""
        self.validation_metrics_per_epoch.append({"epoch": epoch, **values})
        self._metric_lines(f"epoch={epoch}, validation", values)

    def test(self, values: dict[str, float]) -> None:
        self.test_metrics = dict(values)
        for name in metric_names(self.predictor_type):
            if name in values:
                self._line(f"#test_score ({self.host}) : ({name!r}, {values[name]!r})")
        self._metric_lines("test", values)

    def as_dict(self) -> dict:
        """The ``metrics.json`` document: same keys as the cloud fixture's cloud-results.json."""
        return {
            "predictor_type": self.predictor_type,
            "train_metrics_per_epoch": self.train_metrics_per_epoch,
            "validation_metrics_per_epoch": self.validation_metrics_per_epoch,
            "test_metrics": self.test_metrics,
            "throughput_records_per_second": self.throughput_per_epoch,
        }
