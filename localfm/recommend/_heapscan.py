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

import contextlib
import ctypes
import functools
import importlib.util
import os
from collections.abc import Iterator

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types


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
    for j in range(S.shape[0]):
        r = rows[j]
        _seed_row(S[j], cols, heap_v[r], heap_i[r], r, seen_ptr, seen_idx)


@njit(cache=True, nogil=True)
def _seed_row(row, cols, hv, hi, r, seen_ptr, seen_idx):
    check_seen = seen_ptr.shape[0] > 1
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


@functools.cache
def _torch_blas() -> ctypes.CDLL | None:
    """torch's own native library, loaded without importing the ``torch`` package.

    Why not ``import torch``: the fused kernel needs only this library's ``sgemm_``, and
    loading the library takes ~0.3 s where importing torch takes ~2 s. Every process that
    ranks pays it before its first batch: a ``localfm recommend`` run, and every Ray actor,
    where it sat on the job's critical path. A later ``import torch`` maps the very same
    library (same path), so both share one MKL.
    """
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            return ctypes.CDLL(os.path.join(folder, "lib", "libtorch_cpu.so"))
        except OSError:
            continue
    return None


def torch_sgemm_address() -> int | None:
    """Address of the Fortran ``sgemm_`` that torch itself multiplies with (MKL on x86 builds).

    Why torch's and not SciPy's OpenBLAS: a user's float32 score must not depend on which
    other users share its product (batches and pruning change that; the ids are promised
    byte-identical whatever the batching). OpenBLAS's micro-kernels round a column
    differently by its position in the tile; MKL's do not once the tile width is a
    multiple of 4 (tiles here are padded to multiples of :data:`PAD`), which is also what
    the per-block torch path relies on. None when torch's library exports no ``sgemm_``
    (other builds): the engine then uses the per-block torch path.
    """
    lib = _torch_blas()
    fn = getattr(lib, "sgemm_", None) if lib is not None else None
    if fn is None or getattr(lib, "mkl_set_num_threads_local", None) is None:
        return None
    return ctypes.cast(fn, ctypes.c_void_p).value


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """MKL on one thread in the calling thread (its OpenMP default is one per core).

    The engine already runs one kernel per core; a second level of threads would only
    make them fight. ``mkl_set_num_threads_local`` is per thread, so the other worker and
    the caller's torch keep their settings.
    """
    fn = _torch_blas().mkl_set_num_threads_local  # the Fortran entry: takes int*
    before = fn(ctypes.byref(ctypes.c_int(1)))
    try:
        yield
    finally:
        fn(ctypes.byref(ctypes.c_int(before)))


SGEMM = torch_sgemm_address()
if SGEMM is not None:
    # Registered under a name of our own and resolved when the cached machine code is
    # loaded, so ``cache=True`` still works. Every Fortran argument is a pointer, passed as
    # an integer address (the same register in the x86-64 and arm64 calling conventions).
    llvm.add_symbol("localfm_sgemm", SGEMM)
_sgemm = types.ExternalFunction("localfm_sgemm", types.void(*([types.intp] * 13)))

#: Fused tiles are padded with zero users to a multiple of this (see torch_sgemm_address).
PAD = 8

#: Users per fused GEMM tile: TILE × 512 float32 scores (256 KB) plus the item block
#: (133 KB at d = 65) stay in a 512 KB L2 between the product and the scan. Why BLAS is
#: called from the kernel: from Python, tiles this small would cost thousands of calls
#: per batch, each dearer than comparing the scores it saves from an L3 round trip.
TILE = 128

#: Room past k in each user's result buffer of the fused kernel (at least k/4; a whole
#: block's winners then rarely force a cut mid-row, and a large k costs 1.25 k keys).
EXTRA = 512

#: A user's buffer is also cut at the end of a row that brought min(k/4 + 1, CUT_GAP)
#: new results: the pruning bound compares with the k-th as of the last cut, so a small
#: gap keeps pruning as sharp as a heap's (on FM-shaped vectors gap 4 skips 23.6 % of the
#: scores where a heap skips 23.8 % and no gap 22.5 %) for a few cuts of ~k+4 keys.
CUT_GAP = 4


#: Scores compared per step by the fused kernel's row scan (see :func:`_collect_row`).
WIDE = 64


