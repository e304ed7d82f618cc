"""The Factorization Machine estimator with SageMaker's training semantics.

``FactorizationMachine(**hyperparameters).fit(X, y)`` trains exactly like the
SageMaker FM container (see docs/fm.md for the evidence):

- model ``score = w0 + sum_j x_j w_j + 1/2 sum_f [(sum_j x_j v_jf)^2 - sum_j x_j^2 v_jf^2]``;
  binary_classifier: log loss on ``sigmoid(score)``; regressor: squared error with
  gradient ``score - y`` (MXNet's ``LinearRegressionOutput``);
- mini-batches in file order (no shuffling); the last partial batch is padded to
  ``mini_batch_size`` with rows from the start of the data (MXNet ``pad``), which are
  trained on and counted in the epoch metrics;
- MXNet-style lazy Adam (:mod:`localfm.fm.optim`) with global lr/wd 1.0 times the
  per-group multipliers and ``rescale_grad = 1/mini_batch_size``.

The optimizer steps run on one of two engines that compute the same thing
(``_local_engine``; :mod:`localfm.fm.engines`, docs/fm.md "Training engine"): the
compiled numba epoch (default when numba is installed and the options are supported)
and the torch per-batch loop (the reference). This module keeps everything around
them: data checks, initialisation, epochs, schedule, metrics, validation, early
stopping and the local-only hooks.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from ..hyperparams import get_estimator_params, set_estimator_params
from . import engines
from .hyperparameters import parse_fm
from .metrics import MetricAccumulator, TrainingLog

if TYPE_CHECKING:
    from ..io.artifacts import FMWeights

# localfm.io (archives, S3) is imported inside the methods that read or write models:
# at module top it costs ~50-140 ms of every `import localfm.fm.model` (measured), and
# training alone never needs it.

_KEYWORDS = ("seed", "verbose")  # constructor arguments that are not hyperparameters
REPRODUCIBLE_MTIME = 315532800.0  # 1980-01-01T00:00:00Z: archive timestamp of seeded models


def _as_csr(X: Any, what: str) -> sp.csr_matrix:
    """Accept csr/csc/coo or a dense array; return canonical float32 CSR (never densifies)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
    else:
        try:
            arr = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged rows, strings: bad input, not a crash
            raise LocalFMError(f"{what}: expected a numeric 2-D matrix ({exc})") from None
        if arr.ndim != 2:
            raise LocalFMError(f"{what}: expected a 2-D matrix, got shape {arr.shape}")
        X = sp.csr_matrix(arr)
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    if X.data.size and not np.all(np.isfinite(X.data)):
        bad = int(np.flatnonzero(~np.isfinite(X.data))[0])
        row = int(np.searchsorted(X.indptr, bad, side="right") - 1)
        raise LocalFMError(f"{what}: non-finite feature value (NaN or inf) in row {row}")
    return X


