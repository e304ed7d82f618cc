"""Fixtures for the recommend tests: a real PostgreSQL server for the session."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import start


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    server, reason = start()
    if server is None:
        pytest.skip(reason)
    try:
        yield server.url
    finally:
        server.stop()
