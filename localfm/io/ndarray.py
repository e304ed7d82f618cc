"""MXNet NDArray-list files (``.params``, SageMaker ``model_algo-1``) without MXNet.

SageMaker's built-in algorithms are MXNet programs and store their models as the
list files ``mx.nd.save`` writes. This module reads every record version MXNet ever
wrote (V3 NumPy-shape, V2 with storage types, V1, and the magic-less legacy
records) and writes V2 records byte-identical to ``mx.nd.save`` (or V3 like
``mx.npx.save``), so models move between localfm and real MXNet/SageMaker both ways.
The byte layout is in ``../shared/specs/sagemaker-formats.md`` section 1 and in
``docs/artifacts.md``.

Parsing is strict because model files come from elsewhere (S3, e-mail, CI caches):
every length is checked against the bytes that remain *before* anything is
allocated, trailing bytes are an error, and nothing is ever unpickled, so a corrupt
or hostile file fails fast with a :class:`LocalFMError` instead of hanging or eating
memory.

Values come back as ``numpy.ndarray`` (dense), ``scipy.sparse.csr_matrix`` (csr
storage) or :class:`RowSparse` (row_sparse storage); MXNet "none" arrays come back
as ``None``. bfloat16 arrays are returned as float32 values (numpy has no bfloat16);
wrap float32 values in :class:`BFloat16` to write them as bfloat16.
"""
from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from ..errors import LocalFMError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA

STYPE_DENSE = 0
STYPE_ROW_SPARSE = 1
STYPE_CSR = 2
STYPE_UNDEFINED = -1  # what MXNet writes for a "none" array
STYPE_NAMES = {STYPE_DENSE: "default", STYPE_ROW_SPARSE: "row_sparse", STYPE_CSR: "csr"}
_N_AUX = {STYPE_DENSE: 0, STYPE_ROW_SPARSE: 1, STYPE_CSR: 2, STYPE_UNDEFINED: 0}

# mshadow type flags. 8-11 exist in MXNet's enum; 1.9.1 can neither save nor load
# them, so we read them (the meaning is unambiguous) but refuse to write them.
BFLOAT16_FLAG = 12
TYPE_FLAGS: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
TYPE_NAMES = {
    0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8",
    6: "int64", 7: "bool", 8: "int16", 9: "uint16", 10: "uint32", 11: "uint64",
    BFLOAT16_FLAG: "bfloat16",
}
_ITEMSIZE = {flag: dt.itemsize for flag, dt in TYPE_FLAGS.items()} | {BFLOAT16_FLAG: 2}
_WRITABLE_FLAGS = {(TYPE_FLAGS[f].kind, TYPE_FLAGS[f].itemsize): f for f in range(8)}
_DEV_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}

# No real model has more dimensions than this; a larger count is corruption.
MAX_NDIM = 32
# Smallest possible array record (legacy none array: one u32), used to reject an
# n_arrays that the file cannot possibly hold before looping over it.
_MIN_RECORD_BYTES = 4

Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]


