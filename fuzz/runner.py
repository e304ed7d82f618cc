"""The mutation loop: deterministic, time-limited, memory-limited, with findings saved to disk.

Feedback without instrumentation: an input whose outcome (accepted, or the
LocalFMError message with numbers blanked) has not been seen before joins the
mutation pool. Distinct error messages correspond closely to distinct checks in
the parsers, so this steers mutations toward unexplored branches cheaply.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import re
import resource
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localfm.errors import LocalFMError

from .mutate import MAX_INPUT, mutate_bytes
from .targets import Target

MAX_POOL = 4000


class InputTimeout(BaseException):
    """Raised by SIGALRM when one input runs past the time limit (BaseException: parsers can't swallow it)."""


@dataclass
class Finding:
    target: str
    call: str
    kind: str  # exception type, "timeout" or "slow"
    where: str  # innermost frame, for de-duplication
    message: str
    path: str
    count: int = 1


@dataclass
class Stats:
    target: str
    iterations: int = 0
    calls: int = 0
    accepted: int = 0  # calls that returned normally
    rejected: int = 0  # calls that raised LocalFMError
    pool: int = 0
    outcomes: int = 0
    max_seconds: float = 0.0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target, "iterations": self.iterations, "calls": self.calls,
            "accepted": self.accepted, "rejected_with_LocalFMError": self.rejected,
            "distinct_outcomes": self.outcomes, "pool": self.pool,
            "max_seconds_per_call": round(self.max_seconds, 4), "seconds": round(self.seconds, 1),
            "findings": [f.__dict__ for f in self.findings],
        }


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise InputTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def limit_memory(extra_mb: int) -> None:
    """Cap the address space at its current size + ``extra_mb``: a parser that trusts a
    length field and allocates gigabytes then raises MemoryError, which is a finding."""
    if extra_mb <= 0:
        return
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    cap = (vm * 1024) + extra_mb * (1 << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _outcome(call: str, exc: BaseException | None) -> str:
    if exc is None:
        return f"{call}:ok"
    text = re.sub(r"0x[0-9a-fA-F]+", "X", str(exc))
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "S", text)
    text = re.sub(r"-?\d+(\.\d+)?", "N", text)
    return f"{call}:{text.split(': ', 1)[-1][:120]}"


def run_target(target: Target, iterations: int, seed: int, time_limit: float,
               findings_dir: Path | None, progress: Callable[[int], None] | None = None) -> Stats:
    stats = Stats(target.name)
    rng = random.Random(f"{seed}:{target.name}")
    pool = [s[:MAX_INPUT] for s in dict.fromkeys(target.seeds)]
    seen_outcomes: set[str] = set()
    by_key: dict[tuple[str, str, str], Finding] = {}
    start = time.perf_counter()

    def feed(data: bytes) -> None:
        new = False
        for call_name, fn in target.calls:
            stats.calls += 1
            t0 = time.perf_counter()
            exc: BaseException | None = None
            kind = ""
            try:
                with _alarm(time_limit):
                    fn(data)
                stats.accepted += 1
            except LocalFMError as e:
                stats.rejected += 1
                exc = e
            except InputTimeout:
                kind = "timeout"
            except Exception as e:  # noqa: BLE001 - anything else is what we are looking for
                exc = e
                kind = type(e).__name__
            dt = time.perf_counter() - t0
            stats.max_seconds = max(stats.max_seconds, dt)
            if not kind and dt > time_limit:
                kind = "slow"
            if kind:
                _record(stats, by_key, findings_dir, target.name, call_name, kind, exc, data, dt)
                continue
            out = _outcome(call_name, exc)
            if out not in seen_outcomes:
                seen_outcomes.add(out)
                new = True
        if new and len(pool) < MAX_POOL:
            pool.append(data)

    for s in list(pool):  # the seeds themselves, unmutated
        feed(s)
    for i in range(iterations):
        base = rng.choice(pool)
        data = None
        if target.mutators and rng.random() < 0.35:
            data = rng.choice(target.mutators)(base, rng, pool)
        if data is None:
            data = mutate_bytes(base, rng, pool)
        feed(data)
        stats.iterations += 1
        if progress is not None:
            progress(i)
    stats.seconds = time.perf_counter() - start
    stats.pool = len(pool)
    stats.outcomes = len(seen_outcomes)
    stats.findings = list(by_key.values())
    return stats


def _record(stats: Stats, by_key: dict, findings_dir: Path | None, target: str, call: str, kind: str,
            exc: BaseException | None, data: bytes, dt: float) -> None:
    where = ""
    if exc is not None and exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
    key = (call, kind, where)
    if key in by_key:
        by_key[key].count += 1
        return
    path = ""
    if findings_dir is not None:
        findings_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(data).hexdigest()[:12]
        p = findings_dir / f"{target}-{call}-{kind}-{digest}.bin"
        p.write_bytes(data)
        path = str(p)
    msg = f"{exc}" if exc is not None else f"{dt:.2f} s"
    by_key[key] = Finding(target, call, kind, where, msg[:300], path)
