"""FeatureSpace: layout, encode == user_matrix + item_matrix, ID-map round trip, cold start, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from localfm.data.features import Block, FeatureSpace, build_feature_space
from localfm.data.movielens import ItemTable, UserTable
from localfm.errors import LocalFMError


def _users() -> UserTable:
    return UserTable(
        ids=np.array([30, 10, 20, 40]),  # unsorted on purpose; 40 has side features but no ratings
        age=np.array([17, 24, 60, 33]),
        gender=np.array(["F", "M", "M", "F"]),
        occupation=np.array(["student", "writer", "retired", "writer"]),
        zip=np.array(["1", "2", "3", "4"]),
        occupations=["retired", "student", "writer"],
    )


def _items() -> ItemTable:
    genres = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    return ItemTable(ids=np.array([7, 5, 9]), titles=["a", "b", "c"], genres=genres, genre_names=["A", "B", "C"])


def test_ids_only_layout_users_then_items_ascending() -> None:
    space = build_feature_space(np.array([3, 1, 2, 3]), np.array([20, 10]))
    assert space.feature_dim == 5
    assert space.user_ids.tolist() == [1, 2, 3] and space.item_ids.tolist() == [10, 20]
    assert (space.user_offset, space.item_offset) == (0, 3)
    X = space.encode([2, 3], [20, 10])
    assert X.dtype == np.float32
    assert X.toarray().tolist() == [[0, 1, 0, 0, 1], [0, 0, 1, 1, 0]]
    assert X.indices.tolist() == [1, 4, 2, 3]  # sorted within each row, like OneHotEncoder


def test_side_features_and_encode_is_user_plus_item() -> None:
    space = build_feature_space(np.array([10, 20, 30]), np.array([5, 7, 9]), users=_users(), items=_items(),
                                multi_hot="normalized")
    names = [b.name for b in space.blocks]
    assert names == ["user_id", "item_id", "user_age", "user_gender", "user_occupation", "item_genre"]
    assert space.feature_dim == 3 + 3 + 7 + 2 + 3 + 3
    u = space.user_matrix([30]).toarray()[0]
    age, gender, occ = space.block("user_age"), space.block("user_gender"), space.block("user_occupation")
    assert np.flatnonzero(u).tolist() == [2, age.offset + 0, gender.offset + 0, occ.offset + 1]
    i = space.item_matrix([7]).toarray()[0]
    genre = space.block("item_genre")
    assert i[space.item_offset + 1] == 1.0
    np.testing.assert_allclose(i[genre.offset:genre.offset + 3], [0.5, 0.5, 0.0])
    users, items = np.array([10, 30, 20, 10]), np.array([9, 5, 7, 7])
    X = space.encode(users, items)
    expected = space.user_matrix(users) + space.item_matrix(items)
    assert (X != expected).nnz == 0


def test_round_trip_through_features_json(tmp_path: Path) -> None:
    space = build_feature_space(np.array([10, 20, 30]), np.array([5, 7, 9]), users=_users(), items=_items(),
                                label="binary:4", split="ua", columns="train", source={"kind": "test"})
    path = tmp_path / "features.json"
    space.save(path)
    loaded = FeatureSpace.load(path)
    assert loaded.feature_dim == space.feature_dim
    np.testing.assert_array_equal(loaded.user_ids, space.user_ids)
    np.testing.assert_array_equal(loaded.item_ids, space.item_ids)
    assert (loaded.label, loaded.split, loaded.columns, loaded.features) == ("binary:4", "ua", "train", "ids+side")
    users, items = np.array([10, 20, 30]), np.array([9, 5, 7])
    assert (loaded.encode(users, items) != space.encode(users, items)).nnz == 0
    # Decoding a row's columns with the saved maps gives back the original ids.
    row = loaded.encode([20], [9]).indices
    assert loaded.user_ids[row[0] - loaded.user_offset] == 20
    assert loaded.item_ids[row[1] - loaded.item_offset] == 9
    data = json.loads(path.read_text())
    assert data["format"] == "localfm-features" and data["version"] == 1 and data["feature_dim"] == 21


def test_index_lookups_and_unknown_ids() -> None:
    space = build_feature_space(np.array([10, 20, 30]), np.array([5, 7]))
    assert space.user_index([30, 10]).tolist() == [2, 0]
    assert space.item_index(np.array([7.0])).tolist() == [1]
    assert space.user_index([10, 99], allow_unknown=True).tolist() == [0, -1]
    with pytest.raises(LocalFMError, match="user id 99 has no column"):
        space.user_index([10, 99])
    with pytest.raises(LocalFMError, match="item id 6 has no column"):
        space.encode([10], [6])


def test_cold_start_user_gets_side_features_only() -> None:
    space = build_feature_space(np.array([10, 20, 30]), np.array([5, 7, 9]), users=_users(), items=_items())
    with pytest.raises(LocalFMError, match="user id 40"):
        space.user_matrix([40])
    cold = space.user_matrix([40, 77], allow_unknown_ids=True)
    assert cold.shape == (2, space.feature_dim)
    cols = cold[0].indices.tolist()
    assert all(c >= space.block("user_age").offset for c in cols) and len(cols) == 3
    assert cold[1].nnz == 0  # unknown everywhere: empty row
    assert space.item_matrix([9]).nnz == 1  # an item without genres: id column only


def test_string_ids(tmp_path: Path) -> None:
    space = build_feature_space(np.array(["bob", "alice"]), np.array(["sku-2", "sku-10"]))
    assert space.user_ids.tolist() == ["alice", "bob"]
    assert space.item_ids.tolist() == ["sku-10", "sku-2"]
    space.save(tmp_path / "f.json")
    loaded = FeatureSpace.load(tmp_path / "f.json")
    assert loaded.user_id_kind == loaded.item_id_kind == "str"
    assert loaded.encode(["bob"], ["sku-2"]).indices.tolist() == [1, 3]


def test_all_users_matrix_is_identity_block() -> None:
    space = build_feature_space(np.array([4, 2, 9]), np.array([1]))
    m = space.user_matrix()
    assert isinstance(m, sp.csr_matrix) and m.shape == (3, 4)
    assert (m[:, :3] != sp.identity(3, format="csr")).nnz == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "not a localfm features file"),
        (lambda d: d.update(version=99), "unsupported features version"),
        (lambda d: d.pop("user_ids"), "malformed features file"),
        (lambda d: d.update(user_ids=[3, 2, 1]), "must be unique and ascending"),
        (lambda d: d.update(feature_dim=7), "does not match"),
        # missing_id_block_is_bad_input: was a bare KeyError('item_id') from validate() (exit 1)
        (lambda d: d.update(blocks=[b for b in d["blocks"] if b["name"] != "item_id"]), "no 'item_id' block"),
        # nested_id_list_is_bad_input: a 2-D id array used to load and break every lookup later
        (lambda d: d.update(user_ids=[[1, 2, 3]]), "flat list of ids"),
        # negative_block_offset_is_bad_input: loaded fine, then user_matrix() raised scipy's ValueError
        (lambda d: d["blocks"][0].update(offset=-1), "offset -1"),
        (lambda d: d["blocks"][1].update(offset=1), "overlap"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, mutate, message: str) -> None:
    space = build_feature_space(np.array([1, 2, 3]), np.array([1, 2]))
    data = space.to_dict()
    mutate(data)
    path = tmp_path / "features.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LocalFMError, match=message):
        FeatureSpace.load(path)


def test_load_missing_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(LocalFMError, match="not found"):
        FeatureSpace.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(LocalFMError, match="not valid JSON"):
        FeatureSpace.load(tmp_path / "x.json")


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(-5, 10**12), st.integers(0, 50)), min_size=1, max_size=40),
    columns=st.sampled_from(["all", "train"]),
)
def test_encode_decode_round_trip(pairs: list[tuple[int, int]], columns: str) -> None:
    """Any ids: each encoded row holds exactly the user's and the item's columns, which map back to them."""
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    space = FeatureSpace.from_dict(build_feature_space(users, items, columns=columns).to_dict())
    X = space.encode(users, items)
    assert X.shape == (len(pairs), len(np.unique(users)) + len(np.unique(items)))
    cols = X.indices.reshape(-1, 2)
    np.testing.assert_array_equal(space.user_ids[cols[:, 0] - space.user_offset], users)
    np.testing.assert_array_equal(space.item_ids[cols[:, 1] - space.item_offset], items)


# ---------------------------------------------------------------------- ids-only encode, features.json bytes


def _general_encode(space: FeatureSpace, users, items) -> sp.csr_matrix:  # noqa: ANN001
    """encode's definition: user_matrix + item_matrix, sorted, float32 (the side-feature path)."""
    out = (space.user_matrix(users, allow_unknown_ids=True) + space.item_matrix(items, allow_unknown_ids=True)).tocsr()
    out.sort_indices()
    return out.astype(np.float32)


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=40), st.booleans(), st.booleans(),
       st.sampled_from([1, 3, 1 << 20]))
