"""SageMaker k-NN twin on FAISS: estimator, index layer, batch transform.

``KNN`` is the estimator (``fit`` / ``kneighbors`` / ``predict`` / ``save`` /
``load``); ``build_index`` / ``KNNIndex`` is the index layer other modules (the
recommender) search directly; ``recall_at_k`` measures approximate indexes.
"""
from __future__ import annotations

from .hyperparams import TABLE, parse_knn
from .index import KNNIndex, build_index, measure_recall, recall_at_k, tune_nprobe
from .model import KNN, reservoir_sample, vote
from .reduction import Projection, make_projection

__all__ = [
    "KNN",
    "KNNIndex",
    "Projection",
    "TABLE",
    "build_index",
    "make_projection",
    "measure_recall",
    "parse_knn",
    "recall_at_k",
    "reservoir_sample",
    "tune_nprobe",
    "vote",
]
