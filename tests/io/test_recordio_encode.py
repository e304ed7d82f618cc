"""The compiled RecordIO encoder (localfm.io._recordio_encode) against the numpy reference.

Every comparison writes the same matrix twice: once with the compiled encoder forced
(``_KERNEL_MIN_ROWS = 0``) and the numpy reference disabled, once with the reference
forced; the bytes must be identical. The SDK writers and the SDK-written fixture pin
the reference itself (tests/io/test_recordio.py).
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localfm.io import _recordio_encode as enc
from localfm.io import recordio as rio
from localfm.io.recordio import RecordIOError
from tests.io.test_recordio import sdk  # noqa: F401 - the SDK reference writers, shared fixture

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
UFO = "ufo-train.recordio-protobuf"

_DTYPES = [np.float32, np.float64, np.int32, np.int64]
_LABEL_DTYPES = [None, np.float32, np.float64, np.int32, np.int64]


def _written(write, *args) -> bytes:
    buf = io.BytesIO()
    write(buf, *args)
    return buf.getvalue()


def _reference(monkeypatch, write, *args) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(rio, "_KERNEL_MIN_ROWS", 1 << 62)
        m.setattr(rio, "_KERNEL_WARM_MIN_ROWS", 1 << 62)
        m.setattr(enc, "encode_block", _forbidden)
        return _written(write, *args)


def _kernel(monkeypatch, write, *args) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(rio, "_KERNEL_MIN_ROWS", 0)
        m.setattr(rio, "_KERNEL_WARM_MIN_ROWS", 0)
        m.setattr(rio, "_encode_rows", _forbidden)  # the kernel path must not lean on the reference
        return _written(write, *args)


def _forbidden(*args, **kwargs):
    raise AssertionError("this encoder must not run here")


def _values(rng: np.random.Generator, size: int, dtype) -> np.ndarray:
    if np.dtype(dtype).kind == "i":  # the full int32 range: negative values are 10-byte varints
        return rng.integers(-(2**31), 2**31, size).astype(dtype)
    return (rng.normal(size=size) * 10.0 ** rng.integers(-3, 6, size)).astype(dtype)


def _labels(rng: np.random.Generator, n: int, dtype):
    return None if dtype is None else _values(rng, n, dtype)


@st.composite
def sparse_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 40))
    # up to 2^21+ columns: keys and the shape are 1- to 4-byte varints
    n_cols = draw(st.sampled_from([1, 3, 127, 128, 300, 16384, 20000, 2**21 + 5]))
    counts = rng.integers(0, draw(st.integers(1, 6)) + 1, n)
    counts[rng.random(n) < 0.3] = 0  # empty rows
    indptr = np.r_[0, np.cumsum(counts)]
    indices = rng.integers(0, n_cols, int(indptr[-1]))  # unsorted, repeated: stored order is kept
    dtype = draw(st.sampled_from(_DTYPES))
    X = sp.csr_matrix((_values(rng, indices.size, dtype), indices, indptr), shape=(n, n_cols))
    X.data[rng.random(X.nnz) < 0.1] = 0  # explicit zeros are written
    return X, _labels(rng, n, draw(st.sampled_from(_LABEL_DTYPES)))


@given(sparse_cases())
@FAST
def test_sparse_kernel_matches_reference(monkeypatch, case):
    X, y = case
    expected = _reference(monkeypatch, rio.write_sparse, X, y)
    assert _kernel(monkeypatch, rio.write_sparse, X, y) == expected


@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.integers(0, 40), st.sampled_from(_DTYPES),
       st.sampled_from(_LABEL_DTYPES), st.booleans())
@FAST
def test_dense_kernel_matches_reference(monkeypatch, seed, n, d, dtype, label_dtype, fortran):
    rng = np.random.default_rng(seed)
    X = _values(rng, n * d, dtype).reshape(n, d)
    if fortran:
        X = np.asfortranarray(X)
    y = _labels(rng, n, label_dtype)
    expected = _reference(monkeypatch, rio.write_dense, X, y)
    assert _kernel(monkeypatch, rio.write_dense, X, y) == expected


def test_encode_block_directly_matches_encode_rows():
    """The module function itself, without write_sparse's routing: a wrong kernel fails here."""
    rng = np.random.default_rng(7)
    X = sp.random(500, 70000, density=0.0002, random_state=3, format="csr", dtype=np.float32)
    y = rng.random(500).astype(np.float32)
    counts = np.diff(X.indptr)
    vb, vsz = rio._numeric_bytes(X.data, "float32", "matrix")
    kb, ksz = rio.encode_varints(X.indices.astype(np.uint64))
    lb, lrow = rio._numeric_bytes(y, "float32", "labels")
    ref = rio._encode_rows(vb, rio._per_row(vsz, counts), "float32", kb, rio._per_row(ksz, counts), 70000,
                           lb, lrow, "float32")
    shape = rio.encode_varints(np.array([70000], np.uint64))[0].tobytes()
    got = enc.encode_block(X.data, "float32", 0x12, X.indptr, X.indices, shape, y, "float32", 0x12)
    assert got.dtype == np.uint8 and got.tobytes() == ref.tobytes()


