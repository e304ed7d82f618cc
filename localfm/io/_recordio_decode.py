"""One-pass compiled decoder for RecordIO-protobuf blocks in the SageMaker SDK's layout.

Why: the vectorised reader in :mod:`localfm.io.recordio` walks every record in
lock-step with ~100 NumPy passes and keeps eleven per-record columns (about 100 bytes
per 2-nonzero row), so the 22.5M-record ML-25M training file took ~30 s and ~2.3 GB
to read. This kernel walks the frames and the protobuf bytes of a block once, in
compiled code, and writes straight into preallocated arrays: the frame offset and
value count per record, the float32 values, int32 keys and float32 labels. Nothing
else per record is stored: whatever is the same for every record of the run (value
dtype, label dtype, shape) is returned once and becomes a zero-stride column.

It is deliberately narrow. It accepts exactly the canonical layout (the one
``write_sparse`` / ``write_dense`` and the SageMaker SDK emit)::

    features {key "values", Float32|Float64Tensor {values? keys? shape?}}  (packed, in order)
    label    {key "values", Float32|Float64Tensor {values: one value}}    (optional)

with single-part frames (cflag 0), zero padding, sparse records with one key per
value and at most one shape entry, dense records without keys or shape, keys that
fit int32 (and below the shape), and every record of the run agreeing with the
first on value dtype, label dtype, sparse/dense and shape. At the first record that
differs in any way, or is malformed, or does not fit the output arrays, the kernel
stops and returns how far it got; the caller hands the rest of the block to the
existing exact path, so results, error messages and offsets stay those of that path.
"""
from __future__ import annotations

import numpy as np
from numba import njit

#: Stop reasons / run kinds returned by :func:`decode_block`.
KIND_DENSE, KIND_SPARSE = 0, 1
#: Value type codes; the same numbers as ``recordio._CODE_F32`` / ``_CODE_F64`` (0: no label).
CODE_NONE, CODE_F32, CODE_F64 = 0, 1, 2
_MAGIC = 0xCED7230A
_LEN_MASK = (1 << 29) - 1
_INT32_MAX = (1 << 31) - 1


@njit(cache=True, nogil=True, inline="always")
def _b(buf, i):  # noqa: ANN001, ANN202 - numba
    """``buf[i]`` with an unsigned index: numba then skips its negative-index wraparound
    (~12% of the kernel's time). Every caller has checked ``i`` against the bounds."""
    return buf[np.uint64(i)]


@njit(cache=True, nogil=True, inline="always")
def _varint(buf, p, end):  # noqa: ANN001, ANN202 - numba
    """(value, next position) of a varint of at most 5 bytes ending before ``end``; (-1, p) otherwise.

    Five bytes hold every length and key the kernel accepts (< 2^31); longer or
    overlong-beyond-five encodings are legal protobuf but go to the exact decoder.
    """
    val = 0
    shift = 0
    q = p
    while q < end and shift < 35:
        b = np.int64(_b(buf, q))
        q += 1
        val |= (b & 0x7F) << shift
        if b < 0x80:
            return val, q
        shift += 7
    return np.int64(-1), p


@njit(cache=True, nogil=True, inline="always")
def _u32(buf, p):  # noqa: ANN001, ANN202 - numba
    return (np.uint32(_b(buf, p)) | (np.uint32(_b(buf, p + 1)) << np.uint32(8))
            | (np.uint32(_b(buf, p + 2)) << np.uint32(16)) | (np.uint32(_b(buf, p + 3)) << np.uint32(24)))


@njit(cache=True, nogil=True, inline="always")
def _f32_from_f64(buf, p, scratch):  # noqa: ANN001, ANN202 - numba
    """float32 of the little-endian float64 at ``p`` (the same rounding as numpy's astype)."""
    lo = np.uint64(_u32(buf, p))
    hi = np.uint64(_u32(buf, p + 4))
    scratch[0] = lo | (hi << np.uint64(32))
    return np.float32(scratch.view(np.float64)[0])


