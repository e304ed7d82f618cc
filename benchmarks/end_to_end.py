"""End to end: prepare → train → top-100 for all users → SQLite, wall time and peak RSS by stage.

Every stage runs as its own process, exactly as a user would run it
(``python -m localfm prepare …``, ``python -m localfm train …``), so the times
include interpreter and torch start-up, reading and writing the files between
stages — what "end to end" means to a user. Peak RSS is the child's own
``ru_maxrss`` (``os.wait4``), i.e. per stage.

Pipelines:
- ml-100k with the cloud fixture's configuration (ua split, binary:4 labels,
  OneHotEncoder columns fitted on train, unseen test rows dropped, the job's five
  hyperparameters) at its 30 epochs and a 100-epoch variant;
- the synthetic ML-25M-shaped set (``synthetic_rows`` rows; random 10% test split),
  one epoch, k=64, batch 5000, then all-users top-100 with already-rated items
  excluded. Generating the synthetic Parquet is timed but not part of the total.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from localfm.progress import progress

from .data import SHARED, BenchConfig
from .machine import REPO, run_command

NAME = "end_to_end"
CLOUD = SHARED / "fixtures" / "cloud" / "ml100k-fm-binary-30ep"
# The hyperparameters the cloud job was given (its log line 2); the rest are container defaults.
GIVEN = ("feature_dim", "predictor_type", "num_factors", "epochs", "mini_batch_size")


def cloud_hyperparameters() -> dict[str, str]:
    """The cloud job's hyperparameters.json, from the fixture, or the README's values if absent."""
    path = CLOUD / "cloud-results.json"
    if path.is_file():
        final = json.loads(path.read_text())["hyperparameters_final"]
        return {k: str(final[k]) for k in GIVEN}
    return {"feature_dim": "2623", "predictor_type": "binary_classifier", "num_factors": "64",
            "epochs": "30", "mini_batch_size": "200"}


def _localfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "localfm", "--quiet", *args]


def recommend_argv(model: Path, data_dir: Path, k: int, db: Path) -> list[str]:
    """``localfm recommend``: exact top-k for every user, rated items excluded, into SQLite."""
    return _localfm("recommend", "--model", str(model), "--features", str(data_dir / "features.json"),
                    "--interactions", str(data_dir / "train_interactions.parquet"), "--exclude-seen",
                    "--k", str(k), "--out", str(db))


def _stage(name: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    res = run_command(argv, env={"LOCALFM_QUIET": "1"}, cwd=str(REPO))
    row = {"stage": name, **extra, **res}
    if res["returncode"] != 0:
        row["error"] = res["output_tail"][-600:]
    return row


def _sqlite_rows(db: Path) -> int | None:
    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("SELECT COUNT(*) FROM recommendations").fetchone()[0])
    except sqlite3.Error:
        return None


def _pipeline(name: str, stages: list[tuple[str, list[str], dict[str, Any]]], db: Path,
              uncounted: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "stages": []}
    for stage_name, argv, extra in stages:
        row = _stage(stage_name, argv, **extra)
        out["stages"].append(row)
        if row["returncode"] != 0:
            out["failed_at"] = stage_name
            break
    counted = [s for s in out["stages"] if s["stage"] not in uncounted]
    out["total_wall_s"] = sum(s["wall_s"] for s in counted)
    out["peak_rss_bytes"] = max((s["peak_rss_bytes"] for s in counted), default=None)
    out["sqlite_rows"] = _sqlite_rows(db) if db.is_file() else None
    out["ok"] = "failed_at" not in out
    return out


def ml100k_pipeline(cfg: BenchConfig, work: Path, epochs: int) -> dict[str, Any]:
    data = work / "ml100k"
    model_dir = work / f"model-{epochs}"
    db = work / f"recs-{epochs}.db"
    hp = cloud_hyperparameters()
    hp["epochs"] = str(epochs)
    hp_file = work / f"hp-{epochs}.json"
    hp_file.write_text(json.dumps(hp))
    rec = recommend_argv(model_dir / "model.tar.gz", data, cfg.retrieval_k, db)
    stages = [
        ("prepare", _localfm("prepare", "movielens", str(cfg.ml100k_dir), "--split", "ua", "--label", "binary:4",
                             "--columns", "train", "--drop-unseen", "--order", "file", "--out", str(data)), {}),
        ("train", _localfm("train", "--train", str(data / "train.protobuf"), "--test", str(data / "test.protobuf"),
                           "-o", str(model_dir), "--hyperparameters", str(hp_file), "--seed", "0",
                           "--quiet-log"), {"hyperparameters": hp}),
        (f"top-{cfg.retrieval_k} → SQLite", rec, {}),
    ]
    res = _pipeline(f"ml-100k ua, cloud config, {epochs} epochs", stages, db)
    metrics = model_dir / "metrics.json"
    if metrics.is_file():
        try:
            res["train_metrics_file"] = json.loads(metrics.read_text()).get("test_metrics")
        except (ValueError, AttributeError):
            pass
    return res


def large_pipeline(cfg: BenchConfig, work: Path) -> dict[str, Any]:
    data = work / "large"
    model_dir = work / "model-large"
    db = work / "recs-large.db"
    parquet = work / "synthetic.parquet"
    hp = {"feature_dim": "0", "predictor_type": "binary_classifier", "num_factors": "64", "epochs": "1",
          "mini_batch_size": "5000"}
    rec = recommend_argv(model_dir / "model.tar.gz", data, cfg.retrieval_k, db)
    stages: list[tuple[str, list[str], dict[str, Any]]] = [
        ("generate synthetic parquet (input, not counted)",
         [sys.executable, "-m", "benchmarks.stages", "synth", "--rows", str(cfg.synthetic_rows),
          "--users", str(cfg.synthetic_users), "--items", str(cfg.synthetic_items), "--seed", str(cfg.seed),
          "--out", str(parquet)], {}),
        ("prepare", _localfm("prepare", "interactions", str(parquet), "--user-col", "user_id", "--item-col", "item_id",
                             "--rating-col", "rating", "--timestamp-col", "timestamp", "--split", "random:0.1:0",
                             "--label", "binary:4", "--columns", "train", "--drop-unseen", "--out", str(data)), {}),
    ]
    out = _pipeline("prepare", stages, db, uncounted=(stages[0][0],))
    if not out["ok"]:
        out["name"] = f"synthetic {cfg.synthetic_users:,}×{cfg.synthetic_items:,}, {cfg.synthetic_rows:,} rows"
        return out
    feature_dim = json.loads((data / "features.json").read_text()).get("feature_dim")
    hp["feature_dim"] = str(feature_dim)
    hp_file = work / "hp-large.json"
    hp_file.write_text(json.dumps(hp))
    more = [
        ("train", _localfm("train", "--train", str(data / "train.protobuf"), "-o", str(model_dir),
                           "--hyperparameters", str(hp_file), "--seed", "0", "--quiet-log"), {"hyperparameters": hp}),
        (f"top-{cfg.retrieval_k} → SQLite", rec, {}),
    ]
    rest = _pipeline("rest", more, db)
    stages_all = out["stages"] + rest["stages"]
    counted = stages_all[1:]
    return {
        "name": f"synthetic {cfg.synthetic_users:,}×{cfg.synthetic_items:,}, {cfg.synthetic_rows:,} rows, 1 epoch",
        "stages": stages_all,
        "total_wall_s": sum(s["wall_s"] for s in counted),
        "peak_rss_bytes": max(s["peak_rss_bytes"] for s in counted),
        "sqlite_rows": rest["sqlite_rows"],
        "ok": rest["ok"],
        **({"failed_at": rest["failed_at"]} if "failed_at" in rest else {}),
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    payload: dict[str, Any] = {"quick": cfg.quick, "mode": cfg.mode, "notes": [], "pipelines": []}
    work = Path(tempfile.mkdtemp(prefix="localfm-bench-e2e-"))
    try:
        jobs: list[tuple[str, Any]] = []
        if cfg.has_ml100k:
            jobs += [(f"ml100k-{e}", lambda e=e: ml100k_pipeline(cfg, work, e)) for e in cfg.e2e_epochs]
        else:
            payload["notes"].append(f"MovieLens 100k not found at {cfg.ml100k_dir}: ml-100k pipelines skipped")
        if cfg.large_e2e:
            jobs.append(("large", lambda: large_pipeline(cfg, work)))
        for _, job in progress(jobs, desc="end to end", disable=False):
            payload["pipelines"].append(job())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for p in payload["pipelines"]:
        if not p["ok"]:
            payload["notes"].append(f"{p['name']}: failed at {p.get('failed_at')}")
    payload["headline"] = headline(payload)
    return payload


def headline(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in payload.get("pipelines", []):
        if not p["ok"]:
            continue
        stages = ", ".join(f"{s['stage'].split(' ')[0]} {s['wall_s']:.1f}" for s in p["stages"]
                           if "not counted" not in s["stage"])
        target = "≤ 15 s" if p["name"].startswith("ml-100k") and "30 epochs" in p["name"] else ""
        out.append({"what": f"end to end {p['name']} ({stages}; peak RSS "
                    f"{p['peak_rss_bytes'] / 2**30:.2f} GiB)", "value": p["total_wall_s"], "unit": " s",
                    "target": target if not p["name"].startswith("synthetic") else "RSS ≤ 4 GB", "digits": 1})
    return out


def plot(payload: dict[str, Any], out_dir: Any) -> list[str]:
    from .plots import stage_bars

    return [stage_bars(payload, out_dir)]


def tables(payload: dict[str, Any]) -> str:
    """Markdown: wall seconds and peak RSS per stage for each pipeline."""
    lines = ["| pipeline | stage | wall s | peak RSS MiB |", "| --- | --- | --- | --- |"]
    for p in payload.get("pipelines", []):
        for s in p["stages"]:
            rss = s.get("peak_rss_bytes")
            lines.append(f"| {p['name']} | {s['stage']} | {s['wall_s']:.1f} | {'n/a' if rss is None else f'{rss / 2**20:,.0f}'} |")
        rows = p.get("sqlite_rows")
        lines.append(f"| {p['name']} | **total** ({'ok' if p['ok'] else 'FAILED at ' + str(p.get('failed_at'))}"
                     f"{'' if rows is None else f', {rows:,} rows in SQLite'}) | **{p['total_wall_s']:.1f}** | "
                     f"**{(p['peak_rss_bytes'] or 0) / 2**20:,.0f}** |")
    return "\n".join(lines) + "\n"
