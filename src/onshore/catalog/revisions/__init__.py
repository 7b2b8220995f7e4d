"""Alembic revisions of the catalog's schema (run by onshore.catalog.migrate; no alembic.ini)."""
