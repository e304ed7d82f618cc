"""Top-x recommendations for many users, end to end: model + features → ranked items → a sink.

The pipeline: repackage the FM (:mod:`.repackage`), pick the item set (allow / deny
lists), build each user's "already rated" set from the interactions, rank with the
exact engine (:mod:`.topx`, the default, equivalent to SageMaker k-NN's
``faiss.Flat`` + ``INNER_PRODUCT``) or an approximate FAISS index
(:func:`localfm.knn.index.build_index`), and stream :class:`~.sinks.ResultBatch` es.

Scores are true FM scores: ``inner product + per-user constant`` recomputed in float64
for the chosen items (the same number ``FMWeights.raw_scores`` gives for the one-hot
row), optionally passed through the sigmoid for binary classifiers — SageMaker's
``score`` field. The ranking is identical either way (sigmoid is monotone).

Exclusion with an approximate index over-fetches ``k + (most items any user in the
batch has rated)`` and filters, which is exact with respect to that index's
candidates; the exact engine masks rated items before selection.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from .repackage import Repackaged
from .sinks import ResultBatch
from .topx import default_threads, iter_top_x, validate_k

EXACT = "exact"
APPROX_INDEXES = ("faiss.Flat", "faiss.IVFFlat", "faiss.HNSW", "faiss.IVFPQ")


@dataclass
class RecommendStats:
    """What a run did, for the CLI summary and tests."""

    users: int = 0
    rows: int = 0
    items: int = 0
    index: str = EXACT
    seconds: float = 0.0
    recall: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- ids and interactions


def coerce_ids(values: Any, like: np.ndarray, what: str) -> np.ndarray:
    """``values`` converted to the dtype kind of ``like`` (ints from "12" or 12.0; else strings)."""
    arr = np.atleast_1d(np.asarray(values))
    if np.asarray(like).dtype.kind in "iu":
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64)
        out = np.empty(arr.shape[0], dtype=np.int64)
        for n, v in enumerate(arr.tolist()):
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise LocalFMError(f"{what}: id {v!r} is not an integer, but the feature space uses integer ids") from None
            if not math.isfinite(f) or f != int(f):
                raise LocalFMError(f"{what}: id {v!r} is not an integer, but the feature space uses integer ids")
            out[n] = int(f)
        return out
    return np.array([str(v) for v in arr.tolist()], dtype=str)


def positions(known: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each ``query`` id in ``known`` (any order), -1 where absent."""
    known = np.asarray(known)
    query = np.asarray(query)
    if known.size == 0 or query.size == 0:
        return np.full(query.shape[0], -1, dtype=np.int64)
    order = np.argsort(known, kind="stable")
    sk = known[order]
    pos = np.searchsorted(sk, query).clip(max=len(sk) - 1)
    found = sk[pos] == query
    return np.where(found, order[pos], -1).astype(np.int64)


