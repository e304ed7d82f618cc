"""Read what a SageMaker job leaves behind: training logs, metrics files, transform outputs.

Parity is only as good as the reader of the cloud's text, so every reader here is
built on the real recorded output in ``../shared/fixtures/cloud`` and is tolerant of
the ways that text reaches users (CloudWatch exports, notebook cells with ANSI colour
codes and ``algo-1-abcde |`` prefixes, ``metrics.json`` files of several shapes).

Readers return plain dataclasses of floats; they never evaluate code. Configuration
dicts in the log are Python reprs, parsed with :func:`ast.literal_eval` (literals only).
"""
from __future__ import annotations

import ast
import json
import math
import numbers
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LocalFMError
from ..io import uri as uri_io

# --------------------------------------------------------------------------- log lines
# Formats, exactly as the FM container prints them (see training-log.txt of the fixture):
#   #quality_metric: host=algo-1, epoch=3, batch=0 train binary_f_1.000 <score>=0.78
#   #quality_metric: host=algo-1, epoch=3, train binary_classification_accuracy <score>=0.60
#   #quality_metric: host=algo-1, train binary_classification_accuracy <score>=0.72   (final)
#   #quality_metric: host=algo-1, test binary_classification_cross_entropy <loss>=0.60
#   #test_score (algo-1) : ('binary_classification_accuracy', 0.6934662706830717)
_NUM = r"[-+]?(?:nan|NaN|inf|Infinity|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
QUALITY_RE = re.compile(
    r"#quality_metric: host=(?P<host>[^,\s]+),"
    r"(?: epoch=(?P<epoch>\d+),)?"
    r"(?: batch=(?P<batch>\d+))?"
    r" (?P<split>train|test|validation) (?P<name>\S+) <(?P<kind>score|loss)>=(?P<value>" + _NUM + r")"
)
TEST_SCORE_RE = re.compile(
    r"#test_score \((?P<host>[^)]+)\) : \('(?P<name>[^']+)', (?P<value>" + _NUM + r")\)"
)
CONFIG_RE = re.compile(
    r"(?P<which>Reading default configuration from|Merging with provided configuration from|Final configuration)"
    r"(?: (?P<path>\S+?))?: (?P<dict>\{.*\})\s*$"
)
# [2021-12-22 19:04:52.422] [tensorio] [info] epoch_stats={"data_pipeline": "/opt/ml/input/data/train", ...}
EPOCH_STATS_RE = re.compile(r"\[tensorio\] \[info\] epoch_stats=(?P<json>\{.*\})")
# ANSI colours and the "algo-1-xyz_1  | " prefix the SageMaker SDK adds to streamed logs.
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

# Names other tools use for the same metrics; normalised to the container's names.
_ALIASES = {
    "accuracy": "binary_classification_accuracy",
    "binary_accuracy": "binary_classification_accuracy",
    "cross_entropy": "binary_classification_cross_entropy",
    "log_loss": "binary_classification_cross_entropy",
    "logloss": "binary_classification_cross_entropy",
    "f1": "binary_f_1.000",
    "f_1": "binary_f_1.000",
    "binary_f_1": "binary_f_1.000",
    "binary_f1": "binary_f_1.000",
}


def canonical_metric(name: str) -> str:
    """Map a metric name to the container's spelling (``f1`` → ``binary_f_1.000``)."""
    name = name.strip()
    for prefix in ("train:", "test:", "validation:"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return _ALIASES.get(name.lower(), name)


@dataclass
class TrainingMetrics:
    """Metrics of one training run, cloud or local, in the container's metric names.

    ``epochs[e]`` holds the epoch-level train metrics (accumulated over all batches of
    epoch ``e``, as logged); ``test`` the final test-channel metrics; ``hyperparameters``
    the ones the user gave (the log's "provided configuration"), ``configuration`` the
    container's final merged configuration and ``defaults`` its default-conf.json, when
    the source had them.
    """

    source: str
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    final_train: dict[str, float] = field(default_factory=dict)
    batch0: dict[int, dict[str, float]] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    configuration: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    # channel name -> {"num_bytes", "num_examples" (batches)} of the last full pass logged
    channels: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def metric_names(self) -> list[str]:
        """Train metric names in first-seen order (the log's order)."""
        names: dict[str, None] = {}
        for row in self.epochs.values():
            for n in row:
                names.setdefault(n)
        return list(names)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "host": self.host,
            "train": [{"epoch": e, **self.epochs[e]} for e in sorted(self.epochs)],
            "test": dict(self.test),
            "final_train": dict(self.final_train),
            "hyperparameters": dict(self.hyperparameters),
        }


