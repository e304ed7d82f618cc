"""Repackaging an FM into user/item vectors: inner product + per-user constant == FM score."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.errors import LocalFMError
from localfm.recommend.vectors import (
    Repackaged,
    fm_scores,
    item_vectors,
    knn_labels,
    repackage,
    user_vectors,
)
from tests.recommend.recommend_fakes import make_space, naive_fm_score, random_weights
from tests.fresh_python import run_python


def _all_pairs_exact(rep, space, weights):
    Xu, Xi = space.user_matrix(), space.item_matrix()
    for u in range(Xu.shape[0]):
        rows = sp.vstack([Xu[u]] * Xi.shape[0]) + Xi
        expected = fm_scores(weights, rows)
        got = rep.user_vectors[u].astype(np.float64) @ rep.item_vectors.T.astype(np.float64) + rep.user_constants[u]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_fm_scores_matches_textbook_double_sum():
    space = make_space(4, 5, su=3, si=4, seed=1)
    weights = random_weights(space.feature_dim, 6, seed=1)
    X = space.user_matrix()[[0, 1, 2, 3]] + space.item_matrix()[[4, 0, 2, 3]]
    ref = [naive_fm_score(weights, X[r].toarray()) for r in range(4)]
    np.testing.assert_allclose(fm_scores(weights, X), ref, rtol=1e-10)


def test_ids_only_is_the_blog_formula():
    space = make_space(6, 9)
    weights = random_weights(space.feature_dim, 4, seed=2)
    rep = repackage(weights, space)
    V, w = weights.V, weights.w
    np.testing.assert_allclose(rep.item_vectors[:, :-1], V[6:15], rtol=1e-6)
    np.testing.assert_allclose(rep.item_vectors[:, -1], w[6:15], rtol=1e-6)
    np.testing.assert_allclose(rep.user_vectors[:, :-1], V[:6], rtol=1e-6)
    assert np.all(rep.user_vectors[:, -1] == 1.0)
    np.testing.assert_allclose(rep.user_constants, weights.w0 + w[:6].astype(np.float64), rtol=1e-6)
    np.testing.assert_array_equal(rep.item_ids, space.item_ids)
    _all_pairs_exact(rep, space, weights)


def test_side_features_inner_product_plus_constant_is_fm_score_for_every_pair():
    space = make_space(12, 20, su=5, si=7, seed=3)
    weights = random_weights(space.feature_dim, 8, seed=3)
    rep = repackage(weights, space)
    _all_pairs_exact(rep, space, weights)
    # Also against the O(n²) textbook sum for a few pairs (independent of fm_scores).
    for u, i in [(0, 0), (3, 17), (11, 5)]:
        x = (space.user_matrix()[u] + space.item_matrix()[i]).toarray()
        assert rep.scores(np.array([u]), np.array([i]))[0] == pytest.approx(naive_fm_score(weights, x), rel=1e-5, abs=1e-5)


def test_blog_formula_misranks_with_side_features():
    """Regression: dropping the item's own pairwise terms (the blog's [Vᵀx_i, wᵀx_i]) changes rankings."""
    space = make_space(10, 30, su=0, si=6, seed=4)
    weights = random_weights(space.feature_dim, 8, seed=4, scale=0.8)
    rep = repackage(weights, space)
    Xi = space.item_matrix()
    blog_items = np.hstack([np.asarray(Xi @ weights.V), np.asarray(Xi @ weights.w)[:, None]])
    exact_rank = np.argsort(-(rep.user_vectors @ rep.item_vectors.T), axis=1)
    blog_rank = np.argsort(-(rep.user_vectors @ blog_items.T), axis=1)
    assert (exact_rank[:, :5] != blog_rank[:, :5]).any()


def test_cold_start_user_from_features_alone():
    space = make_space(5, 8, su=4, si=3, seed=5)
    weights = random_weights(space.feature_dim, 6, seed=5)
    # A new user: side features only, no id column set.
    x_u = np.zeros((1, space.feature_dim))
    x_u[0, 5:9] = [1.0, 0.0, 2.0, 0.5]
    vec, const = user_vectors(weights, x_u)
    ivec = item_vectors(weights, space.item_matrix())
    got = vec[0].astype(np.float64) @ ivec.T.astype(np.float64) + const[0]
    expected = [naive_fm_score(weights, x_u[0] + space.item_matrix()[i].toarray()[0]) for i in range(8)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # No features at all: the FM's answer is w0 + item vector's bias part.
    vec0, const0 = user_vectors(weights, sp.csr_matrix((1, space.feature_dim)))
    assert np.all(vec0[0, :-1] == 0) and const0[0] == pytest.approx(weights.w0)


def test_feature_dim_mismatch_is_an_error():
    space = make_space(3, 4)
    weights = random_weights(space.feature_dim + 1, 2)
    with pytest.raises(LocalFMError, match="feature_dim"):
        repackage(weights, space)


def test_nan_weights_are_an_error():
    space = make_space(3, 4)
    weights = random_weights(space.feature_dim, 2)
    weights.V[1, 0] = np.nan
    with pytest.raises(LocalFMError, match="NaN"):
        repackage(weights, space)


def test_overlapping_user_and_item_columns_are_an_error():
    space = make_space(3, 4)
    weights = random_weights(space.feature_dim, 2)

    class Overlap:
        feature_dim = space.feature_dim
        user_ids, item_ids = space.user_ids, space.item_ids

        def user_matrix(self, ids=None):
            return space.user_matrix(ids)

        def item_matrix(self, ids=None):
            return space.item_matrix(ids) + space.user_matrix()[[0, 0, 0, 0]]

    with pytest.raises(LocalFMError, match="share"):
        repackage(weights, Overlap())


def test_knn_labels_are_ids_when_float32_exact_else_row_index():
    labels, kind = knn_labels(np.array([1, 5, 1682]))
    assert kind == "item_id" and labels.dtype == np.float32 and labels.tolist() == [1, 5, 1682]
    labels, kind = knn_labels(np.array(["tt1", "tt2"]))
    assert kind == "item_index" and labels.tolist() == [0, 1]
    _, kind = knn_labels(np.array([2**31]))
    assert kind == "item_index"


def test_write_repackaged_outputs(tmp_path):
    import pyarrow.parquet as pq

    from localfm.io import recordio
    from localfm.recommend.vectors import write_repackaged

    space = make_space(4, 6, su=2, si=2, seed=6)
    weights = random_weights(space.feature_dim, 3, seed=6)
    rep = repackage(weights, space)
    meta = write_repackaged(rep, tmp_path / "out")
    out = tmp_path / "out"
    assert meta["labels"] == "item_id" and meta["dim"] == 4
    items = recordio.read_matrix(out / "items.protobuf")
    np.testing.assert_array_equal(items.X, rep.item_vectors)
    np.testing.assert_array_equal(items.y, space.item_ids.astype(np.float32))
    users = recordio.read_matrix(out / "users.protobuf")
    np.testing.assert_array_equal(users.X, rep.user_vectors)
    assert users.y is None
    np.testing.assert_array_equal(np.load(out / "user_constants.npy"), rep.user_constants)
    t = pq.read_table(out / "users.parquet")
    assert t.column("user_id").to_pylist() == space.user_ids.tolist()
    assert not list(out.glob(".*tmp"))


def test_pair_scores_are_float64_exact_dots_plus_constant():
    """Repackaged.scores (the compiled loop) = the float64 dot of the float32 vectors + the user's constant."""
    rng = np.random.default_rng(3)
    U = rng.standard_normal((40, 65)).astype(np.float32)
    I = rng.standard_normal((30, 65)).astype(np.float32)
    rep = Repackaged(np.arange(40), U, rng.standard_normal(40), np.arange(30), I)
    urow, irow = rng.integers(0, 40, 500), rng.integers(0, 30, 500)
    got = rep.scores(urow, irow)
    want = [math.fsum(np.float64(a) * np.float64(b) for a, b in zip(U[u], I[i], strict=True)) + rep.user_constants[u]
            for u, i in zip(urow, irow, strict=True)]
    assert got.dtype == np.float64 and got.shape == (500,)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    assert rep.scores(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="user rows"):
        rep.scores(urow[:3], irow[:4])


def test_importing_vectors_does_not_load_numba():
    """repackage / k-NN channels import this module; only scoring result rows needs the compiled loop."""
    code = "import sys, localfm.recommend.vectors; print('numba' in sys.modules)"
    out = run_python(code)
    assert out.split() == ["False"]
