"""The exact top-x engine equals a brute-force ranking, with and without exclusions."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.errors import LocalFMError
from localfm.recommend.topx import iter_top_x, numba_available, top_x, trim
from tests.fresh_python import run_python

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


# ---------------------------------------------------------------- pruning: identical ids to brute force
#
# Vectors are rounded to 8-bit mantissas on a power-of-two grid, so every float32 product
# and sum (d <= 65) is exact whatever order a GEMM or a kernel adds them in: scores are then
# exactly the float64 brute-force scores, and "identical ids" is well defined, ties included.

MODES = ["fp32", "bf16"]


def _exact_grid(X: np.ndarray) -> np.ndarray:
    step = 2.0 ** np.ceil(np.log2(np.abs(X).max() / 255.0))
    return (np.round(X / step) * step).astype(np.float32)


def _brute_tie_rule(U, I, k, exclude=None):
    """The engine's documented rule by plain numpy: best score first; among equal scores the item
    visited earlier (larger norm, then smaller row) makes the cut; the kept ones come back by
    (score, item row)."""
    S = U.astype(np.float64) @ I.astype(np.float64).T
    if exclude is not None:
        S[exclude.toarray() != 0] = -np.inf
    norms = np.sqrt(np.einsum("ij,ij->i", I, I, dtype=np.float64))
    visit = np.empty(I.shape[0], np.int64)
    visit[np.argsort(-norms, kind="stable")] = np.arange(I.shape[0])
    kk = min(k, I.shape[0])
    ids = np.full((U.shape[0], kk), -1, np.int64)
    for r in range(U.shape[0]):
        cut = np.lexsort((visit, -S[r]))[:kk]
        cut = cut[np.isfinite(S[r, cut])]
        ids[r, : cut.size] = cut[np.lexsort((cut, -S[r, cut]))]
    return ids


def _trained_fm_vectors(path, factors=8, epochs=3):
    """[V_u, 1] user and [V_i, w_i] item vectors of a binary FM trained on a ratings file (rating >= 4)."""
    from localfm.fm.model import FactorizationMachine

    D = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2))
    u, i = D[:, 0] - 1, D[:, 1] - 1
    nu, ni, n = int(u.max()) + 1, int(i.max()) + 1, D.shape[0]
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), np.column_stack([u, nu + i]).ravel())),
                      shape=(n, nu + ni))
    fm = FactorizationMachine(feature_dim=nu + ni, num_factors=factors, predictor_type="binary_classifier",
                              epochs=epochs, mini_batch_size=200, seed=1).fit(X, (D[:, 2] >= 4).astype(np.float32))
    V, w = np.asarray(fm.V_, np.float64), np.asarray(fm.w_, np.float64)
    U = np.hstack([V[:nu], np.ones((nu, 1))]).astype(np.float32)
    I = np.hstack([V[nu:], w[nu:, None]]).astype(np.float32)
    return U, I


@pytest.fixture(scope="module")
def trained_vectors():
    """A tiny FM on the embedded ml-synthetic ratings (always present, no ../shared needed)."""
    from pathlib import Path

    return _trained_fm_vectors(Path(__file__).resolve().parents[2] / "data" / "ml-synthetic" / "u.data")


def _seen(U, I, density, seed):
    ex = sp.random(U.shape[0], I.shape[0], density=density, random_state=seed, format="csr")
    ex.data[:] = 1
    return ex


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_exclusions", [False, True])
def test_pruned_ids_identical_to_brute_force_on_trained_fm(trained_vectors, mode, kernel, with_exclusions):
    U, I = (_exact_grid(X) for X in trained_vectors)
    ex = _seen(U, I, 0.05, 7) if with_exclusions else None
    res = top_x(U, I, 20, exclude=ex, precision=mode, kernel=kernel, batch_size=256, block_size=64)
    np.testing.assert_array_equal(res.ids, _brute_tie_rule(U, I, 20, ex))
    # Trained FM vectors are where the bound bites: a good share of the scores is never computed.
    assert res.total == U.shape[0] * I.shape[0]
    assert 0.2 < res.skipped_fraction < 1.0
    off = top_x(U, I, 20, exclude=ex, precision=mode, kernel=kernel, batch_size=256, block_size=64, prune=False)
    np.testing.assert_array_equal(off.ids, res.ids)
    assert off.skipped == 0 and off.skipped_fraction == 0.0


@pytest.mark.slow
def test_pruning_on_the_real_ml100k_model(ml100k_dir):
    """The raw (unrounded) float32 vectors of a real ml-100k FM: the same ids pruned or not, most scores skipped."""
    U, I = _trained_fm_vectors(ml100k_dir / "u.data", factors=16, epochs=3)
    res = top_x(U, I, 100, precision="fp32")
    np.testing.assert_array_equal(res.ids, top_x(U, I, 100, precision="fp32", prune=False).ids)
    _assert_same_ranking(res, U, I, 100)
    assert res.skipped_fraction > 0.3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_exclusions", [False, True])
def test_pruned_ids_identical_to_brute_force_on_random_fm_shaped(mode, kernel, with_exclusions):
    U, I = _fm_like(150, 900, d=17, seed=11)
    U, I = _exact_grid(U), _exact_grid(I)
    ex = _seen(U, I, 0.1, 8) if with_exclusions else None
    res = top_x(U, I, 30, exclude=ex, precision=mode, kernel=kernel, batch_size=64, block_size=50)
    np.testing.assert_array_equal(res.ids, _brute_tie_rule(U, I, 30, ex))
    assert res.skipped > 0  # lognormal item norms: some users stop before the last block


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_exclusions", [False, True])
@pytest.mark.parametrize("k", [5, 40, 200])
def test_pruned_ties_and_k_beyond_the_catalogue(mode, kernel, with_exclusions, k):
    """Few distinct small-integer values: scores tie massively, and several items share each norm,
    so the cut falls inside runs of equal scores; k = 200 exceeds the 120 items."""
    rng = np.random.default_rng(5)
    U = rng.integers(-1, 3, (40, 6)).astype(np.float32)
    U[:, -1] = 1
    I = rng.integers(-1, 2, (120, 6)).astype(np.float32)
    I[:30] *= 3  # a high-norm head, so pruning has something to cut after it
    ex = _seen(U, I, 0.2, 9) if with_exclusions else None
    res = top_x(U, I, k, exclude=ex, precision=mode, kernel=kernel, batch_size=16, block_size=8)
    want = _brute_tie_rule(U, I, k, ex)
    np.testing.assert_array_equal(res.ids, want)
    assert res.ids.shape == (40, min(k, 120))
    if k == 5:
        assert res.skipped > 0


def test_pruning_bound_holds_for_a_non_fm_last_column():
    """The bound is Cauchy-Schwarz plus the last column exactly: valid for any vectors, here users
    whose last entry is negative and varies (not the FM's constant 1) and items with a wide last column."""
    rng = np.random.default_rng(12)
    U = _exact_grid(rng.standard_normal((60, 9)).astype(np.float32))
    I = rng.standard_normal((500, 9)) * rng.lognormal(0, 1.0, (500, 1))
    I[:, -1] = rng.normal(0, 4, 500)
    I = _exact_grid(I.astype(np.float32))
    res = top_x(U, I, 10, precision="fp32", block_size=32)
    np.testing.assert_array_equal(res.ids, _brute_tie_rule(U, I, 10))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pruning_bound_is_tight_where_it_must_be(mode, kernel, sign):
    """One item per block: A (bound 10 + 2 = 12), B (bound 0 - 9), T (bound 1 + 5 = 6), visited by
    decreasing bound: A, T, B. After A the k-th (k=1) score is 2. A bound without the last column
    (1 < 2) would skip T, whose score 6 is the answer; the exact bound 6 >= 2 keeps it, and B
    (bound -9 < 6) is skipped. ``sign`` flips the last column of user and items, so the bound must
    take u_w·w at its largest, whichever sign u_w has."""
    U = np.array([[1, 0, 0, sign]], np.float32)
    I = np.array([[0, 10, 0, 2 * sign], [0, 0, 0, -9 * sign], [1, 0, 0, 5 * sign]], np.float32)
    res = top_x(U, I, 1, precision=mode, kernel=kernel, block_size=1)
    assert res.ids.tolist() == [[2]] and res.scores.tolist() == [[6.0]]
    assert res.skipped == 1  # only B: the bound for T never fell below 2
    # With a decoy in place of T the user stops right after A: the two later scores are skipped.
    I[2] = [0, 0, 0, 1 * sign]
    res = top_x(U, I, 1, precision=mode, kernel=kernel, block_size=1)
    assert res.ids.tolist() == [[0]] and res.skipped == 2 and res.total == 3


def test_block_bounds_cover_every_score_of_their_block():
    """The per-(user, block) bound is >= every score in the block, for users whose last entry has
    either sign; dropping the block's smallest w (w_min) would break it for negative u_w."""
    from localfm.recommend.topx import prepare_items

    rng = np.random.default_rng(4)
    U = rng.standard_normal((80, 9)).astype(np.float32)
    I = (rng.standard_normal((700, 9)) * rng.lognormal(0, 1.0, (700, 1))).astype(np.float32)
    I[:, -1] = rng.normal(0, 3, 700)
    prep = prepare_items(I, block_size=32, precision="fp32")
    assert sorted(np.concatenate(prep.blocks).tolist()) == list(range(700))  # a partition of the columns
    assert all((np.diff(c) > 0).all() for c in prep.blocks)  # ascending inside a block (the tie rule)
    B = prep.bounds.for_users(U)
    S = U.astype(np.float64) @ prep.Ip.T.astype(np.float64)
    top = np.stack([S[:, c].max(axis=1) for c in prep.blocks], axis=1)
    assert (B >= top).all()
    vn = np.linalg.norm(U[:, :-1].astype(np.float64), axis=1)[:, None]
    without_w_min = vn * prep.bounds.v_norm + U[:, -1:].astype(np.float64) * prep.bounds.w_max
    assert (without_w_min < top).any()


def test_recommend_summary_reports_the_skipped_fraction(trained_vectors):
    """`localfm recommend`'s JSON summary carries the engine's skipped fraction for the exact path."""
    from localfm.recommend.recommend import rank
    from localfm.recommend.vectors import Repackaged

    U, I = trained_vectors
    rep = Repackaged(user_ids=np.arange(U.shape[0]), user_vectors=U, user_constants=np.zeros(U.shape[0]),
                     item_ids=np.arange(I.shape[0]), item_vectors=I, predictor_type="binary_classifier")
    recs = rank(rep, k=10, batch_size=128, precision="fp32")
    list(recs)
    want = top_x(U, I, 10, batch_size=128, precision="fp32")
    assert recs.stats.scores_total == U.shape[0] * I.shape[0] == want.total
    assert recs.stats.scores_skipped == want.skipped > 0
    assert recs.summary()["skipped_fraction"] == round(want.skipped_fraction, 4)


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_prepared_items_give_the_same_bytes_batch_after_batch(mode, kernel):
    """Items prepared once (as a Ray actor does) rank every batch exactly as unprepared items do."""
    from localfm.recommend.topx import iter_top_x, prepare_items

    U, I = _fm_like(300, 900, seed=3)
    rng = np.random.default_rng(1)
    exclude = sp.random(300, 900, density=0.02, random_state=rng, format="csr")
    prepared = prepare_items(I, block_size=256, precision=mode)
    I_ro = prepared.Ip.copy()
    prepared.Ip.flags.writeable = False  # as when shared read-only through Ray's object store
    want = top_x(U, I, 20, exclude=exclude, batch_size=64, block_size=256, precision=mode, kernel=kernel)
    for lo, hi in [(0, 100), (100, 300)]:
        got = top_x(U[lo:hi], prepared, 20, exclude=exclude[lo:hi], batch_size=64, kernel=kernel)
        np.testing.assert_array_equal(got.ids, want.ids[lo:hi])
        np.testing.assert_array_equal(got.scores, want.scores[lo:hi])
    np.testing.assert_array_equal(prepared.Ip, I_ro)  # never written
    first, part = next(iter_top_x(U, prepared, 5))
    assert first == 0 and part.ids.shape == (min(300, 2048), 5)


def test_prepared_items_refuse_settings_fixed_at_preparation():
    from localfm.recommend.topx import prepare_items

    U, I = _fm_like(4, 50)
    prepared = prepare_items(I, precision="fp32")
    with pytest.raises(LocalFMError, match="precision: already fixed by the prepared items"):
        top_x(U, prepared, 3, precision="fp32")
    with pytest.raises(LocalFMError, match="user vectors have dimension 3"):
        top_x(U[:, :3], prepared, 3)


# ---------------------------------------------------------------- the fused float32 kernel
#
# With numba and a torch whose library exports MKL's sgemm_, precision "fp32" runs
# _heapscan.scan_blocks (products, pruning and selection in one call per core); without
# that sgemm it falls back to the per-block path. Both must give the same bytes.

def _fused_or_skip():
    pytest.importorskip("numba")
    from localfm.recommend.topx import fused_available

    if not fused_available():
        pytest.skip("this torch build exports no sgemm_: the fused kernel is off here")


def _run_both(monkeypatch, *args, **kwargs):
    """(fused result, per-block result), checking the fused kernel really ran."""
    import localfm.recommend._heapscan as hs
    import localfm.recommend.topx as tx

    calls = []
    real = hs.scan_blocks
    monkeypatch.setattr(hs, "scan_blocks", lambda *a: calls.append(1) or real(*a))
    fused = tx.top_x(*args, kernel="numba", precision="fp32", **kwargs)
    n_fused = len(calls)
    assert n_fused, "the fused kernel did not run"
    monkeypatch.setattr(tx, "fused_available", lambda: False)
    per_block = tx.top_x(*args, kernel="numba", precision="fp32", **kwargs)
    assert len(calls) == n_fused, "the per-block path ran the fused kernel"
    return fused, per_block


@pytest.mark.parametrize("extra", [None, 1])
@pytest.mark.parametrize("with_exclusions", [False, True])
@pytest.mark.parametrize("k", [1, 5, 40, 200])
def test_fused_kernel_ties_exclusions_and_k_beyond_the_catalogue(monkeypatch, extra, with_exclusions, k):
    """Massive ties, exclusions and k > items (120): the fused kernel gives the tie rule's ids,
    the same bytes as the per-block path. ``extra=1`` shrinks each user's result buffer to
    k + max(1, k/4), below a block's winners, so it is cut back mid-row again and again."""
    _fused_or_skip()
    import localfm.recommend._heapscan as hs

    if extra is not None:
        monkeypatch.setattr(hs, "EXTRA", extra)
    rng = np.random.default_rng(15)
    U = rng.integers(-1, 3, (40, 6)).astype(np.float32)
    U[:, -1] = 1
    I = rng.integers(-1, 2, (120, 6)).astype(np.float32)
    I[:30] *= 3
    ex = _seen(U, I, 0.2, 9) if with_exclusions else None
    fused, per_block = _run_both(monkeypatch, U, I, k, exclude=ex, batch_size=16, block_size=8)
    np.testing.assert_array_equal(fused.ids, _brute_tie_rule(U, I, k, ex))
    np.testing.assert_array_equal(fused.ids, per_block.ids)
    np.testing.assert_array_equal(fused.scores, per_block.scores)
    assert fused.ids.shape == (40, min(k, 120))


@pytest.mark.parametrize("gap", [None, 1])
@pytest.mark.parametrize("with_exclusions", [False, True])
def test_fused_kernel_on_fm_shaped_vectors_prunes_like_the_per_block_path(monkeypatch, gap, with_exclusions):
    """The pruning rule reads a user's k-th score as of its last buffer cut: with a cut after
    every row that brought a result (gap 1) that is the heap's k-th, so exactly the same
    scores are skipped; the default gap lags a little, so it skips a subset of them."""
    _fused_or_skip()
    import localfm.recommend._heapscan as hs

    if gap is not None:
        monkeypatch.setattr(hs, "CUT_GAP", gap)
    U, I = _fm_like(300, 2000, d=33, seed=21)
    U, I = _exact_grid(U), _exact_grid(I)
    ex = _seen(U, I, 0.05, 3) if with_exclusions else None
    fused, per_block = _run_both(monkeypatch, U, I, 25, exclude=ex, batch_size=128)
    np.testing.assert_array_equal(fused.ids, _brute_tie_rule(U, I, 25, ex))
    np.testing.assert_array_equal(fused.scores, per_block.scores)
    if gap == 1:
        assert fused.skipped == per_block.skipped > 0
    else:
        assert 0 < fused.skipped <= per_block.skipped


def test_fused_kernel_bytes_do_not_depend_on_batch_or_threads():
    """Raw float32 vectors (rounding matters): a user's scores must not depend on which other
    users share its GEMM tile, so batch size and thread count leave every byte unchanged."""
    _fused_or_skip()
    U, I = _fm_like(700, 3000, d=65, seed=22)
    want = top_x(U, I, 50, precision="fp32", kernel="numba", threads=1, batch_size=2048)
    for threads, batch in [(2, 2048), (1, 37), (2, 300)]:
        got = top_x(U, I, 50, precision="fp32", kernel="numba", threads=threads, batch_size=batch)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
    _assert_same_ranking(want, U, I, 50)


def test_rank_keys_order_results_like_the_tie_rule():
    """Larger key = better result: higher score, then smaller column; -0.0 ties with +0.0."""
    pytest.importorskip("numba")
    from localfm.recommend._heapscan import _key_bits, _rank_key

    vals = np.array([-np.inf, -3e38, -2.0, -1e-30, -0.0, 0.0, 1e-30, 2.0, 3e38, np.inf], np.float32)
    rng = np.random.default_rng(0)
    v = rng.choice(vals, 400)
    c = rng.integers(0, 50, 400)
    bits = v.view(np.uint32)
    keys = np.array([_rank_key(b, cc) for b, cc in zip(bits, c)], np.uint64)
    want = np.lexsort((c, -v.astype(np.float64)))  # best first: score desc (-0.0 == 0.0), column asc
    got = sorted(range(400), key=lambda j: -int(keys[j]))
    assert [(v[j], c[j]) for j in got] == [(v[j], c[j]) for j in want]
    back = np.array([_key_bits(kk) for kk in keys], np.uint32).view(np.float32)
    np.testing.assert_array_equal(back, v)  # -0.0 comes back as +0.0, equal as a float
    assert not np.signbit(back[v == 0]).any()


@pytest.mark.parametrize("n", [1, 2, 3, 17, 300])
def test_nth_largest_partitions_around_the_rank(n):
    pytest.importorskip("numba")
    from localfm.recommend._heapscan import _nth_largest

    rng = np.random.default_rng(n)
    for t in sorted({0, n // 2, n - 1}):
        a = rng.permutation(np.arange(10, 10 + 3 * n, 3, dtype=np.uint64))
        tail = np.full(5, 7, np.uint64)
        buf = np.concatenate([a, tail])  # only the first n take part
        _nth_largest(buf, n, t)
        want = np.sort(a)[::-1]
        assert buf[t] == want[t]
        assert (buf[:t] > buf[t]).all() and (buf[t + 1:n] < buf[t]).all()
        assert sorted(buf[:n].tolist()) == sorted(a.tolist()) and (buf[n:] == 7).all()


# ---------------------------------------------------------------- benchmarks.topx_vs_faiss: trained vectors


def test_benchmark_repackages_a_trained_fm_and_resamples_distinct_vectors():
    """The benchmark's trained-model vectors rank like the FM itself, and resampling adds distinct rows."""
    from pathlib import Path

    from benchmarks.data import Ratings
    from benchmarks.topx_vs_faiss import _repackage, resample
    from localfm.fm.model import FactorizationMachine

    D = np.loadtxt(Path(__file__).resolve().parents[2] / "data" / "ml-synthetic" / "u.data", dtype=np.int64,
                   usecols=(0, 1, 2))
    r = Ratings(D[:, 0] - 1, D[:, 1] - 1, D[:, 2].astype(np.float32), int(D[:, 0].max()), int(D[:, 1].max()))
    fm = FactorizationMachine(feature_dim=r.n_users + r.n_items, num_factors=4, predictor_type="regressor",
                              epochs=1, mini_batch_size=500, seed=0).fit(r.onehot(), r.ratings)
    U, I = _repackage(fm, r.n_users, r.n_items)
    raw = fm.predict(sp.vstack([Ratings(np.repeat(np.arange(3), r.n_items), np.tile(np.arange(r.n_items), 3),
                                        np.zeros(3 * r.n_items, np.float32), r.n_users, r.n_items).onehot()]))
    raw = np.asarray(raw, np.float64).reshape(3, r.n_items)
    ip = U[:3].astype(np.float64) @ I.T.astype(np.float64)
    # inner product + a per-user constant == FM score: the difference is constant along each row.
    np.testing.assert_allclose(raw - ip, (raw - ip)[:, :1].repeat(r.n_items, 1), atol=1e-4)
    rng = np.random.default_rng(0)
    Ur = resample(U, 5 * U.shape[0], 0.1, rng, user=True)
    Ir = resample(I, 5 * I.shape[0], 0.1, rng, user=False)
    assert Ur.shape == (5 * U.shape[0], U.shape[1]) and (Ur[:, -1] == 1.0).all()
    assert np.unique(Ir, axis=0).shape[0] == Ir.shape[0]  # noise makes every resampled item distinct
    assert np.unique(resample(I, 10, 0.0, rng, user=False), axis=0).shape[0] == 10  # fewer: no repeats


@pytest.mark.slow
def test_benchmark_trains_ml100k_once_then_reads_the_cache(ml100k_dir, tmp_path, monkeypatch, capsys):
    import sys

    import benchmarks.topx_vs_faiss as bench

    monkeypatch.setattr(bench, "CACHE", tmp_path)
    U, I, meta = bench.trained_vectors("ml100k")
    assert U.shape == (943, 65) and I.shape[1] == 65 and meta["model_items"] == I.shape[0]
    assert list(tmp_path.iterdir()) == [tmp_path / "topx-ml100k-k64.npz"]
    import localfm.fm.model

    monkeypatch.setattr(localfm.fm.model, "FactorizationMachine", None)  # a second training would fail
    U2, I2, _ = bench.trained_vectors("ml100k")
    np.testing.assert_array_equal(U2, U)
    np.testing.assert_array_equal(I2, I)
    monkeypatch.setattr(sys, "argv", ["topx_vs_faiss", "--kind", "ml100k", "--users", "500", "--items", "3000",
                                      "--repeat", "1", "--check-users", "200", "--precision", "fp32"])
    bench.main()
    out = __import__("json").loads(capsys.readouterr().out)
    assert out["ids_identical_unpruned"] == 1.0 and out["ids_identical_brute"] == 1.0
    assert out["skipped_fraction"] > 0.3 and out["id_set_agreement"] > 0.999


def test_fused_ranking_never_imports_torch():
    """The fused float32 path loads torch's library, not the torch package: importing torch
    cost every ranking process ~2 s before its first batch (each Ray actor on the job's
    critical path). Its ids must still be the torch per-block path's."""
    import json

    _fused_or_skip()
    code = (
        "import json, sys, numpy as np\n"
        "from localfm.recommend.topx import top_x\n"
        "from localfm.recommend.recommend import rank\n"
        "from localfm.recommend.vectors import Repackaged\n"
        "rng = np.random.default_rng(3)\n"
        "U = rng.standard_normal((300, 9)).astype(np.float32)\n"
        "I = rng.standard_normal((700, 9)).astype(np.float32)\n"
        "ids = top_x(U, I, 7, precision='fp32', batch_size=64).ids\n"
        "rep = Repackaged(user_ids=np.arange(300), user_vectors=U, user_constants=np.zeros(300),\n"
        "                 item_ids=np.arange(700), item_vectors=I, predictor_type='regressor')\n"
        "rows = [b.item_id.tolist() for b in rank(rep, k=7, precision='fp32', batch_size=64)]\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'ids': ids.tolist(), 'rows': sum(rows, [])}))\n"
    )
    out = run_python(code)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["torch"] is False
    rng = np.random.default_rng(3)
    U = rng.standard_normal((300, 9)).astype(np.float32)
    I = rng.standard_normal((700, 9)).astype(np.float32)
    want = top_x(U, I, 7, precision="fp32", batch_size=64, kernel="torch").ids
    np.testing.assert_array_equal(np.array(got["ids"]), want)
    assert got["rows"] == want.reshape(-1).tolist()


# ------------------------------------------------------------------ ranking on a device
def _on_device(U, I, k, exclude=None, batch_size=64, device="cpu"):
    """The device path itself (:func:`_iter_on_device`), by default on the CPU: the same torch
    code a GPU runs, so its masking, batching and tie rule are checked on every machine."""
    from localfm.recommend.topx import TopX, _iter_on_device, prepare_items

    prep = prepare_items(I, precision="fp32")
    kk = min(k, I.shape[0])
    parts = [p for _, p in _iter_on_device(U, prep, kk, exclude, batch_size, range(0, U.shape[0], batch_size), device)]
    return TopX(scores=np.concatenate([p.scores for p in parts]), ids=np.concatenate([p.ids for p in parts]))


@pytest.mark.parametrize("with_exclusions", [False, True])
def test_device_path_follows_the_engines_tie_rule(trained_vectors, with_exclusions):
    U, I = (_exact_grid(X) for X in trained_vectors)  # exact float32 products: no rounding to hide behind
    ex = _seen(U, I, 0.05, 7) if with_exclusions else None
    res = _on_device(U, I, 20, ex, batch_size=100)
    np.testing.assert_array_equal(res.ids, _brute_tie_rule(U, I, 20, ex))
    np.testing.assert_array_equal(res.ids, top_x(U, I, 20, exclude=ex, precision="fp32").ids)


def test_device_path_leaves_the_callers_torch_modes_alone_between_batches():
    """The path is a generator: whatever it sets (inference mode, full float32 matmuls) must be
    back to the caller's settings whenever the caller runs, between batches too."""
    import torch

    from localfm.recommend.topx import _iter_on_device, prepare_items

    U, I = _fm_like(50, 40)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        batches = _iter_on_device(U, prepare_items(I, precision="fp32"), 5, None, 20, range(0, 50, 20), "cpu")
        for _ in batches:
            assert not torch.is_inference_mode_enabled()
            assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize(("kernel", "precision"), [("torch", "fp32"), ("torch", "bf16"), ("numba", "bf16")])
def test_cpu_paths_leave_the_callers_torch_modes_alone_between_batches(kernel, precision):
    """The torch-GEMM paths set torch's thread count (and the torch kernel inference mode) per
    batch: the caller's own settings hold whenever the caller runs, between batches too."""
    import torch

    U, I = _fm_like(50, 40)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither the 2 threads asked for below nor the numba path's 1
    try:
        batches = iter_top_x(U, I, 5, batch_size=20, threads=2, kernel=kernel, precision=precision)
        n = 0
        for _ in batches:
            assert not torch.is_inference_mode_enabled()
            assert torch.get_num_threads() == 3
            n += 1
        assert n == 3
    finally:
        torch.set_num_threads(before)


def test_device_path_ties_padding_and_k_beyond_the_catalogue():
    ones = _on_device(np.ones((2, 3), np.float32), np.ones((6, 3), np.float32), 4, batch_size=1)
    assert ones.ids.tolist() == top_x(np.ones((2, 3), np.float32), np.ones((6, 3), np.float32), 4).ids.tolist()
    U, I = _fm_like(5, 8, seed=4)
    ex = sp.lil_matrix((5, 8))
    ex[0, :] = 1
    ex[1, :5] = 1
    res = _on_device(U, I, 10, ex.tocsr(), batch_size=2)
    want = top_x(U, I, 10, exclude=ex.tocsr(), precision="fp32")
    assert res.ids.shape == (5, 8)
    np.testing.assert_array_equal(res.ids, want.ids)
    assert (res.ids[0] == -1).all() and np.isneginf(res.scores[0]).all()


def test_device_path_slices_a_batch_to_bound_its_memory(monkeypatch, trained_vectors):
    """A user batch times the catalogue over DEVICE_SCORES is scored a slice of users at a time:
    the same result, batch by batch, as scoring it whole."""
    from localfm.recommend import topx

    U, I = (_exact_grid(X) for X in trained_vectors)
    ex = _seen(U, I, 0.05, 7)
    whole = _on_device(U, I, 20, ex, batch_size=100)
    monkeypatch.setattr(topx, "DEVICE_SCORES", 7 * I.shape[0] + 3)  # 7 users a slice, uneven against 100
    sliced = _on_device(U, I, 20, ex, batch_size=100)
    np.testing.assert_array_equal(sliced.ids, whole.ids)
    np.testing.assert_array_equal(sliced.scores, whole.scores)
    monkeypatch.setattr(topx, "DEVICE_SCORES", 1)  # less than one user's scores: still one user a slice
    np.testing.assert_array_equal(_on_device(U[:30], I, 20, ex[:30], batch_size=100).ids, whole.ids[:30])


def test_device_argument_errors(monkeypatch):
    import torch

    U, I = _fm_like(4, 10)
    with pytest.raises(LocalFMError, match=r"^device: expected cpu, cuda, cuda:N or mps, got 'gpu'$"):
        top_x(U, I, 3, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LocalFMError, match=r"^device: 'cuda' asked for, but torch sees no CUDA device here"):
        top_x(U, I, 3, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LocalFMError, match=r"^precision: 'bf16' screens on the CPU only; on cuda"):
        top_x(U, I, 3, device="cuda", precision="bf16")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_cuda_ranking_matches_the_cpu_engine():
    U, I = _fm_like(3000, 5000, seed=9)
    ex = _seen(U, I, 0.02, 3)
    grid_U, grid_I = _exact_grid(U), _exact_grid(I)
    got = top_x(grid_U, grid_I, 50, exclude=ex, device="cuda", batch_size=700)
    np.testing.assert_array_equal(got.ids, _brute_tie_rule(grid_U, grid_I, 50, ex))
    _assert_same_ranking(top_x(U, I, 50, exclude=ex, device="cuda", batch_size=1024), U, I, 50, ex)
