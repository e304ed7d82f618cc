"""End-to-end ranking API: exact results equal a brute-force ranking of the FM score."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from tests.recommend.recommend_fakes import make_space, random_weights

from localfm.errors import LocalFMError, LocalFMWarning
from localfm.recommend.recommend import (
    RecommendOptions,
    positions,
    rank,
    read_seen,
    seen_matrix,
    select_items,
)
from localfm.recommend.vectors import fm_scores, repackage


@pytest.fixture(scope="module")
def setup():
    space = make_space(40, 150, su=4, si=6, seed=11)
    weights = random_weights(space.feature_dim, 8, seed=11)
    rep = repackage(weights, space)
    Xu, Xi = space.user_matrix(), space.item_matrix()
    # Brute force: the FM formula on every (user, item) feature row.
    S = np.vstack([fm_scores(weights, sp.vstack([Xu[u]] * Xi.shape[0]) + Xi) for u in range(Xu.shape[0])])
    return space, weights, rep, S


def _collect(batches):
    rows = {}
    for b in batches:
        for u, r, i, s in zip(b.user_id.tolist(), b.rank.tolist(), b.item_id.tolist(), b.score.tolist()):
            rows.setdefault(u, []).append((r, i, s))
    return rows


def _check_against(rows, rep, S, k, banned=None):
    for urow, uid in enumerate(rep.user_ids.tolist()):
        got = rows[uid]
        assert [r for r, _, _ in got] == list(range(1, len(got) + 1))
        s = S[urow].copy()
        if banned is not None:
            s[banned[urow]] = -np.inf
        expected = np.sort(s[np.isfinite(s)])[::-1][:k]
        # Scores are the true FM scores, ranked like brute force (ties aside).
        np.testing.assert_allclose([x for _, _, x in got], expected, rtol=1e-5, atol=1e-5)
        cols = positions(rep.item_ids, np.array([i for _, i, _ in got]))
        np.testing.assert_allclose(S[urow, cols], [x for _, _, x in got], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [7, 1024])
def test_exact_top_k_equals_brute_force_fm_ranking(setup, batch_size):
    _, _, rep, S = setup
    recs = rank(rep, k=12, batch_size=batch_size)
    rows = _collect(recs)
    stats = recs.stats
    _check_against(rows, rep, S, 12)
    assert stats.rows == 40 * 12 and stats.users == 40 and stats.index == "exact"


def test_exclude_seen_is_exact_after_filtering(setup):
    _, _, rep, S = setup
    rng = np.random.default_rng(0)
    banned = np.zeros_like(S, dtype=bool)
    # Ban each user's 10 best items plus a random 30%: top-k-then-filter would come up short.
    banned[np.arange(40)[:, None], np.argsort(-S, axis=1)[:, :10]] = True
    banned |= rng.random(S.shape) < 0.3
    u, i = np.nonzero(banned)
    seen = seen_matrix(rep.user_ids, rep.item_ids, rep.user_ids[u], rep.item_ids[i])
    rows = _collect(rank(rep, k=15, seen=seen))
    _check_against(rows, rep, S, 15, banned)


def test_allow_and_deny_lists(setup):
    _, _, rep, S = setup
    allow = rep.item_ids[::3]
    deny = rep.item_ids[::6]
    item_rows = select_items(rep.item_ids, allow=allow, deny=deny)
    rows = _collect(rank(rep, k=5, item_rows=item_rows))
    allowed = set(allow.tolist()) - set(deny.tolist())
    assert all(i in allowed for got in rows.values() for _, i, _ in got)
    banned = np.ones_like(S, dtype=bool)
    banned[:, item_rows] = False
    _check_against(rows, rep, S, 5, banned)
    with pytest.raises(LocalFMError, match="allow_items: item id"):
        select_items(rep.item_ids, allow=[999999])
    with pytest.raises(LocalFMError, match="no candidate items"):
        select_items(rep.item_ids, allow=allow[:1], deny=allow[:1])


def test_sigmoid_scores(setup):
    _, _, rep, S = setup
    rows = _collect(rank(rep, k=3, sigmoid=True))
    top = np.sort(S[0])[::-1][:3]
    np.testing.assert_allclose([s for _, _, s in rows[rep.user_ids[0]]], 1 / (1 + np.exp(-top)), rtol=1e-6)
    rep2 = type(rep)(**{**rep.__dict__, "predictor_type": "regressor"})
    with pytest.raises(LocalFMError, match="sigmoid"):
        list(rank(rep2, k=3, sigmoid=True))


def test_faiss_flat_equals_exact_and_approximate_reports_recall(setup):
    _, _, rep, S = setup
    exact = _collect(rank(rep, k=10))
    flat = _collect(rank(rep, k=10, index="faiss.Flat"))
    for u in exact:
        np.testing.assert_allclose([s for _, _, s in flat[u]], [s for _, _, s in exact[u]], rtol=1e-5, atol=1e-5)
    recs = rank(rep, k=10, index="faiss.HNSW")
    hnsw = _collect(recs)
    stats = recs.stats
    assert stats.recall is not None and 0.0 <= stats.recall["recall"] <= 1.0
    assert stats.recall["k"] == 10 and stats.recall["users"] == 40
    assert all(len(v) == 10 for v in hnsw.values())


def test_faiss_path_overfetches_to_survive_exclusions(setup):
    _, _, rep, S = setup
    banned = np.zeros_like(S, dtype=bool)
    banned[np.arange(40)[:, None], np.argsort(-S, axis=1)[:, :20]] = True
    u, i = np.nonzero(banned)
    seen = seen_matrix(rep.user_ids, rep.item_ids, rep.user_ids[u], rep.item_ids[i])
    rows = _collect(rank(rep, k=8, seen=seen, index="faiss.Flat"))
    _check_against(rows, rep, S, 8, banned)


def test_non_inner_product_metric_uses_faiss_and_reports_recall(setup):
    _, _, rep, _ = setup
    recs = rank(rep, k=5, index_metric="L2")
    rows = _collect(recs)
    stats = recs.stats
    assert stats.index == "faiss.Flat" and stats.recall is not None
    assert len(rows) == 40


def test_nan_vectors_and_bad_k(setup):
    _, _, rep, _ = setup
    bad = type(rep)(**{**rep.__dict__, "item_vectors": rep.item_vectors.copy()})
    bad.item_vectors[3, 0] = np.nan
    with pytest.raises(LocalFMError, match="NaN"):
        list(rank(bad, k=3))
    with pytest.raises(LocalFMError, match="positive integer"):
        list(rank(rep, k=0))


def test_read_seen_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t3\t891717742\n")
    u, i = read_seen(tmp_path / "u.data")
    assert u.tolist() == [1, 2] and i.tolist() == [10, 20]
    pq.write_table(pa.table({"user_id": [3, 4], "item_id": [30, 40], "rating": [1.0, 2.0]}), tmp_path / "t.parquet")
    u, i = read_seen(tmp_path / "t.parquet")
    assert u.tolist() == [3, 4] and i.tolist() == [30, 40]
    (tmp_path / "r.csv").write_text("userId,movieId,rating\n5,50,4\n")
    u, i = read_seen(tmp_path / "r.csv")
    assert u.tolist() == [5] and i.tolist() == [50]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LocalFMError, match="expected columns user_id and item_id"):
        read_seen(tmp_path / "bad.csv")
    (tmp_path / "bad.base").write_text("1\tx\t3\n")
    with pytest.raises(LocalFMError, match="expected 4 tab-separated numeric columns"):
        read_seen(tmp_path / "bad.base")
    with pytest.raises(LocalFMError, match="not found"):
        read_seen(tmp_path / "missing.parquet")


def test_seen_matrix_ignores_unknown_ids_and_duplicates():
    M = seen_matrix(np.array([1, 2]), np.array([10, 20, 30]), np.array([1, 1, 1, 9]), np.array([20, 20, 99, 10]))
    assert M.toarray().tolist() == [[0, 1, 0], [0, 0, 0]]


# ---------------------------------------------------------------- the result object and options


def test_result_is_iterated_once_and_summarises_after(setup):
    _, _, rep, _ = setup
    recs = rank(rep, k=4, batch_size=16)
    with pytest.raises(RuntimeError, match="iterate the batches first"):
        recs.summary()
    batches = list(recs)
    assert len(batches) == 3 and sum(len(b) for b in batches) == 40 * 4
    s = recs.summary()
    assert s["rows"] == 160 and s["users"] == 40 and s["items"] == 150 and s["k"] == 4 and s["index"] == "exact"
    assert s["score"] == "fm score" and "warnings" not in s
    json.dumps(s)  # the CLI prints it as JSON
    with pytest.raises(RuntimeError, match="only once"):
        list(recs)


def test_options_object_and_keywords_agree_and_keywords_win(setup):
    _, _, rep, _ = setup
    opts = RecommendOptions(k=3, batch_size=5, precision="fp32")
    a = [b.item_id.tolist() for b in rank(rep, opts)]
    b = [b.item_id.tolist() for b in rank(rep, k=3, batch_size=5, precision="fp32")]
    assert a == b
    assert sum(len(x) for x in rank(rep, opts, k=2)) == 40 * 2
    with pytest.raises(TypeError, match="mode"):
        rank(rep, k=3, mode="fp32")


@pytest.mark.parametrize(
    "field, value",
    [("batch_size", 0), ("threads", -1), ("precision", "fp16"), ("nprobe", "many"), ("target_recall", 0),
     ("tune_users", 0), ("recall_users", -1), ("k", 0)],
)
def test_bad_options_name_the_parameter_not_a_flag(setup, field, value):
    """Errors are raised at the call (before any ranking) and say `batch_size`, never `--batch-size`."""
    _, _, rep, _ = setup
    with pytest.raises(LocalFMError) as info:
        rank(rep, **{"k": 3, field: value})
    assert info.value.param == field and str(info.value).startswith(f"{field}:") and "--" not in str(info.value)


def test_k_above_candidate_items_warns_once_or_fails_when_strict(setup):
    _, _, rep, _ = setup
    item_rows = select_items(rep.item_ids, allow=rep.item_ids[:7])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = rank(rep, k=50, item_rows=item_rows)
        rows = sum(len(b) for b in recs)
    relevant = [w for w in caught if issubclass(w.category, LocalFMWarning)]
    assert len(relevant) == 1 and relevant[0].message.param == "k"
    assert "50 is more than the 7 candidate items" in str(relevant[0].message)
    assert rows == 40 * 7 and recs.warnings == [str(relevant[0].message)]
    assert recs.summary()["warnings"] == recs.warnings
    with pytest.raises(LocalFMError, match="^k: 50 is more than the 7 candidate items") as info:
        rank(rep, k=50, item_rows=item_rows, strict=True)
    assert info.value.param == "k"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LocalFMWarning)
        assert sum(len(b) for b in rank(rep, k=7, item_rows=item_rows, strict=True)) == 40 * 7

