"""`localfm recommend` approximate indexes meet recall@100 >= 0.95 at their default settings.

The cloud's k-NN default (IVF with nlist = sqrt(n) lists, nprobe 5) recalls far less on
FM vectors; ``--nprobe auto`` (the default of ``localfm recommend``, not of ``localfm knn``)
raises nprobe until the target is met on sampled users and reports recall on held-out
users. Each test also runs the explicit ``--nprobe 5`` and checks that it is *below*
the target, so a regression that quietly stops tuning fails here.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.recommend.recommend import RecommendStats, rank, seen_matrix
from localfm.recommend.vectors import Repackaged

K = 100


def fm_like(n_users: int = 943, n_items: int = 1682, factors: int = 64, seed: int = 0) -> Repackaged:
    """Repackaged FM vectors shaped like ml-100k: item = [factors, bias], user = [factors, 1].

    Factors N(0, 0.3), item biases N(0, 1): the bias column dominates the item norms,
    as in trained FMs, which is what makes 5 of sqrt(n) IVF lists too few.
    """
    rng = np.random.default_rng(seed)
    U = np.hstack([rng.normal(0, 0.3, (n_users, factors)), np.ones((n_users, 1))]).astype(np.float32)
    I = np.hstack([rng.normal(0, 0.3, (n_items, factors)), rng.normal(0, 1.0, (n_items, 1))]).astype(np.float32)
    return Repackaged(user_ids=np.arange(1, n_users + 1), user_vectors=U, user_constants=np.zeros(n_users),
                      item_ids=np.arange(1, n_items + 1), item_vectors=I, predictor_type="regressor")


def _run(rep: Repackaged, **kw) -> tuple[RecommendStats, dict[int, list[int]]]:
    recs = rank(rep, k=K, index="faiss.IVFFlat", **kw)
    rows: dict[int, list[int]] = {}
    for b in recs:
        for u, i in zip(b.user_id.tolist(), b.item_id.tolist()):
            rows.setdefault(u, []).append(i)
    return recs.stats, rows


def _true_recall(rep: Repackaged, rows: dict[int, list[int]], banned: np.ndarray | None = None) -> float:
    """recall@K of the stored rows against a brute-force ranking (independent of the code under test)."""
    S = rep.user_vectors.astype(np.float64) @ rep.item_vectors.astype(np.float64).T
    if banned is not None:
        S[banned] = -np.inf
    top = np.argsort(-S, axis=1)[:, :K]
    return float(np.mean([len(set(rows[uid]) & set(rep.item_ids[top[r]].tolist())) / K
                          for r, uid in enumerate(rep.user_ids.tolist())]))


@pytest.fixture(scope="module")
def rep() -> Repackaged:
    return fm_like()


@pytest.mark.slow
def test_synthetic_default_meets_target_and_nprobe_5_does_not(rep):
    stats, rows = _run(rep)
    tuned = stats.nprobe
    assert tuned["mode"] == "auto" and tuned["met"] and tuned["nlist"] == 41
    assert 5 < tuned["nprobe"] <= 41 and tuned["tuning_recall"] >= 0.95
    assert tuned["tried"][0]["nprobe"] == 5 and tuned["tried"][0]["recall"] < 0.95
    # Smallest passing value: the next lower nprobe tried (if any) failed.
    lower = [t for t in tuned["tried"] if t["nprobe"] < tuned["nprobe"]]
    assert max(lower, key=lambda t: t["nprobe"])["nprobe"] == tuned["nprobe"] - 1 or len(lower) == 1
    r = stats.recall
    assert r["users"] == 943 and r["held_out_users"] == 943 - tuned["tuning_users"] > 0
    assert r["recall"] >= 0.95 and r["held_out_recall"] >= 0.95 and r["held_out_reference"] == "exact FM ranking"
    # The reported recall is what was actually stored.
    assert _true_recall(rep, rows) == pytest.approx(r["recall"], abs=1e-9)

    stats5, rows5 = _run(rep, nprobe=5)
    assert stats5.nprobe == {"mode": "fixed", "nprobe": 5, "nlist": 41}
    assert stats5.recall["recall"] < 0.9 and "held_out_recall" not in stats5.recall
    assert _true_recall(rep, rows5) == pytest.approx(stats5.recall["recall"], abs=1e-9)


@pytest.mark.slow
def test_exclude_seen_recall_is_post_exclusion(rep):
    rng = np.random.default_rng(3)
    # Each user has rated 30 random items, 10 of them among its exact top-100.
    S = rep.user_vectors @ rep.item_vectors.T
    top = np.argsort(-S, axis=1)[:, :K]
    banned = np.zeros(S.shape, dtype=bool)
    for u in range(S.shape[0]):
        banned[u, rng.choice(S.shape[1], 20, replace=False)] = True
        banned[u, rng.choice(top[u], 10, replace=False)] = True
    u, i = np.nonzero(banned)
    seen = seen_matrix(rep.user_ids, rep.item_ids, rep.user_ids[u], rep.item_ids[i])
    stats, rows = _run(rep, seen=seen)
    assert not any(banned[uid - 1, np.asarray(items) - 1].any() for uid, items in rows.items())
    assert _true_recall(rep, rows, banned) == pytest.approx(stats.recall["recall"], abs=1e-9)
    assert stats.recall["held_out_recall"] >= 0.95 and stats.nprobe["met"]


def test_target_and_nprobe_validation(rep):
    small = fm_like(60, 200, 8, seed=1)
    stats, _ = _run(small, target_recall=1.0)  # the smallest nprobe that recalls everything for the tuning users
    t = stats.nprobe
    assert t["met"] and t["tuning_recall"] == 1.0 and t["tuning_users"] == 30 and t["nlist"] == 14
    assert all(x["recall"] < 1.0 for x in t["tried"] if x["nprobe"] < t["nprobe"])
    assert any(x["nprobe"] == t["nprobe"] - 1 for x in t["tried"])
    # L2 is not FM order at any nprobe: the target applies to exact L2 search, FM recall is still reported.
    stats, _ = _run(small, index_metric="L2")
    assert stats.nprobe["reference"] == "exact L2 search" and stats.nprobe["met"]
    assert stats.recall["held_out_reference"] == "exact L2 search" and stats.recall["held_out_recall"] >= 0.9
    assert 0.0 <= stats.recall["recall"] <= 1.0
    for bad in ({"nprobe": 0}, {"nprobe": "many"},
                {"target_recall": 1.5}, {"tune_users": 0}):
        with pytest.raises(LocalFMError):
            _run(small, **bad)


@pytest.mark.slow
def test_cli_default_tunes_and_explicit_nprobe_5_does_not(cli, tmp_path):
    """Always runs: the embedded synthetic MovieLens (ids only) with a random FM of ml-100k's shape."""
    from localfm.data.features import FeatureSpace
    from localfm.io.artifacts import FMWeights, save_fm

    data = tmp_path / "data"
    assert cli("--quiet", "prepare", "movielens", "--split", "ua", "--columns", "train", "--out", data)[0] == 0
    space = FeatureSpace.load(data / "features.json")
    rng = np.random.default_rng(5)
    d = space.feature_dim
    save_fm(tmp_path / "m.tar.gz", FMWeights(0.1, rng.normal(0, 1.0, d).astype(np.float32),
                                            rng.normal(0, 0.3, (d, 64)).astype(np.float32), "binary_classifier"))
    base = ["--quiet", "recommend", "--model", tmp_path / "m.tar.gz", "--features", data / "features.json",
            "-k", K, "--index", "faiss.IVFFlat"]
    code, out, err = cli(*base, "--out", tmp_path / "auto.jsonl")
    assert code == 0, err
    s = json.loads(out)
    assert s["nprobe"]["mode"] == "auto" and s["nprobe"]["met"] and s["nprobe"]["nprobe"] > 5
    assert s["recall"]["recall"] >= 0.95 and s["recall"]["held_out_recall"] >= 0.95
    assert f"nprobe auto -> {s['nprobe']['nprobe']} of {s['nprobe']['nlist']} lists" in err and "held-out" in err

    code, out, err = cli(*base, "--nprobe", "5", "--out", tmp_path / "five.jsonl")
    assert code == 0, err
    s5 = json.loads(out)
    assert s5["nprobe"]["mode"] == "fixed" and s5["nprobe"]["nprobe"] == 5 and s5["recall"]["recall"] < 0.95

    (tmp_path / "keep.jsonl").write_text("previous\n")
    for bad in (["--nprobe", "lots"], ["--nprobe", "0"], ["--target-recall", "0"]):
        code, _, err = cli(*base, *bad, "--out", tmp_path / "keep.jsonl")
        assert code == 2 and bad[0] in err, err
    assert (tmp_path / "keep.jsonl").read_text() == "previous\n"


