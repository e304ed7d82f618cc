"""On a lent GPU: the torch engines on CUDA at the ML-25M shape, in absolute times (issue 13, item 4).

    python -m benchmarks.gpu [--device cuda] [--rows 25000000] [--out benchmarks/results]

Nothing in localfm needs a GPU; this measures what one buys. One process, in order:

1. The device's own ceilings, so the times below can be read against them: a large
   device-to-device copy (bytes read + written per second) and an 8192³ float32 GEMM at
   full float32 precision (what the engines use: no TF32).
2. The planted ML-25M-shaped ratings (:func:`benchmarks.data.synthetic_ratings`, 162,541
   users × 62,423 items), every row trained, label rating ≥ 4, one one-hot column per
   user and per item: the rows ``localfm prepare`` builds.
3. Training with ``_local_device`` (k=64, batch 5000, 2 epochs, seed 0). Each epoch's
   seconds are the estimator's own (its throughput line; the run synchronises the device
   and copies the weights back before the clock stops). The rest of the fit (seeded
   initialisation, the batches' precompute and upload) is reported beside it. A second
   identical fit checks that the bytes repeat. A subset trained on the device and by the
   CPU torch engine shows how far float32 summation order moves the metrics.
4. All-users top-100, every trained pair excluded, with ``top_x(device=...)``: one
   warm-up, then timed runs at two user-batch sizes. A run's time is what the caller
   waits for: users in, scores, exclusions, top-100, best-first order, results out. A
   sample of users is ranked by the CPU engine too, to count identical id lists and to
   show that every difference is a near-tie.
5. Top-100 of 16,384 users against a 2M-item catalogue (``--big-items``), wider than one
   score matrix may be: the device path scores slices of users; timed once.

Writes ``<out>/gpu.json`` and prints a summary. With ``--device cpu`` it runs the same
steps on the CPU engines (a dry run of the harness; its times say nothing about a GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .data import ML25M_ITEMS, ML25M_ROWS, ML25M_USERS, synthetic_ratings
from .machine import load_average, utc_now

NAME = "gpu"
K = 100
#: the issue's goals on a lent H200 (issue 13): all-users top-100 at 162k x 62k, and a 25M-row epoch
GOAL_TOPX_S = 1.0
GOAL_EPOCH_S = 2.0


def _sync(device: str) -> None:
    from localfm.device import synchronize

    synchronize(device)


def device_info(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        out.update(name=p.name, memory_gib=p.total_memory / 2**30, multiprocessors=p.multi_processor_count,
                   capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    return out


def ceilings(device: str) -> dict[str, Any]:
    """Copy bandwidth and float32 GEMM rate of this device, medians of 10 after 3 warm-ups."""
    import torch

    from localfm.device import float32_matmul

    def timed(fn: Any, repeats: int = 10) -> float:
        for _ in range(3):
            fn()
        _sync(device)
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            _sync(device)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    n = 1 << 28 if device != "cpu" else 1 << 24  # 1 GiB of float32 on a GPU
    pair = [torch.rand(n, device=device)]
    pair.append(torch.empty_like(pair[0]))
    copy_s = timed(lambda: pair[1].copy_(pair[0]))
    pair.clear()  # free the 2 GiB before the GEMM's operands
    m = 8192 if device != "cpu" else 1024
    a, b = torch.rand(m, m, device=device), torch.rand(m, m, device=device)
    with float32_matmul():
        gemm_s = timed(lambda: a @ b)
    return {"copy_gb_per_s": 2 * n * 4 / copy_s / 1e9, "copy_bytes": 2 * n * 4,
            "fp32_gemm_tflops": 2 * m**3 / gemm_s / 1e12, "gemm_n": m}


def make_rows(rows: int, users: int, items: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """One-hot (user, item) rows of the planted ratings and their binary labels (rating >= 4)."""
    r = synthetic_ratings(rows, users, items, seed=0)
    n = len(r)
    cols = np.empty(2 * n, np.int32)
    cols[0::2], cols[1::2] = r.users, users + r.items
    X = sp.csr_matrix((np.ones(2 * n, np.float32), cols, np.arange(0, 2 * n + 1, 2, dtype=np.int64)),
                      shape=(n, users + items))
    return X, (r.ratings >= 4).astype(np.float32), r.users, r.items


def _fit(X: sp.csr_matrix, y: np.ndarray, device: str, epochs: int, engine: str = "auto",
         graphs: bool = True) -> tuple[Any, dict[str, Any]]:
    from localfm.fm import engines
    from localfm.fm.engines.torch import DeviceRun
    from localfm.fm.model import FactorizationMachine

    fm = FactorizationMachine(feature_dim=X.shape[1], num_factors=64, predictor_type="binary_classifier",
                              epochs=epochs, mini_batch_size=5000, seed=0, verbose=False,
                              _local_device=device, _local_engine=engine)
    runs: list[Any] = []
    real = engines.start

    def start(*args: Any) -> Any:  # keep the engine run, to report whether its step was a CUDA graph
        runs.append(real(*args))
        return runs[-1]

    engines.start, DeviceRun.cuda_graphs = start, graphs
    try:
        t = time.perf_counter()
        fm.fit(X, y)
        wall = time.perf_counter() - t
    finally:
        engines.start, DeviceRun.cuda_graphs = real, True
    epoch_s = [X.shape[0] / rate for rate in fm.history_.throughput_per_epoch]
    run = runs[0]
    return fm, {"engine": fm.engine_, "run": type(run).__name__, "cuda_graph": getattr(run, "_graph", None) is not None,
                "graph_error": getattr(run, "graph_error", None), "epoch_s": epoch_s, "fit_wall_s": wall,
                "outside_epochs_s": wall - sum(epoch_s), "train_metrics_per_epoch": fm.history_.train_metrics_per_epoch}


def training(X: sp.csr_matrix, y: np.ndarray, device: str, subset: int) -> tuple[Any, dict[str, Any]]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    fm, first = _fit(X, y, device, epochs=2)
    if device.startswith("cuda"):
        first["peak_device_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"training, first fit: {first['epoch_s']} graph={first['cuda_graph']} {first['graph_error']}", flush=True)
    again, second = _fit(X, y, device, epochs=2)
    eager_fm, eager = _fit(X, y, device, epochs=2, graphs=False)
    print(f"training, eager: {eager['epoch_s']}", flush=True)

    def same(a: Any, b: Any) -> bool:
        return a.V_.tobytes() == b.V_.tobytes() and a.w_.tobytes() == b.w_.tobytes() and a.w0_ == b.w0_

    out = {"rows": X.shape[0], "feature_dim": X.shape[1], "k": 64, "batch": 5000, "first": first,
           "second": second, "eager": eager, "same_bytes_twice": same(fm, again), "same_bytes_eager": same(fm, eager_fm)}
    # How far another summation order moves the numbers: the same subset on the device and on the CPU.
    Xs, ys = X[:subset], y[:subset]
    dev, dev_run = _fit(Xs, ys, device, epochs=1)
    cpu, cpu_run = _fit(Xs, ys, "cpu", epochs=1, engine="torch")
    out["subset_vs_cpu_torch_engine"] = {
        "rows": subset,
        "device_metrics": dev_run["train_metrics_per_epoch"][-1],
        "cpu_metrics": cpu_run["train_metrics_per_epoch"][-1],
        "max_abs_metric_diff": max(abs(dev_run["train_metrics_per_epoch"][-1][m] - v)
                                   for m, v in cpu_run["train_metrics_per_epoch"][-1].items() if m != "epoch"),
        "max_abs_V_diff": float(np.abs(dev.V_ - cpu.V_).max()),
        "max_abs_V": float(np.abs(cpu.V_).max()),
        "cpu_epoch_s": cpu_run["epoch_s"][0],
        "device_epoch_s": dev_run["epoch_s"][0],
    }
    return fm, out


def step_profile(X: sp.csr_matrix, y: np.ndarray, device: str, rows: int) -> dict[str, Any]:
    """Where a training batch's time goes on the device: one epoch over ``rows`` rows under
    torch's profiler. If the host's time per batch (dispatching ~50 small ops) exceeds the
    device's kernel time per batch, the epoch is launch-bound and a faster GPU would not help."""
    from torch.profiler import ProfilerActivity, profile

    Xs, ys = X[:rows], y[:rows]
    _fit(Xs, ys, device, epochs=1)  # warm-up outside the profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        _, run = _fit(Xs, ys, device, epochs=1)
    events = prof.key_averages()
    batches = -(-rows // 5000)
    kernel_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events if e.device_type.name == "CUDA")
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    top = sorted(((e.key, getattr(e, "self_device_time_total", 0) or 0, e.count) for e in events
                  if e.device_type.name == "CUDA"), key=lambda r: -r[1])[:12]
    return {"rows": rows, "batches": batches, "epoch_s": run["epoch_s"][0],
            "wall_ms_per_batch": run["epoch_s"][0] / batches * 1e3,
            "kernel_ms_per_batch": kernel_us / batches / 1e3, "launches_per_batch": launches / batches,
            "top_kernels": [{"name": k[:80], "ms_per_batch": t / batches / 1e3, "calls": c} for k, t, c in top]}


