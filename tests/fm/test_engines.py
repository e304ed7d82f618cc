"""The two training engines (localfm.fm.engines: numba, torch) give the same results.

Both engines run the same SageMaker semantics (padded last batch, pre-update metrics,
lazy Adam on the batch's distinct rows); the compiled one must agree to float32
rounding on every option it claims to support, and the engine choice must fall back /
fail loudly where it does not.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.errors import LocalFMError
from localfm.fm import FactorizationMachine, engines
from tests.fresh_python import run_python

pytestmark = pytest.mark.skipif(not engines.numba_available(), reason="numba not installed")


def _ragged(n=157, d=23, seed=0):
    """Rows with 0..4 nonzeros (some empty), non-binary values, canonical CSR."""
    rng = np.random.default_rng(seed)
    nnz = rng.integers(0, 5, n)
    rows = np.repeat(np.arange(n), nnz)
    cols = np.concatenate([rng.choice(d, c, replace=False) for c in nnz])
    vals = rng.uniform(0.2, 2.5, rows.size).astype(np.float32)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n, d), dtype=np.float32)
    assert (np.diff(X.indptr) == 0).any()
    return X, rng


def _labels(ptype, n, rng):
    if ptype == "binary_classifier":
        return (rng.random(n) < 0.5).astype(np.float32)
    return rng.normal(3.0, 1.0, n).astype(np.float32)


def _both(hp, X, y, seed=1, **fit):
    a = FactorizationMachine(seed=seed, _local_engine="numba", **hp).fit(X, y, **fit)
    b = FactorizationMachine(seed=seed, _local_engine="torch", **hp).fit(X, y, **fit)
    assert (a.engine_, b.engine_) == ("numba", "torch")
    return a, b


def _assert_same(a, b, metric_tol=1e-6):
    ha, hb = a.history_.train_metrics_per_epoch, b.history_.train_metrics_per_epoch
    assert len(ha) == len(hb)
    for ea, eb in zip(ha, hb):
        assert ea.keys() == eb.keys()
        for m in ea:
            assert ea[m] == pytest.approx(eb[m], abs=metric_tol), (ea["epoch"], m)
    scale = max(1.0, float(np.abs(b.V_).max()))
    np.testing.assert_allclose(a.V_, b.V_, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(a.w_, b.w_, rtol=1e-4, atol=1e-6)
    assert a.w0_ == pytest.approx(b.w0_, rel=1e-5, abs=1e-7)


OPTIONS = [
    pytest.param({}, id="cloud-adam"),
    pytest.param({"_local_optimizer": "adamw", "linear_wd": "0.1", "factors_wd": "0.1",
                  "_local_shuffle": "true", "_local_lr_schedule": "cosine"}, id="adamw-shuffle-cosine"),
    pytest.param({"_local_optimizer": "sgd", "clip_gradient": "0.002", "rescale_grad": "0.01"}, id="sgd-clip-rescale"),
    pytest.param({"_local_optimizer": "adagrad", "use_bias": "false", "_local_lr_schedule": "linear"},
                 id="adagrad-nobias"),
    pytest.param({"use_linear": "false", "bias_init_method": "constant", "bias_init_value": "0.5"}, id="nolinear"),
]


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("ptype", ["binary_classifier", "regressor"])
def test_numba_matches_torch(ptype, options, threads):
    X, rng = _ragged()
    y = _labels(ptype, X.shape[0], rng)
    # 157 rows in batches of 20: 8 batches, the last one padded with rows 0..2
    hp = dict(feature_dim=X.shape[1], num_factors=6, predictor_type=ptype, epochs=4, mini_batch_size=20,
              factors_lr="0.01", linear_lr="0.01", factors_init_sigma="0.1", _local_threads=threads, **options)
    a, b = _both(hp, X, y)
    _assert_same(a, b)


def test_batch_larger_than_data_wraps_several_times():
    X, rng = _ragged(n=9)
    y = _labels("binary_classifier", 9, rng)
    hp = dict(feature_dim=X.shape[1], num_factors=3, predictor_type="binary_classifier", epochs=3,
              mini_batch_size=25, factors_lr="0.05")
    a, b = _both(hp, X, y)
    _assert_same(a, b)
    acc = a.history_.train_metrics_per_epoch[0]["binary_classification_accuracy"]
    assert acc * 25 == pytest.approx(round(acc * 25))  # the 25 padded rows are counted


def test_batch_log_lines_and_test_metrics_match():
    X, rng = _ragged(n=300)
    y = _labels("binary_classifier", 300, rng)
    hp = dict(feature_dim=X.shape[1], num_factors=4, predictor_type="binary_classifier", epochs=2,
              mini_batch_size=16, batch_metrics_publish_interval=5)
    a, b = _both(hp, X, y, X_test=X[:50], y_test=y[:50])

    def batch_lines(m):
        return [ln.split("] ", 1)[1] for ln in m.history_.lines if "batch=" in ln]

    assert len(batch_lines(a)) == 2 * 4 * 3  # epochs x batches 0,5,10,15 x 3 metrics
    for la, lb in zip(batch_lines(a), batch_lines(b), strict=True):
        assert la.rsplit("=", 1)[0] == lb.rsplit("=", 1)[0]
        assert float(la.rsplit("=", 1)[1]) == pytest.approx(float(lb.rsplit("=", 1)[1]), abs=1e-6)
    for m, v in b.history_.test_metrics.items():
        assert a.history_.test_metrics[m] == pytest.approx(v, abs=1e-6)


def test_early_stopping_with_validation_matches():
    X, rng = _ragged(n=400)
    y = _labels("regressor", 400, rng)
    hp = dict(feature_dim=X.shape[1], num_factors=4, predictor_type="regressor", epochs=12, mini_batch_size=32,
              bias_lr="0.05", linear_lr="0.05", factors_lr="0.05", _local_validation_fraction="0.2",
              _local_early_stopping_patience="2")
    a, b = _both(hp, X, y)
    assert a.best_epoch_ == b.best_epoch_
    _assert_same(a, b)
    va, vb = a.history_.validation_metrics_per_epoch, b.history_.validation_metrics_per_epoch
    assert [e["rmse"] for e in va] == pytest.approx([e["rmse"] for e in vb], abs=1e-6)


def test_seeded_numba_runs_are_bit_identical():
    X, rng = _ragged()
    y = _labels("binary_classifier", X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=5, predictor_type="binary_classifier", epochs=3,
              mini_batch_size=13, _local_shuffle="true")
    a, b, c = (FactorizationMachine(seed=s, **hp).fit(X, y) for s in (3, 3, 4))
    assert a.engine_ == "numba"
    assert a.V_.tobytes() == b.V_.tobytes() and a.w_.tobytes() == b.w_.tobytes() and a.w0_ == b.w0_
    assert a.history_.train_metrics_per_epoch == b.history_.train_metrics_per_epoch
    assert a.V_.tobytes() != c.V_.tobytes()


def test_lazy_update_leaves_absent_rows_untouched():
    from types import SimpleNamespace

    X, rng = _ragged(n=80, d=20)
    X = sp.hstack([X, sp.csr_matrix((80, 10), dtype=np.float32)], format="csr")  # columns 20.. never used
    y = _labels("binary_classifier", 80, rng)
    init = SimpleNamespace(w0=0.1, w=rng.normal(0, 0.5, 30).astype(np.float32),
                           V=rng.normal(0, 0.5, (30, 3)).astype(np.float32))
    fm = FactorizationMachine(feature_dim=30, num_factors=3, predictor_type="binary_classifier", epochs=2,
                              mini_batch_size=8, _local_engine="numba").fit(X, y, init=init)
    np.testing.assert_array_equal(fm.V_[20:], init.V[20:])
    np.testing.assert_array_equal(fm.w_[20:], init.w[20:])
    assert not np.array_equal(fm.V_[:20], init.V[:20])


def test_engine_selection(monkeypatch):
    base = dict(feature_dim=5, num_factors=2, predictor_type="regressor")
    assert engines.resolve_engine(FactorizationMachine(**base).check_params()) == "numba"
    assert engines.resolve_engine(FactorizationMachine(**base, _local_engine="torch").check_params()) == "torch"
    nonlazy = FactorizationMachine(**base, _local_lazy_wd="false").check_params()
    assert engines.resolve_engine(nonlazy) == "torch"  # auto falls back for what numba does not implement
    with pytest.raises(LocalFMError, match=r"_local_engine'=numba does not support _local_lazy_wd=false"):
        engines.resolve_engine({**nonlazy, "_local_engine": "numba"})
    with pytest.raises(LocalFMError, match="_local_engine"):
        FactorizationMachine(**base, _local_engine="cuda").check_params()
    monkeypatch.setattr(engines, "numba_available", lambda: False)
    assert engines.resolve_engine(FactorizationMachine(**base).check_params()) == "torch"
    with pytest.raises(LocalFMError, match="needs the numba package"):
        engines.resolve_engine({**FactorizationMachine(**base).check_params(), "_local_engine": "numba"})
    with pytest.raises(LocalFMError, match="needs the numba package"):  # before any data is read
        FactorizationMachine(**base, _local_engine="numba").fit(None, None)


def test_non_lazy_wd_trains_with_torch_under_auto():
    X, rng = _ragged()
    y = _labels("regressor", X.shape[0], rng)
    fm = FactorizationMachine(seed=0, feature_dim=X.shape[1], num_factors=3, predictor_type="regressor",
                              _local_lazy_wd="false").fit(X, y)
    assert fm.engine_ == "torch"


@pytest.mark.slow
def test_ml100k_cloud_setup_engines_agree(ml100k_dir, tmp_path):
    """The cloud job's setup (ua.base, binary:4, k=64, batch 200), 3 epochs: metrics within 1e-6."""
    from localfm.cli import main
    from localfm.io.recordio import read_matrix

    assert main(["--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "ua", "--label", "binary:4",
                 "--columns", "train", "--drop-unseen", "--order", "file", "--out", str(tmp_path)]) == 0
    tr = read_matrix(tmp_path / "train.protobuf")
    hp = dict(feature_dim=2623, predictor_type="binary_classifier", num_factors=64, epochs=3, mini_batch_size=200)
    a, b = _both(hp, tr.X, tr.y, seed=0)
    _assert_same(a, b)


