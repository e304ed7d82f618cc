"""``localfm evaluate``: rank with models, stored results and baselines; score them side by side.

The protocol (docs/experiments.md, :mod:`localfm.experiments.protocol`): test users are
users with a test rating >= ``--relevant-min-rating``; each system ranks every item the
user did not rate in training; NDCG / precision / recall / MAP / coverage at each k,
with 95% bootstrap intervals over users. Popularity is built in, ALS comes from the
``implicit`` library, and stored rankings (``localfm recommend`` output, a cloud k-NN
``.out``) are judged on exactly the same users and candidates.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import LocalFMError

EPILOG = """examples:
  localfm evaluate --model work/implicit/model.tar.gz --features work/ml100k/features.json \\
      --test work/ml100k/test_interactions.parquet -k 10 100 --baselines popularity,als --json eval.json
  localfm evaluate --recommendations cloud=recs.sqlite --knn-out knn=users.protobuf.out \\
      --features work/ml100k/features.json --test ../shared/datasets/ml-100k/ua.test
"""

BASELINES = ("popularity", "als")
_NAMED = re.compile(r"^([A-Za-z0-9_.@+-]+)=(.+)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="ranking quality (NDCG/precision/recall/MAP/coverage @k) of models and baselines, side by side",
        description=(
            "Score top-k rankings on held-out interactions: FM models (ranked by the exact engine with "
            "training items excluded), stored recommendations, cloud k-NN output, and the popularity / "
            "implicit-ALS baselines, each metric with a 95% bootstrap interval over users."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]URI",
                   help="FM model.tar.gz (local or s3://); repeatable")
    p.add_argument("--recommendations", action="append", default=[], metavar="[NAME=]TARGET",
                   help="results written by `localfm recommend` (.sqlite/.db, .parquet, .jsonl); repeatable")
    p.add_argument("--knn-out", action="append", default=[], metavar="[NAME=]FILE",
                   help="cloud k-NN batch-transform output (verbose JSON Lines, users.protobuf order); repeatable")
    p.add_argument("--table", default="recommendations", help="table name in SQLite results (default recommendations)")
    p.add_argument("--features", required=True, metavar="PATH", help="features.json written by `localfm prepare`")
    p.add_argument("--test", required=True, metavar="PATH",
                   help="test interactions: test_interactions.parquet (prepare), a MovieLens *.test / u.data, "
                        "or CSV/Parquet with user_id,item_id,rating")
    p.add_argument("--train", metavar="PATH",
                   help="training interactions whose items are excluded (default: train_interactions.parquet "
                        "next to features.json)")
    p.add_argument("-k", "--k", type=int, nargs="+", default=[10], metavar="K", help="cut-offs (default 10)")
    p.add_argument("--relevant-min-rating", type=float, default=4.0,
                   help="a test rating >= this makes the item relevant (default 4)")
    p.add_argument("--baselines", default="popularity", metavar="LIST",
                   help="comma list of popularity, als (needs localfm[baselines]); none for no baseline "
                        "(default popularity)")
    p.add_argument("--als-factors", type=int, default=64, help="ALS latent factors (default 64)")
    p.add_argument("--als-regularization", type=float, default=0.05, help="ALS regularization (default 0.05)")
    p.add_argument("--als-alpha", type=float, default=1.0, help="ALS confidence scale (default 1)")
    p.add_argument("--als-iterations", type=int, default=15, help="ALS iterations (default 15)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of ALS (default 0)")
    p.add_argument("--json", metavar="FILE", help="write every number (and the protocol) to FILE, atomically")
    p.add_argument("--plot", metavar="DIR", help="write DIR/evaluate.png comparing the systems")
    p.set_defaults(func=handler)


def _split_name(value: str) -> tuple[str | None, str]:
    m = _NAMED.match(value)
    return (m.group(1), m.group(2)) if m else (None, value)


def _default_name(path: str, kind: str) -> str:
    p = Path(path)
    if p.name == "model.tar.gz" and p.parent.name:
        return p.parent.name
    return p.name or kind


def _baselines(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise LocalFMError(
            f"--baselines: unknown baseline {bad[0]!r}; expected a comma list of popularity, als, or none"
        )
    return list(dict.fromkeys(names))


def handler(args: argparse.Namespace) -> int:
    from ..experiments.baselines import ALSConfig, rank_als
    from ..experiments.protocol import evaluate, load_protocol, rank_model, rank_popularity
    from ..experiments.report import format_table, plot_systems, ranking_from_knn, ranking_from_table, write_json

    ks = sorted(set(args.k))
    if any(k < 1 for k in ks):
        raise LocalFMError(f"--k: expected positive integers, got {' '.join(map(str, args.k))}")
    if args.bootstrap < 0:
        raise LocalFMError(f"--bootstrap: expected an integer >= 0, got {args.bootstrap}")
    baselines = _baselines(args.baselines)
    systems: list[tuple[str, str, str]] = []  # (name, kind, source)
    for kind, values in (("model", args.model), ("recommendations", args.recommendations), ("knn", args.knn_out)):
        for value in values:
            name, src = _split_name(value)
            systems.append((name or _default_name(src, kind), kind, src))
    systems += [(b, b, "built-in" if b == "popularity" else "implicit") for b in baselines]
    if not systems:
        raise LocalFMError("nothing to evaluate: give --model, --recommendations, --knn-out or --baselines")
    names = [s[0] for s in systems]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise LocalFMError(f"system name {dup!r} is used twice; name them with NAME=PATH")
    for flag, value in (("--als-factors", args.als_factors), ("--als-iterations", args.als_iterations)):
        if value < 1:
            raise LocalFMError(f"{flag}: expected a positive integer, got {value}")
    if args.json and Path(args.json).is_dir():
        raise LocalFMError(f"--json {args.json}: is a directory, expected a file path")
    if args.plot and Path(args.plot).exists() and not Path(args.plot).is_dir():
        raise LocalFMError(f"--plot {args.plot}: exists and is not a directory")

    features = Path(args.features)
    train = Path(args.train) if args.train else features.parent / "train_interactions.parquet"
    if not args.train and not train.is_file():
        raise LocalFMError(f"--train: not given and {train} does not exist (it is written by `localfm prepare`)")
    protocol = load_protocol(features, train, args.test, relevant_min_rating=args.relevant_min_rating)
    k_max = max(ks)
    results: dict[str, dict] = {}
    for name, kind, src in systems:
        info: dict[str, int] = {}
        if kind == "model":
            rec = rank_model(src, protocol, k_max)
        elif kind == "recommendations":
            rec, info = ranking_from_table(protocol, src, k_max, table=args.table)
        elif kind == "knn":
            rec, info = ranking_from_knn(protocol, src, k_max)
        elif kind == "popularity":
            rec = rank_popularity(protocol, k_max)
        else:
            cfg = ALSConfig(args.als_factors, args.als_regularization, args.als_alpha, args.als_iterations, args.seed)
            rec = rank_als(protocol, k_max, cfg)
        res = evaluate(protocol, rec, ks, bootstrap=args.bootstrap, seed=args.seed)
        results[name] = {"kind": kind, "source": src, **res, **({"read": info} if info else {})}

    print(f"test users: {protocol.n_users} (a rating >= {args.relevant_min_rating:g} in {args.test}); "
          f"candidates: the {protocol.n_items} items minus each user's training items; "
          f"95% bootstrap intervals over users ({args.bootstrap} resamples)")
    print(format_table(results, ks), end="")
    if args.json:
        doc = {
            "protocol": {
                "features": str(features), "train": str(train), "test": str(args.test),
                "relevant_min_rating": args.relevant_min_rating, "test_users": protocol.n_users,
                "items": protocol.n_items, "ks": ks, "bootstrap": args.bootstrap, "seed": args.seed,
                **protocol.notes,
            },
            "systems": results,
        }
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot_systems(results, ks, args.plot)}")
    return 0
