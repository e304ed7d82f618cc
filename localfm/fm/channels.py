"""Reading SageMaker data channels (RecordIO-protobuf) into CSR matrices.

A SageMaker channel is a file or a folder of files read in name order, one after
the other (the cloud's "file order"); ``s3://`` URIs of single objects work too.
Dense records become CSR without materialising zeros beyond what the file holds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import LocalFMError


def _read_one(uri: str) -> tuple[sp.csr_matrix, np.ndarray | None]:
    from ..io.recordio import read_matrix
    from ..io.uri import local_path

    with local_path(uri) as path:
        if path.stat().st_size == 0:
            raise LocalFMError(f"{uri}: empty file (expected RecordIO-protobuf records)")
        m = read_matrix(path)
    X = m.X if sp.issparse(m.X) else sp.csr_matrix(np.asarray(m.X, dtype=np.float32))
    X = sp.csr_matrix(X, dtype=np.float32)
    if X.shape[0] == 0:
        raise LocalFMError(f"{uri}: no records")
    if X.data.size and not np.all(np.isfinite(X.data)):
        raise LocalFMError(f"{uri}: non-finite feature value (NaN or inf)")
    y = None if m.y is None else np.asarray(m.y, dtype=np.float32).reshape(-1)
    if y is not None and not np.all(np.isfinite(y)):
        raise LocalFMError(f"{uri}: non-finite label (NaN or inf)")
    return X, y


def read_channel(uri: str, *, need_labels: bool, feature_dim: int | None = None) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Read a file or a folder of RecordIO-protobuf files (name order) as one matrix."""
    p = Path(uri)
    if not str(uri).startswith("s3://") and p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise LocalFMError(f"{uri}: folder holds no data files")
        names = [str(f) for f in files]
    else:
        names = [str(uri)]
    parts = [_read_one(name) for name in names]
    widths = {X.shape[1] for X, _ in parts}
    if feature_dim is not None:
        for (X, _), name in zip(parts, names):  # name the offending file, not just the folder
            if X.shape[1] != feature_dim:
                raise LocalFMError(f"{name}: records have {X.shape[1]} features but feature_dim={feature_dim}")
    elif len(widths) > 1:
        raise LocalFMError(f"{uri}: files disagree on the number of features ({sorted(widths)})")
    if need_labels and any(y is None for _, y in parts):
        raise LocalFMError(f"{uri}: records carry no label (training/test data needs a 'values' label)")
    X = sp.vstack([X for X, _ in parts], format="csr") if len(parts) > 1 else parts[0][0]
    ys = [y for _, y in parts]
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    return X, y
