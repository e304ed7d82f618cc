"""SageMaker data channels: which files a channel is, and its records as one matrix.

A channel is what the container finds under ``/opt/ml/input/data/<name>``: one file,
or a folder (an S3 prefix) whose files are read one after the other in name order
(the cloud's "file order"). One rule for every algorithm and command:

* a folder's regular files count, in name order; hidden files (``.name``) do not;
* ``s3://bucket/key`` is that object, or when there is none, the objects under
  ``key/`` (an S3 prefix, in key order, hidden names and folder markers skipped);
* an empty file holds no records and is skipped; a channel with no records at all
  is an error;
* batch-transform inputs skip ``*.out`` (our own responses, when the output folder
  is the input folder).

FM training, k-NN training, ``localfm predict``, ``localfm knn transform`` and the
parity runs all list and read channels here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from .content import CSV, RECORDIO, choose_content_type, read_csv, read_recordio
from .uri import is_s3, local_path, s3_client, s3_error, split_s3

#: Training-channel content types, default first (k-NN also takes CSV, label first).
TRAIN_CONTENT_TYPES = (RECORDIO, CSV)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _s3_objects(uri: str) -> list[str]:
    """The object ``uri``, or the objects under the prefix ``uri/`` in key order."""
    bucket, key = split_s3(uri)
    client = s3_client()
    prefix = key.rstrip("/") + "/"
    found: list[str] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/"))
        for page in pages:
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k == key:
                    return [uri]
                if k.startswith(prefix) and not k.endswith("/") and _visible(k.rsplit("/", 1)[-1]):
                    found.append(k)
    except Exception as exc:  # botocore raises many types; map them to one line
        if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise s3_error(uri, exc) from None
        raise
    if not found:
        raise LocalFMError(f"{uri}: object not found (nor any object under {prefix})")
    return [f"s3://{bucket}/{k}" for k in sorted(found)]


def channel_files(uri: str | os.PathLike[str], *, skip_outputs: bool = False) -> list[str]:
    """The files of a channel in read order (local paths or ``s3://`` URIs)."""
    text = str(uri)
    if is_s3(text):
        files = _s3_objects(text)
        return [f for f in files if not (skip_outputs and f.endswith(".out"))] or files
    p = Path(uri)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and _visible(f.name)
                       and not (skip_outputs and f.suffix == ".out"))
        if not files:
            raise LocalFMError(f"{p}: folder holds no data files")
        return [str(f) for f in files]
    if not p.is_file():
        raise LocalFMError(f"{p}: file not found")
    return [str(p)]


def channel_bytes(uri: str | os.PathLike[str]) -> int | None:
    """Total size of a local channel's files; None for ``s3://`` (not listed just to size it)."""
    if is_s3(str(uri)):
        return None
    try:
        return sum(Path(f).stat().st_size for f in channel_files(uri))
    except LocalFMError:
        return None


def _read_file(path: Path, name: str, content_type: str | None,
               accepted: tuple[str, ...]) -> tuple[Any, np.ndarray | None]:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    ctype = choose_content_type(path, head, content_type, accepted)
    if ctype == CSV:
        return read_csv(path.read_bytes(), name, label_first=True)
    return read_recordio(path, name)


def read_channel(
    uri: str | os.PathLike[str],
    *,
    need_labels: bool,
    feature_dim: int | None = None,
    content_type: str | None = None,
    accepted: tuple[str, ...] = (RECORDIO,),
    dense: bool = False,
) -> tuple[Any, np.ndarray | None]:
    """All records of a channel as one float32 matrix (CSR, or ndarray with ``dense``) and labels.

    ``accepted``: the content types the algorithm trains from, default first (FM:
    RecordIO only; k-NN: :data:`TRAIN_CONTENT_TYPES`); ``content_type`` forces one.
    Every file must agree on the width (``feature_dim`` when given) and hold finite
    values; with ``need_labels`` every record needs a label.
    """
    return read_files(channel_files(uri), uri, need_labels=need_labels, feature_dim=feature_dim,
                      content_type=content_type, accepted=accepted, dense=dense)


def read_files(
    names: list[str],
    uri: str | os.PathLike[str],
    *,
    need_labels: bool,
    feature_dim: int | None = None,
    content_type: str | None = None,
    accepted: tuple[str, ...] = (RECORDIO,),
    dense: bool = False,
) -> tuple[Any, np.ndarray | None]:
    """:func:`read_channel` on some of a channel's files (``names``, from :func:`channel_files`).

    Multi-instance training (``ShardedByS3Key``) gives each instance a subset of the
    channel's files; ``uri`` is the channel, named in errors.
    """
    Xs: list[Any] = []
    ys: list[np.ndarray | None] = []
    first: str | None = None
    for name in names:
        with local_path(name) as path:
            if path.stat().st_size == 0:
                continue  # an empty file holds no records
            X, y = _read_file(path, name, content_type, accepted)
        if X.shape[0] == 0:
            continue
        if dense:
            X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
        else:
            X = sp.csr_matrix(X, dtype=np.float32)
        values = X.data if sp.issparse(X) else X
        if values.size and not np.all(np.isfinite(values)):
            raise LocalFMError(f"{name}: non-finite feature value (NaN or inf)")
        if y is None and need_labels:
            raise LocalFMError(f"{name}: records carry no label (training/test data needs a 'values' label "
                               "or, for CSV, the label first)")
        if y is not None:
            if y.shape[0] != X.shape[0]:
                raise LocalFMError(f"{name}: {X.shape[0]} records but {y.shape[0]} labels "
                                   "(every record needs a label)")
            if not np.all(np.isfinite(y)):
                raise LocalFMError(f"{name}: non-finite label (NaN or inf)")
        if feature_dim is not None and X.shape[1] != feature_dim:
            raise LocalFMError(f"{name}: records have {X.shape[1]} features but feature_dim={feature_dim}")
        if Xs and X.shape[1] != Xs[0].shape[1]:
            raise LocalFMError(f"{name}: {X.shape[1]} features, {first} has {Xs[0].shape[1]}")
        first = first or name
        Xs.append(X)
        ys.append(y)
    if not Xs:
        what = "empty file" if len(names) == 1 and names[0] == str(uri) else "no records in any file"
        raise LocalFMError(f"{uri}: {what} (expected {' or '.join(accepted)} records)")
    if len(Xs) == 1:
        X = Xs[0]
    else:
        X = np.concatenate(Xs) if dense else sp.vstack(Xs, format="csr")
    y = None if any(v is None for v in ys) else np.concatenate(ys)  # type: ignore[arg-type]
    return X, y
