"""distinct/lookup return exactly what np.unique / a searchsorted lookup return."""
from __future__ import annotations

import numpy as np
import pytest

from localfm.data.ids import DENSE_RANGE_FLOOR, distinct, lookup


def _searchsorted_lookup(known, query):
    if len(known) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    pos = np.searchsorted(known, query)
    clipped = np.minimum(pos, len(known) - 1)
    return np.where(known[clipped] == query, clipped, -1).astype(np.int64)


@pytest.mark.parametrize("values", [
    np.array([], dtype=np.int64),
    np.array([5], dtype=np.int32),
    np.random.default_rng(0).integers(-50, 50, 10_000),
    np.random.default_rng(1).integers(0, 2**63 - 1, 1_000, dtype=np.int64),
    np.random.default_rng(2).integers(0, 2**64 - 1, 1_000, dtype=np.uint64),
    np.array(["b", "a", "c", "a", "b"]),
    np.array(["b", "a", "a"], dtype=object),
    np.array([2.5, np.nan, 1.0, np.nan, 2.5]),
])
def test_distinct_equals_np_unique(values):
    got, want = distinct(values), np.unique(values)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["dense", "sparse", "negative", "strings", "uint"])
def test_lookup_equals_a_binary_search(kind):
    rng = np.random.default_rng(3)
    if kind == "strings":
        known = np.unique(np.array([f"u{i}" for i in rng.integers(0, 500, 300)]))
        query = np.array([f"u{i}" for i in rng.integers(0, 600, 5_000)])
    elif kind == "uint":
        known = np.unique(rng.integers(0, 1000, 300).astype(np.uint64))
        query = rng.integers(0, 1200, 5_000).astype(np.uint64)
    else:
        span = {"dense": 1000, "sparse": 100 * DENSE_RANGE_FLOOR, "negative": 1000}[kind]
        lo = -500 if kind == "negative" else 7
        known = np.unique(rng.integers(lo, lo + span, 300))
        query = rng.integers(lo - 100, lo + span + 100, 5_000)
    query = rng.permutation(np.concatenate([query, rng.choice(known, 2_000)]))  # half of them known
    got = lookup(known, query)
    np.testing.assert_array_equal(got, _searchsorted_lookup(known, query))
    assert (got >= 0).any() and (got < 0).any()  # both found and absent ids were exercised


def test_lookup_maps_a_repeated_known_id_to_its_first_row():
    known = np.array([1, 3, 3, 3, 8])
    query = np.arange(10)
    np.testing.assert_array_equal(lookup(known, query), _searchsorted_lookup(known, query))
