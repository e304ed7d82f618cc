"""The end-to-end benchmark's input stage, run as its own process.

``python -m benchmarks.stages synth --rows N --users U --items I --out ratings.parquet``
writes the synthetic ML-25M-shaped ratings as the (user_id, item_id, rating,
timestamp) table that ``localfm prepare interactions`` reads. A separate process
gives it its own wall time and peak RSS, like the localfm stages after it.
"""
from __future__ import annotations

import argparse
import sys

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
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
        return synth(a.rows, a.users, a.items, a.seed, a.out)
    except LocalFMError as exc:
        print(f"benchmarks.stages {a.stage}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
