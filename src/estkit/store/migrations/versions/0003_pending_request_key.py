"""Pending requests are found by what they ask for, not by the CSR's bytes.

A linked CSR (RFC 7030 §3.5) is re-signed with each connection's tls-unique,
so a client retrying a held request (§4.2.3) sends other bytes for the same
request.  Rows from before keep being found by their CSR fingerprint.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pending") as batch:
        batch.add_column(sa.Column("request_key", sa.String(64), nullable=True))
    op.create_index("ix_pending_request_key", "pending", ["identity", "label", "request_key"])


def downgrade() -> None:
    op.drop_index("ix_pending_request_key", "pending")
    with op.batch_alter_table("pending") as batch:
        batch.drop_column("request_key")
