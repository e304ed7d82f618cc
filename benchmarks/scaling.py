"""All-users top-x: single process vs Ray with 1 and 2 nodes (a script, not a test).

    python -m benchmarks.scaling --users 162000 --items 62000 --dim 65 --k 100 --cpus-per-node 2
    python -m benchmarks.scaling --smoke        # tiny sizes: checks the harness, not speed

Same FM-like vectors (:func:`benchmarks.topx_vs_faiss.vectors`) for every run. ``single``
ranks in this process with ``--cpus-per-node`` threads (``rank`` + the Parquet sink);
``ray1`` / ``ray2`` start a loopback cluster of 1 / 2 nodes with ``--cpus-per-node`` CPUs each
(:func:`localfm.scale.cluster.loopback_cluster`) and run :func:`localfm.scale.recommend_on_cluster`
into the same kind of Parquet file, with ``--actor-threads`` threads per actor and as many actors
as the nodes' CPUs hold. The default, 1, is the library's and the CLI's default: one single-thread
actor per CPU. ``--actor-threads 2`` gives one 2-thread actor per node. On 2 cores that was 0.5-4.1 s
slower a job in each of 7 alternated rounds (docs/scale.md): the driver's sink and Ray's own
processes preempt one ranker thread, and the other one waits for it.
Cluster start-up is reported separately and not in the job's wall time.

Reported per run: wall seconds, and for Ray the peak memory per node, as the sum of the
proportional set size (PSS: a page shared by k processes counts 1/k) of the node's raylet and
every process under it, sampled every 0.2 s. Each run also records the 1-minute load average
before and after it (``load_average_1m``). PSS is what shows the item matrix stored once per
node: the object store's shared pages are split across the actors that map them instead of
being counted once per actor as RSS would. CPU seconds per run (``single``: this process; Ray:
the driver plus every process under the nodes' raylets, sampled likewise), which still compare
on a busy machine. Also: Ray overhead = ray1 / single - 1 (goal <= 15% at 162k x 62k x 65), the
same in CPU seconds (``ray_cpu_overhead``), speed-up = ray1 / ray2, and whether every run stored
the same rows.

Training (modes ``train1`` / ``train2``): multi-instance FM training
(:func:`localfm.scale.train_on_cluster`) on one loopback cluster of 2 nodes, 1 instance x batch
2b vs 2 instances x batch b (``ShardedByS3Key``, one kv server): the same total batch, so the same
model up to float32 rounding (reported as ``max_weight_diff``). Synthetic one-hot user/item rows
(``--train-rows``, ``--train-features``), written as RecordIO files of b rows each.

The machine must be quiet for the numbers to mean anything; never run this at full size on a
shared machine. Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.topx_vs_faiss import vectors

REPO = Path(__file__).resolve().parents[1]


def synthetic_rep(n_users: int, n_items: int, dim: int, seed: int = 0) -> Any:
    """Repackaged vectors without a model: FM-like users/items, zero per-user constants."""
    from localfm.recommend.vectors import Repackaged

    U, I = vectors("fm", n_users, n_items, dim, seed)
    return Repackaged(user_ids=np.arange(1, n_users + 1), user_vectors=U, user_constants=np.zeros(n_users),
                      item_ids=np.arange(1, n_items + 1), item_vectors=I, predictor_type="regressor")


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


class NodeMemory:
    """Peak PSS per raylet process tree, sampled in a thread while the block runs; also the CPU
    seconds the trees' processes spent meanwhile (:attr:`cpu_seconds`: on a shared machine wall
    time says little, CPU time still compares runs; a process that exits between two samples
    loses at most its last 0.2 s)."""

    def __init__(self, raylet_pids: list[int], every: float = 0.2) -> None:
        self.raylets, self.every = raylet_pids, every
        self.peak = {pid: 0 for pid in raylet_pids}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._sampled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = _children()
            for root in self.raylets:
                tree, todo = [], [root]
                while todo:
                    p = todo.pop()
                    tree.append(p)
                    todo.extend(kids.get(p, []))
                self.peak[root] = max(self.peak[root], sum(_pss_kb(p) for p in tree) * 1024)
                for p in tree:
                    used = _cpu_seconds(p)
                    self._cpu_start.setdefault(p, 0.0 if self._sampled else used)
                    self._cpu_last[p] = max(self._cpu_last.get(p, 0.0), used)
            self._sampled = True
            self._stop.wait(self.every)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the nodes' processes during the block (processes born meanwhile: all of theirs)."""
        return sum(self._cpu_last[p] - self._cpu_start[p] for p in self._cpu_last)

    def __enter__(self) -> NodeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _digest(path: Path) -> str:
    """sha256 of a flat Parquet result's rows in (user_id, rank) order: equal digests, identical rows
    (holding every run's 16M rows as Python lists to compare them took GBs)."""
    import hashlib

    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["user_id", "rank", "item_id", "score"])
    table = table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(np.ascontiguousarray(table.column(name).to_numpy()).tobytes())
    return h.hexdigest()


