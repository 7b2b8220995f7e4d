"""entries by kind (index ledger_entries_kind on kind, idx)

``Ledger.entries(kinds=...)`` is how the decision point reads the ledger's governance (sites,
members, grants, withdrawals, releases) and how the key service and doctor find their entries.
Without an index every such read scanned every leaf, so deciding got slower as decisions piled
up (issue 22); with it, the read follows the entries of those kinds only. The database fills the
index for the entries already there when it is created.
"""

import sqlalchemy as sa
from alembic import op

revision = "ledger_0004"
down_revision = "ledger_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("ledger_entries")}
    if "ledger_entries_kind" not in have:
        op.create_index("ledger_entries_kind", "ledger_entries", ["kind", "idx"])


def downgrade() -> None:
    op.drop_index("ledger_entries_kind", table_name="ledger_entries")
