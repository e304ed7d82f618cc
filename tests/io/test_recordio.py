"""RecordIO-protobuf codec: SDK byte identity, round trips, fast/exact decoder agreement, strict errors."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localfm.errors import LocalFMError
from localfm.io import recordio as rio
from localfm.io._protobuf import decode_varint_stream, encode_varints, read_varint, varint_bytes
from localfm.io.recordio import BytesValue, Record, RecordIOError, Tensor

UFO = "ufo-train.recordio-protobuf"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def sdk():
    pytest.importorskip("google.protobuf", reason="protobuf not installed: SDK reference writers unavailable")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("localfm_sdk_reference", Path(__file__).with_name("_sdk_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bytes(write, *args) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    write(buf, *args)
    return buf.getvalue()


def _sparse(n: int, d: int, density: float, seed: int, dtype=np.float32) -> sp.csr_matrix:  # noqa: ANN001
    X = sp.random(n, d, density=density, random_state=seed, format="csr", dtype=np.float64)
    return X.astype(dtype)


# ----------------------------------------------------------------------------- the SDK fixture

@pytest.mark.slow
def test_fixture_decodes_all_records_and_reencodes_to_identical_bytes(sagemaker_fixtures):
    path = sagemaker_fixtures / UFO
    raw = path.read_bytes()
    records = list(rio.iter_records(path))
    assert len(records) == 14430
    first = records[0]
    assert list(first.features) == ["values"] and list(first.label) == ["values"]
    assert first.features["values"].dtype == "float32"
    assert first.features["values"].values.size == 22
    np.testing.assert_allclose(first.features["values"].values[:4], [84, 7, 37.558613, -122.27], rtol=1e-6)
    assert first.label["values"].values.tolist() == [0.0]
    again = b"".join(rio.frame_payload(rio.encode_record(r)) for r in records)
    assert again == raw


def test_fixture_read_matrix_then_write_dense_is_byte_identical(sagemaker_fixtures):
    path = sagemaker_fixtures / UFO
    m = rio.read_matrix(path)
    assert not m.sparse and m.X.shape == (14430, 22) and m.X.dtype == np.float32
    assert m.y is not None and m.y.dtype == np.float32 and set(np.unique(m.y).tolist()) == {0.0, 1.0, 2.0}
    assert _bytes(rio.write_dense, m.X, m.y) == path.read_bytes()


def test_fixture_fast_path_takes_every_record(sagemaker_fixtures):
    frames = list(rio._iter_frames(sagemaker_fixtures / UFO))
    for fr in frames:
        _, ok = rio._fast_columns(fr)
        assert ok.all()


def test_describe_fixture(sagemaker_fixtures):
    d = rio.describe(sagemaker_fixtures / UFO)
    assert d["records"] == 14430 and d["layout"] == "dense" and d["feature_dim"] == 22
    assert d["has_label"] and d["feature_dtypes"] == {"float32": 14430} and d["label_dtypes"] == {"float32": 14430}
    assert d["multipart_records"] == 0 and d["other_keys"] == []


# ----------------------------------------------------------------------------- SDK byte identity

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32])
@pytest.mark.parametrize("label_dtype", [None, np.float32, np.float64, np.int64])
def test_write_sparse_matches_sdk(sdk, dtype, label_dtype):
    rng = np.random.default_rng(3)
    X = _sparse(120, 20000, 0.0007, seed=4, dtype=np.float64)  # > 16384 columns: 3-byte key varints
    X = X.astype(dtype) if dtype != np.int32 else X.astype(np.int64)
    if np.dtype(dtype).kind == "i":
        X.data = rng.integers(-(2**31), 2**31, X.nnz)
    X = X.tolil()
    X[5, :] = 0  # an empty row
    X = X.tocsr()
    X.data[0] = 0  # an explicit stored zero is written, like csr.getrow() would
    y = None if label_dtype is None else (rng.normal(size=120) * 1e3).astype(label_dtype)
    expected = _bytes(sdk.write_spmatrix_to_sparse_tensor, X, y)
    if dtype == np.int32:  # the SDK resolves np.dtype(int) (int64 here); int32 gives the same tensor
        X = X.astype(np.int32)
    assert _bytes(rio.write_sparse, X, y) == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("label_dtype", [None, np.float32, np.int64])
def test_write_dense_matches_sdk(sdk, dtype, label_dtype):
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(40, 33)) * 1e4).astype(dtype)
    y = None if label_dtype is None else rng.integers(-3, 3, 40).astype(label_dtype)
    assert _bytes(rio.write_dense, X, y) == _bytes(sdk.write_numpy_to_dense_tensor, X, y)


def test_write_matches_sdk_edge_shapes(sdk):
    for X in (np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), np.full((2, 1), np.nan, np.float32)):
        assert _bytes(rio.write_dense, X) == _bytes(sdk.write_numpy_to_dense_tensor, X)
    for X in (sp.csr_matrix((4, 7), dtype=np.float32), sp.csr_matrix((0, 3), dtype=np.float32)):
        assert _bytes(rio.write_sparse, X) == _bytes(sdk.write_spmatrix_to_sparse_tensor, X)
    # unsorted indices and a COO input with duplicates (tocsr sums them, as in the SDK)
    X = sp.csr_matrix((np.array([1, 2, 3], np.float32), np.array([9, 2, 5]), np.array([0, 2, 3])), shape=(2, 10))
    assert _bytes(rio.write_sparse, X) == _bytes(sdk.write_spmatrix_to_sparse_tensor, X)
    C = sp.coo_matrix((np.ones(3, np.float32), ([0, 0, 1], [4, 4, 2])), shape=(2, 300))
    assert _bytes(rio.write_sparse, C) == _bytes(sdk.write_spmatrix_to_sparse_tensor, C)


@given(st.data())
@FAST
def test_protobuf_parsed_records_decode_identically(sdk, data):
    """Records built and serialised by real protobuf decode to the same values here."""
    msg = sdk.Record()
    values = data.draw(st.lists(st.floats(width=32, allow_nan=False), max_size=6))
    keys = data.draw(st.lists(st.integers(0, 2**64 - 1), max_size=6))
    msg.features["values"].float32_tensor.values.extend(values)
    msg.features["values"].float32_tensor.keys.extend(keys)
    ints = data.draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4))
    msg.features["other"].int32_tensor.values.extend(ints)
    msg.label["values"].float64_tensor.values.extend(data.draw(st.lists(st.floats(), max_size=2)))
    blobs = data.draw(st.lists(st.binary(max_size=5), max_size=3))
    msg.label["raw"].bytes.value.extend(blobs)
    if data.draw(st.booleans()):
        msg.uid = data.draw(st.text(max_size=5))
    rec = rio.decode_record(msg.SerializeToString())
    assert rec.features["values"] == Tensor("float32", np.array(values, np.float32), np.array(keys, np.uint64))
    assert rec.features["other"].values.tolist() == ints
    assert rec.label["raw"] == BytesValue(blobs, None)
    assert rec.uid == (msg.uid if msg.HasField("uid") else None)
    # Map order on the wire is up to the protobuf runtime, so compare as parsed messages.
    assert sdk.Record.FromString(rio.encode_record(rec)) == msg


# ----------------------------------------------------------------------------- round trips

@st.composite
def sparse_matrices(draw):  # noqa: ANN001,ANN201
    n = draw(st.integers(1, 30))
    d = draw(st.sampled_from([1, 5, 127, 128, 300, 20000, 2**21 + 3]))
    nnz = draw(st.integers(0, min(n * d, 60)))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=nnz, max_size=nnz))
    cols = draw(st.lists(st.integers(0, d - 1), min_size=nnz, max_size=nnz))
    vals = draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=nnz, max_size=nnz))
    X = sp.coo_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n, d)).tocsr()
    return X


@pytest.mark.slow
@given(sparse_matrices(), st.booleans())
@FAST
def test_sparse_round_trip(X, with_labels):
    y = np.arange(X.shape[0], dtype=np.float32) - 3.5 if with_labels else None
    raw = _bytes(rio.write_sparse, X, y)
    m = rio.read_matrix(raw)
    assert m.sparse and m.X.shape == X.shape and m.X.dtype == np.float32
    assert (m.X != X).nnz == 0
    np.testing.assert_array_equal(m.X.indices, X.indices)
    assert (m.y is None) == (y is None) and (y is None or np.array_equal(m.y, y))
    _assert_fast_equals_exact(raw)


@pytest.mark.slow
@given(st.integers(1, 20), st.integers(1, 40), st.sampled_from([np.float32, np.float64]), st.integers(0, 99))
@FAST
def test_dense_round_trip(n, d, dtype, seed):
    X = (np.random.default_rng(seed).normal(size=(n, d)) * 100).astype(dtype)
    y = np.random.default_rng(seed + 1).integers(0, 2, n).astype(np.float64)
    raw = _bytes(rio.write_dense, X, y)
    m = rio.read_matrix(raw)
    assert not m.sparse and m.X.dtype == np.float32
    np.testing.assert_array_equal(m.X, X.astype(np.float32))
    np.testing.assert_array_equal(m.y, y.astype(np.float32))
    _assert_fast_equals_exact(raw)


def _tensors():  # noqa: ANN202
    def build(dtype: str, vals: list, keys: list, shape: list) -> Tensor:
        return Tensor(dtype, np.array(vals, dtype={"float32": np.float32, "float64": np.float64,
                                                    "int32": np.int32}[dtype]), keys, shape)

    u64 = st.lists(st.integers(0, 2**64 - 1), max_size=4)
    return st.one_of(
        st.builds(build, st.just("float32"), st.lists(st.floats(width=32), max_size=5), u64, u64),
        st.builds(build, st.just("float64"), st.lists(st.floats(), max_size=5), u64, u64),
        st.builds(build, st.just("int32"), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5), u64, u64),
    )


_values = st.one_of(_tensors(), st.none(),
                    st.builds(BytesValue, st.lists(st.binary(max_size=6), max_size=3), st.none() | st.text(max_size=4)))
_records = st.builds(
    Record,
    st.dictionaries(st.text(max_size=6), _values, max_size=3),
    st.dictionaries(st.text(max_size=6), _values, max_size=2),
    st.none() | st.text(max_size=8),
    st.none() | st.text(max_size=8),
    st.none() | st.text(max_size=8),
)


@pytest.mark.slow
@given(st.lists(_records, max_size=6), st.booleans())
@FAST
def test_record_round_trip(records, split):
    raw = _bytes(rio.write_records, records, split)
    back = list(rio.iter_records(raw))
    assert back == records
    assert [bytes(p) for p in rio.iter_payloads(raw)] == [rio.encode_record(r) for r in records]
    assert rio.describe(raw)["records"] == len(records)


def _assert_fast_equals_exact(raw: bytes, sdk_layout: bool = True) -> None:
    """The vectorised decoder and the exact decoder must produce the same columns.

    ``sdk_layout``: the bytes come from write_sparse/write_dense, so the fast path must
    take every record (otherwise it would be "agreeing" by always deferring).
    """
    for fr in rio._iter_frames(raw):
        if sdk_layout:
            assert rio._fast_columns(fr)[1].all()
        exact = rio._exact_columns(fr, "t")
        merged = rio._fast_then_exact(fr, "t")
        for name in ("offsets", "feat_code", "nval", "values", "nkey", "keys", "nshape", "shape", "label_code",
                     "nlab", "labels"):
            assert np.array_equal(getattr(merged, name), getattr(exact, name), equal_nan=True), name


def test_fast_and_exact_agree_on_mixed_layouts():
    """Records the fast path rejects (extra keys, uid, int32) are merged back in record order."""
    recs = [
        Record({"values": Tensor("float32", [1, 2], [0, 3], [5])}, {"values": Tensor("float32", [1])}),
        Record({"values": Tensor("float32", [4], [1], [5])}, {"values": Tensor("float32", [0])}, uid="u"),
        Record({"values": Tensor("int32", [7, -1], [2, 4], [5])}, {"values": Tensor("int32", [1])}),
        Record({"values": Tensor("float64", [9], [4], [5])}, {"values": Tensor("float64", [1])}),
        Record({"values": Tensor("float32", [], [], [5]), "extra": None}, {"values": Tensor("float32", [1])}),
    ]
    raw = _bytes(rio.write_records, recs)
    _assert_fast_equals_exact(raw, sdk_layout=False)
    assert rio._fast_columns(next(rio._iter_frames(raw)))[1].tolist() == [True, False, False, True, False]
    m = rio.read_matrix(raw)
    assert m.X.toarray().tolist() == [[1, 0, 0, 2, 0], [0, 4, 0, 0, 0], [0, 0, 7, 0, -1], [0, 0, 0, 0, 9],
                                      [0, 0, 0, 0, 0]]
    assert m.y.tolist() == [1, 0, 1, 1, 1]
    assert rio.describe(raw)["other_keys"] == ["extra"]


def test_multipart_records_are_reassembled():
    magic_f32 = np.frombuffer(rio.MAGIC.to_bytes(4, "little"), np.float32)[0]
    # The magic appears at every 4-byte position of the values run, so some land aligned.
    rec = Record({"values": Tensor("float32", [magic_f32] * 5 + [1.0])}, {"values": Tensor("float32", [magic_f32])})
    raw = _bytes(rio.write_records, [rec, rec], True)
    flags = _cflags(raw)
    assert 1 in flags and 2 in flags and 3 in flags
    assert list(rio.iter_records(raw)) == [rec, rec]
    m = rio.read_matrix(raw)
    assert m.X.shape == (2, 6) and m.X[0, 0] == magic_f32 and m.y.tolist() == [magic_f32] * 2
    assert rio.describe(raw)["multipart_records"] == 2
    # plain framing of the same record is cflag 0 only, like the SDK
    assert set(_cflags(_bytes(rio.write_records, [rec]))) == {0}


def _cflags(raw: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(raw):
        _, word = struct.unpack_from("<II", raw, pos)
        out.append(word >> 29)
        pos += 8 + (((word & (2**29 - 1)) + 3) & ~3)
    return out


@pytest.mark.slow
@given(st.lists(_records, min_size=1, max_size=5), st.data())
@FAST
def test_vectorised_framing_matches_the_loop(records, data):
    """For every block cut, the numpy framer either declines or agrees with the exact loop."""
    raw = _bytes(rio.write_records, records, data.draw(st.booleans()))
    cut = data.draw(st.integers(0, len(raw)))
    block = raw[:cut]
    quick = rio._frame_block_vectorised(block, 100)
    loop = rio._frame_block(block, 100, "t", 0, vectorised=False)
    if quick is not None:
        assert [list(map(int, x)) for x in quick[:3]] == [list(x) for x in loop[:3]]
        assert quick[3:] == loop[3:]
    if cut == len(raw) and not any(w >> 29 for w in _header_words(raw)):
        assert quick is not None or rio.MAGIC.to_bytes(4, "little") in raw[8:]


def _header_words(raw: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(raw):
        _, word = struct.unpack_from("<II", raw, pos)
        out.append(word)
        pos += 8 + (((word & (2**29 - 1)) + 3) & ~3)
    return out


def test_magic_inside_a_payload_falls_back_to_the_loop():
    magic_f32 = np.frombuffer(rio.MAGIC.to_bytes(4, "little"), np.float32)[0]
    X = np.full((3, 4), magic_f32, np.float32)
    raw = _bytes(rio.write_dense, X)
    assert rio._frame_block_vectorised(raw, 0) is None
    np.testing.assert_array_equal(rio.read_matrix(raw).X, X)


def test_block_boundaries_and_batches(monkeypatch):
    X = _sparse(500, 3000, 0.004, seed=7)
    y = np.arange(500, dtype=np.float32)
    raw = _bytes(rio.write_sparse, X, y)
    monkeypatch.setattr(rio, "BLOCK_BYTES", 97)  # records straddle every block boundary
    m = rio.read_matrix(raw)
    assert (m.X != X).nnz == 0 and np.array_equal(m.y, y)
    batches = list(rio.iter_batches(io.BytesIO(raw), 64))
    assert [b.X.shape[0] for b in batches] == [64] * 7 + [52]
    assert (sp.vstack([b.X for b in batches]) != X).nnz == 0
    assert np.array_equal(np.concatenate([b.y for b in batches]), y)
    with pytest.raises(RecordIOError, match="batch_size"):
        next(rio.iter_batches(raw, 0))


def test_record_larger_than_a_block(monkeypatch):
    X = np.arange(3 * 5000, dtype=np.float32).reshape(3, 5000)
    raw = _bytes(rio.write_dense, X)
    monkeypatch.setattr(rio, "BLOCK_BYTES", 1000)
    np.testing.assert_array_equal(rio.read_matrix(raw).X, X)


def test_read_matrix_feature_dim_and_paths(tmp_path):
    X = sp.csr_matrix(np.array([[0, 1.5, 0], [2, 0, 0]], np.float32))
    path = tmp_path / "d.protobuf"
    assert rio.write_sparse(path, X) == 2
    assert rio.read_matrix(path, feature_dim=3).X.shape == (2, 3)
    assert rio.read_matrix(str(path)).y is None
    with pytest.raises(RecordIOError, match=r"feature_dim=4"):
        rio.read_matrix(path, feature_dim=4)
    # records without a shape take feature_dim, else max key + 1
    noshape = _bytes(rio.write_records, [Record({"values": Tensor("float32", [1], [3])})])
    assert rio.read_matrix(noshape, feature_dim=10).X.shape == (1, 10)
    assert rio.read_matrix(noshape).X.shape == (1, 4)
    with pytest.raises(RecordIOError, match="is a directory"):
        rio.read_matrix(tmp_path)
    with pytest.raises(LocalFMError, match="not found"):
        rio.read_matrix(tmp_path / "missing.protobuf")
    with pytest.raises(RecordIOError, match="feature_dim=-1"):
        rio.read_matrix(path, feature_dim=-1)


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "train.protobuf"
    rio.write_dense(path, np.ones((2, 2), np.float32))
    before = path.read_bytes()
    with pytest.raises(RecordIOError, match="labels"):
        rio.write_dense(path, np.ones((3, 2), np.float32), np.ones(2, np.float32))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["train.protobuf"]


# ----------------------------------------------------------------------------- strict errors

@pytest.fixture(scope="module")
def small() -> bytes:
    return _bytes(rio.write_sparse, _sparse(6, 50, 0.1, seed=1), np.ones(6, np.float32))


def _err(data: bytes, fn=rio.read_matrix) -> str:  # noqa: ANN001
    with pytest.raises(RecordIOError) as info:
        result = fn(data)
        if not isinstance(result, rio.RecordIOMatrix) and not isinstance(result, dict):
            list(result)
    assert isinstance(info.value, LocalFMError)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("fn", [rio.read_matrix, rio.iter_records, rio.describe])
def test_truncated_files_name_the_offset(small, fn):
    first_len = struct.unpack_from("<I", small, 4)[0]
    first_end = 8 + ((first_len + 3) & ~3)
    for cut in (3, 8, 9, first_end + 5, len(small) - 1):
        msg = _err(small[:cut], fn)
        assert "truncated" in msg and "<bytes>" in msg and "byte" in msg


def test_wrong_magic_and_trailing_garbage(small):
    assert "bad magic 0x00000000" in _err(b"\0" * 16)
    assert "record 0, byte 0" in _err(b"\x0a\x23\xd7\xcf" + small[4:])
    msg = _err(small + b"\x01\x02\x03\x04\x05\x06\x07\x08\x09")
    assert f"byte {len(small)}" in msg and "bad magic" in msg
    assert "trailing" in _err(small + b"\0\0\0")


def test_nonzero_padding_rejected():
    raw = bytearray(_bytes(rio.write_dense, np.ones((2, 1), np.int64)))  # payload 17 bytes -> 3 pad bytes
    length = struct.unpack_from("<I", raw, 4)[0]
    assert length % 4
    raw[8 + length] = 7
    assert "non-zero padding" in _err(bytes(raw))
    assert "non-zero padding" in _err(bytes(raw), rio.iter_records)


def test_bad_multipart_sequences():
    hdr = lambda cflag, n: struct.pack("<II", rio.MAGIC, (cflag << 29) | n)  # noqa: E731
    assert "without a first part" in _err(hdr(3, 0))
    assert "without a first part" in _err(hdr(2, 4) + b"abcd")
    assert "inside a multi-part" in _err(hdr(1, 0) + hdr(0, 0))
    assert "ends inside a multi-part" in _err(hdr(1, 4) + b"\x0a\x00\x00\x00")


def test_corrupt_length_word_fails_fast_without_huge_read():
    raw = struct.pack("<II", rio.MAGIC, 2**29 - 1) + b"\0" * 64
    msg = _err(raw)
    assert "truncated record: length 536870911" in msg and "64 bytes left" in msg


def test_bad_protobuf_inside_a_record():
    bad = [b"\x0a\x7f", b"\x0a\x05\x0a\x06values", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b",
           b"\x1a\x02\xc3\x28", b"\x00\x01"]
    for payload in bad:
        raw = rio.frame_payload(payload)
        msg = _err(raw, rio.iter_records)
        assert "bad Record protobuf" in msg and "record 0, byte" in msg
    packed = rio.frame_payload(b"\x0a\x10\x0a\x06values\x12\x06\x12\x04\x0a\x02\x00\x00")
    assert "not a multiple of 4" in _err(packed)


def test_layout_errors():
    dense = Record({"values": Tensor("float32", [1, 2])})
    sparse_ = Record({"values": Tensor("float32", [1], [0], [2])})
    assert "record 1" in _err(_bytes(rio.write_records, [sparse_, dense, sparse_])) and "dense" in _err(
        _bytes(rio.write_records, [sparse_, dense, sparse_]))
    assert "no features['values']" in _err(_bytes(rio.write_records, [dense, Record({"x": None})]))
    assert "no label" in _err(_bytes(rio.write_records, [
        Record(dense.features, {"values": Tensor("float32", [1])}), dense]))
    assert "2 values, expected 1" in _err(_bytes(rio.write_records, [
        Record(dense.features, {"values": Tensor("float32", [1, 2])})]))
    assert "expected 2 like the first" in _err(_bytes(rio.write_records, [dense, Record(
        {"values": Tensor("float32", [1])})]))
    assert "out of range" in _err(_bytes(rio.write_records, [Record({"values": Tensor("float32", [1], [9], [3])})]))
    assert "differs" in _err(_bytes(rio.write_records, [sparse_, Record({"values": Tensor("float32", [1], [0], [3])})]))
    assert "1 values but 2 keys" in _err(_bytes(rio.write_records, [Record({"values": Tensor("float32", [1], [0, 1],
                                                                                              [2])})]))
    huge = Record({"values": Tensor("float32", [1], [3], [2**64 - 1])})
    assert "larger than 2^63-1" in _err(_bytes(rio.write_records, [huge]))
    assert "larger than 2^63-1" in _err(_bytes(rio.write_records, [Record({"values": Tensor("float32", [1],
                                                                                             [2**64 - 1])})]))
    assert "expected a tensor" in _err(_bytes(rio.write_records, [Record({"values": BytesValue([b"x"])})]))
    assert "no records" in _err(b"")
    assert rio.describe(b"")["layout"] == "empty"
    assert rio.describe(_bytes(rio.write_records, [sparse_, dense]))["layout"] == "mixed"


def test_writer_input_errors():
    with pytest.raises(RecordIOError, match="int16"):
        rio.write_dense(io.BytesIO(), np.ones((2, 2), np.int16))
    with pytest.raises(RecordIOError, match="2-D"):
        rio.write_dense(io.BytesIO(), np.ones(3, np.float32))
    with pytest.raises(RecordIOError, match="scipy sparse"):
        rio.write_sparse(io.BytesIO(), np.ones((2, 2), np.float32))
    with pytest.raises(RecordIOError, match="int32 range"):
        rio.write_dense(io.BytesIO(), np.array([[2**40]], np.int64))
    with pytest.raises(RecordIOError, match="one label per row"):
        rio.write_sparse(io.BytesIO(), sp.csr_matrix(np.ones((2, 2), np.float32)), np.ones(3, np.float32))
    with pytest.raises(RecordIOError, match="vector"):
        rio.write_dense(io.BytesIO(), np.ones((2, 2), np.float32), np.ones((2, 1), np.float32))


# ----------------------------------------------------------------------------- varints

@given(st.lists(st.integers(0, 2**64 - 1), max_size=50))
@FAST
def test_varint_stream_codec(values):
    enc, sizes = encode_varints(np.array(values, dtype=np.uint64))
    assert enc.tobytes() == b"".join(varint_bytes(v) for v in values)
    dec = decode_varint_stream(enc)
    assert dec is not None and dec[0].tolist() == values
    pos, out = 0, []
    while pos < enc.size:
        v, pos = read_varint(enc.tobytes(), pos, enc.size)
        out.append(v)
    assert out == values


def test_varint_stream_rejects_malformed():
    assert decode_varint_stream(np.array([0x80], np.uint8)) is None
    assert decode_varint_stream(np.array([0xFF] * 10 + [0x01], np.uint8)) is None
    assert decode_varint_stream(np.array([0xFF] * 9 + [0x02], np.uint8)) is None


@pytest.mark.slow
def test_s3_write_and_read(new_s3_bucket):
    new_s3_bucket("data")
    X = _sparse(20, 40, 0.1, seed=2)
    y = np.ones(20, np.float32)
    rio.write_sparse("s3://data/train/part0.protobuf", X, y)
    m = rio.read_matrix("s3://data/train/part0.protobuf")
    assert (m.X != X).nnz == 0 and np.array_equal(m.y, y)
    assert rio.describe("s3://data/train/part0.protobuf")["records"] == 20
    with pytest.raises(LocalFMError, match="not found"):
        rio.read_matrix("s3://data/train/missing.protobuf")


class _Pipe(io.RawIOBase):
    """A non-seekable stream that returns at most 7 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = 7 if n is None or n < 0 else min(n, 7)
        out = bytes(self._data[self._pos:self._pos + n])
        self._pos += len(out)
        return out