def run_single(rep: Any, k: int, threads: int, out: Path) -> dict[str, Any]:
    from localfm.recommend.recommend import rank
    from localfm.recommend.sinks import write_results

    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    recs = rank(rep, k=k, threads=threads)
    write_results(str(out), recs)
    return {"mode": "single", "threads": threads, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0, "skipped_fraction": recs.summary().get("skipped_fraction"),
            "load_average_1m": [load, os.getloadavg()[0]]}


def run_ray(rep: Any, k: int, nodes: int, cpus: int, out: Path, object_store: int,
            jobs: int = 2, actor_threads: int = 1) -> list[dict[str, Any]]:
    """``jobs`` identical jobs, one after the other, on one fresh cluster: one result per job.

    Job 1 (``mode`` ``rayN``) is the first job on a fresh cluster: it also starts Ray Data's
    helper actors (stats, autoscaling coordinator, actor locations), which live as long as the
    cluster. Later jobs (``rayN_warm``) are what a job on a running cluster (``--ray ADDRESS``)
    costs. Each job starts its own actor pool either way, and writes its own ``out``.
    """
    from localfm.scale import recommend_on_cluster
    from localfm.scale.cluster import loopback_cluster

    results = []
    t0 = time.perf_counter()
    with loopback_cluster(nodes=nodes, cpus_per_node=cpus, object_store_bytes=object_store,
                          pythonpath=str(REPO)) as cluster:
        started = time.perf_counter() - t0
        raylets = [n.all_processes["raylet"][0].process.pid for n in cluster.list_all_nodes()]
        for job in range(jobs):
            load = os.getloadavg()[0]
            with NodeMemory(raylets) as mem:
                t1, c1 = time.perf_counter(), time.process_time()
                run = recommend_on_cluster(rep, k=k, target=str(out.with_name(f"{out.stem}-{job}{out.suffix}")),
                                           cluster=cluster.address, threads=actor_threads)
                seconds, driver_cpu = time.perf_counter() - t1, time.process_time() - c1
            results.append({
                "mode": f"ray{nodes}" if job == 0 else f"ray{nodes}_warm", "job_on_cluster": job + 1,
                "nodes": nodes, "cpus_per_node": cpus, "seconds": seconds,
                # the driver's (this process's) CPU plus every process of the cluster's nodes
                "cpu_seconds": driver_cpu + mem.cpu_seconds,
                "skipped_fraction": run.summary().get("skipped_fraction"),
                "cluster_start_seconds": started, "workers": run.workers, "threads_per_actor": actor_threads,
                "load_average_1m": [load, os.getloadavg()[0]],  # before / after the job (a shared machine shows here)
                "peak_pss_bytes_per_node": [mem.peak[p] for p in raylets],
                "item_matrix_bytes": int(rep.item_vectors.nbytes)})
    return results


