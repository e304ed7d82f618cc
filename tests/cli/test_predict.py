import json

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.fm.model import sigmoid
from localfm.io.artifacts import FMWeights, save_fm
from localfm.io.recordio import write_sparse

D, K = 6, 3


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    weights = FMWeights(w0=0.2, w=rng.normal(0, 0.5, D), V=rng.normal(0, 0.5, (D, K)), predictor_type="binary_classifier")
    path = tmp_path / "model.tar.gz"
    save_fm(str(path), weights)
    return path, weights


def _rows():
    X = sp.csr_matrix(np.array([[1, 0, 0, 1, 0, 0], [0, 2.5, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], np.float32))
    return X


def _expected(weights, X):
    Xd = X.toarray().astype(np.float64)
    V = weights.V.astype(np.float64)
    raw = weights.w0 + Xd @ weights.w + 0.5 * (((Xd @ V) ** 2).sum(1) - ((Xd**2) @ V**2).sum(1))
    return raw


def test_recordio_to_json(tmp_path, cli, model):
    path, weights = model
    X = _rows()
    write_sparse(str(tmp_path / "in.rec"), X)
    code, out, err = cli("predict", "--model", path, "--input", tmp_path / "in.rec")
    assert code == 0, err
    preds = json.loads(out)["predictions"]
    expected = sigmoid(_expected(weights, X))
    assert [p["score"] for p in preds] == pytest.approx(expected.tolist(), rel=1e-5)
    assert [p["predicted_label"] for p in preds] == [1.0 if s >= 0.5 else 0.0 for s in expected]
    assert set(preds[0]) == {"score", "predicted_label"}


def test_jsonlines_and_batch_transform_naming(tmp_path, cli, model):
    path, _ = model
    write_sparse(str(tmp_path / "part-0001.rec"), _rows())
    out_dir = tmp_path / "transform"
    code, out, err = cli("predict", "--model", path, "--input", tmp_path / "part-0001.rec",
                         "--accept", "application/jsonlines", "--output", out_dir)
    assert code == 0, err
    assert out == ""  # with --output nothing goes to stdout
    lines = (out_dir / "part-0001.rec.out").read_text().splitlines()
    assert len(lines) == 3 and all(set(json.loads(line)) == {"score", "predicted_label"} for line in lines)


def test_json_instances_sparse_and_dense(tmp_path, cli, model):
    path, weights = model
    doc = {"instances": [
        {"data": {"features": {"keys": [3, 0], "shape": [D], "values": [1.0, 1.0]}}},
        {"features": [0, 2.5, 0, 0, 0, 1]},
    ]}
    (tmp_path / "req.json").write_text(json.dumps(doc))
    code, out, err = cli("predict", "--model", path, "--input", tmp_path / "req.json")
    assert code == 0, err
    got = [p["score"] for p in json.loads(out)["predictions"]]
    assert got == pytest.approx(sigmoid(_expected(weights, _rows()[:2])).tolist(), rel=1e-5)


def test_regressor_response_has_score_only(tmp_path, cli):
    rng = np.random.default_rng(1)
    save_fm(str(tmp_path / "reg.tar.gz"),
            FMWeights(w0=3.0, w=rng.normal(size=D), V=rng.normal(size=(D, K)), predictor_type="regressor"))
    write_sparse(str(tmp_path / "in.rec"), _rows())
    code, out, _ = cli("predict", "--model", tmp_path / "reg.tar.gz", "--input", tmp_path / "in.rec",
                       "--accept", "application/jsonlines")
    assert code == 0
    objs = [json.loads(line) for line in out.splitlines()]
    assert all(set(o) == {"score"} for o in objs)
    assert objs[2]["score"] == pytest.approx(3.0)  # empty row -> w0


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"rows": []}, '"instances"'),
        ({"instances": [{"features": [1, 2]}]}, "instance 0: 2 dense features, model feature_dim is 6"),
        ({"instances": [{"data": {"features": {"keys": [9], "shape": [D], "values": [1]}}}]}, "key 9 outside"),
        ({"instances": [{"data": {"features": {"keys": [1], "shape": [7], "values": [1]}}}]}, "shape [7]"),
        ({"instances": [{"data": {"features": {"keys": [1, 2], "shape": [D], "values": [1]}}}]}, "2 keys but 1 values"),
        ({"instances": [{"features": [1, "x", 0, 0, 0, 0]}]}, "finite numbers"),
    ],
)
def test_bad_json_exit_2(tmp_path, cli, model, doc, needle):
    path, _ = model
    (tmp_path / "req.json").write_text(json.dumps(doc))
    out_dir = tmp_path / "o"
    code, _, err = cli("predict", "--model", path, "--input", tmp_path / "req.json", "-o", out_dir)
    assert code == 2 and needle in err
    assert not out_dir.exists()


