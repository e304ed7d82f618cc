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
IVF_INDEXES = ("faiss.IVFFlat", "faiss.IVFPQ")
# The cloud's hidden k-NN default. ``nprobe="auto"`` starts here and only ever raises it,
# so wherever SageMaker's setting is already good enough the result is the cloud's.
START_NPROBE = 5
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_TUNE_USERS = 1000


@dataclass
class RecommendStats:
    """What a run did: filled in while :func:`recommend` streams, since a generator has no return value
    the CLI can print as its summary."""

    users: int = 0
    rows: int = 0
    items: int = 0
    index: str = EXACT
    seconds: float = 0.0
    recall: dict[str, Any] | None = None
    # IVF indexes: how nprobe was chosen ({"mode": "auto"|"fixed", "nprobe", ...}).
    nprobe: dict[str, Any] | None = None


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
    import pyarrow as pa

    cols = _column_names(p)
    for ucol, icol in (("user_id", "item_id"), ("userId", "movieId"), ("user", "item")):
        if ucol in cols and icol in cols:
            try:
                inter = read_interactions(p, user_col=ucol, item_col=icol, rating_col=None)
            except pa.ArrowException as exc:
                # e.g. an id column that is not valid UTF-8: pyarrow's error, not bad-input exit 2.
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise LocalFMError(f"{p}: cannot read columns {ucol}, {icol} ({first})") from None
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


def _exact_iter(
    U: np.ndarray, I: np.ndarray, k: int, seen: sp.csr_matrix | None, batch_size: int, threads: int, mode: str
) -> Iterator[tuple[int, np.ndarray]]:
    """(first user row, ids) per batch from the exact engine: the same shape :func:`_index_iter` yields,
    so ranking, recall references and tuning share one consumer."""
    for first, part in iter_top_x(
        U, I, k, exclude=seen, batch_size=batch_size, threads=threads, mode=mode, progress_desc="recommend"
    ):
        yield first, part.ids


def _index_iter(
    index: Any, U: np.ndarray, k: int, seen: sp.csr_matrix | None, batch_size: int, n_items: int
) -> Iterator[tuple[int, np.ndarray]]:
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
    target_recall: float = DEFAULT_TARGET_RECALL,
    tune_users: int = DEFAULT_TUNE_USERS,
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

    IVF indexes (``faiss.IVFFlat``, ``faiss.IVFPQ``) take ``index_options["nprobe"]``:
    an integer is used as given; ``"auto"`` (the default) raises nprobe from the
    cloud's 5 until recall@k on a seeded sample of at most ``tune_users`` users (half
    the users at most, so the rest stay held out) reaches ``target_recall``; see
    :func:`tune_nprobe`. ``stats.nprobe`` records the choice, and ``stats.recall``
    adds the recall on users the tuning never saw.
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
        opts = dict(index_options or {})
        auto = False
        if name in IVF_INDEXES:
            auto = _check_nprobe(opts.get("nprobe", "auto")) == "auto"
            if auto:
                opts["nprobe"] = START_NPROBE
                if not 0.0 < float(target_recall) <= 1.0:
                    raise LocalFMError(f"--target-recall: expected a number in (0, 1], got {target_recall}")
                if int(tune_users) < 1:
                    raise LocalFMError(f"--tune-users: expected a positive integer, got {tune_users}")
        configure_threads()
        t0 = time.perf_counter()
        idx = build_index(I, index_type=name, index_metric=metric, **opts)
        stats.index = name
        ref = _Reference(U, I, k, sub_seen, threads, metric)
        tuned_rows = None
        if auto and U.shape[0]:
            stats.nprobe = tune_nprobe(idx, ref, target=float(target_recall), tune_users=int(tune_users))
            tuned_rows = np.asarray(stats.nprobe.pop("_rows"))
        elif name in IVF_INDEXES:
            stats.nprobe = {"mode": "auto" if auto else "fixed", "nprobe": int(idx.nprobe),
                            "nlist": int(idx.extra.get("nlist", 0))}
        exact_equivalent = name == "faiss.Flat" and metric == "INNER_PRODUCT"
        if not exact_equivalent and recall_users > 0 and U.shape[0]:
            stats.recall = measure_recall(idx, U, I, k, sub_seen, recall_users, threads, ref=ref, tuned_rows=tuned_rows)
        source = _index_iter(idx, U, k, sub_seen, batch_size, I.shape[0])
    for first, ids in source:
        batch = _to_batch(rep, first, ids, item_rows, sigmoid)
        stats.rows += len(batch)
        yield batch
    stats.seconds = time.perf_counter() - t0