def _profile_call(fn: Any, device: str) -> dict[str, Any]:
    """One call under torch's profiler: its wall time against the device's busy time (kernels,
    copies), so the host's share (everything else) can be read off."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    dev = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    us = [(e.key, getattr(e, "self_device_time_total", 0) or 0, e.count) for e in dev]
    copies = sum(t for k, t, _ in us if k.startswith("Memcpy") or k.startswith("Memset"))
    return {"wall_s": wall, "device_busy_s": sum(t for _, t, _ in us) / 1e6, "copies_s": copies / 1e6,
            "top": [{"name": k[:80], "s": t / 1e6, "calls": c} for k, t, c in sorted(us, key=lambda r: -r[1])[:10]]}


def ranking(fm: Any, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, device: str,
            batches: list[int], repeats: int, sample: int) -> dict[str, Any]:
    import torch

    from localfm.recommend.topx import top_x

    V, w = fm.V_, fm.w_
    U = np.hstack([V[:n_users], np.ones((n_users, 1), np.float32)]).astype(np.float32)
    I = np.hstack([V[n_users:], w[n_users:, None]]).astype(np.float32)
    seen = sp.csr_matrix((np.ones(users.shape[0], np.float32), (users, items)), shape=(n_users, n_items))
    seen.sum_duplicates()
    out: dict[str, Any] = {"users": n_users, "items": n_items, "dim": U.shape[1], "k": K, "excluded_pairs": seen.nnz}
    t = time.perf_counter()
    top_x(U, I, K, exclude=seen, device=device, batch_size=batches[0])  # warm-up: CUDA context, cuBLAS handles
    out["warmup_s"] = time.perf_counter() - t
    runs: dict[str, Any] = {}
    result = None
    for b in batches:
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            result = top_x(U, I, K, exclude=seen, device=device, batch_size=b)
            times.append(time.perf_counter() - t)
        runs[str(b)] = {"runs_s": times, "median_s": statistics.median(times)}
        if device.startswith("cuda"):
            runs[str(b)]["peak_device_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    out["by_batch"] = runs
    out["best_median_s"] = min(r["median_s"] for r in runs.values())
    best_batch = min(runs, key=lambda b: runs[b]["median_s"])
    out["profile"] = _profile_call(lambda: top_x(U, I, K, exclude=seen, device=device, batch_size=int(best_batch)),
                                   device)
    out["profile"]["batch"] = int(best_batch)
    # The CPU engine on a sample of users: identical id lists, and how close the differences are.
    rng = np.random.default_rng(1)
    pick = np.sort(rng.choice(n_users, size=min(sample, n_users), replace=False))
    t = time.perf_counter()
    ref = top_x(U[pick], I, K, exclude=seen[pick], precision="fp32", kernel="torch")
    cpu_s = time.perf_counter() - t
    got = result.ids[pick]
    same_rows = (got == ref.ids).all(axis=1)
    S = U[pick].astype(np.float64) @ I.astype(np.float64).T
    gap = 0.0
    for r in np.flatnonzero(~same_rows):
        a, b_ = got[r][got[r] >= 0], ref.ids[r][ref.ids[r] >= 0]
        gap = max(gap, float(np.abs(S[r, a] - S[r, b_]).max() / max(1e-30, np.abs(S[r, b_]).max())))
    out["vs_cpu_engine"] = {"sample_users": int(pick.size), "identical_id_lists": float(same_rows.mean()),
                            "same_id_sets": float(np.mean([set(x) == set(y) for x, y in zip(got, ref.ids)])),
                            "max_relative_score_gap_where_different": gap, "cpu_torch_engine_s": cpu_s}
    return out


def large_catalogue(device: str, n_items: int, n_users: int = 16384, sample: int = 50) -> dict[str, Any]:
    """Top-100 against a catalogue far wider than one score matrix allows (FM-shaped random
    vectors): the device path slices each user batch (``DEVICE_SCORES``) instead of running out
    of memory. Timed once after a warm-up; a sample ranked by the CPU engine too."""
    from localfm.recommend import topx

    rng = np.random.default_rng(3)
    U = rng.standard_normal((n_users, 65), dtype=np.float32)
    U[:, -1] = 1.0
    I = (rng.standard_normal((n_items, 65), dtype=np.float32) * rng.lognormal(0, 0.5, (n_items, 1)).astype(np.float32))
    topx.top_x(U[:64], I, K, device=device, batch_size=64)  # warm-up (and the items' rank order once)
    t = time.perf_counter()
    got = topx.top_x(U, I, K, device=device, batch_size=4096)
    seconds = time.perf_counter() - t
    ref = topx.top_x(U[:sample], I, K, precision="fp32", kernel="torch")
    return {"users": n_users, "items": n_items, "k": K, "seconds": seconds,
            "users_per_slice": max(1, topx.DEVICE_SCORES // n_items),
            "identical_id_lists_vs_cpu": float((got.ids[:sample] == ref.ids).all(axis=1).mean()), "sample": sample}


def headline(doc: dict[str, Any]) -> list[dict[str, Any]]:
    dev = doc.get("device_info", {})
    name = dev.get("name", doc.get("device"))
    rows = []
    if doc.get("ranking"):
        rk = doc["ranking"]
        rows.append({"what": f"all-users top-{rk['k']} on a GPU ({name}), {rk['users']:,} × {rk['items']:,}, "
                             f"seen excluded", "value": rk["best_median_s"], "unit": " s",
                     "target": f"≤ {GOAL_TOPX_S:g} s"})
    if doc.get("training"):
        tr = doc["training"]
        rows.append({"what": f"{tr['rows']:,}-row epoch on a GPU ({name}), k=64, batch 5000",
                     "value": min(tr["first"]["epoch_s"]), "unit": " s", "target": f"≤ {GOAL_EPOCH_S:g} s"})
    return rows


def readme_rows(doc: dict[str, Any]) -> list[str]:
    """The README table's GPU rows (measure | localfm | target | date)."""
    name, date, rows = doc.get("device_info", {}).get("name", doc.get("device")), doc["date"][:10], []
    rk, tr = doc.get("ranking"), doc.get("training")
    if rk:
        vs = rk["vs_cpu_engine"]
        rows.append(f"| all-users top-{rk['k']} on a lent {name} (`top_x(device=\"cuda\")`: float32, "
                    f"{rk['users']:,} × {rk['items']:,}, seen excluded; same id lists as the CPU engine for "
                    f"{vs['identical_id_lists']:.4f} of {vs['sample_users']:,} sampled users) | "
                    f"{rk['best_median_s']:.2f} s | ≤ {GOAL_TOPX_S:g} s | {date} |")
    if tr:
        graph = "CUDA graph" if tr["first"].get("cuda_graph") else "no CUDA graph"
        eager = (f"; {min(tr['eager']['epoch_s']):.1f} s launched kernel by kernel" if tr.get("eager") else "")
        rows.append(f"| {tr['rows']:,}-row epoch on a lent {name} (`_local_device=cuda`, k=64, batch 5000, {graph}"
                    f"{eager}; same bytes run after run: {tr['same_bytes_twice']}) | "
                    f"{min(tr['first']['epoch_s']):.2f} s | ≤ {GOAL_EPOCH_S:g} s | {date} |")
    return rows


