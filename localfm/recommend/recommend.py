"""Top-x recommendations for many users, end to end: model + features → ranked items → a sink.

The pipeline: repackage the FM (:mod:`.repackage`), pick the users (de-duplicated,
unknown ones refused, skipped or cold-started) and the item set (allow / deny lists),
build each user's "already rated" set from the interactions, rank with the exact
engine (:mod:`.topx`, the default, equivalent to SageMaker k-NN's ``faiss.Flat`` +
``INNER_PRODUCT``) or an approximate FAISS index
(:func:`localfm.knn.index.build_index`), and stream :class:`~.sinks.ResultBatch` es.

Two entry points:

* :func:`recommend_all` (``localfm.recommend_all``): model and features (objects or
  paths) in, a :class:`Recommendations` out: what ``localfm recommend`` runs.
* :func:`rank`: an already repackaged model (:class:`~.repackage.Repackaged`) in,
  for callers that built the vectors, the exclusions and the item rows themselves.

Options that only shape the ranking live in one :class:`RecommendOptions`, so the
CLI, the Python API and tests share one definition and one validation. Both return a
:class:`Recommendations`: iterate it (once) for the batches; its :attr:`stats` and
:meth:`~Recommendations.summary` are complete when the iteration is. Bad values
raise :class:`LocalFMError` at the call, before any ranking work, with ``param`` set
to the option's name.

Scores are true FM scores: ``inner product + per-user constant`` recomputed in float64
for the chosen items (the same number ``FMWeights.raw_scores`` gives for the one-hot
row), optionally passed through the sigmoid for binary classifiers — SageMaker's
``score`` field. The ranking is identical either way (sigmoid is monotone).

Exclusion with an approximate index over-fetches ``k + (most items any user in the
batch has rated)`` and filters, which is exact with respect to that index's
candidates; the exact engine masks rated items before selection.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..data.features import FeatureSpace, as_ids
from ..data.ids import lookup
from ..data.tabular import read_interaction_file
from ..device import check_device_name, resolve_device
from ..errors import LocalFMError, LocalFMWarning
from ..io.artifacts import load_fm
from ..knn.index import (
    DEFAULT_TARGET_RECALL,
    IVF_INDEX_TYPES,
    START_NPROBE,
    build_index,
    check_metric,
    choose_nprobe,
    configure_threads,
    normalize_index_type,
    recall_per_row,
)
from ..progress import progress
from .sinks import ResultBatch, open_sink
from .topx import (
    PRECISIONS,
    PreparedItems,
    default_threads,
    iter_top_x,
    torch_free,
    validate_k,
)
from .vectors import Repackaged, repackage

EXACT = "exact"
APPROX_INDEXES = ("faiss.Flat", "faiss.IVFFlat", "faiss.HNSW", "faiss.IVFPQ")
DEFAULT_TUNE_USERS = 1000
UNKNOWN_USER_POLICIES = ("error", "cold-start", "skip")
# Where ``recommend_all`` looks for the already-rated pairs when none are given:
# ``localfm prepare`` writes them next to features.json.
DEFAULT_INTERACTIONS = "train_interactions.parquet"


@dataclass
class RecommendOptions:
    """How to rank: everything but the data. Validated by :meth:`validated` (``param`` = field name).

    ``index``: ``"exact"`` or a FAISS index type (``faiss.Flat``, ``faiss.IVFFlat``,
    ``faiss.HNSW``, ``faiss.IVFPQ``). ``index_metric`` other than ``INNER_PRODUCT``
    (COSINE, L2: mirroring a k-NN configured so) implies a FAISS index (``faiss.Flat``
    for ``"exact"``) and is *not* FM-score order. ``nprobe`` (IVF indexes): an integer
    is used as given; ``"auto"`` applies localfm's nprobe policy
    (:func:`localfm.knn.index.choose_nprobe`) from the cloud's 5 until recall@k on a
    seeded sample of at most ``tune_users`` users (half the users at most, so the rest
    stay held out) reaches ``target_recall``. ``recall_users``: users sampled to
    measure recall@k of an approximate index (0 = skip). ``precision``: the exact
    engine's screening (``auto``/``fp32``/``bf16``; results are exact either way).
    ``device``: where the exact engine ranks (``cpu``, or ``cuda``/``cuda:N``/``mps`` through
    torch: float32 scores of every item, no pruning; see :func:`localfm.recommend.topx.top_x`).
    ``strict``: ``k`` above the number of candidate items is an error instead of a
    :class:`LocalFMWarning`. ``index_options``: further :func:`build_index` keywords
    (``nlist``, ``ef_search`` ...).
    """

    k: int = 10
    index: str = EXACT
    index_metric: str = "INNER_PRODUCT"
    nprobe: int | str = "auto"
    target_recall: float = DEFAULT_TARGET_RECALL
    tune_users: int = DEFAULT_TUNE_USERS
    recall_users: int = 1000
    sigmoid: bool = False
    batch_size: int = 2048
    threads: int | None = None
    precision: str = "auto"
    device: str = "cpu"
    strict: bool = False
    index_options: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> RecommendOptions:
        """A normalised copy (index type spelled canonically, nprobe ``"auto"`` or an int); raises on bad values."""
        index = self.index if self.index == EXACT else normalize_index_type(self.index)
        checks = (
            ("batch_size", _positive_int(self.batch_size), "a positive integer"),
            ("threads", self.threads is None or _positive_int(self.threads), "a positive integer"),
            ("tune_users", _positive_int(self.tune_users), "a positive integer"),
            ("recall_users", _int_at_least(self.recall_users, 0), "an integer >= 0"),
            ("target_recall", _in_unit_interval(self.target_recall), "a number in (0, 1]"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise LocalFMError(f"{name}: expected {expected}, got {getattr(self, name)!r}", param=name)
        if self.precision not in PRECISIONS:
            raise LocalFMError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}",
                               param="precision")
        metric = check_metric(self.index_metric)
        device = check_device_name(self.device)
        if device != "cpu" and (index != EXACT or metric != "INNER_PRODUCT"):
            raise LocalFMError(f"device: {device!r} ranks with the exact inner-product engine only; FAISS indexes "
                               f"run on the CPU (index {index!r}, index_metric {metric!r})", param="device")
        return dataclasses.replace(
            self, k=validate_k(self.k), index=index, index_metric=metric, device=resolve_device(device),
            nprobe=check_nprobe(self.nprobe), index_options=dict(self.index_options),
        )


def check_nprobe(value: Any) -> int | str:
    """``"auto"`` or a positive integer: what :attr:`RecommendOptions.nprobe` accepts."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and n != value):
        raise LocalFMError(f"nprobe: expected 'auto' or a positive integer, got {value!r}", param="nprobe")
    return n