@pytest.mark.slow
def test_ml100k_trained_fm_default_recall(cli, ml100k_dir, tmp_path):
    """Real ml-100k (ua split), an FM trained here with the cloud job's settings (30 epochs, ~1-3 s)."""
    from localfm.fm import FactorizationMachine
    from localfm.io.recordio import read_matrix

    data = tmp_path / "ml100k"
    assert cli("--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "ua", "--label", "binary:4",
               "--columns", "train", "--drop-unseen", "--order", "file", "--out", data)[0] == 0
    train = read_matrix(data / "train.protobuf")
    fm = FactorizationMachine(feature_dim=train.X.shape[1], num_factors=64, predictor_type="binary_classifier",
                              mini_batch_size=200, epochs=30, seed=1)
    fm.fit(train.X, train.y)
    model = tmp_path / "model.tar.gz"
    fm.save(model)
    base = ["--quiet", "recommend", "--model", model, "--features", data / "features.json", "-k", K,
            "--index", "faiss.IVFFlat"]

    code, out, err = cli(*base, "--out", tmp_path / "auto.parquet")
    assert code == 0, err
    s = json.loads(out)
    assert s["nprobe"]["mode"] == "auto" and s["nprobe"]["met"] and s["nprobe"]["nprobe"] > 5
    assert s["recall"]["recall"] >= 0.95 and s["recall"]["held_out_recall"] >= 0.95
    assert f"nprobe auto -> {s['nprobe']['nprobe']} of {s['nprobe']['nlist']}" in err

    code, out, err = cli(*base, "--nprobe", "5", "--out", tmp_path / "five.parquet")
    assert code == 0, err
    s5 = json.loads(out)
    assert s5["nprobe"]["mode"] == "fixed" and s5["recall"]["recall"] < 0.95
    assert "nprobe 5 of" in err

    code, _, err = cli(*base, "--nprobe", "lots", "--out", tmp_path / "bad.parquet")
    assert code == 2 and "--nprobe" in err and not (tmp_path / "bad.parquet").exists()
