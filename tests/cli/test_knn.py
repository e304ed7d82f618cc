"""``localfm knn train`` / ``localfm knn transform`` end to end, including exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

HP = ["--hp", "feature_dim=8", "--hp", "k=4", "--hp", "predictor_type=classifier", "--hp", "sample_size=900"]


@pytest.fixture
def channel(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    from localfm.io.recordio import write_dense

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    y = rng.integers(0, 3, 1000).astype(np.float32)
    path = tmp_path / "train.protobuf"
    write_dense(path, x, y)
    return path, x, y


def test_help(cli) -> None:
    for args in (["knn", "--help"], ["knn", "train", "--help"], ["knn", "transform", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli(*args)
        assert exc.value.code == 0


def test_train_then_transform(cli, tmp_path: Path, channel) -> None:
    path, x, y = channel
    code, out, err = cli("--quiet", "knn", "train", "--train", path, "-o", tmp_path / "model", *HP,
                         "--hp", "index_type=faiss.IVFFlat", "--hp", "index_metric=INNER_PRODUCT",
                         "--report-recall", "--recall-queries", "50", "--test", path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == 900 and summary["train_records"] == 1000
    assert 0.0 < summary["recall@100"] <= 1.0 and summary["recall_queries"] == 50
    from localfm.knn import KNN

    # the reported accuracy is the saved model's on the test channel (here: the training file)
    assert summary["test_accuracy"] == pytest.approx(float((KNN.load(tmp_path / "model").predict(x) == y).mean()))
    meta = json.loads((tmp_path / "model" / "model_algo-1.json").read_text())
    assert meta["localfm"]["report"]["recall@100"] == summary["recall@100"]

    queries = tmp_path / "queries.csv"
    queries.write_text("\n".join(",".join(map(str, r)) for r in x[:5].tolist()) + "\n")
    code, out, err = cli("knn", "transform", "--model", tmp_path / "model" / "model.tar.gz", "--input", queries,
                         "--output", tmp_path / "out", "--accept", "application/jsonlines; verbose=true")
    assert code == 0, err
    lines = (tmp_path / "out" / "queries.csv.out").read_text().splitlines()
    assert len(lines) == 5
    rec = json.loads(lines[0])
    assert len(rec["labels"]) == 4 and rec["distances"] == sorted(rec["distances"])

    # --k override, beyond the index size: trimmed to what exists
    code, out, err = cli("knn", "transform", "-m", tmp_path / "model", "-i", queries, "--k", "5000",
                         "--accept", "application/jsonlines; verbose=true")
    assert code == 0, err
    rec = json.loads((tmp_path / "queries.csv.out").read_text().splitlines()[0])
    assert len(rec["labels"]) == 900 and all(np.isfinite(rec["distances"]))


def test_csv_training_channel_folder(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(2):
        rows = np.hstack([rng.integers(0, 2, (50, 1)), rng.normal(size=(50, 8))])
        (folder / f"part{i}.csv").write_text("\n".join(",".join(map(str, r)) for r in rows.tolist()))
    code, out, err = cli("knn", "train", "--train", folder, "-o", tmp_path / "m", *HP,
                         "--hp", "predictor_type=regressor")
    assert code == 0, err
    assert json.loads(out)["indexed"] == 100


@pytest.mark.parametrize("extra, match", [
    (["--hp", "k=0"], "'k'"),
    (["--hp", "index_metric=EUCLID"], "index_metric"),
    (["--hp", "index_type=faiss.IVFPQ", "--hp", "index_metric=INNER_PRODUCT"], "supports only L2"),
    (["--hp", "feature_dim=9"], "expected vectors of 9 features"),
    (["--target-recall", "0.9"], "--target-recall"),
])
def test_train_bad_input_exit_2_and_nothing_written(cli, tmp_path: Path, channel, extra, match) -> None:
    path, _, _ = channel
    code, out, err = cli("knn", "train", "--train", path, "-o", tmp_path / "model", *HP, *extra)
    assert code == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "model").exists()


def test_transform_bad_input_keeps_previous_output(cli, tmp_path: Path, channel) -> None:
    path, x, _ = channel
    assert cli("--quiet", "knn", "train", "--train", path, "-o", tmp_path / "model", *HP)[0] == 0
    queries = tmp_path / "in" / "q.jsonl"
    queries.parent.mkdir()
    queries.write_text(json.dumps({"features": x[0].tolist()}) + "\n")
    assert cli("knn", "transform", "-m", tmp_path / "model", "-i", queries.parent, "-o", tmp_path / "out")[0] == 0
    before = (tmp_path / "out" / "q.jsonl.out").read_bytes()
    queries.write_text(json.dumps({"features": [float("nan")] * 8}) + "\n")
    code, out, err = cli("knn", "transform", "-m", tmp_path / "model", "-i", queries, "-o", tmp_path / "out")
    assert code == 2 and "NaN" in err
    assert (tmp_path / "out" / "q.jsonl.out").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["q.jsonl.out"]
    code, out, err = cli("knn", "transform", "-m", tmp_path / "model", "-i", queries, "--accept", "text/csv")
    assert code == 2 and "accept" in err
    code, out, err = cli("knn", "transform", "-m", tmp_path / "nope", "-i", queries)
    assert code == 2 and "not found" in err


def test_transform_output_path_that_is_a_file_exits_2(cli, tmp_path: Path, channel) -> None:
    # atomic_outputs' mkdir used to raise FileExistsError here (exit 1).
    path, x, _ = channel
    assert cli("--quiet", "knn", "train", "--train", path, "-o", tmp_path / "model", *HP)[0] == 0
    (tmp_path / "q.csv").write_text(",".join(map(str, x[0])) + "\n")
    (tmp_path / "taken").write_text("x")
    code, _, err = cli("--quiet", "knn", "transform", "-m", tmp_path / "model", "-i", tmp_path / "q.csv",
                       "-o", tmp_path / "taken")
    assert code == 2 and "taken: exists and is not a folder" in err
    assert (tmp_path / "taken").read_text() == "x"


def test_test_channel_of_wrong_width_names_the_file(cli, tmp_path: Path, channel) -> None:
    path, _, _ = channel
    (tmp_path / "test.csv").write_text("1,2,3\n")
    code, _, err = cli("--quiet", "knn", "train", "--train", path, "-o", tmp_path / "model", *HP,
                       "--test", tmp_path / "test.csv")
    assert code == 2 and "test.csv: expected vectors of 8 features" in err
    assert not (tmp_path / "model").exists()


def test_folder_width_mismatch_names_the_first_nonempty_file(cli, tmp_path: Path) -> None:
    # An empty first file is skipped; the message used to blame it for the reference width.
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "a.csv").write_text("")
    (folder / "b.csv").write_text("1," + ",".join(["0.5"] * 8) + "\n")
    (folder / "c.csv").write_text("1,0.5,0.5\n")
    code, _, err = cli("knn", "train", "--train", folder, "-o", tmp_path / "m", *HP, "--content-type", "text/csv")
    assert code == 2 and "c.csv: 2 features, " in err and "b.csv has 8" in err


def test_transform_max_artifact_bytes(cli, tmp_path: Path, channel) -> None:
    path, x, _ = channel
    assert cli("--quiet", "knn", "train", "--train", path, "-o", tmp_path / "model", *HP)[0] == 0
    queries = tmp_path / "q.csv"
    queries.write_text(",".join(map(str, x[0].tolist())) + "\n")
    tarball = tmp_path / "model" / "model.tar.gz"
    code, out, err = cli("knn", "transform", "-m", tarball, "-i", queries, "-o", tmp_path / "out",
                         "--max-artifact-bytes", "1000")
    assert code == 2 and "over the 1000-byte limit" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    code, out, err = cli("knn", "transform", "-m", tarball, "-i", queries, "-o", tmp_path / "out",
                         "--max-artifact-bytes", str(1 << 30))
    assert code == 0, err
    assert (tmp_path / "out" / "q.csv.out").is_file()


def test_errors_name_the_subcommand(cli, tmp_path: Path) -> None:
    """Errors said `localfm knn:`; a user with both subcommands in a script needs to know which."""
    code, _, err = cli("knn", "train", "--train", tmp_path / "missing", "-o", tmp_path / "m", *HP)
    assert code == 2 and err.startswith("localfm knn train: error: ") and "missing" in err
    code, _, err = cli("knn", "transform", "-m", tmp_path / "nope", "-i", tmp_path / "q.csv")
    assert code == 2 and err.startswith("localfm knn transform: error: ") and "nope" in err
    # Naming the subcommand must not cost the parameter -> flag mapping of library errors.
    from localfm.cli import build_parser, error_line, running_parser
    from localfm.errors import LocalFMError

    parser = build_parser()
    args = parser.parse_args(["knn", "transform", "-m", "m", "-i", "q"])
    assert running_parser(parser, args).prog == "localfm knn transform"
    assert error_line(parser, args, LocalFMError("nprobe: expected >= 1", param="nprobe")) == "--nprobe: expected >= 1"
