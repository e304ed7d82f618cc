"""Real MXNet 1.9.1 reads what localfm writes and vice versa (scripts/mxnet-crosscheck).

Needs the separate venv at .mxnet-venv (``python3 -m venv .mxnet-venv &&
.mxnet-venv/bin/pip install mxnet==1.9.1 'numpy<1.24'``, or just run
scripts/mxnet-crosscheck once); skipped without it. Takes a few seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".mxnet-venv" / "bin" / "python"


@pytest.mark.slow
def test_mxnet_crosscheck_both_directions():
    if not VENV_PY.exists():
        pytest.skip(f"no MXNet venv at {VENV_PY.parent.parent} (run scripts/mxnet-crosscheck once)")
    probe = subprocess.run([str(VENV_PY), "-c", "import mxnet"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{VENV_PY} cannot import mxnet (rebuild: rm -rf .mxnet-venv && "
                    "scripts/mxnet-crosscheck --setup-only)")
    env = dict(os.environ, LOCALFM_PYTHON=sys.executable)
    proc = subprocess.run([str(REPO / "scripts" / "mxnet-crosscheck")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FAIL" not in proc.stdout.replace("-> PASS", "")
    assert "Module.load+forward" in proc.stdout and "A:v3_npx" in proc.stdout
