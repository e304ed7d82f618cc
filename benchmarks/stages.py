"""Pipeline stages that have no ``localfm`` subcommand (yet), run as their own process.

``python -m benchmarks.stages recommend --model M --features F --interactions P --k 100 --out sqlite:///x.db``
does what ``localfm recommend`` is meant to do, through localfm's library API:
load the FM artifact, repackage it with the feature space, exclude already-rated
items, exact top-k for every user (``localfm.recommend.topx``) and write the rows to
a sink (``localfm.recommend.sinks``). The end-to-end benchmark prefers the real
subcommand when it exists and says which one ran. A separate process per stage gives
each stage its own wall time and peak RSS.

``python -m benchmarks.stages synth --rows N --out ratings.parquet`` writes the
synthetic ML-25M-shaped ratings as the (user_id, item_id, rating, timestamp) table
that ``localfm prepare interactions`` reads.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np


def recommend(model: str, features: str, interactions: str | None, k: int, out: str) -> int:
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from localfm.data.features import FeatureSpace
    from localfm.io.artifacts import load_fm
    from localfm.recommend.repackage import repackage
    from localfm.recommend.sinks import ResultBatch, write_results
    from localfm.recommend.topx import iter_top_x

    weights = load_fm(model)
    space = FeatureSpace.load(features)
    rep = repackage(weights, space)
    exclude = None
    if interactions:
        t = pq.read_table(interactions, columns=["user_id", "item_id"])
        uid = np.asarray(t.column("user_id").to_numpy())
        iid = np.asarray(t.column("item_id").to_numpy())
        u_order = np.argsort(rep.user_ids)
        i_order = np.argsort(rep.item_ids)
        urow = u_order[np.searchsorted(rep.user_ids[u_order], uid)]
        irow = i_order[np.searchsorted(rep.item_ids[i_order], iid)]
        exclude = sp.csr_matrix((np.ones(len(urow), np.float32), (urow, irow)),
                                shape=(len(rep.user_ids), len(rep.item_ids)))

    def batches() -> Any:
        for first, part in iter_top_x(rep.user_vectors, rep.item_vectors, k, exclude=exclude):
            n, kk = part.ids.shape
            rows = np.arange(first, first + n)
            keep = part.ids >= 0
            urows = np.repeat(rows, kk).reshape(n, kk)[keep]
            yield ResultBatch(
                user_id=rep.user_ids[urows],
                rank=np.tile(np.arange(1, kk + 1), n).reshape(n, kk)[keep],
                item_id=rep.item_ids[part.ids[keep]],
                score=part.scores[keep].astype(np.float64) + rep.user_constants[urows],
            )

    n_rows = write_results(out, batches())
    print(f"wrote {n_rows} recommendations for {len(rep.user_ids)} users to {out}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("recommend", help="repackage + exact top-k for all users + sink")
    r.add_argument("--model", required=True)
    r.add_argument("--features", required=True)
    r.add_argument("--interactions", default=None, help="train_interactions.parquet: exclude rated items")
    r.add_argument("--k", type=int, default=100)
    r.add_argument("--out", required=True, help="sink target, e.g. sqlite:///recs.db")
    s = sub.add_parser("synth", help="write synthetic ML-25M-shaped ratings as Parquet")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--users", type=int, required=True)
    s.add_argument("--items", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
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
