"""The request content types of SageMaker's built-in algorithm containers, parsed once.

FM and k-NN inference (endpoints and batch transform) take the same request
formats, with the cloud's field names:

* ``application/x-recordio-protobuf``: ``aialgs.data.Record`` rows, features under
  ``"values"`` (dense or sparse), see :mod:`localfm.io.recordio`;
* ``text/csv``: one vector per line, no header (training channels: label first);
* ``application/json``: ``{"instances": [...]}``, each instance dense
  ``{"features": [...]}`` or ``{"data": {"features": {"values": [...]}}}``, or sparse
  ``{"data": {"features": {"keys": [...], "shape": [d], "values": [...]}}}``;
* ``application/jsonlines``: one such instance per line.

Every request parses to a float32 CSR matrix here, with one set of checks and one
wording for its errors; what an algorithm *answers* (which fields a prediction has)
stays with the algorithm (:mod:`localfm.fm.inference`, :mod:`localfm.knn.transform`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from .recordio import MAGIC_BYTES, read_matrix

RECORDIO = "application/x-recordio-protobuf"
CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
#: Every request type the containers know, in the order error messages list them.
REQUEST_TYPES = (RECORDIO, CSV, JSON, JSONLINES)
_ALIASES = {"application/json-lines": JSONLINES, "application/x-jsonlines": JSONLINES}
_EXTENSIONS = {
    ".csv": CSV,
    ".json": JSON,
    ".jsonl": JSONLINES,
    ".jsonlines": JSONLINES,
    ".protobuf": RECORDIO,
    ".pbr": RECORDIO,
    ".recordio": RECORDIO,
}


def media_type(content_type: str) -> str:
    """``"Application/JSONLines; charset=utf-8"`` → ``"application/jsonlines"``."""
    media = str(content_type).split(";")[0].strip().lower()
    return _ALIASES.get(media, media)


def detect_content_type(path: str | os.PathLike[str], head: bytes) -> str:
    """Content type from the file extension, else sniffed from the first bytes."""
    ext = Path(path).suffix.lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if head.startswith(MAGIC_BYTES):
        return RECORDIO
    if head.lstrip().startswith(b"{"):
        return JSON if b'"instances"' in head else JSONLINES
    return CSV


def choose_content_type(path: str | os.PathLike[str], head: bytes, given: str | None,
                        accepted: tuple[str, ...]) -> str:
    """The type to parse ``path`` as: ``given`` (checked), else detected if ``accepted``, else ``accepted[0]``.

    An algorithm lists what it accepts, default first (FM: RecordIO; k-NN training:
    RecordIO then CSV), so a file that sniffs as something it does not take is read
    as its default and fails there with that format's message.
    """
    if given is not None:
        media = media_type(given)
        if media not in accepted:
            raise LocalFMError(f"content type: expected one of {', '.join(accepted)}, got {given!r}")
        return media
    detected = detect_content_type(path, head)
    return detected if detected in accepted else accepted[0]


def decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalFMError(f"{where}: not UTF-8 text (byte {exc.start})") from None


# ------------------------------------------------------------------------------ CSV


def read_csv(data: bytes, where: str, *, label_first: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``text/csv`` → (float32 (n, d), labels or None): no header, every line as wide as line 1.

    ``label_first``: the training-channel form, label in column 0, then the features.
    Values are parsed, not judged: NaN checks are the caller's (it knows the rows).
    """
    rows: list[list[float]] = []
    hint = " (label first)" if label_first else ""
    for lineno, line in enumerate(decode_text(data, where).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split(",")]
        except ValueError:
            raise LocalFMError(f"{where}: line {lineno}: expected comma-separated numbers{hint}") from None
        if label_first and len(row) < 2:
            raise LocalFMError(f"{where}: line {lineno}: expected a label and at least one feature")
        if rows and len(row) != len(rows[0]):
            raise LocalFMError(f"{where}: line {lineno}: {len(row)} columns, the first line has {len(rows[0])}")
        rows.append(row)
    if not rows:
        return np.zeros((0, 0), np.float32), (np.zeros(0, np.float32) if label_first else None)
    arr = np.asarray(rows, dtype=np.float32)
    if label_first:
        return np.ascontiguousarray(arr[:, 1:]), arr[:, 0].copy()
    return arr, None


# ----------------------------------------------------------------------------- JSON


def _numbers(raw: Any, where: str, what: str) -> list[float]:
    if not isinstance(raw, list):
        raise LocalFMError(f"{where}: '{what}' must be a list of numbers")
    out: list[float] = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LocalFMError(f"{where}: '{what}' must hold finite numbers (no NaN or infinity), got {v!r}")
        out.append(float(v))
    return out


