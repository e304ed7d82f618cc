"""PNG plots drawn from the results payloads (never from separate measurements).

Each function takes the payload that is written to JSON and saves a PNG next to
it, atomically, so a figure can never disagree with the numbers in its file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from localfm.io.atomic import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return str(path)


def _stamp(ax: Any, payload: dict[str, Any]) -> None:
    m = payload.get("machine", {})
    ax.text(0.99, 0.01, f"{payload.get('date', '')}  {m.get('cpu_model', '')} ×{m.get('cores', '')}",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="grey")


def _plain_log_ticks(axis: Any) -> None:
    """Log axis without the crowded 3×10⁻¹-style minor labels."""
    from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

    axis.set_major_formatter(LogFormatterSciNotation())
    axis.set_minor_formatter(NullFormatter())


def throughput_bars(payload: dict[str, Any], out_dir: Path) -> str:
    """Samples/s per (dataset, k, batch), one bar per trainer, log scale."""
    plt = _plt()
    grid = payload.get("grid", [])
    datasets = list(dict.fromkeys(r["dataset"] for r in grid))
    impls = [i for i in ("naive_autograd", "localfm_sagemaker_torch", "localfm_sagemaker", "localfm_fast")
             if any(i in r for r in grid)]
    fig, axes = plt.subplots(len(datasets) or 1, 1, figsize=(10, 3.2 * max(1, len(datasets))), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        rows = [r for r in grid if r["dataset"] == ds]
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            xs = [i + j * width for i in range(len(rows))]
            ys = [r[impl]["samples_per_s"] if impl in r else 0 for r in rows]
            ax.bar(xs, ys, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
        ax.set_xticklabels([f"k={r['num_factors']}\nB={r['mini_batch_size']}" for r in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("samples/s")
        ax.set_title(f"Training throughput, {ds}", fontsize=10)
        ax.legend(fontsize=8)
        _stamp(ax, payload)
    fig.subplots_adjust(hspace=0.5)
    return _save(fig, Path(out_dir) / "train_throughput.png")


def retrieval_vs_size(payload: dict[str, Any], out_dir: Path) -> str:
    """Exact all-users top-k seconds vs catalogue size (users × items), per engine."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = payload.get("exact", [])
    engines = list(dict.fromkeys(e for s in sizes for e in s.get("engines", {})))
    for eng in engines:
        pts = [(s["users"] * s["items"], s["engines"][eng]["median_s"]) for s in sizes
               if eng in s.get("engines", {}) and "median_s" in s["engines"][eng]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=eng)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("users × items (scores computed)")
    ax.set_ylabel(f"seconds, all users top-{payload.get('k', '')}")
    ax.set_title(f"Exact top-{payload.get('k', '')} for all users, d={payload.get('dim', '')}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _stamp(ax, payload)
    return _save(fig, Path(out_dir) / "retrieval_vs_size.png")


def recall_time(payload: dict[str, Any], out_dir: Path) -> str:
    """Approximate indexes: recall@k vs search seconds per query batch."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ann = payload.get("approximate", {})
    for name, pts in ann.get("curves", {}).items():
        xs = [p["search_s"] for p in pts]
        ys = [p["recall"] for p in pts]
        ax.plot(xs, ys, marker="o", label=name)
        for p in pts:
            ax.annotate(str(p["param"]), (p["search_s"], p["recall"]), fontsize=6)
    exact = ann.get("exact_reference")
    if exact:
        ax.axvline(exact["search_s"], color="k", ls="--", lw=0.8, label=exact["name"] + " (exact)")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(f"search seconds for {ann.get('queries', '?')} queries")
    ax.set_ylabel(f"recall@{payload.get('k', '')}")
    ax.set_title(f"Approximate indexes, {ann.get('users', '?')}×{ann.get('items', '?')} catalogue", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _stamp(ax, payload)
    return _save(fig, Path(out_dir) / "retrieval_recall_time.png")


def training_curves(payload: dict[str, Any], out_dir: Path) -> str:
    """Per-epoch train metric of localfm vs the real SageMaker job (and test metrics)."""
    plt = _plt()
    curves = payload.get("training_curves", {})
    metrics = list(dict.fromkeys(m for c in curves.values() for m in c.get("metrics", {})))
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, c in curves.items():
            ys = c.get("metrics", {}).get(metric)
            if ys:
                ax.plot(range(len(ys)), ys, label=name, ls="--" if "cloud" in name else "-")
        ax.set_xlabel("epoch")
        ax.set_title(metric, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        _stamp(ax, payload)
    return _save(fig, Path(out_dir) / "training_curves.png")


def stage_bars(payload: dict[str, Any], out_dir: Path) -> str:
    """End-to-end wall time per stage, one stacked bar per pipeline (input generation hatched)."""
    plt = _plt()
    pipes = payload.get("pipelines", [])
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.7 * max(1, len(pipes))))
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    for i, p in enumerate(pipes):
        left = 0.0
        for st in p.get("stages", []):
            w = st.get("wall_s") or 0.0
            kind = st["stage"].split(" (")[0]
            uncounted = "not counted" in st["stage"]
            if kind not in colours:
                colours[kind] = "lightgrey" if uncounted else palette(len(colours))
            ax.barh(i, w, left=left, color=colours[kind], hatch="//" if uncounted else None,
                    edgecolor="white", label=kind if kind not in ax.get_legend_handles_labels()[1] else None)
            left += w
        ax.text(left, i, f" {p.get('total_wall_s', 0):.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(pipes)))
    ax.set_yticklabels([p["name"] for p in pipes], fontsize=8)
    ax.set_xlabel("seconds (each stage a separate process; hatched = input generation, not in the total)")
    ax.set_title("End to end wall time by stage", fontsize=10)
    ax.legend(fontsize=7, loc="center right")
    _stamp(ax, payload)
    return _save(fig, Path(out_dir) / "end_to_end.png")
