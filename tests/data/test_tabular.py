"""Generic interactions from CSV/Parquet: column selection, id kinds, timestamps, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from localfm.data.tabular import read_interactions
from localfm.errors import LocalFMError


def _csv(tmp_path: Path, text: str, name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_named_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ts,cust,sku,stars,extra\n5,1,100,4.5,x\n3,2,100,2,y\n")
    data = read_interactions(path, user_col="cust", item_col="sku", rating_col="stars", timestamp_col="ts")
    assert data.user.dtype == np.int64 and data.user.tolist() == [1, 2]
    assert data.rating.dtype == np.float32 and data.rating.tolist() == [4.5, 2.0]
    assert data.timestamp.tolist() == [5, 3]


def test_string_ids_and_implicit_ratings(tmp_path: Path) -> None:
    path = _csv(tmp_path, "u\ti\nalice\tsku-1\nbob\t7\n", name="events.tsv")
    data = read_interactions(path, user_col="u", item_col="i", rating_col=None)
    assert data.user.tolist() == ["alice", "bob"] and data.item.tolist() == ["sku-1", "7"]
    assert data.rating.tolist() == [1.0, 1.0] and data.timestamp is None


def test_parquet_with_timestamp_type(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    table = pa.table({
        "user": pa.array([3, 1], pa.int32()),
        "item": pa.array(["a", "b"]),
        "rating": pa.array([1, 5], pa.int8()),
        "when": pa.array([1_000_000_000, 1_000_000_060], pa.timestamp("s")),
    })
    pq.write_table(table, path)
    data = read_interactions(path, user_col="user", item_col="item", rating_col="rating", timestamp_col="when")
    assert data.user.tolist() == [3, 1] and data.item.tolist() == ["a", "b"]
    assert data.timestamp.tolist() == [1_000_000_000, 1_000_000_060]


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("user,item,rating\n1,2,3\n", {"rating_col": "stars"}, "missing column 'stars'; available columns: user, item, rating"),
        ("user,item,rating\n1,2,good\n", {}, "column 'rating' must be numeric, found 'good'"),
        ("", {}, "empty file"),
        ("user;item;rating\n1;2;3\n", {}, "missing column 'user'"),
        ("user,item,rating\n1,2,\n", {}, "column 'rating' has 1 empty values"),
        ("user,item,rating\n", {}, "no rows"),
        # duplicate_header_column_is_bad_input: pyarrow's KeyError escaped (exit 1)
        ("user,item,rating,user\n1,2,3,4\n", {}, "column 'user' appears more than once"),
    ],
)
def test_bad_input(tmp_path: Path, text: str, kwargs: dict, message: str) -> None:
    path = _csv(tmp_path, text)
    args = {"user_col": "user", "item_col": "item", "rating_col": "rating"} | kwargs
    with pytest.raises(LocalFMError, match=message.replace("(", r"\(")) as info:
        read_interactions(path, **args)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_parquet(tmp_path: Path) -> None:
    with pytest.raises(LocalFMError, match="file not found"):
        read_interactions(tmp_path / "nope.csv", user_col="u", item_col="i", rating_col=None)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1garbage")
    with pytest.raises(LocalFMError, match="not a readable Parquet file"):
        read_interactions(bad, user_col="u", item_col="i", rating_col=None)


def test_list_id_column_is_bad_input(tmp_path: Path) -> None:
    # Arrow's cast to string raised ArrowNotImplementedError (exit 1) for nested id columns.
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"u": [[1], [2]], "i": [1, 2], "r": [1.0, 2.0]}), path)
    with pytest.raises(LocalFMError, match="column 'u' of type list<.*cannot be used as ids"):
        read_interactions(path, user_col="u", item_col="i", rating_col="r")


def test_non_utf8_id_column_is_bad_input(tmp_path: Path) -> None:
    # The CSV reader types such a column as binary; its cast raised ArrowInvalid (exit 1).
    path = tmp_path / "latin.csv"
    path.write_bytes(b"u,i,r\n\xff\xfe,1,2\n")
    with pytest.raises(LocalFMError, match="column 'u' of type binary cannot be used as ids"):
        read_interactions(path, user_col="u", item_col="i", rating_col="r")


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_subsecond_timestamps_become_whole_seconds(tmp_path: Path, unit: str) -> None:
    # pandas writes ns timestamps; the safe cast to seconds raised ArrowInvalid (exit 1).
    path = tmp_path / "events.parquet"
    per_second = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    stamps = pa.array([1_000_000_000 * per_second + per_second // 3, 1_000_000_060 * per_second],
                      pa.timestamp(unit, tz="UTC"))
    pq.write_table(pa.table({"u": [1, 2], "i": [1, 2], "t": stamps}), path)
    data = read_interactions(path, user_col="u", item_col="i", rating_col=None, timestamp_col="t")
    assert data.timestamp.tolist() == [1_000_000_000, 1_000_000_060]


def test_read_interaction_file_recognises_each_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from localfm.data.tabular import read_interaction_file

    (tmp_path / "ua.base").write_text("1\t10\t4\t100\n2\t20\t3\t101\n")
    (tmp_path / "r.csv").write_text("userId,movieId,rating\n1,10,4\n2,20,3\n")
    (tmp_path / "seen.tsv").write_text("user\titem\n1\t10\n2\t20\n")
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [10, 20], "rating": [4.0, 3.0]}),
                   tmp_path / "train_interactions.parquet")
    for name, ratings in (("ua.base", [4, 3]), ("r.csv", [4, 3]), ("seen.tsv", [1, 1]),
                          ("train_interactions.parquet", [4, 3])):
        rows = read_interaction_file(tmp_path / name)
        assert rows.user.tolist() == [1, 2] and rows.item.tolist() == [10, 20], name
        assert rows.rating.tolist() == ratings, name
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LocalFMError, match=r"test_interactions .*bad.csv: expected columns user_id and item_id"):
        read_interaction_file(tmp_path / "bad.csv", what="test_interactions")


def test_parquet_reads_only_the_named_columns(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"u": [1, 2], "i": [3, 4], "r": [1.0, 2.0], "note": ["x", "y"], "ts": [5, 6]}), path)
    read = []
    original = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, columns=None, **kw: read.append(columns)
                        or original(self, columns=columns, **kw))
    r = read_interactions(path, user_col="u", item_col="i", rating_col="r", timestamp_col="ts")
    assert read == [["u", "i", "r", "ts"]]
    assert r.user.tolist() == [1, 2] and r.timestamp.tolist() == [5, 6] and r.rating.dtype == np.float32
    assert r.user.flags.writeable and r.rating.flags.writeable  # numpy copies, not views of Arrow memory


def test_parquet_missing_or_repeated_columns_name_the_file_columns(tmp_path: Path) -> None:
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"u": [1], "i": [2], "r": [1.0]}), path)
    with pytest.raises(LocalFMError, match=r"missing column 'ts'; available columns: u, i, r"):
        read_interactions(path, user_col="u", item_col="i", rating_col="r", timestamp_col="ts")
    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3])], names=["u", "i", "u"]), twice)
    with pytest.raises(LocalFMError, match="column 'u' appears more than once"):
        read_interactions(twice, user_col="u", item_col="i", rating_col=None)
    # a repeated column that is not asked for is no problem
    extra = tmp_path / "extra.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3]), pa.array([4])],
                                        names=["u", "i", "x", "x"]), extra)
    r = read_interactions(extra, user_col="u", item_col="i", rating_col=None)
    assert (r.user.tolist(), r.item.tolist(), r.rating.tolist()) == ([1], [2], [1.0])