def test_feature_dim_mismatch_exit_2(tmp_path, cli, model):
    path, _ = model
    write_sparse(str(tmp_path / "in.rec"), sp.csr_matrix(np.ones((2, D + 1), np.float32)))
    code, _, err = cli("predict", "--model", path, "--input", tmp_path / "in.rec")
    assert code == 2 and "feature_dim 6" in err


def test_predictor_type_flag(tmp_path, cli):
    save_fm(str(tmp_path / "m.tar.gz"), FMWeights(w0=0.0, w=np.zeros(D), V=np.zeros((D, K)), predictor_type=None))
    write_sparse(str(tmp_path / "in.rec"), _rows())
    code, out, err = cli("predict", "--model", tmp_path / "m.tar.gz", "--input", tmp_path / "in.rec",
                         "--predictor-type", "regressor")
    assert code == 0, err
    assert json.loads(out)["predictions"][0] == {"score": 0.0}


def test_output_files_land_together_or_not_at_all(tmp_path, cli, model, monkeypatch):
    # Each .out used to be renamed into place on its own, so a failure writing the
    # second left the first behind next to the previous run's outputs.
    path, _ = model
    inp = tmp_path / "in"
    inp.mkdir()
    write_sparse(str(inp / "a.rec"), _rows())
    write_sparse(str(inp / "b.rec"), _rows())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "b.rec.out").write_text("previous\n")
    import builtins

    real_open = builtins.open

    def failing_open(file, mode="r", *a, **kw):
        if "w" in mode and ".b.rec.out." in str(file):
            raise OSError(28, "No space left on device")
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(OSError):
        cli("predict", "--model", path, "--input", inp, "--output", out_dir)
    monkeypatch.undo()
    assert sorted(p.name for p in out_dir.iterdir()) == ["b.rec.out"]
    assert (out_dir / "b.rec.out").read_text() == "previous\n"


def test_output_path_that_is_a_file_exits_2(tmp_path, cli, model):
    path, _ = model
    write_sparse(str(tmp_path / "in.rec"), _rows())
    (tmp_path / "taken").write_text("x")
    code, _, err = cli("predict", "--model", path, "--input", tmp_path / "in.rec", "--output", tmp_path / "taken")
    assert code == 2 and "not a folder" in err


def test_rerun_into_the_input_folder_skips_previous_out_files(tmp_path, cli, model):
    # The second run used to read a.rec.out as a RecordIO input and fail (bad magic).
    path, _ = model
    inp = tmp_path / "in"
    inp.mkdir()
    write_sparse(str(inp / "a.rec"), _rows())
    for _ in range(2):
        code, _, err = cli("predict", "--model", path, "--input", inp, "--output", inp)
        assert code == 0, err
    assert sorted(p.name for p in inp.iterdir()) == ["a.rec", "a.rec.out"]


def test_max_artifact_bytes_caps_what_the_model_archive_may_hold(tmp_path, cli, model):
    path, _ = model
    write_sparse(str(tmp_path / "in.rec"), _rows())
    code, out, err = cli("predict", "--model", path, "--input", tmp_path / "in.rec", "--max-artifact-bytes", "200")
    assert code == 2 and "over the 200-byte limit" in err and err.count("\n") == 1 and out == ""
    code, out, err = cli("predict", "--model", path, "--input", tmp_path / "in.rec",
                         "--max-artifact-bytes", str(1 << 20))
    assert code == 0, err


def test_json_request_sniffed_without_the_extension(tmp_path, cli, model):
    # One content-type rule for FM and k-NN: a {"instances": ...} file is JSON whatever its name.
    path, weights = model
    (tmp_path / "req").write_text(json.dumps({"instances": [{"features": [1, 0, 0, 1, 0, 0]}]}))
    code, out, err = cli("predict", "--model", path, "--input", tmp_path / "req")
    assert code == 0, err
    X = _rows()[:1]
    assert json.loads(out)["predictions"][0]["score"] == pytest.approx(float(sigmoid(_expected(weights, X))[0]),
                                                                       rel=1e-5)