@njit(cache=True, nogil=True, inline="always")
def _entry_prefix(buf, p, end):  # noqa: ANN001, ANN202 - numba
    """True if ``0a 06 "values" 12`` (map key "values", then the value field) starts at ``p``."""
    if p + 9 > end:
        return False
    return (_b(buf, p) == 0x0A and _b(buf, p + 1) == 0x06 and _b(buf, p + 2) == 0x76
            and _b(buf, p + 3) == 0x61 and _b(buf, p + 4) == 0x6C and _b(buf, p + 5) == 0x75
            and _b(buf, p + 6) == 0x65 and _b(buf, p + 7) == 0x73 and _b(buf, p + 8) == 0x12)


@njit(cache=True, nogil=True, inline="always")
def _values_entry(buf, p, end):  # noqa: ANN001, ANN202 - numba
    """One map entry ``{"values": Float32Tensor | Float64Tensor}`` whose length varint is at ``p``.

    The features and the label are both such an entry. Returns ``(entry end, value code,
    value width, start of the tensor's fields)``, or an entry end of -1 when the bytes are
    not exactly that (the caller then hands the record to the exact decoder).
    """
    ln, p = _varint(buf, p, end)
    if ln < 0 or ln > end - p:
        return -1, CODE_NONE, 0, p
    entry_end = p + ln
    if not _entry_prefix(buf, p, entry_end):
        return -1, CODE_NONE, 0, p
    ln, p = _varint(buf, p + 9, entry_end)
    if ln < 0 or p + ln != entry_end or p >= entry_end:
        return -1, CODE_NONE, 0, p
    tag = _b(buf, p)
    if tag == 0x12:
        code, width = CODE_F32, 4
    elif tag == 0x1A:
        code, width = CODE_F64, 8
    else:
        return -1, CODE_NONE, 0, p
    ln, p = _varint(buf, p + 1, entry_end)
    if ln < 0 or p + ln != entry_end:
        return -1, CODE_NONE, 0, p
    return entry_end, code, width, p


