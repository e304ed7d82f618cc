"""``localfm inspect``: text and JSON for every artifact layout, exit 2 on bad input."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.io import ndarray as nd
from localfm.io.artifacts import FMWeights, save_fm


@pytest.fixture
def fm_model(tmp_path):
    rng = np.random.default_rng(0)
    w = FMWeights(0.5, rng.normal(size=8), rng.normal(size=(8, 3)), "binary_classifier")
    return save_fm(tmp_path / "model.tar.gz", w)


def test_help(cli):
    with pytest.raises(SystemExit) as exc:
        cli("inspect", "--help")
    assert exc.value.code == 0


def test_fm_model_json(cli, fm_model):
    code, out, err = cli("inspect", fm_model, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "model.tar.gz"
    assert doc["fm"] == {"feature_dim": 8, "num_factors": 3, "predictor_type": "binary_classifier",
                         "w0": 0.5}
    (algo,) = doc["members"]
    assert algo["name"] == "model_algo-1" and algo["kind"] == "zip"
    kids = {m["name"]: m for m in algo["members"]}
    assert kids["model_algo-1/symbol.json"]["symbol"]["output_ops"] == ["LogisticRegressionOutput"]
    arrays = kids["model_algo-1/params"]["ndarray"]["arrays"]
    assert [(a["name"], a["shape"], a["dtype"], a["stype"]) for a in arrays] == [
        ("arg:w0_weight", [1], "float32", "default"),
        ("arg:w1_weight", [8, 1], "float32", "default"),
        ("arg:v", [8, 3], "float32", "default")]
    assert "values" not in arrays[0]


def test_fm_model_text(cli, fm_model):
    code, out, _ = cli("inspect", fm_model)
    assert code == 0
    assert "'arg:v'  (8, 3)  float32  default  V2" in out
    assert "FM: feature_dim=8 num_factors=3 predictor_type=binary_classifier" in out


def test_values_for_dense_and_sparse(cli, tmp_path):
    p = tmp_path / "x.params"
    nd.save(p, {"d": np.array([[1, 2]], np.int32), "c": sp.csr_matrix(np.eye(2, dtype=np.float32)),
                "r": nd.RowSparse(np.ones((1, 2), np.float32), [1], (3, 2))})
    code, out, _ = cli("inspect", p, "--json", "--values")
    assert code == 0
    doc = json.loads(out)
    assert doc["kind"] == "ndarray-list" and "fm" not in doc
    d, c, r = doc["members"][0]["ndarray"]["arrays"]
    assert d["values"] == [[1, 2]]
    assert c["stype"] == "csr" and c["nnz"] == 2 and c["values"]["indptr"] == [0, 1, 2]
    assert r["stype"] == "row_sparse" and r["stored_rows"] == 1 and r["values"]["indices"] == [1]


def test_sagemaker_fixtures(cli, sagemaker_fixtures):
    code, out, _ = cli("inspect", sagemaker_fixtures / "pca-model.tar.gz", "--json")
    assert code == 0
    doc = json.loads(out)
    arrays = doc["members"][0]["ndarray"]["arrays"]
    assert {a["name"]: a["shape"] for a in arrays} == {"s": [19], "v": [20, 19], "mean": [1, 20]}
    assert "fm" not in doc  # PCA also has a 'v', but it is not an FM
    code, out, _ = cli("inspect", sagemaker_fixtures / "kmeans-model.tar.gz")
    assert code == 0
    assert "[0]  (10, 2)  float32  default  V2" in out and "'1'  (100, 1)" in out


def test_recordio_file(cli, sagemaker_fixtures):
    code, out, err = cli("inspect", sagemaker_fixtures / "ufo-train.recordio-protobuf", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "recordio-protobuf"
    assert doc["members"][0]["recordio"]["records"] == 14430


def test_bad_input_exits_2(cli, tmp_path):
    code, _, err = cli("inspect", tmp_path / "missing.tar.gz")
    assert code == 2 and "file not found" in err
    bad = tmp_path / "evil.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("../../x")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    bad.write_bytes(buf.getvalue())
    code, _, err = cli("inspect", bad)
    assert code == 2 and "escapes the archive" in err and err.count("\n") == 1
    trunc = tmp_path / "t.params"
    trunc.write_bytes(nd.dumps([np.ones(4, np.float32)])[:-3])
    code, _, err = cli("inspect", trunc)
    assert code == 2 and "truncated" in err


def test_inconsistent_fm_is_an_error(cli, tmp_path):
    p = tmp_path / "model_algo-1"
    nd.save(p, {"arg:v": np.zeros((4, 2), np.float32), "arg:w1_weight": np.zeros((5, 1), np.float32)})
    code, _, err = cli("inspect", p)
    assert code == 2 and "w1_weight" in err


@pytest.mark.slow
def test_s3_uri(cli, new_s3_bucket, fm_model):
    new_s3_bucket("jobs").upload_file(str(fm_model), "jobs", "fm/output/model.tar.gz")
    code, out, err = cli("inspect", "s3://jobs/fm/output/model.tar.gz", "--json")
    assert code == 0, err
    assert json.loads(out)["fm"]["feature_dim"] == 8


@pytest.mark.parametrize("graph", [
    {"nodes": [1], "heads": [[0]]},                                   # a node that is not an object
    {"nodes": [{"op": "null", "name": "a"}], "heads": [[3]]},         # head past the node list
    {"nodes": [], "heads": [], "arg_nodes": [7]},                      # argument past the node list
])
def test_malformed_symbol_graph_exits_2_not_crash(cli, tmp_path, graph):
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(graph))
    code, _, err = cli("inspect", p)
    assert code == 2, err
    assert "malformed MXNet symbol graph" in err and err.count("\n") == 1


def test_json_output_is_strict_json_with_non_finite_values(cli, tmp_path):
    # A diverged FM (w0 NaN) printed the bare NaN token, which strict JSON parsers reject.
    w = FMWeights(float("nan"), np.array([np.inf, 1.0], np.float32), np.ones((2, 1)), "regressor")
    path = save_fm(tmp_path / "model.tar.gz", w)
    code, out, err = cli("inspect", path, "--json", "--values")
    assert code == 0, err

    def refuse(token):  # noqa: ANN001, ANN202
        raise ValueError(f"non-standard JSON token {token}")

    doc = json.loads(out, parse_constant=refuse)
    assert doc["fm"]["w0"] == "nan"
    arrays = doc["members"][0]["members"][1]["ndarray"]["arrays"]
    assert arrays[1]["values"] == [["inf"], [1.0]]
