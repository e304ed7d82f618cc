"""What an FM container answers: SageMaker's prediction objects, and FM's batch-transform plug.

Requests (``application/x-recordio-protobuf``, ``application/json``
``{"instances": [...]}``) are parsed by :mod:`localfm.io.content` and batch
transform is :mod:`localfm.io.transform`; FM adds only what a prediction holds.

Responses: ``application/json`` gives ``{"predictions": [...]}``;
``application/jsonlines`` one object per line. Binary classifier objects are
``{"score": s, "predicted_label": 1.0}`` (label = score >= 0.5), regressor ``{"score": s}``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

from ..errors import LocalFMError
from ..io.artifacts import load_fm
from ..io.content import JSON, JSONLINES, RECORDIO
from ..io.transform import Scoring
from .model import FactorizationMachine

ACCEPTS = (JSON, JSONLINES)
#: The request types FM inference takes, default first (a file that is not JSON is RecordIO).
CONTENT_TYPES = (RECORDIO, JSON)


def prediction_objects(scores: np.ndarray, predictor_type: str) -> Iterable[dict[str, float]]:
    """SageMaker's per-row prediction objects, in row order."""
    for s in np.asarray(scores, dtype=np.float32).tolist():
        if predictor_type == "binary_classifier":
            yield {"score": s, "predicted_label": 1.0 if s >= 0.5 else 0.0}
        else:
            yield {"score": s}


def render(scores: np.ndarray, predictor_type: str, accept: str) -> str:
    """The response body for ``accept`` (application/json or application/jsonlines)."""
    objs = prediction_objects(scores, predictor_type)
    if accept == JSON:
        return json.dumps({"predictions": list(objs)})
    if accept == JSONLINES:
        return "".join(json.dumps(o) + "\n" for o in objs)
    raise LocalFMError(f"accept {accept!r}: expected one of {', '.join(ACCEPTS)}")


def load_predictor(uri: str | os.PathLike[str], *, predictor_type: str | None = None,
                   max_bytes: int | None = None) -> FactorizationMachine:
    """An FM from any SageMaker FM artifact, read by the budgeted archive reader (``max_bytes``)."""
    return FactorizationMachine.from_weights(load_fm(str(uri), max_bytes=max_bytes), predictor_type=predictor_type)


def scoring(model: FactorizationMachine, accept: str = JSON) -> Scoring:
    """FM's plug for :mod:`localfm.io.transform`: a score (and label) per row, in ``accept``."""
    if accept not in ACCEPTS:
        raise LocalFMError(f"accept {accept!r}: expected one of {', '.join(ACCEPTS)}")
    ptype = model.hp_["predictor_type"]

    def respond(X: Any, out: IO[str], where: str) -> None:  # noqa: ARG001 - Scoring.respond signature
        out.write(render(model.predict(X), ptype, accept))

    return Scoring(feature_dim=int(model.V_.shape[0]), respond=respond, accepted=CONTENT_TYPES)
