"""All-users top-x on a Ray cluster: the single-process ranking, fanned out over an actor pool.

Why it looks like this:

* **Users stream, items are broadcast.** Users are written once to Parquet shards of
  ``shard_users`` consecutive rows, one row group per user batch; Ray Data ``map_batches``
  hands the row groups to a pool of actors, each of which reads its row group itself (see
  :meth:`_Job.run_shards` for why not Ray Data's Parquet reader). The candidate item
  matrix is ``ray.put`` once: Ray keeps one copy per node in its shared-memory object
  store and every actor on that node maps it zero-copy.
  Each actor builds its engine once (the exact engine needs only the item matrix; a
  FAISS index is built once on the driver, ``ray.put`` as bytes and loaded once per actor,
  so every user is searched in the very same index and a resumed job keeps it).
* **No shuffle.** Each user's already-rated items travel in the user's own row
  (``seen list<int32>`` of candidate-item positions), so exclusion is local.
* **The same arithmetic.** Actors call the single-process pieces
  (:func:`localfm.recommend.recommend.exact_batches` / ``index_batches`` / ``to_result_batch``) on their
  users, so results equal ``localfm.recommend.recommend.recommend(...)`` row for row.
* **Nothing half-written; resumable.** Actors write result parts into a staging directory
  (each part atomically, named by its first user row, so a retried task overwrites its own
  part). The driver records reported parts in ``manifest.json`` as shards complete. Only
  when every user is covered exactly once is the output committed: a directory swap for
  the nested Parquet layout, or the existing sinks (one transaction for SQLite and
  PostgreSQL COPY, a file rename for Parquet/JSON Lines) for the flat layout; the flat sink
  is open during the job and written in user order as parts arrive, so the commit does not
  write every row after the last batch. A job that dies leaves the previous output
  untouched; ``resume=True`` skips finished shards.

The staging directory must be visible to every node (same machine, or a shared file
system): actors write parts there and the driver reads them back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..device import CPU, check_device_name
from ..errors import LocalFMError
from ..io.atomic import atomic_write
from ..progress import set_quiet
from ..recommend.recommend import (
    EXACT,
    RecommendOptions,
    RecommendStats,
    approx_index,
    exact_batches,
    index_batches,
    rank,
    resolve_options,
    to_result_batch,
)
from ..recommend.sinks import ResultBatch, id_kind, open_sink, redact, sink_kind
from ..recommend.topx import prepare_items
from ..recommend.vectors import Repackaged
from .cluster import actor_slots, connect, parse_cluster

LAYOUTS = ("flat", "nested")
#: SQLite is one file written by one process: fine for a small job's results, not for 1e10 rows.
SQLITE_MAX_ROWS = 100_000_000
MANIFEST = "manifest.json"
_MANIFEST_VERSION = 2  # 2: parts record [users, rows, scores skipped, scores total]


@dataclass
class ClusterRun:
    """What a cluster job did: the single-process :class:`RecommendStats` plus the cluster's side."""

    stats: RecommendStats
    out: str
    layout: str = "flat"
    shards: int = 0
    skipped_shards: int = 0
    workers: int = 0
    nodes: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The single-process summary's fields, then the cluster's (the CLI prints this)."""
        s = self.stats
        out: dict[str, Any] = {
            "out": self.out, "users": s.users, "items": s.items, "rows": s.rows, "k": s.k, "index": s.index,
            "index_metric": s.index_metric, "exclude_seen": s.exclude_seen, "seconds": round(s.seconds, 3),
            "score": "sigmoid(fm score)" if s.sigmoid else "fm score",
        }
        for key in ("recall", "nprobe"):
            if getattr(s, key) is not None:
                out[key] = getattr(s, key)
        if s.scores_total:
            out["skipped_fraction"] = round(s.scores_skipped / s.scores_total, 4)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        out["cluster"] = {"layout": self.layout, "shards": self.shards, "skipped_shards": self.skipped_shards,
                          "workers": self.workers, "nodes": self.nodes}
        return out


# ---------------------------------------------------------------- driver


def recommend_on_cluster(
    rep: Repackaged,
    options: RecommendOptions | None = None,
    *,
    target: str,
    cluster: str = "auto",
    workers: int | None = None,
    seen: sp.csr_matrix | None = None,
    item_rows: np.ndarray | None = None,
    layout: str = "flat",
    table: str = "recommendations",
    lock_timeout: float = 5.0,
    work_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    shard_users: int | None = None,
    max_retries: int = 3,
    batch_hook: Callable[[int], None] | None = None,
    **option_fields: Any,
) -> ClusterRun:
    """Top-``k`` items for every user of ``rep`` on a Ray cluster, committed to ``target``.

    ``rep``, ``options`` / option keywords (``k``, ``index``, ``batch_size`` ...), ``seen`` and
    ``item_rows`` mean what they mean in :func:`localfm.recommend.recommend.rank`; the rows
    stored are the ones ``rank(...)`` streams, in the same order. ``threads`` is per actor
    and each actor reserves that many CPUs (default 1). Cluster keywords:

    ``cluster``: ``local:N`` | ``auto`` | ``host:port`` (see :mod:`.cluster`); an existing
    ``ray.init`` connection is used as is. ``workers``: actors in the pool (default: as many
    as the nodes hold, ``threads`` CPUs each). ``layout``: ``flat`` writes today's ``(user_id, rank, item_id, score)``
    rows to any sink (:func:`~localfm.recommend.sinks.open_sink`); ``nested`` writes a directory
    ``target`` of Parquet parts with one row per user, ``items list<int32>`` (int64 when ids do not
    fit, string for text ids) and ``scores list<float32>``. ``work_dir``: staging and manifest
    (default: next to a file ``target``, else under the current directory). ``resume``: keep the
    shards a previous run of the *same* job finished. ``shard_users``: users per input shard,
    the unit of resume (rounded up to whole batches; default 16 batches). ``max_retries``:
    restarts of a dead actor and retries of its batch before the job fails.
    ``batch_hook(first_row)`` runs in the actor before each batch (progress reporting; the
    tests slow a job down with it).

    Raises :class:`LocalFMError` on bad input (before any cluster work), and when the job
    fails: the message says how many shards finished and that ``resume=True`` continues;
    ``target`` is untouched then.
    """
    parse_cluster(cluster)
    # The name is checked as the single process checks it (so "CPU" is the CPU and "gpu" a
    # spelling error), before refusing every accelerator here.
    device = check_device_name(option_fields.get("device", options.device if options is not None else "cpu"))
    if device != CPU:
        raise LocalFMError(f"device: actors rank on their CPUs; {device!r} is for the single process "
                           "(leave device=cpu with a cluster)", param="device")
    opts = resolve_options(options, None, option_fields)
    # rank() checks the inputs and fills the stats skeleton; it ranks nothing until iterated,
    # and it is never iterated here: the ranking happens on the cluster.
    recs = rank(rep, opts, seen=seen, item_rows=item_rows)
    stats = recs.stats
    opts = dataclasses.replace(opts, index=stats.index, threads=opts.threads or 1)
    job = _Job.prepare(rep, opts, stats, out=target, seen=seen, item_rows=item_rows, layout=layout, table=table,
                       lock_timeout=lock_timeout, work_dir=work_dir, shard_users=shard_users,
                       max_retries=max_retries)
    run = ClusterRun(stats=stats, out=redact(target), layout=layout, shards=job.n_shards, warnings=list(recs.warnings))
    previous = job.previous(resume)  # a mismatched resume fails here, before any cluster work
    t0 = time.perf_counter()
    with connect(cluster) as ray, contextlib.ExitStack() as output:
        # Each actor holds ``threads`` CPUs: fewer, wider actors keep fewer engine copies per node.
        most = actor_slots(ray, opts.threads)
        if most < 1:
            raise LocalFMError(f"threads: {opts.threads} per actor, but no node of the cluster has that many CPUs",
                               param="threads")
        n_workers = most if workers is None else workers
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or not 1 <= n_workers <= most:
            raise LocalFMError(f"workers: expected 1..{most} (actors of `threads` CPUs the nodes can hold), "
                               f"got {workers!r}", param="workers")
        run.workers = n_workers
        run.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        done = job.open_manifest(previous)
        run.skipped_shards = len(done)
        output.enter_context(job.output())
        pending = [s for s in range(job.n_shards) if s not in done]
        if pending:
            shared = job.shared_items(ray)
            job.run_shards(ray, pending, shared, n_workers, batch_hook)
        stats.rows = job.commit()
    job.drop_staging()  # only now: the output is committed
    stats.seconds = time.perf_counter() - t0
    return run


@dataclass
class _Job:
    """One cluster top-x job: inputs checked, staging laid out, manifest kept."""

    rep: Repackaged
    opts: RecommendOptions
    stats: RecommendStats
    out: str
    items: np.ndarray  # candidate item vectors (float32)
    item_ids: np.ndarray  # ids of the candidate items
    seen: sp.csr_matrix | None  # (users, candidate items)
    layout: str
    table: str
    lock_timeout: float
    work: Path
    shard_users: int
    max_retries: int
    manifest: dict[str, Any] | None = None
    _write: Callable[[ResultBatch], None] | None = None  # the open sink (flat layout), see output()
    _next: int = 0  # first user row not yet written to the sink
    _fingerprint: str | None = None  # see fingerprint()

    @property
    def n_users(self) -> int:
        return int(self.rep.user_vectors.shape[0])

    @property
    def n_shards(self) -> int:
        return -(-self.n_users // self.shard_users)

    @property
    def parts_dir(self) -> Path:
        return self.work / "parts"

    @classmethod
    def prepare(cls, rep: Repackaged, opts: RecommendOptions, stats: RecommendStats, *, out: str,
                seen: sp.csr_matrix | None, item_rows: Any, layout: str, table: str, lock_timeout: float,
                work_dir: Any, shard_users: int | None, max_retries: int) -> _Job:
        if layout not in LAYOUTS:
            raise LocalFMError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}", param="layout")
        out = str(out)
        if layout == "flat":
            kind = sink_kind(out)
            if kind == "sqlite" and stats.users * min(stats.k, stats.items) > SQLITE_MAX_ROWS:
                raise LocalFMError(f"target {out}: SQLite is for small jobs (at most {SQLITE_MAX_ROWS:,} rows, "
                                   f"this job makes up to {stats.users * min(stats.k, stats.items):,}); use Parquet or "
                                   "PostgreSQL", param="target")
        elif out.startswith(("postgres", "sqlite:")) or Path(out).suffix.lower() in (".sqlite", ".sqlite3", ".db",
                                                                                       ".jsonl", ".ndjson"):
            raise LocalFMError(f"target {redact(out)}: the nested layout writes a directory of Parquet parts",
                               param="target")
        elif Path(out).is_file():
            raise LocalFMError(f"target {out}: is a file, the nested layout writes a directory of Parquet parts",
                               param="target")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise LocalFMError(f"max_retries: expected an integer >= 0, got {max_retries!r}", param="max_retries")
        if shard_users is None:
            shard_users = 16 * opts.batch_size
        if isinstance(shard_users, bool) or not isinstance(shard_users, int) or shard_users <= 0:
            raise LocalFMError(f"shard_users: expected a positive integer, got {shard_users!r}", param="shard_users")
        # Whole batches per shard: actors then see the batches the single process sees.
        shard_users = -(-shard_users // opts.batch_size) * opts.batch_size
        rows = np.arange(len(rep.item_ids), dtype=np.int64) if item_rows is None else np.asarray(item_rows)
        sub_seen = None
        if seen is not None:
            sub_seen = sp.csr_matrix(seen)[:, rows].tocsr()
            sub_seen.sort_indices()
        if work_dir is None:
            if layout == "flat" and sink_kind(out) == "postgresql":
                tag = hashlib.sha256(f"{redact(out)}|{table}".encode()).hexdigest()[:12]
                work_dir = Path.cwd() / f".localfm-job-{tag}"
            else:
                p = Path(out.removeprefix("sqlite:///"))
                work_dir = p.parent / f".{p.name}.localfm-job"
        return cls(rep=rep, opts=opts, stats=stats, out=out,
                   items=np.ascontiguousarray(rep.item_vectors[rows], dtype=np.float32),
                   item_ids=np.asarray(rep.item_ids)[rows], seen=sub_seen, layout=layout, table=table,
                   lock_timeout=float(lock_timeout), work=Path(work_dir), shard_users=shard_users,
                   max_retries=max_retries)

    # ------------------------------------------------------------ manifest

    def fingerprint(self) -> str:
        """Everything that decides the result: a resumed job must be the same job (hashed once:
        ~0.1 s per 40 MB of vectors, on the driver before any actor starts)."""
        if self._fingerprint is None:
            self._fingerprint = self._hash_inputs()
        return self._fingerprint

    def _hash_inputs(self) -> str:
        h = hashlib.sha256()
        settings = {"opts": dataclasses.asdict(self.opts), "shard": self.shard_users, "layout": self.layout,
                    "pt": self.rep.predictor_type}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
        arrays = [self.rep.user_ids, self.rep.user_vectors, self.rep.user_constants, self.item_ids, self.items]
        if self.seen is not None:
            arrays += [self.seen.indptr, self.seen.indices]
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes() if a.dtype.kind != "U" else "\x00".join(a.tolist()).encode())
        return h.hexdigest()

    def previous(self, resume: bool) -> dict[str, Any] | None:
        """The manifest of the staged job to resume (checked to be this job), or None."""
        fp = self.fingerprint()
        path = self.work / MANIFEST
        old = None
        if resume and path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise LocalFMError(f"{path}: unreadable job manifest ({exc}); rerun without resume",
                                   param="resume") from None
            if old.get("version") != _MANIFEST_VERSION or old.get("fingerprint") != fp:
                raise LocalFMError(f"{path}: the staged job has different inputs or settings; "
                                   "rerun without resume to start over", param="resume")
        return old

    def open_manifest(self, old: dict[str, Any] | None) -> set[int]:
        """Shards already finished (in ``old``, see :meth:`previous`) and a clean staging area for the rest."""
        if old is None:
            if self.work.exists():
                shutil.rmtree(self.work)
            old = {"version": _MANIFEST_VERSION, "fingerprint": self.fingerprint(), "n_users": self.n_users,
                   "shard_users": self.shard_users, "done": [], "parts": {}}
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            (self.work / "users").mkdir(exist_ok=True)
        except OSError as exc:
            raise LocalFMError(f"work_dir {self.work}: cannot create the staging directory ({exc.strerror})") from None
        done = {int(s) for s in old["done"]}
        # Parts of unfinished shards are redone whole: drop them, on disk and in the manifest.
        old["parts"] = {f: n for f, n in old["parts"].items() if int(f) // self.shard_users in done}
        keep = {_part_name(int(f), self.layout) for f in old["parts"]}
        for p in self.parts_dir.iterdir():
            if p.name not in keep:
                p.unlink()
        self.manifest = old
        self._save_manifest()
        return done

    def _save_manifest(self) -> None:
        with atomic_write(self.work / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(self.manifest, fh)

    def _record(self, first: int, users: int, rows: int, skipped: int, total: int,
                done_users: dict[int, int]) -> None:
        assert self.manifest is not None
        # The exact engine's pruning counts travel with the part, so a resumed job reports them whole.
        self.manifest["parts"][str(first)] = [users, rows, skipped, total]
        shard = first // self.shard_users
        done_users[shard] = done_users.get(shard, 0) + users
        if done_users[shard] >= self._shard_size(shard):
            self.manifest["done"].append(shard)
            self._save_manifest()
        self._feed()

    def _shard_size(self, shard: int) -> int:
        return min(self.shard_users, self.n_users - shard * self.shard_users)

    # ------------------------------------------------------------ running

    def _write_user_shard(self, shard: int) -> tuple[Path, int]:
        """Users ``shard*S .. (shard+1)*S`` with vector, constant and seen items in one row each,
        one Parquet row group per user batch; returns (path, row groups)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        a = shard * self.shard_users
        b = a + self._shard_size(shard)
        d = self.items.shape[1]
        U = np.ascontiguousarray(self.rep.user_vectors[a:b], dtype=np.float32)
        if self.seen is not None:
            sub = self.seen[a:b]
            offsets = (sub.indptr - sub.indptr[0]).astype(np.int32)
            seen_col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(sub.indices.astype(np.int32)))
        else:
            seen_col = pa.ListArray.from_arrays(pa.array(np.zeros(b - a + 1, np.int32)), pa.array([], pa.int32()))
        ids = np.asarray(self.rep.user_ids[a:b])
        table = pa.table({
            "row": pa.array(np.arange(a, b, dtype=np.int64)),
            "user_id": pa.array(ids.astype(np.int64) if ids.dtype.kind in "iu" else [str(x) for x in ids.tolist()]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(U.reshape(-1)), d),
            "const": pa.array(np.asarray(self.rep.user_constants[a:b], dtype=np.float64)),
            "seen": seen_col,
        })
        path = self.work / "users" / f"shard-{shard:06d}.parquet"
        # Staging read once, by row group: no dictionaries (float vectors and item positions do not
        # repeat; trying cost ~4x the write, ~1 s of the driver at 162k users, before any actor
        # could start) and no statistics (nothing filters on them).
        with atomic_write(path) as fh:
            pq.write_table(table, fh, row_group_size=self.opts.batch_size, use_dictionary=False,
                           write_statistics=False)
        return path, -(-(b - a) // self.opts.batch_size)

    def shared_items(self, ray: Any) -> Any:
        """The broadcast side, ``ray.put`` once: item vectors, their ids, and the engine's item side
        (:func:`~localfm.recommend.topx.prepare_items`, prepared here once for every actor) or the index bytes.

        Prepared on the driver, the exact engine's item side (norm-sorted copy, per-block transposes,
        pruning bounds) is one read-only copy per node in the object store instead of one private copy
        per actor, and no actor spends start-up time preparing it. ``precision="auto"`` is resolved
        here, by the driver's CPU; results are exact whichever screening the actors use.
        """
        side: dict[str, Any] = {"vectors": self.items, "ids": self.item_ids, "index": None, "prepared": None}
        if self.opts.index == EXACT:
            side["prepared"] = prepare_items(self.items, precision=self.opts.precision)
        if self.opts.index != EXACT:
            path, about = self.work / "index.bin", self.work / "index.json"
            if not path.is_file():  # a resumed job keeps the index its finished shards used
                from ..knn.index import configure_threads

                configure_threads()
                idx = approx_index(self.rep.user_vectors, self.items, self.seen, self.opts, self.stats)
                with atomic_write(about, "w", encoding="utf-8") as fh:
                    json.dump({"nprobe": self.stats.nprobe, "recall": self.stats.recall}, fh)
                with atomic_write(path) as fh:
                    fh.write(idx.to_bytes())
            else:
                saved = json.loads(about.read_text(encoding="utf-8"))
                self.stats.nprobe, self.stats.recall = saved["nprobe"], saved["recall"]
            side["index"] = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        return ray.put(side)

    def run_shards(self, ray: Any, shards: list[int], shared: Any, workers: int,
                   batch_hook: Callable[[int], None] | None) -> None:
        # One work item per user batch (a row group of a shard file): the unit an actor ranks.
        # The actors read their row group themselves, from the staging directory every node sees
        # (it receives their parts too). Ray Data's Parquet reader would start a sampling task and
        # read tasks, each in a Python worker process of its own (seconds of CPU to start on a
        # small node, paid again whenever Ray reaps an idle one), and copy every user through the
        # object store; a batch-sized work item keeps the pool balanced as before.
        work = []
        for s in shards:
            path, groups = self._write_user_shard(s)
            work += [{"path": str(path), "group": g} for g in range(groups)]
        ctx = ray.data.DataContext.get_current()
        before = ctx.enable_progress_bars
        ctx.enable_progress_bars = False
        self._done_users: dict[int, int] = {}
        try:
            self._stream(ray, work, shared, workers, batch_hook)
        finally:
            ctx.enable_progress_bars = before
        missing = [s for s in shards if self._done_users.get(s, 0) != self._shard_size(s)]
        if missing:
            raise LocalFMError(f"cluster job: {len(missing)} of {len(shards)} shards came back incomplete "
                               f"(first: shard {missing[0]}); rerun with resume=True")

    def _stream(self, ray: Any, work: list[dict[str, Any]], shared: Any, workers: int,
                batch_hook: Callable[[int], None] | None) -> None:
        ds = ray.data.from_items(work, override_num_blocks=min(len(work), 4 * workers))
        with warnings.catch_warnings():
            # Restart limits have no named parameter in Ray 2.60; the **kwargs form warns.
            warnings.simplefilter("ignore", DeprecationWarning)
            results = self._map(ray, ds, shared, workers, batch_hook)
        try:
            for part in results.iter_rows():
                self._record(int(part["first"]), int(part["users"]), int(part["rows"]), int(part["skipped"]),
                             int(part["total"]), self._done_users)
        except Exception as exc:  # Ray wraps worker failures in several exception types
            assert self.manifest is not None
            text = str(exc)
            if _START_FAILED in text:  # no retry or resume can help: say why the actors could not start
                why = text.split(_START_FAILED, 1)[1].strip().splitlines()[0]
                raise LocalFMError(f"cluster job: a top-x actor could not start ({why[:300]}); output not changed") \
                    from None
            finished = len(self.manifest["done"])
            first = (text.strip().splitlines() or [type(exc).__name__])[0]
            raise LocalFMError(
                f"cluster job failed ({type(exc).__name__}: {first[:300]}); {finished} of {self.n_shards} shards "
                f"finished and are kept in {self.work}: rerun with resume=True to finish (output not changed)"
            ) from None

    def _map(self, ray: Any, ds: Any, shared: Any, workers: int, batch_hook: Callable[[int], None] | None) -> Any:
        return ds.map_batches(
            _Ranker,
            fn_constructor_kwargs={
                "shared": [shared],  # in a list, so the actor resolves the reference itself (zero-copy)
                "config": {
                    "k": self.opts.k, "batch_size": self.opts.batch_size, "threads": self.opts.threads,
                    "sigmoid": self.opts.sigmoid,
                    "predictor_type": self.rep.predictor_type,
                    "parts_dir": str(self.parts_dir), "layout": self.layout,
                    "user_kind": id_kind(self.rep.user_ids), "hook": batch_hook,
                },
            },
            batch_size=1,  # one work item (user batch) per call
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=self.opts.threads,
            max_restarts=self.max_retries,
            max_task_retries=self.max_retries,
        )

    # ------------------------------------------------------------ commit

    def _parts_in_order(self) -> list[tuple[int, int]]:
        """(first row, users) of every recorded part, checked to cover each user exactly once."""
        assert self.manifest is not None
        parts = sorted((int(f), int(v[0])) for f, v in self.manifest["parts"].items())
        at = 0
        for first, users in parts:
            if first != at:
                raise LocalFMError(f"{self.work}: staged parts do not cover users {at}..{first - 1} exactly once; "
                                   "rerun without resume")
            at = first + users
        if at != self.n_users:
            raise LocalFMError(f"{self.work}: staged parts cover {at} of {self.n_users} users; rerun with resume=True")
        return parts

    @contextlib.contextmanager
    def output(self) -> Iterator[None]:
        """Flat layout: the sink, open while the actors rank, fed the parts in user order as they
        arrive (:meth:`_feed`), as the single process writes while it ranks: the commit then has
        little left to write after the last batch. The sink replaces the previous output only on a
        normal exit, after :meth:`commit` checked that every user is in; a failed job leaves it
        untouched. (An SQLite target is locked from here on: SQLite is for small jobs.)"""
        if self.layout == "nested":
            yield
            return
        kinds = {"user_id_kind": id_kind(self.rep.user_ids), "item_id_kind": id_kind(self.item_ids)}
        with open_sink(self.out, table=self.table, lock_timeout=self.lock_timeout, **kinds) as write:
            self._write, self._next = write, 0
            try:
                self._feed()  # parts a resumed job finished before
                yield
            finally:
                self._write = None

    def _feed(self) -> None:
        """Write the recorded parts that continue the open sink's user order."""
        if self._write is None:
            return
        assert self.manifest is not None
        parts = self.manifest["parts"]
        while str(self._next) in parts:
            self._write(_explode(self.parts_dir / _part_name(self._next, self.layout)))
            self._next += int(parts[str(self._next)][0])

    def commit(self) -> int:
        """Check that every user is covered once, finish the output (the rest of the parts, or the
        nested directory swap); return the row count. The flat sink commits when :meth:`output` exits."""
        self._parts_in_order()
        assert self.manifest is not None
        rows = sum(int(v[1]) for v in self.manifest["parts"].values())
        self.stats.scores_skipped = sum(int(v[2]) for v in self.manifest["parts"].values())
        self.stats.scores_total = sum(int(v[3]) for v in self.manifest["parts"].values())
        if self.layout == "nested":
            _swap_dir(self.parts_dir, Path(self.out))
        else:
            self._feed()
            if self._next != self.n_users:  # cannot happen after _parts_in_order; never commit a gap
                raise LocalFMError(f"{self.work}: staged parts reach user {self._next} of {self.n_users}; "
                                   "rerun without resume")
        return rows

    def drop_staging(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _part_name(first: int, layout: str) -> str:
    """Nested parts are the published Parquet; flat parts are only staging for the sinks, so they are
    Arrow IPC files: written and memory-mapped back without any encoding (Parquet staging cost the
    actors and the commit a second encode and decode of every result row)."""
    return f"part-{first:012d}.{'parquet' if layout == 'nested' else 'arrow'}"


def _explode(path: Path) -> ResultBatch:
    """A staged flat-layout part (Arrow IPC, one row per user) as flat ``(user_id, rank, item_id, score)`` rows."""
    import pyarrow as pa

    t = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # the map lives as long as the table
    items = t.column("items").combine_chunks()
    scores = t.column("scores").combine_chunks()
    offsets = np.asarray(items.offsets)
    lens = np.diff(offsets)
    users = t.column("user_id").to_numpy(zero_copy_only=False)
    rank = (np.arange(int(lens.sum())) - np.repeat(offsets[:-1] - offsets[0], lens) + 1).astype(np.int32)
    return ResultBatch(
        user_id=np.repeat(users, lens),
        rank=rank,
        item_id=items.flatten().to_numpy(zero_copy_only=False),
        score=scores.flatten().to_numpy(zero_copy_only=False),
    )


def _swap_dir(new: Path, out: Path) -> None:
    """Put directory ``new`` at ``out``: the previous directory stays whole until the rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(new, out)
        except OSError:
            if old.exists():
                os.rename(old, out)
            raise
    except OSError as exc:
        raise LocalFMError(f"{out}: cannot commit the result ({exc.strerror or exc}; the staging directory "
                           "must be on the same file system; previous results kept)") from None
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- worker side


#: Marks the error of an actor that could not start, so the driver can tell it from a failed batch.
_START_FAILED = "localfm top-x actor could not start:"


class _Ranker:
    """One actor of the pool: maps the broadcast items once, ranks user batches, writes parts.

    A constructor that raises leaves it to Ray to restart the actor (``max_retries`` times,
    with the same bad broadcast: say, unreadable index bytes on resume) and then to fail the
    job with an ``ActorDiedError`` that names neither the cause nor that resuming cannot help;
    jobs stuck in such restarts were reported. So the constructor never raises: it keeps the
    error, and the actor fails its first batch with it (marked :data:`_START_FAILED`), which
    fails the job at once (an application error is not retried) with one line naming it.
    """

    def __init__(self, shared: list[Any], config: dict[str, Any]) -> None:
        self.cfg = config
        self.start_error: str | None = None
        self._file: tuple[str, Any] | None = None
        try:
            self._start(shared, config)
        except Exception as exc:  # noqa: BLE001 - reported by __call__, see the class docstring
            self.start_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"

    def _start(self, shared: list[Any], config: dict[str, Any]) -> None:
        import ray

        side = ray.get(shared[0])  # zero-copy views into this node's object store
        self.items = side["vectors"]
        self.item_ids = side["ids"]
        self.all_rows = np.arange(self.items.shape[0], dtype=np.int64)
        self.index = None
        self.prepared = side["prepared"]  # the exact engine's item side, prepared on the driver
        set_quiet(True)  # a progress bar per call would only flood the driver's log through Ray's log monitor
        if side["index"] is not None:
            from ..knn.index import KNNIndex, load_faiss

            load_faiss().omp_set_num_threads(int(config["threads"]))
            self.index = KNNIndex.from_bytes(side["index"].tobytes(), where="broadcast index")
        kind = self.item_ids.dtype.kind
        if kind in "iu":
            fits = self.item_ids.size == 0 or (self.item_ids.min() >= -(2**31) and self.item_ids.max() < 2**31)
            self.item_type = "int32" if fits else "int64"
        else:
            self.item_type = "string"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        if self.start_error is not None:
            raise RuntimeError(f"{_START_FAILED} {self.start_error}")
        report: dict[str, list[int]] = {"first": [], "users": [], "rows": [], "skipped": [], "total": []}
        for path, group in zip(batch["path"].tolist(), batch["group"].tolist()):
            if self._file is None or self._file[0] != path:  # consecutive groups mostly share a file
                self._file = (path, pq.ParquetFile(path))
            part = self._file[1].read_row_group(int(group))
            first = int(part.column("row")[0].as_py())
            n_rows, counts = self._rank(part, first)
            report["first"].append(first)
            report["users"].append(part.num_rows)
            report["rows"].append(n_rows)
            report["skipped"].append(counts.scores_skipped)
            report["total"].append(counts.scores_total)
        return {key: np.asarray(v, dtype=np.int64) for key, v in report.items()}

    def _rank(self, part: Any, first: int) -> tuple[int, RecommendStats]:
        """Rank one run of consecutive users and write its part; (result rows, pruning counts)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cfg = self.cfg
        pruning = RecommendStats()  # the exact engine's pruning counts for this part
        if cfg["hook"] is not None:
            cfg["hook"](first)
        n = part.num_rows
        vec = part.column("vector").combine_chunks()
        # A writable copy: torch refuses to wrap the read-only Arrow buffer without a warning.
        U = np.array(vec.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, -1)
        seen_col = part.column("seen").combine_chunks()
        offsets = np.asarray(seen_col.offsets, dtype=np.int64)
        seen = None
        if offsets[-1] > offsets[0]:
            idx = np.asarray(seen_col.flatten().to_numpy(), dtype=np.int64)
            seen = sp.csr_matrix((np.ones(idx.size, np.float32), idx, offsets - offsets[0]),
                                 shape=(n, self.items.shape[0]))
        uids = part.column("user_id").to_numpy(zero_copy_only=False)
        rep = Repackaged(user_ids=uids, user_vectors=U, user_constants=part.column("const").to_numpy(),
                         item_ids=self.item_ids, item_vectors=self.items, predictor_type=cfg["predictor_type"])
        if self.index is None:
            source = exact_batches(U, self.prepared, cfg["k"], seen, cfg["batch_size"], cfg["threads"], None,
                                   pruning)
        else:
            source = index_batches(self.index, U, cfg["k"], seen, cfg["batch_size"], self.items.shape[0])
        counts = np.zeros(n, dtype=np.int64)
        item_chunks, score_chunks = [], []
        for b0, ids in source:
            res = to_result_batch(rep, b0, ids, self.all_rows, cfg["sigmoid"])
            counts[b0:b0 + ids.shape[0]] = (ids >= 0).sum(axis=1)
            item_chunks.append(res.item_id)
            score_chunks.append(res.score)
        item_flat = np.concatenate(item_chunks) if item_chunks else self.item_ids[:0]
        score_flat = np.concatenate(score_chunks) if score_chunks else np.zeros(0)
        offs = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        if cfg["layout"] == "nested":  # the published compact form
            item_vals = pa.array(item_flat.astype(self.item_type) if self.item_type != "string"
                                 else [str(x) for x in item_flat.tolist()])
            score_vals = pa.array(score_flat.astype(np.float32))
        else:  # staging for the flat sinks: full precision, as the single process writes
            item_vals = pa.array(item_flat.astype(np.int64) if self.item_type != "string"
                                 else [str(x) for x in item_flat.tolist()])
            score_vals = pa.array(score_flat.astype(np.float64))
        table = pa.table({
            "user_id": pa.array(uids.astype(np.int64) if cfg["user_kind"] == "int"
                                else [str(x) for x in uids.tolist()]),
            "items": pa.ListArray.from_arrays(offs, item_vals),
            "scores": pa.ListArray.from_arrays(offs, score_vals),
        })
        with atomic_write(Path(cfg["parts_dir"]) / _part_name(first, cfg["layout"])) as fh:
            if cfg["layout"] == "nested":
                pq.write_table(table, fh)
            else:
                with pa.ipc.new_file(fh, table.schema) as ipc:
                    ipc.write_table(table)
        return int(counts.sum()), pruning