def _float(text: str) -> float:
    return float(text)


def _literal_dict(text: str, source: str) -> dict[str, str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise LocalFMError(f"{source}: configuration line is not a Python dict literal") from None
    if not isinstance(value, dict):
        raise LocalFMError(f"{source}: configuration line is not a dict")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def clean_line(line: str) -> str:
    """Strip ANSI colour codes (SageMaker SDK streaming) from a log line."""
    return _ANSI_RE.sub("", line).rstrip("\r\n")


def parse_training_log(text: str, *, source: str = "<log>", host: str | None = None) -> TrainingMetrics:
    """Parse a FM training log (CloudWatch export or notebook text) into :class:`TrainingMetrics`.

    Only ``#quality_metric`` / ``#test_score`` and the three configuration lines carry
    meaning; everything else (tensorio stats, throughput, warnings) is skipped, so logs
    with interleaved noise parse the same. With several hosts (distributed training)
    ``host`` picks one; by default the first host seen (``algo-1`` in practice).
    """
    out = TrainingMetrics(source=source, host=host)
    seen_metric = False
    for raw in text.splitlines():
        line = clean_line(raw)
        m = QUALITY_RE.search(line)
        if m:
            h = m.group("host")
            if out.host is None:
                out.host = h
            if h != out.host:
                continue
            seen_metric = True
            name, value = m.group("name"), _float(m.group("value"))
            epoch, batch, split = m.group("epoch"), m.group("batch"), m.group("split")
            if split == "test":
                out.test[name] = value
            elif batch is not None:
                if int(batch) == 0 and epoch is not None:
                    out.batch0.setdefault(int(epoch), {})[name] = value
            elif epoch is not None:
                if split == "train":
                    out.epochs.setdefault(int(epoch), {})[name] = value
            elif split == "train":
                out.final_train[name] = value
            continue
        m = TEST_SCORE_RE.search(line)
        if m:
            h = m.group("host")
            if out.host is None:
                out.host = h
            if h == out.host:
                seen_metric = True
                out.test.setdefault(m.group("name"), _float(m.group("value")))
            continue
        m = EPOCH_STATS_RE.search(line)
        if m:
            try:
                stats = json.loads(m.group("json"))
                name = str(stats["data_pipeline"]).rstrip("/").rsplit("/", 1)[-1]
                out.channels[name] = {"num_bytes": int(stats["num_bytes"]), "num_examples": int(stats["num_examples"])}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # a garbled stats line carries no metric; skip it like other noise
            continue
        m = CONFIG_RE.search(line)
        if m:
            which = m.group("which")
            cfg = _literal_dict(m.group("dict"), source)
            if which.startswith("Reading"):
                out.defaults = cfg
            elif which.startswith("Merging"):
                out.hyperparameters = cfg
            else:
                out.configuration = cfg
    if not seen_metric:
        raise LocalFMError(
            f"{source}: no '#quality_metric' or '#test_score' lines found; expected a SageMaker FM training log"
        )
    return out


# --------------------------------------------------------------------------- metrics.json
def _metric_rows(rows: Any, source: str, where: str) -> dict[int, dict[str, float]]:
    """Per-epoch rows: a list of {"epoch": e, name: value} or a dict name -> list by epoch."""
    epochs: dict[int, dict[str, float]] = {}
    if isinstance(rows, Mapping):
        if all(isinstance(v, list) for v in rows.values()):  # {"accuracy": [..per epoch..]}
            for name, values in rows.items():
                for e, v in enumerate(values):
                    if v is None:
                        continue
                    if isinstance(v, (bool, str)) or not isinstance(v, numbers.Real):
                        # float("x") used to escape as ValueError: exit 1 instead of 2
                        raise LocalFMError(f"{source}: '{where}.{name}[{e}]' expected a number, got {v!r}")
                    epochs.setdefault(e, {})[canonical_metric(name)] = float(v)
            return epochs
        # {"0": {...}, "1": {...}}
        try:
            return {int(k): _named_values(v, source, where) for k, v in rows.items()}
        except (TypeError, ValueError):
            raise LocalFMError(f"{source}: '{where}' expected a list of per-epoch objects") from None
    if not isinstance(rows, list):
        raise LocalFMError(f"{source}: '{where}' expected a list of per-epoch objects")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise LocalFMError(f"{source}: '{where}[{i}]' expected an object of metric -> number")
        raw = row.get("epoch", i)
        try:
            # operator.index takes ints (numpy's too) and refuses "a", None and 1.5, which
            # int() let escape as an exception (exit 1) or truncated silently.
            e = operator.index(raw)
        except TypeError:
            raise LocalFMError(f"{source}: '{where}[{i}].epoch' expected an integer, got {raw!r}") from None
        epochs[e] = _named_values({k: v for k, v in row.items() if k != "epoch"}, source, f"{where}[{i}]")
    return epochs


def _named_values(obj: Any, source: str, where: str) -> dict[str, float]:
    if not isinstance(obj, Mapping):
        raise LocalFMError(f"{source}: '{where}' expected an object of metric -> number")
    out: dict[str, float] = {}
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # tolerate extra fields (timings, counts as strings ...)
        out[canonical_metric(str(k))] = float(v)
    return out


_EPOCH_KEYS = ("train_metrics_per_epoch", "epochs", "train", "history", "train_history", "per_epoch")
_TEST_KEYS = ("test_metrics", "test", "test_score", "test_scores")


def parse_metrics_json(data: Any, *, source: str = "<metrics.json>") -> TrainingMetrics:
    """Read a metrics file of any shape we know into :class:`TrainingMetrics`.

    Accepted shapes (first match wins, documented in docs/parity.md):
    - localfm's ``metrics.json`` / the fixture's ``cloud-results.json``: per-epoch rows
      under one of ``train_metrics_per_epoch``, ``epochs``, ``train``, ``history``
      (a list of ``{"epoch": e, name: value}`` or ``{name: [v_epoch0, ...]}``), test
      metrics under ``test_metrics`` / ``test`` (``{name: value}``), optional
      ``hyperparameters`` / ``hyperparameters_final``;
    - SageMaker ``DescribeTrainingJob`` JSON: ``FinalMetricDataList`` entries
      ``{"MetricName": "test:binary_classification_accuracy", "Value": ...}`` and
      ``HyperParameters``.
    Metric names are normalised (``accuracy``/``f1``/``test:...`` → container names).
    """
    if not isinstance(data, Mapping):
        raise LocalFMError(f"{source}: expected a JSON object")
    out = TrainingMetrics(source=source)
    if "FinalMetricDataList" in data:
        for i, item in enumerate(data.get("FinalMetricDataList") or []):
            try:
                name, value = str(item["MetricName"]), float(item["Value"])
            except (KeyError, TypeError, ValueError):
                raise LocalFMError(f"{source}: FinalMetricDataList[{i}] expected MetricName and Value") from None
            split, _, metric = name.partition(":")
            if not metric:
                split, metric = "train", name
            target = out.test if split == "test" else out.final_train
            target[canonical_metric(metric)] = value
        hp = data.get("HyperParameters")
        if isinstance(hp, Mapping):
            out.hyperparameters = {str(k): str(v) for k, v in hp.items()}
        return out
    for key in _EPOCH_KEYS:
        if key in data and not (key == "train" and isinstance(data[key], Mapping) and not _looks_epochs(data[key])):
            out.epochs = _metric_rows(data[key], source, key)
            break
    else:
        train = data.get("train")
        if isinstance(train, Mapping):
            out.final_train = _named_values(train, source, "train")
    for key in _TEST_KEYS:
        if key in data:
            out.test = _named_values(data[key], source, key)
            break
    for key in ("final_train", "train_final"):
        if key in data:
            out.final_train = _named_values(data[key], source, key)
    for key in ("hyperparameters", "hyperparameters_given", "hyperparameters_final", "HyperParameters"):
        if isinstance(data.get(key), Mapping):
            out.hyperparameters = {str(k): str(v) for k, v in data[key].items()}
            break
    if not out.epochs and not out.test and not out.final_train:
        raise LocalFMError(
            f"{source}: no metrics found; expected per-epoch rows under one of "
            f"{', '.join(_EPOCH_KEYS)} or test metrics under one of {', '.join(_TEST_KEYS)}"
        )
    return out


def _looks_epochs(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and all(isinstance(v, (list, Mapping)) for v in obj.values())


def _read_text(uri: str | Path) -> str:
    """The text of a local file or S3 object; a local folder is bad input, not an OSError.

    ``localfm.io.uri`` only checks that a local path exists, so a folder given as
    ``--cloud`` (an easy slip with SageMaker's output prefixes) used to exit 1 with
    IsADirectoryError.
    """
    if not uri_io.is_s3(str(uri)) and Path(uri).is_dir():
        raise LocalFMError(f"{uri}: is a folder, expected a file")
    return uri_io.read_text(str(uri))


def read_training_log(uri: str | Path) -> TrainingMetrics:
    """Read a training log (text) or a metrics JSON file, local path or ``s3://``.

    The format is sniffed from the content, not the name: JSON objects are metrics
    files, anything else is parsed as log text.
    """
    text = _read_text(uri)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LocalFMError(f"{uri}: looks like JSON but does not parse ({exc.msg} at line {exc.lineno})") from None
        return parse_metrics_json(data, source=str(uri))
    return parse_training_log(text, source=str(uri))


# --------------------------------------------------------------------------- transform outputs
@dataclass
class Predictions:
    """FM inference output: one score per input row; labels for binary classifiers."""

    source: str
    scores: list[float]
    labels: list[float] | None
    fields: list[str]  # field names of the first record, in file order (structural parity)

    def __len__(self) -> int:
        return len(self.scores)


def _json_records(text: str, source: str) -> list[Any]:
    """Records of a JSON Lines file, or the ``predictions`` list of one JSON document."""
    stripped = text.strip()
    if not stripped:
        raise LocalFMError(f"{source}: empty file; expected JSON Lines records")
    if stripped.startswith("{") and "\n" not in stripped:
        doc = _loads(stripped, source, 1)
        if isinstance(doc, Mapping) and "predictions" in doc:
            return _predictions_list(doc, source)
        return [doc]
    if stripped.startswith("{") and stripped.count("\n") > 0:
        # JSON Lines, unless the whole thing is one pretty-printed document
        try:
            doc = json.loads(stripped)
        except json.JSONDecodeError:
            doc = None
        if isinstance(doc, Mapping):
            return _predictions_list(doc, source) if "predictions" in doc else [doc]
    records: list[Any] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rec = _loads(line, source, i)
        # Batch transform of several application/json requests writes one document per line.
        if isinstance(rec, Mapping) and "predictions" in rec and len(rec) == 1:
            records.extend(_predictions_list(rec, source))
        else:
            records.append(rec)
    return records


def _predictions_list(doc: Mapping[str, Any], source: str) -> list[Any]:
    preds = doc["predictions"]
    if not isinstance(preds, list):
        raise LocalFMError(f"{source}: 'predictions' expected a list")
    return preds


def _loads(line: str, source: str, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise LocalFMError(f"{source}: line {lineno} is not JSON ({exc.msg})") from None


def parse_predictions(text: str, *, source: str = "<predictions>") -> Predictions:
    """Parse FM batch-transform output (``*.out``; JSON Lines or ``{"predictions": [...]}``)."""
    records = _json_records(text, source)
    scores: list[float] = []
    labels: list[float] = []
    has_labels = None
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "score" not in rec:
            raise LocalFMError(f"{source}: record {i + 1} expected an object with a 'score' field")
        try:
            scores.append(float(rec["score"]))
        except (TypeError, ValueError):
            raise LocalFMError(f"{source}: record {i + 1} 'score' is not a number") from None
        this_has = "predicted_label" in rec
        if has_labels is None:
            has_labels = this_has
        elif has_labels != this_has:
            raise LocalFMError(f"{source}: record {i + 1} 'predicted_label' present in some records but not others")
        if this_has:
            try:
                labels.append(float(rec["predicted_label"]))
            except (TypeError, ValueError):
                raise LocalFMError(f"{source}: record {i + 1} 'predicted_label' is not a number") from None
    fields = list(records[0].keys()) if records and isinstance(records[0], Mapping) else []
    return Predictions(source=source, scores=scores, labels=labels if has_labels else None, fields=fields)


def read_predictions(uri: str | Path) -> Predictions:
    return parse_predictions(_read_text(uri), source=str(uri))


@dataclass
class Neighbors:
    """k-NN verbose output: per query the neighbour labels and distances (as listed)."""

    source: str
    labels: list[list[float]]
    distances: list[list[float]]
    predicted: list[float]
    fields: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def parse_knn(text: str, *, source: str = "<knn>") -> Neighbors:
    """Parse k-NN verbose output: one ``{"predicted_label", "labels", "distances"}`` per query."""
    records = _json_records(text, source)
    labels: list[list[float]] = []
    distances: list[list[float]] = []
    predicted: list[float] = []
    for i, rec in enumerate(records):
        where = f"{source}: record {i + 1}"
        if not isinstance(rec, Mapping) or "labels" not in rec or "distances" not in rec:
            raise LocalFMError(
                f"{where} expected verbose k-NN output with 'labels' and 'distances' (accept: application/jsonlines; verbose=true)"
            )
        lab, dist = rec["labels"], rec["distances"]
        if not isinstance(lab, list) or not isinstance(dist, list) or len(lab) != len(dist):
            raise LocalFMError(f"{where} 'labels' and 'distances' must be lists of equal length")
        try:
            labels.append([float(x) for x in lab])
            distances.append([float(x) for x in dist])
            predicted.append(float(rec.get("predicted_label", math.nan)))
        except (TypeError, ValueError):
            raise LocalFMError(f"{where} non-numeric label or distance") from None
    fields = list(records[0].keys()) if records and isinstance(records[0], Mapping) else []
    return Neighbors(source=source, labels=labels, distances=distances, predicted=predicted, fields=fields)


def read_knn(uri: str | Path) -> Neighbors:
    return parse_knn(_read_text(uri), source=str(uri))


# --------------------------------------------------------------------------- fixture results file
@dataclass
class RecordedScores:
    """Batch-transform scores recorded for a few test rows: ``rows[i]`` → (label, score)."""

    rows: list[int]
    labels: list[float]
    scores: list[float]


def recorded_scores(data: Mapping[str, Any], n_rows: int | None = None, *, source: str = "<results>") -> RecordedScores | None:
    """The ``batch_transform_scores_head``/``_tail`` pairs of a cloud-results.json, if any.

    Pairs are ``[predicted_label, score]`` for the first and last rows of the test set
    (the fixture's note says so); ``n_rows`` (the test-set size, default ``test_records``)
    places the tail rows.
    """
    head = data.get("batch_transform_scores_head") or []
    tail = data.get("batch_transform_scores_tail") or []
    if not head and not tail:
        return None
    n = n_rows if n_rows is not None else data.get("test_records")
    if tail and not isinstance(n, int):
        raise LocalFMError(f"{source}: 'batch_transform_scores_tail' needs 'test_records' (the test-set size)")
    rows = list(range(len(head))) + ([n - len(tail) + i for i in range(len(tail))] if tail else [])
    pairs = list(head) + list(tail)
    try:
        labels = [float(p[0]) for p in pairs]
        scores = [float(p[1]) for p in pairs]
    except (TypeError, ValueError, IndexError):
        raise LocalFMError(f"{source}: batch_transform_scores_* expected [predicted_label, score] pairs") from None
    return RecordedScores(rows=rows, labels=labels, scores=scores)
