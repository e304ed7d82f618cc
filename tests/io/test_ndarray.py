"""MXNet NDArray-list codec: real MXNet bytes, SageMaker fixtures, round trips, bad input."""
from __future__ import annotations

import io
import struct
import tarfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from localfm.errors import LocalFMError
from localfm.io import ndarray as nd

# Bytes written by real MXNet 1.9.1 (mx.nd.save / mx.npx.save), captured once.
MX_CSR = bytes.fromhex(  # [csr_matrix(([1., 2.], [1, 0], [0, 1, 2]), shape=(2, 3))]
    "120100000000000000000000000000000100000000000000c9fa93f9020000000100000002000000000000"
    "00020000000200000000000000030000000000000001000000000000000000000006000000010000000300"
    "000000000000060000000100000002000000000000000000803f0000004000000000000000000100000000"
    "0000000200000000000000010000000000000000000000000000000000000000000000")
MX_ROW_SPARSE = bytes.fromhex(  # [row_sparse_array(([[1., 2.]], [1]), shape=(3, 2))]
    "120100000000000000000000000000000100000000000000c9fa93f9010000000200000001000000000000"
    "00020000000000000002000000030000000000000002000000000000000100000000000000000000000600"
    "00000100000001000000000000000000803f0000004001000000000000000000000000000000")
MX_BF16 = bytes.fromhex(  # [amp_cast([1.5, 2.25, -3, 1.00390625], bfloat16)]
    "120100000000000000000000000000000100000000000000c9fa93f90000000001000000040000000000"
    "000001000000000000000c000000c03f104040c0803f0000000000000000")
MX_V3 = bytes.fromhex(  # npx.save({'a': np.array(3.0), 'b': np.zeros((2, 0))})
    "120100000000000000000000000000000200000000000000cafa93f900000000000000000100000000000000"
    "0000000000004040cafa93f900000000020000000200000000000000000000000000000001000000000000"
    "00000000000200000000000000010000000000000061010000000000000062")


def _fixture_members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}


# --------------------------------------------------------------------------- real files


def test_pca_fixture_reads_and_rewrites_identically(sagemaker_fixtures):
    raw = _fixture_members(sagemaker_fixtures / "pca-model.tar.gz")["model_algo-1"]
    arrays = nd.load(raw)
    assert list(arrays) == ["s", "v", "mean"]
    assert arrays["s"].shape == (19,) and arrays["v"].shape == (20, 19)
    assert arrays["mean"].shape == (1, 20)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert np.all(np.diff(arrays["s"]) <= 0)  # PCA singular values come sorted descending
    assert nd.dumps(arrays) == raw


def test_kmeans_fixture_and_state_file(sagemaker_fixtures):
    members = _fixture_members(sagemaker_fixtures / "kmeans-model.tar.gz")
    centroids = nd.load(members["model_algo-1"])
    assert isinstance(centroids, list) and len(centroids) == 1
    assert centroids[0].shape == (10, 2) and centroids[0].dtype == np.float32
    assert nd.dumps(centroids) == members["model_algo-1"]
    (state_name,) = [n for n in members if n.startswith("state_")]
    state = nd.load(members[state_name])
    assert list(state) == ["1", "0"]
    assert nd.dumps(state) == members[state_name]


def test_real_mxnet_csr_bytes():
    (m,) = nd.load(MX_CSR)
    assert sp.issparse(m) and m.format == "csr" and m.shape == (2, 3)
    np.testing.assert_array_equal(m.toarray(), [[0, 1, 0], [2, 0, 0]])
    assert nd.dumps([m]) == MX_CSR


def test_real_mxnet_row_sparse_bytes():
    (r,) = nd.load(MX_ROW_SPARSE)
    assert isinstance(r, nd.RowSparse) and r.shape == (3, 2)
    np.testing.assert_array_equal(r.toarray(), [[0, 0], [1, 2], [0, 0]])
    assert nd.dumps([r]) == MX_ROW_SPARSE


