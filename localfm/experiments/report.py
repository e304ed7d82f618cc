"""Systems side by side: rankings read from stored results, the comparison table, JSON and PNG.

``localfm evaluate`` and benchmarks/ both end here, so a number in the docs, in a
results JSON and on the terminal is formatted from the same dict (the shape
:func:`localfm.experiments.protocol.evaluate` returns).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LocalFMError
from ..io.atomic import atomic_write
from ..parity.cloudlog import read_knn
from ..plotting import pyplot, save_png
from ..recommend.sinks import read_results
from ..recommend.vectors import knn_labels
from .metrics import METRICS
from .protocol import Protocol, recommended_from_ids


def ranking_from_table(
    protocol: Protocol, target: str, k: int, *, table: str = "recommendations"
) -> tuple[np.ndarray, dict[str, int]]:
    """A ``localfm recommend`` output (SQLite / Parquet / JSON Lines) as a (test users, k) ranking."""
    try:
        cols = read_results(str(target), table=table)
    except (KeyError, ValueError, json.JSONDecodeError, OSError) as exc:
        raise LocalFMError(f"{target}: not a readable recommendations table ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # pyarrow raises several types for a bad Parquet file
        if type(exc).__module__.startswith("pyarrow"):
            raise LocalFMError(f"{target}: not a readable recommendations table ({type(exc).__name__})") from None
        raise
    if not cols["user_id"]:
        raise LocalFMError(f"{target}: no recommendation rows")
    return recommended_from_ids(protocol, cols["user_id"], cols["item_id"], cols["rank"], k)


def ranking_from_knn(protocol: Protocol, path: str | Path, k: int) -> tuple[np.ndarray, dict[str, int]]:
    """A cloud k-NN batch-transform ``.out`` (verbose JSON Lines) as a (test users, k) ranking.

    Records are in ``users.protobuf`` order, i.e. every user of features.json in order
    (what ``localfm repackage`` writes and the transform job reads); labels are item ids,
    or item rows when repackage had to use ``item_index`` labels. The cloud does not
    exclude rated items, so they are dropped here before cutting to k (see
    :func:`recommended_from_ids`).
    """
    nb = read_knn(path)
    users = np.asarray(protocol.space.user_ids)
    if len(nb) != len(users):
        raise LocalFMError(
            f"{path}: {len(nb)} k-NN records, expected one per features.json user ({len(users)}, users.protobuf order)"
        )
    sizes = np.array([len(lab) for lab in nb.labels], dtype=np.int64)
    labels = np.concatenate([np.asarray(lab, dtype=np.float64) for lab in nb.labels]) if sizes.sum() else np.empty(0)
    _, kind = knn_labels(protocol.space.item_ids)
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 0):
        raise LocalFMError(f"{path}: k-NN labels must be non-negative whole numbers (item ids or item rows)")
    if kind == "item_index":
        rows = labels.astype(np.int64)
        if rows.size and rows.max() >= len(protocol.space.item_ids):
            raise LocalFMError(f"{path}: label {int(rows.max())} is not an item row of features.json")
        item_ids = np.asarray(protocol.space.item_ids)[rows]
    else:
        item_ids = labels.astype(np.int64)
    ranks = np.concatenate([np.arange(1, n + 1) for n in sizes]) if sizes.sum() else np.empty(0, np.int64)
    return recommended_from_ids(protocol, np.repeat(users, sizes), item_ids, ranks, k)


def format_table(results: Mapping[str, Mapping[str, Any]], ks: Sequence[int]) -> str:
    """One block per k: a row per system, ``value [low, high]`` per metric."""
    lines = []
    name_w = max([len("system"), *(len(n) for n in results)])
    for k in ks:
        header = f"{'system':<{name_w}}  " + "  ".join(
            f"{(m + '@' + str(k)):<23}" if m != "coverage" else f"{m}@{k}" for m in METRICS
        )
        lines += [header, "-" * len(header)]
        for name, res in results.items():
            row = res["metrics"][str(k)]
            cells = []
            for m in METRICS:
                v = row[m]
                cells.append(f"{v['value']:.4f}" if m == "coverage"
                             else f"{v['value']:.4f} [{v['low']:.4f}, {v['high']:.4f}]")
            lines.append(f"{name:<{name_w}}  " + "  ".join(f"{c:<23}" for c in cells).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_json(doc: Any, path: str | Path) -> None:
    """``doc`` as indented JSON, atomically (a crash leaves the previous file or none)."""
    path = Path(path)
    if path.is_dir():
        raise LocalFMError(f"{path}: is a directory, expected a JSON file path")
    try:
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
    except OSError as exc:
        raise LocalFMError(f"{path}: cannot write ({exc.strerror or exc})") from None


def plot_systems(results: Mapping[str, Mapping[str, Any]], ks: Sequence[int], out_dir: str | Path,
                 *, filename: str = "evaluate.png", title: str = "localfm evaluate") -> Path:
    """``DIR/evaluate.png``: a bar per system for every metric and k, 95% intervals as error bars."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LocalFMError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalFMError(f"{out}: cannot create the directory ({exc.strerror or exc})") from None
    plt = pyplot()
    names = list(results)
    fig, axes = plt.subplots(len(ks), len(METRICS), figsize=(3.2 * len(METRICS), 2.8 * len(ks)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = np.arange(len(names))
    for r, k in enumerate(ks):
        for c, m in enumerate(METRICS):
            ax = axes[r][c]
            vals = np.array([results[n]["metrics"][str(k)][m]["value"] for n in names])
            low = np.array([results[n]["metrics"][str(k)][m]["low"] for n in names])
            high = np.array([results[n]["metrics"][str(k)][m]["high"] for n in names])
            ax.bar(x, vals, color=[colors[i % len(colors)] for i in range(len(names))],
                   yerr=np.vstack([vals - low, high - vals]), capsize=3)
            ax.set_title(f"{m}@{k}")
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"{title}: systems side by side (95% bootstrap intervals over users)")
    fig.tight_layout()
    path = out / filename
    save_png(fig, path)
    return path