def _positive_int(x: Any) -> bool:
    return _int_at_least(x, 1)


def _int_at_least(x: Any, low: int) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and int(x) >= low


def _in_unit_interval(x: Any) -> bool:
    try:
        return 0.0 < float(x) <= 1.0
    except (TypeError, ValueError):
        return False


@dataclass
class RecommendStats:
    """What a run did. Counts fill in as the batches are consumed; final after the last one."""

    users: int = 0
    rows: int = 0
    items: int = 0
    k: int = 0
    index: str = EXACT
    index_metric: str = "INNER_PRODUCT"
    exclude_seen: bool = False
    sigmoid: bool = False
    seconds: float = 0.0
    recall: dict[str, Any] | None = None
    # IVF indexes: how nprobe was chosen ({"mode": "auto"|"fixed", "nprobe", ...}).
    nprobe: dict[str, Any] | None = None
    # Exact engine: (user, item) scores its pruning never computed, of users × items.
    scores_skipped: int = 0
    scores_total: int = 0
    # Where the exact engine ranked (RecommendOptions.device).
    device: str = "cpu"


class Recommendations:
    """The result of :func:`recommend_all` / :func:`rank`: result batches plus what the run did.

    Iterate once for :class:`ResultBatch` es (memory stays bounded for any number of
    users). :attr:`stats` fills in while iterating; :meth:`summary` is the run's JSON
    summary and is available once the batches are all consumed. :attr:`warnings`
    lists what was also issued as :class:`LocalFMWarning` (e.g. ``k`` capped).
    """

    def __init__(self, batches: Iterator[ResultBatch], stats: RecommendStats, rep: Repackaged,
                 warnings_: list[str]) -> None:
        self._batches = batches
        self._started = False
        self.done = False
        self.stats = stats
        self.warnings = warnings_
        self.user_id_kind = "int" if rep.user_ids.dtype.kind in "iu" else "text"
        self.item_id_kind = "int" if rep.item_ids.dtype.kind in "iu" else "text"

    def __iter__(self) -> Iterator[ResultBatch]:
        if self._started:
            raise RuntimeError("Recommendations can be iterated only once (results are streamed)")
        self._started = True
        for batch in self._batches:
            self.stats.rows += len(batch)
            yield batch
        self.done = True

    def write(self, target: str, *, table: str = "recommendations", lock_timeout: float = 5.0) -> dict[str, Any]:
        """Store every batch in ``target`` (see :func:`~.sinks.open_sink`, atomic) and return :meth:`summary`."""
        with open_sink(target, table=table, lock_timeout=lock_timeout,
                       user_id_kind=self.user_id_kind, item_id_kind=self.item_id_kind) as write:
            for batch in self:
                write(batch)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """users, items, rows, k, index, index_metric, exclude_seen, seconds, score (+ recall, nprobe,
        skipped_fraction, device when not the CPU, warnings)."""
        if not self.done:
            raise RuntimeError("Recommendations.summary(): iterate the batches first")
        s = self.stats
        out: dict[str, Any] = {
            "users": s.users, "items": s.items, "rows": s.rows, "k": s.k, "index": s.index,
            "index_metric": s.index_metric, "exclude_seen": s.exclude_seen, "seconds": round(s.seconds, 3),
            "score": "sigmoid(fm score)" if s.sigmoid else "fm score",
        }
        if s.recall is not None:
            out["recall"] = s.recall
        if s.nprobe is not None:
            out["nprobe"] = s.nprobe
        if s.scores_total:
            out["skipped_fraction"] = round(s.scores_skipped / s.scores_total, 4)
        if s.device != "cpu":
            out["device"] = s.device
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


