"""``localfm tune``: a local twin of SageMaker Automatic Model Tuning (see docs/tuning.md).

- :mod:`.config`: tuning.json (the CreateHyperParameterTuningJob body) → :class:`TuningConfig`;
- :mod:`.holdout`: the seeded per-user holdout behind the local ranking objectives;
- :mod:`.trial`: one training job, run in a worker process;
- :mod:`.runner`: the optuna study in SQLite, the worker pool (or Ray tasks, :mod:`localfm.scale.tune`), resume after a kill;
- :mod:`.outputs`: trials.csv/parquet, best/, objective.png.
"""
from __future__ import annotations

from .config import TuningConfig, load_tuning_config, parse_tuning_config
from .runner import TuneInputs, TuneResult, tune

__all__ = ["TuneInputs", "TuneResult", "TuningConfig", "load_tuning_config", "parse_tuning_config", "tune"]
