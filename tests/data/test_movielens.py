"""MovieLens readers: real ml-100k (skips when absent) and generated ml-1m/10m/25m samples, dir and .zip."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tests.data.data_samples import MOVIES, ROWS, write_ml1m, write_ml25m, zip_dir

from localfm.data.movielens import detect_layout, load_movielens
from localfm.errors import LocalFMError

ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "u.info")


def test_ml100k_directory(ml100k_dir: Path) -> None:
    data = load_movielens(ml100k_dir)
    assert data.layout == "ml-100k"
    r = data.ratings
    assert len(r) == 100_000
    assert (r.user[0], r.item[0], float(r.rating[0]), r.timestamp[0]) == (196, 242, 3.0, 881250949)
    assert r.n_users == 943 and r.n_items == 1682
    assert data.items is not None and data.users is not None
    assert len(data.items.ids) == 1682 and len(data.items.genre_names) == 19
    assert data.items.titles[0] == "Toy Story (1995)"
    toy_story = [data.items.genre_names[g] for g in np.flatnonzero(data.items.genres[0])]
    assert toy_story == ["Animation", "Children's", "Comedy"]
    assert (data.users.ids[0], data.users.age[0], data.users.gender[0], data.users.occupation[0]) == (1, 24, "M", "technician")
    assert len(data.users.occupations) == 21


def test_ml100k_item_titles_keep_every_character(ml100k_dir: Path) -> None:
    data = load_movielens(ml100k_dir)
    titles = dict(zip(data.items.ids.tolist(), data.items.titles))
    assert titles[543] == "Misérables, Les (1995)"
    assert titles[1633] == "Á köldum klaka (Cold Fever) (1994)"
    # Every title re-encodes to exactly the bytes of the file: nothing lost or replaced.
    raw = (ml100k_dir / "u.item").read_bytes().split(b"\n")
    raw_titles = [line.split(b"|")[1] for line in raw if line.strip()]
    assert [t.encode("latin-1") for t in data.items.titles] == raw_titles
    assert not any("\ufffd" in t for t in data.items.titles)


def test_ml100k_zip_equals_directory(ml100k_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ML100K_FILES:
        shutil.copy(ml100k_dir / name, src / name)
    archive = zip_dir(src, tmp_path / "ml-100k.zip", "ml-100k")
    assert detect_layout(archive) == "ml-100k"
    from_zip, from_dir = load_movielens(archive), load_movielens(ml100k_dir)
    for col in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(from_zip.ratings, col), getattr(from_dir.ratings, col))
    assert from_zip.items.titles == from_dir.items.titles


@pytest.mark.parametrize("as_zip", [False, True])
def test_ml1m_sample(tmp_path: Path, as_zip: bool) -> None:
    root = write_ml1m(tmp_path / "ml-1m")
    path = zip_dir(root, tmp_path / "ml-1m.zip", "ml-1m") if as_zip else root
    data = load_movielens(path)
    assert data.layout == "ml-1m"
    assert data.ratings.user.tolist() == [u for u, *_ in ROWS]
    assert data.ratings.rating.dtype == np.float32
    assert data.items.titles[1] == "Misérables, Les (1995)"
    assert data.items.titles[2] == "Star Wars: Episode IV - A New Hope (1977)"
    # age codes 1 / 56 / 25 → groups "under 18", "56+", "25-34"; occupation codes → ml-1m labels
    assert data.users.age_group().tolist() == [0, 6, 2]
    assert data.users.occupation.tolist() == ["K-12 student", "self-employed", "scientist"]
    assert "(no genres listed)" not in data.items.genre_names
    assert not data.items.genres[4].any()


def test_ml10m_sample_half_stars(tmp_path: Path) -> None:
    root = write_ml1m(tmp_path / "ml-10M100K", half_stars=True, with_users=False)
    data = load_movielens(zip_dir(root, tmp_path / "ml-10m.zip", "ml-10M100K"))
    assert data.layout == "ml-10m"
    assert data.users is None
    np.testing.assert_allclose(data.ratings.rating, [r for _, _, r, _ in ROWS])
    assert data.items.titles[3] == MOVIES[3][1]


@pytest.mark.parametrize("as_zip", [False, True])
def test_ml25m_sample(tmp_path: Path, as_zip: bool) -> None:
    root = write_ml25m(tmp_path / "ml-25m")
    path = zip_dir(root, tmp_path / "ml-25m.zip", "ml-25m") if as_zip else root
    data = load_movielens(path)
    assert data.layout == "ml-20m"
    np.testing.assert_allclose(data.ratings.rating, [r for _, _, r, _ in ROWS])
    assert data.ratings.timestamp.tolist() == [t for *_, t in ROWS]
    assert data.items.titles[1] == "Misérables, Les (1995)"  # quoted, comma inside, UTF-8
    assert data.items.genre_names == sorted({g for _, _, gs in MOVIES for g in gs} - {"(no genres listed)"})
    assert data.all_item_ids().tolist() == [10, 20, 30, 40, 50]


def _ml100k_like(tmp_path: Path, u_data: bytes) -> Path:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "u.data").write_bytes(u_data)
    return root


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"196,242,3,881250949\n186,302,3,891717742\n", "expected 4 tab-separated numeric columns"),
        (b"196\t242\tgood\t881250949\n", "numeric"),
        (b"", "empty file"),
        (b"196\t242\t3\n", "expected 4 tab-separated"),
    ],
)
def test_bad_ratings_file(tmp_path: Path, content: bytes, expected: str) -> None:
    root = _ml100k_like(tmp_path, content)
    with pytest.raises(LocalFMError, match=expected) as info:
        load_movielens(root)
    assert "u.data" in str(info.value)


def test_bad_u_item_field_count(tmp_path: Path) -> None:
    root = _ml100k_like(tmp_path, b"1\t1\t5\t874965758\n")
    (root / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n")
    with pytest.raises(LocalFMError, match=r"u.item line 1: expected 24 '\|'-separated fields"):
        load_movielens(root)


def test_wrong_header_csv_layout(tmp_path: Path) -> None:
    root = tmp_path / "x"
    root.mkdir()
    (root / "ratings.csv").write_text("user,movie,stars,ts\n1,2,3,4\n")
    with pytest.raises(LocalFMError, match="expected header userId,movieId,rating,timestamp"):
        load_movielens(root)


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(LocalFMError, match="not a MovieLens dataset"):
        load_movielens(tmp_path)
    with pytest.raises(LocalFMError, match="no such directory"):
        load_movielens(tmp_path / "missing")
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(LocalFMError, match="expected a MovieLens directory or .zip"):
        load_movielens(bogus)


def test_zip_members_are_read_not_extracted(tmp_path: Path) -> None:
    # A hostile member name must not be written anywhere: readers only open members by base name.
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escape/u.data", "1\t1\t5\t874965758\n")
    data = load_movielens(archive)
    assert len(data.ratings) == 1
    assert not (tmp_path.parent.parent / "escape").exists()


def test_corrupt_zip_member_is_bad_input(tmp_path: Path) -> None:
    # A damaged deflate stream used to escape as zlib.error (exit 1).
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/u.data", b"1\t2\t3\t4\n" * 1000)
    data = bytearray(archive.read_bytes())
    at = data.index(b"u.data") + len(b"u.data") + 10  # inside the compressed stream
    data[at:at + 20] = b"\xff" * 20
    archive.write_bytes(bytes(data))
    with pytest.raises(LocalFMError, match="corrupt zip member"):
        load_movielens(archive)


def test_id_beyond_int64_is_bad_input(tmp_path: Path) -> None:
    # int() accepted it and np.asarray(..., int64) then raised OverflowError (exit 1).
    (tmp_path / "u.data").write_bytes(b"1\t2\t3\t4\n")
    (tmp_path / "u.user").write_bytes(b"99999999999999999999|24|M|technician|85711\n")
    with pytest.raises(LocalFMError, match=r"u\.user line 1: user id must be a 64-bit integer"):
        load_movielens(tmp_path)
