"""k-NN batch transform: SageMaker's request formats in, its response formats out.

Requests (``content_type``), as the cloud's k-NN inference accepts them:

* ``application/x-recordio-protobuf`` — dense records, features under ``"values"``
  (sparse records are densified);
* ``text/csv`` — one vector per line, no header, no label column;
* ``application/json`` — ``{"instances": [{"features": [...]}, ...]}`` (also the
  SageMaker "data" form ``{"data": {"features": {"values": [...]}}}``);
* ``application/jsonlines`` — one ``{"features": [...]}`` per line.

Responses (``accept``): ``application/jsonlines`` (one line per query),
``application/json`` (``{"predictions": [...]}``), each with ``; verbose=true`` to
add the neighbours' ``labels`` and ``distances`` (ascending; for INNER_PRODUCT and
COSINE the best match is last). All JSON text comes from :func:`format_record` and
:func:`format_float`, the single place separators and number formatting are
decided, so the parity suite can compare byte for byte.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..io.atomic import atomic_outputs
from ..progress import progress
from .index import as_float_matrix
from .model import KNN, Neighbours

CONTENT_TYPES = (
    "application/x-recordio-protobuf",
    "text/csv",
    "application/json",
    "application/jsonlines",
)
ACCEPTS = (
    "application/json",
    "application/jsonlines",
    "application/json; verbose=true",
    "application/jsonlines; verbose=true",
)
_RECORDIO_MAGIC = (0xCED7230A).to_bytes(4, "little")
_EXTENSIONS = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".jsonl": "application/jsonlines",
    ".jsonlines": "application/jsonlines",
    ".protobuf": "application/x-recordio-protobuf",
    ".pbr": "application/x-recordio-protobuf",
    ".recordio": "application/x-recordio-protobuf",
}


# ------------------------------------------------------------------ formatting
def format_float(x: float) -> str:
    """A float32 value as Python prints the float it converts to: ``509.0``, ``4.069812297821045``.

    That is what ``json.dumps(float(np.float32(v)))`` writes, so it round-trips to the
    identical float32 (``np.float32(float(text)) == v``). Non-finite values have no
    JSON spelling and never reach here (inputs are validated).
    """
    value = float(np.float32(x))
    if not math.isfinite(value):
        raise LocalFMError(f"cannot write non-finite value {value!r} as JSON")
    return repr(value)


def format_record(predicted_label: float, labels: Sequence[float] | None = None,
                  distances: Sequence[float] | None = None) -> str:
    """One response object, e.g. ``{"predicted_label": 509.0, "labels": [...], "distances": [...]}``.

    Separators are Python's ``json.dumps`` defaults (``", "`` and ``": "``), as in the
    cloud output printed in the seed blog; keys in the cloud's order.
    """
    text = '{"predicted_label": ' + format_float(predicted_label)
    if labels is not None and distances is not None:
        text += ', "labels": [' + ", ".join(format_float(v) for v in labels) + "]"
        text += ', "distances": [' + ", ".join(format_float(v) for v in distances) + "]"
    return text + "}"


@dataclass(frozen=True)
class Accept:
    """A parsed Accept header: response container and whether neighbours are included."""

    jsonlines: bool
    verbose: bool


def parse_accept(accept: str) -> Accept:
    """``"application/jsonlines; verbose=true"`` → Accept(jsonlines=True, verbose=True)."""
    parts = [p.strip() for p in str(accept).split(";")]
    media = parts[0].lower()
    params: dict[str, str] = {}
    for p in parts[1:]:
        name, sep, value = p.partition("=")
        if not sep:
            raise LocalFMError(f"accept: malformed parameter {p!r}; expected one of {', '.join(ACCEPTS)}")
        params[name.strip().lower()] = value.strip().lower()
    unknown = set(params) - {"verbose"}
    if media not in ("application/json", "application/jsonlines") or unknown or \
            params.get("verbose", "false") not in ("true", "false"):
        raise LocalFMError(f"accept: expected one of {', '.join(ACCEPTS)}, got {accept!r}")
    return Accept(jsonlines=media == "application/jsonlines", verbose=params.get("verbose") == "true")


def render(nb: Neighbours, accept: str | Accept) -> str:
    """The response body for ``nb`` under ``accept`` (JSON Lines: one line per query)."""
    acc = parse_accept(accept) if isinstance(accept, str) else accept
    records = []
    for i in range(nb.predicted_label.shape[0]):
        if acc.verbose:
            records.append(format_record(nb.predicted_label[i], nb.labels[i], nb.distances[i]))
        else:
            records.append(format_record(nb.predicted_label[i]))
    if acc.jsonlines:
        return "".join(r + "\n" for r in records)
    return '{"predictions": [' + ", ".join(records) + "]}\n"


# ------------------------------------------------------------------- requests
def detect_content_type(path: str | os.PathLike[str], head: bytes) -> str:
    """Content type from the extension, else sniffed from the first bytes."""
    ext = Path(path).suffix.lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if head.startswith(_RECORDIO_MAGIC):
        return "application/x-recordio-protobuf"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "application/json" if b'"instances"' in head else "application/jsonlines"
    return "text/csv"


def parse_request(data: bytes, content_type: str, *, where: str) -> np.ndarray:
    """Request bytes → float32 (n, d) matrix (not yet checked against feature_dim)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/x-recordio-protobuf":
        return read_recordio(data, where)
    if ctype == "text/csv":
        return _read_csv(data, where)
    if ctype == "application/json":
        return _read_json(data, where)
    if ctype in ("application/jsonlines", "application/json-lines", "application/x-jsonlines"):
        return _read_jsonlines(data, where)
    raise LocalFMError(f"content type: expected one of {', '.join(CONTENT_TYPES)}, got {content_type!r}")


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalFMError(f"{where}: not UTF-8 text (byte {exc.start})") from None


