"""Fixtures for the recommend tests: a real PostgreSQL server for the session."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/pgserver.py is shared with tests/cli; make it importable however pytest was invoked.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgserver import start  # noqa: E402


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    server, reason = start()
    if server is None:
        pytest.skip(reason)
    try:
        yield server.url
    finally:
        server.stop()
