"""The compiled RecordIO decoder (localfm.io._recordio_decode) against the vectorised/exact reader.

Every result must be the old reader's, bit for bit (arrays, dtypes, labels, errors with
their offsets), and the kernel must really be the one decoding canonical files.
"""
from __future__ import annotations

import io
import platform
import struct
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localfm.io import _recordio_decode as dec
from localfm.io import recordio as rio
from localfm.io.recordio import Record, RecordIOError, Tensor

# Every existing reader test, run again here with the kernel on for inputs of any size
# (the autouse fixture below): errors, offsets, multi-part records, streams, batches.
from tests.io.test_recordio import *
from tests.io.test_recordio import _bytes, _err, _sparse

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def kernel_for_any_size(monkeypatch):
    monkeypatch.setattr(rio, "_DECODER_MIN_BYTES", 0)
    monkeypatch.setattr(rio, "_DECODER_WARM_MIN_BYTES", 0)


class _Off:
    """Within ``with _Off():`` the reader never uses the kernel (the reference)."""

    def __enter__(self) -> None:
        self.saved = rio._DECODER_MIN_BYTES, rio._DECODER_WARM_MIN_BYTES
        rio._DECODER_MIN_BYTES = rio._DECODER_WARM_MIN_BYTES = 1 << 62

    def __exit__(self, *exc: object) -> None:
        rio._DECODER_MIN_BYTES, rio._DECODER_WARM_MIN_BYTES = self.saved


def _outcome(fn, *args, **kwargs):  # noqa: ANN001, ANN202
    try:
        return "ok", fn(*args, **kwargs)
    except RecordIOError as exc:
        return "error", str(exc)


