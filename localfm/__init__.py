"""localfm: an offline twin of SageMaker Factorization Machines + k-NN top-x.

Data flows one way: data → train → model artifact → repackage → index →
recommendations → store. The public API is re-exported here.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import LocalFMError

__all__ = ["LocalFMError", "__version__"]
