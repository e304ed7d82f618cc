import json

import pytest

from localfm.errors import LocalFMError
from localfm.hyperparams import HP, collect, parse, parse_assignments, table_markdown

TABLE = [
    HP("feature_dim", "int", required=True, low=1, high=2**31 - 1),
    HP("num_factors", "int", default=64, low=1, high=1000),
    HP("predictor_type", "str", default="binary_classifier", choices=("binary_classifier", "regressor")),
    HP("bias_lr", "float", default=0.1, low=0, low_open=False),
    HP("use_bias", "bool", default=True),
    HP("nlists", "int", default="auto", low=1, special=("auto",)),
]


def test_strings_are_parsed_like_sagemaker():
    got = parse(TABLE, {"feature_dim": "2623", "bias_lr": "1e-2", "use_bias": "False", "nlists": "auto"}, algorithm="fm")
    assert got == {
        "feature_dim": 2623, "num_factors": 64, "predictor_type": "binary_classifier",
        "bias_lr": 0.01, "use_bias": False, "nlists": "auto",
    }
    assert parse(TABLE, {"feature_dim": 5, "nlists": "7"}, algorithm="fm")["nlists"] == 7


@pytest.mark.parametrize(
    "given, needle",
    [
        ({}, "missing required fm hyperparameter 'feature_dim'"),
        ({"feature_dim": "0"}, "'feature_dim': expected an integer in [1, 2147483647], got '0'"),
        ({"feature_dim": "1.5"}, "'feature_dim': expected an integer"),
        ({"feature_dim": "3", "num_factors": "1001"}, "'num_factors'"),
        ({"feature_dim": "3", "predictor_type": "multiclass"}, "one of binary_classifier, regressor"),
        ({"feature_dim": "3", "bias_lr": "nan"}, "'bias_lr'"),
        ({"feature_dim": "3", "bias_lr": "-1"}, "'bias_lr'"),
        ({"feature_dim": "3", "use_bias": "maybe"}, "true or false"),
        ({"feature_dim": "3", "factors": "3"}, "unknown fm hyperparameter 'factors'"),
    ],
)
def test_bad_values_name_the_hyperparameter(given, needle):
    with pytest.raises(LocalFMError) as exc:
        parse(TABLE, given, algorithm="fm")
    assert needle in str(exc.value)


def test_sagemaker_internal_names_are_ignored():
    got = parse(TABLE, {"feature_dim": "3", "_kvstore": "auto", "_wd": "1.0"}, algorithm="fm")
    assert "_kvstore" not in got


def test_collect_merges_file_then_flags(tmp_path):
    f = tmp_path / "hyperparameters.json"
    f.write_text(json.dumps({"feature_dim": "10", "num_factors": 8}))
    assert collect(f, ["num_factors=16"]) == {"feature_dim": "10", "num_factors": "16"}
    with pytest.raises(LocalFMError, match="expected name=value"):
        parse_assignments(["num_factors"])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(LocalFMError, match="expected a JSON object"):
        collect(bad, [])


def test_markdown_table_lists_every_row():
    md = table_markdown(TABLE)
    for hp in TABLE:
        assert f"`{hp.name}`" in md
