"""Baselines a recommender must beat, on the shared protocol: popularity and implicit ALS.

Popularity is built in (:func:`localfm.experiments.protocol.rank_popularity`). ALS comes
from the ``implicit`` library (the optional ``[baselines]`` extra), never hand-written:
a hand-rolled ALS that underperforms would flatter every model compared with it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from .protocol import Protocol, _pad


@dataclass(frozen=True)
class ALSConfig:
    """implicit's AlternatingLeastSquares settings (confidence = 1 + alpha for a rated pair)."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0


def train_matrix(protocol: Protocol) -> sp.csr_matrix:
    """(all features.json users, items) 0/1 CSR of the training ratings."""
    keep = (protocol.train_users >= 0) & (protocol.train_items >= 0)
    M = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (protocol.train_users[keep], protocol.train_items[keep])),
        shape=(len(protocol.space.user_ids), protocol.n_items),
    )
    M.sum_duplicates()
    M.data[:] = 1.0
    return M


def rank_als(protocol: Protocol, k: int, config: ALSConfig = ALSConfig()) -> np.ndarray:
    """(test users, k) item rows from implicit's ALS, trained on the training ratings, rated items filtered."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows) with a BLAS thread pool
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        raise LocalFMError(
            "baselines: als needs the implicit library: pip install 'localfm[baselines]'"
        ) from None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn / implicit's deps
        threadpool_limits = None
    user_items = train_matrix(protocol)
    with warnings.catch_warnings():  # "OpenBLAS uses N threads": limited to 1 for the fit below
        warnings.simplefilter("ignore", RuntimeWarning)
        model = AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            random_state=config.seed,
        )
    limit = threadpool_limits(1, "blas") if threadpool_limits is not None else None
    try:
        model.fit(user_items, show_progress=False)
        ids, _ = model.recommend(protocol.user_rows, user_items[protocol.user_rows], N=k,
                                 filter_already_liked_items=True)
    finally:
        if limit is not None:
            limit.unregister()
    ids = np.asarray(ids, dtype=np.int64).reshape(protocol.n_users, -1)
    return _pad(np.where(ids < 0, -1, ids), k)
