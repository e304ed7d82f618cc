"""Splits: code == the GroupLens files for u1..u5/ua/ub; random and leave-last semantics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localfm.data.interactions import Interactions
from localfm.data.movielens import load_movielens, read_split_files
from localfm.data.splits import (
    GROUPLENS_SPLITS,
    grouplens_split,
    leave_last_split,
    make_split,
    parse_split,
    per_user_rank,
    random_split,
)
from localfm.errors import LocalFMError


@pytest.fixture(scope="module")
def ml100k(ml100k_dir: Path):
    return load_movielens(ml100k_dir).ratings


def _rows(data: Interactions, index: np.ndarray) -> np.ndarray:
    return np.stack([data.user[index], data.item[index], data.rating[index].astype(np.int64), data.timestamp[index]], 1)


@pytest.mark.parametrize("name", GROUPLENS_SPLITS)
def test_grouplens_split_equals_shipped_files(ml100k, ml100k_dir: Path, name: str) -> None:
    split = grouplens_split(ml100k, name)
    for part, index in (("base", split.train), ("test", split.test)):
        shipped = np.loadtxt(ml100k_dir / f"{name}.{part}", dtype=np.int64, delimiter="\t")
        # Same rows in the same order as the file, every column (timestamps included).
        np.testing.assert_array_equal(_rows(ml100k, index), shipped, err_msg=f"{name}.{part}")
    expected_test = 9430 if name in ("ua", "ub") else 20000
    assert len(split.test) == expected_test and len(split.train) == 100_000 - expected_test
    base, test = read_split_files(ml100k_dir, name)
    np.testing.assert_array_equal(ml100k.take(split.train).timestamp, base.timestamp)
    np.testing.assert_array_equal(ml100k.take(split.test).item, test.item)


def test_per_user_rank_counts_in_file_order() -> None:
    users = np.array([5, 3, 5, 5, 3, 9])
    assert per_user_rank(users).tolist() == [1, 1, 2, 3, 2, 1]


def _toy() -> Interactions:
    # user 1: 4 ratings, user 2: 3 ratings (ts tie between rows 4 and 5), user 3: 1 rating
    return Interactions(
        user=np.array([1, 1, 2, 1, 2, 2, 1, 3]),
        item=np.array([10, 11, 10, 12, 13, 14, 13, 10]),
        rating=np.array([5, 4, 3, 2, 1, 5, 4, 3], dtype=np.float32),
        timestamp=np.array([100, 400, 50, 300, 60, 60, 200, 10]),
    )


def test_leave_last_takes_latest_per_user() -> None:
    data = _toy()
    split = leave_last_split(data, 1)
    # user 1's latest is row 1 (ts 400); user 2's rows 4 and 5 tie at ts 60 → later file row 5;
    # user 3 has a single rating and stays in train.
    assert split.test.tolist() == [1, 5]
    assert sorted(split.train.tolist() + split.test.tolist()) == list(range(len(data)))
    assert leave_last_split(data, 2).test.tolist() == [1, 3, 4, 5]
    # N=3: user 1 gives its 3 latest (ts 400, 300, 200); user 2 has only 3 ratings → kept whole.
    assert leave_last_split(data, 3).test.tolist() == [1, 3, 6]


def test_leave_last_without_timestamps_uses_file_order() -> None:
    data = _toy()
    data = Interactions(user=data.user, item=data.item, rating=data.rating, timestamp=None)
    assert leave_last_split(data, 1).test.tolist() == [5, 6]


def test_random_split_is_seeded_and_keeps_source_order() -> None:
    n = 1000
    data = Interactions(user=np.arange(n) % 7, item=np.arange(n) % 13, rating=np.ones(n, np.float32))
    a, b, c = random_split(data, 0.2, 1), random_split(data, 0.2, 1), random_split(data, 0.2, 2)
    assert len(a.test) == 200 and len(a.train) == 800
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)
    assert np.all(np.diff(a.train) > 0) and np.all(np.diff(a.test) > 0)
    assert set(a.train).isdisjoint(a.test)


def test_string_ids_leave_last() -> None:
    data = Interactions(
        user=np.array(["b", "a", "b", "a"]), item=np.array(["x", "y", "z", "x"]),
        rating=np.ones(4, np.float32), timestamp=np.array([2, 1, 1, 5]),
    )
    assert leave_last_split(data, 1).test.tolist() == [0, 3]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("u6", "unknown split"),
        ("random:1.5:3", "FRACTION must be in"),
        ("random:0.2", "expected random:FRACTION:SEED"),
        ("random:x:1", "expected random:FRACTION:SEED"),
        ("random:0.2:-1", "integer SEED >= 0"),  # negative_seed_is_bad_input: numpy rejects it with ValueError
        ("leave-last:0", "leave-last:N"),
        ("leave-last:abc", "leave-last:N"),
    ],
)
def test_parse_split_errors(spec: str, message: str) -> None:
    with pytest.raises(LocalFMError, match=message):
        parse_split(spec, grouplens_ok=True)


def test_grouplens_split_needs_ml100k_layout() -> None:
    with pytest.raises(LocalFMError, match="need an ml-100k-layout"):
        make_split(_toy(), "ua", grouplens_ok=False)