def test_numba_step_factors_come_from_optim():
    """One source of the Adam maths: the compiled step gets optim's coefficients, rounded once."""
    from localfm.fm import optim
    from localfm.fm.engines.numba import step_factors

    got = step_factors("adam", 452, 4, 0.5)
    want = [np.float32(optim.adam_coefficient(1.0, t) * 0.5) for t in range(452, 456)]
    assert got.dtype == np.float32 and got.tolist() == want
    assert step_factors("sgd", 1, 3, 0.25).tolist() == [0.25] * 3


def _step_in_passes(kind, G, W, M, V, cc, lr, wd, dec, ncoef, lr_scale, eps, clip):
    """The lazy step as the torch engine's formulas read, one numpy float32 pass per operation."""
    f32 = np.float32
    b1w, b2, b2w = f32(1.0 - 0.9), f32(0.999), f32(1.0 - 0.999)
    k = W.size - 1
    G = G.copy()
    G[:k] = G[:k] - W[:k] * cc  # v's gradient has the - v sum(g x^2) term; w's has none
    if clip is not None:
        G = np.minimum(np.maximum(G, -clip), clip)
    W, M, V = W.copy(), M.copy(), V.copy()
    for part, at in ((slice(0, k), 0), (slice(k, k + 1), k)):
        g, w, m, v = G[part], W[part], M[part], V[part]
        if kind == 1:
            m[:] = m + b1w * (g - m)
            v[:] = v * b2 + (b2w * g) * g
            w[:] = (w + (ncoef * (m * lr[at])) / (np.sqrt(v) + eps)) - w * dec[at]
            continue
        g = g + w * wd[at]
        if kind == 2:
            w[:] = w - lr_scale * (g * lr[at])
        elif kind == 3:
            v[:] = v + g * g
            w[:] = w + ((-lr_scale) * (g * lr[at])) / (np.sqrt(v) + eps)
        else:
            m[:] = m + b1w * (g - m)
            v[:] = v * b2 + (b2w * g) * g
            w[:] = w + (ncoef * (m * lr[at])) / (np.sqrt(v) + eps)
    return W, M, V


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd", "adagrad"])
def test_one_pass_step_gives_the_bytes_of_the_step_in_passes(kind, clip):
    """The compiled step fuses gradient, clip, decay and update into one pass per element
    (docs/fm.md "The step in one pass"); it must round exactly as the formulas applied one
    operation at a time, for every optimizer, with and without clipping, at k = 64 (vector
    loop) and k = 5 (remainder only)."""
    from localfm.fm.engines.numba import OPTIMIZERS, _step_row

    f32 = np.float32
    rng = np.random.default_rng(7)
    for k in (64, 5):
        for _ in range(20):
            G, W, M = (rng.normal(0, s, k + 1).astype(f32) for s in (0.1, 0.3, 0.01))
            V = rng.uniform(0, 1e-3, k + 1).astype(f32)
            lr = np.r_[np.full(k, 0.01), 0.002].astype(f32)
            wd = np.r_[np.full(k, 1e-4), 3e-3].astype(f32)
            dec = (wd * lr) * f32(0.5)
            cc, ncoef, lr_scale, eps = f32(rng.normal(0, 0.2)), f32(-0.9), f32(0.5), f32(1e-8)
            want = _step_in_passes(OPTIMIZERS[kind], G, W, M, V, cc, lr, wd, dec, ncoef, lr_scale, eps,
                                   None if clip is None else f32(clip))
            got = [W.copy(), M.copy(), V.copy()]
            _step_row(OPTIMIZERS[kind], G.copy(), *got, cc, lr, wd, dec, ncoef, lr_scale, eps, clip is not None,
                      f32(0.0 if clip is None else clip))
            for a, b in zip(got, want):
                assert a.tobytes() == b.tobytes(), (kind, clip, k)


