"""Run Python code in a fresh interpreter, for the tests whose point is a clean process.

Why a child process: import side effects (is torch loaded? is Ray?), peak memory and
environment variables are per process, and this test process has already imported
everything the other tests needed.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping


def run_python(code: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
    """``python -c code args...``; its stdout. Fails the calling test, with the tail of the child's
    stderr, when the child exits non-zero or runs past ``timeout`` seconds."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=None if env is None else dict(env), timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
