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

Two epochs: :func:`train_epoch` (serial, one pass per batch; used at one thread) and
:func:`train_epoch_parallel` (``_local_threads`` > 1), which runs a compiled worker per
thread, splitting each batch's rows (forward) and its columns (gradient and step) over
the threads without summing anything across them, so it gives the serial function's
bytes at any thread count: seeded runs are identical whatever the threads. The threads
are plain OS threads (compiled ``nogil``) meeting at a spinning barrier, not numba's
``parallel=True`` pool: no OpenMP/TBB threading layer is involved. A batch of 200 rows
x 2 nonzeros is too little work to split profitably
(:func:`localfm.fm.engines.resolve_threads`). numba freezes module globals such as
``BETA1`` into its on-disk cache (``cache=True``), which is keyed on this file: if
the constants in optim.py ever change, touch this file too.
"""
from __future__ import annotations

import ctypes
import functools
import ctypes.util
import platform
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
from llvmlite import ir
from numba import njit
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


def _item_pointer(context, builder, aryty, ary_value, idxty, idx_value):  # noqa: ANN001, ANN202 - numba codegen
    """LLVM pointer to ``ary[idx]`` (idx: an int), no bounds check."""
    ary = context.make_array(aryty)(context, builder, ary_value)
    ind = context.cast(builder, idx_value, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [ind], wraparound=False)


def _is_int64_vector(arr) -> bool:  # noqa: ANN001 - numba type
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64


@intrinsic
def _atomic_add(typingctx, arr, idx, val):  # noqa: ANN001, ANN202, ARG001 - numba intrinsic
    """``arr[idx] += val`` as one sequentially consistent atomic read-modify-write (int64 arrays); returns the old value.

    Why: the parallel epoch's barrier; the release half makes every write a thread did
    before arriving visible to the threads that pass the barrier after it.
    """
    if not (_is_int64_vector(arr) and isinstance(idx, types.Integer) and isinstance(val, types.Integer)):
        return None
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        ptr = _item_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return sig, codegen


@intrinsic
def _atomic_load(typingctx, arr, idx):  # noqa: ANN001, ANN202, ARG001 - numba intrinsic
    """``arr[idx]`` as an acquire load (int64 arrays): re-read on every call, never hoisted out of a loop."""
    if not (_is_int64_vector(arr) and isinstance(idx, types.Integer)):
        return None
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        ptr = _item_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


#: the LLVM intrinsic of the CPU's spin-wait hint: x86 ``pause``, ARM ``hint #1`` (yield); none elsewhere
_RELAX = {"x86_64": ("llvm.x86.sse2.pause", ()), "AMD64": ("llvm.x86.sse2.pause", ()),
          "aarch64": ("llvm.aarch64.hint", (1,)), "arm64": ("llvm.aarch64.hint", (1,))}.get(platform.machine())


def _emit_relax(builder) -> None:  # noqa: ANN001 - llvmlite builder
    """Emit the spin-wait hint (nothing on CPUs without a known one)."""
    if _RELAX is None:
        return
    name, consts = _RELAX
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i32] * len(consts)), name)
    builder.call(fn, [i32(c) for c in consts])


@intrinsic
def _cpu_relax(typingctx):  # noqa: ANN001, ANN202, ARG001 - numba intrinsic
    """The CPU's spin-wait hint (x86 ``pause``, ARM ``yield``; nothing elsewhere): a spinning core backs off."""
    sig = types.void()

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        _emit_relax(builder)
        return context.get_dummy_value()

    return sig, codegen


