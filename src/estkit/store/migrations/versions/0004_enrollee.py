"""Each certificate records its enrollee: who obtained the first certificate of
its chain of renewals.  A certificate carries that identity's authority and
no more (docs/policy.md), so a restricted or disabled user's certificates
cannot step outside that user's rules.

Rows from before: a certificate whose requester was a user obtained it
directly, so that user is its enrollee.  The others (renewals, RA requests,
bootstrap) stay NULL, "unknown", and such certificates may ask only for their
own names.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("enrollee", sa.String(255), nullable=True))
    # (identityProofV2 identities were recorded as user:cmc:ID; they are not users of the store)
    op.execute("UPDATE certificates SET enrollee = requester "
               "WHERE requester LIKE 'user:%' AND requester NOT LIKE 'user:cmc:%'")


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("enrollee")