def tables(doc: dict[str, Any]) -> str:
    """The docs/benchmarks.md section for a results file."""
    dev, ce = doc.get("device_info", {}), doc.get("ceilings", {})
    lines = [f"Device: {dev.get('name', doc.get('device'))}, torch {dev.get('torch')}, CUDA {dev.get('cuda')}; "
             f"measured ceilings: copy {ce.get('copy_gb_per_s', float('nan')):.0f} GB/s, float32 GEMM "
             f"{ce.get('fp32_gemm_tflops', float('nan')):.1f} TFLOP/s.", ""]
    tr = doc.get("training")
    if tr:
        f, s, sub = tr["first"], tr["second"], tr["subset_vs_cpu_torch_engine"]
        lines += ["| training (k=64, batch 5000) | value |", "| --- | --- |",
                  f"| rows | {tr['rows']:,} |",
                  f"| epochs 1, 2 (first fit) | {', '.join(f'{x:.2f}' for x in f['epoch_s'])} s |",
                  f"| epochs 1, 2 (second fit) | {', '.join(f'{x:.2f}' for x in s['epoch_s'])} s |",
                  f"| step captured as a CUDA graph | {f.get('cuda_graph')}"
                  f"{' (' + f['graph_error'] + ')' if f.get('graph_error') else ''} |",
                  f"| epochs 1, 2, the step launched kernel by kernel (no graph) | "
                  f"{', '.join(f'{x:.2f}' for x in tr['eager']['epoch_s'])} s |" if tr.get("eager") else "| no graph | n/a |",
                  f"| rest of the fit (init, batch precompute and upload, metrics) | {f['outside_epochs_s']:.1f} s |",
                  f"| same bytes in both fits; graph vs no graph | {tr['same_bytes_twice']}; "
                  f"{tr.get('same_bytes_eager')} |",
                  f"| {sub['rows']:,}-row subset, device vs CPU torch engine: largest metric difference | "
                  f"{sub['max_abs_metric_diff']:.2e} |",
                  f"| the same: largest weight difference (largest weight) | {sub['max_abs_V_diff']:.2e} "
                  f"({sub['max_abs_V']:.2e}) |"]
        pr = tr.get("profile")
        if pr:
            lines += [f"| profiled epoch ({pr['rows']:,} rows): wall per batch | {pr['wall_ms_per_batch']:.3f} ms |",
                      f"| the same: device kernel time per batch, kernel launches per batch | "
                      f"{pr['kernel_ms_per_batch']:.3f} ms, {pr['launches_per_batch']:.0f} |"]
        lines.append("")
    rk = doc.get("ranking")
    if rk:
        vs = rk["vs_cpu_engine"]
        lines += [f"| top-{rk['k']} ({rk['users']:,} users × {rk['items']:,} items, {rk['excluded_pairs']:,} pairs "
                  "excluded) | value |", "| --- | --- |"]
        lines += [f"| batch {b} users: runs | {', '.join(f'{x:.3f}' for x in r['runs_s'])} s |"
                  for b, r in rk["by_batch"].items()]
        pr = rk.get("profile")
        if pr:
            lines.append(f"| profiled call (batch {pr['batch']}): wall, device busy (of which copies) | "
                         f"{pr['wall_s']:.3f} s, {pr['device_busy_s']:.3f} s ({pr['copies_s']:.3f} s) |")
        lines += [f"| first call (CUDA context, handles) | {rk['warmup_s']:.2f} s |",
                  f"| identical id lists vs the CPU engine ({vs['sample_users']:,} sampled users) | "
                  f"{vs['identical_id_lists']:.4f} (same sets {vs['same_id_sets']:.4f}) |",
                  f"| largest relative score gap where they differ | {vs['max_relative_score_gap_where_different']:.1e} |",
                  ""]
    lc = doc.get("large_catalogue")
    if lc:
        lines += [f"| top-{lc['k']}, {lc['users']:,} users × {lc['items']:,} random FM-shaped items, no exclusions "
                  "| value |", "| --- | --- |",
                  f"| one call (batch 4096, scored {lc['users_per_slice']} users at a time) | {lc['seconds']:.2f} s |",
                  f"| identical id lists vs the CPU engine ({lc['sample']} users) | {lc['identical_id_lists_vs_cpu']:.2f} |",
                  ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from localfm.device import resolve_device

    device = resolve_device(args.device)
    doc: dict[str, Any] = {"benchmark": NAME, "date": utc_now(), "device": device, "load_average_before": load_average()}
    doc["device_info"] = device_info(device)
    doc["ceilings"] = ceilings(device)
    t = time.perf_counter()
    X, y, users, items = make_rows(args.rows, args.users, args.items)
    doc["data_s"] = time.perf_counter() - t
    print(f"data: {X.shape[0]:,} rows in {doc['data_s']:.1f} s", flush=True)
    fm, doc["training"] = training(X, y, device, subset=min(args.subset, X.shape[0]))
    print(f"training: epochs {doc['training']['first']['epoch_s']}", flush=True)
    if args.profile_rows:
        doc["training"]["profile"] = step_profile(X, y, device, min(args.profile_rows, X.shape[0]))
        print(json.dumps(doc["training"]["profile"], indent=1), flush=True)
    doc["ranking"] = ranking(fm, users, items, args.users, args.items, device, args.batches, args.repeats, args.sample)
    if args.big_items:
        doc["large_catalogue"] = large_catalogue(device, args.big_items)
        print(f"large catalogue: {doc['large_catalogue']}", flush=True)
    doc["load_average_after"] = load_average()
    doc["headline"] = headline(doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", type=int, default=ML25M_ROWS)
    p.add_argument("--users", type=int, default=ML25M_USERS)
    p.add_argument("--items", type=int, default=ML25M_ITEMS)
    p.add_argument("--subset", type=int, default=500_000, help="rows trained on the device and the CPU to compare")
    p.add_argument("--batches", type=int, nargs="+", default=[4096, 16384], help="user-batch sizes of the ranking")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile-rows", type=int, default=1_000_000, help="rows of the profiled epoch (0: none)")
    p.add_argument("--big-items", type=int, default=2_000_000,
                   help="items of the wide-catalogue ranking (16,384 users; 0: none)")
    p.add_argument("--sample", type=int, default=2000, help="users ranked by the CPU engine too")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    from localfm import progress

    progress.set_quiet(True)
    doc = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    print(tables(doc))
    for row in doc["headline"]:
        print(f"{row['what']}: {row['value']:.3f}{row['unit']} (goal {row['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
