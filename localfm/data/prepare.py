"""``prepare``: ratings → split → one-hot (+ side) features → RecordIO-protobuf + features.json.

This reproduces the data preparation of the SageMaker FM notebooks so local training
sees exactly the bytes the cloud saw: rows in split-file order (SageMaker does not
shuffle), labels as float32, sparse float32 records written with the SDK's
conventions, and the ID maps that turn FM weights back into user/item vectors.

Implicit feedback (``label="implicit[:T]"``): every rated pair (rating >= T) is a
positive (label 1) and ``negatives`` never-rated items per positive are label 0,
drawn per user by :mod:`.negatives` and shuffled with ``negative_seed``; the test file
gets its positives plus as many negatives. The spec is saved in features.json
(``extra.implicit``) so training can redraw negatives every epoch.

Everything is validated and computed in memory first, then the five outputs land
together through :func:`localfm.io.atomic.atomic_outputs`: a failure at any point leaves
no output behind (and earlier outputs in ``DIR`` untouched).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..io.atomic import atomic_outputs
from ..io.recordio import write_sparse
from ..progress import progress
from .features import FeatureSpace, build_feature_space
from .ids import distinct
from .interactions import Interactions, make_labels, parse_label
from .movielens import ItemTable, MovieLens, UserTable, load_movielens
from .negatives import (
    STREAM_TEST,
    STREAM_TRAIN,
    ImplicitSpec,
    check_pool,
    implicit_matrix,
    is_implicit,
    item_counts_of,
    parse_implicit_label,
    parse_negative_sampling,
    stream,
)
from .splits import make_split, parse_split
from .tabular import read_interactions

OUTPUT_FILES = (
    "train.protobuf", "test.protobuf", "features.json", "train_interactions.parquet", "test_interactions.parquet",
)


@dataclass(frozen=True)
class Options:
    """The choices of one ``prepare`` run (the CLI flags), validated by :meth:`check`."""

    split: str
    label: str = "rating"
    features: str = "ids"
    order: str = "file"
    columns: str = "all"
    drop_unseen: bool = False
    multi_hot: str = "ones"
    # Implicit feedback (label "implicit" or "implicit:T"): negatives per positive, how
    # they are drawn, and the seed of the draws and of the row shuffle.
    negatives: int | None = None
    negative_sampling: str = "uniform"
    negative_seed: int = 0
    negative_pool: str = "train-unrated"

    def check(self, *, grouplens_ok: bool) -> None:
        parse_split(self.split, grouplens_ok=grouplens_ok)
        self.implicit()
        shuffle_seed(self.order)
        if self.features not in ("ids", "ids+side"):
            raise LocalFMError(f"features {self.features!r}: expected ids or ids+side", param="features")
        if self.columns not in ("all", "train"):
            raise LocalFMError(f"columns {self.columns!r}: expected all or train", param="columns")
        if self.multi_hot not in ("ones", "normalized"):
            raise LocalFMError(f"multi_hot {self.multi_hot!r}: expected ones or normalized", param="multi_hot")

    def implicit(self) -> ImplicitSpec | None:
        """The implicit-feedback spec for an ``implicit[:T]`` label, None for rating/binary labels."""
        if not is_implicit(self.label):
            try:
                parse_label(self.label)
            except LocalFMError:
                raise LocalFMError(
                    f"label {self.label!r}: expected rating, binary:T or implicit[:T] with a number T", param="label"
                ) from None
            if self.negatives is not None:
                raise LocalFMError(
                    f"negatives: only with an implicit label (implicit or implicit:T), not {self.label!r}",
                    param="negatives",
                )
            parse_negative_sampling(self.negative_sampling)
            check_pool(self.negative_pool)
            return None
        threshold = parse_implicit_label(self.label)
        if self.negatives is None or isinstance(self.negatives, bool) or int(self.negatives) < 1:
            raise LocalFMError(
                f"negatives: label {self.label!r} needs a number of negatives per positive >= 1, "
                f"got {self.negatives!r}",
                param="negatives",
            )
        if isinstance(self.negative_seed, bool) or int(self.negative_seed) < 0:
            raise LocalFMError(f"negative_seed: expected an integer >= 0, got {self.negative_seed!r}",
                               param="negative_seed")
        return ImplicitSpec(threshold, int(self.negatives), parse_negative_sampling(self.negative_sampling),
                            int(self.negative_seed), check_pool(self.negative_pool))


@dataclass
class Prepared:
    """Everything ``prepare`` computed, before (or after) it is written."""

    space: FeatureSpace
    train: Interactions
    test: Interactions
    X_train: Any
    y_train: np.ndarray
    X_test: Any
    y_test: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    # Every test-split rating, before drop_unseen: test_interactions.parquet (the
    # evaluation's relevant items and, with train, the rated set negatives avoid).
    test_interactions: Interactions | None = None

    def summary(self) -> str:
        """The stdout report: counts a user checks against expectations (e.g. 2,623 / 90,570 / 9,428)."""
        c = self.counts
        lines = [
            f"train: {c['train_rows']} rows, {c['train_users']} users, {c['train_items']} items",
            f"test: {c['test_rows']} rows, {c['test_users']} users, {c['test_items']} items",
            f"unseen test rows: {c['unseen_item_rows']} with an item not in train, "
            f"{c['unseen_user_rows']} with a user not in train; "
            + (f"dropped {c['dropped_unseen_rows']}" if c["dropped_unseen_rows"] else "kept"),
            f"feature_dim: {c['feature_dim']} ({c['user_columns']} user + {c['item_columns']} item"
            + (f" + {c['side_columns']} side" if c["side_columns"] else "") + " columns)",
        ]
        if "train_negatives" in c:
            lines.append(
                f"implicit: train {c['train_positives']} positives + {c['train_negatives']} negatives, "
                f"test {c['test_positives']} positives + {c['test_negatives']} negatives"
            )
        return "\n".join(lines)


def shuffle_seed(order: str) -> int | None:
    """``file`` → None (keep split-file order, as the cloud job did); ``shuffle:SEED`` → SEED."""
    if order == "file":
        return None
    kind, sep, seed = order.partition(":")
    if kind == "shuffle" and sep:
        try:
            value = int(seed)
        except ValueError:
            value = -1
        if value >= 0:  # numpy's SeedSequence only takes non-negative seeds
            return value
    raise LocalFMError(f"order {order!r}: expected file or shuffle:SEED (an integer seed >= 0)", param="order")


def prepare_data(
    ratings: Interactions,
    options: Options,
    *,
    grouplens_ok: bool,
    users: UserTable | None = None,
    items: ItemTable | None = None,
    all_user_ids: np.ndarray | None = None,
    all_item_ids: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> Prepared:
    """Split, order, encode and label ``ratings`` in memory (nothing is written)."""
    options.check(grouplens_ok=grouplens_ok)
    if len(ratings) == 0:
        raise LocalFMError("no ratings to prepare")
    if options.features == "ids+side" and users is None and items is None:
        raise LocalFMError("features ids+side: this dataset has no side information (no user or item file)", param="features")
    split = make_split(ratings, options.split, grouplens_ok=grouplens_ok)
    if len(split.train) == 0:
        raise LocalFMError(f"split {options.split}: the training split is empty", param="split")
    train_rows = split.train
    seed = shuffle_seed(options.order)
    if seed is not None:
        train_rows = train_rows[np.random.default_rng(seed).permutation(len(train_rows))]
    train = ratings.take(train_rows)
    test = ratings.take(split.test)
    test_all = test

    seen_users, seen_items = distinct(train.user), distinct(train.item)
    unseen_item = ~np.isin(test.item, seen_items)
    unseen_user = ~np.isin(test.user, seen_users)
    dropped = 0
    if options.drop_unseen:
        keep = ~(unseen_item | unseen_user)
        dropped = int((~keep).sum())
        test = test.take(np.flatnonzero(keep))

    if options.columns == "all":
        user_ids = distinct(ratings.user) if all_user_ids is None else all_user_ids
        item_ids = distinct(ratings.item) if all_item_ids is None else all_item_ids
    else:
        user_ids, item_ids = seen_users, seen_items
    side = options.features == "ids+side"
    space = build_feature_space(
        user_ids,
        item_ids,
        users=users if side else None,
        items=items if side else None,
        multi_hot=options.multi_hot,
        label=options.label,
        split=options.split,
        columns=options.columns,
        source=source,
    )
    X_train = space.encode(train.user, train.item)
    X_test = space.encode(test.user, test.item, allow_unknown_ids=True)
    counts = {
        "train_rows": len(train),
        "train_users": train.n_users,
        "train_items": train.n_items,
        "test_rows": len(test),
        "test_users": test.n_users,
        "test_items": test.n_items,
        "unseen_item_rows": int(unseen_item.sum()),
        "unseen_user_rows": int(unseen_user.sum()),
        "dropped_unseen_rows": dropped,
        "feature_dim": space.feature_dim,
        "user_columns": len(space.user_ids),
        "item_columns": len(space.item_ids),
        "side_columns": space.feature_dim - len(space.user_ids) - len(space.item_ids),
    }
    space.extra = {
        "order": options.order,
        "drop_unseen": options.drop_unseen,
        "multi_hot": options.multi_hot if side and items is not None else None,
        "counts": counts,
    }
    spec = options.implicit()
    if spec is None:
        y_train, y_test = make_labels(train.rating, options.label), make_labels(test.rating, options.label)
    else:
        # Pool "unrated": every rating of the input (train, test, dropped test rows) is
        # "rated", never a negative. "train-unrated": only training ratings, so the
        # training file does not depend on the test split. Test negatives always avoid
        # every rating (a test positive must never also be a test negative).
        pop = item_counts_of(space, train.item)
        avoid = ratings if spec.pool == "unrated" else train
        X_train, y_train, tr = implicit_matrix(space, train, avoid, spec, stream(spec.seed, STREAM_TRAIN),
                                               per_positive=spec.negatives, item_counts=pop)
        X_test, y_test, te = implicit_matrix(space, test, ratings, spec, stream(spec.seed, STREAM_TEST),
                                             per_positive=1, item_counts=pop)
        counts.update({"train_positives": tr["positives"], "train_negatives": tr["negatives"],
                       "test_positives": te["positives"], "test_negatives": te["negatives"]})
        space.extra["implicit"] = spec.to_dict()
    return Prepared(
        space=space,
        train=train,
        test=test,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        counts=counts,
        test_interactions=test_all,
    )


def write_prepared(prepared: Prepared, out_dir: str | Path) -> list[Path]:
    """Write the four outputs into ``out_dir`` all-or-nothing; returns their paths.

    If ``out_dir`` did not exist and writing fails, the directory is removed again so a
    failed run leaves nothing behind.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LocalFMError(f"out {out}: exists and is not a directory", param="out")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, read-only file system
        raise LocalFMError(f"out {out}: cannot create the directory ({exc.strerror or exc})", param="out") from None
    targets = [out / name for name in OUTPUT_FILES]
    test_rows = prepared.test_interactions if prepared.test_interactions is not None else prepared.test
    try:
        with atomic_outputs() as outputs:
            paths = [outputs.path(t) for t in targets]
            steps = progress(total=len(targets), desc="prepare: write", unit="file")
            try:
                # The Parquet files are written on a second thread while this one writes the
                # RecordIO files and features.json: Arrow's writer and the compiled RecordIO
                # encoder both run without the GIL, so on two cores the two halves overlap
                # (about a third of the writing time at ML-25M size). Leaving the pool's
                # block waits for the thread, so a failure on either side discards every
                # output only after both have stopped writing.
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-parquet") as pool:
                    tables = pool.submit(_write_interaction_files, paths[3:], [prepared.train, test_rows])
                    write_sparse(paths[0], prepared.X_train, prepared.y_train)
                    steps.update()
                    write_sparse(paths[1], prepared.X_test, prepared.y_test)
                    steps.update()
                    prepared.space.save(paths[2])
                    steps.update()
                    tables.result()
                    steps.update(2)
            finally:  # a failed write must not leave a half-drawn bar above the error line
                steps.close()
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return targets