@pytest.mark.parametrize("label_dtype", [None, np.float32])
def test_empty_rows_and_empty_matrices(monkeypatch, label_dtype):
    cases = [
        sp.csr_matrix((0, 5), dtype=np.float32),  # no rows: no bytes
        sp.csr_matrix((6, 9), dtype=np.float32),  # only empty rows
        sp.csr_matrix((np.ones(2, np.float32), [4, 1], [0, 0, 2, 2]), shape=(3, 5)),
    ]
    for X in cases:
        y = None if label_dtype is None else np.arange(X.shape[0], dtype=label_dtype)
        expected = _reference(monkeypatch, rio.write_sparse, X, y)
        assert _kernel(monkeypatch, rio.write_sparse, X, y) == expected
        assert (expected == b"") == (X.shape[0] == 0)
    for X in (np.zeros((0, 4), np.float32), np.zeros((5, 0), np.float32)):
        y = None if label_dtype is None else np.ones(X.shape[0], dtype=label_dtype)
        assert _kernel(monkeypatch, rio.write_dense, X, y) == _reference(monkeypatch, rio.write_dense, X, y)


@pytest.mark.parametrize("dtype,tensor", [(np.float32, "float32"), (np.float64, "float64"),
                                          (np.int64, "int32"), (np.int32, "int32")])
def test_dtypes_are_routed_to_their_tensor_types(monkeypatch, dtype, tensor):
    rng = np.random.default_rng(1)
    X = sp.random(20, 50, density=0.2, random_state=2, format="csr").astype(dtype)
    X.data = _values(rng, X.nnz, dtype)
    y = np.arange(20, dtype=np.int64) - 10
    raw = _kernel(monkeypatch, rio.write_sparse, X, y)
    records = list(rio.iter_records(raw))
    assert {r.features["values"].dtype for r in records} == {tensor}
    assert {r.label["values"].dtype for r in records} == {"int32"}
    for i, r in enumerate(records):  # the exact values, before read_matrix's float32 conversion
        row = X.getrow(i)
        np.testing.assert_array_equal(r.features["values"].values, row.data)
        np.testing.assert_array_equal(r.features["values"].keys, row.indices)
        assert r.label["values"].values.tolist() == [y[i]]
    back = rio.read_matrix(raw)
    np.testing.assert_array_equal(back.X.toarray(), X.toarray().astype(np.float32))


def test_blocks_split_rows_and_values(monkeypatch):
    """Many small blocks (and a row longer than a block's value budget) give the same bytes."""
    rng = np.random.default_rng(11)
    counts = rng.integers(0, 5, 3000)
    counts[1234] = 400
    indptr = np.r_[0, np.cumsum(counts)]
    X = sp.csr_matrix((_values(rng, int(indptr[-1]), np.float32), rng.integers(0, 90000, int(indptr[-1])), indptr),
                      shape=(3000, 90000))
    y = rng.random(3000).astype(np.float32)
    expected = _reference(monkeypatch, rio.write_sparse, X, y)
    calls = []
    original = enc.encode_block
    monkeypatch.setattr(rio, "_KERNEL_BLOCK_ROWS", 700)
    monkeypatch.setattr(rio, "_KERNEL_BLOCK_VALUES", 100)
    monkeypatch.setattr(enc, "encode_block", lambda *a: calls.append(a[3].size - 1) or original(*a))
    assert _kernel(monkeypatch, rio.write_sparse, X, y) == expected
    assert sum(calls) == 3000 and max(calls) <= 700 and 1 in calls and len(calls) > 3000 * 2 / 100