def test_optimizer_config_per_column_settings():
    from localfm.fm.optim import optimizer_config

    hp = FactorizationMachine(feature_dim=4, num_factors=3, predictor_type="regressor", mini_batch_size=50,
                              _learning_rate=2.0, factors_lr=0.1, linear_lr=0.3, bias_lr=0.5,
                              factors_wd=0.01, linear_wd=0.02, bias_wd=0.04).check_params()
    cfg = optimizer_config(hp, 3)
    assert cfg.lr.dtype == np.float32 and cfg.lr.tolist() == np.float32([0.2, 0.2, 0.2, 0.6]).tolist()
    assert cfg.wd.tolist() == np.float32([0.01, 0.01, 0.01, 0.02]).tolist()
    assert (cfg.bias_lr, cfg.bias_wd, cfg.rescale, cfg.kind) == (1.0, 0.04, 1 / 50, "adam")
    off = optimizer_config({**hp, "use_linear": False, "rescale_grad": 0.5}, 3)
    assert off.lr[3] == 0 and off.wd[3] == 0 and off.rescale == 0.5  # w frozen while sharing v's table


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_engine_interface_runs_epochs_and_reports_batches(engine):
    """Driven through engines.start only: padded scores, on_batch every N batches, data swapped."""
    X, rng = _ragged(n=50, d=23)
    y = _labels("binary_classifier", 50, rng)
    hp = FactorizationMachine(feature_dim=23, num_factors=4, predictor_type="binary_classifier",
                              mini_batch_size=8, _local_engine=engine).check_params()
    table = np.zeros((23, 3, 5), np.float32)
    table[:, 0] = rng.normal(0, 0.1, (23, 5))
    before = table.copy()
    run = engines.start(engine, hp, table, np.float32(0.25))
    run.set_data(X, y)
    seen = []
    scores, labels = run.epoch(None, 1.0, lambda b, s, lab: seen.append((b, s.copy(), lab.copy())), 3)
    assert scores.shape == labels.shape == (56,)  # 7 batches of 8, the last padded with rows 0..5
    np.testing.assert_array_equal(labels, np.concatenate([y, y[:6]]))
    assert [b for b, _, _ in seen] == [0, 3, 6]
    for b, s, lab in seen:
        np.testing.assert_array_equal(s, scores[b * 8:(b + 1) * 8])
        np.testing.assert_array_equal(lab, labels[b * 8:(b + 1) * 8])
    assert not np.array_equal(table[:, 0], before[:, 0]) and run.w0 != np.float32(0.25)  # trained in place
    run.set_data(X[:9], y[:9])
    order = np.arange(9)[::-1].copy()
    _, labels2 = run.epoch(order, 0.5, lambda *a: None, 1)
    np.testing.assert_array_equal(labels2, np.concatenate([y[:9][::-1], y[:9][::-1][:7]]))


