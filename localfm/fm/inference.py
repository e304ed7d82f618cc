"""SageMaker FM inference formats: request parsing and response rendering.

Requests the FM endpoint / batch transform accepts:
- ``application/x-recordio-protobuf``: sparse or dense ``aialgs.data.Record`` rows
  (read with :func:`localfm.io.recordio.read_matrix`);
- ``application/json``: ``{"instances": [...]}`` where each instance is either sparse
  ``{"data": {"features": {"keys": [...], "shape": [d], "values": [...]}}}`` or dense
  ``{"features": [...]}`` (also ``{"data": {"features": {"values": [...]}}}``).

Responses: ``application/json`` gives ``{"predictions": [...]}``;
``application/jsonlines`` one object per line. Binary classifier objects are
``{"score": s, "predicted_label": 1.0}`` (label = score >= 0.5), regressor ``{"score": s}``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError

JSON = "application/json"
JSONLINES = "application/jsonlines"
RECORDIO = "application/x-recordio-protobuf"
ACCEPTS = (JSON, JSONLINES)
CONTENT_TYPES = (RECORDIO, JSON)


def _number_list(raw: Any, where: str, what: str) -> list[float]:
    if not isinstance(raw, list):
        raise LocalFMError(f"{where}: '{what}' must be a list of numbers")
    out: list[float] = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LocalFMError(f"{where}: '{what}' must hold finite numbers, got {v!r}")
        out.append(float(v))
    return out


def parse_json_instances(doc: Any, feature_dim: int, source: str = "request") -> sp.csr_matrix:
    """``{"instances": [...]}`` → CSR (n, feature_dim) float32; errors name the instance."""
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise LocalFMError(f'{source}: expected a JSON object {{"instances": [...]}}')
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    for i, inst in enumerate(doc["instances"]):
        where = f"{source}: instance {i}"
        if not isinstance(inst, dict):
            raise LocalFMError(f"{where}: expected an object")
        feats = inst.get("features")
        if feats is None and isinstance(inst.get("data"), dict):
            feats = inst["data"].get("features")
        if isinstance(feats, list):  # dense {"features": [...]}
            values = _number_list(feats, where, "features")
            if len(values) != feature_dim:
                raise LocalFMError(f"{where}: {len(values)} dense features, model feature_dim is {feature_dim}")
            nz = [j for j, v in enumerate(values) if v != 0.0]
            indices.extend(nz)
            data.extend(values[j] for j in nz)
        elif isinstance(feats, dict):
            values = _number_list(feats.get("values"), where, "values")
            if "keys" in feats:
                keys = feats["keys"]
                if not isinstance(keys, list) or any(isinstance(k, bool) or not isinstance(k, int) for k in keys):
                    raise LocalFMError(f"{where}: 'keys' must be a list of integers")
                if len(keys) != len(values):
                    raise LocalFMError(f"{where}: {len(keys)} keys but {len(values)} values")
                shape = feats.get("shape", [feature_dim])
                if not (isinstance(shape, list) and len(shape) == 1 and shape[0] == feature_dim):
                    raise LocalFMError(f"{where}: shape {shape!r}, model feature_dim is {feature_dim}")
                for k in keys:
                    if not 0 <= k < feature_dim:
                        raise LocalFMError(f"{where}: key {k} outside [0, {feature_dim})")
                order = sorted(range(len(keys)), key=keys.__getitem__)
                indices.extend(keys[j] for j in order)
                data.extend(values[j] for j in order)
            else:
                if len(values) != feature_dim:
                    raise LocalFMError(f"{where}: {len(values)} dense values, model feature_dim is {feature_dim}")
                nz = [j for j, v in enumerate(values) if v != 0.0]
                indices.extend(nz)
                data.extend(values[j] for j in nz)
        else:
            raise LocalFMError(f'{where}: expected "features" (list) or "data": {{"features": {{...}}}}')
        indptr.append(len(indices))
    X = sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(indptr) - 1, feature_dim),
    )
    X.sum_duplicates()
    return X


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
