"""Seeded sign / FJLT projections: deterministic, norm-preserving on average, stored exactly."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard

from localfm.errors import LocalFMError
from localfm.knn.reduction import Projection, _fwht_rows, make_projection


def test_fwht_matches_hadamard_matrix() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 16))
    expected = a @ hadamard(16) / 4.0
    np.testing.assert_allclose(_fwht_rows(a), expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["sign", "fjlt"])
def test_seeded_and_norm_preserving(kind: str) -> None:
    p1 = make_projection(kind, 100, 32, seed=3, n_points=5000)
    p2 = make_projection(kind, 100, 32, seed=3, n_points=5000)
    p3 = make_projection(kind, 100, 32, seed=4, n_points=5000)
    assert p1.matrix.shape == (100, 32) and p1.matrix.dtype == np.float32
    np.testing.assert_array_equal(p1.matrix, p2.matrix)
    assert not np.array_equal(p1.matrix, p3.matrix)
    x = np.random.default_rng(1).normal(size=(2000, 100)).astype(np.float32)
    ratio = (np.linalg.norm(p1.apply(x), axis=1) ** 2) / (np.linalg.norm(x, axis=1) ** 2)
    assert abs(float(ratio.mean()) - 1.0) < 0.1


@pytest.mark.parametrize("kind", ["sign", "fjlt"])
def test_json_round_trip_is_exact(kind: str) -> None:
    p = make_projection(kind, 37, 5, seed=9)
    back = Projection.from_json(p.to_json(), where="m.json")
    assert back.kind == kind and back.seed == 9
    np.testing.assert_array_equal(back.matrix, p.matrix)


def test_bad_projection_json() -> None:
    obj = make_projection("sign", 10, 4).to_json()
    obj["target"] = 5
    with pytest.raises(LocalFMError, match="m.json"):
        Projection.from_json(obj, where="m.json")
    with pytest.raises(LocalFMError, match="sign or fjlt"):
        make_projection("pca", 10, 4)
