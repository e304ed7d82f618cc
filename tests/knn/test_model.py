"""The KNN estimator: reservoir sampling, voting, SageMaker's artifact layout."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.knn import KNN, reservoir_sample, vote


def data(n: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 4, n).astype(np.float32)


def hp(**over: object) -> dict[str, object]:
    return {"feature_dim": 6, "k": 5, "predictor_type": "classifier", "sample_size": 1000, **over}


def test_reservoir_sample_is_seeded_and_uniform() -> None:
    a = reservoir_sample(1000, 100, seed=1)
    assert a.shape == (100,) and len(np.unique(a)) == 100 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, reservoir_sample(1000, 100, seed=1))
    assert not np.array_equal(a, reservoir_sample(1000, 100, seed=2))
    np.testing.assert_array_equal(reservoir_sample(50, 100), np.arange(50))
    # each row kept with probability size/n = 0.2: check the first and last tenth
    counts = np.zeros(200)
    for seed in range(300):
        counts[reservoir_sample(200, 40, seed=seed)] += 1
    freq = counts / 300
    assert abs(freq[:20].mean() - 0.2) < 0.03 and abs(freq[-20:].mean() - 0.2) < 0.03


def test_vote_tie_rule_and_regressor_mean() -> None:
    best_first = np.array([[3, 1, 1, 3, 2],   # 1 and 3 tie twice; 3 is nearest -> 3
                           [2, 1, 1, 2, 1],   # 1 three times -> 1
                           [4, 5, 6, 7, 8]])  # all once -> nearest, 4
    np.testing.assert_array_equal(vote(best_first, "classifier"), [3, 1, 4])
    np.testing.assert_allclose(vote(best_first, "regressor"), [2.0, 1.4, 6.0])


def test_sample_size_limits_the_index() -> None:
    x, y = data(400)
    m = KNN(**hp(sample_size=150, seed=3)).fit(x, y)
    assert m.index_ is not None and m.index_.ntotal == 150
    np.testing.assert_array_equal(m.labels_, y[m.sample_indices_])
    np.testing.assert_array_equal(m.sample_indices_, reservoir_sample(400, 150, seed=3))


def test_predict_matches_brute_force() -> None:
    x, y = data(300)
    q = np.random.default_rng(9).normal(size=(25, 6)).astype(np.float32)
    m = KNN(**hp(k=7)).fit(x, y)
    d2 = ((q[:, None, :].astype("f8") - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(m.predict(q), vote(y[order], "classifier"))
    dist, labels = m.kneighbors(q)
    np.testing.assert_allclose(dist, np.take_along_axis(d2, order, 1), rtol=1e-4, atol=1e-5)
    reg = KNN(**hp(k=7, predictor_type="regressor")).fit(x, y)
    np.testing.assert_allclose(reg.predict(q), y[order].mean(axis=1), rtol=1e-6)


def test_inner_product_neighbours_are_ascending_with_best_last() -> None:
    x, y = data(200)
    y = np.arange(200, dtype=np.float32)
    q = x[:3] * 2
    m = KNN(**hp(index_metric="INNER_PRODUCT", predictor_type="regressor")).fit(x, y)
    dist, labels = m.kneighbors(q)
    assert (np.diff(dist, axis=1) >= 0).all()
    best = (q.astype("f8") @ x.T.astype("f8")).argmax(axis=1)
    np.testing.assert_array_equal(labels[:, -1], best)


@pytest.mark.parametrize("index_type, metric, extra", [
    ("faiss.Flat", "L2", {}),
    ("faiss.IVFFlat", "INNER_PRODUCT", {"faiss_index_ivf_nlists": "8"}),
    ("faiss.IVFPQ", "L2", {"faiss_index_pq_m": "2"}),
    ("faiss.HNSW", "COSINE", {}),
    ("faiss.Flat", "COSINE", {"dimension_reduction_type": "sign", "dimension_reduction_target": "3"}),
])
def test_save_load_every_form(tmp_path: Path, index_type: str, metric: str, extra: dict) -> None:
    x, y = data(300)
    m = KNN(**hp(index_type=index_type, index_metric=metric, **extra)).fit(x, y)
    tarball = m.save(tmp_path / "model")
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["model.tar.gz", "model_algo-1", "model_algo-1.json", "model_algo-1.labels"]
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["model_algo-1", "model_algo-1.json", "model_algo-1.labels"]
    labels = np.frombuffer((tmp_path / "model" / "model_algo-1.labels").read_bytes(), "<f4")
    np.testing.assert_array_equal(labels, m.labels_)
    meta = json.loads((tmp_path / "model" / "model_algo-1.json").read_text())
    assert {"k", "predictor_type", "dimension_reduction", "normalize", "version"} <= set(meta)
    assert meta["normalize"] is (metric == "COSINE")
    expected = m.kneighbors(x[:10])
    for form in (tmp_path / "model", tarball, tmp_path / "model" / "model_algo-1"):
        back = KNN.load(form)
        got = back.kneighbors(x[:10])
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    # tarball alone
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "model.tar.gz").write_bytes(tarball.read_bytes())
    np.testing.assert_array_equal(KNN.load(tmp_path / "only").predict(x[:10]), m.predict(x[:10]))


def test_identical_models_give_identical_bytes(tmp_path: Path) -> None:
    x, y = data(100)
    KNN(**hp()).fit(x, y).save(tmp_path / "a")
    KNN(**hp()).fit(x, y).save(tmp_path / "b")
    assert (tmp_path / "a" / "model.tar.gz").read_bytes() == (tmp_path / "b" / "model.tar.gz").read_bytes()


def test_json_is_editable_like_the_cloud(tmp_path: Path) -> None:
    x, y = data(200)
    KNN(**hp(k=5)).fit(x, y).save(tmp_path)
    meta_path = tmp_path / "model_algo-1.json"
    meta = json.loads(meta_path.read_text())
    meta["k"] = 3
    meta["predictor_type"] = "regressor"
    meta_path.write_text(json.dumps(meta))
    m = KNN.load(tmp_path)
    dist, labels = m.kneighbors(x[:4])
    assert dist.shape == (4, 3) and m.predictor_type == "regressor"
    np.testing.assert_allclose(m.predict(x[:4]), labels.mean(axis=1), rtol=1e-6)


def test_k_larger_than_sample() -> None:
    x, y = data(30)
    m = KNN(**hp(k=50)).fit(x, y)
    dist, labels = m.kneighbors(x[:2])
    assert dist.shape == (2, 30) and np.isfinite(dist).all()


def test_bad_training_input() -> None:
    x, y = data(50)
    with pytest.raises(LocalFMError, match="7 features .feature_dim., got 6"):
        KNN(**hp(feature_dim=7)).fit(x, y)
    with pytest.raises(LocalFMError, match="50 rows but 49 labels"):
        KNN(**hp()).fit(x, y[:-1])
    bad = x.copy()
    bad[7, 0] = np.inf
    with pytest.raises(LocalFMError, match="row 7"):
        KNN(**hp()).fit(bad, y)
    yb = y.copy()
    yb[2] = np.nan
    with pytest.raises(LocalFMError, match="label of row 2"):
        KNN(**hp()).fit(x, yb)
    with pytest.raises(LocalFMError, match="not trained"):
        KNN(**hp()).predict(x)


def test_broken_artifacts(tmp_path: Path) -> None:
    x, y = data(40)
    KNN(**hp()).fit(x, y).save(tmp_path)
    (tmp_path / "model_algo-1.labels").write_bytes(b"\0" * 12)
    (tmp_path / "model.tar.gz").unlink()
    with pytest.raises(LocalFMError, match="3 labels for an index of 40"):
        KNN.load(tmp_path)
    (tmp_path / "model_algo-1.json").write_text("{not json")
    with pytest.raises(LocalFMError, match="not valid JSON"):
        KNN.load(tmp_path)
    (tmp_path / "model_algo-1.json").unlink()
    with pytest.raises(LocalFMError, match="expected model.tar.gz"):
        KNN.load(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../model_algo-1")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "evil.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(LocalFMError, match="lacks"):
        KNN.load(tmp_path / "evil.tar.gz")
    assert not (tmp_path.parent / "model_algo-1").exists()


@pytest.mark.slow
def test_load_from_s3(tmp_path: Path, new_s3_bucket) -> None:
    x, y = data(60)
    m = KNN(**hp()).fit(x, y)
    tarball = m.save(tmp_path)
    new_s3_bucket("models").upload_file(str(tarball), "models", "knn/model.tar.gz")
    back = KNN.load("s3://models/knn/model.tar.gz")
    np.testing.assert_array_equal(back.predict(x[:5]), m.predict(x[:5]))
    with pytest.raises(LocalFMError, match="not found"):
        KNN.load("s3://models/knn/missing.tar.gz")


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda m: m["localfm"]["index"].__setitem__("nprobe", "x"), "malformed index metadata"),
        (lambda m: m["localfm"]["index"].__setitem__("pad", "x"), "malformed index metadata"),
        (lambda m: m["localfm"].__setitem__("index", ["a"]), "'localfm.index' must be a JSON object"),
        (lambda m: m["localfm"].__setitem__("hyperparameters", [1]), "'localfm.hyperparameters' must be a JSON object"),
    ],
)
def test_malformed_localfm_metadata_is_bad_input_not_a_crash(tmp_path: Path, edit, needle: str) -> None:
    # These used to escape as ValueError/TypeError (exit 1) from int()/dict() on the edited JSON.
    x, y = data(200)
    KNN(**hp(index_type="faiss.IVFFlat", faiss_index_ivf_nlists=4)).fit(x, y).save(tmp_path)
    meta = json.loads((tmp_path / "model_algo-1.json").read_text())
    edit(meta)
    (tmp_path / "model_algo-1.json").write_text(json.dumps(meta))
    with pytest.raises(LocalFMError, match=needle):
        KNN.load(tmp_path)


def test_non_numeric_labels_are_a_localfm_error_not_value_error() -> None:
    x, _ = data(3)
    with pytest.raises(LocalFMError, match="training data: labels must be numbers"):
        KNN(**hp()).fit(x, ["a", "b", "c"])


# ---------------------------------------------------------------- estimator rules (scikit-learn)
def test_constructor_only_stores_and_fit_validates() -> None:
    m = KNN(**hp(k=0))
    assert m.get_params() == {"seed": None, **hp(k=0)}
    assert not [name for name in vars(m) if name.endswith("_")]  # no learned state before fit
    with pytest.raises(LocalFMError, match="hyperparameter 'k'"):
        m.check_params()
    with pytest.raises(LocalFMError, match="hyperparameter 'k'"):  # fails on the value, before the data
        m.fit(object(), None)
    x, y = data(60)
    assert m.set_params(k=3) is m
    assert m.fit(x, y) is m
    assert m.hp_["k"] == 3 and m.k == 3 and m.report_ == {}
    with pytest.raises(LocalFMError, match="not trained"):
        _ = KNN(**hp()).k


def test_seed_is_a_keyword_like_fm_and_reaches_the_sample(tmp_path: Path) -> None:
    x, y = data(400)
    a = KNN(seed=3, **hp(sample_size=150)).fit(x, y)
    np.testing.assert_array_equal(a.sample_indices_, reservoir_sample(400, 150, seed=3))
    assert a.hp_["seed"] == 3 and a.get_params()["seed"] == 3
    b = KNN(**hp(sample_size=150)).fit(x, y)  # None: the hyperparameter default, 0
    np.testing.assert_array_equal(b.sample_indices_, reservoir_sample(400, 150, seed=0))
    with pytest.raises(LocalFMError, match="hyperparameter 'seed'"):
        KNN(seed=-1, **hp()).check_params()
    a.save(tmp_path)
    back = KNN.load(tmp_path)
    assert back.hp_["seed"] == 3 and back.seed == 3
    twin = KNN(**a.get_params()).fit(x, y)
    np.testing.assert_array_equal(twin.sample_indices_, a.sample_indices_)