def test_real_mxnet_bfloat16_reads_as_float32_and_rewrites():
    (a,) = nd.load(MX_BF16)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, [1.5, 2.25, -3.0, 1.0])  # 1.00390625 rounded to even
    assert nd.dumps([nd.BFloat16(a)]) == MX_BF16
    # Writing the unrounded value rounds like MXNet did.
    assert nd.dumps([nd.BFloat16(np.array([1.5, 2.25, -3, 1.00390625]))]) == MX_BF16


def test_real_mxnet_v3_scalar_and_zero_size():
    arrays = nd.load(MX_V3)
    assert arrays["a"].shape == () and float(arrays["a"]) == 3.0
    assert arrays["b"].shape == (2, 0)
    assert nd.dumps(arrays, version=3) == MX_V3
    info = nd.describe(MX_V3)
    assert [a["version"] for a in info["arrays"]] == ["V3", "V3"]


# --------------------------------------------------------------------------- old records


def _list(records: list[bytes], names: list[str] | None = None) -> bytes:
    out = struct.pack("<QQQ", nd.LIST_MAGIC, 0, len(records)) + b"".join(records)
    names = names or []
    out += struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n.encode())) + n.encode()
    return out


def test_v1_record():
    data = np.arange(6, dtype=np.float64).reshape(2, 3)
    rec = struct.pack("<Ii2q", nd.V1_MAGIC, 2, 2, 3) + struct.pack("<iii", 1, 0, 1) + data.tobytes()
    (a,) = nd.load(_list([rec]))
    np.testing.assert_array_equal(a, data)
    assert nd.describe(_list([rec]))["arrays"][0]["version"] == "V1"


def test_legacy_record_with_u32_dims():
    data = np.arange(4, dtype=np.int32)
    rec = struct.pack("<II", 1, 4) + struct.pack("<iii", 1, 0, 4) + data.tobytes()
    out = nd.load(_list([rec], ["x"]))
    np.testing.assert_array_equal(out["x"], data)
    assert nd.describe(_list([rec]))["arrays"][0]["version"] == "legacy"


def test_none_arrays_in_every_version():
    v2_none = struct.pack("<Iii", nd.V2_MAGIC, -1, 0)        # what MXNet writes for NDArray()
    v2_none_dense = struct.pack("<Iii", nd.V2_MAGIC, 0, 0)
    v3_none = struct.pack("<Iii", nd.V3_MAGIC, 0, -1)
    v1_none = struct.pack("<Ii", nd.V1_MAGIC, 0)
    legacy_none = struct.pack("<I", 0)
    out = nd.load(_list([v2_none, v2_none_dense, v3_none, v1_none, legacy_none]))
    assert out == [None] * 5
    with pytest.raises(LocalFMError, match="none array"):
        nd.dumps([None])


def test_sources_bytes_path_and_file(tmp_path):
    arrays = {"a": np.ones((2, 2), np.float32)}
    path = tmp_path / "x.params"
    nd.save(path, arrays)
    for src in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        np.testing.assert_array_equal(nd.load(src)["a"], arrays["a"])


def test_empty_list_is_32_bytes():
    assert len(nd.dumps([])) == 32
    assert nd.load(nd.dumps([])) == []


def test_big_endian_and_noncontiguous_inputs_are_normalised():
    a = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    (b,) = nd.load(nd.dumps([a]))
    np.testing.assert_array_equal(b, a)
    assert b.dtype == np.float64


# --------------------------------------------------------------------------- properties

DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.int32, np.int8, np.int64, np.bool_]


@st.composite
def dense_arrays(draw, min_dims=1):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=1, max_side=5))
    return draw(hnp.arrays(dtype, shape))


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, nd.RowSparse):
        return isinstance(b, nd.RowSparse) and np.array_equal(a.indices, b.indices) \
            and np.array_equal(a.data, b.data, equal_nan=a.data.dtype.kind == "f") and a.shape == b.shape
    if sp.issparse(a):
        return sp.issparse(b) and a.shape == b.shape and np.array_equal(
            a.toarray(), b.toarray(), equal_nan=True)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(dense_arrays(), max_size=4))