def _sched_yield_address() -> int:
    """Address of libc's ``sched_yield`` (0 where there is none), registered for the compiled code."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        addr = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError, TypeError):  # no libc to load (TypeError: CDLL(None) on Windows)
        return 0
    if addr:
        from llvmlite import binding

        binding.add_symbol("sched_yield", addr)
    return addr


_HAS_SCHED_YIELD = _sched_yield_address() != 0


@intrinsic
def _yield_cpu(typingctx):  # noqa: ANN001, ANN202, ARG001 - numba intrinsic
    """``sched_yield()``: give the core to another runnable thread (a spin-wait hint where libc has none)."""
    sig = types.void()

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        if _HAS_SCHED_YIELD:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        else:
            _emit_relax(builder)
        return context.get_dummy_value()

    return sig, codegen


#: prefetch the table rows of the batch row this many rows ahead (4, 8 and 16 measured alike)
PREFETCH_AHEAD = 8
#: tables smaller than this stay in cache: no prefetching (measured: ua.base, 2 MB, -10 % with it)
PREFETCH_MIN_BYTES = 8 << 20


@njit(cache=True, error_model="numpy", inline="always")
def _n_rows(indptr, order):  # noqa: ANN001, ANN202 - numba
    """Rows of the epoch: ``order``'s length, or all of the CSR's when ``order`` is empty (file order)."""
    return order.shape[0] if order.shape[0] > 0 else indptr.shape[0] - 1


@njit(cache=True, error_model="numpy", inline="always")
def _row_at(order, n, j):  # noqa: ANN001, ANN202 - numba
    """The row at padded epoch position ``j``: ``order[j % n]``, or ``j % n`` when ``order`` is empty.

    Why an empty ``order`` means file order: an explicit ``arange`` would be 8 bytes a row
    (180 MB at 22.5M rows), held for the whole fit, to say "row j is row j".
    """
    if order.shape[0] == 0:
        return j % n
    return order[j % n]


@njit(cache=True, error_model="numpy")
def _max_batch_nnz(indptr, order, batch_size, n_batches):  # noqa: ANN001, ANN202 - numba
    """Most nonzeros in one padded batch (rows wrap around, as the padding does): sizes scratch buffers."""
    n = _n_rows(indptr, order)
    most = 0
    for b in range(n_batches):
        cnt = 0
        for i in range(batch_size):
            row = _row_at(order, n, b * batch_size + i)
            cnt += indptr[row + 1] - indptr[row]
        most = max(most, cnt)
    return most


@njit(cache=True, error_model="numpy")
def _prefetch_row(P, c):  # noqa: ANN001, ANN202 - numba
    """Prefetch every cache line of table row ``c`` (weights and both moments): ahead of the step."""
    for s in range(P.shape[1]):
        for f in range(0, P.shape[2], 16):
            _prefetch(P, (c, s, f))


@njit(cache=True, error_model="numpy")
def _prefetch_weights(P, c):  # noqa: ANN001, ANN202 - numba
    """Prefetch the cache lines of row ``c``'s weights ``P[c, 0]`` only: ahead of the forward.

    Why not the whole row: the forward reads only the weights; the moments are needed at
    the step, after the whole batch's forward has streamed by (several MB at large
    feature_dim: more than L2). Fetching them early asked for ~2.6x the lines per batch
    row, which queued behind the weights the forward was waiting for, and the step
    re-fetched many of them anyway; it prefetches the full rows itself.
    (Measured, ML-25M-shaped 2.25M rows, one thread: 1.06 s vs 1.21-1.39 s CPU per epoch.)
    """
    for f in range(0, P.shape[2], 16):
        _prefetch(P, (c, 0, f))


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


@njit(cache=True, error_model="numpy", inline="always")
def _clipped(g, use_clip, clip):  # noqa: ANN001, ANN202 - numba
    """MXNet's ``clip_gradient`` on one element, where the run clips."""
    return min(max(g, -clip), clip) if use_clip else g


