"""Authorization: Digest HA1 per user, once-only claims, an index for rate limits.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("digest_ha1", sa.JSON, nullable=True))
    op.create_index("ix_certificates_requester_issued", "certificates", ["requester", "issued_at"])
    op.create_table(
        "claims",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("serial", sa.String(42), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("claims")
    op.drop_index("ix_certificates_requester_issued", "certificates")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("digest_ha1")
