"""The CA's storage protocol (``estkit.ca.ports.Store``) over SQLAlchemy Core.

One code path for SQLite and PostgreSQL.  SQLite runs in WAL mode with a busy
timeout so several server processes can share one file.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (Connection, Engine, Table, and_, bindparam, create_engine, event, func, insert, or_, select, text,
                        update)
from sqlalchemy import delete as sa_delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (DisconnectionError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from estkit.ca.ports import (AuditEvent, Claim, Conflict, CrlRecord, GuardFailed, IssuedCert, IssueGuard,
                             CertQuery, CertStatus, PendingRequest, PendingStatus, StoredCert, StoreError, StoreUnavailable,
                             UserRecord, utc_now)
from estkit.store.driverinsert import DriverInsert
from estkit.store.driversql import DriverSelect, ThreadConnections, driver_transaction
from estkit.store.groupcommit import GroupCommit
from estkit.store.models import Audit, Certificate, ClaimRow, CrlState, Pending, User
from estkit.store.writelock import WriteLock

__all__ = ["SqlStore", "PoolOptions", "open_store", "migrate"]

_CERTS: Table = Certificate.__table__  # type: ignore[assignment]
_USERS: Table = User.__table__  # type: ignore[assignment]
_AUDIT: Table = Audit.__table__  # type: ignore[assignment]
_PENDING: Table = Pending.__table__  # type: ignore[assignment]
_CRL: Table = CrlState.__table__  # type: ignore[assignment]
_CLAIMS: Table = ClaimRow.__table__  # type: ignore[assignment]
_MIGRATIONS = str(Path(__file__).parent / "migrations")
# Statements built once with their values passed as parameters:
# ``insert(t).values(**row)`` builds a bind parameter per column on every call
# (a third of an enrollment's time, docs/benchmark.md).  The two INSERTs of an
# enrollment go further, to the driver (estkit.store.driverinsert).
_INSERT_AUDIT = insert(_AUDIT)
_CERT_COLUMNS = ("serial", "ca", "label", "subject", "sans", "not_before", "not_after", "requester", "key_type",
                 "csr_fingerprint", "der", "issued_at", "enrollee")
_AUDIT_COLUMNS = ("at", "event", "identity", "peer", "label", "csr_fingerprint", "serial", "detail")
_GET_CERT = select(_CERTS).where(_CERTS.c.serial == bindparam("serial"))
_GET_USER = select(_USERS).where(_USERS.c.name == bindparam("name"))


def _utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _hex(serial: int) -> str:
    return format(serial, "x")


# What says "the database cannot be reached now" rather than "this statement is wrong":
# a refused or lost connection, a server shutting down (OperationalError, InterfaceError),
# no pooled connection free within pool_timeout (sqlalchemy.exc.TimeoutError).
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def _store_error(exc: SQLAlchemyError) -> StoreError:
    """What the CA is told of a database error."""
    if isinstance(exc, IntegrityError):
        return Conflict(str(exc.orig))
    if isinstance(exc, _UNAVAILABLE):
        # The database is down, restarting or out of connections: the request
        # gets 503 and Retry-After; the pool reconnects by itself (pre-ping).
        return StoreUnavailable(f"the store is unavailable: {str(exc).splitlines()[0]}")
    return StoreError(str(exc).splitlines()[0])


@dataclass(frozen=True)
class PoolOptions:
    """Each process's connection pool (PostgreSQL; SQLite keeps its own):
    ``[store]`` pool_size, pool_max_overflow, pool_timeout_seconds and
    connect_timeout_seconds.  Waiting longer than these is a 503."""

    size: int = 5
    max_overflow: int = 10
    timeout: float = 5.0
    connect_timeout: int = 3


def _make_engine(url: str, pool: PoolOptions = PoolOptions()) -> Engine:
    if url.startswith("sqlite"):
        # Pooled: opening a connection and setting its pragmas cost more than
        # the insert of an enrollment (the profile in docs/benchmark.md).
        memory = ":memory:" in url
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **({} if memory else {"poolclass": QueuePool, "pool_size": 8, "max_overflow": 24}))

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk (fsync of the WAL) before the certificate
            # is returned, so not even a power cut loses the record of one.
            # Group commit (estkit.store.groupcommit) shares that fsync among
            # the concurrent enrollments of a worker.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # libpq's connect_timeout (seconds, at least 2): a database host that
        # does not answer costs a request this long, not the TCP timeout.
        connect_args["connect_timeout"] = max(2, pool.connect_timeout)
    return create_engine(url, pool_pre_ping=True, pool_size=pool.size, max_overflow=pool.max_overflow,
                         pool_timeout=pool.timeout, connect_args=connect_args)


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", _MIGRATIONS)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _sqlite_lock(url: str) -> WriteLock | None:
    """The writers' lock of a SQLite file (None for other databases)."""
    if not url.startswith("sqlite:///") or ":memory:" in url:
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return WriteLock(Path(path + "-lock"))


