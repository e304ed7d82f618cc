"""Regressor quality on MovieLens 100k (u1), with the documented local-only options.

A guard against regressions in the learning code, not the full benchmark (see
docs/fm.md "Regressor quality" for the measured numbers): a short run must already
beat the global-mean + biases level by a clear margin.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_u1_regressor_rmse(ml100k_dir, tmp_path):
    from localfm.cli import main
    from localfm.fm import FactorizationMachine
    from localfm.io.channels import read_channel

    assert main(["--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "u1", "--label", "rating",
                 "--out", str(tmp_path)]) == 0
    X, y = read_channel(str(tmp_path / "train.protobuf"), need_labels=True)
    Xt, yt = read_channel(str(tmp_path / "test.protobuf"), need_labels=True)
    fm = FactorizationMachine(
        seed=0, feature_dim=X.shape[1], predictor_type="regressor", num_factors=64, epochs=6, mini_batch_size=200,
        bias_lr=0.01, linear_lr=0.005, factors_lr=0.001, bias_wd=0, linear_wd=0.1, factors_wd=0.1,
        factors_init_sigma=0.01, _local_optimizer="adamw", _local_shuffle="true",
    ).fit(X, y, Xt, yt)
    rmse = fm.history_.test_metrics["rmse"]
    assert rmse < 0.935, rmse
