"""The end-to-end benchmark's own stages, each run as its own process.

``python -m benchmarks.stages synth --rows N --users U --items I --out ratings.parquet``
writes the synthetic ML-25M-shaped ratings as the (user_id, item_id, rating,
timestamp) table that ``localfm prepare interactions`` reads. A separate process
gives it its own wall time and peak RSS, like the localfm stages after it.

``python -m benchmarks.stages recommend --model M --features F --k K --out T`` is
``localfm recommend --exclude-seen`` (the same :func:`localfm.recommend.recommend_all`
and :func:`~localfm.recommend.sinks.open_sink`, so the same work, memory and output)
with one difference: it times the ranking and the sink apart. The two interleave
batch by batch, so the CLI's ``seconds`` covers both; the issue's goal names the
top-100 and the Parquet sink as separate stages. It prints the CLI's JSON summary
plus ``load_s`` (model, features and already-rated pairs), ``rank_s`` and ``sink_s``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def synth(rows: int, users: int, items: int, seed: int, out: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from localfm.io.atomic import atomic_write

    from .data import synthetic_ratings

    r = synthetic_ratings(rows, users, items, seed=seed)
    table = pa.table({
        "user_id": r.users + 1,
        "item_id": r.items + 1,
        "rating": r.ratings,
        "timestamp": np.arange(len(r), dtype=np.int64),
    })
    with atomic_write(out, "wb") as fh:
        pq.write_table(table, fh)
    print(f"wrote {len(r)} synthetic ratings to {out}")
    return 0


def recommend(model: str, features: str, interactions: str, k: int, out: str) -> int:
    """All users' top-``k``, already-rated items excluded, into ``out``; ranking and sink timed apart."""
    from localfm.recommend.recommend import recommend_all
    from localfm.recommend.sinks import open_sink

    start = time.perf_counter()
    recs = recommend_all(model, features, k=k, exclude_seen=True, interactions=interactions)
    load_s = time.perf_counter() - start
    rank_s = sink_s = 0.0
    t = time.perf_counter()
    with open_sink(out, user_id_kind=recs.user_id_kind, item_id_kind=recs.item_id_kind) as write:
        sink_s += time.perf_counter() - t
        batches = iter(recs)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            rank_s += time.perf_counter() - t
            if batch is None:
                break
            t = time.perf_counter()
            write(batch)
            sink_s += time.perf_counter() - t
        t = time.perf_counter()
    sink_s += time.perf_counter() - t  # the sink's commit: Parquet footer and rename, or COMMIT
    print(json.dumps({"out": out, **recs.summary(), "load_s": load_s, "rank_s": rank_s, "sink_s": sink_s}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    s = sub.add_parser("synth", help="write synthetic ML-25M-shaped ratings as Parquet")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--users", type=int, required=True)
    s.add_argument("--items", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    r = sub.add_parser("recommend", help="localfm recommend --exclude-seen, ranking and sink timed apart")
    r.add_argument("--model", required=True)
    r.add_argument("--features", required=True)
    r.add_argument("--interactions", required=True)
    r.add_argument("--k", type=int, default=100)
    r.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from localfm.errors import LocalFMError
    from localfm.progress import set_quiet

    set_quiet(True)
    try:
        if a.stage == "recommend":
            return recommend(a.model, a.features, a.interactions, a.k, a.out)
        return synth(a.rows, a.users, a.items, a.seed, a.out)
    except LocalFMError as exc:
        print(f"benchmarks.stages {a.stage}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