@njit(cache=True, error_model="numpy", inline="always")
def _step_part(kind, G, W, M, V, cc, with_cc, lr, wd, dec, ncoef, lr_scale, eps, use_clip, clip):  # noqa: ANN001, ANN202, PLR0913
    """Optimizer step of ``W`` (a slice holding one parameter group: scalar lr/wd), gradient ``G - W cc``.

    Same float32 formulas and association as the torch engine's ``step_gathered``
    (Adam's m as torch's lerp ``m + 0.1 (g - m)``, ``addcmul``/``addcdiv`` order): the
    gradient ``G - W cc`` (only ``G`` where ``with_cc`` is false: the linear weight has no
    ``cc`` term), clipped, then L2 decay through the gradient (MXNet) or decoupled (adamw).
    One pass per element, each loop branch-free: ``with_cc`` and ``use_clip`` are constants
    where :func:`_step_row` inlines this, and ``kind`` picks the loop. Why one pass: the
    same work as four passes over the row (gradient, clip, decay, update) did, but the
    step of a row held in L2 took ~125 ns in passes and ~60 ns fused, a cold row ~160 and
    ~113 ns (one thread, 2M random rows; docs/fm.md "The step in one pass"), the same bytes. Why no per-column lr/wd arrays or ``range(lo, hi)``
    bounds: with them LLVM does not vectorise these loops.
    """
    n = G.shape[0]
    b1w = np.float32(1.0 - BETA1)  # torch lerp weight
    b2 = np.float32(BETA2)
    b2w = np.float32(1.0 - BETA2)
    if kind == 1:  # adamw: decoupled decay from the pre-step weight, after the Adam step
        for f in range(n):
            w = W[f]
            g = _clipped(G[f] - w * cc if with_cc else G[f], use_clip, clip)
            m = M[f] + b1w * (g - M[f])
            v = V[f] * b2 + (b2w * g) * g
            M[f] = m
            V[f] = v
            W[f] = (w + (ncoef * (m * lr)) / (np.sqrt(v) + eps)) - w * dec
    elif kind == 2:  # sgd
        for f in range(n):
            w = W[f]
            g = _clipped(G[f] - w * cc if with_cc else G[f], use_clip, clip) + w * wd
            W[f] = w - lr_scale * (g * lr)
    elif kind == 3:  # adagrad
        for f in range(n):
            w = W[f]
            g = _clipped(G[f] - w * cc if with_cc else G[f], use_clip, clip) + w * wd
            v = V[f] + g * g
            V[f] = v
            W[f] = w + ((-lr_scale) * (g * lr)) / (np.sqrt(v) + eps)
    else:  # adam
        for f in range(n):
            w = W[f]
            g = _clipped(G[f] - w * cc if with_cc else G[f], use_clip, clip) + w * wd
            m = M[f] + b1w * (g - M[f])
            v = V[f] * b2 + (b2w * g) * g
            M[f] = m
            V[f] = v
            W[f] = w + (ncoef * (m * lr)) / (np.sqrt(v) + eps)


@njit(cache=True, error_model="numpy")
def _step_row(kind, G, W, M, V, cc, lr, wd, dec, ncoef, lr_scale, eps, use_clip, clip):  # noqa: ANN001, ANN202, PLR0913
    """The lazy step of one table row ``[v | w]`` (``W``, moments ``M`` / ``V``, gradient ``G``, all k+1).

    ``cc`` is the column's sum of g x^2: ``v``'s gradient is ``G - v cc``. ``lr``/``wd``/``dec``
    are the (k+1,) per-column settings; the factors share ``[0]``, the linear weight has ``[k]``.
    The branches on the settings are taken here, so that each inlined loop is branch-free.
    """
    k = W.shape[0] - 1
    if use_clip:
        _step_part(kind, G[:k], W[:k], M[:k], V[:k], cc, True, lr[0], wd[0], dec[0], ncoef, lr_scale, eps,
                   True, clip)
        _step_part(kind, G[k:], W[k:], M[k:], V[k:], cc, False, lr[k], wd[k], dec[k], ncoef, lr_scale, eps,
                   True, clip)
    else:
        _step_part(kind, G[:k], W[:k], M[:k], V[:k], cc, True, lr[0], wd[0], dec[0], ncoef, lr_scale, eps,
                   False, clip)
        _step_part(kind, G[k:], W[k:], M[k:], V[k:], cc, False, lr[k], wd[k], dec[k], ncoef, lr_scale, eps,
                   False, clip)


@njit(cache=True, error_model="numpy", nogil=True)
def _step_chunk(P, nrm, slot, cols, G, cacc, j0, j1, U, prefetch, kind, lr, wd, decay, ncoef, lr_scale, eps,  # noqa: ANN201
                use_clip, clip):
    """The lazy step of list entries ``j0:j1`` of a batch's columns (``U`` long), then their norms.

    The step of a column reads only its own gradient, ``cacc`` entry and table row, so the
    bytes do not depend on which thread runs it. The serial epoch steps its whole list in one
    call and keeps no norms: it passes ``nrm`` empty.
    """
    k = P.shape[2] - 1
    norms = nrm.shape[0] > 0
    for u in range(j0, j1):
        if prefetch and u + PREFETCH_AHEAD < U:
            _prefetch_row(P, cols[u + PREFETCH_AHEAD])
            if norms:
                _prefetch(nrm, (cols[u + PREFETCH_AHEAD],))
        c = cols[u]
        Wc = P[c, 0]
        _step_row(kind, G[u], Wc, P[c, 1], P[c, 2], cacc[u], lr, wd, decay, ncoef, lr_scale, eps, use_clip, clip)
        if norms:
            nrm[c] = _sumsq(Wc, k)
        slot[c] = -1


