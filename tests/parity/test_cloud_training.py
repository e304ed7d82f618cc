"""Parity with a real SageMaker FM training job (fixtures/cloud/ml100k-fm-binary-30ep).

Same data preparation (``localfm prepare movielens --split ua --label binary:4
--columns train --drop-unseen``), same hyperparameters (the job's
``hyperparameters.json``), three seeds: every epoch's train accuracy, cross-entropy
and F1 must be within 0.005 of the cloud log; test accuracy and cross-entropy within
0.01, F1 within 0.02. Run with ``-s`` to see the side-by-side table.
"""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.parity, pytest.mark.slow]

METRICS = ("binary_classification_accuracy", "binary_classification_cross_entropy", "binary_f_1.000")
SHORT = {"binary_classification_accuracy": "acc", "binary_classification_cross_entropy": "xent", "binary_f_1.000": "f1"}
TRAIN_TOL = 0.005
TEST_TOL = {"binary_classification_accuracy": 0.01, "binary_classification_cross_entropy": 0.01, "binary_f_1.000": 0.02}


@pytest.fixture(scope="module")
def prepared(ml100k_dir, cloud_fixture, tmp_path_factory):
    from localfm.cli import main

    out = tmp_path_factory.mktemp("ml100k-ua")
    code = main(["--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "ua", "--label", "binary:4",
                 "--columns", "train", "--drop-unseen", "--order", "file", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def cloud(cloud_fixture):
    return json.loads((cloud_fixture / "cloud-results.json").read_text())


def side_by_side(local: dict, cloud: dict) -> str:
    """Per-epoch table of local vs cloud train metrics, then the test metrics."""
    head = "epoch " + " ".join(f"{SHORT[m] + ' local':>11} {SHORT[m] + ' cloud':>11} {'diff':>8}" for m in METRICS)
    rows = [head]
    for lo, cl in zip(local["train_metrics_per_epoch"], cloud["train_metrics_per_epoch"]):
        rows.append(f"{lo['epoch']:5d} " + " ".join(f"{lo[m]:11.5f} {cl[m]:11.5f} {lo[m] - cl[m]:+8.5f}" for m in METRICS))
    rows.append(" test " + " ".join(
        f"{local['test_metrics'][m]:11.5f} {cloud['test_metrics'][m]:11.5f} "
        f"{local['test_metrics'][m] - cloud['test_metrics'][m]:+8.5f}" for m in METRICS))
    return "\n".join(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_and_test_metrics_match_the_cloud_job(prepared, cloud, tmp_path, seed, cli):
    hp_file = tmp_path / "hyperparameters.json"
    # exactly what the job was given (its log's "Merging with provided configuration" line)
    hp_file.write_text(json.dumps({"feature_dim": "2623", "predictor_type": "binary_classifier",
                                   "num_factors": "64", "epochs": "30", "mini_batch_size": "200"}))
    code, _, err = cli("--quiet", "train", "--train", prepared / "train.protobuf", "--test", prepared / "test.protobuf",
                       "-o", tmp_path / "model", "--hyperparameters", hp_file, "--seed", seed, "--quiet-log")
    assert code == 0, err
    local = json.loads((tmp_path / "model" / "metrics.json").read_text())
    print(f"\nseed {seed}: local vs SageMaker job {cloud['source'].split()[3]}\n" + side_by_side(local, cloud))
    assert len(local["train_metrics_per_epoch"]) == len(cloud["train_metrics_per_epoch"]) == 30
    worst = max(
        (abs(lo[m] - cl[m]), lo["epoch"], m)
        for lo, cl in zip(local["train_metrics_per_epoch"], cloud["train_metrics_per_epoch"])
        for m in METRICS
    )
    assert worst[0] <= TRAIN_TOL, f"epoch {worst[1]} {worst[2]} differs by {worst[0]:.5f}"
    for m in METRICS:
        diff = abs(local["test_metrics"][m] - cloud["test_metrics"][m])
        assert diff <= TEST_TOL[m], f"test {m}: local {local['test_metrics'][m]:.5f} vs cloud {cloud['test_metrics'][m]:.5f}"
