"""Fixtures shared by the CLI tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localfm.cli import main as cli_main


@pytest.fixture(scope="session")
def synthetic_side(tmp_path_factory) -> tuple[Path, object]:
    """The embedded synthetic MovieLens prepared with side features: (root, FeatureSpace).

    ``root / "data"`` holds what ``localfm prepare`` wrote. Prepared once per session;
    tests must not modify it.
    """
    from localfm.data.features import FeatureSpace

    root = tmp_path_factory.mktemp("synthetic-side")
    code = cli_main(["--quiet", "prepare", "movielens", "--split", "ua", "--features", "ids+side",
                     "--columns", "train", "--out", str(root / "data")])
    assert code == 0, "localfm prepare on the embedded synthetic dataset failed"
    return root, FeatureSpace.load(root / "data" / "features.json")


def random_fm(path: Path, feature_dim: int, *, factors: int = 8, seed: int = 0, w0: float = 0.3,
              predictor_type: str = "binary_classifier") -> Path:
    """A random-weight FM saved as model.tar.gz: an honest stand-in when a test checks
    that stored results equal a brute-force ranking of the same model."""
    from localfm.io.artifacts import FMWeights, save_fm

    rng = np.random.default_rng(seed)
    weights = FMWeights(w0, rng.normal(0, 0.3, feature_dim), rng.normal(0, 0.3, (feature_dim, factors)),
                        predictor_type)
    save_fm(path, weights)
    return path