@njit(cache=True, error_model="numpy")
def train_epoch(  # noqa: ANN201, PLR0913, PLR0912, PLR0915 - one flat loop on purpose
    indptr, indices, data, y, order, batch_size, P, lr, wd, decay, kind, clip, use_clip, eps, rescale,
    binary, use_bias, bias, bias_lr, bias_wd, coefs, lr_scale, slot, scores_out, labels_out,
):
    """One epoch over ``order`` in batches of ``batch_size``; updates ``P`` and ``bias`` in place.

    ``order`` (int64) lists the epoch's rows; empty means every row in file order.

    ``P`` (d, 3, k+1) float32: weights ``[v | w]``, Adam m, Adam v per feature row.
    ``lr``/``wd``/``decay`` (k+1,) float32 per-column settings (``decay`` = wd*lr*lr_scale
    for adamw). ``bias`` = [w0, m, v] float32. ``coefs[b]`` is the float32 bias-corrected
    Adam step factor of batch b. ``slot`` (d,) int32 all -1 (scratch: column -> position
    among the batch's distinct columns; restored to -1 on return). Writes every padded
    row's pre-update score and label to ``scores_out`` / ``labels_out``.
    """
    n = _n_rows(indptr, order)
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
    no_norms = np.empty(0, np.float32)  # the step keeps no column norms here: the forward computes them
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
                ahead = _row_at(order, n, base + i + PREFETCH_AHEAD)
                for p in range(indptr[ahead], indptr[ahead + 1]):
                    _prefetch_weights(P, indices[p])
                    _prefetch(slot, (indices[p],))
            row = _row_at(order, n, base + i)
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
        _step_chunk(P, no_norms, slot, cols, G, cacc, 0, U, U, prefetch, kind, lr, wd, decay, ncoef, lr_scale, eps,
                    use_clip, clip)
        if use_bias:
            _bias_step(bias, gsum, kind, bias_lr, bias_wd, clip, use_clip, eps, coefs[b], lr_scale)


# ----------------------------------------------------------------------------- parallel epoch
# train_epoch_parallel computes what train_epoch does, to the byte, on ``threads`` OS
# threads that each run the whole epoch (:func:`_epoch_worker`, compiled ``nogil``) and
# meet at a spinning barrier twice per batch. Per batch, thread t of T:
#
# 1. forward of the batch rows it claims, FORWARD_CHUNK rows at a time from a shared
#    counter, on the pre-update weights: S_i, score, g_i;  -- barrier (every S_i, g_i written) --
# 2. gradient of the columns it *owns* (blocks of 2**OWNER_SHIFT consecutive columns, dealt
#    round-robin), summed over the whole batch in batch-row order, as train_epoch does,
#    into a list of the batch's owned columns, which it then publishes; then the lazy step
#    and squared norm (for the next forward) of its list's columns, STEP_CHUNK at a time,
#    and of what is left of the other threads' lists once they are published (a column's
#    step reads only its own gradient and row: the thread that runs it does not matter);
#    thread 0 also steps the bias;  -- barrier (every table row written) --
#
# Nothing is summed across threads and a column's sum order does not depend on T, so
# the bytes are the serial function's at any thread count (tests/fm/test_engines.py).
# Why this shape: the earlier design (three numba prange regions per batch plus serial
# list-building passes between them) paid an OpenMP hand-off three times per batch and
# ran O(nnz) bookkeeping on one thread, and was slower with 2 threads than with 1 on
# ml-100k. Here a hand-off is a cache line changing hands (a few hundred ns when both
# threads are running) and every pass is split. The columns' squared norms, which the
# serial forward computes when it first meets a column in a batch, are kept per column
# instead (``nrm``: computed once per epoch, refreshed after each step), which gives
# the same value without a per-batch pass over the distinct columns.

