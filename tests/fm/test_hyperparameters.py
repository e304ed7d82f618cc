from pathlib import Path

import pytest

from localfm.errors import LocalFMError
from localfm.fm.hyperparameters import FM_HYPERPARAMETERS, markdown_table, parse_fm

REQ = {"feature_dim": "2623", "num_factors": "64", "predictor_type": "binary_classifier"}


def test_container_defaults_match_the_cloud_log():
    hp = parse_fm(REQ)
    # default-conf.json as printed in fixtures/cloud/ml100k-fm-binary-30ep/training-log.txt
    assert hp["epochs"] == 1 and hp["mini_batch_size"] == 1000
    assert (hp["bias_lr"], hp["linear_lr"], hp["factors_lr"]) == (0.1, 0.001, 0.0001)
    assert (hp["bias_wd"], hp["linear_wd"], hp["factors_wd"]) == (0.01, 0.001, 0.00001)
    assert (hp["bias_init_sigma"], hp["linear_init_sigma"], hp["factors_init_sigma"]) == (0.01, 0.01, 0.001)
    assert hp["bias_init_method"] == hp["linear_init_method"] == hp["factors_init_method"] == "normal"
    assert hp["use_bias"] is True and hp["use_linear"] is True
    assert hp["_learning_rate"] == 1.0 and hp["_wd"] == 1.0 and hp["_optimizer"] == "adam"
    assert hp["eps"] == 1e-8 and hp["rescale_grad"] is None and hp["clip_gradient"] is None
    assert hp["_local_shuffle"] is False and hp["_local_optimizer"] == "adam"


def test_real_hyperparameters_final_round_trips(cloud_fixture):
    import json

    final = json.loads((cloud_fixture / "cloud-results.json").read_text())["hyperparameters_final"]
    hp = parse_fm(final)
    assert hp["epochs"] == 30 and hp["mini_batch_size"] == 200 and hp["feature_dim"] == 2623


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"num_factors": "0"}, "'num_factors': expected an integer in [1, 1000]"),
        ({"predictor_type": "multiclass"}, "'predictor_type': expected one of binary_classifier, regressor"),
        ({"epochs": "1.5"}, "'epochs'"),
        ({"bias_lr": "-1"}, "'bias_lr': expected a number in [0, inf]"),
        ({"eps": "0"}, "'eps'"),
        ({"use_bias": "maybe"}, "'use_bias': expected true or false"),
        ({"factors_init_method": "uniform"}, "'factors_init_scale' is required"),
        ({"linear_init_method": "constant"}, "'linear_init_value' is required"),
        ({"num_factor": "3"}, "unknown factorization-machines hyperparameter 'num_factor'"),
    ],
)
def test_bad_values_name_the_hyperparameter(extra, needle):
    with pytest.raises(LocalFMError) as exc:
        parse_fm({**REQ, **extra})
    assert needle in str(exc.value)


def test_missing_required():
    with pytest.raises(LocalFMError, match="missing required .* 'feature_dim'"):
        parse_fm({"num_factors": "4", "predictor_type": "regressor"})


def test_every_issue_hyperparameter_is_declared():
    names = {hp.name for hp in FM_HYPERPARAMETERS}
    for g in ("bias", "linear", "factors"):
        for s in ("lr", "wd", "init_method", "init_scale", "init_sigma", "init_value"):
            assert f"{g}_{s}" in names
    assert {"feature_dim", "num_factors", "predictor_type", "epochs", "mini_batch_size", "clip_gradient",
            "eps", "rescale_grad", "use_bias", "use_linear"} <= names


def test_docs_table_is_in_sync():
    docs = Path(__file__).resolve().parents[2] / "docs" / "fm.md"
    assert markdown_table() in docs.read_text(encoding="utf-8")
