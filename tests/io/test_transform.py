"""The generic batch transform: any algorithm's answers, written together or not at all."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.io.transform import Scoring, input_files, transform_files, transform_to


def _row_sums() -> Scoring:
    """A toy algorithm: answers each row with its sum, one JSON line per row."""
    def respond(x, out, where):  # noqa: ANN001, ANN202
        for s in np.asarray(x.sum(axis=1)).reshape(-1).tolist():
            out.write(json.dumps({"sum": s}) + "\n")

    return Scoring(feature_dim=3, respond=respond)


def test_every_content_type_reaches_the_plugged_scorer(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.csv").write_text("1,2,3\n")
    (inp / "b.json").write_text(json.dumps({"instances": [{"features": [0, 0, 1]}]}))
    (inp / "c.jsonl").write_text(json.dumps({"features": [2, 2, 2]}) + "\n")
    (inp / "d.csv").write_text("")  # no queries: an empty answer
    (inp / "a.csv.out").write_text("a previous answer, not an input\n")
    done = transform_files(input_files(inp), tmp_path / "out", _row_sums())
    assert [(p.name, n) for p, n in done] == [("a.csv.out", 1), ("b.json.out", 1), ("c.jsonl.out", 1),
                                              ("d.csv.out", 0)]
    assert (tmp_path / "out" / "a.csv.out").read_text() == '{"sum": 6.0}\n'
    assert (tmp_path / "out" / "c.jsonl.out").read_text() == '{"sum": 6.0}\n'
    assert (tmp_path / "out" / "d.csv.out").read_text() == ""
    buf = io.StringIO()
    assert transform_to(buf, [inp / "a.csv", inp / "b.json"], _row_sums()) == [1, 1]
    assert buf.getvalue() == '{"sum": 6.0}\n{"sum": 1.0}\n'


@pytest.mark.parametrize("body, needle", [
    ("1,2\n", "expected vectors of 3 features (feature_dim 3), got 2"),
    ("1,2,3\n1,inf,3\n", "row 1 has a NaN or infinite value"),
    ("1,x,3\n", "line 1: expected comma-separated numbers"),
])
def test_a_bad_input_writes_nothing(tmp_path: Path, body: str, needle: str) -> None:
    (tmp_path / "a.csv").write_text("1,2,3\n")
    (tmp_path / "b.csv").write_text(body)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv.out").write_text("previous\n")
    with pytest.raises(LocalFMError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        transform_files([tmp_path / "a.csv", tmp_path / "b.csv"], out, _row_sums())
    assert sorted(p.name for p in out.iterdir()) == ["a.csv.out"]
    assert (out / "a.csv.out").read_text() == "previous\n"


def test_colliding_names_and_a_file_for_a_folder(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "q.csv").write_text("1,2,3\n")
    with pytest.raises(LocalFMError, match="share a file name"):
        transform_files([tmp_path / "x" / "q.csv", tmp_path / "y" / "q.csv"], tmp_path / "out", _row_sums())
    (tmp_path / "taken").write_text("x")
    with pytest.raises(LocalFMError, match="taken: exists and is not a folder"):
        transform_files([tmp_path / "x" / "q.csv"], tmp_path / "taken", _row_sums())
    assert not (tmp_path / "out").exists()
