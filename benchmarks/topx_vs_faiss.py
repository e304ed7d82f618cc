"""Exact top-x engine vs FAISS IndexFlatIP.search on identical vectors (a script, not a test).

    python -m benchmarks.topx_vs_faiss --users 20000 --items 62000 --dim 65 --k 100 --kind fm

Runs FAISS and the engine alternately ``--repeat`` times with the same thread count and
reports the best wall-clock and CPU time of each (CPU time is steadier on a shared
machine), the speed ratios, how many result ids agree (they
differ only among float32 near-ties) and ``skipped_fraction``: the share of the
users × items scores the engine's exact pruning never computed (``--no-prune`` turns
pruning off, for the brute-force baseline of the engine itself). ``--kind fm`` draws FM-like vectors (items with
log-normal norms and a bias column, users with a trailing 1), ``gaussian`` plain N(0, 1).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def vectors(kind: str, n_users: int, n_items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n_users, dim), dtype=np.float32)
    I = rng.standard_normal((n_items, dim), dtype=np.float32)
    if kind == "fm":
        U *= 0.3
        U[:, -1] = 1.0
        I *= rng.lognormal(-1.0, 0.5, (n_items, 1)).astype(np.float32)
        I[:, -1] = rng.normal(0.0, 1.0, n_items)
    return U, I


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=62000)
    ap.add_argument("--dim", type=int, default=65)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kind", choices=("fm", "gaussian"), default="fm")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--kernel", choices=("auto", "numba", "torch"), default="auto")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--no-prune", dest="prune", action="store_false", help="score every (user, item) pair")
    args = ap.parse_args()

    import faiss
    import torch

    from localfm.progress import set_quiet
    from localfm.recommend.topx import top_x

    set_quiet(True)
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    U, I = vectors(args.kind, args.users, args.items, args.dim)
    t_faiss, t_ours, c_faiss, c_ours = [], [], [], []
    D = L = res = None
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        index = faiss.IndexFlatIP(args.dim)
        index.add(I)
        D, L = index.search(U, args.k)
        t_faiss.append(time.perf_counter() - t)
        c_faiss.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        res = top_x(U, I, args.k, threads=args.threads, precision=args.precision, batch_size=args.batch_size,
                    block_size=args.block_size, kernel=args.kernel, prune=args.prune)
        t_ours.append(time.perf_counter() - t)
        c_ours.append(time.process_time() - c)
    same_sets = float(np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(res.ids, L)]))
    print(json.dumps({
        "users": args.users, "items": args.items, "dim": args.dim, "k": args.k, "threads": args.threads,
        "kind": args.kind, "precision": args.precision, "kernel": args.kernel, "prune": args.prune,
        "skipped_fraction": round(res.skipped_fraction, 4),
        "faiss_s": round(min(t_faiss), 3), "engine_s": round(min(t_ours), 3),
        "speedup": round(min(t_faiss) / min(t_ours), 2),
        "faiss_cpu_s": round(min(c_faiss), 3), "engine_cpu_s": round(min(c_ours), 3),
        "cpu_speedup": round(min(c_faiss) / min(c_ours), 2),
        "id_set_agreement": round(same_sets, 6),
        "max_abs_score_diff": float(np.abs(res.scores - D).max()),
    }))


if __name__ == "__main__":
    main()
