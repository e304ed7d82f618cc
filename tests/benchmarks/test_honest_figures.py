"""The full-size end-to-end record and the honest-ratio rule (issue 13, item 3), without running them.

The goals' pass/fail fields, FAISS's best-quiet yardstick and the ratio gate are pure
functions of recorded numbers, checked here on hand-made numbers; the stages themselves
run in the smoke pass (test_smoke.py).
"""
from __future__ import annotations

import json
import sys

import pytest

from benchmarks import end_to_end as e2e
from benchmarks.data import ML25M_ROWS, BenchConfig
from benchmarks.machine import is_quiet, run_command
from benchmarks.results import (
    ratio_text,
    ratio_verdict,
    update_best_quiet,
    write_result,
)
from benchmarks.retrieval import headline as retrieval_headline

QUIET, BUSY = [0.4, 0.8, 1.0], [3.0, 2.5, 2.0]


def _stages(prepare=20.0, train=15.0, recommend=40.0, rss=3.0e9, epoch=6.5):
    return [
        {"stage": "generate synthetic parquet (input, not counted)", "stage_key": "generate", "wall_s": 99.0,
         "peak_rss_bytes": 9e9},
        {"stage": "prepare", "stage_key": "prepare", "wall_s": prepare, "peak_rss_bytes": rss},
        {"stage": "train (1 epoch)", "stage_key": "train", "wall_s": train, "peak_rss_bytes": 1e9, "epoch_s": epoch},
        {"stage": "top-100 → Parquet", "stage_key": "recommend_parquet", "wall_s": recommend, "peak_rss_bytes": 2e9},
    ]


def test_goals_pass_and_fail_from_the_numbers():
    g = e2e.goals(_stages(), ML25M_ROWS, QUIET)
    assert g["end_to_end_s"] == {"value": 75.0, "limit": 90.0, "pass": True}  # input generation not counted
    assert g["peak_rss_bytes"]["value"] == 3.0e9 and g["peak_rss_bytes"]["pass"] is True
    assert g["epoch_s"]["pass"] is True and g["all_pass"] is True and g["verdict"] is True
    slow = e2e.goals(_stages(recommend=60.0, rss=4.2e9, epoch=7.5), ML25M_ROWS, QUIET)
    assert slow["end_to_end_s"]["pass"] is False and slow["peak_rss_bytes"]["pass"] is False
    assert slow["epoch_s"]["pass"] is False and slow["all_pass"] is False and slow["verdict"] is False
    assert "goals NOT met" in e2e.goal_text(slow) and "FAIL" in e2e.goal_text(slow)


def test_goals_give_no_verdict_below_full_size_or_on_a_busy_machine():
    small = e2e.goals(_stages(), 200_000, QUIET)
    busy = e2e.goals(_stages(), ML25M_ROWS, BUSY)
    assert small["all_pass"] is True and small["verdict"] is None and not small["at_full_size"]
    assert busy["verdict"] is None and busy["quiet"] is False
    assert "not full size" in e2e.goal_text(small) and "machine not quiet" in e2e.goal_text(busy)
    missing = e2e.goals(_stages()[:3], ML25M_ROWS, QUIET)  # failed before the sink
    assert missing["end_to_end_s"]["value"] is None and missing["all_pass"] is None


def test_epoch_seconds_come_from_the_trainers_metrics(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"throughput_records_per_second": [2_000_000.0], "train_records": 5_000_000}))
    got = e2e.epoch_seconds(path)
    assert got["epoch_s"] == pytest.approx(2.5) and got["train_records"] == 5_000_000
    assert e2e.epoch_seconds(tmp_path / "absent.json") == {}


def test_no_ml100k_carries_the_previous_ml100k_pipelines(tmp_path):
    prev = {"pipelines": [{"name": "ml-100k ua, cloud config, 30 epochs", "ok": True, "stages": [],
                           "total_wall_s": 5.0, "peak_rss_bytes": 1},
                          {"name": "synthetic 1×1, 5 rows, 1 epoch", "ok": True, "stages": []}]}
    write_result("end_to_end", prev, tmp_path, machine={})
    cfg = BenchConfig.preset("smoke", out_dir=tmp_path, e2e_ml100k=False)
    carried = e2e.carried_ml100k(cfg)
    assert [p["name"] for p in carried] == ["ml-100k ua, cloud config, 30 epochs"]
    assert carried[0]["carried_from"]  # the previous file's date
    assert "carried over" in e2e.headline({"pipelines": carried})[0]["what"]


