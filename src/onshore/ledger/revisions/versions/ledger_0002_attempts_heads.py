"""the attempt journal (ledger_attempts) and the newest entry per subject (ledger_heads, filled from the entries)

Ledgers made before the crash journal lack ledger_attempts, and those made before subject links lack
ledger_heads; ledgers made since have them, so each is created only where it is missing.
"""

import sqlalchemy as sa
from alembic import op

from onshore.ledger.log import fill_heads

revision = "ledger_0002"
down_revision = "ledger_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "ledger_attempts" not in have:
        op.create_table("ledger_attempts",
                        sa.Column("id", sa.String(32), primary_key=True),
                        sa.Column("op", sa.String(16), nullable=False),
                        sa.Column("dataset", sa.String(64), nullable=False),
                        sa.Column("site", sa.String(64), nullable=True),
                        sa.Column("actor", sa.String(80), nullable=False),
                        sa.Column("decision_index", sa.BigInteger, nullable=False),
                        sa.Column("state", sa.String(16), nullable=False),
                        sa.Column("outcome", sa.Text, nullable=False),
                        sa.Column("started_at", sa.String(32), nullable=False))
    if "ledger_heads" not in have:
        op.create_table("ledger_heads",
                        sa.Column("subject", sa.String(140), primary_key=True),
                        sa.Column("idx", sa.BigInteger, nullable=False),
                        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False))
        fill_heads(op.get_bind())


def downgrade() -> None:
    op.drop_table("ledger_heads")
    op.drop_table("ledger_attempts")