def _check_nprobe(value: Any) -> int | str:
    """``"auto"`` or a positive integer (what ``--nprobe`` accepts)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise LocalFMError(f"--nprobe: expected 'auto' or a positive integer, got {value!r}") from None
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and n != value):
        raise LocalFMError(f"--nprobe: expected 'auto' or a positive integer, got {value!r}")
    return n


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A sorted, seeded sample of ``size`` of ``range(n)`` (all of them when size >= n)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def _recall_rows(approx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per-row recall (as :func:`localfm.knn.index.recall_at_k`, which returns only the mean)."""
    out = np.ones(exact.shape[0], dtype=np.float64)
    for r, (a_row, e_row) in enumerate(zip(approx, exact)):
        e = np.unique(e_row[e_row >= 0])
        if e.size:
            out[r] = np.intersect1d(a_row[a_row >= 0], e).size / e.size
    return out


@dataclass
class _Reference:
    """Exact top-k ids for any subset of users, computed once per user and cached.

    Two references: ``fm`` is the exact FM ranking (the exact engine: what
    ``recall`` has always been measured against); ``metric`` is exact search in
    the index's own metric, which is what nprobe can improve: the same as ``fm``
    for INNER_PRODUCT, a ``faiss.Flat`` of that metric for COSINE / L2 (whose
    order differs from FM order at any nprobe). Both apply the exclusions, so
    recall is that of the final post-exclusion top-k.
    """

    U: np.ndarray
    I: np.ndarray
    k: int
    seen: sp.csr_matrix | None
    threads: int
    metric: str
    _cache: dict[str, dict[int, np.ndarray]] = field(default_factory=lambda: {"fm": {}, "metric": {}})
    _flat: Any = None

    def ids(self, rows: np.ndarray, kind: str = "metric") -> np.ndarray:
        if kind == "metric" and self.metric == "INNER_PRODUCT":
            kind = "fm"
        cache = self._cache[kind]
        todo = np.array([r for r in rows.tolist() if r not in cache], dtype=np.int64)
        if todo.size:
            ss = self.seen[todo] if self.seen is not None else None
            if kind == "fm":
                got = np.concatenate([ids for _, ids in _exact_iter(self.U[todo], self.I, self.k, ss, 1024,
                                                                    self.threads, "auto")])
            else:
                if self._flat is None:
                    from ..knn.index import build_index

                    self._flat = build_index(self.I, index_type="faiss.Flat", index_metric=self.metric)
                got = np.concatenate([ids for _, ids in _index_iter(self._flat, self.U[todo], self.k, ss, 1024,
                                                                    self.I.shape[0])])
            cache.update(zip(todo.tolist(), got))
        return np.stack([cache[r] for r in rows.tolist()]) if rows.size else np.empty((0, self.k), np.int64)

    def describe(self) -> str:
        """What the tuning target and the held-out recall are measured against."""
        return "exact FM ranking" if self.metric == "INNER_PRODUCT" else f"exact {self.metric} search"

    def approx(self, idx: Any, rows: np.ndarray) -> np.ndarray:
        ss = self.seen[rows] if self.seen is not None else None
        return np.concatenate([ids for _, ids in _index_iter(idx, self.U[rows], self.k, ss, 1024, self.I.shape[0])])


