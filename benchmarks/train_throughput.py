"""Training throughput: localfm's FM vs the naive PyTorch autograd FM (samples/s).

Grid: num_factors × mini_batch_size on ml-100k ``ua.base`` (binary labels, one-hot
user+item rows, file order — the cloud fixture's data) and on a slice of the
synthetic ML-25M-shaped set. Three trainers:

- ``localfm_sagemaker``: ``FactorizationMachine`` with container defaults (MXNet lazy
  Adam, SageMaker semantics) — what ``localfm train`` does by default;
- ``localfm_fast``: the same trainer with the local-only switches that make it
  fastest (:func:`fast_mode_hyperparameters`; recorded in the results);
- ``naive_autograd``: :func:`benchmarks.baselines.train_naive_fm`.

localfm is timed around the whole ``fit`` (batch preparation included), one epoch;
the naive FM is cut after ``naive_max_seconds`` (whole batches; samples/s divides the
samples it actually processed — its per-step cost is constant, so a partial epoch
measures the same rate as a full one, at a fraction of the benchmark's time). Plus one full epoch on the synthetic set for the
ML-25M-shaped epoch goal (≤ 7 s). A reduced row count is also scaled linearly to 25M
rows, shown as a trend only: the goal is judged on a full-size run (``--full-size``, or
``end_to_end``'s full-size epoch), never on an extrapolation.

Run as a module, it compares the numba engine's thread counts side by side instead
(``_local_threads``; :func:`compare_threads`)::

    python -m benchmarks.train_throughput                  # ua.base at 1000 and 5000, 2M synthetic at 5000
    python -m benchmarks.train_throughput --data ml100k --batch 1000 --repeat 5
    python -m benchmarks.train_throughput --data synthetic --rows 25000095 --repeat 1

It prints one JSON object (``cases``: per case and thread count the median wall and
CPU time of one epoch's ``fit``, samples/s, the speedup over the first count, whether
the weights are byte-identical to the first count's, and the load average before and
after; ``table``: the same as markdown) and, on stderr, the table as it goes.
Run it alone: on a loaded machine extra threads wait for time slices.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from localfm.progress import progress

from .baselines import train_naive_fm
from .data import ML25M_ROWS, BenchConfig, Ratings, ml100k_split, synthetic_ratings

NAME = "train_throughput"


def fm_class() -> Any:
    """localfm's FM estimator (imported late: torch/numba load only when training is measured)."""
    from localfm.fm.model import FactorizationMachine

    return FactorizationMachine


def fast_mode_hyperparameters() -> dict[str, Any]:
    """Local-only hyperparameters for localfm's fastest training mode.

    The compiled engine (``_local_engine=numba``) when numba is installed, and plain SGD
    (no Adam moment slots per touched row) with a global step large enough for SGD to
    learn (Adam's default is 1.0).
    """
    from localfm.fm.engines import numba_available

    fast: dict[str, Any] = {"_local_optimizer": "sgd", "_learning_rate": 100.0}
    if numba_available():
        fast["_local_engine"] = "numba"
    return fast


def torch_engine_hyperparameters() -> dict[str, Any]:
    """SageMaker semantics forced onto the torch engine (what runs without numba)."""
    return {"_local_engine": "torch"}


def resolved_engine(extra: dict[str, Any]) -> str:
    """Which engine ``FactorizationMachine`` picks for these hyperparameters (recorded in results)."""
    from localfm.fm.engines import resolve_engine
    from localfm.fm.hyperparameters import parse_fm

    hp = parse_fm({"feature_dim": 2, "num_factors": 1, "predictor_type": "binary_classifier", **extra})
    return resolve_engine(hp)


def localfm_modes() -> dict[str, dict[str, Any]]:
    """Trainer name -> extra hyperparameters of each localfm variant measured."""
    return {
        "localfm_sagemaker": {},
        "localfm_sagemaker_torch": torch_engine_hyperparameters(),
        "localfm_fast": fast_mode_hyperparameters(),
    }


