"""Structural parity: what localfm writes has the cloud's shape, checked against recorded text.

Log line formats and order, float formatting, metric names, input bytes, output file
naming (``<input>.out``), JSON / JSON Lines field names and order.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.parity.cloudlog import parse_knn, parse_predictions, parse_training_log, read_training_log

PREFIX_RE = re.compile(r"^\[\d\d/\d\d/\d{4} \d\d:\d\d:\d\d INFO \d+\] ")
# values that legitimately differ run to run: metric values, test scores, throughput
_VALUE_RES = [
    (re.compile(r"(<(?:score|loss)>=)\S+$"), r"\1V"),
    (re.compile(r"(#test_score \([^)]+\) : \('[^']+', )[^)]+\)$"), r"\1V)"),
    (re.compile(r"(throughput=)\S+( records/second)$"), r"\1V\2"),
]


def _metric_lines(text: str) -> list[str]:
    """The '#...' metric lines without the timestamp prefix, values masked."""
    out = []
    for line in text.splitlines():
        if "#" not in line or "] #" not in line:
            continue
        body = line[line.index("] #") + 2:]
        for rx, sub in _VALUE_RES:
            body = rx.sub(sub, body)
        out.append(body)
    return out


def _values(text: str) -> list[str]:
    vals = []
    for line in text.splitlines():
        m = re.search(r"<(?:score|loss)>=(\S+)$", line) or re.search(r"#test_score \([^)]+\) : \('[^']+', ([^)]+)\)$", line)
        if m:
            vals.append(m.group(1))
    return vals


@pytest.fixture(scope="module")
def local_log_text() -> str:
    """A local 30-epoch run on tiny data, printed the way `localfm train` prints it."""
    from localfm.fm.metrics import TrainingLog
    from localfm.fm.model import FactorizationMachine

    rng = np.random.default_rng(0)
    n, d = 300, 40
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), rng.integers(0, d, 2 * n))), shape=(n, d))
    y = (rng.random(n) < 0.6).astype(np.float32)
    log = TrainingLog("binary_classifier", 30, emit=False)
    FactorizationMachine(feature_dim=d, num_factors=4, predictor_type="binary_classifier", epochs=30,
                         mini_batch_size=200, seed=0).fit(X, y, X[:50], y[:50], log=log)
    return "\n".join(log.lines)


def test_log_lines_same_sequence_and_format_as_cloud(cloud_fixture: Path, local_log_text: str) -> None:
    """Same epochs and mini_batch_size as the job (30, 200; 2 batches here): the masked
    metric lines must be the cloud's, line for line, including progress percentages."""
    cloud = _metric_lines((cloud_fixture / "training-log.txt").read_text())
    local = _metric_lines(local_log_text)
    assert len(local) == len(cloud)
    for i, (lo, cl) in enumerate(zip(local, cloud)):
        assert lo == cl, f"line {i}: local {lo!r} != cloud {cl!r}"


def test_log_prefix_and_float_formatting(cloud_fixture: Path, local_log_text: str) -> None:
    cloud_text = (cloud_fixture / "training-log.txt").read_text()
    for text in (cloud_text, local_log_text):
        metric_lines = [ln for ln in text.splitlines() if "#quality_metric" in ln or "#test_score" in ln]
        assert metric_lines and all(PREFIX_RE.match(ln) for ln in metric_lines)
        # values are Python float reprs (shortest round-trip), e.g. 0.62 and 0.5513907284768212
        for v in _values(text):
            assert repr(float(v)) == v, v


def test_local_log_parses_to_the_same_numbers(local_log_text: str) -> None:
    t = parse_training_log(local_log_text)
    assert sorted(t.epochs) == list(range(30))
    assert tuple(t.epochs[0]) == ("binary_classification_accuracy", "binary_classification_cross_entropy",
                                  "binary_f_1.000")
    assert set(t.test) == set(t.epochs[0])
    assert t.final_train == t.epochs[29]


def test_prepared_channels_are_byte_identical_in_size_to_the_jobs(cloud_fixture: Path, ml100k_channels: Path) -> None:
    """The job's tensorio stats give the bytes it read per pass; our prepare writes the same."""
    stats = read_training_log(cloud_fixture / "training-log.txt").channels
    assert (ml100k_channels / "train.protobuf").stat().st_size == stats["train"]["num_bytes"]
    assert (ml100k_channels / "test.protobuf").stat().st_size == stats["test"]["num_bytes"]


