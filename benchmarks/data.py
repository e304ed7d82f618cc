"""Benchmark inputs: MovieLens 100k splits and a synthetic ML-25M-shaped set.

The benchmarks read ml-100k straight from ../shared (never copied into the repo)
with a tiny reader of their own, so the baselines (naive FM, popularity) do not
depend on the code they are compared against. The synthetic set reproduces the
*shape* that matters for speed — 162,541 users × 62,423 items, long-tailed item
popularity, one-hot user+item rows — with ratings from a planted FM so the
quality of a trained model on it is meaningful too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from localfm.errors import LocalFMError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALFM_SHARED", REPO.parent / "shared"))
ML100K = SHARED / "datasets" / "ml-100k"

# ML-25M's shape (GroupLens README): 162,541 users, 62,423 movies, 25,000,095 ratings.
ML25M_USERS = 162_541
ML25M_ITEMS = 62_423
ML25M_ROWS = 25_000_095


@dataclass
class BenchConfig:
    """Sizes and switches shared by every benchmark module.

    Three presets (:meth:`preset`): ``full`` (the numbers we publish), ``quick``
    (minutes, for development) and ``smoke`` (seconds, what CI runs to keep the
    harness working). ``synthetic_rows`` is the reduced row count of the
    ML-25M-shaped set; the full 25M rows are behind ``--full-size``.
    """

    mode: str = "full"
    out_dir: Path = field(default_factory=lambda: Path(__file__).resolve().parent / "results")
    ml100k_dir: Path = ML100K
    repeats: int = 3
    plots: bool = True
    seed: int = 0
    # ML-25M-shaped synthetic set
    synthetic_rows: int = 5_000_000
    synthetic_users: int = ML25M_USERS
    synthetic_items: int = ML25M_ITEMS
    # training throughput
    train_factors: tuple[int, ...] = (16, 64, 128)
    train_batches: tuple[int, ...] = (200, 1000, 5000)
    train_grid_rows_large: int = 100_000  # rows of the synthetic set used for the grid
    naive_max_seconds: float = 2.5  # naive FM runs are cut after this (whole batches)
    train_epoch_large: bool = True  # time one full epoch of the synthetic set
    # retrieval
    retrieval_sizes: tuple[tuple[int, int], ...] = ((943, 1682), (20_000, 10_000), (60_000, 30_000),
                                                    (ML25M_USERS, ML25M_ITEMS))
    retrieval_k: int = 100
    retrieval_dim: int = 65
    reference_rows: int = 2000  # queries checked against the float64 reference
    baseline_slice_users: int = 10_000  # numpy/torch users on large catalogues (scaled to all)
    ann_queries: int = 10_000
    # end to end / quality
    e2e_epochs: tuple[int, ...] = (30, 100)
    e2e_ml100k: bool = True  # False: only the synthetic pipeline (previous ml-100k results carried over)
    e2e_sqlite_variant: bool = False  # also rank into SQLite (a second full ranking: cheap only when small)
    quality_splits: tuple[str, ...] = ("ua", "u1")
    quality_epochs: int = 30
    large_e2e: bool = True

    @property
    def quick(self) -> bool:
        return self.mode != "full"

    @property
    def has_ml100k(self) -> bool:
        return (self.ml100k_dir / "u.data").is_file()

    @classmethod
    def preset(cls, mode: str, **overrides: object) -> BenchConfig:
        """The sizes for ``mode`` in {"full", "quick", "smoke"}; keyword overrides win."""
        if mode not in ("full", "quick", "smoke"):
            raise LocalFMError(f"benchmark mode: expected full, quick or smoke, got {mode!r}")
        sizes: dict[str, object] = {}
        if mode == "quick":
            sizes = dict(
                repeats=2, synthetic_rows=300_000, train_factors=(16, 64), train_batches=(200, 1000),
                train_grid_rows_large=50_000, naive_max_seconds=1.5,
                retrieval_sizes=((943, 1682), (20_000, 10_000)), reference_rows=500,
                ann_queries=2000, e2e_epochs=(30,), quality_splits=("ua",), quality_epochs=10,
            )
        elif mode == "smoke":
            sizes = dict(
                repeats=1, plots=True, synthetic_rows=20_000, synthetic_users=2000, synthetic_items=1000,
                train_factors=(8,), train_batches=(500,), train_grid_rows_large=5000,
                naive_max_seconds=0.3, retrieval_sizes=((300, 500),), retrieval_k=20,
                reference_rows=100, ann_queries=200, e2e_epochs=(1,), quality_splits=("ua",),
                quality_epochs=1, e2e_sqlite_variant=True,
            )
        sizes.update(overrides)
        cfg = cls(mode=mode, **sizes)  # type: ignore[arg-type]
        if cfg.synthetic_rows < 1000:
            raise LocalFMError(f"--rows: expected at least 1000 synthetic rows, got {cfg.synthetic_rows}")
        if cfg.repeats < 1:
            raise LocalFMError(f"--repeats: expected a positive integer, got {cfg.repeats}")
        return cfg


@dataclass
class Ratings:
    """A ratings split as 0-based dense index arrays plus the id maps."""

    users: np.ndarray  # int64 0-based user index
    items: np.ndarray  # int64 0-based item index
    ratings: np.ndarray  # float32
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def onehot(self) -> sp.csr_matrix:
        """One-hot [user | item] rows, the layout SageMaker's FM recommender examples use."""
        n = len(self)
        indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
        indices = np.empty(2 * n, dtype=np.int64)
        indices[0::2] = self.users
        indices[1::2] = self.n_users + self.items
        data = np.ones(2 * n, dtype=np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(n, self.n_users + self.n_items))

    def binary(self) -> np.ndarray:
        """SageMaker example label: 1 if rating >= 4."""
        return (self.ratings >= 4).astype(np.float32)

    def subset(self, n: int) -> Ratings:
        return Ratings(self.users[:n], self.items[:n], self.ratings[:n], self.n_users, self.n_items)


