"""``localfm tune`` on the command line: bad tuning.json fields exit 2 naming the field; a run writes outputs."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from localfm.cli import main as cli_main

BASE = {
    "HyperParameterTuningJobConfig": {
        "Strategy": "Random",
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "test:binary_classification_accuracy"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1},
        "ParameterRanges": {
            "ContinuousParameterRanges": [
                {"Name": "factors_lr", "MinValue": "0.0001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}],
            "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "3", "ScalingType": "Linear"}],
            "CategoricalParameterRanges": [{"Name": "_local_optimizer", "Values": ["adam", "adamw"]}],
        },
        "RandomSeed": 3,
    },
    "TrainingJobDefinition": {"StaticHyperParameters": {
        "feature_dim": "700", "num_factors": "4", "predictor_type": "binary_classifier", "mini_batch_size": "500"}},
}
CFG = "HyperParameterTuningJobConfig"
RANGES = f"{CFG}.ParameterRanges"
CONT = f"{RANGES}.ContinuousParameterRanges[0]"
INT = f"{RANGES}.IntegerParameterRanges[0]"
CAT = f"{RANGES}.CategoricalParameterRanges[0]"
STATIC = "TrainingJobDefinition.StaticHyperParameters"


def _set(doc: dict, path: str, value) -> None:
    """Set (or with value None, delete) a field by a dotted path with [i] list indices."""
    keys: list = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        keys.append(name)
        if rest:
            keys.append(int(rest.rstrip("]")))
    node = doc
    for k in keys[:-1]:
        node = node[k]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


BAD = [
    # (field set, value, field path the message must name)
    (f"{CFG}.Strategy", "Evolutionary", f"{CFG}.Strategy"),
    (f"{CFG}.HyperParameterTuningJobObjective.Type", "Up", f"{CFG}.HyperParameterTuningJobObjective.Type"),
    (f"{CFG}.HyperParameterTuningJobObjective.Type", "Minimize", f"{CFG}.HyperParameterTuningJobObjective.Type"),
    (f"{CFG}.HyperParameterTuningJobObjective.MetricName", "test:auc",
     f"{CFG}.HyperParameterTuningJobObjective.MetricName"),
    (f"{CFG}.HyperParameterTuningJobObjective.MetricName", "validation:ndcg@0",
     f"{CFG}.HyperParameterTuningJobObjective.MetricName"),
    (f"{CFG}.HyperParameterTuningJobObjective", {"Type": "Minimize", "MetricName": "test:rmse"},
     f"{CFG}.HyperParameterTuningJobObjective.MetricName"),  # rmse needs a regressor
    (f"{CFG}.ResourceLimits", None, f"{CFG}.ResourceLimits"),
    (f"{CFG}.ResourceLimits.MaxNumberOfTrainingJobs", 0, f"{CFG}.ResourceLimits.MaxNumberOfTrainingJobs"),
    (f"{CFG}.ResourceLimits.MaxParallelTrainingJobs", "two", f"{CFG}.ResourceLimits.MaxParallelTrainingJobs"),
    (f"{CFG}.ResourceLimits.MaxRuntimeInSeconds", -5, f"{CFG}.ResourceLimits.MaxRuntimeInSeconds"),
    (f"{CFG}.ParameterRanges", {}, f"{CFG}.ParameterRanges"),
    (f"{CONT}.Name", "learning_rate", f"{CONT}.Name"),
    (f"{CONT}.Name", "feature_dim", f"{CONT}.Name"),
    (f"{CONT}.Name", "epochs", f"{CONT}.Name"),  # an integer hyperparameter in the continuous list
    (f"{CONT}.MinValue", "0.1", f"{CONT}.MinValue"),  # Min > Max
    (f"{CONT}.MinValue", "abc", f"{CONT}.MinValue"),
    (f"{CONT}.MinValue", "-1", f"{CONT}.MinValue"),  # below the FM range of factors_lr
    (f"{CONT}.ScalingType", "Cubic", f"{CONT}.ScalingType"),
    (f"{CONT}", {"Name": "factors_init_value", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"},
     f"{CONT}.MinValue"),  # log scale with Min <= 0
    (f"{CONT}.ScalingType", "ReverseLogarithmic", f"{CONT}.ScalingType"),  # needs MaxValue < 1 ... fine here
    (f"{CONT}", {"Name": "factors_wd", "MinValue": "0.5", "MaxValue": "1", "ScalingType": "ReverseLogarithmic"},
     f"{CONT}.ScalingType"),  # MaxValue must be < 1
    (f"{INT}.MinValue", "1.5", f"{INT}.MinValue"),
    (f"{INT}.ScalingType", "ReverseLogarithmic", f"{INT}.ScalingType"),
    (f"{INT}.Name", "factors_lr", f"{INT}.Name"),
    (f"{INT}.Name", "_local_optimizer", f"{INT}.Name"),
    (f"{CAT}.Values", [], f"{CAT}.Values"),
    (f"{CAT}.Values", ["adam", "rmsprop"], f"{CAT}.Values[1]"),
    (f"{CAT}.Values", ["adam", 3], f"{CAT}.Values[1]"),
    (f"{CAT}", {"Name": "factors_lr", "Values": ["0.001"]}, f"{CAT}.Name"),  # already searched (continuous)
    (f"{CFG}.TrainingJobEarlyStoppingType", "Sometimes", f"{CFG}.TrainingJobEarlyStoppingType"),
    (f"{CFG}.RandomSeed", -1, f"{CFG}.RandomSeed"),
    (f"{CFG}.StrategyConfig", {"HyperbandStrategyConfig": {"MinResource": 1}}, f"{CFG}.StrategyConfig"),
    (f"{STATIC}.num_factors", 4, f"{STATIC}.num_factors"),  # not a string
    (f"{STATIC}.num_factors", "0", f"{STATIC}"),  # out of the FM range
    (f"{STATIC}.factors_lr", "0.001", f"{STATIC}.factors_lr"),  # static and tuned
    (f"{STATIC}.predictor_type", None, f"{STATIC}"),  # required hyperparameter missing
    ("TrainingJobDefinition", None, f"{STATIC}"),
]
# ReverseLogarithmic on factors_lr [0.0001, 0.01] is valid: drop that row from the bad list
BAD = [b for b in BAD if not (b[0] == f"{CONT}.ScalingType" and b[1] == "ReverseLogarithmic")]


def _run_config(tmp_path: Path, doc: dict, *extra: str) -> tuple[int, str]:
    cfg = tmp_path / "tuning.json"
    cfg.write_text(json.dumps(doc))
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        code = cli_main(["--quiet", "tune", "--train", str(tmp_path / "nope.protobuf"), "--features",
                         str(tmp_path / "nope.json"), "--config", str(cfg), "--out", str(tmp_path / "out"), *extra])
    return code, err.getvalue()


@pytest.mark.parametrize(("field", "value", "named"), BAD, ids=[f"{b[0].rsplit('.', 1)[-1]}={b[1]!r}"[:60] for b in BAD])
def test_bad_tuning_json_field_exits_2_naming_it(tmp_path, field, value, named):
    doc = copy.deepcopy(BASE)
    _set(doc, field, value)
    code, err = _run_config(tmp_path, doc)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("localfm tune: error: ") and "tuning.json" in line
    assert f"{named}:" in line, line
    assert not (tmp_path / "out").exists()  # nothing written for a bad config


def test_grid_needs_categorical_ranges_only(tmp_path):
    doc = copy.deepcopy(BASE)
    doc[CFG]["Strategy"] = "Grid"
    code, err = _run_config(tmp_path, doc)
    assert code == 2 and f"{CONT}: Strategy Grid accepts only CategoricalParameterRanges" in err


def test_hyperband_rules(tmp_path):
    doc = copy.deepcopy(BASE)
    doc[CFG]["Strategy"] = "Hyperband"
    doc[CFG]["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": 5, "MaxResource": 2}}
    code, err = _run_config(tmp_path, doc)
    assert code == 2 and f"{CFG}.StrategyConfig.HyperbandStrategyConfig.MinResource" in err
    doc[CFG]["StrategyConfig"]["HyperbandStrategyConfig"]["MinResource"] = 1
    code, err = _run_config(tmp_path, doc)  # epochs are the Hyperband resource, not a range
    assert code == 2 and f"{INT}.Name" in err


def test_malformed_json_and_missing_file_exit_2(tmp_path):
    (tmp_path / "tuning.json").write_text("{nope")
    code = cli_main(["--quiet", "tune", "--train", "x", "--features", "y", "--config", str(tmp_path / "tuning.json"),
                     "--out", str(tmp_path / "o")])
    assert code == 2
    code = cli_main(["--quiet", "tune", "--train", "x", "--features", "y", "--config", str(tmp_path / "missing.json"),
                     "--out", str(tmp_path / "o")])
    assert code == 2


def test_unknown_fields_warn_with_their_path(tmp_path):
    doc = copy.deepcopy(BASE)
    doc[CFG]["Colour"] = "blue"
    doc[CFG]["ParameterRanges"]["ContinuousParameterRanges"][0]["Step"] = "2"
    doc[CFG]["ParameterRanges"]["IntegerParameterRanges"].append(
        {"Name": "num_factors", "MinValue": "2", "MaxValue": "8"})
    doc["TrainingJobDefinition"]["StaticHyperParameters"].pop("num_factors")
    code, err = _run_config(tmp_path, doc)  # then fails on the missing features.json: exit 2 too
    assert code == 2
    assert f"warning: {tmp_path / 'tuning.json'}: {CFG}.Colour: unknown field" in err
    assert f"{CONT}.Step: unknown field" in err
    assert f"{RANGES}.IntegerParameterRanges[1].Name: 'num_factors' is tunable locally but SageMaker" in err
    assert "nope.json" in err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tune-data") / "data"
    assert cli_main(["--quiet", "prepare", "movielens", "--split", "ua", "--label", "binary:4", "--out", str(out)]) == 0
    return out


def test_objective_on_test_data_needs_a_channel(tmp_path, prepared):
    code, err = _run_config_with_data(tmp_path, prepared, BASE)
    assert code == 2 and "validation or test data" in err


def test_feature_dim_must_match_features_json(tmp_path, prepared):
    doc = copy.deepcopy(BASE)
    doc["TrainingJobDefinition"]["StaticHyperParameters"]["feature_dim"] = "701"
    code, err = _run_config_with_data(tmp_path, prepared, doc, "--test", str(prepared / "test.protobuf"))
    assert code == 2 and f"{STATIC}.feature_dim: 701" in err


def _run_config_with_data(tmp_path: Path, data: Path, doc: dict, *extra: str) -> tuple[int, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    cfg = tmp_path / "tuning.json"
    cfg.write_text(json.dumps(doc))
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = cli_main(["--quiet", "tune", "--train", str(data / "train.protobuf"), "--features",
                         str(data / "features.json"), "--config", str(cfg), "--out", str(tmp_path / "out"), *extra])
    return code, err.getvalue() + out.getvalue()


@pytest.mark.slow
def test_cli_tune_end_to_end(tmp_path, prepared):
    code, text = _run_config_with_data(tmp_path, prepared, BASE, "--test", str(prepared / "test.protobuf"))
    assert code == 0, text
    with open(tmp_path / "out" / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["TrainingJobStatus"] == "Completed" for r in rows)
    best = json.loads((tmp_path / "out" / "best" / "hyperparameters.json").read_text())
    assert f"best: {min(rows, key=lambda r: -float(r['FinalObjectiveValue']))['TrainingJobName']}" in text
    assert best["predictor_type"] == "binary_classifier" and set(best) >= {"factors_lr", "epochs", "_local_optimizer"}