@dataclass
class RowSparse:
    """A row_sparse NDArray: ``data[i]`` is row ``indices[i]`` of a ``shape`` array.

    scipy has no row-sparse format and the common use (a sparse embedding table or
    gradient) wants the stored rows as a block, so this small pair is what
    :func:`load` returns and :func:`dumps` accepts.
    """

    data: np.ndarray      # (n_stored, *shape[1:])
    indices: np.ndarray   # (n_stored,) int64, ascending
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.indices = np.asarray(self.indices)
        self.data = np.asarray(self.data)
        if len(self.shape) < 1:
            raise LocalFMError("RowSparse: shape must have at least one dimension")
        if self.indices.ndim != 1 or self.data.shape != (len(self.indices), *self.shape[1:]):
            raise LocalFMError(
                f"RowSparse: data shape {self.data.shape} does not match indices "
                f"({len(self.indices)},) and shape {self.shape}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.shape[0]):
            raise LocalFMError(f"RowSparse: row indices out of range for shape {self.shape}")

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def toarray(self) -> np.ndarray:
        """The dense equivalent (rows not stored are zero)."""
        out = np.zeros(self.shape, dtype=self.data.dtype)
        out[self.indices] = self.data
        return out


@dataclass
class BFloat16:
    """Marks float values to be written as bfloat16 (numpy has no bfloat16 dtype).

    Conversion rounds to nearest even, like MXNet's ``amp_cast``; values read from
    a bfloat16 record are exact, so a read-then-write round trip is byte-identical.
    """

    values: np.ndarray


@dataclass
class ArrayInfo:
    """What one record declares, without the data: used by ``localfm inspect``."""

    version: str               # "V3" | "V2" | "V1" | "legacy"
    stype: str                 # "default" | "row_sparse" | "csr" | "none"
    shape: tuple[int, ...] | None
    dtype: str | None
    context: str | None
    record_bytes: int          # length of the record in the file


# --------------------------------------------------------------------------- reading


class _Reader:
    """A cursor over the file bytes that refuses to read past the end."""

    def __init__(self, buf: bytes | memoryview, where: str) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.where = where

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def fail(self, what: str) -> LocalFMError:
        return LocalFMError(f"{self.where}: {what} (at byte {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining():
            raise self.fail(f"truncated NDArray file: {what} needs {n} bytes, "
                            f"{self.remaining()} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def i32(self, what: str) -> int:
        return self.unpack("<i", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def total(self) -> int:
        return len(self.buf)


class _StreamReader(_Reader):
    """The same cursor over a stream of ``size`` declared bytes, read only as records ask.

    Every record header declares its shape before its data, so a length is checked
    against the bytes the member declares *before* it is read: a member that claims
    gigabytes behind a bad header is refused after a few bytes, not after inflating.
    The bytes read are kept (``parts``) so the caller holds the member as it was.
    """

    def __init__(self, fh: IO[bytes], size: int, where: str) -> None:
        self.fh = fh
        self.size = size
        self.parts: list[bytes] = []
        self.pos = 0
        self.where = where

    def remaining(self) -> int:
        return self.size - self.pos

    def total(self) -> int:
        return self.size

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining():
            raise self.fail(f"truncated NDArray file: {what} needs {n} bytes, "
                            f"{self.remaining()} left")
        chunks, got = [], 0
        while got < n:
            chunk = self.fh.read(min(1 << 20, n - got))
            if not chunk:
                raise self.fail(f"truncated NDArray file: {what} needs {n} bytes, "
                                f"the member ended after {got}")
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self.parts.append(data)
        self.pos += n
        return memoryview(data)


def _read_shape(r: _Reader, what: str, *, legacy_ndim: int | None = None) -> tuple[int, ...] | None:
    """TShape: i32 ndim then i64 dims (legacy: ndim given, u32 dims). None = ndim -1."""
    if legacy_ndim is None:
        ndim = r.i32(f"{what} ndim")
        if ndim == -1:
            return None
        if ndim < 0 or ndim > MAX_NDIM:
            raise r.fail(f"{what}: ndim {ndim} out of range 0..{MAX_NDIM}")
        dims = r.unpack(f"<{ndim}q", f"{what} dims")
    else:
        ndim = legacy_ndim
        if ndim > MAX_NDIM:
            raise r.fail(f"{what}: ndim {ndim} out of range 0..{MAX_NDIM} "
                         "(not an NDArray record: bad magic?)")
        dims = r.unpack(f"<{ndim}I", f"{what} dims")
    return tuple(int(d) for d in dims)


_MAX_DIM_PRODUCT = 2**48  # far past any real array, well inside numpy's intp limit


def _check_dims(r: _Reader, shape: tuple[int, ...], what: str) -> None:
    nonzero = 1
    for d in shape:
        if d < 0:
            raise r.fail(f"{what}: negative dimension {d} in shape {shape}")
        nonzero *= max(int(d), 1)
    # A zero dimension makes the element count 0, so the byte-length check passes even
    # when the other dimensions are absurd; numpy would then refuse the shape itself.
    if nonzero > _MAX_DIM_PRODUCT:
        raise r.fail(f"{what}: shape {shape} is too large (dimensions multiply past 2**48)")


def _size(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _read_type_flag(r: _Reader, what: str) -> int:
    flag = r.i32(f"{what} type flag")
    if flag not in _ITEMSIZE:
        raise r.fail(f"{what}: unknown dtype flag {flag} (expected one of "
                     f"{sorted(_ITEMSIZE)})")
    return flag


def _read_data(r: _Reader, flag: int, shape: Sequence[int], what: str) -> np.ndarray:
    # Python ints cannot overflow, and the length is checked against the bytes that
    # remain before numpy allocates anything.
    count = _size(shape)
    raw = r.take(count * _ITEMSIZE[flag], f"{what} data ({count} x {TYPE_NAMES[flag]})")
    if flag == BFLOAT16_FLAG:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    arr = np.frombuffer(raw, dtype=TYPE_FLAGS[flag]).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def _read_context(r: _Reader, what: str) -> str:
    dev_type, dev_id = r.unpack("<ii", f"{what} context")
    if dev_type not in _DEV_TYPES:
        raise r.fail(f"{what}: unknown device type {dev_type} (expected 1 cpu, 2 gpu, "
                     "3 cpu_pinned or 5 cpu_shared)")
    return f"{_DEV_TYPES[dev_type]}({dev_id})"


def _read_record(r: _Reader, index: int) -> tuple[Any, ArrayInfo]:
    what = f"array {index}"
    start = r.pos
    magic = r.u32(f"{what} magic")
    if magic in (V2_MAGIC, V3_MAGIC):
        return _read_v2(r, magic, what, start)
    if magic == V1_MAGIC:
        shape = _read_shape(r, what)
        if shape is None:
            raise r.fail(f"{what}: V1 record with ndim -1")
        return _read_dense_tail(r, shape, what, start, "V1", none_if_empty=True)
    # Legacy (MXNet <= 0.10): no magic; the first u32 is ndim, dims are u32.
    shape = _read_shape(r, what, legacy_ndim=magic)
    assert shape is not None
    return _read_dense_tail(r, shape, what, start, "legacy", none_if_empty=True)


def _none(version: str, r: _Reader, start: int) -> tuple[None, ArrayInfo]:
    return None, ArrayInfo(version, "none", None, None, None, r.pos - start)


def _read_dense_tail(r: _Reader, shape: tuple[int, ...], what: str, start: int,
                     version: str, *, none_if_empty: bool) -> tuple[Any, ArrayInfo]:
    if none_if_empty and len(shape) == 0:
        return _none(version, r, start)
    _check_dims(r, shape, what)
    ctx = _read_context(r, what)
    flag = _read_type_flag(r, what)
    arr = _read_data(r, flag, shape, what)
    return arr, ArrayInfo(version, "default", shape, TYPE_NAMES[flag], ctx, r.pos - start)


def _read_v2(r: _Reader, magic: int, what: str, start: int) -> tuple[Any, ArrayInfo]:
    version = "V3" if magic == V3_MAGIC else "V2"
    stype = r.i32(f"{what} storage type")
    if stype not in _N_AUX:
        raise r.fail(f"{what}: unknown storage type {stype} (expected 0 dense, "
                     "1 row_sparse or 2 csr)")
    if version == "V3" and stype not in (STYPE_DENSE, STYPE_UNDEFINED):
        raise r.fail(f"{what}: V3 (NumPy-shape) records must be dense, got storage type {stype}")
    n_aux = _N_AUX[stype]
    sshape: tuple[int, ...] | None = None
    if n_aux:
        sshape = _read_shape(r, f"{what} storage shape")
        if sshape is None:
            raise r.fail(f"{what}: storage shape with ndim -1")
        _check_dims(r, sshape, f"{what} storage shape")
    shape = _read_shape(r, f"{what} shape")
    if version == "V3":
        if shape is None or any(d == -1 for d in shape):
            return _none(version, r, start)   # unknown shape = none in NumPy mode
    elif shape is None or len(shape) == 0:
        return _none(version, r, start)
    if stype == STYPE_UNDEFINED:
        raise r.fail(f"{what}: storage type -1 (none) with a non-empty shape {shape}")
    if stype == STYPE_DENSE:
        return _read_dense_tail(r, shape, what, start, version, none_if_empty=False)

    _check_dims(r, shape, what)
    assert sshape is not None
    ctx = _read_context(r, what)
    flag = _read_type_flag(r, what)
    aux: list[tuple[int, tuple[int, ...]]] = []
    for j in range(n_aux):
        aflag = _read_type_flag(r, f"{what} aux {j}")
        if aflag not in (4, 6, 10, 11):
            raise r.fail(f"{what} aux {j}: index dtype {TYPE_NAMES[aflag]} is not an integer type")
        ashape = _read_shape(r, f"{what} aux {j} shape")
        if ashape is None:
            raise r.fail(f"{what} aux {j}: shape with ndim -1")
        _check_dims(r, ashape, f"{what} aux {j} shape")
        aux.append((aflag, ashape))
    values = _read_data(r, flag, sshape, what)
    aux_data = [_read_data(r, af, ash, f"{what} aux {j}") for j, (af, ash) in enumerate(aux)]
    info = ArrayInfo(version, STYPE_NAMES[stype], shape, TYPE_NAMES[flag], ctx, r.pos - start)
    if stype == STYPE_ROW_SPARSE:
        if len(shape) < 1 or sshape[1:] != shape[1:] or aux[0][1] != sshape[:1]:
            raise r.fail(f"{what}: inconsistent row_sparse shapes: shape {shape}, "
                         f"storage {sshape}, indices {aux[0][1]}")
        try:
            return RowSparse(values, aux_data[0].astype(np.int64), shape), info
        except LocalFMError as exc:
            raise r.fail(f"{what}: {exc}") from None
    # csr
    import scipy.sparse as sp

    if len(shape) != 2 or len(sshape) != 1 or aux[0][1] != (shape[0] + 1,) \
            or aux[1][1] != sshape:
        raise r.fail(f"{what}: inconsistent csr shapes: shape {shape}, storage {sshape}, "
                     f"indptr {aux[0][1]}, indices {aux[1][1]}")
    indptr, indices = (a.astype(np.int64) for a in aux_data)
    nnz = sshape[0]
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise r.fail(f"{what}: csr indptr is not a non-decreasing 0..{nnz} sequence")
    if nnz and (indices.min() < 0 or indices.max() >= shape[1]):
        raise r.fail(f"{what}: csr column index out of range 0..{shape[1] - 1}")
    return sp.csr_matrix((values, indices, indptr), shape=shape), info


def _read_bytes(src: Source) -> tuple[bytes | memoryview, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return memoryview(src), "<bytes>"
    if isinstance(src, (str, os.PathLike)):
        from .uri import read_bytes

        return read_bytes(src), str(src)
    if hasattr(src, "read"):
        data = src.read()
        if not isinstance(data, (bytes, bytearray)):
            raise LocalFMError(f"{getattr(src, 'name', '<file>')}: expected a binary file")
        return data, str(getattr(src, "name", "<file>"))
    raise LocalFMError(f"expected bytes, a path or a binary file, got {type(src).__name__}")


def parse(buf: bytes | memoryview, where: str = "<bytes>") -> tuple[list[Any], list[str] | None, list[ArrayInfo]]:
    """Parse a whole NDArray-list file: (arrays, names or None, per-array info)."""
    return _parse(_Reader(buf, where))


def read_stream(fh: IO[bytes], size: int, where: str) -> bytes:
    """The ``size`` bytes of an NDArray-list member, read from ``fh`` only as its headers declare.

    Used by the archive reader: the budget for a ``params`` member is what its record
    headers declare (shapes x item sizes), so a member that is not an NDArray list, or
    whose headers declare more than the member holds, is refused as soon as that is
    known, without inflating the rest. Returns the bytes (for :func:`parse`).
    """
    r = _StreamReader(fh, size, where)
    _parse(r)
    if fh.read(1):
        raise LocalFMError(f"{where}: holds more than its declared {size} bytes")
    return b"".join(r.parts)


def _parse(r: _Reader) -> tuple[list[Any], list[str] | None, list[ArrayInfo]]:
    where = r.where
    if r.remaining() < 8:
        raise r.fail(f"not an MXNet NDArray file: {r.total()} bytes, too short")
    magic = r.u64("list magic")
    if magic != LIST_MAGIC:
        raise LocalFMError(f"{where}: not an MXNet NDArray file (magic 0x{magic:x}, "
                           f"expected 0x{LIST_MAGIC:x})")
    r.u64("reserved")
    n_arrays = r.u64("array count")
    if n_arrays * _MIN_RECORD_BYTES > r.remaining():
        raise r.fail(f"array count {n_arrays} cannot fit in the {r.remaining()} bytes left")
    arrays: list[Any] = []
    infos: list[ArrayInfo] = []
    for i in range(n_arrays):
        arr, info = _read_record(r, i)
        arrays.append(arr)
        infos.append(info)
    n_names = r.u64("name count")
    if n_names not in (0, n_arrays):
        raise r.fail(f"name count {n_names} does not match array count {n_arrays}")
    names: list[str] | None = None
    if n_names:
        names = []
        for i in range(n_names):
            length = r.u64(f"name {i} length")
            raw = r.take(length, f"name {i}")
            try:
                names.append(bytes(raw).decode("utf-8"))
            except UnicodeDecodeError:
                raise r.fail(f"name {i} is not UTF-8") from None
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise r.fail(f"duplicate array name {dup!r}")
    if r.remaining():
        raise r.fail(f"{r.remaining()} trailing bytes after the NDArray list")
    return arrays, names, infos


def looks_like_ndarray_list(head: bytes) -> bool:
    """True when ``head`` (the first 8+ bytes) starts with the list magic."""
    return len(head) >= 8 and struct.unpack("<Q", head[:8])[0] == LIST_MAGIC


def load(src: Source) -> list[Any] | dict[str, Any]:
    """Load an NDArray-list file like ``mx.nd.load``: a dict when it has names, else a list.

    ``src`` is bytes, a local path / ``s3://`` URI, or a binary file object.
    """
    buf, where = _read_bytes(src)
    arrays, names, _ = parse(buf, where)
    if names is None:
        return arrays
    return dict(zip(names, arrays))


def describe(src: Source) -> dict[str, Any]:
    """Names, shapes, dtypes and storage types of every array (for ``inspect``)."""
    buf, where = _read_bytes(src)
    arrays, names, infos = parse(buf, where)
    out = []
    for i, (arr, info) in enumerate(zip(arrays, infos)):
        entry: dict[str, Any] = {
            "name": names[i] if names else None,
            "index": i,
            "version": info.version,
            "stype": info.stype,
            "shape": list(info.shape) if info.shape is not None else None,
            "dtype": info.dtype,
            "context": info.context,
        }
        if info.stype == "csr":
            entry["nnz"] = int(arr.nnz)
        elif info.stype == "row_sparse":
            entry["stored_rows"] = len(arr.indices)
        out.append(entry)
    return {"named": names is not None, "count": len(arrays), "arrays": out}


# --------------------------------------------------------------------------- writing


def _shape_bytes(shape: Sequence[int]) -> bytes:
    return struct.pack(f"<i{len(shape)}q", len(shape), *shape)


def _data_flag(arr: np.ndarray, what: str) -> tuple[int, np.ndarray]:
    """The MXNet type flag for ``arr`` and its little-endian C-order copy."""
    flag = _WRITABLE_FLAGS.get((arr.dtype.kind, arr.dtype.itemsize))
    if flag is None:
        raise LocalFMError(f"{what}: dtype {arr.dtype} cannot be saved for MXNet 1.9.1 "
                           "(use float32/64/16, uint8, int8/32/64 or bool)")
    return flag, np.ascontiguousarray(arr, dtype=TYPE_FLAGS[flag])


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, round to nearest even, NaN kept quiet."""
    f = np.ascontiguousarray(values, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded.astype("<u2")


_CPU_CTX = struct.pack("<ii", 1, 0)


def _record(arr: Any, what: str, version: int) -> bytes:
    import scipy.sparse as sp

    magic = V3_MAGIC if version == 3 else V2_MAGIC
    if arr is None:
        raise LocalFMError(f"{what}: cannot write a none array (MXNet 1.9.1 cannot load it back)")
    if isinstance(arr, BFloat16):
        bits = _bfloat16_bits(np.asarray(arr.values))
        return _dense_record(magic, bits.shape, BFLOAT16_FLAG, bits.tobytes(), what, version)
    if sp.issparse(arr) or isinstance(arr, RowSparse):
        if version == 3:
            raise LocalFMError(f"{what}: V3 (NumPy-shape) files hold dense arrays only")
        return _sparse_record(arr, what)
    a = np.asarray(arr)
    flag, data = _data_flag(a, what)
    return _dense_record(magic, a.shape, flag, data.tobytes(), what, version)


def _dense_record(magic: int, shape: tuple[int, ...], flag: int, data: bytes, what: str,
                  version: int) -> bytes:
    if version == 2:
        if len(shape) == 0:
            raise LocalFMError(f"{what}: a 0-d array cannot be written in V2 (ndim 0 means none); "
                               "reshape it to (1,) or write version 3")
        if any(d == 0 for d in shape):
            raise LocalFMError(f"{what}: zero-size shape {shape} cannot be written in V2; "
                               "write version 3")
    return b"".join([struct.pack("<Ii", magic, STYPE_DENSE), _shape_bytes(shape), _CPU_CTX,
                     struct.pack("<i", flag), data])


def _sparse_record(arr: Any, what: str) -> bytes:
    import scipy.sparse as sp

    if isinstance(arr, RowSparse):
        flag, values = _data_flag(arr.data, what)
        idx = np.ascontiguousarray(arr.indices, dtype="<i8")
        if len(idx) > 1 and np.any(np.diff(idx) <= 0):
            raise LocalFMError(f"{what}: RowSparse indices must be strictly ascending")
        shape = tuple(arr.shape)
        sshape = values.shape
        aux = [(6, idx)]
        stype = STYPE_ROW_SPARSE
    else:
        m = sp.csr_matrix(arr)
        if not m.has_canonical_format:
            m = m.copy()
            m.sum_duplicates()
        flag, values = _data_flag(m.data, what)
        shape = tuple(int(s) for s in m.shape)
        sshape = values.shape
        aux = [(6, np.ascontiguousarray(m.indptr, dtype="<i8")),
               (6, np.ascontiguousarray(m.indices, dtype="<i8"))]
        stype = STYPE_CSR
    parts = [struct.pack("<Ii", V2_MAGIC, stype), _shape_bytes(sshape), _shape_bytes(shape),
             _CPU_CTX, struct.pack("<i", flag)]
    for aflag, adata in aux:
        parts += [struct.pack("<i", aflag), _shape_bytes(adata.shape)]
    parts.append(values.tobytes())
    parts += [adata.tobytes() for _, adata in aux]
    return b"".join(parts)


ArrayLike = Union[np.ndarray, "RowSparse", "BFloat16", Any]


def dumps(arrays: Sequence[ArrayLike] | Mapping[str, ArrayLike], *, version: int = 2) -> bytes:
    """Serialize a list (unnamed) or mapping (named, in order) exactly like ``mx.nd.save``.

    Dense arrays → dense records (context cpu(0), as MXNet writes after copying to
    the CPU); scipy sparse matrices → csr with int64 indices; :class:`RowSparse` →
    row_sparse. ``version=3`` writes NumPy-shape records like ``mx.npx.save``
    (dense only; allows 0-d and zero-size arrays).
    """
    if version not in (2, 3):
        raise LocalFMError(f"NDArray file version must be 2 or 3, got {version}")
    if isinstance(arrays, Mapping):
        names = [str(k) for k in arrays.keys()]
        values = list(arrays.values())
    elif isinstance(arrays, (list, tuple)):
        names, values = [], list(arrays)
    else:
        raise LocalFMError(f"expected a list or dict of arrays, got {type(arrays).__name__}")
    out = io.BytesIO()
    out.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(values)))
    for i, arr in enumerate(values):
        out.write(_record(arr, f"array {names[i]!r}" if names else f"array {i}", version))
    out.write(struct.pack("<Q", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
    return out.getvalue()


def save(dest: str | os.PathLike[str], arrays: Sequence[ArrayLike] | Mapping[str, ArrayLike],
         *, version: int = 2) -> None:
    """Write :func:`dumps` output to ``dest`` atomically (never half-written)."""
    from .atomic import atomic_write

    data = dumps(arrays, version=version)
    with atomic_write(Path(dest), "wb") as fh:
        fh.write(data)
