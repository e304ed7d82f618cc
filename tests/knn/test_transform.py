"""Batch transform: SageMaker request formats in, byte-exact response formats out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localfm.errors import LocalFMError
from localfm.knn import KNN
from localfm.knn.model import Neighbours
from localfm.io.content import detect_content_type, parse_request
from localfm.knn.transform import (
    format_float,
    format_record,
    parse_accept,
    render,
    transform_file,
    transform_files,
)


@pytest.fixture(scope="module")
def model() -> KNN:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = rng.integers(500, 510, 200).astype(np.float32)
    return KNN(feature_dim=4, k=3, predictor_type="classifier", sample_size=200,
               index_metric="INNER_PRODUCT").fit(x, y)


QUERIES = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)


@pytest.mark.slow
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
@settings(max_examples=300, deadline=None)
def test_format_float_round_trips_float32(v: float) -> None:
    text = format_float(v)
    assert np.float32(float(text)) == np.float32(v)
    assert text == json.dumps(float(np.float32(v)))


def test_format_record_exact_text() -> None:
    assert format_record(509.0) == '{"predicted_label": 509.0}'
    assert format_record(np.float32(1.5), [509.0, 2.0], [np.float32(0.1), 4.0]) == (
        '{"predicted_label": 1.5, "labels": [509.0, 2.0], "distances": [0.10000000149011612, 4.0]}'
    )
    assert json.loads(format_record(3.0, [1.0], [2.0])) == {"predicted_label": 3.0, "labels": [1.0], "distances": [2.0]}


@pytest.mark.parametrize("accept, jsonlines, verbose", [
    ("application/json", False, False),
    ("application/jsonlines", True, False),
    ("application/jsonlines; verbose=true", True, True),
    ("application/json; verbose=true", False, True),
    ("application/json;verbose=false", False, False),
])
def test_parse_accept(accept: str, jsonlines: bool, verbose: bool) -> None:
    acc = parse_accept(accept)
    assert (acc.jsonlines, acc.verbose) == (jsonlines, verbose)


@pytest.mark.parametrize("bad", ["text/csv", "application/json; verbose=maybe", "application/json; foo=1", "application/json; x"])
def test_bad_accept(bad: str) -> None:
    with pytest.raises(LocalFMError, match="accept"):
        parse_accept(bad)


def test_render_formats() -> None:
    nb = Neighbours(np.array([509.0, 2.0], np.float32), np.array([[1.0, 509.0], [2.0, 2.0]], np.float32),
                    np.array([[0.5, 1.0], [0.25, 3.0]], np.float32))
    assert render(nb, "application/jsonlines") == '{"predicted_label": 509.0}\n{"predicted_label": 2.0}\n'
    assert render(nb, "application/json") == '{"predictions": [{"predicted_label": 509.0}, {"predicted_label": 2.0}]}\n'
    lines = render(nb, "application/jsonlines; verbose=true").splitlines()
    assert lines[0] == '{"predicted_label": 509.0, "labels": [1.0, 509.0], "distances": [0.5, 1.0]}'


def write_inputs(d: Path, q: np.ndarray) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": d / "q.csv",
        "json": d / "q.json",
        "jsonl": d / "q.jsonl",
        "data": d / "q_data.json",
    }
    files["csv"].write_text("\n".join(",".join(repr(float(v)) for v in row) for row in q) + "\n")
    files["json"].write_text(json.dumps({"instances": [{"features": row.tolist()} for row in q]}))
    files["jsonl"].write_text("".join(json.dumps({"features": row.tolist()}) + "\n" for row in q))
    files["data"].write_text(json.dumps({"instances": [
        {"data": {"features": {"values": row.tolist()}}} for row in q]}))
    try:
        from localfm.io.recordio import write_dense
    except ImportError:
        return files
    files["protobuf"] = d / "q.protobuf"
    write_dense(files["protobuf"], q)
    return files


def test_every_input_format_gives_the_same_answer(tmp_path: Path, model: KNN) -> None:
    files = write_inputs(tmp_path / "in", QUERIES)
    outs = {}
    for kind, path in files.items():
        dest, n = transform_file(model, path, tmp_path / "out", accept="application/jsonlines; verbose=true")
        assert dest == tmp_path / "out" / (path.name + ".out") and n == 2
        outs[kind] = dest.read_text()
    assert len(set(outs.values())) == 1
    lines = outs["csv"].splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert list(rec) == ["predicted_label", "labels", "distances"]
    assert rec["distances"] == sorted(rec["distances"])  # ascending, best (largest IP) last
    scores = QUERIES[0].astype("f8") @ model.index_.faiss_index.reconstruct_n(0, 200).T.astype("f8")
    assert rec["distances"][-1] == pytest.approx(scores.max(), rel=1e-5)


def test_sparse_json_data_form(tmp_path: Path, model: KNN) -> None:
    src = tmp_path / "sparse.jsonl"
    src.write_text(json.dumps({"data": {"features": {"keys": [0, 3], "values": [1.0, 2.0], "shape": [4]}}}) + "\n")
    dest, _ = transform_file(model, src, tmp_path, accept="application/jsonlines")
    expected = model.predict(np.array([[1.0, 0, 0, 2.0]]))[0]
    assert dest.read_text() == format_record(expected) + "\n"


def test_bad_input_writes_nothing_and_keeps_previous_output(tmp_path: Path, model: KNN) -> None:
    good = tmp_path / "a.csv"
    good.write_text("1,2,3,4\n")
    bad = tmp_path / "b.csv"
    bad.write_text("1,2,3,4\n1,nan,3,4\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv.out").write_text("previous\n")
    with pytest.raises(LocalFMError, match="b.csv: row 1 has a NaN"):
        transform_files(model, [good, bad], out)
    assert sorted(p.name for p in out.iterdir()) == ["a.csv.out"]
    assert (out / "a.csv.out").read_text() == "previous\n"
    bad.write_text("1,2,3\n")
    with pytest.raises(LocalFMError, match="expected vectors of 4 features"):
        transform_file(model, bad, out)
    bad.write_text("1,2,x,4\n")
    with pytest.raises(LocalFMError, match="line 1"):
        transform_file(model, bad, out)
    bad.write_text('{"instances": [{"feat": [1]}]}')
    with pytest.raises(LocalFMError, match="instance 0"):
        transform_file(model, bad, out, content_type="application/json")


def test_json_output_and_empty_input(tmp_path: Path, model: KNN) -> None:
    src = tmp_path / "q.jsonl"
    src.write_text("")
    dest, n = transform_file(model, src, tmp_path, accept="application/json")
    assert n == 0 and dest.read_text() == '{"predictions": []}\n'
    src.write_text(json.dumps({"features": [1, 2, 3, 4]}) + "\n" + json.dumps({"features": [0, 0, 1, 0]}) + "\n")
    dest, n = transform_file(model, src, tmp_path, accept="application/json; verbose=true")
    doc = json.loads(dest.read_text())
    assert n == 2 and len(doc["predictions"]) == 2 and len(doc["predictions"][1]["labels"]) == 3


def test_streams_in_mini_batches(tmp_path: Path, model: KNN) -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(23, 4)).astype(np.float32)
    src = tmp_path / "q.csv"
    src.write_text("\n".join(",".join(map(str, r.tolist())) for r in q))
    whole, _ = transform_file(model, src, tmp_path / "a", accept="application/json; verbose=true")
    small = KNN.__new__(KNN)
    small.__dict__.update(model.__dict__)
    small.hp_ = {**model.hp_, "mini_batch_size": 5}
    batched, _ = transform_file(small, src, tmp_path / "b", accept="application/json; verbose=true")
    assert whole.read_text() == batched.read_text()


def test_detect_content_type() -> None:
    assert detect_content_type("x.csv", b"1,2") == "text/csv"
    assert detect_content_type("x", (0xCED7230A).to_bytes(4, "little")) == "application/x-recordio-protobuf"
    assert detect_content_type("x", b' {"instances": []}') == "application/json"
    assert detect_content_type("x", b'{"features": [1]}\n') == "application/jsonlines"
    assert detect_content_type("x", b"1,2,3") == "text/csv"


@pytest.mark.parametrize(
    "features",
    [
        {"keys": 5, "values": [1.0], "shape": [4]},  # used to raise TypeError (exit 1)
        {"keys": [0, 3], "values": [1.0], "shape": [4]},  # used to drop the unmatched key silently
        {"keys": [0], "values": [1.0, 2.0], "shape": [4]},  # used to drop the unmatched value silently
    ],
)
def test_sparse_keys_not_matching_values_is_an_error(features: dict) -> None:
    body = json.dumps({"instances": [{"data": {"features": features}}]}).encode()
    with pytest.raises(LocalFMError, match="keys"):
        parse_request(body, "application/json", where="req.json")
