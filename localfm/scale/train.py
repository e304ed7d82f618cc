"""Multi-instance FM training with SageMaker's semantics on a Ray cluster (``dist_sync``).

SageMaker trains FM on ``instance_count`` hosts with MXNet's ``dist_sync`` kvstore: every
host computes the gradient of its own mini-batch, the kvstore servers sum the hosts'
gradients and apply *one* optimizer update, and every host pulls the new rows before its
next batch. This module does the same with Ray actors, reusing the torch engine's maths
(:func:`localfm.fm.engines.torch.batch_gradient`, :func:`~localfm.fm.engines.torch.step_gathered`,
:func:`~localfm.fm.engines.torch.step_scalar`) so nothing is derived twice:

- **instances** (``instance_count`` worker actors, ``[algo-1]`` ... ``[algo-N]``) each read
  their part of the training channel (:func:`deal_files`: ``FullyReplicated`` = all of it,
  ``ShardedByS3Key`` = the channel's files dealt round-robin in name order) and, per step,
  pull the rows their batch touches, compute the rescaled gradient and push it;
- **kv servers** (``_num_kv_servers`` = S actors): server j holds feature rows ``r % S == j``
  of the ``[v | w]`` table with their Adam moments (server 0 also the bias), sums the pushed
  gradients over the union of touched rows and applies one lazy-Adam step. A model larger
  than one worker's memory trains: a worker only ever holds its batch's rows.
- S = 0 is the **replicated** path: every worker keeps the whole table and applies the same
  summed update itself (no servers). It is allowed only when the table fits (:func:`kv_servers`).

**The equivalence** (tested): ``rescale_grad`` defaults to ``1 / (N x mini_batch_size)``, as
MXNet's ``Module.init_optimizer`` sets it under a ``dist_sync`` kvstore (batch size x
``num_workers``); the summed gradient ``sum_i rescale x grad_i`` is then the gradient of one
batch of ``N x b`` rows with its default ``rescale_grad``. So N instances x batch b, whose
step-s batches together are the rows of batch s of one instance x batch N*b, give the same
per-epoch metrics and weights up to float32 rounding (summation order). An explicit
``rescale_grad`` is applied as given on both sides. The steps run on the torch engine's
functions whatever ``_local_engine`` says (the engines agree up to rounding).
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..device import check_device_name
from ..errors import LocalFMError
from ..fm.metrics import MetricAccumulator, TrainingLog
from ..fm.model import (
    FactorizationMachine,
    evaluate_weights,
    init_weights,
    labelled_rows,
    lr_schedule,
)
from ..io.channels import channel_files, read_channel, read_files
from .cluster import actor_slots, connect

DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")
#: the hyperparameter (a SageMaker container internal, ``auto`` in the cloud) choosing S
KV_SERVERS_HP = "_num_kv_servers"
_UNSUPPORTED = ("_local_shuffle", "_local_validation_fraction", "_local_early_stopping_patience",
                "_local_resample_negatives")


@dataclass
class ClusterTraining:
    """What :func:`train_on_cluster` did: the trained estimator and how the job was laid out."""

    model: FactorizationMachine
    log: TrainingLog  # metrics pooled over every instance's batches (metrics.json)
    host_logs: list[TrainingLog]  # one per instance, host algo-1 ... algo-N
    kv_servers: int  # 0: replicated parameters
    distribution: str
    files: list[list[str]]  # each instance's channel files
    train_records: list[int] = field(default_factory=list)  # rows each instance read
    test_records: int | None = None


def deal_files(files: list[str], instances: int, distribution: str) -> list[list[str]]:
    """Each instance's files: all of them (``FullyReplicated``), or dealt by key (``ShardedByS3Key``).

    ``files`` are in key (name) order; instance i gets files i, i+N, i+2N ... so every
    instance gets one distinct set, as SageMaker gives each host ~1/N of the S3 objects.
    """
    if distribution not in DISTRIBUTIONS:
        raise LocalFMError(f"distribution: expected one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}",
                           param="distribution")
    if distribution == "FullyReplicated":
        return [list(files) for _ in range(instances)]
    if len(files) < instances:
        raise LocalFMError(f"distribution: ShardedByS3Key needs at least one file per instance; the training "
                           f"channel has {len(files)} file(s) for {instances} instances", param="distribution")
    return [files[i::instances] for i in range(instances)]


def table_bytes(feature_dim: int, num_factors: int) -> int:
    """Bytes of the parameter table: ``[v | w]`` and both Adam moments, float32."""
    return feature_dim * 3 * (num_factors + 1) * 4


def kv_servers(given: Mapping[str, Any], nbytes: int, limit: int, nodes: int) -> int:
    """S from ``_num_kv_servers`` (``auto`` / absent, or an integer >= 0) for a table of ``nbytes``.

    The replicated path (S = 0) keeps a full table in every worker, so it is allowed only
    when ``nbytes <= limit`` (by default a quarter of the smallest live node's Ray memory).
    ``auto`` takes it when it fits, else one server per live node.
    """
    raw = given.get(KV_SERVERS_HP, "auto")
    text = str(raw).strip()
    if text == "auto":
        return 0 if nbytes <= limit else max(1, nodes)
    try:
        s = int(text)
    except ValueError:
        s = -1
    if s < 0 or isinstance(raw, bool):
        raise LocalFMError(f"hyperparameter '{KV_SERVERS_HP}': expected auto or an integer >= 0, got {raw!r}")
    if s == 0 and nbytes > limit:
        raise LocalFMError(f"hyperparameter '{KV_SERVERS_HP}': 0 keeps the whole {nbytes:,}-byte parameter "
                           f"table in every worker, over the {limit:,}-byte limit; use auto or >= 1 kv servers")
    return s


def merge_accumulators(accs: list[MetricAccumulator]) -> MetricAccumulator:
    """One accumulator over all instances' batches (every field is a pooled sum)."""
    out = MetricAccumulator(accs[0].predictor_type)
    for acc in accs:
        for f in fields(acc):
            if f.name != "predictor_type":
                setattr(out, f.name, getattr(out, f.name) + getattr(acc, f.name))
    return out


class ParamShard:
    """Rows ``r % servers == shard`` of the (d, 3, k+1) table, and (shard 0) the bias.

    :meth:`apply` is the server side of ``dist_sync``: sum the pushed gradients over
    the union of the rows they touch and take one optimizer step on those rows.
    """

    def __init__(self, hp: Mapping[str, Any], table: np.ndarray, w0: float | None) -> None:
        import torch

        from ..fm.engines.torch import ScalarState
        from ..fm.optim import optimizer_config

        torch.set_num_threads(1)
        self.hp = hp
        self.table = np.array(table, dtype=np.float32)  # own, writable copy (object store views are read-only)
        self.k = self.table.shape[2] - 1
        self.cfg = optimizer_config(hp, self.k)
        self.lr, self.wd = torch.from_numpy(self.cfg.lr), torch.from_numpy(self.cfg.wd)
        self.w0 = None if w0 is None else np.float32(w0)
        self.bias_state = ScalarState()

    def pull(self, rows: np.ndarray) -> tuple[np.ndarray, np.float32 | None]:
        """The ``[v | w]`` of local ``rows`` (and the bias, on shard 0)."""
        return self.table[rows, 0], self.w0

    def apply(self, t: int, lr_scale: float, *pieces: tuple[np.ndarray, np.ndarray, float | None]) -> int:
        """One update from every worker's ``(local rows, rescaled gradient, bias gradient)``; returns ``t``."""
        import torch

        from ..fm.engines.torch import decay_absent_rows, step_gathered, step_scalar

        rows = np.concatenate([p[0] for p in pieces])
        uniq, inv = np.unique(rows, return_inverse=True)
        grad = torch.zeros(uniq.shape[0], self.k + 1).index_add_(
            0, torch.from_numpy(inv.astype(np.int64)), torch.from_numpy(np.concatenate([p[1] for p in pieces])))
        with torch.no_grad():
            Pu_np = self.table.take(uniq, axis=0)
            Pu = torch.from_numpy(Pu_np)
            step_gathered(Pu[:, 0], Pu[:, 1], Pu[:, 2], grad, self.cfg, self.lr, self.wd, t, lr_scale)
            self.table[uniq] = Pu_np
            if not self.hp["_local_lazy_wd"]:
                decay_absent_rows(torch.from_numpy(self.table)[:, 0], torch.from_numpy(uniq.astype(np.int64)),
                                  self.lr, self.wd, lr_scale)
        if self.w0 is not None and self.hp["use_bias"]:
            self.w0 = step_scalar(self.w0, self.bias_state, sum(float(p[2]) for p in pieces), self.cfg, lr_scale)
        return t

    def weights(self) -> tuple[np.ndarray, np.float32 | None]:
        return self.table[:, 0].copy(), self.w0


class Instance:
    """One training host: its part of the channel, its batches, its gradient per step."""

    def __init__(self, hp: Mapping[str, Any], files: list[str], channel: str, servers: list[Any],
                 table: Any = None, w0: float | None = None) -> None:
        import torch

        torch.set_num_threads(1)
        self.hp = hp
        X, y = read_files(files, channel, need_labels=True, feature_dim=hp["feature_dim"])
        self.X, self.y = labelled_rows(X, y, hp, f"{channel} (this instance's files)", need_rows=True)
        self.b = int(hp["mini_batch_size"])
        self.servers = servers
        # replicated path: the whole table here, updated with everyone's gradients
        self.local = None if table is None else ParamShard(hp, table, w0)
        self.rescale = float(hp["rescale_grad"])
        self.binary = hp["predictor_type"] == "binary_classifier"

    def rows(self) -> int:
        return int(self.X.shape[0])

    def prepare(self, steps: int) -> None:
        """Batches for ``steps`` steps per epoch: a host with fewer rows wraps around (MXNet ``pad``)."""
        from ..fm.engines.torch import make_batches

        n = self.X.shape[0]
        if steps == math.ceil(n / self.b):
            self.batches = make_batches(self.X, self.y, self.b)
        else:
            idx = np.arange(steps * self.b) % n
            self.batches = make_batches(self.X[idx], self.y[idx], self.b)
        self.scores = np.empty(steps * self.b, dtype=np.float32)
        self.labels = np.empty(steps * self.b, dtype=np.float32)

    def compute(self, step: int) -> Any:
        """Pull the rows batch ``step`` touches, return one gradient piece per kv server."""
        import torch

        from ..fm.engines.torch import batch_gradient

        bt = self.batches[step]
        cols = bt.cols_np
        S = max(1, len(self.servers))
        masks = [cols % S == j for j in range(S)] if S > 1 else [slice(None)]
        local = [cols[m] // S for m in masks]
        if self.local is not None:
            W, w0 = self.local.pull(cols)
        else:
            import ray

            got = ray.get([srv.pull.remote(rows) for srv, rows in zip(self.servers, local)])
            W = np.empty((cols.shape[0], got[0][0].shape[1]), dtype=np.float32)
            for m, (part, _) in zip(masks, got):
                W[m] = part
            w0 = got[0][1]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            score, g, GU = batch_gradient(torch.from_numpy(W), bt, w0 if self.hp["use_bias"] else None,
                                          self.rescale, self.binary)
        off = step * self.b
        self.scores[off: off + bt.size] = score.numpy()
        self.labels[off: off + bt.size] = bt.y.numpy()
        G = GU.numpy()
        bias = float(g.sum())
        pieces = tuple((rows, G[m], bias if j == 0 else 0.0) for j, (m, rows) in enumerate(zip(masks, local)))
        return pieces if S > 1 else pieces[0]

    def apply(self, t: int, lr_scale: float, *pieces: Any) -> int:
        assert self.local is not None
        return self.local.apply(t, lr_scale, *pieces)

    def weights(self) -> tuple[np.ndarray, np.float32 | None]:
        assert self.local is not None
        return self.local.weights()

    def end_epoch(self, every: int) -> tuple[MetricAccumulator, list[tuple[int, dict[str, float]]]]:
        """This host's epoch metrics (pre-update outputs, padding counted) and its per-batch lines."""
        ptype = self.hp["predictor_type"]
        acc = MetricAccumulator(ptype)
        acc.update(self.scores, self.labels)
        lines = []
        for bi in range(0, len(self.batches), every):
            one = MetricAccumulator(ptype)
            one.update(self.scores[bi * self.b:(bi + 1) * self.b], self.labels[bi * self.b:(bi + 1) * self.b])
            lines.append((bi, one.result()))
        return acc, lines


def _job_failed(exc: Exception, where: str) -> LocalFMError:
    """The one-line error for a job whose actor died or whose task raised.

    ``dist_sync`` state (the kv servers' Adam moments, a replicated table) lives only in the
    actors, so a dead instance cannot be restarted mid-job with the same result: the job
    fails instead, and since the model is only returned (and written by the CLI) after the
    last step, nothing half-trained is left behind. An instance refusing its input (a bad
    channel file) reports that error itself.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, LocalFMError):
        return LocalFMError(str(cause), param=cause.param)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return LocalFMError(f"cluster training failed {where} ({type(exc).__name__}: {first[:300]}); "
                        "no model was written: rerun the job")


def train_on_cluster(
    train: str,
    hyperparameters: Mapping[str, Any],
    *,
    cluster: str,
    instance_count: int = 1,
    distribution: str = "FullyReplicated",
    test: str | None = None,
    seed: int | None = None,
    init: Any = None,
    verbose: bool = False,
    replicated_max_bytes: int | None = None,
) -> ClusterTraining:
    """Train an FM on ``instance_count`` instances of a Ray cluster, SageMaker ``dist_sync`` style.

    ``train`` / ``test``: channels as for ``localfm train`` (paths every node can read);
    ``hyperparameters``: SageMaker names, plus ``_num_kv_servers`` (``auto`` default, 0 =
    replicated, S >= 1 kv-server actors); ``distribution``: the S3DataDistributionType.
    ``replicated_max_bytes``: the replicated path's table limit (default: a quarter of the
    smallest live node's Ray memory). Same seed -> same initial weights as one instance.
    """
    if isinstance(instance_count, bool) or not isinstance(instance_count, int) or instance_count < 1:
        raise LocalFMError(f"instance_count: expected an integer >= 1, got {instance_count!r}", param="instance_count")
    device = check_device_name(hyperparameters.get("_local_device", "cpu"), param="hyperparameter '_local_device'")
    if device != "cpu":  # before check_params, which would look for the device on the driver
        raise LocalFMError(f"hyperparameter '_local_device': multi-instance training runs on the actors' CPUs; "
                           f"{device!r} is for a single instance")
    model = FactorizationMachine(seed=seed, **{k: v for k, v in hyperparameters.items() if k != KV_SERVERS_HP})
    hp = dict(model.check_params())
    for name in _UNSUPPORTED:
        if hp[name]:
            raise LocalFMError(f"hyperparameter '{name}': not supported in multi-instance training")
    N, b = instance_count, hp["mini_batch_size"]
    if hp["rescale_grad"] is None:
        hp["rescale_grad"] = 1.0 / (N * b)  # MXNet Module under dist_sync: batch size x num_workers
    files = deal_files(channel_files(train), N, distribution)
    d, k = hp["feature_dim"], hp["num_factors"]
    rng = np.random.default_rng(seed)
    w0_np, w_np, V_np = init_weights(hp, rng)
    if init is not None:
        w0_np, w_np, V_np = FactorizationMachine._warm_start(init, hp)
    X_test = y_test = None
    if test:
        X_test, y_test = read_channel(test, need_labels=True, feature_dim=d)
    with connect(cluster) as ray:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if actor_slots(ray, 1) < N:
            raise LocalFMError(f"instance_count: {N} instances need {N} CPUs, the cluster has "
                               f"{actor_slots(ray, 1)}", param="instance_count")
        limit = replicated_max_bytes
        if limit is None:
            limit = min(int(n.get("Resources", {}).get("memory", 0)) for n in nodes) // 4
        S = kv_servers(hyperparameters, table_bytes(d, k), limit, len(nodes))
        table = np.zeros((d, 3, k + 1), dtype=np.float32)
        table[:, 0, :k] = V_np
        table[:, 0, k] = w_np
        w0 = float(w0_np[0])
        spread = {"scheduling_strategy": "SPREAD"}
        # kv servers hold memory, not compute: no CPU reserved, so S does not compete with N
        Server = ray.remote(num_cpus=0, **spread)(ParamShard)
        Worker = ray.remote(num_cpus=1, **spread)(Instance)
        servers: list[Any] = []
        workers: list[Any] = []
        where = "while starting the instances"
        try:
            servers = [Server.remote(hp, table[j::S], w0 if j == 0 else None) for j in range(S)]
            shared = ray.put(table) if S == 0 else None
            del table
            workers = [Worker.remote(hp, files[i], str(train), servers, shared, w0 if S == 0 else None)
                       for i in range(N)]
            rows = ray.get([w.rows.remote() for w in workers])
            steps = max(math.ceil(n / b) for n in rows)
            ray.get([w.prepare.remote(steps) for w in workers])
            ptype, epochs = hp["predictor_type"], hp["epochs"]
            log = TrainingLog(ptype, epochs, emit=False)
            host_logs = [TrainingLog(ptype, epochs, emit=verbose, host=f"algo-{i + 1}") for i in range(N)]
            every = hp["batch_metrics_publish_interval"]
            holders = servers or workers
            t = 0
            for epoch in range(epochs):
                lr_scale = lr_schedule(hp["_local_lr_schedule"], epoch, epochs)
                start = time.perf_counter()
                for step in range(steps):
                    where = f"in epoch {epoch}, step {step + 1} of {steps}"
                    t += 1
                    outs = [w.compute.options(num_returns=max(1, S)).remote(step) for w in workers]
                    outs = [o if S > 1 else [o] for o in outs]
                    ray.get([h.apply.remote(t, lr_scale, *[o[j if S else 0] for o in outs])
                             for j, h in enumerate(holders)])
                where = f"at the end of epoch {epoch}"
                seconds = time.perf_counter() - start
                ends = ray.get([w.end_epoch.remote(every) for w in workers])
                for i, (acc, lines) in enumerate(ends):
                    for bi, values in lines:
                        host_logs[i].batch(epoch, bi, values)
                    host_logs[i].epoch(epoch, acc.result(), rows[i], seconds)
                log.epoch(epoch, merge_accumulators([e[0] for e in ends]).result(), sum(rows), seconds)
            where = "collecting the weights"
            parts = ray.get([h.weights.remote() for h in (servers or workers[:1])])
        except ray.exceptions.RayError as exc:
            raise _job_failed(exc, where) from None
        finally:
            # A failed job's surviving actors would hold their CPUs in a borrowed cluster: end them now.
            for actor in [*workers, *servers]:
                ray.kill(actor, no_restart=True)
    W = np.empty((d, k + 1), dtype=np.float32)
    for j, (part, _) in enumerate(parts):
        W[j::max(1, S)] = part
    model.hp_, model.engine_, model.history_ = hp, "torch", log
    model.w0_ = float(parts[0][1])
    model.w_, model.V_ = np.ascontiguousarray(W[:, k]), np.ascontiguousarray(W[:, :k])
    if X_test is not None:
        values = evaluate_weights(model.w0_, model.w_, model.V_, X_test, y_test, ptype)
        log.test(values)
        host_logs[0].test(values)
    return ClusterTraining(model=model, log=log, host_logs=host_logs, kv_servers=S, distribution=distribution,
                           files=files, train_records=rows,
                           test_records=None if X_test is None else int(X_test.shape[0]))
