"""``python -m fuzz``: mutate seed inputs and feed them to localfm's binary parsers.

Exit status 0 when no finding, 1 when any input raised something other than
LocalFMError, ran past ``--time-limit`` or exhausted ``--memory-limit-mb``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runner import limit_memory, run_target
from .targets import BUILDERS, load_target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    p.add_argument("--parser", default="all", choices=["all", *BUILDERS],
                   help="which parser to fuzz (default: all)")
    p.add_argument("--iterations", type=int, default=100_000, help="mutated inputs per parser")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed replays the same inputs")
    p.add_argument("--time-limit", type=float, default=5.0, help="seconds allowed per parser call (hang check)")
    p.add_argument("--memory-limit-mb", type=int, default=2048,
                   help="extra address space allowed beyond start-up (0 = no cap)")
    p.add_argument("--findings-dir", type=Path, default=Path("fuzz-findings"),
                   help="where inputs that found a problem are saved")
    p.add_argument("--json", type=Path, help="write the summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--engine", choices=["builtin", "atheris"], default="builtin",
                   help="builtin: deterministic mutation loop (no extra package); atheris: coverage-guided "
                        "libFuzzer, one process per parser (needs `pip install atheris`)")
    args = p.parse_args(argv)
    if args.engine == "atheris":
        return _run_atheris(args)

    names = list(BUILDERS) if args.parser == "all" else [args.parser]
    targets = []
    summary: dict[str, object] = {"seed": args.seed, "iterations": args.iterations, "targets": {}}
    for name in names:
        target, reason = load_target(name)
        if target is None:
            print(f"{name}: skipped ({reason})", file=sys.stderr)
            summary["targets"][name] = {"skipped": reason}  # type: ignore[index]
        else:
            targets.append(target)
    limit_memory(args.memory_limit_mb)
    total_findings = 0
    for target in targets:
        bar = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=args.iterations, desc=f"fuzz {target.name}", file=sys.stderr, mininterval=1.0,
                       leave=False)
        stats = run_target(target, args.iterations, args.seed, args.time_limit, args.findings_dir,
                           progress=(lambda i: bar.update(1)) if bar is not None else None)
        if bar is not None:
            bar.close()
        s = stats.summary()
        summary["targets"][target.name] = s  # type: ignore[index]
        total_findings += len(stats.findings)
        print(f"{target.name}: {s['iterations']} inputs, {s['calls']} calls, {s['accepted']} accepted, "
              f"{s['rejected_with_LocalFMError']} LocalFMError, {s['distinct_outcomes']} distinct outcomes, "
              f"max {s['max_seconds_per_call']} s/call, {s['seconds']} s, {len(stats.findings)} findings")
        for f in stats.findings:
            print(f"  FINDING {f.call} {f.kind} at {f.where} (x{f.count}): {f.message} -> {f.path}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if total_findings else 0


def _run_atheris(args: argparse.Namespace) -> int:
    """One libFuzzer process per parser (libFuzzer exits the process when it is done)."""
    import subprocess

    if args.parser != "all":
        target, reason = load_target(args.parser)
        if target is None:
            print(f"{args.parser}: skipped ({reason})", file=sys.stderr)
            return 0
        from . import atheris_engine

        atheris_engine.run(target, args.iterations, args.seed, args.time_limit, args.memory_limit_mb,
                           args.findings_dir)
        return 0  # not reached: libFuzzer exits
    worst = 0
    for name in BUILDERS:
        cmd = [sys.executable, "-m", "fuzz", "--engine", "atheris", "--parser", name,
               "--iterations", str(args.iterations), "--seed", str(args.seed), "--time-limit", str(args.time_limit),
               "--memory-limit-mb", str(args.memory_limit_mb), "--findings-dir", str(args.findings_dir)]
        rc = subprocess.run(cmd, check=False).returncode
        print(f"{name}: libFuzzer exit status {rc}")
        worst = worst or (1 if rc else 0)
    return worst


if __name__ == "__main__":
    sys.exit(main())