def time_localfm(data: Ratings, num_factors: int, batch: int, extra: dict[str, Any], seed: int) -> dict[str, Any]:
    """One timed ``fit`` of one epoch (batch preparation included)."""
    FM = fm_class()
    X = data.onehot()
    y = data.binary()
    model = FM(feature_dim=X.shape[1], num_factors=num_factors, predictor_type="binary_classifier",
               epochs=1, mini_batch_size=batch, seed=seed, **extra)
    start = time.perf_counter()
    model.fit(X, y)
    secs = time.perf_counter() - start
    return {"samples": len(data), "seconds": secs}


def time_naive(data: Ratings, num_factors: int, batch: int, seed: int,
               max_seconds: float | None) -> dict[str, Any]:
    """One timed run of the naive FM (cut after ``max_seconds`` when given)."""
    fields = np.stack([data.users, data.n_users + data.items], axis=1)
    res = train_naive_fm(fields, data.binary(), data.n_users + data.n_items, num_factors, batch,
                         max_seconds=max_seconds, seed=seed)
    return {"samples": res.samples, "seconds": res.seconds}


def _summarise(runs: list[dict[str, Any]], cut: float | None = None) -> dict[str, Any]:
    rates = [r["samples"] / r["seconds"] for r in runs]
    out = {"samples": [r["samples"] for r in runs], "runs_s": [r["seconds"] for r in runs],
           "samples_per_s_runs": rates, "samples_per_s": statistics.median(rates)}
    if cut is not None:
        out["cut_after_s"] = cut
    return out


def _grid(cfg: BenchConfig, data: Ratings, label: str, naive_cut: float | None) -> list[dict[str, Any]]:
    """Every (k, batch) cell; repeats interleave the trainers (naive, localfm modes, naive, ...)
    so a neighbour's load burst hits all of them alike and the ratios stay fair."""
    rows: list[dict[str, Any]] = []
    modes = localfm_modes()
    for extra in modes.values():  # warm-up: JIT compilation and first-call costs are not throughput
        time_localfm(data.subset(min(len(data), 2000)), 8, 200, extra, 0)
    combos = [(k, b) for k in cfg.train_factors for b in cfg.train_batches]
    for k, b in progress(combos, desc=f"train grid {label}", disable=False):
        runs: dict[str, list[dict[str, Any]]] = {"naive_autograd": [], **{m: [] for m in modes}}
        for r in range(cfg.repeats):
            runs["naive_autograd"].append(time_naive(data, k, b, r, naive_cut))
            for mode, extra in modes.items():
                runs[mode].append(time_localfm(data, k, b, extra, r))
        row: dict[str, Any] = {"dataset": label, "num_factors": k, "mini_batch_size": b}
        row["naive_autograd"] = _summarise(runs["naive_autograd"], naive_cut)
        naive = row["naive_autograd"]["samples_per_s"]
        for mode in modes:
            row[mode] = _summarise(runs[mode])
            row[f"speedup_{mode.split('_', 1)[1]}_vs_naive"] = row[mode]["samples_per_s"] / naive
        rows.append(row)
    return rows


