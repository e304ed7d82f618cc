"""The seeded per-user holdout behind the local ranking objectives (``validation:ndcg@K`` ...).

A tuner that picked hyperparameters by their score on the test split would report an
optimistic test number; SageMaker's ranking-free objectives are computed on the test
channel, but a ranking objective here is computed on positives carved out of the
*training* data instead:

- training rows are decoded back to (user, item) through features.json (the one-hot id
  columns), so any ``prepare`` output works, with or without side features;
- positives are rows labelled 1 (binary_classifier) or rated >= ``relevant_min_rating``
  (regressor); per user with at least two distinct positive items, a seeded
  ``fraction`` of them (at least one) is held out;
- every training row of a held-out (user, item) pair is dropped from what the trials
  train on, so no trial sees them;
- each trial's model ranks, for the holdout users, every item without a remaining
  positive training row (the same "rank the unseen" protocol as ``localfm evaluate``,
  :mod:`localfm.experiments.protocol`) and is scored against the held-out items.

The holdout is written as two interactions files (``DIR/holdout/``) and read back
through :func:`localfm.experiments.protocol.load_protocol`, so the tuner and
``localfm evaluate`` share one definition, and a user can inspect what was held out.

For per-epoch pruning (Hyperband, early stopping Auto) trials also need a value every
epoch, but the FM's epoch hook only sees metrics, not weights; the held-out pairs
plus seeded sampled negatives (binary) form a validation channel whose log loss (or
RMSE) per epoch stands in for the ranking objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ...data.negatives import rated_matrix, sample_negatives
from ...errors import LocalFMError
from ...io.atomic import atomic_outputs

TRAIN_FILE = "train_interactions.parquet"
HELD_OUT_FILE = "held_out_interactions.parquet"
SPLIT_FILE = "split.npz"
RESAMPLE_DIR = "resample"


@dataclass
class Holdout:
    """What :func:`carve` decided: training rows to keep and the held-out pairs."""

    keep: np.ndarray  # bool (rows,) training rows the trials train on
    train_pairs: np.ndarray  # (n, 2) remaining positive (user row, item row) pairs
    held_pairs: np.ndarray  # (m, 2) held-out positive (user row, item row) pairs
    val_rows: sp.csr_matrix  # validation channel for per-epoch values (held-out pairs + negatives)
    val_labels: np.ndarray


def decode_rows(X: sp.csr_matrix, space) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 - FeatureSpace
    """(user row, item row) of each training row from its one-hot id columns (-1 = none)."""
    X = sp.csr_matrix(X)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    cols = X.indices

    def pick(offset: int, size: int) -> np.ndarray:
        out = np.full(X.shape[0], -1, dtype=np.int64)
        hit = (cols >= offset) & (cols < offset + size)
        out[rows[hit]] = cols[hit] - offset
        return out

    users = pick(space.user_offset, len(space.user_ids))
    items = pick(space.item_offset, len(space.item_ids))
    return users, items


def positives(y: np.ndarray, predictor_type: str, relevant_min_rating: float) -> np.ndarray:
    """Which training rows count as a positive (relevant) interaction."""
    return y > 0.5 if predictor_type == "binary_classifier" else y >= relevant_min_rating


def carve(
    X: sp.csr_matrix,
    y: np.ndarray,
    space,  # noqa: ANN001 - FeatureSpace
    *,
    predictor_type: str,
    fraction: float = 0.1,
    seed: int = 0,
    relevant_min_rating: float = 4.0,
    negatives_per_positive: int = 4,
) -> Holdout:
    """Choose the held-out positives (seeded; see the module docstring)."""
    if not 0 < fraction < 1:
        raise LocalFMError(f"holdout_fraction: expected a number in (0, 1), got {fraction!r}")
    users, items = decode_rows(X, space)
    pos = positives(np.asarray(y), predictor_type, relevant_min_rating) & (users >= 0) & (items >= 0)
    if not pos.any():
        raise LocalFMError("training data: no positive rows with a user and item id column to hold out "
                           "for a ranking objective")
    n_items = len(space.item_ids)
    pairs = np.unique(np.stack([users[pos], items[pos]], axis=1), axis=0)  # sorted by user, then item
    rng = np.random.default_rng([seed, 11])
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    ends = np.r_[starts[1:], len(pairs)]
    held = np.zeros(len(pairs), dtype=bool)
    for a, b in zip(starts, ends):
        n = b - a
        if n < 2:
            continue
        take = max(1, int(round(fraction * n)))
        take = min(take, n - 1)  # the user keeps at least one positive to learn from
        held[a + rng.choice(n, size=take, replace=False)] = True
    if not held.any():
        raise LocalFMError("training data: no user has two or more positive items; nothing to hold out "
                           "for a ranking objective")
    held_pairs, train_pairs = pairs[held], pairs[~held]
    key = users * n_items + items
    held_key = held_pairs[:, 0] * n_items + held_pairs[:, 1]
    keep = ~np.isin(key, held_key)

    # validation channel: the held-out rows themselves, plus sampled unrated items as
    # negatives for a binary classifier (labels of the training file for a regressor)
    if predictor_type == "binary_classifier":
        n_users = len(space.user_ids)
        # positives only: on a small catalogue a user's static negatives may cover every other item
        rated = rated_matrix(users[pos], items[pos], n_users, n_items)
        counts = np.bincount(held_pairs[:, 0], minlength=n_users) * int(negatives_per_positive)
        neg_u, neg_i = sample_negatives(counts, rated, rng)
        vu = np.r_[held_pairs[:, 0], neg_u]
        vi = np.r_[held_pairs[:, 1], neg_i]
        labels = np.r_[np.ones(len(held_pairs)), np.zeros(len(neg_u))].astype(np.float32)
        val = space.encode(np.asarray(space.user_ids)[vu], np.asarray(space.item_ids)[vi])
    else:
        rows = np.flatnonzero(~keep)
        val, labels = X[rows], np.asarray(y, dtype=np.float32)[rows]
    return Holdout(keep=keep, train_pairs=train_pairs, held_pairs=held_pairs, val_rows=sp.csr_matrix(val),
                   val_labels=labels)


def write(holdout: Holdout, space, out_dir: str | Path) -> tuple[Path, Path]:  # noqa: ANN001 - FeatureSpace
    """The two interactions files load_protocol reads, plus the rows mask and validation channel.

    Interactions ratings are written as 1.0 (every pair is a positive), so
    ``relevant_min_rating=1`` makes every held-out pair relevant. ``split.npz`` (plain
    arrays, no pickles) holds what the trials need: which training rows to keep and
    the per-epoch validation rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    paths = out_dir / TRAIN_FILE, out_dir / HELD_OUT_FILE
    with atomic_outputs() as out:
        for pairs, path in zip((holdout.train_pairs, holdout.held_pairs), paths):
            table = pa.table({
                "user_id": pa.array(np.asarray(space.user_ids)[pairs[:, 0]]),
                "item_id": pa.array(np.asarray(space.item_ids)[pairs[:, 1]]),
                "rating": pa.array(np.ones(len(pairs), dtype=np.float32)),
            })
            pq.write_table(table, out.path(path))
        v = holdout.val_rows
        with open(out.path(out_dir / SPLIT_FILE), "wb") as fh:
            np.savez(fh, keep=holdout.keep, val_indptr=v.indptr, val_indices=v.indices, val_data=v.data,
                     val_shape=np.asarray(v.shape, dtype=np.int64), val_labels=holdout.val_labels)
    return paths