def write_training_channel(folder: Path, rows: int, features: int, batch: int, seed: int = 0) -> None:
    """``rows`` one-hot (user, item) rows with 0/1 labels, as RecordIO files of ``batch`` rows each."""
    import scipy.sparse as sp

    from localfm.io.recordio import write_sparse

    rng = np.random.default_rng(seed)
    half = features // 2
    cols = np.stack([rng.integers(0, half, rows), rng.integers(half, features, rows)], axis=1).reshape(-1)
    X = sp.csr_matrix((np.ones(2 * rows, dtype=np.float32), (np.repeat(np.arange(rows), 2), cols)),
                      shape=(rows, features))
    y = rng.integers(0, 2, rows).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i, lo in enumerate(range(0, rows, batch)):
        with open(folder / f"part-{i:06d}.protobuf", "wb") as fh:
            write_sparse(fh, X[lo: lo + batch], y[lo: lo + batch])


def run_training(rows: int, features: int, dim: int, batch: int, cpus: int, object_store: int,
                 tmp: Path) -> list[dict[str, Any]]:
    """1 instance x batch 2b, then 2 instances x batch b, on one 2-node loopback cluster."""
    from localfm.scale import train_on_cluster
    from localfm.scale.cluster import loopback_cluster

    channel = tmp / "train"
    write_training_channel(channel, rows, features, batch)
    hp = {"feature_dim": features, "num_factors": dim, "predictor_type": "binary_classifier", "epochs": 1,
          "_num_kv_servers": 1}
    out, models = [], []
    with loopback_cluster(nodes=2, cpus_per_node=cpus, object_store_bytes=object_store,
                          pythonpath=str(REPO)) as cluster:
        for instances in (1, 2):
            t0 = time.perf_counter()
            job = train_on_cluster(str(channel), {**hp, "mini_batch_size": 2 * batch // instances},
                                   cluster=cluster.address, instance_count=instances,
                                   distribution="ShardedByS3Key", seed=0)
            out.append({"mode": f"train{instances}", "instances": instances,
                        "mini_batch_size": 2 * batch // instances, "kv_servers": job.kv_servers,
                        "rows": rows, "seconds": time.perf_counter() - t0,
                        "train_metrics": job.log.train_metrics_per_epoch[-1]})
            models.append(job.model)
    diff = float(max(np.abs(models[0].V_ - models[1].V_).max(), np.abs(models[0].w_ - models[1].w_).max()))
    for r in out:
        r["max_weight_diff"] = diff
    return out


MODES = ("single", "ray1", "ray2", "train")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=162_000)
    ap.add_argument("--items", type=int, default=62_000)
    ap.add_argument("--dim", type=int, default=65)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--cpus-per-node", type=int, default=2)
    ap.add_argument("--actor-threads", type=int, default=1,
                    help="threads per Ray actor (default 1, as recommend_on_cluster: one actor per CPU)")
    ap.add_argument("--object-store-mb", type=int, default=1024)
    ap.add_argument("--modes", default="single,ray1,ray2,train")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--train-features", type=int, default=20_000)
    ap.add_argument("--train-batch", type=int, default=1000, help="b: 2 instances x b vs 1 instance x 2b")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every mode this many times, modes interleaved; ratios use the medians")
    ap.add_argument("--jobs", type=int, default=2,
                    help="top-x jobs per fresh cluster: the first pays Ray Data's helper actors, later ones "
                         "are jobs on a running cluster (mode rayN_warm)")
    ap.add_argument("--no-preload", action="store_true",
                    help="workers import nothing ahead (RAY_preload_python_modules empty), to measure "
                         "localfm.scale.cluster.WORKER_PRELOAD against its absence")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: 3000 users x 2000 items x 16, k=10")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaling.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.users, args.items, args.dim, args.k, args.cpus_per_node = 3000, 2000, 16, 10, 1
        args.object_store_mb = 200
        args.train_rows, args.train_features, args.train_batch = 2000, 400, 100
    unknown = [m for m in args.modes.split(",") if m not in MODES]
    if unknown:  # before minutes of measuring, not after
        ap.error(f"--modes: unknown mode {unknown[0]!r} ({', '.join(MODES)})")
    saved = os.environ.get("RAY_preload_python_modules")
    if args.no_preload:
        os.environ["RAY_preload_python_modules"] = ""  # worker_env() keeps a value the caller set
    try:
        return _run(args)
    finally:
        if saved is None:
            os.environ.pop("RAY_preload_python_modules", None)
        else:
            os.environ["RAY_preload_python_modules"] = saved


