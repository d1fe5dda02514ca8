"""Initial schema: certificates, users, audit, pending requests, CRL state.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(42), primary_key=True),
        sa.Column("ca", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("sans", sa.Text, nullable=False),
        sa.Column("not_before", TS, nullable=False),
        sa.Column("not_after", TS, nullable=False),
        sa.Column("requester", sa.String(255), nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("csr_fingerprint", sa.String(64), nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_certificates_ca_revoked", "certificates", ["ca", "revoked_at"])
    op.create_index("ix_certificates_issued_at", "certificates", ["issued_at"])
    op.create_table(
        "users",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("one_time", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("policy", sa.JSON, nullable=True),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("csr_fingerprint", sa.String(64), nullable=True),
        sa.Column("serial", sa.String(42), nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_table(
        "pending",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("csr_fingerprint", sa.String(64), nullable=False),
        sa.Column("csr_der", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("serial", sa.String(42), nullable=True),
    )
    op.create_index("ix_pending_lookup", "pending", ["identity", "label", "csr_fingerprint"])
    op.create_table(
        "crl_state",
        sa.Column("ca", sa.String(64), primary_key=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("this_update", TS, nullable=False),
        sa.Column("next_update", TS, nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for t in ("crl_state", "pending", "audit", "users", "certificates"):
        op.drop_table(t)