def open_store(url: str, *, upgrade: bool = True, clock: Callable[[], datetime] = utc_now,
               pool: PoolOptions = PoolOptions()) -> SqlStore:
    """A store on ``url``; with ``upgrade`` the schema is migrated first.
    ``clock`` stamps what it records and places rate windows: give it the CA's
    clock, so that a fake one moves both."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    store = SqlStore(_make_engine(url, pool), write_lock=_sqlite_lock(url), clock=clock)
    if upgrade:
        try:
            migrate(store.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the store: {exc}") from exc
    return store


class SqlStore:
    """Implements ``estkit.ca.ports.Store``."""

    def __init__(self, engine: Engine, write_lock: WriteLock | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self.clock = clock
        self._pid = os.getpid()
        self._write_lock = write_lock
        self._insert_cert = DriverInsert(_CERTS, _CERT_COLUMNS, engine.dialect)
        self._insert_audit = DriverInsert(_AUDIT, _AUDIT_COLUMNS, engine.dialect)
        self._select_user = DriverSelect(_GET_USER, engine.dialect)
        url = engine.url
        on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and url.query.get("mode") != "memory"
        self._threads = ThreadConnections(engine) if on_file else None
        self._issued: GroupCommit[tuple[dict[str, Any], dict[str, Any] | None]] = GroupCommit(
            self._write_issued, lambda one: self._write_issued([one]))

    def _after_fork(self) -> None:
        """A forked worker must not reuse the parent's sockets and SQLite handles."""
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            if self._threads is not None:
                self._threads.forget()
            self._pid = os.getpid()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Connection]:
        """A transaction; ``write`` ones queue on the SQLite writers' lock."""
        self._after_fork()
        lock = self._write_lock.held() if write and self._write_lock is not None else nullcontext()
        try:
            with lock, self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise _store_error(exc) from exc

    @contextmanager
    def _driver_tx(self, write: bool = False) -> Iterator[Any]:
        """Like :meth:`_tx`, a DB-API cursor instead of a Connection
        (estkit.store.driversql: the statements of every enrollment)."""
        self._after_fork()
        lock = self._write_lock.held() if write and self._write_lock is not None else nullcontext()
        tx = self._threads.transaction() if self._threads is not None else driver_transaction(self.engine)
        try:
            with lock, tx as cursor:
                yield cursor
        except SQLAlchemyError as exc:
            raise _store_error(exc) from exc

    def close(self) -> None:
        """Release every pooled connection (and the threads' own, SQLite)."""
        if self._threads is not None:
            self._threads.close()
        self.engine.dispose()

    # -- certificates -------------------------------------------------------

    def record_issued(self, cert: IssuedCert, audit: AuditEvent | None = None,
                      guard: IssueGuard | None = None) -> None:
        now = self.clock()
        row = dict(serial=_hex(cert.serial), ca=cert.ca, label=cert.label, subject=cert.subject,
                   sans=json.dumps(list(cert.sans)), not_before=cert.not_before, not_after=cert.not_after,
                   requester=cert.requester, key_type=cert.key_type, csr_fingerprint=cert.csr_fingerprint,
                   der=cert.der, issued_at=now, enrollee=cert.enrollee[:255] or None)
        audit_row = self._audit_row(audit) if audit is not None else None
        if guard is None:
            # Concurrent enrollments share a transaction; each returns once its row is committed.
            self._issued.submit((row, audit_row))
            return
        with self._tx(write=True) as conn:  # a guarded issuance is a transaction of its own
            if audit_row is not None:
                self._insert_audit.execute(conn, [audit_row])
            self._insert_cert.execute(conn, [row])
            self._guard(conn, guard, cert, now)  # raising rolls everything above back

    def _write_issued(self, rows: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
        with self._driver_tx(write=True) as cursor:
            audits = [a for _, a in rows if a is not None]
            if audits:
                self._insert_audit.run(cursor, audits)
            self._insert_cert.run(cursor, [c for c, _ in rows])

    @staticmethod
    def _guard(conn: Connection, guard: IssueGuard, cert: IssuedCert, now: datetime) -> None:
        """The guard's conditions, in the recording transaction (see IssueGuard)."""
        if guard.consume_user is not None:
            # Guarded UPDATE: of concurrent transactions exactly one sees used_at NULL
            # (PostgreSQL re-checks the row after the first commits; SQLite serializes writers).
            res = conn.execute(update(_USERS).where(_USERS.c.name == guard.consume_user, _USERS.c.used_at.is_(None))
                               .values(used_at=now))
            if res.rowcount != 1:
                raise GuardFailed("one-time", "not authorized: rule 'one-time': the one-time enrollment code "
                                  "was already used")
        if guard.claim is not None:
            ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(_CLAIMS)
            taken = conn.execute(ins.values(key=guard.claim, identity=cert.requester[:255], at=now,
                                            serial=_hex(cert.serial)).on_conflict_do_nothing()
                                 .returning(_CLAIMS.c.key)).first()
            if taken is None:  # another transaction holds (or committed) this claim
                raise GuardFailed("once", f"not authorized: policy '{guard.policy}' rule 'once': this identity "
                                  "has already enrolled once (an operator may allow it again)")
        if guard.rate_count is not None:
            if conn.dialect.name == "postgresql":
                # Serialize the requester's count-and-insert across connections and nodes.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                             {"k": cert.requester})
            since = now - timedelta(seconds=guard.rate_seconds)
            n = conn.execute(select(func.count()).select_from(_CERTS).where(
                _CERTS.c.requester == cert.requester, _CERTS.c.issued_at > since)).scalar_one()
            if n > guard.rate_count:  # this certificate is already counted
                raise GuardFailed("rate", f"not authorized: policy '{guard.policy}' rule 'rate': at most "
                                  f"{guard.rate_count} certificates per {guard.rate_seconds}s for {cert.requester}")

    @staticmethod
    def _cert(row: Any) -> StoredCert:
        return StoredCert(
            serial=int(row.serial, 16), ca=row.ca, label=row.label, subject=row.subject,
            sans=tuple(json.loads(row.sans)), not_before=_utc(row.not_before),  # type: ignore[arg-type]
            not_after=_utc(row.not_after), requester=row.requester,  # type: ignore[arg-type]
            der=row.der, issued_at=_utc(row.issued_at),  # type: ignore[arg-type]
            revoked_at=_utc(row.revoked_at), revocation_reason=row.revocation_reason, enrollee=row.enrollee or "")

    def get_certificate(self, serial: int) -> StoredCert | None:
        with self._tx() as conn:
            row = conn.execute(_GET_CERT, {"serial": _hex(serial)}).first()
        return self._cert(row) if row else None

    def serial_exists(self, serial: int) -> bool:
        with self._tx() as conn:
            return conn.execute(select(_CERTS.c.serial).where(_CERTS.c.serial == _hex(serial))).first() is not None

    def revoke(self, serial: int, reason: str, at: datetime) -> StoredCert | None:
        with self._tx(write=True) as conn:
            conn.execute(update(_CERTS).where(_CERTS.c.serial == _hex(serial), _CERTS.c.revoked_at.is_(None))
                         .values(revoked_at=at, revocation_reason=reason))
            row = conn.execute(select(_CERTS).where(_CERTS.c.serial == _hex(serial))).first()
        return self._cert(row) if row else None

    def change_revocation(self, serial: int, *, expected_reason: str, reason: str | None) -> StoredCert | None:
        values: dict[str, Any] = {"revocation_reason": reason}
        if reason is None:
            values["revoked_at"] = None
        with self._tx(write=True) as conn:
            res = conn.execute(update(_CERTS).where(_CERTS.c.serial == _hex(serial),
                                                    _CERTS.c.revocation_reason == expected_reason).values(**values))
            if res.rowcount != 1:
                return None
            row = conn.execute(select(_CERTS).where(_CERTS.c.serial == _hex(serial))).first()
        return self._cert(row) if row else None

    def list_revoked(self, ca: str) -> list[StoredCert]:
        with self._tx() as conn:
            rows = conn.execute(select(_CERTS).where(_CERTS.c.ca == ca, _CERTS.c.revoked_at.is_not(None))
                                .order_by(_CERTS.c.revoked_at)).all()
        return [self._cert(r) for r in rows]

    def list_certificates(self, *, limit: int | None = 100, offset: int = 0,
                          query: CertQuery | None = None) -> list[StoredCert]:
        q = select(_CERTS)
        if query is not None:
            now = self.clock()
            if query.label is not None:
                q = q.where(_CERTS.c.label == query.label)
            if query.requester is not None:
                q = q.where(_CERTS.c.requester == query.requester)
            if query.status == CertStatus.REVOKED:
                q = q.where(_CERTS.c.revoked_at.is_not(None))
            elif query.status == CertStatus.EXPIRED:
                q = q.where(_CERTS.c.not_after <= now)
            elif query.status == CertStatus.VALID:
                q = q.where(_CERTS.c.revoked_at.is_(None), _CERTS.c.not_after > now)
            if query.expiring_before is not None:
                q = q.where(_CERTS.c.revoked_at.is_(None), _CERTS.c.not_after > now,
                            _CERTS.c.not_after <= query.expiring_before)
        q = q.order_by(_CERTS.c.issued_at.desc()).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(q).all()
        return [self._cert(r) for r in rows]

    def count_certificates(self) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(_CERTS)).scalar_one())

    # -- users --------------------------------------------------------------

    @staticmethod
    def _user(row: Mapping[Any, Any]) -> UserRecord:
        return UserRecord(name=row["name"], password_hash=row["password_hash"],
                          created_at=_utc(row["created_at"]),  # type: ignore[arg-type]
                          one_time=bool(row["one_time"]), expires_at=_utc(row["expires_at"]),
                          used_at=_utc(row["used_at"]), disabled=bool(row["disabled"]), policy=row["policy"],
                          digest_ha1=row["digest_ha1"])

    def add_user(self, user: UserRecord) -> None:
        with self._tx(write=True) as conn:
            conn.execute(insert(_USERS).values(
                name=user.name, password_hash=user.password_hash, created_at=user.created_at,
                one_time=user.one_time, expires_at=user.expires_at, used_at=user.used_at,
                disabled=user.disabled, policy=user.policy, digest_ha1=user.digest_ha1))

    def get_user(self, name: str) -> UserRecord | None:
        # Every Basic request reads its user (never cached: a disabled user, a
        # changed password take effect at the next request): on the driver.
        with self._driver_tx() as cursor:
            row = self._select_user.first(cursor, {"name": name})
        return self._user(row) if row else None

    def list_users(self) -> list[UserRecord]:
        with self._tx() as conn:
            rows = conn.execute(select(_USERS).order_by(_USERS.c.name)).all()
        return [self._user(r._mapping) for r in rows]

    def update_user(self, user: UserRecord) -> None:
        with self._tx(write=True) as conn:
            conn.execute(update(_USERS).where(_USERS.c.name == user.name).values(
                password_hash=user.password_hash, one_time=user.one_time, expires_at=user.expires_at,
                used_at=user.used_at, disabled=user.disabled, policy=user.policy, digest_ha1=user.digest_ha1))

    def remove_user(self, name: str) -> bool:
        with self._tx(write=True) as conn:
            return conn.execute(sa_delete(_USERS).where(_USERS.c.name == name)).rowcount > 0

    def replace_password_hash(self, name: str, old: str, new: str) -> bool:
        # Only this column, guarded by the old value: a concurrent password change
        # or one-time consumption is never undone by an upgrade of the hash.
        with self._tx(write=True) as conn:
            res = conn.execute(update(_USERS).where(_USERS.c.name == name, _USERS.c.password_hash == old)
                               .values(password_hash=new))
            return res.rowcount == 1

    def consume_one_time(self, name: str, at: datetime) -> bool:
        # One UPDATE guarded by "used_at IS NULL": of concurrent callers exactly one wins.
        with self._tx(write=True) as conn:
            res = conn.execute(update(_USERS).where(_USERS.c.name == name, _USERS.c.used_at.is_(None))
                               .values(used_at=at))
            return res.rowcount == 1

    # -- audit --------------------------------------------------------------

    def audit(self, event: AuditEvent) -> None:
        with self._tx(write=True) as conn:
            self._audit(conn, event)

    def _audit_row(self, event: AuditEvent) -> dict[str, Any]:
        return dict(at=event.at or self.clock(), event=event.event, identity=event.identity[:255],
                    peer=event.peer[:64], label=event.label, csr_fingerprint=event.csr_fingerprint,
                    serial=_hex(event.serial) if event.serial is not None else None, detail=event.detail)

    def _audit(self, conn: Connection, event: AuditEvent) -> None:
        conn.execute(_INSERT_AUDIT, self._audit_row(event))

    def list_audit(self, *, limit: int = 100, event: str | None = None, identity: str | None = None,
                   label: str | None = None, since: datetime | None = None,
                   serial: int | None = None) -> list[AuditEvent]:
        q = select(_AUDIT).order_by(_AUDIT.c.id.desc()).limit(limit)
        if since is not None:
            q = q.where(_AUDIT.c.at >= since)
        if serial is not None:
            q = q.where(_AUDIT.c.serial == _hex(serial))
        if event:
            q = q.where(_AUDIT.c.event == event)
        if identity:
            q = q.where(_AUDIT.c.identity == identity)
        if label is not None:
            q = q.where(_AUDIT.c.label == label)
        with self._tx() as conn:
            rows = conn.execute(q).all()
        return [AuditEvent(event=r.event, identity=r.identity, peer=r.peer, label=r.label,
                           csr_fingerprint=r.csr_fingerprint,
                           serial=int(r.serial, 16) if r.serial else None, detail=r.detail,
                           at=_utc(r.at), id=r.id) for r in rows]

    # -- once-only claims -------------------------------------------------------

    def list_claims(self) -> list[Claim]:
        with self._tx() as conn:
            rows = conn.execute(select(_CLAIMS).order_by(_CLAIMS.c.at.desc())).all()
        return [Claim(key=r.key, identity=r.identity, at=_utc(r.at),  # type: ignore[arg-type]
                      serial=int(r.serial, 16) if r.serial else None) for r in rows]

    def remove_claim(self, key: str) -> bool:
        with self._tx(write=True) as conn:
            return conn.execute(sa_delete(_CLAIMS).where(_CLAIMS.c.key == key)).rowcount > 0

    # -- pending ------------------------------------------------------------

    @staticmethod
    def _pending(r: Any) -> PendingRequest:
        return PendingRequest(id=r.id, identity=r.identity, label=r.label, operation=r.operation,
                              csr_fingerprint=r.csr_fingerprint, csr_der=r.csr_der, status=PendingStatus(r.status),
                              created_at=_utc(r.created_at), decided_at=_utc(r.decided_at),  # type: ignore[arg-type]
                              reason=r.reason, serial=int(r.serial, 16) if r.serial else None,
                              request_key=r.request_key)

    @staticmethod
    def _same_request(identity: str, label: str, fingerprint: str, request_key: str | None) -> Any:
        # Rows written before request keys existed are found by their CSR fingerprint.
        same = _PENDING.c.csr_fingerprint == fingerprint
        if request_key is not None:
            same = or_(_PENDING.c.request_key == request_key, and_(_PENDING.c.request_key.is_(None), same))
        return and_(_PENDING.c.identity == identity, _PENDING.c.label == label, same)

    def add_pending(self, identity: str, label: str, operation: str, fingerprint: str,
                    csr_der: bytes, at: datetime, request_key: str | None = None) -> PendingRequest:
        where = self._same_request(identity, label, fingerprint, request_key)
        with self._tx(write=True) as conn:
            row = conn.execute(select(_PENDING).where(where, _PENDING.c.status == PendingStatus.PENDING.value)).first()
            if row is None:
                conn.execute(insert(_PENDING).values(
                    identity=identity, label=label, operation=operation, csr_fingerprint=fingerprint,
                    csr_der=csr_der, status=PendingStatus.PENDING.value, created_at=at, reason="", request_key=request_key))
                row = conn.execute(select(_PENDING).where(where).order_by(_PENDING.c.id.desc())).first()
        return self._pending(row)

    def find_pending(self, identity: str, label: str, fingerprint: str,
                     request_key: str | None = None) -> PendingRequest | None:
        with self._tx() as conn:
            row = conn.execute(select(_PENDING).where(
                self._same_request(identity, label, fingerprint, request_key)).order_by(_PENDING.c.id.desc())).first()
        return self._pending(row) if row else None

    def get_pending(self, id: int) -> PendingRequest | None:
        with self._tx() as conn:
            row = conn.execute(select(_PENDING).where(_PENDING.c.id == id)).first()
        return self._pending(row) if row else None

    def list_pending(self, status: PendingStatus | None = None) -> list[PendingRequest]:
        q = select(_PENDING).order_by(_PENDING.c.id)
        if status:
            q = q.where(_PENDING.c.status == status.value)
        with self._tx() as conn:
            rows = conn.execute(q).all()
        return [self._pending(r) for r in rows]

    def decide_pending(self, id: int, status: PendingStatus, reason: str, at: datetime,
                       serial: int | None = None, expected: PendingStatus | None = None) -> bool:
        q = update(_PENDING).where(_PENDING.c.id == id)
        if expected is not None:
            q = q.where(_PENDING.c.status == expected.value)
        with self._tx(write=True) as conn:
            res = conn.execute(q.values(status=status.value, reason=reason, decided_at=at,
                                        serial=_hex(serial) if serial is not None else None))
            return res.rowcount == 1

    # -- CRLs ---------------------------------------------------------------

    def get_crl(self, ca: str) -> CrlRecord | None:
        with self._tx() as conn:
            r = conn.execute(select(_CRL).where(_CRL.c.ca == ca)).first()
        if r is None:
            return None
        return CrlRecord(ca=r.ca, number=int(r.number), this_update=_utc(r.this_update),  # type: ignore[arg-type]
                         next_update=_utc(r.next_update), der=r.der)  # type: ignore[arg-type]

    def publish_crl(self, ca: str, build: Callable[[int], CrlRecord]) -> CrlRecord:
        with self._tx(write=True) as conn:  # SQLite: the writers' lock serializes every process
            if conn.dialect.name == "postgresql":
                # Every node's signer queues here: a transaction-scoped advisory
                # lock per CA, released by the commit (or a lost connection).
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": zlib.crc32(f"estkit-crl:{ca}".encode())})
            r = conn.execute(select(_CRL.c.number).where(_CRL.c.ca == ca)).first()
            crl = build(int(r.number) + 1 if r is not None else 1)
            values = dict(number=crl.number, this_update=crl.this_update, next_update=crl.next_update, der=crl.der)
            if r is None:
                conn.execute(insert(_CRL).values(ca=ca, **values))
            else:
                conn.execute(update(_CRL).where(_CRL.c.ca == ca).values(**values))
        return crl

    def put_crl(self, crl: CrlRecord, previous_number: int | None) -> bool:
        values = dict(number=crl.number, this_update=crl.this_update, next_update=crl.next_update, der=crl.der)
        try:
            with self._tx(write=True) as conn:
                if previous_number is None:
                    conn.execute(insert(_CRL).values(ca=crl.ca, **values))
                    return True
                # Compare-and-set on the number: of concurrent writers exactly one wins.
                res = conn.execute(update(_CRL).where(_CRL.c.ca == crl.ca, _CRL.c.number == previous_number)
                                   .values(**values))
                return res.rowcount == 1
        except Conflict:
            return False
