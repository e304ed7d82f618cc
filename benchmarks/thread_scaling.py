"""What a second thread can buy on this machine for the trainer's optimizer step (a script, not a test).

    python -m benchmarks.thread_scaling                      # ML-25M-shaped table, 16M row updates
    python -m benchmarks.thread_scaling --rows 1000000 --repeat 2   # quick, noisy

Why: issue 13 asks the numba trainer for >= 1.7x its one-thread throughput on two threads.
Half of a large-``feature_dim`` epoch is the lazy Adam step on ~7,800 table rows per batch
of 5,000, nearly all cold in cache (3 x 65 float32 = 780 B a row). This script runs that
step alone, with the trainer's own compiled pieces (``_step_row``, ``_prefetch_row``), on
random rows of a table, one thread vs two (each thread its own rows, no barriers, no shared
writes): the best speed-up the step could reach here, whatever the trainer's design.

Cases (each on a ``cold`` table of the ML-25M shape, 224,964 rows, 175 MB, and a ``hot``
one of 1,000 rows, 0.8 MB, that stays in the L2 cache):

- ``adam``: the exact float32 lazy Adam step on the row (sqrt and divide per element), as
  the trainer runs it;
- ``touch``: the same rows read and written with one multiply-add per element: memory
  traffic with almost no arithmetic.

Prints one JSON object (and writes ``--out``): per case rows/s at 1 and 2 threads, the
speed-up, GB/s moved (2 x 780 B per row: read and written back), CPU seconds beside wall
seconds, and the load average before and after. Run it alone on a quiet machine.

It also probes the link between the two vCPUs before and after the cases (``core_link``; only
the probe: ``--link-only --samples 20 --interval 15``). Why: the trainer's threads hand data
to each other at every batch (the forward sums, the published step lists, the rows one
thread stepped and the other reads next), which independent rows never do. On the 2-core VM
the round trip between the two vCPUs moved between ~40-120 ns and ~440-600 ns from one probe to
the next, seconds apart (the hypervisor places them), and a hand-off that costs nothing to the
cases above costs the trainer. docs/fm.md has the measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from localfm.fm.engines.numba import (
    OWNER_SHIFT,
    PREFETCH_AHEAD,
    _atomic_add,
    _atomic_load,
    _cpu_relax,
    _prefetch_row,
    _step_row,
)

from .machine import machine_info

REPO = Path(__file__).resolve().parents[1]
ML25M_FEATURES = 162_541 + 62_423  # users + items: the one-hot table of the ML-25M-shaped set
K1 = 65  # num_factors 64 + the linear weight


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_rows(P, G, cols, lr, eps, ncoef, prefetch):
    """The trainer's lazy Adam step (``_step_row``, kind 0, no decay, no clip) on rows ``cols`` of ``P``."""
    n = cols.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    lrs = np.full(P.shape[2], lr, np.float32)
    zeros = np.zeros(P.shape[2], np.float32)
    for i in range(n):
        if prefetch and i + PREFETCH_AHEAD < n:
            _prefetch_row(P, cols[i + PREFETCH_AHEAD])
        c = cols[i]
        _step_row(0, G[i & 63], P[c, 0], P[c, 1], P[c, 2], zero, lrs, zeros, zeros, ncoef, one, eps, False, zero)
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def _touch_rows(P, cols, prefetch):
    """Read and write every element of rows ``cols`` of ``P`` with one multiply-add: traffic, no arithmetic."""
    n = cols.shape[0]
    a = np.float32(0.999)
    b = np.float32(1e-6)
    for i in range(n):
        if prefetch and i + PREFETCH_AHEAD < n:
            _prefetch_row(P, cols[i + PREFETCH_AHEAD])
        c = cols[i]
        for s in range(P.shape[1]):
            row = P[c, s]
            for f in range(row.shape[0]):
                row[f] = row[f] * a + b
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def _ping(counter, me, n):
    """Player ``me`` (0 or 1) of a counter handed back and forth ``n`` times (one cache line)."""
    for r in range(n):
        want = 2 * r + me
        while _atomic_load(counter, 0) != want:
            _cpu_relax()
        _atomic_add(counter, 0, 1)
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def _pass_buffer(counter, buf, me, n):
    """``n`` hand-offs of ``buf``: player 0 writes every element, then player 1 reads them all.

    With ``me`` = -1 one thread plays both parts: the same traffic with no hand-off."""
    acc = 0.0
    for r in range(n):
        if me >= 0:
            want = 2 * r + me
            while _atomic_load(counter, 0) != want:
                _cpu_relax()
        if me <= 0:
            for i in range(buf.size):
                buf[i] = buf[i] + 1.0
        if me != 0:
            for i in range(buf.size):
                acc += buf[i]
        if me >= 0:
            _atomic_add(counter, 0, 1)
    return acc