def tune_nprobe(
    idx: Any,
    ref: _Reference,
    *,
    target: float = DEFAULT_TARGET_RECALL,
    tune_users: int = DEFAULT_TUNE_USERS,
    seed: int = 1,
) -> dict[str, Any]:
    """Set ``idx.nprobe`` to the smallest value >= 5 whose recall@k reaches ``target``.

    Why not :func:`localfm.knn.index.tune_nprobe`: that one measures plain search of
    training rows against FAISS exact search and stops at a doubling. Here recall is
    that of what ``recommend`` stores — user queries, exclusions applied, compared
    with the exact engine — and the answer is the smallest nprobe, not the next
    power of two times 5 (each extra list probed costs search time on every user).

    "Meets" means the tuning users' mean recall minus two standard errors is at least
    ``target``, so the recall on users outside the sample is at or above the target
    in most runs, not in half of them.

    Search: nprobe 5, 10, 20, ... (capped at nlist) until the target is met, then a
    bisection between the last failing and the first passing value. For IVFFlat
    recall cannot fall when nprobe rises (a superset of cells, exact distances), so
    the bisection finds the true minimum; for IVFPQ it is a good approximation and
    the returned recall is always the one measured at the chosen value.

    Tuning users are a seeded sample of ``min(tune_users, n_users // 2)`` users so
    that the other half stays available for an honest held-out check
    (:func:`measure_recall`). Returns a dict for the summary; key ``_rows`` holds
    the tuning rows (the caller removes it).
    """
    n = ref.U.shape[0]
    nlist = int(idx.extra.get("nlist") or 1)
    rows = _sample_rows(n, min(tune_users, max(1, n // 2)), seed)
    exact = ref.ids(rows)
    tried: dict[int, float] = {}
    passed: dict[int, bool] = {}

    def recall_at(p: int) -> float:
        if p not in tried:
            idx.nprobe = p
            per_user = _recall_rows(ref.approx(idx, rows), exact)
            tried[p] = float(per_user.mean())
            # Pass with two standard errors to spare: the sample mean just at the
            # target would leave the recall on other users below it about half the time.
            se = float(per_user.std(ddof=1) / np.sqrt(per_user.size)) if per_user.size > 1 else 0.0
            passed[p] = tried[p] - 2.0 * se >= target
        return tried[p]

    def meets(p: int) -> bool:
        recall_at(p)
        return passed[p]

    lo, hi = 0, None
    p = min(START_NPROBE, nlist)
    while True:
        if meets(p):
            hi = p
            break
        lo = p
        if p >= nlist:
            break
        p = min(2 * p, nlist)
    if hi is not None and lo > 0:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid
    chosen = hi if hi is not None else nlist
    idx.nprobe = chosen
    return {
        "mode": "auto",
        "nprobe": int(chosen),
        "nlist": nlist,
        "target": float(target),
        "met": hi is not None,
        "tuning_users": int(rows.size),
        "tuning_recall": recall_at(chosen),
        "reference": ref.describe(),
        "tried": [{"nprobe": int(q), "recall": r} for q, r in tried.items()],
        "_rows": rows,
    }


def measure_recall(
    idx: Any,
    U: np.ndarray,
    I: np.ndarray,
    k: int,
    seen: sp.csr_matrix | None,
    n_users: int,
    threads: int,
    seed: int = 0,
    *,
    ref: _Reference | None = None,
    tuned_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """recall@k of an approximate index against the exact engine, on a seeded user sample.

    ``recall`` is over the whole sample (all users when there are at most
    ``n_users``). When nprobe was tuned on ``tuned_rows``, the sample's other users
    give ``held_out_recall`` (against the same reference the tuning used): the
    number to trust, since the tuned nprobe was chosen to pass on the tuning users.
    """
    ref = ref if ref is not None else _Reference(U, I, k, seen, threads, "INNER_PRODUCT")
    pick = _sample_rows(U.shape[0], n_users, seed)
    approx = ref.approx(idx, pick)
    out: dict[str, Any] = {
        "k": int(min(k, I.shape[0])),
        "users": int(pick.size),
        "recall": float(_recall_rows(approx, ref.ids(pick, "fm")).mean()),
    }
    if tuned_rows is not None:
        held = ~np.isin(pick, tuned_rows)
        out["held_out_users"] = int(held.sum())
        out["held_out_reference"] = ref.describe()
        out["held_out_recall"] = (
            float(_recall_rows(approx[held], ref.ids(pick[held], "metric")).mean()) if held.any() else None
        )
    return out
