"""The embedded synthetic dataset: reproducible from its script, readable, and faithful to its planted FM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localfm.data.movielens import load_movielens
from localfm.data.prepare import Options, prepare_movielens
from localfm.data.splits import grouplens_split
from localfm.data.synthetic import SyntheticConfig, _fm_score, default_dataset_path, generate, load_planted, write
from tests.fresh_python import run_python


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


def test_chunked_mean_and_sd_match_numpy_over_all_pairs(monkeypatch) -> None:
    """The rescaling statistics merged block by block equal numpy's over the whole array."""
    from localfm.data import synthetic
    from localfm.data.features import build_feature_space

    users, items = np.arange(1, 38), np.arange(1, 53)
    space = build_feature_space(users, items)
    rng = np.random.default_rng(3)
    w, V = rng.normal(size=space.feature_dim), rng.normal(size=(space.feature_dim, 4))
    raw = _fm_score(space.encode(np.repeat(users, len(items)), np.tile(items, len(users))), 0.0, w, V)
    one_block = synthetic._all_pairs_mean_std(space, users, items, w, V)
    assert one_block == (raw.mean(), raw.std())  # one block: numpy's arithmetic exactly
    monkeypatch.setattr(synthetic, "PAIR_CHUNK", 5 * len(items) + 3)  # 8 blocks, the last one short
    mean, sd = synthetic._all_pairs_mean_std(space, users, items, w, V)
    assert mean == pytest.approx(raw.mean(), rel=1e-12, abs=1e-12) and sd == pytest.approx(raw.std(), rel=1e-12)


@pytest.mark.slow
def test_large_dataset_is_written_in_bounded_memory(tmp_path: Path) -> None:
    """1,500 users x 1,000 items: the old all-pairs generator peaked at ~600 MB; streaming stays far below.

    30,000 x 10,000 was killed for memory on a 24 GB machine; this size keeps the test short
    while still being 4x above the bound for the old code's O(users x items) matrices.
    """
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from Linux's /proc/self/status")
    out = tmp_path / "big"
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child forked from
    # a big pytest worker would report the worker's peak, not its own.
    probe = (
        "from pathlib import Path\n"
        "from localfm.data.synthetic import main\n"
        f"main(['--users', '1500', '--items', '1000', '--out', {str(out)!r}])\n"
        "status = Path('/proc/self/status').read_text().splitlines()\n"
        "print(next(line.split()[1] for line in status if line.startswith('VmHWM:')))\n"  # KiB
    )
    peak_mib = int(run_python(probe, timeout=600).splitlines()[-1]) / 1024
    assert peak_mib < 350, f"peak RSS {peak_mib:.0f} MiB"
    info = (out / "u.info").read_text().split("\n")
    assert info[:2] == ["1500 users", "1000 items"]
    n_ratings = int(info[2].split()[0])
    with open(out / "u.data", "rb") as fh:
        assert sum(1 for _ in fh) == n_ratings > 1500 * 20


def test_oversized_dataset_is_refused_before_allocating(tmp_path: Path) -> None:
    """A size whose ratings alone would not fit is exit 2 at once, with nothing written."""
    import time

    from localfm.data.synthetic import MAX_RATINGS, main
    from localfm.errors import LocalFMError

    huge = SyntheticConfig(n_users=100_000_000, n_items=100_000)
    assert huge.expected_ratings() > MAX_RATINGS
    t0 = time.perf_counter()
    with pytest.raises(LocalFMError, match=r"n_users=100000000 .* ratings .*expected at most 20,000,000"):
        generate(huge)
    with pytest.raises(SystemExit) as exc:
        main(["--users", "100000000", "--items", "100000", "--out", str(tmp_path / "syn")])
    assert time.perf_counter() - t0 < 5  # refused up front, not after drawing 10^8 users
    assert exc.value.code == 2 and not (tmp_path / "syn").exists()
