"""Generic interactions from CSV or Parquet, with the columns named by the caller.

Anything that is not a GroupLens layout comes through here: a CSV (any one-character
delimiter, header row required) or a Parquet file with a user column, an item column,
a numeric rating column and optionally a timestamp column. Ids stay as they are:
integer columns give int64 ids, anything else gives string ids (so ``"u17"`` and
``"17"`` are never silently conflated). Problems raise :class:`LocalFMError` naming the
file and column.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LocalFMError
from .interactions import Interactions
from .movielens import read_ratings_file

# Column names an interactions file is recognised by, in order of preference.
KNOWN_COLUMNS = (("user_id", "item_id"), ("userId", "movieId"), ("user", "item"))


def read_interactions(
    path: str | Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str | None = None,
    sep: str | None = None,
) -> Interactions:
    """Read ``path`` (.csv/.tsv/.txt or .parquet) into :class:`Interactions`, rows in file order.

    ``rating_col=None`` means implicit feedback: every row gets rating 1.0.
    ``sep`` defaults to tab for .tsv and comma otherwise.
    """
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise LocalFMError(f"{path}: file not found")
    wanted = [c for c in (user_col, item_col, rating_col, timestamp_col) if c]
    if len(set(wanted)) != len(wanted):
        raise LocalFMError(f"{path}: the user/item/rating/timestamp columns must be different, got {wanted}")
    if path.suffix.lower() in (".parquet", ".pq"):
        table = _read_parquet(path, wanted)
    else:
        table = _read_csv(path, sep)
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise LocalFMError(
            f"{path}: missing column {missing[0]!r}; available columns: {', '.join(table.column_names)}"
        )
    repeated = [c for c in wanted if table.column_names.count(c) > 1]
    if repeated:  # pyarrow would raise KeyError on lookup: which of the two was meant is unknowable
        raise LocalFMError(f"{path}: column {repeated[0]!r} appears more than once in the header")
    if table.num_rows == 0:
        raise LocalFMError(f"{path}: no rows")
    user = _ids(table.column(user_col), path, user_col)
    item = _ids(table.column(item_col), path, item_col)
    if rating_col:
        rating = _numeric(table.column(rating_col), path, rating_col).astype(np.float32)
    else:
        rating = np.ones(table.num_rows, dtype=np.float32)
    timestamp = column = None
    if timestamp_col:
        column = table.column(timestamp_col)
        if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
            # Interactions hold whole seconds; pandas writes ns timestamps, so sub-second
            # parts are normal and are dropped (a safe cast refuses with ArrowInvalid).
            column = column.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
        timestamp = _numeric(column, path, timestamp_col).astype(np.int64)
    # The columns are numpy copies now. Arrow's allocator keeps the freed table's pages for
    # reuse (about 40 bytes a row: 1 GB at ML-25M size) while every later stage allocates
    # through numpy, so hand them back before prepare/recommend build on top of them.
    del table, column
    pa.default_memory_pool().release_unused()
    return Interactions(user=user, item=item, rating=rating, timestamp=timestamp)


def _read_parquet(path: Path, wanted: list[str]):  # noqa: ANN202 - pyarrow Table
    """Only the ``wanted`` columns, through ``ParquetFile``.

    Why not ``pq.read_table``: it decodes (and holds) every column of the file, wanted or
    not, and goes through the ``pyarrow.dataset`` machinery a single file does not need.
    When a wanted column is
    missing or repeated, the result is the file's empty schema, so the caller's checks
    name the problem from the full list of columns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            schema = pf.schema_arrow
            if all(schema.names.count(c) == 1 for c in wanted):
                return pf.read(columns=wanted)
            return schema.empty_table()
    except (pa.ArrowException, OSError) as exc:
        raise LocalFMError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _read_csv(path: Path, sep: str | None):  # noqa: ANN202 - pyarrow Table
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if sep is None:
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
    if sep in ("\\t", "tab"):
        sep = "\t"
    if len(sep) != 1:
        raise LocalFMError(f"sep {sep!r}: expected a single character", param="sep")
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise LocalFMError(f"{path}: empty file (expected a header row and one interaction per line)")
    try:
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=sep))
    except pa.ArrowInvalid as exc:
        raise LocalFMError(f"{path}: not a {sep!r}-separated file with a header ({str(exc).splitlines()[0]})") from None


def _ids(column, path: Path, name: str) -> np.ndarray:  # noqa: ANN001 - pyarrow ChunkedArray
    import pyarrow as pa

    if column.null_count:
        raise LocalFMError(f"{path}: column {name!r} has {column.null_count} empty values")
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    if pa.types.is_floating(column.type):
        values = column.to_numpy()
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
    # Nested columns (lists, structs) and non-UTF-8 bytes cannot be ids; Arrow says so with
    # its own exception types, which must not escape as a crash.
    try:
        text = column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise LocalFMError(f"{path}: column {name!r} of type {column.type} cannot be used as ids "
                           f"(expected integers or UTF-8 text: {str(exc).splitlines()[0]})") from None
    return np.asarray(text.to_pylist(), dtype=str)


def _numeric(column, path: Path, name: str) -> np.ndarray:  # noqa: ANN001 - pyarrow ChunkedArray
    import pyarrow as pa

    if column.null_count:
        raise LocalFMError(f"{path}: column {name!r} has {column.null_count} empty values")
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        sample = next((v for v in column.to_pylist() if not _is_number(v)), None)
        raise LocalFMError(f"{path}: column {name!r} must be numeric, found {sample!r}")
    values = column.to_numpy()
    if not np.all(np.isfinite(values)):
        raise LocalFMError(f"{path}: column {name!r} must hold finite numbers")
    return values


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def read_interaction_file(path: str | Path, *, what: str = "interactions") -> Interactions:
    """Any interactions file localfm meets, its layout recognised from the file itself.

    One reader for every "who rated what" input (seen items in ``recommend``, the train and
    test sides of ``evaluate``), so they accept the same files with the same errors:
    ``*_interactions.parquet`` written by ``localfm prepare``, a MovieLens
    ``u.data``/``*.base``/``*.test``/``ratings.dat`` file, or a CSV/Parquet whose header has
    one of :data:`KNOWN_COLUMNS` (plus ``rating`` when present; absent means 1.0).
    """
    import pyarrow as pa

    p = Path(path)
    if not p.is_file():
        raise LocalFMError(f"{what} {p}: file not found")
    if p.name.lower() == "u.data" or p.suffix.lower() in (".base", ".test", ".dat"):
        return read_ratings_file(p)
    cols = _column_names(p, what)
    for ucol, icol in KNOWN_COLUMNS:
        if ucol in cols and icol in cols:
            try:
                return read_interactions(p, user_col=ucol, item_col=icol,
                                         rating_col="rating" if "rating" in cols else None)
            except pa.ArrowException as exc:
                # e.g. an id column that is not valid UTF-8: pyarrow's error, not bad-input exit 2.
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise LocalFMError(f"{what} {p}: cannot read columns {ucol}, {icol} ({first})") from None
    raise LocalFMError(f"{what} {p}: expected columns user_id and item_id; found {', '.join(cols) or 'none'}")


def _column_names(p: Path, what: str) -> list[str]:
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(p).names)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise LocalFMError(f"{what} {p}: not a readable Parquet file ({type(exc).__name__})") from None
    with open(p, encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    sep = "\t" if p.suffix.lower() == ".tsv" else ","
    return [c.strip() for c in header.rstrip("\r\n").split(sep)]
