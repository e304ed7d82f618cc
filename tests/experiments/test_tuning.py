"""``localfm.experiments.tuning``: scaling, holdout, each strategy on tiny data, the documented outputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from localfm.cli import main as cli_main
from localfm.data.features import FeatureSpace
from localfm.experiments.tuning import TuneInputs, parse_tuning_config, tune
from localfm.experiments.tuning import holdout as ho
from localfm.experiments.tuning.outputs import FIXED_COLUMNS
from localfm.experiments.tuning.runner import _distributions, tuned_values
from localfm.io.channels import read_channel
from localfm.fm.hyperparameters import parse_fm

CFG = "HyperParameterTuningJobConfig"


def body(strategy: str = "Random", *, metric: str = "test:binary_classification_accuracy", jobs: int = 3,
         parallel: int = 1, ranges: dict | None = None, static: dict | None = None, **extra) -> dict:
    doc = {
        CFG: {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {
                "Type": "Minimize" if metric.endswith("cross_entropy") else "Maximize", "MetricName": metric},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges or {
                "ContinuousParameterRanges": [
                    {"Name": "factors_lr", "MinValue": "0.0001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}],
                "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "3"}],
            },
            "RandomSeed": 7,
            **extra,
        },
        "TrainingJobDefinition": {"StaticHyperParameters": {
            "feature_dim": "700", "num_factors": "4", "predictor_type": "binary_classifier",
            "mini_batch_size": "500", **(static or {})}},
    }
    return doc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The embedded synthetic MovieLens as implicit feedback (17k positives, 4 negatives each)."""
    out = tmp_path_factory.mktemp("tuning") / "data"
    assert cli_main(["--quiet", "prepare", "movielens", "--split", "ua", "--label", "implicit", "--negatives", "4",
                     "--out", str(out)]) == 0
    return out


def inputs(data: Path, *, test: bool = True) -> TuneInputs:
    return TuneInputs(train=str(data / "train.protobuf"), features=str(data / "features.json"),
                      test=str(data / "test.protobuf") if test else None)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ scaling (no training)


def _sample(config, n: int = 400) -> dict[str, np.ndarray]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    dists = _distributions(config)
    out: dict[str, list] = {r.name: [] for r in config.ranges}
    for _ in range(n):
        t = study.ask(dists)
        for k, v in tuned_values(config, t.params).items():
            out[k].append(v)
        study.tell(t, 0.0)
    return {k: np.asarray(v) for k, v in out.items()}