# ---------------------------------------------------------------- ids and interactions


def _ids_like(values: Any, like: np.ndarray, param: str) -> np.ndarray:
    """``values`` in the id kind of ``like`` (FeatureSpace's coercion), errors naming ``param``."""
    try:
        return as_ids(values, np.asarray(like).dtype)
    except LocalFMError as exc:
        raise LocalFMError(f"{param}: {exc}", param=param) from None


def positions(known: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each ``query`` id in ``known`` (any order, unlike FeatureSpace's sorted lookup), -1 where absent."""
    known = np.asarray(known)
    query = np.asarray(query)
    if known.size == 0 or query.size == 0:
        return np.full(query.shape[0], -1, dtype=np.int64)
    order = np.argsort(known, kind="stable")
    pos = lookup(known[order], query)
    return np.where(pos >= 0, order[np.maximum(pos, 0)], -1).astype(np.int64)


def read_seen(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) of already-rated pairs from any interactions file
    (:func:`localfm.data.tabular.read_interaction_file` says which)."""
    seen = read_interaction_file(path)
    return seen.user, seen.item


def seen_matrix(
    user_ids: np.ndarray, item_ids: np.ndarray, seen_users: np.ndarray, seen_items: np.ndarray
) -> sp.csr_matrix:
    """(len(user_ids), len(item_ids)) 0/1 CSR of rated pairs; ids outside the lists are ignored."""
    u = positions(user_ids, _ids_like(seen_users, user_ids, "interactions"))
    i = positions(item_ids, _ids_like(seen_items, item_ids, "interactions"))
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
    for param, given in (("allow_items", allow), ("deny_items", deny)):
        if given is None:
            continue
        q = _ids_like(given, item_ids, param)
        pos = positions(item_ids, q)
        if (pos < 0).any():
            raise LocalFMError(f"{param}: item id {q[np.flatnonzero(pos < 0)[0]]!r} is not in features.json",
                               param=param)
        rows = np.unique(pos) if param == "allow_items" else np.setdiff1d(rows, pos)
    if rows.size == 0:
        raise LocalFMError("allow_items/deny_items: no candidate items left", param="allow_items")
    return rows


def select_users(space: FeatureSpace, users: Sequence[Any] | np.ndarray, unknown_users: str = "error") -> np.ndarray:
    """The users to rank, in the given order, each once (a user named twice would get every row twice).

    ``unknown_users`` (ids without a column in ``space``): ``"error"`` leaves them
    for :func:`repackage` to refuse, naming the first; ``"skip"`` drops them (an
    error if none is left); ``"cold-start"`` keeps them for vectors from side features.
    """
    if unknown_users not in UNKNOWN_USER_POLICIES:
        raise LocalFMError(f"unknown_users: expected one of {', '.join(UNKNOWN_USER_POLICIES)}, got {unknown_users!r}",
                           param="unknown_users")
    ids = _ids_like(users, space.user_ids, "users")
    _, first = np.unique(ids, return_index=True)
    ids = ids[np.sort(first)]
    if unknown_users == "skip":
        ids = ids[space.user_index(ids, allow_unknown=True) >= 0]
        if ids.size == 0:
            raise LocalFMError("users: none of the given users is in features.json", param="users")
    return ids


# ---------------------------------------------------------------- entry points


def recommend_all(
    model: Any,
    features: FeatureSpace | str | Path,
    k: int | None = None,
    *,
    users: Sequence[Any] | np.ndarray | None = None,
    unknown_users: str = "error",
    exclude_seen: bool = False,
    interactions: str | Path | None = None,
    allow_items: Sequence[Any] | np.ndarray | None = None,
    deny_items: Sequence[Any] | np.ndarray | None = None,
    options: RecommendOptions | None = None,
    **option_fields: Any,
) -> Recommendations:
    """Top-``k`` items for users of ``features`` from an FM ``model``: what ``localfm recommend`` does.

    ``model``: :class:`~localfm.io.artifacts.FMWeights` (or anything with w0/w/V) or a
    model.tar.gz / model_algo-1 path or ``s3://`` URI. ``features``: a
    :class:`~localfm.data.features.FeatureSpace` or its features.json. ``users``:
    only these (default all), see :func:`select_users` for ``unknown_users``.
    ``exclude_seen``: never recommend an already-rated item; the pairs come from
    ``interactions`` (see :func:`read_seen`), by default ``train_interactions.parquet``
    next to features.json. ``allow_items`` / ``deny_items``: see :func:`select_items`.
    Ranking options: ``options`` and/or its fields as keywords (``k``, ``index``,
    ``batch_size`` ...; see :class:`RecommendOptions`), keywords winning.

    >>> recs = recommend_all("model.tar.gz", "data/features.json", k=20, exclude_seen=True)  # doctest: +SKIP
    >>> summary = recs.write("recommendations.sqlite")  # doctest: +SKIP
    """
    opts = resolve_options(options, k, option_fields)
    rep, seen, item_rows = prepare_inputs(model, features, users=users, unknown_users=unknown_users,
                                          exclude_seen=exclude_seen, interactions=interactions,
                                          allow_items=allow_items, deny_items=deny_items)
    return rank(rep, opts, seen=seen, item_rows=item_rows)


def prepare_inputs(
    model: Any,
    features: FeatureSpace | str | Path,
    *,
    users: Sequence[Any] | np.ndarray | None = None,
    unknown_users: str = "error",
    exclude_seen: bool = False,
    interactions: str | Path | None = None,
    allow_items: Sequence[Any] | np.ndarray | None = None,
    deny_items: Sequence[Any] | np.ndarray | None = None,
) -> tuple[Repackaged, sp.csr_matrix | None, np.ndarray | None]:
    """(vectors, already-rated matrix or None, candidate item rows or None) for :func:`recommend_all`'s
    arguments: shared with the cluster path (:mod:`localfm.scale`), which ranks the same inputs elsewhere."""
    space = features if isinstance(features, FeatureSpace) else FeatureSpace.load(features)
    chosen = None if users is None else select_users(space, users, unknown_users)
    weights = load_fm(str(model)) if isinstance(model, (str, Path)) else model
    rep = repackage(weights, space, user_ids=chosen, cold_start=unknown_users == "cold-start")
    seen = None
    if exclude_seen:
        if interactions is None:
            if not isinstance(features, (str, Path)):
                raise LocalFMError("interactions: exclude_seen needs the interactions file when features is not a path",
                                   param="interactions")
            interactions = Path(features).parent / DEFAULT_INTERACTIONS
        seen = seen_matrix(rep.user_ids, rep.item_ids, *read_seen(interactions))
    item_rows = None
    if allow_items is not None or deny_items is not None:
        item_rows = select_items(rep.item_ids, allow_items, deny_items)
    return rep, seen, item_rows


def resolve_options(options: RecommendOptions | None, k: int | None, fields: dict[str, Any]) -> RecommendOptions:
    base = options if options is not None else RecommendOptions()
    if k is not None:
        fields = {**fields, "k": k}
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(RecommendOptions)})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)} (see RecommendOptions)")
    return dataclasses.replace(base, **fields).validated()


def rank(
    rep: Repackaged,
    options: RecommendOptions | None = None,
    *,
    seen: sp.csr_matrix | None = None,
    item_rows: np.ndarray | None = None,
    **option_fields: Any,
) -> Recommendations:
    """Top-``k`` results for every user of ``rep``, one :class:`ResultBatch` per user batch.

    ``seen``: (users, all items) CSR of items to exclude per user. ``item_rows``:
    candidate item rows (see :func:`select_items`). ``options`` / keywords: see
    :class:`RecommendOptions`. Validation happens here; the ranking (and for an
    approximate index: building it, tuning nprobe, measuring recall into
    ``stats.recall``) happens as the result is iterated.
    """
    opts = resolve_options(options, None, option_fields)
    if opts.sigmoid and rep.predictor_type not in ("binary_classifier", None):
        raise LocalFMError(f"sigmoid: applies to binary_classifier models, this one is {rep.predictor_type}",
                           param="sigmoid")
    item_rows = np.arange(len(rep.item_ids), dtype=np.int64) if item_rows is None else np.asarray(item_rows)
    U = rep.user_vectors
    I = rep.item_vectors[item_rows]
    for name, X in (("user vectors", U), ("item vectors", I)):
        if not np.all(np.isfinite(X)):
            raise LocalFMError(f"{name}: contain NaN or infinite values (check the model and features.json)")
    sub_seen = None
    if seen is not None:
        if seen.shape != (U.shape[0], len(rep.item_ids)):
            raise LocalFMError(f"seen: shape {seen.shape}, expected {(U.shape[0], len(rep.item_ids))}", param="seen")
        sub_seen = sp.csr_matrix(seen)[:, item_rows].tocsr()
    notes = []
    if opts.k > I.shape[0]:
        text = f"k: {opts.k} is more than the {I.shape[0]} candidate items; each user gets at most {I.shape[0]}"
        if opts.strict:
            raise LocalFMError(f"{text} (strict)", param="k")
        notes.append(text)
        warnings.warn(LocalFMWarning(text, param="k"), stacklevel=2)
    index = opts.index
    if opts.index_metric != "INNER_PRODUCT" and index == EXACT:
        index = "faiss.Flat"
    stats = RecommendStats(users=int(U.shape[0]), items=int(I.shape[0]), k=opts.k, index=index,
                           index_metric=opts.index_metric, exclude_seen=seen is not None, sigmoid=opts.sigmoid,
                           device=opts.device)
    opts = dataclasses.replace(opts, index=index, threads=opts.threads or default_threads())
    return Recommendations(_stream(rep, U, I, sub_seen, item_rows, opts, stats), stats, rep, notes)


def _stream(rep: Repackaged, U: np.ndarray, I: np.ndarray, seen: sp.csr_matrix | None, item_rows: np.ndarray,
            opts: RecommendOptions, stats: RecommendStats) -> Iterator[ResultBatch]:
    """The ranking proper: runs as the :class:`Recommendations` is iterated."""
    k = opts.k
    if opts.index == EXACT:
        if opts.device != "cpu" or not torch_free(opts.precision):
            import torch  # noqa: F401 - imported before the clock starts: seconds measure ranking, not imports
        t0 = time.perf_counter()
        source = exact_batches(U, I, k, seen, opts.batch_size, opts.threads, opts.precision, stats, opts.device)
    else:
        configure_threads()
        t0 = time.perf_counter()
        idx = approx_index(U, I, seen, opts, stats)
        source = index_batches(idx, U, k, seen, opts.batch_size, I.shape[0])
    for first, ids in source:
        yield to_result_batch(rep, first, ids, item_rows, opts.sigmoid)
    stats.seconds = time.perf_counter() - t0


def approx_index(U: np.ndarray, I: np.ndarray, seen: sp.csr_matrix | None, opts: RecommendOptions,
                 stats: RecommendStats) -> Any:
    """Build ``opts.index`` over the candidate items ``I``, tune nprobe when asked, measure recall.

    Fills ``stats.nprobe`` / ``stats.recall``. One function for the single process and the
    cluster path (:mod:`localfm.scale`, which builds once on the driver and broadcasts the index).
    """
    k = opts.k
    ivf = opts.index in IVF_INDEX_TYPES
    auto = ivf and opts.nprobe == "auto"
    build = dict(opts.index_options)
    if ivf:
        build["nprobe"] = START_NPROBE if auto else opts.nprobe
    idx = build_index(I, index_type=opts.index, index_metric=opts.index_metric, **build)
    ref = _Reference(U, I, k, seen, opts.threads, opts.index_metric)
    tuned_rows = None
    if auto and U.shape[0]:
        stats.nprobe, tuned_rows = _tune_nprobe(idx, ref, target=float(opts.target_recall),
                                                tune_users=int(opts.tune_users))
    elif ivf:
        stats.nprobe = {"mode": "auto" if auto else "fixed", "nprobe": int(idx.nprobe),
                        "nlist": int(idx.extra.get("nlist", 0))}
    exact_equivalent = opts.index == "faiss.Flat" and opts.index_metric == "INNER_PRODUCT"
    if not exact_equivalent and opts.recall_users > 0 and U.shape[0]:
        stats.recall = measure_recall(idx, U, I, k, seen, opts.recall_users, opts.threads, ref=ref,
                                      tuned_rows=tuned_rows)
    return idx


# ---------------------------------------------------------------- ranking


def to_result_batch(
    rep: Repackaged, first: int, ids: np.ndarray, item_rows: np.ndarray, sigmoid: bool
) -> ResultBatch:
    """Result rows for users ``first..first+len(ids)``; ``ids`` index ``item_rows`` (-1 = none)."""
    n, k = ids.shape
    valid = ids >= 0
    urow = np.repeat(np.arange(first, first + n), k).reshape(n, k)[valid]
    irow = item_rows[ids[valid]]
    rank_ = np.broadcast_to(np.arange(1, k + 1), (n, k))[valid]
    score = rep.scores(urow, irow)
    if sigmoid:
        score = 1.0 / (1.0 + np.exp(-score))
    return ResultBatch(user_id=rep.user_ids[urow], rank=rank_.astype(np.int32), item_id=rep.item_ids[irow], score=score)


def exact_batches(
    U: np.ndarray, I: np.ndarray | PreparedItems, k: int, seen: sp.csr_matrix | None, batch_size: int, threads: int,
    precision: str | None, stats: RecommendStats | None = None, device: str = "cpu",
) -> Iterator[tuple[int, np.ndarray]]:
    """(first user row, ids) per batch from the exact engine: the same shape :func:`index_batches` yields,
    so ranking, recall references and tuning share one consumer. ``stats`` (when given) counts the
    scores the engine's pruning skipped. With ``I`` from ``prepare_items``, ``precision`` is None
    (it was fixed there)."""
    for first, part in iter_top_x(
        U, I, k, exclude=seen, batch_size=batch_size, threads=threads, precision=precision, progress_desc="recommend",
        device=device,
    ):
        if stats is not None:
            stats.scores_skipped += part.skipped
            stats.scores_total += part.total
        yield first, part.ids


def index_batches(
    index: Any, U: np.ndarray, k: int, seen: sp.csr_matrix | None, batch_size: int, n_items: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Search an approximate index per user batch, over-fetching to survive exclusions."""
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


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A sorted, seeded sample of ``size`` of ``range(n)`` (all of them when size >= n)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


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
                got = np.concatenate([ids for _, ids in exact_batches(self.U[todo], self.I, self.k, ss, 1024,
                                                                    self.threads, "auto")])
            else:
                if self._flat is None:
                    self._flat = build_index(self.I, index_type="faiss.Flat", index_metric=self.metric)
                got = np.concatenate([ids for _, ids in index_batches(self._flat, self.U[todo], self.k, ss, 1024,
                                                                    self.I.shape[0])])
            cache.update(zip(todo.tolist(), got))
        return np.stack([cache[r] for r in rows.tolist()]) if rows.size else np.empty((0, self.k), np.int64)

    def describe(self) -> str:
        """What the tuning target and the held-out recall are measured against."""
        return "exact FM ranking" if self.metric == "INNER_PRODUCT" else f"exact {self.metric} search"

    def approx(self, idx: Any, rows: np.ndarray) -> np.ndarray:
        ss = self.seen[rows] if self.seen is not None else None
        return np.concatenate([ids for _, ids in index_batches(idx, self.U[rows], self.k, ss, 1024, self.I.shape[0])])


def _tune_nprobe(idx: Any, ref: _Reference, *, target: float, tune_users: int,
                 seed: int = 1) -> tuple[dict[str, Any], np.ndarray]:
    """``nprobe="auto"``: localfm's nprobe policy (:func:`localfm.knn.index.choose_nprobe`) on recall
    as ``recommend`` stores it — user queries, exclusions applied, against the exact reference.

    Tuning users are a seeded sample of ``min(tune_users, n_users // 2)`` users so
    that the other half stays available for an honest held-out check
    (:func:`measure_recall`). Returns the summary dict and the tuning rows.
    """
    rows = _sample_rows(ref.U.shape[0], min(tune_users, max(1, ref.U.shape[0] // 2)), seed)
    exact = ref.ids(rows)
    chosen = choose_nprobe(idx, lambda: recall_per_row(ref.approx(idx, rows), exact), target=target,
                           start=START_NPROBE)
    return {
        "mode": "auto",
        "nprobe": chosen["nprobe"],
        "nlist": chosen["nlist"],
        "target": chosen["target"],
        "met": chosen["met"],
        "tuning_users": int(rows.size),
        "tuning_recall": chosen["recall"],
        "reference": ref.describe(),
        "tried": chosen["tried"],
    }, rows


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
        "recall": float(recall_per_row(approx, ref.ids(pick, "fm")).mean()),
    }
    if tuned_rows is not None:
        held = ~np.isin(pick, tuned_rows)
        out["held_out_users"] = int(held.sum())
        out["held_out_reference"] = ref.describe()
        out["held_out_recall"] = (
            float(recall_per_row(approx[held], ref.ids(pick[held], "metric")).mean()) if held.any() else None
        )
    return out