def _run(args: argparse.Namespace) -> int:
    from localfm.io.atomic import atomic_write
    from localfm.scale.cluster import worker_env

    rep = synthetic_rep(args.users, args.items, args.dim)
    preload = worker_env()["RAY_preload_python_modules"]

    load_before = os.getloadavg()

    results, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="lfbench") as tmp:
        for rnd, mode in ((r, m) for r in range(args.rounds) for m in args.modes.split(",")):
            out = Path(tmp) / f"{mode}.parquet"
            if mode == "train":
                runs = run_training(args.train_rows, args.train_features, args.dim, args.train_batch,
                                    args.cpus_per_node, args.object_store_mb * 1024**2, Path(tmp) / f"train-{rnd}")
                for r in runs:
                    r["round"] = rnd + 1
                results += runs
                print(json.dumps(runs), file=sys.stderr)
                continue
            if mode == "single":
                runs = [run_single(rep, args.k, args.cpus_per_node, out)]
                written = [out]
            elif mode in ("ray1", "ray2"):
                runs = run_ray(rep, args.k, int(mode[-1]), args.cpus_per_node, out,
                               args.object_store_mb * 1024**2, jobs=args.jobs, actor_threads=args.actor_threads)
                written = [out.with_name(f"{out.stem}-{j}{out.suffix}") for j in range(len(runs))]
            else:  # main() checked the modes
                raise AssertionError(mode)
            for r, path in zip(runs, written):
                r["round"] = rnd + 1
                results.append(r)
                outputs[(r["mode"], rnd, str(path))] = _digest(path)
                path.unlink()
                print(json.dumps(r), file=sys.stderr)
    first = next(iter(outputs.values()), None)
    report: dict[str, Any] = {
        "size": {"users": args.users, "items": args.items, "dim": args.dim, "k": args.k},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "worker_preload": preload,  # what the clusters' workers imported ahead ("" = nothing)
        # a loopback cluster shares this machine: its own processes raise the "after" figure
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "runs": results,
        "identical_rows": all(o == first for o in outputs.values()),
    }
    # medians over the rounds: this machine's speed drifts by 20 % and more between minutes
    by = {m: float(np.median([r["seconds"] for r in results if r["mode"] == m])) for m in {r["mode"] for r in results}}
    cpu = {m: float(np.median([r["cpu_seconds"] for r in results if r["mode"] == m]))
           for m in {r["mode"] for r in results if "cpu_seconds" in r}}
    report["median_seconds"] = dict(sorted(by.items()))
    for ray in ("ray1", "ray1_warm"):
        if "single" in by and ray in by:
            report[ray.replace("ray1", "ray_overhead")] = by[ray] / by["single"] - 1.0
            report[ray.replace("ray1", "ray_cpu_overhead")] = cpu[ray] / cpu["single"] - 1.0
    if "ray1" in by and "ray2" in by:
        report["speedup_2_nodes"] = by["ray1"] / by["ray2"]
    if "train1" in by and "train2" in by:
        report["train_2_instances_vs_1"] = by["train1"] / by["train2"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(args.out), "w") as fh:
        fh.write(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
    return 0 if report["identical_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
