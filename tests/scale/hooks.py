"""Batch hooks the cluster tests hand to the actors (importable by Ray workers)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def note_worker(where: str, delay: float, first_row: int) -> None:
    """Leave ``<pid>-<node id>`` in ``where`` (which actors ran, on which nodes), then wait ``delay``."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    (Path(where) / f"{os.getpid()}-{node}").touch()
    time.sleep(delay)


def fail(first_row: int) -> None:
    """Fail every batch: a job that stops with its staging (manifest, index) kept."""
    raise RuntimeError(f"test hook: the batch at row {first_row} fails")