def test_non_seekable_stream(monkeypatch):
    X = _sparse(40, 500, 0.02, seed=9)
    raw = _bytes(rio.write_sparse, X, np.zeros(40, np.float32))
    monkeypatch.setattr(rio, "BLOCK_BYTES", 64)
    m = rio.read_matrix(_Pipe(raw))
    assert (m.X != X).nnz == 0
    assert len(list(rio.iter_records(_Pipe(raw)))) == 40
    assert "truncated" in _err(_Pipe(raw[:-3]))


def _shapeless_sparse(keys: list[int]) -> bytes:
    recs = [Record(features={"values": Tensor("float32", np.array([1.0], np.float32), np.array([k], np.uint64),
                                              np.zeros(0, np.uint64))}) for k in keys]
    return _bytes(rio.write_records, recs)


def test_iter_batches_have_one_column_count():
    # Shape-less sparse records: each batch used to take its own max key + 1 as width,
    # so batches of one file came out (20, 5) then (20, 8) with no error.
    raw = _shapeless_sparse([i % 5 for i in range(20)] + [7] * 20)
    assert rio.read_matrix(raw).X.shape == (40, 8)
    with pytest.raises(RecordIOError, match="key 7 out of range for feature dimension 5"):
        list(rio.iter_batches(raw, 20))
    assert [b.X.shape for b in rio.iter_batches(raw, 20, feature_dim=8)] == [(20, 8), (20, 8)]
    # Dense rows of different lengths in different batches: read_matrix refuses them, so must batches.
    dense = _bytes(rio.write_records, [Record(features={"values": Tensor("float32", np.ones(n, np.float32))})
                                       for n in [3] * 4 + [2] * 4])
    with pytest.raises(RecordIOError, match="dense rows have 2 values but feature_dim=3"):
        list(rio.iter_batches(dense, 4))


