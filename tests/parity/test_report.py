"""Text and JSON rendering of parity results."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.parity.compare import Check, Comparison, Table, abs_check, max_check, min_check
from localfm.parity.plots import write_plots
from localfm.parity.report import format_table, render_text, to_json, write_json


def _comp(n_fail: int) -> Comparison:
    c = Comparison("training", "t")
    c.checks = [abs_check(f"train m epoch {i}", 0.5, 0.5 + (0.01 if i < n_fail else 0.0), 0.005) for i in range(30)]
    return c


def test_table_alignment() -> None:
    text = format_table(Table("T", ["name", "value"], [["a", "1.00"], ["longer", "10.00"]]))
    assert text.splitlines() == ["T", "name    value", "------  -----", "a        1.00", "longer  10.00"]


def test_failures_listed_by_name_and_capped() -> None:
    text = render_text([_comp(25)], max_failures=3)
    assert "training: DRIFT (5/30 checks within tolerance)" in text
    assert "  FAIL train m epoch 0: cloud 0.5 local 0.51 |diff| 0.01 > tol 0.005" in text
    assert "... and 22 more failing checks (see the JSON report)" in text
    assert text.rstrip().splitlines()[-1].startswith("parity: DRIFT (25 failing: train m epoch 0, train m epoch 1")
    assert render_text([_comp(0)]).rstrip().endswith("parity: OK")


def test_min_max_equal_lines() -> None:
    c = Comparison("knn", "k")
    c.checks = [min_check("mean overlap@10", 0.5, 0.95), max_check("max distance error", 0.2, 0.001),
                Check("shapes", None, None, None, False, "equal", "cloud w(3,) local w(4,)")]
    text = render_text([c])
    assert "FAIL mean overlap@10: 0.5 < min 0.95" in text
    assert "FAIL max distance error: 0.2 > max 0.001" in text
    assert "FAIL shapes: cloud w(3,) local w(4,)" in text


def test_json_is_strict_and_complete(tmp_path: Path) -> None:
    c = Comparison("predictions", "p", summary={"pearson": float("nan"), "arr": np.arange(3), "n": np.int64(4)})
    c.checks = [abs_check("x", 1.0, math.inf, 0.1)]
    doc = to_json([c])
    assert doc["ok"] is False and doc["failing"] == ["x"]
    write_json(tmp_path / "r.json", [c])
    back = json.loads((tmp_path / "r.json").read_text())  # strict JSON: no NaN/Infinity tokens
    assert back["comparisons"][0]["summary"] == {"pearson": "nan", "arr": [0, 1, 2], "n": 4}
    assert back["comparisons"][0]["checks"][0]["local"] == "inf"


def test_no_plots_for_comparisons_without_series(tmp_path: Path) -> None:
    assert write_plots([Comparison("hyperparameters", "h")], tmp_path / "p") == []


def _pred_comp(shift: float) -> Comparison:
    c = Comparison("predictions", f"p{shift}")
    c.series = {"cloud_scores": np.linspace(0, 1, 20), "local_scores": np.linspace(0, 1, 20) + shift}
    return c


@pytest.mark.slow
def test_two_comparisons_of_one_kind_get_two_plots(tmp_path: Path) -> None:
    """A fixture with two transform files wrote both scatters to one name: the first plot was lost."""
    written = write_plots([_pred_comp(0.0), _pred_comp(0.1)], tmp_path / "p")
    assert [p.name for p in written] == ["predictions_score_scatter.png", "predictions_score_scatter_2.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert written[0].read_bytes() != written[1].read_bytes()


def test_failed_plot_save_closes_its_figure(tmp_path: Path) -> None:
    """A figure whose save failed stayed open in pyplot (a leak for the rest of the process)."""
    import matplotlib.pyplot as plt

    from localfm.parity.plots import plot_scatter

    (tmp_path / "taken.png").mkdir()  # the PNG's path is a folder: the save fails
    before = len(plt.get_fignums())
    with pytest.raises((OSError, LocalFMError)):
        plot_scatter(_pred_comp(0.0), tmp_path / "taken.png")
    assert len(plt.get_fignums()) == before
