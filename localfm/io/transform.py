"""One batch transform for every algorithm: a channel of requests in, ``<input>.out`` files out.

SageMaker batch transform reads each file of the input channel, splits it by its
content type, sends the records to the model and writes the answers to
``<output>/<input file name>.out``. Here the reading, splitting and writing are done
once; an algorithm plugs in only how it answers (:class:`Scoring`): FM (``localfm
predict``) gives a score per row, k-NN (``localfm knn transform``) a label and its
neighbours.

Every input is parsed and checked (format, width, values) before any output is
written, and all outputs land together (:func:`localfm.io.atomic.atomic_outputs`):
a bad file leaves no ``.out`` at all and earlier outputs untouched.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError
from .atomic import atomic_outputs
from .channels import channel_files
from .content import REQUEST_TYPES, choose_content_type, parse_request
from .uri import local_path


def _as_is(x: Any, where: str) -> Any:  # noqa: ARG001 - the Scoring.prepare signature
    return x


@dataclass(frozen=True)
class Scoring:
    """What an algorithm plugs into the batch transform.

    ``respond(x, out, where)`` writes the response body for the matrix ``x`` of one
    input (it may stream, in mini-batches); ``prepare(x, where)`` converts and checks
    a parsed matrix first (k-NN: dense, finite), so every input is judged before
    anything is written. ``accepted`` lists the request content types, default
    first: a file whose sniffed type is not among them is read as the default.
    """

    feature_dim: int
    respond: Callable[[Any, IO[str], str], None]
    accepted: tuple[str, ...] = REQUEST_TYPES
    prepare: Callable[[Any, str], Any] = field(default=_as_is)


def input_files(input_path: str | os.PathLike[str]) -> list[str]:
    """The files of a transform input channel (``*.out`` skipped: they are our own answers)."""
    return channel_files(input_path, skip_outputs=True)


def read_requests(inputs: Sequence[str | os.PathLike[str]], scoring: Scoring, *,
                  content_type: str | None = None) -> list[tuple[str, Any]]:
    """Parse and check every input: ``(name, matrix)`` pairs, or the first input's error."""
    parsed: list[tuple[str, Any]] = []
    dim = scoring.feature_dim
    for item in inputs:
        name = str(item)
        with local_path(name) as path:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise LocalFMError(f"{name}: cannot read ({exc.strerror})") from None
        ctype = choose_content_type(name, data[:4096], content_type, scoring.accepted)
        x = parse_request(data, ctype, where=name, feature_dim=dim)
        if x.shape[0] == 0:
            x = sp.csr_matrix((0, dim), dtype=np.float32)
        elif x.shape[1] != dim:
            raise LocalFMError(f"{name}: expected vectors of {dim} features (feature_dim {dim}), got {x.shape[1]}")
        _check_finite(x, name)
        parsed.append((name, scoring.prepare(x, name)))
    return parsed


def _check_finite(x: Any, where: str) -> None:
    """NaN or inf has no JSON spelling and no neighbours: refuse it naming the row."""
    values = x.data if sp.issparse(x) else np.asarray(x)
    bad = np.flatnonzero(~np.isfinite(values.reshape(-1)))
    if bad.size:
        row = int(np.searchsorted(x.indptr, bad[0], side="right") - 1) if sp.issparse(x) \
            else int(bad[0] // max(1, x.shape[1]))
        raise LocalFMError(f"{where}: row {row} has a NaN or infinite value; expected finite numbers")


def _base(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def transform_files(inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
                    scoring: Scoring, *, content_type: str | None = None) -> list[tuple[Path, int]]:
    """Answer each input into ``output_dir/<input name>.out``: ``(output, rows)`` per input."""
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LocalFMError(f"{out_dir}: exists and is not a folder")
    parsed = read_requests(inputs, scoring, content_type=content_type)
    names = [_base(n) for n, _ in parsed]
    if len(set(names)) != len(names):
        raise LocalFMError("inputs: two inputs share a file name, so their .out files would collide")
    done: list[tuple[Path, int]] = []
    with atomic_outputs() as out:  # one output set: a failure anywhere leaves no .out
        for (name, x), base in zip(parsed, names):
            dest = out_dir / f"{base}.out"
            with open(out.path(dest), "w", encoding="utf-8", newline="\n") as fh:
                scoring.respond(x, fh, name)
            done.append((dest, int(x.shape[0])))
    return done


def transform_to(out: IO[str], inputs: Sequence[str | os.PathLike[str]], scoring: Scoring, *,
                 content_type: str | None = None) -> list[int]:
    """Answer each input onto ``out`` (one body per input, newline-terminated): rows per input."""
    parsed = read_requests(inputs, scoring, content_type=content_type)
    bodies = []
    for name, x in parsed:  # every answer is ready before the first is printed
        buf = io.StringIO()
        scoring.respond(x, buf, name)
        bodies.append(buf.getvalue())
    for body in bodies:
        out.write(body if body.endswith("\n") else body + "\n")
    return [int(x.shape[0]) for _, x in parsed]
