"""The k-NN training channel: what SageMaker k-NN trains from, read by the one channel reader.

SageMaker k-NN trains from ``application/x-recordio-protobuf`` (features and label
under ``"values"``) or ``text/csv`` (label in the **first** column, then the
features, no header), into a dense index. The channel rules (a file or a folder in
name order, ``s3://`` prefixes, empty and hidden files) are
:func:`localfm.io.channels.read_channel`'s; this module only says k-NN's part.
"""
from __future__ import annotations

import os

import numpy as np

from ..io.channels import TRAIN_CONTENT_TYPES, read_channel


def read_training(uri: str | os.PathLike[str], content_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All of a training channel as (X float32 (n, d), labels float32 (n,)); every record needs a label."""
    X, y = read_channel(uri, need_labels=True, content_type=content_type, accepted=TRAIN_CONTENT_TYPES, dense=True)
    assert y is not None  # need_labels
    return X, y
