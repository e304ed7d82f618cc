"""Result sinks: same rows back from every backend; failures keep the previous results."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.recommend.sinks import ResultBatch, open_sink, read_results, redact, sink_kind, write_results


def _batches(n_users=5, k=3, offset=0.0, text=False):
    out = []
    for start in range(0, n_users, 2):
        users = np.arange(start, min(start + 2, n_users)) + 1
        uid = np.repeat(users, k)
        rank = np.tile(np.arange(1, k + 1), len(users))
        iid = uid * 100 + rank
        if text:
            uid = np.array([f"u\t{u}" for u in uid])
            iid = np.array([f"item-{i}\\x" for i in iid])
        out.append(ResultBatch(uid, rank, iid, -rank.astype(np.float64) + offset + 0.123456789012345))
    return out


def _rows(batches):
    cols = {c: [] for c in ("user_id", "rank", "item_id", "score")}
    for b in batches:
        for c in cols:
            cols[c].extend(np.asarray(getattr(b, c)).tolist())
    return cols


def _boom(batches):
    yield batches[0]
    raise RuntimeError("upstream failure mid-run")


@pytest.fixture(params=["sqlite", "parquet", "jsonl", "postgresql"])
def target(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / {"sqlite": "r.sqlite", "parquet": "r.parquet", "jsonl": "r.jsonl"}[request.param])


def test_roundtrip_and_atomic_replace(target):
    first = _batches()
    assert write_results(target, first) == 15
    assert read_results(target) == _rows(first)
    # A failing second run leaves the first results intact.
    with pytest.raises(RuntimeError, match="mid-run"):
        write_results(target, _boom(_batches(offset=10)))
    assert read_results(target) == _rows(first)
    # A successful second run replaces them completely (fewer users: no leftovers).
    second = _batches(n_users=3, offset=10)
    write_results(target, second)
    assert read_results(target) == _rows(second)


@pytest.mark.parametrize("fmt", ["sqlite", "parquet", "jsonl"])
def test_text_ids_roundtrip(tmp_path, fmt):
    target = str(tmp_path / f"r.{fmt}")
    b = _batches(text=True)
    write_results(target, b, user_id_kind="text", item_id_kind="text")
    assert read_results(target) == _rows(b)


def test_text_ids_roundtrip_postgresql(pg_url):
    b = _batches(text=True)
    write_results(pg_url, b, table="text_ids", user_id_kind="text", item_id_kind="text")
    assert read_results(pg_url, table="text_ids") == _rows(b)


def test_sqlite_has_user_index_and_one_table(tmp_path):
    db = tmp_path / "r.sqlite"
    write_results(str(db), _batches())
    write_results(str(db), _batches())
    conn = sqlite3.connect(db)
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
    plan = " ".join(str(r) for r in conn.execute("explain query plan select * from recommendations where user_id=3"))
    conn.close()
    assert tables == ["recommendations"]
    assert "recommendations_user_idx" in plan


def test_sqlite_locked_database_exits_cleanly_and_keeps_results(tmp_path):
    db = tmp_path / "r.sqlite"
    first = _batches()
    write_results(str(db), first)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(LocalFMError, match="locked"):
            write_results(str(db), _batches(offset=5), lock_timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert read_results(str(db)) == _rows(first)


def test_postgresql_locked_table_exits_cleanly_and_keeps_results(pg_url):
    import psycopg

    first = _batches()
    write_results(pg_url, first, table="locked")
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE locked IN ACCESS SHARE MODE")  # a long reader
        with pytest.raises(LocalFMError, match="locked"):
            write_results(pg_url, _batches(offset=5), table="locked", lock_timeout=0.2)
    assert read_results(pg_url, table="locked") == _rows(first)


def test_unwritable_targets(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for name in ("r.sqlite", "r.parquet", "r.jsonl"):
        with pytest.raises(LocalFMError, match="cannot"):
            write_results(str(blocker / name), _batches())
    notdb = tmp_path / "bad.sqlite"
    notdb.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LocalFMError, match="not an SQLite database"):
        write_results(str(notdb), _batches())
    assert notdb.read_bytes() == b"this is not sqlite" * 100


def test_unreachable_postgresql_hides_password():
    with pytest.raises(LocalFMError) as info:
        write_results("postgresql://me:s3cret@127.0.0.1:1/db", _batches(), lock_timeout=0)
    assert "s3cret" not in str(info.value) and "cannot connect" in str(info.value)


def test_no_temp_files_left_after_failure(tmp_path):
    target = tmp_path / "r.parquet"
    with pytest.raises(RuntimeError):
        write_results(str(target), _boom(_batches()))
    assert list(tmp_path.iterdir()) == []


def test_failed_run_leaves_no_new_empty_sqlite_file(tmp_path):
    """sqlite3.connect created the database before the run failed, leaving an empty file where none was."""
    target = tmp_path / "new.sqlite"
    with pytest.raises(RuntimeError, match="mid-run"):
        write_results(str(target), _boom(_batches()))
    assert list(tmp_path.iterdir()) == []
    # An existing database is kept as it was (here: the results of a good run).
    write_results(str(target), _batches())
    with pytest.raises(RuntimeError, match="mid-run"):
        write_results(str(target), _boom(_batches(offset=3)))
    assert read_results(str(target)) == _rows(_batches())


def test_sink_kind_and_errors():
    assert sink_kind("a.db") == "sqlite" and sink_kind("sqlite:///x/y") == "sqlite"
    assert sink_kind("postgresql+psycopg://u@h/d") == "postgresql"
    assert sink_kind("x.ndjson") == "jsonl"
    with pytest.raises(LocalFMError, match="expected a .sqlite"):
        sink_kind("results.csv")
    with pytest.raises(LocalFMError, match="identifier"):
        with open_sink("x.sqlite", table="drop table; --"):
            pass
    assert redact("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    # sqlite_url_without_path: used to open "." and report "is a directory"
    with pytest.raises(LocalFMError, match="expected a database file path after sqlite:///"):
        write_results("sqlite:///", _batches())


def test_parquet_dictionary_encodes_ids_and_ranks_but_not_scores(tmp_path):
    """Ids and ranks repeat (k rows per user, few items): dictionary pages; scores are all distinct: plain."""
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    write_results(str(path), _batches(n_users=6, k=4))
    col = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {col.column(i).path_in_schema: set(col.column(i).encodings) for i in range(col.num_columns)}
    for name in ("user_id", "rank", "item_id"):
        assert "RLE_DICTIONARY" in encodings[name] or "PLAIN_DICTIONARY" in encodings[name], encodings
    assert not encodings["score"] & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}, encodings
