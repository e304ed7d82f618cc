"""What you would use otherwise: the baselines localfm is measured against.

- :func:`train_naive_fm`: the FM everyone writes first in PyTorch — embeddings for
  the linear and factor terms, the O(nk) sum-of-squares trick, autograd, dense
  ``torch.optim.Adam``, one Python step per mini-batch.
- :func:`topk_numpy` / :func:`topk_torch`: chunked matmul + argpartition / topk.
- :func:`topk_faiss_flat`: FAISS ``IndexFlatIP.search`` on the same vectors.
- :func:`topk_exact64`: a float64 reference used to judge every engine's results.
- :func:`popularity_scores`: most-rated-items recommender for ranking quality.

Also the ranking metrics (precision/recall/NDCG@k) shared by the quality benchmark.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from localfm.progress import progress


# ---------------------------------------------------------------- naive autograd FM
@dataclass
class NaiveFMResult:
    seconds: float
    samples: int
    final_loss: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def train_naive_fm(fields: np.ndarray, y: np.ndarray, n_features: int, num_factors: int,
                   batch_size: int, epochs: int = 1, binary: bool = True, lr: float = 0.01,
                   max_seconds: float | None = None, seed: int = 0, threads: int | None = 1) -> NaiveFMResult:
    """Train the textbook autograd FM on rows with one active feature per field.

    ``fields`` is (n, f) int64 feature indices (for the recommender: user column,
    item column), all with value 1. Stops early after ``max_seconds`` (whole
    batches only) so throughput on large sets can be sampled; samples/s stays
    meaningful because it divides the samples actually processed by the time spent.

    ``threads`` (default 1, what localfm's trainer uses) sets torch's intra-op
    threads for the run: with torch's default (all cores) every small op pays a
    thread-pool synchronisation, which on a busy 2-core machine made the naive FM
    10-100× slower — a baseline that weak would flatter localfm.
    """
    import torch

    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train_naive(fields, y, n_features, num_factors, batch_size, epochs, binary, lr,
                            max_seconds, seed)
    finally:
        torch.set_num_threads(saved)


def _train_naive(fields: np.ndarray, y: np.ndarray, n_features: int, num_factors: int, batch_size: int,
                 epochs: int, binary: bool, lr: float, max_seconds: float | None, seed: int) -> NaiveFMResult:
    import torch

    torch.manual_seed(seed)
    w0 = torch.zeros(1, requires_grad=True)
    w = torch.nn.Embedding(n_features, 1)
    V = torch.nn.Embedding(n_features, num_factors)
    torch.nn.init.normal_(w.weight, std=0.01)
    torch.nn.init.normal_(V.weight, std=0.001)
    opt = torch.optim.Adam([w0, *w.parameters(), *V.parameters()], lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.MSELoss()
    X = torch.from_numpy(np.ascontiguousarray(fields, dtype=np.int64))
    Y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    n = X.shape[0]
    done = 0
    loss_val = float("nan")
    start = time.perf_counter()
    for _ in range(epochs):
        for s in range(0, n, batch_size):
            xb, yb = X[s:s + batch_size], Y[s:s + batch_size]
            v = V(xb)  # (B, f, k)
            inter = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
            out = w0 + w(xb).sum((1, 2)) + inter
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += xb.shape[0]
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                loss_val = float(loss.detach())
                return NaiveFMResult(time.perf_counter() - start, done, loss_val)
        loss_val = float(loss.detach())
    return NaiveFMResult(time.perf_counter() - start, done, loss_val)


# ---------------------------------------------------------------- exact top-k baselines
def _sort_topk(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def topk_numpy(queries: np.ndarray, items: np.ndarray, k: int, chunk: int = 2048,
               show: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Chunked ``queries @ items.T`` + ``argpartition``; best first."""
    n = queries.shape[0]
    k = min(k, items.shape[0])
    out_s = np.empty((n, k), dtype=np.float32)
    out_i = np.empty((n, k), dtype=np.int64)
    itemsT = np.ascontiguousarray(items.T)
    for s in progress(range(0, n, chunk), desc="numpy top-k", disable=not show):
        S = queries[s:s + chunk] @ itemsT
        if k < S.shape[1]:
            idx = np.argpartition(S, S.shape[1] - k, axis=1)[:, -k:]
        else:
            idx = np.broadcast_to(np.arange(S.shape[1]), S.shape).copy()
        sc = np.take_along_axis(S, idx, 1)
        out_s[s:s + chunk], out_i[s:s + chunk] = _sort_topk(sc, idx)
    return out_s, out_i


def topk_torch(queries: np.ndarray, items: np.ndarray, k: int, chunk: int = 2048,
               show: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Chunked ``torch.mm`` + ``torch.topk``; best first."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    itemsT = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32)).T.contiguous()
    k = min(k, items.shape[0])
    out_s = torch.empty((q.shape[0], k), dtype=torch.float32)
    out_i = torch.empty((q.shape[0], k), dtype=torch.int64)
    with torch.inference_mode():
        for s in progress(range(0, q.shape[0], chunk), desc="torch top-k", disable=not show):
            S = torch.mm(q[s:s + chunk], itemsT)
            v, i = torch.topk(S, k, dim=1, largest=True, sorted=True)
            out_s[s:s + chunk], out_i[s:s + chunk] = v, i
    return out_s.numpy(), out_i.numpy()


def topk_faiss_flat(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS ``IndexFlatIP``: build on the items, ``index.search`` all queries (build included)."""
    import faiss

    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    D, I = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, items.shape[0]))
    return D, I


def topk_exact64(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference top-k (for a sample of queries: it is slow on purpose)."""
    S = queries.astype(np.float64) @ items.astype(np.float64).T
    k = min(k, items.shape[0])
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, idx, 1), idx


def agreement(ids: np.ndarray, ref_scores: np.ndarray, ref_ids: np.ndarray,
              queries: np.ndarray, items: np.ndarray, rtol: float = 1e-5) -> dict[str, float]:
    """How an engine's top-k compares with the float64 reference, on the reference's rows.

    - ``recall``: mean |ids ∩ ref| / k (what approximate indexes are judged on);
    - ``identical_sets``: rows whose id set equals the reference's exactly;
    - ``exact_up_to_ties``: rows where every returned id's exact score is at least
      the reference's k-th score minus float32 rounding — i.e. a correct top-k that
      may only differ from the reference by the choice among (near-)tied items.
    """
    n, k = ref_ids.shape
    ids = ids[:n, :k]
    inter = np.array([len(np.intersect1d(a, b)) for a, b in zip(ids, ref_ids)])
    same = inter == k
    q64 = queries[:n].astype(np.float64)
    got = np.einsum("ij,ikj->ik", q64, items.astype(np.float64)[np.clip(ids, 0, None)])
    got = np.where(ids < 0, -np.inf, got)
    kth = ref_scores[:, -1:]
    scale = np.abs(q64) @ np.abs(items.astype(np.float64)).max(0)
    tol = rtol * np.maximum(scale[:, None], 1.0)
    ok = (got >= kth - tol).all(axis=1) & (ids.shape[1] == k)
    return {
        "recall": float(inter.mean() / k),
        "identical_sets": float(same.mean()),
        "exact_up_to_ties": float(ok.mean()),
        "rows_checked": int(n),
    }


# ---------------------------------------------------------------- ranking quality
def popularity_scores(train_items: np.ndarray, n_items: int,
                      train_ratings: np.ndarray | None = None, min_rating: float = 4.0) -> np.ndarray:
    """Item scores = how often the item was rated >= min_rating in training (ties by count)."""
    count = np.bincount(train_items, minlength=n_items).astype(np.float64)
    if train_ratings is None:
        return count
    liked = np.bincount(train_items[train_ratings >= min_rating], minlength=n_items)
    return liked + count / (count.max() + 1.0)


def ranking_metrics(score_fn: Callable[[np.ndarray], np.ndarray], n_users: int, n_items: int, train_users: np.ndarray,
                    train_items: np.ndarray, test_users: np.ndarray, test_items: np.ndarray,
                    test_ratings: np.ndarray, k: int = 10, min_rating: float = 4.0,
                    chunk: int = 1024) -> dict[str, float]:
    """Precision/recall/NDCG@k with rating >= min_rating as relevant, seen items excluded.

    ``score_fn(user_index_array) -> (len, n_items) scores``. Users without any
    relevant test item are skipped (they have no possible hit), the usual protocol.
    """
    import scipy.sparse as sp

    seen = sp.csr_matrix((np.ones(len(train_users), bool), (train_users, train_items)),
                         shape=(n_users, n_items))
    rel_mask = test_ratings >= min_rating
    rel = sp.csr_matrix((np.ones(int(rel_mask.sum()), bool), (test_users[rel_mask], test_items[rel_mask])),
                        shape=(n_users, n_items))
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    prec, rec, ndcg = [], [], []
    for s in range(0, len(users), chunk):
        ub = users[s:s + chunk]
        S = np.asarray(score_fn(ub), dtype=np.float64)
        S[seen[ub].toarray()] = -np.inf
        top = np.argpartition(-S, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(S, top, 1), axis=1, kind="stable"), 1)
        R = rel[ub].toarray()
        hits = np.take_along_axis(R, top, 1)
        n_rel = R.sum(1)
        prec.append(hits.sum(1) / k)
        rec.append(hits.sum(1) / n_rel)
        ideal = np.array([discounts[: min(int(m), k)].sum() for m in n_rel])
        ndcg.append((hits * discounts).sum(1) / ideal)
    return {
        f"precision@{k}": float(np.concatenate(prec).mean()),
        f"recall@{k}": float(np.concatenate(rec).mean()),
        f"ndcg@{k}": float(np.concatenate(ndcg).mean()),
        "users_evaluated": int(len(users)),
    }
