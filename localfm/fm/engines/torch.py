"""The torch training engine: a per-batch loop of float32 torch ops (the reference engine).

It is the engine the numba one is checked against, and the one that implements
everything (``_local_lazy_wd=false`` too). The sparse input is never densified. Each
batch is precomputed once (distinct columns, inverse index, row segments, values, CSR
patterns); a step gathers the batch's rows of the (d, 3, k+1) table holding
``[v | w]`` and both Adam moments, computes the sums with ``embedding_bag``
(per-sample weights = feature values), derives the gradient by hand (no autograd
graph; the scatter is one sparse x dense product), updates only those rows and
scatters them back. All tensors are float32.

Training runs on one torch thread: the per-batch ops are small, and intra-op threads
only add synchronisation (2.3x slower measured at mini_batch_size 200 on 2 busy cores).

:class:`DeviceRun` is the same step on a GPU (``_local_device``): table, batches and
optimizer state stay on the device, every sum has a fixed order, and on CUDA the step is
replayed as one captured graph per batch (docs/fm.md "On a GPU").
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.functional import embedding_bag

from ..optim import BETA1, BETA2, OptimizerConfig, adam_coefficient, optimizer_config
from . import OnBatch


@dataclass
class Batch:
    """One precomputed mini-batch in the gather/scatter layout the step needs."""

    cols: torch.Tensor  # int64 (U,)  distinct columns present in the batch (the rows of w/V touched)
    cols_np: np.ndarray  # the same, as numpy (for numpy gathers/scatters)
    inv: torch.Tensor  # int64 (nnz,) position of each nonzero's column in ``cols``
    seg: torch.Tensor  # int64 (nnz,) batch row of each nonzero
    val: torch.Tensor  # float32 (nnz,)
    val_sq: torch.Tensor  # float32 (nnz,) squared values
    offsets: torch.Tensor  # int64 (B,) start of each row in the nonzeros (embedding-bag offsets)
    by_col: torch.Tensor  # int64 (nnz,) nonzeros ordered by column (stable)
    col_ptr: torch.Tensor  # int64 (U+1,) CSR row pointer of the (U x B) column-by-row pattern
    col_rows: torch.Tensor  # int64 (nnz,) batch row of each nonzero in ``by_col`` order
    y: torch.Tensor  # float32 (B,)
    size: int  # B (padded size)


def make_batches(X: sp.csr_matrix, y: np.ndarray, batch_size: int, order: np.ndarray | None = None) -> list[Batch]:
    """Split rows (in ``order``, default file order) into padded mini-batches.

    The last partial batch is filled up to ``batch_size`` by wrapping around to the
    first rows, as MXNet's ``last_batch_handle='pad'`` does. In file order full
    batches are plain slices of the CSR arrays (no row gather), and one stable
    argsort per batch yields the distinct columns, the inverse index and the
    column-grouped order used by the gradient scatter.
    """
    n = X.shape[0]
    n_batches = max(1, math.ceil(n / batch_size))
    indptr, indices, data = X.indptr, X.indices, X.data
    y = np.asarray(y, dtype=np.float32)
    out: list[Batch] = []
    for b in range(n_batches):
        lo, hi = b * batch_size, (b + 1) * batch_size
        if order is None and hi <= n:
            p0, p1 = int(indptr[lo]), int(indptr[hi])
            idx = indices[p0:p1]
            val_np = data[p0:p1]
            row_ptr = indptr[lo: hi + 1] - p0
            yb = y[lo:hi]
        else:
            pos = np.arange(lo, hi) % n
            rows = pos if order is None else np.asarray(order)[pos]
            sub = X[rows]  # CSR row gather (no densify)
            idx, val_np, row_ptr, yb = sub.indices, sub.data, sub.indptr, y[rows]
        size = hi - lo
        nnz = idx.shape[0]
        by_col = np.argsort(idx, kind="stable")
        sorted_cols = idx[by_col]
        first = np.empty(nnz, dtype=bool)
        first[:1] = True
        np.not_equal(sorted_cols[1:], sorted_cols[:-1], out=first[1:])
        cols = sorted_cols[first].astype(np.int64)
        inv = np.empty(nnz, dtype=np.int64)
        inv[by_col] = np.cumsum(first) - 1
        counts = np.diff(np.append(np.flatnonzero(first), nnz))
        col_ptr = np.zeros(cols.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=col_ptr[1:])
        seg = np.repeat(np.arange(size, dtype=np.int64), np.diff(row_ptr))
        val = torch.from_numpy(np.array(val_np, dtype=np.float32))
        out.append(
            Batch(
                cols=torch.from_numpy(cols),
                cols_np=cols,
                inv=torch.from_numpy(inv),
                seg=torch.from_numpy(seg),
                val=val,
                val_sq=val * val,
                offsets=torch.from_numpy(np.asarray(row_ptr[:-1], dtype=np.int64)),
                by_col=torch.from_numpy(by_col.astype(np.int64)),
                col_ptr=torch.from_numpy(col_ptr),
                col_rows=torch.from_numpy(seg[by_col]),
                y=torch.from_numpy(np.array(yb, dtype=np.float32)),
                size=size,
            )
        )
    return out


def batch_gradient(Wu: torch.Tensor, bt: Batch, w0: np.float32 | torch.Tensor | None, rescale: float,
                   binary: bool, bags: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's forward pass and rescaled gradient, without applying it.

    ``Wu`` is the (U, k+1) ``[v | w]`` rows of ``bt.cols`` (``w0`` None: no bias term).
    Returns the pre-update ``score`` (B,), ``g`` = ``rescale`` x d(loss)/d(score) (B,;
    ``g.sum()`` is the bias gradient) and ``GU`` (U, k+1) = ``rescale`` x the gradient of
    the touched rows. Split from the update so that :mod:`localfm.scale.train` can sum
    several workers' gradients before one optimizer step (``dist_sync``).

    ``w0`` may be a 1-element tensor on ``Wu``'s device (no host round trip per batch).
    ``bags``: sum each column's gradient terms with ``embedding_bag`` over the column's
    nonzeros (``bt.by_col`` order, bags at ``bt.col_ptr``) instead of a sparse product and
    ``index_add_``. Same values. Why: on a GPU ``index_add_`` adds with atomics, in whatever
    order the threads arrive, and with cuSPARSE's CSR product (and a segmented reduce for
    the second sum) a 25M-row epoch on an H200 gave other bytes on a second run; a bag is
    summed in one fixed order. It also needs no sparse tensor per batch, so the step can be
    captured in a CUDA graph.
    """
    k = Wu.shape[1] - 1
    # [sum_j x_j v_j | sum_j x_j w_j] per row: one fused gather-scale-sum
    S = embedding_bag(bt.inv, Wu, bt.offsets, mode="sum", per_sample_weights=bt.val)
    Vu = Wu[:, :k]
    nrm = (Vu * Vu).sum(1, keepdim=True)  # |v_j|^2 per touched row
    sq = embedding_bag(bt.inv, nrm, bt.offsets, mode="sum", per_sample_weights=bt.val_sq)
    Sv = S[:, :k]
    score = (Sv * Sv).sum(1).sub_(sq.squeeze(1)).mul_(0.5).add_(S[:, k])
    if isinstance(w0, torch.Tensor):
        score += w0
    elif w0 is not None:
        score += float(w0)
    # d(loss)/d(score), rescaled: sigmoid(s)-y (log loss) or s-y (squared error)
    g = (torch.sigmoid(score) if binary else score).sub(bt.y).mul_(rescale)
    gx = g.index_select(0, bt.seg).mul_(bt.val)  # (nnz,)
    # dv_j = sum_i g_i x_ij s_i - v_j sum_i g_i x_ij^2 ; dw_j = sum_i g_i x_ij.
    # Putting 1 in the w slot of S makes the first sum give dw_j too.
    S[:, k] = 1.0
    if bags:
        starts = bt.col_ptr[:-1]
        GU = embedding_bag(bt.col_rows, S, starts, mode="sum", per_sample_weights=gx.index_select(0, bt.by_col))
        c = embedding_bag(bt.by_col, gx.mul_(bt.val).unsqueeze(1), starts, mode="sum").squeeze(1)
    else:
        # GU = M @ S with M[u, i] = g_i x_iu: one sparse x dense product instead
        # of gather + scale + scatter over the nonzeros (~45 % faster, measured)
        M = torch.sparse_csr_tensor(bt.col_ptr, bt.col_rows, gx.index_select(0, bt.by_col),
                                    (Wu.shape[0], bt.size), check_invariants=False)
        GU = M @ S
        c = torch.zeros(Wu.shape[0]).index_add_(0, bt.inv, gx.mul_(bt.val))
    GU[:, :k].addcmul_(Vu, c.unsqueeze(1), value=-1.0)
    return score, g, GU


# ------------------------------------------------------------------------- optimizer steps
def step_gathered(
    w: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    cfg: OptimizerConfig,
    lr: torch.Tensor,
    wd: torch.Tensor,
    t: int,
    lr_scale: float = 1.0,
) -> None:
    """One optimizer step on already-gathered rows, in place on ``w``, ``m`` and ``v``.

    ``w``/``m``/``v`` may be strided views (the table keeps weights and both moment
    slots of a row side by side so one gather and one scatter move all three);
    ``grad`` is ``rescale_grad`` x the gradient, same shape, and is consumed. ``lr`` /
    ``wd`` are ``cfg.lr`` / ``cfg.wd`` as tensors (one value per column). ``t`` is the
    step number (1 for the first step) used by Adam's bias correction.
    """
    g = grad if cfg.clip is None else grad.clamp_(-cfg.clip, cfg.clip)
    if cfg.kind == "adamw":
        decay = w * (wd * lr * lr_scale)
    else:
        g.addcmul_(w, wd)  # L2 through the gradient (MXNet)
        decay = None
    if cfg.kind == "sgd":
        w.sub_(g * lr, alpha=lr_scale)
    elif cfg.kind == "adagrad":
        v.addcmul_(g, g)
        w.addcdiv_(g * lr, v.sqrt().add_(cfg.eps), value=-lr_scale)
    else:  # adam / adamw
        m.lerp_(g, 1.0 - BETA1)  # b1*m + (1-b1)*g
        v.mul_(BETA2).addcmul_(g, g, value=1.0 - BETA2)
        coef = adam_coefficient(1.0, t) * lr_scale
        w.addcdiv_(m * lr, v.sqrt().add_(cfg.eps), value=-coef)
    if decay is not None:
        w.sub_(decay)


def decay_absent_rows(param: torch.Tensor, rows: torch.Tensor, lr: torch.Tensor, wd: torch.Tensor,
                      lr_scale: float = 1.0) -> None:
    """Local-only non-lazy weight decay: shrink the rows *not* in the batch too.

    Used when ``_local_lazy_wd=false``; the cloud never does this.
    """
    mask = torch.ones(param.shape[0], dtype=torch.bool, device=param.device)
    mask[rows] = False
    param[mask] *= 1.0 - lr * lr_scale * wd


@dataclass
class ScalarState:
    """Optimizer state of a scalar parameter (the global bias ``w0``), float32 values."""

    m: np.float32 = np.float32(0.0)
    v: np.float32 = np.float32(0.0)
    t: int = 0


def step_scalar(w: np.float32, state: ScalarState, grad: float, cfg: OptimizerConfig, lr_scale: float = 1.0) -> np.float32:
    """:func:`step_gathered` for the bias (``cfg.bias_lr`` / ``cfg.bias_wd``), in numpy float32 scalars.

    The bias gets a step every batch; doing it with ~15 tiny torch ops cost more
    than the whole factor update at small batch sizes, so it runs as scalar
    arithmetic here (same formulas, float32).
    """
    f32 = np.float32
    state.t += 1
    lr, wd = f32(cfg.bias_lr), f32(cfg.bias_wd)
    g = f32(grad)
    if cfg.clip is not None:
        g = f32(min(max(g, -cfg.clip), cfg.clip))
    decay = f32(0.0)
    if cfg.kind == "adamw":
        decay = w * wd * lr * f32(lr_scale)
    else:
        g = g + wd * w
    if cfg.kind == "sgd":
        w_new = w - f32(lr_scale) * lr * g
    elif cfg.kind == "adagrad":
        state.v = state.v + g * g
        w_new = w - f32(lr_scale) * lr * g / (np.sqrt(state.v) + f32(cfg.eps))
    else:
        state.m = f32(BETA1) * state.m + f32(1.0 - BETA1) * g
        state.v = f32(BETA2) * state.v + f32(1.0 - BETA2) * g * g
        coef = f32(adam_coefficient(1.0, state.t) * lr_scale)
        w_new = w - coef * lr * state.m / (np.sqrt(state.v) + f32(cfg.eps))
    return f32(w_new - decay)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- the run