def test_container_defaults_match_local_defaults(cloud_fixture: Path) -> None:
    from localfm.parity.compare import compare_hyperparameters
    from localfm.parity.local import fm_defaults

    cloud = read_training_log(cloud_fixture / "training-log.txt")
    comp = compare_hyperparameters(cloud, fm_defaults())
    assert len(comp.checks) == 17 and comp.ok, [c.detail for c in comp.failing]


def test_recorded_transform_pairs_follow_the_label_rule(cloud_fixture: Path) -> None:
    res = json.loads((cloud_fixture / "cloud-results.json").read_text())
    pairs = res["batch_transform_scores_head"] + res["batch_transform_scores_tail"]
    assert all(label == (1.0 if score >= 0.5 else 0.0) for label, score in pairs)
    assert all(isinstance(label, float) for label, _ in pairs)


def _tiny_model(tmp_path: Path, d: int = 25):  # noqa: ANN202
    from localfm.io.artifacts import FMWeights, save_fm
    from localfm.io.recordio import write_sparse

    rng = np.random.default_rng(3)
    save_fm(tmp_path / "model.tar.gz", FMWeights(0.1, rng.normal(0, 0.5, d).astype(np.float32),
                                                  rng.normal(0, 0.5, (d, 3)).astype(np.float32), "binary_classifier"))
    X = sp.csr_matrix((np.ones(24, np.float32), (np.repeat(np.arange(12), 2), rng.integers(0, d, 24))), shape=(12, d))
    (tmp_path / "in").mkdir()
    write_sparse(tmp_path / "in" / "test.protobuf", X)
    return tmp_path / "model.tar.gz", tmp_path / "in" / "test.protobuf"


def test_batch_transform_output_naming_and_fields(tmp_path: Path, cli) -> None:  # noqa: ANN001
    model, src = _tiny_model(tmp_path)
    code, _, err = cli("predict", "--model", model, "--input", src, "--accept", "application/jsonlines",
                       "--output", tmp_path / "out")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["test.protobuf.out"]  # SageMaker: <input>.out
    text = (tmp_path / "out" / "test.protobuf.out").read_text()
    lines = text.splitlines()
    assert len(lines) == 12 and text.endswith("\n")
    line_re = re.compile(r'^\{"score": [-+0-9.e]+, "predicted_label": (0\.0|1\.0)\}$')
    assert all(line_re.match(ln) for ln in lines), lines[0]
    p = parse_predictions(text)
    assert p.fields == ["score", "predicted_label"]
    assert p.labels == [1.0 if s >= 0.5 else 0.0 for s in p.scores]
    code, _, err = cli("predict", "--model", model, "--input", src, "--accept", "application/json",
                       "--output", tmp_path / "out2")
    assert code == 0, err
    doc = json.loads((tmp_path / "out2" / "test.protobuf.out").read_text())
    assert list(doc) == ["predictions"] and list(doc["predictions"][0]) == ["score", "predicted_label"]
    assert parse_predictions(json.dumps(doc)).scores == p.scores


@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT"])
def test_knn_verbose_output_format_and_ordering(tmp_path: Path, cli, metric: str) -> None:  # noqa: ANN001
    """`{"predicted_label", "labels", "distances"}` per query, distances ascending for every
    metric, so for INNER_PRODUCT the best match (largest product) is last, as recorded."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    np.savetxt(tmp_path / "train.csv", np.c_[np.arange(60), X], delimiter=",", fmt="%.6f")
    np.savetxt(tmp_path / "q.csv", X[:6] + 0.01, delimiter=",", fmt="%.6f")
    code, _, err = cli("knn", "train", "--train", tmp_path / "train.csv", "--output", tmp_path / "m",
                       "--hp", "feature_dim=4", "--hp", "k=5", "--hp", "predictor_type=classifier",
                       "--hp", "sample_size=60", "--hp", f"index_metric={metric}")
    assert code == 0, err
    code, _, err = cli("knn", "transform", "--model", tmp_path / "m", "--input", tmp_path / "q.csv",
                       "--output", tmp_path / "out", "--accept", "application/jsonlines; verbose=true")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["q.csv.out"]
    n = parse_knn((tmp_path / "out" / "q.csv.out").read_text())
    assert n.fields == ["predicted_label", "labels", "distances"]
    assert all(len(lab) == 5 for lab in n.labels)
    assert all(d == sorted(d) for d in n.distances)
    for q, lab in enumerate(n.labels):
        best = lab[-1] if metric == "INNER_PRODUCT" else lab[0]
        query = X[q] + 0.01
        goodness = X @ query if metric == "INNER_PRODUCT" else -((X - query) ** 2).sum(1)
        assert best == float(np.argmax(goodness))
