"""Catalog tables (SQLAlchemy 2 Core). The same definitions run on SQLite and PostgreSQL.

Times are ISO 8601 UTC strings so that both backends store and compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

sites = Table(
    "sites",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("jurisdiction", String(2), nullable=False),
    Column("roles", String(64), nullable=False),  # comma-separated, sorted
    Column("operator", Text, nullable=False, default=""),
    Column("root", Text, nullable=False),  # storage folder (or URL later)
    Column("public_key", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
)

members = Table(
    "members",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
)

embodiments = Table(
    "embodiments",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("spec", Text, nullable=False),  # the TOML as registered
    Column("sha256", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("owner", String(64), ForeignKey("members.name"), nullable=False),
    Column("embodiment", String(64), ForeignKey("embodiments.name"), nullable=False),
    Column("policy", Text, nullable=False),  # the member's policy TOML, verbatim
    Column("policy_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # active | withdrawn
    Column("episodes", BigInteger, nullable=False),
    Column("frames", BigInteger, nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("withdrawn_at", String(32)),
)

shards = Table(
    "shards",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(64), ForeignKey("datasets.name"), nullable=False),
    Column("site", String(64), ForeignKey("sites.name"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("path", Text, nullable=False),  # relative to the site root
    Column("salt", String(32), nullable=False),  # hex; with the dataset key derives the shard key
    Column("bytes", BigInteger, nullable=False),
    Column("frames", BigInteger, nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("dataset", "site", "sha256"),
)

# A dataset's data key wrapped under one site's KEK. Withdrawal deletes every row of a dataset
# and overwrites the bytes first (crypto-shredding); a site with no row cannot read the dataset.
key_wraps = Table(
    "key_wraps",
    metadata,
    Column("dataset", String(64), ForeignKey("datasets.name"), primary_key=True),
    Column("site", String(64), ForeignKey("sites.name"), primary_key=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", String(32), nullable=False),
)

# Witnesses whose cosignatures the consortium asks for; their keys go into the trust root.
witnesses = Table(
    "witnesses",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("vkey", Text, nullable=False),  # C2SP verifier key (cosignature/v1, type 0x04)
    Column("created_at", String(32), nullable=False),
)

# A trained model: where it was trained (and its files sit, relative to that site's root), for
# which purpose, from which base model if fine-tuned, with the digests of its files.
models = Table(
    "models",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("site", String(64), ForeignKey("sites.name"), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("base", String(64)),  # the model it was fine-tuned from, if any
    Column("size", String(16), nullable=False),  # tiny | small | base
    Column("config", Text, nullable=False),  # JSON: model and training configuration
    Column("folder", Text, nullable=False),  # relative to the site root
    Column("files", Text, nullable=False),  # JSON: {file name: sha256}
    Column("parameters", BigInteger, nullable=False),
    Column("steps", BigInteger, nullable=False),
    Column("world_size", Integer, nullable=False),
    Column("metrics", Text, nullable=False),  # JSON: final losses
    Column("created_at", String(32), nullable=False),
    Column("ledger_index", BigInteger, nullable=False),  # its model.release entry
)

# Lineage: which datasets (and exactly which shards) a model was trained on, with what weight.
model_datasets = Table(
    "model_datasets",
    metadata,
    Column("model", String(64), ForeignKey("models.name"), primary_key=True),
    Column("dataset", String(64), ForeignKey("datasets.name"), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("embodiment", String(64), nullable=False),
    Column("weight", Text, nullable=False),  # sampling weight, as written
    Column("shards", Text, nullable=False),  # JSON: [sha256, ...]
    Column("decision_index", BigInteger, nullable=False),  # the allow decision for training
)

# A model artifact's data key wrapped under one site's key-encryption key for that model (kept in
# the site's custody, keys/keystore.py). A row is also where the model sits: its sealed files are
# under SITE_ROOT/models/NAME at every site with a wrap, and nowhere else.
model_key_wraps = Table(
    "model_key_wraps",
    metadata,
    Column("model", String(64), ForeignKey("models.name"), primary_key=True),
    Column("site", String(64), ForeignKey("sites.name"), primary_key=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("ledger_index", BigInteger, nullable=False),  # the model.release or model.copy that placed it
    Column("created_at", String(32), nullable=False),
)

# Clients allowed to ask a policy server at a site for actions. Only the SHA-256 of each token is
# kept (tokens are 256-bit random, so a fast hash is enough); revoking sets revoked_at.
serve_tokens = Table(
    "serve_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(64), ForeignKey("sites.name"), nullable=False),
    Column("client", String(64), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", String(32), nullable=False),
    Column("revoked_at", String(32)),
)
