"""The exact top-x engine equals a brute-force ranking, with and without exclusions."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.errors import LocalFMError
from localfm.recommend.topx import numba_available, top_x, trim

KERNELS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="numba not installed"))]


def _brute(U, I, k, exclude=None):
    S = U.astype(np.float64) @ I.astype(np.float64).T
    if exclude is not None:
        S[exclude.toarray() != 0] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(S, order, axis=1)


def _assert_same_ranking(res, U, I, k, exclude=None):
    order, scores = _brute(U, I, k, exclude)
    # Scores must match to float32 rounding; ids must match except among near-ties.
    np.testing.assert_allclose(res.scores, scores, rtol=1e-5, atol=1e-4)
    S = U.astype(np.float64) @ I.astype(np.float64).T
    for r in range(U.shape[0]):
        got = res.ids[r][res.ids[r] >= 0]
        want = order[r][np.isfinite(scores[r])]
        if not np.array_equal(got, want):
            # Any difference must be between items whose true scores tie within rounding.
            np.testing.assert_allclose(S[r, got], S[r, want], rtol=1e-5, atol=1e-4)


def _fm_like(n_users, n_items, d=17, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n_users, d)).astype(np.float32)
    U[:, -1] = 1.0
    I = (rng.standard_normal((n_items, d)) * rng.lognormal(0, 0.5, (n_items, 1))).astype(np.float32)
    I[:, -1] = rng.normal(0, 2, n_items)
    return U, I


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_equals_brute_force_across_blocks_and_batches(mode, kernel):
    U, I = _fm_like(300, 1000, seed=1)
    res = top_x(U, I, 50, precision=mode, kernel=kernel, batch_size=64, block_size=128)
    assert res.ids.shape == (300, 50) and res.scores.dtype == np.float32
    _assert_same_ranking(res, U, I, 50)


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_random_gaussian_vectors(mode, kernel):
    rng = np.random.default_rng(2)
    U = rng.standard_normal((200, 33)).astype(np.float32)
    I = rng.standard_normal((700, 33)).astype(np.float32)
    _assert_same_ranking(top_x(U, I, 30, precision=mode, kernel=kernel, batch_size=50, block_size=100), U, I, 30)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_exclusions_give_exact_top_k_after_filtering(mode, kernel):
    U, I = _fm_like(120, 400, seed=3)
    # Exclude each user's true top-20 plus random items: a naive top-k-then-filter would come up short.
    S = U @ I.T
    top = np.argsort(-S, axis=1)[:, :20]
    rows = np.repeat(np.arange(120), 20)
    ex = sp.csr_matrix((np.ones(rows.size), (rows, top.ravel())), shape=(120, 400))
    ex = (ex + sp.random(120, 400, density=0.2, random_state=3, format="csr")).tocsr()
    ex.data[:] = 1
    res = top_x(U, I, 25, exclude=ex, precision=mode, kernel=kernel, batch_size=40, block_size=64)
    _assert_same_ranking(res, U, I, 25, ex)
    dense = ex.toarray()
    for r in range(120):
        assert not dense[r, res.ids[r]].any()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_fewer_items_than_k_and_fully_excluded_users_are_padded(kernel, mode):
    U, I = _fm_like(5, 8, seed=4)
    ex = sp.lil_matrix((5, 8))
    ex[0, :] = 1  # user 0 has nothing left
    ex[1, :5] = 1  # user 1 has 3 items left
    res = top_x(U, I, 10, exclude=ex.tocsr(), block_size=3, kernel=kernel, precision=mode)
    assert res.ids.shape == (5, 8)
    assert (res.ids[0] == -1).all() and np.isneginf(res.scores[0]).all()
    kept = trim(res)
    assert sorted(kept[1][0].tolist()) == [5, 6, 7]
    assert sorted(kept[2][0].tolist()) == list(range(8))


@pytest.mark.parametrize("kernel", KERNELS)
def test_ties_are_ordered_by_item_row(kernel):
    U = np.ones((2, 3), np.float32)
    I = np.ones((6, 3), np.float32)
    res = top_x(U, I, 6, block_size=2, kernel=kernel)
    assert res.ids.tolist() == [list(range(6))] * 2
    res = top_x(U, I, 4, block_size=2, kernel=kernel)
    # Which 4 of 6 tied items make the cut is unspecified; they come back in item order.
    assert all(row == sorted(row) for row in res.ids.tolist())


@pytest.mark.parametrize("k", [0, -3, 2.5, "x"])
def test_bad_k(k):
    U, I = _fm_like(2, 4)
    with pytest.raises(LocalFMError, match="k: expected a positive integer"):
        top_x(U, I, k)


def test_nan_vectors_are_rejected():
    U, I = _fm_like(3, 4)
    I[2, 1] = np.nan
    with pytest.raises(LocalFMError, match="item vectors: row 2"):
        top_x(U, I, 2)


def test_bf16_keys_are_monotone_and_conservative():
    from localfm.recommend.topx import to_bf16

    pytest.importorskip("numba")
    from localfm.recommend._heapscan import _key, bf16_keys

    vals = np.array([-np.inf, -3e38, -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 2.5, 7.0, 3e38], np.float32)
    bits = to_bf16(vals).view(__import__("torch").int16).numpy()
    keys = [_key(b) for b in bits]
    assert keys == sorted(keys)
    lims = bf16_keys(vals)
    # The key of each limit is at or below the key of the value itself: the screen never drops it.
    assert all(lim <= k for lim, k in zip(lims.tolist(), keys))


def test_dimension_mismatch():
    with pytest.raises(LocalFMError, match="dimension"):
        top_x(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32), 2)


def test_matches_faiss_flat_ip():
    import faiss  # a hard dependency: a broken install must fail, not skip

    U, I = _fm_like(256, 3000, d=65, seed=5)
    index = faiss.IndexFlatIP(65)
    index.add(I)
    D, L = index.search(U, 100)
    res = top_x(U, I, 100, block_size=512)
    np.testing.assert_allclose(res.scores, D, rtol=1e-5, atol=1e-4)
    assert (np.sort(res.ids, axis=1) == np.sort(L, axis=1)).mean() > 0.999
