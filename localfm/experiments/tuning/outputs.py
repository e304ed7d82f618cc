"""What a tune leaves in DIR: the analytics table, the best job, the objective plot.

``trials.csv`` / ``trials.parquet`` have the columns of the SageMaker SDK's
``HyperparameterTuningJobAnalytics(name).dataframe()`` (one column per tuned
hyperparameter, then TrainingJobName, TrainingJobStatus, FinalObjectiveValue,
TrainingStartTime, TrainingEndTime, TrainingElapsedTimeSeconds), so a notebook that
reads a cloud tuning job reads a local one the same way. ``best/hyperparameters.json``
holds static + tuned values as strings: submittable as is to a training job.
All files land together (io.atomic), rewritten from the study after every run.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from ...errors import LocalFMError
from ...io.atomic import atomic_outputs
from ...plotting import pyplot, save_png
from .config import TuningConfig

FIXED_COLUMNS = ("TrainingJobName", "TrainingJobStatus", "FinalObjectiveValue", "TrainingStartTime",
                 "TrainingEndTime", "TrainingElapsedTimeSeconds")
STATUS = {"COMPLETE": "Completed", "PRUNED": "Stopped", "FAIL": "Failed"}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="seconds")


def rows(config: TuningConfig, trials: list[Any], job: str) -> list[dict[str, Any]]:
    """One analytics row per counted trial, in the order the jobs ran."""
    from .runner import training_job_name, tuned_values

    out = []
    for index, t in enumerate(sorted(trials, key=lambda t: t.number), start=1):
        values = tuned_values(config, t.params)
        start, end = t.user_attrs.get("start"), t.user_attrs.get("end")
        row: dict[str, Any] = {r.name: values[r.name] for r in config.ranges}
        row.update({
            "TrainingJobName": training_job_name(job, index, t.number),
            "TrainingJobStatus": STATUS[t.state.name],
            "FinalObjectiveValue": t.user_attrs.get("objective"),
            "TrainingStartTime": _iso(start),
            "TrainingEndTime": _iso(end),
            "TrainingElapsedTimeSeconds": None if start is None or end is None else round(end - start, 3),
        })
        row["_number"] = t.number
        out.append(row)
    return out


def best_row(config: TuningConfig, table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best Completed job (early-stopped jobs trained fewer epochs and are not candidates)."""
    done = [r for r in table if r["TrainingJobStatus"] == "Completed" and r["FinalObjectiveValue"] is not None]
    if not done:
        return None
    sign = -1.0 if config.objective.maximize else 1.0
    return min(done, key=lambda r: (sign * r["FinalObjectiveValue"], r["_number"]))


def _write_csv(path: Path, columns: list[str], table: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in table:
            w.writerow(["" if r[c] is None else r[c] for c in columns])


def _write_parquet(path: Path, config: TuningConfig, columns: list[str], table: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {r.name: pa.string() if r.kind == "categorical" else pa.int64() if r.kind == "integer" else pa.float64()
             for r in config.ranges}
    types.update({"TrainingJobName": pa.string(), "TrainingJobStatus": pa.string(),
                  "FinalObjectiveValue": pa.float64(), "TrainingStartTime": pa.string(),
                  "TrainingEndTime": pa.string(), "TrainingElapsedTimeSeconds": pa.float64()})
    arrays = [pa.array([r[c] for r in table], type=types[c]) for c in columns]
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), path)


def _plot(path: Path, config: TuningConfig, table: list[dict[str, Any]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    sign = 1.0 if config.objective.maximize else -1.0
    for status, marker in (("Completed", "o"), ("Stopped", "x")):
        pts = [(i, r["FinalObjectiveValue"]) for i, r in enumerate(table, start=1)
               if r["TrainingJobStatus"] == status and r["FinalObjectiveValue"] is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=f"{status} job", alpha=0.8)
    best, xs, ys = None, [], []
    for i, r in enumerate(table, start=1):
        v = r["FinalObjectiveValue"]
        if r["TrainingJobStatus"] == "Completed" and v is not None and (best is None or sign * v > sign * best):
            best = v
        if best is not None:
            xs.append(i)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", label="best so far")
    local = " (localfm-only objective)" if config.objective.is_ranking else ""
    ax.set_xlabel("training job")
    ax.set_ylabel(config.objective.metric_name)
    ax.set_title(f"{config.strategy} tuning: {config.objective.type} {config.objective.metric_name}{local}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no completed or stopped job: nothing to label
        ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def write_outputs(config: TuningConfig, study: Any, trials: list[Any], out_dir: Path, job: str) -> dict[str, Any] | None:
    """Write every output from the study's counted trials; return the best job (or None)."""
    table = rows(config, trials, job)
    columns = [r.name for r in config.ranges] + list(FIXED_COLUMNS)
    best = best_row(config, table)
    best_doc = None
    with atomic_outputs() as out:
        _write_csv(out.path(out_dir / "trials.csv"), columns, table)
        _write_parquet(out.path(out_dir / "trials.parquet"), config, columns, table)
        _plot(out.path(out_dir / "objective.png"), config, table)
        if best is not None:
            t = next(t for t in trials if t.number == best["_number"])
            from .runner import epochs_of, tuned_values

            hps = config.hyperparameters(tuned_values(config, t.params))
            if config.strategy == "Hyperband":
                hps["epochs"] = str(epochs_of(config))
            model = out_dir / "trials" / str(t.number) / "model.tar.gz"
            if not model.is_file():
                raise LocalFMError(f"{model}: the best job's model is missing; rerun the tune in a new folder")
            shutil.copyfile(model, out.path(out_dir / "best" / "model.tar.gz"))
            with open(out.path(out_dir / "best" / "hyperparameters.json"), "w", encoding="utf-8") as fh:
                json.dump(hps, fh, indent=1, sort_keys=True)
            best_doc = {
                "TrainingJobName": best["TrainingJobName"],
                "FinalObjectiveValue": best["FinalObjectiveValue"],
                "MetricName": config.objective.metric_name,
                "hyperparameters": hps,
            }
            with open(out.path(out_dir / "best" / "objective.json"), "w", encoding="utf-8") as fh:
                json.dump(best_doc, fh, indent=1)
    return best_doc

