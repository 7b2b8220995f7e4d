"""every entry by subject (ledger_subject_index, filled from the entries)

A dataset's or model's page and the ledger filtered by one read their entries with one indexed
query instead of a scan of every leaf (issue 22). Ledgers made before this revision get the table
filled from their entries; the append transaction keeps it current from then on.
"""

import sqlalchemy as sa
from alembic import op

from onshore.ledger.log import fill_subject_index

revision = "ledger_0003"
down_revision = "ledger_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "ledger_subject_index" not in set(sa.inspect(op.get_bind()).get_table_names()):
        op.create_table("ledger_subject_index",
                        sa.Column("subject", sa.String(140), primary_key=True),
                        sa.Column("idx", sa.BigInteger, primary_key=True))
        fill_subject_index(op.get_bind())


def downgrade() -> None:
    op.drop_table("ledger_subject_index")
