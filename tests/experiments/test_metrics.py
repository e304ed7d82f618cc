"""Ranking metrics against a hand-worked example (the arithmetic is written out)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.experiments.metrics import Metric, ranking_metrics

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)  # discounts of positions 1, 2, 3


def test_hand_worked_example() -> None:
    # Catalogue of 6 items, k = 3.
    # user 0: list [2, 0, 5], relevant {0, 4}: hits at positions 2 (item 0) -> h = [0, 1, 0]
    #   DCG  = 1/log2(3)
    #   IDCG = 1/log2(2) + 1/log2(3)           (min(k=3, |R|=2) = 2 ideal hits)
    #   precision = 1/3, recall = 1/2
    #   AP = (precision@2 = 1/2) / min(3, 2) = 1/4
    # user 1: list [1, 3, -1], relevant {1, 3, 5, 0}: h = [1, 1, 0]
    #   DCG  = 1/log2(2) + 1/log2(3)
    #   IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4) (min(3, 4) = 3)
    #   precision = 2/3 (a short list still divides by k), recall = 2/4
    #   AP = (1/1 + 2/2) / min(3, 4) = 2/3
    # user 2: list [4, 4, 2], relevant {4}: the repeated 4 counts once -> h = [1, 0, 0]
    #   DCG = IDCG = 1 -> ndcg 1; precision 1/3; recall 1; AP = 1/1 / min(3, 1) = 1
    # coverage: distinct items {2, 0, 5, 1, 3, 4} = 6 of 6 -> 1.0
    rec = np.array([[2, 0, 5], [1, 3, -1], [4, 4, 2]])
    rel = [np.array([0, 4]), np.array([1, 3, 5, 0]), np.array([4])]
    ndcg = [(1 / L3) / (1 / L2 + 1 / L3), (1 / L2 + 1 / L3) / (1 / L2 + 1 / L3 + 1 / L4), 1.0]
    prec = [1 / 3, 2 / 3, 1 / 3]
    recall = [1 / 2, 2 / 4, 1.0]
    ap = [1 / 4, 2 / 3, 1.0]
    got = ranking_metrics(rec, rel, [3], n_items=6, bootstrap=0)[3]
    assert got["ndcg"].value == pytest.approx(np.mean(ndcg))
    assert got["precision"].value == pytest.approx(np.mean(prec))
    assert got["recall"].value == pytest.approx(np.mean(recall))
    assert got["map"].value == pytest.approx(np.mean(ap))
    assert got["coverage"] == Metric(1.0, 1.0, 1.0)
    # k = 1: only the first position. hits [0, 1, 1]; IDCG = 1 for everyone.
    # ndcg = precision = map = (0 + 1 + 1) / 3; recall = (0 + 1/4 + 1) / 3; coverage {2, 1, 4} = 3/6
    k1 = ranking_metrics(rec, rel, [1], n_items=6, bootstrap=0)[1]
    assert k1["ndcg"].value == pytest.approx(2 / 3)
    assert k1["precision"].value == pytest.approx(2 / 3)
    assert k1["map"].value == pytest.approx(2 / 3)
    assert k1["recall"].value == pytest.approx((1 / 4 + 1) / 3)
    assert k1["coverage"].value == pytest.approx(3 / 6)


def test_k_beyond_list_pads_and_empty_relevant_users_are_not_scored() -> None:
    rec = np.array([[0], [1]])
    rel = [np.array([0]), np.array([], dtype=np.int64)]
    got = ranking_metrics(rec, rel, [2], n_items=4, bootstrap=0)[2]
    assert got["ndcg"].value == pytest.approx(1.0)  # only user 0 is scored
    assert got["precision"].value == pytest.approx(0.5)  # 1 hit / k = 2
    assert got["coverage"].value == pytest.approx(2 / 4)  # every user's list counts


def test_bootstrap_interval_brackets_value_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    rec = np.stack([rng.permutation(50)[:10] for _ in range(200)])
    rel = [rng.choice(50, size=5, replace=False) for _ in range(200)]
    a = ranking_metrics(rec, rel, [10], 50, bootstrap=300, seed=1)[10]["ndcg"]
    b = ranking_metrics(rec, rel, [10], 50, bootstrap=300, seed=1)[10]["ndcg"]
    c = ranking_metrics(rec, rel, [10], 50, bootstrap=300, seed=2)[10]["ndcg"]
    assert a == b
    assert a != c
    assert a.low < a.value < a.high
    # ~ mean +/- 1.96 standard errors of the per-user values
    assert a.high - a.low < 0.2


@pytest.mark.parametrize("ks", [[0], [], [2.5]])
def test_bad_ks(ks) -> None:
    with pytest.raises(LocalFMError, match="ks"):
        ranking_metrics(np.zeros((1, 2), int), [np.array([0])], ks, 3)


def test_rows_and_relevant_must_match() -> None:
    with pytest.raises(LocalFMError, match="relevant"):
        ranking_metrics(np.zeros((2, 2), int), [np.array([0])], [1], 3)
