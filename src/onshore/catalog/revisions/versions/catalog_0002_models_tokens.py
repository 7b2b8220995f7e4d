"""the tables of models (models, model_datasets, model_key_wraps) and of serving tokens (serve_tokens)

Catalogs made before models and serving existed lack them; catalogs made since have them (made by
``create_all`` on first use), so each is created only where it is missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "catalog_0002"
down_revision = "catalog_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "models" not in have:
        op.create_table("models",
                        sa.Column("name", sa.String(64), primary_key=True),
                        sa.Column("site", sa.String(64), sa.ForeignKey("sites.name"), nullable=False),
                        sa.Column("purpose", sa.String(64), nullable=False),
                        sa.Column("base", sa.String(64)),
                        sa.Column("size", sa.String(16), nullable=False),
                        sa.Column("config", sa.Text, nullable=False),
                        sa.Column("folder", sa.Text, nullable=False),
                        sa.Column("files", sa.Text, nullable=False),
                        sa.Column("parameters", sa.BigInteger, nullable=False),
                        sa.Column("steps", sa.BigInteger, nullable=False),
                        sa.Column("world_size", sa.Integer, nullable=False),
                        sa.Column("metrics", sa.Text, nullable=False),
                        sa.Column("created_at", sa.String(32), nullable=False),
                        sa.Column("ledger_index", sa.BigInteger, nullable=False))
    if "model_datasets" not in have:
        op.create_table("model_datasets",
                        sa.Column("model", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
                        sa.Column("dataset", sa.String(64), sa.ForeignKey("datasets.name"), primary_key=True),
                        sa.Column("owner", sa.String(64), nullable=False),
                        sa.Column("embodiment", sa.String(64), nullable=False),
                        sa.Column("weight", sa.Text, nullable=False),
                        sa.Column("shards", sa.Text, nullable=False),
                        sa.Column("decision_index", sa.BigInteger, nullable=False))
    if "model_key_wraps" not in have:
        op.create_table("model_key_wraps",
                        sa.Column("model", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
                        sa.Column("site", sa.String(64), sa.ForeignKey("sites.name"), primary_key=True),
                        sa.Column("wrapped", sa.LargeBinary, nullable=False),
                        sa.Column("ledger_index", sa.BigInteger, nullable=False),
                        sa.Column("created_at", sa.String(32), nullable=False))
    if "serve_tokens" not in have:
        op.create_table("serve_tokens",
                        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                        sa.Column("site", sa.String(64), sa.ForeignKey("sites.name"), nullable=False),
                        sa.Column("client", sa.String(64), nullable=False),
                        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
                        sa.Column("created_at", sa.String(32), nullable=False),
                        sa.Column("revoked_at", sa.String(32)))


def downgrade() -> None:
    for table in ("serve_tokens", "model_key_wraps", "model_datasets", "models"):
        op.drop_table(table)
