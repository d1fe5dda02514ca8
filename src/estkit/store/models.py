"""The tables.  Changes go through a migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Certificate", "User", "Audit", "Pending", "CrlState", "ClaimRow"]


class Base(DeclarativeBase):
    """Declarative base of estkit's tables."""


class Certificate(Base):
    """Every certificate the CA issued, recorded before it is returned."""

    __tablename__ = "certificates"
    # Serials are up to 159 bits: stored as lower-case hex, unique.
    serial: Mapped[str] = mapped_column(String(42), primary_key=True)
    ca: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[str] = mapped_column(Text)  # JSON list
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requester: Mapped[str] = mapped_column(String(255))
    key_type: Mapped[str] = mapped_column(String(32))
    csr_fingerprint: Mapped[str] = mapped_column(String(64))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Who obtained the first certificate of its chain of renewals (NULL: unknown, issued before 0004).
    enrollee: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (
        Index("ix_certificates_ca_revoked", "ca", "revoked_at"),
        Index("ix_certificates_issued_at", "issued_at"),
        Index("ix_certificates_requester_issued", "requester", "issued_at"),  # rate limits
    )


class User(Base):
    """HTTP Basic identities (passwords only as slow salted hashes)."""

    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    one_time: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    policy: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    digest_ha1: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)


class Audit(Base):
    """Every decision, append-only."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event: Mapped[str] = mapped_column(String(32))
    identity: Mapped[str] = mapped_column(String(255))
    peer: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    csr_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_audit_at", "at"),)


class Pending(Base):
    """Enrollment requests held for manual approval."""

    __tablename__ = "pending"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(32))
    csr_fingerprint: Mapped[str] = mapped_column(String(64))
    csr_der: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
    request_key: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_pending_lookup", "identity", "label", "csr_fingerprint"),
                      Index("ix_pending_request_key", "identity", "label", "request_key"))


class CrlState(Base):
    """The current CRL of each CA: its number and DER."""

    __tablename__ = "crl_state"
    ca: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    this_update: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_update: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    der: Mapped[bytes] = mapped_column(LargeBinary)


class ClaimRow(Base):
    """Once-only enrollments that were used (a bootstrap certificate's), by key."""

    __tablename__ = "claims"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    identity: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