#: columns are owned in blocks of 2**OWNER_SHIFT = 16 (the int32 ``slot`` / float32 ``nrm``
#: entries of 16 columns share one 64-byte cache line: one owner per line, no false sharing)
OWNER_SHIFT = 4
#: a waiting thread spins (``pause``) this many times, then yields its core on every check:
#: spinning answers in ~100 ns when the partner is running; yielding lets the partner run
#: when both share one core (a loaded machine, more threads than cores)
SPIN_BEFORE_YIELD = 1000
#: the forward's rows are claimed in chunks of this many (an atomic add on a shared counter):
#: a thread that runs faster, or is not interrupted, takes more of them, so a slow or
#: descheduled partner no longer holds the barrier for a fixed half of the batch. Any
#: thread computes the same S_i, score and g_i for a row, so the bytes do not depend on who.
FORWARD_CHUNK = 128
#: ``bar[CLAIM_AT + (b & 1)]`` counts batch b's claimed forward rows (a cache line apart from
#: the barrier counter ``bar[0]``; two counters, so one can be reset while the other is in use)
CLAIM_AT = 8
#: the step's columns are claimed STEP_CHUNK at a time, from the thread's own list first and
#: then from the others' (see :func:`_epoch_worker`); ~10 us of work a claim
STEP_CHUNK = 32
#: ``lists[q * LIST_LINE + ...]``: thread q's step list, one cache line per thread: the next
#: unclaimed index (+0), how many batches' lists q has finished (+1), and the list's length (+2)
LIST_LINE = 8


@njit(cache=True, error_model="numpy", inline="always")
def _prefetch_forward(P, nrm, indptr, indices, row):  # noqa: ANN001, ANN202 - numba
    """Prefetch what the parallel forward reads for ``row``: its columns' weights and norms."""
    for p in range(indptr[row], indptr[row + 1]):
        _prefetch_weights(P, indices[p])
        _prefetch(nrm, (indices[p],))


@njit(cache=True, error_model="numpy", inline="always")
def _wait_for(counter, at, target, bar):  # noqa: ANN001, ANN202 - numba
    """Spin until ``counter[at]`` reaches ``target`` (True), or until the abort flag ``bar[1]`` is set (False).

    Spins (``pause``) SPIN_BEFORE_YIELD times, then yields the core on every check.
    """
    spins = 0
    while _atomic_load(counter, at) < target:
        if _atomic_load(bar, 1) != 0:
            return False
        if spins < SPIN_BEFORE_YIELD:
            _cpu_relax()
            spins += 1
        else:
            _yield_cpu()
    return True


@njit(cache=True, error_model="numpy", inline="always")
def _barrier(bar, passed, threads):  # noqa: ANN001, ANN202 - numba
    """Wait until all ``threads`` have arrived at their ``passed + 1``-th barrier; returns ``passed + 1``.

    ``bar[0]`` counts arrivals over the whole epoch (never reset), so barrier m is passed
    once it reaches m * threads: no sense flag, and a thread cannot lap a slow one.
    Returns -1 instead when ``bar[1]`` is set while waiting: a thread failed (or never
    started), and the others must stop rather than wait for it forever.
    """
    passed += 1
    _atomic_add(bar, 0, 1)
    if not _wait_for(bar, 0, passed * threads, bar):
        return -1
    return passed


