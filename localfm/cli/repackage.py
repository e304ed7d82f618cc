"""``localfm repackage``: an FM model + features.json → user/item vectors for k-NN.

Writes into ``--out DIR``: ``items.protobuf`` (dense RecordIO-protobuf item vectors,
label = item id: the k-NN training channel, as the SageMaker blog notebook uploads it),
``users.protobuf`` (dense user vectors: the batch-transform input), ``.npy`` copies,
``items.parquet`` / ``users.parquet`` with ids, ``user_constants.npy`` (so exact FM
scores are recoverable) and ``repackage.json``. All files land together or not at all.
"""
from __future__ import annotations

import argparse
import json

from ..errors import LocalFMError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "repackage",
        help="turn an FM model into user/item vectors for k-NN (exact with side features)",
        description=(
            "Repackage a factorization machine into item vectors [Vᵀx_i, wᵀx_i + pairwise(x_i)] and user "
            "vectors [Vᵀx_u, 1] so that user·item + user_constant is the FM score (ids only: the blog's "
            "[V_i, w_i] / [V_u, 1])."
        ),
    )
    p.add_argument("--model", required=True, metavar="URI", help="FM model.tar.gz / model_algo-1 (local or s3://)")
    p.add_argument("--features", required=True, metavar="PATH", help="features.json written by `localfm prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--users", metavar="IDS", help="comma-separated user ids (default: every user in features.json)")
    p.add_argument("--cold-start", action="store_true",
                   help="users without an id column get vectors from their side features (else unknown ids are an error)")
    p.set_defaults(func=handler)


def parse_id_list(text: str | None) -> list[str] | None:
    """``"1, 2,3"`` → ["1", "2", "3"] (typed later against the feature space); None passes through.

    An empty list is bad input, as in ``localfm recommend``: ``--users ","`` used to
    write a complete, valid-looking output set with zero users and exit 0.
    """
    if text is None:
        return None
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids:
        raise LocalFMError("--users: no ids given (expected comma-separated user ids)")
    return ids


def handler(args: argparse.Namespace) -> int:
    from ..data.features import FeatureSpace
    from ..io.artifacts import load_fm
    from ..recommend.recommend import select_users
    from ..recommend.vectors import repackage, write_repackaged

    weights = load_fm(args.model)
    space = FeatureSpace.load(args.features)
    users = parse_id_list(args.users)
    if users is not None:
        users = select_users(space, users, "cold-start" if args.cold_start else "error")
    rep = repackage(weights, space, user_ids=users, cold_start=args.cold_start)
    meta = write_repackaged(rep, args.out)
    print(json.dumps({"out": str(args.out), **meta}))
    return 0
