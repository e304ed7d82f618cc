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
reference, and the only one with ``_local_lazy_wd=false``). With ``_local_device`` set
to a GPU (``cuda``, ``cuda:N``, ``mps``) the torch engine keeps the table, the batches
and the optimizer state on that device (:class:`.torch.DeviceRun`) and copies the
weights back into ``table`` after every epoch. They are imported only
when a run starts: ``import localfm`` must not load numba (~0.35 s) or torch (~1 s).
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from ...errors import LocalFMError

ENGINES = ("auto", "numba", "torch")
#: the ``_local_optimizer`` values the numba engine implements (its optimizer codes, in this order)
NUMBA_OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")

#: ``_local_threads=auto`` splits batches from this ``mini_batch_size`` up (see :func:`resolve_threads`)
AUTO_THREADS_MIN_BATCH = 1000
#: ... and from this ``feature_dim`` up: only a table too big for the cache gains. With a small
#: table the rows each batch updates move between the cores every batch (the forward reads
#: them on one core, their owner writes them on the other), which costs more than the split
#: saves (measured 2026-11-29 on the 2-core EPYC, both threads running: ua.base, feature_dim
#: 2,623, batch 1000: 0.6-0.7x; the ML-25M-shaped feature_dim 224,964 at batch 5000: 1.5-1.7x)
AUTO_THREADS_MIN_FEATURES = 100_000
#: ... over at most this many threads (the issue's target machine has 2 cores; more is unmeasured)
AUTO_THREADS_MAX = 2

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


def resolve_device(hp: Mapping[str, Any]) -> str:
    """The checked ``_local_device`` of parsed hyperparameters ``hp`` (``cpu`` unless set).

    A device that is not there (``cuda`` on a machine without one) fails here, before any
    data is read, naming the hyperparameter.
    """
    from ...device import resolve_device as resolve

    name = "hyperparameter '_local_device'"
    return resolve(hp.get("_local_device", "cpu"), param=name)


def resolve_engine(hp: Mapping[str, Any]) -> str:
    """``numba`` or ``torch`` for parsed hyperparameters ``hp`` (``_local_engine``: auto|numba|torch).

    ``auto`` takes numba when it is importable and every option is supported, else torch
    (same results, slower). An explicit ``numba`` that cannot run is an error rather than a
    silent fallback, so a benchmark never measures the wrong engine. A ``_local_device``
    other than ``cpu`` means torch: the numba engine is CPU code.
    """
    engine = hp.get("_local_engine", "auto")
    if engine not in ENGINES:
        raise LocalFMError(f"hyperparameter '_local_engine': expected one of {', '.join(ENGINES)}, got {engine!r}")
    device = resolve_device(hp)
    if device != "cpu":
        if engine == "numba":
            raise LocalFMError(f"hyperparameter '_local_engine'=numba runs on the CPU; _local_device={device} "
                               "needs _local_engine=torch or auto")
        return "torch"
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


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(interval: float = 0.1, read: Callable[[], str] | None = None) -> float:
    """How many of the machine's CPUs were busy over the last ``interval`` seconds (Linux ``/proc/stat``).

    Why not the 1-minute load average: it lags by a minute. A training job started right
    after a 2-thread stage (``localfm prepare``, then ``localfm train``) saw a load average of
    1.6 on an idle 2-core machine and trained on one thread. Elsewhere (no ``/proc/stat``)
    this falls back to that load average.
    """
    def snapshot() -> tuple[int, int] | None:
        try:
            text = read() if read is not None else Path("/proc/stat").read_text()
        except OSError:
            return None
        fields = text.split("\n", 1)[0].split()
        if not fields or fields[0] != "cpu" or len(fields) < 5:
            return None
        try:
            ticks = [int(x) for x in fields[1:]]
        except ValueError:
            return None
        return sum(ticks), ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # total, idle + iowait

    first = snapshot()
    if first is not None:
        time.sleep(interval)
        second = snapshot()
        if second is not None and second[0] > first[0]:
            total, idle = second[0] - first[0], second[1] - first[1]
            return (total - idle) / total * (os.cpu_count() or 1)
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def resolve_threads(hp: Mapping[str, Any], cores: int | None = None, load: float | None = None) -> int:
    """Threads the numba engine uses for parsed hyperparameters ``hp`` (``_local_threads``).

    An integer is taken as given; the bytes do not depend on it, only the speed. ``auto``: :data:`AUTO_THREADS_MAX` (at most
    ``cores``) when ``mini_batch_size`` >= :data:`AUTO_THREADS_MIN_BATCH`, ``feature_dim`` >=
    :data:`AUTO_THREADS_MIN_FEATURES` (a small table stays in cache and the serial epoch is
    faster) and the machine's busy CPUs right now (:func:`busy_cores`) leave a core idle
    beside this process (``load`` < cores - 0.5), else 1.
    Why: the threads meet at a barrier twice per batch; a 200-row batch (~0.1 ms of work)
    gains little from splitting, and on an oversubscribed machine every barrier waits for
    the partner's next time slice (shared 2-core box, load 12: 2 threads 0.2-0.6x of one on
    ua.base). ``cores`` / ``load`` default to this process's affinity and ``os.getloadavg``.
    """
    value = hp.get("_local_threads", "auto")
    if value != "auto":
        return int(value)
    if hp["mini_batch_size"] < AUTO_THREADS_MIN_BATCH or hp["feature_dim"] < AUTO_THREADS_MIN_FEATURES:
        return 1
    cores = usable_cores() if cores is None else cores
    if load is None:
        load = busy_cores()
    if cores < 2 or load >= cores - 0.5:
        return 1
    return min(AUTO_THREADS_MAX, cores)


def start(engine: str, hp: Mapping[str, Any], table: np.ndarray, w0: np.float32) -> EngineRun:
    """A run of ``engine`` (from :func:`resolve_engine`) on ``table`` with bias ``w0``.

    Call :meth:`EngineRun.set_data` before the first epoch.
    """
    if engine == "numba":
        from .numba import NumbaRun  # lazy on purpose: see the module docstring

        return NumbaRun(hp, table, w0)
    from .torch import DeviceRun, TorchRun  # lazy on purpose: see the module docstring

    device = resolve_device(hp)
    return TorchRun(hp, table, w0) if device == "cpu" else DeviceRun(hp, table, w0, device)