def _same_array(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _same_matrix(a: rio.RecordIOMatrix, b: rio.RecordIOMatrix) -> None:
    assert a.sparse == b.sparse and a.X.shape == b.X.shape
    if a.sparse:
        for f in ("data", "indices", "indptr"):
            _same_array(getattr(a.X, f), getattr(b.X, f))
    else:
        _same_array(a.X, b.X)
    assert (a.y is None) == (b.y is None)
    if a.y is not None:
        _same_array(a.y, b.y)


def _agree(raw: bytes, feature_dim: int | None = None, batch: int = 7) -> None:
    """read_matrix, iter_batches and describe give the same answer (or error) with and without the kernel."""
    new = _outcome(rio.read_matrix, raw, feature_dim)
    new_batches = _outcome(lambda: list(rio.iter_batches(raw, batch, feature_dim)))
    new_describe = _outcome(rio.describe, raw)
    with _Off():
        old = _outcome(rio.read_matrix, raw, feature_dim)
        old_batches = _outcome(lambda: list(rio.iter_batches(raw, batch, feature_dim)))
        old_describe = _outcome(rio.describe, raw)
    assert new[0] == old[0], (new, old)
    if new[0] == "ok":
        _same_matrix(new[1], old[1])
    else:
        assert new[1] == old[1]
    assert new_batches[0] == old_batches[0], (new_batches, old_batches)
    if new_batches[0] == "ok":
        assert len(new_batches[1]) == len(old_batches[1])
        for a, b in zip(new_batches[1], old_batches[1]):
            _same_matrix(a, b)
    else:
        assert new_batches[1] == old_batches[1]
    assert new_describe == old_describe


def _kernel_records(raw: bytes) -> int:
    """How many leading records of ``raw`` the kernel decodes in one call."""
    out = rio._KernelPrefix()
    cols, _ = out(raw, 0)
    return 0 if cols is None else cols.n


# ----------------------------------------------------------------------------- the kernel is used

def test_fixture_is_decoded_by_the_kernel_alone(sagemaker_fixtures, monkeypatch):
    path = sagemaker_fixtures / UFO
    raw = path.read_bytes()
    with _Off():
        old = rio.read_matrix(path)
    assert _kernel_records(raw) == 14430
    monkeypatch.setattr(rio, "_columns", None)  # the vectorised/exact decoders would crash if called
    _same_matrix(rio.read_matrix(path), old)


def test_canonical_sparse_file_never_reaches_the_old_decoders(tmp_path, monkeypatch):
    X = _sparse(3000, 70000, 0.0005, seed=1)
    y = np.linspace(-1, 1, 3000, dtype=np.float32)
    path = tmp_path / "x.protobuf"
    rio.write_sparse(path, X, y)
    with _Off():
        old = rio.read_matrix(path)
    monkeypatch.setattr(rio, "BLOCK_BYTES", 4096)  # many blocks, records cut at every boundary
    monkeypatch.setattr(rio, "_columns", None)
    new = rio.read_matrix(path)
    _same_matrix(new, old)
    assert new.X.indices.dtype == np.int32 and (new.X != X).nnz == 0


def test_the_kernel_is_used_from_a_size_on(monkeypatch, tmp_path):
    """Cold: only sources of _DECODER_MIN_BYTES (numba's start-up would cost more than it saves);
    once loaded: from _DECODER_WARM_MIN_BYTES. Decided on the source's size, not per block."""
    raw = _bytes(rio.write_sparse, _sparse(3000, 500, 0.01, seed=2), np.ones(3000, np.float32))
    path = tmp_path / "x.protobuf"
    path.write_bytes(raw)
    calls = []
    original = dec.decode_block
    monkeypatch.setattr(dec, "decode_block", lambda *a: calls.append(a[0].size) or original(*a))
    monkeypatch.setattr(rio, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(rio, "_decoder_warm", False)
    monkeypatch.setattr(rio, "_DECODER_MIN_BYTES", len(raw) + 1)
    monkeypatch.setattr(rio, "_DECODER_WARM_MIN_BYTES", 1)
    rio.read_matrix(path)
    assert calls == []
    monkeypatch.setattr(rio, "_DECODER_MIN_BYTES", len(raw))  # the file's size counts, not its 4 kB blocks
    rio.read_matrix(path)
    assert len(calls) > 10 and rio._decoder_warm
    calls.clear()
    monkeypatch.setattr(rio, "_DECODER_MIN_BYTES", 1 << 62)
    monkeypatch.setattr(rio, "_DECODER_WARM_MIN_BYTES", len(raw))  # warm: the lower bar
    rio.read_matrix(path)
    assert len(calls) > 10
    calls.clear()
    monkeypatch.setattr(rio, "_DECODER_WARM_MIN_BYTES", len(raw) + 1)
    rio.read_matrix(path)
    assert calls == []


# ----------------------------------------------------------------------------- same results

@st.composite
def _canonical_files(draw):  # noqa: ANN001, ANN202
    """write_sparse / write_dense output of random matrices, labels or none, f32 or f64."""
    n = draw(st.integers(1, 25))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    floats = st.floats(width=32 if dtype == np.float32 else 64)  # NaN, inf, -0.0, huge f64 included
    labels = draw(st.none() | st.lists(floats, min_size=n, max_size=n))
    with np.errstate(over="ignore"):  # float64 labels beyond float32 written as float32: inf
        lab = None if labels is None else np.array(labels, draw(st.sampled_from([np.float32, np.float64])))
    if draw(st.booleans()):
        d = draw(st.integers(0, 6))
        X = np.array(draw(st.lists(floats, min_size=n * d, max_size=n * d)), dtype).reshape(n, d)
        return _bytes(rio.write_dense, X, lab), n
    d = draw(st.sampled_from([1, 3, 128, 20000, 2**31 - 1, 2**31]))
    nnz = draw(st.integers(0, min(n * d, 40)))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=nnz, max_size=nnz))
    cols = draw(st.lists(st.integers(0, d - 1), min_size=nnz, max_size=nnz))
    vals = draw(st.lists(floats, min_size=nnz, max_size=nnz))
    X = sp.csr_matrix((np.array(vals, dtype), (rows, cols)), shape=(n, d))
    # a shape beyond int32 is left to the other decoders (scipy needs int64 indices there)
    return _bytes(rio.write_sparse, X, lab), (n if d < 2**31 else 0)


@pytest.mark.slow
@given(_canonical_files(), st.integers(1, 9))
@FAST
def test_random_canonical_files_agree(file, batch):
    raw, kernel_takes = file
    _agree(raw, batch=batch)
    assert _kernel_records(raw) == kernel_takes


@pytest.mark.slow
@given(_canonical_files(), st.data())
@FAST
def test_block_cuts_anywhere_agree(file, data):
    raw = file[0]
    block = data.draw(st.integers(1, max(1, len(raw))))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rio, "BLOCK_BYTES", block)
        _agree(raw)


