"""The bring-your-own-run layout, exercised with a recording made by localfm itself.

A run recorded with ``localfm train`` / ``localfm predict`` has exactly the files a
SageMaker run leaves (log, hyperparameters.json, model.tar.gz, <input>.out), so the
same seed must reproduce it exactly, and a tampered output must be caught.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.errors import LocalFMError
from localfm.parity import layout

HP = {"feature_dim": "40", "num_factors": "4", "predictor_type": "binary_classifier", "epochs": "5",
      "mini_batch_size": "50"}


def run_cli(*args: object) -> tuple[int, str, str]:
    from localfm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _planted(n: int, d: int, rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    cols = np.stack([rng.integers(0, d // 2, n), rng.integers(d // 2, d, n)], 1).ravel()
    X = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), cols)), shape=(n, d))
    u = rng.normal(size=(d, 2))
    z = np.einsum("nk,nk->n", u[cols[0::2]], u[cols[1::2]])
    return X, (z > 0).astype(np.float32)


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder recorded with localfm (seed 5), in the documented layout."""
    from localfm.io.recordio import write_sparse

    root = tmp_path_factory.mktemp("recorded") / "run"
    rng = np.random.default_rng(0)
    X, y = _planted(600, 40, rng)
    Xt, yt = _planted(100, 40, rng)
    for name, (A, b) in {"train": (X, y), "test": (Xt, yt)}.items():
        (root / "input" / "data" / name).mkdir(parents=True)
        write_sparse(root / "input" / "data" / name / f"part-00000.{name}", A, b)
    (root / "hyperparameters.json").write_text(json.dumps(HP))
    code, log, err = run_cli("--quiet", "train", "--train", root / "input/data/train", "--test", root / "input/data/test",
                             "--hyperparameters", root / "hyperparameters.json", "--seed", "5", "-o", root / "job")
    assert code == 0, err
    (root / "training-log.txt").write_text(log)
    shutil.move(root / "job" / "model.tar.gz", root / "model.tar.gz")
    shutil.rmtree(root / "job")
    (root / "transform" / "input").mkdir(parents=True)
    write_sparse(root / "transform" / "input" / "batch.protobuf", Xt)
    code, _, err = run_cli("predict", "--model", root / "model.tar.gz", "--input", root / "transform/input/batch.protobuf",
                           "--accept", "application/jsonlines", "--output", root / "transform" / "output")
    assert code == 0, err
    # k-NN stage: an INNER_PRODUCT index over random vectors, queried verbosely
    vec = rng.normal(size=(80, 6))
    (root / "knn" / "input").mkdir(parents=True)
    np.savetxt(root / "knn" / "items.csv", np.c_[np.arange(80), vec], delimiter=",", fmt="%.6f")
    np.savetxt(root / "knn" / "input" / "users.csv", rng.normal(size=(15, 6)), delimiter=",", fmt="%.6f")
    code, _, err = run_cli("knn", "train", "--train", root / "knn" / "items.csv", "--output", root / "knn" / "m",
                           "--hp", "feature_dim=6", "--hp", "k=8", "--hp", "predictor_type=classifier",
                           "--hp", "sample_size=80", "--hp", "index_metric=INNER_PRODUCT")
    assert code == 0, err
    shutil.move(root / "knn" / "m" / "model.tar.gz", root / "knn" / "model.tar.gz")
    shutil.rmtree(root / "knn" / "m")
    (root / "knn" / "items.csv").unlink()
    code, _, err = run_cli("knn", "transform", "--model", root / "knn" / "model.tar.gz",
                           "--input", root / "knn" / "input" / "users.csv", "--output", root / "knn" / "output",
                           "--accept", "application/jsonlines; verbose=true")
    assert code == 0, err
    return root


def test_scan_finds_every_part(recorded_run: Path) -> None:
    lay = layout.scan(recorded_run)
    assert lay.log == recorded_run / "training-log.txt"
    assert lay.hyperparameters_file == recorded_run / "hyperparameters.json"
    assert lay.train == recorded_run / "input" / "data" / "train"
    assert lay.test == recorded_run / "input" / "data" / "test"
    assert lay.model == recorded_run / "model.tar.gz"
    assert lay.transforms == [(recorded_run / "transform/input/batch.protobuf",
                               recorded_run / "transform/output/batch.protobuf.out")]
    assert lay.knn_model == recorded_run / "knn" / "model.tar.gz"
    assert lay.knn_transforms == [(recorded_run / "knn/input/users.csv", recorded_run / "knn/output/users.csv.out")]
    assert layout.given_hyperparameters(lay, layout.cloud_training(lay)) == HP