def _check_labels(y: Any, n: int, predictor_type: str, what: str) -> np.ndarray:
    if y is None:
        raise LocalFMError(f"{what}: labels are required for training")
    try:
        y = np.asarray(y, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise LocalFMError(f"{what}: expected numeric labels ({exc})") from None
    if y.shape[0] != n:
        raise LocalFMError(f"{what}: {y.shape[0]} labels for {n} rows")
    if not np.all(np.isfinite(y)):
        raise LocalFMError(f"{what}: non-finite label (NaN or inf) in row {int(np.flatnonzero(~np.isfinite(y))[0])}")
    if predictor_type == "binary_classifier":
        bad = np.flatnonzero((y != 0.0) & (y != 1.0))
        if bad.size:
            raise LocalFMError(
                f"{what}: binary_classifier labels must be 0 or 1, row {int(bad[0])} has {float(y[bad[0]])!r}"
            )
    return y


def labelled_rows(X: Any, y: Any, hp: Mapping[str, Any], what: str, *,
                   need_rows: bool = False) -> tuple[sp.csr_matrix, np.ndarray]:
    """``X`` as canonical float32 CSR with ``feature_dim`` columns, and its checked labels."""
    X = _as_csr(X, what)
    if need_rows and X.shape[0] == 0:
        raise LocalFMError(f"{what}: no rows")
    if X.shape[1] != hp["feature_dim"]:
        raise LocalFMError(f"{what}: has {X.shape[1]} feature columns but feature_dim={hp['feature_dim']}")
    return X, _check_labels(y, X.shape[0], hp["predictor_type"], what)


def init_weights(hp: Mapping[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial (w0, w, V) per the ``*_init_*`` hyperparameters, drawn in a fixed order.

    The draw order (bias, linear, factors) is part of the seed policy: same seed and
    hyperparameters give the same bytes.
    """
    d, k = hp["feature_dim"], hp["num_factors"]

    def draw(group: str, shape: tuple[int, ...]) -> np.ndarray:
        # float32 draws straight away: 3x faster than float64 + cast for large tables
        method = hp[f"{group}_init_method"]
        if method == "normal":
            a = rng.standard_normal(size=shape, dtype=np.float32)
            a *= np.float32(hp[f"{group}_init_sigma"])
        elif method == "uniform":
            s = np.float32(hp[f"{group}_init_scale"])
            a = rng.random(size=shape, dtype=np.float32)
            a *= 2 * s
            a -= s
        else:
            a = np.full(shape, hp[f"{group}_init_value"], dtype=np.float32)
        return a

    w0 = draw("bias", (1,))
    w = draw("linear", (d,))
    V = draw("factors", (d, k))
    if not hp["use_bias"]:
        w0[:] = 0.0
    if not hp["use_linear"]:
        w[:] = 0.0
    return w0, w, V


def predict_scores(w0: float, w: np.ndarray, V: np.ndarray, X: sp.csr_matrix) -> np.ndarray:
    """Raw FM outputs for CSR rows, float32, in O(nnz x k) (scipy sparse @ dense)."""
    X = sp.csr_matrix(X, dtype=np.float32)
    XV = np.asarray(X @ V, dtype=np.float32)
    X2 = X.multiply(X).tocsr()
    sq = np.asarray(X2 @ np.einsum("jf,jf->j", V, V), dtype=np.float32).reshape(-1)
    lin = np.asarray(X @ w, dtype=np.float32).reshape(-1)
    inter = 0.5 * (np.einsum("if,if->i", XV, XV) - sq)
    return (np.float32(w0) + lin + inter).astype(np.float32)


def sigmoid(s: np.ndarray) -> np.ndarray:
    """float32 logistic; the tanh form cannot overflow for large |s| (exp(-s) can)."""
    s = np.asarray(s, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * s))).astype(np.float32)


class FactorizationMachine:
    """SageMaker Factorization Machines, trained locally.

    ``FactorizationMachine(feature_dim=2623, num_factors=64, predictor_type="binary_classifier",
    epochs=30, mini_batch_size=200, seed=1).fit(X, y)`` — hyperparameters by their
    SageMaker names, as strings or values. scikit-learn's estimator rules hold: the
    constructor only stores its arguments (:meth:`get_params` / :meth:`set_params`),
    :meth:`fit` validates them (:meth:`check_params` does so up front, before any data
    is read) and returns ``self``. Learned state: ``hp_`` (the parsed hyperparameters),
    ``engine_`` (``numba`` or ``torch``), ``threads_`` (what ``_local_threads`` resolved to), ``w0_`` (float), ``w_`` (d,), ``V_`` (d, k),
    ``weights_`` (:class:`localfm.io.artifacts.FMWeights`), ``history_`` (the
    :class:`TrainingLog` with per-epoch metrics), ``best_epoch_`` (early stopping).
    """

    def __init__(self, *, seed: int | None = None, verbose: bool = False, **hyperparameters: Any) -> None:
        self.seed = seed
        self.verbose = verbose
        self.hyperparameters = dict(hyperparameters)

    # --------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:  # noqa: ARG002 - sklearn protocol
        """The constructor's arguments: ``seed``, ``verbose`` and the hyperparameters as given."""
        return get_estimator_params(self, _KEYWORDS)

    def set_params(self, **params: Any) -> FactorizationMachine:
        """Change constructor arguments (checked at the next :meth:`fit`); returns ``self``."""
        set_estimator_params(self, _KEYWORDS, params)
        return self

    def check_params(self) -> dict[str, Any]:
        """Check ``seed``, parse the hyperparameters and resolve the engine; return the parsed values.

        ``fit`` starts with this. The CLI calls it before reading the training
        channels, so a bad value fails before any data is read.
        """
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise LocalFMError(f"parameter 'seed': expected None or a non-negative integer, got {seed!r}")
        hp = parse_fm(self.hyperparameters)
        engines.resolve_engine(hp)  # an impossible engine request fails here too
        return hp

    # ----------------------------------------------------------------- training
    def fit(
        self,
        X: Any,
        y: Any,
        X_test: Any = None,
        y_test: Any = None,
        *,
        X_val: Any = None,
        y_val: Any = None,
        init: Any = None,
        log: TrainingLog | None = None,
        epoch_data: Callable[[int], tuple[Any, Any]] | None = None,
        on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    ) -> FactorizationMachine:
        """Train; ``init`` (FMWeights or an artifact path) warm-starts from any FM model.

        Two local-only hooks, for experiments that the cloud cannot run but whose
        artifact it can still load:

        - ``epoch_data(epoch) -> (X, y)`` replaces the training rows for every epoch
          after the first (epoch 0 trains on ``X, y``), e.g. freshly drawn negatives.
          Adam state carries over, exactly as one long training job would.
        - ``on_epoch(epoch, metrics) -> stop`` sees each epoch's train metrics (and
          ``validation:``-prefixed ones when there is validation data); returning True
          ends training early, e.g. a tuner pruning a hopeless trial.
        """
        hp = self.check_params()  # before reading data: bad values fail fast
        engine = engines.resolve_engine(hp)
        X, y = labelled_rows(X, y, hp, "training data", need_rows=True)
        if X_test is not None:
            X_test, y_test = labelled_rows(X_test, y_test, hp, "test data")
        frac = hp["_local_validation_fraction"]
        if X_val is None and frac > 0:
            # A seeded random hold-out (its own stream, so init draws are unchanged);
            # the rows kept for training stay in file order.
            n_val = max(1, int(round(X.shape[0] * frac)))
            pick = np.random.default_rng(None if self.seed is None else [self.seed, 7]).permutation(X.shape[0])
            val_rows, train_rows = np.sort(pick[:n_val]), np.sort(pick[n_val:])
            if train_rows.size == 0:
                # An empty training set would reach the compiled epoch with nothing to
                # pad from (it crashed the process); the hold-out needs >= 2 rows.
                raise LocalFMError(
                    f"hyperparameter '_local_validation_fraction': holding out {n_val} of "
                    f"{X.shape[0]} training rows leaves none to train on"
                )
            X, X_val = X[train_rows], X[val_rows]
            y, y_val = y[train_rows], y[val_rows]
        if X_val is not None:
            X_val, y_val = labelled_rows(X_val, y_val, hp, "validation data")
        if hp["_local_early_stopping_patience"] and X_val is None:
            raise LocalFMError(
                "hyperparameter '_local_early_stopping_patience' needs validation data "
                "(_local_validation_fraction > 0 or fit(X_val=..., y_val=...))"
            )
        self.hp_ = hp
        self.engine_ = engine
        return self._train(hp, engine, X, y, X_test, y_test, X_val, y_val, init, log, epoch_data, on_epoch)

    def _train(self, hp, engine, X, y, X_test, y_test, X_val, y_val, init, log, epoch_data, on_epoch):  # noqa: ANN001,ANN202,PLR0913
        """The epoch loop around the engine (data already checked)."""
        from ..progress import progress  # tqdm costs ~65 ms: only when training

        ptype = hp["predictor_type"]
        binary = ptype == "binary_classifier"
        patience = hp["_local_early_stopping_patience"]
        rng = np.random.default_rng(self.seed)
        w0_np, w_np, V_np = init_weights(hp, rng)
        if init is not None:
            w0_np, w_np, V_np = self._warm_start(init, hp)
        d, k = V_np.shape
        # One (d, 3, k+1) table: [:, 0] = [v | w], [:, 1] = Adam m, [:, 2] = Adam v.
        # Keeping both groups and both moment slots of a row side by side means one
        # gather and one scatter per batch move everything (3x fewer random accesses
        # into a table that, for large feature_dim, does not fit in cache); per-column
        # lr/wd vectors (localfm.fm.optim) keep the groups' separate multipliers.
        table = np.zeros((d, 3, k + 1), dtype=np.float32)
        table[:, 0, :k] = V_np
        table[:, 0, k] = w_np
        # the table holds the weights now: the (d, k) draw would stay alive for the whole
        # fit otherwise (57 MB at feature_dim 225k, k=64), at the memory peak of training
        del V_np, w_np
        run = engines.start(engine, hp, table, np.float32(w0_np[0]))
        # What `_local_threads=auto` chose (the torch engine keeps one): timings mean little without it.
        self.threads_ = int(getattr(run, "threads", 1))
        run.set_data(X, y)
        epochs = hp["epochs"]
        log = log or TrainingLog(ptype, epochs, emit=self.verbose)
        self.history_ = log
        shuffle = hp["_local_shuffle"]
        best: tuple[float, int, tuple] | None = None
        bad_epochs = 0
        for epoch in progress(range(epochs), desc="train", unit="epoch"):
            lr_scale = lr_schedule(hp["_local_lr_schedule"], epoch, epochs)
            if epoch_data is not None and epoch > 0:
                X, y = labelled_rows(*epoch_data(epoch), hp, f"epoch {epoch} training data", need_rows=True)
                run.set_data(X, y)
            order = rng.permutation(X.shape[0]) if shuffle else None

            def log_batch(bi: int, scores: np.ndarray, labels: np.ndarray, epoch: int = epoch) -> None:
                acc = MetricAccumulator(ptype)
                acc.update(scores, labels)
                log.batch(epoch, bi, acc.result())

            start = time.perf_counter()
            scores, labels = run.epoch(order, lr_scale, log_batch, hp["batch_metrics_publish_interval"])
            seconds = time.perf_counter() - start
            acc = MetricAccumulator(ptype)
            acc.update(scores, labels)
            # free the epoch's per-row scores and labels (8 bytes a row) before the next
            # epoch allocates its own, rather than holding two epochs' worth at once
            del scores, labels
            log.epoch(epoch, acc.result(), X.shape[0], seconds)
            if X_val is not None:
                W = table[:, 0]
                vals = evaluate_weights(float(run.w0), W[:, k].copy(), W[:, :k].copy(), X_val, y_val, ptype)
                log.validation(epoch, vals)
                if patience:
                    key = "binary_classification_cross_entropy" if binary else "rmse"
                    if best is None or vals[key] < best[0]:
                        best = (vals[key], epoch, (run.w0, table[:, 0].copy()))
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                        if bad_epochs >= patience:
                            break
            if on_epoch is not None:
                seen = dict(log.train_metrics_per_epoch[-1])
                seen.pop("epoch", None)
                if X_val is not None:
                    seen.update({f"validation:{m}": v for m, v in log.validation_metrics_per_epoch[-1].items()
                                 if m != "epoch"})
                if on_epoch(epoch, seen):
                    break
        w0, W_final = run.w0, table[:, 0]
        if patience and best is not None:
            w0, W_final = best[2]
            self.best_epoch_ = best[1]
        self.w0_ = float(w0)
        self.w_ = np.ascontiguousarray(W_final[:, k])
        self.V_ = np.ascontiguousarray(W_final[:, :k])
        if X_test is not None:
            log.test(evaluate_weights(self.w0_, self.w_, self.V_, X_test, y_test, ptype))
        return self

    @staticmethod
    def _warm_start(init: Any, hp: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if isinstance(init, (str, Path)):
            from ..io.artifacts import load_fm  # lazy: see the module top

            init = load_fm(str(init))
        weights = init
        d, k = hp["feature_dim"], hp["num_factors"]
        V = np.asarray(weights.V, dtype=np.float32)
        w = np.asarray(weights.w, dtype=np.float32).reshape(-1)
        if V.shape != (d, k) or w.shape != (d,):
            raise LocalFMError(
                f"init model: has v {V.shape} and w1_weight {w.shape}, expected ({d}, {k}) and ({d},) "
                "from feature_dim/num_factors"
            )
        # Same masking as init_weights: with use_bias/use_linear false the training
        # score leaves those terms out, so an inherited w0/w would be frozen in
        # the saved model and shift every prediction away from what was trained.
        w0 = np.array([weights.w0 if hp["use_bias"] else 0.0], dtype=np.float32)
        w = w.copy() if hp["use_linear"] else np.zeros_like(w)
        return w0, w, V.copy()

    # --------------------------------------------------------------- inference
    def decision_function(self, X: Any) -> np.ndarray:
        """Raw FM outputs (logits for binary_classifier)."""
        self._check_fitted()
        X = _as_csr(X, "input data")
        if X.shape[1] != self.V_.shape[0]:
            raise LocalFMError(f"input data: has {X.shape[1]} feature columns, the model expects {self.V_.shape[0]}")
        return predict_scores(self.w0_, self.w_, self.V_, X)

    def predict(self, X: Any) -> np.ndarray:
        """SageMaker's ``score``: sigmoid output for binary_classifier, raw value for regressor."""
        s = self.decision_function(X)
        return sigmoid(s) if self.hp_["predictor_type"] == "binary_classifier" else s

    def predict_label(self, X: Any) -> np.ndarray:
        """SageMaker's ``predicted_label`` (binary only): 1.0 where score >= 0.5."""
        return (self.predict(X) >= 0.5).astype(np.float32)

    def score(self, X: Any, y: Any) -> dict[str, float]:
        """The cloud's test metrics for (X, y)."""
        scores = self.decision_function(X)  # same width check as predict (was a raw matmul ValueError)
        y = _check_labels(y, scores.shape[0], self.hp_["predictor_type"], "input data")
        acc = MetricAccumulator(self.hp_["predictor_type"])
        acc.update(scores, y)
        return acc.result()

    # ----------------------------------------------------------- persistence
    @property
    def weights_(self) -> FMWeights:
        from ..io.artifacts import FMWeights  # lazy: see the module top

        self._check_fitted()
        return FMWeights(w0=float(self.w0_), w=self.w_, V=self.V_, predictor_type=self.hp_["predictor_type"])

    def save(self, path: str | Path) -> None:
        """Write ``model.tar.gz`` in SageMaker's layout (atomic; via io.artifacts).

        A seeded model is written with a fixed archive timestamp (``SOURCE_DATE_EPOCH``
        when set, else 1980-01-01, the zip epoch) so the same seed gives the same
        *bytes*, not only the same weights.
        """
        from ..io.artifacts import fm_artifact_bytes, save_fm  # lazy: see the module top
        from ..io.atomic import atomic_write
        from ..io.uri import is_s3

        if self.seed is None or is_s3(str(path)):
            save_fm(path, self.weights_)
            return
        mtime = float(os.environ.get("SOURCE_DATE_EPOCH", REPRODUCIBLE_MTIME))
        target = Path(path)
        if target.is_dir():
            target = target / "model.tar.gz"
        data = fm_artifact_bytes(self.weights_, mtime=mtime)
        with atomic_write(target) as fh:
            fh.write(data)

    @classmethod
    def load(cls, path: str | Path, predictor_type: str | None = None) -> FactorizationMachine:
        """Load any SageMaker FM artifact (local or SageMaker-trained; ``s3://`` ok)."""
        from ..io.artifacts import load_fm  # lazy: see the module top

        return cls.from_weights(load_fm(str(path)), predictor_type=predictor_type)

    @classmethod
    def from_weights(cls, weights: Any, predictor_type: str | None = None) -> FactorizationMachine:
        """A trained estimator from FM weights (``w0``, ``w``, ``V``, optional ``predictor_type``)."""
        V = np.asarray(weights.V, dtype=np.float32)
        ptype = predictor_type or getattr(weights, "predictor_type", None)
        if ptype not in ("binary_classifier", "regressor"):
            raise LocalFMError(
                "model artifact does not record predictor_type: pass predictor_type="
                "'binary_classifier' or 'regressor'"
            )
        model = cls(feature_dim=V.shape[0], num_factors=V.shape[1], predictor_type=ptype)
        model.hp_ = parse_fm(model.hyperparameters)  # no engine: loading for inference never trains
        model.w0_ = float(weights.w0)
        model.w_ = np.asarray(weights.w, dtype=np.float32).reshape(-1)
        model.V_ = V
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "V_"):
            raise LocalFMError("model is not trained: call fit() or load() first")


def evaluate_weights(w0: float, w: np.ndarray, V: np.ndarray, X: sp.csr_matrix, y: np.ndarray, ptype: str) -> dict[str, float]:
    acc = MetricAccumulator(ptype)
    acc.update(predict_scores(w0, w, V, X), y)
    return acc.result()


def lr_schedule(kind: str, epoch: int, epochs: int) -> float:
    """Local-only learning-rate multiplier for ``epoch`` (1.0 = cloud)."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if kind == "linear":
        return 1.0 - epoch / epochs
    return 1.0
