"""Alembic revisions of the ledger's schema (run by onshore.catalog.migrate; no alembic.ini)."""
