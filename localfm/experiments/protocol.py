"""The offline ranking protocol ("ua protocol"), shared by ``localfm evaluate``, ``tune`` and benchmarks/.

One definition so every number is comparable (docs/experiments.md):

- **test users**: users with at least one rating >= ``relevant_min_rating`` in the test
  interactions (and known to features.json);
- **relevant items** of a test user: those test items;
- **candidates**: every item of features.json the user did *not* rate in the training
  interactions (rated-in-training items are excluded before ranking, like
  ``localfm recommend --exclude``);
- every system returns its top-k among the candidates and is scored with
  :func:`localfm.experiments.metrics.ranking_metrics`.

Rankings of an FM come from the repo's exact top-x engine (:func:`localfm.recommend.top_x`
on :func:`localfm.recommend.repackage` vectors): the same ranking ``localfm recommend``
stores, so an evaluation judges what would be served. "Most popular unseen" ranks
items by their number of training ratings (all ratings, whatever the value), ties by
features.json item order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..data.features import FeatureSpace
from ..data.tabular import read_interaction_file
from ..errors import LocalFMError
from ..io.artifacts import load_fm
from ..recommend import repackage, top_x
from ..recommend.topx import default_threads
from .metrics import Metric, ranking_metrics

DEFAULT_KS = (10, 100)


@dataclass
class Protocol:
    """Test users, their relevant items and training exclusions, all as rows of features.json."""

    space: Any  # localfm.data.features.FeatureSpace
    user_ids: np.ndarray  # test users' original ids, in features.json order
    user_rows: np.ndarray  # their rows in space.user_ids
    relevant: list[np.ndarray]  # per test user: item rows of the relevant test items
    seen: sp.csr_matrix  # (test users, items) 1 = rated in training (excluded from candidates)
    train_counts: np.ndarray  # (items,) number of training ratings per item row
    train_users: np.ndarray  # every training row's user row (-1 = unknown to features.json)
    train_items: np.ndarray  # every training row's item row (-1 = unknown)
    relevant_min_rating: float = 4.0
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(len(self.space.item_ids))

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))


def _read_interactions(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = read_interaction_file(path, what=what)
    return rows.user, rows.item, rows.rating


def _rows(space: Any, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of features.json for interaction ids (-1 = unknown), with FeatureSpace's id coercion."""
    return space.user_index(users, allow_unknown=True), space.item_index(items, allow_unknown=True)


def load_protocol(
    features_json: str | Path | Any,
    train_interactions: str | Path,
    test_interactions: str | Path,
    relevant_min_rating: float = 4.0,
) -> Protocol:
    """Build the protocol from features.json and the train/test interactions files.

    ``features_json`` may also be a loaded ``FeatureSpace``. Interactions: the
    ``*_interactions.parquet`` files ``localfm prepare`` writes, a MovieLens
    ``u.data``/``*.base``/``*.test`` file, or CSV/Parquet with user_id, item_id, rating.
    """
    space = features_json if isinstance(features_json, FeatureSpace) else FeatureSpace.load(features_json)
    if not np.isfinite(float(relevant_min_rating)):
        raise LocalFMError(f"relevant_min_rating: expected a number, got {relevant_min_rating!r}",
                           param="relevant_min_rating")
    tu, ti, _ = _read_interactions(train_interactions, "train_interactions")
    su, si, sr = _read_interactions(test_interactions, "test_interactions")
    tur, tir = _rows(space, tu, ti)
    sur, sir = _rows(space, su, si)
    liked = sr >= float(relevant_min_rating)
    notes = {
        "test_rows": int(len(su)),
        "relevant_rows": int(liked.sum()),
        "relevant_rows_unknown_user": int((liked & (sur < 0)).sum()),
        "relevant_rows_unknown_item": int((liked & (sur >= 0) & (sir < 0)).sum()),
        "train_rows_unknown": int(((tur < 0) | (tir < 0)).sum()),
    }
    keep = liked & (sur >= 0) & (sir >= 0)
    pairs = np.unique(np.stack([sur[keep], sir[keep]], axis=1), axis=0) if keep.any() else np.empty((0, 2), np.int64)
    user_rows = np.unique(pairs[:, 0]).astype(np.int64)
    if user_rows.size == 0:
        raise LocalFMError(
            f"test_interactions {test_interactions}: no rating >= {relevant_min_rating} by a user and item "
            "known to features.json; nothing to evaluate"
        )
    bounds = np.searchsorted(pairs[:, 0], user_rows, side="left")
    ends = np.searchsorted(pairs[:, 0], user_rows, side="right")
    relevant = [pairs[a:b, 1].astype(np.int64) for a, b in zip(bounds, ends)]
    n_items = len(space.item_ids)
    known = (tur >= 0) & (tir >= 0)
    counts = np.bincount(tir[tir >= 0], minlength=n_items).astype(np.int64)
    pos = np.full(len(space.user_ids), -1, dtype=np.int64)
    pos[user_rows] = np.arange(user_rows.size)
    su_rows = pos[tur[known]]
    mine = su_rows >= 0
    seen = sp.csr_matrix(
        (np.ones(int(mine.sum()), dtype=np.float32), (su_rows[mine], tir[known][mine])),
        shape=(user_rows.size, n_items),
    )
    seen.sum_duplicates()
    seen.data[:] = 1.0
    return Protocol(
        space=space,
        user_ids=np.asarray(space.user_ids)[user_rows],
        user_rows=user_rows,
        relevant=relevant,
        seen=seen,
        train_counts=counts,
        train_users=tur,
        train_items=tir,
        relevant_min_rating=float(relevant_min_rating),
        notes=notes,
    )


