"""Numba kernels for the exact engine: one pass over a score block into per-user top-k heaps.

Why a kernel: after the first few item blocks almost no score beats a user's running
k-th best, so the selection is "compare every score with one number, act on the rare
winner". In NumPy/torch that costs several full passes (compare, nonzero, gather,
scatter); here it is one vectorisable compare per score, with a heap update only on
the winners. Nothing is allocated per block.

Heaps are min-heaps on (score, -column): ``heap_v[r, 0]`` is user r's current k-th
best, initialised to -inf (ids -1). Columns are item ranks in norm order, and blocks
may be visited in any order, so a score equal to the root's replaces it only when its
column is smaller; among equal scores the largest column sits at the root and leaves
first. The result is exactly the first k items of a stable sort by descending score
over columns in rank order, whatever order the blocks came in.

The kernels are serial and release the GIL: the engine runs one Python thread per core,
each doing its own GEMM (torch, one thread) and scan on its share of the users, so no
two thread pools (torch's OpenMP and numba's) spin against each other on few cores.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always", cache=True)
def _sift_down(hv, hi, v, c):
    """Replace the root of min-heap (hv, hi) with (v, c) and restore the heap order."""
    _sift(hv, hi, 0, v, c)


@njit(inline="always", cache=True)
def _sift(hv, hi, pos, v, c):
    """Put (v, c) at ``pos`` of (hv, hi), whose subtrees below ``pos`` are heaps, and sift it down."""
    k = hv.shape[0]
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        child = left
        right = left + 1
        if right < k and (hv[right] < hv[left] or (hv[right] == hv[left] and hi[right] > hi[left])):
            child = right
        if hv[child] > v or (hv[child] == v and hi[child] < c):
            break
        hv[pos] = hv[child]
        hi[pos] = hi[child]
        pos = child
    hv[pos] = v
    hi[pos] = c


@njit(inline="always", cache=True)
def _is_seen(seen_ptr, seen_idx, r, c):
    lo = seen_ptr[r]
    hi = seen_ptr[r + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if seen_idx[mid] < c:
            lo = mid + 1
        else:
            hi = mid
    return lo < seen_ptr[r + 1] and seen_idx[lo] == c


#: Scores are first counted against the threshold in chunks of this many (a loop LLVM
#: vectorises); only chunks with a winner are walked one by one.
CHUNK = 32


@njit(inline="always", cache=True)
def _key(x):
    """Monotone integer key of bfloat16 bits read as int16 (float order == key order)."""
    x = np.int32(x)
    return x if x >= 0 else -(x + 32768) - 1


@njit(inline="always", cache=True, nogil=True)
def _count_keys_at_least(row, j0, j1, lim):
    c = np.int32(0)
    if lim >= 0:
        # Non-negative limit: negative floats (negative int16) never pass and positive
        # floats order like their raw bits, so a plain int16 compare (wide SIMD) suffices.
        lim16 = np.int16(lim)
        for j in range(j0, j1):
            c += np.int32(row[j] >= lim16)
    else:
        for j in range(j0, j1):
            c += np.int32(_key(row[j]) >= lim)
    return c


@njit(inline="always", cache=True, nogil=True)
def _count_at_least(row, j0, j1, t):
    # Inlined, with an int32 count: numba then emits one SIMD compare-and-add per 8-16
    # scores (measured 4.5x faster than a called function summing bools).
    c = np.int32(0)
    for j in range(j0, j1):
        c += np.int32(row[j] >= t)
    return c


@njit(cache=True, nogil=True)
def _scan_row_exact(row, cols, hv, hi, r, seen_ptr, seen_idx):
    w = row.shape[0]
    t = hv[0]
    tc = hi[0]
    check_seen = seen_ptr.shape[0] > 1
    for j0 in range(0, w, CHUNK):
        j1 = min(j0 + CHUNK, w)
        if _count_at_least(row, j0, j1, t) == 0:
            continue
        for j in range(j0, j1):
            v = row[j]
            if v > t or (v == t and cols[j] < tc):
                c = cols[j]
                if check_seen and _is_seen(seen_ptr, seen_idx, r, c):
                    continue
                _sift_down(hv, hi, v, c)
                t = hv[0]
                tc = hi[0]


@njit(cache=True, nogil=True)
def scan_exact(S, cols, heap_v, heap_i, seen_ptr, seen_idx, rows):
    """Push every score of block ``S`` (n, w) (item columns ``cols``) that beats a heap root.

    Row j of ``S`` belongs to user ``rows[j]`` (the users that pruning kept for this block).
    """
    for j in range(S.shape[0]):
        r = rows[j]
        _scan_row_exact(S[j], cols, heap_v[r], heap_i[r], r, seen_ptr, seen_idx)


@njit(cache=True, nogil=True)
def seed_exact(S, cols, heap_v, heap_i, seen_ptr, seen_idx, rows):
    """:func:`scan_exact` into empty heaps (all (-inf, -1)), the first block of a batch.

    Why not just scan: filling a heap of k by k pushes costs k sift-downs through a
    heap of -inf entries, three times the rest of the block. Instead the first k scores
    that are not excluded go in as they are, one bottom-up heapify (O(k)) orders them,
    and only the rest of the row is scanned against the root.
    """
    check_seen = seen_ptr.shape[0] > 1
    for j in range(S.shape[0]):
        r = rows[j]
        row = S[j]
        hv = heap_v[r]
        hi = heap_i[r]
        k = hv.shape[0]
        w = row.shape[0]
        n = 0
        p = 0
        while n < k and p < w:
            c = cols[p]
            if not (check_seen and _is_seen(seen_ptr, seen_idx, r, c)):
                hv[n] = row[p]
                hi[n] = c
                n += 1
            p += 1
        for q in range(k // 2 - 1, -1, -1):
            _sift(hv, hi, q, hv[q], hi[q])
        if p < w:
            _scan_row_exact(row[p:], cols[p:], hv, hi, r, seen_ptr, seen_idx)


@njit(cache=True, nogil=True)
def _scan_row_screened(row, lim, u, I, cols, hv, hi, r, seen_ptr, seen_idx):
    w = row.shape[0]
    d = u.shape[0]
    check_seen = seen_ptr.shape[0] > 1
    for j0 in range(0, w, CHUNK):
        j1 = min(j0 + CHUNK, w)
        if _count_keys_at_least(row, j0, j1, lim) == 0:
            continue
        for j in range(j0, j1):
            if _key(row[j]) >= lim:
                c = cols[j]
                item = I[c]
                v = np.float32(0.0)
                for f in range(d):
                    v += u[f] * item[f]
                if v > hv[0] or (v == hv[0] and c < hi[0]):
                    if check_seen and _is_seen(seen_ptr, seen_idx, r, c):
                        continue
                    _sift_down(hv, hi, v, c)


@njit(cache=True, nogil=True)
def scan_screened(A, key_lim, U, I, cols, heap_v, heap_i, seen_ptr, seen_idx, rows):
    """Like :func:`scan_exact` for a bfloat16 block ``A`` (raw bits as int16).

    A score passes the screen when its monotone integer key is >= ``key_lim[j]`` (the
    bf16 key of a proven lower bound: root − error bound, rounded down); then it is
    re-scored exactly in float32 (``U[r] · I[c]``, r = ``rows[j]``) and pushed if it
    beats the root.
    """
    for j in range(A.shape[0]):
        r = rows[j]
        _scan_row_screened(A[j], key_lim[j], U[r], I, cols, heap_v[r], heap_i[r], r, seen_ptr, seen_idx)


@njit(inline="always", cache=True, nogil=True)
def _before(v1, i1, v2, i2):
    """True when result (v1, id i1) comes before (v2, i2): higher score, then smaller id, padding (-1) last."""
    if v1 != v2:
        return v1 > v2
    if i1 < 0:
        return False
    return i2 < 0 or i1 < i2


@njit(cache=True, nogil=True)
def finish_heaps(heap_v, heap_i, perm, out_v, out_i):
    """Each row's heap as a best-first result: ``out_i`` item rows (``perm`` of the columns).

    Why here and not ``np.lexsort``: sorting 100 results per user in NumPy cost about as
    much as scanning a 512-item block. Popping the min-heap yields (score ascending, column
    descending); written back to front that is best first with ties by column, and an
    insertion pass then orders equal scores by item row (the result's tie order), which
    costs one comparison per result unless there are ties. Empty slots (-inf, column -1)
    become padding: score -inf, id -1, last.
    """
    k = heap_v.shape[1]
    for r in range(heap_v.shape[0]):
        hv = heap_v[r].copy()
        hi = heap_i[r].copy()
        ov = out_v[r]
        oi = out_i[r]
        for n in range(k, 0, -1):
            v = hv[0]
            c = hi[0]
            ov[n - 1] = v
            oi[n - 1] = perm[c] if c >= 0 and v > -np.inf else -1
            if n > 1:
                _sift_down(hv[:n - 1], hi[:n - 1], hv[n - 1], hi[n - 1])
        for j in range(1, k):
            v = ov[j]
            c = oi[j]
            p = j
            while p > 0 and _before(v, c, ov[p - 1], oi[p - 1]):
                ov[p] = ov[p - 1]
                oi[p] = oi[p - 1]
                p -= 1
            ov[p] = v
            oi[p] = c


def bf16_keys(lim: np.ndarray) -> np.ndarray:
    """Monotone int32 keys of bfloat16 values at or below ``lim`` (float32), for the screen.

    ``lim`` is first lowered by 2⁻⁷·|lim| so truncating to bf16 (which rounds toward
    zero) can only move it further down; -inf maps below every finite key.
    """
    lim = np.asarray(lim, dtype=np.float32)
    low = (lim - np.abs(lim) * np.float32(2.0**-7) - np.float32(1e-30)).astype(np.float32)
    bits = (low.view(np.uint32) >> 16).astype(np.int32)
    x = np.where(bits >= 32768, bits - 65536, bits)
    key = np.where(x >= 0, x, -(x + 32768) - 1).astype(np.int32)
    return np.where(np.isneginf(lim), np.int32(-(2**31)), key).astype(np.int32)
