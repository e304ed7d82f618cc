"""FM training engines: one interface, two implementations that compute the same thing.

An *engine* runs the optimizer steps of :class:`localfm.fm.FactorizationMachine`'s
training; the estimator keeps everything around them (data checks, initialisation,
epochs, learning-rate schedule, metrics and log lines, validation, early stopping,
the ``epoch_data`` / ``on_epoch`` hooks). Both engines implement the same SageMaker
semantics (docs/fm.md "Training engine") on the same state:

- ``table``: the (d, 3, k+1) float32 array owned by the estimator, ``table[:, 0]`` =
  ``[v | w]``, ``table[:, 1]`` / ``table[:, 2]`` = Adam's m / v per feature row,
  updated in place (so the estimator reads the weights for validation from it);
- ``w0``: the global bias, with its own moments inside the engine.

Implementations (``_local_engine``): ``numba`` (:mod:`.numba`: one compiled call per
epoch, the default) and ``torch`` (:mod:`.torch`: a per-batch torch loop, the
reference, and the only one with ``_local_lazy_wd=false``). They are imported only
when a run starts: ``import localfm`` must not load numba (~0.35 s) or torch (~1 s).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from ...errors import LocalFMError

ENGINES = ("auto", "numba", "torch")
#: the ``_local_optimizer`` values the numba engine implements (its optimizer codes, in this order)
NUMBA_OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")

#: ``on_batch(batch, scores, labels)``: one mini-batch's pre-update scores and labels
OnBatch = Callable[[int, np.ndarray, np.ndarray], None]


class EngineRun(Protocol):
    """One training run's engine state (weights in the shared table, bias, moments, step count)."""

    @property
    def w0(self) -> np.float32:
        """The current global bias."""
        ...

    def set_data(self, X: sp.csr_matrix, y: np.ndarray) -> None:
        """Train on these rows (canonical float32 CSR, float32 labels) from the next epoch on."""
        ...

    def epoch(
        self, order: np.ndarray | None, lr_scale: float, on_batch: OnBatch, every: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """One epoch in ``mini_batch_size`` batches over ``order`` (None: file order).

        The last batch is padded by wrapping around to the first rows. Calls
        ``on_batch`` for every ``every``-th batch (0, every, 2*every, ...) and returns
        the pre-update scores and labels of every padded row, float32.
        """
        ...


@functools.cache
def numba_available() -> bool:
    """Whether the numba engine loads here: numba is a dependency, but training works without it.

    Probes by importing the engine module itself (numba, llvmlite and the intrinsics it
    uses), so a partial install counts as unavailable; only called when numba could run.
    """
    try:
        from . import numba  # noqa: F401 - the probe; compiles nothing
    except ImportError:
        return False
    return True


def numba_unsupported(hp: Mapping[str, Any]) -> list[str]:
    """The options set in ``hp`` that only the torch engine implements (empty: numba can run)."""
    out = []
    if not hp["_local_lazy_wd"]:
        out.append("_local_lazy_wd=false")
    if hp["_local_optimizer"] not in NUMBA_OPTIMIZERS:
        out.append(f"_local_optimizer={hp['_local_optimizer']}")
    return out


def resolve_engine(hp: Mapping[str, Any]) -> str:
    """``numba`` or ``torch`` for parsed hyperparameters ``hp`` (``_local_engine``: auto|numba|torch).

    ``auto`` takes numba when it is importable and every option is supported, else torch
    (same results, slower). An explicit ``numba`` that cannot run is an error rather than a
    silent fallback, so a benchmark never measures the wrong engine.
    """
    engine = hp.get("_local_engine", "auto")
    if engine not in ENGINES:
        raise LocalFMError(f"hyperparameter '_local_engine': expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "torch":
        return "torch"
    missing = numba_unsupported(hp)
    if engine == "numba":
        if not numba_available():
            raise LocalFMError("hyperparameter '_local_engine'=numba needs the numba package: pip install numba")
        if missing:
            raise LocalFMError(
                f"hyperparameter '_local_engine'=numba does not support {', '.join(missing)}; "
                "use _local_engine=auto or torch"
            )
        return "numba"
    return "numba" if not missing and numba_available() else "torch"


def start(engine: str, hp: Mapping[str, Any], table: np.ndarray, w0: np.float32) -> EngineRun:
    """A run of ``engine`` (from :func:`resolve_engine`) on ``table`` with bias ``w0``.

    Call :meth:`EngineRun.set_data` before the first epoch.
    """
    if engine == "numba":
        from .numba import NumbaRun  # lazy on purpose: see the module docstring

        return NumbaRun(hp, table, w0)
    from .torch import TorchRun  # lazy on purpose: see the module docstring

    return TorchRun(hp, table, w0)
