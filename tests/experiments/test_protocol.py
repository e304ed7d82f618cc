"""The shared ranking protocol on a tiny hand-made dataset: users, relevance, exclusions, rankings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from localfm.data.features import build_feature_space
from localfm.errors import LocalFMError
from localfm.experiments.protocol import evaluate, load_protocol, rank_model, rank_popularity
from localfm.io.artifacts import FMWeights


def _write(path: Path, rows: list[tuple[int, int, float]]) -> Path:
    u, i, r = zip(*rows)
    pq.write_table(pa.table({"user_id": list(u), "item_id": list(i), "rating": pa.array(r, pa.float32())}), path)
    return path


@pytest.fixture()
def tiny(tmp_path: Path):
    space = build_feature_space(np.array([1, 2, 3]), np.array([10, 20, 30, 40, 50]))
    space.save(tmp_path / "features.json")
    # training counts: item 10: 3, 20: 2, 30: 1, 40: 0, 50: 1
    train = _write(tmp_path / "train.parquet", [(1, 10, 5), (1, 20, 1), (2, 10, 2), (2, 30, 4), (3, 10, 3),
                                                (3, 20, 4), (3, 50, 4)])
    # user 1 likes 40 (and 30 only at 3: not relevant); user 2 only rates 2; user 9 / item 99 are unknown
    test = _write(tmp_path / "test.parquet", [(1, 40, 4), (1, 30, 3), (2, 50, 2), (3, 30, 5), (9, 10, 5),
                                              (3, 99, 5)])
    return tmp_path / "features.json", train, test, space


def test_users_relevance_and_exclusions(tiny) -> None:
    features, train, test, _ = tiny
    p = load_protocol(features, train, test)
    assert p.user_ids.tolist() == [1, 3]  # user 2 has no rating >= 4 in test; user 9 is unknown
    assert [r.tolist() for r in p.relevant] == [[3], [2]]  # item rows: 40 -> 3, 30 -> 2
    assert p.seen.toarray().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 1]]
    assert p.train_counts.tolist() == [3, 2, 1, 0, 1]
    assert p.notes["relevant_rows_unknown_user"] == 1 and p.notes["relevant_rows_unknown_item"] == 1


def test_popularity_is_most_popular_unseen(tiny) -> None:
    features, train, test, _ = tiny
    p = load_protocol(features, train, test)
    # user 1 saw 10, 20: left 30 (1), 50 (1), 40 (0) -> ties keep features.json order: 30, 50, 40
    # user 3 saw 10, 20, 50: left 30 (1), 40 (0)
    assert rank_popularity(p, 3).tolist() == [[2, 4, 3], [2, 3, -1]]
    res = evaluate(p, rank_popularity(p, 3), [1, 3], bootstrap=0)
    # k=1: user 1 gets 30 (miss), user 3 gets 30 (hit) -> ndcg 0.5; k=3: user 1 hit at 3: 1/log2(4) = 0.5
    assert res["metrics"]["1"]["ndcg"]["value"] == pytest.approx(0.5)
    assert res["metrics"]["3"]["ndcg"]["value"] == pytest.approx((0.5 + 1.0) / 2)


def test_model_ranking_is_the_brute_force_fm_order_among_unseen(tiny) -> None:
    features, train, test, space = tiny
    p = load_protocol(features, train, test)
    rng = np.random.default_rng(0)
    d = space.feature_dim
    weights = FMWeights(0.1, rng.normal(size=d), rng.normal(size=(d, 3)), "binary_classifier")
    got = rank_model(weights, p, 5)
    for row, uid in enumerate(p.user_ids):
        scores = weights.raw_scores(space.encode(np.repeat(uid, 5), space.item_ids))
        scores[p.seen[row].indices] = -np.inf
        want = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])]
        assert got[row][: len(want)].tolist() == want
        assert (got[row][len(want):] == -1).all()


def test_nothing_relevant_is_an_error(tiny) -> None:
    features, train, test, _ = tiny
    with pytest.raises(LocalFMError, match="nothing to evaluate"):
        load_protocol(features, train, test, relevant_min_rating=6)
