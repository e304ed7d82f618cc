"""Where recommendations go: SQLite (default), PostgreSQL, Parquet, JSON Lines.

Every sink has the same contract, because a recommender's readers (an API, a
dashboard) must never see half a run:

* rows are ``(user_id, rank, item_id, score)``, rank 1 = best, one row per recommendation;
* results are streamed in batches (memory stays bounded for any number of users);
* the previous results stay fully visible until the new ones are complete, then are
  replaced in one step: a database transaction (create a new table, fill it, drop the
  old one, rename) or a file rename (``localfm.io.atomic``);
* any failure (locked or unwritable database, bad URL, an error upstream) leaves the
  previous results intact and raises :class:`LocalFMError` (exit 2) with one line.

Targets: ``PATH.sqlite`` / ``.sqlite3`` / ``.db`` or ``sqlite:///PATH``; ``PATH.parquet``;
``PATH.jsonl`` / ``.ndjson``; ``postgresql://user:pass@host:port/db`` (SQLAlchemy-style
``postgresql+psycopg://`` accepted; psycopg 3 does the work, COPY for speed).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..io.atomic import atomic_outputs

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")
_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://", "postgresql+psycopg2://", "postgres+psycopg://")


@dataclass
class ResultBatch:
    """Parallel columns for one batch of users (rows grouped by user, rank ascending)."""

    user_id: np.ndarray
    rank: np.ndarray
    item_id: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.rank)


Writer = Callable[[ResultBatch], None]


def sink_kind(target: str) -> str:
    """``sqlite`` | ``postgresql`` | ``parquet`` | ``jsonl`` for a ``target`` (path or URL)."""
    t = str(target)
    if t.startswith(_PG_SCHEMES):
        return "postgresql"
    if t.startswith("sqlite:///"):
        return "sqlite"
    suffix = Path(t).suffix.lower()
    if suffix in (".sqlite", ".sqlite3", ".db"):
        return "sqlite"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise LocalFMError(
        f"target {redact(t)}: expected a .sqlite/.sqlite3/.db, .parquet or .jsonl path, sqlite:///PATH, "
        "or a postgresql:// URL", param="target"
    )


def redact(target: str) -> str:
    """The target with any password removed, for error messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(target))


def _sqlite_path(target: str) -> str:
    """The file of an SQLite target; ``sqlite:///`` with nothing after it is bad input
    (it used to become ``.``, reported as "is a directory")."""
    t = str(target)
    path = t.removeprefix("sqlite:///")
    if not path:
        raise LocalFMError(f"target {t}: expected a database file path after sqlite:///", param="target")
    return path


def _check_table(table: str) -> str:
    if not _IDENT.match(table):
        raise LocalFMError(f"table {table!r}: expected a plain SQL identifier (letters, digits, _)", param="table")
    return table


def id_kind(ids: np.ndarray) -> str:
    return "int" if np.asarray(ids).dtype.kind in "iu" else "text"


def _py_ids(ids: np.ndarray, kind: str) -> list[Any]:
    arr = np.asarray(ids)
    return arr.astype(np.int64).tolist() if kind == "int" else [str(x) for x in arr.tolist()]


def _arrow_ids(ids: np.ndarray, kind: str, type_: Any) -> Any:
    """An Arrow column of ids; integer ids go straight from NumPy (no Python list per row)."""
    import pyarrow as pa

    if kind == "int":
        return pa.array(np.asarray(ids).astype(np.int64, copy=False), type=type_)
    return pa.array(_py_ids(ids, kind), type=type_)


@contextlib.contextmanager
def open_sink(
    target: str,
    *,
    table: str = "recommendations",
    user_id_kind: str = "int",
    item_id_kind: str = "int",
    lock_timeout: float = 5.0,
) -> Iterator[Writer]:
    """Yield ``write(batch)``; on normal exit the results replace the previous ones atomically.

    ``*id_kind`` is ``"int"`` or ``"text"`` (the column types). ``lock_timeout`` is how
    long to wait for a database another process holds before giving up (exit 2).
    """
    kind = sink_kind(target)
    if kind == "sqlite":
        with _sqlite_sink(Path(_sqlite_path(target)), _check_table(table), user_id_kind, item_id_kind, lock_timeout) as w:
            yield w
    elif kind == "postgresql":
        with _pg_sink(str(target), _check_table(table), user_id_kind, item_id_kind, lock_timeout) as w:
            yield w
    elif kind == "parquet":
        with _parquet_sink(Path(target), user_id_kind, item_id_kind) as w:
            yield w
    else:
        with _jsonl_sink(Path(target), user_id_kind, item_id_kind) as w:
            yield w


def write_results(target: str, batches: Any, **kwargs: Any) -> int:
    """Write an iterable of :class:`ResultBatch` to ``target``; returns the row count."""
    n = 0
    with open_sink(target, **kwargs) as write:
        for batch in batches:
            write(batch)
            n += len(batch)
    return n


# ---------------------------------------------------------------- SQLite


