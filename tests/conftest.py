"""Shared fixtures: a PostgreSQL per session (per worker under pytest-xdist),
and the fast tier's guard.  Tests that start processes carry ``pytest.mark.e2e``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import support  # noqa: E402
from support import postgres_server  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """`make test-fast` (-m 'not e2e'): any process a test starts fails it (support.FAST_TIER)."""
    expr = " ".join(str(config.getoption("markexpr", "") or "").split())
    support.FAST_TIER = "not e2e" in expr


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the whole session."""
    with postgres_server() as url:
        yield url