def test_quiet_runs_alone_set_faiss_best_and_it_only_improves():
    assert is_quiet(QUIET) is True and is_quiet(BUSY) is False and is_quiet(None) is None
    best = update_best_quiet({}, "s", 3.0, BUSY, "d0")
    assert best == {}
    best = update_best_quiet(best, "s", 3.0, QUIET, "d1")
    assert best["s"]["median_s"] == 3.0
    assert update_best_quiet(best, "s", 3.5, QUIET, "d2")["s"]["date"] == "d1"
    assert update_best_quiet(best, "s", 2.5, QUIET, "d3")["s"]["median_s"] == 2.5


def test_ratio_shown_only_within_15_percent_of_faiss_best_quiet_run():
    best = {"median_s": 2.5, "date": "2026-11-28T00:00:00"}
    assert ratio_verdict(2.8, best)["shown"] is True  # 12% over
    off = ratio_verdict(12.0, best)
    assert off["shown"] is False and "380% over" in off["reason"] and "2026-11-28" in off["reason"]
    assert ratio_verdict(2.0, None)["shown"] is False
    assert ratio_text(1.2, ratio_verdict(2.6, best)) == "1.20×"
    assert ratio_text(1.2, off).startswith("not shown (FAISS took 12.00 s")


def test_retrieval_headline_withholds_the_ratio_when_faiss_was_slow():
    engines = {"localfm": {"agreement_vs_float64": {"exact_up_to_ties": 1.0}, "same_sets_as_faiss": 1.0,
                           "speedup_vs_faiss": 4.0, "median_s": 3.0, "gflops": 100.0},
               "faiss_flat_ip": {"median_s": 12.0}}
    big = {"users": 10, "items": 20, "engines": engines,
           "faiss_ratio": ratio_verdict(12.0, {"median_s": 2.5, "date": "2026-11-28"})}
    payload = {"k": 100, "exact": [big], "sgemm_peak": {"peak_gflops": 200.0}}
    row = retrieval_headline(payload)[0]
    assert row["value"] is None and "ratio not shown: FAISS took 12.00 s" in row["what"]
    big["faiss_ratio"] = ratio_verdict(2.6, {"median_s": 2.5, "date": "2026-11-28"})
    assert retrieval_headline(payload)[0]["value"] == 4.0
    del big["faiss_ratio"]  # a results file from before the rule: its ratio is withheld too
    row = retrieval_headline(payload)[0]
    assert row["value"] is None and "before FAISS's best quiet time was recorded" in row["what"]
    assert ratio_text(4.0, None).startswith("not shown (measured before")


@pytest.mark.slow
def test_run_command_records_cpu_time_and_load():
    busy = run_command([sys.executable, "-c", "import time\nt = time.process_time()\n"
                        "while time.process_time() - t < 0.3: pass"])
    assert busy["returncode"] == 0
    assert busy["cpu_s"] >= 0.3 and busy["cpu_user_s"] > 0 and busy["cpu_s"] <= busy["wall_s"] + 0.05
    assert len(busy["load_average_before"]) == len(busy["load_average_after"]) == 3


@pytest.mark.parametrize("rows", [5_000_000, ML25M_ROWS])
def test_readme_shows_the_epoch_only_when_measured_at_full_size(tmp_path, rows):
    """A reduced run's epoch scaled to 25M rows once sat in the README as if measured; now only a
    full-size epoch gets a row, with its own seconds."""
    from benchmarks import train_throughput as tt
    from benchmarks.results import readme_markdown

    secs = {"localfm_fast": 3.0, "localfm_sagemaker": 3.5}
    large = {"rows": rows, "num_factors": 64, "mini_batch_size": 5000, **{
        m: {"epoch_s": s, "samples_per_s": rows / s, "epoch_s_at_25M_extrapolated": s * ML25M_ROWS / rows}
        for m, s in secs.items()}}
    doc = {"date": "2026-11-29T00:00:00+00:00", "machine": {"cpu_model": "cpu", "cores": 2}, "grid": [],
           "large_epoch": large}
    (tmp_path / "train_throughput.json").write_text(json.dumps(doc), encoding="utf-8")
    readme = readme_markdown(tmp_path)
    goal_rows = [g for g in tt.headline(doc) if "ML-25M-shaped epoch" in g["what"]]
    if rows == ML25M_ROWS:
        assert "| ML-25M-shaped epoch (k=64, batch 5000; measured on all 25,000,095 rows) | 3.0 s | ≤ 7 s |" in readme
        assert all(g["target"] == "≤ 7 s" and g["value"] in secs.values() for g in goal_rows)
        assert "scaled" not in tt.tables(doc)
    else:
        assert "ML-25M-shaped epoch" not in readme and "scaled to 25M" not in readme
        assert all("not a measurement" in g["what"] and g["target"] == "judged at full size only" for g in goal_rows)
        assert "a trend, not a measurement" in tt.tables(doc)
    assert len(goal_rows) == 2