def test_reverse_logarithmic_is_one_minus_loguniform():
    cfg = parse_tuning_config(body(ranges={"ContinuousParameterRanges": [
        {"Name": "factors_init_sigma", "MinValue": "0.0", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"}]}))
    x = _sample(cfg)["factors_init_sigma"]
    assert x.min() >= 0.0 and x.max() <= 0.999
    # 1 - x is log-uniform on [0.001, 1]: half of the draws have 1 - x below sqrt(0.001)
    assert 0.4 < np.mean(1 - x < np.sqrt(0.001)) < 0.6


def test_log_and_auto_scaling():
    cfg = parse_tuning_config(body(ranges={"ContinuousParameterRanges": [
        {"Name": "factors_lr", "MinValue": "0.00001", "MaxValue": "0.1", "ScalingType": "Auto"},
        {"Name": "linear_lr", "MinValue": "0.001", "MaxValue": "0.002", "ScalingType": "Auto"}]}))
    assert [r.scaling for r in cfg.ranges] == ["Logarithmic", "Linear"]
    x = _sample(cfg)["factors_lr"]
    assert 0.4 < np.mean(x < 1e-3) < 0.6  # the geometric middle of [1e-5, 1e-1]


# ------------------------------------------------------------------ holdout (no training)


def test_holdout_is_seeded_drops_held_pairs_and_never_touches_test(data):
    space = FeatureSpace.load(data / "features.json")
    X, y = read_channel(str(data / "train.protobuf"), need_labels=True)
    h1 = ho.carve(X, y, space, predictor_type="binary_classifier", fraction=0.2, seed=3)
    h2 = ho.carve(X, y, space, predictor_type="binary_classifier", fraction=0.2, seed=3)
    assert np.array_equal(h1.held_pairs, h2.held_pairs) and np.array_equal(h1.keep, h2.keep)
    users, items = ho.decode_rows(X, space)
    n_items = len(space.item_ids)
    key = users * n_items + items
    held = set((h1.held_pairs[:, 0] * n_items + h1.held_pairs[:, 1]).tolist())
    # held-out pairs are training positives; every row of them is dropped, nothing else is
    pos_keys = set(key[y > 0.5].tolist())
    assert held <= pos_keys
    assert np.array_equal(~h1.keep, np.isin(key, list(held)))
    # every user keeps at least one positive to learn from
    kept_pos_users = set(users[h1.keep & (y > 0.5)].tolist())
    assert set(h1.held_pairs[:, 0].tolist()) <= kept_pos_users
    # validation negatives are never a positive pair of their user
    vu, vi = ho.decode_rows(h1.val_rows, space)
    neg = h1.val_labels == 0
    assert neg.sum() == 4 * len(h1.held_pairs)
    assert not np.isin(vu[neg] * n_items + vi[neg], key[y > 0.5]).any()
    # the test split plays no part: held-out pairs are not test pairs
    import pyarrow.parquet as pq

    test = pq.read_table(data / "test_interactions.parquet")
    tk = space.user_index(test.column("user_id").to_numpy()) * n_items + space.item_index(test.column("item_id").to_numpy())
    assert not np.isin(list(held), tk).any()
    assert not np.array_equal(h1.held_pairs, ho.carve(X, y, space, predictor_type="binary_classifier",
                                                      fraction=0.2, seed=4).held_pairs)


@pytest.mark.parametrize("pool", ["unrated", "train-unrated"])
def test_resample_inputs_never_train_or_sample_held_pairs(data, tmp_path, pool):
    import pyarrow.parquet as pq

    from localfm.data.negatives import epoch_sampler

    if pool != "train-unrated":  # the fixture's data uses the default pool
        data = tmp_path / "data"
        assert cli_main(["--quiet", "prepare", "movielens", "--split", "ua", "--label", "implicit", "--negatives",
                         "4", "--negative-pool", pool, "--out", str(data)]) == 0
    space = FeatureSpace.load(data / "features.json")
    X, y = read_channel(str(data / "train.protobuf"), need_labels=True)
    h = ho.carve(X, y, space, predictor_type="binary_classifier", fraction=0.1, seed=0)
    feats = ho.write_resample_inputs(h, space, data / "features.json", tmp_path)
    n_items = len(space.item_ids)
    held = h.held_pairs[:, 0] * n_items + h.held_pairs[:, 1]
    t = pq.read_table(feats.parent / "train_interactions.parquet")
    kept = space.user_index(t.column("user_id").to_numpy()) * n_items + space.item_index(t.column("item_id").to_numpy())
    assert not np.isin(held, kept).any()
    assert len(kept) == pq.read_table(data / "train_interactions.parquet").num_rows - len(held)
    # what the trials train on in later epochs: never a held-out pair as a positive, but
    # held-out items stay eligible as negatives whatever the pool (no "never a negative" tell)
    epoch_data, _ = epoch_sampler(feats)
    negatives_hit = 0
    for epoch in (1, 2, 3):
        Xe, ye = epoch_data(epoch)
        u, i = ho.decode_rows(Xe, space)
        assert not np.isin(u[ye > 0.5] * n_items + i[ye > 0.5], held).any()
        negatives_hit += int(np.isin(u[ye < 0.5] * n_items + i[ye < 0.5], held).sum())
        assert ye.sum() == len(kept)
    assert negatives_hit > 0


# ------------------------------------------------------------------ strategies (train tiny models)


def _check_outputs(out: Path, config_doc: dict, jobs: int) -> list[dict[str, str]]:
    cfg = parse_tuning_config(config_doc)
    tuned = [r.name for r in cfg.ranges]
    rows = read_csv(out / "trials.csv")
    with open(out / "trials.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == tuned + list(FIXED_COLUMNS)
    import pyarrow.parquet as pq

    assert pq.read_table(out / "trials.parquet").column_names == header
    assert pq.read_table(out / "trials.parquet").num_rows == jobs == len(rows)
    names = [r["TrainingJobName"] for r in rows]
    assert len(set(names)) == jobs and all(n.startswith(f"{out.name}-") for n in names)
    assert (out / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((out / "best" / "hyperparameters.json").read_text())
    assert all(isinstance(v, str) for v in best.values())
    parsed = parse_fm(best)  # submittable: the FM table accepts it as is
    assert parsed["feature_dim"] == 700
    done = [r for r in rows if r["TrainingJobStatus"] == "Completed"]
    sign = -1 if cfg.objective.maximize else 1
    top = min(done, key=lambda r: sign * float(r["FinalObjectiveValue"]))
    for name in tuned:
        assert parse_fm({**best, name: top[name]})[name] == parsed[name]
    from localfm.io.artifacts import load_fm

    w = load_fm(str(out / "best" / "model.tar.gz"))
    assert w.V.shape == (700, parsed["num_factors"])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["Bayesian", "Random"])
def test_search_strategy_runs_and_writes_outputs(data, tmp_path, strategy):
    doc = body(strategy, jobs=3)
    res = tune(parse_tuning_config(doc), inputs(data), tmp_path / "job")
    rows = _check_outputs(tmp_path / "job", doc, 3)
    assert res.jobs == 3 and res.ran_now == 3 and not res.failures
    assert all(1e-4 <= float(r["factors_lr"]) <= 1e-2 and r["epochs"] in ("1", "2", "3") for r in rows)
    assert all(0 < float(r["FinalObjectiveValue"]) <= 1 and float(r["TrainingElapsedTimeSeconds"]) > 0 for r in rows)
    again = tune(parse_tuning_config(doc), inputs(data), tmp_path / "job")  # finished: nothing reruns
    assert again.ran_now == 0 and again.jobs == 3


@pytest.mark.slow
def test_grid_enumerates_every_combination_once(data, tmp_path):
    doc = body("Grid", ranges={"CategoricalParameterRanges": [
        {"Name": "factors_lr", "Values": ["0.001", "0.01"]}, {"Name": "epochs", "Values": ["1", "2"]}]})
    del doc[CFG]["ResourceLimits"]["MaxNumberOfTrainingJobs"]  # Grid needs none: the grid size
    tune(parse_tuning_config(doc), inputs(data), tmp_path / "grid")
    rows = _check_outputs(tmp_path / "grid", doc, 4)
    assert sorted((r["factors_lr"], r["epochs"]) for r in rows) == [
        ("0.001", "1"), ("0.001", "2"), ("0.01", "1"), ("0.01", "2")]


@pytest.mark.slow
def test_hyperband_prunes_on_per_epoch_values(data, tmp_path):
    import optuna

    doc = body("Hyperband", jobs=6, metric="test:binary_classification_cross_entropy",
               ranges={"ContinuousParameterRanges": [
                   {"Name": "factors_lr", "MinValue": "0.00001", "MaxValue": "0.01", "ScalingType": "Logarithmic"},
                   {"Name": "linear_lr", "MinValue": "0.00001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}]},
               StrategyConfig={"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}})
    tune(parse_tuning_config(doc), inputs(data), tmp_path / "hb")
    rows = _check_outputs(tmp_path / "hb", doc, 6)
    study = optuna.load_study(study_name="hb", storage=f"sqlite:///{tmp_path / 'hb' / 'study.db'}")
    trials = study.get_trials()
    # every job reported its per-epoch test cross-entropy, and Hyperband stopped some early
    assert all(t.intermediate_values for t in trials)
    stopped = [t for t in trials if t.state.name == "PRUNED"]
    assert stopped and all(len(t.intermediate_values) < 9 for t in stopped)
    assert {r["TrainingJobStatus"] for r in rows} == {"Completed", "Stopped"}
    assert json.loads((tmp_path / "hb" / "best" / "hyperparameters.json").read_text())["epochs"] == "9"


@pytest.mark.slow
def test_ranking_objective_on_the_training_holdout(data, tmp_path):
    doc = body("Random", jobs=2, metric="validation:ndcg@10", static={"_local_resample_negatives": "true"})
    res = tune(parse_tuning_config(doc), inputs(data, test=False), tmp_path / "rank")
    rows = _check_outputs(tmp_path / "rank", doc, 2)
    assert not res.failures
    values = [float(r["FinalObjectiveValue"]) for r in rows]
    assert all(0 < v <= 1 for v in values)
    # the objective is the protocol's NDCG@10 of the saved model on the saved holdout
    from localfm.experiments.protocol import load_protocol
    from localfm.experiments.tuning.trial import ranking_value

    hd = tmp_path / "rank" / "holdout"
    proto = load_protocol(data / "features.json", hd / ho.TRAIN_FILE, hd / ho.HELD_OUT_FILE, relevant_min_rating=1)
    best = max(values)
    assert ranking_value(str(tmp_path / "rank" / "best" / "model.tar.gz"), proto, "ndcg", 10) == pytest.approx(best)
