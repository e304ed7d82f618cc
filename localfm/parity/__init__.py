"""Parity with recorded SageMaker output: read the cloud's text, compare, report.

- :mod:`.cloudlog` reads training logs, metrics JSON, FM and k-NN transform outputs;
- :mod:`.compare` turns cloud vs local into checks with tolerances and verdicts;
- :mod:`.report` renders the text table and the JSON document, :mod:`.plots` the PNGs;
- :mod:`.layout` reads a "bring your own cloud run" folder, :mod:`.local` runs the local side.

Heavy imports (torch via the trainer, matplotlib) happen inside the functions that
need them, so importing this package stays cheap.
"""
from __future__ import annotations

from .cloudlog import read_knn, read_predictions, read_training_log
from .compare import Check, Comparison, compare_knn, compare_models, compare_predictions, compare_training

__all__ = [
    "Check",
    "Comparison",
    "compare_knn",
    "compare_models",
    "compare_predictions",
    "compare_training",
    "read_knn",
    "read_predictions",
    "read_training_log",
]
