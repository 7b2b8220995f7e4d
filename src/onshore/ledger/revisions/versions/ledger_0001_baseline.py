"""the ledger's tables as every workspace has had them: entries, tree nodes, checkpoints

A frozen copy of those tables (not an import of onshore.ledger.log, which moves on).
"""

import sqlalchemy as sa
from alembic import op

revision = "ledger_0001"
down_revision = None
branch_labels = None
depends_on = None

# INTEGER PRIMARY KEY is SQLite's rowid (see onshore.ledger.log); ledgers made before that keep BIGINT
_Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table("ledger_entries",
                    sa.Column("idx", _Key, primary_key=True, autoincrement=False),
                    sa.Column("kind", sa.String(32), nullable=False),
                    sa.Column("actor", sa.String(80), nullable=False),
                    sa.Column("leaf", sa.LargeBinary, nullable=False))
    op.create_table("ledger_nodes",
                    sa.Column("node", _Key, primary_key=True, autoincrement=False),
                    sa.Column("hash", sa.LargeBinary(32), nullable=False))
    op.create_table("ledger_checkpoints",
                    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
                    sa.Column("note", sa.Text, nullable=False))


def downgrade() -> None:
    for table in ("ledger_checkpoints", "ledger_nodes", "ledger_entries"):
        op.drop_table(table)