def load_split(out_dir: str | Path) -> dict[str, object]:
    """What :func:`write` saved in split.npz: ``keep``, ``val_rows`` (csr), ``val_labels``."""
    with np.load(Path(out_dir) / SPLIT_FILE, allow_pickle=False) as z:
        shape = tuple(int(n) for n in z["val_shape"])
        val = sp.csr_matrix((z["val_data"], z["val_indices"], z["val_indptr"]), shape=shape)
        return {"keep": z["keep"], "val_rows": val, "val_labels": z["val_labels"]}


def write_resample_inputs(holdout: Holdout, space, features_json: str | Path, out_dir: str | Path) -> Path:  # noqa: ANN001
    """A copy of the prepared folder for ``_local_resample_negatives`` that respects the holdout.

    Fresh negatives are drawn per epoch around ``train_interactions.parquet``
    (positives). The held-out pairs leave that file, so no trial trains on them as
    positives, and nothing else marks them: like any item the user did not rate in
    the reduced training data they *can* be drawn as negatives. Keeping them out of
    the negatives instead (as the default pool ``unrated`` does for test items) was
    measured to be exploited: "never shown as a negative" singles the held-out items
    out after enough resampled epochs, and the tuner rewarded high-capacity models that
    learn exactly that (docs/tuning.md). Returns the features.json to hand to
    :func:`localfm.data.negatives.epoch_sampler`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = Path(features_json).parent
    dest = Path(out_dir) / RESAMPLE_DIR
    names = ("train_interactions.parquet", "test_interactions.parquet")
    for name in names:
        if not (src / name).is_file():
            raise LocalFMError(f"{src / name}: not found; _local_resample_negatives needs the folder "
                               "written by prepare with an implicit label")
    train = pq.read_table(src / names[0])
    test = pq.read_table(src / names[1])
    n_items = len(space.item_ids)
    u = space.user_index(train.column("user_id").to_numpy(zero_copy_only=False), allow_unknown=True)
    i = space.item_index(train.column("item_id").to_numpy(zero_copy_only=False), allow_unknown=True)
    held = np.isin(u * n_items + i, holdout.held_pairs[:, 0] * n_items + holdout.held_pairs[:, 1]) & (u >= 0) & (i >= 0)
    with atomic_outputs() as out:
        pq.write_table(train.filter(pa.array(~held)), out.path(dest / names[0]))
        pq.write_table(test, out.path(dest / names[1]))
        with open(out.path(dest / "features.json"), "wb") as fh:
            fh.write(Path(features_json).read_bytes())
    return dest / "features.json"
