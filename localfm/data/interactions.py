"""The one in-memory shape every reader produces: columns of (user, item, rating, timestamp).

Readers (MovieLens layouts, generic CSV/Parquet) all return :class:`Interactions`, so
splits, feature encoding and ``prepare`` never care where the rows came from. Row order
is meaningful: it is the *file order* of the source, which the GroupLens splits and
SageMaker's unshuffled training (batches are taken in file order) both depend on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LocalFMError
from .ids import distinct


@dataclass(frozen=True)
class Interactions:
    """Parallel columns, one entry per rating, in source (file) order.

    ``user``/``item`` hold the original ids: int64 for MovieLens and integer columns,
    numpy unicode strings for generic data whose ids are not integers. ``rating`` is
    float32 (MovieLens ratings are small exact decimals such as 3.5). ``timestamp`` is
    int64 seconds since the epoch, or None when the source has no timestamp.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.user)
        lengths = {len(self.item), len(self.rating)}
        if self.timestamp is not None:
            lengths.add(len(self.timestamp))
        if lengths != {n}:
            raise ValueError("Interactions columns must have equal lengths")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Interactions:
        """Rows at ``index`` (integer positions or a boolean mask), in that order."""
        return Interactions(
            user=self.user[index],
            item=self.item[index],
            rating=self.rating[index],
            timestamp=None if self.timestamp is None else self.timestamp[index],
        )

    @property
    def n_users(self) -> int:
        return int(len(distinct(self.user)))

    @property
    def n_items(self) -> int:
        return int(len(distinct(self.item)))


def parse_label(spec: str) -> tuple[str, float | None]:
    """``"rating"`` → ("rating", None); ``"binary:4"`` → ("binary", 4.0).

    These are the two label modes SageMaker FM notebooks use: the raw rating for
    ``predictor_type=regressor`` and ``1.0 if rating >= T`` for ``binary_classifier``.
    """
    text = spec.strip()
    if text == "rating":
        return "rating", None
    kind, sep, threshold = text.partition(":")
    if kind == "binary" and sep:
        try:
            value = float(threshold)
        except ValueError:
            value = float("nan")
        if np.isfinite(value):
            return "binary", value
    raise LocalFMError(f"label {spec!r}: expected 'rating' or 'binary:T' with a number T (e.g. binary:4)", param="label")


def make_labels(rating: np.ndarray, spec: str) -> np.ndarray:
    """float32 labels for ``rating`` under label mode ``spec`` (see :func:`parse_label`)."""
    kind, threshold = parse_label(spec)
    if kind == "rating":
        return np.asarray(rating, dtype=np.float32)
    return (np.asarray(rating, dtype=np.float64) >= float(threshold)).astype(np.float32)
