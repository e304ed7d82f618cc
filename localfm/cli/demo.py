"""``localfm demo``: the whole seed workflow on the embedded dataset, end to end.

It runs exactly the commands a user would type (and prints each one), so the demo
doubles as a worked example: prepare → train (SageMaker semantics) → repackage →
k-NN train + verbose batch transform (SageMaker's top-x path) → recommend into
SQLite. ``--movielens PATH`` runs the same on a real GroupLens folder; on ml-100k
this is the cloud fixture's exact configuration.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sqlite3
import tempfile
import time
from pathlib import Path

from ..errors import LocalFMError

# Written for a terminal (the module docstring is for readers of the code).
DESCRIPTION = """\
Run the whole localfm pipeline end to end and print each command as it runs:
prepare -> train (SageMaker FM semantics) -> repackage -> knn train -> knn transform
(SageMaker's verbose top-x batch transform) -> recommend into SQLite. The printed
commands double as a worked example you can copy.

By default it uses the embedded synthetic MovieLens-shaped dataset (300 users,
400 movies), which ships with localfm. With --movielens PATH it runs the same on a
GroupLens MovieLens folder or .zip; on ml-100k that is the cloud fixture's exact
configuration."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded default data (or a MovieLens folder)",
        description=DESCRIPTION,
        epilog="examples:\n  localfm demo\n  localfm demo --epochs 5 -k 20 --out my-demo\n"
               "  localfm demo --movielens ../shared/datasets/ml-100k",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--movielens", metavar="PATH", help="a GroupLens MovieLens folder or .zip instead of the embedded data")
    p.add_argument("--out", metavar="DIR", help="where to put the results (default: a new folder under ./localfm-demo)")
    p.add_argument("--epochs", type=int, default=30, help="FM epochs (default 30, as the cloud fixture)")
    p.add_argument("-k", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed for the FM initialisation (default 0)")
    p.set_defaults(func=run)


def _stage(title: str, argv: list[str]) -> float:
    from . import main

    print(f"\n== {title}\n$ localfm {' '.join(shlex.quote(a) for a in argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise LocalFMError(f"demo stage '{title}' failed with exit code {code}")
    seconds = time.perf_counter() - t0
    print(f"   ({seconds:.1f} s)", flush=True)
    return seconds


def run(args: argparse.Namespace) -> int:
    if args.out:
        out = Path(args.out)
    else:
        Path("localfm-demo").mkdir(exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir="localfm-demo"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. --out names an existing file: bad input, not a traceback
        raise LocalFMError(f"--out {out}: cannot create the demo folder ({exc.strerror or exc})") from None
    prepared, model_dir, vectors, knn_dir, knn_out = (
        out / "prepared", out / "model", out / "vectors", out / "knn-model", out / "knn-transform",
    )
    db = out / "recommendations.sqlite"
    source = [args.movielens] if args.movielens else []
    timings: dict[str, float] = {}

    timings["prepare"] = _stage("prepare: ua split, binary label (rating >= 4), one-hot ids", [
        "prepare", "movielens", *source, "--split", "ua", "--label", "binary:4", "--columns", "train",
        "--drop-unseen", "--order", "file", "--out", str(prepared),
    ])
    features = json.loads((prepared / "features.json").read_text())
    feature_dim = int(features["feature_dim"])
    timings["train"] = _stage("train: SageMaker FM semantics, the cloud fixture's hyperparameters", [
        "train", "--train", str(prepared / "train.protobuf"), "--test", str(prepared / "test.protobuf"),
        "--hp", f"feature_dim={feature_dim}", "--hp", "num_factors=64", "--hp", "predictor_type=binary_classifier",
        "--hp", f"epochs={args.epochs}", "--hp", "mini_batch_size=200", "--seed", str(args.seed),
        "--model-dir", str(model_dir), "--quiet-log",
    ])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    timings["repackage"] = _stage("repackage: item [V_i, w_i], user [V_u, 1]", [
        "repackage", "--model", str(model_dir / "model.tar.gz"), "--features", str(prepared / "features.json"),
        "--out", str(vectors),
    ])
    n_items = len(features_items(prepared / "features.json"))
    k = min(args.k, n_items)
    timings["knn train"] = _stage("knn train: FAISS Flat, INNER_PRODUCT (SageMaker k-NN hyperparameters)", [
        "knn", "train", "--train", str(vectors / "items.protobuf"),
        "--hp", f"feature_dim={_vector_dim(vectors)}", "--hp", f"k={k}", "--hp", "predictor_type=classifier",
        "--hp", f"sample_size={n_items}", "--hp", "index_metric=INNER_PRODUCT", "--model-dir", str(knn_dir),
    ])
    timings["knn transform"] = _stage("knn transform: verbose batch transform JSON Lines, like the cloud", [
        "knn", "transform", "--model", str(knn_dir), "--input", str(vectors / "users.protobuf"),
        "--accept", "application/jsonlines; verbose=true", "--output-dir", str(knn_out),
    ])
    timings["recommend"] = _stage("recommend: exact top-k of the FM score, seen items excluded, into SQLite", [
        "recommend", "--model", str(model_dir / "model.tar.gz"), "--features", str(prepared / "features.json"),
        "-k", str(args.k), "--exclude-seen", "--out", str(db),
    ])

    test = metrics.get("test_metrics") or {}
    print("\n== result")
    if test:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in test.items() if isinstance(value, (int, float)))
        print(f"test metrics: {shown}")
    # sqlite3's own context manager only commits; closing() releases the file handle.
    with contextlib.closing(sqlite3.connect(db)) as con:
        table = con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchone()[0]
        n_rows, n_users = con.execute(f'SELECT COUNT(*), COUNT(DISTINCT user_id) FROM "{table}"').fetchone()
        first = con.execute(f'SELECT MIN(user_id) FROM "{table}"').fetchone()[0]
        top = con.execute(
            f'SELECT rank, item_id, score FROM "{table}" WHERE user_id = ? ORDER BY rank LIMIT 5', (first,)
        ).fetchall()
    print(f"stored {n_rows} recommendations for {n_users} users in {db} (table {table})")
    print(f"user {first}, top {len(top)}: " + ", ".join(f"#{r} item {i} ({s:.3f})" for r, i, s in top))
    transform_out = knn_out / "users.protobuf.out"
    first_line = transform_out.read_text().splitlines()[0]
    print(f"k-NN batch transform, first query (SageMaker verbose JSON Lines, best match last), {transform_out}:")
    print("  " + (first_line if len(first_line) < 300 else first_line[:297] + "..."))
    print("wall time by stage: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in timings.items()))
    print(f"everything is under {out}")
    return 0


def features_items(path: Path) -> list:
    from ..data.features import FeatureSpace

    return list(FeatureSpace.load(path).item_ids)


def _vector_dim(vectors: Path) -> int:
    return int(json.loads((vectors / "repackage.json").read_text())["dim"])