def test_roundtrip_unnamed_dense(arrays):
    data = nd.dumps(arrays)
    back = nd.load(data)
    assert isinstance(back, list) and len(back) == len(arrays)
    assert all(_same(a, b) for a, b in zip(arrays, back))
    assert nd.dumps(back) == data


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), dense_arrays(min_dims=0), max_size=4))
def test_roundtrip_named_v3_with_scalars(arrays):
    data = nd.dumps(arrays, version=3)
    back = nd.load(data)
    assert list(back) == list(arrays)
    assert all(_same(arrays[k], back[k]) for k in arrays)
    assert nd.dumps(back, version=3) == data


@st.composite
def sparse_arrays(draw):
    rows = draw(st.integers(1, 6))
    cols = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
    dense = draw(hnp.arrays(dtype, (rows, cols), elements=st.integers(-3, 3)))
    if draw(st.booleans()):
        return sp.csr_matrix(dense)
    keep = np.flatnonzero(np.any(dense != 0, axis=1))
    return nd.RowSparse(dense[keep], keep, dense.shape)


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(st.lists(sparse_arrays(), min_size=1, max_size=3))
def test_roundtrip_sparse(arrays):
    data = nd.dumps(arrays)
    back = nd.load(data)
    assert all(_same(a, b) for a, b in zip(arrays, back))
    assert nd.dumps(back) == data


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_files_fail_cleanly(data):
    """Any byte flip or truncation either loads or raises LocalFMError -- never anything else."""
    original = nd.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                         "c": sp.csr_matrix(np.eye(3, dtype=np.float32)),
                         "r": nd.RowSparse(np.ones((1, 2), np.float32), [1], (3, 2))})
    buf = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        nd.load(bytes(buf[:cut]))
    except LocalFMError:
        pass


# --------------------------------------------------------------------------- bad input


GOOD = nd.dumps({"a": np.ones((2, 3), np.float32), "b": np.zeros(4, np.int64)})


def test_every_truncation_is_an_error():
    for cut in range(len(GOOD)):
        with pytest.raises(LocalFMError):
            nd.load(GOOD[:cut])


def test_trailing_garbage():
    with pytest.raises(LocalFMError, match="trailing"):
        nd.load(GOOD + b"\0")


def test_wrong_magic():
    with pytest.raises(LocalFMError, match="not an MXNet NDArray file"):
        nd.load(b"\x13" + GOOD[1:])
    with pytest.raises(LocalFMError, match="not an MXNet NDArray file"):
        nd.load(b"PK\x03\x04")


def test_name_count_mismatch():
    body = nd.dumps([np.ones(2, np.float32), np.ones(2, np.float32)])
    bad = body[:-8] + struct.pack("<Q", 1) + struct.pack("<Q", 1) + b"a"
    with pytest.raises(LocalFMError, match="name count 1 does not match array count 2"):
        nd.load(bad)


def _dense_rec(dims, flag=0, data=b"", magic=nd.V2_MAGIC) -> bytes:
    return (struct.pack("<Iii", magic, 0, len(dims)) + struct.pack(f"<{len(dims)}q", *dims)
            + struct.pack("<iii", 1, 0, flag) + data)


def test_negative_dimension():
    with pytest.raises(LocalFMError, match="negative dimension"):
        nd.load(_list([_dense_rec((2, -3))]))


def test_huge_dimension_fails_fast_without_allocating():
    with pytest.raises(LocalFMError, match="too large"):
        nd.load(_list([_dense_rec((1 << 40, 1 << 20))]))
    with pytest.raises(LocalFMError, match="truncated"):
        nd.load(_list([_dense_rec((1 << 30, 1 << 10))]))


def test_huge_ndim_and_array_count():
    with pytest.raises(LocalFMError, match="ndim"):
        nd.load(_list([struct.pack("<Iii", nd.V2_MAGIC, 0, 1 << 30)]))
    with pytest.raises(LocalFMError, match="cannot fit"):
        nd.load(struct.pack("<QQQ", nd.LIST_MAGIC, 0, 1 << 60))


