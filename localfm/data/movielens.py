"""Readers for the GroupLens MovieLens layouts, from a directory or the original .zip.

Layouts (detected from the file names present):

- ``ml-100k``: ``u.data`` (tab: user item rating timestamp), ``u.item`` (pipe, latin-1,
  24 columns: id|title|release|video release|URL|19 genre flags), ``u.user``
  (id|age|gender|occupation|zip), ``u.genre``, ``u.occupation``. The embedded synthetic
  dataset uses this layout too, so one reader serves both.
- ``ml-1m``: ``ratings.dat`` / ``users.dat`` / ``movies.dat``, ``::``-separated, latin-1;
  age is a group code (1, 18, 25, 35, 45, 50, 56) and occupation an integer code 0-20.
- ``ml-10m``: ``ratings.dat`` / ``movies.dat`` (``::``), half-star ratings, no user file.
- ``ml-20m`` (also ml-25m and ml-latest): ``ratings.csv`` / ``movies.csv`` with a header.

A .zip is read member by member without extracting anything (no path can escape, no
temporary files). Text is decoded so that no character is lost: the old layouts are
latin-1 (every byte maps to one character, e.g. ``0xE9`` → ``é`` in u.item); the CSV
layouts are UTF-8. Files that cannot be parsed raise :class:`LocalFMError` naming the
file and what was expected.
"""
from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

from ..errors import LocalFMError
from .ids import distinct
from .interactions import Interactions

#: The 19 genres of ml-100k in u.genre order (used when u.genre is absent).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

#: ml-1m users.dat occupation codes 0..20, as listed in the ml-1m README.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]

