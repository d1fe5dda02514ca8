"""The storage protocol against both SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import fresh_database
from together import together

from estkit.ca.ports import AuditEvent, Conflict, IssuedCert, PendingStatus, UserRecord
from estkit.store import SqlStore, open_store
from estkit.store.driverinsert import DriverInsert
from estkit.store.models import Audit


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/estkit.db"
    else:
        url = fresh_database(request.getfixturevalue("pg_url"))
    s = open_store(url)
    yield s
    s.close()


def _cert(serial: int, ca: str = "default") -> IssuedCert:
    now = datetime.now(UTC).replace(microsecond=0)
    return IssuedCert(serial=serial, ca=ca, label="default", subject=f"CN=dev{serial}", sans=("DNS:a.example",),
                      not_before=now, not_after=now + timedelta(days=1), requester="user:alice",
                      key_type="ec:P-256", csr_fingerprint="ab" * 32, der=b"\x30\x00" + serial.to_bytes(20, "big"))


def test_ok_record_and_read_back_large_serial(store: SqlStore) -> None:
    serial = (1 << 158) + 12345  # 159-bit serials do not fit a BIGINT: stored as hex
    store.record_issued(_cert(serial), AuditEvent("issued", "user:alice", "127.0.0.1:1", "default", serial=serial))
    got = store.get_certificate(serial)
    assert got is not None and got.serial == serial and got.sans == ("DNS:a.example",)
    assert got.not_after.tzinfo is not None and not got.revoked
    assert store.serial_exists(serial) and not store.serial_exists(serial + 1)
    assert store.count_certificates() == 1
    assert store.list_audit(event="issued")[0].serial == serial


def test_fail_duplicate_serial_is_conflict_and_keeps_first(store: SqlStore) -> None:
    store.record_issued(_cert(7))
    with pytest.raises(Conflict):
        store.record_issued(_cert(7, ca="other"))
    got = store.get_certificate(7)
    assert got is not None and got.ca == "default"


def test_ok_revoke_first_wins(store: SqlStore) -> None:
    store.record_issued(_cert(9))
    t1 = datetime.now(UTC).replace(microsecond=0)
    assert store.revoke(9, "keyCompromise", t1).revoked  # type: ignore[union-attr]
    again = store.revoke(9, "superseded", t1 + timedelta(hours=1))
    assert again is not None and again.revocation_reason == "keyCompromise"
    assert [c.serial for c in store.list_revoked("default")] == [9]
    assert store.revoke(10, "superseded", t1) is None


def test_ok_users_and_one_time_consumed_once_under_concurrency(store: SqlStore) -> None:
    now = datetime.now(UTC)
    store.add_user(UserRecord("dev", "scrypt$x", now, one_time=True, policy={"labels": ["default"]}))
    with pytest.raises(Conflict):
        store.add_user(UserRecord("dev", "scrypt$y", now))
    # Released together at a barrier; raises if any call raised or hung.
    results = together(8, lambda _i: store.consume_one_time("dev", now))
    assert len(results) == 8 and results.count(True) == 1 and results.count(False) == 7
    u = store.get_user("dev")
    assert u is not None and u.used_at is not None and u.policy == {"labels": ["default"]}
    assert store.remove_user("dev") and not store.remove_user("dev")


def test_ok_pending_dedup(store: SqlStore) -> None:
    now = datetime.now(UTC)
    a = store.add_pending("user:a", "default", "simpleenroll", "f" * 64, b"csr", now)
    b = store.add_pending("user:a", "default", "simpleenroll", "f" * 64, b"csr", now)
    assert a.id == b.id and len(store.list_pending(PendingStatus.PENDING)) == 1
    assert store.decide_pending(a.id, PendingStatus.APPROVED, "ok", now, expected=PendingStatus.PENDING)
    assert not store.decide_pending(a.id, PendingStatus.REJECTED, "late", now, expected=PendingStatus.PENDING)


def test_ok_pending_found_by_request_key(store: SqlStore) -> None:
    """RFC 7030 §3.5/§4.2.3: a re-signed linked CSR (other bytes, same request) finds its request;
    a row stored without a request key is still found by its CSR fingerprint."""
    now = datetime.now(UTC)
    a = store.add_pending("user:a", "default", "simpleenroll", "1" * 64, b"csr1", now, "k" * 64)
    b = store.add_pending("user:a", "default", "simpleenroll", "2" * 64, b"csr2", now, "k" * 64)
    assert a.id == b.id and a.request_key == "k" * 64
    found = store.find_pending("user:a", "default", "3" * 64, "k" * 64)
    assert found is not None and found.id == a.id
    assert store.find_pending("user:b", "default", "1" * 64, "k" * 64) is None
    assert store.find_pending("user:a", "default", "1" * 64, "j" * 64) is None
    old = store.add_pending("user:a", "default", "simpleenroll", "9" * 64, b"csr9", now)
    again = store.find_pending("user:a", "default", "9" * 64, "x" * 64)
    assert again is not None and again.id == old.id and again.request_key is None


def test_ok_migration_is_idempotent(store: SqlStore) -> None:
    from estkit.store.sql import migrate
    migrate(store.engine)
    assert store.count_certificates() == 0


def test_ok_driver_level_inserts_read_back_exactly(store: SqlStore) -> None:
    """The enrollment's INSERTs bypass SQLAlchemy's compiler (estkit.store.driverinsert):
    what they write must read back as written, microseconds included, and
    compare with values SQLAlchemy binds (the audit's ``since``, rate limits)."""
    now = datetime.now(UTC).replace(microsecond=0)  # a value without a fraction must still compare right
    cert = IssuedCert(serial=(1 << 158) + 1, ca="default", label="lab", subject="CN=d,O=x", sans=("DNS:a", "IP:10.0.0.1"),
                      not_before=now, not_after=now + timedelta(days=3), requester="user:bob", key_type="ec:P-256",
                      csr_fingerprint="cd" * 32, der=b"\x30\x82\x00\x00" + bytes(range(256)))
    store.record_issued(cert, AuditEvent("issued", "user:bob", "127.0.0.1:9", "lab", "cd" * 32, cert.serial,
                                         "simpleenroll", at=now))
    got = store.get_certificate(cert.serial)
    assert got is not None
    assert (got.ca, got.label, got.subject, got.sans, got.requester, got.der) == \
        (cert.ca, cert.label, cert.subject, cert.sans, cert.requester, cert.der)
    assert got.not_before == now and got.not_after == now + timedelta(days=3) and not got.revoked
    assert [e.serial for e in store.list_audit(since=now)] == [cert.serial]
    assert store.list_audit(since=now + timedelta(microseconds=1)) == []
    # Several rows in one statement (what group commit sends under load).
    ins = DriverInsert(Audit.__table__, ("at", "event", "identity", "peer", "label", "detail"),  # type: ignore[arg-type]
                       store.engine.dialect)
    with store.engine.begin() as conn:
        ins.execute(conn, [dict(at=now + timedelta(seconds=i / 2), event="probe", identity=f"u{i}", peer="-", label="lab",
                                detail="") for i in range(3)])
    probes = store.list_audit(event="probe")
    assert sorted((e.identity, e.at) for e in probes) == [(f"u{i}", now + timedelta(seconds=i / 2)) for i in range(3)]


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def test_ok_upgrade_records_the_enrollee_of_earlier_certificates(db: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    """Migration 0004 on a store written before it: a certificate a user requested gets that user as
    its enrollee; renewals, RA and identityProofV2 requests stay unknown (their own names only)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, text

    from estkit.store.sql import _MIGRATIONS

    url = f"sqlite:///{tmp_path}/estkit.db" if db == "sqlite" else fresh_database(request.getfixturevalue("pg_url"))
    engine = create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", _MIGRATIONS)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    now = datetime.now(UTC)
    rows = {"1a": "user:alice", "2b": "cert:CN=alice-dev", "3c": "user:cmc:gw", "4d": "bootstrap:CN=idevid"}
    with engine.begin() as conn:
        for serial, requester in rows.items():
            conn.execute(text("INSERT INTO certificates (serial, ca, label, subject, sans, not_before, not_after, "
                              "requester, key_type, csr_fingerprint, der, issued_at) VALUES (:s, 'default', "
                              "'default', 'CN=x', '[]', :n, :n, :r, 'ec:P-256', 'ab', :d, :n)"),
                         {"s": serial, "n": now, "r": requester, "d": bytes.fromhex(serial)})
    engine.dispose()
    s = open_store(url)
    try:
        got = {f"{k:x}": s.get_certificate(k).enrollee for k in (0x1a, 0x2b, 0x3c, 0x4d)}  # type: ignore[union-attr]
        assert got == {"1a": "user:alice", "2b": "", "3c": "", "4d": ""}
        s.record_issued(replace(_cert(7), enrollee="user:bob"))
        assert s.get_certificate(7).enrollee == "user:bob"  # type: ignore[union-attr]
    finally:
        s.close()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def test_ok_rate_window_follows_the_injected_clock(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """One clock for the CA and the store: a fake clock moves the recorded time and the rate window."""
    from estkit.ca.ports import GuardFailed, IssueGuard

    t = [datetime(2030, 1, 1, tzinfo=UTC)]
    url = f"sqlite:///{tmp_path}/estkit.db" if db == "sqlite" else fresh_database(request.getfixturevalue("pg_url"))
    s = open_store(url, clock=lambda: t[0])
    guard = IssueGuard(rate_count=2, rate_seconds=3600, policy="p")
    try:
        s.record_issued(_cert(1), guard=guard)
        s.record_issued(_cert(2), guard=guard)
        with pytest.raises(GuardFailed):
            s.record_issued(_cert(3), guard=guard)
        assert s.get_certificate(1).issued_at == t[0]  # type: ignore[union-attr]
        t[0] += timedelta(hours=1, seconds=1)  # the window has passed on the store's clock, not on the wall's
        s.record_issued(_cert(3), guard=guard)
        assert s.get_certificate(3).issued_at == t[0]  # type: ignore[union-attr]
    finally:
        s.close()