def large_epoch(cfg: BenchConfig, data: Ratings) -> dict[str, Any]:
    """One full epoch over the synthetic set in every localfm mode (batch 5000, k=64)."""
    FM = fm_class()
    X = data.onehot()
    y = data.binary()
    out: dict[str, Any] = {"rows": len(data), "num_factors": 64, "mini_batch_size": 5000}
    for mode, extra in localfm_modes().items():
        model = FM(feature_dim=X.shape[1], num_factors=64, predictor_type="binary_classifier",
                   epochs=1, mini_batch_size=5000, seed=0, **extra)
        start = time.perf_counter()
        model.fit(X, y)
        secs = time.perf_counter() - start
        out[mode] = {"epoch_s": secs, "samples_per_s": len(data) / secs,
                     "epoch_s_at_25M_extrapolated": secs * ML25M_ROWS / len(data)}
    return out


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Measure the grid(s); returns the results payload (see module docstring)."""
    payload: dict[str, Any] = {"quick": cfg.quick, "mode": cfg.mode, "notes": []}
    payload["fast_mode_hyperparameters"] = fast_mode_hyperparameters()
    payload["localfm_modes"] = {m: {"hyperparameters": extra, "engine": resolved_engine(extra)}
                                for m, extra in localfm_modes().items()} if fm_class() is not None else {}
    if fm_class() is None:
        payload["notes"].append("localfm.fm.model.FactorizationMachine not importable: only the naive FM ran")
    rows: list[dict[str, Any]] = []
    if cfg.has_ml100k:
        train, _ = ml100k_split(cfg, "ua")
        rows += _grid(cfg, train, "ml100k-ua.base", cfg.naive_max_seconds)
    else:
        payload["notes"].append(f"MovieLens 100k not found at {cfg.ml100k_dir}: ml-100k grid skipped")
    synth = synthetic_ratings(max(cfg.synthetic_rows, cfg.train_grid_rows_large), cfg.synthetic_users,
                              cfg.synthetic_items, seed=cfg.seed)
    label = f"synthetic-{cfg.synthetic_users}x{cfg.synthetic_items}"
    rows += _grid(cfg, synth.subset(cfg.train_grid_rows_large), label, cfg.naive_max_seconds)
    payload["grid"] = rows
    payload["synthetic"] = {"users": cfg.synthetic_users, "items": cfg.synthetic_items,
                            "rows_generated": len(synth), "grid_rows": cfg.train_grid_rows_large}
    if cfg.train_epoch_large and fm_class() is not None:
        payload["large_epoch"] = large_epoch(cfg, synth.subset(cfg.synthetic_rows))
    payload["headline"] = headline(payload)
    return payload


def headline(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Median speedups over each dataset's grid, and the large epoch (vs the 7 s goal only at full size)."""
    out: list[dict[str, Any]] = []
    grid = payload.get("grid", [])
    for ds in dict.fromkeys(r["dataset"] for r in grid):
        rows = [r for r in grid if r["dataset"] == ds]
        for key, mode in (("speedup_fast_vs_naive", "fastest mode"), ("speedup_sagemaker_vs_naive", "SageMaker mode"),
                          ("speedup_sagemaker_torch_vs_naive", "SageMaker mode on the torch engine")):
            vals = [r[key] for r in rows if key in r]
            if vals:
                out.append({"what": f"training samples/s, localfm {mode} / naive autograd FM, {ds} "
                            f"(median of {len(vals)} k×batch cells; range {min(vals):.1f}–{max(vals):.1f})",
                            "value": statistics.median(vals), "unit": "×", "target": "≥ 3×", "digits": 1})
    le = payload.get("large_epoch")
    if le:
        for mode in ("localfm_fast", "localfm_sagemaker", "localfm_sagemaker_torch"):
            if mode in le:
                m = le[mode]
                if le["rows"] == ML25M_ROWS:
                    out.append({"what": f"ML-25M-shaped epoch, {mode}, k=64 batch 5000 (all {le['rows']:,} rows)",
                                "value": m["epoch_s"], "unit": " s", "target": "≤ 7 s", "digits": 1})
                else:  # a trend only: the goal is judged at full size (--full-size, or end_to_end's)
                    out.append({"what": f"ML-25M-shaped epoch, {mode}, k=64 batch 5000 ({m['epoch_s']:.1f} s measured on "
                                f"{le['rows']:,} rows, linearly scaled to 25M rows: not a measurement)",
                                "value": m["epoch_s_at_25M_extrapolated"], "unit": " s",
                                "target": "judged at full size only", "digits": 1})
    return out


def plot(payload: dict[str, Any], out_dir: Any) -> list[str]:
    from .plots import throughput_bars

    return [throughput_bars(payload, out_dir)]


