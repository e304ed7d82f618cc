"""Scale-out on an existing Ray cluster: localfm's own kernels, fanned out by Ray.

Nothing here imports Ray at module import time: ``import localfm.scale`` is cheap and
works without the ``localfm[ray]`` extra; Ray is imported when a cluster is asked for.

- :func:`connect` / :func:`parse_cluster` (``cluster.py``): ``local:N``, ``auto`` or an address;
  :func:`loopback_cluster`: a real multi-node cluster on 127.0.0.1 for tests and benchmarks.
- :func:`recommend_on_cluster` (``topx.py``): all-users top-x through Ray Data, staged,
  resumable, committed to the usual sinks.
- :func:`train_on_cluster` (``train.py``): multi-instance FM training, SageMaker ``dist_sync``
  semantics, parameters on kv-server actors.
"""
from __future__ import annotations

from .cluster import ClusterSpec, connect, loopback_cluster, parse_cluster
from .topx import ClusterRun, recommend_on_cluster
from .train import ClusterTraining, train_on_cluster

__all__ = ["ClusterRun", "ClusterSpec", "ClusterTraining", "connect", "loopback_cluster", "parse_cluster",
           "recommend_on_cluster", "train_on_cluster"]