@njit(cache=True, error_model="numpy", nogil=True)
def _epoch_worker(  # noqa: ANN201, PLR0913, PLR0912, PLR0915 - one flat loop on purpose
    t, threads, bar, lists, owner, S, gs, nrm, cols_all, G_all, cacc_all, mine_p, mine_i,
    indptr, indices, data, y, order, batch_size, P, lr, wd, decay, kind, clip, use_clip, eps, rescale,
    binary, use_bias, bias, bias_lr, bias_wd, coefs, lr_scale, slot, scores_out, labels_out,
):
    """Thread ``t``'s share of :func:`train_epoch` (see the section comment above).

    Shared with the other threads: ``bar`` (int64, all 0 on entry: the barrier counter
    ``bar[0]``, the abort flag ``bar[1]``, the forward's row-claim counters at ``CLAIM_AT``),
    ``lists`` (int64, all 0 on entry: each thread's step-list cursor, finished-list count
    and length, ``LIST_LINE`` apart), ``owner`` (the thread of each block of
    2**OWNER_SHIFT columns; a table lookup is cheaper than a division per nonzero),
    ``S`` (batch_size, k+1) and ``gs`` (batch_size,) (the batch rows' forward sums and
    gradient factors), ``nrm`` (d,) (each column's |v|^2), ``cols_all`` / ``G_all`` /
    ``cacc_all`` (row q: thread q's list of the batch's owned columns, their gradients and
    their sum of g x^2; written by q, stepped by whoever claims them), and the training
    arrays. Its own: ``mine_p`` / ``mine_i``, the batch's nonzeros in owned columns
    (position in ``indices``, batch row). Per-batch arrays are sized by the most nonzeros
    of one batch. Nothing is allocated here and nothing raises: a thread that stopped
    early would leave the others waiting at the barrier.
    """
    n = _n_rows(indptr, order)
    d = P.shape[0]
    k1 = P.shape[2]
    k = k1 - 1
    n_batches = scores_out.shape[0] // batch_size
    cols = cols_all[t]
    G = G_all[t]
    cacc = cacc_all[t]
    mine = t * LIST_LINE
    prefetch = P.size * 4 > PREFETCH_MIN_BYTES
    passed = 0
    for blk in range(t, owner.shape[0], threads):
        for c in range(blk << OWNER_SHIFT, min(d, (blk + 1) << OWNER_SHIFT)):
            nrm[c] = _sumsq(P[c, 0], k)
    half = np.float32(0.5)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    passed = _barrier(bar, passed, threads)  # every norm computed
    if passed < 0:
        return
    for b in range(n_batches):
        base = b * batch_size
        # -- 1. forward on the pre-update weights, chunks of rows claimed as the thread gets to them
        claim = CLAIM_AT + (b & 1)
        w0 = bias[0]
        while True:
            c0 = _atomic_add(bar, claim, FORWARD_CHUNK)
            if c0 >= batch_size:
                break
            c1 = min(c0 + FORWARD_CHUNK, batch_size)
            if prefetch:  # the chunk's first rows; the loop below prefetches the rest as it goes
                for i in range(c0, min(c1, c0 + PREFETCH_AHEAD)):
                    _prefetch_forward(P, nrm, indptr, indices, _row_at(order, n, base + i))
            for i in range(c0, c1):
                if prefetch and i + PREFETCH_AHEAD < c1:
                    _prefetch_forward(P, nrm, indptr, indices, _row_at(order, n, base + i + PREFETCH_AHEAD))
                row = _row_at(order, n, base + i)
                yi = y[row]
                labels_out[base + i] = yi
                Si = S[i]
                for f in range(k1):
                    Si[f] = zero
                sq = zero
                for p in range(indptr[row], indptr[row + 1]):
                    c = indices[p]
                    Wc = P[c, 0]
                    x = data[p]
                    for f in range(k1):
                        Si[f] += x * Wc[f]
                    sq += (x * x) * nrm[c]
                s = (_sumsq(Si, k) - sq) * half + Si[k]
                if use_bias:
                    s = s + w0
                scores_out[base + i] = s
                if binary:
                    out = one / (one + np.exp(-s))
                else:
                    out = s
                gs[i] = (out - yi) * rescale
        passed = _barrier(bar, passed, threads)
        if passed < 0:
            return
        if t == 0:
            # the next batch's claim counter was last used by the previous batch, whose forward
            # every thread left before this batch's forward began; the next barrier publishes it
            bar[CLAIM_AT + ((b + 1) & 1)] = 0
        # -- 2. gradient of the owned columns over every batch row, in batch-row order.
        # First this thread's nonzeros of the batch, listed in batch-row order without a
        # branch: whether a column is this thread's is a coin flip per nonzero, which no
        # branch predictor guesses (timed: the owner-tested walk alone cost each of 2 threads
        # 2.5x what the same walk costs one thread that owns every column; docs/fm.md).
        lists[mine] = 0  # no other thread reads it before this batch's list is published below
        m = 0
        for i in range(batch_size):
            row = _row_at(order, n, base + i)
            for p in range(indptr[row], indptr[row + 1]):
                mine_p[m] = p
                mine_i[m] = i
                m += owner[indices[p] >> OWNER_SHIFT] == t
        U = 0
        for j in range(m):
            if prefetch and j + PREFETCH_AHEAD < m:
                _prefetch(slot, (indices[mine_p[j + PREFETCH_AHEAD]],))
            p = mine_p[j]
            i = mine_i[j]
            c = indices[p]
            u = slot[c]
            if u < 0:
                u = U
                slot[c] = U
                cols[U] = c
                Gu = G[U]
                for f in range(k1):
                    Gu[f] = zero
                cacc[U] = zero
                U += 1
            x = data[p]
            gx = gs[i] * x
            Gu = G[u]
            Si = S[i]
            for f in range(k):
                Gu[f] += gx * Si[f]
            Gu[k] += gx
            cacc[u] += gx * x
        # -- the lazy step of the batch's columns, then their norms for the next forward: the
        # thread's own list first, then what is left of the others' lists. The owners' column
        # counts differ by a few per cent a batch; the thread done first used to wait that
        # long at the barrier, now it takes chunks of the other's list.
        lists[mine + 2] = U
        _atomic_add(lists, mine + 1, 1)  # list b published: its entries, gradients and length
        ncoef = -coefs[b]
        for h in range(threads):
            q = (t + h) % threads
            at = q * LIST_LINE
            if not _wait_for(lists, at + 1, b + 1, bar):  # until q has published this batch's list
                return
            Uq = lists[at + 2]
            while True:
                j0 = _atomic_add(lists, at, STEP_CHUNK)
                if j0 >= Uq:
                    break
                _step_chunk(P, nrm, slot, cols_all[q], G_all[q], cacc_all[q], j0, min(j0 + STEP_CHUNK, Uq), Uq,
                            prefetch, kind, lr, wd, decay, ncoef, lr_scale, eps, use_clip, clip)
        if t == 0 and use_bias:
            gsum = 0.0
            for i in range(batch_size):
                gsum += gs[i]
            _bias_step(bias, gsum, kind, bias_lr, bias_wd, clip, use_clip, eps, coefs[b], lr_scale)
        passed = _barrier(bar, passed, threads)
        if passed < 0:
            return


