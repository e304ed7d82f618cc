"""The SageMaker k-NN estimator and its model artifact.

``KNN(seed=0, **hyperparameters).fit(X, labels)`` does what a SageMaker k-NN training
job does: validate the hyperparameters, take a seeded reservoir sample of
``sample_size`` rows, optionally reduce dimensions, build the FAISS index and keep
the sampled rows' labels. ``save(model_dir)`` writes the cloud's layout:

* ``model_algo-1``        the FAISS index (``faiss.serialize_index`` bytes)
* ``model_algo-1.labels`` the labels, little-endian float32, one per indexed vector
* ``model_algo-1.json``   ``k``, ``predictor_type``, ``dimension_reduction``,
  ``normalize``, ``version`` like the cloud's, plus a ``localfm`` block with what
  FAISS does not store (MIPS augmentation norm, padding, nprobe, hyperparameters)

as loose files and inside ``model.tar.gz``. Like in the cloud, editing ``k`` or
``predictor_type`` in the JSON changes what inference does, without retraining.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..hyperparams import get_estimator_params, set_estimator_params
from ..io.artifacts import read_members
from ..io.atomic import atomic_outputs
from .hyperparams import parse_knn
from .index import KNNIndex, as_float_matrix, build_index
from .reduction import make_projection

INDEX_FILE = "model_algo-1"
LABELS_FILE = "model_algo-1.labels"
META_FILE = "model_algo-1.json"
TARBALL = "model.tar.gz"
ARTIFACT_VERSION = 1


def reservoir_sample(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Row indices of a seeded reservoir sample (Algorithm R) of ``size`` from ``n``, ascending.

    This is how the cloud picks ``sample_size`` of a larger training set: one pass,
    each row kept with probability size/n. All of the stream is returned when it
    is not larger than the reservoir. Returned sorted so the index keeps file order.
    """
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    reservoir = np.arange(size, dtype=np.int64)
    stream = np.arange(size, n, dtype=np.int64)
    # j_i uniform in [0, i]; row i replaces slot j_i when j_i < size. Draws are
    # vectorised; the (few, ~size*ln(n/size)) replacements are applied in order.
    slots = np.floor(rng.random(stream.size) * (stream + 1)).astype(np.int64)
    keep = slots < size
    for row, slot in zip(stream[keep].tolist(), slots[keep].tolist()):
        reservoir[slot] = row
    return np.sort(reservoir)


def vote(labels: np.ndarray, predictor_type: str, *, chunk: int = 2000) -> np.ndarray:
    """predicted_label per row of ``labels`` (n, k), which must be **best first**.

    classifier: the most frequent label; a tie goes to the tied label held by the
    best-ranked (nearest) neighbour. regressor: the mean label.
    """
    labels = np.asarray(labels, dtype=np.float32)
    n, k = labels.shape
    if k == 0:
        return np.full(n, np.nan, dtype=np.float32)
    if predictor_type == "regressor":
        return labels.astype(np.float64).mean(axis=1).astype(np.float32)
    out = np.empty(n, dtype=np.float32)
    position = np.arange(k)
    for start in range(0, n, chunk):
        block = labels[start:start + chunk]
        counts = (block[:, :, None] == block[:, None, :]).sum(axis=2)
        # Highest count wins; among equal counts the earliest (nearest) position.
        key = counts * (k + 1) + (k - position)[None, :]
        out[start:start + chunk] = block[np.arange(block.shape[0]), key.argmax(axis=1)]
    return out


@dataclass
class Neighbours:
    """Search results in SageMaker's response order: distances ascending.

    For L2 that is nearest first; for INNER_PRODUCT / COSINE the largest (best)
    similarity comes **last**, as in the cloud's output.
    """

    predicted_label: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n, k') float32
    distances: np.ndarray  # (n, k') float32


