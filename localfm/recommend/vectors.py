"""Turn a factorization machine into user and item vectors whose inner product ranks items.

Why this exists: SageMaker's recommender recipe ("Build a movie recommender with
factorization machines") trains an FM, then hands k-NN item vectors ``[V_i, w_i]`` and
queries it with user vectors ``[V_u, 1]``. For a one-hot (user id, item id) row the FM
score is ``w0 + w_u + w_i + <V_u, V_i>``, so ``<[V_u, 1], [V_i, w_i]> + (w0 + w_u)`` is
the score and ``w0 + w_u`` is constant per user: ranking by the inner product is ranking
by the FM score.

With side features the blog's formula is wrong. For a row ``x = x_u + x_i`` (user
columns and item columns never overlap) the FM score is

    f(x) = w0 + wᵀx + ½ Σ_f [(Σ_j V_jf x_j)² − Σ_j V_jf² x_j²]
         = <a, b> + [wᵀx_i + ½(‖b‖² − Σ_j x_ij² ‖v_j‖²)]          (depends on the item only)
                  + [w0 + wᵀx_u + ½(‖a‖² − Σ_j x_uj² ‖v_j‖²)]     (depends on the user only)

with ``a = Vᵀx_u`` and ``b = Vᵀx_i``. So the item vector is ``[b, item term]``, the user
vector ``[a, 1]`` and the per-user constant is the bracket on the last line. The item's
own pairwise interactions (e.g. genre × item id) vary per item; dropping them, as the
blog does, changes the ranking. For one-hot ids the extra terms vanish and this is
exactly the blog's formula.

Cold start falls out for free: a user given only side features (no id column, or an id
the model never saw) has ``x_u`` without an id column, and the same formula gives a
vector from the features alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from ..io.atomic import atomic_outputs
from ..io.recordio import write_dense

#: Largest integer float32 represents exactly: k-NN labels are float32.
_FLOAT32_EXACT_INT = 2**24


class FMLike(Protocol):
    """What repackaging needs from a model: ``localfm.io.artifacts.FMWeights`` has it."""

    w0: float
    w: np.ndarray
    V: np.ndarray
    predictor_type: str | None


class FeatureSpaceLike(Protocol):
    """What repackaging needs from ``localfm.data.features.FeatureSpace``."""

    feature_dim: int
    user_ids: Any
    item_ids: Any

    def user_matrix(self, user_ids: Any = None, *, allow_unknown_ids: bool = False) -> sp.csr_matrix: ...

    def item_matrix(self, item_ids: Any = None) -> sp.csr_matrix: ...


@dataclass
class Repackaged:
    """User and item vectors of one FM; ``user_vectors @ item_vectors.T + user_constants`` = FM score.

    Vectors are float32 (what k-NN indexes and what SageMaker's k-NN is fed); the
    per-user constants are float64 so exact FM scores can be recovered without losing
    the bias to float32 rounding.
    """

    user_ids: np.ndarray
    user_vectors: np.ndarray
    user_constants: np.ndarray
    item_ids: np.ndarray
    item_vectors: np.ndarray
    predictor_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def scores(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Exact FM scores (float64) of the (user row, item row) pairs, elementwise.

        Why a compiled loop: every result row gets its score recomputed in float64, so
        this runs for users x k pairs (16M at ML-25M scale). Gathering both sides and
        converting them to float64 first allocated ~200 MB per 2048-user batch and took
        more time than the ranking itself.
        """
        urow = np.asarray(user_rows, dtype=np.int64).reshape(-1)
        irow = np.asarray(item_rows, dtype=np.int64).reshape(-1)
        if urow.shape != irow.shape:
            raise ValueError(f"scores: {urow.shape[0]} user rows but {irow.shape[0]} item rows")
        from ._pairdots import pair_dots  # numba: only when scoring (see that module)

        out = np.empty(urow.shape[0], dtype=np.float64)
        pair_dots(self.user_vectors, self.item_vectors, urow, irow, out)
        return out + self.user_constants[urow]


def check_weights(weights: FMLike, *, source: str = "model") -> None:
    """Reject weights that would silently produce garbage rankings (shape or NaN problems)."""
    V = np.asarray(weights.V)
    w = np.asarray(weights.w).reshape(-1)
    if V.ndim != 2:
        raise LocalFMError(f"{source}: factor matrix v has shape {V.shape}, expected (feature_dim, num_factors)")
    if w.shape[0] != V.shape[0]:
        raise LocalFMError(f"{source}: linear weights have {w.shape[0]} rows but v has {V.shape[0]}; expected equal")
    for name, arr in (("w0", np.asarray(weights.w0, dtype=np.float64)), ("w", w), ("v", V)):
        if not np.all(np.isfinite(arr)):
            raise LocalFMError(f"{source}: parameter {name} contains NaN or infinite values")


def _as_csr(X: Any, feature_dim: int, what: str) -> sp.csr_matrix:
    M = sp.csr_matrix(X, dtype=np.float64)
    if M.shape[1] != feature_dim:
        raise LocalFMError(f"{what}: has {M.shape[1]} feature columns, model expects feature_dim {feature_dim}")
    if M.nnz and not np.all(np.isfinite(M.data)):
        raise LocalFMError(f"{what}: feature values contain NaN or infinite values")
    return M


def _parts(weights: FMLike, X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Vᵀx, wᵀx, ½(‖Vᵀx‖² − Σ_j x_j²‖v_j‖²)) for every row of X, in float64."""
    V = np.asarray(weights.V, dtype=np.float64)
    w = np.asarray(weights.w, dtype=np.float64).reshape(-1)
    emb = np.asarray(X @ V)
    lin = np.asarray(X @ w).reshape(-1)
    sq = X.multiply(X).tocsr()
    self_term = np.asarray(sq @ np.einsum("jf,jf->j", V, V)).reshape(-1)
    pair = 0.5 * (np.einsum("nf,nf->n", emb, emb) - self_term)
    return emb, lin, pair


def user_vectors(weights: FMLike, X_users: Any) -> tuple[np.ndarray, np.ndarray]:
    """User vectors ``[Vᵀx_u, 1]`` (float32) and constants ``w0 + wᵀx_u + pairwise(x_u)`` (float64).

    ``X_users`` holds full-width feature rows with only user columns set; a row without
    an id column (a cold-start user) works the same way.
    """
    V = np.asarray(weights.V)
    X = _as_csr(X_users, V.shape[0], "user features")
    emb, lin, pair = _parts(weights, X)
    vecs = np.empty((X.shape[0], V.shape[1] + 1), dtype=np.float32)
    vecs[:, :-1] = emb
    vecs[:, -1] = 1.0
    consts = float(np.asarray(weights.w0, dtype=np.float64).reshape(-1)[0]) + lin + pair
    return vecs, consts


def item_vectors(weights: FMLike, X_items: Any) -> np.ndarray:
    """Item vectors ``[Vᵀx_i, wᵀx_i + pairwise(x_i)]`` (float32); see the module docstring."""
    V = np.asarray(weights.V)
    X = _as_csr(X_items, V.shape[0], "item features")
    emb, lin, pair = _parts(weights, X)
    vecs = np.empty((X.shape[0], V.shape[1] + 1), dtype=np.float32)
    vecs[:, :-1] = emb
    vecs[:, -1] = lin + pair
    return vecs


def fm_scores(weights: FMLike, X: Any) -> np.ndarray:
    """The FM score (before any sigmoid) of each full feature row, in float64: the reference."""
    V = np.asarray(weights.V)
    M = _as_csr(X, V.shape[0], "feature rows")
    _, lin, pair = _parts(weights, M)
    return float(np.asarray(weights.w0, dtype=np.float64).reshape(-1)[0]) + lin + pair


def _check_disjoint(Xu: sp.csr_matrix, Xi: sp.csr_matrix) -> None:
    """User and item rows must use different columns, or the split of the FM score is not exact."""
    shared = np.intersect1d(np.unique(Xu.indices), np.unique(Xi.indices))
    if shared.size:
        raise LocalFMError(
            f"features.json: user and item features share {shared.size} column(s) (first: {int(shared[0])}); "
            "expected disjoint user and item columns"
        )


def repackage(
    weights: FMLike,
    space: FeatureSpaceLike,
    *,
    user_ids: Any = None,
    item_ids: Any = None,
    cold_start: bool = False,
) -> Repackaged:
    """Vectors for the users and items of ``space`` (all of them by default).

    ``user_ids`` may name users the model has no id column for: with
    ``cold_start=True`` they get vectors from their side features alone (or, with no
    features either, the empty row: a pure popularity ranking by the item terms);
    otherwise the feature space raises a :class:`LocalFMError` naming the first one.
    Also raises :class:`LocalFMError` when the model and the feature space disagree
    on ``feature_dim`` or the model holds NaN/inf parameters.
    """
    check_weights(weights)
    model_dim = int(np.asarray(weights.V).shape[0])
    if int(space.feature_dim) != model_dim:
        raise LocalFMError(
            f"features.json: feature_dim {int(space.feature_dim)} does not match the model's feature_dim {model_dim}"
        )
    if cold_start:
        Xu_raw = space.user_matrix(user_ids, allow_unknown_ids=True)  # type: ignore[call-arg]
    else:
        Xu_raw = space.user_matrix(user_ids)
    Xu = _as_csr(Xu_raw, model_dim, "features.json user matrix")
    Xi = _as_csr(space.item_matrix(item_ids), model_dim, "features.json item matrix")
    _check_disjoint(Xu, Xi)
    uvec, uconst = user_vectors(weights, Xu)
    ivec = item_vectors(weights, Xi)
    uids = np.asarray(space.user_ids if user_ids is None else user_ids)
    iids = np.asarray(space.item_ids if item_ids is None else item_ids)
    if len(uids) != uvec.shape[0] or len(iids) != ivec.shape[0]:
        raise LocalFMError("features.json: id lists and feature matrices have different lengths")
    return Repackaged(
        user_ids=uids,
        user_vectors=uvec,
        user_constants=uconst,
        item_ids=iids,
        item_vectors=ivec,
        predictor_type=getattr(weights, "predictor_type", None),
        meta={"feature_dim": model_dim, "num_factors": int(np.asarray(weights.V).shape[1])},
    )


def knn_labels(item_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """float32 k-NN labels: the item ids when float32 holds them exactly, else the row index.

    SageMaker k-NN labels are float32, so ids like ``"tt0111161"`` or 2**31 cannot be
    labels; the row index then stands in and ``items.parquet`` maps it back.
    """
    ids = np.asarray(item_ids)
    if ids.dtype.kind in "iu" and (ids.size == 0 or np.abs(ids.astype(np.int64)).max() < _FLOAT32_EXACT_INT):
        return ids.astype(np.float32), "item_id"
    if ids.dtype.kind == "f" and np.all(ids == np.round(ids)) and (ids.size == 0 or np.abs(ids).max() < _FLOAT32_EXACT_INT):
        return ids.astype(np.float32), "item_id"
    return np.arange(len(ids), dtype=np.float32), "item_index"


def _id_array(ids: np.ndarray) -> Any:
    import pyarrow as pa

    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        return pa.array(arr.astype(np.int64))
    return pa.array([str(x) for x in arr.tolist()], type=pa.string())


#: Every file :func:`write_repackaged` writes (they land together or not at all).
OUTPUT_FILES = (
    "items.protobuf", "users.protobuf", "item_vectors.npy", "user_vectors.npy", "user_constants.npy",
    "items.parquet", "users.parquet", "repackage.json",
)


def write_repackaged(rep: Repackaged, out_dir: str | Path) -> dict[str, Any]:
    """Write every output of ``localfm repackage`` into ``out_dir``; all land together or none.

    - ``items.protobuf``: dense RecordIO-protobuf item vectors, label = item id (k-NN training input)
    - ``users.protobuf``: dense RecordIO-protobuf user vectors, no label (k-NN transform input)
    - ``item_vectors.npy``, ``user_vectors.npy``, ``user_constants.npy``
    - ``items.parquet`` (item_id, label, vector), ``users.parquet`` (user_id, constant, vector)
    - ``repackage.json``: dimensions, counts, how labels map to ids, the predictor type
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LocalFMError(f"{out}: exists and is not a directory")
    labels, label_kind = knn_labels(rep.item_ids)
    meta = {
        "format": "localfm-repackage-1",
        "dim": rep.dim,
        "n_users": int(rep.user_vectors.shape[0]),
        "n_items": int(rep.item_vectors.shape[0]),
        "labels": label_kind,
        "predictor_type": rep.predictor_type,
        "score": "user_vector . item_vector + user_constant = FM score before sigmoid",
        **rep.meta,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFMError(f"{out}: cannot create output directory ({exc.strerror})") from None
    # A folder where an output file goes would fail the final renames part-way through,
    # after some outputs had already replaced their old versions: refuse before writing.
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            raise LocalFMError(f"{out / name}: is a directory, expected to write a file there")
    try:
        with atomic_outputs() as outs:
            write_dense(outs.path(out / "items.protobuf"), rep.item_vectors, labels)
            write_dense(outs.path(out / "users.protobuf"), rep.user_vectors)
            for name, arr in (
                ("item_vectors.npy", rep.item_vectors),
                ("user_vectors.npy", rep.user_vectors),
                ("user_constants.npy", rep.user_constants),
            ):
                with open(outs.path(out / name), "wb") as fh:
                    np.save(fh, arr)
            items = pa.table(
                {
                    "item_id": _id_array(rep.item_ids),
                    "label": pa.array(labels),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(rep.item_vectors.reshape(-1)), rep.dim),
                }
            )
            users = pa.table(
                {
                    "user_id": _id_array(rep.user_ids),
                    "constant": pa.array(rep.user_constants),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(rep.user_vectors.reshape(-1)), rep.dim),
                }
            )
            pq.write_table(items, outs.path(out / "items.parquet"))
            pq.write_table(users, outs.path(out / "users.parquet"))
            with open(outs.path(out / "repackage.json"), "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)
                fh.write("\n")
    except OSError as exc:  # permissions, a full disk ...: bad output target, exit 2
        raise LocalFMError(f"{out}: cannot write the outputs ({exc.strerror or exc})") from None
    return meta
