"""``tuning.json``: the CreateHyperParameterTuningJob request body, parsed into dataclasses.

A local tune reads the same JSON a user sends to SageMaker (see
/work/shared/specs/sagemaker-tuning.md), so a recipe tried here is submitted unchanged.
Everything is validated before any training starts, with SageMaker's own rules where the
API states them (Grid only with categorical ranges, Logarithmic needs MinValue > 0,
ReverseLogarithmic is continuous only with 0 <= MinValue < MaxValue < 1, StrategyConfig
only for Hyperband) and the FM hyperparameter table for names and values. Every error
names the JSON path of the offending field (``HyperParameterTuningJobConfig.ParameterRanges
.ContinuousParameterRanges[0].MinValue``); unknown fields are not errors (the real request
has many we do not read) but come back as warnings naming their path.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import LocalFMError
from ...fm.hyperparameters import FM_HYPERPARAMETERS, parse_fm
from ...hyperparams import HP
from ...io.jsonfile import read_json

STRATEGIES = ("Bayesian", "Random", "Grid", "Hyperband")
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
EARLY_STOPPING = ("Off", "Auto")

#: The FM metrics SageMaker accepts as tuning objectives: (direction, predictor_type,
#: name of the metric in localfm.fm.metrics). ``binary_f_beta`` is the container's F1
#: (beta = 1), logged as ``binary_f_1.000``.
CLOUD_OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "test:rmse": ("Minimize", "regressor", "rmse"),
    "test:binary_classification_accuracy": ("Maximize", "binary_classifier", "binary_classification_accuracy"),
    "test:binary_classification_cross_entropy": ("Minimize", "binary_classifier",
                                                 "binary_classification_cross_entropy"),
    "test:binary_f_beta": ("Maximize", "binary_classifier", "binary_f_1.000"),
}
#: LOCAL-ONLY ranking objectives (the cloud has none): ``validation:ndcg@10`` ...
RANKING_OBJECTIVE = re.compile(r"^validation:(ndcg|recall|map)@([1-9][0-9]*)$")

#: Hyperparameters the cloud lets a tuning job vary for FM (the spec's list). Others from the
#: FM table may be tuned locally (num_factors, ``_local_*``), with a warning.
CLOUD_TUNABLE = frozenset(
    [f"{g}_{p}" for g in ("bias", "linear", "factors") for p in ("init_scale", "init_sigma", "init_value", "lr", "wd")]
    + ["epochs", "mini_batch_size"]
)
#: Fixed by the data or the task, never searched.
NOT_TUNABLE = frozenset(["feature_dim", "predictor_type"])

_FM_TABLE: dict[str, HP] = {hp.name: hp for hp in FM_HYPERPARAMETERS}

_CFG = "HyperParameterTuningJobConfig"


@dataclass(frozen=True)
class ParameterRange:
    """One searched hyperparameter. ``kind``: continuous, integer or categorical."""

    name: str
    kind: str
    min_value: float | None = None
    max_value: float | None = None
    scaling: str = "Linear"  # resolved: Linear, Logarithmic or ReverseLogarithmic (never Auto)
    values: tuple[str, ...] = ()
    path: str = ""  # JSON path, for messages


@dataclass(frozen=True)
class Objective:
    type: str  # Maximize / Minimize
    metric_name: str

    @property
    def maximize(self) -> bool:
        return self.type == "Maximize"

    @property
    def is_ranking(self) -> bool:
        return RANKING_OBJECTIVE.match(self.metric_name) is not None

    @property
    def ranking(self) -> tuple[str, int]:
        """(metric, K) of a ranking objective: ``validation:ndcg@10`` → ("ndcg", 10)."""
        m = RANKING_OBJECTIVE.match(self.metric_name)
        assert m is not None
        return m.group(1), int(m.group(2))

    @property
    def fm_metric(self) -> str:
        """The localfm.fm.metrics name of a cloud objective."""
        return CLOUD_OBJECTIVES[self.metric_name][2]


@dataclass(frozen=True)
class TuningConfig:
    strategy: str
    objective: Objective
    max_jobs: int
    max_parallel: int
    ranges: tuple[ParameterRange, ...]
    static: dict[str, str]
    early_stopping: str = "Off"
    random_seed: int | None = None
    max_runtime_seconds: int | None = None
    target_value: float | None = None
    min_resource: int | None = None
    max_resource: int | None = None
    job_name: str | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def predictor_type(self) -> str:
        return self.static.get("predictor_type", "")

    def hyperparameters(self, tuned: dict[str, Any]) -> dict[str, str]:
        """Static + tuned, every value a string: what a SageMaker training job receives."""
        out = dict(self.static)
        for r in self.ranges:
            out[r.name] = format_value(tuned[r.name])
        return out


def format_value(value: Any) -> str:
    """SageMaker's string form: ints without a point, floats by repr (round-trips exactly)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Walks the JSON object, collecting unknown-field warnings with their paths."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def obj(self, value: Any, path: str, known: tuple[str, ...], *, required: bool = True) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise LocalFMError(f"{path}: expected a JSON object")
        for key in value:
            if key not in known:
                self.warnings.append(f"{path}.{key}: unknown field, ignored" if path else f"{key}: unknown field, ignored")
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _require(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise LocalFMError(f"{_join(path, key)}: required field is missing")
    return obj[key]


def _int(value: Any, path: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LocalFMError(f"{path}: expected an integer >= {low}, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise LocalFMError(f"{path}: expected an integer >= {low}, got {value!r}") from None
    if n < low:
        raise LocalFMError(f"{path}: expected an integer >= {low}, got {value!r}")
    return n


def _number(value: Any, path: str) -> float:
    """A MinValue/MaxValue: a string in SageMaker (numbers accepted too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LocalFMError(f"{path}: expected a number as a string, got {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise LocalFMError(f"{path}: expected a number as a string, got {value!r}") from None
    if not math.isfinite(x):
        raise LocalFMError(f"{path}: expected a finite number, got {value!r}")
    return x


def _choice(value: Any, path: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise LocalFMError(f"{path}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _check_name(name: Any, path: str, warnings: list[str]) -> HP:
    if not isinstance(name, str) or name not in _FM_TABLE:
        raise LocalFMError(f"{path}: {name!r} is not a factorization-machines hyperparameter")
    if name in NOT_TUNABLE:
        raise LocalFMError(f"{path}: {name!r} is fixed by the data/task and cannot be tuned")
    if name not in CLOUD_TUNABLE:
        warnings.append(f"{path}: {name!r} is tunable locally but SageMaker does not accept it in a tuning job")
    return _FM_TABLE[name]


def _in_table(hp: HP, value: Any, path: str) -> Any:
    try:
        return hp.convert(value)
    except LocalFMError as exc:
        raise LocalFMError(f"{path}: {exc}") from None


def _auto_scaling(low: float, high: float) -> str:
    """SageMaker's Auto picks log scaling "when the choice is clear from the range";
    here: a positive range spanning at least two decades is searched on a log scale."""
    return "Logarithmic" if low > 0 and high / low >= 100 else "Linear"


def _numeric_range(item: Any, path: str, kind: str, rd: _Reader) -> ParameterRange:
    item = rd.obj(item, path, ("Name", "MinValue", "MaxValue", "ScalingType"))
    hp = _check_name(_require(item, "Name", path), f"{path}.Name", rd.warnings)
    want = "float" if kind == "continuous" else "int"
    if hp.kind != want:
        other = "IntegerParameterRanges" if hp.kind == "int" else "ContinuousParameterRanges"
        if hp.kind not in ("int", "float"):
            other = "CategoricalParameterRanges"
        raise LocalFMError(f"{path}.Name: {hp.name!r} is a {hp.kind} hyperparameter; put it in {other}")
    lo_path, hi_path = f"{path}.MinValue", f"{path}.MaxValue"
    low = _number(_require(item, "MinValue", path), lo_path)
    high = _number(_require(item, "MaxValue", path), hi_path)
    if kind == "integer":
        for v, p in ((low, lo_path), (high, hi_path)):
            if not float(v).is_integer():
                raise LocalFMError(f"{p}: expected an integer, got {item[p.rsplit('.', 1)[1]]!r}")
        low, high = int(low), int(high)
    _in_table(hp, low, lo_path)
    _in_table(hp, high, hi_path)
    if low > high:
        raise LocalFMError(f"{lo_path}: MinValue {low!r} is greater than MaxValue {high!r}")
    scaling = _choice(item.get("ScalingType", "Auto"), f"{path}.ScalingType", SCALINGS)
    if scaling == "Auto":
        scaling = _auto_scaling(low, high)
    if scaling == "Logarithmic" and low <= 0:
        raise LocalFMError(f"{lo_path}: ScalingType Logarithmic needs MinValue > 0, got {low!r}")
    if scaling == "ReverseLogarithmic":
        if kind != "continuous":
            raise LocalFMError(f"{path}.ScalingType: ReverseLogarithmic applies to continuous ranges only")
        if not (0 <= low < high < 1):
            raise LocalFMError(
                f"{path}.ScalingType: ReverseLogarithmic needs 0 <= MinValue < MaxValue < 1, got [{low!r}, {high!r}]"
            )
    return ParameterRange(hp.name, kind, low, high, scaling, path=path)


def _categorical_range(item: Any, path: str, rd: _Reader) -> ParameterRange:
    item = rd.obj(item, path, ("Name", "Values"))
    hp = _check_name(_require(item, "Name", path), f"{path}.Name", rd.warnings)
    values = _require(item, "Values", path)
    if not isinstance(values, list) or not values:
        raise LocalFMError(f"{path}.Values: expected a non-empty list of strings")
    out: list[str] = []
    for i, v in enumerate(values):
        vp = f"{path}.Values[{i}]"
        if not isinstance(v, str):
            raise LocalFMError(f"{vp}: expected a string, got {v!r}")
        _in_table(hp, v, vp)
        if v in out:
            raise LocalFMError(f"{vp}: duplicate value {v!r}")
        out.append(v)
    return ParameterRange(hp.name, "categorical", values=tuple(out), path=path)


def _ranges(block: Any, rd: _Reader) -> tuple[ParameterRange, ...]:
    path = f"{_CFG}.ParameterRanges"
    kinds = {"ContinuousParameterRanges": "continuous", "IntegerParameterRanges": "integer",
             "CategoricalParameterRanges": "categorical"}
    block = rd.obj(block, path, tuple(kinds))
    out: list[ParameterRange] = []
    seen: dict[str, str] = {}
    for key, kind in kinds.items():
        items = block.get(key, [])
        if not isinstance(items, list):
            raise LocalFMError(f"{path}.{key}: expected a list")
        for i, item in enumerate(items):
            ip = f"{path}.{key}[{i}]"
            r = _categorical_range(item, ip, rd) if kind == "categorical" else _numeric_range(item, ip, kind, rd)
            if r.name in seen:
                raise LocalFMError(f"{ip}.Name: {r.name!r} is already searched by {seen[r.name]}")
            seen[r.name] = ip
            out.append(r)
    if not out:
        raise LocalFMError(f"{path}: expected at least one parameter range")
    return tuple(out)


def _objective(block: Any, rd: _Reader) -> Objective:
    path = f"{_CFG}.HyperParameterTuningJobObjective"
    block = rd.obj(block, path, ("Type", "MetricName"))
    typ = _choice(_require(block, "Type", path), f"{path}.Type", ("Maximize", "Minimize"))
    name = _require(block, "MetricName", path)
    if isinstance(name, str) and name in CLOUD_OBJECTIVES:
        want = CLOUD_OBJECTIVES[name][0]
    elif isinstance(name, str) and RANKING_OBJECTIVE.match(name):
        want = "Maximize"
    else:
        raise LocalFMError(
            f"{path}.MetricName: expected one of {', '.join(CLOUD_OBJECTIVES)} or (local-only) "
            f"validation:ndcg@K, validation:recall@K, validation:map@K, got {name!r}"
        )
    if typ != want:
        raise LocalFMError(f"{path}.Type: {name} is to be {want}d, got {typ!r}")
    return Objective(typ, name)


def parse_tuning_config(data: Any, *, where: str = "tuning.json") -> TuningConfig:
    """Validate a CreateHyperParameterTuningJob body (a dict) into a :class:`TuningConfig`.

    ``where`` prefixes every error message (the file name), so the user sees
    ``tuning.json: HyperParameterTuningJobConfig.Strategy: expected one of ...``.
    """
    try:
        return _parse(data)
    except LocalFMError as exc:
        raise LocalFMError(f"{where}: {exc}") from None


def _parse(data: Any) -> TuningConfig:
    rd = _Reader()
    top = rd.obj(data, "", (_CFG, "TrainingJobDefinition", "HyperParameterTuningJobName", "Tags",
                            "WarmStartConfig", "TrainingJobDefinitions", "Autotune"))
    cfg = rd.obj(_require(top, _CFG, ""), _CFG, (
        "Strategy", "StrategyConfig", "HyperParameterTuningJobObjective", "ResourceLimits", "ParameterRanges",
        "TrainingJobEarlyStoppingType", "RandomSeed", "TuningJobCompletionCriteria"))
    strategy = _choice(_require(cfg, "Strategy", _CFG), f"{_CFG}.Strategy", STRATEGIES)
    objective = _objective(_require(cfg, "HyperParameterTuningJobObjective", _CFG), rd)

    lpath = f"{_CFG}.ResourceLimits"
    limits = rd.obj(cfg.get("ResourceLimits"), lpath,
                    ("MaxNumberOfTrainingJobs", "MaxParallelTrainingJobs", "MaxRuntimeInSeconds"),
                    required=strategy != "Grid")
    max_jobs = None
    if "MaxNumberOfTrainingJobs" in limits:
        max_jobs = _int(limits["MaxNumberOfTrainingJobs"], f"{lpath}.MaxNumberOfTrainingJobs", low=1)
    elif strategy != "Grid":
        raise LocalFMError(f"{lpath}.MaxNumberOfTrainingJobs: required field is missing")
    max_parallel = _int(limits.get("MaxParallelTrainingJobs", 1), f"{lpath}.MaxParallelTrainingJobs", low=1)
    runtime = None
    if "MaxRuntimeInSeconds" in limits:
        runtime = _int(limits["MaxRuntimeInSeconds"], f"{lpath}.MaxRuntimeInSeconds", low=1)

    ranges = _ranges(_require(cfg, "ParameterRanges", _CFG), rd)
    if strategy == "Grid":
        bad = next((r for r in ranges if r.kind != "categorical"), None)
        if bad is not None:
            raise LocalFMError(f"{bad.path}: Strategy Grid accepts only CategoricalParameterRanges")
        size = math.prod(len(r.values) for r in ranges)
        max_jobs = size if max_jobs is None else min(max_jobs, size)

    early = _choice(cfg.get("TrainingJobEarlyStoppingType", "Off"), f"{_CFG}.TrainingJobEarlyStoppingType",
                    EARLY_STOPPING)
    if strategy == "Hyperband" and early != "Off":
        raise LocalFMError(f"{_CFG}.TrainingJobEarlyStoppingType: must be Off with Strategy Hyperband "
                           "(Hyperband has its own early stopping)")
    if strategy == "Grid" and early != "Off":
        raise LocalFMError(f"{_CFG}.TrainingJobEarlyStoppingType: must be Off with Strategy Grid")
    seed = None
    if "RandomSeed" in cfg:
        seed = _int(cfg["RandomSeed"], f"{_CFG}.RandomSeed", low=0)

    min_res = max_res = None
    spath = f"{_CFG}.StrategyConfig"
    if "StrategyConfig" in cfg:
        if strategy != "Hyperband":
            raise LocalFMError(f"{spath}: applies to Strategy Hyperband only (Strategy is {strategy})")
        sc = rd.obj(cfg["StrategyConfig"], spath, ("HyperbandStrategyConfig",))
        hpath = f"{spath}.HyperbandStrategyConfig"
        hb = rd.obj(sc.get("HyperbandStrategyConfig", {}), hpath, ("MinResource", "MaxResource"))
        if "MinResource" in hb:
            min_res = _int(hb["MinResource"], f"{hpath}.MinResource", low=1)
        if "MaxResource" in hb:
            max_res = _int(hb["MaxResource"], f"{hpath}.MaxResource", low=1)
        if min_res is not None and max_res is not None and min_res > max_res:
            raise LocalFMError(f"{hpath}.MinResource: {min_res} is greater than MaxResource {max_res}")

    target = None
    if "TuningJobCompletionCriteria" in cfg:
        cpath = f"{_CFG}.TuningJobCompletionCriteria"
        cc = rd.obj(cfg["TuningJobCompletionCriteria"], cpath,
                    ("TargetObjectiveMetricValue", "BestObjectiveNotImproving", "ConvergenceDetected"))
        if "TargetObjectiveMetricValue" in cc:
            target = _number(cc["TargetObjectiveMetricValue"], f"{cpath}.TargetObjectiveMetricValue")

    static = _static(top, ranges, objective, rd)
    if strategy == "Hyperband":
        # The resource is epochs: a searched epochs range would fight the schedule.
        for r in ranges:
            if r.name == "epochs":
                raise LocalFMError(f"{r.path}.Name: with Strategy Hyperband the epochs are the resource "
                                   "(StrategyConfig.HyperbandStrategyConfig.MaxResource), not a searched range")
    name = top.get("HyperParameterTuningJobName")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}", name)):
        raise LocalFMError(f"HyperParameterTuningJobName: expected 1-32 letters, digits or hyphens, got {name!r}")
    return TuningConfig(
        strategy=strategy, objective=objective, max_jobs=int(max_jobs), max_parallel=max_parallel,
        ranges=ranges, static=static, early_stopping=early, random_seed=seed, max_runtime_seconds=runtime,
        target_value=target, min_resource=min_res, max_resource=max_res, job_name=name,
        warnings=tuple(rd.warnings),
    )


def _static(top: dict[str, Any], ranges: tuple[ParameterRange, ...], objective: Objective, rd: _Reader) -> dict[str, str]:
    path = "TrainingJobDefinition"
    tjd = top.get(path)
    if tjd is None:
        raise LocalFMError(f"{path}.StaticHyperParameters: required field is missing")
    # the real TrainingJobDefinition has many fields about containers and instances; only
    # the hyperparameters matter locally, so the others are ignored without a warning each
    if not isinstance(tjd, dict):
        raise LocalFMError(f"{path}: expected a JSON object")
    spath = f"{path}.StaticHyperParameters"
    static = _require(tjd, "StaticHyperParameters", path)
    if not isinstance(static, dict):
        raise LocalFMError(f"{spath}: expected a JSON object of name -> string value")
    out: dict[str, str] = {}
    for name, value in static.items():
        if not isinstance(value, str):
            raise LocalFMError(f"{spath}.{name}: expected a string value (SageMaker passes strings), got {value!r}")
        if any(r.name == name for r in ranges):
            raise LocalFMError(f"{spath}.{name}: also searched in ParameterRanges; a hyperparameter is static or tuned")
        out[name] = value
    # Validate static + each range's lowest value together, so a bad static value and a
    # missing required hyperparameter fail now, not in the first trial.
    probe = dict(out)
    for r in ranges:
        probe[r.name] = r.values[0] if r.kind == "categorical" else format_value(r.min_value)
    try:
        hp = parse_fm(probe)
    except LocalFMError as exc:
        raise LocalFMError(f"{spath}: {exc}") from None
    want = CLOUD_OBJECTIVES.get(objective.metric_name, (None, None))[1]
    if want is not None and hp["predictor_type"] != want:
        raise LocalFMError(
            f"{_CFG}.HyperParameterTuningJobObjective.MetricName: {objective.metric_name} needs "
            f"predictor_type={want}, the static hyperparameters say {hp['predictor_type']}"
        )
    return out


def load_tuning_config(path: str | Path) -> TuningConfig:
    """Read and validate ``tuning.json``; errors name the file and the field path."""
    data = read_json(path, what="tuning config", expect_object=True)
    return parse_tuning_config(data, where=str(path))
