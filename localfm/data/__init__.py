"""Data layer: MovieLens/CSV/Parquet readers, GroupLens-identical splits, the feature space.

``load_movielens`` and ``read_interactions`` produce :class:`Interactions`;
``make_split`` splits them; :class:`FeatureSpace` (saved as ``features.json``) maps
original ids to FM columns; :mod:`localfm.data.prepare` ties it together for
``localfm prepare``. See docs/data.md.
"""
from __future__ import annotations

from .features import Block, FeatureSpace, SideFeatures, build_feature_space
from .interactions import Interactions, make_labels, parse_label
from .movielens import ItemTable, MovieLens, UserTable, detect_layout, load_movielens
from .splits import Split, grouplens_split, leave_last_split, make_split, random_split
from .tabular import read_interactions

__all__ = [
    "Block", "FeatureSpace", "Interactions", "ItemTable", "MovieLens", "SideFeatures", "Split", "UserTable",
    "build_feature_space", "detect_layout", "grouplens_split", "leave_last_split", "load_movielens",
    "make_labels", "make_split", "parse_label", "random_split", "read_interactions",
]
