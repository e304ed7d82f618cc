"""Negative sampling: never a rated item, exact per-user counts, seeded; implicit prepare and resampling."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from localfm.data.features import FeatureSpace
from localfm.data.negatives import (
    NegativeSampling,
    epoch_sampler,
    parse_negative_sampling,
    rated_matrix,
    sample_negatives,
)
from localfm.errors import LocalFMError
from localfm.io.recordio import read_matrix

SAMPLINGS = [NegativeSampling("uniform"), NegativeSampling("popularity", 1.0), NegativeSampling("popularity", 3.0)]


def _rated(seed: int = 0, n_users: int = 60, n_items: int = 40) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < rng.uniform(0.0, 0.97, size=(n_users, 1))
    dense[np.arange(n_users), np.arange(n_users) % n_items] = False  # everyone has an unrated item
    dense[0, :-1] = True  # user 0 has exactly one unrated item (the last)
    dense[0, -1] = False
    dense[1, :] = False  # user 1 rated nothing
    return sp.csr_matrix(dense.astype(np.int8))


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: s.spec)
def test_never_rated_exact_counts_and_seeded(sampling: NegativeSampling) -> None:
    rated = _rated()
    counts = np.random.default_rng(1).integers(0, 50, size=rated.shape[0])
    item_counts = np.asarray(rated.sum(axis=0)).ravel()
    draw = lambda seed: sample_negatives(counts, rated, np.random.default_rng(seed), sampling=sampling,  # noqa: E731
                                         item_counts=item_counts)
    users, items = draw(5)
    np.testing.assert_array_equal(np.bincount(users, minlength=rated.shape[0]), counts)
    assert items.min() >= 0 and items.max() < rated.shape[1]
    assert not np.asarray(rated[users, items]).any()  # not one rated pair
    assert (items[users == 0] == rated.shape[1] - 1).all()  # the only unrated item of user 0
    again = draw(5)
    np.testing.assert_array_equal(again[1], items)
    assert not np.array_equal(draw(6)[1], items)


def test_uniform_reaches_every_unrated_item_evenly() -> None:
    # One user with unrated items {1, 4, 7}: 3000 uniform draws give each about 1000 times.
    rated = rated_matrix(np.zeros(7, int), np.array([0, 2, 3, 5, 6, 8, 9]), 1, 10)
    _, items = sample_negatives(np.array([3000]), rated, np.random.default_rng(0))
    values, freq = np.unique(items, return_counts=True)
    assert values.tolist() == [1, 4, 7]
    assert (np.abs(freq - 1000) < 120).all()


def test_popularity_prefers_popular_unrated_items() -> None:
    rated = rated_matrix(np.array([0]), np.array([0]), 1, 4)
    pop = np.array([1000, 99, 0, 0])  # weights (1 + count): item 1: 100, items 2, 3: 1
    _, items = sample_negatives(np.array([5000]), rated, np.random.default_rng(0),
                                sampling=parse_negative_sampling("popularity"), item_counts=pop)
    assert 0 not in items
    share = (items == 1).mean()
    assert 0.96 < share < 0.995  # expected 100/102


def test_user_who_rated_everything_cannot_get_negatives() -> None:
    rated = sp.csr_matrix(np.ones((2, 3), np.int8))
    with pytest.raises(LocalFMError, match="rated every item"):
        sample_negatives(np.array([0, 1]), rated, np.random.default_rng(0))
    users, _ = sample_negatives(np.array([0, 0]), rated, np.random.default_rng(0))  # nothing needed: fine
    assert users.size == 0


@pytest.mark.parametrize("spec", ["popular", "popularity:-1", "popularity:x", "uniform:2", ""])
def test_bad_sampling_spec(spec: str) -> None:
    with pytest.raises(LocalFMError, match="negative_sampling"):
        parse_negative_sampling(spec)


# ------------------------------------------------------------------ prepare --label implicit


def _prepare(cli, out: Path, *extra: str) -> str:
    code, stdout, stderr = cli("prepare", "movielens", "--split", "ua", "--out", out, *extra)
    assert code == 0, stderr
    return stdout


def _pairs(X: sp.csr_matrix, space: FeatureSpace) -> tuple[np.ndarray, np.ndarray]:
    """(user id, item id) of one-hot rows."""
    X = sp.csr_matrix(X)
    cols = X.indices.reshape(-1, 2)  # ids only: user column then item column
    return space.user_ids[cols[:, 0] - space.user_offset], space.item_ids[cols[:, 1] - space.item_offset]


def test_prepare_implicit_rows_labels_and_exclusions(cli, tmp_path: Path) -> None:
    out = tmp_path / "imp"
    stdout = _prepare(cli, out, "--label", "implicit", "--negatives", "3", "--negative-seed", "7",
                      "--negative-pool", "unrated")
    space = FeatureSpace.load(out / "features.json")
    assert space.extra["implicit"] == {"threshold": None, "negatives": 3, "sampling": "uniform", "seed": 7,
                                      "pool": "unrated"}
    train_t = pq.read_table(out / "train_interactions.parquet")
    test_t = pq.read_table(out / "test_interactions.parquet")
    assert test_t.column_names == train_t.column_names == ["user_id", "item_id", "rating", "timestamp"]
    tu, ti = train_t.column("user_id").to_numpy(), train_t.column("item_id").to_numpy()
    su, si = test_t.column("user_id").to_numpy(), test_t.column("item_id").to_numpy()
    rated = set(zip(tu.tolist(), ti.tolist())) | set(zip(su.tolist(), si.tolist()))
    train = read_matrix(out / "train.protobuf")
    users, items = _pairs(train.X, space)
    pos, neg = train.y == 1, train.y == 0
    assert (pos | neg).all()
    # positives: exactly the training pairs; negatives: 3 per positive, per user, none rated anywhere
    assert sorted(zip(users[pos].tolist(), items[pos].tolist())) == sorted(zip(tu.tolist(), ti.tolist()))
    assert neg.sum() == 3 * pos.sum()
    np.testing.assert_array_equal(np.unique(users[neg], return_counts=True)[1],
                                  3 * np.unique(tu, return_counts=True)[1])
    assert not any((u, i) in rated for u, i in zip(users[neg].tolist(), items[neg].tolist()))
    assert not np.all(np.diff(train.y) >= 0)  # shuffled, not positives-then-negatives
    test = read_matrix(out / "test.protobuf")
    tu2, ti2 = _pairs(test.X, space)
    assert (test.y == 1).sum() == len(su) == (test.y == 0).sum()  # as many negatives as positives
    assert not any((u, i) in rated for u, i in zip(tu2[test.y == 0].tolist(), ti2[test.y == 0].tolist()))
    assert f"train {len(tu)} positives + {3 * len(tu)} negatives" in stdout


def test_prepare_implicit_is_seeded_and_threshold_picks_positives(cli, tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    _prepare(cli, a, "--label", "implicit", "--negatives", "2")
    _prepare(cli, b, "--label", "implicit", "--negatives", "2")
    _prepare(cli, c, "--label", "implicit", "--negatives", "2", "--negative-seed", "1")
    assert (a / "train.protobuf").read_bytes() == (b / "train.protobuf").read_bytes()
    assert (a / "train.protobuf").read_bytes() != (c / "train.protobuf").read_bytes()
    d = tmp_path / "d"
    _prepare(cli, d, "--label", "implicit:4", "--negatives", "1", "--negative-sampling", "popularity:0.5")
    ratings = pq.read_table(d / "train_interactions.parquet").column("rating").to_numpy()
    y = read_matrix(d / "train.protobuf").y
    assert (y == 1).sum() == (ratings >= 4).sum() == (y == 0).sum()


def test_train_unrated_pool_ignores_test_ratings_for_training_negatives(cli, tmp_path: Path) -> None:
    out = tmp_path / "pool"
    _prepare(cli, out, "--label", "implicit", "--negatives", "8")  # train-unrated is the default
    space = FeatureSpace.load(out / "features.json")
    assert space.extra["implicit"]["pool"] == "train-unrated"
    tr = pq.read_table(out / "train_interactions.parquet")
    te = pq.read_table(out / "test_interactions.parquet")
    train_pairs = set(zip(tr.column("user_id").to_pylist(), tr.column("item_id").to_pylist()))
    test_pairs = set(zip(te.column("user_id").to_pylist(), te.column("item_id").to_pylist()))
    train = read_matrix(out / "train.protobuf")
    negs = set(zip(*(a.tolist() for a in _pairs(train.X[train.y == 0], space))))
    assert not negs & train_pairs
    assert negs & test_pairs  # test-rated items are eligible: the file does not depend on the test split
    test = read_matrix(out / "test.protobuf")
    test_negs = set(zip(*(a.tolist() for a in _pairs(test.X[test.y == 0], space))))
    assert not test_negs & (train_pairs | test_pairs)  # test negatives still avoid every rating
    epoch_data, _ = epoch_sampler(out / "features.json")
    X, y = epoch_data(3)
    redrawn = set(zip(*(a.tolist() for a in _pairs(X[y == 0], space))))
    assert not redrawn & train_pairs and redrawn & test_pairs


@pytest.mark.parametrize("args, needle", [
    (["--label", "implicit"], "--negatives: label 'implicit' needs"),
    (["--label", "implicit", "--negatives", "0"], "--negatives: label"),
    (["--label", "binary:4", "--negatives", "4"], "--negatives: only with an implicit label"),
    (["--label", "implicit:x", "--negatives", "4"], "--label 'implicit:x'"),
    (["--label", "implicit", "--negatives", "4", "--negative-sampling", "zipf"], "--negative-sampling 'zipf'"),
    (["--label", "implicit", "--negatives", "4", "--negative-seed", "-1"], "--negative-seed: expected"),
    (["--label", "explicit"], "--label 'explicit': expected rating, binary:T or implicit[:T]"),
    (["--label", "implicit", "--negatives", "4", "--negative-pool", "test"], "--negative-pool 'test'"),
])
def test_prepare_implicit_bad_input_exits_2(cli, tmp_path: Path, args, needle) -> None:
    out = tmp_path / "bad"
    code, _, stderr = cli("prepare", "movielens", "--split", "ua", "--out", out, *args)
    assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------ _local_resample_negatives


def test_epoch_sampler_redraws_negatives_keeps_positives(cli, tmp_path: Path) -> None:
    out = tmp_path / "imp"
    _prepare(cli, out, "--label", "implicit", "--negatives", "2")
    space = FeatureSpace.load(out / "features.json")
    epoch_data, rows = epoch_sampler(out / "features.json")
    first = read_matrix(out / "train.protobuf")
    assert rows == first.X.shape[0]
    key = lambda X, y, lab: sorted(zip(*(a.tolist() for a in _pairs(X[y == lab], space))))  # noqa: E731
    X1, y1 = epoch_data(1)
    X2, y2 = epoch_data(2)
    assert X1.shape == X2.shape == first.X.shape
    assert key(X1, y1, 1) == key(X2, y2, 1) == key(first.X, first.y, 1)  # same positives
    assert key(X1, y1, 0) != key(X2, y2, 0) != key(first.X, first.y, 0)  # fresh negatives
    again_X, _ = epoch_data(1)
    assert (again_X != X1).nnz == 0  # seeded per epoch


def test_epoch_sampler_needs_implicit_data(cli, tmp_path: Path) -> None:
    out = tmp_path / "bin"
    _prepare(cli, out, "--label", "binary:4")
    with pytest.raises(LocalFMError, match="implicit"):
        epoch_sampler(out / "features.json")


def test_train_resamples_negatives_every_epoch(cli, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "imp"
    _prepare(cli, out, "--label", "implicit", "--negatives", "2")
    dim = FeatureSpace.load(out / "features.json").feature_dim
    base = ["train", "--train", out / "train.protobuf", "--hp", f"feature_dim={dim}", "--hp", "num_factors=4",
            "--hp", "predictor_type=binary_classifier", "--hp", "epochs=3", "--hp", "mini_batch_size=100",
            "--seed", "1", "--quiet-log"]
    import localfm.data.negatives as negatives

    calls: list[int] = []
    real = negatives.epoch_sampler

    def spy(path):
        fn, rows = real(path)
        return (lambda e: (calls.append(e), fn(e))[1]), rows

    monkeypatch.setattr(negatives, "epoch_sampler", spy)
    code, _, err = cli(*base, "--hp", "_local_resample_negatives=true", "--features", out / "features.json",
                       "-o", tmp_path / "m1")
    assert code == 0, err
    assert calls == [1, 2]
    code, _, err = cli(*base, "-o", tmp_path / "m0")
    assert code == 0, err
    doc = json.loads((tmp_path / "m1" / "metrics.json").read_text())
    assert doc["resampled_negatives_from"] == str(out / "features.json")
    assert (tmp_path / "m1" / "model.tar.gz").read_bytes() != (tmp_path / "m0" / "model.tar.gz").read_bytes()


@pytest.mark.parametrize("args, needle", [
    (["--hp", "_local_resample_negatives=maybe"], "'_local_resample_negatives': expected true or false"),
    (["--hp", "_local_resample_negatives=true"], "needs --features"),
    (["--features", "{features}"], "only used with"),
    (["--hp", "_local_resample_negatives=true", "--features", "{binary}"], "implicit"),
    (["--hp", "_local_resample_negatives=true", "--hp", "_local_validation_fraction=0.1",
      "--features", "{features}"], "_local_validation_fraction"),
])
def test_train_resample_bad_input_exits_2(cli, tmp_path: Path, args, needle) -> None:
    out, binary = tmp_path / "imp", tmp_path / "bin"
    _prepare(cli, out, "--label", "implicit", "--negatives", "1")
    _prepare(cli, binary, "--label", "binary:4")
    dim = FeatureSpace.load(out / "features.json").feature_dim
    args = [a.format(features=out / "features.json", binary=binary / "features.json") for a in args]
    code, _, err = cli("train", "--train", out / "train.protobuf", "--hp", f"feature_dim={dim}",
                       "--hp", "num_factors=2", "--hp", "predictor_type=binary_classifier", "--quiet-log",
                       "-o", tmp_path / "m", *args)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "m" / "model.tar.gz").exists()