@pytest.mark.slow
@given(_canonical_files(), st.data())
@FAST
def test_damaged_bytes_give_the_same_error_or_result(file, data):
    """A flipped, cut or inserted byte: the kernel stops at that record and the exact path decides."""
    buf = bytearray(file[0])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(buf) - 1))
        how = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if how == "set":
            buf[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del buf[at]
        else:
            buf.insert(at, data.draw(st.integers(0, 255)))
        if not buf:
            break
    _agree(bytes(buf))


def test_shapeless_sparse_and_feature_dim():
    recs = [Record({"values": Tensor("float32", [1, 2], [k, k + 3], [])}, {"values": Tensor("float32", [k])})
            for k in range(9)]
    raw = _bytes(rio.write_records, recs)
    assert _kernel_records(raw) == 9
    for fd in (None, 11, 12, 40):
        _agree(raw, fd)
    assert "key 11 out of range for feature dimension 11" in _outcome(rio.read_matrix, raw, 11)[1]
    assert rio.read_matrix(raw).X.shape == (9, 12)


def test_runs_end_where_records_differ():
    """A record unlike the first ends the kernel's run; the old path takes the rest, results unchanged."""
    s = lambda v, k, d, lab=None: Record({"values": Tensor("float32", v, k, d)},
                                         {} if lab is None else {"values": Tensor("float32", [lab])})
    f64 = Record({"values": Tensor("float64", [1.5], [1], [5])}, {"values": Tensor("float32", [0])})
    cases = [
        ([s([1], [0], [5], 1), s([2], [1], [5], 1), f64, s([3], [2], [5], 1)], 2),  # value dtype changes
        ([s([1], [0], [5], 1), s([2], [1], [5]), s([3], [2], [5], 1)], 1),  # label missing
        ([s([1], [0], [5]), s([2], [1], [6])], 1),  # shape differs (an error)
        ([s([1], [0], [5]), s([2], [9], [5])], 1),  # key beyond the shape (an error)
        ([s([1], [0], [5]), s([], [], [5]), s([2, 3], [1, 2], [5])], 3),  # empty sparse row is fine
        ([s([1], [0], [5]), Record({"values": Tensor("float32", [1, 2])})], 1),  # dense after sparse
        ([s([1], [0], [5]), s([1, 2], [0], [5])], 1),  # keys != values (an error)
        ([s([1], [0], [5]), s([1], [0], [5, 1])], 1),  # two-dimensional shape
        ([s([1], [0], [5]), Record({"values": Tensor("int32", [1], [0], [5])})], 1),  # int32 tensor
        ([s([1], [0], [5]), Record({"values": Tensor("float32", [1], [0], [5]), "x": None})], 1),  # extra key
        ([s([1], [0], [5]), Record({"values": Tensor("float32", [1], [0], [5])}, uid="u")], 1),  # uid
        ([s([1], [0], [5], 1), s([1], [0], [5], 2), Record({"values": Tensor("float32", [1], [0], [5])},
                                                            {"values": Tensor("float32", [1, 2])})], 2),
    ]
    for recs, taken in cases:
        raw = _bytes(rio.write_records, recs)
        assert _kernel_records(raw) == taken, recs
        _agree(raw)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rio, "BLOCK_BYTES", 16)
            _agree(raw)


def test_split_record_in_the_middle():
    magic_f32 = np.frombuffer(rio.MAGIC.to_bytes(4, "little"), np.float32)[0]
    plain = [Record({"values": Tensor("float32", [1.0, 2.0], [0, 2], [4])}, {"values": Tensor("float32", [1])})] * 5
    odd = Record({"values": Tensor("float32", [magic_f32] * 3, [0, 1, 3], [4])}, {"values": Tensor("float32", [0])})
    raw = _bytes(rio.write_records, plain) + _bytes(rio.write_records, [odd], True) + _bytes(rio.write_records, plain)
    assert _kernel_records(raw) == 5
    _agree(raw)
    m = rio.read_matrix(raw)
    assert m.X.shape == (11, 4) and m.X[5, 3] == magic_f32
    assert rio.describe(raw)["multipart_records"] == 1


def test_empty_and_tiny_inputs():
    for raw in (b"", b"\0", rio.MAGIC_BYTES, rio.MAGIC_BYTES + b"\0\0\0"):
        _agree(raw)
    assert "no records" in _err(b"")


