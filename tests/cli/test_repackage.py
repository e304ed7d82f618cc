"""``localfm repackage``: the written vectors reproduce FM scores; SageMaker-layout artifacts flow through."""
from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import random_fm


REPO = Path(__file__).resolve().parents[2]
MXNET_PY = REPO / ".mxnet-venv" / "bin" / "python"


@pytest.fixture(scope="module")
def demo(synthetic_side, tmp_path_factory):
    root, space = synthetic_side
    model = random_fm(tmp_path_factory.mktemp("repackage-model") / "model.tar.gz", space.feature_dim,
                      factors=6, seed=1, w0=-0.2)
    return root, space, model


def test_outputs_reproduce_fm_scores_for_every_pair(cli, demo, tmp_path):
    from localfm.io.artifacts import load_fm
    from localfm.io.recordio import read_matrix

    root, space, model = demo
    out = tmp_path / "vectors"
    code, stdout, err = cli("--quiet", "repackage", "--model", model, "--features", root / "data" / "features.json",
                            "--out", out)
    assert code == 0, err
    meta = json.loads(stdout)
    assert meta["dim"] == 7 and meta["labels"] == "item_id"
    items = read_matrix(out / "items.protobuf")
    users = read_matrix(out / "users.protobuf")
    assert users.y is None and not items.sparse
    np.testing.assert_array_equal(items.y, space.item_ids.astype(np.float32))
    np.testing.assert_array_equal(items.X, np.load(out / "item_vectors.npy"))
    np.testing.assert_array_equal(users.X, np.load(out / "user_vectors.npy"))
    consts = np.load(out / "user_constants.npy")
    got = users.X.astype(np.float64) @ items.X.T.astype(np.float64) + consts[:, None]
    weights = load_fm(model)
    n_u, n_i = len(space.user_ids), len(space.item_ids)
    X = space.encode(np.repeat(space.user_ids, n_i), np.tile(space.item_ids, n_u))
    np.testing.assert_allclose(got, weights.raw_scores(X).reshape(n_u, n_i), rtol=1e-5, atol=1e-5)
    import pyarrow.parquet as pq

    assert pq.read_table(out / "items.parquet").column("item_id").to_pylist() == space.item_ids.tolist()


def test_feature_dim_mismatch_exit_2_writes_nothing(cli, demo, tmp_path):
    from localfm.io.artifacts import FMWeights, save_fm

    root, space, _ = demo
    d = space.feature_dim + 1
    save_fm(tmp_path / "m.tar.gz", FMWeights(0.0, np.zeros(d), np.zeros((d, 2)), "regressor"))
    code, _, err = cli("repackage", "--model", tmp_path / "m.tar.gz", "--features", root / "data" / "features.json",
                       "--out", tmp_path / "out")
    assert code == 2 and "feature_dim" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_empty_users_list_is_bad_input_not_an_empty_output(cli, demo, tmp_path):
    """--users "," used to write a zero-user output set and exit 0 (recommend already said "no ids given")."""
    root, _, model = demo
    code, _, err = cli("repackage", "--model", model, "--features", root / "data" / "features.json",
                       "--users", " , ", "--out", tmp_path / "out")
    assert code == 2 and "--users: no ids given" in err, err
    assert not (tmp_path / "out").exists()


def test_folder_in_place_of_an_output_file_is_bad_input_and_keeps_old_outputs(cli, demo, tmp_path):
    """A folder named like an output (items.protobuf/) used to end in IsADirectoryError: exit 1."""
    root, _, model = demo
    out = tmp_path / "out"
    args = ("repackage", "--model", model, "--features", root / "data" / "features.json", "--out", out)
    assert cli("--quiet", *args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "items.protobuf").unlink()
    (out / "items.protobuf").mkdir()
    code, _, err = cli(*args)
    assert code == 2 and "items.protobuf: is a directory" in err, err
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporaries left behind
    assert all((out / n).read_bytes() == b for n, b in before.items() if n != "items.protobuf")


