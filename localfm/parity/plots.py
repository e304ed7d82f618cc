"""PNG plots of a parity run: training curves, overlap histogram, score scatter.

Matplotlib runs headless (Agg) and each figure is saved through an atomic write, so a
crash mid-plot never leaves a truncated PNG next to good ones.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..plotting import pyplot, save_png
from .compare import Comparison


def plot_training(comp: Comparison, path: Path) -> Path:
    """One panel per metric: cloud and local curves per epoch, test values as markers."""
    plt = pyplot()
    curves = comp.series.get("curves", {})
    names = [n for n, c in curves.items() if any(v is not None for v in c["cloud"])]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        c = curves[name]
        ep = np.asarray(c["epoch"])
        cloud = np.asarray([np.nan if v is None else v for v in c["cloud"]], dtype=float)
        local = np.asarray([np.nan if v is None else v for v in c["local"]], dtype=float)
        ax.plot(ep, cloud, "o-", label="cloud", markersize=3)
        ax.plot(ep, local, "x--", label="local", markersize=4)
        test = comp.series.get("test", {}).get(name)
        if test is not None:
            last = ep.max() if len(ep) else 0
            if test[0] is not None:
                ax.plot([last + 1], [test[0]], "s", color="C0", label="cloud test")
            if test[1] is not None:
                ax.plot([last + 1], [test[1]], "D", color="C1", label="local test")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves: cloud vs local")
    save_png(fig, path)
    return path


def plot_overlap(comp: Comparison, path: Path) -> Path:
    """Histogram of per-query overlap@k."""
    plt = pyplot()
    ov = np.asarray(comp.series["overlap"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(ov, bins=np.linspace(0, 1, 21), edgecolor="black")
    ax.set_xlabel(f"overlap@{comp.summary.get('k')}")
    ax.set_ylabel("queries")
    ax.set_title(f"k-NN overlap: mean {ov.mean():.4f}, min {ov.min():.4f} ({len(ov)} queries)")
    save_png(fig, path)
    return path


def plot_scatter(comp: Comparison, path: Path) -> Path:
    """Cloud vs local scores with the y = x line (predictions, recorded scores, models).

    For recorded scores (a few cloud rows) a second panel shows the local score
    histogram with the recorded cloud scores marked, which is the distribution claim.
    """
    plt = pyplot()
    c = np.asarray(comp.series["cloud_scores"], dtype=float)
    lo = np.asarray(comp.series["local_scores"], dtype=float)
    has_dist = "local_all" in comp.series
    fig, axes = plt.subplots(1, 2 if has_dist else 1, figsize=(10 if has_dist else 5, 5), squeeze=False)
    ax = axes[0][0]
    ax.scatter(c, lo, s=10 if len(c) > 100 else 25, alpha=0.6, label=f"{len(c)} rows")
    lo_lim = float(min(c.min(), lo.min()))
    hi_lim = float(max(c.max(), lo.max()))
    ax.plot([lo_lim, hi_lim], [lo_lim, hi_lim], "k--", linewidth=1, label="y = x")
    ax.set_xlabel("cloud score")
    ax.set_ylabel("local score")
    ax.set_title(f"{comp.kind}: cloud vs local scores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_dist:
        ax2 = axes[0][1]
        ax2.hist(np.asarray(comp.series["local_all"], dtype=float), bins=50, density=True, alpha=0.6,
                 color="C1", label="local scores (all rows)")
        for i, v in enumerate(c):  # a rug at the bottom, so the histogram stays readable
            ax2.axvline(v, ymax=0.15, color="C0", linewidth=2, label="recorded cloud scores" if i == 0 else None)
        ax2.axvline(0.5, color="k", linestyle=":", linewidth=1, label="label threshold 0.5")
        ax2.set_xlabel("score")
        ax2.set_ylabel("density")
        ax2.set_title("score distribution")
        ax2.legend(fontsize=8)
    save_png(fig, path)
    return path


def write_plots(comparisons: Sequence[Comparison], directory: str | Path) -> list[Path]:
    """Write every plot the comparisons support into ``directory``; returns the paths.

    A fixture run can hold several comparisons of one kind (one per batch-transform
    file); the first keeps the plain name, later ones get ``_2``, ``_3`` ... so no plot
    overwrites another.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: dict[str, int] = {}

    def target(stem: str) -> Path:
        used[stem] = used.get(stem, 0) + 1
        return d / (f"{stem}.png" if used[stem] == 1 else f"{stem}_{used[stem]}.png")

    for comp in comparisons:
        if comp.kind == "training" and comp.series.get("curves"):
            written.append(plot_training(comp, target("training_curves")))
        elif comp.kind == "knn":
            written.append(plot_overlap(comp, target("knn_overlap_hist")))
        elif comp.kind in ("predictions", "models", "recorded_scores") and "cloud_scores" in comp.series:
            written.append(plot_scatter(comp, target(f"{comp.kind}_score_scatter")))
    return written