def test_float64_values_round_like_numpy():
    vals = np.array([np.nan, -np.nan, np.inf, -0.0, 1e300, -1e300, 1 + 2**-30, 3.4028235677973366e38,
                     np.frombuffer(struct.pack("<Q", 0x7FF0000000000001), np.float64)[0]], np.float64)
    X = sp.csr_matrix((vals, np.arange(vals.size), [0, vals.size]), shape=(1, vals.size))
    raw = _bytes(rio.write_sparse, X, vals[:1])
    assert _kernel_records(raw) == 1
    _agree(raw)
    with np.errstate(over="ignore"):
        expected = vals.astype(np.float32)
    m = rio.read_matrix(raw)
    assert m.X.data.tobytes() == expected.tobytes() and m.y.tobytes() == expected[:1].tobytes()


def test_stream_sources_agree():
    X = _sparse(400, 900, 0.01, seed=11)
    raw = _bytes(rio.write_sparse, X, np.ones(400, np.float32))
    new = rio.read_matrix(io.BytesIO(raw))
    with _Off():
        old = rio.read_matrix(io.BytesIO(raw))
    _same_matrix(new, old)


# ----------------------------------------------------------------------------- memory

def test_read_keeps_few_bytes_per_record(tmp_path, monkeypatch):
    """The ML-25M shape (2 nonzeros, a label): the old reader peaked at ~100 B/record (tracemalloc)."""
    n = 200_000
    rng = np.random.default_rng(0)
    cols = np.stack([rng.integers(0, 1000, n), 1000 + rng.integers(0, 5000, n)], axis=1).ravel()
    X = sp.csr_matrix((np.ones(2 * n, np.float32), cols, np.arange(0, 2 * n + 1, 2)), shape=(n, 6000))
    path = tmp_path / "ml.protobuf"
    rio.write_sparse(path, X, rng.integers(0, 2, n).astype(np.float32))
    monkeypatch.setattr(rio, "BLOCK_BYTES", 1 << 18)  # block and kernel buffers: ~5 B/record here

    def peak_per_record() -> float:
        tracemalloc.start()
        try:
            m = rio.read_matrix(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert m.X.shape == (n, 6000)
        return peak / n

    rio.read_matrix(path)  # import numba and load the compiled kernel outside the measurement
    new = peak_per_record()
    with _Off():
        old = peak_per_record()
    # result: 8 B values + 8 B int32 indices + 4 B indptr + 4 B labels = 24 B/record; while
    # joining blocks also 8 B offsets + 4 B counts per record and one joined column.
    assert new < 50 and old > 90, (new, old)


def test_nonzero_padding_stops_the_kernel():
    raw = bytearray(_bytes(rio.write_sparse, _sparse(30, 300, 0.02, seed=5), np.ones(30, np.float32)))
    pos, padded_records = 0, []
    while pos < len(raw):
        length = struct.unpack_from("<I", raw, pos + 4)[0]
        if length % 4:
            padded_records.append((pos, length))
        pos += 8 + ((length + 3) & ~3)
    assert len(padded_records) > 2
    at, length = padded_records[2]
    raw[at + 8 + length] = 1
    assert _kernel_records(bytes(raw)) == len(rio.read_matrix(bytes(raw[:at])).y)
    assert f"byte {at + 8 + length}: non-zero padding" in _err(bytes(raw))
    _agree(bytes(raw))


def test_without_numba_the_reader_still_works(monkeypatch):
    raw = _bytes(rio.write_sparse, _sparse(50, 80, 0.05, seed=3), np.zeros(50, np.float32))
    with _Off():
        old = rio.read_matrix(raw)
    monkeypatch.setitem(sys.modules, "localfm.io._recordio_decode", None)  # import fails
    monkeypatch.delattr(sys.modules["localfm.io"], "_recordio_decode")
    assert rio._KernelPrefix()(raw, 0) == (None, 0)
    _same_matrix(rio.read_matrix(raw), old)


def test_big_joins_hand_freed_heap_back(monkeypatch):
    """glibc keeps freed block arrays resident; big joins trim the heap after each column
    (the 22.5M-record read peaked ~300 MB lower), small ones (iter_batches) do not pay for it."""
    raw = _bytes(rio.write_sparse, _sparse(400, 900, 0.01, seed=11), np.ones(400, np.float32))
    monkeypatch.setattr(rio, "BLOCK_BYTES", 2048)
    trims = []
    monkeypatch.setattr(rio, "_trim_heap", lambda: trims.append(1))
    list(rio.iter_batches(raw, 50))
    rio.read_matrix(raw)
    assert trims == []
    monkeypatch.setattr(rio, "_TRIM_MIN_BYTES", 0)
    rio.read_matrix(raw)
    assert len(trims) == len(rio._COLUMN_FIELDS)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert rio._malloc_trim() is not None