def test_unknown_dtype_flag_and_storage_type():
    with pytest.raises(LocalFMError, match="unknown dtype flag 13"):
        nd.load(_list([_dense_rec((1,), flag=13, data=b"\0" * 4)]))
    with pytest.raises(LocalFMError, match="unknown storage type 7"):
        nd.load(_list([struct.pack("<Ii", nd.V2_MAGIC, 7)]))
    with pytest.raises(LocalFMError, match="unknown device type"):
        nd.load(_list([struct.pack("<Iiiq", nd.V2_MAGIC, 0, 1, 1) + struct.pack("<iii", 9, 0, 0)
                       + b"\0" * 4]))


def test_bad_names():
    rec = _dense_rec((1,), data=b"\0" * 4)
    with pytest.raises(LocalFMError, match="duplicate array name 'x'"):
        nd.load(_list([rec, rec], ["x", "x"]))
    bad_utf8 = _list([rec])[:-8] + struct.pack("<QQ", 1, 1) + b"\xff"
    with pytest.raises(LocalFMError, match="not UTF-8"):
        nd.load(bad_utf8)


def test_inconsistent_csr_is_rejected():
    bad = bytearray(MX_CSR)
    # indptr [0, 1, 2] -> [0, 5, 2]: not a valid csr
    pos = MX_CSR.index(struct.pack("<qqq", 0, 1, 2))
    bad[pos + 8:pos + 16] = struct.pack("<q", 5)
    with pytest.raises(LocalFMError, match="indptr"):
        nd.load(bytes(bad))


def test_writer_refuses_what_mxnet_cannot_load(tmp_path):
    with pytest.raises(LocalFMError, match="0-d"):
        nd.dumps([np.float32(1.0)])
    with pytest.raises(LocalFMError, match="zero-size"):
        nd.dumps([np.zeros((0, 3), np.float32)])
    for dt in (np.uint16, np.int16, np.complex64, object):
        with pytest.raises(LocalFMError, match="cannot be saved"):
            nd.dumps([np.zeros(2, dtype=dt)])
    with pytest.raises(LocalFMError, match="dense arrays only"):
        nd.dumps([sp.eye(2, format="csr")], version=3)
    # A failed save leaves the previous file untouched.
    path = tmp_path / "keep.params"
    nd.save(path, [np.ones(1, np.float32)])
    before = path.read_bytes()
    with pytest.raises(LocalFMError):
        nd.save(path, [np.ones(1, np.float32), None])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.params"]


def test_int16_family_is_readable():
    """Flags 8-11 exist in MXNet's enum; read them even though 1.9.1 cannot write them."""
    (a,) = nd.load(_list([_dense_rec((2,), flag=9, data=struct.pack("<HH", 1, 65535))]))
    assert a.dtype == np.uint16 and a.tolist() == [1, 65535]


def test_zero_dim_with_huge_dims_is_a_clean_error():
    """Fuzz finding: (0, 2**40, 2**40) passed the byte-length check and numpy raised ValueError."""
    import struct

    from localfm.errors import LocalFMError
    from localfm.io import ndarray

    rec = (struct.pack("<Ii", 0xF993FAC9, 0) + struct.pack("<i", 3) + struct.pack("<qqq", 0, 2**40, 2**40)
           + struct.pack("<ii", 1, 0) + struct.pack("<i", 0))
    data = struct.pack("<QQQ", 0x112, 0, 1) + rec + struct.pack("<Q", 0)
    with pytest.raises(LocalFMError, match="too large"):
        ndarray.load(data)


def test_directory_path_is_bad_input(tmp_path):
    # open() on a directory raised IsADirectoryError (exit 1) from nd.load / uri.read_bytes.
    with pytest.raises(LocalFMError, match="is a directory, expected a file"):
        nd.load(tmp_path)
