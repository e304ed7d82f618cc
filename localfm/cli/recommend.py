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
from typing import TYPE_CHECKING

from ..errors import LocalFMError

if TYPE_CHECKING:
    from ..recommend.recommend import RecommendStats


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
    p.add_argument("--index-metric", dest="index_metric", default="INNER_PRODUCT",
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
    p.add_argument("--out", dest="target", default="recommendations.sqlite", metavar="TARGET",
                   help="PATH.sqlite (default recommendations.sqlite), PATH.parquet, PATH.jsonl or postgresql://URL")
    p.add_argument("--table", default="recommendations", help="table name for SQLite/PostgreSQL")
    p.add_argument("--lock-timeout", type=float, default=5.0, help="seconds to wait for a locked database (default 5)")
    p.add_argument("--batch-size", type=int, default=2048, help="users per batch (memory ~ batch × item block)")
    p.add_argument("--threads", type=int, help="CPU threads (default LOCALFM_THREADS or 2)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="exact engine screening: auto (bf16 when the CPU has it), fp32, bf16; results are exact either way")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N|mps",
                   help="where the exact engine ranks (default cpu); a GPU scores every item in float32 through torch")
    # The old name of --precision, kept working for scripts; not shown in --help.
    p.add_argument("--engine-mode", dest="precision", choices=("auto", "fp32", "bf16"), help=argparse.SUPPRESS)
    p.add_argument("--strict", action="store_true",
                   help="k larger than the number of candidate items is an error (exit 2) instead of a warning")
    p.add_argument("--ray", dest="cluster", metavar="local:N|auto|ADDRESS",
                   help="rank on a Ray cluster (pip install 'localfm[ray]'; see docs/scale.md): results staged, "
                        "then committed to --out in one step")
    p.add_argument("--workers", type=int, help="with --ray: actors ranking users (default: every CPU of the cluster)")
    p.add_argument("--resume", action="store_true",
                   help="with --ray: keep the shards a failed run of this job finished")
    p.add_argument("--layout", choices=("flat", "nested"), default="flat",
                   help="with --ray: flat rows (default), or nested: a directory --out of Parquet parts, one row per "
                        "user with items list<int32> and scores list<float32>")
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


def _recall_note(stats: RecommendStats) -> str:
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
    # Imported here, not at the top: every subcommand module is imported for `localfm --help`,
    # and the pipeline pulls in scipy and the data layer (1.5 s of a 0.2 s --help).
    from ..recommend.recommend import RecommendOptions, recommend_all
    from ..recommend.sinks import redact, sink_kind

    sink_kind(args.target)  # reject an unknown target before any work
    if not args.lock_timeout >= 0:
        raise LocalFMError(f"--lock-timeout: expected a number of seconds >= 0, got {args.lock_timeout}")
    users = _id_list(args.users, "--users")
    if args.users_file:
        users = (users or []) + (_id_list("@" + args.users_file, "--users-file") or [])
    options = RecommendOptions(
        k=args.k, index=args.index, index_metric=args.index_metric, nprobe=args.nprobe,
        target_recall=args.target_recall, tune_users=args.tune_users, recall_users=args.recall_users,
        sigmoid=args.sigmoid, batch_size=args.batch_size, threads=args.threads, precision=args.precision,
        device=args.device, strict=args.strict,
    )
    if args.cluster is not None:
        return _on_cluster(args, users, options)
    recs = recommend_all(
        args.model, args.features, users=users, unknown_users=args.unknown_users,
        exclude_seen=args.exclude_seen, interactions=args.interactions,
        allow_items=_id_list(args.allow_items, "--allow-items"), deny_items=_id_list(args.deny_items, "--deny-items"),
        options=options,
    )
    summary = {"out": redact(args.target), **recs.write(args.target, table=args.table, lock_timeout=args.lock_timeout)}
    note = _recall_note(recs.stats)
    if note:
        print(f"localfm recommend: {note}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _on_cluster(args: argparse.Namespace, users: list[str] | None, options) -> int:  # noqa: ANN001
    """``--ray``: the same inputs as the single process, ranked on a cluster (localfm.scale)."""
    from ..recommend.recommend import prepare_inputs
    from ..scale import recommend_on_cluster

    rep, seen, item_rows = prepare_inputs(
        args.model, args.features, users=users, unknown_users=args.unknown_users, exclude_seen=args.exclude_seen,
        interactions=args.interactions, allow_items=_id_list(args.allow_items, "--allow-items"),
        deny_items=_id_list(args.deny_items, "--deny-items"),
    )
    run = recommend_on_cluster(rep, options, target=args.target, cluster=args.cluster, workers=args.workers,
                               seen=seen, item_rows=item_rows, layout=args.layout, table=args.table,
                               lock_timeout=args.lock_timeout, resume=args.resume)
    note = _recall_note(run.stats)
    if note:
        print(f"localfm recommend: {note}", file=sys.stderr)
    print(json.dumps(run.summary()))
    return 0
