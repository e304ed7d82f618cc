"""``localfm prepare``: MovieLens or generic interactions → RecordIO-protobuf + features.json.

Thin wrapper over :mod:`localfm.data.prepare`; see docs/data.md for the formats.
"""
from __future__ import annotations

import argparse
from pathlib import Path

MOVIELENS_EPILOG = """examples:
  localfm prepare movielens ../shared/datasets/ml-100k --split ua --label binary:4 \\
      --columns train --drop-unseen --order file --out work/ml100k
  localfm prepare movielens ml-1m.zip --split random:0.2:42 --label rating --out work/ml1m
  localfm prepare movielens --split ua --features ids+side --out work/demo   # embedded synthetic data
  localfm prepare movielens ../shared/datasets/ml-100k --split ua --label implicit --negatives 4 \
      --negative-seed 0 --out work/ml100k-implicit   # every rated pair = 1, 4 unrated items per positive = 0
"""

INTERACTIONS_EPILOG = """examples:
  localfm prepare interactions events.parquet --user-col customer --item-col sku \\
      --rating-col stars --timestamp-col ts --split leave-last:1 --label binary:4 --out work/shop
"""


def _common(p: argparse.ArgumentParser) -> None:
    """Flags shared by both sources (split, labels, order, columns, unseen rows, output)."""
    p.add_argument("--split", required=True,
                   help="u1..u5, ua, ub (ml-100k layout only), random:FRACTION:SEED or leave-last:N")
    p.add_argument("--label", default="rating",
                   help="rating (regressor labels), binary:T (1.0 if rating >= T), or implicit[:T] (every rated "
                        "pair, or rating >= T, is 1.0; --negatives never-rated items per positive are 0.0); "
                        "default rating")
    p.add_argument("--negatives", type=int, default=None, metavar="N",
                   help="implicit labels: negatives per positive, drawn per user from items the user never rated "
                        "(train or test); the test file gets its positives plus as many negatives")
    p.add_argument("--negative-sampling", default="uniform", metavar="uniform|popularity[:ALPHA]",
                   help="implicit labels: uniform over unrated items, or proportional to (1 + training ratings) "
                        "** ALPHA (default ALPHA 1); default uniform")
    p.add_argument("--negative-seed", type=int, default=0, metavar="K",
                   help="implicit labels: seed of the negative draws and of the row shuffle; default 0")
    p.add_argument("--negative-pool", default="train-unrated", metavar="train-unrated|unrated",
                   help="implicit labels: training negatives avoid the items rated in the training split "
                        "(train-unrated, default: the training file does not depend on the test split, so offline "
                        "evaluation is leak-free) or every rated item of the input, test split included (unrated: "
                        "leaks the test split into training; the same as train-unrated when you train on all data)")
    p.add_argument("--order", default="file",
                   help="training row order: file (split-file order, as SageMaker reads it) or shuffle:SEED")
    p.add_argument("--columns", default="all", choices=["all", "train"],
                   help="all: a column for every known user/item id; train: only ids seen in training "
                        "(scikit-learn OneHotEncoder fitted on train); default all")
    p.add_argument("--drop-unseen", action="store_true",
                   help="drop test rows whose user or item does not occur in training (count reported)")
    p.add_argument("--out", required=True, type=Path, help="output directory")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="split ratings and write RecordIO-protobuf train/test + features.json",
        description="Split ratings, one-hot encode users and items (plus optional side features) and write "
                    "DIR/train.protobuf, DIR/test.protobuf, DIR/features.json, DIR/train_interactions.parquet "
                    "and DIR/test_interactions.parquet.",
    )
    kinds = parser.add_subparsers(dest="source", metavar="SOURCE")
    kinds.required = True

    ml = kinds.add_parser(
        "movielens",
        help="a GroupLens MovieLens dataset (ml-100k, ml-1m, ml-10m, ml-20m/25m; directory or .zip)",
        description="Prepare a MovieLens dataset. PATH is a directory or the original GroupLens .zip; "
                    "omit it to use the embedded synthetic dataset that ships with localfm "
                    "(data/ml-synthetic in the repository).",
        epilog=MOVIELENS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ml.add_argument("path", nargs="?", default=None, metavar="PATH",
                    help="dataset directory or .zip (default: the embedded synthetic dataset)")
    _common(ml)
    ml.add_argument("--features", default="ids", choices=["ids", "ids+side"],
                    help="ids: one-hot user + item; ids+side: plus age group, gender, occupation and genres "
                         "where the dataset has them")
    ml.add_argument("--multi-hot", default="ones", choices=["ones", "normalized"],
                    help="genre weights: 1 per genre (ones) or 1/#genres (normalized)")
    ml.set_defaults(func=_movielens)

    it = kinds.add_parser(
        "interactions",
        help="generic (user, item, rating[, timestamp]) rows from CSV or Parquet",
        description="Prepare generic interactions from a CSV (header row) or Parquet file.",
        epilog=INTERACTIONS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    it.add_argument("path", metavar="FILE", help=".csv/.tsv (header row) or .parquet")
    it.add_argument("--user-col", required=True, help="user id column")
    it.add_argument("--item-col", required=True, help="item id column")
    it.add_argument("--rating-col", default=None, help="numeric rating column (omit: every row rates 1.0)")
    it.add_argument("--timestamp-col", default=None, help="timestamp column (orders leave-last:N)")
    it.add_argument("--sep", default=None, help="CSV delimiter (default: tab for .tsv, else comma)")
    _common(it)
    it.set_defaults(func=_interactions, features="ids", multi_hot="ones")


def _options(args: argparse.Namespace):  # noqa: ANN202 - localfm.data.prepare.Options
    from ..data.prepare import Options

    return Options(
        split=args.split,
        label=args.label,
        features=args.features,
        order=args.order,
        columns=args.columns,
        drop_unseen=args.drop_unseen,
        multi_hot=args.multi_hot,
        negatives=args.negatives,
        negative_sampling=args.negative_sampling,
        negative_seed=args.negative_seed,
        negative_pool=args.negative_pool,
    )


def _report(prepared, out: Path) -> None:  # noqa: ANN001 - localfm.data.prepare.Prepared
    from ..data.prepare import OUTPUT_FILES

    print(prepared.summary())
    print(f"wrote {', '.join(str(out / name) for name in OUTPUT_FILES)}")


def _movielens(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_movielens
    from ..data.synthetic import default_dataset_path

    path = Path(args.path) if args.path is not None else default_dataset_path()
    prepared = prepare_movielens(path, _options(args), out_dir=args.out)
    _report(prepared, args.out)
    return 0


def _interactions(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_interactions

    prepared = prepare_interactions(
        args.path,
        _options(args),
        user_col=args.user_col,
        item_col=args.item_col,
        rating_col=args.rating_col,
        timestamp_col=args.timestamp_col,
        sep=args.sep,
        out_dir=args.out,
    )
    _report(prepared, args.out)
    return 0
