"""Train/test splits: the GroupLens ml-100k splits re-implemented, plus random and leave-last.

GroupLens ships ``u1..u5`` and ``ua``/``ub`` made by ``mku.sh`` and ``allbut.pl``. Checked
row-for-row against the shipped files (``tests/data/test_splits.py``):

- ``uK`` (K = 1..5): test = rows ``20000*(K-1) .. 20000*K - 1`` of ``u.data`` in file order
  (consecutive fifths; for a u.data of other length, fifths rounded up); base = every other row. Both files are then ``sort -k1,1n -k2,2n``: numerically by user,
  then by item.
- ``ua`` / ``ub``: walk ``u.data`` in file order counting each user's ratings; the user's
  1st-10th (ua) or 11th-20th (ub) rating goes to test, everything else to base
  (``allbut.pl``). Both sides are then sorted by user, then item. ua.test has 9,430 rows
  (every ml-100k user has at least 20 ratings).

Every split returns *index arrays* into the source rows, in the order the rows would
appear in the split files, so callers keep timestamps and anything else attached.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LocalFMError
from .interactions import Interactions

GROUPLENS_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


@dataclass(frozen=True)
class Split:
    """Positions of the train and test rows in the source, in split-file order."""

    name: str
    train: np.ndarray
    test: np.ndarray


def _sorted_by_user_item(data: Interactions, index: np.ndarray) -> np.ndarray:
    """``index`` reordered like ``sort -t'\\t' -k1,1n -k2,2n`` (stable for equal keys)."""
    order = np.lexsort((data.item[index], data.user[index]))
    return index[order]


def grouplens_split(data: Interactions, name: str) -> Split:
    """The ml-100k split ``name`` (u1..u5, ua, ub), identical to the shipped files."""
    n = len(data)
    rows = np.arange(n)
    if name in ("u1", "u2", "u3", "u4", "u5"):
        k = int(name[1])
        # mku.sh hard-codes 20,000-row chunks of the 100,000-row u.data; consecutive
        # fifths are the same thing there and still five folds for other sizes.
        chunk = -(-n // 5)
        lo, hi = (k - 1) * chunk, min(k * chunk, n)
        is_test = (rows >= lo) & (rows < hi)
    elif name in ("ua", "ub"):
        first, last = (1, 10) if name == "ua" else (11, 20)
        rank = per_user_rank(data.user)
        is_test = (rank >= first) & (rank <= last)
    else:
        raise LocalFMError(f"split {name!r}: unknown GroupLens split; expected one of {', '.join(GROUPLENS_SPLITS)}", param="split")
    return Split(
        name=name,
        train=_sorted_by_user_item(data, rows[~is_test]),
        test=_sorted_by_user_item(data, rows[is_test]),
    )


def per_user_rank(users: np.ndarray) -> np.ndarray:
    """1-based position of each row among its user's rows, counting in file order."""
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - group_start + 1
    return rank


def random_split(data: Interactions, fraction: float, seed: int) -> Split:
    """A seeded random ``fraction`` of rows to test; both sides keep source order.

    Uses ``numpy.random.default_rng(seed).permutation``, so the same seed and data give
    the same split on every machine and numpy version with the PCG64 stream.
    """
    if not 0.0 < fraction < 1.0:
        raise LocalFMError(f"random split fraction must be in (0, 1), got {fraction}")
    n = len(data)
    n_test = int(round(n * fraction))
    if n_test == 0 or n_test == n:
        raise LocalFMError(f"random split of {n} rows with fraction {fraction} leaves an empty side")
    perm = np.random.default_rng(seed).permutation(n)
    is_test = np.zeros(n, dtype=bool)
    is_test[perm[:n_test]] = True
    rows = np.arange(n)
    return Split(name=f"random:{fraction:g}:{seed}", train=rows[~is_test], test=rows[is_test])


def leave_last_split(data: Interactions, n_last: int) -> Split:
    """Each user's ``n_last`` latest ratings go to test; users with <= n_last ratings stay whole in train.

    "Latest" is by timestamp, ties (and data without timestamps) broken by file order, so
    the split is deterministic. Keeping short histories in train means every test user
    was seen in training, which is what leave-last evaluations assume.
    """
    if n_last < 1:
        raise LocalFMError(f"leave-last split needs N >= 1, got {n_last}")
    n = len(data)
    rows = np.arange(n)
    ts = data.timestamp if data.timestamp is not None else rows
    # Order rows by user, then time descending (newest first), then file position descending.
    order = np.lexsort((-rows, -ts.astype(np.int64), _sort_key(data.user)))
    sorted_users = data.user[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_start = np.repeat(starts, sizes)
    group_size = np.repeat(sizes, sizes)
    newest_rank = np.arange(n) - group_start  # 0 = newest
    chosen = (newest_rank < n_last) & (group_size > n_last)
    is_test = np.zeros(n, dtype=bool)
    is_test[order[chosen]] = True
    return Split(name=f"leave-last:{n_last}", train=rows[~is_test], test=rows[is_test])


def _sort_key(ids: np.ndarray) -> np.ndarray:
    """Integer codes for ids (ints or strings) usable inside ``np.lexsort``."""
    return np.unique(ids, return_inverse=True)[1]


def parse_split(spec: str, *, grouplens_ok: bool) -> tuple[str, tuple]:
    """Validate a ``--split`` value: a GroupLens name, ``random:F:SEED`` or ``leave-last:N``."""
    text = spec.strip()
    if text in GROUPLENS_SPLITS:
        if not grouplens_ok:
            raise LocalFMError(
                f"split {text}: the GroupLens splits need an ml-100k-layout u.data; "
                "use random:FRACTION:SEED or leave-last:N", param="split"
            )
        return "grouplens", (text,)
    kind, _, rest = text.partition(":")
    if kind == "random":
        parts = rest.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            fraction, seed = float(parts[0]), int(parts[1])
            if seed < 0:  # numpy's SeedSequence only takes non-negative seeds
                raise ValueError
        except ValueError:
            raise LocalFMError(f"split {spec!r}: expected random:FRACTION:SEED with an integer SEED >= 0, "
                               "e.g. random:0.2:42", param="split") from None
        if not 0.0 < fraction < 1.0:
            raise LocalFMError(f"split {spec!r}: FRACTION must be in (0, 1)", param="split")
        return "random", (fraction, seed)
    if kind == "leave-last":
        try:
            n_last = int(rest)
        except ValueError:
            n_last = 0
        if n_last < 1:
            raise LocalFMError(f"split {spec!r}: expected leave-last:N with an integer N >= 1", param="split")
        return "leave-last", (n_last,)
    choices = (", ".join(GROUPLENS_SPLITS) + ", ") if grouplens_ok else ""
    raise LocalFMError(f"split {spec!r}: unknown split; expected {choices}random:FRACTION:SEED or leave-last:N", param="split")


def make_split(data: Interactions, spec: str, *, grouplens_ok: bool) -> Split:
    """Apply the split described by ``spec`` (see :func:`parse_split`) to ``data``."""
    kind, params = parse_split(spec, grouplens_ok=grouplens_ok)
    if kind == "grouplens":
        return grouplens_split(data, *params)
    if kind == "random":
        return random_split(data, *params)
    return leave_last_split(data, *params)
