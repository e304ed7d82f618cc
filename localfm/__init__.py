"""localfm: an offline twin of SageMaker Factorization Machines + k-NN top-x.

Data flows one way: data → train → model artifact → repackage → index →
recommendations → store. The public API below is re-exported lazily (PEP 562), so
``import localfm`` and the command's help do not pay for torch and FAISS until a
name that needs them is used.

>>> from localfm import FactorizationMachine, FeatureSpace, load_fm, recommend_all, top_x  # doctest: +SKIP

No export shares its name with a subpackage or module: ``localfm.recommend`` is the
subpackage, the pipeline function is ``localfm.recommend_all``; the cloud training
log reader is ``read_training_log`` (``read_training`` reads k-NN training data in
``localfm.knn.channels``).
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import LocalFMError, LocalFMWarning

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # data
    "FeatureSpace": "localfm.data.features",
    "load_movielens": "localfm.data.movielens",
    "read_interactions": "localfm.data.tabular",
    "make_split": "localfm.data.splits",
    # io
    "FMWeights": "localfm.io.artifacts",
    "load_fm": "localfm.io.artifacts",
    "save_fm": "localfm.io.artifacts",
    "open_artifact": "localfm.io.artifacts",
    "read_matrix": "localfm.io.recordio",
    "write_sparse": "localfm.io.recordio",
    "write_dense": "localfm.io.recordio",
    # fm
    "FactorizationMachine": "localfm.fm.model",
    # knn
    "KNN": "localfm.knn.model",
    "build_index": "localfm.knn.index",
    "recall_at_k": "localfm.knn.index",
    # recommend
    "repackage": "localfm.recommend.vectors",
    "Repackaged": "localfm.recommend.vectors",
    "top_x": "localfm.recommend.topx",
    "recommend_all": "localfm.recommend.recommend",
    "RecommendOptions": "localfm.recommend.recommend",
    "Recommendations": "localfm.recommend.recommend",
    "write_results": "localfm.recommend.sinks",
    "read_results": "localfm.recommend.sinks",
    # parity
    "read_training_log": "localfm.parity.cloudlog",
    "compare_training": "localfm.parity.compare",
}

__all__ = ["LocalFMError", "LocalFMWarning", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'localfm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