@settings(max_examples=80, deadline=None)
def test_ids_only_encode_equals_user_plus_item(pairs, strings, items_first, chunk) -> None:  # noqa: ANN001
    """The direct ids-only construction gives the general path's matrix exactly (dtypes included),
    with unknown ids (empty or one-entry rows), with the item block laid out first, and
    whatever the lookup chunk."""
    import localfm.data.features as features

    saved, features._ENCODE_CHUNK = features._ENCODE_CHUNK, chunk
    try:
        _check_ids_only_encode(pairs, strings, items_first)
    finally:
        features._ENCODE_CHUNK = saved


def _check_ids_only_encode(pairs, strings, items_first) -> None:  # noqa: ANN001
    known_u, known_i = np.arange(0, 12, 2), np.arange(1, 12, 3)
    if strings:
        known_u, known_i = known_u.astype(str), known_i.astype(str)
    space = build_feature_space(known_u, known_i)
    if items_first:
        space.blocks = [Block("item_id", 0, len(space.item_ids)), Block("user_id", len(space.item_ids),
                                                                           len(space.user_ids))]
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    if strings:
        users, items = users.astype(str), items.astype(str)
    X = space.encode(users, items, allow_unknown_ids=True)
    expected = _general_encode(space, users, items)
    assert X.shape == expected.shape and X.dtype == expected.dtype == np.float32
    assert X.indices.dtype == expected.indices.dtype and X.indptr.dtype == expected.indptr.dtype
    np.testing.assert_array_equal(X.indptr, expected.indptr)
    np.testing.assert_array_equal(X.indices, expected.indices)
    np.testing.assert_array_equal(X.data, expected.data)


