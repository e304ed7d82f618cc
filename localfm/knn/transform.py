"""k-NN batch transform: what a k-NN container answers, plugged into the generic transform.

Requests are every type :mod:`localfm.io.content` parses (RecordIO-protobuf, CSV,
JSON ``{"instances": [...]}``, JSON Lines; sparse records are densified), and the
reading, checking and writing of files is :mod:`localfm.io.transform`. This module
keeps what is k-NN's own: the response.

Responses (``accept``): ``application/jsonlines`` (one line per query),
``application/json`` (``{"predictions": [...]}``), each with ``; verbose=true`` to
add the neighbours' ``labels`` and ``distances`` (ascending; for INNER_PRODUCT and
COSINE the best match is last). All JSON text comes from :func:`format_record` and
:func:`format_float`, the single place separators and number formatting are
decided, so the parity suite can compare byte for byte.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import LocalFMError
from ..io import transform as io_transform
from ..io.content import REQUEST_TYPES
from ..io.transform import Scoring
from ..progress import progress
from .index import as_float_matrix
from .model import KNN, Neighbours

#: Requests k-NN inference takes (all the containers' types), in SageMaker's order.
CONTENT_TYPES = REQUEST_TYPES
ACCEPTS = (
    "application/json",
    "application/jsonlines",
    "application/json; verbose=true",
    "application/jsonlines; verbose=true",
)


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


# ---------------------------------------------------------------- batch jobs
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


def scoring(model: KNN, accept: str | Accept = "application/jsonlines") -> Scoring:
    """k-NN's plug for :mod:`localfm.io.transform`: dense finite queries, neighbours answered."""
    acc = parse_accept(accept) if isinstance(accept, str) else accept

    def prepare(x: Any, where: str) -> np.ndarray:
        return as_float_matrix(x, what=where, dim=model.feature_dim)

    def respond(x: np.ndarray, fh: IO[str], where: str) -> None:
        _write_response(model, x, acc, fh, where=where)

    return Scoring(feature_dim=model.feature_dim, respond=respond, accepted=CONTENT_TYPES, prepare=prepare)


def transform_files(
    model: KNN,
    inputs: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    accept: str = "application/jsonlines",
    content_type: str | None = None,
) -> list[tuple[Path, int]]:
    """Answer every query of each input into ``output_dir/<input name>.out``, like batch transform.

    See :func:`localfm.io.transform.transform_files`: everything is parsed and checked
    before anything is written, and the outputs land together. Returns
    ``(output path, number of queries)`` per input.
    """
    return io_transform.transform_files(inputs, output_dir, scoring(model, accept), content_type=content_type)


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
