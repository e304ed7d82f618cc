"""Matplotlib for every PNG localfm writes (parity, evaluate, tune): headless, atomic, no leaks.

One place decides the backend (Agg: no display on servers or CI) and how a figure lands
(atomic write, then closed), so a new plot cannot forget either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .io.atomic import atomic_write


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; imported on first use (it costs ~0.3 s)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path) -> None:
    """Write the PNG atomically and always close the figure: pyplot keeps every open
    figure alive, so one that failed to save would otherwise leak for the whole process."""
    try:
        with atomic_write(Path(path), "wb") as fh:
            fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    finally:
        pyplot().close(fig)
