"""IssueGuard in the store, on SQLite and a real PostgreSQL: a one-time code,
a once-only claim and a rate limit hold under concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import fresh_database

from estkit.ca.ports import AuditEvent, GuardFailed, IssuedCert, IssueGuard, UserRecord
from estkit.store import SqlStore, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/estkit.db"
    return fresh_database(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    s = open_store(url)
    yield s
    s.close()


_SERIAL = iter(range(1000, 10**6))


def _cert(requester: str = "user:dev") -> IssuedCert:
    serial = next(_SERIAL)
    now = datetime.now(UTC)
    return IssuedCert(serial=serial, ca="default", label="default", subject=f"CN=d{serial}", sans=(),
                      not_before=now, not_after=now + timedelta(days=1), requester=requester, key_type="ec:P-256",
                      csr_fingerprint="cd" * 32, der=serial.to_bytes(8, "big"))


def _race(url: str, n: int, attempt: Callable[[SqlStore], None]) -> list[str]:
    """n threads, each with its own store (own connections, as worker processes have), released together."""
    stores = [open_store(url, upgrade=False) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[str] = []

    def run(s: SqlStore) -> None:
        barrier.wait()
        try:
            attempt(s)
            results.append("ok")
        except GuardFailed as exc:
            results.append(exc.rule)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    return results


def test_ok_one_time_user_issues_exactly_once_under_concurrency(store: SqlStore, url: str) -> None:
    store.add_user(UserRecord("dev", "scrypt$x", datetime.now(UTC), one_time=True))
    results = _race(url, 8, lambda s: s.record_issued(_cert(), AuditEvent("issued", "user:dev", "-", "default"),
                                                       IssueGuard(consume_user="dev")))
    assert sorted(results) == ["ok"] + ["one-time"] * 7
    assert store.count_certificates() == 1 and len(store.list_audit(event="issued")) == 1
    u = store.get_user("dev")
    assert u is not None and u.used_at is not None


def test_ok_claim_taken_once_and_allowed_again(store: SqlStore, url: str) -> None:
    guard = IssueGuard(claim="cert:abc", policy="idevid")
    results = _race(url, 6, lambda s: s.record_issued(_cert("bootstrap:CN=x"), None, guard))
    assert sorted(results) == ["ok"] + ["once"] * 5 and store.count_certificates() == 1
    claims = store.list_claims()
    assert [c.key for c in claims] == ["cert:abc"] and claims[0].identity == "bootstrap:CN=x"
    assert store.remove_claim("cert:abc") and not store.remove_claim("cert:abc")
    store.record_issued(_cert("bootstrap:CN=x"), None, guard)
    assert store.count_certificates() == 2


def test_ok_rate_limit_holds_under_concurrency(store: SqlStore, url: str) -> None:
    guard = IssueGuard(rate_count=3, rate_seconds=3600, policy="p")
    store.record_issued(_cert("cert:CN=gw"), None, guard)
    results = _race(url, 8, lambda s: s.record_issued(_cert("cert:CN=gw"), None, guard))
    assert sorted(results) == ["ok", "ok"] + ["rate"] * 6
    store.record_issued(_cert("cert:CN=other"), None, guard)  # another requester has its own budget
    assert store.count_certificates() == 4


def test_ok_audit_filters(store: SqlStore) -> None:
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    store.audit(AuditEvent("refused", "user:a", "127.0.0.1:1", "default", detail="rule 'cn'"))
    store.record_issued(c := _cert("user:a"), AuditEvent("issued", "user:a", "127.0.0.1:1", "default", serial=1234))
    assert [e.event for e in store.list_audit(identity="user:a")] == ["issued", "refused"]
    assert [e.event for e in store.list_audit(serial=1234)] == ["issued"]
    assert store.list_audit(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(store.list_audit(since=t0)) == 2 and c.serial


def test_ok_digest_ha1_round_trip(store: SqlStore) -> None:
    store.add_user(UserRecord("d", "scrypt$x", datetime.now(UTC), digest_ha1={"MD5": "aa", "SHA-256": "bb"}))
    u = store.get_user("d")
    assert u is not None and u.digest_ha1 == {"MD5": "aa", "SHA-256": "bb"}


def test_ok_migration_0002_upgrades_a_0001_store_in_place(url: str) -> None:
    """A store created before authorization existed keeps its users and certificates."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, inspect, text

    from estkit.store.sql import _MIGRATIONS
    engine = create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", _MIGRATIONS)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    assert "claims" not in inspect(engine).get_table_names()
    with engine.begin() as conn:  # written as 0001 knew the table: no digest_ha1 column yet
        conn.execute(text("INSERT INTO users (name, password_hash, created_at, one_time, disabled) "
                          "VALUES ('old', 'scrypt$x', :t, false, false)"), {"t": datetime.now(UTC)})
    engine.dispose()
    s = open_store(url)
    u = s.get_user("old")
    assert u is not None and u.digest_ha1 is None and u.policy is None
    s.record_issued(_cert("user:old"), None, IssueGuard(claim="k", rate_count=1, rate_seconds=60))
    assert [c.key for c in s.list_claims()] == ["k"]
    assert "ix_certificates_requester_issued" in {i["name"] for i in inspect(s.engine).get_indexes("certificates")}
    s.close()
