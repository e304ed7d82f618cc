"""Exact top-x by inner product for many users at once: the engine behind ``localfm recommend``.

It returns what FAISS ``IndexFlatIP.search`` returns (the k largest inner products per
query, best first) but is built for the recommender shape: hundreds of thousands of
users against tens of thousands of items in ~65 dimensions, where FAISS spends most of
its time in heap updates rather than in the matrix product.

How it stays exact and fast:

* Users are processed in batches and items in blocks, so memory is
  ``batch × block`` (never users × items).
* Items are ranked by decreasing norm (then row); a block's "columns" are ranks, and
  the tie rule is by rank: among equal scores the smaller rank makes the cut, whatever
  order the blocks are visited in. Without pruning the blocks are consecutive ranks.
* The first block visited is scored exactly (float32 GEMM) and seeds a per-user top-k
  (with numba a heapify per user; without, ``torch.topk`` plus a stable sort only for
  rows where ties straddle the cut). For later blocks only scores reaching the user's
  threshold can matter. With numba installed (``kernel="numba"``, see ``_heapscan.py``)
  one GIL-free pass per block counts candidates per 32-score chunk with SIMD and updates
  a min-heap only inside chunks that have one; one Python thread per core, each with
  single-threaded torch GEMMs. In float32 that whole loop is one numba call per core
  (:func:`_scan_users_fused`): tiles of 128 users × one block multiplied by torch's own
  sgemm and compared while in L2, winners kept in per-user key buffers cut back by
  selection. Without numba (``kernel="torch"``) the same algorithm uses torch ops
  (compare, nonzero, a small stable top-k merge): exact, but slower.
* On CPUs with bfloat16 dot-product instructions (AVX512_BF16 / AMX) the later blocks
  are screened with a bfloat16 GEMM, twice the float32 throughput. Screening uses a
  rigorous error bound: ``|bf16 score − exact| ≤ 2⁻⁶·‖u‖·‖i‖`` (input rounding 2·2⁻⁸,
  fp32 accumulation, bf16 output rounding 2⁻⁸, with slack), so every item that could
  beat the threshold survives; survivors are then re-scored in float32 and only the
  exact scores enter the result. The answer is the exact float32 top-k either way.
* Exclusions (items a user already rated) never enter the running top-k, so the
  result is the exact top-k *after* exclusion, with no over-fetching.
* Pruning (``prune=True``, the default), per (user, block). Blocks (≤ 512 items) hold
  items alike in factor norm ``‖i_V‖`` *and* in the last column ``w`` (√blocks bands by
  ``‖i_V‖``, each cut by ``w``; :func:`_pruning_blocks`). Each user gets, for every
  block, the Cauchy–Schwarz bound ``‖u_V‖·max‖i_V‖ + max(u_w·w_max, u_w·w_min)`` plus a
  float32 rounding slack (FM vectors: ``[V, 1]`` users, ``[V, w]`` items). Blocks are
  visited by decreasing bound of the batch's median user, so thresholds rise fast; a
  block is scored only for the users whose bound for it reaches their k-th score (the
  GEMM runs on those rows only), and a user whom no remaining block can reach leaves the
  batch. A pruned item could never have entered the result (strict ``<``, rounding
  slack): the ids are exactly those of the unpruned scan, ties included.
  :attr:`TopX.skipped` counts the (user, item) scores never computed.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..device import CPU, float32_matmul, resolve_device
from ..errors import LocalFMError
from ..progress import progress

#: Relative error bound of a bfloat16 GEMM (bf16 inputs, fp32 accumulation, bf16 output)
#: per unit of ‖u‖·‖i‖; the worst case is about 1.2e-2, 2⁻⁶ ≈ 1.6e-2 leaves slack.
BF16_REL_ERROR = 2.0**-6

#: Screen a block in bfloat16 only while the previous block let fewer than this fraction
#: of scores past the threshold: re-scoring a survivor one by one costs far more than
#: its share of a GEMM, so early blocks (many survivors) stay in float32.
BF16_SWITCH = 0.004

#: Slack, per unit of ‖u‖·‖i‖, added to the pruning bound: a float32 GEMM score is within
#: d·2⁻²⁴·‖u‖·‖i‖ of the exact one (the bf16 screen's re-score likewise), so a pruned
#: item can never reach the threshold through rounding; 2⁻¹⁰ covers d up to ~16,000.
PRUNE_SLACK = 2.0**-10

#: Most float32 scores the device path holds at once (1 GiB; the top-k's work space about
#: doubles it): a user batch times a large catalogue is scored in slices of users below this.
#: On the H200, 4,096 users x 62,423 items (0.95 of this) ranked about as fast as 16,384 at once
#: (3.8 times it), in the runs before this limit existed (docs/recommend.md).
DEVICE_SCORES = 1 << 28

#: Item block width while pruning: a block is skipped or scored per user as a whole, so
#: narrower blocks skip more; 512 columns still keep a (1024 × 65) · (65 × 512) GEMM
#: efficient (256 would compute ~2 % fewer scores on FM-shaped vectors for twice the blocks).
#: Small catalogues get at least ~16 blocks (of no fewer than PRUNE_MIN_BLOCK items), so an
#: ml-100k-sized one (1,682 items) is not a single unprunable block.
PRUNE_BLOCK = 512
PRUNE_MIN_BLOCK = 128


@dataclass
class TopX:
    """Best-first results: ``ids[r, j]`` is the j-th best item row for user row r.

    Rows with fewer than k available items (everything else excluded) are padded with
    score ``-inf`` and id ``-1``; :func:`trim` drops the padding.
    """

    scores: np.ndarray  # (n_users, k) float32
    ids: np.ndarray  # (n_users, k) int64
    #: (user, item) scores pruned, never computed, and all users × items of this result.
    skipped: int = 0
    total: int = 0

    @property
    def skipped_fraction(self) -> float:
        """Share of the users × items scores that pruning never computed (0 when there were none)."""
        return self.skipped / self.total if self.total else 0.0


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 dot products (so bf16 screening is a speed-up)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads, restoring the previous setting after."""
    import torch

    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def validate_k(k: Any) -> int:
    """k must be a positive integer (the CLI and API share this message)."""
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise LocalFMError(f"k: expected a positive integer, got {k!r}", param="k") from None
    if value != k or value <= 0:
        raise LocalFMError(f"k: expected a positive integer, got {k!r}", param="k")
    return value


def to_bf16(X: Any) -> Any:
    """float32 → bfloat16 torch tensor with round-to-nearest-even (the error bound assumes it).

    Done with integer ops in NumPy: measurably faster than ``Tensor.to(torch.bfloat16)``
    here, and the rounding mode is explicit rather than an implementation detail.
    """
    import torch

    return _tensor(bf16_bits(X)).view(torch.bfloat16)


def bf16_bits(X: Any) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of float32 ``X``, rounded to nearest even."""
    a = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    bits = a.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _check_matrix(name: str, X: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise LocalFMError(f"{name}: expected a 2-d array of vectors, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        bad = int(np.argwhere(~np.isfinite(X))[0][0])
        raise LocalFMError(f"{name}: row {bad} contains NaN or infinite values")
    return X


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str) -> str:
    """``"fp32"`` or ``"bf16"``: the screening precision ``precision`` means on this CPU."""
    if precision not in PRECISIONS:
        raise LocalFMError(f"precision: expected 'auto', 'fp32' or 'bf16', got {precision!r}", param="precision")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


@dataclass(frozen=True)
class PreparedItems:
    """The item side of the engine: visit order, blocks and pruning bounds, built once.

    Why a value of its own: a job scores many user batches (and on Ray, many actors score
    many batches) against the same items. Preparing them costs a sort, a permuted copy and
    per-block transposes; doing it per batch made every Ray call pay it again and hold its
    own copies. Everything here is NumPy, so ``ray.put`` shares it zero-copy per node.
    """

    items: np.ndarray  # (n_items, d) float32, as given
    perm: np.ndarray  # rank order (the tie rule's order): item rows by decreasing norm
    inv_perm: np.ndarray
    Ip: np.ndarray  # items[perm], C-contiguous; a "column" is a row of Ip (a rank)
    blocks: tuple[np.ndarray, ...]  # per block, its columns (int64, ascending)
    block_of: np.ndarray  # per column, its block
    pos_in_block: np.ndarray  # per column, its position in that block
    block_T: tuple[np.ndarray, ...]  # per block, (d, width) C-contiguous: the GEMM's right operand
    block_norm: tuple[float, ...]  # per block, the largest item norm (bf16 screening bound)
    Iblk: np.ndarray  # the rows of Ip block after block (the fused float32 kernel's operand)
    bstart: np.ndarray  # (blocks + 1,) int64: block bi is Iblk[bstart[bi]:bstart[bi + 1]]
    bcols: np.ndarray  # the columns (ranks) of Iblk's rows: the blocks concatenated
    block_T16: tuple[np.ndarray, ...] | None  # bf16 bits (uint16) of block_T, when screening in bf16
    precision: str  # "fp32" or "bf16" (resolved)
    bounds: _BlockBounds | None  # per-block pruning bounds; None when pruning is off

    @property
    def n_items(self) -> int:
        return self.Ip.shape[0]

    @property
    def prune(self) -> bool:
        return self.bounds is not None


def prepare_items(
    items: np.ndarray, *, block_size: int = 4096, precision: str = "auto", prune: bool = True
) -> PreparedItems:
    """Check and prepare ``items`` once for any number of :func:`iter_top_x` calls."""
    I = _check_matrix("item vectors", items)
    if block_size <= 0:
        raise LocalFMError("block_size: expected a positive integer", param="block_size")
    precision = resolve_precision(precision)
    n_items = I.shape[0]
    if prune:
        block_size = min(block_size, PRUNE_BLOCK, max(PRUNE_MIN_BLOCK, -(-n_items // 16)))
    # Visit items by decreasing norm: the threshold rises fastest that way.
    norms = np.sqrt(np.einsum("ij,ij->i", I, I, dtype=np.float64))
    perm = np.argsort(-norms, kind="stable")
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_items)
    Ip = np.ascontiguousarray(I[perm])
    if prune:
        blocks = _pruning_blocks(Ip, block_size)
    else:
        blocks = tuple(np.arange(j, min(j + block_size, n_items), dtype=np.int64) for j in range(0, n_items, block_size))
    block_of = np.zeros(n_items, np.int64)
    pos_in_block = np.zeros(n_items, np.int64)
    for bi, cols in enumerate(blocks):
        block_of[cols] = bi
        pos_in_block[cols] = np.arange(cols.shape[0])
    block_T = tuple(np.ascontiguousarray(Ip[cols].T) for cols in blocks)
    bstart = np.concatenate([[0], np.cumsum([cols.shape[0] for cols in blocks])]).astype(np.int64)
    bcols = np.concatenate(blocks).astype(np.int64) if blocks else np.empty(0, np.int64)
    pnorms = norms[perm]
    return PreparedItems(
        items=I, perm=perm, inv_perm=inv_perm, Ip=Ip, blocks=blocks, block_of=block_of, pos_in_block=pos_in_block,
        block_T=block_T, block_T16=tuple(bf16_bits(t) for t in block_T) if precision == "bf16" else None,
        block_norm=tuple(float(pnorms[cols].max()) for cols in blocks),
        Iblk=np.ascontiguousarray(Ip[bcols]), bstart=bstart, bcols=bcols,
        precision=precision, bounds=_BlockBounds.of(Ip, blocks) if prune else None,
    )


def _pruning_blocks(Ip: np.ndarray, block_size: int) -> tuple[np.ndarray, ...]:
    """Blocks whose items are alike in factor norm ‖i_V‖ *and* in the last column w.

    A block's bound ``‖u_V‖·max‖i_V‖ + u_w·w`` takes both maxima over the block, so a
    block of norm-ordered items (alike in norm, spread in w) is bounded by its largest w
    and rarely skipped. Instead: ~√(blocks) bands by decreasing ‖i_V‖, each cut by
    decreasing w into blocks. Measured with final thresholds (k = 100, 62,000 items):
    computes 75 % of the scores on synthetic FM-shaped vectors and 4 % on the resampled
    ml-100k model, against 92 % and 13 % for norm-ordered blocks. Columns inside a block
    stay ascending, so a block's position order is rank order (the tie rule).
    """
    n = Ip.shape[0]
    X = Ip.astype(np.float64)
    vn = np.sqrt(np.einsum("ij,ij->i", X[:, :-1], X[:, :-1]))
    w = X[:, -1]
    n_bands = max(1, round(math.sqrt(-(-n // block_size))))
    blocks = []
    for band in np.array_split(np.argsort(-vn, kind="stable"), n_bands):
        band = band[np.argsort(-w[band], kind="stable")]
        blocks += [np.sort(band[j:j + block_size]).astype(np.int64) for j in range(0, band.shape[0], block_size)]
    return tuple(blocks)


def _tensor(a: np.ndarray) -> Any:
    """A torch view of ``a``; arrays shared through Ray's object store are read-only, and the
    engine never writes to item data, so torch's not-writable warning is noise here."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def iter_top_x(
    users: np.ndarray,
    items: np.ndarray | PreparedItems,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 2048,
    block_size: int | None = None,
    threads: int | None = 2,
    precision: str | None = None,
    progress_desc: str | None = None,
    kernel: str = "auto",
    prune: bool | None = None,
    device: str = "cpu",
) -> Iterator[tuple[int, TopX]]:
    """Yield ``(first_user_row, TopX)`` per user batch; see :func:`top_x`.

    ``items`` may be a :class:`PreparedItems`; then ``block_size``, ``precision`` and
    ``prune`` were fixed when it was prepared and must be left unset here.
    """
    k = validate_k(k)
    U = _check_matrix("user vectors", users)
    device = resolve_device(device)
    if device != CPU and precision == "bf16":
        raise LocalFMError(f"precision: 'bf16' screens on the CPU only; on {device} the engine scores in "
                           "float32 (leave precision unset or 'auto')", param="precision")
    if isinstance(items, PreparedItems):
        given = {"block_size": block_size, "precision": precision, "prune": prune}
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise LocalFMError(f"{', '.join(clash)}: already fixed by the prepared items; leave unset",
                               param=clash[0])
        prep = items
    elif device != CPU:
        # The device path uses the rank order only: no blocks, bounds or bf16 copies to build.
        prep = prepare_items(items, block_size=max(1, np.asarray(items).shape[0]), precision="fp32", prune=False)
    else:
        prep = prepare_items(items, block_size=4096 if block_size is None else block_size,
                             precision="auto" if precision is None else precision,
                             prune=True if prune is None else prune)
    if U.shape[1] != prep.Ip.shape[1]:
        raise LocalFMError(
            f"user vectors have dimension {U.shape[1]} but item vectors {prep.Ip.shape[1]}; expected equal")
    if batch_size <= 0:
        raise LocalFMError("batch_size: expected a positive integer", param="batch_size")
    n_users, n_items = U.shape[0], prep.n_items
    if exclude is not None:
        exclude = sp.csr_matrix(exclude)
        if exclude.shape != (n_users, n_items):
            raise LocalFMError(f"exclusions: shape {exclude.shape}, expected (users, items) = {(n_users, n_items)}")
    kk = min(k, n_items)
    perm = prep.perm
    starts = range(0, n_users, batch_size)
    iterator = progress(starts, total=len(starts), desc=progress_desc or "top-x", unit="batch")
    if device != CPU:
        yield from _iter_on_device(U, prep, kk, exclude, batch_size, iterator, device)
        return
    fused = _fused(kernel, prep.precision)
    if fused:  # the fused kernel calls MKL itself (see _heapscan): torch is never imported
        It, block_T, block_T16 = None, [], None
    else:
        import torch

        It = _tensor(prep.Ip)
        block_T = [_tensor(t) for t in prep.block_T]
        block_T16 = [_tensor(t).view(torch.bfloat16) for t in prep.block_T16] if prep.block_T16 is not None else None
    # torch's thread count and inference mode are process-wide: they are set per batch and put
    # back before each yield, so the caller's own torch code between batches runs under its
    # own settings (a thread-pool resize is ~2 ms against a batch's ~100 ms of ranking).
    if _resolve_kernel(kernel) == "numba":
        for s in iterator:
            e = min(s + batch_size, n_users)
            # One Python thread per core, each with single-threaded GEMMs (see _heapscan).
            with contextlib.nullcontext() if fused else torch_threads(1):
                ids, scores, skipped = _batch_numba(U[s:e], prep, kk, exclude[s:e] if exclude is not None else None,
                                                    block_T, block_T16, threads or default_threads())
            yield s, TopX(scores=scores, ids=ids, skipped=skipped, total=(e - s) * n_items)
        return
    for s in iterator:
        e = min(s + batch_size, n_users)
        with torch_threads(threads), torch.inference_mode():
            ids, scores, skipped = _batch_torch(U[s:e], prep, kk, exclude[s:e] if exclude is not None else None,
                                                It, block_T, block_T16)
            result = _finish(ids, scores, perm, skipped, (e - s) * n_items)
        yield s, result


def _iter_on_device(U: np.ndarray, prep: PreparedItems, kk: int, exclude: sp.csr_matrix | None, batch_size: int,
                    starts: Any, device: str) -> Iterator[tuple[int, TopX]]:
    """All batches on an accelerator: every score of the batch, then a stable top-k.

    Why no pruning here: the CPU engine prunes per (user, block) with bounds checked on the
    host, which on a GPU means a host round trip per block, while scoring a whole
    162k x 62k catalogue is a few milliseconds of GEMM per batch. So each batch is one
    float32 GEMM against all items in rank order (the CPU engine's columns, so ties fall
    the same way), already-rated items set to -inf on the device, and :func:`_top_stable`.
    Items and exclusions move to the device once; per batch only the user rows go over and
    the (batch, k) result comes back. Scores are float32 products of the same vectors, but
    a GPU GEMM sums in another order than the CPU's, so two items within float32 rounding
    of each other may swap places with the CPU engine's answer. The result is put in
    best-first order on the device too (:func:`_best_first`). A batch whose score matrix
    would exceed :data:`DEVICE_SCORES` floats is scored in slices of users: the memory is
    bounded for any catalogue (a 10M-item one would need 82 GB for 2048 users at once).
    """
    import torch

    n_users, n_items = U.shape[0], prep.n_items
    items_t = _tensor(prep.Ip).to(device)  # rows in rank order
    perm_t = _tensor(prep.perm).to(device)
    if exclude is not None:
        ex_ptr = torch.from_numpy(exclude.indptr.astype(np.int64)).to(device)
        inv_perm = _tensor(prep.inv_perm).to(device)
        ex_col = inv_perm[_tensor(exclude.indices).to(device).long()]  # excluded items' ranks
    minus_inf = torch.tensor(-math.inf, device=device)

    def rank(s: int, e: int) -> tuple[Any, Any]:
        S = _tensor(U[s:e]).to(device) @ items_t.T
        if exclude is not None:
            p0, p1 = int(exclude.indptr[s]), int(exclude.indptr[e])  # host copies: no device sync
            if p1 > p0:
                rows = torch.repeat_interleave(torch.arange(e - s, device=device), ex_ptr[s + 1:e + 1] - ex_ptr[s:e],
                                               output_size=p1 - p0)
                S.index_put_((rows, ex_col[p0:p1]), minus_inf)
        scores, ranks = _top_stable(S, kk)
        del S
        return _best_first(scores, ranks, perm_t)

    step = max(1, min(batch_size, DEVICE_SCORES // max(1, n_items)))  # users scored at once
    for s in starts:
        e = min(s + batch_size, n_users)
        # The modes are held per batch, not across the yield: the caller's own torch code between
        # batches must run under its own settings (inference mode and matmul precision are global).
        with torch.inference_mode(), float32_matmul():
            parts = [rank(a, min(a + step, e)) for a in range(s, e, step)]
            scores, ids = (torch.cat(x) if len(x) > 1 else x[0] for x in zip(*parts))
            scores, ids = scores.cpu().numpy(), ids.cpu().numpy()
        yield s, TopX(scores=scores, ids=ids, skipped=0, total=(e - s) * n_items)


def _best_first(scores: Any, ranks: Any, perm: Any) -> tuple[Any, Any]:
    """Ranks to item rows (-1 where the score is -inf), then best first with ties by item
    row, padding last: two stable sorts of the (batch, k) result, by item row first, then by
    score descending. In torch ops, so on a GPU it runs where the scores are: on the host it
    costs ~15 ms per 2048-user batch on the 2-core EPYC, ~1.2 s for 162k users, three times
    an H200's whole ranking.
    """
    import torch

    ids = torch.where(torch.isfinite(scores) & (ranks >= 0), perm[ranks.clamp(min=0)], -1)
    key = torch.where(ids < 0, torch.iinfo(torch.int64).max, ids)
    o = torch.argsort(key, dim=1, stable=True)
    scores, ids = scores.gather(1, o), ids.gather(1, o)
    o = torch.argsort(scores, dim=1, descending=True, stable=True)
    return scores.gather(1, o), ids.gather(1, o)


def _batch_torch(
    Ubn: np.ndarray,
    prep: PreparedItems,
    kk: int,
    sub: sp.csr_matrix | None,
    It: Any,
    block_T: list[Any],
    block_T16: list[Any] | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One user batch with torch ops only (no numba): the same visit plan, pruning and tie rule.

    Returns (ids as columns, scores, scores pruned), like :func:`_batch_numba`."""
    import torch

    precision, blocks, block_norm, n_items = prep.precision, prep.blocks, prep.block_norm, prep.n_items
    Ub = torch.from_numpy(Ubn)
    b = Ubn.shape[0]
    seen_keys = None
    if sub is not None and sub.nnz:
        r = np.repeat(np.arange(b, dtype=np.int64), np.diff(sub.indptr))
        keys = r * n_items + prep.inv_perm[sub.indices].astype(np.int64)
        seen_keys = torch.from_numpy(np.unique(keys))
    run_v = torch.full((b, kk), -math.inf, dtype=torch.float32)
    run_i = torch.full((b, kk), -1, dtype=torch.int64)
    unorm = torch.linalg.vector_norm(Ub, dim=1) if precision == "bf16" else None
    Ub16 = Ub.to(torch.bfloat16) if precision == "bf16" else None
    last_frac = 1.0
    order, B, rest = _visit_plan(prep.bounds, Ubn, len(blocks))
    act = np.arange(b, dtype=np.int64)  # users still in the batch
    skipped = 0
    for step, bi in enumerate(order):
        cols = blocks[bi]
        width = cols.shape[0]
        cols_t = torch.from_numpy(cols)
        if step == 0:
            # First block: a dense (b, width) candidate set, columns ascending.
            vals = Ub @ block_T[bi]
            cand_i = cols_t.expand(b, -1)
            if seen_keys is not None:
                keys = torch.arange(b, dtype=torch.int64)[:, None] * n_items + cand_i
                vals = vals.masked_fill(_isin_sorted(keys, seen_keys), -math.inf)
            run_v, run_i = _merge_top(run_v, run_i, vals, cand_i, kk)
            continue
        sel = act
        if B is not None:
            act, sel = _prune_step(B, rest, act, run_v[torch.from_numpy(act), -1].numpy().astype(np.float64), step, bi)
            if act.shape[0] == 0:
                skipped += b * sum(blocks[o].shape[0] for o in order[step:])
                break
            skipped += (b - sel.shape[0]) * width
            if sel.shape[0] == 0:
                continue
        sel_t = torch.from_numpy(sel)
        Ua = Ub[sel_t]
        n_sel = sel.shape[0]
        thr = run_v[sel_t, -1]
        rows = vals = cand = None
        screened = precision == "bf16" and last_frac < BF16_SWITCH and bool(torch.isfinite(thr).all())
        if screened:
            A = Ub16[sel_t] @ block_T16[bi]
            lim = thr - BF16_REL_ERROR * unorm[sel_t] * block_norm[bi]
            # Round the limit down before casting so the bf16 compare stays conservative.
            lim16 = (lim - lim.abs() * 2.0**-7).to(torch.bfloat16)
            rows, cand = (A >= lim16[:, None]).nonzero(as_tuple=True)
            if rows.numel() > BF16_SWITCH * 4 * n_sel * width:
                # Too many to re-score one by one: a float32 GEMM of the block is cheaper.
                screened = False
            else:
                vals = (Ua[rows] * It[cols_t[cand]]).sum(dim=1)
                keep = vals >= thr[rows]
                rows, cand, vals = rows[keep], cand[keep], vals[keep]
        if not screened:
            S = Ua @ block_T[bi]
            # >=: an equal score with a smaller column than the k-th one still enters.
            rows, cand = (S >= thr[:, None]).nonzero(as_tuple=True)
            vals = S[rows, cand]
        last_frac = rows.numel() / max(1, n_sel * width)
        if rows.numel() == 0:
            continue
        rows = sel_t[rows]
        gcols = cols_t[cand]
        if seen_keys is not None:
            keep = ~_isin_sorted(rows * n_items + gcols, seen_keys)
            rows, gcols, vals = rows[keep], gcols[keep], vals[keep]
            if rows.numel() == 0:
                continue
        # Merge only the users that got candidates in this block.
        active, local = torch.unique_consecutive(rows, return_inverse=True)
        cand_v, cand_i = _pad_by_row(local, gcols, vals, active.numel())
        run_v[active], run_i[active] = _merge_top(run_v[active], run_i[active], cand_v, cand_i, kk)
    return run_i.numpy(), run_v.numpy(), skipped


def _merge_top(run_v: Any, run_i: Any, cand_v: Any, cand_i: Any, kk: int) -> tuple[Any, Any]:
    """The kk best of (running top, candidates) per row by (score desc, column asc).

    Columns arrive in any block order, so the candidates are first put in column order
    (padding, column -1, first) and the stable top-k then breaks ties by position.
    """
    import torch

    all_v = torch.cat([run_v, cand_v], dim=1)
    all_i = torch.cat([run_i, cand_i], dim=1)
    o = torch.argsort(all_i, dim=1, stable=True)
    all_v, all_i = torch.gather(all_v, 1, o), torch.gather(all_i, 1, o)
    top_v, pos = _top_stable(all_v, kk)
    return top_v, torch.gather(all_i, 1, pos)


def _finish(run_i: np.ndarray, run_v: np.ndarray, perm: np.ndarray, skipped: int, total: int) -> TopX:
    """Map rank columns back to item rows, pad empty slots with -1, sort best first (ties: item row).

    For the torch kernel's batches. :func:`_best_first` does the work, so the CPU and the
    device paths share one ordering (on the 2-core EPYC it is also a little faster than the
    numpy lexsort it replaced: 13-14 vs 16-20 ms per 2048-user batch, k = 100)."""
    import torch

    scores, ids = _best_first(torch.from_numpy(run_v), torch.from_numpy(run_i), _tensor(perm))
    return TopX(scores=scores.numpy(), ids=ids.numpy(), skipped=skipped, total=total)


@dataclass(frozen=True)
class _BlockBounds:
    """Per item block: the largest ‖i_V‖ (i_V = all columns but the last), the largest and
    smallest last column w, and the largest ‖i‖ (for the rounding slack)."""

    v_norm: np.ndarray
    w_max: np.ndarray
    w_min: np.ndarray
    norm: np.ndarray

    @staticmethod
    def of(Ip: np.ndarray, blocks: tuple[np.ndarray, ...]) -> _BlockBounds:
        X = Ip.astype(np.float64)
        vn2 = np.einsum("ij,ij->i", X[:, :-1], X[:, :-1])
        w = X[:, -1]
        vn, full = np.sqrt(vn2), np.sqrt(vn2 + w * w)
        return _BlockBounds(np.array([vn[c].max() for c in blocks]), np.array([w[c].max() for c in blocks]),
                            np.array([w[c].min() for c in blocks]), np.array([full[c].max() for c in blocks]))

    def for_users(self, Ub: np.ndarray) -> np.ndarray:
        """(users, blocks) float64: an upper bound on every score of the block for each user.

        u·i = u_V·i_V + u_w·i_w ≤ ‖u_V‖·‖i_V‖ + u_w·i_w (Cauchy–Schwarz), maximised over the
        block, plus the rounding slack ``PRUNE_SLACK·‖u‖·max‖i‖``.
        """
        X = Ub.astype(np.float64)
        vn2 = np.einsum("ij,ij->i", X[:, :-1], X[:, :-1])
        w = X[:, -1:]
        return (np.sqrt(vn2)[:, None] * self.v_norm + np.maximum(w * self.w_max, w * self.w_min)
                + PRUNE_SLACK * np.sqrt(vn2 + w[:, 0] ** 2)[:, None] * self.norm)


def _visit_plan(bounds: _BlockBounds | None, Ub: np.ndarray, n_blocks: int) -> tuple[np.ndarray, Any, Any]:
    """(block order, per-(user, block) bounds, per-(user, step) bound over all blocks from that step on).

    Blocks go by decreasing bound of the batch's median user, so thresholds are seeded
    from the items most likely to be in the top-k and rise fast. Without pruning: block
    order, no bounds.
    """
    if bounds is None:
        return np.arange(n_blocks), None, None
    B = bounds.for_users(Ub)
    order = np.argsort(-np.median(B, axis=0), kind="stable")
    rest = np.maximum.accumulate(B[:, order[::-1]], axis=1)[:, ::-1]
    return order, B, np.ascontiguousarray(rest)


def _prune_step(B: np.ndarray, rest: np.ndarray, act: np.ndarray, kth: np.ndarray, step: int,
                bi: int) -> tuple[np.ndarray, np.ndarray]:
    """(users still in the batch, those of them block ``bi`` is scored for) at visit ``step``.

    ``act`` are the users in the batch and ``kth`` their k-th scores (float64). A user stays
    while some block from this step on may still reach its k-th score (``rest``), and block
    bi is scored for it only if that block's own bound may (``B``); strict ``<`` either way.
    """
    stay = ~(rest[act, step] < kth)
    act, kth = act[stay], kth[stay]
    return act, act[~(B[act, bi] < kth)]


def _batch_numba(
    Ub: np.ndarray,
    prep: PreparedItems,
    kk: int,
    sub: sp.csr_matrix | None,
    block_T: list[Any],
    block_T16: list[Any] | None,
    threads: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One user batch with the numba heap scan, split over ``threads`` Python threads.

    Returns (item ids, scores) best first, and the number of scores pruned."""
    from ._heapscan import finish_heaps

    b = Ub.shape[0]
    heap_v = np.full((b, kk), -np.inf, dtype=np.float32)
    heap_i = np.full((b, kk), -1, dtype=np.int64)
    if sub is not None and sub.nnz:
        seen = sp.csr_matrix((np.ones(sub.nnz, np.int8), prep.inv_perm[sub.indices], sub.indptr), shape=sub.shape)
        seen.sort_indices()
        seen_ptr, seen_idx = seen.indptr.astype(np.int64), seen.indices.astype(np.int64)
    else:
        seen_ptr, seen_idx = None, None
    out_v = np.empty_like(heap_v)
    out_i = np.empty_like(heap_i)
    parts = [p for p in np.array_split(np.arange(b), max(1, min(threads, b))) if p.size]

    def run(rows: np.ndarray) -> int:
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if seen_ptr is None:
            ptr, idx = np.zeros(1, np.int64), np.zeros(1, np.int64)
        else:
            ptr, idx = seen_ptr[lo:hi + 1] - seen_ptr[lo], seen_idx[seen_ptr[lo]:seen_ptr[hi]]
        if _fused("numba", prep.precision):
            n = _scan_users_fused(Ub[lo:hi], prep, heap_v[lo:hi], heap_i[lo:hi], ptr, idx)
        else:
            n = _scan_users(Ub[lo:hi], prep, heap_v[lo:hi], heap_i[lo:hi], ptr, idx, block_T, block_T16)
        finish_heaps(heap_v[lo:hi], heap_i[lo:hi], prep.perm, out_v[lo:hi], out_i[lo:hi])
        return n

    if len(parts) == 1:
        skipped = run(parts[0])
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            skipped = sum(pool.map(run, parts))
    return out_i, out_v, skipped


def _scan_users_fused(
    Ub: np.ndarray,
    prep: PreparedItems,
    heap_v: np.ndarray,
    heap_i: np.ndarray,
    seen_ptr: np.ndarray,
    seen_idx: np.ndarray,
) -> int:
    """:func:`_scan_users` for float32 in one numba call (:func:`_heapscan.scan_blocks`).

    Same visit plan, pruning rule, seeding and scan as :func:`_scan_users`, but the
    products are tiles of users × one block computed inside the kernel, so the scores are
    compared while still in cache and no Python runs per block. Returns scores pruned.
    """
    from ._heapscan import CUT_GAP, EXTRA, TILE, scan_blocks, single_threaded_blas

    order, B, rest = _visit_plan(prep.bounds, Ub, len(prep.blocks))
    if B is None:
        B = rest = np.empty((0, 0), np.float64)
    with single_threaded_blas():
        return int(scan_blocks(np.ascontiguousarray(Ub), prep.Iblk, prep.bstart, prep.bcols, order.astype(np.int64),
                               B, rest, heap_v, heap_i, seen_ptr, seen_idx, TILE, max(EXTRA, heap_v.shape[1] // 4), CUT_GAP))


def _fused(kernel: str, precision: str) -> bool:
    """True when ``kernel`` ranks at the resolved ``precision`` with the fused float32 kernel (which
    needs no torch import): the one place that decides it."""
    return _resolve_kernel(kernel) == "numba" and precision == "fp32" and fused_available()


def torch_free(precision: str) -> bool:
    """True when ranking with ``precision`` (as given: ``auto`` allowed) runs without importing torch."""
    return _fused("auto", resolve_precision(precision))


@functools.cache
def fused_available() -> bool:
    """True when the fused float32 kernel can call torch's BLAS (see ``_heapscan.torch_sgemm_address``)."""
    from ._heapscan import SGEMM

    return SGEMM is not None


def _scan_users(
    Ub: np.ndarray,
    prep: PreparedItems,
    heap_v: np.ndarray,
    heap_i: np.ndarray,
    seen_ptr: np.ndarray,
    seen_idx: np.ndarray,
    block_T: list[Any],
    block_T16: list[Any] | None,
) -> int:
    """All item blocks for one slice of users: GEMM (torch, releases the GIL) then one scan.

    With pruning, each block is scored only for the users whose bound for it reaches their
    k-th score (the GEMM runs on just those rows), and users whom no remaining block can
    reach leave; returns how many (user, item) scores were never computed.
    """
    import torch

    from ._heapscan import bf16_keys, scan_exact, scan_screened, seed_exact

    precision, Ip, blocks, block_norm = prep.precision, prep.Ip, prep.blocks, prep.block_norm
    Ut = torch.from_numpy(Ub)
    unorm = np.sqrt(np.einsum("ij,ij->i", Ub, Ub, dtype=np.float64)).astype(np.float32) if precision == "bf16" else None
    U16 = bf16_bits(Ub) if precision == "bf16" else None
    # Output buffers reused across blocks: fresh multi-MB allocations cost page faults each time.
    bufs: dict[tuple[int, Any], Any] = {}

    def buf(width: int, dtype: Any, rows: int) -> Any:
        key = (width, dtype)
        if key not in bufs:
            bufs[key] = torch.empty((Ub.shape[0], width), dtype=dtype)
        return bufs[key][:rows]

    b = Ub.shape[0]
    order, B, rest = _visit_plan(prep.bounds, Ub, len(blocks))
    act = np.arange(b, dtype=np.int64)  # users still in the batch
    skipped = 0
    for step, bi in enumerate(order):
        cols = blocks[bi]
        width = cols.shape[0]
        if step == 0:
            # Seed the empty heaps with the first block, scored in float32 (a heapify per
            # user: a torch top-k of the block plus its tie fix-up cost several times more).
            S = torch.mm(Ut, block_T[bi], out=buf(width, torch.float32, b)).numpy()
            seed_exact(S, cols, heap_v, heap_i, seen_ptr, seen_idx, act)
            continue
        sel = act
        if B is not None:
            act, sel = _prune_step(B, rest, act, heap_v[act, 0].astype(np.float64), step, bi)
            if act.shape[0] == 0:
                skipped += b * sum(blocks[o].shape[0] for o in order[step:])
                break
            skipped += (b - sel.shape[0]) * width
            if sel.shape[0] == 0:
                continue
        full = sel.shape[0] == b
        if precision == "bf16":
            Ua16 = _tensor(U16 if full else U16[sel]).view(torch.bfloat16)
            out16 = torch.mm(Ua16, block_T16[bi], out=buf(width, torch.bfloat16, sel.shape[0]))
            lim = heap_v[sel, 0] - np.float32(BF16_REL_ERROR) * unorm[sel] * np.float32(block_norm[bi])
            scan_screened(out16.view(torch.int16).numpy(), bf16_keys(lim), Ub, Ip, cols, heap_v, heap_i,
                          seen_ptr, seen_idx, sel)
        else:
            Ua = Ut if full else torch.from_numpy(Ub[sel])
            S = torch.mm(Ua, block_T[bi], out=buf(width, torch.float32, sel.shape[0])).numpy()
            scan_exact(S, cols, heap_v, heap_i, seen_ptr, seen_idx, sel)
    return skipped


@functools.cache
def numba_available() -> bool:
    try:
        import numba  # noqa: F401 - availability probe
    except ImportError:
        return False
    return True


def _resolve_kernel(kernel: str) -> str:
    if kernel == "auto":
        return "numba" if numba_available() else "torch"
    if kernel == "numba" and not numba_available():
        raise LocalFMError("kernel 'numba' needs the numba package: pip install numba")
    if kernel not in ("numba", "torch"):
        raise LocalFMError(f"kernel: expected 'auto', 'numba' or 'torch', got {kernel!r}")
    return kernel


def _top_stable(S: Any, m: int) -> tuple[Any, Any]:
    """The m best of each row, best first; among equal scores the leftmost (earliest-visited) wins.

    This is the engine's tie rule, shared with the heap scan; ``torch.topk`` leaves the
    choice among ties unspecified, a stable descending sort does not — but sorting whole
    4096-wide rows doubled the brute-force scan's time. So ``topk`` picks the m best, and
    only rows where ties straddle the cut (more than m scores >= the m-th one, e.g. -inf
    padding) get the stable sort; the kept m of the others are a unique set, reordered by
    (score desc, column asc) with two sorts of m-wide rows.
    """
    import torch

    if m >= S.shape[1]:
        v, pos = torch.sort(S, dim=1, descending=True, stable=True)
        return v[:, :m].contiguous(), pos[:, :m].contiguous()
    v, pos = torch.topk(S, m, dim=1, largest=True, sorted=False)
    kth = v.min(dim=1, keepdim=True).values
    straddle = (S >= kth).sum(dim=1) > m
    # Unique set: order it by column, then stably by score, so equal scores keep column order.
    pos, _ = torch.sort(pos, dim=1)
    v = torch.gather(S, 1, pos)
    v, o = torch.sort(v, dim=1, descending=True, stable=True)
    pos = torch.gather(pos, 1, o)
    if bool(straddle.any()):
        rows = straddle.nonzero(as_tuple=True)[0]
        sv, spos = torch.sort(S[rows], dim=1, descending=True, stable=True)
        v[rows] = sv[:, :m]
        pos[rows] = spos[:, :m]
    return v.contiguous(), pos.contiguous()


def _isin_sorted(query: Any, sorted_keys: Any) -> Any:
    """Elementwise membership of ``query`` in the sorted 1-d tensor ``sorted_keys``."""
    import torch

    pos = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == query


def _pad_by_row(rows: Any, cols: Any, vals: Any, b: int) -> tuple[Any, Any]:
    """Scatter (row, col, val) triples (rows ascending) into (b, max per row) tensors padded with -inf/-1."""
    import torch

    counts = torch.bincount(rows, minlength=b)
    width = int(counts.max())
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), dtype=torch.int64) - offsets[rows]
    cand_v = torch.full((b, width), -math.inf, dtype=torch.float32)
    cand_i = torch.full((b, width), -1, dtype=torch.int64)
    cand_v[rows, pos] = vals
    cand_i[rows, pos] = cols
    return cand_v, cand_i


def top_x(
    users: np.ndarray,
    items: np.ndarray | PreparedItems,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    batch_size: int = 2048,
    block_size: int | None = None,
    threads: int | None = 2,
    precision: str | None = None,
    progress_desc: str | None = None,
    kernel: str = "auto",
    prune: bool | None = None,
    device: str = "cpu",
) -> TopX:
    """Exact top-``k`` items by inner product for every user row, best first.

    ``exclude`` is an optional (n_users, n_items) sparse matrix whose nonzeros are items
    a user must not get (already rated): the result is the exact top-k among the rest.
    ``precision``: ``"fp32"`` scores every block in float32; ``"bf16"`` screens with a
    bfloat16 GEMM and a proven error bound, then re-scores survivors in float32;
    ``"auto"`` picks bf16 when the CPU has native bf16 dot products. Both give the
    exact float32 top-k. ``threads`` caps torch's intra-op threads while it runs.
    ``prune`` (default on) stops each user once no remaining item can reach its k-th
    score (see the module docstring): the same ids, fewer scores computed;
    ``TopX.skipped / TopX.total`` says how many were skipped. Unset, ``block_size``,
    ``precision`` and ``prune`` mean 4096, ``"auto"`` and True; with ``items`` from
    :func:`prepare_items` they were fixed there and must stay unset.
    ``device`` (``cuda``, ``cuda:N``, ``mps``; default ``cpu``) ranks with torch on that
    device instead: every score computed in float32 (no pruning, no bf16 screening), the
    same tie rule; see :func:`_iter_on_device`.
    """
    parts = list(
        iter_top_x(
            users,
            items,
            k,
            exclude=exclude,
            batch_size=batch_size,
            block_size=block_size,
            threads=threads,
            precision=precision,
            progress_desc=progress_desc,
            kernel=kernel,
            prune=prune,
            device=device,
        )
    )
    n_items = items.n_items if isinstance(items, PreparedItems) else np.asarray(items).shape[0]
    kk = min(validate_k(k), n_items)
    if not parts:
        return TopX(np.empty((0, kk), np.float32), np.empty((0, kk), np.int64))
    return TopX(
        scores=np.concatenate([p.scores for _, p in parts]),
        ids=np.concatenate([p.ids for _, p in parts]),
        skipped=sum(p.skipped for _, p in parts),
        total=sum(p.total for _, p in parts),
    )


def trim(result: TopX) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user, (ids, scores) without the -1/-inf padding."""
    out = []
    for ids, scores in zip(result.ids, result.scores):
        keep = ids >= 0
        out.append((ids[keep], scores[keep]))
    return out


def default_threads() -> int:
    """Two threads unless LOCALFM_THREADS says otherwise (the team machines have 2 cores)."""
    try:
        return max(1, int(os.environ.get("LOCALFM_THREADS", "2")))
    except ValueError:
        return 2
