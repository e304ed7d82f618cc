"""Retrieval: exact top-k for every user, localfm's engine vs FAISS / numpy / torch.

All engines get the *same* float32 vectors (d = 65: 64 factors + the column that
carries the linear term, the shape ``localfm repackage`` produces) and must return
the k largest inner products per user, best first. Reported per catalogue size:
median seconds, GFLOP/s (2·users·items·d / s), fraction of this machine's sgemm peak
measured in the same run, and agreement with a float64 exact reference on a sample
of users (:func:`benchmarks.baselines.agreement`). numpy and torch are slow enough
on the larger catalogues (over 2.5e8 user×item pairs) that they run on a slice of
``baseline_slice_users`` users and are scaled linearly to all users (their cost is
linear in users; marked ``extrapolated_from_users``); localfm and FAISS always run on
all users.

Approximate indexes (IVFFlat nprobe sweep, HNSW efSearch sweep, via
``localfm.knn.index.build_index`` with its MIPS augmentation) are measured as
recall@k vs search time on a sample of queries of the largest catalogue.

Honest ratios: FAISS's OpenMP threads slow four-fold on a busy machine while the
engine slows less, so a ratio measured under load flatters the engine. Each size
records the load average before and after, FAISS's best quiet time per shape is kept
in the results file (``faiss_best_quiet``, carried from run to run), and a ratio
against FAISS is shown only when FAISS's time in this run is within 15% of that best
(:func:`benchmarks.results.ratio_verdict`); otherwise it says "not shown" and why.

Vectors are synthetic: Gaussian factors with log-normal item norms (popular items of
a trained FM have larger norms), users with a constant 1 in the last column and items
their linear weight there — the structure of repackaged FM vectors.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from localfm.progress import progress

from .baselines import agreement, topk_exact64, topk_faiss_flat, topk_numpy, topk_torch
from .data import BenchConfig
from .machine import QUIET_LOAD, load_average, sgemm_peak, timeit, utc_now
from .results import (
    NO_VERDICT,
    RATIO_TOLERANCE,
    load_result,
    ratio_text,
    ratio_verdict,
    shape_key,
    update_best_quiet,
)

NAME = "retrieval"


def make_vectors(n_users: int, n_items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Repackaged-FM-like vectors: (users (n_users, dim), items (n_items, dim)) float32."""
    rng = np.random.default_rng(seed)
    k = dim - 1
    U = rng.standard_normal((n_users, dim), dtype=np.float32) / np.float32(np.sqrt(k))
    U *= rng.lognormal(0.0, 0.3, (n_users, 1)).astype(np.float32)
    U[:, -1] = 1.0
    I = rng.standard_normal((n_items, dim), dtype=np.float32) / np.float32(np.sqrt(k))
    I *= rng.lognormal(0.0, 0.5, (n_items, 1)).astype(np.float32)
    I[:, -1] = rng.normal(0.0, 0.5, n_items).astype(np.float32)
    return np.ascontiguousarray(U), np.ascontiguousarray(I)


def localfm_engine() -> Any:
    from localfm.recommend.topx import top_x

    return top_x


