"""SageMaker model artifacts: FM save/load in every layout, fixtures, hostile archives."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localfm.errors import LocalFMError
from localfm.io import artifacts as art
from localfm.io import ndarray as nd
from localfm.io.artifacts import FMWeights, load_fm, open_artifact, save_fm


def _weights(d=6, k=3, ptype="binary_classifier", seed=0) -> FMWeights:
    rng = np.random.default_rng(seed)
    return FMWeights(float(rng.normal()), rng.normal(size=d), rng.normal(size=(d, k)), ptype)


def _assert_same(a: FMWeights, b: FMWeights) -> None:
    assert a.w0 == pytest.approx(b.w0, abs=0, rel=1e-7)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(a.V, b.V)
    assert a.predictor_type == b.predictor_type


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


# --------------------------------------------------------------------------- FM round trip


@pytest.mark.parametrize("ptype", ["binary_classifier", "regressor"])
def test_save_fm_load_fm_roundtrip(tmp_path, ptype):
    w = _weights(ptype=ptype)
    out = save_fm(tmp_path / "model.tar.gz", w)
    _assert_same(load_fm(out), w)
    assert w.feature_dim == 6 and w.num_factors == 3


def test_save_fm_layout_is_sagemakers(tmp_path):
    w = _weights(d=5, k=2)
    path = save_fm(tmp_path / "model.tar.gz", w)
    with tarfile.open(path) as tf:
        assert tf.getnames() == ["model_algo-1"]
        inner = tf.extractfile("model_algo-1").read()
    with zipfile.ZipFile(io.BytesIO(inner)) as zf:
        assert sorted(zf.namelist()) == ["params", "symbol.json"]
        params = nd.load(zf.read("params"))
        symbol = json.loads(zf.read("symbol.json"))
    assert list(params) == ["arg:w0_weight", "arg:w1_weight", "arg:v"]
    assert [params[k].shape for k in params] == [(1,), (5, 1), (5, 2)]
    assert all(a.dtype == np.float32 for a in params.values())
    names = [symbol["nodes"][i]["name"] for i in symbol["arg_nodes"]]
    assert names == ["data", "w1_weight", "w0_weight", "v", "out_label"]
    assert symbol["nodes"][symbol["heads"][0][0]]["op"] == "LogisticRegressionOutput"


def test_save_fm_compresses_once(tmp_path):
    """The zip inside is stored and only the outer gzip deflates (level 6, header XFL 0 as
    in real SageMaker archives): float factors barely compress, so a second pass only costs time."""
    path = save_fm(tmp_path / "model.tar.gz", _weights(d=50, k=4))
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[8] == 0  # gzip, XFL 0 (neither level 9's 2 nor level 1's 4)
    with tarfile.open(path) as tf:
        inner = tf.extractfile("model_algo-1").read()
    with zipfile.ZipFile(io.BytesIO(inner)) as zf:
        assert {zi.compress_type for zi in zf.infolist()} == {zipfile.ZIP_STORED}


def test_none_predictor_type_is_written_as_regressor(tmp_path):
    w = _weights(ptype=None)
    assert load_fm(save_fm(tmp_path / "m.tar.gz", w)).predictor_type == "regressor"


def test_save_fm_into_directory_and_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    w = _weights()
    a = save_fm(tmp_path, w)
    assert a == tmp_path / "model.tar.gz"
    _assert_same(load_fm(tmp_path), w)  # a job output dir holding model.tar.gz
    first = a.read_bytes()
    save_fm(tmp_path / "again.tar.gz", w)
    assert (tmp_path / "again.tar.gz").read_bytes() == first


def test_load_fm_every_stage_of_unpacking(tmp_path):
    """model.tar.gz, file object, model_algo-1 zip, unzipped dir, renamed checkpoint pair."""
    w = _weights(d=7, k=4)
    tgz = save_fm(tmp_path / "model.tar.gz", w)
    with open(tgz, "rb") as fh:
        _assert_same(load_fm(fh), w)
    with tarfile.open(tgz) as tf:
        tf.extractall(tmp_path / "unpacked", filter="data")
    algo = tmp_path / "unpacked" / "model_algo-1"
    _assert_same(load_fm(algo), w)
    _assert_same(load_fm(tmp_path / "unpacked"), w)
    with zipfile.ZipFile(algo) as zf:
        zf.extractall(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "symbol.json").rename(tmp_path / "ckpt" / "model-symbol.json")
    (tmp_path / "ckpt" / "params").rename(tmp_path / "ckpt" / "model-0000.params")
    _assert_same(load_fm(tmp_path / "ckpt" / "model-symbol.json"), w)
    _assert_same(load_fm(tmp_path / "ckpt" / "model-0000.params"), w)
    _assert_same(load_fm(tmp_path / "ckpt"), w)


def test_raw_params_without_symbol_have_no_predictor_type(tmp_path):
    w = _weights()
    p = tmp_path / "model_algo-1"
    nd.save(p, {"w0_weight": np.array([w.w0], np.float32), "w1_weight": w.w.reshape(-1, 1), "v": w.V})
    got = load_fm(p)
    assert got.predictor_type is None
    np.testing.assert_array_equal(got.V, w.V)


def test_meta_json_predictor_type(tmp_path):
    w = _weights()
    params = nd.dumps({"arg:w1_weight": w.w.reshape(-1, 1), "arg:v": w.V,
                       "arg:w0_weight": np.array([w.w0], np.float32)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("params", params)
        zf.writestr("meta.json", json.dumps({"predictor_type": "regressor"}))
    (tmp_path / "model_algo-1").write_bytes(buf.getvalue())
    assert load_fm(tmp_path / "model_algo-1").predictor_type == "regressor"


def test_dense_input_names_with_transposed_v():
    rng = np.random.default_rng(3)
    d, k = 5, 3
    V = rng.normal(size=(d, k)).astype(np.float32)
    w = rng.normal(size=d).astype(np.float32)
    got = art.fm_from_params({"arg:Linear_Plus_Bias_weight": w.reshape(1, d),
                              "arg:Linear_Plus_Bias_bias": np.array([0.25], np.float32),
                              "arg:v": V.T.copy()})
    np.testing.assert_array_equal(got.V, V)
    np.testing.assert_array_equal(got.w, w)
    assert got.w0 == 0.25


def test_missing_bias_and_linear_terms_read_as_zero():
    V = np.ones((4, 2), np.float32)
    got = art.fm_from_params({"v": V})
    assert got.w0 == 0.0 and not got.w.any() and got.feature_dim == 4


def test_sparse_stored_params_are_densified():
    V = np.arange(8, dtype=np.float32).reshape(4, 2)
    rs = nd.RowSparse(V[[1, 3]], [1, 3], (4, 2))
    got = art.fm_from_params({"v": rs, "w1_weight": np.zeros((4, 1), np.float32)})
    np.testing.assert_array_equal(got.V, rs.toarray())


@pytest.mark.parametrize("params, message", [
    ({"w0_weight": np.zeros(1), "w1_weight": np.zeros((5, 1))}, "no factor matrix 'v'"),
    ({"v": np.zeros((4, 2)), "w1_weight": np.zeros((5, 1))}, r"'w1_weight' has shape \(5, 1\), expected \(4, 1\)"),
    ({"v": np.zeros((4, 2)), "w0_weight": np.zeros(2)}, "'w0_weight' must hold one value"),
    ({"v": np.zeros((4, 2, 1))}, "'v' must be 2-D"),
    ({"v": np.zeros((4, 2)), "Linear_Plus_Bias_weight": np.zeros((1, 7))}, "does not match"),
    ({"s": np.zeros(3), "v": np.zeros((3, 3)), "mean": np.zeros((1, 3))}, "not a factorization-machine"),
])
def test_inconsistent_fm_params(params, message):
    with pytest.raises(LocalFMError, match=message):
        art.fm_from_params(params)


def test_predict_matches_pairwise_definition():
    w = _weights(d=5, k=3, ptype="regressor", seed=4)
    X = np.random.default_rng(5).normal(size=(4, 5))
    brute = [w.w0 + x @ w.w + sum(float(w.V[i] @ w.V[j]) * x[i] * x[j]
                                  for i, j in combinations(range(5), 2)) for x in X]
    np.testing.assert_allclose(w.predict(X), brute, rtol=1e-6)
    import scipy.sparse as sp

    np.testing.assert_allclose(w.raw_scores(sp.csr_matrix(X)), brute, rtol=1e-6)
    wb = FMWeights(w.w0, w.w, w.V, "binary_classifier")
    np.testing.assert_allclose(wb.predict(X), 1 / (1 + np.exp(-np.array(brute))), rtol=1e-6)


def test_fmweights_validation():
    with pytest.raises(LocalFMError, match="rows"):
        FMWeights(0.0, np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(LocalFMError, match="predictor_type"):
        FMWeights(0.0, np.zeros(3), np.zeros((3, 2)), "classifier")
    with pytest.raises(LocalFMError, match="w0 must be one value"):
        FMWeights(np.zeros(2), np.zeros(3), np.zeros((3, 2)))
    assert FMWeights(np.array([1.5]), np.zeros(3), np.zeros((3, 2))).w0 == 1.5


def test_predictor_type_from_symbol():
    assert art.predictor_type_from_symbol(art.fm_symbol_json(3, 2, "regressor")) == "regressor"
    assert art.predictor_type_from_symbol(art.fm_symbol_json(3, 2)) == "binary_classifier"
    assert art.predictor_type_from_symbol("not json") is None
    assert art.predictor_type_from_symbol(json.dumps({"nodes": [{"op": "FullyConnected"}],
                                                      "heads": [[0, 0, 0]]})) is None


# --------------------------------------------------------------------------- fixtures


def test_pca_and_kmeans_fixtures(sagemaker_fixtures):
    pca = open_artifact(sagemaker_fixtures / "pca-model.tar.gz")
    assert pca.layout == "model.tar.gz"
    (algo,) = pca.members
    assert algo.name == "model_algo-1" and algo.kind == "ndarray-list"
    arrays = nd.load(algo.data)
    assert {k: v.shape for k, v in arrays.items()} == {"s": (19,), "v": (20, 19), "mean": (1, 20)}
    with pytest.raises(LocalFMError, match="not a factorization-machine model"):
        load_fm(sagemaker_fixtures / "pca-model.tar.gz")

    km = open_artifact(sagemaker_fixtures / "kmeans-model.tar.gz")
    assert [m.kind for m in km.members] == ["ndarray-list", "ndarray-list"]
    assert km.members[1].name.startswith("state_")
    assert nd.load(km.find("model_algo-1").data)[0].shape == (10, 2)
    assert list(nd.load(km.members[1].data)) == ["1", "0"]


# --------------------------------------------------------------------------- hostile archives


def _write(tmp_path, data: bytes, name="model.tar.gz"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_tar_with_parent_path_member(tmp_path):
    p = _write(tmp_path, _tar([_file("../evil", b"x")]))
    with pytest.raises(LocalFMError, match=r"'\.\./evil' escapes the archive"):
        open_artifact(p)
    assert not (tmp_path.parent / "evil").exists()


def test_tar_with_absolute_member(tmp_path):
    p = _write(tmp_path, _tar([_file("/etc/passwd", b"x")]))
    with pytest.raises(LocalFMError, match="absolute path"):
        load_fm(p)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_with_link_member(tmp_path, kind):
    ti = tarfile.TarInfo("model_algo-1")
    ti.type = kind
    ti.linkname = "/etc/passwd"
    p = _write(tmp_path, _tar([(ti, None)]))
    with pytest.raises(LocalFMError, match="is a link"):
        load_fm(p)


def test_tar_with_device_member(tmp_path):
    ti = tarfile.TarInfo("model_algo-1")
    ti.type = tarfile.FIFOTYPE
    with pytest.raises(LocalFMError, match="not a regular file"):
        load_fm(_write(tmp_path, _tar([(ti, None)])))


def test_tar_declaring_one_gigabyte(tmp_path):
    """A header claiming 1 GB with almost no data behind it stops at the first short read."""
    header = tarfile.TarInfo("model_algo-1")
    header.size = 1 << 30
    raw = header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096
    p = _write(tmp_path, gzip.compress(raw))
    with pytest.raises(LocalFMError, match="truncated|corrupt"):
        load_fm(p)


def test_decompression_bomb_hits_the_byte_budget(tmp_path):
    zeros = b"\0" * (4 << 20)  # 4 MB of zeros gzip to ~4 KB
    p = _write(tmp_path, _tar([_file("model_algo-1", zeros)]))
    assert p.stat().st_size < 64 << 10
    with pytest.raises(LocalFMError, match="over the 1048576-byte limit"):
        load_fm(p, max_bytes=1 << 20)


def test_zip_bomb_inside_model_algo(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("params", b"\0" * (4 << 20))
    p = _write(tmp_path, _tar([_file("model_algo-1", buf.getvalue())]))
    with pytest.raises(LocalFMError, match="limit"):
        open_artifact(p, max_bytes=1 << 20)


def test_zip_with_traversal_or_symlink(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../params", b"x")
    with pytest.raises(LocalFMError, match="escapes"):
        open_artifact(_write(tmp_path, buf.getvalue(), "model_algo-1"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zi = zipfile.ZipInfo("params")
        zi.external_attr = (0o120777) << 16
        zf.writestr(zi, b"/etc/passwd")
    with pytest.raises(LocalFMError, match="is a link"):
        open_artifact(_write(tmp_path, buf.getvalue(), "model_algo-1"))


def test_nested_zips_stop_at_a_fixed_depth(tmp_path):
    data = b"innermost"
    for i in range(50):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"level{i}", data)
        data = buf.getvalue()
    found = open_artifact(_write(tmp_path, data, "model_algo-1"))
    depth = max(m.name.count("/") for m in found.walk())
    assert depth == art.MAX_ZIP_DEPTH


def test_missing_model_algo_1(tmp_path):
    p = _write(tmp_path, _tar([_file("something_else", b"hello")]))
    with pytest.raises(LocalFMError, match="no model_algo-1 member .found: something_else"):
        load_fm(p)


def test_corrupt_gzip_and_not_an_artifact(tmp_path):
    good = save_fm(tmp_path / "good.tar.gz", _weights()).read_bytes()
    with pytest.raises(LocalFMError, match="corrupt or truncated"):
        load_fm(_write(tmp_path, good[: len(good) // 2]))
    with pytest.raises(LocalFMError, match="not a model artifact"):
        load_fm(_write(tmp_path, b"hello world", "x.bin"))
    with pytest.raises(LocalFMError, match="file not found"):
        load_fm(tmp_path / "nope.tar.gz")


def test_fm_params_with_inconsistent_shapes_in_artifact(tmp_path):
    params = nd.dumps({"arg:w0_weight": np.zeros(1, np.float32),
                       "arg:w1_weight": np.zeros((9, 1), np.float32),
                       "arg:v": np.zeros((8, 2), np.float32)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("symbol.json", art.fm_symbol_json(8, 2))
        zf.writestr("params", params)
    p = _write(tmp_path, _tar([_file("model_algo-1", buf.getvalue())]))
    with pytest.raises(LocalFMError, match=r"model_algo-1/params: 'w1_weight' has shape \(9, 1\)"):
        load_fm(p)


_GOOD_TGZ = art.fm_artifact_bytes(FMWeights(0.1, np.ones(5), np.ones((5, 2)), "regressor"), mtime=0)
_GOOD_TAR = gzip.decompress(_GOOD_TGZ)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_artifacts_fail_cleanly(data):
    """Byte flips/truncations of a model.tar.gz (or its tar) load or raise LocalFMError only.

    Pins a bug found by fuzzing: a corrupt tar size field made tarfile raise ValueError
    (negative seek), which escaped as an internal error instead of exit 2.
    """
    buf = bytearray(data.draw(st.sampled_from([_GOOD_TGZ, _GOOD_TAR])))
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    buf = buf[: data.draw(st.integers(0, len(buf)))]
    try:
        load_fm(io.BytesIO(bytes(buf)))
    except LocalFMError:
        pass


def test_negative_tar_size_field(tmp_path):
    ti = tarfile.TarInfo("model_algo-1")
    ti.size = 10
    header = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    header[124:136] = b"\xff" * 12  # base-256 size field = -1
    header[148:156] = b" " * 8
    header[148:154] = b"%06o" % (sum(header) & 0o777777)
    p = _write(tmp_path, gzip.compress(bytes(header) + b"\0" * 1024))
    with pytest.raises(LocalFMError):
        load_fm(p)


def test_failed_save_keeps_previous_file(tmp_path):
    target = save_fm(tmp_path / "model.tar.gz", _weights())
    before = target.read_bytes()
    with pytest.raises(LocalFMError):
        save_fm(target, {"w0": 0})  # type: ignore[arg-type]
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar.gz"]


# --------------------------------------------------------------------------- s3


@pytest.mark.slow
def test_s3_roundtrip_with_moto(new_s3_bucket):
    new_s3_bucket("models")
    w = _weights()
    save_fm("s3://models/job/output/model.tar.gz", w)
    _assert_same(load_fm("s3://models/job/output/model.tar.gz"), w)
    with pytest.raises(LocalFMError, match="object not found"):
        load_fm("s3://models/missing/model.tar.gz")


def test_checkpoint_prefix_with_glob_characters(tmp_path):
    # The symbol's prefix is matched literally: "m[1]*" must not pick up m1x-0009.params.
    w = FMWeights(0.5, np.ones(3), np.ones((3, 2)), "regressor")
    (tmp_path / "m[1]*-symbol.json").write_text(art.fm_symbol_json(3, 2, "regressor"))
    nd.save(tmp_path / "m[1]*-0003.params", {"arg:w0_weight": np.array([0.5], np.float32),
                                            "arg:w1_weight": np.ones((3, 1), np.float32),
                                            "arg:v": np.ones((3, 2), np.float32)})
    nd.save(tmp_path / "m1x-0009.params", {"arg:v": np.zeros((3, 2), np.float32)})
    _assert_same(load_fm(tmp_path / "m[1]*-symbol.json"), w)