def test_iter_batches_rejects_negative_feature_dim():
    # read_matrix checked feature_dim, iter_batches did not: OverflowError from the uint64 compare.
    with pytest.raises(RecordIOError, match="feature_dim=-1"):
        next(rio.iter_batches(_shapeless_sparse([0, 1, 2]), 2, feature_dim=-1))


def test_joining_read_blocks_releases_them_as_it_goes(tmp_path, monkeypatch):
    """read_matrix joins its per-block columns field by field and frees each block's field once
    joined, so a file's columns are not held twice (the 25M-row train stage peaked at 4.4 GB)."""
    rng = np.random.default_rng(0)
    X = sp.random(3000, 50, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    y = rng.random(3000).astype(np.float32)
    path = tmp_path / "x.protobuf"
    rio.write_sparse(path, X, y)
    whole = rio.read_matrix(path)
    monkeypatch.setattr(rio, "BLOCK_BYTES", 4096)  # many blocks
    seen: list = []
    original = rio._concat_columns

    def spy(parts):
        seen.extend(parts)
        return original(parts)

    monkeypatch.setattr(rio, "_concat_columns", spy)
    got = rio.read_matrix(path)
    assert len(seen) > 10
    assert all(getattr(p, f).size == 0 for p in seen for f in rio._COLUMN_FIELDS)  # released
    assert (got.X != whole.X).nnz == 0 and np.array_equal(got.y, whole.y)
