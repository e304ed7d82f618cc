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


PRIVATE = [HP("_wd", "float", default=1.0), HP("_local_shuffle", "bool", default=False),
           HP("_local_early_stopping_patience", "int", default=0, low=0)]


def _unknown_message(given: dict) -> str:
    with pytest.raises(LocalFMError) as exc:
        parse(TABLE + PRIVATE, {"feature_dim": "3", **given}, algorithm="fm")
    return str(exc.value)


def test_misspelling_suggests_the_close_name_and_hides_private_ones():
    msg = _unknown_message({"num_factor": "8"})
    assert msg == "unknown fm hyperparameter 'num_factor'; did you mean num_factors?"
    msg = _unknown_message({"predictor": "regressor"})
    assert "did you mean predictor_type?" in msg and "_local_" not in msg


def test_far_misses_list_only_public_names():
    msg = _unknown_message({"zzz": "1"})
    assert "known: bias_lr, feature_dim, nlists, num_factors, predictor_type, use_bias" in msg
    assert "_local_" not in msg and "_wd" not in msg and "3 underscore-prefixed" in msg


def test_private_names_are_suggested_when_close_and_local_typos_are_not_ignored():
    # _local_* is localfm's own namespace: a typo there is an error, not a SageMaker internal to skip.
    msg = _unknown_message({"_local_shufle": "true"})
    assert msg.endswith("did you mean _local_shuffle?")
    assert parse(TABLE + PRIVATE, {"feature_dim": "3", "_kvstore": "auto"}, algorithm="fm")["_local_shuffle"] is False


def test_messages_name_parameters_not_command_line_flags():
    with pytest.raises(LocalFMError) as exc:
        parse_assignments(["num_factors"])
    assert "--" not in str(exc.value) and "'num_factors'" in str(exc.value)
