"""Where the torch engines run: ``cpu`` (the default) or an accelerator torch can see.

Why a module of its own: the training engine (``_local_device``) and the top-x engine
(``device=`` / ``--device``) take the same names, and a request for a GPU on a machine
without one must fail before any work, in one line naming the parameter, rather than
deep inside torch with a CUDA stack trace. Nothing in localfm needs a GPU; these paths
exist so that a team with one can use it, and so that GPU figures can be measured.

The names are torch's: ``cpu``, ``cuda``, ``cuda:N`` and ``mps``. Checking the spelling
imports nothing; checking that the device is there imports torch (only for non-CPU
devices, so a CPU job never pays for the probe).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from .errors import LocalFMError

CPU = "cpu"
_NAME = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
EXPECTED = "cpu, cuda, cuda:N or mps"


def _error(text: str, param: str) -> LocalFMError:
    # ``param`` is a Python parameter (``device``, which the CLI renames to its flag) or a
    # phrase such as "hyperparameter '_local_device'", which is only the message's subject.
    return LocalFMError(f"{param}: {text}", param=param if param.isidentifier() else None)


def check_device_name(device: object, param: str = "device") -> str:
    """``device`` normalised (lower case, stripped) if it is a device name torch knows; else a LocalFMError."""
    name = str(device).strip().lower() if isinstance(device, str) else None
    if name is None or not _NAME.match(name):
        raise _error(f"expected {EXPECTED}, got {device!r}", param)
    return name


def resolve_device(device: object, param: str = "device") -> str:
    """The checked device name, after making sure torch can use it here (``cpu`` always can)."""
    name = check_device_name(device, param)
    if name == CPU:
        return name
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _error(f"{name!r} asked for, but torch sees no CUDA device here "
                         "(torch.cuda.is_available() is False); use cpu", param)
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise _error(f"{name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)", param)
    elif not torch.backends.mps.is_available():
        raise _error("'mps' asked for, but torch has no MPS device here; use cpu", param)
    return name


@contextlib.contextmanager
def float32_matmul() -> Iterator[None]:
    """Full float32 matrix products while inside, whatever the process had set.

    Why: on NVIDIA GPUs torch may run float32 products in TF32 (a 10-bit mantissa) when a
    user or another library asked for ``high``/``medium`` precision. The engines promise
    float32 scores and gradients, so they hold ``highest`` for their own products and put
    the caller's setting back afterwards.
    """
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def synchronize(device: str) -> None:
    """Wait for the device's queued work: GPU calls return before they finish, so a clock
    read without this measures the queueing, not the work."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    elif device == "mps":
        import torch

        torch.mps.synchronize()
