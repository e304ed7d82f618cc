"""Readers of cloud text, built on the real recorded SageMaker output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from localfm.errors import LocalFMError
from localfm.parity import cloudlog
from localfm.parity.cloudlog import (
    canonical_metric,
    parse_knn,
    parse_metrics_json,
    parse_predictions,
    parse_training_log,
    read_training_log,
    recorded_scores,
)

BINARY = ("binary_classification_accuracy", "binary_classification_cross_entropy", "binary_f_1.000")


def test_real_log_epochs_test_and_configuration(cloud_fixture: Path) -> None:
    t = read_training_log(cloud_fixture / "training-log.txt")
    assert sorted(t.epochs) == list(range(30))
    assert all(tuple(t.epochs[e]) == BINARY for e in range(30)), "metric order must be the log's"
    assert t.epochs[0]["binary_classification_accuracy"] == 0.5513907284768212
    assert t.epochs[29]["binary_f_1.000"] == 0.7644418840189182
    # README: accuracy 0.69347, cross-entropy 0.60396, F1 0.76241
    assert t.test == pytest.approx(
        {"binary_classification_accuracy": 0.69347, "binary_classification_cross_entropy": 0.60396,
         "binary_f_1.000": 0.76241}, abs=5e-6)
    assert t.final_train == t.epochs[29]
    assert t.batch0[3]["binary_classification_accuracy"] == 0.66
    assert t.host == "algo-1"
    assert t.hyperparameters == {"feature_dim": "2623", "predictor_type": "binary_classifier", "num_factors": "64",
                                 "epochs": "30", "mini_batch_size": "200"}
    assert t.defaults["factors_lr"] == "0.0001" and t.defaults["epochs"] == "1"
    assert t.configuration["_optimizer"] == "adam"
    assert t.channels == {"train": {"num_bytes": 5796480, "num_examples": 453},
                          "test": {"num_bytes": 603392, "num_examples": 48}}


def test_log_and_results_json_agree(cloud_fixture: Path) -> None:
    log = read_training_log(cloud_fixture / "training-log.txt")
    res = read_training_log(cloud_fixture / "cloud-results.json")
    assert res.epochs == log.epochs
    assert res.test == log.test
    assert res.hyperparameters["_learning_rate"] == "1.0"


def test_streamed_sdk_log_with_colours_and_noise(cloud_fixture: Path) -> None:
    """The SDK's `logs=True` stream prefixes host names and ANSI colours; CloudWatch adds
    its own timestamp column; both must parse to the same numbers."""
    lines = (cloud_fixture / "training-log.txt").read_text().splitlines()
    noisy = []
    for i, line in enumerate(lines):
        noisy.append(f"\x1b[34malgo-1-6u7fh_1  |\x1b[0m {line}")
        if i % 7 == 0:
            noisy.append("2021-12-22T19:04:52.000Z some unrelated warning: epoch=99 train nothing")
    cw = [f"2021-12-22T19:05:{i % 60:02d}.000Z\t{line}" for i, line in enumerate(lines)]
    ref = parse_training_log("\n".join(lines))
    for text in ("\n".join(noisy), "\n".join(cw), "\r\n".join(lines)):
        t = parse_training_log(text)
        assert t.epochs == ref.epochs and t.test == ref.test and t.hyperparameters == ref.hyperparameters


def test_second_host_ignored_unless_asked() -> None:
    text = "\n".join([
        "#quality_metric: host=algo-1, epoch=0, train rmse <loss>=1.5",
        "#quality_metric: host=algo-2, epoch=0, train rmse <loss>=9.0",
        "#quality_metric: host=algo-2, test rmse <loss>=8.0",
    ])
    assert parse_training_log(text).epochs == {0: {"rmse": 1.5}}
    two = parse_training_log(text, host="algo-2")
    assert two.epochs == {0: {"rmse": 9.0}} and two.test == {"rmse": 8.0}


def test_log_without_metrics_is_bad_input() -> None:
    with pytest.raises(LocalFMError, match="no '#quality_metric'"):
        parse_training_log("hello\nworld\n", source="x.log")


def test_configuration_line_is_never_evaluated() -> None:
    evil = "[x INFO 1] Final configuration: {'a': __import__('os').system('echo pwned')}\n" \
           "#quality_metric: host=algo-1, test rmse <loss>=1.0"
    with pytest.raises(LocalFMError, match="not a Python dict literal"):
        parse_training_log(evil, source="evil.log")


def test_local_train_metrics_json_shape() -> None:
    """The shape `localfm train` writes (TrainingLog.as_dict + extras)."""
    doc = {"predictor_type": "binary_classifier",
           "train_metrics_per_epoch": [{"epoch": 0, "binary_classification_accuracy": 0.5},
                                       {"epoch": 1, "binary_classification_accuracy": 0.6}],
           "validation_metrics_per_epoch": [],
           "test_metrics": {"binary_classification_accuracy": 0.55},
           "throughput_records_per_second": [1.0, 2.0],
           "hyperparameters": {"epochs": "2"}, "seed": 1}
    t = parse_metrics_json(doc)
    assert t.epochs == {0: {"binary_classification_accuracy": 0.5}, 1: {"binary_classification_accuracy": 0.6}}
    assert t.test == {"binary_classification_accuracy": 0.55}
    assert t.hyperparameters == {"epochs": "2"}


def test_other_metrics_shapes() -> None:
    t = parse_metrics_json({"history": {"accuracy": [0.5, 0.6], "f1": [0.1, 0.2]}, "test": {"log_loss": 0.7}})
    assert t.epochs[1] == {"binary_classification_accuracy": 0.6, "binary_f_1.000": 0.2}
    assert t.test == {"binary_classification_cross_entropy": 0.7}
    desc = {"FinalMetricDataList": [
        {"MetricName": "test:binary_classification_accuracy", "Value": 0.69, "Timestamp": "x"},
        {"MetricName": "train:binary_f_1.000", "Value": 0.76}],
        "HyperParameters": {"epochs": "30"}}
    d = parse_metrics_json(desc)
    assert d.test == {"binary_classification_accuracy": 0.69}
    assert d.final_train == {"binary_f_1.000": 0.76}
    assert d.hyperparameters == {"epochs": "30"}
    assert canonical_metric("test:f1") == "binary_f_1.000"


@pytest.mark.parametrize("doc, match", [
    ([1, 2], "expected a JSON object"),
    ({"nothing": 1}, "no metrics found"),
    ({"epochs": "x"}, "expected a list of per-epoch objects"),
    ({"epochs": [3]}, r"'epochs\[0\]' expected an object"),
    ({"FinalMetricDataList": [{"Value": 1}]}, r"FinalMetricDataList\[0\] expected MetricName"),
    # non-numeric values and epochs used to escape as ValueError/TypeError (exit 1)
    ({"epochs": {"binary_classification_accuracy": [0.5, "x"]}}, r"'epochs.binary_classification_accuracy\[1\]' expected a number"),
    ({"epochs": [{"epoch": "a", "rmse": 1.0}]}, r"'epochs\[0\].epoch' expected an integer"),
    ({"epochs": [{"epoch": None, "rmse": 1.0}]}, r"'epochs\[0\].epoch' expected an integer"),
    ({"epochs": [{"epoch": 1.5, "rmse": 1.0}]}, r"'epochs\[0\].epoch' expected an integer"),
])
def test_bad_metrics_json(doc: object, match: str) -> None:
    with pytest.raises(LocalFMError, match=match):
        parse_metrics_json(doc, source="m.json")


def test_read_training_sniffs_json_and_reports_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "metrics.txt"
    p.write_text('{"test_metrics": {"rmse": 1.0}}')
    assert read_training_log(p).test == {"rmse": 1.0}
    p.write_text('{"test_metrics": ')
    with pytest.raises(LocalFMError, match="looks like JSON but does not parse"):
        read_training_log(p)
    with pytest.raises(LocalFMError, match="file not found"):
        read_training_log(tmp_path / "missing.log")


def test_predictions_jsonlines_and_json() -> None:
    jl = '{"score":0.589505,"predicted_label":1.0}\n{"score":0.451894,"predicted_label":0.0}\n'
    p = parse_predictions(jl)
    assert p.scores == [0.589505, 0.451894] and p.labels == [1.0, 0.0]
    assert p.fields == ["score", "predicted_label"]
    doc = json.dumps({"predictions": [{"score": 3.7}, {"score": 2.5}]})
    r = parse_predictions(doc)
    assert r.scores == [3.7, 2.5] and r.labels is None
    # application/json batch transform: one {"predictions": [...]} document per request line
    multi = "\n".join(json.dumps({"predictions": [{"score": s}]}) for s in (1.0, 2.0, 3.0))
    assert parse_predictions(multi).scores == [1.0, 2.0, 3.0]
    pretty = json.dumps({"predictions": [{"score": 0.1, "predicted_label": 0.0}]}, indent=2)
    assert parse_predictions(pretty).scores == [0.1]


@pytest.mark.parametrize("text, match", [
    ("", "empty file"),
    ('{"score": 1}\nnot json\n', "line 2 is not JSON"),
    ('{"label": 1}\n', "record 1 expected an object with a 'score'"),
    ('{"score": "x"}\n', "'score' is not a number"),
    ('{"score": 1, "predicted_label": 1}\n{"score": 0.2}\n', "present in some records"),
    # non_numeric_predicted_label: used to escape as ValueError/TypeError (exit 1)
    ('{"score": 0.7, "predicted_label": "yes"}\n', "record 1 'predicted_label' is not a number"),
    ('{"score": 0.7, "predicted_label": null}\n', "record 1 'predicted_label' is not a number"),
])
def test_bad_predictions(text: str, match: str) -> None:
    with pytest.raises(LocalFMError, match=match):
        parse_predictions(text, source="x.out")


def test_knn_verbose() -> None:
    # The shape the spec records from a real INNER_PRODUCT output: ascending, best last.
    text = '{"predicted_label": 509.0, "labels": [12.0, 509.0], "distances": [1.8703, 4.0698]}\n'
    n = parse_knn(text)
    assert n.labels == [[12.0, 509.0]] and n.distances == [[1.8703, 4.0698]] and n.predicted == [509.0]
    assert n.fields == ["predicted_label", "labels", "distances"]
    with pytest.raises(LocalFMError, match="verbose k-NN output"):
        parse_knn('{"predicted_label": 1.0}\n', source="q.out")
    with pytest.raises(LocalFMError, match="equal length"):
        parse_knn('{"labels": [1], "distances": [1, 2]}\n')


def test_recorded_scores_rows(cloud_fixture: Path) -> None:
    data = json.loads((cloud_fixture / "cloud-results.json").read_text())
    rec = recorded_scores(data)
    assert rec is not None
    assert rec.rows == [0, 1, 2, 3, 4, 9423, 9424, 9425, 9426, 9427]
    assert rec.scores[0] == 0.589505 and rec.labels[4] == 0.0
    assert recorded_scores({}) is None
    with pytest.raises(LocalFMError, match="needs 'test_records'"):
        recorded_scores({"batch_transform_scores_tail": [[1.0, 0.6]]})


def test_quality_regex_matches_every_metric_line(cloud_fixture: Path) -> None:
    """Every '#quality_metric' line of the real log is understood (none silently skipped)."""
    lines = [ln for ln in (cloud_fixture / "training-log.txt").read_text().splitlines() if "#quality_metric" in ln]
    assert len(lines) == 30 * 6 + 6
    assert all(cloudlog.QUALITY_RE.search(ln) for ln in lines)
