"""FM → user/item vectors → exact or approximate top-x → stored results.

- :func:`repackage` (``repackage.py``): vectors whose inner product plus a per-user
  constant is the FM score, exact with side features; cold start from features.
- :func:`top_x` (``topx.py``): the exact engine (IndexFlatIP-equivalent), with exclusions.
- :func:`recommend` (``recommend.py``): the end-to-end stream of result batches.
- :func:`open_sink` / :func:`write_results` (``sinks.py``): SQLite, PostgreSQL, Parquet,
  JSON Lines, each replaced atomically.
"""
from __future__ import annotations

from .recommend import RecommendStats, read_seen, recommend, seen_matrix, select_items
from .repackage import Repackaged, fm_scores, item_vectors, repackage, user_vectors, write_repackaged
from .sinks import ResultBatch, open_sink, read_results, write_results
from .topx import TopX, iter_top_x, top_x

__all__ = [
    "RecommendStats",
    "Repackaged",
    "ResultBatch",
    "TopX",
    "fm_scores",
    "item_vectors",
    "iter_top_x",
    "open_sink",
    "read_results",
    "read_seen",
    "recommend",
    "repackage",
    "seen_matrix",
    "select_items",
    "top_x",
    "user_vectors",
    "write_repackaged",
    "write_results",
]