def _stack(rows: list[list[float]], where: str) -> np.ndarray:
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise LocalFMError(f"{where}: record {i} has {len(r)} features, record 0 has {width}")
    try:
        return np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise LocalFMError(f"{where}: features must be numbers ({exc})") from None


def _read_csv(data: bytes, where: str) -> np.ndarray:
    rows: list[list[float]] = []
    for lineno, line in enumerate(_decode(data, where).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            raise LocalFMError(f"{where}: line {lineno}: expected comma-separated numbers") from None
    return _stack(rows, where)


def _features_of(obj: Any, where: str) -> list[float]:
    """``{"features": [...]}`` or SageMaker's ``{"data": {"features": {"values", "keys", "shape"}}}``."""
    if isinstance(obj, dict) and isinstance(obj.get("features"), list):
        return obj["features"]
    data = obj.get("data") if isinstance(obj, dict) else None
    feats = data.get("features") if isinstance(data, dict) else None
    if isinstance(feats, dict) and isinstance(feats.get("values"), list):
        values = feats["values"]
        if "keys" not in feats:
            return values
        shape = feats.get("shape")
        if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int)):
            raise LocalFMError(f"{where}: sparse features need \"shape\": [feature_dim]")
        keys = feats["keys"]
        if not isinstance(keys, list) or len(keys) != len(values):
            # zip() would crash on a non-list and silently drop unmatched values
            raise LocalFMError(f"{where}: sparse \"keys\" must be a list as long as \"values\"")
        dense = [0.0] * shape[0]
        for key, val in zip(keys, values):
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < shape[0]:
                raise LocalFMError(f"{where}: sparse key {key!r} outside [0, {shape[0]})")
            dense[key] = val
        return dense
    raise LocalFMError(f'{where}: expected {{"features": [numbers]}}')


def _read_json(data: bytes, where: str) -> np.ndarray:
    try:
        doc = json.loads(_decode(data, where))
    except json.JSONDecodeError as exc:
        raise LocalFMError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise LocalFMError(f'{where}: expected {{"instances": [{{"features": [...]}}, ...]}}')
    return _stack([_features_of(o, f"{where}: instance {i}") for i, o in enumerate(doc["instances"])], where)