def _engines(k: int) -> dict[str, Any]:
    """name -> fn(U, I) -> (scores, ids), best first."""
    eng: dict[str, Any] = {}
    top_x = localfm_engine()

    def run_localfm(U: np.ndarray, I: np.ndarray, mode: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        r = top_x(U, I, k, precision=mode)
        return r.scores, r.ids

    eng["localfm"] = run_localfm
    eng["localfm_fp32"] = lambda U, I: run_localfm(U, I, "fp32")
    eng["faiss_flat_ip"] = lambda U, I: topk_faiss_flat(U, I, k)
    eng["numpy"] = lambda U, I: topk_numpy(U, I, k)
    eng["torch"] = lambda U, I: topk_torch(U, I, k)
    return eng


def _same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: are the id sets equal (order-free)?"""
    return (np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1)


def compare_with_faiss(ids: np.ndarray, faiss_ids: np.ndarray, U: np.ndarray, I: np.ndarray,
                       k: int, max_rows: int = 500) -> dict[str, Any]:
    """Rows whose id set differs from FAISS's, and whether float64 says both are correct.

    A differing row is "explained by ties" when, against an exact float64 top-k of that
    user, both the engine's and FAISS's lists are correct up to float32 rounding —
    i.e. they only chose differently among items whose scores are equal in float32.
    """
    same = _same_sets(ids, faiss_ids[: ids.shape[0]])
    rows = np.flatnonzero(~same)
    out: dict[str, Any] = {"same_sets_as_faiss": float(same.mean()), "rows_differing": int(rows.size)}
    if rows.size:
        pick = rows[:max_rows]
        ref_s, ref_i = topk_exact64(U[pick], I, k)
        mine = agreement(ids[pick], ref_s, ref_i, U[pick], I)
        theirs = agreement(faiss_ids[pick], ref_s, ref_i, U[pick], I)
        out["differing_rows_checked"] = int(pick.size)
        out["differing_rows_engine_exact_up_to_ties"] = mine["exact_up_to_ties"]
        out["differing_rows_faiss_exact_up_to_ties"] = theirs["exact_up_to_ties"]
    return out


def exact_size(cfg: BenchConfig, n_users: int, n_items: int, peak: float,
               best: dict[str, Any] | None = None) -> dict[str, Any]:
    """One catalogue size, every engine. ``best``: FAISS's best quiet times by shape, updated in place."""
    best = {} if best is None else best
    k, d = cfg.retrieval_k, cfg.retrieval_dim
    load_before = load_average()
    U, I = make_vectors(n_users, n_items, d, seed=cfg.seed)
    ref_rows = min(cfg.reference_rows, n_users)
    ref_s, ref_i = [], []
    for s in range(0, ref_rows, 256):
        a, b = topk_exact64(U[s:min(ref_rows, s + 256)], I, k)
        ref_s.append(a)
        ref_i.append(b)
    ref_scores, ref_ids = np.concatenate(ref_s), np.concatenate(ref_i)
    flops = 2.0 * n_users * n_items * d
    # numpy/torch baselines on a slice of users when the catalogue is large (linear in users).
    slice_users = n_users if n_users * n_items <= 2.5e8 else max(ref_rows, cfg.baseline_slice_users)
    out: dict[str, Any] = {"users": n_users, "items": n_items, "dim": d, "k": k, "gflop": flops / 1e9,
                           "engines": {}}
    results: dict[str, np.ndarray] = {}
    largest = (n_users, n_items) == tuple(cfg.retrieval_sizes[-1]) and len(cfg.retrieval_sizes) > 1
    for name, fn in _engines(k).items():
        if name == "localfm_fp32" and largest:
            continue  # the fp32-only variant is shown on the smaller sizes; it would add minutes here
        users = U if name not in ("numpy", "torch") else U[:slice_users]
        # Warm-up only where it is cheap: it absorbs thread start-up and first-call costs.
        warm = 1 if n_users * n_items <= 5e8 else 0
        t, (scores, ids) = timeit(lambda: fn(users, I), repeats=cfg.repeats, warmup=warm)
        scale = n_users / users.shape[0]
        med = t.median * scale
        row = {**t.as_dict(), "median_s": med, "gflops": flops / med / 1e9,
               "fraction_of_sgemm_peak": flops / med / 1e9 / peak,
               "agreement_vs_float64": agreement(ids, ref_scores, ref_ids, U, I)}
        if scale != 1.0:
            row["extrapolated_from_users"] = int(users.shape[0])
            row["measured_median_s"] = t.median
        out["engines"][name] = row
        results[name] = ids
    if "faiss_flat_ip" in results:
        for name, ids in results.items():
            if name != "faiss_flat_ip":
                out["engines"][name].update(compare_with_faiss(ids, results["faiss_flat_ip"], U, I, k))
    out["load_average_before"], out["load_average_after"] = load_before, load_average()
    fa = out["engines"].get("faiss_flat_ip")
    if fa:
        for name, row in out["engines"].items():
            row["speedup_vs_faiss"] = fa["median_s"] / row["median_s"]
        key = shape_key(n_users, n_items, d, k)
        best.update(update_best_quiet(best, key, fa["median_s"], load_before, utc_now()))
        out["faiss_ratio"] = ratio_verdict(fa["median_s"], best.get(key))
    return out


def approximate(cfg: BenchConfig, n_users: int, n_items: int) -> dict[str, Any]:
    """recall@k vs search time for IVFFlat (nprobe) and HNSW (efSearch) on sampled queries."""
    from localfm.knn.index import build_index

    k, d = cfg.retrieval_k, cfg.retrieval_dim
    U, I = make_vectors(n_users, n_items, d, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    q = U[np.sort(rng.choice(n_users, size=min(cfg.ann_queries, n_users), replace=False))]
    t_exact, (_, exact_ids) = timeit(lambda: topk_faiss_flat(q, I, k), repeats=1)
    out: dict[str, Any] = {"users": n_users, "items": n_items, "queries": int(q.shape[0]),
                           "exact_reference": {"name": "faiss_flat_ip", "search_s": t_exact.median},
                           "curves": {}, "build_s": {}}
    nlist = max(1, int(round(np.sqrt(n_items))))  # SageMaker's 'auto' = sqrt(sample_size)
    sweeps = {
        "IVFFlat": ("faiss.IVFFlat", "nprobe", [1, 2, 5, 10, 20, 50, 100]),
        "HNSW32": ("faiss.HNSW", "ef_search", [100, 200, 400, 800]),
    }
    for label, (itype, param, values) in progress(list(sweeps.items()), desc="approximate indexes", disable=False):
        start = time.perf_counter()
        index = build_index(I, index_type=itype, index_metric="INNER_PRODUCT", nlist=nlist)
        out["build_s"][label] = time.perf_counter() - start
        index.search(q[:256], k)  # warm-up: first-search costs are not the index's speed
        pts = []
        for v in values:
            if param == "nprobe":
                if v > nlist:
                    continue
                index.nprobe = v
            else:
                index.ef_search = v
            t, (_, ids) = timeit(lambda: index.search(q, k), repeats=1)
            inter = np.array([len(np.intersect1d(a, b)) for a, b in zip(ids, exact_ids)])
            pts.append({"param": f"{param}={v}", "search_s": t.median,
                        "recall": float(inter.mean() / exact_ids.shape[1]),
                        "speedup_vs_flat": t_exact.median / t.median})
        out["curves"][label] = pts
    out["nlist"] = nlist
    return out


def run(cfg: BenchConfig) -> dict[str, Any]:
    peak = sgemm_peak(n=1024 if cfg.mode == "smoke" else 2048, repeats=3 if cfg.mode == "smoke" else 5)
    payload: dict[str, Any] = {"quick": cfg.quick, "mode": cfg.mode, "k": cfg.retrieval_k,
                               "dim": cfg.retrieval_dim, "sgemm_peak": peak, "notes": []}
    best = dict((load_result(NAME, cfg.out_dir) or {}).get("faiss_best_quiet", {}))
    payload["exact"] = [exact_size(cfg, u, i, peak["peak_gflops"], best)
                        for u, i in progress(cfg.retrieval_sizes, desc="retrieval sizes", disable=False)]
    payload["faiss_best_quiet"] = best
    peak_after = sgemm_peak(n=1024 if cfg.mode == "smoke" else 2048, repeats=3)
    payload["sgemm_peak_after"] = peak_after
    u, i = cfg.retrieval_sizes[-1]
    payload["approximate"] = approximate(cfg, u, i)
    payload["headline"] = headline(payload)
    return payload


def best_peak(payload: dict[str, Any]) -> float:
    """The higher of the sgemm peaks measured at the start and the end of the run.

    On a shared machine one of the two can land in a neighbour's burst; the higher one
    is the better estimate of what the hardware does, so fractions quoted in docs use it.
    """
    peaks = [payload.get(k, {}).get("peak_gflops") for k in ("sgemm_peak", "sgemm_peak_after")]
    return max(p for p in peaks if p)


def headline(payload: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not payload.get("exact"):
        return out
    big = payload["exact"][-1]
    lf = big["engines"].get("localfm")
    size = f"{big['users']:,}×{big['items']:,}"
    if lf:
        agree = lf["agreement_vs_float64"]["exact_up_to_ties"]
        same = lf.get("same_sets_as_faiss")
        ties = ""
        if lf.get("rows_differing"):
            ties = (f", the {lf['rows_differing']} differing users are exact up to float32 ties: "
                    f"{lf.get('differing_rows_engine_exact_up_to_ties', float('nan')):.3f} "
                    f"(FAISS: {lf.get('differing_rows_faiss_exact_up_to_ties', float('nan')):.3f})")
        verdict = big.get("faiss_ratio", NO_VERDICT)
        shown = verdict["shown"]
        withheld = "" if shown else f"; ratio not shown: {verdict['reason']}"
        out.append({"what": f"exact top-{payload['k']} all users {size}: localfm / FAISS IndexFlatIP speed "
                    f"(same id sets as FAISS for {same:.5f} of users{ties}; sample vs float64 "
                    f"exact up to ties: {agree:.4f}{withheld})",
                    "value": lf["speedup_vs_faiss"] if shown else None, "unit": "×" if shown else "",
                    "target": "≥ 2×, identical results"})
        out.append({"what": f"exact top-{payload['k']} all users {size}: localfm seconds "
                    f"({lf['gflops'] / best_peak(payload):.2f} of the best sgemm peak measured in the run, "
                    f"{best_peak(payload):.0f} GFLOP/s)",
                    "value": lf["median_s"], "unit": " s", "target": "≤ 30 s", "digits": 1})
    for base in ("numpy", "torch"):
        row = big["engines"].get(base)
        if lf and row:
            out.append({"what": f"exact top-{payload['k']} {size}: localfm / {base} (chunked) speed",
                        "value": row["median_s"] / lf["median_s"], "unit": "×", "target": ""})
    return out


def plot(payload: dict[str, Any], out_dir: Any) -> list[str]:
    from .plots import recall_time, retrieval_vs_size

    paths = [retrieval_vs_size(payload, out_dir)]
    if payload.get("approximate"):
        paths.append(recall_time(payload, out_dir))
    return paths


def tables(payload: dict[str, Any]) -> str:
    """Markdown: seconds / GFLOP/s / fraction of peak / agreement per size and engine."""
    peak = payload.get("sgemm_peak", {})
    after = payload.get("sgemm_peak_after", {})
    lines = [f"sgemm peak measured in this run: {peak.get('peak_gflops', 0):.0f} GFLOP/s at the start "
             f"(numpy {peak.get('numpy_gflops', 0):.0f}, torch {peak.get('torch_gflops', 0):.0f}), "
             f"{after.get('peak_gflops', 0):.0f} GFLOP/s at the end (the machine is shared: its speed drifts); "
             f"\"of peak\" below is relative to the higher one, {best_peak(payload):.0f} GFLOP/s.", "",
             "| users × items | engine | median s | GFLOP/s | of peak | vs FAISS | same sets as FAISS "
             "(differing users correct up to float32 ties) | exact up to ties (float64 sample) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in payload.get("exact", []):
        for name, e in s["engines"].items():
            extra = f" (scaled from {e['extrapolated_from_users']:,} users)" if "extrapolated_from_users" in e else ""
            same = e.get("same_sets_as_faiss")
            if same is not None and e.get("rows_differing"):
                ties = e.get("differing_rows_engine_exact_up_to_ties", float("nan"))
                same_txt = f"{same:.5f} ({e['rows_differing']} users: {ties:.2f})"
            else:
                same_txt = "—" if same is None else f"{same:.5f}"
            lines.append(f"| {s['users']:,} × {s['items']:,} | {name}{extra} | {e['median_s']:.2f} | {e['gflops']:.1f} | "
                         f"{e['gflops'] / best_peak(payload):.2f} | "
                         f"{'—' if name == 'faiss_flat_ip' else ratio_text(e.get('speedup_vs_faiss'), s.get('faiss_ratio'))} | "
                         f"{same_txt} | {e['agreement_vs_float64']['exact_up_to_ties']:.4f} |")
    notes = [f"- {s['users']:,} × {s['items']:,}: load {'/'.join(f'{x:.1f}' for x in s.get('load_average_before') or [])}"
             f" → {'/'.join(f'{x:.1f}' for x in s.get('load_average_after') or [])}; ratios vs FAISS "
             f"{'shown' if s['faiss_ratio']['shown'] else 'not shown'}: {s['faiss_ratio']['reason']}"
             for s in payload.get("exact", []) if s.get("faiss_ratio")]
    if notes:
        lines += ["", f"Ratios vs FAISS are shown only when FAISS ran within {RATIO_TOLERANCE:.0%} of its best quiet "
                  f"run (load average < {QUIET_LOAD}) recorded for the shape:", "", *notes]
    ann = payload.get("approximate")
    if ann:
        lines += ["", f"Approximate indexes on {ann['users']:,} × {ann['items']:,} ({ann['queries']:,} sampled users, "
                  f"exact FAISS search {ann['exact_reference']['search_s']:.2f} s; nlist {ann.get('nlist')}; build "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in ann["build_s"].items()) + "):", "",
                  "| index | setting | search s | recall@k | speed vs exact |", "| --- | --- | --- | --- | --- |"]
        for name, pts in ann["curves"].items():
            for p in pts:
                lines.append(f"| {name} | {p['param']} | {p['search_s']:.3f} | {p['recall']:.3f} | {p['speedup_vs_flat']:.1f}× |")
    return "\n".join(lines) + "\n"