@pytest.mark.slow
def test_numba_engine_does_not_import_torch():
    """The numba path must stay torch-free: importing torch costs ~1 s per `localfm train`."""
    code = (
        "import sys, numpy as np, scipy.sparse as sp\n"
        "from localfm.fm import FactorizationMachine\n"
        "X = sp.random(30, 6, density=0.3, format='csr', dtype=np.float32, random_state=0)\n"
        "fm = FactorizationMachine(feature_dim=6, num_factors=2, predictor_type='regressor', seed=0)\n"
        "fm.fit(X, np.arange(30, dtype=np.float32), X, np.arange(30, dtype=np.float32))\n"
        "assert fm.engine_ == 'numba', fm.engine_\n"
        "assert 'torch' not in sys.modules\n"
    )
    run_python(code, timeout=120)  # the child asserts


def test_large_table_prefetch_path_matches():
    """feature_dim 40,000 x k 63: a 30 MB table, above PREFETCH_MIN_BYTES, so the numba engine prefetches."""
    from localfm.fm.engines.numba import PREFETCH_MIN_BYTES

    d, k = 40_000, 63
    assert d * 3 * (k + 1) * 4 > PREFETCH_MIN_BYTES
    rng = np.random.default_rng(5)
    n = 300
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([rng.integers(0, 1000, n), rng.integers(1000, d, n)], axis=1).reshape(-1)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (rows, cols)), shape=(n, d))
    y = _labels("binary_classifier", n, rng)
    hp = dict(feature_dim=d, num_factors=k, predictor_type="binary_classifier", epochs=2, mini_batch_size=64)
    a, b = _both(hp, X, y)
    _assert_same(a, b)


def test_run_epoch_with_no_rows_raises_instead_of_reading_out_of_bounds():
    # n = 0 gave one padded batch indexing row 0 of an empty matrix: a segfault.
    from localfm.fm.engines.numba import run_epoch
    from localfm.fm.hyperparameters import parse_fm
    from localfm.fm.optim import optimizer_config

    hp = parse_fm({"feature_dim": 3, "num_factors": 2, "predictor_type": "regressor"})
    X = sp.csr_matrix((0, 3), dtype=np.float32)
    P = np.zeros((3, 3, 3), np.float32)
    with pytest.raises(LocalFMError, match="no rows"):
        run_epoch(X, np.zeros(0, np.float32), np.zeros(0, np.int64), 4, P,
                  np.zeros(3, np.float32), np.full(3, -1, np.int32), hp, optimizer_config(hp, 2), 1, 1.0)