@njit(cache=True, nogil=True)
def decode_block(buf, base, offsets, counts, values, keys, labels):  # noqa: ANN001, ANN201 - numba
    """Decode complete canonical records from the start of ``buf`` until one is not (see module doc).

    ``base`` is the file offset of ``buf[0]``. Outputs (capacities bound the run):
    ``offsets`` int64 and ``counts`` int32 per record, ``values`` float32 and
    ``keys`` int32 per nonzero (keys only for sparse runs), ``labels`` float32 per
    record (only when the run has labels). Returns ``(records, consumed, nnz,
    feat_code, label_code, kind, nshape, shape)``: the first ``records`` records,
    ``consumed`` bytes of ``buf``, decoded into the first ``nnz`` values/keys; the run's
    value and label codes, ``KIND_DENSE`` / ``KIND_SPARSE``, and whether (``nshape`` 0/1)
    each record carries the one-dimensional ``shape`` given.
    """
    n = buf.size
    vbits = values.view(np.uint32)
    lbits = labels.view(np.uint32)
    scratch = np.empty(1, np.uint64)
    max_records = min(offsets.size, counts.size, labels.size)
    rec = 0
    pos = 0
    nnz = 0
    run_f = -1
    run_l = -1
    run_kind = -1
    run_ns = -1
    run_shape = -1
    while pos + 8 <= n:
        if _u32(buf, pos) != _MAGIC:
            break
        word = _u32(buf, pos + 4)
        if (word >> np.uint32(29)) != 0:
            break
        length = np.int64(word & np.uint32(_LEN_MASK))
        s = pos + 8
        e = s + length
        padded = s + ((length + 3) & ~np.int64(3))
        if padded > n:
            break
        bad_pad = False
        for q in range(e, padded):
            if _b(buf, q) != 0:
                bad_pad = True
        if bad_pad or rec >= max_records:
            break
        # ---- features: exactly one entry {"values": Float32|Float64Tensor}
        p = s
        if p >= e or _b(buf, p) != 0x0A:
            break
        fe, fcode, width, p = _values_entry(buf, p + 1, e)
        if fe < 0:
            break
        te = fe
        # ---- tensor fields 1 (values), 2 (keys), 3 (shape): each packed, optional, in order
        nv = 0
        v_at = p
        lwidth = 4
        if p < te and _b(buf, p) == 0x0A:
            ln, p = _varint(buf, p + 1, te)
            if ln < 0 or ln > te - p or ln % width != 0:
                break
            nv = ln // width
            v_at = p
            p += ln
        if nnz + nv > values.size:
            break
        nk = 0
        ok = True
        key_limit = _INT32_MAX
        if run_ns == 1:
            key_limit = run_shape
        if p < te and _b(buf, p) == 0x12:
            ln, p = _varint(buf, p + 1, te)
            if ln < 0 or ln > te - p:
                break
            kend = p + ln
            while p < kend:
                key, p = _varint(buf, p, kend)
                # key < key_limit keeps max key + 1 within int32 (and inside the run's shape)
                if key < 0 or key >= key_limit or nnz + nk >= keys.size:
                    ok = False
                    break
                keys[nnz + nk] = key
                nk += 1
            if not ok:
                break
        ns = 0
        shape = -1
        if p < te and _b(buf, p) == 0x1A:
            ln, p = _varint(buf, p + 1, te)
            if ln < 0 or ln > te - p:
                break
            send = p + ln
            while p < send:
                dim, p = _varint(buf, p, send)
                if dim < 0 or ns >= 1:
                    ok = False
                    break
                shape = dim
                ns += 1
            if not ok:
                break
        if p != te:
            break
        # sparse: one key per value (shape optional); dense: no keys, no shape
        if nk > 0:
            if nk != nv:
                break
            kind = KIND_SPARSE
        elif ns == 0:
            kind = KIND_DENSE
        elif nv == 0:
            kind = KIND_SPARSE
        else:
            break
        if ns == 1 and (shape > _INT32_MAX or (run_ns == -1 and nk > 0 and _max_key(keys, nnz, nk) >= shape)):
            break
        # ---- label: optional single entry {"values": Float32|Float64Tensor {values: one value}}
        p = fe
        lcode = CODE_NONE
        lab_at = 0
        if p < e and _b(buf, p) == 0x12:
            le, lcode, lwidth, p = _values_entry(buf, p + 1, e)
            if le < 0 or p >= le or _b(buf, p) != 0x0A:
                break
            ln, p = _varint(buf, p + 1, le)
            if ln != lwidth or p + ln != le:
                break
            lab_at = p
            p = le
        if p != e:
            break
        # ---- the run: every record like the first
        if rec == 0:
            run_f, run_l, run_kind, run_ns, run_shape = fcode, lcode, kind, ns, shape
        elif fcode != run_f or lcode != run_l or kind != run_kind or ns != run_ns or shape != run_shape:
            break
        # ---- commit (keys were written already)
        if fcode == CODE_F32:
            for j in range(nv):
                vbits[nnz + j] = _u32(buf, v_at + 4 * j)
        else:
            for j in range(nv):
                values[nnz + j] = _f32_from_f64(buf, v_at + 8 * j, scratch)
        if lcode == CODE_F32:
            lbits[rec] = _u32(buf, lab_at)
        elif lcode == CODE_F64:
            labels[rec] = _f32_from_f64(buf, lab_at, scratch)
        offsets[rec] = base + pos
        counts[rec] = nv
        nnz += nv
        rec += 1
        pos = padded
    return rec, pos, nnz, run_f, run_l, run_kind, run_ns, run_shape


@njit(cache=True, nogil=True, inline="always")
def _max_key(keys, lo, count):  # noqa: ANN001, ANN202 - numba
    m = np.int64(-1)
    for j in range(lo, lo + count):
        if keys[j] > m:
            m = np.int64(keys[j])
    return m
