"""Small stand-ins for FMWeights and FeatureSpace, so the math is tested without other modules.

They implement exactly the attributes ``localfm.recommend.vectors`` documents
(``FMLike`` / ``FeatureSpaceLike``); tests that need the real classes import them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class FakeWeights:
    w0: float
    w: np.ndarray
    V: np.ndarray
    predictor_type: str | None = "binary_classifier"


def random_weights(feature_dim: int, num_factors: int, seed: int = 0, scale: float = 0.5) -> FakeWeights:
    rng = np.random.default_rng(seed)
    return FakeWeights(
        w0=float(rng.normal()),
        w=rng.normal(0, scale, feature_dim).astype(np.float32),
        V=rng.normal(0, scale, (feature_dim, num_factors)).astype(np.float32),
    )


@dataclass
class FakeSpace:
    """Columns: user one-hot | user side features | item one-hot | item side features."""

    n_users: int
    n_items: int
    user_side: np.ndarray  # (n_users, su) dense, may be 0 columns
    item_side: np.ndarray  # (n_items, si)
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def feature_dim(self) -> int:
        return self.n_users + self.user_side.shape[1] + self.n_items + self.item_side.shape[1]

    def _rows(self, ids, all_ids):
        if ids is None:
            return np.arange(len(all_ids))
        lookup = {v: i for i, v in enumerate(np.asarray(all_ids).tolist())}
        return np.array([lookup[v] for v in np.asarray(ids).tolist()], dtype=np.int64)

    def user_matrix(self, user_ids=None) -> sp.csr_matrix:
        rows = self._rows(user_ids, self.user_ids)
        M = np.zeros((len(rows), self.feature_dim))
        M[np.arange(len(rows)), rows] = 1.0
        M[:, self.n_users : self.n_users + self.user_side.shape[1]] = self.user_side[rows]
        return sp.csr_matrix(M)

    def item_matrix(self, item_ids=None) -> sp.csr_matrix:
        rows = self._rows(item_ids, self.item_ids)
        off = self.n_users + self.user_side.shape[1]
        M = np.zeros((len(rows), self.feature_dim))
        M[np.arange(len(rows)), off + rows] = 1.0
        M[:, off + self.n_items :] = self.item_side[rows]
        return sp.csr_matrix(M)


def make_space(n_users: int, n_items: int, su: int = 0, si: int = 0, seed: int = 0) -> FakeSpace:
    rng = np.random.default_rng(seed)
    # Side features: some binary (genres), some real-valued (age scaled) so x² != x matters.
    us = (rng.random((n_users, su)) < 0.4).astype(np.float64) * rng.choice([1.0, 0.5, 2.0], (n_users, su))
    it = (rng.random((n_items, si)) < 0.3).astype(np.float64) * rng.choice([1.0, 0.7, 1.5], (n_items, si))
    return FakeSpace(
        n_users=n_users,
        n_items=n_items,
        user_side=us,
        item_side=it,
        user_ids=np.arange(1, n_users + 1, dtype=np.int64) * 10,
        item_ids=np.arange(1, n_items + 1, dtype=np.int64) * 7,
    )


def naive_fm_score(weights: FakeWeights, x: np.ndarray) -> float:
    """Textbook FM with the explicit double sum over feature pairs (O(n²)): the reference."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    V = np.asarray(weights.V, dtype=np.float64)
    w = np.asarray(weights.w, dtype=np.float64)
    nz = np.flatnonzero(x)
    total = float(weights.w0) + float(w @ x)
    for a in range(len(nz)):
        for b in range(a + 1, len(nz)):
            j, l = nz[a], nz[b]
            total += float(V[j] @ V[l]) * x[j] * x[l]
    return total
