"""Exact top-x engine vs FAISS IndexFlatIP.search on identical vectors (a script, not a test).

    python -m benchmarks.topx_vs_faiss --users 40000 --items 62000 --k 100 --kind ml100k

Runs FAISS and the engine alternately ``--repeat`` times with the same thread count and
reports the best wall-clock and CPU time of each (CPU time is steadier on a shared
machine), the speed ratios, the load average before and after, how the ids agree and
``skipped_fraction``: the share of the users × items scores the engine's exact pruning
never computed (``--no-prune`` turns pruning off, for the engine's own brute-force
baseline).

Vectors (``--kind``):

* ``ml100k``: a binary FM (64 factors, 30 epochs, batch 200: the cloud job's shape)
  trained with localfm on ml-100k ``ua.base`` (rating >= 4), repackaged by
  :mod:`localfm.recommend.vectors` into ``[V_u, 1]`` users and ``[V_i, w_i + …]`` items;
* ``planted``: a regressor FM (64 factors, 5 epochs, batch 5000) trained on 2M rows of
  :func:`benchmarks.data.synthetic_ratings` (ML-25M-shaped: 162,541 users × 62,423 items,
  Zipf item popularity, ratings from a planted FM), repackaged the same way;
* ``fm``: synthetic FM-shaped vectors (log-normal item norms, a bias column, users with a
  trailing 1); ``gaussian``: plain N(0, 1).

Trained vectors are cached under ``~/.cache/localfm-bench`` (``LOCALFM_BENCH_CACHE``), so
only the first run trains. Users and items are then resampled to ``--users`` × ``--items``:
rows drawn at random (with replacement only when more are asked for than the model has)
plus Gaussian noise of ``--noise`` × each column's standard deviation (users keep their
trailing 1), so a 1,682-item model yields a 62,000-item catalogue of distinct vectors.

Agreement: ``ids_identical_faiss`` is the share of users whose id list equals FAISS's
(they may differ only among float32 near-ties); ``ids_identical_unpruned`` compares the
engine with and without pruning on the first ``--check-users`` users (must be 1.0: pruning
is exact), and ``ids_identical_brute`` against a float64 numpy brute force on them.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

CACHE = Path(os.environ.get("LOCALFM_BENCH_CACHE", Path.home() / ".cache" / "localfm-bench"))


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


def _repackage(fm, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """[V_u, 1] / item vectors of a one-hot [user | item] FM, by the library's repackaging."""
    from localfm.recommend.vectors import item_vectors, user_vectors

    d = n_users + n_items
    Xu = sp.csr_matrix((np.ones(n_users, np.float32), (np.arange(n_users), np.arange(n_users))), shape=(n_users, d))
    Xi = sp.csr_matrix((np.ones(n_items, np.float32), (np.arange(n_items), n_users + np.arange(n_items))),
                       shape=(n_items, d))
    U, _ = user_vectors(fm.weights_, Xu)
    return U, item_vectors(fm.weights_, Xi)