def _line_aligned(n: int, dtype: type) -> np.ndarray:
    """An uninitialised 1-d array of ``n`` ``dtype`` whose first element starts a 64-byte cache line.

    Why: the threads own columns in blocks of one cache line of these arrays; numpy aligns
    only to 16 bytes, and a line shared by two owners would bounce between the cores on
    every write (false sharing).
    """
    size = np.dtype(dtype).itemsize
    raw = np.empty(n * size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + n * size].view(dtype)


def train_epoch_parallel(  # noqa: PLR0913
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int,
    P: np.ndarray, lr: np.ndarray, wd: np.ndarray, decay: np.ndarray, kind: int, clip: np.float32, use_clip: bool,
    eps: np.float32, rescale: np.float32, binary: bool, use_bias: bool, bias: np.ndarray, bias_lr: np.float32,
    bias_wd: np.float32, coefs: np.ndarray, lr_scale: np.float32, slot: np.ndarray, scores_out: np.ndarray,
    labels_out: np.ndarray, threads: int = 2,
) -> None:
    """:func:`train_epoch` (same arguments, same bytes) on ``threads`` threads.

    Thread 0 is the caller's; the others are started here for the epoch and joined
    before returning. A thread that fails (or cannot be started) raises the abort flag
    ``bar[1]``, so the others leave their barrier instead of waiting for it; the first
    error is re-raised here. ``threads`` = 1 runs the worker alone, which the tests use
    to check it against the serial function. ``slot`` is left alone (all -1): the threads
    use a cache-line-aligned copy.
    """
    n_batches = scores_out.shape[0] // batch_size
    k1 = P.shape[2]
    max_nnz = max(1, int(_max_batch_nnz(indptr, order, batch_size, n_batches)))
    owner = (np.arange(-(-P.shape[0] // (1 << OWNER_SHIFT))) % threads).astype(np.uint8)
    # the barrier counter on a cache line of its own; per-column slots and norms starting on a
    # cache line, so each line of them has exactly one owning thread (see OWNER_SHIFT)
    bar = _line_aligned(16, np.int64)
    bar[:] = 0
    tslot = _line_aligned(P.shape[0], np.int32)
    tslot[:] = -1
    lists = _line_aligned(threads * LIST_LINE, np.int64)
    lists[:] = 0
    # each thread's step list, gradients and g x^2 sums stacked, one row per thread: any thread
    # may step any list's columns
    shared = (bar, lists, owner, np.empty((batch_size, k1), np.float32), np.empty(batch_size, np.float32),
              _line_aligned(P.shape[0], np.float32), np.empty((threads, max_nnz), np.int64),
              np.empty((threads, max_nnz, k1), np.float32), np.empty((threads, max_nnz), np.float32))
    # each thread's own nonzeros of the batch
    own = [(np.empty(max_nnz, np.int64), np.empty(max_nnz, np.int32)) for _ in range(threads)]
    args = (indptr, indices, data, y, order, batch_size, P, lr, wd, decay, kind, clip, use_clip, eps, rescale, binary,
            use_bias, bias, bias_lr, bias_wd, coefs, lr_scale, tslot, scores_out, labels_out)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            _epoch_worker(t, threads, *shared, *own[t], *args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller below
            bar[1] = 1
            errors.append(exc)

    helpers = [threading.Thread(target=work, args=(t,), name=f"localfm-fm-{t}", daemon=True)
               for t in range(1, threads)]
    started: list[threading.Thread] = []
    try:
        for h in helpers:
            h.start()
            started.append(h)
    except BaseException:
        bar[1] = 1
        for h in started:
            h.join()
        raise
    work(0)
    for h in started:
        h.join()
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------- driver
#: the compiled functions' ``order`` for "every row, in file order" (see :func:`_row_at`)
#: (writable: numba types a read-only array differently, which would compile the epoch twice)
FILE_ORDER = np.zeros(0, dtype=np.int64)

def step_factors(kind: str, t_first: int, n_batches: int, lr_scale: float) -> np.ndarray:
    """Per-batch float32 step factors, exactly as the torch engine rounds them.

    Adam: ``float32(adam_coefficient(1, t) * lr_scale)`` for t = t_first .. (Python's
    ``pow``, so identical bits); the other optimizers use ``lr_scale`` itself.
    """
    if kind in ("adam", "adamw"):
        return np.array([adam_coefficient(1.0, t) * lr_scale for t in range(t_first, t_first + n_batches)],
                        dtype=np.float32)
    return np.full(n_batches, lr_scale, dtype=np.float32)


def run_epoch(
    X: sp.csr_matrix,
    y: np.ndarray,
    order: np.ndarray | None,
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
    ``order`` None trains every row of ``X`` in file order (the compiled functions get an
    empty ``order`` for that, not an ``arange``). ``threads`` > 1 runs :func:`train_epoch_parallel` on that many threads (as given:
    more threads than cores only wait at the barriers); the bytes are the same either way.
    ``dry_run`` runs zero batches: it only compiles (or loads from numba's cache) the
    function for these argument types, so the first epoch's logged throughput is not
    charged with compilation.
    """
    n = X.shape[0] if order is None else order.shape[0]
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
    fn = train_epoch if threads <= 1 else functools.partial(train_epoch_parallel, threads=threads)
    fn(
        X.indptr, X.indices, X.data, y, FILE_ORDER if order is None else order.astype(np.int64, copy=False),
        int(batch_size), P,
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

    @property
    def w0(self) -> np.float32:
        return self.bias[0]

    def set_data(self, X: sp.csr_matrix, y: np.ndarray) -> None:
        first = self.X is None
        self.X, self.y = X, y
        if first:
            run_epoch(X, y, None, self.batch_size, self.table, self.bias, self.slot, self.hp, self.cfg,
                      1, 1.0, threads=self.threads, dry_run=True)

    def epoch(
        self, order: np.ndarray | None, lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.X is not None and self.y is not None, "set_data() first"
        B = self.batch_size
        scores, labels = run_epoch(self.X, self.y, order, B, self.table,
                                   self.bias, self.slot, self.hp, self.cfg, self.t + 1, lr_scale,
                                   threads=self.threads)
        n_batches = scores.shape[0] // B
        self.t += n_batches
        for bi in range(0, n_batches, every):
            on_batch(bi, scores[bi * B: (bi + 1) * B], labels[bi * B: (bi + 1) * B])
        return scores, labels