def _top_x(U: np.ndarray, I: np.ndarray, protocol: Protocol, k: int) -> np.ndarray:
    res = top_x(np.ascontiguousarray(U, dtype=np.float32), np.ascontiguousarray(I, dtype=np.float32), k,
                exclude=protocol.seen, threads=default_threads(), progress_desc="rank")
    return _pad(res.ids, k)


def _pad(ids: np.ndarray, k: int) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape[1] < k:
        ids = np.hstack([ids, np.full((ids.shape[0], k - ids.shape[1]), -1, dtype=np.int64)])
    return ids[:, :k]


def rank_model(weights_or_path: Any, protocol: Protocol, k: int) -> np.ndarray:
    """(test users, k) item rows: the FM's exact top-k among each user's unseen items.

    ``weights_or_path``: ``FMWeights``, a fitted ``FactorizationMachine`` or an artifact
    path/URI (model.tar.gz ...). Uses :func:`localfm.recommend.repackage` + the exact
    engine with the training items excluded — what ``localfm recommend --exclude`` serves.
    """
    weights = weights_or_path
    if isinstance(weights, (str, Path)):
        weights = load_fm(str(weights))
    elif hasattr(weights, "weights_"):
        weights = weights.weights_
    rep = repackage(weights, protocol.space, user_ids=protocol.user_ids)
    return _top_x(rep.user_vectors, rep.item_vectors, protocol, k)


def rank_popularity(protocol: Protocol, k: int) -> np.ndarray:
    """(test users, k) item rows: "most popular unseen", by count of all training ratings.

    The exact engine with a 1-d score (user vector 1, item vector = count) does the
    per-user exclusion; ties keep features.json item order.
    """
    counts = protocol.train_counts.astype(np.float32)[:, None]
    # Ties: a tiny decreasing offset keeps features.json order among equal counts
    # (counts are integers, so the offset never reorders unequal counts).
    n = counts.shape[0]
    tie = (1.0 - np.arange(n, dtype=np.float64) / max(n, 1)) * 0.5
    scores = (protocol.train_counts.astype(np.float64) + tie).astype(np.float32)[:, None]
    if np.unique(scores).size < np.unique(counts).size:  # float32 cannot separate them: plain counts
        scores = counts
    U = np.ones((protocol.n_users, 1), dtype=np.float32)
    return _top_x(U, scores, protocol, k)


def recommended_from_ids(protocol: Protocol, user_ids: Any, item_ids: Any, ranks: Any, k: int,
                         *, exclude_seen: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """(test users, k) item rows from an external result table (user id, item id, rank) rows.

    Test users missing from the table get an empty list (scored 0); items unknown to
    features.json occupy their rank but never hit. With ``exclude_seen`` items the
    user rated in training are dropped first (then the list is cut to k), so a
    ranking that did not exclude them (cloud k-NN) is judged on the same candidates.
    """
    space_rows, irow = _rows(protocol.space, np.asarray(user_ids), np.asarray(item_ids))
    rk = np.asarray(ranks, dtype=np.float64)
    if not (len(space_rows) == len(irow) == len(rk)):
        raise LocalFMError("recommendations: user_id, item_id and rank columns differ in length")
    to_test_row = np.full(len(protocol.space.user_ids) + 1, -1, dtype=np.int64)  # last slot: unknown users
    to_test_row[protocol.user_rows] = np.arange(protocol.n_users)
    urow = to_test_row[space_rows]
    info = {"rows": int(len(space_rows)), "rows_other_users": int((urow < 0).sum()),
            "rows_unknown_item": int(((urow >= 0) & (irow < 0)).sum()), "rows_seen_dropped": 0}
    keep = urow >= 0
    if exclude_seen:
        seen_hit = np.zeros(len(urow), dtype=bool)
        ok = keep & (irow >= 0)
        seen_hit[ok] = np.asarray(protocol.seen[urow[ok], irow[ok]]).reshape(-1) != 0
        info["rows_seen_dropped"] = int(seen_hit.sum())
        keep &= ~seen_hit
    urow, irow, rk = urow[keep], irow[keep], rk[keep]
    order = np.lexsort((rk, urow))
    urow, irow = urow[order], irow[order]
    out = np.full((protocol.n_users, k), -1, dtype=np.int64)
    if urow.size:
        start = np.searchsorted(urow, urow, side="left")
        pos = np.arange(urow.size) - start
        fit = pos < k
        # Unknown items keep their slot (never a hit) but must not read as "no item":
        # -2 marks them, and metrics treat any negative as a non-hit.
        out[urow[fit], pos[fit]] = np.where(irow[fit] >= 0, irow[fit], -2)
    return out, info


def evaluate(
    protocol: Protocol,
    recommended: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score one system's (test users, max_k) ranking: a JSON-ready dict.

    ``{"users": n, "metrics": {"10": {"ndcg": {"value", "low", "high"}, ...}, ...}}``.
    """
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.shape[0] != protocol.n_users:
        raise LocalFMError(f"recommended: {rec.shape[0]} rows, expected one per test user ({protocol.n_users})")
    res = ranking_metrics(rec, protocol.relevant, ks, protocol.n_items, bootstrap=bootstrap, seed=seed)
    return {
        "users": protocol.n_users,
        "metrics": {str(k): {name: m.as_dict() for name, m in row.items()} for k, row in res.items()},
    }


def metric_of(result: dict[str, Any], name: str, k: int) -> Metric:
    """Read one :class:`Metric` back from :func:`evaluate`'s dict."""
    return Metric(**result["metrics"][str(k)][name])
