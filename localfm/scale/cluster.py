"""Which Ray cluster a job runs on, and connecting to it.

Why a module of its own: the same three spellings (``local:N``, ``auto``, an address)
serve every scaled-out command, and the rule for who shuts Ray down lives in one place:
whoever connected. A caller that already called ``ray.init`` (a notebook, a test
fixture, a Ray job) keeps its connection; :func:`connect` then only borrows it.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import LocalFMError

_LOCAL = re.compile(r"^local:(\d+)$")

#: What the worker processes of a cluster localfm starts import before they take work (Ray's
#: ``RAY_preload_python_modules``): Ray Data's operators and the ranking engine, which loads
#: numba and the BLAS library its kernel calls. Why: Ray keeps idle workers started ahead of
#: demand, and a preloaded one has paid ~2 CPU s of imports before a job's actor lands on it,
#: instead of on that job's clock. On the 2-core VM (docs/scale.md, 10 later jobs each), a job
#: on a running 1-node cluster took a median 17.8 s preloaded against 19.3 s without. For a
#: cluster started with ``ray start``, set the variable there (docs/scale.md).
WORKER_PRELOAD = "ray.data,localfm.scale.topx,localfm.recommend._heapscan"


def worker_env() -> dict[str, str]:
    """Environment for the Ray processes of a cluster localfm starts: :data:`WORKER_PRELOAD`,
    unless the caller set ``RAY_preload_python_modules`` already."""
    return {"RAY_preload_python_modules": os.environ.get("RAY_preload_python_modules", WORKER_PRELOAD)}


@dataclass(frozen=True)
class ClusterSpec:
    """``kind`` is ``local`` (start a private cluster of ``cpus`` worker CPUs on this machine),
    ``auto`` (the cluster ``ray start`` left on this machine) or ``address`` (``host:port`` or
    ``ray://host:port``)."""

    kind: str
    cpus: int | None = None
    address: str | None = None


def parse_cluster(value: str) -> ClusterSpec:
    """``local:N`` | ``auto`` | ``ADDRESS``; anything else is a :class:`LocalFMError` naming ``cluster``."""
    text = str(value).strip()
    m = _LOCAL.match(text)
    if m:
        cpus = int(m.group(1))
        if cpus < 1:
            raise LocalFMError(f"cluster: local:N needs at least one worker CPU, got {value!r}", param="cluster")
        return ClusterSpec("local", cpus=cpus)
    if text == "auto":
        return ClusterSpec("auto", address="auto")
    if text.startswith("local"):
        raise LocalFMError(f"cluster: expected local:N with N a positive integer, got {value!r}", param="cluster")
    if re.match(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$", text):
        return ClusterSpec("address", address=text)
    raise LocalFMError(f"cluster: expected local:N, auto or a Ray address host:port, got {value!r}", param="cluster")


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; a partial install fails here, not mid-job
    except ImportError:
        raise LocalFMError("cluster: Ray is not installed; pip install 'localfm[ray]'", param="cluster") from None
    return ray


@contextlib.contextmanager
def connect(cluster: str) -> Iterator[Any]:
    """Yield the ``ray`` module connected to ``cluster``; disconnect on exit if we connected.

    ``local:N`` starts Ray on this machine with N CPUs, sockets on 127.0.0.1 and no
    dashboard, and stops it again on exit. ``auto`` and addresses join a running cluster
    (started with ``ray start --head`` and ``ray start --address=...``); every node must
    have ``localfm[ray]`` installed, since the workers import localfm.
    """
    spec = parse_cluster(cluster)
    ray = import_ray()
    if ray.is_initialized():
        with worker_output_on_stderr():
            yield ray
        return
    with contextlib.ExitStack() as stack:
        if spec.kind == "local":
            # A private cluster keeps its sessions, sockets and auth token in its own temp dir,
            # removed on exit: nothing lands in the shared /tmp/ray or ~/.ray.
            stack.enter_context(private_ray_dirs(**worker_env()))
        try:
            if spec.kind == "local":
                ray.init(num_cpus=spec.cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         logging_level="WARNING", configure_logging=True)
            else:
                ray.init(address=spec.address, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LocalFMError(f"cluster {cluster!r}: cannot connect to Ray ({first[:200]})",
                               param="cluster") from None
        try:
            with worker_output_on_stderr():
                yield ray
        finally:
            with contextlib.redirect_stdout(sys.stderr):  # Ray flushes the workers' last lines here
                ray.shutdown()


@contextlib.contextmanager
def worker_output_on_stderr() -> Iterator[None]:
    """For the block, print on stderr what the Ray driver forwards from workers and raylets.

    Why: Ray prints a worker's stdout lines, and its own notices, on the driver's stdout.
    One such notice is "(raylet) Task ... submit failed. There are 2 retries remaining", seen
    on a busy CI machine. localfm's commands keep stdout for their results, such as the JSON
    summary a script parses, so Ray's lines broke them. Ray 2.60 has no setting for the stream.
    So the driver's handler (``ray_print_logs`` in the private
    ``ray._private.worker.global_worker_stdstream_dispatcher``) is wrapped to mark every line
    as stderr, and is put back afterwards. If a later Ray moves that handler, nothing is
    wrapped, and the lines go where Ray puts them.
    """
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
        lock = dispatcher._lock  # noqa: SLF001 - see the docstring
        dispatcher.handlers  # noqa: B018 - a list of (name, handler), or this Ray is not the one wrapped here
    except (ImportError, AttributeError):
        yield
        return

    def on_stderr(handler: Any) -> Any:
        return lambda data: handler({**data, "is_err": True})

    swapped: dict[Any, Any] = {}  # wrapped handler -> the original
    with lock:
        for i, (name, handler) in enumerate(dispatcher.handlers):
            if name == "ray_print_logs":
                wrapped = on_stderr(handler)
                swapped[wrapped] = handler
                dispatcher.handlers[i] = (name, wrapped)
    try:
        yield
    finally:
        with lock:  # ray.shutdown() drops the handler itself; put back only what is still there
            for i, (name, handler) in enumerate(dispatcher.handlers):
                if handler in swapped:
                    dispatcher.handlers[i] = (name, swapped[handler])


@contextlib.contextmanager
def private_ray_dirs(**extra_env: str) -> Iterator[str]:
    """Point Ray's state (sessions, sockets, logs, the auth token) at a fresh short temp dir
    under /tmp (unix socket paths are limited to ~107 bytes) for the block, with
    ``extra_env`` set too; restore the environment and remove the dir afterwards."""
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="lfr")  # mode 0700
    token = os.path.join(tmp, "auth_token")
    # Ray refuses a token path that points at no file; this cluster's own token, owner-only.
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    env = {"RAY_TMPDIR": tmp, "RAY_AUTH_TOKEN_PATH": token,
           "RAY_USAGE_STATS_ENABLED": "0", **extra_env}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield tmp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)


def actor_slots(ray: Any, cpus_per_actor: int) -> int:
    """How many actors of ``cpus_per_actor`` CPUs fit on the live nodes (an actor cannot span nodes)."""
    return sum(int(n.get("Resources", {}).get("CPU", 0)) // cpus_per_actor for n in ray.nodes() if n.get("Alive"))


@contextlib.contextmanager
def loopback_cluster(nodes: int = 2, cpus_per_node: int = 1, object_store_bytes: int = 200 * 1024**2,
                     *, pythonpath: str | None = None) -> Iterator[Any]:
    """A real multi-node Ray cluster on this machine, every socket on 127.0.0.1; yields the
    ``ray.cluster_utils.Cluster``, connected (``ray.init``) for the block.

    For tests and scaling benchmarks: each node is its own raylet with its own object store,
    as on separate machines. All of Ray's state (sessions, sockets, logs, the auth token) goes
    to a short temp dir under /tmp (unix socket paths are limited to ~107 bytes) that is removed
    afterwards, so nothing lands in /tmp/ray or ~/.ray. ``pythonpath`` is prepended to the
    workers' PYTHONPATH (e.g. a checkout that is not installed). Stops only its own processes.
    """
    env = {"RAY_memory_monitor_refresh_ms": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **worker_env()}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH", "")) if p)
    with private_ray_dirs(**env):
        yield from _loopback(nodes, cpus_per_node, object_store_bytes)


def _loopback(nodes: int, cpus_per_node: int, object_store_bytes: int) -> Iterator[Any]:
    ray = import_ray()
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Read once when Ray is imported: off, Ray keeps 127.0.0.1 instead of rewriting it to the
    # host's address (the environment variable covers the raylets and workers).
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    node = {"num_cpus": cpus_per_node, "object_store_memory": object_store_bytes, "node_ip_address": "127.0.0.1"}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # Ray flushes the workers' last lines here
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
