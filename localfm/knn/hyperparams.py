"""SageMaker k-NN hyperparameters: names, defaults and validation as the cloud has them.

The table mirrors the SageMaker k-NN developer guide so a ``hyperparameters.json``
that works in the cloud works here and one the cloud rejects is rejected here with
the same reason, before any work starts. Cross-field rules the generic table cannot
express (IVFPQ only with L2, a reduction target below ``feature_dim``, ...) live in
:func:`parse_knn`. A few *local extras* (``nprobe``, HNSW settings, ``seed``) are
marked as such in their doc text; the cloud does not accept them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import LocalFMError
from ..hyperparams import HP, parse

INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ", "faiss.HNSW")
INDEX_METRICS = ("L2", "INNER_PRODUCT", "COSINE")
# SageMaker's documented valid values for faiss_index_pq_m.
PQ_M_VALUES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)

TABLE: tuple[HP, ...] = (
    HP("feature_dim", "int", required=True, low=1, doc="number of features of each input vector"),
    HP("k", "int", required=True, low=1, doc="number of nearest neighbours"),
    HP("predictor_type", "str", required=True, choices=("classifier", "regressor"),
       doc="classifier: most frequent neighbour label; regressor: mean neighbour label"),
    HP("sample_size", "int", required=True, low=1,
       doc="size of the seeded reservoir sample of the training set that is indexed"),
    HP("dimension_reduction_type", "str", default=None, choices=("sign", "fjlt"),
       doc="random sign projection or fast Johnson-Lindenstrauss transform"),
    HP("dimension_reduction_target", "int", default=None, low=1,
       doc="target dimension; required with dimension_reduction_type, below feature_dim"),
    HP("index_type", "str", default="faiss.Flat", choices=INDEX_TYPES,
       doc="faiss.HNSW is a local extra (not in the cloud)"),
    HP("index_metric", "str", default="L2", choices=INDEX_METRICS,
       doc="COSINE = normalise, then inner product; faiss.IVFPQ supports L2 only"),
    HP("faiss_index_ivf_nlists", "int", default="auto", low=1, special=("auto",),
       doc="IVF cells; auto = round(sqrt(number of indexed vectors))"),
    HP("faiss_index_pq_m", "int", default=None, choices=PQ_M_VALUES,
       doc="PQ sub-quantizers (faiss.IVFPQ); default: picked so each covers ~4 dims"),
    HP("mini_batch_size", "int", default=5000, low=1, doc="rows per search batch"),
    HP("nprobe", "int", default=5, low=1,
       doc="IVF cells searched per query (hidden cloud setting, 5 there); local extra"),
    HP("faiss_index_hnsw_m", "int", default=32, low=2, doc="HNSW graph degree; local extra"),
    HP("faiss_index_hnsw_ef_search", "int", default=128, low=1,
       doc="HNSW search breadth (raised to k when smaller); local extra"),
    HP("faiss_index_hnsw_ef_construction", "int", default=40, low=1,
       doc="HNSW build breadth; local extra"),
    HP("seed", "int", default=0, low=0,
       doc="seed of the reservoir sample, projections and clustering; local extra"),
)


def parse_knn(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate SageMaker k-NN hyperparameters (strings or values) including cross-field rules."""
    hp = parse(TABLE, given, algorithm="k-NN")
    if hp["dimension_reduction_type"] is not None:
        target = hp["dimension_reduction_target"]
        if target is None:
            raise LocalFMError(
                "hyperparameter 'dimension_reduction_target' is required when "
                f"dimension_reduction_type={hp['dimension_reduction_type']}"
            )
        if target >= hp["feature_dim"]:
            raise LocalFMError(
                f"hyperparameter 'dimension_reduction_target': expected an integer below "
                f"feature_dim={hp['feature_dim']}, got {target}"
            )
    elif hp["dimension_reduction_target"] is not None:
        raise LocalFMError(
            "hyperparameter 'dimension_reduction_target' given without dimension_reduction_type (sign or fjlt)"
        )
    if hp["index_type"] == "faiss.IVFPQ" and hp["index_metric"] != "L2":
        # The cloud refuses this combination at training start; so do we.
        raise LocalFMError(
            f"hyperparameter 'index_metric': faiss.IVFPQ supports only L2, got {hp['index_metric']}"
        )
    return hp
