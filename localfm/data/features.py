"""The feature space: ID maps, column layout and side features, saved as ``features.json``.

SageMaker FM sees only column indices, so everything downstream (repackaging the model
into user/item vectors, recommending, cold start) needs the exact map from original
ids to columns that training used. :class:`FeatureSpace` is that map, written next to
the RecordIO files and loaded by every later step.

Column layout (the one SageMaker notebooks use): one column per user in ascending id
order, then one per item in ascending id order, then optional side-feature blocks
(user side first, item side second). A training row for (u, i) is
``user_matrix([u]) + item_matrix([i])``: the user's one-hot column plus the user's side
features, plus the item's one-hot column plus the item's side features.

Side-feature values are stored *inside* features.json as CSR triplets (absolute column
indices) keyed by entity id, including entities without an id column (a user who is in
u.user but not in the training split under ``--columns train``); that is what makes
cold-start vectors possible. MovieLens catalogs are small (ml-1m: 6,040 users and 3,883
movies), so one self-contained JSON file beats a sibling binary.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from ..io.atomic import atomic_write
from .ids import distinct, lookup
from .movielens import AGE_GROUP_LABELS, ItemTable, UserTable

FORMAT = "localfm-features"
VERSION = 1
#: Rows whose ids :meth:`FeatureSpace.encode` looks up at once (bounds its temporaries).
_ENCODE_CHUNK = 1 << 20


@dataclass(frozen=True)
class Block:
    """A contiguous run of columns: ``[offset, offset + size)``; ``labels`` name side columns."""

    name: str
    offset: int
    size: int
    labels: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "offset": self.offset, "size": self.size}
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return out


@dataclass(frozen=True)
class SideFeatures:
    """Side-feature rows per entity: ``matrix[k]`` (absolute columns) belongs to ``ids[k]``.

    ``ids`` are sorted ascending so lookups are a binary search.
    """

    ids: np.ndarray
    matrix: sp.csr_matrix

    def index(self, ids: np.ndarray) -> np.ndarray:
        return lookup(self.ids, ids)


@dataclass
class FeatureSpace:
    """ID maps + column layout + side features; see the module docstring for the layout."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    blocks: list[Block]
    user_side: SideFeatures | None = None
    item_side: SideFeatures | None = None
    label: str = "rating"
    split: str = ""
    columns: str = "train"
    features: str = "ids"
    source: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ layout

    @property
    def feature_dim(self) -> int:
        return max((b.offset + b.size for b in self.blocks), default=0)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def user_offset(self) -> int:
        """Column of the first user id (0 in the standard layout)."""
        return self.block("user_id").offset

    @property
    def item_offset(self) -> int:
        """Column of the first item id (= number of users in the standard layout)."""
        return self.block("item_id").offset

    @property
    def user_id_kind(self) -> str:
        """"int" (int64 ids) or "str" (string ids); users and items may differ."""
        return _kind(self.user_ids)

    @property
    def item_id_kind(self) -> str:
        return _kind(self.item_ids)

    # ------------------------------------------------------------------ lookups

    def user_index(self, ids: Sequence[Any] | np.ndarray, *, allow_unknown: bool = False) -> np.ndarray:
        """Row of each user id in :attr:`user_ids` (= its one-hot column minus :attr:`user_offset`).

        Unknown ids raise :class:`LocalFMError` naming the first one, or map to -1 with
        ``allow_unknown=True``.
        """
        return self._index(self.user_ids, ids, "user", allow_unknown)

    def item_index(self, ids: Sequence[Any] | np.ndarray, *, allow_unknown: bool = False) -> np.ndarray:
        """Row of each item id in :attr:`item_ids` (column = :attr:`item_offset` + row)."""
        return self._index(self.item_ids, ids, "item", allow_unknown)

    def _index(self, known: np.ndarray, ids: Any, what: str, allow_unknown: bool) -> np.ndarray:
        query = as_ids(ids, known.dtype)
        index = lookup(known, query)
        if not allow_unknown and np.any(index < 0):
            bad = query[np.flatnonzero(index < 0)[0]]
            raise LocalFMError(
                f"{what} id {_plain(bad)!r} has no column in this feature space "
                f"({len(known)} {what}s, columns mode {self.columns!r})"
            )
        return index

    # ------------------------------------------------------------------ matrices

    def user_matrix(self, user_ids: Sequence[Any] | np.ndarray | None = None, *,
                    allow_unknown_ids: bool = False) -> sp.csr_matrix:
        """(n, feature_dim) float32: each user's one-hot id column plus its side features.

        ``user_ids=None`` means every user with a column, in column order. With
        ``allow_unknown_ids=True`` a user without an id column (cold start) gets its side
        features only, and a user unknown everywhere gets an empty row.
        """
        ids = self.user_ids if user_ids is None else user_ids
        return self._entity_matrix(ids, self.user_ids, self.user_offset, self.user_side, "user", allow_unknown_ids)

    def item_matrix(self, item_ids: Sequence[Any] | np.ndarray | None = None, *,
                    allow_unknown_ids: bool = False) -> sp.csr_matrix:
        """(n, feature_dim) float32: each item's one-hot id column plus its side features."""
        ids = self.item_ids if item_ids is None else item_ids
        return self._entity_matrix(ids, self.item_ids, self.item_offset, self.item_side, "item", allow_unknown_ids)

    def encode(self, user_ids: Sequence[Any] | np.ndarray, item_ids: Sequence[Any] | np.ndarray, *,
               allow_unknown_ids: bool = False) -> sp.csr_matrix:
        """Training/test rows for (user, item) pairs: ``user_matrix(u) + item_matrix(i)``.

        Column indices within each row are sorted ascending (user column, item column,
        then side columns), as scikit-learn's OneHotEncoder produces them, so the
        RecordIO records match what SageMaker notebooks write.
        """
        if _no_side(self.user_side) and _no_side(self.item_side):
            return self._encode_ids(user_ids, item_ids, allow_unknown_ids)
        users = self.user_matrix(user_ids, allow_unknown_ids=allow_unknown_ids)
        items = self.item_matrix(item_ids, allow_unknown_ids=allow_unknown_ids)
        if users.shape[0] != items.shape[0]:
            raise LocalFMError(f"encode: {users.shape[0]} user ids but {items.shape[0]} item ids")
        out = (users + items).tocsr()
        out.sort_indices()
        return out.astype(np.float32)

    def _encode_ids(self, user_ids: Any, item_ids: Any, allow_unknown: bool) -> sp.csr_matrix:
        """:meth:`encode` without side features, built directly: the same matrix (values,
        sorted indices, index dtypes) without the general path's four intermediate sparse
        matrices, and with ids looked up in chunks, so beyond the result only a few MB of
        temporaries exist (the general path held ~50 bytes a row more: 1 GB at 25M rows)."""
        uq, iq = np.atleast_1d(np.asarray(user_ids)), np.atleast_1d(np.asarray(item_ids))
        n, dim = len(uq), self.feature_dim
        if n != len(iq):  # the general path's order: unknown users, unknown items, then this
            self._index(self.user_ids, as_ids(uq, self.user_ids.dtype), "user", allow_unknown)
            self._index(self.item_ids, as_ids(iq, self.item_ids.dtype), "item", allow_unknown)
            raise LocalFMError(f"encode: {n} user ids but {len(iq)} item ids")
        idx = np.int32 if max(dim, 2 * n) < np.iinfo(np.int32).max else np.int64
        # cols[r] = (row r's column in the left block, in the right block), -1 where unknown;
        # blocks never overlap, so this is each row's sorted order.
        cols = np.empty((n, 2), dtype=idx)
        user_slot = 0 if self.user_offset < self.item_offset else 1
        for slot, query, known, offset, what in ((user_slot, uq, self.user_ids, self.user_offset, "user"),
                                                 (1 - user_slot, iq, self.item_ids, self.item_offset, "item")):
            for lo in range(0, n, _ENCODE_CHUNK):  # users first, in row order: the first bad id is reported
                pos = self._index(known, as_ids(query[lo:lo + _ENCODE_CHUNK], known.dtype), what, allow_unknown)
                cols[lo:lo + len(pos), slot] = np.where(pos >= 0, pos + offset, -1)
        present = cols >= 0
        if present.all():
            indptr = np.arange(0, 2 * n + 1, 2, dtype=idx)
            indices = cols.reshape(-1)
        else:
            indptr = np.r_[0, np.cumsum(present.sum(axis=1))].astype(idx)
            indices = cols[present]
        del present
        return sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(n, dim), copy=False)

    def _entity_matrix(self, ids: Any, known: np.ndarray, offset: int, side: SideFeatures | None,
                       what: str, allow_unknown: bool) -> sp.csr_matrix:
        query = as_ids(ids, known.dtype)
        index = self._index(known, query, what, allow_unknown)
        n, dim = len(query), self.feature_dim
        has = index >= 0
        indptr = np.r_[0, np.cumsum(has)].astype(np.int64)
        onehot = sp.csr_matrix(
            (np.ones(int(has.sum()), dtype=np.float32), (offset + index[has]).astype(np.int64), indptr),
            shape=(n, dim),
        )
        if side is None or side.matrix.nnz == 0:
            return onehot
        rows = side.index(query)
        padded = sp.vstack([side.matrix, sp.csr_matrix((1, dim), dtype=np.float32)], format="csr")
        gathered = padded[np.where(rows >= 0, rows, side.matrix.shape[0])]
        out = (onehot + gathered).tocsr().astype(np.float32)
        out.sort_indices()
        return out

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "feature_dim": self.feature_dim,
            "user_id_kind": self.user_id_kind,
            "item_id_kind": self.item_id_kind,
            "label": self.label,
            "split": self.split,
            "columns": self.columns,
            "features": self.features,
            "source": self.source,
            "blocks": [b.to_dict() for b in self.blocks],
            "user_ids": _plain_list(self.user_ids),
            "item_ids": _plain_list(self.item_ids),
            "user_side": _side_to_dict(self.user_side),
            "item_side": _side_to_dict(self.item_side),
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> None:
        """Write features.json atomically (temp file + rename)."""
        # json.dumps, not json.dump: dump streams through the pure-Python encoder (0.6 s for
        # the 200k ids of an ML-25M-sized space), dumps uses the C one; the bytes are the same.
        text = json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)
        with atomic_write(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.write("\n")

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpace:
        from ..io.jsonfile import read_json

        return cls.from_dict(read_json(path, what="features file"), where=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "features.json") -> FeatureSpace:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LocalFMError(f"{where}: not a localfm features file (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise LocalFMError(f"{where}: unsupported features version {data.get('version')!r} (expected {VERSION})")
        try:
            user_dtype = _dtype(data["user_id_kind"])
            item_dtype = _dtype(data["item_id_kind"])
            space = cls(
                user_ids=np.asarray(data["user_ids"], dtype=user_dtype),
                item_ids=np.asarray(data["item_ids"], dtype=item_dtype),
                blocks=[Block(b["name"], int(b["offset"]), int(b["size"]), b.get("labels")) for b in data["blocks"]],
                label=data["label"],
                split=data["split"],
                columns=data["columns"],
                features=data["features"],
                source=data.get("source", {}),
                extra=data.get("extra", {}),
            )
            dim = space.feature_dim
            space.user_side = _side_from_dict(data.get("user_side"), user_dtype, dim)
            space.item_side = _side_from_dict(data.get("item_side"), item_dtype, dim)
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalFMError(f"{where}: malformed features file ({type(exc).__name__}: {exc})") from None
        space.validate(where)
        if data.get("feature_dim") != space.feature_dim:
            raise LocalFMError(f"{where}: feature_dim {data.get('feature_dim')} does not match the blocks ({space.feature_dim})")
        return space

    def validate(self, where: str = "features") -> None:
        """Check the invariants lookups rely on (sorted unique ids, blocks sized to the id maps)."""
        for what, ids in (("user_ids", self.user_ids), ("item_ids", self.item_ids)):
            if ids.ndim != 1:
                raise LocalFMError(f"{where}: {what} must be a flat list of ids")
            if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
                raise LocalFMError(f"{where}: {what} must be unique and ascending")
        spans = sorted((b.offset, b.size, b.name) for b in self.blocks)
        for (off, size, name), nxt in zip(spans, spans[1:] + [None]):
            # Column indices are built from these; a negative or overlapping block would
            # surface much later as a scipy ValueError or silently mixed features.
            if off < 0 or size < 0:
                raise LocalFMError(f"{where}: block {name!r} has offset {off} and size {size}, expected >= 0")
            if nxt is not None and off + size > nxt[0]:
                raise LocalFMError(f"{where}: blocks {name!r} and {nxt[2]!r} overlap")
        names = {b.name for b in self.blocks}
        missing = [name for name in ("user_id", "item_id") if name not in names]
        if missing:
            # Every lookup goes through block("user_id"/"item_id"); without them it is a KeyError later.
            raise LocalFMError(f"{where}: no {missing[0]!r} block (expected user_id and item_id blocks)")
        if self.block("user_id").size != len(self.user_ids) or self.block("item_id").size != len(self.item_ids):
            raise LocalFMError(f"{where}: user_id/item_id block sizes do not match the id lists")


# ---------------------------------------------------------------------- helpers


def _no_side(side: SideFeatures | None) -> bool:
    return side is None or side.matrix.nnz == 0


def _kind(ids: np.ndarray) -> str:
    return "int" if ids.dtype.kind in "iu" else "str"


def _dtype(kind: Any) -> Any:
    if kind == "int":
        return np.int64
    if kind == "str":
        return str
    raise ValueError(f"id kind must be 'int' or 'str', got {kind!r}")


def _plain(x: Any) -> Any:
    """numpy scalar → plain Python int/str for JSON and messages."""
    return x.item() if isinstance(x, np.generic) else x


def _plain_list(ids: np.ndarray) -> list[Any]:
    """``[_plain(x) for x in ids]`` at C speed for the id arrays localfm builds (int64 or str)."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iuU":
        return ids.tolist()
    return [_plain(x) for x in ids]


def as_ids(ids: Any, dtype: np.dtype) -> np.ndarray:
    """Coerce query ids to the id map's kind (int ids accept integral floats and digit strings).

    The one id coercion of localfm: user lists, allow/deny lists and interaction files
    all go through it, so "12", 12 and 12.0 name the same user everywhere.
    """
    arr = np.atleast_1d(np.asarray(ids))
    if dtype.kind in "iu":
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64)
        if arr.size == 0:
            return arr.astype(np.int64)
        try:
            as_float = arr.astype(np.float64)
        except (TypeError, ValueError):
            bad = next(x for x in arr if not _is_int_like(x))
            raise LocalFMError(f"id {_plain(bad)!r}: expected an integer id") from None
        if not np.all(np.isfinite(as_float) & (as_float == np.round(as_float))):
            raise LocalFMError("ids: expected integer ids")
        return as_float.astype(np.int64)
    return arr.astype(str)


def _is_int_like(x: Any) -> bool:
    try:
        return float(x) == int(float(x))
    except (TypeError, ValueError):
        return False


def _side_to_dict(side: SideFeatures | None) -> dict[str, Any] | None:
    if side is None:
        return None
    m = side.matrix
    return {
        "ids": _plain_list(side.ids),
        "indptr": m.indptr.astype(np.int64).tolist(),
        "indices": m.indices.astype(np.int64).tolist(),
        "data": m.data.astype(np.float32).astype(np.float64).tolist(),  # each float32 exactly, as a double
    }


def _side_from_dict(data: Any, dtype: Any, dim: int) -> SideFeatures | None:
    if data is None:
        return None
    ids = np.asarray(data["ids"], dtype=dtype)
    indptr = np.asarray(data["indptr"], dtype=np.int64)
    indices = np.asarray(data["indices"], dtype=np.int64)
    values = np.asarray(data["data"], dtype=np.float32)
    if len(indptr) != len(ids) + 1 or indptr[-1] != len(indices) or len(indices) != len(values):
        raise ValueError("side features: indptr/indices/data lengths are inconsistent")
    if len(indices) and (indices.min() < 0 or indices.max() >= dim):
        raise ValueError("side features: column index out of range")
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        raise ValueError("side features: ids must be unique and ascending")
    return SideFeatures(ids=ids, matrix=sp.csr_matrix((values, indices, indptr), shape=(len(ids), dim)))


# ---------------------------------------------------------------------- building


def build_feature_space(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    *,
    users: UserTable | None = None,
    items: ItemTable | None = None,
    multi_hot: str = "ones",
    label: str = "rating",
    split: str = "",
    columns: str = "train",
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> FeatureSpace:
    """Lay out columns for ``user_ids`` then ``item_ids`` (both sorted here), plus side blocks.

    ``users`` (a :class:`UserTable`) adds age-group, gender and occupation blocks (covering
    every user in the table, with or without an id column); ``items`` (an :class:`ItemTable`) adds a
    genre block, multi-hot with weight 1 per genre (``multi_hot="ones"``) or 1/#genres
    (``"normalized"``, each movie's genre weights sum to 1).
    """
    if multi_hot not in ("ones", "normalized"):
        raise LocalFMError(f"multi_hot {multi_hot!r}: expected ones or normalized", param="multi_hot")
    user_ids = distinct(user_ids)
    item_ids = distinct(item_ids)
    blocks = [Block("user_id", 0, len(user_ids)), Block("item_id", len(user_ids), len(item_ids))]
    offset = len(user_ids) + len(item_ids)
    user_parts: list[tuple[np.ndarray, int]] = []
    if users is not None:
        genders = sorted(set(users.gender.tolist()))
        for name, labels, codes in (
            ("user_age", list(AGE_GROUP_LABELS), users.age_group()),
            ("user_gender", genders, np.searchsorted(np.asarray(genders), users.gender)),
            ("user_occupation", list(users.occupations),
             np.asarray([users.occupations.index(o) for o in users.occupation.tolist()], dtype=np.int64)),
        ):
            blocks.append(Block(name, offset, len(labels), labels))
            user_parts.append((np.asarray(codes, dtype=np.int64), offset))
            offset += len(labels)
    genre_offset = offset
    if items is not None:
        blocks.append(Block("item_genre", offset, len(items.genre_names), list(items.genre_names)))
        offset += len(items.genre_names)
    dim = offset

    user_side = None
    if users is not None:
        order = np.argsort(users.ids)
        n = len(users.ids)
        cols = np.stack([off + codes[order] for codes, off in user_parts], axis=1)
        user_side = SideFeatures(
            ids=users.ids[order],
            matrix=sp.csr_matrix(
                (np.ones(cols.size, dtype=np.float32), cols.ravel(), np.arange(0, cols.size + 1, cols.shape[1])),
                shape=(n, dim),
            ),
        )
    item_side = None
    if items is not None:
        order = np.argsort(items.ids)
        genres = np.asarray(items.genres, dtype=np.float32)[order]
        if multi_hot == "normalized":
            counts = genres.sum(axis=1, keepdims=True)
            genres = np.divide(genres, counts, out=np.zeros_like(genres), where=counts > 0)
        dense = sp.csr_matrix(genres)
        matrix = sp.csr_matrix(
            (dense.data.astype(np.float32), dense.indices + genre_offset, dense.indptr), shape=(len(order), dim)
        )
        item_side = SideFeatures(ids=items.ids[order], matrix=matrix)
    space = FeatureSpace(
        user_ids=user_ids,
        item_ids=item_ids,
        blocks=blocks,
        user_side=user_side,
        item_side=item_side,
        label=label,
        split=split,
        columns=columns,
        features="ids+side" if (users is not None or items is not None) else "ids",
        source=source or {},
        extra=extra or {},
    )
    space.validate()
    return space
