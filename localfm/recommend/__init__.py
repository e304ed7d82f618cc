"""FM → user/item vectors → exact or approximate top-x → stored results.

- :func:`repackage` (``repackage.py``): vectors whose inner product plus a per-user
  constant is the FM score, exact with side features; cold start from features.
- :func:`top_x` (``topx.py``): the exact engine (IndexFlatIP-equivalent), with exclusions.
- :func:`recommend_all` / :func:`rank` (``recommend.py``): the end-to-end pipeline,
  returning :class:`Recommendations` (batches, then a summary); options in
  :class:`RecommendOptions`.
- :func:`open_sink` / :func:`write_results` (``sinks.py``): SQLite, PostgreSQL, Parquet,
  JSON Lines, each replaced atomically.

No function here shares its name with a module: ``localfm.recommend.recommend`` is
always the module, whatever was imported first.
"""
from __future__ import annotations

from .recommend import (
    Recommendations,
    RecommendOptions,
    RecommendStats,
    rank,
    read_seen,
    recommend_all,
    seen_matrix,
    select_items,
    select_users,
)
from .sinks import ResultBatch, open_sink, read_results, write_results
from .topx import PreparedItems, TopX, iter_top_x, prepare_items, top_x
from .vectors import (
    Repackaged,
    fm_scores,
    item_vectors,
    repackage,
    user_vectors,
    write_repackaged,
)

__all__ = [
    "PreparedItems",
    "RecommendOptions",
    "RecommendStats",
    "Recommendations",
    "Repackaged",
    "ResultBatch",
    "TopX",
    "fm_scores",
    "item_vectors",
    "iter_top_x",
    "open_sink",
    "prepare_items",
    "rank",
    "read_results",
    "read_seen",
    "recommend_all",
    "repackage",
    "seen_matrix",
    "select_items",
    "select_users",
    "top_x",
    "user_vectors",
    "write_repackaged",
    "write_results",
]