@njit(inline="always", cache=True, nogil=True)
def _rank_key(bits, c):
    """One uint64 that orders results like the tie rule: score (float32 bits), then smaller column.

    The high half is the float's bits made monotone (-0.0 first folded into +0.0, as the
    float compare treats them), the low half ``2³² − 1 − c``: a larger key is a better
    result, so selection needs one integer compare and no tie branch.
    """
    if bits == np.uint32(0x80000000):
        bits = np.uint32(0)
    mono = ~bits if bits & np.uint32(0x80000000) else bits | np.uint32(0x80000000)
    return (np.uint64(mono) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - np.uint64(c))


@njit(inline="always", cache=True, nogil=True)
def _key_bits(key):
    """The float32 bits of a :func:`_rank_key` score."""
    mono = np.uint32(key >> np.uint64(32))
    return mono & np.uint32(0x7FFFFFFF) if mono & np.uint32(0x80000000) else ~mono


@njit(cache=True, nogil=True)
def _nth_largest(a, n, t):
    """Rearrange ``a[:n]`` (distinct keys) so ``a[t]`` is its (t+1)-th largest, larger ones before it.

    Wirth's selection (Hoare partitions, median-of-three pivot): O(n) on average, in place.
    """
    lo = 0
    hi = n - 1
    while lo < hi:
        x = a[lo]
        y = a[(lo + hi) >> 1]
        z = a[hi]
        pivot = max(min(x, y), min(max(x, y), z))
        i = lo
        j = hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i += 1
                j -= 1
        if t <= j:
            hi = j
        elif t >= i:
            lo = i
        else:
            return


