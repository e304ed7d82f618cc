"""The k-NN training channel: RecordIO-protobuf or CSV, a file or a folder of files.

SageMaker k-NN trains from ``application/x-recordio-protobuf`` (features and label
under ``"values"``) or ``text/csv`` (label in the **first** column, then the
features, no header). A folder is read file by file in name order, as the cloud
reads a channel. ``s3://`` objects are downloaded first.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import LocalFMError
from .transform import _RECORDIO_MAGIC, read_recordio

TRAIN_CONTENT_TYPES = ("application/x-recordio-protobuf", "text/csv")


def _read_csv_with_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows: list[list[float]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LocalFMError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split(",")]
        except ValueError:
            raise LocalFMError(f"{path}: line {lineno}: expected comma-separated numbers (label first)") from None
        if len(row) < 2:
            raise LocalFMError(f"{path}: line {lineno}: expected a label and at least one feature")
        if rows and len(row) != len(rows[0]):
            raise LocalFMError(f"{path}: line {lineno}: {len(row)} columns, line 1 has {len(rows[0])}")
        rows.append(row)
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    arr = np.asarray(rows, dtype=np.float32)
    return np.ascontiguousarray(arr[:, 1:]), arr[:, 0].copy()


def _read_one(path: Path, content_type: str | None) -> tuple[np.ndarray, np.ndarray]:
    ctype = content_type
    if ctype is None:
        with open(path, "rb") as fh:
            head = fh.read(4)
        ctype = TRAIN_CONTENT_TYPES[0] if head == _RECORDIO_MAGIC or path.stat().st_size == 0 \
            else "text/csv" if path.suffix.lower() in (".csv", ".txt", "") else TRAIN_CONTENT_TYPES[0]
    if ctype == "text/csv":
        return _read_csv_with_labels(path)
    if ctype != TRAIN_CONTENT_TYPES[0]:
        raise LocalFMError(f"content type: expected one of {', '.join(TRAIN_CONTENT_TYPES)}, got {ctype!r}")
    if path.stat().st_size == 0:
        raise LocalFMError(f"{path}: empty file (expected RecordIO-protobuf records)")
    x, y = read_recordio(path, str(path), with_labels=True)
    if y is None:
        raise LocalFMError(f"{path}: records carry no label; k-NN training needs one per record")
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise LocalFMError(f"{path}: {x.shape[0]} records but {y.shape[0]} labels (every record needs a label)")
    return x, y


def read_training(uri: str | os.PathLike[str], content_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All of a training channel as (X float32 (n, d), labels float32 (n,))."""
    from ..io.uri import is_s3, local_path

    if is_s3(str(uri)):
        with local_path(uri) as path:
            return _read_one(path, content_type)
    p = Path(uri)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise LocalFMError(f"{p}: training channel folder has no files")
    elif p.is_file():
        files = [p]
    else:
        raise LocalFMError(f"{p}: training data not found")
    xs, ys = [], []
    first: Path | None = None  # the file xs[0] came from (an empty files[0] is skipped)
    for f in files:
        x, y = _read_one(f, content_type)
        if xs and x.shape[0] and xs[0].shape[1] != x.shape[1]:
            raise LocalFMError(f"{f}: {x.shape[1]} features, {first} has {xs[0].shape[1]}")
        if x.shape[0]:
            first = first or f
            xs.append(x)
            ys.append(y)
    if not xs:
        raise LocalFMError(f"{p}: no training records")
    return np.concatenate(xs), np.concatenate(ys)
