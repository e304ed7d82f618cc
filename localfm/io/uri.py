"""Local paths and ``s3://bucket/key`` URIs behind one small interface.

S3 goes through boto3 (the optional ``[s3]`` extra) with the default credential
chain; ``AWS_ENDPOINT_URL`` / ``LOCALFM_S3_ENDPOINT_URL`` point it elsewhere (a
local moto server in the tests). Objects are streamed to a temporary file rather
than read into memory, so large batch-transform outputs work. Credentials are never
logged or echoed in error messages.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import LocalFMError


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise LocalFMError(f"{uri}: expected s3://bucket/key")
    return bucket, key


def s3_client():  # noqa: ANN201 - boto3 types are optional
    """A boto3 S3 client honouring LOCALFM_S3_ENDPOINT_URL (then boto3's own AWS_ENDPOINT_URL)."""
    try:
        import boto3
    except ImportError:
        raise LocalFMError("s3:// paths need boto3: pip install 'localfm[s3]'") from None
    endpoint = os.environ.get("LOCALFM_S3_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint)


def s3_error(uri: str, exc: Exception) -> LocalFMError:
    name = type(exc).__name__
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if name == "NoCredentialsError" or name == "PartialCredentialsError":
        return LocalFMError(f"{uri}: no AWS credentials found (set them up as for the AWS CLI)")
    if code in ("404", "NoSuchKey", "NotFound"):
        return LocalFMError(f"{uri}: object not found")
    if code in ("NoSuchBucket",):
        return LocalFMError(f"{uri}: bucket not found")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return LocalFMError(f"{uri}: access denied ({code})")
    return LocalFMError(f"{uri}: S3 error {code or name}")


def _bucket_exists(client, bucket: str) -> bool:  # noqa: ANN001 - boto3 client
    """False only when S3 says the bucket is missing (any other answer: assume it exists)."""
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:
        response = getattr(exc, "response", None)
        code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
        return code not in ("404", "NoSuchBucket", "NotFound")
    return True


@contextlib.contextmanager
def local_path(uri: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a local file path for ``uri``: the path itself, or a temp download of an S3 object."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise LocalFMError(f"{path}: file not found")
        yield path
        return
    bucket, key = split_s3(str(uri))
    client = s3_client()
    with tempfile.TemporaryDirectory(prefix="localfm-s3-") as tmp:
        dest = Path(tmp) / (Path(key).name or "object")
        try:
            client.download_file(bucket, key, str(dest))
        except Exception as exc:  # botocore raises many types; map them to one line
            if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
                err = s3_error(str(uri), exc)
                if str(err).endswith("object not found") and not _bucket_exists(client, bucket):
                    # download_file starts with HEAD, whose bare 404 cannot say which is missing
                    err = LocalFMError(f"{uri}: bucket not found")
                raise err from None
            raise
        yield dest


@contextlib.contextmanager
def open_binary(uri: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a local path or S3 object for binary reading."""
    with local_path(uri) as path:
        if path.is_dir():  # open() would raise IsADirectoryError: a wrong path, i.e. bad input
            raise LocalFMError(f"{path}: is a directory, expected a file")
        with open(path, "rb") as fh:
            yield fh


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    with open_binary(uri) as fh:
        return fh.read()


def read_text(uri: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise LocalFMError(f"{uri}: not {encoding} text ({exc.reason} at byte {exc.start})") from None


def upload(path: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to ``uri`` (S3 or a local path)."""
    if not is_s3(uri):
        from .atomic import atomic_write

        # Same guarantee as every other output: a failed copy leaves the old file intact.
        with open(path, "rb") as src, atomic_write(uri, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().upload_file(str(path), bucket, key)
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise s3_error(uri, exc) from None
        raise