def test_ids_only_encode_does_not_build_entity_matrices(monkeypatch) -> None:  # noqa: ANN001
    space = build_feature_space(np.array([1, 2, 3]), np.array([10, 20]))

    def forbidden(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("ids-only encode went through the general path")

    monkeypatch.setattr(FeatureSpace, "_entity_matrix", forbidden)
    assert space.encode([3, 1], [20, 10]).toarray().tolist() == [[0, 0, 1, 0, 1], [1, 0, 0, 1, 0]]
    with pytest.raises(LocalFMError, match="user id 7 has no column"):
        space.encode([7], [10])
    with pytest.raises(LocalFMError, match="2 user ids but 1 item ids"):
        space.encode([1, 2], [10])
    monkeypatch.setattr("localfm.data.features._ENCODE_CHUNK", 2)
    # unknown users are reported before unknown items, the first one in row order
    with pytest.raises(LocalFMError, match="user id 9 has no column"):
        space.encode([1, 2, 3, 9, 8], [10, 99, 20, 10, 10])
    with pytest.raises(LocalFMError, match="item id 99 has no column"):
        space.encode([1, 2, 3, 1, 2], [10, 20, 10, 99, 98])
    with pytest.raises(LocalFMError, match="user id 9 has no column"):  # before the length mismatch
        space.encode([1, 9], [10])
    side = build_feature_space(np.array([10, 20, 30]), np.array([5, 7, 9]), users=_users(), items=_items())
    with pytest.raises(AssertionError, match="general path"):  # side features still take the general path
        side.encode([10], [5])


@pytest.mark.parametrize("strings", [False, True])
def test_features_json_bytes_unchanged(tmp_path: Path, strings: bool) -> None:
    """save() writes exactly what json.dump of the element-by-element dict wrote before."""
    from localfm.data.features import _plain

    users, items = np.array([10, 20, 30]), np.array([5, 7, 9])
    space = build_feature_space(users.astype(str) if strings else users, items, users=None if strings else _users(),
                                items=_items(), multi_hot="normalized")
    space.extra = {"counts": {"train_rows": 3}, "order": "file"}
    path = tmp_path / "features.json"
    space.save(path)
    data = space.to_dict()
    data["user_ids"] = [_plain(x) for x in space.user_ids]
    data["item_ids"] = [_plain(x) for x in space.item_ids]
    for key, side in (("user_side", space.user_side), ("item_side", space.item_side)):
        if side is not None:
            data[key]["ids"] = [_plain(x) for x in side.ids]
            data[key]["data"] = [float(v) for v in side.matrix.data.astype(np.float32)]
    expected = tmp_path / "expected.json"
    with open(expected, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"), ensure_ascii=False)
        fh.write("\n")
    assert path.read_bytes() == expected.read_bytes()
    assert isinstance(space.to_dict()["user_ids"][0], str if strings else int)
    loaded = FeatureSpace.load(path)
    assert loaded.user_ids.tolist() == space.user_ids.tolist()
