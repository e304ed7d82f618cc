"""``localfm prepare``: outputs, stdout counts, bad input → exit 2 with nothing left behind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from localfm.data.features import FeatureSpace
from localfm.io.recordio import read_matrix

OUTPUTS = {"train.protobuf", "test.protobuf", "features.json", "train_interactions.parquet",
           "test_interactions.parquet"}


def _files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.exists() else set()


@pytest.mark.slow
def test_movielens_ua_cloud_preparation(cli, ml100k_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ua"
    code, stdout, stderr = cli("prepare", "movielens", ml100k_dir, "--split", "ua", "--label", "binary:4",
                               "--columns", "train", "--drop-unseen", "--order", "file", "--out", out)
    assert code == 0, stderr
    assert "train: 90570 rows, 943 users, 1680 items" in stdout
    assert "test: 9428 rows" in stdout and "dropped 2" in stdout
    assert "feature_dim: 2623" in stdout
    assert _files(out) == OUTPUTS
    space = FeatureSpace.load(out / "features.json")
    assert space.feature_dim == 2623 and space.label == "binary:4" and space.split == "ua" and space.columns == "train"
    assert space.extra["counts"]["dropped_unseen_rows"] == 2
    base = np.loadtxt(ml100k_dir / "ua.base", dtype=np.int64, delimiter="\t")
    train = read_matrix(out / "train.protobuf")
    assert train.sparse and train.X.shape == (90_570, 2623) and train.X.dtype == np.float32
    np.testing.assert_array_equal(train.y, (base[:, 2] >= 4).astype(np.float32))
    assert (train.X != space.encode(base[:, 0], base[:, 1])).nnz == 0
    test = read_matrix(out / "test.protobuf")
    assert test.X.shape == (9_428, 2623) and len(test.y) == 9_428
    table = pq.read_table(out / "train_interactions.parquet")
    assert table.column_names == ["user_id", "item_id", "rating", "timestamp"]
    np.testing.assert_array_equal(table.column("user_id").to_numpy(), base[:, 0])
    np.testing.assert_array_equal(table.column("timestamp").to_numpy(), base[:, 3])


def test_movielens_all_columns_feature_dim(cli, ml100k_dir: Path, tmp_path: Path) -> None:
    code, stdout, _ = cli("prepare", "movielens", ml100k_dir, "--split", "ua", "--label", "binary:4",
                          "--out", tmp_path / "o")
    assert code == 0 and "feature_dim: 2625 (943 user + 1682 item columns)" in stdout


def test_default_dataset_with_side_features_and_shuffle(cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = cli("prepare", "movielens", "--split", "ub", "--features", "ids+side",
                               "--order", "shuffle:3", "--label", "rating", "--out", out)
    assert code == 0, stderr
    assert "feature_dim: 749 (300 user + 400 item + 49 side columns)" in stdout
    train = read_matrix(out / "train.protobuf")
    table = pq.read_table(out / "train_interactions.parquet")
    np.testing.assert_array_equal(train.y, table.column("rating").to_numpy())
    space = FeatureSpace.load(out / "features.json")
    users, items = table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
    assert (train.X != space.encode(users, items)).nnz == 0
    assert not np.all(np.diff(users) >= 0)  # shuffled, not in ub.base's sorted order


def test_interactions_csv_and_parquet(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    users = rng.integers(1, 20, n)
    items = np.array([f"sku{i}" for i in rng.integers(1, 30, n)])
    csv = tmp_path / "events.csv"
    csv.write_text("who,what,stars,when\n" + "".join(
        f"{u},{i},{s},{t}\n" for u, i, s, t in zip(users, items, rng.integers(1, 6, n), np.arange(n))))
    code, stdout, stderr = cli("prepare", "interactions", csv, "--user-col", "who", "--item-col", "what",
                               "--rating-col", "stars", "--timestamp-col", "when", "--split", "leave-last:2",
                               "--label", "binary:4", "--drop-unseen", "--out", tmp_path / "csv")
    assert code == 0, stderr
    space = FeatureSpace.load(tmp_path / "csv" / "features.json")
    assert space.user_id_kind == "int" and space.item_id_kind == "str" and space.item_ids.dtype.kind == "U"
    assert f"feature_dim: {space.feature_dim}" in stdout
    table = pq.read_table(tmp_path / "csv" / "train_interactions.parquet")
    assert table.column("item_id").type == "string"
    code, stdout, stderr = cli("prepare", "interactions", csv, "--user-col", "who", "--item-col", "what",
                               "--rating-col", "stars", "--split", "random:0.2:1", "--out", tmp_path / "rnd")
    assert code == 0, stderr
    assert "test: 60 rows" in stdout


def _ml100k_like(tmp_path: Path, content: bytes) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    (root / "u.data").write_bytes(content)
    return root


@pytest.mark.parametrize(
    ("kind", "content", "extra", "message"),
    [
        ("movielens", b"196,242,3,881250949\n", [], "expected 4 tab-separated numeric columns"),
        ("movielens", b"196\t242\tgood\t881250949\n", [], "numeric"),
        ("movielens", b"", [], "empty file"),
        ("movielens", b"1\t2\t3\t4\n", ["--split", "u7"], "unknown split"),
        # negative seeds reached numpy's default_rng and crashed with ValueError (exit 1)
        ("movielens", b"1\t2\t3\t4\n", ["--order", "shuffle:-1"], "expected file or shuffle:SEED"),
        ("movielens", b"1\t2\t3\t4\n", ["--split", "random:0.5:-1"], "SEED >= 0"),
        ("interactions", b"user,item\n1,2\n", [], "missing column 'rating'"),
        ("interactions", b"user,item,rating\n1,2,x\n", [], "must be numeric"),
        ("interactions", b"", [], "empty file"),
        ("interactions", b"user;item;rating\n1;2;3\n", [], "missing column 'user'"),
        ("interactions", b"user,item,rating\n1,2,3\n", ["--split", "ua"], "GroupLens splits need"),
    ],
)
def test_bad_input_exit_2_and_nothing_written(cli, tmp_path: Path, kind: str, content: bytes,
                                              extra: list[str], message: str) -> None:
    out = tmp_path / "out"
    if kind == "movielens":
        args = ["prepare", "movielens", _ml100k_like(tmp_path, content)]
    else:
        path = tmp_path / "events.csv"
        path.write_bytes(content)
        args = ["prepare", "interactions", path, "--user-col", "user", "--item-col", "item", "--rating-col", "rating"]
    split = [] if "--split" in extra else ["--split", "random:0.5:1"]
    code, stdout, stderr = cli(*args, *split, *extra, "--out", out)
    assert code == 2
    assert message in stderr and stderr.startswith("localfm prepare: error:") and stderr.count("\n") == 1
    assert not out.exists()


def test_failure_while_writing_keeps_previous_outputs(cli, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    code, _, _ = cli("prepare", "movielens", "--split", "ua", "--out", out)
    assert code == 0
    before = {name: (out / name).read_bytes() for name in OUTPUTS}

    import localfm.data.prepare as prepare

    real = prepare.write_sparse
    calls = []

    def failing(dest, X, labels=None):  # noqa: ANN001
        calls.append(dest)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(dest, X, labels)

    monkeypatch.setattr(prepare, "write_sparse", failing)
    with pytest.raises(OSError):
        cli("prepare", "movielens", "--split", "ub", "--label", "binary:4", "--out", out)
    assert _files(out) == OUTPUTS  # no temporaries left
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before


def test_help(cli) -> None:
    for args in (("prepare", "--help"), ("prepare", "movielens", "--help"), ("prepare", "interactions", "--help")):
        with pytest.raises(SystemExit) as info:
            cli(*args)
        assert info.value.code == 0


def test_out_under_a_file_exits_2(cli, tmp_path: Path) -> None:
    # --out whose parent is a regular file: mkdir in the atomic writer raised NotADirectoryError (exit 1).
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, stderr = cli("prepare", "movielens", "--split", "ua", "--out", blocker / "sub")
    assert code == 2
    assert "cannot create the directory" in stderr and stderr.count("\n") == 1
    assert blocker.read_text() == "x"