def _pinned_pair(fn: Any, cpus: tuple[int, int], args_of: Any) -> float:
    """Wall seconds of ``fn(*args_of(me))`` in two threads, player ``me`` pinned to ``cpus[me]``."""
    counter = np.zeros(8, np.int64)

    def play(me: int) -> None:
        os.sched_setaffinity(0, {cpus[me]})  # pid 0: this thread only
        fn(counter, *args_of(me))

    threads = [threading.Thread(target=play, args=(me,)) for me in (0, 1)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def core_link(round_trips: int = 50_000, handoffs: int = 400, buffer_bytes: int = 1_300_000) -> dict[str, Any] | None:
    """How far apart two vCPUs are right now: a cache line's round trip between threads pinned to
    the first two CPUs, and a ``buffer_bytes`` buffer written on one and read on the other
    (1.3 MB: a batch's forward sums at batch 5000, k = 64), against the same traffic on one
    CPU. None with fewer than two CPUs. Spinning threads: run it on a quiet machine only."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    pair = (cpus[0], cpus[1])
    buf = np.zeros(buffer_bytes // 8, np.float64)
    _pinned_pair(_ping, pair, lambda me: (me, 10))  # compile / load from numba's cache first
    _pinned_pair(_pass_buffer, pair, lambda me: (buf, me, 2))
    _pass_buffer(np.zeros(8, np.int64), buf, -1, 1)
    trip = _pinned_pair(_ping, pair, lambda me: (me, round_trips))
    handoff = _pinned_pair(_pass_buffer, pair, lambda me: (buf, me, handoffs))
    t0 = time.perf_counter()
    _pass_buffer(np.zeros(8, np.int64), buf, -1, handoffs)
    alone = time.perf_counter() - t0
    return {"at": time.strftime("%H:%M:%S", time.gmtime()), "cpus": list(pair),
            "round_trip_ns": round(trip / round_trips * 1e9, 1), "buffer_mb": round(buffer_bytes / 1e6, 2),
            "handoff_ms": round(handoff / handoffs * 1e3, 4), "same_cpu_ms": round(alone / handoffs * 1e3, 4)}


def _run(case: str, P: np.ndarray, parts: list[np.ndarray], G: np.ndarray) -> tuple[float, float]:
    """(wall, CPU seconds) of running ``case`` on each part of the rows in a thread of its own."""
    prefetch = P.nbytes > (8 << 20)  # as the trainer decides (PREFETCH_MIN_BYTES)

    def work(cols: np.ndarray, g: np.ndarray) -> None:
        if case == "adam":
            _adam_rows(P, g, cols, np.float32(1e-3), np.float32(1e-8), np.float32(-0.5), prefetch)
        else:
            _touch_rows(P, cols, prefetch)

    # a gradient buffer per thread, as in the trainer: the step writes to it (clip, decay)
    grads = [G.copy() for _ in parts]
    threads = [threading.Thread(target=work, args=(p, g)) for p, g in zip(parts[1:], grads[1:])]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    work(parts[0], grads[0])
    for t in threads:
        t.join()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(features: int, rows: int, repeat: int, seed: int = 0, hot_rows: int = 1_000) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for table in ("cold", "hot"):
        d = features if table == "cold" else hot_rows
        P = np.zeros((d, 3, K1), np.float32)  # as the trainer's table (model.py)
        P[:, 0] = rng.standard_normal((d, K1), dtype=np.float32) * np.float32(0.01)
        G = rng.standard_normal((64, K1), dtype=np.float32)
        cols = rng.integers(0, d, rows)
        # two threads own disjoint rows, in blocks of 2**OWNER_SHIFT as the trainer's threads own columns
        # (so two owners meet only at every 16th row boundary: a 780-byte row shares its first and
        # last cache lines with its neighbours)
        owner = (cols >> OWNER_SHIFT) & 1
        halves = [cols[owner == 0], cols[owner == 1]]
        for case in ("adam", "touch"):
            _run(case, P, [cols[:1000]], G)  # compile / load from numba's cache first
            res: dict[str, Any] = {"table": table, "table_mb": round(P.nbytes / 1e6, 1), "case": case,
                                   "row_updates": rows}
            runs: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
            for _ in range(repeat):  # interleaved: this VM's speed drifts from minute to minute
                for n_threads, parts in ((1, [cols]), (2, halves)):
                    runs[n_threads].append(_run(case, P, parts, G))
            for n_threads, timed in runs.items():
                wall = statistics.median(r[0] for r in timed)
                res[f"threads_{n_threads}"] = {
                    "wall_s": round(wall, 6), "cpu_s": round(statistics.median(r[1] for r in timed), 6),
                    "rows_per_s": round(rows / wall), "gb_per_s": round(2 * rows * 3 * K1 * 4 / wall / 1e9, 2),
                    "wall_runs": [round(r[0], 6) for r in timed]}
            res["speedup_2_vs_1"] = round(res["threads_1"]["wall_s"] / res["threads_2"]["wall_s"], 2)
            print(json.dumps(res), file=sys.stderr)
            out.append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16_000_000,
                    help="row updates per run (default 16M: ~2,000 batches of 5,000 rows, 1-3 s a run; shorter "
                         "runs scatter by 25 %% on this VM)")
    ap.add_argument("--features", type=int, default=ML25M_FEATURES, help="rows of the cold table")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "thread_scaling.json"))
    ap.add_argument("--link-only", action="store_true", help="only probe the link between the two vCPUs")
    ap.add_argument("--samples", type=int, default=1,
                    help="link probes before the cases (with --link-only: in all), --interval seconds apart")
    ap.add_argument("--interval", type=float, default=15.0)
    ap.add_argument("--round-trips", type=int, default=50_000, help="per link probe")
    ap.add_argument("--handoffs", type=int, default=400, help="1.3 MB buffer hand-offs per link probe")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.interval < 0 or args.round_trips < 1 or args.handoffs < 1:
        ap.error("--samples, --round-trips and --handoffs must be positive, --interval not negative")
    load_before = os.getloadavg()
    links = []
    for i in range(args.samples):
        if i:
            time.sleep(args.interval)
        links.append(core_link(args.round_trips, args.handoffs))
        print(json.dumps(links[-1]), file=sys.stderr)
    cases = [] if args.link_only else measure(args.features, args.rows, args.repeat)
    if not args.link_only:
        links.append(core_link(args.round_trips, args.handoffs))  # after: the placement moves by the minute
    report = {"benchmark": "thread_scaling", "machine": machine_info(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "core_link": links, "cases": cases}
    from localfm.io.atomic import atomic_write

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(args.out), "w") as fh:
        fh.write(json.dumps(report, indent=2) + "\n")
    summary: dict[str, Any] = {f"{c['table']}/{c['case']}": c["speedup_2_vs_1"] for c in cases}
    summary["round_trip_ns"] = [x["round_trip_ns"] for x in links if x is not None]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