def _sql_type(kind: str, *, pg: bool = False) -> str:
    if kind == "int":
        return "BIGINT" if pg else "INTEGER"
    return "TEXT"


def _sqlite_error(path: Path, exc: sqlite3.Error) -> LocalFMError:
    msg = str(exc)
    if "locked" in msg or "busy" in msg:
        return LocalFMError(f"{path}: database is locked by another process (previous results kept)")
    if "readonly" in msg or "unable to open" in msg or "disk I/O" in msg:
        return LocalFMError(f"{path}: cannot write the database ({msg}; previous results kept)")
    if "not a database" in msg:
        return LocalFMError(f"{path}: exists but is not an SQLite database")
    return LocalFMError(f"{path}: SQLite error: {msg} (previous results kept)")


@contextlib.contextmanager
def _sqlite_sink(path: Path, table: str, ukind: str, ikind: str, lock_timeout: float) -> Iterator[Writer]:
    if path.is_dir():
        raise LocalFMError(f"{path}: is a directory, expected an SQLite database file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFMError(f"{path}: cannot create the parent directory ({exc.strerror})") from None
    new = f"{table}__new"
    # connect() creates a missing file at once; a run that then fails must not leave an
    # empty database behind where there was none (the file targets leave nothing either).
    created = not path.exists()
    try:
        conn = sqlite3.connect(str(path), timeout=lock_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise _sqlite_error(path, exc) from None
    ok = False
    try:
        try:
            # IMMEDIATE takes the write lock now: a locked database fails here, before any work.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f'DROP TABLE IF EXISTS "{new}"')
            conn.execute(
                f'CREATE TABLE "{new}" (user_id {_sql_type(ukind)} NOT NULL, rank INTEGER NOT NULL, '
                f"item_id {_sql_type(ikind)} NOT NULL, score REAL NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise _sqlite_error(path, exc) from None

        def write(batch: ResultBatch) -> None:
            rows = zip(
                _py_ids(batch.user_id, ukind),
                np.asarray(batch.rank, dtype=np.int64).tolist(),
                _py_ids(batch.item_id, ikind),
                np.asarray(batch.score, dtype=np.float64).tolist(),
            )
            try:
                conn.executemany(f'INSERT INTO "{new}" VALUES (?, ?, ?, ?)', rows)
            except sqlite3.Error as exc:
                raise _sqlite_error(path, exc) from None

        try:
            yield write
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            conn.execute(f'ALTER TABLE "{new}" RENAME TO "{table}"')
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{table}_user_idx" ON "{table}" (user_id, rank)')
            conn.execute("COMMIT")
            ok = True
        except sqlite3.Error as exc:
            raise _sqlite_error(path, exc) from None
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
        if created and not ok:
            for leftover in (path, path.with_name(path.name + "-journal")):
                with contextlib.suppress(OSError):
                    leftover.unlink()


# ---------------------------------------------------------------- PostgreSQL


def pg_conninfo(url: str) -> str:
    """A libpq URL from an SQLAlchemy-style one (``postgresql+psycopg://`` → ``postgresql://``)."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


@contextlib.contextmanager
def _pg_sink(url: str, table: str, ukind: str, ikind: str, lock_timeout: float) -> Iterator[Writer]:
    try:
        import psycopg
    except ImportError:
        raise LocalFMError("postgresql:// outputs need psycopg 3: pip install 'localfm[postgres]'") from None
    shown = redact(url)
    try:
        conn = psycopg.connect(pg_conninfo(url), connect_timeout=max(1, int(lock_timeout) + 5), autocommit=False)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        raise LocalFMError(f"{shown}: cannot connect to PostgreSQL ({redact(first)})") from None
    new = f"{table}__new_{uuid.uuid4().hex[:12]}"
    try:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
                cur.execute(
                    f'CREATE TABLE "{new}" (user_id {_sql_type(ukind, pg=True)} NOT NULL, rank INTEGER NOT NULL, '
                    f"item_id {_sql_type(ikind, pg=True)} NOT NULL, score DOUBLE PRECISION NOT NULL)"
                )
        except psycopg.Error as exc:
            raise _pg_error(shown, exc) from None

        def write(batch: ResultBatch) -> None:
            lines = _tsv(batch, ukind, ikind)
            try:
                with conn.cursor() as cur, cur.copy(f'COPY "{new}" (user_id, rank, item_id, score) FROM STDIN') as cp:
                    cp.write(lines)
            except psycopg.Error as exc:
                raise _pg_error(shown, exc) from None

        yield write
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP TABLE IF EXISTS "{table}"')
                cur.execute(f'ALTER TABLE "{new}" RENAME TO "{table}"')
                cur.execute(f'CREATE INDEX "{table}_user_{uuid.uuid4().hex[:8]}" ON "{table}" (user_id, rank)')
            conn.commit()
        except psycopg.Error as exc:
            raise _pg_error(shown, exc) from None
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
    finally:
        conn.close()


def _pg_error(shown: str, exc: Exception) -> LocalFMError:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if sqlstate == "55P03" or "lock timeout" in first:
        return LocalFMError(f"{shown}: table is locked by another session (previous results kept)")
    if sqlstate.startswith("42"):
        return LocalFMError(f"{shown}: not allowed or invalid ({first}; previous results kept)")
    return LocalFMError(f"{shown}: PostgreSQL error: {first} (previous results kept)")


def _tsv_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _tsv(batch: ResultBatch, ukind: str, ikind: str) -> bytes:
    """COPY text format for one batch (escaping text ids); floats in shortest round-trip form."""
    users = _py_ids(batch.user_id, ukind)
    items = _py_ids(batch.item_id, ikind)
    if ukind == "text":
        users = [_tsv_text(u) for u in users]
    if ikind == "text":
        items = [_tsv_text(i) for i in items]
    ranks = np.asarray(batch.rank, dtype=np.int64).tolist()
    scores = np.asarray(batch.score, dtype=np.float64).tolist()
    return "".join(f"{u}\t{r}\t{i}\t{s!r}\n" for u, r, i, s in zip(users, ranks, items, scores)).encode("utf-8")


# ---------------------------------------------------------------- files


def _arrow_schema(ukind: str, ikind: str) -> Any:
    import pyarrow as pa

    idt = {"int": pa.int64(), "text": pa.string()}
    return pa.schema(
        [("user_id", idt[ukind]), ("rank", pa.int32()), ("item_id", idt[ikind]), ("score", pa.float64())]
    )


@contextlib.contextmanager
def _file_target(path: Path) -> Iterator[Path]:
    """A temp sibling renamed over ``path`` on success; mapped OS errors; nothing left on failure."""
    if path.is_dir():
        raise LocalFMError(f"{path}: is a directory, expected a file path")
    try:
        with atomic_outputs() as outs:
            tmp = outs.path(path)
            yield tmp
    except OSError as exc:
        raise LocalFMError(f"{path}: cannot write ({exc.strerror or exc}; previous results kept)") from None


@contextlib.contextmanager
def _parquet_sink(path: Path, ukind: str, ikind: str) -> Iterator[Writer]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(ukind, ikind)
    with _file_target(path) as tmp:
        # Dictionary-encode the repetitive columns only: every score is distinct, and trying a
        # dictionary on them first made the file larger and its writing ~3x slower.
        writer = pq.ParquetWriter(str(tmp), schema, use_dictionary=["user_id", "rank", "item_id"])
        try:

            def write(batch: ResultBatch) -> None:
                table = pa.table(
                    {
                        "user_id": _arrow_ids(batch.user_id, ukind, schema.field("user_id").type),
                        "rank": pa.array(np.asarray(batch.rank, dtype=np.int32)),
                        "item_id": _arrow_ids(batch.item_id, ikind, schema.field("item_id").type),
                        "score": pa.array(np.asarray(batch.score, dtype=np.float64)),
                    },
                    schema=schema,
                )
                writer.write_table(table)

            yield write
        finally:
            writer.close()


@contextlib.contextmanager
def _jsonl_sink(path: Path, ukind: str, ikind: str) -> Iterator[Writer]:
    with _file_target(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:

        def write(batch: ResultBatch) -> None:
            users = _py_ids(batch.user_id, ukind)
            items = _py_ids(batch.item_id, ikind)
            ranks = np.asarray(batch.rank, dtype=np.int64).tolist()
            scores = np.asarray(batch.score, dtype=np.float64).tolist()
            fh.writelines(
                json.dumps({"user_id": u, "rank": r, "item_id": i, "score": s}) + "\n"
                for u, r, i, s in zip(users, ranks, items, scores)
            )

        yield write
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------- reading back


def read_results(target: str, *, table: str = "recommendations") -> dict[str, list[Any]]:
    """All rows of a results target as columns, ordered by (user_id, rank): for tests and parity."""
    kind = sink_kind(target)
    if kind == "sqlite":
        path = _sqlite_path(target)
        if not Path(path).is_file():
            raise LocalFMError(f"{path}: file not found")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                f'SELECT user_id, rank, item_id, score FROM "{_check_table(table)}" ORDER BY user_id, rank'
            ).fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error(Path(path), exc) from None
        finally:
            conn.close()
    elif kind == "postgresql":
        import psycopg

        with psycopg.connect(pg_conninfo(str(target))) as conn:
            rows = conn.execute(
                f'SELECT user_id, rank, item_id, score FROM "{_check_table(table)}" ORDER BY user_id, rank'
            ).fetchall()
    elif kind == "parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(str(target)).sort_by([("user_id", "ascending"), ("rank", "ascending")])
        return {c: t.column(c).to_pylist() for c in ("user_id", "rank", "item_id", "score")}
    else:
        recs = [json.loads(line) for line in Path(target).read_text(encoding="utf-8").splitlines() if line]
        recs.sort(key=lambda r: (r["user_id"], r["rank"]))
        rows = [(r["user_id"], r["rank"], r["item_id"], r["score"]) for r in recs]
    cols = list(zip(*rows)) if rows else [(), (), (), ()]
    return {name: list(col) for name, col in zip(("user_id", "rank", "item_id", "score"), cols)}