def test_files_read_back(tmp_path, monkeypatch):
    """Default routing on a matrix at the threshold: the kernel writes, read_matrix reads it back."""
    rng = np.random.default_rng(5)
    monkeypatch.setattr(rio, "_KERNEL_MIN_ROWS", 5000)
    monkeypatch.setattr(rio, "_encode_rows", _forbidden)
    n = 5000
    X = sp.random(n, 3000, density=0.002, random_state=6, format="csr", dtype=np.float32)
    y = rng.random(n).astype(np.float32)
    rio.write_sparse(tmp_path / "s.protobuf", X, y)
    back = rio.read_matrix(tmp_path / "s.protobuf", feature_dim=3000)
    assert back.sparse and (back.X != X).nnz == 0
    np.testing.assert_array_equal(back.y, y)
    D = rng.normal(size=(n, 5)).astype(np.float32)
    rio.write_dense(tmp_path / "d.protobuf", D)
    np.testing.assert_array_equal(rio.read_matrix(tmp_path / "d.protobuf").X, D)


def test_routing_by_size(monkeypatch):
    """Cold, only large writes pay for numba; once the encoder is loaded, mid-size writes use it too."""
    used = []
    original = enc.encode_block
    monkeypatch.setattr(enc, "encode_block", lambda *a: used.append(a[3].size - 1) or original(*a))
    monkeypatch.setattr(rio, "_KERNEL_MIN_ROWS", 300)
    monkeypatch.setattr(rio, "_KERNEL_WARM_MIN_ROWS", 100)

    def write(n: int) -> None:
        _written(rio.write_sparse, sp.random(n, 10, density=0.3, random_state=1, format="csr", dtype=np.float32))

    monkeypatch.setattr(rio, "_kernel_warm", False)  # as in a process that has not used it yet
    write(299)
    assert used == []
    write(300)
    assert used == [300]
    assert rio._kernel_warm  # the large write loaded it
    write(100)
    write(99)
    assert used == [300, 100]
    with monkeypatch.context() as m:
        m.setattr(rio, "_encode_rows", _forbidden)
        write(150)


def test_kernel_matches_the_sdk(monkeypatch, sdk):  # noqa: F811 - the shared fixture
    rng = np.random.default_rng(3)
    X = sp.random(120, 20000, density=0.0007, random_state=4, format="csr", dtype=np.float32)
    y = rng.normal(size=120).astype(np.float32)
    assert _kernel(monkeypatch, rio.write_sparse, X, y) == _written(sdk.write_spmatrix_to_sparse_tensor, X, y)
    D = (rng.normal(size=(40, 33)) * 1e4).astype(np.float64)
    yi = rng.integers(-3, 3, 40)
    assert _kernel(monkeypatch, rio.write_dense, D, yi) == _written(sdk.write_numpy_to_dense_tensor, D, yi)


def test_kernel_rewrites_the_sdk_fixture(monkeypatch, sagemaker_fixtures):
    path = sagemaker_fixtures / UFO
    m = rio.read_matrix(path)
    assert _kernel(monkeypatch, rio.write_dense, m.X, m.y) == path.read_bytes()


def test_kernel_errors(monkeypatch):
    with pytest.raises(RecordIOError, match="int32 range"):
        _kernel(monkeypatch, rio.write_sparse, sp.csr_matrix(np.array([[0, 2**40]], np.int64)))
    with pytest.raises(RecordIOError, match="labels: integer values outside the int32 range"):
        _kernel(monkeypatch, rio.write_dense, np.ones((2, 2), np.float32), np.array([1, -(2**35)]))
    monkeypatch.setattr(enc, "LEN_LIMIT", 40)
    with pytest.raises(RecordIOError, match="limited to 2"):
        _kernel(monkeypatch, rio.write_dense, np.ones((2, 10), np.float32))
    # a row just under the limit still passes
    assert _kernel(monkeypatch, rio.write_dense, np.ones((2, 2), np.float32))
