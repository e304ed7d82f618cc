"""``python -m benchmarks [--quick | --smoke] [--only NAME ...] [--full-size] [--no-ml100k]``.

The full-size ML-25M-shaped end to end alone (prepare, 1 epoch, top-100, Parquet,
checked against the issue's goals; run it on a quiet machine, nothing else running)::

    python -m benchmarks --only end_to_end --full-size --no-ml100k

Runs the question modules in one process, one after the other (never in parallel:
they would compete for the same two cores), writes ``<out>/<name>.json`` and the
PNGs next to it, and prints the headline table. ``report`` prints the "Performance"
markdown from the existing results files without measuring anything.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from localfm import progress as lf_progress
from localfm.errors import LocalFMError

from . import BENCHMARKS
from .data import ML25M_ROWS, BenchConfig
from .machine import machine_info, utc_now
from .results import RESULTS_DIR, detail_markdown, load_result, readme_markdown, summary_markdown, write_result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="How fast and how good is localfm next to what you would use otherwise. "
        "Writes benchmarks/results/<name>.json (+ PNG).",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced sizes (minutes), for development")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), what CI runs")
    p.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    p.add_argument("--full-size", action="store_true",
                   help=f"synthetic set at the full ML-25M size ({ML25M_ROWS:,} rows) instead of 5M")
    p.add_argument("--no-ml100k", action="store_true",
                   help="end_to_end: run only the synthetic pipeline (the last run's ml-100k rows are kept, dated)")
    p.add_argument("--rows", type=int, default=None, help="rows of the synthetic ML-25M-shaped set")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (median quoted)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--verbose", action="store_true", help="show localfm's own progress bars too")
    p.add_argument("--report", action="store_true",
                   help="print the Performance markdown from existing results and exit")
    p.add_argument("--readme", action="store_true",
                   help="print the short README Performance section from existing results and exit")
    p.add_argument("--replot", action="store_true",
                   help="redraw the PNGs from the existing results files (no measuring) and exit")
    return p


def replot(out_dir: Path, names: list[str]) -> int:
    """Redraw plots from the JSON files: figures always come from a results file."""
    for name in names:
        doc = load_result(name, out_dir)
        if doc is None:
            print(f"benchmarks: no {out_dir / (name + '.json')}; run the benchmark first", file=sys.stderr)
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        for path in module.plot(doc, out_dir):
            print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        sys.stdout.write(summary_markdown(args.out))
        sys.stdout.write("\n## Latest results\n\n" + detail_markdown(args.out))
        return 0
    if args.readme:
        sys.stdout.write(readme_markdown(args.out))
        return 0
    if args.replot:
        return replot(args.out, args.only or list(BENCHMARKS))
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    overrides: dict[str, object] = {"out_dir": args.out, "plots": not args.no_plots}
    if args.full_size:
        overrides["synthetic_rows"] = ML25M_ROWS
    if args.rows is not None:
        overrides["synthetic_rows"] = args.rows
    if args.no_ml100k:
        overrides["e2e_ml100k"] = False
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    try:
        cfg = BenchConfig.preset(mode, **overrides)
    except LocalFMError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2
    if not cfg.has_ml100k:
        print(f"benchmarks: MovieLens 100k not found at {cfg.ml100k_dir}: its parts are skipped",
              file=sys.stderr)
    # Inner library bars would interleave with ours; keep them unless --verbose.
    lf_progress.set_quiet(not args.verbose)
    names = args.only or list(BENCHMARKS)
    machine = machine_info()
    failed = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name} ({mode})", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            payload = module.run(cfg)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
            continue
        payload["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
        payload["runtime_s"] = time.perf_counter() - start
        payload["date"] = utc_now()
        payload["machine"] = machine
        if cfg.plots and hasattr(module, "plot"):
            payload["plots"] = [Path(p).name for p in module.plot(payload, cfg.out_dir)]
        path = write_result(name, payload, cfg.out_dir, machine=machine)
        print(f"   wrote {path} in {payload['runtime_s']:.0f} s", file=sys.stderr)
        for row in payload.get("headline", []):
            print(json.dumps(row, ensure_ascii=False), flush=True)
    if failed:
        print(f"benchmarks: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