def read_seen(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) of already-rated pairs from an interactions file.

    Accepts ``train_interactions.parquet`` written by ``localfm prepare`` (columns
    user_id, item_id), a MovieLens ``u.data``/``*.base``/``*.test`` file (tab-separated,
    no header: user item rating timestamp), ``ratings.dat`` (``::``), or a CSV/Parquet with
    user_id,item_id (or userId,movieId) columns.
    """
    from ..data.tabular import read_interactions

    p = Path(path)
    if not p.is_file():
        raise LocalFMError(f"{p}: interactions file not found")
    name = p.name.lower()
    if name == "u.data" or p.suffix.lower() in (".base", ".test") or name.endswith(".dat"):
        sep = "::" if name.endswith(".dat") else "\t"
        users, items = [], []
        with open(p, encoding="latin-1") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\r\n").split(sep)
                if len(parts) < 2:
                    raise LocalFMError(f"{p}: line {n}: expected user{sep!r}item{sep!r}rating...")
                try:
                    users.append(int(parts[0]))
                    items.append(int(parts[1]))
                except ValueError:
                    raise LocalFMError(f"{p}: line {n}: expected integer user and item ids") from None
        return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    cols = _column_names(p)
    for ucol, icol in (("user_id", "item_id"), ("userId", "movieId"), ("user", "item")):
        if ucol in cols and icol in cols:
            inter = read_interactions(p, user_col=ucol, item_col=icol, rating_col=None)
            return inter.user, inter.item
    raise LocalFMError(f"{p}: expected columns user_id and item_id; found {', '.join(cols) or 'none'}")


def _column_names(p: Path) -> list[str]:
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(p).names)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise LocalFMError(f"{p}: not a readable Parquet file ({type(exc).__name__})") from None
    with open(p, encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    sep = "\t" if p.suffix.lower() == ".tsv" else ","
    return [c.strip() for c in header.rstrip("\r\n").split(sep)]


def seen_matrix(
    user_ids: np.ndarray, item_ids: np.ndarray, seen_users: np.ndarray, seen_items: np.ndarray
) -> sp.csr_matrix:
    """(len(user_ids), len(item_ids)) 0/1 CSR of rated pairs; ids outside the lists are ignored."""
    u = positions(user_ids, coerce_ids(seen_users, user_ids, "interactions user_id"))
    i = positions(item_ids, coerce_ids(seen_items, item_ids, "interactions item_id"))
    keep = (u >= 0) & (i >= 0)
    M = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (u[keep], i[keep])), shape=(len(user_ids), len(item_ids))
    )
    M.sum_duplicates()
    M.data[:] = 1.0
    return M


def select_items(item_ids: np.ndarray, allow: Any = None, deny: Any = None) -> np.ndarray:
    """Rows of the candidate items: all, or only ``allow``; minus ``deny``. Unknown ids are errors."""
    rows = np.arange(len(item_ids), dtype=np.int64)
    if allow is not None:
        q = coerce_ids(allow, item_ids, "--allow-items")
        pos = positions(item_ids, q)
        if (pos < 0).any():
            raise LocalFMError(f"--allow-items: item id {q[np.flatnonzero(pos < 0)[0]]!r} is not in features.json")
        rows = np.unique(pos)
    if deny is not None:
        q = coerce_ids(deny, item_ids, "--deny-items")
        pos = positions(item_ids, q)
        if (pos < 0).any():
            raise LocalFMError(f"--deny-items: item id {q[np.flatnonzero(pos < 0)[0]]!r} is not in features.json")
        rows = np.setdiff1d(rows, pos)
    if rows.size == 0:
        raise LocalFMError("--allow-items/--deny-items: no candidate items left")
    return rows


# ---------------------------------------------------------------- ranking


def _to_batch(
    rep: Repackaged, first: int, ids: np.ndarray, item_rows: np.ndarray, sigmoid: bool
) -> ResultBatch:
    """Result rows for users ``first..first+len(ids)``; ``ids`` index ``item_rows`` (-1 = none)."""
    n, k = ids.shape
    valid = ids >= 0
    urow = np.repeat(np.arange(first, first + n), k).reshape(n, k)[valid]
    irow = item_rows[ids[valid]]
    rank = np.broadcast_to(np.arange(1, k + 1), (n, k))[valid]
    score = rep.scores(urow, irow)
    if sigmoid:
        score = 1.0 / (1.0 + np.exp(-score))
    return ResultBatch(user_id=rep.user_ids[urow], rank=rank.astype(np.int32), item_id=rep.item_ids[irow], score=score)


def _exact_iter(U, I, k, seen, batch_size, threads, mode):  # noqa: ANN001, ANN202
    for first, part in iter_top_x(
        U, I, k, exclude=seen, batch_size=batch_size, threads=threads, mode=mode, progress_desc="recommend"
    ):
        yield first, part.ids


def _index_iter(index: Any, U: np.ndarray, k: int, seen: sp.csr_matrix | None, batch_size: int, n_items: int):
    """Search an approximate index per user batch, over-fetching to survive exclusions."""
    from ..progress import progress

    starts = range(0, U.shape[0], batch_size)
    for first in progress(starts, total=len(starts), desc="recommend", unit="batch"):
        last = min(first + batch_size, U.shape[0])
        extra = 0
        sub = None
        if seen is not None:
            sub = seen[first:last]
            extra = int(np.diff(sub.indptr).max()) if sub.shape[0] else 0
        fetch = min(k + extra, n_items)
        _, ids = index.search(U[first:last], fetch, batch_size=batch_size, desc="k-NN search")
        ids = np.asarray(ids, dtype=np.int64)
        if sub is not None and sub.nnz:
            rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
            flat = ids.reshape(-1)
            ok = flat >= 0
            is_seen = np.zeros(flat.shape[0], dtype=bool)
            is_seen[ok] = np.asarray(sub[rows[ok], flat[ok]]).reshape(-1) != 0
            ids = np.where(is_seen.reshape(ids.shape), -1, ids)
        # Keep the first k surviving ids per row, best first.
        order = np.argsort(ids < 0, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)[:, :k]
        if ids.shape[1] < k:
            ids = np.hstack([ids, np.full((ids.shape[0], k - ids.shape[1]), -1, dtype=np.int64)])
        yield first, ids


def recommend(
    rep: Repackaged,
    k: int,
    *,
    seen: sp.csr_matrix | None = None,
    item_rows: np.ndarray | None = None,
    index: str = EXACT,
    sigmoid: bool = False,
    batch_size: int = 2048,
    threads: int | None = None,
    mode: str = "auto",
    recall_users: int = 1000,
    stats: RecommendStats | None = None,
    index_options: dict[str, Any] | None = None,
    metric: str = "INNER_PRODUCT",
) -> Iterator[ResultBatch]:
    """Stream top-``k`` results for every user of ``rep``, one :class:`ResultBatch` per user batch.

    ``seen``: (users, all items) CSR of items to exclude per user. ``item_rows``:
    candidate item rows (see :func:`select_items`). ``index``: ``"exact"`` or a FAISS
    index type (``faiss.Flat``, ``faiss.IVFFlat``, ``faiss.HNSW``, ``faiss.IVFPQ``);
    for approximate indexes recall@k against the exact engine on up to
    ``recall_users`` users is put into ``stats.recall``. ``metric`` other than
    ``INNER_PRODUCT`` (COSINE, L2: mirroring a k-NN configured so) implies a FAISS
    index (``faiss.Flat`` for ``"exact"``) and is *not* FM-score order; its recall
    against the exact FM ranking is reported.
    """
    k = validate_k(k)
    stats = stats if stats is not None else RecommendStats()
    if sigmoid and rep.predictor_type not in ("binary_classifier", None):
        raise LocalFMError(f"--sigmoid: applies to binary_classifier models, this one is {rep.predictor_type}")
    if batch_size <= 0:
        raise LocalFMError(f"--batch-size: expected a positive integer, got {batch_size}")
    item_rows = np.arange(len(rep.item_ids), dtype=np.int64) if item_rows is None else np.asarray(item_rows)
    U = rep.user_vectors
    I = rep.item_vectors[item_rows]
    for name, X in (("user vectors", U), ("item vectors", I)):
        if not np.all(np.isfinite(X)):
            raise LocalFMError(f"{name}: contain NaN or infinite values (check the model and features.json)")
    sub_seen = None
    if seen is not None:
        if seen.shape != (U.shape[0], len(rep.item_ids)):
            raise LocalFMError(f"exclusions: shape {seen.shape}, expected {(U.shape[0], len(rep.item_ids))}")
        sub_seen = sp.csr_matrix(seen)[:, item_rows].tocsr()
    threads = threads or default_threads()
    stats.index, stats.items, stats.users = index, int(I.shape[0]), int(U.shape[0])
    if metric != "INNER_PRODUCT" and index == EXACT:
        index = "faiss.Flat"
    if index == EXACT:
        import torch  # noqa: F401 - imported before the clock starts: seconds measure ranking, not imports

        t0 = time.perf_counter()
        source = _exact_iter(U, I, k, sub_seen, batch_size, threads, mode)
    else:
        from ..knn.index import build_index, configure_threads, normalize_index_type

        name = normalize_index_type(index)
        configure_threads()
        t0 = time.perf_counter()
        idx = build_index(I, index_type=name, index_metric=metric, **(index_options or {}))
        stats.index = name
        exact_equivalent = name == "faiss.Flat" and metric == "INNER_PRODUCT"
        if not exact_equivalent and recall_users > 0 and U.shape[0]:
            stats.recall = measure_recall(idx, U, I, k, sub_seen, recall_users, threads)
        source = _index_iter(idx, U, k, sub_seen, batch_size, I.shape[0])
    for first, ids in source:
        batch = _to_batch(rep, first, ids, item_rows, sigmoid)
        stats.rows += len(batch)
        yield batch
    stats.seconds = time.perf_counter() - t0


def measure_recall(
    idx: Any,
    U: np.ndarray,
    I: np.ndarray,
    k: int,
    seen: sp.csr_matrix | None,
    n_users: int,
    threads: int,
    seed: int = 0,
) -> dict[str, Any]:
    """recall@k of an approximate index against the exact engine, on a seeded user sample."""
    from ..knn.index import recall_at_k

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(U.shape[0], size=min(n_users, U.shape[0]), replace=False))
    Us = U[pick]
    ss = seen[pick] if seen is not None else None
    exact = np.concatenate([ids for _, ids in _exact_iter(Us, I, k, ss, 1024, threads, "auto")])
    approx = np.concatenate([ids for _, ids in _index_iter(idx, Us, k, ss, 1024, I.shape[0])])
    return {"k": int(min(k, I.shape[0])), "users": int(pick.size), "recall": float(recall_at_k(approx, exact))}
