"""Comparison logic on small, hand-checkable inputs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localfm.errors import LocalFMError
from localfm.parity.cloudlog import Neighbors, Predictions, RecordedScores, TrainingMetrics, read_training_log
from localfm.parity.compare import (
    KNNTolerances,
    ModelTolerances,
    PredictionTolerances,
    TrainingTolerances,
    best_first,
    compare_channels,
    compare_hyperparameters,
    compare_knn,
    compare_models,
    compare_predictions,
    compare_recorded_scores,
    compare_training,
    fm_pair_scores,
    overlap_at_k,
    rank_correlation,
    sample_pairs,
)

ACC, XENT, F1 = "binary_classification_accuracy", "binary_classification_cross_entropy", "binary_f_1.000"


def _metrics(source: str, offset: float = 0.0, epochs: int = 3, test_offset: float = 0.0) -> TrainingMetrics:
    t = TrainingMetrics(source=source)
    for e in range(epochs):
        t.epochs[e] = {ACC: 0.5 + 0.01 * e + offset, XENT: 0.7 - 0.01 * e + offset, F1: 0.6 + offset}
    t.test = {ACC: 0.69 + test_offset, XENT: 0.60 + test_offset, F1: 0.76 + test_offset}
    return t


def test_training_within_tolerance() -> None:
    c = compare_training(_metrics("cloud"), _metrics("local", 0.004, test_offset=0.009))
    assert c.ok
    assert len(c.checks) == 3 * 3 + 3
    assert c.tables[0].headers[:4] == ["epoch", "acc cloud", "local", "diff"]
    assert c.summary["max_abs_diff_per_metric"][ACC]["max_abs_diff"] == pytest.approx(0.004)


def test_training_drift_names_metric_and_epoch() -> None:
    local = _metrics("local")
    local.epochs[2][F1] += 0.006
    c = compare_training(_metrics("cloud"), local)
    assert not c.ok
    assert [x.name for x in c.failing] == [f"train {F1} epoch 2"]
    assert c.failing[0].abs_diff == pytest.approx(0.006)
    assert c.failing[0].rel_diff == pytest.approx(0.006 / 0.6)


def test_test_tolerances_accuracy_vs_others() -> None:
    tol = TrainingTolerances(train=0.005, test_accuracy=0.01, test_cross_entropy=0.01, test=0.02)
    c = compare_training(_metrics("cloud"), _metrics("local", test_offset=0.015), tol)
    assert [x.name for x in c.failing] == [f"test {ACC}", f"test {XENT}"]
    assert TrainingTolerances().for_test(F1) == 0.02 and TrainingTolerances().for_test("rmse") == 0.02


def test_missing_local_epoch_fails_not_skips() -> None:
    c = compare_training(_metrics("cloud", epochs=3), _metrics("local", epochs=2))
    assert {x.name for x in c.failing} == {f"train {m} epoch 2" for m in (ACC, XENT, F1)}
    assert all(x.detail == "missing locally" for x in c.failing)
    lt = _metrics("local")
    lt.test.pop(XENT)
    assert [x.name for x in compare_training(_metrics("cloud"), lt).failing] == [f"test {XENT}"]


def test_nan_local_metric_fails() -> None:
    local = _metrics("local")
    local.epochs[0][XENT] = math.nan
    assert not compare_training(_metrics("cloud"), local).ok


def test_defaults_check_against_real_log(cloud_fixture: Path) -> None:
    cloud = read_training_log(cloud_fixture / "training-log.txt")
    good = {"epochs": 1, "mini_batch_size": 1000, "use_bias": True, "factors_wd": 1e-5, "bias_init_method": "normal"}
    assert compare_hyperparameters(cloud, good).ok
    bad = dict(good, factors_wd=1e-4)
    c = compare_hyperparameters(cloud, bad)
    assert [x.name for x in c.failing] == ["default factors_wd"]


def test_channels_bytes_and_batches(cloud_fixture: Path) -> None:
    cloud = read_training_log(cloud_fixture / "training-log.txt")
    assert compare_channels(cloud, {"train": (5796480, 90570), "test": (603392, 9428)}, 200).ok
    c = compare_channels(cloud, {"train": (5796481, 90600), "test": (603392, 9428)}, 200)
    assert [x.name for x in c.failing] == ["train channel bytes"]
    from localfm.parity.report import render_text

    assert "FAIL train channel bytes: cloud read 5796480 bytes per pass, local channel has 5796481" in render_text([c])
    c = compare_channels(cloud, {"train": (5796480, 90570)}, 100)
    assert [x.name for x in c.failing] == ["train channel batches"]


def _pred(scores: list[float], labels: bool = True, source: str = "x") -> Predictions:
    return Predictions(source, list(scores), [1.0 if s >= 0.5 else 0.0 for s in scores] if labels else None,
                       ["score", "predicted_label"] if labels else ["score"])


@pytest.mark.slow
def test_predictions_exact_and_drift() -> None:
    cloud = _pred([0.1, 0.5, 0.9, 0.49999])
    assert compare_predictions(cloud, _pred([0.1, 0.5, 0.9, 0.49999])).ok
    c = compare_predictions(cloud, _pred([0.1, 0.5, 0.95, 0.49999]))
    assert [x.name for x in c.failing] == ["max |score diff|"]
    assert c.worst[0]["row"] == 2
    # a label flip right at the threshold is tolerated, far from it is not
    flip = _pred([0.1, 0.5, 0.9, 0.50001])
    c = compare_predictions(cloud, flip, PredictionTolerances(score=1e-4, label_band=1e-4))
    assert c.ok and c.summary["label_mismatches_near_threshold"] == 1
    far = Predictions("y", [0.1, 0.5, 0.9, 0.49999], [1.0, 1.0, 1.0, 0.0], ["score", "predicted_label"])
    assert [x.name for x in compare_predictions(cloud, far).failing] == ["predicted_label mismatches"]


def test_predictions_field_order_and_length() -> None:
    cloud = _pred([0.2])
    swapped = Predictions("y", [0.2], [0.0], ["predicted_label", "score"])
    assert [x.name for x in compare_predictions(cloud, swapped).failing] == ["record fields"]
    with pytest.raises(LocalFMError, match="1 predictions but x has 2"):
        compare_predictions(_pred([0.1, 0.2]), _pred([0.1]))


def test_recorded_scores_label_rule_and_distribution() -> None:
    rng = np.random.default_rng(0)
    local = rng.uniform(0.3, 0.8, 1000)
    scores = [float(local[i]) + 0.01 for i in (0, 1, 999)]
    rec = RecordedScores(rows=[0, 1, 999], labels=[1.0 if s >= 0.5 else 0.0 for s in scores], scores=scores)
    assert compare_recorded_scores(rec, local).ok
    wrong_rule = RecordedScores(rows=[0], labels=[1.0], scores=[0.4])
    c = compare_recorded_scores(wrong_rule, np.full(10, 0.4))
    assert "cloud label rule row 0" in [x.name for x in c.failing]
    far = RecordedScores(rows=list(range(10)), labels=[1.0] * 10, scores=[0.99] * 10)
    names = [x.name for x in compare_recorded_scores(far, local).failing]
    assert "score row 0" in names and "KS p-value (recorded vs local score distribution)" in names
    with pytest.raises(LocalFMError, match="row 5000"):
        compare_recorded_scores(RecordedScores([5000], [1.0], [0.6]), local)


def test_recorded_scores_negative_row_is_bad_input_not_wrapped() -> None:
    """A tail longer than test_records gives negative rows; they used to wrap to the end of the local scores."""
    local = np.linspace(0.1, 0.9, 10)
    with pytest.raises(LocalFMError, match="row -2"):
        compare_recorded_scores(RecordedScores([-2], [1.0], [float(local[-2])]), local)


def test_overlap_and_rank_correlation() -> None:
    assert overlap_at_k([1, 2, 3, 4], [4, 3, 2, 1], 4) == 1.0
    assert overlap_at_k([1, 2, 3, 4], [1, 2, 9, 8], 2) == 1.0
    assert overlap_at_k([1, 2, 3, 4], [1, 2, 9, 8], 4) == 0.5
    assert overlap_at_k([7, 7, 1], [7, 1, 1], 3) == pytest.approx(2 / 3)  # multiset
    assert rank_correlation([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert rank_correlation([1, 2], [3, 4]) is None
    assert rank_correlation([1, 1, 2], [1, 2, 2]) is None
    with pytest.raises(LocalFMError):
        overlap_at_k([1], [1], 0)


@settings(max_examples=50, deadline=None)
@given(st.permutations(list(range(8))), st.permutations(list(range(8))))
def test_rank_correlation_matches_scipy(a: list[int], b: list[int]) -> None:
    from scipy import stats

    pos_b = {x: i for i, x in enumerate(b)}
    expect = stats.spearmanr(list(range(8)), [pos_b[x] for x in a]).statistic
    assert rank_correlation(a, b) == pytest.approx(expect)


def test_best_first_follows_sagemaker_ordering() -> None:
    # INNER_PRODUCT lists ascending with the best match last (spec, two real outputs)
    assert best_first([1, 2, 3], [0.1, 0.5, 0.9], "INNER_PRODUCT") == ([3, 2, 1], [0.9, 0.5, 0.1])
    assert best_first([1, 2, 3], [0.1, 0.5, 0.9], "L2") == ([1, 2, 3], [0.1, 0.5, 0.9])


def _nb(labels: list[list[float]], dists: list[list[float]], pred: list[float] | None = None) -> Neighbors:
    return Neighbors("n", labels, dists, pred or [x[0] for x in labels], ["predicted_label", "labels", "distances"])


def test_knn_identical_and_tie_swap() -> None:
    cloud = _nb([[1, 2, 3], [4, 5, 6]], [[0.1, 0.2, 0.2], [0.3, 0.4, 0.5]])
    same = compare_knn(cloud, cloud)
    assert same.ok and same.summary["overlap_mean"] == 1.0 and same.summary["rank_correlation_mean"] == 1.0
    # a tie at the end reordered: same distances by rank, same set
    swapped = _nb([[1, 3, 2], [4, 5, 6]], [[0.1, 0.2, 0.2], [0.3, 0.4, 0.5]])
    c = compare_knn(cloud, swapped)
    assert c.ok and c.summary["distance_error_max"] == 0.0


def test_knn_drift_overlap_and_distance() -> None:
    cloud = _nb([[1, 2, 3, 4]] * 4, [[0.1, 0.2, 0.3, 0.4]] * 4)
    local = _nb([[1, 2, 3, 4]] * 3 + [[1, 9, 8, 7]], [[0.1, 0.2, 0.3, 0.4]] * 3 + [[0.1, 0.25, 0.3, 0.4]])
    c = compare_knn(cloud, local, KNNTolerances(min_mean_overlap=0.95, min_overlap=0.5, distance=1e-3,
                                                min_label_agreement=0.5))
    names = [x.name for x in c.failing]
    assert names == ["mean overlap@4", "min overlap@4", "max distance error (relative)"]
    assert c.worst[0]["query"] == 3 and c.worst[0]["overlap"] == 0.25


def test_knn_inner_product_overlap_at_k_uses_best_end() -> None:
    # best is last: top-1 of cloud is 30, of local 30 too though their worst differ
    cloud = _nb([[10, 20, 30]], [[1.0, 2.0, 3.0]], [30.0])
    local = _nb([[11, 20, 30]], [[1.0, 2.0, 3.0]], [30.0])
    assert compare_knn(cloud, local, k=2, index_metric="INNER_PRODUCT").summary["overlap_mean"] == 1.0
    assert compare_knn(cloud, local, k=2, index_metric="L2").summary["overlap_mean"] == 0.5


def test_knn_bad_input() -> None:
    with pytest.raises(LocalFMError, match="expected the same queries"):
        compare_knn(_nb([[1]], [[0.0]]), _nb([[1], [2]], [[0.0], [0.0]]))
    with pytest.raises(LocalFMError, match="^index_metric"):
        compare_knn(_nb([[1]], [[0.0]]), _nb([[1]], [[0.0]]), index_metric="HAMMING")


class _W:
    def __init__(self, w0: float, w: np.ndarray, V: np.ndarray, predictor_type: str | None = "binary_classifier"):
        self.w0, self.w, self.V, self.predictor_type = w0, w, V, predictor_type


def test_fm_pair_scores_match_dense_formula() -> None:
    rng = np.random.default_rng(1)
    w, V = rng.normal(size=6).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    pairs = sample_pairs(6, 50, seed=2)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    got = fm_pair_scores(0.3, w, V, pairs, binary=False)
    for (i, j), s in zip(pairs, got):
        x = np.zeros(6)
        x[[i, j]] = 1.0
        z = 0.3 + x @ w + 0.5 * (((x @ V) ** 2).sum() - ((x ** 2) @ (V ** 2)).sum())
        assert s == pytest.approx(z, rel=1e-5)
    up = sample_pairs(10, 100, split=4)
    assert up[:, 0].max() < 4 and up[:, 1].min() >= 4
    # user_columns_out_of_range: used to sample random pairs silently instead of user-item pairs
    for bad in (0, 10, 12):
        with pytest.raises(LocalFMError, match=f"^split {bad}: expected 1..9"):
            sample_pairs(10, 100, split=bad)


def test_models_identical_perturbed_and_shapes() -> None:
    rng = np.random.default_rng(3)
    w, V = rng.normal(0, 0.1, 50).astype(np.float32), rng.normal(0, 0.1, (50, 4)).astype(np.float32)
    a = _W(0.1, w, V)
    assert compare_models(a, _W(0.1, w.copy(), V.copy())).ok
    b = _W(0.1, w + 0.01, V)
    c = compare_models(a, b, ModelTolerances(score=1e-4, min_rank_corr=0.99))
    assert [x.name for x in c.failing] == ["max |score diff| over 2000 pairs"]
    d = compare_models(a, _W(0.1, w[:40], V[:40]))
    assert [x.name for x in d.failing] == ["shapes"]
    e = compare_models(a, _W(0.1, w, V, "regressor"))
    assert "predictor_type" in [x.name for x in e.failing]