def tables(payload: dict[str, Any]) -> str:
    """Markdown: samples/s per cell (medians) and the speedups, from the results payload."""
    modes = payload.get("localfm_modes", {})
    lines = []
    if modes:
        lines.append("Trainers: naive autograd FM (1 torch thread); " + "; ".join(
            f"`{m}` = {v['hyperparameters'] or 'defaults'} (engine {v['engine']})" for m, v in modes.items()) + ".")
        lines.append("")
    lines += ["| dataset | k | batch | naive autograd | localfm SageMaker | localfm SageMaker (torch engine) | "
              "localfm fastest | SageMaker/naive | torch engine/naive | fastest/naive |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in payload.get("grid", []):
        def rate(key: str) -> str:
            return f"{r[key]['samples_per_s']:,.0f}" if key in r else "n/a"

        def ratio(key: str) -> str:
            return f"{r[key]:.1f}×" if key in r else "n/a"

        lines.append(f"| {r['dataset']} | {r['num_factors']} | {r['mini_batch_size']} | {rate('naive_autograd')} | "
                     f"{rate('localfm_sagemaker')} | {rate('localfm_sagemaker_torch')} | {rate('localfm_fast')} | "
                     f"{ratio('speedup_sagemaker_vs_naive')} | {ratio('speedup_sagemaker_torch_vs_naive')} | "
                     f"{ratio('speedup_fast_vs_naive')} |")
    le = payload.get("large_epoch")
    if le:
        lines.append("")
        lines.append(f"One epoch over {le['rows']:,} synthetic rows (k=64, batch 5000): " + "; ".join(
            f"{m} {le[m]['epoch_s']:.1f} s ({le[m]['samples_per_s']:,.0f} samples/s"
            + (")" if le["rows"] == ML25M_ROWS else
               f", {le[m]['epoch_s_at_25M_extrapolated']:.0f} s scaled linearly to 25M rows: a trend, not a measurement)")
            for m in ("localfm_fast", "localfm_sagemaker", "localfm_sagemaker_torch") if m in le) + ".")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- threads, side by side
def compare_threads(data: Ratings, threads: list[int], num_factors: int, batch: int, repeat: int,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One-epoch ``fit`` per thread count of the numba engine, interleaved ``repeat`` times.

    Interleaving (1, 2, 1, 2, ...) lets a neighbour's load burst hit every count alike. A
    warm-up fit per count loads the compiled functions first (numba's cache), so compile
    time is not throughput. Two figures per count: the whole ``fit``, and its epoch alone
    (the training log's per-epoch time: the marginal cost of one more epoch). The fit also
    pays, on one thread whatever the count, the seeded initial draw (~0.15 s at 225k
    features; a sequential random stream, so the same bytes at any thread count), the
    epoch's metrics and the copy of the weights out of the table.
    """
    from localfm.fm.metrics import TrainingLog

    FM = fm_class()
    X, y = data.onehot(), data.binary()
    hp = dict(feature_dim=X.shape[1], num_factors=num_factors, predictor_type="binary_classifier", epochs=1,
              mini_batch_size=batch, seed=0, _local_engine="numba", **(extra or {}))
    small = data.subset(min(len(data), 2 * batch))
    for t in threads:
        FM(**hp, _local_threads=t).fit(small.onehot(), small.binary())
    walls: dict[int, list[float]] = {t: [] for t in threads}
    cpus: dict[int, list[float]] = {t: [] for t in threads}
    epochs: dict[int, list[float]] = {t: [] for t in threads}
    weights: dict[int, bytes] = {}
    load_before = os.getloadavg()
    for _ in range(repeat):
        for t in threads:
            model = FM(**hp, _local_threads=t)
            log = TrainingLog("binary_classifier", 1, emit=False)
            w0, c0 = time.perf_counter(), time.process_time()
            model.fit(X, y, log=log)
            walls[t].append(time.perf_counter() - w0)
            cpus[t].append(time.process_time() - c0)
            epochs[t].append(len(data) / log.throughput_per_epoch[0])
            weights.setdefault(t, model.V_.tobytes() + model.w_.tobytes())
    out: dict[str, Any] = {"rows": len(data), "feature_dim": X.shape[1], "num_factors": num_factors,
                           "mini_batch_size": batch, "repeat": repeat, "load_average_before": load_before,
                           "cores": os.cpu_count(), "runs": {}}
    base = statistics.median(walls[threads[0]])
    base_epoch = statistics.median(epochs[threads[0]])
    for t in threads:
        wall = statistics.median(walls[t])
        epoch = statistics.median(epochs[t])
        out["runs"][str(t)] = {"wall_s_median": wall, "cpu_s_median": statistics.median(cpus[t]),
                               "wall_s_runs": walls[t], "cpu_s_runs": cpus[t],
                               "samples_per_s": len(data) / wall, f"speedup_vs_{threads[0]}": base / wall,
                               "epoch_s_median": epoch, "epoch_s_runs": epochs[t],
                               f"epoch_speedup_vs_{threads[0]}": base_epoch / epoch,
                               f"same_bytes_as_{threads[0]}": weights[t] == weights[threads[0]]}
    out["load_average_after"] = os.getloadavg()
    return out


#: what ``python -m benchmarks.train_throughput`` compares by default: (data, mini_batch_size) pairs
THREAD_CASES = (("ml100k", 1000), ("ml100k", 5000), ("synthetic", 5000))


def thread_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one line per (data, batch), the thread counts side by side (median wall, CPU, speedup)."""
    counts = list(results[0]["runs"]) if results else []
    head = "| data | rows | feature_dim | batch | " + " | ".join(f"{t} thr fit wall (cpu), epoch" for t in counts) + \
        " | " + " | ".join(f"{t} vs {counts[0]}: fit, epoch" for t in counts[1:]) + " | same bytes | load before / after |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        runs = r["runs"]
        cells = [f"{runs[t]['wall_s_median']:.3f} s ({runs[t]['cpu_s_median']:.3f} s), {runs[t]['epoch_s_median']:.3f} s"
                 for t in counts]
        ratios = [f"{runs[t][f'speedup_vs_{counts[0]}']:.2f}x, {runs[t][f'epoch_speedup_vs_{counts[0]}']:.2f}x"
                  for t in counts[1:]]
        same = all(runs[t][f"same_bytes_as_{counts[0]}"] for t in counts)
        before, after = r["load_average_before"][0], r["load_average_after"][0]
        lines.append(f"| {r['data']} | {r['rows']:,} | {r['feature_dim']:,} | {r['mini_batch_size']} | "
                     + " | ".join(cells + ratios) + f" | {'yes' if same else 'NO'} | {before:.2f} / {after:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--data", choices=("all", "ml100k", "synthetic"), default="all",
                    help="ml-100k ua.base, the ML-25M-shaped synthetic set, or all of "
                         "THREAD_CASES (default: ua.base at batch 1000 and 5000, synthetic at 5000)")
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the synthetic set (default 2M)")
    ap.add_argument("--batch", default=None,
                    help="comma-separated mini_batch_size values (default: THREAD_CASES' for the data)")
    ap.add_argument("--factors", type=int, default=64, help="num_factors (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats; medians are quoted (default 3)")
    ap.add_argument("--sgd", action="store_true", help="the fast mode's optimizer (sgd) instead of the cloud's Adam")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    cases = [(d, b) for d, b in THREAD_CASES if args.data in ("all", d)]
    if args.batch:
        names = dict.fromkeys(d for d, _ in cases)
        cases = [(d, int(b)) for d in names for b in args.batch.split(",")]
    cfg = BenchConfig()
    extra = {"_local_optimizer": "sgd", "_learning_rate": 100.0} if args.sgd else None
    loaded: dict[str, Ratings] = {}
    results = []
    for name, batch in cases:
        if name not in loaded:
            loaded[name] = ml100k_split(cfg, "ua")[0] if name == "ml100k" else synthetic_ratings(args.rows,
                                                                                                  seed=cfg.seed)
        res = compare_threads(loaded[name], threads, args.factors, batch, args.repeat, extra)
        res["data"] = "ua.base" if name == "ml100k" else "synthetic"
        results.append(res)
        print(thread_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(json.dumps({"cases": results, "table": thread_table(results)}, indent=1))
    print(thread_table(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
