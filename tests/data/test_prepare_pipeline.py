"""prepare (library level): the cloud fixture's preparation, column modes, unseen rows, order, labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.data.data_samples import write_ml1m

from localfm.data.prepare import Options, prepare_data, prepare_movielens, shuffle_seed
from localfm.data.interactions import Interactions, make_labels
from localfm.errors import LocalFMError


@pytest.fixture(scope="module")
def cloud_prepared(ml100k_dir: Path):
    options = Options(split="ua", label="binary:4", columns="train", drop_unseen=True, order="file")
    return prepare_movielens(ml100k_dir, options)


def test_reproduces_cloud_fixture_preparation(cloud_prepared, cloud_fixture: Path, ml100k_dir: Path) -> None:
    expected = json.loads((cloud_fixture / "cloud-results.json").read_text())
    p = cloud_prepared
    assert p.space.feature_dim == expected["feature_dim"] == 2623
    assert p.X_train.shape == (expected["train_records"], 2623) == (90_570, 2623)
    assert p.X_test.shape[0] == expected["test_records"] == 9_428
    assert p.counts["dropped_unseen_rows"] == 2
    # Training rows are ua.base in file order; test rows ua.test minus the two unseen movies.
    base = np.loadtxt(ml100k_dir / "ua.base", dtype=np.int64, delimiter="\t")
    np.testing.assert_array_equal(p.train.user, base[:, 0])
    np.testing.assert_array_equal(p.train.item, base[:, 1])
    test = np.loadtxt(ml100k_dir / "ua.test", dtype=np.int64, delimiter="\t")
    dropped = {(u, i) for u, i in test[:, :2].tolist()} - set(zip(p.test.user.tolist(), p.test.item.tolist()))
    assert dropped == {(405, 1582), (675, 1653)}
    # One-hot as sklearn's OneHotEncoder fitted on ua.base[[user, movie]]: users 0..942, then movies.
    movies = np.unique(base[:, 1])
    assert len(movies) == 1680
    cols = p.X_train.indices.reshape(-1, 2)
    np.testing.assert_array_equal(cols[:, 0], base[:, 0] - 1)
    np.testing.assert_array_equal(cols[:, 1], 943 + np.searchsorted(movies, base[:, 1]))
    assert p.X_train.dtype == np.float32 and set(p.X_train.data.tolist()) == {1.0}
    np.testing.assert_array_equal(p.y_train, (base[:, 2] >= 4).astype(np.float32))
    assert p.y_train.dtype == np.float32


def test_columns_all_gives_every_id_a_column(ml100k_dir: Path) -> None:
    p = prepare_movielens(ml100k_dir, Options(split="ua", label="binary:4", columns="all"))
    assert p.space.feature_dim == 943 + 1682 == 2625
    assert p.X_test.shape[0] == 9_430
    # A kept unseen movie still has its own column under --columns all.
    row = np.flatnonzero((p.test.user == 405) & (p.test.item == 1582))[0]
    assert p.X_test[row].indices.tolist() == [404, 943 + 1581]


def test_kept_unseen_rows_lose_the_item_column(ml100k_dir: Path) -> None:
    p = prepare_movielens(ml100k_dir, Options(split="ua", label="rating", columns="train"))
    assert p.counts["dropped_unseen_rows"] == 0 and p.counts["unseen_item_rows"] == 2
    row = np.flatnonzero((p.test.user == 675) & (p.test.item == 1653))[0]
    assert p.X_test[row].indices.tolist() == [674]  # OneHotEncoder(handle_unknown="ignore") does the same
    assert p.y_test.dtype == np.float32 and set(np.unique(p.y_test).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_side_features_on_ml100k(ml100k_dir: Path) -> None:
    p = prepare_movielens(ml100k_dir, Options(split="u1", features="ids+side", columns="all", multi_hot="normalized"))
    assert p.space.feature_dim == 2625 + 7 + 2 + 21 + 19
    row = p.X_train[0]  # user 1 (24, M, technician), movie 1 (Animation, Children's, Comedy)
    genre = p.space.block("item_genre").offset
    np.testing.assert_allclose(row.toarray()[0, genre:genre + 19].sum(), 1.0, rtol=1e-6)
    assert row.nnz == 2 + 3 + 3


def test_shuffle_order_is_seeded_permutation() -> None:
    n = 200
    data = Interactions(user=np.arange(n) % 10, item=np.arange(n) % 17, rating=np.arange(n, dtype=np.float32) % 5 + 1,
                        timestamp=np.arange(n))
    file = prepare_data(data, Options(split="random:0.1:3"), grouplens_ok=False)
    a = prepare_data(data, Options(split="random:0.1:3", order="shuffle:5"), grouplens_ok=False)
    b = prepare_data(data, Options(split="random:0.1:3", order="shuffle:5"), grouplens_ok=False)
    np.testing.assert_array_equal(a.train.timestamp, b.train.timestamp)
    assert not np.array_equal(a.train.timestamp, file.train.timestamp)
    assert sorted(a.train.timestamp.tolist()) == file.train.timestamp.tolist()
    np.testing.assert_array_equal(a.test.timestamp, file.test.timestamp)  # test keeps split order


def test_ml1m_sample_with_side_features(tmp_path: Path) -> None:
    root = write_ml1m(tmp_path / "ml-1m")
    p = prepare_movielens(root, Options(split="leave-last:1", features="ids+side", label="binary:4"))
    assert p.space.source["layout"] == "ml-1m"
    assert p.counts["test_rows"] == 3 and p.counts["train_rows"] == 3
    assert len(p.space.item_ids) == 5  # --columns all includes catalog movies without ratings


def test_labels() -> None:
    r = np.array([1, 3.5, 4, 5], dtype=np.float32)
    assert make_labels(r, "binary:4").tolist() == [0, 0, 1, 1]
    assert make_labels(r, "binary:3.5").tolist() == [0, 1, 1, 1]
    assert make_labels(r, "rating").dtype == np.float32


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (Options(split="ua", label="binary"), "^label 'binary'"),
        (Options(split="ua", label="binary:x"), "^label"),
        (Options(split="ua", order="shuffle"), "^order"),
        (Options(split="ua", features="everything"), "^features"),
        (Options(split="ua", columns="some"), "^columns"),
        (Options(split="u9"), "unknown split"),
    ],
)
def test_bad_options(options: Options, message: str) -> None:
    with pytest.raises(LocalFMError, match=message):
        options.check(grouplens_ok=True)


def test_side_features_unavailable() -> None:
    data = Interactions(user=np.arange(10), item=np.arange(10), rating=np.ones(10, np.float32))
    with pytest.raises(LocalFMError, match="no side information"):
        prepare_data(data, Options(split="random:0.2:1", features="ids+side"), grouplens_ok=False)
    assert shuffle_seed("file") is None and shuffle_seed("shuffle:9") == 9


def test_unseen_users_and_items_counted_and_dropped() -> None:
    # leave-last:1 puts (1, 99), (2, 11), (9, 11) in test; item 99 never occurs in train.
    data = Interactions(
        user=np.array([1, 1, 1, 2, 2, 9, 9]), item=np.array([10, 11, 99, 10, 11, 10, 11]),
        rating=np.array([5, 4, 3, 2, 1, 5, 4], dtype=np.float32), timestamp=np.arange(1, 8),
    )
    kept = prepare_data(data, Options(split="leave-last:1", columns="train"), grouplens_ok=False)
    assert (kept.counts["unseen_item_rows"], kept.counts["unseen_user_rows"]) == (1, 0)
    assert kept.X_test.shape == (3, 3 + 2)
    assert kept.X_test[0].indices.tolist() == [0]  # user 1's column only; item 99 has none
    dropped = prepare_data(data, Options(split="leave-last:1", columns="train", drop_unseen=True), grouplens_ok=False)
    assert dropped.counts["dropped_unseen_rows"] == 1 and dropped.counts["test_rows"] == 2
    assert "dropped 1" in dropped.summary()
    allcols = prepare_data(data, Options(split="leave-last:1", columns="all"), grouplens_ok=False)
    assert allcols.space.feature_dim == 3 + 3  # item 99 gets a column under --columns all
    # A random split that leaves a user out of training counts the row as an unseen user.
    solo = Interactions(user=np.array([1, 1, 1, 7]), item=np.array([10, 11, 12, 10]),
                        rating=np.ones(4, np.float32), timestamp=None)
    for seed in range(50):
        p = prepare_data(solo, Options(split=f"random:0.25:{seed}"), grouplens_ok=False)
        if p.test.user.tolist() == [7]:
            assert p.counts["unseen_user_rows"] == 1
            break
    else:
        raise AssertionError("no seed put user 7 in test")


def test_negative_shuffle_seed_is_bad_input_not_crash() -> None:
    # numpy's SeedSequence raises ValueError for negative seeds (exit 1); it must be a LocalFMError.
    with pytest.raises(LocalFMError, match="shuffle:SEED"):
        shuffle_seed("shuffle:-3")
    data = Interactions(user=np.arange(10), item=np.arange(10), rating=np.ones(10, np.float32))
    with pytest.raises(LocalFMError, match="SEED >= 0"):
        prepare_data(data, Options(split="random:0.2:-1"), grouplens_ok=False)


def test_interactions_are_released_before_the_outputs_are_written(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The ratings read from the file are garbage once split: at ML-25M size they are 700 MB
    that must not stay alive while the five outputs are written."""
    import gc
    import weakref

    import localfm.data.prepare as prep

    path = tmp_path / "events.csv"
    path.write_text("u,i,r\n" + "".join(f"{k % 7},{k % 5},{k % 5 + 1}\n" for k in range(60)))
    refs = []
    original_read, original_write = prep.read_interactions, prep.write_prepared

    def read(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        ratings = original_read(*args, **kwargs)
        refs.append(weakref.ref(ratings))
        return ratings

    def write(prepared, out_dir):  # noqa: ANN001, ANN202
        gc.collect()
        assert refs and refs[0]() is None, "the ratings are still referenced while writing"
        return original_write(prepared, out_dir)

    monkeypatch.setattr(prep, "read_interactions", read)
    monkeypatch.setattr(prep, "write_prepared", write)
    prepared = prep.prepare_interactions(path, Options(split="random:0.2:0"), user_col="u", item_col="i",
                                         rating_col="r", out_dir=tmp_path / "out")
    assert prepared.counts["train_rows"] + prepared.counts["test_rows"] == 60
    assert (tmp_path / "out" / "train.protobuf").is_file()


def test_parquet_outputs_are_written_beside_the_recordio_files(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The two Parquet files go out on a second thread; a failure there still leaves no output."""
    import threading

    import localfm.data.prepare as prep

    path = tmp_path / "events.csv"
    path.write_text("u,i,r\n" + "".join(f"{k % 7},{k % 5},{k % 5 + 1}\n" for k in range(60)))
    threads = []
    original = prep._write_interactions

    def record(target, rows):  # noqa: ANN001, ANN202
        threads.append(threading.current_thread().name)
        return original(target, rows)

    monkeypatch.setattr(prep, "_write_interactions", record)
    prep.prepare_interactions(path, Options(split="random:0.2:0"), user_col="u", item_col="i", rating_col="r",
                              out_dir=tmp_path / "ok")
    assert len(threads) == 2 and all(name.startswith("prepare-parquet") for name in threads)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == sorted(prep.OUTPUT_FILES)

    def failing(target, rows):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(prep, "_write_interactions", failing)
    with pytest.raises(OSError, match="disk full"):
        prep.prepare_interactions(path, Options(split="random:0.2:0"), user_col="u", item_col="i", rating_col="r",
                                  out_dir=tmp_path / "failed")
    assert not (tmp_path / "failed").exists()
