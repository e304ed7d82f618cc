"""Optional coverage-guided engine: the same targets driven by atheris (libFuzzer for Python).

``python -m fuzz --engine atheris --parser recordio --iterations 100000`` instruments
the already-imported localfm modules, seeds libFuzzer's corpus with the target's
seed inputs and lets it mutate with coverage feedback. libFuzzer owns the process
(it exits when done), so each parser runs in its own process. atheris is not a
dependency of localfm: the built-in engine is what CI runs.
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from localfm.errors import LocalFMError

from .targets import Target


def run(target: Target, iterations: int, seed: int, time_limit: float, memory_mb: int,
        findings_dir: Path) -> None:
    """Never returns: libFuzzer exits 0 when the runs are done without a finding, non-zero otherwise."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris); use the default engine", file=sys.stderr)
        sys.exit(2)

    calls = target.calls

    def one_input(data: bytes) -> None:
        for _, fn in calls:
            try:
                fn(data)
            except LocalFMError:
                pass  # documented rejection; anything else propagates and is a crash

    atheris.instrument_all()
    corpus = Path(tempfile.mkdtemp(prefix=f"localfm-fuzz-{target.name}-"))
    for s in target.seeds:
        (corpus / hashlib.sha1(s).hexdigest()).write_bytes(s)
    findings_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-runs={iterations}",
        f"-seed={seed + 1}",  # libFuzzer treats 0 as "pick one"
        f"-timeout={max(1, int(round(time_limit)))}",
        f"-rss_limit_mb={memory_mb + 1024 if memory_mb > 0 else 0}",
        f"-max_len={1 << 16}",
        f"-artifact_prefix={findings_dir}/{target.name}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