class KNN:
    """SageMaker k-NN as a local estimator, by scikit-learn's rules.

    The constructor only stores its arguments (:meth:`get_params` / :meth:`set_params`);
    :meth:`fit` validates them (:meth:`check_params` does so up front, before any data
    is read) and returns ``self``. ``seed`` seeds the reservoir sample, projections and
    clustering; ``None`` takes the ``seed`` hyperparameter's default, 0 (the cloud's
    sample is fixed too). Learned state: ``hp_`` (the parsed hyperparameters, as saved
    in the artifact), ``index_``, ``labels_``, ``sample_indices_`` and ``report_``
    (measurements made at training time, e.g. recall, kept in the artifact).
    """

    def __init__(self, *, seed: int | None = None, **hyperparameters: Any) -> None:
        self.seed = seed
        self.hyperparameters = dict(hyperparameters)

    # -------------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:  # noqa: ARG002 - sklearn protocol
        """The constructor's arguments: ``seed`` and the hyperparameters as given."""
        return get_estimator_params(self, ("seed",))

    def set_params(self, **params: Any) -> KNN:
        """Change constructor arguments (checked at the next :meth:`fit`); returns ``self``."""
        set_estimator_params(self, ("seed",), params)
        return self

    def check_params(self) -> dict[str, Any]:
        """The parsed hyperparameters, ``seed`` included (raises LocalFMError on a bad value).

        ``fit`` starts with this; ``localfm knn train`` calls it before reading the
        training data.
        """
        given = dict(self.hyperparameters)
        if self.seed is not None:
            given["seed"] = self.seed
        return parse_knn(given)

    # ---------------------------------------------------------------- settings
    def _hp(self) -> dict[str, Any]:
        if not hasattr(self, "hp_"):
            raise LocalFMError("k-NN model is not trained: call fit() or KNN.load() first")
        return self.hp_

    @property
    def k(self) -> int:
        return int(self._hp()["k"])

    @property
    def predictor_type(self) -> str:
        return str(self._hp()["predictor_type"])

    @property
    def feature_dim(self) -> int:
        return int(self._hp()["feature_dim"])

    def _require_fitted(self) -> KNNIndex:
        if getattr(self, "index_", None) is None or getattr(self, "labels_", None) is None:
            raise LocalFMError("k-NN model is not trained: call fit() or KNN.load() first")
        return self.index_

    # ------------------------------------------------------------------- train
    def fit(self, X: Any, labels: Any, *, where: str = "training data") -> KNN:
        """Index a reservoir sample of ``X`` (n, feature_dim) with its ``labels`` (n,); returns ``self``."""
        hp = self.check_params()  # before touching the data: bad values fail fast
        x = as_float_matrix(X, what=where, dim=int(hp["feature_dim"]))
        if labels is None:
            raise LocalFMError(f"{where}: k-NN training needs a label for every row, found none")
        try:
            y = np.asarray(labels, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:  # strings, ragged lists: bad input, not a crash
            raise LocalFMError(f"{where}: labels must be numbers ({exc})") from None
        if y.shape[0] != x.shape[0]:
            raise LocalFMError(f"{where}: {x.shape[0]} rows but {y.shape[0]} labels")
        if not np.isfinite(y).all():
            row = int(np.flatnonzero(~np.isfinite(y))[0])
            raise LocalFMError(f"{where}: label of row {row} is NaN or infinite; expected a finite number")
        if x.shape[0] == 0:
            raise LocalFMError(f"{where}: no rows to index")
        pick = reservoir_sample(x.shape[0], hp["sample_size"], hp["seed"])
        xs, ys = x[pick], y[pick]
        projection = None
        if hp["dimension_reduction_type"] is not None:
            projection = make_projection(
                hp["dimension_reduction_type"], int(hp["feature_dim"]), hp["dimension_reduction_target"],
                seed=hp["seed"], n_points=xs.shape[0],
            )
        self.index_ = build_index(
            xs,
            index_type=hp["index_type"],
            index_metric=hp["index_metric"],
            nlist=hp["faiss_index_ivf_nlists"],
            nprobe=hp["nprobe"],
            pq_m=hp["faiss_index_pq_m"],
            hnsw_m=hp["faiss_index_hnsw_m"],
            ef_search=hp["faiss_index_hnsw_ef_search"],
            ef_construction=hp["faiss_index_hnsw_ef_construction"],
            seed=hp["seed"],
            projection=projection,
        )
        self.hp_ = hp
        self.labels_ = ys
        self.sample_indices_ = pick
        self.report_ = {}
        return self

    # --------------------------------------------------------------- inference
    def search(self, X: Any, k: int | None = None, *, where: str = "queries") -> tuple[np.ndarray, np.ndarray]:
        """Best-first ``(scores, row ids into the indexed sample)``, ``k' = min(k, indexed)``."""
        index = self._require_fitted()
        x = as_float_matrix(X, what=where, dim=self.feature_dim)
        return index.search(x, self.k if k is None else k, batch_size=self.hp_["mini_batch_size"])

    def neighbours(self, X: Any, k: int | None = None, *, where: str = "queries") -> Neighbours:
        """predicted_label, neighbour labels and distances in SageMaker's response order."""
        scores, ids = self.search(X, k, where=where)
        assert self.labels_ is not None
        best_first = self.labels_[ids]
        predicted = vote(best_first, self.predictor_type)
        if self._require_fitted().higher_is_better:
            # Similarities: ascending order puts the best match last, as the cloud does.
            return Neighbours(predicted, best_first[:, ::-1].copy(), scores[:, ::-1].copy())
        return Neighbours(predicted, best_first, scores)

    def kneighbors(self, X: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, labels)`` of the k nearest neighbours, distances ascending (cloud order)."""
        nb = self.neighbours(X, k)
        return nb.distances, nb.labels

    def predict(self, X: Any) -> np.ndarray:
        """predicted_label per row: majority label (classifier) or mean label (regressor)."""
        return self.neighbours(X).predicted_label

    # ------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """The content of ``model_algo-1.json``."""
        index = self._require_fitted()
        meta = index.meta()
        reduction = meta.pop("dimension_reduction")
        normalize = meta.pop("normalize")
        return {
            "k": self.k,
            "predictor_type": self.predictor_type,
            "dimension_reduction": reduction,
            "normalize": normalize,
            "version": ARTIFACT_VERSION,
            "index_type": index.index_type,
            "index_metric": index.index_metric,
            "feature_dim": self.feature_dim,
            "localfm": {"index": meta, "hyperparameters": dict(self.hp_), "report": self.report_},
        }

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write the three artifact files and ``model.tar.gz`` into ``model_dir``, all or nothing."""
        index = self._require_fitted()
        assert self.labels_ is not None
        files = {
            INDEX_FILE: index.index_bytes(),
            LABELS_FILE: np.ascontiguousarray(self.labels_, dtype="<f4").tobytes(),
            META_FILE: (json.dumps(self.metadata(), indent=2) + "\n").encode("utf-8"),
        }
        out_dir = Path(model_dir)
        with atomic_outputs() as out:
            for name, data in files.items():
                out.path(out_dir / name).write_bytes(data)
            out.path(out_dir / TARBALL).write_bytes(_tarball(files))
        return out_dir / TARBALL

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, max_bytes: int | None = None) -> KNN:
        """Load a model dir (loose files or model.tar.gz), a model.tar.gz, or a model_algo-1 file; s3:// ok.

        A model.tar.gz is read by the budgeted archive reader: ``max_bytes`` caps what
        it may hold (default ``localfm.io.artifacts.DEFAULT_MAX_BYTES``).
        """
        files, where = _read_artifact(path, max_bytes)
        return cls.from_files(files, where=where)

    @classmethod
    def from_files(cls, files: dict[str, bytes], *, where: str) -> KNN:
        """Build from the artifact's three files (bytes by name)."""
        try:
            meta = json.loads(files[META_FILE].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LocalFMError(f"{where}/{META_FILE}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise LocalFMError(f"{where}/{META_FILE}: expected a JSON object")
        extra = meta.get("localfm") if isinstance(meta.get("localfm"), dict) else {}
        for key in ("index", "hyperparameters", "report"):
            # The JSON is documented as hand-editable: a wrong shape is bad input (exit 2).
            if not isinstance(extra.get(key) or {}, dict):
                raise LocalFMError(f"{where}/{META_FILE}: 'localfm.{key}' must be a JSON object")
        index_meta = dict(extra.get("index") or {})
        index_meta["dimension_reduction"] = meta.get("dimension_reduction")
        if "normalize" in meta:
            index_meta["normalize"] = bool(meta["normalize"])
        for key in ("index_type", "index_metric"):
            if key in meta:
                index_meta[key] = meta[key]
        index = KNNIndex.from_bytes(files[INDEX_FILE], index_meta, where=f"{where}/{INDEX_FILE}")
        labels_raw = files[LABELS_FILE]
        if len(labels_raw) % 4:
            raise LocalFMError(f"{where}/{LABELS_FILE}: {len(labels_raw)} bytes is not a whole number of float32")
        labels = np.frombuffer(labels_raw, dtype="<f4").astype(np.float32)
        if labels.size != index.ntotal:
            raise LocalFMError(
                f"{where}/{LABELS_FILE}: {labels.size} labels for an index of {index.ntotal} vectors"
            )
        hp: dict[str, Any] = dict(extra.get("hyperparameters") or {})
        hp = {k: v for k, v in hp.items() if v is not None}
        hp.setdefault("feature_dim", meta.get("feature_dim", index.dim))
        hp.setdefault("sample_size", max(1, index.ntotal))
        for key in ("k", "predictor_type"):  # the JSON's own fields win: they are the editable ones
            if key not in meta:
                raise LocalFMError(f"{where}/{META_FILE}: missing '{key}'")
            hp[key] = meta[key]
        hp["index_type"] = index.index_type
        hp["index_metric"] = index.index_metric
        hp["nprobe"] = index.nprobe
        try:
            model = cls(**hp)
            model.hp_ = model.check_params()
        except LocalFMError as exc:
            raise LocalFMError(f"{where}/{META_FILE}: {exc}") from None
        if model.feature_dim != index.dim:
            raise LocalFMError(
                f"{where}/{META_FILE}: feature_dim {model.feature_dim} but the index holds {index.dim}-dim vectors"
            )
        model.index_ = index
        model.labels_ = labels
        model.report_ = dict(extra.get("report") or {})
        return model


def _tarball(files: dict[str, bytes]) -> bytes:
    """Deterministic gzip'd tar (fixed mtimes/owners) so identical models give identical bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_NAMES = (INDEX_FILE, LABELS_FILE, META_FILE)


def _files_from_tar(uri: str | os.PathLike[str], where: str, max_bytes: int | None) -> dict[str, bytes]:
    """The three artifact members of a model.tar.gz, through the budgeted archive reader."""
    found = read_members(uri, _NAMES, max_bytes=max_bytes)
    missing = [n for n in _NAMES if n not in found]
    if missing:
        raise LocalFMError(f"{where}: k-NN model archive lacks {', '.join(missing)}")
    return found


def _read_artifact(path: str | os.PathLike[str], max_bytes: int | None = None) -> tuple[dict[str, bytes], str]:
    from ..io.uri import is_s3

    text = str(path)
    if is_s3(text):
        if text.endswith("/"):
            text += TARBALL
        return _files_from_tar(text, text, max_bytes), text
    p = Path(path)
    if p.is_dir():
        if all((p / n).is_file() for n in _NAMES):
            return {n: (p / n).read_bytes() for n in _NAMES}, str(p)
        if (p / TARBALL).is_file():
            return _files_from_tar(p / TARBALL, str(p / TARBALL), max_bytes), str(p / TARBALL)
        raise LocalFMError(f"{p}: expected {TARBALL} or {', '.join(_NAMES)} in the model directory")
    if not p.is_file():
        raise LocalFMError(f"{p}: model not found")
    if p.name in _NAMES:
        d = p.parent
        missing = [n for n in _NAMES if not (d / n).is_file()]
        if missing:
            raise LocalFMError(f"{d}: k-NN model lacks {', '.join(missing)}")
        return {n: (d / n).read_bytes() for n in _NAMES}, str(d)
    return _files_from_tar(p, str(p), max_bytes), str(p)