def test_loading_a_model_for_inference_loads_no_engine():
    """predict after load must not pay for numba (~0.35 s) or torch (~1 s): no engine is resolved."""
    code = (
        "import sys, numpy as np, scipy.sparse as sp\n"
        "from types import SimpleNamespace\n"
        "from localfm.fm import FactorizationMachine\n"
        "w = SimpleNamespace(w0=0.5, w=np.ones(4, np.float32), V=np.ones((4, 2), np.float32))\n"
        "fm = FactorizationMachine.from_weights(w, predictor_type='regressor')\n"
        "assert fm.predict(sp.eye(4, format='csr', dtype=np.float32)).tolist() == [1.5] * 4\n"
        "loaded = [m for m in ('numba', 'torch', 'localfm.fm.engines.numba') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    run_python(code, timeout=120)  # the child asserts


# ----------------------------------------------------------------------------- threads
def _fingerprint(fm):
    return (fm.V_.tobytes(), fm.w_.tobytes(), np.float32(fm.w0_).tobytes(), fm.history_.train_metrics_per_epoch)


@pytest.fixture
def parallel_calls(monkeypatch):
    """Counts the parallel epoch's calls per thread count, so a thread test cannot pass on the serial path alone."""
    from localfm.fm.engines import numba as engine

    calls = []
    real = engine.train_epoch_parallel

    def spy(*args, threads):
        calls.append((args[5], threads))  # batch_size, threads
        return real(*args, threads=threads)

    monkeypatch.setattr(engine, "train_epoch_parallel", spy)
    return calls


@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[1], OPTIONS[2]])
def test_threads_give_the_same_bytes(options, parallel_calls):
    """1 thread (the serial function), 2 and 3 threads (the parallel one) agree to the byte.

    Batch sizes 7 / 20 / 64 / 200 over 157 rows: padded last batches (3, 3, 35 and 43 rows
    wrapped), and one batch larger than the data. 3 threads on a 2-core machine also
    checks that more threads than cores finish (the barrier yields its core).
    """
    X, rng = _ragged()
    y = _labels("binary_classifier", X.shape[0], rng)
    for batch in (7, 20, 64, 200):
        hp = dict(feature_dim=X.shape[1], num_factors=6, predictor_type="binary_classifier", epochs=3,
                  mini_batch_size=batch, factors_lr="0.01", linear_lr="0.01", factors_init_sigma="0.1",
                  _local_engine="numba", **options)
        runs = [FactorizationMachine(seed=2, _local_threads=t, **hp).fit(X, y) for t in ("1", "2", "3")]
        assert _fingerprint(runs[0]) == _fingerprint(runs[1]) == _fingerprint(runs[2]), batch
    # 3 epochs + the compile-only call, per thread count: the 2- and 3-thread runs went parallel
    assert parallel_calls.count((200, 2)) == parallel_calls.count((200, 3)) == 3 + 1


def test_threads_on_a_large_table_give_the_same_bytes(parallel_calls):
    """The prefetching path (table > PREFETCH_MIN_BYTES) of the parallel epoch, batch 1000 with a padded tail.

    Rows sorted by a few hot columns (like ua.base in file order): whole blocks of
    consecutive columns land on one thread.
    """
    d, k, n = 40_000, 31, 2500
    rng = np.random.default_rng(7)
    rows = np.repeat(np.arange(n), 2)
    cols = np.stack([np.sort(rng.integers(0, 500, n)), rng.integers(500, d, n)], axis=1).reshape(-1)
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (rows, cols)), shape=(n, d))
    y = _labels("regressor", n, rng)
    hp = dict(feature_dim=d, num_factors=k, predictor_type="regressor", epochs=2, mini_batch_size=1000,
              _local_engine="numba")
    a, b, c = (FactorizationMachine(seed=0, _local_threads=t, **hp).fit(X, y) for t in (1, 2, 3))
    assert _fingerprint(a) == _fingerprint(b) == _fingerprint(c)
    assert {t for _, t in parallel_calls} == {2, 3}


