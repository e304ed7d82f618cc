"""One channel reader for FM and k-NN: which files, in what order, and what an empty one means."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from localfm.errors import LocalFMError
from localfm.io.channels import TRAIN_CONTENT_TYPES, channel_bytes, channel_files, read_channel
from localfm.io.recordio import write_dense, write_sparse


def _rec(path: Path, rows: list[list[float]], labels: list[float] | None = None) -> None:
    write_sparse(str(path), sp.csr_matrix(np.array(rows, np.float32)),
                 None if labels is None else np.array(labels, np.float32))


def test_folder_is_read_in_name_order_skipping_hidden_and_empty_files(tmp_path: Path) -> None:
    ch = tmp_path / "train"
    ch.mkdir()
    _rec(ch / "b.rec", [[0, 2]], [2])
    _rec(ch / "a.rec", [[1, 0]], [1])
    (ch / "c.rec").write_bytes(b"")  # an empty file holds no records
    (ch / ".hidden.rec").write_bytes(b"junk")  # never read
    (ch / "sub").mkdir()
    assert [Path(f).name for f in channel_files(ch)] == [".hidden.rec", "a.rec", "b.rec", "c.rec"][1:]
    X, y = read_channel(ch, need_labels=True)
    np.testing.assert_array_equal(X.toarray(), [[1, 0], [0, 2]])
    np.testing.assert_array_equal(y, [1, 2])
    assert channel_bytes(ch) == sum((ch / n).stat().st_size for n in ("a.rec", "b.rec", "c.rec"))


def test_the_same_rules_for_the_dense_csv_reader(tmp_path: Path) -> None:
    """k-NN's training channel (CSV, label first) goes through the same listing and rules."""
    ch = tmp_path / "train"
    ch.mkdir()
    (ch / "a.csv").write_text("")
    (ch / "b.csv").write_text("1,0.5,0.25\n0,1,2\n")
    (ch / ".c.csv").write_text("not,numbers\n")
    write_dense(ch / "d.protobuf", np.array([[3, 4]], np.float32), np.array([5], np.float32))
    X, y = read_channel(ch, need_labels=True, accepted=TRAIN_CONTENT_TYPES, dense=True)
    assert isinstance(X, np.ndarray)
    np.testing.assert_array_equal(X, [[0.5, 0.25], [1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [1, 0, 5])


@pytest.mark.parametrize("setup, needle", [
    (lambda d: (d / "x.rec").write_bytes(b""), "x.rec: empty file"),
    (lambda d: None, "folder holds no data files"),
])
def test_channels_without_records_are_refused(tmp_path: Path, setup, needle: str) -> None:
    ch = tmp_path / "ch"
    ch.mkdir()
    setup(ch)
    target = ch / "x.rec" if (ch / "x.rec").exists() else ch
    with pytest.raises(LocalFMError, match=needle):
        read_channel(target, need_labels=False)


def test_checks_name_the_file(tmp_path: Path) -> None:
    ch = tmp_path / "ch"
    ch.mkdir()
    _rec(ch / "a.rec", [[1, 0]], [1])
    _rec(ch / "b.rec", [[1, 0, 3]], [1])
    with pytest.raises(LocalFMError, match=r"b\.rec: 3 features, .*a\.rec has 2"):
        read_channel(ch, need_labels=True)
    with pytest.raises(LocalFMError, match=r"a\.rec: records have 2 features but feature_dim=3"):
        read_channel(ch, need_labels=True, feature_dim=3)
    _rec(ch / "b.rec", [[1, 0]])
    with pytest.raises(LocalFMError, match=r"b\.rec: records carry no label"):
        read_channel(ch, need_labels=True)
    X, y = read_channel(ch, need_labels=False)
    assert X.shape == (2, 2) and y is None
    with pytest.raises(LocalFMError, match="file not found"):
        read_channel(tmp_path / "nope", need_labels=False)
    with pytest.raises(LocalFMError, match="content type: expected one of application/x-recordio-protobuf"):
        read_channel(ch, need_labels=False, content_type="text/csv")


def test_transform_inputs_skip_our_own_outputs(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "a.json.out").write_text("{}")
    assert [Path(f).name for f in channel_files(tmp_path, skip_outputs=True)] == ["a.json"]
    assert len(channel_files(tmp_path)) == 2


@pytest.mark.slow
def test_s3_object_and_prefix(tmp_path: Path, new_s3_bucket) -> None:
    s3 = new_s3_bucket("channels")
    _rec(tmp_path / "a.rec", [[1, 0]], [1])
    _rec(tmp_path / "b.rec", [[0, 2]], [2])
    s3.upload_file(str(tmp_path / "b.rec"), "channels", "train/part-2.rec")
    s3.upload_file(str(tmp_path / "a.rec"), "channels", "train/part-1.rec")
    s3.put_object(Bucket="channels", Key="train/.manifest", Body=b"hidden")
    s3.put_object(Bucket="channels", Key="train/empty.rec", Body=b"")
    s3.put_object(Bucket="channels", Key="trainer/other.rec", Body=b"not this channel")
    assert channel_files("s3://channels/train") == [
        "s3://channels/train/empty.rec", "s3://channels/train/part-1.rec", "s3://channels/train/part-2.rec"]
    X, y = read_channel("s3://channels/train/", need_labels=True)
    np.testing.assert_array_equal(X.toarray(), [[1, 0], [0, 2]])
    np.testing.assert_array_equal(y, [1, 2])
    assert channel_files("s3://channels/train/part-1.rec") == ["s3://channels/train/part-1.rec"]
    with pytest.raises(LocalFMError, match="object not found"):
        channel_files("s3://channels/nothing")