def _read_jsonlines(data: bytes, where: str) -> np.ndarray:
    rows: list[list[float]] = []
    for lineno, line in enumerate(_decode(data, where).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LocalFMError(f"{where}: line {lineno}: not valid JSON ({exc.msg})") from None
        rows.append(_features_of(obj, f"{where}: line {lineno}"))
    return _stack(rows, where)


def read_recordio(src: Any, where: str, *, with_labels: bool = False) -> Any:
    """Dense float32 features (and labels when asked) from RecordIO-protobuf bytes or a path."""
    from ..io.recordio import read_matrix

    try:
        matrix = read_matrix(src)
    except LocalFMError as exc:
        raise LocalFMError(f"{where}: {exc}") from None
    x = matrix.X
    if hasattr(x, "toarray"):
        x = x.toarray()
    x = np.asarray(x, dtype=np.float32)
    return (x, matrix.y) if with_labels else x


# ---------------------------------------------------------------- batch jobs
def input_files(input_path: str | os.PathLike[str]) -> list[Path]:
    """A file, or every visible regular file of a directory (sorted), skipping ``*.out``."""
    p = Path(input_path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                       and f.suffix != ".out")
        if not files:
            raise LocalFMError(f"{p}: no input files in directory")
        return files
    raise LocalFMError(f"{p}: input not found")


def _write_response(model: KNN, x: np.ndarray, acc: Accept, fh: Any, *, where: str) -> None:
    """Stream the response for ``x`` in ``mini_batch_size`` blocks, so memory stays bounded."""
    batch = max(1, int(model.hp_["mini_batch_size"]))
    if not acc.jsonlines:
        fh.write('{"predictions": [')
    for start in progress(range(0, x.shape[0], batch), total=math.ceil(x.shape[0] / batch),
                          desc=f"transform {Path(where).name}", unit="batch"):
        nb = model.neighbours(x[start:start + batch], where=where)
        body = render(nb, Accept(jsonlines=True, verbose=acc.verbose))
        if acc.jsonlines:
            fh.write(body)
        else:
            fh.write(("" if start == 0 else ", ") + ", ".join(body.splitlines()))
    if not acc.jsonlines:
        fh.write("]}\n")


def transform_files(
    model: KNN,
    inputs: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    accept: str = "application/jsonlines",
    content_type: str | None = None,
) -> list[tuple[Path, int]]:
    """Answer every query of each input into ``output_dir/<input name>.out``, like batch transform.

    All inputs are parsed and validated (format, NaN, feature count) before any
    output is written, and all outputs land together (temp files + rename): a bad
    file leaves no ``.out`` at all and earlier outputs untouched. Returns
    ``(output path, number of queries)`` per input.
    """
    acc = parse_accept(accept)
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise LocalFMError(f"{output_dir}: exists and is not a folder")
    parsed: list[tuple[Path, np.ndarray]] = []
    for item in inputs:
        src = Path(item)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise LocalFMError(f"{src}: cannot read ({exc.strerror})") from None
        ctype = content_type or detect_content_type(src, data[:4096])
        x = parse_request(data, ctype, where=str(src))
        if x.shape[0] == 0:
            x = np.zeros((0, model.feature_dim), dtype=np.float32)
        parsed.append((src, as_float_matrix(x, what=str(src), dim=model.feature_dim)))
    names = [src.name for src, _ in parsed]
    if len(set(names)) != len(names):
        raise LocalFMError("inputs: two inputs share a file name, so their .out files would collide")
    results: list[tuple[Path, int]] = []
    with atomic_outputs() as out:
        for src, x in parsed:
            dest = Path(output_dir) / (src.name + ".out")
            with open(out.path(dest), "w", encoding="utf-8", newline="\n") as fh:
                _write_response(model, x, acc, fh, where=str(src))
            results.append((dest, int(x.shape[0])))
    return results


def transform_file(
    model: KNN,
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    accept: str = "application/jsonlines",
    content_type: str | None = None,
) -> tuple[Path, int]:
    """One input file → ``output_dir/<name>.out``; see :func:`transform_files`."""
    return transform_files(model, [input_path], output_dir, accept=accept, content_type=content_type)[0]
