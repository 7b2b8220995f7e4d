"""the catalog's tables as every workspace has had them: settings, sites, members, embodiments,
datasets, shards, key wraps, witnesses

A frozen copy of those tables (not an import of onshore.catalog.schema, which moves on): a revision
describes the schema as it was when it was written.
"""

import sqlalchemy as sa
from alembic import op

revision = "catalog_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("settings",
                    sa.Column("key", sa.String(64), primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
    op.create_table("sites",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("jurisdiction", sa.String(2), nullable=False),
                    sa.Column("roles", sa.String(64), nullable=False),
                    sa.Column("operator", sa.Text, nullable=False),
                    sa.Column("root", sa.Text, nullable=False),
                    sa.Column("public_key", sa.String(64), nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False))
    op.create_table("members",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("public_key", sa.String(64), nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False))
    op.create_table("embodiments",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("spec", sa.Text, nullable=False),
                    sa.Column("sha256", sa.String(64), nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False))
    op.create_table("datasets",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("owner", sa.String(64), sa.ForeignKey("members.name"), nullable=False),
                    sa.Column("embodiment", sa.String(64), sa.ForeignKey("embodiments.name"), nullable=False),
                    sa.Column("policy", sa.Text, nullable=False),
                    sa.Column("policy_hash", sa.String(64), nullable=False),
                    sa.Column("status", sa.String(16), nullable=False),
                    sa.Column("episodes", sa.BigInteger, nullable=False),
                    sa.Column("frames", sa.BigInteger, nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False),
                    sa.Column("withdrawn_at", sa.String(32)))
    op.create_table("shards",
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("dataset", sa.String(64), sa.ForeignKey("datasets.name"), nullable=False),
                    sa.Column("site", sa.String(64), sa.ForeignKey("sites.name"), nullable=False),
                    sa.Column("sha256", sa.String(64), nullable=False),
                    sa.Column("path", sa.Text, nullable=False),
                    sa.Column("salt", sa.String(32), nullable=False),
                    sa.Column("bytes", sa.BigInteger, nullable=False),
                    sa.Column("frames", sa.BigInteger, nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False),
                    sa.UniqueConstraint("dataset", "site", "sha256"))
    op.create_table("key_wraps",
                    sa.Column("dataset", sa.String(64), sa.ForeignKey("datasets.name"), primary_key=True),
                    sa.Column("site", sa.String(64), sa.ForeignKey("sites.name"), primary_key=True),
                    sa.Column("wrapped", sa.LargeBinary, nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False))
    op.create_table("witnesses",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("vkey", sa.Text, nullable=False),
                    sa.Column("created_at", sa.String(32), nullable=False))


def downgrade() -> None:
    for table in ("witnesses", "key_wraps", "shards", "datasets", "embodiments", "members", "sites", "settings"):
        op.drop_table(table)
