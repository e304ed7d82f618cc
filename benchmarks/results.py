"""Results files: one ``benchmarks/results/<name>.json`` per benchmark.

Each file is self-describing (machine, versions, configuration, date, medians and
the ratios that answer the issue's question), written atomically so an interrupted
run never leaves a truncated file next to the plots of a previous run. Docs quote
these files only; :func:`summary_markdown` renders the headline ratios from them so
the README numbers are never typed by hand.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localfm.io.atomic import atomic_write

from .machine import as_plain, machine_info, utc_now

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1


def write_result(name: str, payload: dict[str, Any], out_dir: Path = RESULTS_DIR,
                 machine: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` with the machine block and a date; returns the path."""
    doc = {
        "benchmark": name,
        "schema": SCHEMA,
        "date": utc_now(),
        "machine": machine if machine is not None else machine_info(),
        **payload,
    }
    path = Path(out_dir) / f"{name}.json"
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(as_plain(doc), fh, indent=1, sort_keys=False, allow_nan=False)
        fh.write("\n")
    return path


def load_result(name: str, out_dir: Path = RESULTS_DIR) -> dict[str, Any] | None:
    path = Path(out_dir) / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def summary_markdown(out_dir: Path = RESULTS_DIR) -> str:
    """The "Performance" section: headline ratios vs targets, straight from the JSON files."""
    lines: list[str] = []
    dates: list[str] = []
    rows: list[tuple[str, str, str]] = []
    for name in ("train_throughput", "retrieval", "end_to_end", "quality"):
        doc = load_result(name, out_dir)
        if doc is None:
            continue
        dates.append(f"{name} {doc['date']}{' (quick)' if doc.get('quick') else ''}")
        # Re-derive the headline from the stored measurements with the current wording;
        # fall back to the stored one if the module cannot (e.g. an older file layout).
        try:
            import importlib

            rows_doc = importlib.import_module(f"benchmarks.{name}").headline(doc)
        except Exception:  # noqa: BLE001
            rows_doc = doc.get("headline", [])
        for row in rows_doc:
            rows.append((row["what"], _fmt(row.get("value"), row.get("digits", 2)) + row.get("unit", ""),
                         row.get("target", "")))
    if not rows:
        return "No results yet: run `python -m benchmarks`.\n"
    lines.append("| measure | measured | target |")
    lines.append("| --- | --- | --- |")
    for what, value, target in rows:
        lines.append(f"| {what} | {value} | {target} |")
    lines.append("")
    lines.append("Results files: " + "; ".join(dates) + ".")
    return "\n".join(lines) + "\n"