def trained_vectors(kind: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The repackaged vectors of the ``kind`` model, trained once and cached."""
    from localfm.fm.model import FactorizationMachine

    from .data import BenchConfig, ml100k_split, synthetic_ratings

    path = CACHE / f"topx-{kind}-k64.npz"
    if path.is_file():
        z = np.load(path)
        return z["U"], z["I"], json.loads(str(z["meta"]))
    t = time.perf_counter()
    if kind == "ml100k":
        train, _ = ml100k_split(BenchConfig.preset("quick"), "ua")
        fm = FactorizationMachine(feature_dim=train.n_users + train.n_items, num_factors=64,
                                  predictor_type="binary_classifier", epochs=30, mini_batch_size=200, seed=0)
        fm.fit(train.onehot(), train.binary())
        meta = {"model": "binary FM, ml-100k ua.base (rating >= 4), 64 factors, 30 epochs, batch 200"}
    else:
        train = synthetic_ratings(2_000_000, seed=0)
        fm = FactorizationMachine(feature_dim=train.n_users + train.n_items, num_factors=64,
                                  predictor_type="regressor", epochs=5, mini_batch_size=5000, seed=0)
        fm.fit(train.onehot(), train.ratings)
        meta = {"model": "regressor FM, 2M planted ML-25M-shaped rows, 64 factors, 5 epochs, batch 5000"}
    U, I = _repackage(fm, train.n_users, train.n_items)
    meta.update(train_s=round(time.perf_counter() - t, 1), model_users=U.shape[0], model_items=I.shape[0])
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, U=U, I=I, meta=json.dumps(meta))
    os.replace(tmp, path)
    return U, I, meta


def resample(X: np.ndarray, n: int, noise: float, rng: np.random.Generator, user: bool) -> np.ndarray:
    """``n`` rows of ``X`` drawn at random plus noise × column std (users keep the trailing 1)."""
    rows = rng.choice(X.shape[0], n, replace=n > X.shape[0])
    out = X[rows].astype(np.float32)
    if noise > 0:
        std = X.std(axis=0).astype(np.float32)
        out += noise * std * rng.standard_normal(out.shape, dtype=np.float32)
    if user:
        out[:, -1] = 1.0
    return np.ascontiguousarray(out)


def _brute_ids(U: np.ndarray, I: np.ndarray, k: int) -> np.ndarray:
    """float64 brute force with the engine's tie rule (earlier in norm order makes the cut)."""
    S = U.astype(np.float64) @ I.astype(np.float64).T
    norms = np.sqrt(np.einsum("ij,ij->i", I, I, dtype=np.float64))
    visit = np.empty(I.shape[0], np.int64)
    visit[np.argsort(-norms, kind="stable")] = np.arange(I.shape[0])
    out = np.empty((U.shape[0], k), np.int64)
    for r in range(U.shape[0]):
        cut = np.lexsort((visit, -S[r]))[:k]
        out[r] = cut[np.lexsort((cut, -S[r, cut]))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=62000)
    ap.add_argument("--dim", type=int, default=65, help="fm/gaussian only (trained models have 65)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kind", choices=("fm", "gaussian", "ml100k", "planted"), default="fm")
    ap.add_argument("--noise", type=float, default=0.1, help="resampling noise, × column std (trained kinds)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--kernel", choices=("auto", "numba", "torch"), default="auto")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--check-users", type=int, default=1000, help="users checked against brute force / unpruned")
    ap.add_argument("--no-faiss", dest="faiss", action="store_false", help="engine only (CPU-time A/B runs)")
    ap.add_argument("--no-prune", dest="prune", action="store_false", help="score every (user, item) pair")
    args = ap.parse_args()

    import torch

    from localfm.progress import set_quiet
    from localfm.recommend.topx import top_x

    set_quiet(True)
    torch.set_num_threads(args.threads)
    meta: dict = {}
    if args.kind in ("ml100k", "planted"):
        U0, I0, meta = trained_vectors(args.kind)
        rng = np.random.default_rng(0)
        U = resample(U0, args.users, args.noise, rng, user=True)
        I = resample(I0, args.items, args.noise, rng, user=False)
    else:
        U, I = vectors(args.kind, args.users, args.items, args.dim)
    dim = U.shape[1]
    load_before = os.getloadavg()
    t_faiss, t_ours, c_faiss, c_ours = [], [], [], []
    L = res = None
    engine = dict(threads=args.threads, precision=args.precision, batch_size=args.batch_size,
                  block_size=args.block_size, kernel=args.kernel)
    if args.faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    for _ in range(args.repeat):
        if args.faiss:
            t, c = time.perf_counter(), time.process_time()
            index = faiss.IndexFlatIP(dim)
            index.add(I)
            _, L = index.search(U, args.k)
            t_faiss.append(time.perf_counter() - t)
            c_faiss.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        res = top_x(U, I, args.k, prune=args.prune, **engine)
        t_ours.append(time.perf_counter() - t)
        c_ours.append(time.process_time() - c)
    load_after = os.getloadavg()
    n_check = min(args.check_users, args.users)
    other = top_x(U[:n_check], I, args.k, prune=not args.prune, **engine)
    out = {
        "users": args.users, "items": args.items, "dim": dim, "k": args.k, "threads": args.threads,
        "kind": args.kind, **({"noise": args.noise, **meta} if meta else {}),
        "precision": args.precision, "kernel": args.kernel, "prune": args.prune,
        "skipped_fraction": round(res.skipped_fraction, 4),
        "engine_s": round(min(t_ours), 3), "engine_cpu_s": round(min(c_ours), 3),
        "ids_identical_unpruned": float(np.mean(np.all(other.ids == res.ids[:n_check], axis=1))),
        "ids_identical_brute": float(np.mean(np.all(_brute_ids(U[:n_check], I, args.k) == res.ids[:n_check], axis=1))),
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
    }
    if args.faiss:
        out.update({
            "faiss_s": round(min(t_faiss), 3), "faiss_cpu_s": round(min(c_faiss), 3),
            "speedup": round(min(t_faiss) / min(t_ours), 2), "cpu_speedup": round(min(c_faiss) / min(c_ours), 2),
            "ids_identical_faiss": float(np.mean(np.all(res.ids == L, axis=1))),
            "id_set_agreement": float(np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(res.ids, L)])),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
