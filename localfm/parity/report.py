"""Render comparisons: a plain-text report for people, a JSON document for machines.

The text report leads with the side-by-side tables, then lists every failing check by
name (so a CI log says *which* metric drifted, e.g. ``train binary_f_1.000 epoch 0``),
and ends with one verdict line. The JSON report carries every check with cloud value,
local value, absolute and relative difference, tolerance and verdict.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_write
from .compare import Check, Comparison, Table

REPORT_VERSION = 1


def format_table(table: Table) -> str:
    """Fixed-width columns; numbers right-aligned, first column left-aligned."""
    widths = [len(h) for h in table.headers]
    for row in table.rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [table.title]

    def fmt_row(cells: Sequence[str]) -> str:
        parts = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    lines.append(fmt_row(table.headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt_row(r) for r in table.rows)
    return "\n".join(lines)


def _check_line(c: Check) -> str:
    if c.kind == "abs":
        local = "missing" if c.local is None else f"{c.local:.6g}"
        diff = "" if c.abs_diff is None else f" |diff| {c.abs_diff:.6g}"
        return f"  FAIL {c.name}: cloud {c.cloud:.6g} local {local}{diff} > tol {c.tolerance:g}" + (
            f" ({c.detail})" if c.detail else ""
        )
    if c.kind == "min":
        return f"  FAIL {c.name}: {c.local:.6g} < min {c.tolerance:g}" + (f" ({c.detail})" if c.detail else "")
    if c.kind == "max":
        return f"  FAIL {c.name}: {c.local:.6g} > max {c.tolerance:g}" + (f" ({c.detail})" if c.detail else "")
    return f"  FAIL {c.name}: {c.detail}"


def render_text(comparisons: Sequence[Comparison], *, max_failures: int = 20) -> str:
    """The human-readable report printed on stdout."""
    out: list[str] = []
    for comp in comparisons:
        out.append(f"== {comp.title}")
        for table in comp.tables:
            out.append(format_table(table))
            out.append("")
        if comp.worst:
            out.append("worst: " + "; ".join(_worst_item(w) for w in comp.worst))
        for note in comp.notes:
            out.append(f"note: {note}")
        failing = comp.failing
        verdict = "ok" if comp.ok else "DRIFT"
        out.append(f"{comp.kind}: {verdict} ({len(comp.checks) - len(failing)}/{len(comp.checks)} checks within tolerance)")
        for c in failing[:max_failures]:
            out.append(_check_line(c))
        if len(failing) > max_failures:
            out.append(f"  ... and {len(failing) - max_failures} more failing checks (see the JSON report)")
        out.append("")
    ok = all(c.ok for c in comparisons)
    failing_names = [c.name for comp in comparisons for c in comp.failing]
    if ok:
        out.append("parity: OK")
    else:
        shown = ", ".join(failing_names[:5]) + (" ..." if len(failing_names) > 5 else "")
        out.append(f"parity: DRIFT ({len(failing_names)} failing: {shown})")
    return "\n".join(out) + "\n"


def _worst_item(w: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in w.items())


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else str(f)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def to_json(comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """The JSON report document (stable keys; documented in docs/parity.md)."""
    return {
        "version": REPORT_VERSION,
        "ok": all(c.ok for c in comparisons),
        "failing": [c.name for comp in comparisons for c in comp.failing],
        "comparisons": [
            {
                "kind": comp.kind,
                "title": comp.title,
                "ok": comp.ok,
                "checks": [c.to_json() for c in comp.checks],
                "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows} for t in comp.tables],
                "summary": _jsonable(comp.summary),
                "worst": _jsonable(comp.worst),
                "notes": comp.notes,
            }
            for comp in comparisons
        ],
    }


def write_json(path: str | Path, comparisons: Sequence[Comparison]) -> None:
    """Write the JSON report atomically (a failed run leaves the previous report intact)."""
    doc = to_json(comparisons)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, allow_nan=False)
        fh.write("\n")
