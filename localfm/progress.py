"""Progress bars that respect quiet mode.

Long work shows progress (tqdm) on stderr, so stdout stays clean for the log lines
and JSON that other tools parse. :func:`set_quiet` (the CLI's quiet flag) or
LOCALFM_QUIET=1 turns bars off.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = os.environ.get("LOCALFM_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Iterator[T]:
    """tqdm over ``iterable`` (or a manual bar with ``total=``), disabled when quiet.

    Bars only appear for work that lasts over a second (``delay=1``) so quick
    commands stay silent.
    """
    kwargs.setdefault("disable", _quiet)
    kwargs.setdefault("delay", 1.0)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