def _write_interaction_files(paths: list[Path], parts: list[Interactions]) -> None:
    for path, rows in zip(paths, parts):
        _write_interactions(path, rows)


def _write_interactions(path: Path, rows: Interactions) -> None:
    """``*_interactions.parquet``: rows in order (train: "exclude already rated"; test: evaluation)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def ids(values: np.ndarray):  # noqa: ANN202 - pyarrow Array
        if values.dtype.kind in "iu":
            return pa.array(values, type=pa.int64())
        return pa.array(values.tolist(), type=pa.string())

    table = pa.table({
        "user_id": ids(rows.user),
        "item_id": ids(rows.item),
        "rating": pa.array(rows.rating, type=pa.float32()),
        "timestamp": pa.array(rows.timestamp, type=pa.int64()) if rows.timestamp is not None
        else pa.nulls(len(rows), type=pa.int64()),
    })
    pq.write_table(table, path)


def prepare_movielens(path: str | Path, options: Options, out_dir: str | Path | None = None) -> Prepared:
    """Read a MovieLens dataset (directory or .zip) and prepare it; write to ``out_dir`` if given."""
    # Validate cheap flags before reading anything (the layout decides grouplens_ok below).
    options.check(grouplens_ok=True)
    data: MovieLens = load_movielens(path)
    prepared = prepare_data(
        data.ratings,
        options,
        grouplens_ok=data.layout == "ml-100k",
        users=data.users,
        items=data.items,
        all_user_ids=data.all_user_ids(),
        all_item_ids=data.all_item_ids(),
        source={"kind": "movielens", "layout": data.layout, "path": str(path)},
    )
    if out_dir is not None:
        write_prepared(prepared, out_dir)
    return prepared


def prepare_interactions(
    path: str | Path,
    options: Options,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    out_dir: str | Path | None = None,
) -> Prepared:
    """Read generic interactions (CSV/Parquet) and prepare them; write to ``out_dir`` if given."""
    options.check(grouplens_ok=False)
    if options.features != "ids":
        raise LocalFMError("features ids+side: generic interactions carry no side features (expected ids)", param="features")
    # No local name for the ratings: they are garbage once split (train/test are copies),
    # and at ML-25M size they are 700 MB that should not stay alive through the writes.
    prepared = prepare_data(
        read_interactions(
            path, user_col=user_col, item_col=item_col, rating_col=rating_col, timestamp_col=timestamp_col, sep=sep
        ),
        options,
        grouplens_ok=False,
        source={
            "kind": "interactions",
            "path": str(path),
            "user_col": user_col,
            "item_col": item_col,
            "rating_col": rating_col,
            "timestamp_col": timestamp_col,
        },
    )
    if out_dir is not None:
        write_prepared(prepared, out_dir)
    return prepared