class TorchRun:
    """:class:`localfm.fm.engines.EngineRun` of the torch engine."""

    def __init__(self, hp: Mapping[str, Any], table: np.ndarray, w0: np.float32) -> None:
        self.hp = hp
        self.table = table  # numpy take / fancy assignment gather and scatter its rows:
        # 2-3x faster than torch's index_select/index_copy_ on CPU (measured)
        self.W = torch.from_numpy(table)[:, 0]  # same memory, for the non-lazy decay
        self.k = table.shape[2] - 1
        self.cfg = optimizer_config(hp, self.k)
        self.lr = torch.from_numpy(self.cfg.lr)
        self.wd = torch.from_numpy(self.cfg.wd)
        self.batch_size = int(hp["mini_batch_size"])
        self._w0 = np.float32(w0)
        self.bias_state = ScalarState()
        self.t = 0  # optimizer steps so far
        self.X: sp.csr_matrix | None = None
        self.y: np.ndarray | None = None
        self.file_batches: list[Batch] | None = None

    @property
    def w0(self) -> np.float32:
        return self._w0

    def set_data(self, X: sp.csr_matrix, y: np.ndarray) -> None:
        self.X, self.y = X, y
        self.file_batches = None
        if not self.hp["_local_shuffle"]:  # built once, outside the timed epochs
            with _one_thread():
                self.file_batches = make_batches(X, y, self.batch_size)

    def epoch(
        self, order: np.ndarray | None, lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.X is not None and self.y is not None, "set_data() first"
        with _one_thread():
            if order is None:
                if self.file_batches is None:
                    self.file_batches = make_batches(self.X, self.y, self.batch_size)
                batches = self.file_batches
            else:
                batches = make_batches(self.X, self.y, self.batch_size, order=order)
            return self._epoch(batches, lr_scale, on_batch, every)

    def _epoch(
        self, batches: list[Batch], lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        B, cfg, P_np = self.batch_size, self.cfg, self.table
        binary = self.hp["predictor_type"] == "binary_classifier"
        use_bias = self.hp["use_bias"]
        lazy_wd = self.hp["_local_lazy_wd"]
        rescale = cfg.rescale
        w0 = self._w0
        scores_np = np.empty(len(batches) * B, dtype=np.float32)
        labels_np = np.empty(len(batches) * B, dtype=np.float32)
        scores_all, labels_all = torch.from_numpy(scores_np), torch.from_numpy(labels_np)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            for bi, bt in enumerate(batches):
                Pu_np = P_np.take(bt.cols_np, axis=0)  # (U, 3, k+1) rows touched by the batch
                Pu = torch.from_numpy(Pu_np)
                Wu = Pu[:, 0]
                score, g, GU = batch_gradient(Wu, bt, w0 if use_bias else None, rescale, binary)
                off = bi * B
                scores_all[off: off + bt.size] = score
                labels_all[off: off + bt.size] = bt.y
                self.t += 1
                step_gathered(Wu, Pu[:, 1], Pu[:, 2], GU, cfg, self.lr, self.wd, self.t, lr_scale)
                P_np[bt.cols_np] = Pu_np
                if not lazy_wd:
                    decay_absent_rows(self.W, bt.cols, self.lr, self.wd, lr_scale)
                if use_bias:
                    w0 = step_scalar(w0, self.bias_state, float(g.sum()), cfg, lr_scale)
                if bi % every == 0:
                    on_batch(bi, scores_np[off: off + bt.size], labels_np[off: off + bt.size])
        self._w0 = w0
        return scores_np, labels_np


# ------------------------------------------------------------------- on an accelerator
def step_scaled(w: torch.Tensor, m: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, cfg: OptimizerConfig,
                lr: torch.Tensor, wd: torch.Tensor, scale: torch.Tensor, coef: torch.Tensor) -> None:
    """:func:`step_gathered` with the step-dependent numbers as 1-element device tensors.

    ``scale`` is the learning-rate schedule's factor, ``coef`` Adam's bias-corrected step
    size times it (:func:`~localfm.fm.optim.adam_coefficient`, from the host in double
    precision, stored as float32). As tensors they can change from batch to batch inside
    one captured CUDA graph; :func:`step_gathered` takes them as Python numbers, which a
    graph would freeze at their values when it was captured.
    """
    g = grad if cfg.clip is None else grad.clamp_(-cfg.clip, cfg.clip)
    if cfg.kind == "adamw":
        decay = w * (wd * lr * scale)
    else:
        g.addcmul_(w, wd)
        decay = None
    if cfg.kind == "sgd":
        w.sub_(g * lr * scale)
    elif cfg.kind == "adagrad":
        v.addcmul_(g, g)
        w.sub_((g * lr).div_(v.sqrt().add_(cfg.eps)).mul_(scale))
    else:
        m.lerp_(g, 1.0 - BETA1)
        v.mul_(BETA2).addcmul_(g, g, value=1.0 - BETA2)
        w.sub_((m * lr).div_(v.sqrt().add_(cfg.eps)).mul_(coef))
    if decay is not None:
        w.sub_(decay)


@dataclass
class PackedBatches:
    """Every batch of an epoch padded to one shape and stacked, on the device.

    Why one shape: a CUDA graph replays fixed tensor shapes, and a batch's distinct
    columns (``U``) and nonzeros vary. Each batch gets ``u_max`` column slots (at least one
    spare) and ``n_max`` nonzeros. Spare slots point at a scratch row of the table (row
    ``d``, zeros, never copied back); spare nonzeros have value 0, belong to the batch's
    last row and to the last spare slot, so they add exact zeros everywhere. Two copies per
    batch (``ints``, ``floats``) load a batch into the step's static inputs.
    """

    ints: torch.Tensor  # (batches, 2*u_max + 1 + 4*n_max + B) int64: cols|inv|seg|by_col|col_rows|col_ptr|offsets
    floats: torch.Tensor  # (batches, 2*n_max + B) float32: val|val_sq|y
    u_max: int
    n_max: int
    size: int  # B

    @property
    def batches(self) -> int:
        return self.ints.shape[0]

    def views(self, ints: torch.Tensor, floats: torch.Tensor) -> Batch:
        """A :class:`Batch` whose tensors are views into one batch's ``ints`` / ``floats`` rows."""
        u, n, b = self.u_max, self.n_max, self.size
        cut = np.cumsum([0, u, n, n, n, n, u + 1, b])
        part = [ints[cut[i]:cut[i + 1]] for i in range(len(cut) - 1)]
        cols, inv, seg, by_col, col_rows, col_ptr, offsets = part
        return Batch(cols=cols, cols_np=np.empty(0, np.int64), inv=inv, seg=seg, val=floats[:n],
                     val_sq=floats[n:2 * n], offsets=offsets, by_col=by_col, col_ptr=col_ptr, col_rows=col_rows,
                     y=floats[2 * n:], size=b)


def pack_epoch(X: sp.csr_matrix, y: np.ndarray, batch_size: int, order: np.ndarray | None, scratch_row: int,
               device: str, at_least: tuple[int, int] = (0, 0)) -> PackedBatches:
    """:func:`make_batches` for a whole epoch at once, built on ``device`` and already padded.

    Why not :func:`make_batches` and then padding: per batch that is a dozen small numpy
    calls and an argsort, 8-10 s of host time for 25M rows before a 1 s epoch on an H200.
    Here a few whole-epoch tensor ops do every batch at once: rows in epoch order (padded
    by wrapping, as MXNet does), their nonzeros gathered, and one stable sort of
    (batch, column) keys that gives every batch's distinct columns, slots and column-grouped
    order. The batches are :func:`make_batches`' own, field for field (the tests compare
    them), padded as :class:`PackedBatches` says; ``at_least`` is the smallest (u_max,
    n_max) to pad to (the shape a graph was already captured for).
    """
    n, d = X.shape
    B = int(batch_size)
    nb = max(1, math.ceil(n / B))
    dev = torch.device(device)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    indptr = t(X.indptr.astype(np.int64))
    pos = torch.arange(nb * B, device=dev) % n
    rows = pos if order is None else t(np.asarray(order, np.int64))[pos]  # the epoch's padded rows
    begin = indptr[rows]
    cnt = indptr[rows + 1] - begin
    rp = torch.zeros(nb * B + 1, dtype=torch.int64, device=dev)
    torch.cumsum(cnt, 0, out=rp[1:])
    total = int(rp[-1])
    row_of = torch.repeat_interleave(torch.arange(nb * B, device=dev), cnt, output_size=total)
    src = begin[row_of] + torch.arange(total, device=dev) - rp[:-1][row_of]
    idx = t(X.indices)[src].long()
    val = t(X.data.astype(np.float32, copy=False))[src]
    b_of = row_of // B
    start = rp[0:nb * B:B]  # each batch's first nonzero
    nnz = rp[B::B] - start
    local = torch.arange(total, device=dev) - start[b_of]  # a nonzero's position in its batch
    # One stable sort: batch-major, then column, ties in batch order (make_batches' argsort).
    skey, perm = torch.sort(b_of * d + idx, stable=True)
    sb = b_of[perm]
    first = torch.ones(total, dtype=torch.bool, device=dev)
    first[1:] = skey[1:] != skey[:-1]  # a new (batch, column): a new slot
    distinct = torch.cumsum(first.long(), 0) - 1
    u = torch.bincount(sb[first], minlength=nb)
    slot = distinct - (torch.cumsum(u, 0) - u)[sb]  # slot of each sorted nonzero within its batch
    sorted_local = torch.arange(total, device=dev) - start[sb]
    u_max = max(at_least[0], int(u.max()) + 1 if total else 1)
    n_max = max(at_least[1], 1, int(nnz.max()))
    # ints: cols | inv | seg | by_col | col_rows | col_ptr | offsets  (PackedBatches.views)
    o_inv, o_seg = u_max, u_max + n_max
    o_by, o_cr, o_cp = u_max + 2 * n_max, u_max + 3 * n_max, u_max + 4 * n_max
    o_off = o_cp + u_max + 1
    ints = torch.empty((nb, o_off + B), dtype=torch.int64, device=dev)
    ints[:, :u_max] = scratch_row  # spare slots: the scratch row
    ints[sb[first], slot[first]] = skey[first] % d
    ints[:, o_inv:o_seg] = u_max - 1  # spare nonzeros: the last spare slot ...
    inv = torch.empty(total, dtype=torch.int64, device=dev)
    inv[perm] = slot
    ints[b_of, o_inv + local] = inv
    seg = row_of % B
    ints[:, o_seg:o_by] = B - 1  # ... in the batch's last row
    ints[b_of, o_seg + local] = seg
    ints[:, o_by:o_cr] = torch.arange(n_max, device=dev)  # spare nonzeros come last, in column order
    ints[sb, o_by + sorted_local] = local[perm]
    ints[:, o_cr:o_cp] = B - 1
    ints[sb, o_cr + sorted_local] = seg[perm]
    ints[:, o_cp:o_cp + u_max] = nnz[:, None]  # slots past the batch's own: empty, the last one holds the spares
    ints[:, o_cp + u_max] = n_max
    ints[sb[first], o_cp + slot[first]] = sorted_local[first]
    ints[:, o_off:] = (rp[:-1] - start.repeat_interleave(B)).view(nb, B)
    floats = torch.zeros((nb, 2 * n_max + B), dtype=torch.float32, device=dev)
    floats[b_of, local] = val
    floats[b_of, n_max + local] = val * val
    floats[:, 2 * n_max:] = t(np.asarray(y, np.float32))[rows].view(nb, B)
    return PackedBatches(ints, floats, u_max, n_max, B)


class DeviceRun:
    """:class:`localfm.fm.engines.EngineRun` of the torch engine on an accelerator (``_local_device``).

    The same step as :class:`TorchRun` (:func:`batch_gradient`, the optimizer formulas),
    with everything it touches kept on the device so that a batch never waits for the
    host: the table (plus a scratch row), the epoch's batches (:class:`PackedBatches`), the
    bias and its Adam moments (a 3-element tensor, not host scalars), the per-row scores.
    The host sees the weights once per epoch (copied into the estimator's ``table``, which
    its validation and the saved model read) and the scores of every ``every``-th batch.

    On CUDA the step is captured once as a CUDA graph and replayed per batch. Why: a step
    is ~45 small kernels; launched one by one from Python it took 0.5 ms of host time per
    batch on an H200 against ~0.14 ms of kernel time (measured, docs/fm.md), so the GPU
    mostly waited. A replay costs one launch. Before capture the step runs once for real
    (the warm-up torch asks for) on a copy of the state, which is then put back. If capture
    fails, the same step runs eagerly (``graph_error`` says why): same bytes, slower.
    Non-lazy weight decay (boolean-mask indexing, a host sync) always runs eagerly.

    Every sum has one fixed order (``bags=True``; the scatter writes distinct rows, except
    spare slots, which all hold the scratch row's zeros), so the same seed gives the same
    bytes on one device, graph or not. They are not the CPU engines' bytes: a GPU rounds
    in another order (docs/fm.md says by how much the metrics move). Nothing here is
    specific to CUDA but the graph, so on ``cpu`` it runs the same step (the tests do).
    """

    #: capture the step as a CUDA graph on CUDA devices (benchmarks.gpu turns it off to time the eager step)
    cuda_graphs = True

    def __init__(self, hp: Mapping[str, Any], table: np.ndarray, w0: np.float32, device: str,
                 graphs: bool | None = None) -> None:
        self.hp = hp
        self.device = device
        self.table = table
        d, _, k1 = table.shape
        self.k = k1 - 1
        self.cfg = optimizer_config(hp, self.k)
        self.P = torch.zeros((d + 1, 3, k1), dtype=torch.float32, device=device)  # row d: scratch
        self.P[:d] = torch.from_numpy(table).to(device)
        self.lr = torch.from_numpy(self.cfg.lr).to(device)
        self.wd = torch.from_numpy(self.cfg.wd).to(device)
        self.bias = torch.tensor([float(w0), 0.0, 0.0], dtype=torch.float32, device=device)  # w0, Adam m, v
        self.bias_lr = torch.tensor([self.cfg.bias_lr], dtype=torch.float32, device=device)
        self.bias_wd = torch.tensor([self.cfg.bias_wd], dtype=torch.float32, device=device)
        self.scale = torch.ones(1, dtype=torch.float32, device=device)  # lr schedule factor
        self.coef = torch.ones(1, dtype=torch.float32, device=device)  # Adam step size x scale
        self.batch_size = int(hp["mini_batch_size"])
        self.t = 0
        self.graphs = (self.cuda_graphs and device.startswith("cuda")) if graphs is None else graphs
        self.graph_error: str | None = None
        self.X: sp.csr_matrix | None = None
        self.y: np.ndarray | None = None
        self.packed: PackedBatches | None = None
        self._shape = (0, 0)  # (u_max, n_max) of the static inputs and the graph
        self._inputs: tuple[torch.Tensor, torch.Tensor, Batch] | None = None  # ints, floats, views into them
        self._score: torch.Tensor | None = None
        self._graph: Any = None

    @property
    def w0(self) -> np.float32:
        return np.float32(self.bias[0].item())

    def _pack(self, order: np.ndarray | None) -> PackedBatches:
        assert self.X is not None and self.y is not None, "set_data() first"
        packed = pack_epoch(self.X, self.y, self.batch_size, order, self.P.shape[0] - 1, self.device,
                            at_least=self._shape)
        if (packed.u_max, packed.n_max) != self._shape:  # wider than before: new static inputs, new graph
            self._shape, self._graph = (packed.u_max, packed.n_max), None
            ints = torch.empty(packed.ints.shape[1], dtype=torch.int64, device=self.device)
            floats = torch.empty(packed.floats.shape[1], dtype=torch.float32, device=self.device)
            self._inputs = (ints, floats, packed.views(ints, floats))
            self._score = torch.empty(packed.size, dtype=torch.float32, device=self.device)
        return packed

    def set_data(self, X: sp.csr_matrix, y: np.ndarray) -> None:
        self.X, self.y = X, y
        self.packed = None if self.hp["_local_shuffle"] else self._pack(None)

    def _step(self) -> None:
        """One batch from the static inputs: forward, gradient, optimizer, scatter; the score into ``_score``."""
        bt = self._inputs[2]
        cfg, P = self.cfg, self.P
        Pu = P.index_select(0, bt.cols)
        Wu = Pu[:, 0]
        use_bias = self.hp["use_bias"]
        score, g, GU = batch_gradient(Wu, bt, self.bias[:1] if use_bias else None, cfg.rescale,
                                      self.hp["predictor_type"] == "binary_classifier", bags=True)
        self._score.copy_(score)
        step_scaled(Wu, Pu[:, 1], Pu[:, 2], GU, cfg, self.lr, self.wd, self.scale, self.coef)
        P.index_copy_(0, bt.cols, Pu)
        if use_bias:
            b = self.bias
            step_scaled(b[0:1], b[1:2], b[2:3], g.sum().reshape(1), cfg, self.bias_lr, self.bias_wd, self.scale,
                        self.coef)

    def _capture(self) -> None:
        """Record :meth:`_step` as a CUDA graph (static inputs already loaded with a real batch).

        The warm-up step really runs and changes the state; the capture only records kernels.
        So the state is put back once, after both (or after a failure), and the caller then
        replays the graph for this batch."""
        saved = (self.P.clone(), self.bias.clone())
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._step()  # warm-up: lazy initialisation happens outside the capture
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
            self._graph = graph
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            self.graph_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self.graphs = False
        finally:
            self.P.copy_(saved[0])
            self.bias.copy_(saved[1])

    def epoch(
        self, order: np.ndarray | None, lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if order is None:
            if self.packed is None:
                self.packed = self._pack(None)
            packed = self.packed
        else:
            packed = self._pack(order)
        from ...device import synchronize

        with torch.no_grad():
            out = self._epoch(packed, lr_scale, on_batch, every)
            synchronize(self.device)
        return out

    def _epoch(
        self, packed: PackedBatches, lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        B, n = packed.size, packed.batches
        ints, floats, bt = self._inputs
        lazy_wd = self.hp["_local_lazy_wd"]
        # Adam's step size per batch, in double precision on the host as the other engines do it
        coefs = torch.tensor([adam_coefficient(1.0, self.t + i + 1) * lr_scale for i in range(n)],
                             dtype=torch.float32).to(self.device)
        self.scale.fill_(lr_scale)
        scores = torch.empty(n * B, dtype=torch.float32, device=self.device)
        for bi in range(n):
            ints.copy_(packed.ints[bi])
            floats.copy_(packed.floats[bi])
            self.coef.copy_(coefs[bi:bi + 1])
            self.t += 1
            if self.graphs and lazy_wd and self._graph is None:
                self._capture()
            if self._graph is not None and lazy_wd:
                self._graph.replay()
            else:
                self._step()
                if not lazy_wd:
                    cols = bt.cols
                    decay_absent_rows(self.P[:-1, 0], cols[cols < self.P.shape[0] - 1], self.lr, self.wd, lr_scale)
            scores[bi * B:(bi + 1) * B].copy_(self._score)
            if bi % every == 0:
                on_batch(bi, self._score.cpu().numpy(), packed.floats[bi, 2 * packed.n_max:].cpu().numpy())
        self.table[:, 0] = self.P[:-1, 0].cpu().numpy()  # the estimator reads the weights from its table
        labels = packed.floats[:, 2 * packed.n_max:].reshape(-1)
        return scores.cpu().numpy(), labels.cpu().numpy()