def test_cold_start_users(cli, demo, tmp_path):
    root, _, model = demo
    feats = root / "data" / "features.json"
    code, _, err = cli("repackage", "--model", model, "--features", feats, "--users", "1,424242", "--out", tmp_path / "a")
    assert code == 2 and "424242" in err
    code, out, err = cli("--quiet", "repackage", "--model", model, "--features", feats, "--users", "1,424242",
                         "--cold-start", "--out", tmp_path / "b")
    assert code == 0, err
    assert json.loads(out)["n_users"] == 2
    vecs = np.load(tmp_path / "b" / "user_vectors.npy")
    assert vecs.shape[0] == 2 and np.all(vecs[:, -1] == 1.0)


MX_WRITE = r"""
import sys, numpy as np, mxnet as mx
d, k, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.RandomState(7)
mx.nd.save(out, {
    "arg:w0_weight": mx.nd.array([0.25], dtype="float32"),
    "arg:w1_weight": mx.nd.array(rng.normal(0, 0.3, (d, 1)), dtype="float32"),
    "arg:v": mx.nd.array(rng.normal(0, 0.3, (d, k)), dtype="float32"),
})
"""


@pytest.mark.slow
def test_mxnet_written_artifact_through_repackage_knn_transform_sqlite(cli, demo, tmp_path):
    """Real MXNet writes the params of a SageMaker-layout FM; k-NN transform == recommend's SQLite rows."""
    if not MXNET_PY.exists():
        pytest.skip(f"no MXNet venv at {MXNET_PY.parent.parent} (run scripts/mxnet-crosscheck once)")
    from localfm.io.artifacts import fm_symbol_json

    root, space, _ = demo
    d, k = space.feature_dim, 5
    params = tmp_path / "params"
    proc = subprocess.run([str(MXNET_PY), "-c", MX_WRITE, str(d), str(k), str(params)], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0 and "No module named 'mxnet'" in proc.stderr:
        pytest.skip("the MXNet venv has no mxnet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # SageMaker layout: model.tar.gz → model_algo-1 (a zip of symbol.json + params).
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("symbol.json", fm_symbol_json(d, k, "binary_classifier"))
        zf.writestr("params", params.read_bytes())
    model = tmp_path / "model.tar.gz"
    with tarfile.open(model, "w:gz") as tf:
        info = tarfile.TarInfo("model_algo-1")
        info.size = len(inner.getvalue())
        tf.addfile(info, io.BytesIO(inner.getvalue()))
    feats = root / "data" / "features.json"
    vec = tmp_path / "vec"
    assert cli("--quiet", "repackage", "--model", model, "--features", feats, "--out", vec)[0] == 0
    n_items, top = len(space.item_ids), 10
    code, _, err = cli("--quiet", "knn", "train", "--train", vec / "items.protobuf", "--output", tmp_path / "knn",
                       "--hp", f"feature_dim={k + 1}", "--hp", f"k={top}", "--hp", "predictor_type=classifier",
                       "--hp", f"sample_size={n_items}", "--hp", "index_metric=INNER_PRODUCT")
    assert code == 0, err
    code, _, err = cli("--quiet", "knn", "transform", "--model", tmp_path / "knn", "--input", vec / "users.protobuf",
                       "--output", tmp_path / "t", "--accept", "application/jsonlines; verbose=true")
    assert code == 0, err
    answers = [json.loads(line) for line in (tmp_path / "t" / "users.protobuf.out").read_text().splitlines()]
    db = tmp_path / "r.sqlite"
    assert cli("--quiet", "recommend", "--model", model, "--features", feats, "-k", top, "--out", db)[0] == 0
    conn = sqlite3.connect(db)
    rows = conn.execute("select user_id, rank, item_id, score from recommendations order by user_id, rank").fetchall()
    conn.close()
    consts = np.load(vec / "user_constants.npy")
    assert len(answers) == len(space.user_ids)
    for n, (uid, ans) in enumerate(zip(space.user_ids.tolist(), answers)):
        mine = rows[n * top:(n + 1) * top]
        assert all(r[0] == uid for r in mine)
        # k-NN lists best last (ascending inner products); recommend lists best first.
        labels = [int(x) for x in ans["labels"]][::-1]
        dists = np.asarray(ans["distances"][::-1], dtype=np.float64)
        scores = np.array([r[3] for r in mine])
        np.testing.assert_allclose(dists + consts[n], scores, rtol=1e-4, atol=1e-4)
        if labels != [r[2] for r in mine]:  # only near-ties may swap
            assert np.allclose(np.sort(dists), np.sort(scores - consts[n]), atol=1e-4)
