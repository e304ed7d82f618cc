"""What machine a result came from, and how to time things on a shared, noisy one.

Every results file carries :func:`machine_info` so a number can always be traced to
its CPU, core count, library versions and git commit. Timings are medians over
repeats (:func:`timeit`) because the benchmark machines are shared: the median is
robust to a neighbour's burst, the min/max show how noisy the run was. Absolute
speed also depends on the machine, so every benchmark measures this machine's
float32 matmul peak (:func:`sgemm_peak`) in the same run and quotes fractions of it.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Environment variables that change BLAS/OpenMP behaviour; recorded verbatim.
_ENV_KEYS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "LOCALFM_QUIET",
)


def utc_now() -> str:
    """ISO-8601 UTC timestamp, second precision (what results files and docs quote)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The SIMD flags that decide which BLAS kernel runs (avx2/avx512*)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def git_commit() -> dict[str, Any]:
    """HEAD commit and whether the tree had local changes (read-only git calls)."""
    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def blas_info() -> dict[str, Any]:
    """Which BLAS numpy uses and, when threadpoolctl is installed, which kernel it picked.

    OPENBLAS_CORETYPE forces an older kernel on some CPUs; recording the kernel that
    actually ran is the only way to compare numpy numbers across machines.
    """
    info: dict[str, Any] = {}
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = (cfg or {}).get("Build Dependencies", {}).get("blas", {})
        info["numpy_blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as exc:  # noqa: BLE001 - informational only
        info["numpy_blas"] = f"unavailable: {exc}"
    try:
        import threadpoolctl

        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
            for p in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def versions() -> dict[str, str | None]:
    """Versions of everything whose speed we measure."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("numpy", "scipy", "torch", "faiss", "pyarrow", "localfm"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None)
        except Exception:  # noqa: BLE001 - a missing library is recorded, not fatal
            out[name] = None
    return out


def threads() -> dict[str, Any]:
    out: dict[str, Any] = {"os_cpu_count": os.cpu_count()}
    try:
        out["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        out["affinity"] = None
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import faiss

        out["faiss_omp_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    return out


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages now (None where the OS has none).

    A benchmark's figure is only the code's speed when the machine was quiet; the load
    before and after each measurement is the evidence.
    """
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# The "quiet machine": 1-minute load average below this, nothing else running.
QUIET_LOAD = 1.5


def is_quiet(load: list[float] | None) -> bool | None:
    """Was the machine quiet (1-minute load < QUIET_LOAD) when this load was read? None if unknown.

    Judged on the load *before* a measurement: the benchmark's own two threads lift the
    load it leaves behind, so the load after says how hard it worked, not who else did.
    """
    return None if not load else bool(load[0] < QUIET_LOAD)


def machine_info() -> dict[str, Any]:
    """Everything needed to interpret a results file later."""
    load = load_average()
    return {
        "date": utc_now(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "load_average_at_start": load,
        "versions": versions(),
        "threads": threads(),
        "env": {k: os.environ.get(k) for k in _ENV_KEYS},
        "blas": blas_info(),
        "git": git_commit(),
    }


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs; ``median`` is the figure we quote."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": min(self.runs),
            "max_s": max(self.runs),
            "repeats": len(self.runs),
            "runs_s": self.runs,
        }


def timeit(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> tuple[Timing, Any]:
    """Run ``fn`` warmup + repeats times; returns the timings and the last result.

    Warm-up runs absorb one-off costs (page faults, BLAS thread start, torch
    kernel selection) that would otherwise be charged to the first repeat.
    """
    result: Any = None
    for _ in range(warmup):
        result = fn()
    t = Timing()
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        t.runs.append(time.perf_counter() - start)
    return t, result


def sgemm_peak(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """This machine's float32 matmul throughput (GFLOP/s) via numpy and torch, now.

    Measured in the same run as the benchmarks so "fraction of peak" is honest on a
    shared machine whose speed drifts with its neighbours' load. The best of the two
    libraries is taken as the peak.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    t_np, _ = timeit(lambda: a @ b, repeats=repeats, warmup=1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t_t, _ = timeit(lambda: torch.mm(ta, tb), repeats=repeats, warmup=1)
    out = {
        "n": n,
        "numpy_gflops": flops / t_np.median / 1e9,
        "torch_gflops": flops / t_t.median / 1e9,
        "numpy": t_np.as_dict(),
        "torch": t_t.as_dict(),
    }
    out["peak_gflops"] = max(out["numpy_gflops"], out["torch_gflops"])
    return out


def vm_hwm_bytes() -> int | None:
    """Peak resident set size of *this* process (Linux VmHWM), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _child_entry(target: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, int | None]:
    result = target(**kwargs)
    return result, vm_hwm_bytes()


def run_isolated(target: Callable[..., Any], **kwargs: Any) -> tuple[Any, int | None]:
    """Run ``target(**kwargs)`` in a fresh spawned process; returns (result, peak RSS bytes).

    A fresh process per stage is the only way to get a per-stage peak RSS: VmHWM of
    a long-lived process only ever grows. ``target`` must be a module-level function
    (picklable) and its result picklable.
    """
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_child_entry, target, kwargs).result()


def run_command(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Run a command; return wall and CPU seconds, exit code, its own peak RSS and the output tail.

    ``cpu_s`` is user + system time of the command (from ``wait4``); the load average
    before and after says whether the machine was quiet while it ran.

    The command goes through :mod:`benchmarks._rss` (a launcher that imports nothing
    heavy) because Linux carries ``ru_maxrss`` across ``execve``: a command forked
    from this process would otherwise report at least this process's size.
    """
    import json
    import tempfile

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p)
    fd, rss_file = tempfile.mkstemp(prefix="localfm-bench-rss-", suffix=".json")
    os.close(fd)
    try:
        load_before = load_average()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks._rss", rss_file, "--", *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        wall = time.perf_counter() - start
        load_after = load_average()
        try:
            usage = json.loads(Path(rss_file).read_text())
        except (OSError, ValueError):
            usage = {}
    finally:
        os.unlink(rss_file)
    text = proc.stdout.decode("utf-8", "replace")
    return {
        "argv": argv,
        "wall_s": wall,
        "returncode": proc.returncode,
        "peak_rss_bytes": usage.get("peak_rss_bytes"),
        "cpu_user_s": usage.get("cpu_user_s"),
        "cpu_sys_s": usage.get("cpu_sys_s"),
        "cpu_s": usage["cpu_user_s"] + usage["cpu_sys_s"] if "cpu_user_s" in usage else None,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "output_tail": text[-2000:],
    }


def as_plain(obj: Any) -> Any:
    """Dataclasses / numpy scalars → JSON-friendly Python values."""
    import numpy as np

    if hasattr(obj, "__dataclass_fields__"):
        return as_plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj
