"""Shared fixtures: a running estkit server per module, a PostgreSQL per session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import postgres_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the whole session."""
    with postgres_server() as url:
        yield url
