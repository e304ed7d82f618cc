import json
import math
import re

import numpy as np
import pytest

from localfm.fm.metrics import MetricAccumulator, TrainingLog


def test_binary_metrics_are_pooled_over_batches():
    acc = MetricAccumulator("binary_classifier")
    # logits: >= 0 means predicted 1
    acc.update(np.array([2.0, -1.0, 0.5]), np.array([1.0, 1.0, 0.0]))
    acc.update(np.array([-3.0, 1.0]), np.array([0.0, 1.0]))
    r = acc.result()
    assert r["binary_classification_accuracy"] == pytest.approx(3 / 5)
    tp, fp, fn = 2, 1, 1
    assert r["binary_f_1.000"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # pooled, not a mean of batch F1s
    logits = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
    y = np.array([1, 1, 0, 0, 1.0])
    p = 1 / (1 + np.exp(-logits))
    ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert r["binary_classification_cross_entropy"] == pytest.approx(ce)


def test_cross_entropy_is_finite_for_extreme_logits():
    acc = MetricAccumulator("binary_classifier")
    acc.update(np.array([1000.0, -1000.0]), np.array([0.0, 1.0]))
    assert acc.result()["binary_classification_cross_entropy"] == pytest.approx(1000.0)


@pytest.mark.parametrize("ptype", ["binary_classifier", "regressor"])
def test_in_place_update_gives_the_float64_copy_formulas_bit_for_bit(ptype):
    # update() works in one float64 array in place (a whole epoch's scores at once: memory);
    # its sums must be exactly those of the plain float64 formulas, not merely close
    rng = np.random.default_rng(3)
    n = 100_003
    s = (rng.standard_normal(n) * 4).astype(np.float32)
    s[:3] = [0.0, -0.0, 90.0]
    y = ((rng.random(n) < 0.4) if ptype == "binary_classifier" else rng.standard_normal(n) * 2).astype(np.float32)
    acc = MetricAccumulator(ptype)
    acc.update(s, y)
    s64, y64 = s.astype(np.float64), y.astype(np.float64)
    if ptype == "binary_classifier":
        assert acc.loss_sum == float(np.sum(np.logaddexp(0.0, np.where(y64 > 0.5, -s64, s64))))
        assert acc.correct == int(np.count_nonzero((s64 >= 0.0) == (y64 > 0.5)))
    else:
        d = s64 - y64
        assert acc.sq_sum == float(np.dot(d, d))
        assert acc.abs_sum == float(np.sum(np.abs(d)))


def test_regressor_metrics():
    acc = MetricAccumulator("regressor")
    acc.update(np.array([3.0, 4.0]), np.array([4.0, 4.0]))
    acc.update(np.array([1.0]), np.array([3.0]))
    r = acc.result()
    assert r["mse"] == pytest.approx(5 / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert r["absolute_loss"] == pytest.approx(1.0)


def test_log_lines_match_the_container_text(capsys, cloud_fixture):
    log = TrainingLog("binary_classifier", epochs=2)
    vals = {"binary_classification_accuracy": 0.5513907284768212, "binary_classification_cross_entropy": 0.6858020927311306,
            "binary_f_1.000": 0.6713511765181531}
    log.epoch(0, vals, 90570, 1.0)
    log.epoch(1, vals, 90570, 1.0)
    log.test(vals)
    out = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    cloud = {line.split("] ", 1)[1].strip() for line in (cloud_fixture / "training-log.txt").read_text().splitlines()
             if "] #" in line}
    for text in (
        "#quality_metric: host=algo-1, epoch=0, train binary_classification_accuracy <score>=0.5513907284768212",
        "#quality_metric: host=algo-1, epoch=0, train binary_classification_cross_entropy <loss>=0.6858020927311306",
        "#quality_metric: host=algo-1, epoch=0, train binary_f_1.000 <score>=0.6713511765181531",
    ):
        assert text in out and text in cloud
    assert "#progress_metric: host=algo-1, completed 50.0 % of epochs" in out
    assert "#quality_metric: host=algo-1, train binary_f_1.000 <score>=0.6713511765181531" in out
    assert "#test_score (algo-1) : ('binary_classification_accuracy', 0.5513907284768212)" in out
    assert all(re.match(r"^#(quality|progress|throughput|test_score)", line) for line in out)
    doc = json.loads(json.dumps(log.as_dict()))
    assert doc["train_metrics_per_epoch"][1] == {"epoch": 1, **vals}
    assert doc["test_metrics"] == vals


def test_local_lines_parse_with_the_parity_reader(capsys):
    from localfm.parity.cloudlog import parse_training_log

    log = TrainingLog("regressor", epochs=1)
    vals = {"rmse": 1.1, "mse": 1.21, "absolute_loss": 0.9}
    log.epoch(0, vals, 10, 0.5)
    log.test(vals)
    text = capsys.readouterr().out
    parsed = parse_training_log(text)
    assert parsed.epochs[0] == vals
    assert parsed.test == vals
