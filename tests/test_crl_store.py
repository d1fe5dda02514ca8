"""The CRL state in the store, on SQLite and a real PostgreSQL: the CRL number
is compare-and-set, so concurrent regenerations never reuse or skip back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import fresh_database
from together import together

from estkit.ca.ports import CrlRecord
from estkit.store import SqlStore, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    url = f"sqlite:///{tmp_path}/estkit.db" if request.param == "sqlite" else fresh_database(
        request.getfixturevalue("pg_url"))
    s = open_store(url)
    yield s
    s.close()


def _rec(n: int) -> CrlRecord:
    now = datetime.now(UTC).replace(microsecond=0)
    return CrlRecord(ca="default", number=n, this_update=now, next_update=now + timedelta(days=1), der=bytes([n]) * 8)


def test_ok_first_then_compare_and_set(store: SqlStore) -> None:
    assert store.get_crl("default") is None
    assert store.put_crl(_rec(1), None)
    assert not store.put_crl(_rec(1), None)  # a second "first" CRL loses
    assert store.put_crl(_rec(2), 1)
    assert not store.put_crl(_rec(3), 1)  # stale previous number loses
    got = store.get_crl("default")
    assert got is not None and got.number == 2 and got.der == bytes([2]) * 8 and got.next_update.tzinfo is not None


def test_ok_concurrent_writers_one_wins(store: SqlStore) -> None:
    store.put_crl(_rec(1), None)
    results = together(6, lambda _i: store.put_crl(_rec(2), 1))  # raises if any call raised or hung
    assert len(results) == 6 and results.count(True) == 1 and results.count(False) == 5
    assert store.get_crl("default").number == 2  # type: ignore[union-attr]