def test_a_thread_without_columns_steps_the_others_and_the_bytes_stay(parallel_calls):
    """Every nonzero in columns thread 0 owns at 2 threads (even blocks of 2**OWNER_SHIFT):
    thread 1's own step list is empty every batch, so it steps chunks of thread 0's list
    (the step-sharing path); 3 threads split the same columns unevenly. Same bytes as 1 thread."""
    from localfm.fm.engines import numba as engine

    block = 1 << engine.OWNER_SHIFT
    usable = np.array([c for c in range(8192) if (c // block) % 2 == 0])
    n = 3000
    rng = np.random.default_rng(11)
    cols = rng.choice(usable, size=(n, 4))
    X = sp.csr_matrix((rng.random(4 * n).astype(np.float32), cols.reshape(-1), np.arange(0, 4 * n + 1, 4)),
                      shape=(n, 8192))
    X.sum_duplicates()
    y = _labels("binary_classifier", n, rng)
    hp = dict(feature_dim=8192, num_factors=15, predictor_type="binary_classifier", epochs=2, mini_batch_size=1000,
              _local_engine="numba")
    for _ in range(3):  # who steps which chunk is a race: repeat it
        a, b, c = (FactorizationMachine(seed=0, _local_threads=t, **hp).fit(X, y) for t in (1, 2, 3))
        assert _fingerprint(a) == _fingerprint(b) == _fingerprint(c)
    assert {t for _, t in parallel_calls} == {2, 3}


def test_parallel_worker_alone_gives_the_serial_bytes(monkeypatch):
    """The parallel epoch at threads=1 (one worker, no helper thread) is the serial function, byte for byte.

    Why: at 2 threads a bug that both workers make alike (e.g. the column norms kept
    between batches going stale) could hide behind the 1-vs-2 comparison only if the
    serial path ran the same code; this pins the worker itself to ``train_epoch``.
    """
    import functools

    from localfm.fm.engines import numba as engine

    X, rng = _ragged(n=301, d=41, seed=3)
    y = _labels("regressor", X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=5, predictor_type="regressor", epochs=3, mini_batch_size=50,
              factors_lr="0.02", linear_lr="0.02", factors_init_sigma="0.1", _local_engine="numba",
              _local_threads=1)
    serial = FactorizationMachine(seed=4, **hp).fit(X, y)
    monkeypatch.setattr(engine, "train_epoch", functools.partial(engine.train_epoch_parallel, threads=1))
    worker = FactorizationMachine(seed=4, **hp).fit(X, y)
    assert _fingerprint(serial) == _fingerprint(worker)


def test_parallel_epoch_reraises_a_worker_error(monkeypatch):
    """A helper thread that fails stops the other workers (abort flag) and its error reaches the caller.

    Without the flag, worker 0 would wait at its first barrier forever and this test would hang.
    """
    from localfm.fm.engines import numba as engine

    real = engine._epoch_worker

    def boom(t, *args):
        if t == 1:
            raise RuntimeError("worker 1 failed")
        return real(t, *args)

    monkeypatch.setattr(engine, "_epoch_worker", boom)
    X, rng = _ragged()
    y = _labels("regressor", X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=3, predictor_type="regressor", mini_batch_size=20,
              _local_engine="numba", _local_threads=2)
    with pytest.raises(RuntimeError, match="worker 1 failed"):
        FactorizationMachine(seed=0, **hp).fit(X, y)


def test_local_threads_validation_and_auto():
    base = dict(feature_dim=5, num_factors=2, predictor_type="regressor")
    for bad in ("0", "-1", "two", "1.5", "257"):
        with pytest.raises(LocalFMError, match=r"hyperparameter '_local_threads': expected an integer in \[1, 256\] "
                                               r"or 'auto'"):
            FactorizationMachine(**base, _local_threads=bad).check_params()
    hp = FactorizationMachine(**base).check_params()
    assert hp["_local_threads"] == "auto"
    assert FactorizationMachine(**base, _local_threads="3").check_params()["_local_threads"] == 3
    big = {**hp, "mini_batch_size": engines.AUTO_THREADS_MIN_BATCH, "feature_dim": engines.AUTO_THREADS_MIN_FEATURES}
    small = {**big, "mini_batch_size": engines.AUTO_THREADS_MIN_BATCH - 1}
    assert engines.resolve_threads({**big, "feature_dim": 2623},
                                   cores=2, load=0.3) == 1  # ua.base: the table fits in cache, serial is faster
    assert engines.resolve_threads(big, cores=2, load=0.3) == 2
    assert engines.resolve_threads(big, cores=16, load=0.3) == engines.AUTO_THREADS_MAX
    assert engines.resolve_threads(small, cores=2, load=0.3) == 1  # too little work per batch
    assert engines.resolve_threads(big, cores=1, load=0.0) == 1
    assert engines.resolve_threads(big, cores=2, load=1.6) == 1  # no idle core to run on
    assert engines.resolve_threads({**small, "_local_threads": 3}, cores=1, load=9.0) == 3  # explicit: as given


def test_busy_cores_from_two_proc_stat_snapshots(monkeypatch):
    """auto's idle-core check samples /proc/stat now, not the minute-lagging load average."""
    snaps = iter(["cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n",
                  "cpu  250 0 150 750 150 0 0 0 0 0\ncpu0 1 2 3\n"])  # +200 busy, +100 idle/iowait of 300
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 2)
    assert engines.busy_cores(interval=0, read=lambda: next(snaps)) == pytest.approx(2 * 200 / 300)
    monkeypatch.setattr(engines.os, "getloadavg", lambda: (1.25, 0.0, 0.0))
    assert engines.busy_cores(interval=0, read=lambda: "not a stat file") == 1.25  # no /proc/stat: the load average


def test_auto_threads_ask_busy_cores(monkeypatch):
    big = {"_local_threads": "auto", "mini_batch_size": 5000, "feature_dim": 225_000}
    monkeypatch.setattr(engines, "busy_cores", lambda: 0.2)
    assert engines.resolve_threads(big, cores=2) == 2
    monkeypatch.setattr(engines, "busy_cores", lambda: 1.7)
    assert engines.resolve_threads(big, cores=2) == 1


# --------------------------------------------------------------- the torch engine on a device
def _device_run_on(monkeypatch, device, graphs=None, runs=None):
    """Make the torch engine start :class:`DeviceRun` on ``device`` (``cpu`` here: the same step a GPU runs)."""
    from localfm.fm.engines.torch import DeviceRun

    real = engines.start

    def start(engine, hp, table, w0):
        if engine != "torch":
            return real(engine, hp, table, w0)
        run = DeviceRun(hp, table, w0, device, graphs=graphs)
        if runs is not None:
            runs.append(run)
        return run

    monkeypatch.setattr(engines, "start", start)


DEVICE_OPTIONS = [*OPTIONS, pytest.param({"_local_lazy_wd": "false", "factors_wd": "0.05"}, id="non-lazy-wd")]


@pytest.mark.parametrize("options", DEVICE_OPTIONS)
@pytest.mark.parametrize("ptype", ["binary_classifier", "regressor"])
def test_device_run_matches_the_torch_engine(monkeypatch, ptype, options):
    """DeviceRun keeps everything in tensors (bias and its moments too) and sums per column by
    segments: the same training as the host-side torch engine, within float32 rounding."""
    X, rng = _ragged()
    y = _labels(ptype, X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=6, predictor_type=ptype, epochs=4, mini_batch_size=20,
              factors_lr="0.01", linear_lr="0.01", factors_init_sigma="0.1", _local_engine="torch", **options)
    ref = FactorizationMachine(seed=1, **hp).fit(X, y)
    _device_run_on(monkeypatch, "cpu")
    dev = FactorizationMachine(seed=1, **hp).fit(X, y)
    assert type(dev.threads_) is int
    _assert_same(dev, ref)


def test_device_run_logs_batches_and_keeps_the_table_current(monkeypatch):
    """The log's per-batch lines come from the device's score buffer; validation reads the
    weights the run copies back after each epoch (a stale table would freeze these metrics)."""
    X, rng = _ragged(n=400)
    y = _labels("binary_classifier", X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=4, predictor_type="binary_classifier", epochs=3,
              mini_batch_size=16, batch_metrics_publish_interval=5, _local_engine="torch",
              _local_validation_fraction="0.2")
    ref = FactorizationMachine(seed=3, **hp).fit(X, y)
    _device_run_on(monkeypatch, "cpu")
    dev = FactorizationMachine(seed=3, **hp).fit(X, y)
    def batch_lines(fm):
        found = [re.search(r"(epoch=\d+, batch=\d+ train \S+ <\w+>)=(\S+)$", line) for line in fm.history_.lines]
        return [(m.group(1), float(m.group(2))) for m in found if m]

    got, want = batch_lines(dev), batch_lines(ref)
    assert [name for name, _ in got] == [name for name, _ in want] and len(got) > 6
    assert [value for _, value in got] == pytest.approx([value for _, value in want], rel=1e-5, abs=1e-6)
    for a, b in zip(dev.history_.validation_metrics_per_epoch, ref.history_.validation_metrics_per_epoch):
        assert a == pytest.approx(b, rel=1e-5)
    assert dev.history_.validation_metrics_per_epoch[0] != dev.history_.validation_metrics_per_epoch[-1]


def test_device_selection_and_errors(monkeypatch):
    base = dict(feature_dim=5, num_factors=2, predictor_type="regressor")
    assert FactorizationMachine(**base, _local_device="cpu").check_params()["_local_device"] == "cpu"
    with pytest.raises(LocalFMError, match=r"hyperparameter '_local_device': expected cpu, cuda, cuda:N or mps, got 'gpu'"):
        FactorizationMachine(**base, _local_device="gpu").check_params()
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LocalFMError, match=r"_local_device': 'cuda' asked for, but torch sees no CUDA device"):
        FactorizationMachine(**base, _local_device="cuda").fit(None, None)  # before any data is read
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hp = FactorizationMachine(**base, _local_device="cuda").check_params()
    assert engines.resolve_engine(hp) == "torch"  # auto: a GPU means the torch engine
    with pytest.raises(LocalFMError, match=r"_local_engine'=numba runs on the CPU; _local_device=cuda"):
        engines.resolve_engine({**hp, "_local_engine": "numba"})
    with pytest.raises(LocalFMError, match=r"'cuda:1' asked for, but torch sees 1 CUDA device"):
        FactorizationMachine(**base, _local_device="cuda:1").check_params()


def test_device_run_follows_new_rows_every_epoch(monkeypatch):
    """``epoch_data`` hands the run new rows each epoch (resampled negatives): the packed shape
    grows when a batch needs more slots (epoch 1: rows with up to 4 nonzeros after 1-nonzero
    rows) and stays padded when it needs fewer; training matches the host torch engine."""
    X0, rng = _ragged(n=120, d=30)
    X0 = sp.csr_matrix((np.ones(120, np.float32), (np.arange(120), rng.integers(0, 30, 120))), shape=(120, 30))
    X1, _ = _ragged(n=150, d=30, seed=5)
    X2 = X0[:90]
    data = {1: (X1, _labels("regressor", 150, rng)), 2: (X2, _labels("regressor", 90, rng))}
    y0 = _labels("regressor", 120, rng)
    hp = dict(feature_dim=30, num_factors=4, predictor_type="regressor", epochs=3, mini_batch_size=16,
              _local_engine="torch")
    ref = FactorizationMachine(seed=6, **hp).fit(X0, y0, epoch_data=data.__getitem__)
    runs = []
    _device_run_on(monkeypatch, "cpu", runs=runs)
    dev = FactorizationMachine(seed=6, **hp).fit(X0, y0, epoch_data=data.__getitem__)
    assert runs[0]._shape[1] >= 16 * 2  # widened for epoch 1's rows
    _assert_same(dev, ref)


def test_a_failed_graph_capture_falls_back_to_the_same_eager_step(monkeypatch):
    """No CUDA here, so capturing fails: the run says why and trains eagerly, with the same bytes,
    and the warm-up step run before capture leaves no trace in the weights."""
    X, rng = _ragged(n=300)
    y = _labels("regressor", X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=5, predictor_type="regressor", epochs=3, mini_batch_size=32,
              _local_engine="torch", _local_shuffle="true")
    runs = []
    _device_run_on(monkeypatch, "cpu", graphs=False, runs=runs)
    eager = FactorizationMachine(seed=4, **hp).fit(X, y)
    _device_run_on(monkeypatch, "cpu", graphs=True, runs=runs)
    tried = FactorizationMachine(seed=4, **hp).fit(X, y)
    assert runs[0].graph_error is None and runs[1].graph_error and not runs[1].graphs
    assert tried.V_.tobytes() == eager.V_.tobytes() and tried.w0_ == eager.w0_


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("batch", [7, 40, 500])
def test_pack_epoch_builds_make_batches_batches(shuffled, batch):
    """The whole-epoch packer gives each batch of :func:`make_batches` field for field (ragged rows,
    empty rows, the padded last batch, a batch larger than the data), plus exact padding."""
    import torch

    from localfm.fm.engines.torch import make_batches, pack_epoch

    X, rng = _ragged()
    y = _labels("regressor", X.shape[0], rng)
    order = rng.permutation(X.shape[0]) if shuffled else None
    want = make_batches(X, y, batch, order=order)
    packed = pack_epoch(X, y, batch, order, X.shape[1], "cpu", at_least=(3, 5))
    assert packed.batches == len(want) and packed.size == batch
    for i, bt in enumerate(want):
        got = packed.views(packed.ints[i], packed.floats[i])
        u, n = bt.cols.shape[0], bt.inv.shape[0]
        for name in ("cols", "inv", "seg", "by_col", "col_rows", "val", "val_sq"):
            assert torch.equal(getattr(got, name)[:getattr(bt, name).shape[0]], getattr(bt, name)), (i, name)
        assert torch.equal(got.col_ptr[:u + 1], bt.col_ptr) and torch.equal(got.offsets, bt.offsets)
        assert torch.equal(got.y, bt.y)
        # the padding: spare slots on the scratch row; spare nonzeros of value 0 in the last row and slot
        assert (got.cols[u:] == X.shape[1]).all() and (got.val[n:] == 0).all() and (got.inv[n:] == packed.u_max - 1).all()
        assert (got.seg[n:] == batch - 1).all() and (got.col_rows[n:] == batch - 1).all()
        assert got.by_col[n:].tolist() == list(range(n, packed.n_max))
        assert (got.col_ptr[u + 1:packed.u_max] == n).all() and int(got.col_ptr[-1]) == packed.n_max


def test_packed_batches_pad_with_exact_zeros():
    """A batch padded to a wider static shape (spare column slots on the scratch row, spare
    nonzeros of value 0) gives the same score and gradient as the batch itself."""
    import torch

    from localfm.fm.engines.torch import batch_gradient, make_batches, pack_epoch

    X, rng = _ragged(n=40, d=12)
    y = _labels("binary_classifier", X.shape[0], rng)
    bt = make_batches(X, y, 40)[0]
    W = torch.from_numpy(rng.standard_normal((13, 5)).astype(np.float32))
    W[12] = 0.0  # the scratch row
    packed = pack_epoch(X, y, 40, None, 12, "cpu", at_least=(bt.cols.shape[0] + 4, bt.inv.shape[0] + 7))
    wide = packed.views(packed.ints[0], packed.floats[0])
    assert wide.cols.shape[0] == bt.cols.shape[0] + 4 and wide.inv.shape[0] == bt.inv.shape[0] + 7
    w0 = torch.tensor([0.3])
    s1, g1, G1 = batch_gradient(W[bt.cols], bt, w0, 0.5, True, bags=True)
    s2, g2, G2 = batch_gradient(W[wide.cols], wide, w0, 0.5, True, bags=True)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)
    u = bt.cols.shape[0]
    assert torch.equal(G1, G2[:u]) and not G2[u:].any()
    s3, _, G3 = batch_gradient(W[bt.cols], bt, w0, 0.5, True)  # the sparse-product path: same numbers
    torch.testing.assert_close(G3, G1, rtol=1e-6, atol=1e-7)
    assert torch.equal(s3, s1)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_cuda_graph_training_is_deterministic_and_close_to_the_cpu_engine(monkeypatch):
    """On a GPU: the captured graph, the eager step and a second graph run give the same bytes
    (ragged rows, shuffled epochs so the packed shape changes), and stay close to the CPU engine."""
    X, rng = _ragged(n=3000, d=200)
    y = _labels("binary_classifier", X.shape[0], rng)
    hp = dict(feature_dim=X.shape[1], num_factors=8, predictor_type="binary_classifier", epochs=3,
              mini_batch_size=100, factors_init_sigma="0.1", _local_shuffle="true")
    cpu = FactorizationMachine(seed=2, _local_engine="torch", **hp).fit(X, y)
    runs = []
    _device_run_on(monkeypatch, "cuda", graphs=None, runs=runs)
    a = FactorizationMachine(seed=2, _local_engine="torch", **hp).fit(X, y)
    b = FactorizationMachine(seed=2, _local_engine="torch", **hp).fit(X, y)
    _device_run_on(monkeypatch, "cuda", graphs=False, runs=runs)
    eager = FactorizationMachine(seed=2, _local_engine="torch", **hp).fit(X, y)
    assert runs[0].graphs and runs[0].graph_error is None and runs[0]._graph is not None
    for other in (b, eager):
        assert a.V_.tobytes() == other.V_.tobytes() and a.w_.tobytes() == other.w_.tobytes() and a.w0_ == other.w0_
    _assert_same(a, cpu, metric_tol=1e-5)
    monkeypatch.undo()
    auto = FactorizationMachine(seed=2, _local_device="cuda", **hp).fit(X, y)  # the public route: same bytes
    assert auto.V_.tobytes() == a.V_.tobytes()