@pytest.mark.slow
def test_same_seed_reproduces_the_recording(recorded_run: Path, tmp_path: Path) -> None:
    code, out, err = run_cli("--quiet", "parity", "fixture", recorded_run, "--seed", "5", "--json", tmp_path / "r.json",
                             "--plot", tmp_path / "plots")
    assert code == 0, out + err
    doc = json.loads((tmp_path / "r.json").read_text())
    kinds = [c["kind"] for c in doc["comparisons"]]
    assert kinds == ["training", "predictions", "models", "knn"]
    training, predictions, models, knn = doc["comparisons"]
    assert knn["summary"]["index_metric"] == "INNER_PRODUCT" and knn["summary"]["overlap_min"] == 1.0
    assert knn["summary"]["distance_error_max"] == 0.0
    assert all(c["abs_diff"] == 0.0 for c in training["checks"]), "same seed, same data: identical metrics"
    assert predictions["summary"]["max_abs_diff"] < 1e-6
    assert models["summary"]["max_abs_diff"] == 0.0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "knn_overlap_hist.png", "models_score_scatter.png", "predictions_score_scatter.png", "training_curves.png"]


def test_tampered_output_and_missing_input(recorded_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(recorded_run, run)
    out_file = run / "transform" / "output" / "batch.protobuf.out"
    lines = out_file.read_text().splitlines()
    rec = json.loads(lines[7])
    rec["score"] += 0.01
    lines[7] = json.dumps(rec)
    out_file.write_text("\n".join(lines) + "\n")
    (run / "transform" / "output" / "gone.protobuf.out").write_text('{"score": 0.5, "predicted_label": 1.0}\n')
    knn_out = run / "knn" / "output" / "users.csv.out"
    recs = [json.loads(x) for x in knn_out.read_text().splitlines()]
    recs[4]["distances"][-1] += 0.5  # the best (last, INNER_PRODUCT) neighbour's score of query 4
    knn_out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    code, out, err = run_cli("--quiet", "parity", "fixture", run, "--seed", "5")
    assert code == 3
    assert "FAIL max |score diff|" in out and "(row 7)" in out
    assert "FAIL max distance error (relative)" in out and "(query 4)" in out
    assert "gone.protobuf not found" in err


def test_truncated_run_skips_final_model_comparisons(recorded_run: Path, tmp_path: Path) -> None:
    """--epochs N compares the first N epochs only; the truncated local model is not
    compared with the cloud's final one, but the cloud model's own inference still is."""
    code, out, err = run_cli("--quiet", "parity", "fixture", recorded_run, "--seed", "5", "--epochs", "2",
                             "--json", tmp_path / "r.json")
    assert code == 0, out + err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [c["kind"] for c in doc["comparisons"]] == ["training", "predictions", "knn"]
    assert len(doc["comparisons"][0]["checks"]) == 2 * 3


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(LocalFMError, match="not a folder"):
        layout.scan(tmp_path / "nope")
    with pytest.raises(LocalFMError, match="no training log"):
        layout.scan(tmp_path)
    (tmp_path / "metrics.json").write_text("[1]")
    with pytest.raises(LocalFMError, match="expected a JSON object"):
        layout.cloud_training(layout.scan(tmp_path))


def test_root_level_channel_files(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_text("#quality_metric: host=algo-1, test rmse <loss>=1.0\n")
    (tmp_path / "train.protobuf").write_bytes(b"")
    lay = layout.scan(tmp_path)
    assert lay.log == tmp_path / "job.log" and lay.train == tmp_path / "train.protobuf" and lay.test is None


def test_folder_named_like_a_log_is_not_the_log(tmp_path: Path) -> None:
    """A sub-folder "a.log" sorted before the real "b.log" and was read as the log (IsADirectoryError, exit 1)."""
    (tmp_path / "a.log").mkdir()
    (tmp_path / "b.log").write_text("#quality_metric: host=algo-1, test rmse <loss>=1.0\n")
    assert layout.scan(tmp_path).log == tmp_path / "b.log"
    (tmp_path / "b.log").unlink()
    with pytest.raises(LocalFMError, match="no training log"):
        layout.scan(tmp_path)


def test_prepare_json_with_out_equals_is_refused(tmp_path: Path) -> None:
    """The "leave out --out" rule was only enforced for the two-token form; `--out=DIR` slipped past it."""
    (tmp_path / "job.log").write_text("#quality_metric: host=algo-1, test rmse <loss>=1.0\n")
    (tmp_path / "prepare.json").write_text('{"prepare": ["movielens", "--out=elsewhere"]}')
    with pytest.raises(LocalFMError, match="leave out --out"):
        layout.scan(tmp_path)
