"""``localfm recommend``: top-x items per user from an FM model, stored in a database or file.

Default engine: the exact top-x (``localfm.recommend.topx``), equivalent to SageMaker
k-NN ``faiss.Flat`` with ``INNER_PRODUCT`` on the repackaged vectors. ``--index`` picks
a FAISS index instead (approximate ones report recall@k against the exact engine).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import LocalFMError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="top-x recommendations for every user (exact by default), stored in SQLite/PostgreSQL/Parquet/JSONL",
        description=(
            "Rank items for users with an FM model: repackage into vectors, take the exact top-k by "
            "inner product (= FM score order), optionally excluding already-rated items, and store "
            "(user_id, rank, item_id, score) rows. score is the FM score (inner product + per-user constant); "
            "--sigmoid reports sigmoid(score) for binary classifiers, as SageMaker's score field."
        ),
    )
    p.add_argument("--model", required=True, metavar="URI", help="FM model.tar.gz / model_algo-1 (local or s3://)")
    p.add_argument("--features", required=True, metavar="PATH", help="features.json written by `localfm prepare`")
    p.add_argument("--interactions", metavar="PATH",
                   help="already-rated pairs: train_interactions.parquet (default: next to features.json), "
                        "a MovieLens u.data / *.base, or a CSV/Parquet with user_id,item_id")
    p.add_argument("-k", "--k", type=int, default=10, help="recommendations per user (default 10)")
    p.add_argument("--exclude-seen", action="store_true", help="never recommend items the user already rated")
    p.add_argument("--users", metavar="IDS", help="only these users (comma-separated ids)")
    p.add_argument("--users-file", metavar="PATH", help="only the users listed in PATH (one id per line)")
    p.add_argument("--unknown-users", choices=("error", "cold-start", "skip"), default="error",
                   help="users without an id column: error (default), cold-start from side features, or skip")
    p.add_argument("--allow-items", metavar="IDS|@FILE", help="only recommend these items (comma list or @file)")
    p.add_argument("--deny-items", metavar="IDS|@FILE", help="never recommend these items (comma list or @file)")
    p.add_argument("--index", default="exact",
                   help="exact (default) or a FAISS index: faiss.Flat, faiss.IVFFlat, faiss.HNSW, faiss.IVFPQ")
    p.add_argument("--index-metric", default="INNER_PRODUCT",
                   help="INNER_PRODUCT (default: FM score order), or COSINE / L2 to mirror a k-NN configured so "
                        "(then a FAISS index is used and recall vs the exact FM ranking is reported)")
    p.add_argument("--nprobe", default="auto", metavar="auto|N",
                   help="IVF lists searched per query: auto (default) raises it from SageMaker's hidden default 5 "
                        "until recall@k on sampled users reaches --target-recall; an integer N is used as given "
                        "(--nprobe 5 = the cloud's setting)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@k that --nprobe auto must reach, against the exact ranking (default 0.95)")
    p.add_argument("--tune-users", type=int, default=1000,
                   help="users sampled to tune --nprobe auto (at most half the users; the rest are held out; default 1000)")
    p.add_argument("--recall-users", type=int, default=1000,
                   help="users sampled to measure recall@k of an approximate index (0 = skip)")
    p.add_argument("--sigmoid", action="store_true", help="store sigmoid(FM score) (binary_classifier models)")
    p.add_argument("--out", default="recommendations.sqlite", metavar="TARGET",
                   help="PATH.sqlite (default recommendations.sqlite), PATH.parquet, PATH.jsonl or postgresql://URL")
    p.add_argument("--table", default="recommendations", help="table name for SQLite/PostgreSQL")
    p.add_argument("--lock-timeout", type=float, default=5.0, help="seconds to wait for a locked database (default 5)")
    p.add_argument("--batch-size", type=int, default=2048, help="users per batch (memory ~ batch × item block)")
    p.add_argument("--threads", type=int, help="CPU threads (default LOCALFM_THREADS or 2)")
    p.add_argument("--engine-mode", choices=("auto", "fp32", "bf16"), default="auto",
                   help="exact engine screening: auto (bf16 when the CPU has it), fp32, bf16; results are exact either way")
    p.set_defaults(func=handler)


def _id_list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise LocalFMError(f"{what}: file {path} not found")
        try:
            items = path.read_text(encoding="utf-8").replace(",", "\n").split()
        except UnicodeDecodeError as exc:
            raise LocalFMError(f"{what}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise LocalFMError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    else:
        items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise LocalFMError(f"{what}: no ids given")
    return items


def _recall_note(stats) -> str:  # noqa: ANN001 - RecommendStats
    """One human line about nprobe and recall: the JSON summary has the same, this is for eyes."""
    parts = []
    n = stats.nprobe
    if n is not None:
        if n["mode"] == "auto":
            verdict = f"target {n['target']}" if n["met"] else f"target {n['target']} NOT met even at nprobe = nlist"
            parts.append(f"nprobe auto -> {n['nprobe']} of {n['nlist']} lists, recall {n['tuning_recall']:.4f} "
                         f"on {n['tuning_users']} tuning users ({verdict})")
        else:
            parts.append(f"nprobe {n['nprobe']} of {n['nlist']} lists (fixed)")
    r = stats.recall
    if r is not None:
        parts.append(f"recall@{r['k']} {r['recall']:.4f} on {r['users']} users")
        if r.get("held_out_recall") is not None:
            parts.append(f"{r['held_out_recall']:.4f} on {r['held_out_users']} held-out users "
                         f"(vs {r['held_out_reference']})")
    return "; ".join(parts)


def handler(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.features import FeatureSpace
    from ..io.artifacts import load_fm
    from ..recommend.recommend import (
        EXACT,
        RecommendStats,
        coerce_ids,
        positions,
        read_seen,
        recommend,
        seen_matrix,
        select_items,
    )
    from ..recommend.repackage import repackage
    from ..recommend.sinks import open_sink, redact, sink_kind
    from ..recommend.topx import validate_k

    k = validate_k(args.k)
    sink_kind(args.out)  # reject an unknown target before any work
    if args.batch_size <= 0:
        raise LocalFMError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    # Checked here, not left to the engine: a negative count silently became one thread,
    # and a negative lock timeout is an SQL error from PostgreSQL only after all the work.
    if args.threads is not None and args.threads <= 0:
        raise LocalFMError(f"--threads: expected a positive integer, got {args.threads}")
    if not args.lock_timeout >= 0:
        raise LocalFMError(f"--lock-timeout: expected a number of seconds >= 0, got {args.lock_timeout}")
    from ..knn.index import check_metric, normalize_index_type

    metric = check_metric(args.index_metric)
    index = args.index if args.index == EXACT else normalize_index_type(args.index)
    space = FeatureSpace.load(args.features)
    weights = load_fm(args.model)

    users = _id_list(args.users, "--users")
    if args.users_file:
        users = (users or []) + (_id_list("@" + args.users_file, "--users-file") or [])
    cold = False
    if users is not None:
        users = coerce_ids(users, space.user_ids, "--users")
        # A user named twice (in --users and --users-file, say) would get every row twice.
        _, first = np.unique(users, return_index=True)
        users = users[np.sort(first)]
        known = positions(space.user_ids, users) >= 0
        if args.unknown_users == "skip":
            users = users[known]
            if users.size == 0:
                raise LocalFMError("--users: none of the given users is in features.json")
        cold = args.unknown_users == "cold-start"
    rep = repackage(weights, space, user_ids=users, cold_start=cold)

    seen = None
    if args.exclude_seen:
        path = Path(args.interactions) if args.interactions else Path(args.features).parent / "train_interactions.parquet"
        su, si = read_seen(path)
        seen = seen_matrix(rep.user_ids, rep.item_ids, su, si)
    item_rows = None
    allow, deny = _id_list(args.allow_items, "--allow-items"), _id_list(args.deny_items, "--deny-items")
    if allow is not None or deny is not None:
        item_rows = select_items(rep.item_ids, allow, deny)

    stats = RecommendStats()
    kinds = {"user_id_kind": "int" if rep.user_ids.dtype.kind in "iu" else "text",
             "item_id_kind": "int" if rep.item_ids.dtype.kind in "iu" else "text"}
    from ..recommend.recommend import _check_nprobe

    index_options = {"nprobe": _check_nprobe(args.nprobe)} if index in ("faiss.IVFFlat", "faiss.IVFPQ") else {}
    batches = recommend(
        rep, k, seen=seen, item_rows=item_rows, index=index, sigmoid=args.sigmoid, batch_size=args.batch_size,
        threads=args.threads, mode=args.engine_mode, recall_users=args.recall_users, stats=stats,
        index_options=index_options, metric=metric, target_recall=args.target_recall, tune_users=args.tune_users,
    )
    with open_sink(args.out, table=args.table, lock_timeout=args.lock_timeout, **kinds) as write:
        for batch in batches:
            write(batch)
    summary = {
        "out": redact(args.out),
        "users": stats.users,
        "items": stats.items,
        "rows": stats.rows,
        "k": k,
        "index": stats.index,
        "index_metric": metric,
        "exclude_seen": bool(args.exclude_seen),
        "seconds": round(stats.seconds, 3),
        "score": "sigmoid(fm score)" if args.sigmoid else "fm score",
    }
    if stats.recall is not None:
        summary["recall"] = stats.recall
    if stats.nprobe is not None:
        summary["nprobe"] = stats.nprobe
    note = _recall_note(stats)
    if note:
        print(f"localfm recommend: {note}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
