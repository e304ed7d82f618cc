"""localfm.io.uri against a real S3 API: a moto server (ThreadedMotoServer) on loopback.

boto3 talks to the server exactly as it would to AWS (signing, multipart transfers,
error responses), only the endpoint differs (LOCALFM_S3_ENDPOINT_URL). Credentials
are dummies set per test; a test removes them to check the missing-credentials path.
"""
from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from localfm.errors import LocalFMError  # noqa: E402
from localfm.io import uri  # noqa: E402
from tests.conftest import S3_TEST_SECRET, make_s3_bucket  # noqa: E402

BUCKET = "localfm-test"
SECRET = S3_TEST_SECRET


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201 - boto3 client
    """localfm pointed at the session's moto server with dummy credentials; a fresh bucket."""
    return make_s3_bucket(moto_endpoint, BUCKET, monkeypatch, tmp_path)


def test_split_and_is_s3() -> None:
    assert uri.is_s3("s3://b/k/x.out")
    assert not uri.is_s3("/tmp/s3://x")
    assert not uri.is_s3(Path("s3:/b/k"))
    assert uri.split_s3("s3://bucket/a/b.json") == ("bucket", "a/b.json")
    for bad in ("s3://bucket", "s3://bucket/", "s3:///key"):
        with pytest.raises(LocalFMError, match="expected s3://bucket/key"):
            uri.split_s3(bad)


def test_read_text_and_bytes_roundtrip(s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=BUCKET, Key="logs/training-log.txt", Body="line one\nzwei ü\n".encode())
    assert uri.read_text(f"s3://{BUCKET}/logs/training-log.txt") == "line one\nzwei ü\n"
    assert uri.read_bytes(f"s3://{BUCKET}/logs/training-log.txt").endswith("ü\n".encode())


def test_local_path_keeps_the_object_name(s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=BUCKET, Key="transform/output/test.protobuf.out", Body=b'{"score": 0.5}\n')
    with uri.local_path(f"s3://{BUCKET}/transform/output/test.protobuf.out") as p:
        assert p.name == "test.protobuf.out"
        assert p.read_bytes() == b'{"score": 0.5}\n'
        tmp_dir = p.parent
    assert not tmp_dir.exists(), "the temporary download must be removed after use"


def test_missing_object_is_bad_input(s3) -> None:  # noqa: ANN001
    with pytest.raises(LocalFMError, match=r"s3://localfm-test/nope\.out: object not found"):
        uri.read_bytes(f"s3://{BUCKET}/nope.out")


def test_missing_bucket_is_bad_input(s3) -> None:  # noqa: ANN001
    with pytest.raises(LocalFMError, match=r"s3://no-such-bucket-localfm/x\.out: bucket not found"):
        uri.read_bytes("s3://no-such-bucket-localfm/x.out")


@pytest.mark.slow
def test_missing_credentials_named_and_secret_never_echoed(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import boto3

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with pytest.raises(LocalFMError, match="no AWS credentials found") as info:
        uri.read_bytes(f"s3://{BUCKET}/anything")
    assert SECRET not in str(info.value)


@pytest.mark.slow
def test_wrong_credentials_do_not_leak_the_secret(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    # moto accepts any key by default; the message must still never contain the secret.
    s3.put_object(Bucket=BUCKET, Key="a.txt", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "-other")
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    try:
        uri.read_bytes(f"s3://{BUCKET}/a.txt")
    except LocalFMError as exc:
        assert SECRET not in str(exc)


@pytest.mark.slow
def test_large_object_streamed_to_disk_not_memory(s3, tmp_path: Path) -> None:  # noqa: ANN001
    """An 80 MiB object travels as a multipart upload and a ranged download to a temp file.

    Peak Python-heap growth while fetching stays well below the object size, i.e. the
    object is never held in memory whole. (s3transfer bounds its write-behind queue at
    100 chunks of 256 KiB = 25 MiB, reached when the disk is slower than loopback; the
    object must be big enough for "half its size" to sit clearly above that bound.)
    """
    size = 80 * 1024 * 1024
    src = tmp_path / "big.protobuf"
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    with open(src, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(block)
            h.update(block)
    uri.upload(src, f"s3://{BUCKET}/channels/train/big.protobuf")
    head = s3.head_object(Bucket=BUCKET, Key="channels/train/big.protobuf")
    assert head["ContentLength"] == size
    assert "-" in head["ETag"], "expected a multipart upload for a large object"

    tracemalloc.start()
    try:
        with uri.local_path(f"s3://{BUCKET}/channels/train/big.protobuf") as p:
            _, peak = tracemalloc.get_traced_memory()
            assert p.stat().st_size == size
            got = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    got.update(chunk)
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == h.hexdigest()
    assert peak < size / 2, f"download peaked at {peak} bytes of Python heap for a {size}-byte object"


def test_upload_to_local_path_creates_parents(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("hello")
    dest = tmp_path / "deep" / "er" / "b.txt"
    uri.upload(src, str(dest))
    assert dest.read_text() == "hello"


def test_local_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(LocalFMError, match="file not found"):
        uri.read_bytes(str(tmp_path / "missing.out"))


def test_upload_to_local_path_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # shutil.copyfile wrote straight into the target: a copy failing midway truncated the old file.
    import shutil

    src = tmp_path / "new.txt"
    src.write_text("new contents")
    dest = tmp_path / "out.txt"
    dest.write_text("old contents")

    def broken_copy(fsrc, fdst, *args):  # noqa: ANN001, ANN002
        fdst.write(fsrc.read(3))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    monkeypatch.setattr(shutil, "copyfile", lambda a, b, **k: broken_copy(open(a, "rb"), open(b, "wb")))
    with pytest.raises(OSError, match="disk full"):
        uri.upload(src, str(dest))
    assert dest.read_text() == "old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "out.txt"]