def read_ml100k_file(path: Path) -> np.ndarray:
    """Read a tab-separated ml-100k ratings file (user, item, rating, timestamp), file order."""
    if not path.is_file():
        raise LocalFMError(f"{path}: MovieLens 100k split file not found")
    arr = np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)
    if arr.shape[1] != 4:
        raise LocalFMError(f"{path}: expected 4 tab-separated columns, got {arr.shape[1]}")
    return arr


def ml100k_split(cfg: BenchConfig, name: str) -> tuple[Ratings, Ratings]:
    """``name`` in {"ua", "ub", "u1".."u5"}: (train, test) in file order.

    Ids are mapped the way the cloud fixture did (OneHotEncoder fitted on the
    training file: users and items that occur in train, in id order); test rows
    with an item unseen in train are dropped, as in the cloud job.
    """
    d = cfg.ml100k_dir
    tr = read_ml100k_file(d / f"{name}.base")
    te = read_ml100k_file(d / f"{name}.test")
    users = np.unique(tr[:, 0])
    items = np.unique(tr[:, 1])
    te = te[np.isin(te[:, 1], items) & np.isin(te[:, 0], users)]

    def conv(a: np.ndarray) -> Ratings:
        return Ratings(
            np.searchsorted(users, a[:, 0]).astype(np.int64),
            np.searchsorted(items, a[:, 1]).astype(np.int64),
            a[:, 2].astype(np.float32),
            len(users),
            len(items),
        )

    return conv(tr), conv(te)


def ml100k_side_features(cfg: BenchConfig, split: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """User side features (gender, age bucket, occupation) and item genres, one row per index.

    Rows follow :func:`ml100k_split`'s index order. Used for the ids-only vs side
    features quality comparison; these are the usual MovieLens-100k side features.
    """
    d = cfg.ml100k_dir
    tr = read_ml100k_file(d / f"{split}.base")
    users = np.unique(tr[:, 0])
    items = np.unique(tr[:, 1])
    urows = {}
    occs: dict[str, int] = {}
    for line in (d / "u.user").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        uid, age, gender, occ, _zip = line.split("|")
        urows[int(uid)] = (int(age), gender, occ)
        occs.setdefault(occ, len(occs))
    age_edges = [18, 25, 35, 45, 50, 56]  # ML-1M's age buckets
    n_ucols = 2 + (len(age_edges) + 1) + len(occs)
    ur, uc = [], []
    for r, uid in enumerate(users):
        age, gender, occ = urows[int(uid)]
        cols = [0 if gender == "M" else 1, 2 + int(np.searchsorted(age_edges, age, side="right")),
                2 + len(age_edges) + 1 + occs[occ]]
        ur += [r] * len(cols)
        uc += cols
    ufeat = sp.csr_matrix((np.ones(len(ur), np.float32), (ur, uc)), shape=(len(users), n_ucols))
    genres: dict[int, list[int]] = {}
    for line in (d / "u.item").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        genres[int(parts[0])] = [g for g, flag in enumerate(parts[5:]) if flag == "1"]
    n_g = 19
    ir, ic = [], []
    for r, iid in enumerate(items):
        for g in genres.get(int(iid), []):
            ir.append(r)
            ic.append(g)
    ifeat = sp.csr_matrix((np.ones(len(ir), np.float32), (ir, ic)), shape=(len(items), n_g))
    return ufeat, ifeat


def synthetic_ratings(n_rows: int, n_users: int = ML25M_USERS, n_items: int = ML25M_ITEMS,
                      k: int = 8, seed: int = 0) -> Ratings:
    """ML-25M-shaped ratings from a planted rank-``k`` FM.

    Item popularity is Zipf-like (a few blockbusters, a long tail) and user activity
    is skewed, as in MovieLens; this matters for speed because lazy sparse updates
    touch the popular rows over and over. Ratings are the planted score, rescaled to
    a 0.5..5 scale and rounded to half stars.
    """
    rng = np.random.default_rng(seed)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    user_p = rng.gamma(0.6, 1.0, n_users)
    user_p /= user_p.sum()
    users = rng.choice(n_users, size=n_rows, p=user_p).astype(np.int64)
    items = rng.choice(n_items, size=n_rows, p=item_p).astype(np.int64)
    # Shuffle item ids so popularity is not sorted by id (as in the real data).
    perm = rng.permutation(n_items)
    items = perm[items]
    U = rng.standard_normal((n_users, k), dtype=np.float32) / np.sqrt(k)
    V = rng.standard_normal((n_items, k), dtype=np.float32) / np.sqrt(k)
    bu = rng.normal(0, 0.3, n_users).astype(np.float32)
    bi = rng.normal(0, 0.5, n_items).astype(np.float32)
    score = np.empty(n_rows, dtype=np.float32)
    step = 1 << 20
    for s in range(0, n_rows, step):
        e = min(n_rows, s + step)
        score[s:e] = np.einsum("ij,ij->i", U[users[s:e]], V[items[s:e]]) + bu[users[s:e]] + bi[items[s:e]]
    score += rng.normal(0, 0.3, n_rows).astype(np.float32)
    ratings = np.clip(np.round((3.5 + score) * 2) / 2, 0.5, 5.0).astype(np.float32)
    return Ratings(users, items, ratings, n_users, n_items)
