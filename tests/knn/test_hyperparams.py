"""k-NN hyperparameters: SageMaker names, defaults and the cloud's cross-field refusals."""
from __future__ import annotations

from pathlib import Path

import pytest

from localfm.errors import LocalFMError
from localfm.hyperparams import table_markdown
from localfm.knn.hyperparams import TABLE, parse_knn

BASE = {"feature_dim": "65", "k": "10", "predictor_type": "classifier", "sample_size": "1000"}


def test_defaults_match_the_cloud() -> None:
    hp = parse_knn(BASE)
    assert hp["feature_dim"] == 65 and hp["k"] == 10 and hp["sample_size"] == 1000
    assert hp["index_type"] == "faiss.Flat"
    assert hp["index_metric"] == "L2"
    assert hp["faiss_index_ivf_nlists"] == "auto"
    assert hp["mini_batch_size"] == 5000
    assert hp["nprobe"] == 5
    assert hp["dimension_reduction_type"] is None


@pytest.mark.parametrize("name", ["feature_dim", "k", "predictor_type", "sample_size"])
def test_required(name: str) -> None:
    given = {k: v for k, v in BASE.items() if k != name}
    with pytest.raises(LocalFMError, match=name):
        parse_knn(given)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"k": "0"}, "'k'"),
        ({"k": "-3"}, "'k'"),
        ({"index_metric": "MANHATTAN"}, "index_metric"),
        ({"index_type": "faiss.LSH"}, "index_type"),
        ({"predictor_type": "binary_classifier"}, "predictor_type"),
        ({"faiss_index_ivf_nlists": "0"}, "faiss_index_ivf_nlists"),
        ({"faiss_index_pq_m": "5"}, "faiss_index_pq_m"),
        ({"index_type": "faiss.IVFPQ", "index_metric": "INNER_PRODUCT"}, "supports only L2"),
        ({"index_type": "faiss.IVFPQ", "index_metric": "COSINE"}, "supports only L2"),
        ({"dimension_reduction_type": "sign"}, "dimension_reduction_target"),
        ({"dimension_reduction_type": "fjlt", "dimension_reduction_target": "65"}, "below feature_dim"),
        ({"dimension_reduction_target": "8"}, "without dimension_reduction_type"),
        ({"no_such": "1"}, "unknown k-NN hyperparameter"),
    ],
)
def test_rejected_like_the_cloud(override: dict[str, str], match: str) -> None:
    with pytest.raises(LocalFMError, match=match):
        parse_knn({**BASE, **override})


def test_accepted_values() -> None:
    hp = parse_knn({**BASE, "index_type": "faiss.IVFPQ", "faiss_index_pq_m": "16",
                    "faiss_index_ivf_nlists": "40", "dimension_reduction_type": "fjlt",
                    "dimension_reduction_target": "16", "_kvstore": "auto"})
    assert hp["faiss_index_pq_m"] == 16 and hp["faiss_index_ivf_nlists"] == 40
    assert hp["dimension_reduction_target"] == 16


def test_docs_table_in_sync() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "knn.md"
    assert table_markdown(TABLE) in doc.read_text(encoding="utf-8")
