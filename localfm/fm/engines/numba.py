"""The numba training engine: one compiled call runs a whole FM epoch with SageMaker semantics.

Why: at the cloud job's ``mini_batch_size=200`` the torch engine (:mod:`.torch`)
spends most of each step in Python and torch dispatch (~25 small ops per batch)
rather than arithmetic. This engine does the same work in one ``@njit`` function per
epoch (:func:`train_epoch`), with no per-batch allocation, directly on the CSR arrays
and on the run's (d, 3, k+1) table ``P`` (``P[:, 0] = [v | w]``, ``P[:, 1]`` = Adam m,
``P[:, 2]`` = Adam v), so results match the torch engine to float32 rounding while
running several times faster (numbers in docs/fm.md).

Semantics reproduced step for step from the torch engine:

- batches of ``mini_batch_size`` rows in ``order`` (file order unless the local
  shuffle is on), the last one padded by wrapping around to the first rows;
- per batch: forward on the *pre-update* weights, scores stored for the epoch's
  pooled metrics (computed by the estimator with :class:`localfm.fm.metrics.MetricAccumulator`
  on exactly these float32 scores, so the metric code path is shared);
- gradient ``g = rescale * (sigmoid(s) - y)`` (binary) or ``rescale * (s - y)``,
  ``dv_j = sum_i g_i x_ij S_i - v_j sum_i g_i x_ij^2``, ``dw_j = sum_i g_i x_ij``, summed
  per distinct column in batch-row order (the lazy update sees each touched row once);
- the optimizer step on the touched rows only, with the same float32 formulas and
  operation order as the torch engine's ``step_gathered`` (torch lerp form of
  Adam's first moment, ``addcmul`` / ``addcdiv`` association), the bias as its
  ``step_scalar``. Constants, per-column lr/wd and Adam's bias-corrected step sizes
  come from :mod:`localfm.fm.optim` (the step sizes evaluated in Python and passed
  in, so ``pow`` rounding is identical too).

Two compiled epochs: :func:`train_epoch` (serial, one pass per batch; used at one
thread, so a single-threaded run never starts numba's OpenMP pool) and
:func:`train_epoch_parallel` (``_local_threads`` > 1), which splits each batch's rows
and distinct columns over threads without summing anything across them, so it gives
the serial function's bytes at any thread count: seeded runs are identical whatever
the threads. A batch of 200 rows x 2 nonzeros is too little work to split profitably
(:func:`localfm.fm.engines.resolve_threads`). numba freezes module globals such as
``BETA1`` into its on-disk cache (``cache=True``), which is keyed on this file: if
the constants in optim.py ever change, touch this file too.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
from llvmlite import ir
from numba import config as numba_config
from numba import njit, prange, set_num_threads
from numba.core import cgutils, types
from numba.extending import intrinsic

from ...errors import LocalFMError
from ..optim import BETA1, BETA2, OptimizerConfig, adam_coefficient, optimizer_config
from . import NUMBA_OPTIMIZERS, OnBatch, resolve_threads

#: optimizer codes of the compiled step (``_local_optimizer`` values)
OPTIMIZERS = {name: code for code, name in enumerate(NUMBA_OPTIMIZERS)}


@intrinsic
def _prefetch(typingctx, arr, idx):  # noqa: ANN001, ANN202, ARG001 - numba intrinsic
    """``llvm.prefetch`` of ``arr[idx]`` (idx: a tuple of ints): a cache hint, no effect on results.

    Why: with a large feature_dim every batch touches table rows that are not in
    cache, and the loops are latency-bound (one miss at a time). Asking for the
    rows a few batch rows ahead overlaps those misses.
    """
    if not (isinstance(arr, types.Array) and isinstance(idx, types.BaseTuple) and len(idx) == arr.ndim):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        parts = cgutils.unpack_tuple(builder, args[1], len(idxty))
        inds = [context.cast(builder, v, t, types.intp) for v, t in zip(parts, idxty, strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, inds, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return sig, codegen


#: prefetch the table rows of the batch row this many rows ahead (4, 8 and 16 measured alike)
PREFETCH_AHEAD = 8
#: tables smaller than this stay in cache: no prefetching (measured: ua.base, 2 MB, -10 % with it)
PREFETCH_MIN_BYTES = 8 << 20


@njit(cache=True, error_model="numpy")
def _max_batch_nnz(indptr, order, batch_size, n_batches):  # noqa: ANN001, ANN202 - numba
    """Most nonzeros in one padded batch (rows wrap around, as the padding does): sizes scratch buffers."""
    n = order.shape[0]
    most = 0
    for b in range(n_batches):
        cnt = 0
        for i in range(batch_size):
            row = order[(b * batch_size + i) % n]
            cnt += indptr[row + 1] - indptr[row]
        most = max(most, cnt)
    return most


@njit(cache=True, error_model="numpy")
def _prefetch_row(P, c):  # noqa: ANN001, ANN202 - numba
    """Prefetch every cache line of table row ``c`` (weights and both moments)."""
    for s in range(P.shape[1]):
        for f in range(0, P.shape[2], 16):
            _prefetch(P, (c, s, f))


# ----------------------------------------------------------------------------- compiled epoch
@njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _sumsq(a, n):  # noqa: ANN001, ANN202 - numba
    """sum(a[:n]**2) in float32, vectorised (reassociated like torch's own ``sum(1)``)."""
    acc = np.float32(0.0)
    for f in range(n):
        acc += a[f] * a[f]
    return acc


@njit(cache=True, error_model="numpy")
def _bias_step(state, grad, kind, lr, wd, clip, use_clip, eps, coef, lr_scale):  # noqa: ANN001, ANN202
    """The torch engine's ``step_scalar`` on ``state = [w0, m, v]`` (float32), in place."""
    w = state[0]
    g = np.float32(grad)
    if use_clip:
        g = min(max(g, -clip), clip)
    decay = np.float32(0.0)
    if kind == 1:
        decay = w * wd * lr * lr_scale
    else:
        g = g + wd * w
    if kind == 2:
        w_new = w - lr_scale * lr * g
    elif kind == 3:
        state[2] = state[2] + g * g
        w_new = w - lr_scale * lr * g / (np.sqrt(state[2]) + eps)
    else:
        state[1] = np.float32(BETA1) * state[1] + np.float32(1.0 - BETA1) * g
        state[2] = np.float32(BETA2) * state[2] + np.float32(1.0 - BETA2) * g * g
        w_new = w - coef * lr * state[1] / (np.sqrt(state[2]) + eps)
    state[0] = w_new - decay


@njit(cache=True, error_model="numpy")
def _step_range(kind, G, W, M, V, lr, wd, dec, ncoef, lr_scale, eps, use_clip, clip):  # noqa: ANN001, ANN202
    """Optimizer step of ``W`` (a slice holding one parameter group: scalar lr/wd), gradient ``G``.

    Same float32 formulas and association as the torch engine's ``step_gathered``
    (Adam's m as torch's lerp ``m + 0.1 (g - m)``, ``addcmul``/``addcdiv`` order).
    One branch-free loop per variant with scalar settings: with per-column lr/wd
    arrays, branches inside, or ``range(lo, hi)`` bounds (possible negative-index
    wraparound), LLVM does not vectorise these loops.
    """
    n = G.shape[0]
    b1w = np.float32(1.0 - BETA1)  # torch lerp weight
    b2 = np.float32(BETA2)
    b2w = np.float32(1.0 - BETA2)
    if use_clip:
        for f in range(n):
            G[f] = min(max(G[f], -clip), clip)
    if kind == 1:  # adamw: decoupled decay from the pre-step weight, after the Adam step
        for f in range(n):
            g = G[f]
            w = W[f]
            m = M[f] + b1w * (g - M[f])
            v = V[f] * b2 + (b2w * g) * g
            M[f] = m
            V[f] = v
            W[f] = (w + (ncoef * (m * lr)) / (np.sqrt(v) + eps)) - w * dec
        return
    for f in range(n):  # L2 through the gradient (MXNet)
        G[f] = G[f] + W[f] * wd
    if kind == 2:
        for f in range(n):
            W[f] = W[f] - lr_scale * (G[f] * lr)
    elif kind == 3:
        for f in range(n):
            g = G[f]
            v = V[f] + g * g
            V[f] = v
            W[f] = W[f] + ((-lr_scale) * (g * lr)) / (np.sqrt(v) + eps)
    else:
        for f in range(n):
            g = G[f]
            m = M[f] + b1w * (g - M[f])
            v = V[f] * b2 + (b2w * g) * g
            M[f] = m
            V[f] = v
            W[f] = W[f] + (ncoef * (m * lr)) / (np.sqrt(v) + eps)


@njit(cache=True, error_model="numpy")
def train_epoch(  # noqa: ANN201, PLR0913, PLR0912, PLR0915 - one flat loop on purpose
    indptr, indices, data, y, order, batch_size, P, lr, wd, decay, kind, clip, use_clip, eps, rescale,
    binary, use_bias, bias, bias_lr, bias_wd, coefs, lr_scale, slot, scores_out, labels_out,
):
    """One epoch over ``order`` in batches of ``batch_size``; updates ``P`` and ``bias`` in place.

    ``P`` (d, 3, k+1) float32: weights ``[v | w]``, Adam m, Adam v per feature row.
    ``lr``/``wd``/``decay`` (k+1,) float32 per-column settings (``decay`` = wd*lr*lr_scale
    for adamw). ``bias`` = [w0, m, v] float32. ``coefs[b]`` is the float32 bias-corrected
    Adam step factor of batch b. ``slot`` (d,) int32 all -1 (scratch: column -> position
    among the batch's distinct columns; restored to -1 on return). Writes every padded
    row's pre-update score and label to ``scores_out`` / ``labels_out``.
    """
    n = order.shape[0]
    k1 = P.shape[2]
    k = k1 - 1
    n_batches = scores_out.shape[0] // batch_size
    # prefetching pays only when the table does not fit in cache (it costs ~10 % otherwise)
    prefetch = P.size * 4 > PREFETCH_MIN_BYTES
    # largest number of nonzeros in one (padded) batch: sizes the scratch buffers once
    max_nnz = _max_batch_nnz(indptr, order, batch_size, n_batches)
    inv = np.empty(max_nnz, np.int64)
    val = np.empty(max_nnz, np.float32)
    cols = np.empty(max(max_nnz, 1), np.int64)
    nrm = np.empty(max(max_nnz, 1), np.float32)
    G = np.empty((max(max_nnz, 1), k1), np.float32)
    cacc = np.empty(max(max_nnz, 1), np.float32)
    S = np.empty((batch_size, k1), np.float32)
    gs = np.empty(batch_size, np.float32)
    rowptr = np.empty(batch_size + 1, np.int64)
    half = np.float32(0.5)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for b in range(n_batches):
        base = b * batch_size
        # -- one pass over the batch's rows: give each new column a slot (first-seen order),
        # zero its gradient row, and run the forward on the pre-update weights,
        # S_i = sum_j x_ij [v_j | w_j]. One pass means each (cold) table row is fetched
        # from memory once for the forward; with large feature_dim that is what costs.
        nz = 0
        U = 0
        w0 = bias[0]
        for i in range(batch_size):
            if prefetch:
                ahead = order[(base + i + PREFETCH_AHEAD) % n]
                for p in range(indptr[ahead], indptr[ahead + 1]):
                    _prefetch_row(P, indices[p])
                    _prefetch(slot, (indices[p],))
            row = order[(base + i) % n]
            rowptr[i] = nz
            yi = y[row]
            labels_out[base + i] = yi
            Si = S[i]
            for f in range(k1):
                Si[f] = zero
            sq = zero
            for p in range(indptr[row], indptr[row + 1]):
                c = indices[p]
                Wc = P[c, 0]
                u = slot[c]
                if u < 0:
                    u = U
                    slot[c] = U
                    cols[U] = c
                    nrm[U] = _sumsq(Wc, k)
                    Gu = G[U]
                    for f in range(k1):
                        Gu[f] = zero
                    cacc[U] = zero
                    U += 1
                x = data[p]
                inv[nz] = u
                val[nz] = x
                nz += 1
                for f in range(k1):
                    Si[f] += x * Wc[f]
                sq += (x * x) * nrm[u]
            s = (_sumsq(Si, k) - sq) * half + Si[k]
            if use_bias:
                s = s + w0
            scores_out[base + i] = s
            if binary:
                out = one / (one + np.exp(-s))
            else:
                out = s
            gs[i] = (out - yi) * rescale
        rowptr[batch_size] = nz
        # -- gradient per distinct column, accumulated in batch-row order
        gsum = 0.0
        for i in range(batch_size):
            g = gs[i]
            gsum += g
            Si = S[i]
            for q in range(rowptr[i], rowptr[i + 1]):
                u = inv[q]
                gx = g * val[q]
                Gu = G[u]
                for f in range(k):
                    Gu[f] += gx * Si[f]
                Gu[k] += gx
                cacc[u] += gx * val[q]
        # -- optimizer step on the touched rows (lazy update)
        ncoef = -coefs[b]
        for u in range(U):
            if prefetch and u + PREFETCH_AHEAD < U:
                _prefetch_row(P, cols[u + PREFETCH_AHEAD])
            c = cols[u]
            Gu = G[u]
            Wc = P[c, 0]
            Mc = P[c, 1]
            Vc = P[c, 2]
            cc = cacc[u]
            for f in range(k):
                Gu[f] = Gu[f] - Wc[f] * cc
            _step_range(kind, Gu[:k], Wc[:k], Mc[:k], Vc[:k], lr[0], wd[0], decay[0], ncoef, lr_scale, eps,
                        use_clip, clip)
            _step_range(kind, Gu[k:], Wc[k:], Mc[k:], Vc[k:], lr[k], wd[k], decay[k], ncoef, lr_scale, eps,
                        use_clip, clip)
            slot[c] = -1
        if use_bias:
            _bias_step(bias, gsum, kind, bias_lr, bias_wd, clip, use_clip, eps, coefs[b], lr_scale)


# ----------------------------------------------------------------------------- parallel epoch
# train_epoch_parallel computes what train_epoch does, to the byte, with each batch's
# rows and distinct columns spread over numba's threads. Nothing is summed across
# threads: a thread owns whole outputs (a row's forward, a column's gradient and step)
# and sums in batch-row order, as train_epoch does, so neither the thread count nor the
# scheduling changes a bit (tests/fm/test_engines.py checks 1, 2 and 3 threads against
# the serial function). Two serial O(nnz) integer passes per batch build the index lists
# the threads need; the table rows are read only by the threads.
@njit(cache=True, error_model="numpy")
def _batch_slots(indptr, indices, data, y, order, base, batch_size, slot, cols, cnt, inv, val, qrow, rowptr,
                 labels_out, prefetch):  # noqa: ANN001, ANN202, PLR0913 - numba
    """Serial pass 1 of a batch: give each new column a slot (first-seen order), list the nonzeros.

    Writes, per nonzero ``q`` in batch-row order, its slot ``inv[q]``, value ``val[q]`` and
    batch row ``qrow[q]``; per slot its column ``cols[u]`` and nonzero count ``cnt[u]``;
    ``rowptr`` (batch row -> first nonzero) and the labels. Returns (distinct columns, nonzeros).
    No table row is read here (the threads fetch them): O(nnz) integer work, cheap enough
    to stay serial.
    """
    n = order.shape[0]
    nz = 0
    U = 0
    for i in range(batch_size):
        if prefetch:
            ahead = order[(base + i + PREFETCH_AHEAD) % n]
            for p in range(indptr[ahead], indptr[ahead + 1]):
                _prefetch(slot, (indices[p],))
        row = order[(base + i) % n]
        rowptr[i] = nz
        labels_out[base + i] = y[row]
        for p in range(indptr[row], indptr[row + 1]):
            c = indices[p]
            u = slot[c]
            if u < 0:
                u = U
                slot[c] = U
                cols[U] = c
                cnt[U] = 0
                U += 1
            inv[nz] = u
            val[nz] = data[p]
            qrow[nz] = i
            cnt[u] += 1
            nz += 1
    rowptr[batch_size] = nz
    return U, nz


@njit(cache=True, error_model="numpy", inline="always")
def _column_norm(u, P, cols, nrm, prefetch):  # noqa: ANN001, ANN202 - numba
    """``nrm[u] = |v_c|^2`` of distinct column ``u`` (the parallel driver's replacement for the serial pass's)."""
    if prefetch and u + PREFETCH_AHEAD < cols.shape[0]:
        _prefetch_row(P, cols[u + PREFETCH_AHEAD])
    nrm[u] = _sumsq(P[cols[u], 0], P.shape[2] - 1)


@njit(cache=True, error_model="numpy", inline="always")
def _forward_row(i, indptr, indices, order, base, P, rowptr, inv, val, nrm, S, gs, scores_out, labels_out, w0,
                 use_bias, binary, rescale, prefetch):  # noqa: ANN001, ANN202, PLR0913 - numba
    """Forward of batch row ``i`` on the pre-update weights: ``S_i``, its score and ``g_i``.

    ``S_i = sum_j x_ij [v_j | w_j]``; independent across rows, so any thread may run any row.
    """
    n = order.shape[0]
    k1 = P.shape[2]
    k = k1 - 1
    if prefetch:
        ahead = order[(base + i + PREFETCH_AHEAD) % n]
        for p in range(indptr[ahead], indptr[ahead + 1]):
            _prefetch_row(P, indices[p])
    row = order[(base + i) % n]
    Si = S[i]
    for f in range(k1):
        Si[f] = np.float32(0.0)
    sq = np.float32(0.0)
    q = rowptr[i]
    for p in range(indptr[row], indptr[row + 1]):
        Wc = P[indices[p], 0]
        x = val[q]
        q += 1
        for f in range(k1):
            Si[f] += x * Wc[f]
        sq += (x * x) * nrm[inv[q - 1]]
    s = (_sumsq(Si, k) - sq) * np.float32(0.5) + Si[k]
    if use_bias:
        s = s + w0
    scores_out[base + i] = s
    if binary:
        out = np.float32(1.0) / (np.float32(1.0) + np.exp(-s))
    else:
        out = s
    gs[i] = (out - labels_out[base + i]) * rescale


@njit(cache=True, error_model="numpy")
def _batch_lists(U, nz, cnt, inv, qrow, val, colptr, fill, lrow, lval):  # noqa: ANN001, ANN202 - numba
    """Serial pass 2: each slot's nonzeros in batch-row order (a counting sort of ``inv``).

    Slot ``u``'s nonzeros are ``colptr[u]:colptr[u+1]`` of ``lrow`` (their batch rows) and
    ``lval`` (their values), copied so the column pass reads them sequentially.
    """
    colptr[0] = 0
    for u in range(U):
        colptr[u + 1] = colptr[u] + cnt[u]
        fill[u] = colptr[u]
    for q in range(nz):
        u = inv[q]
        a = fill[u]
        lrow[a] = qrow[q]
        lval[a] = val[q]
        fill[u] = a + 1


@njit(cache=True, error_model="numpy", inline="always")
def _column_update(u, P, cols, colptr, lrow, lval, gs, S, G, slot, kind, lr, wd, decay, ncoef, lr_scale, eps,
                   use_clip, clip, prefetch):  # noqa: ANN001, ANN202, PLR0913 - numba
    """Gradient and optimizer step of the batch's distinct column ``u`` (lazy update: touched rows only).

    ``dv = sum_i g_i x_i S_i - v sum_i g_i x_i^2``, ``dw = sum_i g_i x_i``, summed over the
    column's nonzeros in batch-row order. Each column is owned by one call, so its sum
    order, and therefore its bytes, do not depend on which thread runs it or how many there are.
    """
    k1 = P.shape[2]
    k = k1 - 1
    if prefetch and u + PREFETCH_AHEAD < cols.shape[0]:
        _prefetch_row(P, cols[u + PREFETCH_AHEAD])
    c = cols[u]
    Gu = G[u]
    for f in range(k1):
        Gu[f] = np.float32(0.0)
    cc = np.float32(0.0)
    for a in range(colptr[u], colptr[u + 1]):
        i = lrow[a]
        x = lval[a]
        gx = gs[i] * x
        Si = S[i]
        for f in range(k):
            Gu[f] += gx * Si[f]
        Gu[k] += gx
        cc += gx * x
    Wc = P[c, 0]
    Mc = P[c, 1]
    Vc = P[c, 2]
    for f in range(k):
        Gu[f] = Gu[f] - Wc[f] * cc
    _step_range(kind, Gu[:k], Wc[:k], Mc[:k], Vc[:k], lr[0], wd[0], decay[0], ncoef, lr_scale, eps, use_clip, clip)
    _step_range(kind, Gu[k:], Wc[k:], Mc[k:], Vc[k:], lr[k], wd[k], decay[k], ncoef, lr_scale, eps, use_clip, clip)
    slot[c] = -1


@njit(cache=True, error_model="numpy")
def _scratch(indptr, order, batch_size, n_batches, k1):  # noqa: ANN001, ANN202 - numba
    """The epoch's scratch buffers, sized once by the largest nonzero count of one (padded) batch."""
    max_nnz = max(1, _max_batch_nnz(indptr, order, batch_size, n_batches))
    ints = np.empty((6, max_nnz + 1), np.int64)  # cols, cnt, inv, qrow, colptr, fill
    lrow = np.empty(max_nnz, np.int64)
    lval = np.empty(max_nnz, np.float32)
    nrm = np.empty(max_nnz, np.float32)
    val = np.empty(max_nnz, np.float32)
    G = np.empty((max_nnz, k1), np.float32)
    S = np.empty((batch_size, k1), np.float32)
    gs = np.empty(batch_size, np.float32)
    rowptr = np.empty(batch_size + 1, np.int64)
    return ints, lrow, lval, nrm, val, G, S, gs, rowptr


@njit(cache=True, error_model="numpy")
def _batch_tail(b, gs, bias, use_bias, kind, bias_lr, bias_wd, clip, use_clip, eps, coefs,
                lr_scale):  # noqa: ANN001, ANN202, PLR0913 - numba
    """The bias step of batch ``b``: its gradient summed over the batch rows in order (float64, as before)."""
    if use_bias:
        gsum = 0.0
        for i in range(gs.shape[0]):
            gsum += gs[i]
        _bias_step(bias, gsum, kind, bias_lr, bias_wd, clip, use_clip, eps, coefs[b], lr_scale)


@njit(cache=True, error_model="numpy", parallel=True)
def train_epoch_parallel(  # noqa: ANN201, PLR0913
    indptr, indices, data, y, order, batch_size, P, lr, wd, decay, kind, clip, use_clip, eps, rescale,
    binary, use_bias, bias, bias_lr, bias_wd, coefs, lr_scale, slot, scores_out, labels_out,
):
    """:func:`train_epoch` (same arguments, same bytes) on numba's threads (``numba.set_num_threads``).

    Per batch: slots and nonzero lists (serial), the distinct columns' squared norms and
    the rows' forward (parallel; they fetch the cold table rows), each column's nonzeros in
    batch-row order (serial), the columns' gradient and lazy step (parallel), the bias step.
    """
    n_batches = scores_out.shape[0] // batch_size
    prefetch = P.size * 4 > PREFETCH_MIN_BYTES
    ints, lrow, lval, nrm, val, G, S, gs, rowptr = _scratch(indptr, order, batch_size, n_batches, P.shape[2])
    cols, cnt, inv, qrow, colptr, fill = ints[0], ints[1], ints[2], ints[3], ints[4], ints[5]
    for b in range(n_batches):
        base = b * batch_size
        U, nz = _batch_slots(indptr, indices, data, y, order, base, batch_size, slot, cols, cnt, inv, val, qrow,
                             rowptr, labels_out, prefetch)
        for u in prange(U):  # the (cold) table rows are fetched here, by all threads
            _column_norm(u, P, cols[:U], nrm, prefetch)
        w0 = bias[0]
        for i in prange(batch_size):
            _forward_row(i, indptr, indices, order, base, P, rowptr, inv, val, nrm, S, gs, scores_out, labels_out, w0,
                         use_bias, binary, rescale, False)
        _batch_lists(U, nz, cnt, inv, qrow, val, colptr, fill, lrow, lval)
        ncoef = -coefs[b]
        for u in prange(U):
            _column_update(u, P, cols[:U], colptr, lrow, lval, gs, S, G, slot, kind, lr, wd, decay, ncoef,
                           lr_scale, eps, use_clip, clip, prefetch)
        _batch_tail(b, gs, bias, use_bias, kind, bias_lr, bias_wd, clip, use_clip, eps, coefs, lr_scale)


# ----------------------------------------------------------------------------- driver
def step_factors(kind: str, t_first: int, n_batches: int, lr_scale: float) -> np.ndarray:
    """Per-batch float32 step factors, exactly as the torch engine rounds them.

    Adam: ``float32(adam_coefficient(1, t) * lr_scale)`` for t = t_first .. (Python's
    ``pow``, so identical bits); the other optimizers use ``lr_scale`` itself.
    """
    if kind in ("adam", "adamw"):
        return np.array([adam_coefficient(1.0, t) * lr_scale for t in range(t_first, t_first + n_batches)],
                        dtype=np.float32)
    return np.full(n_batches, lr_scale, dtype=np.float32)


def _passive_omp_wait() -> None:
    """Let idle OpenMP workers sleep instead of spinning, unless the user chose otherwise.

    Why: the parallel epoch hands work to its threads three times per batch. With GNU OpenMP's
    default (spin, then sleep) a spinning worker on an oversubscribed machine steals the
    time slice its partner needs: measured on the shared 2-core box (load ~3) ~900 us per
    hand-off against ~13 us with ``OMP_WAIT_POLICY=passive``, i.e. 2 threads 5-40x slower
    than 1. libgomp reads the variable when numba first loads it (the first parallel
    epoch), so a value set later, or already in the environment, wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def run_epoch(
    X: sp.csr_matrix,
    y: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    P: np.ndarray,
    bias: np.ndarray,
    slot: np.ndarray,
    hp: Mapping[str, Any],
    cfg: OptimizerConfig,
    t_first: int,
    lr_scale: float,
    *,
    threads: int = 1,
    dry_run: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Train one epoch with :func:`train_epoch`; returns the (scores, labels) of every padded row.

    ``P`` (the run's table, float32 (d, 3, k+1)) and ``bias`` ([w0, m, v] float32)
    are updated in place; ``t_first`` is the optimizer step number of the first batch.
    ``threads`` > 1 runs :func:`train_epoch_parallel` on that many of numba's threads
    (capped at ``numba.config.NUMBA_NUM_THREADS``); the bytes are the same either way.
    ``dry_run`` runs zero batches: it only compiles (or loads from numba's cache) the
    function for these argument types, so the first epoch's logged throughput is not
    charged with compilation.
    """
    n = order.shape[0]
    if n == 0 and not dry_run:
        # The compiled loop pads the last batch from row 0; with no rows it would read
        # out of bounds and take the process down instead of raising.
        raise LocalFMError("training data: no rows to train on")
    n_batches = 0 if dry_run else max(1, -(-n // batch_size))
    ls = np.float32(lr_scale)
    decay = (cfg.wd * cfg.lr) * ls  # torch engine: wd * lr * lr_scale (float32)
    clip = cfg.clip
    scores = np.empty(n_batches * batch_size, dtype=np.float32)
    labels = np.empty(n_batches * batch_size, dtype=np.float32)
    fn = train_epoch
    if threads > 1:
        fn = train_epoch_parallel
        _passive_omp_wait()
        set_num_threads(min(threads, numba_config.NUMBA_NUM_THREADS))
    fn(
        X.indptr, X.indices, X.data, y, order.astype(np.int64, copy=False), int(batch_size), P,
        cfg.lr, cfg.wd, decay, OPTIMIZERS[cfg.kind], np.float32(clip if clip is not None else 0.0), clip is not None,
        np.float32(cfg.eps), np.float32(cfg.rescale), hp["predictor_type"] == "binary_classifier",
        bool(hp["use_bias"]), bias, np.float32(cfg.bias_lr), np.float32(cfg.bias_wd),
        step_factors(cfg.kind, t_first, n_batches, lr_scale), ls, slot, scores, labels,
    )
    return scores, labels


class NumbaRun:
    """:class:`localfm.fm.engines.EngineRun` of the numba engine."""

    def __init__(self, hp: Mapping[str, Any], table: np.ndarray, w0: np.float32) -> None:
        self.hp = hp
        self.table = table
        self.cfg = optimizer_config(hp, table.shape[2] - 1)
        self.batch_size = int(hp["mini_batch_size"])
        self.threads = resolve_threads(hp)
        self.bias = np.array([w0, 0.0, 0.0], dtype=np.float32)  # [w0, Adam m, Adam v]
        self.slot = np.full(table.shape[0], -1, dtype=np.int32)  # scratch of train_epoch
        self.t = 0  # optimizer steps so far
        self.X: sp.csr_matrix | None = None
        self.y: np.ndarray | None = None
        self.file_order = np.zeros(0, dtype=np.int64)

    @property
    def w0(self) -> np.float32:
        return self.bias[0]

    def set_data(self, X: sp.csr_matrix, y: np.ndarray) -> None:
        first = self.X is None
        self.X, self.y = X, y
        self.file_order = np.arange(X.shape[0], dtype=np.int64)
        if first:
            run_epoch(X, y, self.file_order, self.batch_size, self.table, self.bias, self.slot, self.hp, self.cfg,
                      1, 1.0, threads=self.threads, dry_run=True)

    def epoch(
        self, order: np.ndarray | None, lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.X is not None and self.y is not None, "set_data() first"
        B = self.batch_size
        scores, labels = run_epoch(self.X, self.y, self.file_order if order is None else order, B, self.table,
                                   self.bias, self.slot, self.hp, self.cfg, self.t + 1, lr_scale,
                                   threads=self.threads)
        n_batches = scores.shape[0] // B
        self.t += n_batches
        for bi in range(0, n_batches, every):
            on_batch(bi, scores[bi * B: (bi + 1) * B], labels[bi * B: (bi + 1) * B])
        return scores, labels
