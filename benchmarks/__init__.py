"""localfm benchmarks: how fast and how good is localfm next to what you would use otherwise.

``python -m benchmarks [--quick] [--only NAME]`` runs every question module
(train_throughput, retrieval, end_to_end, quality, ranking); each writes
``benchmarks/results/<name>.json`` (+ PNG plots). Not unit tests: CI only runs a
smoke-sized pass (tests/benchmarks/test_smoke.py) to keep the harness working.
"""
from __future__ import annotations

BENCHMARKS = ("train_throughput", "retrieval", "end_to_end", "quality", "ranking")