#: Age groups as ml-1m codes them (lower bound of each group). ml-100k stores raw ages,
#: which are bucketed into the same groups so side features mean the same thing.
AGE_GROUP_BOUNDS = [1, 18, 25, 35, 45, 50, 56]
AGE_GROUP_LABELS = ["under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]

LAYOUTS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m")


@dataclass(frozen=True)
class UserTable:
    """Demographics per user (ml-100k, ml-1m). ``age`` is years (ml-100k) or the ml-1m group code."""

    ids: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray
    occupations: list[str]

    def age_group(self) -> np.ndarray:
        """Index into :data:`AGE_GROUP_LABELS` for each user (works for years and ml-1m codes)."""
        return np.searchsorted(np.asarray(AGE_GROUP_BOUNDS), self.age, side="right").clip(1) - 1


@dataclass(frozen=True)
class ItemTable:
    """Titles and multi-hot genres per movie (``genres[i, g]`` is 1 when movie i has genre g)."""

    ids: np.ndarray
    titles: list[str]
    genres: np.ndarray
    genre_names: list[str]


@dataclass(frozen=True)
class MovieLens:
    """One MovieLens dataset: ratings in file order plus whatever catalog files it ships."""

    layout: str
    ratings: Interactions
    users: UserTable | None
    items: ItemTable | None
    source: str

    def all_user_ids(self) -> np.ndarray:
        """Every user id the dataset knows (catalog ∪ ratings), ascending."""
        ids = [distinct(self.ratings.user)]
        if self.users is not None:
            ids.append(self.users.ids)
        return distinct(np.concatenate(ids))

    def all_item_ids(self) -> np.ndarray:
        """Every item id the dataset knows (catalog ∪ ratings), ascending."""
        ids = [distinct(self.ratings.item)]
        if self.items is not None:
            ids.append(self.items.ids)
        return distinct(np.concatenate(ids))


# --------------------------------------------------------------------------- sources


class _Source:
    """A directory or a .zip, addressed by member base name (``u.data``, ``ratings.csv``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        if path.is_dir():
            return
        if not path.exists():
            raise LocalFMError(f"{path}: no such directory or .zip file")
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise LocalFMError(f"{path}: expected a MovieLens directory or .zip ({exc})") from None
        # Shallowest member wins for each base name; macOS resource forks are ignored.
        for info in sorted(self._zip.infolist(), key=lambda i: i.filename.count("/")):
            name = PurePosixPath(info.filename)
            if info.is_dir() or "__MACOSX" in name.parts or name.name.startswith("._"):
                continue
            self._members.setdefault(name.name, info.filename)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def has(self, name: str) -> bool:
        if self._zip is not None:
            return name in self._members
        return (self.path / name).is_file()

    def where(self, name: str) -> str:
        """How to name the file in messages: a path, or ``archive.zip:member``."""
        if self._zip is not None:
            return f"{self.path}:{self._members.get(name, name)}"
        return str(self.path / name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if not self.has(name):
            raise LocalFMError(f"{self.where(name)}: file not found")
        if self._zip is not None:
            with self._zip.open(self._members[name]) as fh:
                yield fh
        else:
            with open(self.path / name, "rb") as fh:
                yield fh

    def read_bytes(self, name: str) -> bytes:
        """The whole member; a damaged zip member (bad deflate stream, CRC) is bad input, not a crash."""
        try:
            with self.open(name) as fh:
                return fh.read()
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise LocalFMError(f"{self.where(name)}: corrupt zip member ({exc})") from None

    def read_text(self, name: str, encoding: str) -> str:
        data = self.read_bytes(name)
        if encoding == "utf-8-or-latin-1":
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data.decode("latin-1")
        return data.decode(encoding)


def detect_layout(path: str | Path) -> str:
    """Which GroupLens layout ``path`` (directory or .zip) holds; error if none."""
    src = _Source(Path(path))
    try:
        return _detect(src)
    finally:
        src.close()


def _detect(src: _Source) -> str:
    if src.has("u.data"):
        return "ml-100k"
    if src.has("ratings.dat"):
        return "ml-1m" if src.has("users.dat") else "ml-10m"
    if src.has("ratings.csv"):
        return "ml-20m"
    raise LocalFMError(
        f"{src.path}: not a MovieLens dataset (expected u.data, ratings.dat or ratings.csv inside)"
    )


def load_movielens(path: str | Path) -> MovieLens:
    """Read a MovieLens dataset from a directory or the original GroupLens .zip."""
    src = _Source(Path(path))
    try:
        layout = _detect(src)
        if layout == "ml-100k":
            ratings = _read_ratings(src, "u.data", b"\t", header=None)
            users = _read_100k_users(src) if src.has("u.user") else None
            items = _read_100k_items(src) if src.has("u.item") else None
        elif layout in ("ml-1m", "ml-10m"):
            ratings = _read_ratings(src, "ratings.dat", b"::", header=None)
            users = _read_1m_users(src) if src.has("users.dat") else None
            encoding = "latin-1" if layout == "ml-1m" else "utf-8-or-latin-1"
            items = _read_dat_movies(src, encoding) if src.has("movies.dat") else None
        else:
            ratings = _read_ratings(
                src, "ratings.csv", b",", header=("userId", "movieId", "rating", "timestamp")
            )
            users = None
            items = _read_csv_movies(src) if src.has("movies.csv") else None
    finally:
        src.close()
    return MovieLens(layout=layout, ratings=ratings, users=users, items=items, source=str(path))


def read_split_files(path: str | Path, name: str) -> tuple[Interactions, Interactions]:
    """The shipped ``NAME.base`` / ``NAME.test`` files of an ml-100k directory or zip, as (train, test).

    ``localfm.data.splits.grouplens_split`` recomputes these from u.data (and a test proves
    the two agree); reading the files is for checking and for datasets shipped with
    their own split files in the same format.
    """
    from .splits import GROUPLENS_SPLITS

    if name not in GROUPLENS_SPLITS:
        raise LocalFMError(f"split {name!r}: expected one of {', '.join(GROUPLENS_SPLITS)}")
    src = _Source(Path(path))
    try:
        return (
            _read_ratings(src, f"{name}.base", b"\t", header=None),
            _read_ratings(src, f"{name}.test", b"\t", header=None),
        )
    finally:
        src.close()


def read_ratings_file(path: str | Path) -> Interactions:
    """One MovieLens ratings file on its own: ``u.data``, ``NAME.base`` / ``NAME.test`` (tab) or
    ``ratings.dat`` (``::``), headerless, ``user item rating timestamp`` per line.

    For callers that hold a single file rather than a dataset folder (the
    already-rated pairs that :func:`localfm.recommend.recommend_all` excludes).
    """
    p = Path(path)
    src = _Source(p.parent)
    try:
        return _read_ratings(src, p.name, b"::" if p.name.lower().endswith(".dat") else b"\t", header=None)
    finally:
        src.close()


# --------------------------------------------------------------------------- ratings

_RATING_COLUMNS = ("user", "item", "rating", "timestamp")


def _read_ratings(src: _Source, name: str, sep: bytes, header: tuple[str, ...] | None) -> Interactions:
    """Parse a ratings file with pyarrow's CSV reader (fast: ml-25m is 25M rows)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    where = src.where(name)
    data = src.read_bytes(name)
    if sep == b"::":
        # pyarrow needs a one-byte delimiter; "::" never occurs inside numeric fields.
        data = data.replace(b"::", b"\t")
        delimiter, sep_name = "\t", "'::'"
    else:
        delimiter = sep.decode()
        sep_name = "tab" if delimiter == "\t" else repr(delimiter)
    if not data.strip():
        raise LocalFMError(f"{where}: empty file (expected one rating per line)")
    if header is not None:
        first = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(delimiter)
        if tuple(c.strip() for c in first) != header:
            raise LocalFMError(f"{where}: expected header {','.join(header)}, found {','.join(first)!r}")
    read = pacsv.ReadOptions(column_names=list(_RATING_COLUMNS), skip_rows=1 if header else 0)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(
        column_types={"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
    )
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        detail = str(exc).splitlines()[0]
        raise LocalFMError(
            f"{where}: expected 4 {sep_name}-separated numeric columns (user item rating timestamp): {detail}"
        ) from None
    if table.num_rows == 0:
        raise LocalFMError(f"{where}: no ratings found")
    cols = {}
    for col in _RATING_COLUMNS:
        array = table.column(col)
        if array.null_count:
            raise LocalFMError(f"{where}: column {col} has {array.null_count} empty values")
        cols[col] = array.to_numpy()
    rating = cols["rating"]
    if not np.all(np.isfinite(rating)):
        raise LocalFMError(f"{where}: ratings must be finite numbers")
    return Interactions(
        user=cols["user"].astype(np.int64),
        item=cols["item"].astype(np.int64),
        rating=rating.astype(np.float32),
        timestamp=cols["timestamp"].astype(np.int64),
    )


# --------------------------------------------------------------------------- catalogs


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) for non-blank lines, tolerating CRLF."""
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _int(value: str, where: str, line: int, field: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    # Ids end up in int64 arrays; a bigger number would be an OverflowError there.
    if number is None or not -(1 << 63) <= number < (1 << 63):
        raise LocalFMError(f"{where} line {line}: {field} must be a 64-bit integer, got {value!r}")
    return number


def _read_100k_genres(src: _Source) -> list[str]:
    if not src.has("u.genre"):
        return list(ML100K_GENRES)
    where = src.where("u.genre")
    pairs = []
    for n, line in _lines(src.read_text("u.genre", "latin-1")):
        name, sep, index = line.rpartition("|")
        if not sep:
            raise LocalFMError(f"{where} line {n}: expected name|index")
        pairs.append((_int(index, where, n, "genre index"), name))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise LocalFMError(f"{where}: genre indices must be 0..{len(pairs) - 1} without gaps")
    return [name for _, name in pairs]


def _read_100k_items(src: _Source) -> ItemTable:
    genre_names = _read_100k_genres(src)
    where = src.where("u.item")
    n_fields = 5 + len(genre_names)
    ids, titles, genres = [], [], []
    # latin-1 maps every byte to one character, so titles such as "Misérables" survive.
    for n, line in _lines(src.read_text("u.item", "latin-1")):
        fields = line.split("|")
        if len(fields) != n_fields:
            raise LocalFMError(
                f"{where} line {n}: expected {n_fields} '|'-separated fields "
                f"(id|title|release date|video release date|URL|{len(genre_names)} genre flags), got {len(fields)}"
            )
        ids.append(_int(fields[0], where, n, "movie id"))
        titles.append(fields[1])
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise LocalFMError(f"{where} line {n}: genre flags must be 0 or 1")
        genres.append([f == "1" for f in flags])
    return _item_table(where, ids, titles, np.array(genres, dtype=bool).reshape(len(ids), len(genre_names)), genre_names)


def _item_table(where: str, ids: list[int], titles: list[str], genres: np.ndarray, names: list[str]) -> ItemTable:
    id_array = np.asarray(ids, dtype=np.int64)
    if len(distinct(id_array)) != len(id_array):
        raise LocalFMError(f"{where}: duplicate movie ids")
    return ItemTable(ids=id_array, titles=titles, genres=genres, genre_names=names)


def _read_100k_users(src: _Source) -> UserTable:
    where = src.where("u.user")
    ids, ages, genders, occupations, zips = [], [], [], [], []
    for n, line in _lines(src.read_text("u.user", "latin-1")):
        fields = line.split("|")
        if len(fields) != 5:
            raise LocalFMError(f"{where} line {n}: expected 5 '|'-separated fields (id|age|gender|occupation|zip), got {len(fields)}")
        ids.append(_int(fields[0], where, n, "user id"))
        ages.append(_int(fields[1], where, n, "age"))
        genders.append(fields[2])
        occupations.append(fields[3])
        zips.append(fields[4])
    if src.has("u.occupation"):
        vocab = [line.strip() for _, line in _lines(src.read_text("u.occupation", "latin-1"))]
        unknown = sorted(set(occupations) - set(vocab))
        if unknown:
            raise LocalFMError(f"{where}: occupation {unknown[0]!r} is not listed in u.occupation")
    else:
        vocab = sorted(set(occupations))
    return _user_table(where, ids, ages, genders, occupations, zips, vocab)


def _user_table(where: str, ids: list[int], ages: list[int], genders: list[str],
                occupations: list[str], zips: list[str], vocab: list[str]) -> UserTable:
    id_array = np.asarray(ids, dtype=np.int64)
    if len(distinct(id_array)) != len(id_array):
        raise LocalFMError(f"{where}: duplicate user ids")
    return UserTable(
        ids=id_array,
        age=np.asarray(ages, dtype=np.int64),
        gender=np.asarray(genders, dtype=str),
        occupation=np.asarray(occupations, dtype=str),
        zip=np.asarray(zips, dtype=str),
        occupations=vocab,
    )


def _read_1m_users(src: _Source) -> UserTable:
    where = src.where("users.dat")
    ids, ages, genders, occupations, zips = [], [], [], [], []
    for n, line in _lines(src.read_text("users.dat", "latin-1")):
        fields = line.split("::")
        if len(fields) != 5:
            raise LocalFMError(f"{where} line {n}: expected 5 '::'-separated fields (UserID::Gender::Age::Occupation::Zip-code), got {len(fields)}")
        ids.append(_int(fields[0], where, n, "UserID"))
        genders.append(fields[1])
        ages.append(_int(fields[2], where, n, "Age"))
        code = _int(fields[3], where, n, "Occupation")
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise LocalFMError(f"{where} line {n}: Occupation must be a code 0..20, got {code}")
        occupations.append(ML1M_OCCUPATIONS[code])
        zips.append(fields[4])
    return _user_table(where, ids, ages, genders, occupations, zips, list(ML1M_OCCUPATIONS))


def _genre_matrix(lists: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    """Multi-hot matrix over the sorted genre vocabulary; '(no genres listed)' means none."""
    names = sorted({g for genres in lists for g in genres})
    index = {g: i for i, g in enumerate(names)}
    matrix = np.zeros((len(lists), len(names)), dtype=bool)
    for row, genres in enumerate(lists):
        for g in genres:
            matrix[row, index[g]] = True
    return matrix, names


def _split_genres(field: str) -> list[str]:
    return [g for g in field.split("|") if g and g != "(no genres listed)"]


def _read_dat_movies(src: _Source, encoding: str) -> ItemTable:
    where = src.where("movies.dat")
    ids, titles, genre_lists = [], [], []
    for n, line in _lines(src.read_text("movies.dat", encoding)):
        fields = line.split("::")
        if len(fields) < 3:
            raise LocalFMError(f"{where} line {n}: expected MovieID::Title::Genres")
        ids.append(_int(fields[0], where, n, "MovieID"))
        titles.append("::".join(fields[1:-1]))
        genre_lists.append(_split_genres(fields[-1]))
    matrix, names = _genre_matrix(genre_lists)
    return _item_table(where, ids, titles, matrix, names)


def _read_csv_movies(src: _Source) -> ItemTable:
    import csv

    where = src.where("movies.csv")
    text = src.read_text("movies.csv", "utf-8-or-latin-1")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["movieId", "title", "genres"]:
        raise LocalFMError(f"{where}: expected header movieId,title,genres")
    ids, titles, genre_lists = [], [], []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 3:
            raise LocalFMError(f"{where} line {n}: expected 3 fields (movieId,title,genres), got {len(row)}")
        ids.append(_int(row[0], where, n, "movieId"))
        titles.append(row[1])
        genre_lists.append(_split_genres(row[2]))
    matrix, names = _genre_matrix(genre_lists)
    return _item_table(where, ids, titles, matrix, names)
