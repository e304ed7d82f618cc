from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from localfm.errors import LocalFMError
from localfm.fm import FactorizationMachine
from localfm.fm.engines.torch import make_batches
from localfm.fm.model import predict_scores


def _data(n=60, d=15, seed=0, nnz=4):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), nnz)
    cols = np.concatenate([rng.choice(d, nnz, replace=False) for _ in range(n)])
    vals = rng.uniform(0.5, 2.0, n * nnz).astype(np.float32)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n, d), dtype=np.float32)
    return X, rng


def _weights(d, k, rng):
    return SimpleNamespace(
        w0=0.3,
        w=rng.normal(0, 0.5, d).astype(np.float32),
        V=rng.normal(0, 0.5, (d, k)).astype(np.float32),
    )


def _dense_scores(init, X):
    Xd = X.toarray().astype(np.float64)
    V = init.V.astype(np.float64)
    inter = 0.5 * (((Xd @ V) ** 2).sum(1) - ((Xd**2) @ (V**2)).sum(1))
    return init.w0 + Xd @ init.w + inter


def test_predict_scores_matches_dense_formula():
    X, rng = _data()
    init = _weights(15, 4, rng)
    got = predict_scores(init.w0, init.w, init.V, X)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _dense_scores(init, X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("ptype", ["binary_classifier", "regressor"])
def test_hand_derived_gradient_matches_autograd(ptype, ragged):
    """One full-batch SGD step with lr 1 and no wd moves each parameter by -grad(mean loss)."""
    X, rng = _data()
    if ragged:  # rows with 0..4 nonzeros, some empty, non-binary values
        keep = rng.random(X.nnz) < 0.4
        X = sp.csr_matrix((X.data * keep, X.indices, X.indptr), shape=X.shape)
        X.eliminate_zeros()
        assert (np.diff(X.indptr) == 0).any() and len(set(np.diff(X.indptr))) > 2
    n, d, k = X.shape[0], X.shape[1], 4
    y = (rng.random(n) < 0.5).astype(np.float32) if ptype == "binary_classifier" else rng.normal(3, 1, n).astype(np.float32)
    init = _weights(d, k, rng)
    hp = dict(feature_dim=d, num_factors=k, predictor_type=ptype, epochs=1, mini_batch_size=n,
              _local_optimizer="sgd", bias_lr=1, linear_lr=1, factors_lr=1, bias_wd=0, linear_wd=0, factors_wd=0)
    fm = FactorizationMachine(**hp).fit(X, y, init=init)

    Xt = torch.from_numpy(X.toarray())
    w0 = torch.tensor([init.w0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor(init.w, dtype=torch.float64, requires_grad=True)
    V = torch.tensor(init.V, dtype=torch.float64, requires_grad=True)
    Xd = Xt.double()
    s = w0 + Xd @ w + 0.5 * (((Xd @ V) ** 2).sum(1) - ((Xd**2) @ (V**2)).sum(1))
    yt = torch.from_numpy(y).double()
    if ptype == "binary_classifier":
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, yt)
    else:
        loss = 0.5 * ((s - yt) ** 2).mean()
    loss.backward()
    np.testing.assert_allclose(init.w0 - fm.w0_, w0.grad.numpy()[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(init.w - fm.w_, w.grad.numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(init.V - fm.V_, V.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_last_batch_is_padded_from_the_start_and_counted():
    X, rng = _data(n=5, d=15)
    y = np.array([1, 0, 1, 1, 0], np.float32)
    batches = make_batches(X, y, 2)
    assert [b.size for b in batches] == [2, 2, 2]
    assert batches[-1].y.tolist() == [0.0, 1.0]  # row 4 then row 0 (wrap-around)
    fm = FactorizationMachine(feature_dim=15, num_factors=2, predictor_type="binary_classifier",
                              mini_batch_size=2, seed=0).fit(X, y)
    acc = fm.history_.train_metrics_per_epoch[0]["binary_classification_accuracy"]
    assert acc * 6 == pytest.approx(round(acc * 6))  # denominator 6 = 3 batches x 2


def test_lazy_update_leaves_absent_rows_untouched():
    X, rng = _data(n=40, d=30, nnz=2)
    X = X[:, :20]  # columns 20..29 never appear
    X = sp.hstack([X, sp.csr_matrix((40, 10), dtype=np.float32)], format="csr")
    y = (rng.random(40) < 0.5).astype(np.float32)
    init = _weights(30, 3, rng)
    fm = FactorizationMachine(feature_dim=30, num_factors=3, predictor_type="binary_classifier",
                              epochs=3, mini_batch_size=8).fit(X, y, init=init)
    np.testing.assert_array_equal(fm.V_[20:], init.V[20:])
    np.testing.assert_array_equal(fm.w_[20:], init.w[20:])
    assert not np.array_equal(fm.V_[:20], init.V[:20])


def test_same_seed_same_model_different_seed_differs():
    X, rng = _data()
    y = (rng.random(60) < 0.5).astype(np.float32)
    hp = dict(feature_dim=15, num_factors=4, predictor_type="binary_classifier", epochs=2, mini_batch_size=7,
              _local_shuffle="true")
    a = FactorizationMachine(seed=3, **hp).fit(X, y)
    b = FactorizationMachine(seed=3, **hp).fit(X, y)
    c = FactorizationMachine(seed=4, **hp).fit(X, y)
    assert a.V_.tobytes() == b.V_.tobytes() and a.w_.tobytes() == b.w_.tobytes() and a.w0_ == b.w0_
    assert a.V_.tobytes() != c.V_.tobytes()


def test_regressor_learns_a_planted_fm():
    rng = np.random.default_rng(1)
    n, d, k = 3000, 40, 3
    X, _ = _data(n=n, d=d, nnz=3, seed=2)
    truth = SimpleNamespace(w0=1.0, w=rng.normal(0, 0.3, d), V=rng.normal(0, 0.4, (d, k)))
    y = _dense_scores(truth, X).astype(np.float32)
    hp = dict(feature_dim=d, num_factors=k, predictor_type="regressor", epochs=40, mini_batch_size=100,
              bias_lr=0.1, linear_lr=0.05, factors_lr=0.05, factors_init_sigma=0.1)
    fm = FactorizationMachine(seed=0, **hp).fit(X, y, X, y)
    hist = fm.history_.train_metrics_per_epoch
    assert hist[-1]["rmse"] < 0.5 * hist[0]["rmse"]
    assert fm.history_.test_metrics["rmse"] < 0.3 * float(np.std(y))
    assert set(hist[-1]) == {"epoch", "rmse", "mse", "absolute_loss"}


def test_predict_shapes_and_labels():
    X, rng = _data()
    y = (rng.random(60) < 0.5).astype(np.float32)
    fm = FactorizationMachine(feature_dim=15, num_factors=4, predictor_type="binary_classifier", seed=0).fit(X, y)
    p = fm.predict(X)
    assert p.dtype == np.float32 and p.shape == (60,) and np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(fm.predict_label(X), (p >= 0.5).astype(np.float32))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda X, y: (X[:, :10], y), "has 10 feature columns but feature_dim=15"),
        (lambda X, y: (X, np.where(np.arange(len(y)) == 3, 2.0, y)), "labels must be 0 or 1, row 3"),
        (lambda X, y: (X, np.where(np.arange(len(y)) == 2, np.nan, y)), "non-finite label"),
        (lambda X, y: (_with_nan(X), y), "non-finite feature value"),
        (lambda X, y: (X[:0], y[:0]), "no rows"),
        (lambda X, y: (X, y[:5]), "5 labels for 60 rows"),
    ],
)
def test_bad_training_data(mutate, needle):
    X, rng = _data()
    y = (rng.random(60) < 0.5).astype(np.float32)
    Xb, yb = mutate(X, y)
    fm = FactorizationMachine(feature_dim=15, num_factors=4, predictor_type="binary_classifier")
    with pytest.raises(LocalFMError, match=needle):
        fm.fit(Xb, yb)


def _with_nan(X):
    X = X.copy()
    X.data[7] = np.inf
    return X


def test_warm_start_shape_mismatch():
    X, rng = _data()
    y = (rng.random(60) < 0.5).astype(np.float32)
    fm = FactorizationMachine(feature_dim=15, num_factors=4, predictor_type="binary_classifier")
    with pytest.raises(LocalFMError, match="init model"):
        fm.fit(X, y, init=_weights(15, 5, rng))


def test_early_stopping_keeps_best_epoch():
    X, rng = _data(n=400)
    y = (rng.random(400) < 0.5).astype(np.float32)  # pure noise: validation loss soon rises
    fm = FactorizationMachine(feature_dim=15, num_factors=4, predictor_type="binary_classifier", epochs=30,
                              mini_batch_size=10, linear_lr=0.1, factors_lr=0.1, seed=0,
                              _local_validation_fraction=0.25, _local_early_stopping_patience=2).fit(X, y)
    val = [m["binary_classification_cross_entropy"] for m in fm.history_.validation_metrics_per_epoch]
    assert fm.best_epoch_ == int(np.argmin(val))
    assert len(val) < 30


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_validation_fraction_leaving_no_training_rows_is_an_error_not_a_crash(engine):
    # One row with a hold-out: every row went to validation and the numba epoch
    # segfaulted on the empty training set (the torch one raised IndexError).
    fm = FactorizationMachine(feature_dim=3, num_factors=2, predictor_type="regressor", seed=1,
                              _local_validation_fraction=0.3, _local_engine=engine)
    with pytest.raises(LocalFMError, match="leaves none to train on"):
        fm.fit(np.eye(3, dtype=np.float32)[:1], [1.0])


@pytest.mark.parametrize(
    "X, y, needle",
    [
        ([[1.0, 2.0, 3.0], [1.0, 2.0]], [1.0, 2.0], "training data: expected a numeric 2-D matrix"),
        ([["a", "b", "c"]], [1.0], "training data: expected a numeric 2-D matrix"),
        ([[1.0, 2.0, 3.0]], ["a"], "training data: expected numeric labels"),
    ],
)
def test_non_numeric_input_raises_localfm_error_not_value_error(X, y, needle):
    fm = FactorizationMachine(feature_dim=3, num_factors=2, predictor_type="regressor")
    with pytest.raises(LocalFMError, match=needle):
        fm.fit(X, y)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_warm_start_without_bias_or_linear_drops_the_inherited_terms(engine):
    # use_bias/use_linear=false train without w0/w; a warm start used to keep the init
    # model's w0 in the saved weights, so predictions were off by it (5.0 here).
    X = np.eye(3, dtype=np.float32)
    init = SimpleNamespace(w0=5.0, w=np.full(3, 2.0, np.float32), V=np.zeros((3, 2), np.float32))
    fm = FactorizationMachine(feature_dim=3, num_factors=2, predictor_type="regressor", seed=1,
                              use_bias=False, use_linear=False, _local_engine=engine).fit(X, [1.0, 1.0, 1.0], init=init)
    assert fm.w0_ == 0.0
    assert np.all(fm.w_ == 0.0)
    fresh = FactorizationMachine(feature_dim=3, num_factors=2, predictor_type="regressor", seed=1,
                                 use_bias=False, use_linear=False, _local_engine=engine)
    fresh.fit(X, [1.0, 1.0, 1.0], init=SimpleNamespace(w0=0.0, w=np.zeros(3, np.float32), V=np.zeros((3, 2), np.float32)))
    np.testing.assert_array_equal(fm.predict(X), fresh.predict(X))


def test_score_with_wrong_width_is_a_localfm_error():
    # score() skipped decision_function's width check and died in scipy's matmul (ValueError).
    X, rng = _data()
    y = (rng.random(60) < 0.5).astype(np.float32)
    fm = FactorizationMachine(feature_dim=15, num_factors=4, predictor_type="binary_classifier", seed=0).fit(X, y)
    with pytest.raises(LocalFMError, match="has 10 feature columns, the model expects 15"):
        fm.score(X[:, :10], y)
    got = fm.score(X, y)
    expected = (fm.predict_label(X) == y).mean()
    assert got["binary_classification_accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_epoch_data_hook_feeds_later_epochs_and_same_data_changes_nothing(engine):
    X, rng = _data(n=70)
    y = (rng.random(70) < 0.5).astype(np.float32)
    hp = dict(feature_dim=15, num_factors=3, predictor_type="binary_classifier", epochs=3,
              mini_batch_size=16, _local_engine=engine)
    plain = FactorizationMachine(seed=3, **hp).fit(X, y)
    calls = []

    def same(epoch):
        calls.append(epoch)
        return X, y

    hooked = FactorizationMachine(seed=3, **hp).fit(X, y, epoch_data=same)
    assert calls == [1, 2]
    np.testing.assert_array_equal(hooked.V_, plain.V_)
    X2, rng2 = _data(n=40, seed=9)
    y2 = (rng2.random(40) < 0.5).astype(np.float32)
    other = FactorizationMachine(seed=3, **hp).fit(X, y, epoch_data=lambda e: (X2, y2))
    assert not np.array_equal(other.V_, plain.V_)
    assert [m["epoch"] for m in other.history_.train_metrics_per_epoch] == [0, 1, 2]
    with pytest.raises(LocalFMError, match="epoch 1 training data"):
        FactorizationMachine(seed=3, **hp).fit(X, y, epoch_data=lambda e: (X2[:, :5], y2))


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_on_epoch_hook_sees_metrics_and_can_stop_training(engine):
    X, rng = _data(n=70)
    y = (rng.random(70) < 0.5).astype(np.float32)
    seen = []

    def stop_after_two(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return epoch == 1

    fm = FactorizationMachine(seed=3, feature_dim=15, num_factors=3, predictor_type="binary_classifier",
                              epochs=6, mini_batch_size=16, _local_engine=engine,
                              _local_validation_fraction=0.2)
    fm.fit(X, y, on_epoch=stop_after_two)
    assert [e for e, _ in seen] == [0, 1]
    assert "binary_classification_accuracy" in seen[0][1]
    assert "validation:binary_classification_accuracy" in seen[0][1]
    assert len(fm.history_.train_metrics_per_epoch) == 2


# ---------------------------------------------------------------- estimator rules (scikit-learn)
def test_constructor_only_stores_and_fit_validates():
    fm = FactorizationMachine(feature_dim=15, num_factors=-1, predictor_type="binary_classifier", seed=0)
    assert fm.get_params()["num_factors"] == -1  # stored as given, no validation yet
    assert not [name for name in vars(fm) if name.endswith("_")]  # no learned state before fit
    with pytest.raises(LocalFMError, match="num_factors"):
        fm.check_params()
    with pytest.raises(LocalFMError, match="num_factors"):  # fails on the value, before the data is looked at
        fm.fit(object(), None)
    X, rng = _data()
    y = (rng.random(X.shape[0]) < 0.5).astype(np.float32)
    assert fm.set_params(num_factors=3) is fm
    assert fm.fit(X, y) is fm
    assert fm.hp_["num_factors"] == 3 and fm.hp_["epochs"] == 1 and fm.engine_ in ("numba", "torch")
    with pytest.raises(LocalFMError, match="unknown factorization-machines hyperparameter 'epoch'"):
        fm.set_params(epoch=2).fit(X, y)


def test_get_params_rebuilds_an_equal_estimator():
    fm = FactorizationMachine(feature_dim=15, num_factors="4", predictor_type="regressor", seed=5, verbose=False,
                              epochs=2)
    params = fm.get_params()
    assert params == {"seed": 5, "verbose": False, "feature_dim": 15, "num_factors": "4",
                      "predictor_type": "regressor", "epochs": 2}
    twin = FactorizationMachine(**params)
    assert twin.get_params() == params
    X, _ = _data()
    y = np.linspace(0, 1, X.shape[0], dtype=np.float32)
    a, b = fm.fit(X, y), twin.fit(X, y)
    assert a.V_.tobytes() == b.V_.tobytes()
    fm.set_params(seed=6, epochs=3)
    assert (fm.seed, fm.get_params()["epochs"], twin.get_params()["epochs"]) == (6, 3, 2)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed_is_a_localfm_error_naming_the_parameter(seed):
    with pytest.raises(LocalFMError, match="parameter 'seed'"):
        FactorizationMachine(feature_dim=3, num_factors=2, predictor_type="regressor", seed=seed).check_params()


def test_loaded_model_without_predictor_type_names_the_parameter_not_a_flag():
    w = SimpleNamespace(w0=0.0, w=np.zeros(3, np.float32), V=np.zeros((3, 2), np.float32))
    with pytest.raises(LocalFMError, match="pass predictor_type=") as err:
        FactorizationMachine.from_weights(w)
    assert "--" not in str(err.value)
    fm = FactorizationMachine.from_weights(w, predictor_type="regressor")
    assert fm.hp_["predictor_type"] == "regressor" and fm.predict(sp.csr_matrix((1, 3))).tolist() == [0.0]


@pytest.mark.parametrize("ptype", ["binary_classifier", "regressor"])
def test_numba_fit_holds_few_bytes_per_training_row(ptype):
    """A fit's allocations above the data stay under 24 bytes a training row (the numba engine).

    At 22.5M rows every byte a row is 22.5 MB: the epoch's scores and labels (8) and the
    metrics' one float64 array (8) are needed; a file-order ``arange`` (8), float64
    copies of scores and labels with their temporaries (~24) and the initial factor draw
    kept alive were not (they took it to ~50 bytes a row).
    """
    import tracemalloc

    rng = np.random.default_rng(0)
    n, d = 200_000, 500
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([rng.integers(0, 250, n), rng.integers(250, d, n)], axis=1).reshape(-1)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (rows, cols)), shape=(n, d))
    y = (rng.random(n) < 0.5).astype(np.float32)
    hp = dict(feature_dim=d, num_factors=4, predictor_type=ptype, epochs=2, mini_batch_size=1000,
              _local_engine="numba", _local_threads=1)
    FactorizationMachine(seed=1, **hp).fit(X[:10], y[:10])  # imports and compilation outside the measurement
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        FactorizationMachine(seed=1, **hp).fit(X, y)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak / n < 24, f"{peak / n:.1f} bytes a row"
