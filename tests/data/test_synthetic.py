"""The embedded synthetic dataset: reproducible from its script, readable, and faithful to its planted FM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localfm.data.movielens import load_movielens
from localfm.data.prepare import Options, prepare_movielens
from localfm.data.splits import grouplens_split
from localfm.data.synthetic import SyntheticConfig, _fm_score, default_dataset_path, generate, load_planted, write


@pytest.fixture(scope="module")
def default_dir() -> Path:
    return default_dataset_path()


def test_committed_files_are_what_the_script_generates(default_dir: Path) -> None:
    files = generate()
    on_disk = {p.name for p in default_dir.iterdir() if p.is_file()}
    assert set(files) == on_disk
    for name, data in files.items():
        assert (default_dir / name).read_bytes() == data, f"{name} differs: regenerate with python -m localfm.data.synthetic"


def test_shape_and_grouplens_layout(default_dir: Path) -> None:
    data = load_movielens(default_dir)
    assert data.layout == "ml-100k"
    r = data.ratings
    assert r.n_users == 300 and r.n_items == 400  # every movie is rated at least once
    assert 19_000 <= len(r) <= 21_000
    assert set(np.unique(r.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.bincount(r.user).max() < 400 and np.bincount(r.user)[1:].min() >= 20
    assert any(any(ord(c) > 127 for c in t) for t in data.items.titles)  # latin-1 accents survive
    ua = grouplens_split(r, "ua")
    assert len(ua.test) == 3000  # 10 per user, as ua is for ml-100k
    assert "synthetic" in (default_dir / "LICENSE").read_text().lower()


def test_ratings_follow_the_planted_fm(default_dir: Path) -> None:
    prepared = prepare_movielens(default_dir, Options(split="u1", features="ids+side", columns="all"))
    w0, w, V = load_planted(default_dir / "planted.npz")
    assert prepared.space.feature_dim == len(w) == V.shape[0]
    for X, y in ((prepared.X_train, prepared.y_train), (prepared.X_test, prepared.y_test)):
        score = _fm_score(X, w0, w, V)
        assert np.corrcoef(score, y)[0, 1] > 0.8
        assert abs(float(np.mean(np.clip(np.round(score), 1, 5) - y))) < 0.1


def test_generation_is_seeded(tmp_path: Path) -> None:
    small = SyntheticConfig(n_users=30, n_items=50, mean_ratings_per_user=25, seed=7)
    assert generate(small) == generate(small)
    assert generate(small)["u.data"] != generate(SyntheticConfig(n_users=30, n_items=50, mean_ratings_per_user=25, seed=8))["u.data"]
    paths = write(tmp_path / "ds", small)
    assert len(load_movielens(tmp_path / "ds").ratings) == generate(small)["u.data"].count(b"\n")
    assert {p.name for p in paths} >= {"u.data", "u.item", "u.user", "u.genre", "u.occupation", "u.info"}


def test_negative_seed_is_bad_input(tmp_path: Path) -> None:
    # default_rng(-1) raised ValueError; the script's main() only turns LocalFMError into exit 2.
    from localfm.data.synthetic import main
    from localfm.errors import LocalFMError

    with pytest.raises(LocalFMError, match="expected an integer >= 0"):
        generate(SyntheticConfig(seed=-1))
    with pytest.raises(SystemExit) as exc:
        main(["--seed", "-1", "--out", str(tmp_path / "syn")])
    assert exc.value.code == 2 and not (tmp_path / "syn").exists()