class _Rows:
    """CSR arrays built instance by instance, all of one width."""

    def __init__(self, feature_dim: int | None) -> None:
        self.width = feature_dim
        self.fixed = feature_dim is not None
        self.indptr = [0]
        self.indices: list[int] = []
        self.data: list[float] = []

    def _width(self, n: int, where: str, what: str) -> None:
        if self.width is None:
            self.width = n
        elif n != self.width:
            whose = "model feature_dim is" if self.fixed else "instance 0 has"
            raise LocalFMError(f"{where}: {n} {what} features, {whose} {self.width}")

    def dense(self, values: list[float], where: str) -> None:
        self._width(len(values), where, "dense")
        nz = [j for j, v in enumerate(values) if v != 0.0]
        self.indices.extend(nz)
        self.data.extend(values[j] for j in nz)
        self.indptr.append(len(self.indices))

    def sparse(self, feats: dict[str, Any], values: list[float], where: str) -> None:
        keys = feats["keys"]
        if not isinstance(keys, list) or any(isinstance(k, bool) or not isinstance(k, int) for k in keys):
            raise LocalFMError(f"{where}: 'keys' must be a list of integers")
        if len(keys) != len(values):
            raise LocalFMError(f"{where}: {len(keys)} keys but {len(values)} values")
        shape = feats.get("shape", [self.width] if self.width is not None else None)
        if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int)
                and not isinstance(shape[0], bool) and shape[0] >= 0):
            raise LocalFMError(f"{where}: sparse features need \"shape\": [feature_dim], got {shape!r}")
        if self.width is not None and shape[0] != self.width:
            whose = "model feature_dim is" if self.fixed else "instance 0 has"
            raise LocalFMError(f"{where}: shape {shape!r}, {whose} {self.width}")
        self.width = shape[0]
        for k in keys:
            if not 0 <= k < shape[0]:
                raise LocalFMError(f"{where}: key {k} outside [0, {shape[0]})")
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.indices.extend(keys[j] for j in order)
        self.data.extend(values[j] for j in order)
        self.indptr.append(len(self.indices))

    def add(self, inst: Any, where: str) -> None:
        """One instance: ``{"features": [...]}`` or ``{"data": {"features": {...}}}``."""
        if not isinstance(inst, dict):
            raise LocalFMError(f"{where}: expected an object")
        feats = inst.get("features")
        if feats is None and isinstance(inst.get("data"), dict):
            feats = inst["data"].get("features")
        if isinstance(feats, list):
            self.dense(_numbers(feats, where, "features"), where)
        elif isinstance(feats, dict):
            values = _numbers(feats.get("values"), where, "values")
            if "keys" in feats:
                self.sparse(feats, values, where)
            else:
                self.dense(values, where)
        else:
            raise LocalFMError(f'{where}: expected "features" (list) or "data": {{"features": {{...}}}}')

    def matrix(self) -> sp.csr_matrix:
        X = sp.csr_matrix(
            (np.asarray(self.data, dtype=np.float32), np.asarray(self.indices, dtype=np.int64),
             np.asarray(self.indptr, dtype=np.int64)),
            shape=(len(self.indptr) - 1, self.width or 0),
        )
        X.sum_duplicates()
        return X


def parse_instances(doc: Any, where: str = "request", feature_dim: int | None = None) -> sp.csr_matrix:
    """An ``application/json`` document ``{"instances": [...]}`` → CSR (n, d) float32.

    With ``feature_dim`` every instance must have that width; without it, the first
    instance sets it. Errors name the instance.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise LocalFMError(f'{where}: expected a JSON object {{"instances": [...]}}')
    rows = _Rows(feature_dim)
    for i, inst in enumerate(doc["instances"]):
        rows.add(inst, f"{where}: instance {i}")
    return rows.matrix()


def parse_jsonlines(data: bytes, where: str, feature_dim: int | None = None) -> sp.csr_matrix:
    """``application/jsonlines``: one instance object per line → CSR (n, d) float32."""
    rows = _Rows(feature_dim)
    for lineno, line in enumerate(decode_text(data, where).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LocalFMError(f"{where}: line {lineno}: not valid JSON ({exc.msg})") from None
        rows.add(obj, f"{where}: line {lineno}")
    return rows.matrix()


# ------------------------------------------------------------------------- RecordIO


def read_recordio(src: Any, where: str) -> tuple[Any, np.ndarray | None]:
    """RecordIO-protobuf bytes or path → (X csr or dense float32, labels or None); errors name ``where``."""
    try:
        m = read_matrix(src)
    except LocalFMError as exc:
        text = str(exc)
        raise LocalFMError(text if text.startswith(where) else f"{where}: {text}") from None
    y = None if m.y is None else np.asarray(m.y, dtype=np.float32).reshape(-1)
    return m.X, y


# ------------------------------------------------------------------------- requests


def parse_request(data: bytes, content_type: str, *, where: str, feature_dim: int | None = None) -> Any:
    """Request bytes of any :data:`REQUEST_TYPES` → a float32 matrix (CSR, or dense for CSV/dense RecordIO).

    The width is checked here only for JSON instances (whose errors name the
    instance); callers check every matrix against their model's width.
    """
    ctype = media_type(content_type)
    if ctype == RECORDIO:
        return read_recordio(data, where)[0]
    if ctype == CSV:
        return read_csv(data, where)[0]
    if ctype == JSON:
        try:
            doc = json.loads(decode_text(data, where))
        except json.JSONDecodeError as exc:
            raise LocalFMError(f"{where}: not valid JSON ({exc})") from None
        return parse_instances(doc, where, feature_dim)
    if ctype == JSONLINES:
        return parse_jsonlines(data, where, feature_dim)
    raise LocalFMError(f"content type: expected one of {', '.join(REQUEST_TYPES)}, got {content_type!r}")
