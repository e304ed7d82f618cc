"""A real two-node Ray cluster on loopback for the session, and a real small model.

The cluster (:func:`localfm.scale.cluster.loopback_cluster`) is ``ray.cluster_utils.Cluster``:
a head and one more node, one CPU and a 200 MB object store each, every socket on 127.0.0.1,
all of Ray's state in a short temp dir of its own that is removed afterwards, so nothing lands
in /tmp/ray or ~/.ray. Never ``ray stop --force``: other Ray processes may run here.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.recommend.conftest import pg_url  # noqa: F401 - the session PostgreSQL server, shared

REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE = 200 * 1024**2


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    pytest.importorskip("ray", reason="the localfm[ray] extra is not installed")
    from localfm.scale.cluster import loopback_cluster

    # The raylets spawn workers with this PYTHONPATH: they import localfm and the tests'
    # batch hooks from this checkout.
    with loopback_cluster(nodes=2, cpus_per_node=1, object_store_bytes=OBJECT_STORE, pythonpath=str(REPO)) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def ml100k_model(ml100k_dir: Path, cloud_fixture: Path, tmp_path_factory) -> dict[str, Any]:
    """MovieLens 100k prepared as the cloud job was, and an FM trained on it here (1 epoch).

    Returns the repackaged vectors, the already-rated matrix and the paths.
    """
    from localfm.cli import main as cli_main
    from localfm.data.features import FeatureSpace
    from localfm.io.artifacts import load_fm
    from localfm.recommend.recommend import read_seen, seen_matrix
    from localfm.recommend.vectors import repackage

    root = tmp_path_factory.mktemp("scale-ml100k")
    data = root / "data"
    assert cli_main(["--quiet", "prepare", "movielens", str(ml100k_dir), "--split", "ua", "--label", "binary:4",
                     "--columns", "train", "--drop-unseen", "--order", "file", "--out", str(data)]) == 0
    hps = json.loads((cloud_fixture / "cloud-results.json").read_text())["hyperparameters_final"]
    args = ["--quiet", "train", "--train", str(data / "train.protobuf"), "--model-dir", str(root / "model"),
            "--quiet-log", "--seed", "1", "--hp", "epochs=1"]
    for name in ("feature_dim", "num_factors", "predictor_type", "mini_batch_size"):
        args += ["--hp", f"{name}={hps[name]}"]
    assert cli_main(args) == 0, "localfm train failed"
    space = FeatureSpace.load(data / "features.json")
    rep = repackage(load_fm(root / "model" / "model.tar.gz"), space)
    su, si = read_seen(data / "train_interactions.parquet")
    return {"rep": rep, "seen": seen_matrix(rep.user_ids, rep.item_ids, su, si), "data": data,
            "model": root / "model" / "model.tar.gz"}