@njit(inline="always", cache=True, nogil=True)
def _collect_row(row, bits, cols, buf, k, gap, state, kth, scratch, u, seen_ptr, seen_idx):
    """Append the results of one score row that beat user u's running k-th to its buffer.

    ``state[u] = (count, k-th key)`` and ``kth[u]`` the k-th score; the k-th key is 0
    (below every result) and the score -inf until the buffer first holds k. The buffer is cut back to its k best (:func:`_nth_largest`),
    which raises the k-th, when full and at the end of a row that brought its first k or
    ``min(k/4 + 1, gap)`` new results. Returns the k-th score (float32; -inf while unknown).
    """
    cap = buf.shape[0]
    n = state[u, 0]
    tk = np.uint64(state[u, 1])
    t = np.float32(kth[u])
    check_seen = seen_ptr.shape[0] > 1
    w = row.shape[0]
    full = w - w % WIDE
    for j0 in range(0, w, WIDE):
        if j0 < full:
            # A constant trip count: LLVM unrolls it into 8 AVX2 compares, no loop control
            # (measured 2x faster than the variable-length chunk loop of the heap scans).
            c = np.int32(0)
            for j in range(WIDE):
                c += np.int32(row[j0 + j] >= t)
            j1 = j0 + WIDE
        else:
            j1 = w
            c = _count_at_least(row, j0, j1, t)
        if c == 0:
            continue
        for j in range(j0, j1):
            if row[j] >= t:
                c = cols[j]
                key = _rank_key(bits[j], c)
                if key <= tk:
                    continue
                if check_seen and _is_seen(seen_ptr, seen_idx, u, c):
                    continue
                buf[n] = key
                n += 1
                if n == cap:
                    _nth_largest(buf, n, k - 1)
                    n = k
                    tk = buf[k - 1]
                    t = _bits_float(_key_bits(tk), scratch)
    if n >= k and (tk == 0 or n - k >= min(k // 4 + 1, gap)):
        # Cut at the end of the row too once a few results came in since the last cut
        # (see CUT_GAP): the pruning bound then sees a fresh k-th.
        _nth_largest(buf, n, k - 1)
        n = k
        tk = buf[k - 1]
        t = _bits_float(_key_bits(tk), scratch)
    state[u, 0] = n
    state[u, 1] = np.int64(tk)
    return t


@njit(inline="always", cache=True, nogil=True)
def _bits_float(b, scratch):
    """The float32 with bits ``b``, through a caller's 1-element uint32 array (no allocation)."""
    scratch[0] = b
    return scratch.view(np.float32)[0]


@njit(cache=True, nogil=True)
def scan_blocks(U, Iblk, bstart, bcols, order, B, rest, heap_v, heap_i, seen_ptr, seen_idx, tile, extra, gap):
    """All item blocks for a slice of users, float32: product, pruning and selection fused.

    ``Iblk`` holds the item rows block after block (block bi is rows
    ``bstart[bi]:bstart[bi+1]``, rank columns ``bcols`` of those rows); blocks are visited
    in ``order``. With bounds ``B`` (users × blocks, float64; empty without pruning), a
    user leaves once ``rest[u, step]`` (the largest bound from this step on) is below its
    k-th score and block bi is scored only for users whose ``B[u, bi]`` is not (strict
    ``<``, as in ``topx._prune_step``). The selected users are gathered ``tile`` at a
    time, multiplied by the block with torch's sgemm (:func:`torch_sgemm_address`) into
    an L2-sized buffer and compared while it is hot.

    Selection: instead of a heap update per winner (a branchy sift-down through k
    entries, ~50 ns), each user appends winners as one-integer rank keys
    (:func:`_rank_key`) to a buffer of ``k + extra`` and cuts it back to the k best
    (:func:`_collect_row` says when): a few ns per winner.

    On return ``heap_v``/``heap_i`` (k wide) hold each user's k best ascending by
    (score, -column), -inf/-1 padding first: a valid min-heap for :func:`finish_heaps`.
    Returns the number of (user, item) scores never computed. BLAS must be
    single-threaded (the caller runs one such kernel per core).
    """
    n, d = U.shape
    k = heap_v.shape[1]
    prune = B.shape[0] > 0
    maxw = 0
    for bi in range(bstart.shape[0] - 1):
        maxw = max(maxw, bstart[bi + 1] - bstart[bi])
    ubuf = np.empty((tile, d), np.float32)
    cbuf = np.empty(tile * maxw, np.float32)
    cbits = cbuf.view(np.uint32)
    args = np.empty(8, np.int32)
    scal = np.array([1.0, 0.0], np.float32)
    trans = np.array([ord("T"), ord("N")], np.uint8)
    keys = np.empty((n, k + extra), np.uint64)
    state = np.zeros((n, 2), np.int64)
    kth = np.full(n, -np.inf)
    scratch = np.empty(1, np.uint32)
    act = np.arange(n)
    n_act = n
    sel = np.empty(n, np.int64)
    skipped = 0
    for step in range(order.shape[0]):
        bi = order[step]
        b0 = bstart[bi]
        w = bstart[bi + 1] - b0
        cols = bcols[b0:b0 + w]
        n_sel = 0
        if not prune:
            for a in range(n_act):
                sel[a] = act[a]
            n_sel = n_act
        else:
            keep = 0
            for a in range(n_act):
                u = act[a]
                if rest[u, step] < kth[u]:
                    continue
                act[keep] = u
                keep += 1
                if not B[u, bi] < kth[u]:
                    sel[n_sel] = u
                    n_sel += 1
            n_act = keep
        skipped += (n - n_sel) * w
        for t0 in range(0, n_sel, tile):
            m = min(tile, n_sel - t0)
            for q in range(m):
                ubuf[q] = U[sel[t0 + q]]
            mp = -(-m // PAD) * PAD
            for q in range(m, mp):
                ubuf[q] = 0.0
            # C (w x mp, column-major) = Iblk[b0:b0+w] (d x w column-major, transposed) x ubuf^T:
            # row-major, cbuf[q * w + j] is user sel[t0 + q]'s score for item column cols[j].
            args[0] = w
            args[1] = mp
            args[2] = d
            args[3] = d
            args[4] = d
            args[5] = w
            _sgemm(trans[0:].ctypes.data, trans[1:].ctypes.data, args[0:].ctypes.data, args[1:].ctypes.data,
                   args[2:].ctypes.data, scal[0:].ctypes.data, Iblk[b0:].ctypes.data, args[3:].ctypes.data,
                   ubuf.ctypes.data, args[4:].ctypes.data, scal[1:].ctypes.data, cbuf.ctypes.data,
                   args[5:].ctypes.data)
            for q in range(m):
                u = sel[t0 + q]
                kth[u] = _collect_row(cbuf[q * w:(q + 1) * w], cbits[q * w:(q + 1) * w], cols, keys[u], k, gap, state,
                                      kth, scratch, u, seen_ptr, seen_idx)
        if n_act == 0:
            for rest_step in range(step + 1, order.shape[0]):
                rb = order[rest_step]
                skipped += n * (bstart[rb + 1] - bstart[rb])
            break
    hb = heap_v.view(np.uint32)
    for u in range(n):
        m = state[u, 0]
        buf = keys[u]
        if m > k:
            _nth_largest(buf, m, k - 1)
            m = k
        best = np.sort(buf[:m])
        pad = k - m
        for j in range(pad):
            heap_v[u, j] = -np.inf
            heap_i[u, j] = -1
        for j in range(m):
            key = best[j]
            hb[u, pad + j] = _key_bits(key)
            heap_i[u, pad + j] = np.int64(np.uint64(0xFFFFFFFF) - (key & np.uint64(0xFFFFFFFF)))
    return skipped
